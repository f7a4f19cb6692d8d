// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp audit`: the on-chain record of a stamp, by token or by message file; and
//! `mailstamp audit --serve`, the audit page (the library's `audit::server`).
use std::path::{Path, PathBuf};
use std::sync::Arc;

use alloy::primitives::{Address, B256};
use anyhow::{Context, Result, bail};
use mailstamp::{
    audit::{self, Auditor},
    chain::{self, Chain},
    config::Config,
    keys,
    util::rfc3339,
};
use mailstamp_core::{Inspection, StampHeader, inspect};
use serde_json::json;

/// The record a target names: a stamped message file's (with its header), or a token's.
fn target_record(
    target: &str,
    writer: Option<Address>,
) -> Result<(chain::RecordKey, Option<Address>, Option<Box<StampHeader>>)> {
    if Path::new(target).is_file() {
        let raw = super::stamp::read_input(Path::new(target))?;
        let msg = mailstamp_core::parse(&raw).context("not an RFC 5322 message")?;
        match inspect(&msg) {
            Inspection::Stamped(h) => Ok((
                chain::RecordKey::of(&h),
                Some(Address::from(h.writer)),
                Some(h),
            )),
            Inspection::Unstamped => bail!("{target} has no Mail-Stamp header"),
            Inspection::Invalid(why) => bail!("{target}: Mail-Stamp header does not decode: {why}"),
        }
    } else {
        let t: B256 = target.parse().with_context(|| {
            format!("`{target}` is neither a file nor a token (0x followed by 64 hex digits)")
        })?;
        Ok((chain::RecordKey::Stamp(t), writer, None))
    }
}

pub(crate) async fn run(
    cfg: &Config,
    target: &str,
    writer: Option<Address>,
    json: bool,
) -> Result<u8> {
    let chain = Chain::connect(&cfg.chain, cfg.registry()?, None).await?;
    let (key, writer, header) = target_record(target, writer)?;
    let (token, batch) = match key {
        chain::RecordKey::Stamp(t) => (t, None),
        chain::RecordKey::Batch(b) => (
            B256::from(header.as_ref().map(|h| h.token()).unwrap_or_default()),
            Some(b),
        ),
    };
    // The record as the audit page shows it: its event names the writer when only the token
    // is known.
    let registry = chain.registry;
    let auditor = Auditor::new(chain.clone(), Arc::new(cfg.clone()), None);
    let Some(rec) = auditor.record_of(key, writer).await? else {
        bail!(
            "no event for {key:?} in registry {registry} from block {}: check the token, --writer and chain.from_block",
            cfg.chain.from_block
        );
    };
    // Shown once it counts as confirmed: the commitment (direct) or the batch root its proof
    // leads to.
    let commitment = rec
        .confirmed
        .then(|| format!("0x{}", hex::encode(rec.value)));
    let matches = header.as_ref().map(|h| {
        commitment.as_deref()
            == Some(&format!(
                "0x{}",
                hex::encode(mailstamp_core::verify::recorded_value(h))
            ))
    });
    let (w, time, confirmed, link) = (rec.writer, rec.time, rec.confirmed, rec.explorer.clone());
    if json {
        println!(
            "{}",
            json!({"chain_id": chain.chain_id, "registry": registry, "writer": w, "token": token, "batch": batch,
                   "commitment": commitment, "time": time, "block": rec.block, "tx": rec.tx,
                   "confirmed": confirmed, "confirmations": rec.confirmations, "header_matches": matches, "explorer": link})
        );
    } else {
        println!("chain       {}", chain.chain_id);
        println!("registry    {registry}");
        println!("writer      {w}");
        println!("token       {token}");
        if let Some(b) = batch {
            println!(
                "batch       {b} (the record is the batch root of {} messages; the header carries the proof)",
                rec.size.unwrap_or(0)
            );
        }
        println!(
            "commitment  {}",
            commitment.as_deref().unwrap_or("(not confirmed yet)")
        );
        if let Some(t) = time {
            println!("time        {} ({t})", rfc3339(t));
        }
        println!(
            "block       {} ({} confirmations)",
            rec.block, rec.confirmations
        );
        println!("tx          {}", rec.tx);
        println!("confirmed   {}", if confirmed { "yes" } else { "no" });
        if let Some(m) = matches {
            println!(
                "header      {}",
                if m {
                    "matches the record"
                } else {
                    "DOES NOT match the record"
                }
            );
        }
        if let Some(l) = link {
            println!("explorer    {l}");
        }
    }
    Ok(0)
}

/// The flags of `mailstamp audit --serve`.
pub(crate) struct ServeArgs {
    pub(crate) listen: Option<String>,
    pub(crate) public: bool,
    pub(crate) writer: Option<Address>,
    pub(crate) keystore: Option<PathBuf>,
}

/// `mailstamp audit --serve`: binds, prints where, serves until SIGTERM/SIGINT.
pub(crate) async fn serve(cfg: Config, args: ServeArgs) -> Result<u8> {
    let listen = args.listen.unwrap_or_else(|| cfg.audit.listen.clone());
    let addr: std::net::SocketAddr = listen.parse().with_context(|| {
        format!(
            "--listen `{listen}` is not HOST:PORT (an IP address and a port, e.g. 127.0.0.1:8897)"
        )
    })?;
    if !audit::server::is_loopback(&addr) && !args.public {
        bail!(
            "--listen {addr} is not a loopback address: the audit page is for this machine; \
             add --public to serve it to others (put a TLS proxy in front)"
        );
    }
    // The key, when one is configured, only names the writer shown first: its address is kept,
    // the key itself is dropped here (the page never writes).
    let has_key = args.keystore.is_some()
        || cfg.writer.keystore.is_some()
        || std::env::var_os(keys::PRIVATE_KEY_ENV).is_some();
    let writer = match args.writer {
        Some(w) => Some(w),
        None if has_key => Some(keys::load(&cfg.writer, args.keystore.as_deref())?.address()),
        None => None,
    };
    let chain = Chain::connect(&cfg.chain, cfg.registry()?, None).await?;
    let opts = audit::server::Options {
        public: args.public,
        max_message_bytes: cfg.milter.max_message_bytes,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (in use? try another --listen port)"))?;
    let bound = listener.local_addr()?;
    let auditor = Auditor::new(chain, Arc::new(cfg), writer);
    // The one line a script waits for: where the page is.
    println!("mailstamp audit: serving http://{bound}/ (read-only; Ctrl-C stops)");
    use std::io::Write as _;
    std::io::stdout().flush()?;
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    audit::server::run(listener, auditor, opts, shutdown).await?;
    Ok(0)
}
