// SPDX-License-Identifier: GPL-3.0-or-later
//! Registry reads: a record counts once it is confirmed (a depth or a block tag), confirmed
//! records are cached (the registry is write-once), overlapping lookups of one record share
//! one round of RPC, and lookups that arrive together go out as one JSON-RPC batch. A failure
//! to read is `Lookup::Unavailable` (the caller's `temperror`), never "no record".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::eips::{BlockId, BlockNumberOrTag};
use alloy::primitives::{Address, B256, Bytes, FixedBytes};
use alloy::providers::Provider;
use alloy::rpc::client::BatchRequest;
use alloy::rpc::types::Filter;
use alloy::sol_types::{SolCall, SolEvent};
use mailstamp_core::Lookup;
use tokio::sync::{OnceCell, oneshot};

use crate::config::{BlockTag, Confirmations};
use crate::error::{Context, Result};

use super::trust::{Agreed, RawRecord};
use super::{Chain, RecordKey, Recorded, StampRegistry, within};

/// Lookups waiting to go out together as one JSON-RPC batch.
pub(super) struct ReadBatcher {
    window: Duration,
    max: usize,
    queue: Mutex<ReadQueue>,
    /// Whether a batch failing as a whole was logged (once per connection).
    fallback_logged: std::sync::atomic::AtomicBool,
}

impl ReadBatcher {
    /// Lookups wait up to `window` for others to share their batch, `max` per batch at most.
    pub(super) fn new(window: Duration, max: usize) -> Self {
        Self {
            window,
            max,
            queue: Mutex::default(),
            fallback_logged: Default::default(),
        }
    }
}

/// The lookups waiting, and whether a task is sending batches (it takes them in turn).
#[derive(Default)]
struct ReadQueue {
    waiting: Vec<Waiting>,
    running: bool,
}

/// Guards a batch-sending task that ends abnormally (a panic, an aborted task): the queue is
/// left with no task, and the lookups still waiting answer "unavailable" (their senders drop)
/// rather than hang.
struct Stopped<'a>(&'a ReadBatcher);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let mut q = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.running = false;
        q.waiting.clear();
    }
}

/// One lookup in a [`ReadBatcher`]'s queue and where its answer goes.
type Waiting = (Address, RecordKey, oneshot::Sender<Lookup>);

/// Confirmed records, shared by every clone of a [`Chain`]. A confirmed record never changes
/// (the registry is write-once), so it is kept; anything else (not found, not confirmed yet,
/// chain trouble) is asked again next time. Lookups of the same record that overlap (a burst
/// of messages from one batch) share one RPC round: the first caller asks, the others wait for
/// its answer.
#[derive(Default)]
pub(super) struct RecordCache {
    cells: Mutex<HashMap<(Address, RecordKey), Cell>>,
}

/// One record's lookup, shared by everyone asking for it at the same time.
type Cell = Arc<OnceCell<Lookup>>;

/// Where records count as confirmed (see [`Chain::confirmed`]).
enum At {
    /// A block as the endpoint names it (`call` mode, `chain.quorum` = 1).
    Block(BlockId),
    /// The block the endpoints agreed on.
    Agreed(Agreed),
    /// Nothing is confirmed yet (the chain is shorter than the depth).
    Nothing,
}

/// Bound on cached records; past it the cache starts over (cheap, and rare: 64k entries).
const CACHE_MAX: usize = 65_536;

impl Chain {
    /// The root anchored under (`writer`, `batch`) at the head block, confirmed or not.
    pub async fn anchor_at_head(
        &self,
        writer: Address,
        batch: B256,
    ) -> Result<Option<FixedBytes<24>>> {
        self.record_at_head(writer, RecordKey::Batch(batch)).await
    }

    /// The commitment or root recorded under (`writer`, `key`) at block `number`.
    pub async fn record_at(
        &self,
        writer: Address,
        key: RecordKey,
        number: u64,
    ) -> Result<Option<FixedBytes<24>>> {
        let (c, _) = within(self.timeout, "registry read", async {
            self.get_record(writer, key, BlockId::number(number)).await
        })
        .await?;
        Ok((c != FixedBytes::ZERO).then_some(c))
    }

