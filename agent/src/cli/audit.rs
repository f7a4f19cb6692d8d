// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp audit`: the on-chain record of a stamp, by token or by message file.
use std::path::Path;

use alloy::primitives::{Address, B256};
use anyhow::{Context, Result, bail};
use mailstamp::{
    chain::{self, Chain},
    config::Config,
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
    // Find the event first: it names the writer when only the token is known.
    let ev = chain.find_event(writer, key, cfg.chain.from_block).await?;
    let Some((w, rec)) = ev else {
        bail!(
            "no event for {key:?} in registry {} from block {}",
            chain.registry,
            cfg.chain.from_block
        );
    };
    let lookup = chain.lookup(w, key).await;
    let (commitment, time) = match &lookup {
        mailstamp_core::Lookup::Found { commitment, time } => {
            (Some(format!("0x{}", hex::encode(commitment))), Some(*time))
        }
        _ => (None, chain.block_time(rec.block).await.ok().flatten()),
    };
    // The record holds the commitment (direct) or the batch root its proof leads to.
    let matches = header.as_ref().map(|h| {
        commitment.as_deref()
            == Some(&format!(
                "0x{}",
                hex::encode(mailstamp_core::verify::recorded_value(h))
            ))
    });
    let confirmed = matches!(lookup, mailstamp_core::Lookup::Found { .. });
    let link = cfg.tx_link(&rec.tx.to_string());
    if json {
        println!(
            "{}",
            json!({"chain_id": chain.chain_id, "registry": chain.registry, "writer": w, "token": token, "batch": batch,
                   "commitment": commitment, "time": time, "block": rec.block, "tx": rec.tx,
                   "confirmed": confirmed, "header_matches": matches, "explorer": link})
        );
    } else {
        println!("chain       {}", chain.chain_id);
        println!("registry    {}", chain.registry);
        println!("writer      {w}");
        println!("token       {token}");
        if let Some(b) = batch {
            println!(
                "batch       {b} (the record is the batch root; the header carries the proof)"
            );
        }
        println!(
            "commitment  {}",
            commitment.as_deref().unwrap_or("(not confirmed yet)")
        );
        if let Some(t) = time {
            println!("time        {} ({t})", rfc3339(t));
        }
        println!("block       {}", rec.block);
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
