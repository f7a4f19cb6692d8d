// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp milter` and `mailstamp relay`: one start-up for both adapters — settings and
//! key, the shared daemon state, the batches a previous run left, the journal's pruning, and
//! the signals (SIGHUP reloads, SIGTERM/SIGINT stop after the work under way).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use alloy::signers::local::PrivateKeySigner;
use anyhow::Result;
use mailstamp::config::Overrides;
use mailstamp::session::{Daemon, Settings};
use mailstamp::stamping::batcher::Recovered;
use mailstamp::{keys, milter, relay};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::notice;

/// The settings of a daemon and its writer key, if one is configured: without one it still
/// verifies inbound mail, and outbound mail follows `milter.on_stamp_error`.
fn daemon_settings(
    what: &str,
    config: Option<&Path>,
    over: &Overrides,
    keystore: Option<&Path>,
) -> Result<(Settings, Option<PrivateKeySigner>)> {
    let settings = Settings::load(config, over)?;
    let has_key = keystore.is_some()
        || settings.cfg.writer.keystore.is_some()
        || std::env::var_os(keys::PRIVATE_KEY_ENV).is_some();
    let signer = if has_key {
        Some(keys::load(&settings.cfg.writer, keystore)?)
    } else {
        notice!(
            "mailstamp {what}: no writer key: outbound mail cannot be stamped (milter.on_stamp_error applies)"
        );
        None
    };
    Ok((settings, signer))
}

/// How often the daemons delete old ended batches from the journal (`stamp.journal_retention_days`).
const JOURNAL_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Which adapter a daemon serves, and where it listens (`--listen`).
pub(crate) enum Listen {
    /// `mailstamp milter --listen inet:HOST:PORT | unix:/path`.
    Milter(String),
    /// `mailstamp relay [--listen HOST:PORT]` (default `relay.listen`).
    Relay(Option<String>),
}

/// A bound listening socket of either adapter.
enum Bound {
    Milter(milter::Listener),
    Relay(tokio::net::TcpListener),
}

/// `mailstamp milter` and `mailstamp relay`: binds, serves until SIGTERM/SIGINT, reloads on
/// SIGHUP. The batches a previous run left are read before serving and dealt with beside it:
/// the MTA must not see the daemon missing while an anchor waits for the chain.
pub(crate) async fn run(
    config: Option<PathBuf>,
    over: Overrides,
    listen: Listen,
    keystore: Option<&Path>,
) -> Result<u8> {
    let what = match listen {
        Listen::Milter(_) => "milter",
        Listen::Relay(_) => "relay",
    };
    let (settings, signer) = daemon_settings(what, config.as_deref(), &over, keystore)?;
    let listen = match listen {
        Listen::Milter(l) => l,
        Listen::Relay(l) => l.unwrap_or_else(|| settings.cfg.relay.listen.clone()),
    };
    let next_hop = settings.cfg.relay.next_hop.clone();
    let metrics = settings.cfg.metrics.listen.clone();
    let d = Arc::new(
        Daemon::new(settings, signer, config.map(|p| (p, over)))
            .with_owner(format!("{what} {listen}")),
    );
    let pending = d.pending_batches().await;
    let listener = if what == "milter" {
        let (l, addr) = milter::bind(&listen).await?;
        notice!("mailstamp milter: listening on {addr}");
        Bound::Milter(l)
    } else {
        let (l, addr) = relay::bind(&listen).await?;
        notice!("mailstamp relay: listening on {addr}, next hop {next_hop}");
        Bound::Relay(l)
    };
    if let Some(m) = metrics {
        let (l, addr) = mailstamp::metrics::bind(&m)
            .await
            .map_err(|e| anyhow::anyhow!("metrics.listen: cannot listen on {m}: {e}"))?;
        notice!("mailstamp {what}: metrics on http://{addr}/metrics");
        tokio::spawn(mailstamp::metrics::serve(l));
    }
    // The stamps and anchors this daemon records are watched until final (PROTOCOL §5b).
    let watcher = d.clone();
    tokio::spawn(async move { watcher.watch_until_final().await });
    let funds = d.clone();
    tokio::spawn(async move { funds.watch_funds().await });
    let hk = d.clone();
    tokio::spawn(async move {
        let r = match pending {
            Ok(p) => hk.recover_batches(p).await,
            Err(e) => Err(e),
        };
        report_recovery(what, r);
        loop {
            if let Err(e) = hk.prune_journal().await {
                notice!("mailstamp {what}: cannot prune the batch journal: {e:#}");
            }
            tokio::time::sleep(JOURNAL_PRUNE_EVERY).await;
        }
    });
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    let server = match listener {
        Bound::Milter(l) => tokio::spawn(milter::run(l, d.clone(), shutdown)),
        Bound::Relay(l) => tokio::spawn(relay::run(l, d.clone(), shutdown)),
    };
    let result = supervise(what, server, stop, || d.reload()).await;
    if what == "milter" {
        milter::unbind(&listen);
    }
    result
}

/// Says what became of the batches a previous run left pending (batched mode). A failure is
/// not fatal: the daemon still serves, and the batches wait for the next start.
fn report_recovery(what: &str, r: mailstamp::Result<Vec<Recovered>>) {
    match r {
        Ok(done) => {
            for b in done {
                notice!(
                    "mailstamp {what}: pending batch {} ({} leaves): {}{}",
                    b.batch,
                    b.leaves,
                    b.outcome,
                    b.tx.map(|t| format!(", tx {t}")).unwrap_or_default()
                );
            }
        }
        Err(e) => notice!("mailstamp {what}: {e:#}"),
    }
}

/// Runs a daemon until SIGTERM or SIGINT (graceful: the server is told to stop and awaited)
/// or until it ends by itself; SIGHUP calls `reload`, and a failed reload keeps the old config.
async fn supervise<F: std::future::Future<Output = mailstamp::Result<()>>>(
    what: &str,
    mut server: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: tokio_util::sync::CancellationToken,
    reload: impl Fn() -> F,
) -> Result<u8> {
    let (mut term, mut int, mut hup) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
        signal(SignalKind::hangup())?,
    );
    let result = loop {
        tokio::select! {
            _ = term.recv() => break Ok(0),
            _ = int.recv() => break Ok(0),
            _ = hup.recv() => match reload().await {
                Ok(()) => notice!("mailstamp {what}: reloaded the config and maps"),
                Err(e) => notice!("mailstamp {what}: reload failed, the old config and maps stay in force: {e:#}"),
            },
            res = &mut server => break match res {
                Ok(Ok(())) => Ok(0),
                Ok(Err(e)) => Err(anyhow::anyhow!("the {what} stopped: {e}")),
                Err(e) => Err(anyhow::anyhow!("the {what} task failed: {e}")),
            },
        }
    };
    stop.cancel();
    if !server.is_finished() {
        let _ = server.await;
    }
    notice!("mailstamp {what}: stopped");
    result
}
