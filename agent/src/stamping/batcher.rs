// SPDX-License-Identifier: GPL-3.0-or-later
//! Batched anchoring inside the daemons (`stamp.mode = "batch"`, docs/PROTOCOL.md §5a): the
//! one [`Batcher`] a milter or relay shares between its sessions. It owns the open batch, its
//! journal in the store (migration 5: every leaf before it is taken, the root before the
//! anchor is sent, the outcome after), closing a batch after `batch_max` leaves or
//! `batch_wait_ms`, the one `anchor` transaction per batch, handing each waiting message its
//! leaf index and proof, and what happens at start to batches a crash left pending
//! ([`Batcher::recover`], by `stamp.pending_on_restart`).
//!
//! A mined anchor goes into the watch journal ([`super::watch`]) until it is final.
//!
//! By default (`stamp.release = "mined"`) a message gets its proof only after the anchor is
//! mined; the caller waits at most `hold_timeout_ms` for it and otherwise defers the message
//! without a header. So a batch whose anchor never lands has no message out there that needs
//! it. With `release = "closed"` every message gets its proof as soon as the batch's root is
//! journalled (flagged `released`); from then on the batch is never dropped: its anchor is
//! retried until mined, here and after a restart ([`Batcher::recover`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{B256, FixedBytes};
use mailstamp_core::digest::Commitment;
use mailstamp_core::merkle::{Node, Tree, short};
use mailstamp_core::{Envelope, insert_header};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::chain::{Chain, Journalled, Recorded};
use crate::config::{PendingPolicy, Release};
use crate::error::{Context, Result, bail};
use crate::store::{DaemonBatchState, Store};

use super::{AnchorState, StampContext, Stamped, anchor_state, check_and_prepare, writer_of};

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
    /// The anchoring transaction (`None`: released at close, before the anchor is mined).
    pub recorded: Option<Recorded>,
}

/// What a waiting message is told when its batch is done.
pub type LeafOutcome = Result<Leaf>;

/// How long a message waits for its batch: how batches are cut, and the longest it waits for
/// the anchor (`stamp.hold_timeout_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// How batches are cut.
    pub cut: Cut,
    /// How long a message waits for its batch's anchor to be mined.
    pub timeout: Duration,
}

impl Hold {
    /// What `[stamp]` says (read per message, so a reload applies to the next one).
    pub fn of(st: &crate::config::StampConfig) -> Self {
        Self {
            cut: Cut {
                max: st.batch_max,
                wait: Duration::from_millis(st.batch_wait_ms),
                release: st.release,
            },
            timeout: Duration::from_millis(st.hold_timeout_ms),
        }
    }
}

/// How batches are cut (from `[stamp]`, read per message so a reload applies to the next
/// batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// Leaves that close a batch.
    pub max: usize,
    /// How long a batch stays open after its first leaf.
    pub wait: Duration,
    /// When its messages get their headers (the batch's first message decides for it).
    pub release: Release,
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
    waiters: Vec<oneshot::Sender<LeafOutcome>>,
    /// What every leaf's header names: the chain, the registry and the writer. A message for
    /// another one closes this batch first (a reload changed `[chain]`), so the anchor always
    /// lands where the headers point.
    key: BatchKey,
    /// The connection of the latest message with this key (the freshest after a reconnect).
    chain: Chain,
    /// When its first leaf came (the batch's age when its anchor is mined: a metric).
    opened: std::time::Instant,
    /// When its messages get their headers.
    release: Release,
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

