// SPDX-License-Identifier: GPL-3.0-or-later
//! Batched anchoring inside the daemons (`stamp.mode = "batch"`, docs/PROTOCOL.md §5a): the
//! one [`Batcher`] a milter or relay shares between its sessions. It owns the open batch, its
//! journal in the store (migration 5: every leaf before it is taken, the root before the
//! anchor is sent, the outcome after), closing a batch after `batch_max` leaves or
//! `batch_wait_ms`, the one `anchor` transaction per batch, handing each waiting message its
//! leaf index and proof, and what happens at start to batches a crash left pending
//! ([`Batcher::recover`], by `stamp.pending_on_restart`).
//!
//! A message gets its proof only after the anchor is mined; the caller waits at most
//! `hold_timeout_ms` for it and otherwise defers the message without a header. So a batch whose
//! anchor never lands has no message out there that needs it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{B256, FixedBytes};
use anyhow::{Context, Result, bail};
use mailstamp_core::Lookup;
use mailstamp_core::digest::Commitment;
use mailstamp_core::merkle::{Node, Tree, short};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::chain::{Chain, RecordKey, Recorded};
use crate::config::PendingPolicy;
use crate::store::{DaemonBatchState, Store};

/// A message's place in an anchored batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// The batch id (the anchor's key).
    pub batch: B256,
    /// The message's leaf index.
    pub index: u32,
    /// Leaves in the batch.
    pub size: u32,
    /// Sibling nodes from the leaf up to the root.
    pub proof: Vec<Node>,
    /// The anchoring transaction.
    pub recorded: Recorded,
}

/// What a waiting message is told when its batch is done.
pub type Outcome = Result<Leaf, String>;

/// How batches are cut (from `[stamp]`, read per message so a reload applies to the next
/// batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// Leaves that close a batch.
    pub max: usize,
    /// How long a batch stays open after its first leaf.
    pub wait: Duration,
}

/// The shared batcher of a daemon.
pub struct Batcher {
    store: Arc<Store>,
    /// Who this daemon is in the journal (kind and listen address): it recovers only the
    /// batches it opened, not those of another daemon sharing the store.
    owner: String,
    open: Mutex<Option<Open>>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

/// The batch taking leaves.
struct Open {
    id: B256,
    leaves: Vec<Commitment>,
    waiters: Vec<oneshot::Sender<Outcome>>,
    /// What every leaf's header names: the chain, the registry and the writer. A message for
    /// another one closes this batch first (a reload changed `[chain]`), so the anchor always
    /// lands where the headers point.
    key: BatchKey,
    /// The connection of the latest message with this key (the freshest after a reconnect).
    chain: Chain,
}

/// The chain, registry and writer a batch is anchored with (its leaves' headers name them).
type BatchKey = (
    u64,
    alloy::primitives::Address,
    Option<alloy::primitives::Address>,
);

fn key_of(chain: &Chain) -> BatchKey {
    (chain.chain_id, chain.registry, chain.writer)
}

/// What [`Batcher::recover`] did with one pending batch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Recovered {
    /// Batch id.
    pub batch: String,
    /// Leaves journalled.
    pub leaves: usize,
    /// The outcome: `anchored` (now, `tx` set), `already anchored` or `dropped`.
    pub outcome: String,
    /// The transaction this recovery sent.
    pub tx: Option<String>,
}

fn hex24(c: &Commitment) -> String {
    format!("0x{}", hex::encode(c))
}

impl Batcher {
    /// A batcher journalling in `store` as `owner` (e.g. `milter inet:127.0.0.1:8891`).
    pub fn new(store: Arc<Store>, owner: impl Into<String>) -> Self {
        Self {
            store,
            owner: owner.into(),
            open: Mutex::new(None),
        }
    }

    /// Takes one message's commitment into the open batch (opening one if needed), journalled
    /// before this returns. The receiver gets the leaf and proof once the batch's anchor is
    /// mined, or why not. The batch closes when `cut.max` leaves are in or `cut.wait` after its
    /// first leaf; closing and anchoring run on their own task, so a message that stops waiting
    /// does not stop the others. The journal writes (SQLite, with fsync) run on a blocking
    /// thread, not on the runtime's.
    pub async fn submit(
        self: &Arc<Self>,
        chain: &Chain,
        commitment: Commitment,
        cut: Cut,
    ) -> Result<oneshot::Receiver<Outcome>> {
        let (me, chain) = (self.clone(), chain.clone());
        tokio::task::spawn_blocking(move || me.submit_blocking(&chain, commitment, cut))
            .await
            .context("the batcher's journal task failed")?
    }