    /// The commitment or root recorded under (`writer`, `key`) at the head block, confirmed
    /// or not.
    pub async fn record_at_head(
        &self,
        writer: Address,
        key: RecordKey,
    ) -> Result<Option<FixedBytes<24>>> {
        let (c, _) = within(self.timeout, "registry read at the head", async {
            self.get_record(writer, key, BlockId::latest()).await
        })
        .await?;
        Ok((c != FixedBytes::ZERO).then_some(c))
    }

    /// Where records count as confirmed now: the block the confirmation rule points to, as
    /// the endpoint says, or — with a quorum or in proof mode — the block the endpoints agreed
    /// on (`trust`).
    async fn confirmed(&self) -> Result<At> {
        if self.checks_answers() {
            return Ok(match self.agreed_block().await? {
                Some(a) => At::Agreed(a),
                None => At::Nothing,
            });
        }
        Ok(At::Block(self.block_of(&self.confirmations).await?))
    }

    /// The records `keys` where records count as confirmed.
    async fn records_confirmed(
        &self,
        keys: &[(Address, RecordKey)],
        at: &At,
    ) -> Result<Vec<RawRecord>> {
        match at {
            At::Block(b) => self.get_records_on(&self.provider, keys, *b).await,
            At::Agreed(a) => self.records_agreed(keys, a).await,
            At::Nothing => Ok(keys.iter().map(|_| Ok((FixedBytes::ZERO, 0))).collect()),
        }
    }

    /// The block a confirmation rule points to now.
    pub(super) async fn block_of(&self, rule: &Confirmations) -> Result<BlockId> {
        Ok(match rule {
            Confirmations::Tag(BlockTag::Latest) => BlockId::latest(),
            Confirmations::Tag(BlockTag::Safe) => BlockId::Number(BlockNumberOrTag::Safe),
            Confirmations::Tag(BlockTag::Finalized) => BlockId::Number(BlockNumberOrTag::Finalized),
            Confirmations::Depth(d) => {
                let head = self.provider.get_block_number().await?;
                let Some(n) = head.checked_sub(d.saturating_sub(1)) else {
                    // The chain is shorter than the depth: nothing is confirmed yet.
                    return Ok(BlockId::Number(BlockNumberOrTag::Earliest));
                };
                BlockId::number(n)
            }
        })
    }

