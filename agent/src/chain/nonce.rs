// SPDX-License-Identifier: GPL-3.0-or-later
//! The writers' nonces, handed out by the agent so that transactions sent at the same time
//! never share one, and shared by every connection of a daemon ([`NoncePool`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use alloy::primitives::Address;
use alloy::providers::{DynProvider, Provider};

use crate::error::{Context, Result};

/// The writers' nonce counters of one process, keyed by (chain id, writer): every connection
/// made through the same pool ([`Chain::connect_in`]) shares one counter per writer, so a
/// reconnect (after an error or a reload) while transactions of the old connection are still
/// in flight never hands out their nonces again. The milter and relay keep one pool for their
/// lifetime. Clones share the pool.
#[derive(Clone, Default)]
pub struct NoncePool(Arc<Mutex<NonceMap>>);

/// Each writer's counter, by (chain id, writer).
type NonceMap = HashMap<(u64, Address), Arc<Nonces>>;

impl std::fmt::Debug for NoncePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoncePool").finish_non_exhaustive()
    }
}

impl NoncePool {
    pub(super) fn get(&self, chain_id: u64, writer: Option<Address>) -> Arc<Nonces> {
        let Some(writer) = writer else {
            return Arc::default();
        };
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((chain_id, writer))
            .or_default()
            .clone()
    }
}

/// One writer's nonces, handed out by the agent: the first from the node's pending count, then
/// one more each time, so transactions sent at the same time never share one (alloy's
/// `CachedNonceManager` does the same). Unlike it, a nonce whose transaction never reached the
/// node (or never got mined) makes the next caller ask the node again, so a gap does not block
/// every later transaction; and a nonce still in flight (its write has not ended) is never
/// handed out again, even when the node's count, read after such a reset, is below it (a
/// transaction not yet seen by this node, or queued behind a gap).
#[derive(Default)]
pub(crate) struct Nonces {
    state: Mutex<NonceState>,
}

#[derive(Default)]
struct NonceState {
    /// The next nonce to try; `None`: ask the node.
    next: Option<u64>,
    /// Nonces handed out whose write has not ended.
    in_flight: std::collections::BTreeSet<u64>,
}

/// A nonce handed out; it counts as in flight until this is dropped (the write ended).
pub(crate) struct Taken {
    nonces: Arc<Nonces>,
    pub(super) n: u64,
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.nonces.lock().in_flight.remove(&self.n);
    }
}

impl Nonces {
    fn lock(&self) -> std::sync::MutexGuard<'_, NonceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) async fn take(
        self: &Arc<Self>,
        provider: &DynProvider,
        from: Address,
    ) -> Result<Taken> {
        let cached = self.lock().next;
        let base = match cached {
            Some(n) => n,
            None => provider
                .get_transaction_count(from)
                .pending()
                .await
                .context("reading the writer's nonce")?,
        };
        let mut s = self.lock();
        // Another caller may have read the count meanwhile: its counter wins.
        let mut n = s.next.unwrap_or(base);
        while s.in_flight.contains(&n) {
            n += 1;
        }
        s.in_flight.insert(n);
        s.next = Some(n + 1);
        Ok(Taken {
            nonces: self.clone(),
            n,
        })
    }

    pub(super) fn resync(&self) {
        self.lock().next = None;
    }
}

#[cfg(test)]
mod nonce_tests {
    use super::{NoncePool, Nonces};
    use alloy::primitives::{Address, U64};
    use alloy::providers::{DynProvider, Provider, ProviderBuilder};
    use alloy::transports::mock::Asserter;
    use std::sync::Arc;

    /// A provider whose answers are `asserter`'s queue (an empty queue answers an error).
    fn node(asserter: &Asserter) -> DynProvider {
        ProviderBuilder::new()
            .connect_mocked_client(asserter.clone())
            .erased()
    }

    const W: Address = Address::repeat_byte(7);

    #[tokio::test]
    async fn connections_of_one_pool_share_the_writers_counter() {
        // A reconnect gets the same counter: the node is asked once, then the counter goes
        // on (the second take would fail on the empty queue if it asked again).
        let pool = NoncePool::default();
        let (old, new) = (pool.get(1, Some(W)), pool.get(1, Some(W)));
        let a = Asserter::new();
        a.push_success(&U64::from(5));
        let n1 = old.take(&node(&a), W).await.unwrap();
        let n2 = new.take(&node(&a), W).await.unwrap();
        let n3 = old.take(&node(&a), W).await.unwrap();
        assert_eq!((n1.n, n2.n, n3.n), (5, 6, 7));
        // Another chain or writer has its own.
        assert!(!Arc::ptr_eq(&old, &pool.get(2, Some(W))));
        assert!(!Arc::ptr_eq(&old, &pool.get(1, Some(Address::ZERO))));
    }

    #[tokio::test]
    async fn a_reset_never_hands_out_a_nonce_still_in_flight_and_fills_freed_gaps() {
        let nonces = Arc::new(Nonces::default());
        let a = Asserter::new();
        a.push_success(&U64::from(5));
        let n5 = nonces.take(&node(&a), W).await.unwrap();
        let n6 = nonces.take(&node(&a), W).await.unwrap();
        // A send failed: the count is read again, and the node has not seen 5 or 6 yet.
        nonces.resync();
        a.push_success(&U64::from(5));
        let n7 = nonces.take(&node(&a), W).await.unwrap();
        assert_eq!((n5.n, n6.n, n7.n), (5, 6, 7), "5 and 6 are still in flight");
        // 5's send failed (never reached the node): freed, and the next reset fills the gap.
        drop(n5);
        nonces.resync();
        a.push_success(&U64::from(5));
        let again = nonces.take(&node(&a), W).await.unwrap();
        assert_eq!(again.n, 5);
        let next = nonces.take(&node(&a), W).await.unwrap();
        assert_eq!(next.n, 8, "skips 6 and 7, still in flight");
        drop((n6, n7, again, next));
    }
}