    /// [`Batcher::submit`] on a blocking thread (inside the runtime: it spawns tasks).
    fn submit_blocking(
        self: &Arc<Self>,
        chain: &Chain,
        commitment: Commitment,
        cut: Cut,
    ) -> Result<oneshot::Receiver<Outcome>> {
        let (tx, rx) = oneshot::channel();
        let key = key_of(chain);
        let mut slot = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|o| o.key != key) {
            // `[chain]` changed under an open batch: anchor it where its headers point and
            // start another for this message.
            if let Some(b) = slot.take() {
                info!(batch = %b.id, size = b.leaves.len(), "chain settings changed: closing the open batch");
                tokio::spawn(self.clone().anchor(b));
            }
        }
        if slot.is_none() {
            let mut id = [0u8; 32];
            getrandom::fill(&mut id)
                .map_err(|e| anyhow::anyhow!("the system random generator failed: {e}"))?;
            let id = B256::from(id);
            self.store
                .open_daemon_batch(&id.to_string(), &self.owner, crate::ops::now())
                .context("cannot journal a new batch")?;
            *slot = Some(Open {
                id,
                leaves: Vec::new(),
                waiters: Vec::new(),
                key,
                chain: chain.clone(),
            });
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(cut.wait).await;
                me.close_if(id);
            });
        }
        let Some(open) = slot.as_mut() else {
            bail!("internal error: no open batch");
        };
        let index = u32::try_from(open.leaves.len()).context("batch too large")?;
        self.store
            .add_daemon_leaf(&open.id.to_string(), index, &hex24(&commitment))
            .context("cannot journal the stamp's leaf")?;
        open.leaves.push(commitment);
        open.waiters.push(tx);
        // Same key (checked above): only the connection may be fresher.
        open.chain = chain.clone();
        if open.leaves.len() >= cut.max {
            let full = slot.take();
            drop(slot);
            if let Some(b) = full {
                tokio::spawn(self.clone().anchor(b));
            }
        }
        Ok(rx)
    }

    /// Closes the open batch if it is still `id` (its time is up).
    fn close_if(self: Arc<Self>, id: B256) {
        let b = {
            let mut slot = self.open.lock().unwrap_or_else(|p| p.into_inner());
            if slot.as_ref().is_none_or(|o| o.id != id) {
                return;
            }
            slot.take()
        };
        if let Some(b) = b {
            tokio::spawn(self.anchor(b));
        }
    }

    /// Closes a batch: root journalled, one anchor sent and mined, each waiter told its leaf.
    /// On failure every waiter is told why and the batch is dropped (its messages are
    /// deferred; should the transaction still be mined later, that is harmless).
    async fn anchor(self: Arc<Self>, b: Open) {
        let id = b.id.to_string();
        let result = self.anchor_inner(&b).await;
        let now = crate::ops::now();
        match result {
            Ok((tree, recorded)) => {
                if let Err(e) = self.store.end_daemon_batch(
                    &id,
                    DaemonBatchState::Anchored,
                    Some(&recorded.tx.to_string()),
                    None,
                    now,
                ) {
                    warn!(batch = %id, "cannot journal the anchor: {e:#}");
                }
                info!(batch = %id, size = b.leaves.len(), tx = %recorded.tx, block = recorded.block, "batch anchored");
                let size = b.leaves.len() as u32;
                for (i, w) in b.waiters.into_iter().enumerate() {
                    let _ = w.send(Ok(Leaf {
                        batch: b.id,
                        index: i as u32,
                        size,
                        proof: tree.proof(i),
                        recorded: recorded.clone(),
                    }));
                }
            }
            Err(e) => {
                let why = format!("batch {id} not anchored: {e:#}");
                warn!(batch = %id, size = b.leaves.len(), "{why}");
                if let Err(e) = self.store.end_daemon_batch(
                    &id,
                    DaemonBatchState::Dropped,
                    None,
                    Some(&why),
                    now,
                ) {
                    warn!(batch = %id, "cannot journal the dropped batch: {e:#}");
                }
                for w in b.waiters {
                    let _ = w.send(Err(why.clone()));
                }
            }
        }
    }

    async fn anchor_inner(&self, b: &Open) -> Result<(Tree, Recorded)> {
        let tree = Tree::build(&b.leaves).context("empty batch")?;
        let root = short(&tree.root());
        let size = u32::try_from(b.leaves.len()).context("batch too large")?;
        self.store
            .close_daemon_batch(&b.id.to_string(), &hex24(&root), size, crate::ops::now())
            .context("cannot journal the batch root")?;
        crate::ops::fault("before-anchor");
        let recorded = b
            .chain
            .anchor_journalled(b.id, FixedBytes::from(root), size, &self.journal_sent(b.id))
            .await?;
        crate::ops::fault("after-anchor");
        Ok((tree, recorded))
    }

    /// Deletes this store's anchored and dropped batches (every owner's) older than
    /// `retention_days` (0: keep all); how many went.
    pub fn prune(&self, retention_days: u64) -> Result<usize> {
        if retention_days == 0 {
            return Ok(0);
        }
        let before = crate::ops::now().saturating_sub(retention_days.saturating_mul(86_400));
        let n = self.store.prune_daemon_batches(before)?;
        if n > 0 {
            info!(
                batches = n,
                retention_days, "old batches deleted from the journal"
            );
        }
        Ok(n)
    }

    /// The batches a previous run of this daemon (same owner) left `open` or `closed` (read
    /// at start, before this batcher opens any).
    pub fn pending(&self) -> Result<Vec<crate::store::DaemonBatchRow>> {
        self.store.daemon_batches_of(
            &self.owner,
            &[DaemonBatchState::Open, DaemonBatchState::Closed],
        )
    }

    /// Journals each anchor transaction of `batch` before it is sent.
    fn journal_sent(&self, batch: B256) -> impl Fn(B256) -> Result<()> + Send + Sync + 'static {
        let store = self.store.clone();
        move |tx| store.add_daemon_sent(&batch.to_string(), &tx.to_string(), crate::ops::now())
    }

    /// Applies `policy` to `pending` (from [`Batcher::pending`]). `Drop` needs no
    /// chain; `Anchor` does, and anchors each batch at most once: an anchor already on chain
    /// with the journalled root is recognised and not sent again, and one journalled as sent
    /// that is still in the node's pool is waited for. A batch whose anchor cannot
    /// be checked now stays pending (the next start tries again) and the error is returned
    /// after the others are done.
    pub async fn recover(
        &self,
        pending: Vec<crate::store::DaemonBatchRow>,
        policy: PendingPolicy,
        chain: Option<&Chain>,
    ) -> Result<Vec<Recovered>> {
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for row in pending {
            let now = crate::ops::now();
            let leaves = row.leaves.len();
            let r = match policy {
                PendingPolicy::Drop => self
                    .store
                    .end_daemon_batch(
                        &row.batch_id,
                        DaemonBatchState::Dropped,
                        None,
                        Some("pending at restart; stamp.pending_on_restart = drop"),
                        now,
                    )
                    .map(|()| ("dropped".to_owned(), None)),
                PendingPolicy::Anchor => match chain {
                    Some(c) => self.anchor_pending(c, &row).await,
                    None => Err(anyhow::anyhow!("no chain connection")),
                },
            };
            match r {
                Ok((outcome, tx)) => done.push(Recovered {
                    batch: row.batch_id,
                    leaves,
                    outcome,
                    tx,
                }),
                Err(e) => failed.push(format!("batch {}: {e:#}", row.batch_id)),
            }
        }
        if !failed.is_empty() {
            bail!(
                "{} pending batch(es) left for the next start: {}",
                failed.len(),
                failed.join("; ")
            );
        }
        Ok(done)
    }

    async fn anchor_pending(
        &self,
        chain: &Chain,
        row: &crate::store::DaemonBatchRow,
    ) -> Result<(String, Option<String>)> {
        let writer = chain.writer.context("anchoring needs the writer key")?;
        let batch: B256 = row.batch_id.parse().context("journal: bad batch id")?;
        let leaves = row
            .leaves
            .iter()
            .map(|l| l.parse::<FixedBytes<24>>().map(|f| f.0))
            .collect::<Result<Vec<_>, _>>()
            .context("journal: bad leaf")?;
        let Some(tree) = Tree::build(&leaves) else {
            self.store.end_daemon_batch(
                &row.batch_id,
                DaemonBatchState::Dropped,
                None,
                Some("no leaves"),
                crate::ops::now(),
            )?;
            return Ok(("dropped (empty)".to_owned(), None));
        };
        let root = short(&tree.root());
        if let Some(r) = &row.root
            && *r != hex24(&root)
        {
            bail!("journal: the leaves do not give the journalled root {r}");
        }
        let size = u32::try_from(leaves.len()).context("batch too large")?;
        let (outcome, tx) = match chain.lookup(writer, RecordKey::Batch(batch)).await {
            Lookup::Found { commitment, .. } if commitment == root => ("already anchored", None),
            Lookup::Found { .. } => bail!("anchored on chain with another root: not touching it"),
            // Mined but not yet as deep as the policy asks: it counts once its root is ours.
            Lookup::Unconfirmed => match chain.anchor_at_head(writer, batch).await? {
                Some(r) if r.0 == root => ("already anchored", None),
                Some(_) => bail!("anchored on chain with another root: not touching it"),
                None => bail!("the anchor is neither confirmed nor at the head block; retry later"),
            },
            Lookup::NotFound => {
                // An anchor sent before the crash may still be in the pool: wait for it
                // rather than send a second one (it would revert once the first is mined).
                let sent = row
                    .sent
                    .iter()
                    .map(|h| h.parse::<B256>())
                    .collect::<Result<Vec<_>, _>>()
                    .context("journal: bad transaction hash")?;
                match chain.wait_sent(&sent).await? {
                    Some(r) => (
                        "anchored by its transaction from before the restart",
                        Some(r.tx.to_string()),
                    ),
                    None => {
                        self.store.close_daemon_batch(
                            &row.batch_id,
                            &hex24(&root),
                            size,
                            crate::ops::now(),
                        )?;
                        let r = chain
                            .anchor_journalled(
                                batch,
                                FixedBytes::from(root),
                                size,
                                &self.journal_sent(batch),
                            )
                            .await?;
                        ("anchored", Some(r.tx.to_string()))
                    }
                }
            }
            Lookup::Unavailable(e) => bail!("cannot read the registry (retry later): {e}"),
        };
        self.store.end_daemon_batch(
            &row.batch_id,
            DaemonBatchState::Anchored,
            tx.as_deref(),
            None,
            crate::ops::now(),
        )?;
        Ok((outcome.to_owned(), tx))
    }
}