    async fn get_record(
        &self,
        writer: Address,
        key: RecordKey,
        at: BlockId,
    ) -> Result<(FixedBytes<24>, u64)> {
        match key {
            RecordKey::Stamp(token) => self.get_stamp(writer, token, at).await,
            RecordKey::Batch(batch) => {
                let reg = StampRegistry::new(self.registry, &self.provider);
                match reg.getAnchor(writer, batch).block(at).call().await {
                    Ok(r) => Ok((r.root, r.time)),
                    Err(alloy::contract::Error::ZeroData(..)) => Ok((FixedBytes::ZERO, 0)),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    async fn get_stamp(
        &self,
        writer: Address,
        token: B256,
        at: BlockId,
    ) -> Result<(FixedBytes<24>, u64)> {
        let reg = StampRegistry::new(self.registry, &self.provider);
        match reg.getStamp(writer, token).block(at).call().await {
            Ok(r) => Ok((r.commitment, r.time)),
            // No code at that block (the registry was deployed later): no record there yet.
            Err(alloy::contract::Error::ZeroData(..)) => Ok((FixedBytes::ZERO, 0)),
            Err(e) => Err(e.into()),
        }
    }

    /// What the chain says about the record (writer, key): a confirmed record, an unconfirmed
    /// one, none, or that the chain could not be read. Confirmed records come from the cache
    /// once seen; overlapping lookups of one record share one round of RPC.
    pub async fn lookup(&self, writer: Address, key: RecordKey) -> Lookup {
        let cell = {
            let mut cells = self.cache.cells.lock().unwrap_or_else(|p| p.into_inner());
            if cells.len() >= CACHE_MAX {
                cells.clear();
            }
            cells.entry((writer, key)).or_default().clone()
        };
        let r = cell.get_or_init(|| self.read(writer, key)).await.clone();
        if !matches!(r, Lookup::Found { .. }) {
            // Only confirmed records are final; let the next caller ask again.
            let mut cells = self.cache.cells.lock().unwrap_or_else(|p| p.into_inner());
            if cells
                .get(&(writer, key))
                .is_some_and(|c| Arc::ptr_eq(c, &cell))
            {
                cells.remove(&(writer, key));
            }
        }
        r
    }

    /// [`Chain::lookup`], waiting while the record is on chain but not confirmed yet, or not
    /// found yet, until `deadline`: the head watcher wakes every waiting lookup at each new
    /// head and each asks again (they share one JSON-RPC batch through the read queue). The
    /// answer is the first that is neither, or the last one at the deadline.
    pub async fn lookup_until(
        &self,
        writer: Address,
        key: RecordKey,
        deadline: tokio::time::Instant,
    ) -> Lookup {
        // Subscribed before the first lookup: a head that comes during it is not missed.
        let mut heads = self.heads.subscribe(&self.provider);
        loop {
            let l = self.lookup(writer, key).await;
            if !matches!(l, Lookup::Unconfirmed | Lookup::NotFound) {
                return l;
            }
            match tokio::time::timeout_at(deadline, heads.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return l,
            }
        }
    }

    /// Waits for the next head after the current one, or until `deadline`; the new head's
    /// number (`None` at the deadline).
    pub async fn next_head(&self, deadline: tokio::time::Instant) -> Option<u64> {
        let mut heads = self.heads.subscribe(&self.provider);
        match tokio::time::timeout_at(deadline, heads.changed()).await {
            Ok(Ok(())) => Some(*heads.borrow()),
            Ok(Err(_)) | Err(_) => None,
        }
    }

    /// One uncached lookup, through the read queue: when no batch is being sent, it goes out
    /// at once (after `chain.read_batch_window_ms`, 0 by default); lookups that arrive while
    /// one is being sent wait and go out together in the next, up to `chain.read_batch_max`
    /// per batch (a full queue starts another batch at once). So a lone lookup costs what it
    /// did, and a burst costs a few batches instead of a request per record. Batches run in
    /// spawned tasks: a caller that gives up does not strand the others.
    async fn read(&self, writer: Address, key: RecordKey) -> Lookup {
        if self.reads.max <= 1 {
            return self.lookup_uncached(writer, key).await;
        }
        let (tx, rx) = oneshot::channel();
        let (drive, full) = {
            let mut q = self.reads.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.waiting.push((writer, key, tx));
            if !q.running {
                q.running = true;
                (true, None)
            } else if q.waiting.len() >= self.reads.max {
                (false, Some(std::mem::take(&mut q.waiting)))
            } else {
                (false, None)
            }
        };
        if drive {
            tokio::spawn(self.clone().drive());
        } else if let Some(batch) = full {
            let me = self.clone();
            tokio::spawn(async move { me.run_batch(batch).await });
        }
        rx.await.unwrap_or_else(|_| {
            Lookup::Unavailable("registry read: the batched request was abandoned".to_owned())
        })
    }

    /// Sends the queued lookups batch after batch until the queue is empty.
    async fn drive(self) {
        let stopped = Stopped(&self.reads);
        if !self.reads.window.is_zero() {
            tokio::time::sleep(self.reads.window).await;
        }
        loop {
            let batch: Vec<Waiting> = {
                let mut q = self.reads.queue.lock().unwrap_or_else(|p| p.into_inner());
                if q.waiting.is_empty() {
                    // Under the same lock as the check: a lookup queued after this starts a
                    // new task.
                    q.running = false;
                    break;
                }
                let n = q.waiting.len().min(self.reads.max);
                q.waiting.drain(..n).collect()
            };
            self.run_batch(batch).await;
        }
        // A normal end: the guard is only for a panic or an aborted task.
        std::mem::forget(stopped);
    }

    /// Answers every lookup of `batch`: one alone the usual way, several with one JSON-RPC
    /// batch per step (head, records at the confirmed block, then at the latest block for
    /// those not confirmed). The confirmation rule is the one of a single lookup.
    async fn run_batch(&self, mut batch: Vec<Waiting>) {
        if batch.len() == 1 {
            let (w, k, tx) = batch.remove(0);
            let _ = tx.send(self.lookup_uncached(w, k).await);
            return;
        }
        let keys: Vec<(Address, RecordKey)> = batch.iter().map(|(w, k, _)| (*w, *k)).collect();
        let answers = within(self.timeout, "batched registry read", self.read_many(&keys)).await;
        // Agreed or proven answers are verdicts on the endpoints, not a batch refused:
        // asking again one by one would only repeat them.
        if self.checks_answers() {
            let answers = answers.unwrap_or_else(|e| {
                let why = format!("{e:#}");
                keys.iter()
                    .map(|_| Lookup::Unavailable(why.clone()))
                    .collect()
            });
            for ((_, _, tx), a) in batch.into_iter().zip(answers) {
                let _ = tx.send(a);
            }
            return;
        }
        // The batch failing as a whole (some hosted endpoints refuse or cap JSON-RPC batches)
        // must not turn a burst into temperrors: its keys are asked one by one instead.
        let why = match answers {
            Ok(answers) if !answers.iter().all(|a| matches!(a, Lookup::Unavailable(_))) => {
                for ((_, _, tx), a) in batch.into_iter().zip(answers) {
                    let _ = tx.send(a);
                }
                return;
            }
            Ok(answers) => match answers.into_iter().next() {
                Some(Lookup::Unavailable(e)) => e,
                _ => "no answer".to_owned(),
            },
            Err(e) => format!("{e:#}"),
        };
        if !self
            .reads
            .fallback_logged
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                "a JSON-RPC batch of {} registry reads failed as a whole ({why}); reading them one by one (if the endpoint refuses or caps batches, set chain.read_batch_max to 1 or to its cap)",
                keys.len()
            );
        }
        let mut one_by_one = tokio::task::JoinSet::new();
        for (i, (w, k, _)) in batch.iter().enumerate() {
            let (me, w, k) = (self.clone(), *w, *k);
            one_by_one.spawn(async move { (i, me.lookup_uncached(w, k).await) });
        }
        let mut out: Vec<Option<Lookup>> = vec![None; batch.len()];
        while let Some(r) = one_by_one.join_next().await {
            if let Ok((i, l)) = r {
                out[i] = Some(l);
            }
        }
        for ((_, _, tx), l) in batch.into_iter().zip(out) {
            let _ = tx.send(l.unwrap_or_else(|| Lookup::Unavailable(why.clone())));
        }
    }

    async fn read_many(&self, keys: &[(Address, RecordKey)]) -> Result<Vec<Lookup>> {
        let at = self.confirmed().await?;
        let mut out: Vec<Option<Lookup>> = vec![None; keys.len()];
        let mut again = Vec::new();
        for (i, r) in self
            .records_confirmed(keys, &at)
            .await?
            .into_iter()
            .enumerate()
        {
            match r {
                Ok((c, time)) if c != FixedBytes::<24>::ZERO => {
                    out[i] = Some(Lookup::Found {
                        commitment: c.0,
                        time,
                    });
                }
                Ok(_) => again.push(i),
                Err(e) => out[i] = Some(Lookup::Unavailable(format!("registry read: {e:#}"))),
            }
        }
        if !again.is_empty() {
            let latest: Vec<_> = again.iter().map(|&i| keys[i]).collect();
            for (i, r) in again.into_iter().zip(self.pending_above(&latest).await?) {
                out[i] = Some(match r {
                    Ok(false) => Lookup::NotFound,
                    Ok(true) => Lookup::Unconfirmed,
                    Err(e) => Lookup::Unavailable(format!("registry read: {e:#}")),
                });
            }
        }
        Ok(out
            .into_iter()
            .map(|l| l.unwrap_or_else(|| Lookup::Unavailable("registry read: no answer".into())))
            .collect())
    }

    /// `getStamp` / `getAnchor` of every key at `at` from `provider`, as one JSON-RPC batch.
    /// The outer error is the batch failing as a whole; each record has its own result.
    pub(super) async fn get_records_on(
        &self,
        provider: &alloy::providers::DynProvider,
        keys: &[(Address, RecordKey)],
        at: BlockId,
    ) -> Result<Vec<RawRecord>> {
        let reg = StampRegistry::new(self.registry, provider);
        let mut batch = BatchRequest::new(provider.client());
        let mut waiters = Vec::with_capacity(keys.len());
        for (w, k) in keys {
            let call = match k {
                RecordKey::Stamp(t) => reg.getStamp(*w, *t).into_transaction_request(),
                RecordKey::Batch(b) => reg.getAnchor(*w, *b).into_transaction_request(),
            };
            waiters.push(batch.add_call::<_, Bytes>("eth_call", &(call, at))?);
        }
        batch
            .send()
            .await
            .context("sending the batched registry read")?;
        let mut out = Vec::with_capacity(keys.len());
        for ((_, k), waiter) in keys.iter().zip(waiters) {
            out.push(match waiter.await {
                // No code at that block (the registry was deployed later): no record there yet.
                Ok(data) if data.is_empty() => Ok((FixedBytes::ZERO, 0)),
                Ok(data) => match k {
                    RecordKey::Stamp(_) => StampRegistry::getStampCall::abi_decode_returns(&data)
                        .map(|r| (r.commitment, r.time))
                        .context("decoding getStamp"),
                    RecordKey::Batch(_) => StampRegistry::getAnchorCall::abi_decode_returns(&data)
                        .map(|r| (r.root, r.time))
                        .context("decoding getAnchor"),
                },
                Err(e) => Err(e.into()),
            });
        }
        Ok(out)
    }

    async fn lookup_uncached(&self, writer: Address, key: RecordKey) -> Lookup {
        if self.checks_answers() {
            // Agreed or proven: the batched path does it (a batch of one).
            let r = within(
                self.timeout,
                "registry read",
                self.read_many(&[(writer, key)]),
            )
            .await;
            return match r {
                Ok(mut ls) if !ls.is_empty() => ls.remove(0),
                Ok(_) => Lookup::Unavailable("registry read: no answer".into()),
                Err(e) => Lookup::Unavailable(format!("{e:#}")),
            };
        }
        let r = within(self.timeout, "registry read", async {
            let (c, time) = self
                .get_record(writer, key, self.block_of(&self.confirmations).await?)
                .await?;
            if c != FixedBytes::<24>::ZERO {
                return Ok(Lookup::Found {
                    commitment: c.0,
                    time,
                });
            }
            let (c, _) = self.get_record(writer, key, BlockId::latest()).await?;
            Ok(if c == FixedBytes::<24>::ZERO {
                Lookup::NotFound
            } else {
                Lookup::Unconfirmed
            })
        })
        .await;
        r.unwrap_or_else(|e| Lookup::Unavailable(format!("{e:#}")))
    }

    /// The `Stamped` (or, for a batch, `Anchored`) event of `key` by `writer` (by any writer
    /// when `None`: the first one), with the writer, transaction and block, for audit.
    pub async fn find_event(
        &self,
        writer: Option<Address>,
        key: RecordKey,
        from_block: u64,
    ) -> Result<Option<(Address, Recorded)>> {
        let (signature, key) = match key {
            RecordKey::Stamp(t) => (StampRegistry::Stamped::SIGNATURE_HASH, t),
            RecordKey::Batch(b) => (StampRegistry::Anchored::SIGNATURE_HASH, b),
        };
        let mut filter = Filter::new()
            .address(self.registry)
            .event_signature(signature)
            .topic2(key)
            .from_block(from_block);
        if let Some(w) = writer {
            filter = filter.topic1(w.into_word());
        }
        let logs = within(self.timeout, "eth_getLogs", async {
            Ok(self.provider.get_logs(&filter).await?)
        })
        .await?;
        Ok(logs.first().and_then(|l| {
            let writer = Address::from_word(*l.topics().get(1)?);
            let rec = Recorded {
                tx: l.transaction_hash?,
                block: l.block_number?,
            };
            Some((writer, rec))
        }))
    }

    /// Timestamp of a block.
    pub async fn block_time(&self, block: u64) -> Result<Option<u64>> {
        within(self.timeout, "eth_getBlockByNumber", async {
            Ok(self
                .provider
                .get_block_by_number(block.into())
                .await?
                .map(|b| b.header.timestamp))
        })
        .await
    }
}
