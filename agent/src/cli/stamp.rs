// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp stamp`: one message through stdin, many into a directory, or a batch with one
//! anchor (`--batch`, `--resume`); and how every verb reads a message file.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use mailstamp::{
    chain::Chain,
    config::Config,
    keys,
    stamping::{self, StampContext, batch},
    store::Store,
};
use mailstamp_core::Envelope;
use serde_json::json;

pub(crate) fn read_input(path: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .take(mailstamp_core::MAX_MESSAGE_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .context("reading stdin")?;
    } else {
        let f =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        f.take(mailstamp_core::MAX_MESSAGE_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    Ok(buf)
}

pub(crate) async fn run(
    cfg: &Config,
    keystore: Option<&Path>,
    files: &[PathBuf],
    out_dir: Option<&Path>,
    env: &Envelope,
    json: bool,
) -> Result<u8> {
    let stdin_mode = files.is_empty() || (files.len() == 1 && files[0] == Path::new("-"));
    if !stdin_mode && out_dir.is_none() {
        bail!(
            "stamping files needs --out-dir DIR for the stamped copies (or pipe one message through stdin)"
        );
    }
    let signer = keys::load(&cfg.writer, keystore)?;
    let chain = Chain::connect(&cfg.chain, cfg.registry()?, Some(signer)).await?;
    chain.check_registry().await?;
    let ctx = StampContext::from_config(cfg)?;
    if stdin_mode {
        let raw = read_input(Path::new("-"))?;
        let s = stamping::stamp(&chain, &ctx, &raw, env).await?;
        let rec = mined(&s)?;
        std::io::stdout().write_all(&s.message)?;
        eprintln!(
            "stamped: token {} tx {} block {}",
            s.token, rec.tx, rec.block
        );
        return Ok(0);
    }
    let dir = out_dir.unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut failed = 0;
    if !json {
        println!("{:<40} {:<68} {:<68} BLOCK", "FILE", "TOKEN", "TX");
    }
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "message".into());
        let r = async {
            let raw = read_input(f)?;
            let s = stamping::stamp(&chain, &ctx, &raw, env).await?;
            let out = dir.join(&name);
            let rec = mined(&s)?.clone();
            std::fs::write(&out, &s.message)
                .with_context(|| format!("cannot write {}", out.display()))?;
            Ok::<_, anyhow::Error>((s, rec))
        }
        .await;
        match r {
            Ok((s, rec)) if json => println!(
                "{}",
                json!({"file": f, "token": s.token, "tx": rec.tx, "block": rec.block,
                       "explorer": cfg.tx_link(&rec.tx.to_string())})
            ),
            Ok((s, rec)) => println!(
                "{name:<40} {:<68} {:<68} {}",
                s.token.to_string(),
                rec.tx.to_string(),
                rec.block
            ),
            Err(e) => {
                failed += 1;
                eprintln!("mailstamp: {}: {e:#}", f.display());
            }
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// `stamp --batch` and `stamp --resume`.
pub(crate) async fn batched(
    cfg: &Config,
    keystore: Option<&Path>,
    files: &[PathBuf],
    out_dir: Option<&Path>,
    env: &Envelope,
    resume: bool,
) -> Result<u8> {
    let store = Store::connect(&cfg.store, None)
        .context("batched mode journals in the store (store.path / --store)")?;
    let signer = keys::load(&cfg.writer, keystore)?;
    let chain = Chain::connect(&cfg.chain, cfg.registry()?, Some(signer)).await?;
    chain.check_registry().await?;
    if resume {
        let done = batch::resume_batches(&chain, &store).await?;
        if done.is_empty() {
            println!("no pending batch");
        }
        for (row, rec) in done {
            match rec {
                Some(r) => println!(
                    "batch {} ({} stamps): anchored now in tx {} block {}, delivered to {}",
                    row.batch_id, row.size, r.tx, r.block, row.out_dir
                ),
                None => println!(
                    "batch {} ({} stamps): already anchored; delivered to {}",
                    row.batch_id, row.size, row.out_dir
                ),
            }
        }
        return Ok(0);
    }
    let dir = out_dir.context("batched stamping needs --out-dir DIR")?;
    if files.is_empty() {
        bail!("batched stamping takes message files (stdin holds only one message)");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut inputs = Vec::new();
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "message".into());
        inputs.push(batch::BatchInput {
            name,
            raw: read_input(f)?,
            env: env.clone(),
        });
    }
    let out = batch::stamp_batch(
        &chain,
        &StampContext::from_config(cfg)?,
        &store,
        inputs,
        dir,
    )
    .await?;
    for (name, why) in &out.refused {
        eprintln!("mailstamp: {name}: {why}");
    }
    let tx = out
        .recorded
        .as_ref()
        .map(|r| r.tx.to_string())
        .unwrap_or_else(|| "-".into());
    println!(
        "batch {} of {} stamps anchored in tx {tx} → {}",
        out.batch,
        out.size,
        dir.display()
    );
    if let Some(link) = cfg.tx_link(&tx) {
        println!("explorer: {link}");
    }
    Ok(if out.refused.is_empty() { 0 } else { 1 })
}

/// The transaction of a direct stamp (always mined when `stamping::stamp` returns).
fn mined(s: &stamping::Stamped) -> Result<&mailstamp::chain::Recorded> {
    s.recorded
        .as_ref()
        .context("internal error: a direct stamp came back without its transaction")
}
