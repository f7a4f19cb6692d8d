// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp recover`: the CLI face of `mailstamp::recover` (seed 004). Prints one line (or
//! JSON object) per message and a summary; a progress bar on stderr when it is a terminal and
//! the folder is long; `--watch` repeats the pass every `[recover] watch_interval_secs` and
//! learns from messages the user moved out by hand.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mailstamp::{
    config::Config,
    maildir,
    people::normalise_address,
    recover::{Options, Outcome, Recoverer, Summary},
    store::Store,
};
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};

/// A folder shorter than this gets no progress bar.
const BAR_FROM: usize = 50;

#[derive(Args)]
pub(crate) struct RecoverArgs {
    /// The Maildir folder to re-examine (e.g. ~/Maildir/.Junk).
    folder: PathBuf,
    /// The mailbox owner whose lists apply (default: each message's Delivered-To /
    /// X-Original-To).
    #[arg(long)]
    user: Option<String>,
    /// The Maildir folder released mail goes to (default: the Maildir++ root above FOLDER).
    #[arg(long)]
    inbox: Option<PathBuf>,
    /// Move released messages to the inbox and record every decision (default: dry run).
    #[arg(long)]
    apply: bool,
    /// Keep going as mail arrives (a pass every [recover] watch_interval_secs, or
    /// --interval), and learn: a kept message the user moves to the inbox by hand authorises
    /// its authenticated sender. Needs --apply and --user.
    #[arg(long)]
    watch: bool,
    /// Seconds between passes with --watch.
    #[arg(long)]
    interval: Option<u64>,
    /// Decide again messages decided in an earlier run.
    #[arg(long)]
    redecide: bool,
    /// One JSON object per message, then one for the summary.
    #[arg(long)]
    json: bool,
}

fn line(o: &Outcome, json: bool) -> String {
    if json {
        return json!({
            "file": o.file, "id": o.id, "message_id": o.message_id, "user": o.user,
            "from": o.from, "action": o.action, "reason": o.reason, "detail": o.detail,
            "verdict": o.verdict, "verified_at": o.verified_at, "auth": o.auth, "filters": o.filters,
            "authenticated_sender": o.authenticated_sender, "earlier": o.earlier,
            "moved_to": o.moved_to,
        })
        .to_string();
    }
    let name = o
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let filters: Vec<String> = o
        .filters
        .iter()
        .filter(|f| f.spam == Some(true))
        .map(|f| f.filter.to_owned())
        .collect();
    format!(
        "{:<8} {:<20} {:<32} {:<14} {}  {}",
        o.action.as_str(),
        o.reason,
        o.from.as_deref().unwrap_or("-"),
        if filters.is_empty() {
            "-".to_owned()
        } else {
            filters.join(",")
        },
        name,
        o.detail
    )
}

fn print_summary(s: &Summary, dry: bool, json: bool) {
    if json {
        println!("{}", json!({ "summary": s, "dry_run": dry }));
        return;
    }
    println!(
        "scanned {}, {} {}, kept {} ({} decided earlier), errors {}{}",
        s.scanned,
        if dry { "would release" } else { "released" },
        s.released,
        s.kept,
        s.earlier,
        s.errors,
        if s.learned > 0 {
            format!(", senders learned {}", s.learned)
        } else {
            String::new()
        }
    );
    for (reason, n) in &s.by_reason {
        println!("  {reason:<32} {n}");
    }
}

/// One pass; with `fresh_only` (the later passes of `--watch`) messages decided in an earlier
/// pass are neither printed nor counted again.
async fn one_pass(
    r: &Recoverer,
    folder: &Path,
    inbox: &Path,
    opts: &Options,
    json: bool,
    fresh_only: bool,
) -> Result<Summary> {
    let total = maildir::list(folder)?.len();
    let bar = if total >= BAR_FROM && std::io::stderr().is_terminal() {
        let b = ProgressBar::new(total as u64);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut fresh = Summary::default();
    let sum = r
        .pass(folder, inbox, opts, |o, i, _| {
            bar.set_position(i as u64);
            if fresh_only && o.earlier {
                return;
            }
            fresh.count(o);
            let l = line(o, json);
            if bar.is_hidden() {
                println!("{l}");
            } else {
                bar.println(l);
            }
        })
        .await?;
    bar.finish_and_clear();
    if fresh_only {
        fresh.errors = sum.errors;
        return Ok(fresh);
    }
    Ok(sum)
}

pub(crate) async fn run(cfg: &Config, a: RecoverArgs) -> Result<u8> {
    maildir::require_folder(&a.folder)?;
    let user = a
        .user
        .as_deref()
        .map(|u| normalise_address(u).map_err(|e| anyhow::anyhow!("--user: {e}")))
        .transpose()?;
    if a.watch && !a.apply {
        bail!(
            "--watch acts and learns as mail arrives: it needs --apply (run without --watch for a dry run)"
        );
    }
    if a.watch && user.is_none() {
        bail!("--watch learns for one mailbox owner: give --user ADDR");
    }
    let inbox = match a.inbox {
        Some(i) => i,
        None => maildir::inbox_of(&a.folder)?,
    };
    if a.apply {
        maildir::require_folder(&inbox).context("--inbox")?;
        if inbox.canonicalize().ok() == a.folder.canonicalize().ok() {
            bail!("the inbox and the folder are the same directory: nothing to release to");
        }
    }
    // A dry run reads the store (earlier decisions, lists) but writes nothing to it.
    let store = Store::connect(&cfg.store, None)
        .context("recover reads the lists in the store (store.path / --store)")?;
    let r = Recoverer::new(cfg, store).await?;
    let opts = Options {
        user: user.clone(),
        apply: a.apply,
        redecide: a.redecide,
    };
    let mut total = one_pass(&r, &a.folder, &inbox, &opts, a.json, false).await?;
    if a.watch {
        let user = user.context("--watch needs --user")?;
        let every =
            Duration::from_secs(a.interval.unwrap_or(cfg.recover.watch_interval_secs).max(1));
        let (mut term, mut int) = (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        );
        eprintln!(
            "mailstamp recover: watching {} every {}s (SIGTERM / Ctrl-C stops)",
            a.folder.display(),
            every.as_secs()
        );
        let mut since = None;
        loop {
            // Two seconds of slack: ctime has one-second resolution here.
            let started = mailstamp::util::now() as i64 - 2;
            for s in r.learn(&inbox, &user, since)? {
                total.learned += 1;
                if a.json {
                    println!("{}", json!({"learned": s, "user": user}));
                } else {
                    println!("learned  {s} (moved out of {} by hand)", a.folder.display());
                }
            }
            since = Some(started);
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = tokio::time::sleep(every) => {}
            }
            let s = one_pass(&r, &a.folder, &inbox, &opts, a.json, true).await?;
            total.add(&s);
        }
    }
    print_summary(&total, !a.apply, a.json);
    Ok(if total.errors > 0 { 1 } else { 0 })
}