/// The first pause before a released batch's anchor is tried again; it doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest pause between two tries of a released batch's anchor.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Hands each waiter of `b` its leaf and proof in `tree` (`recorded`: the mined anchor, or
/// `None` when released at close). A waiter that stopped waiting is skipped.
fn tell(
    waiters: Vec<oneshot::Sender<LeafOutcome>>,
    b: &Open,
    tree: &Tree,
    recorded: Option<Recorded>,
) {
    let size = b.leaves.len() as u32;
    for (i, w) in waiters.into_iter().enumerate() {
        let _ = w.send(Ok(Leaf {
            batch: b.id,
            index: i as u32,
            size,
            proof: tree.proof(i),
            recorded: recorded.clone(),
        }));
    }
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
    ) -> Result<oneshot::Receiver<LeafOutcome>> {
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
    ) -> Result<oneshot::Receiver<LeafOutcome>> {
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
                .map_err(|e| crate::error::err!("the system random generator failed: {e}"))?;
            let id = B256::from(id);
            self.store
                .open_daemon_batch(&id.to_string(), &self.owner, crate::util::now())
                .context("cannot journal a new batch")?;
            *slot = Some(Open {
                id,
                leaves: Vec::new(),
                waiters: Vec::new(),
                key,
                chain: chain.clone(),
                opened: std::time::Instant::now(),
                release: cut.release,
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

    /// Closes a batch: root journalled, one anchor sent and mined, each waiter told its leaf —
    /// once the anchor is mined, or (`release = "closed"`) as soon as the root is journalled.
    /// A batch not released that fails is dropped and every waiter told why (its messages are
    /// deferred; should the transaction still be mined later, that is harmless). A released
    /// batch is never dropped: its anchor is retried until mined ([`Batcher::anchor_released`]).
    async fn anchor(self: Arc<Self>, mut b: Open) {
        let id = b.id.to_string();
        let release = b.release == Release::Closed;
        // Whether the headers went out: only then must the anchor be had at any cost (a root
        // that could not be journalled released nothing, and the batch is dropped as usual).
        let mut released = false;
        let result = match self.close(&b, release).await {
            Ok(tree) if release => {
                released = true;
                info!(batch = %id, size = b.leaves.len(), "batch closed: headers released before its anchor is mined");
                let waiters = std::mem::take(&mut b.waiters);
                tell(waiters, &b, &tree, None);
                self.anchor_inner(&b, tree).await
            }
            Ok(tree) => self.anchor_inner(&b, tree).await,
            Err(e) => Err(e),
        };
        let now = crate::util::now();
        match result {
            Ok((tree, recorded)) => {
                let (bid, tx) = (id.clone(), recorded.tx.to_string());
                let ended = self
                    .store
                    .call(move |s| {
                        s.end_daemon_batch(&bid, DaemonBatchState::Anchored, Some(&tx), None, now)
                    })
                    .await;
                if let Err(e) = ended {
                    warn!(batch = %id, "cannot journal the anchor: {e:#}");
                }
                info!(batch = %id, size = b.leaves.len(), tx = %recorded.tx, block = recorded.block, "batch anchored");
                let waiters = std::mem::take(&mut b.waiters);
                tell(waiters, &b, &tree, Some(recorded));
            }
            Err(e) if released => {
                // Its headers are out: anchored whatever it takes, the journal says how far.
                warn!(batch = %id, size = b.leaves.len(), "released batch not anchored yet ({e:#}): retrying until it is");
                let (outcome, tx) = self.anchor_released(&b.chain, &id).await;
                info!(batch = %id, size = b.leaves.len(), tx = tx.as_deref().unwrap_or("-"), "released batch {outcome}");
            }
            Err(e) => {
                let e = e.context(format!("batch {id} not anchored"));
                let why = format!("{e:#}");
                warn!(batch = %id, size = b.leaves.len(), "{why}");
                let bid = id.clone();
                let ended = self
                    .store
                    .call(move |s| {
                        s.end_daemon_batch(&bid, DaemonBatchState::Dropped, None, Some(&why), now)
                    })
                    .await;
                if let Err(e) = ended {
                    warn!(batch = %id, "cannot journal the dropped batch: {e:#}");
                }
                for w in b.waiters {
                    let _ = w.send(Err(e.clone()));
                }
            }
        }
    }

    /// Anchors the released batch `id` (its messages carry its headers), trying again — with
    /// a pause doubling from 1 s to 60 s — until its anchor is on chain. Each try starts from
    /// the journal and the chain ([`Batcher::anchor_pending`]): an anchor already there is
    /// recognised, one still in the pool waited for, so it is never sent twice. What became
    /// of it and the transaction this sent (if any).
    async fn anchor_released(&self, chain: &Chain, id: &str) -> (String, Option<String>) {
        let mut pause = RETRY_FIRST;
        loop {
            tokio::time::sleep(pause).await;
            let (bid, owner) = (id.to_owned(), self.owner.clone());
            let row = self
                .store
                .call(move |s| s.daemon_batches_of(&owner, &[DaemonBatchState::Closed]))
                .await
                .and_then(|rows| {
                    rows.into_iter()
                        .find(|r| r.batch_id == bid)
                        .context("not closed in the journal any more")
                });
            let r = match row {
                Ok(row) => match self.anchor_pending(chain, &row).await {
                    Ok(done) => return done,
                    Err(e) => e,
                },
                Err(e) => e,
            };
            pause = (pause * 2).min(RETRY_MAX);
            warn!(batch = %id, "released batch still not anchored ({r:#}): next try in {} s", pause.as_secs());
        }
    }

    /// [`Batcher::anchor_sent`], and the mined anchor journalled to watch until final.
    async fn anchor_inner(&self, b: &Open, tree: Tree) -> Result<(Tree, Recorded)> {
        let sent = self.anchor_sent(b, &tree).await?;
        crate::metrics::METRICS
            .batch_size
            .observe(tree.len() as f64);
        crate::metrics::METRICS
            .batch_age_seconds
            .observe(b.opened.elapsed().as_secs_f64());
        let root = FixedBytes::from(short(&tree.root()));
        let recorded = sent.recorded.clone();
        self.watch(&b.chain, b.id, root, tree.len() as u32, sent)
            .await;
        Ok((tree, recorded))
    }

    /// Journals an anchor to watch until it is final ([`super::watch`]); a journal that
    /// fails is logged, not fatal: the anchor is mined, only its watch is lost.
    async fn watch(
        &self,
        chain: &Chain,
        batch: B256,
        root: FixedBytes<24>,
        size: u32,
        sent: crate::chain::Sent,
    ) {
        let r = super::watch::Recording {
            kind: crate::store::WatchKind::Anchor,
            key: batch,
            value: root,
            size,
            sent,
        };
        let w = super::watch::Watch::new(self.store.clone(), self.owner.clone());
        if let Err(e) = w.add(chain, &r).await {
            warn!(%batch, "{e:#}: the anchor is mined, but a reorg would not be noticed");
        }
    }

    /// The batch's tree, its root journalled (`released`: and flagged so) — after this no
    /// other root can be anchored under its id by this agent.
    async fn close(&self, b: &Open, released: bool) -> Result<Tree> {
        let tree = Tree::build(&b.leaves).context("empty batch")?;
        let root = short(&tree.root());
        let size = u32::try_from(b.leaves.len()).context("batch too large")?;
        let (bid, r) = (b.id.to_string(), hex24(&root));
        self.store
            .call(move |s| s.close_daemon_batch(&bid, &r, size, released, crate::util::now()))
            .await
            .context("cannot journal the batch root")?;
        Ok(tree)
    }

    /// The closed batch's anchor sent (journalled) until mined.
    async fn anchor_sent(&self, b: &Open, tree: &Tree) -> Result<crate::chain::Sent> {
        let root = short(&tree.root());
        let size = u32::try_from(b.leaves.len()).context("batch too large")?;
        crate::util::fault("before-anchor");
        let sent = b
            .chain
            .anchor_journalled(b.id, FixedBytes::from(root), size, &self.journal_sent(b.id))
            .await?;
        crate::util::fault("after-anchor");
        Ok(sent)
    }

    /// Deletes this store's anchored and dropped batches (every owner's) older than
    /// `retention_days` (0: keep all); how many went.
    pub async fn prune(&self, retention_days: u64) -> Result<usize> {
        if retention_days == 0 {
            return Ok(0);
        }
        let before = crate::util::now().saturating_sub(retention_days.saturating_mul(86_400));
        let n = self
            .store
            .call(move |s| s.prune_daemon_batches(before))
            .await?;
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
    pub async fn pending(&self) -> Result<Vec<crate::store::DaemonBatchRow>> {
        let owner = self.owner.clone();
        self.store
            .call(move |s| {
                s.daemon_batches_of(&owner, &[DaemonBatchState::Open, DaemonBatchState::Closed])
            })
            .await
    }

    /// Journals each anchor transaction of `batch` before it is sent.
    fn journal_sent(&self, batch: B256) -> impl Fn(B256) -> Journalled + Send + Sync + 'static {
        let store = self.store.clone();
        move |tx| {
            let store = store.clone();
            Box::pin(async move {
                store
                    .call(move |s| {
                        s.add_daemon_sent(&batch.to_string(), &tx.to_string(), crate::util::now())
                    })
                    .await
            })
        }
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
            let now = crate::util::now();
            let leaves = row.leaves.len();
            let policy = if row.released {
                PendingPolicy::Anchor
            } else {
                policy
            };
            let r = match policy {
                PendingPolicy::Drop => {
                    let id = row.batch_id.clone();
                    self.store
                        .call(move |s| {
                            s.end_daemon_batch(
                                &id,
                                DaemonBatchState::Dropped,
                                None,
                                Some("pending at restart; stamp.pending_on_restart = drop"),
                                now,
                            )
                        })
                        .await
                        .map(|()| ("dropped".to_owned(), None))
                }
                PendingPolicy::Anchor => match chain {
                    Some(c) => self.anchor_pending(c, &row).await,
                    None => Err(crate::error::err!("no chain connection")),
                },
            };
            // A released batch's headers are out there: it is anchored until it is.
            let r = match (r, chain) {
                (Err(e), Some(c)) if row.released => {
                    warn!(batch = %row.batch_id, "released batch not anchored yet ({e:#}): retrying until it is");
                    Ok(self.anchor_released(c, &row.batch_id).await)
                }
                (r, _) => r,
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
            self.end(
                &row.batch_id,
                DaemonBatchState::Dropped,
                None,
                Some("no leaves"),
            )
            .await?;
            return Ok(("dropped (empty)".to_owned(), None));
        };
        let root = short(&tree.root());
        if let Some(r) = &row.root
            && *r != hex24(&root)
        {
            bail!("journal: the leaves do not give the journalled root {r}");
        }
        let size = u32::try_from(leaves.len()).context("batch too large")?;
        let (outcome, tx) = match anchor_state(chain, writer, batch, root).await? {
            AnchorState::Ours => ("already anchored", None),
            AnchorState::Absent => {
                // An anchor sent before the crash may still be in the pool: wait for it
                // rather than send a second one (it would revert once the first is mined).
                let sent = row
                    .sent
                    .iter()
                    .map(|h| h.parse::<B256>())
                    .collect::<Result<Vec<_>, _>>()
                    .context("journal: bad transaction hash")?;
                if !sent.is_empty() {
                    info!(batch = %row.batch_id, "pending batch: its anchor sent before the restart is not on chain yet; waiting for it, never sending a second");
                }
                match chain.wait_sent(&sent).await? {
                    Some(r) => (
                        "anchored by its transaction from before the restart",
                        Some(r.tx.to_string()),
                    ),
                    None => {
                        let (id, r) = (row.batch_id.clone(), hex24(&root));
                        let released = row.released;
                        self.store
                            .call(move |s| {
                                s.close_daemon_batch(&id, &r, size, released, crate::util::now())
                            })
                            .await?;
                        let r = chain
                            .anchor_journalled(
                                batch,
                                FixedBytes::from(root),
                                size,
                                &self.journal_sent(batch),
                            )
                            .await?;
                        let tx = r.recorded.tx.to_string();
                        self.watch(chain, batch, FixedBytes::from(root), size, r)
                            .await;
                        ("anchored", Some(tx))
                    }
                }
            }
        };
        self.end(&row.batch_id, DaemonBatchState::Anchored, tx.clone(), None)
            .await?;
        Ok((outcome.to_owned(), tx))
    }

    /// Journals the outcome of batch `id` (on the blocking pool).
    async fn end(
        &self,
        id: &str,
        state: DaemonBatchState,
        tx: Option<String>,
        note: Option<&'static str>,
    ) -> Result<()> {
        let id = id.to_owned();
        self.store
            .call(move |s| s.end_daemon_batch(&id, state, tx.as_deref(), note, crate::util::now()))
            .await
    }
}

/// Takes `commitment` into the shared batch and waits for its leaf (at most
/// `hold.timeout`): what a batched stamp or hop goes on with.
pub(crate) async fn leaf_of(
    batcher: &Arc<Batcher>,
    chain: &Chain,
    commitment: Commitment,
    hold: Hold,
) -> Result<Leaf> {
    let rx = batcher.submit(chain, commitment, hold.cut).await?;
    match tokio::time::timeout(hold.timeout, rx).await {
        Ok(Ok(Ok(leaf))) => Ok(leaf),
        Ok(Ok(Err(why))) => Err(why),
        Ok(Err(_)) => bail!("the batcher stopped before the batch was anchored"),
        Err(_) => bail!(
            "the batch anchor was not mined within stamp.hold_timeout_ms ({} ms)",
            hold.timeout.as_millis()
        ),
    }
}

/// Stamps one message in batched mode (docs/PROTOCOL.md §5a) through the daemon's shared
/// `batcher`: the same checks and preparation as [`super::stamp`], then the commitment goes into the
/// open batch and this waits — at most `hold` — for that batch's anchor to be mined (or, with
/// `release = "closed"`, for the batch to close). Only then does the message get its header
/// (mode `b`, its leaf's proof). Past `hold` it is an error: the caller defers the message,
/// which never carries this stamp.
pub async fn stamp_batched(
    chain: &Chain,
    ctx: &StampContext,
    batcher: &Arc<Batcher>,
    hold: Hold,
    raw: &[u8],
    env: &Envelope,
) -> Result<Stamped> {
    let writer = writer_of(chain)?;
    let mut p = check_and_prepare(ctx, writer, &chain.chain_ref(writer), raw, env).await?;
    let leaf = leaf_of(batcher, chain, p.commitment, hold).await?;
    p.header.mode = mailstamp_core::header::Mode::Batch {
        batch: leaf.batch.0,
        proof: leaf.proof,
    };
    Ok(Stamped {
        message: insert_header(raw, &p.header),
        token: B256::from(p.token),
        recorded: leaf.recorded,
        batch: Some((leaf.batch, leaf.index)),
        recording: None,
    })
}
