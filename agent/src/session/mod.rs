// SPDX-License-Identifier: GPL-3.0-or-later
//! The SMTP-session layer both MTA adapters share, the milter (`crate::milter`) and the relay
//! (`crate::relay`): the daemon's state ([`Daemon`]), the settings a message is judged with
//! ([`settings`]), what each map says at its stage ([`stages`]), THE mapping from a verdict to
//! an action ([`verdict`]), the texts of the headers mailstamp adds ([`results`]), and the work
//! on one whole message — stamp it or judge it ([`message`]). The adapters only turn protocol
//! events into these calls and their answers into their own wire form.

pub mod message;
pub mod results;
pub mod settings;
pub mod stages;
pub mod verdict;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use alloy::signers::local::PrivateKeySigner;

use crate::chain::{Chain, NoncePool};
use crate::config::{Overrides, PendingPolicy, StampMode};
use crate::error::{Context, Error, Result, bail, err};
use crate::stamping::batcher::{Batcher, Recovered};
use crate::stamping::watch::Watch;
use crate::store::{DaemonBatchRow, Store};
use tracing::warn;

pub use message::{
    Forward, Judgement, ListCopy, Message, Outbound, forward, judge, list_copy, log_inbound,
    log_outbound, remember_for_lists, stamp,
};
pub use results::{SCORE_HEADER, UNSTAMPED_HEADER, VERDICT_HEADER};
pub use settings::Settings;
pub use stages::{Refusal, Step};

/// A daemon's state, shared by all its sessions (the milter's and the relay's alike): the
/// settings (reloadable), the writer key, a lazily (re)connected chain, and in batch mode the
/// one batcher.
pub struct Daemon {
    settings: RwLock<Arc<Settings>>,
    source: Option<(PathBuf, Overrides)>,
    signer: Option<PrivateKeySigner>,
    chain: tokio::sync::Mutex<Option<Chain>>,
    /// The writer's nonce counter, kept across reconnects (sessions may still hold the old
    /// connection with transactions in flight).
    nonces: NoncePool,
    /// Who this daemon is in the batch journal (see [`Daemon::with_owner`]).
    owner: String,
    /// `stamp.mode = "batch"`: the batcher every session shares (made on first use; its
    /// store is `store.path` as it was then).
    batcher: tokio::sync::OnceCell<Arc<Batcher>>,
    /// The store of the batch and watch journals (opened on first use: `store.path` as it
    /// was then).
    store: tokio::sync::OnceCell<Arc<Store>>,
    /// When each stamp without a record was first seen (the grace of a missing record),
    /// across every session and reload.
    sightings: Arc<crate::verifying::Sightings>,
}

impl Daemon {
    /// A daemon judging with `settings`, stamping with `signer` (none: outbound mail cannot be
    /// stamped and meets `on_stamp_error`). `source` is the config file [`Daemon::reload`]
    /// reads again.
    pub fn new(
        settings: Settings,
        signer: Option<PrivateKeySigner>,
        source: Option<(PathBuf, Overrides)>,
    ) -> Self {
        Self {
            settings: RwLock::new(Arc::new(settings)),
            source,
            signer,
            chain: tokio::sync::Mutex::new(None),
            nonces: NoncePool::default(),
            owner: "milter".to_owned(),
            batcher: tokio::sync::OnceCell::new(),
            store: tokio::sync::OnceCell::new(),
            sightings: Arc::default(),
        }
    }

    /// The first sightings of stamps without a record, shared by every session.
    pub(crate) fn sightings(&self) -> Arc<crate::verifying::Sightings> {
        self.sightings.clone()
    }

    /// Names this daemon in the batch journal (default `milter`): the daemons give their kind
    /// and listen address, so that a milter and a relay sharing one store each recover only
    /// the batches they opened. Call it before serving.
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// The writer's address, when the daemon has a key.
    pub fn writer(&self) -> Option<alloy::primitives::Address> {
        self.signer.as_ref().map(|s| s.address())
    }

    /// The journals' store, opened on first use.
    async fn store(&self) -> Result<Arc<Store>> {
        self.store
            .get_or_try_init(|| async {
                let s = self.settings();
                Ok::<_, Error>(match &s.stamp.active_only {
                    // Provider mode already opened the same file.
                    Some(st) => st.clone(),
                    None => {
                        let cfg = s.cfg.store.clone();
                        let store = tokio::task::spawn_blocking(move || Store::connect(&cfg, None))
                            .await
                            .map_err(|e| err!("opening the store: {e}"))?
                            .context("the batch and watch journals need the store (store.path or store.url)")?;
                        Arc::new(store)
                    }
                })
            })
            .await
            .cloned()
    }

