// SPDX-License-Identifier: GPL-3.0-or-later
//! The head watcher: one task per connection that polls `eth_blockNumber` every
//! `chain.head_poll_ms` while anyone waits for a new block, and wakes every waiter at once
//! when one comes (a `tokio::sync::watch` channel: all lookups waiting for a confirmation are
//! released together, and go out as one JSON-RPC batch through the read queue). It polls
//! only while someone is subscribed, and it ends when the connection is dropped.
//!
//! WebSocket `newHeads` subscriptions are not used: the agent speaks HTTP JSON-RPC only
//! (`chain.rpc_url` is http(s)), and one `eth_blockNumber` per poll interval is cheap beside
//! the lookups it wakes.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use alloy::providers::{DynProvider, Provider};
use tokio::sync::watch;
use tokio::time::Instant;

/// The latest head number seen (0 until the first poll), shared by every clone of a
/// connection.
pub(super) struct Heads {
    tx: watch::Sender<u64>,
    /// Whether the polling task runs (started on the first subscription).
    running: Mutex<bool>,
    poll: Duration,
    timeout: Duration,
}

impl Heads {
    pub(super) fn new(poll: Duration, timeout: Duration) -> Self {
        Self {
            tx: watch::Sender::new(0),
            running: Mutex::new(false),
            poll,
            timeout,
        }
    }

    /// A receiver woken at each new head, starting the polling task if it is not running.
    pub(super) fn subscribe(self: &Arc<Self>, provider: &DynProvider) -> watch::Receiver<u64> {
        let rx = self.tx.subscribe();
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if !*running {
            *running = true;
            tokio::spawn(poll(Arc::downgrade(self), provider.clone()));
        }
        rx
    }
}

/// Polls the head while anyone is subscribed; ends when the connection is gone, or when no
/// one has been subscribed for a while (the next subscription starts it again).
async fn poll(heads: Weak<Heads>, provider: DynProvider) {
    let mut idle_since: Option<Instant> = None;
    loop {
        let Some(h) = heads.upgrade() else { return };
        if h.tx.receiver_count() == 0 {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= h.poll * 10 {
                let mut running = h.running.lock().unwrap_or_else(|p| p.into_inner());
                // Under the lock subscribe takes: a subscriber arriving now starts a new task.
                if h.tx.receiver_count() == 0 {
                    *running = false;
                    return;
                }
            }
        } else {
            idle_since = None;
            match tokio::time::timeout(h.timeout, provider.get_block_number()).await {
                Ok(Ok(n)) => {
                    // Any other number is news: a higher one is a new block, a lower one a
                    // rollback (the blocks that follow it carry numbers seen before).
                    h.tx.send_if_modified(|seen| {
                        let changed = n != *seen;
                        *seen = n;
                        changed
                    });
                }
                Ok(Err(e)) => tracing::debug!("head watcher: eth_blockNumber failed: {e}"),
                Err(_) => tracing::debug!("head watcher: eth_blockNumber timed out"),
            }
        }
        let poll = h.poll;
        drop(h);
        tokio::time::sleep(poll).await;
    }
}
