// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp verify`: a table (or JSON) of verdicts, and the exit status of the worst.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mailstamp::{
    chain::Chain,
    config::Config,
    util::now,
    verifying::{self, VerifyContext},
};
use mailstamp_core::{Envelope, Verdict};
use serde_json::json;

fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if paths.is_empty() {
        return Ok(vec![PathBuf::from("-")]);
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            v.sort();
            out.extend(v);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// The exit status of a verdict. Several messages: the most severe wins, by [`severity`]
/// (the status numbers predate `inapplicable`, whose 15 ranks between unstamped and invalid).
fn exit_code(v: Verdict) -> u8 {
    match v {
        Verdict::Wanted => 0,
        Verdict::Suspect => 10,
        Verdict::Unstamped => 11,
        Verdict::Invalid => 12,
        Verdict::Spam => 13,
        Verdict::Temperror => 14,
        Verdict::Inapplicable => 15,
    }
}

/// How severe an exit status is: its place in [`SEVERITY`] (an unknown one ranks last).
fn severity(code: u8) -> usize {
    SEVERITY
        .iter()
        .position(|c| *c == code)
        .unwrap_or(SEVERITY.len())
}

/// The exit statuses from least to most severe: 15 (inapplicable) came after the others were
/// numbered and ranks between unstamped and invalid.
const SEVERITY: [u8; 8] = [0, 1, 10, 11, 15, 12, 13, 14];

/// The configured store, for the recipients' other addresses (`mailstamp forwards`), when it
/// exists: a one-shot check never creates one. Unreachable: said once, and the stamps are
/// judged for the envelope alone.
fn forwards_store(cfg: &Config) -> Option<mailstamp::store::Store> {
    if cfg.store.url.is_none() && !cfg.store.path.exists() {
        return None;
    }
    match mailstamp::store::Store::connect(&cfg.store, None) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!(
                "mailstamp: the store is not readable ({e:#}): other addresses (`mailstamp forwards`) are not consulted"
            );
            None
        }
    }
}

/// The other addresses of `rcpts` in `store`.
fn other_addresses(store: &mailstamp::store::Store, rcpts: &[String]) -> Vec<String> {
    rcpts
        .iter()
        .filter_map(|r| mailstamp::people::forwards::of(store, r).ok())
        .flatten()
        .collect()
}

pub(crate) async fn run(
    cfg: &Config,
    paths: &[PathBuf],
    env: &Envelope,
    at: Option<u64>,
    json: bool,
) -> Result<u8> {
    let files = expand(paths)?;
    // A chain that cannot be reached is not an error here: each message becomes `temperror`.
    let registry = cfg.registry()?;
    let chain = Chain::connect(&cfg.chain, registry, None).await;
    let ctx = VerifyContext::from_config(cfg, Some(at.unwrap_or_else(now)))?;
    if !json {
        println!(
            "{:<36} {:<10} {:>5}  {:<28} {:<14} REASON",
            "FILE", "VERDICT", "SCORE", "DIFFERS", "TX"
        );
    }
    let mut worst = 0u8;
    let mut forwards: Option<Option<mailstamp::store::Store>> = None;
    for f in &files {
        let raw = match super::stamp::read_input(f) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("mailstamp: {e:#}");
                if severity(1) > severity(worst) {
                    worst = 1;
                }
                continue;
            }
        };
        let parsed = verifying::parse(&raw);
        let report =
            verifying::verify_parsed(chain.as_ref(), &ctx, &raw, parsed.as_ref(), env).await;
        let report = if report.verdict == Verdict::Spam {
            // Opened at the first message that needs it, once for the run.
            let store = forwards.get_or_insert_with(|| forwards_store(cfg));
            let others = store
                .as_ref()
                .map_or_else(Vec::new, |st| other_addresses(st, &env.rcpts));
            verifying::second_look(
                chain.as_ref(),
                &ctx,
                &raw,
                parsed.as_ref(),
                env,
                report,
                &others,
            )
            .await
        } else {
            report
        };
        let ev = match &chain {
            Ok(c) => verifying::recording_tx(c, &report, cfg.chain.from_block).await,
            Err(_) => None,
        };
        let tx = ev.as_ref().map(|e| e.tx);
        let code = exit_code(report.verdict);
        if severity(code) > severity(worst) {
            worst = code;
        }
        let file = f.display().to_string();
        if json {
            let mut v = mailstamp::audit::report_json(cfg, &report, ev.as_ref());
            if let serde_json::Value::Object(o) = &mut v {
                o.insert("file".into(), json!(file));
            }
            println!("{v}");
        } else {
            let name = Path::new(&file)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(file.clone());
            let score = report
                .score
                .map(|s| format!("{s:.2}"))
                .unwrap_or_else(|| "-".into());
            let txs = tx
                .map(|t| {
                    let s = t.to_string();
                    format!("{}…{}", &s[..8], &s[s.len() - 4..])
                })
                .unwrap_or_else(|| "-".into());
            println!(
                "{:<36} {:<10} {:>5}  {:<28} {:<14} {}",
                trunc(&name, 36),
                report.verdict.as_str(),
                score,
                trunc(&mailstamp::session::message::differed(&report), 28),
                txs,
                report.reason.as_deref().unwrap_or("")
            );
        }
    }
    Ok(worst)
}

fn trunc(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}