    /// The shared batcher, opening the store on first use.
    pub(crate) async fn batcher(&self) -> Result<Arc<Batcher>> {
        self.batcher
            .get_or_try_init(|| async {
                Ok::<_, Error>(Arc::new(Batcher::new(
                    self.store().await?,
                    self.owner.clone(),
                )))
            })
            .await
            .cloned()
    }

    /// The watch of this daemon's recorded writes ([`crate::stamping::watch`]).
    pub(crate) async fn watch(&self) -> Result<Watch> {
        Ok(Watch::new(self.store().await?, self.owner.clone()))
    }

    /// Watches this daemon's recorded stamps and anchors until they are final, a round at
    /// each new head (docs/PROTOCOL.md §5b), for ever: the daemons run it on its own task.
    /// A daemon without a writer key has nothing to watch. Rounds that fail (chain or store
    /// trouble) are logged and tried again.
    pub async fn watch_until_final(&self) {
        if self.signer.is_none() {
            return;
        }
        let w = match self.watch().await {
            Ok(w) => w,
            Err(e) => {
                warn!("cannot watch recorded writes: {e:#}");
                return;
            }
        };
        let mut last_error = String::new();
        loop {
            let poll = Duration::from_millis(self.settings().cfg.chain.head_poll_ms);
            let chain = match self.chain().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("watch: chain unavailable: {e:#}");
                    tokio::time::sleep(poll.max(Duration::from_secs(1))).await;
                    continue;
                }
            };
            match w.round(&chain).await {
                Ok(r) => {
                    last_error.clear();
                    if r.finalised + r.moved + r.resent + r.renewed > 0 {
                        tracing::debug!(?r, "watch round");
                    }
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    if e != last_error {
                        warn!("watching recorded writes: {e}; trying again at the next head");
                        last_error = e;
                    }
                }
            }
            // Woken by the next head; a quiet chain is asked again now and then.
            let _ = chain
                .next_head(tokio::time::Instant::now() + poll * 30)
                .await;
        }
    }

    /// Watches the writer's funds for ever (the daemons run it on its own task): the balance
    /// at start (logged), then every minute the runway at the rate spent since start; low
    /// (`chain.low_funds_hours`, see [`crate::chain::funds_warning`]) → a warning, repeated
    /// hourly while it stays low. Nothing without a writer key.
    pub async fn watch_funds(&self) {
        use alloy::primitives::U256;
        const EVERY: Duration = Duration::from_secs(60);
        if self.signer.is_none() {
            return;
        }
        let mut start: Option<(std::time::Instant, U256)> = None;
        let mut warned: Option<std::time::Instant> = None;
        loop {
            let checked = async {
                let chain = self.chain().await?;
                let balance = chain.balance().await?.unwrap_or_default();
                let fee = chain.max_fee().await.unwrap_or(0);
                Ok::<_, Error>((chain.writer, balance, fee))
            }
            .await;
            match checked {
                Ok((writer, balance, fee)) => {
                    let writer = writer.map(|w| format!("{w:#x}")).unwrap_or_default();
                    crate::metrics::METRICS
                        .writer_balance_eth
                        .set(f64::from(balance) / 1e18);
                    let (t0, b0) = match start {
                        // A top-up starts the rate again.
                        Some((t0, b0)) if balance <= b0 => (t0, b0),
                        _ => {
                            tracing::info!(%writer, balance = %crate::chain::eth(balance), "writer balance (ETH)");
                            start = Some((std::time::Instant::now(), balance));
                            (std::time::Instant::now(), balance)
                        }
                    };
                    let hours = t0.elapsed().as_secs_f64() / 3600.0;
                    let spent = b0 - balance;
                    let rate = (hours > 0.0 && !spent.is_zero()).then(|| {
                        // Wei per hour, from a rate in f64 (precise enough for a runway).
                        let per_hour = f64::from(spent) / hours;
                        U256::from(per_hour.max(1.0) as u128)
                    });
                    if let Some(r) = rate {
                        crate::metrics::METRICS
                            .writer_runway_hours
                            .set(f64::from(balance) / f64::from(r));
                    }
                    let low = self.settings().cfg.chain.low_funds_hours;
                    match crate::chain::funds_warning(balance, rate, fee, low) {
                        Some(w)
                            if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) =>
                        {
                            warn!(%writer, "low funds: {w}; send ETH to the writer");
                            warned = Some(std::time::Instant::now());
                        }
                        Some(_) => {}
                        None => warned = None,
                    }
                }
                Err(e) => tracing::debug!("funds check: {e:#}"),
            }
            tokio::time::sleep(EVERY).await;
        }
    }

    /// At start, in batched mode: the batches a previous run left pending (none in direct
    /// mode). Call it before serving: a batch opened after this is not among them, so
    /// [`Daemon::recover_batches`] can then run beside the sessions.
    pub async fn pending_batches(&self) -> Result<Vec<DaemonBatchRow>> {
        if self.settings().cfg.stamp.mode != StampMode::Batch {
            return Ok(Vec::new());
        }
        let b = self.batcher().await?;
        b.pending().await
    }

    /// Batched mode: deletes anchored and dropped batches older than
    /// `stamp.journal_retention_days` from the journal; the daemons call it at start and
    /// hourly. Nothing in direct mode.
    pub async fn prune_journal(&self) -> Result<usize> {
        let s = self.settings();
        if s.cfg.stamp.mode != StampMode::Batch {
            return Ok(0);
        }
        let b = self.batcher().await?;
        b.prune(s.cfg.stamp.journal_retention_days).await
    }

    /// Applies `stamp.pending_on_restart` to `pending` (from [`Daemon::pending_batches`]);
    /// a batch released at close (`stamp.release = "closed"`) is anchored whatever the policy
    /// says, waiting for the chain as long as it takes. It may wait for the chain (and for an
    /// anchor still in the pool), so the daemons run it on its own task once they listen.
    pub async fn recover_batches(&self, pending: Vec<DaemonBatchRow>) -> Result<Vec<Recovered>> {
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.settings();
        let b = self.batcher().await?;
        let policy = s.cfg.stamp.pending_on_restart;
        let released = pending.iter().any(|r| r.released);
        let chain = if released {
            // Messages carry these batches' headers: wait for the chain as long as it takes.
            let mut pause = Duration::from_secs(1);
            loop {
                match self.chain().await {
                    Ok(c) => break Some(c),
                    Err(e) => warn!(
                        "released batches wait for the chain ({e:#}): next try in {} s",
                        pause.as_secs()
                    ),
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(60));
            }
        } else {
            match policy {
                PendingPolicy::Drop => None,
                PendingPolicy::Anchor => Some(
                    self.chain()
                        .await
                        .map_err(|e| err!("pending batches left for the next start: {e:#}"))?,
                ),
            }
        };
        b.recover(pending, policy, chain.as_ref()).await
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the config file and maps again. On any error the old settings stay in force and
    /// the error (with file and line for a map) is returned. Sessions under way keep the
    /// settings they started the message with.
    pub async fn reload(&self) -> Result<()> {
        let Some((path, over)) = &self.source else {
            bail!("no config file to reload");
        };
        // Files, DNS set-up and the store open: on the blocking pool, not a runtime worker.
        let (path, over) = (path.clone(), over.clone());
        let new = tokio::task::spawn_blocking(move || Settings::load(Some(&path), &over))
            .await
            .map_err(|e| err!("reloading: {e}"))??;
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        // The chain settings may have changed: connect afresh on the next message.
        *self.chain.lock().await = None;
        Ok(())
    }

    /// The chain connection, made on first use and after any failure.
    pub(crate) async fn chain(&self) -> Result<Chain> {
        let mut slot = self.chain.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let s = self.settings();
        let registry = s.cfg.registry()?;
        let c =
            Chain::connect_in(&s.cfg.chain, registry, self.signer.clone(), &self.nonces).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Forgets the connection (after an error), so that the next message reconnects; the
    /// nonce counter is kept (it asks the node again after a failed send).
    pub(crate) async fn drop_chain(&self) {
        *self.chain.lock().await = None;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::message::{Client, judge};
    use super::*;
    use crate::verifying;

    /// A directory with a config file `m.toml` holding `text`.
    fn config(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mailstamp-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.toml");
        let text = text.replace("STORE", &dir.join("state.sqlite").display().to_string());
        std::fs::write(&path, text).unwrap();
        path
    }

    const OFFLINE: &str = "[chain]\nrpc_url = \"http://127.0.0.1:1\"\ntimeout_secs = 1\n\
        registry = \"0x0000000000000000000000000000000000000001\"\n\
        [dns]\nnameservers = [\"127.0.0.1:1\"]\ntimeout_secs = 1\nattempts = 1\n\
        [store]\npath = \"STORE\"\n";

    #[tokio::test]
    async fn a_reload_with_a_typo_keeps_the_old_settings_and_names_the_key() {
        let path = config("reload", &format!("{OFFLINE}[milter]\nmax_sessions = 7\n"));
        let settings = Settings::load(Some(&path), &Overrides::default()).unwrap();
        let d = Daemon::new(settings, None, Some((path.clone(), Overrides::default())));
        std::fs::write(&path, format!("{OFFLINE}[milter]\nmax_sessions = 0\n")).unwrap();
        let e = d.reload().await.unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: milter.max_sessions: must be at least 1",
                path.display()
            )
        );
        assert_eq!(
            d.settings().cfg.milter.max_sessions,
            7,
            "the old settings stay"
        );
        std::fs::write(&path, format!("{OFFLINE}[milter]\nmax_sessions = 9\n")).unwrap();
        d.reload().await.unwrap();
        assert_eq!(d.settings().cfg.milter.max_sessions, 9);
    }

    /// Defect 2 of issue 10: the provider check at RCPT asked SQLite on the runtime's worker;
    /// with the store held by another writer, the whole (here single-threaded) runtime stood
    /// still. Now the check waits on the blocking pool and the runtime goes on: a ticker on the
    /// same thread keeps ticking while RCPT waits for the store.
    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_store_does_not_stall_the_runtime() {
        let path = config(
            "slow-store",
            &format!("{OFFLINE}[provider]\nenabled = true\nzone = \"p.example\"\n"),
        );
        let s = Settings::load(Some(&path), &Overrides::default()).unwrap();
        let store = s.stamp.active_only.clone().unwrap();
        store.add_domain("b.example", "acme", 1).unwrap();
        store.set_active("b.example", 2).unwrap();
        // Another writer holds the store for a while.
        let (held, (tx, rx)) = (store.clone(), std::sync::mpsc::channel());
        let holder = std::thread::spawn(move || {
            held.with(|_| {
                tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(600));
                Ok(())
            })
            .unwrap();
        });
        rx.recv().unwrap();
        let ticks = Arc::new(AtomicU32::new(0));
        let t = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                t.fetch_add(1, Ordering::Relaxed);
            }
        });
        let r = stages::at_rcpt(&s, "bob@b.example", false).await;
        assert_eq!(r, Ok(None), "an active customer domain");
        assert!(
            ticks.load(Ordering::Relaxed) > 0,
            "the runtime ran other tasks while RCPT waited for the store"
        );
        ticker.abort();
        holder.join().unwrap();
    }

    /// Defect 5 of issue 10: an inbound message was parsed by the verifier and again for the
    /// From identity. Now one parse serves both (mail-auth reads the header section itself).
    #[tokio::test(flavor = "current_thread")]
    async fn an_inbound_message_is_parsed_once() {
        let path = config(
            "parse-once",
            &format!("{OFFLINE}[inbound]\nenabled = true\n"),
        );
        let settings = Settings::load(Some(&path), &Overrides::default()).unwrap();
        let d = Daemon::new(settings, None, None);
        let mut m = Message::new(d.settings(), false, "ann@a.example".into(), None);
        m.rcpts.push("bob@b.example".into());
        m.rcpt_policies.push(None);
        let raw = b"From: Ann <ann@a.example>\r\nTo: bob@b.example\r\nSubject: hi\r\n\r\nhello\r\n";
        let client = Client {
            ip: Some("192.0.2.1".parse().unwrap()),
            helo: "mx.a.example",
        };
        let before = verifying::parses();
        let j = judge(&d, &m, raw, client).await;
        assert_eq!(verifying::parses() - before, 1);
        assert_eq!(j.report.verdict, mailstamp_core::Verdict::Unstamped);
        let folder = j
            .headers
            .iter()
            .find(|(n, _)| *n == crate::inbound::FOLDER_HEADER);
        assert_eq!(
            folder.map(|(_, v)| v.as_str()),
            Some(" Unknown"),
            "{:?}",
            j.headers
        );
        let ar = &j.headers[0].1;
        assert!(ar.contains("header.from=a.example"), "{ar}");
    }
}
