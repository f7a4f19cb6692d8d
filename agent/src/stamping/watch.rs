// SPDX-License-Identifier: GPL-3.0-or-later
//! The sender watches what it recorded until it is final (docs/PROTOCOL.md §5b). A daemon
//! journals every stamp and anchor once it is mined (store migration 6: the signed transaction,
//! its nonce and block), and each round — at every new head — checks them:
//!
//! - the block it was mined in still has the same hash, and is final by
//!   `chain.final_confirmations`: done, the row goes;
//! - its block was replaced (a reorg): where is the transaction now? Mined in another block:
//!   the row follows it. Not mined, and the registry has no record at the head: the same signed
//!   transaction is sent again (same nonce, same hash: a copy the node still has is harmless);
//!   if its nonce was taken meanwhile by another transaction, the call goes out as a new one
//!   (the registry is keyed by writer and key and write-once, so a re-send can never record
//!   twice or differently). Recorded at the head by another transaction of ours (a fee
//!   replacement mined instead): watched until that record is final.
//!
//! The journal survives a restart: the next daemon's rounds carry on with the rows it finds.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use alloy::primitives::{Address, B256, FixedBytes};
use tracing::{info, warn};

use crate::chain::{Chain, RecordKey, Sent};
use crate::error::{Context, Result};
use crate::store::{Store, WatchKind, WatchedRow};

/// A write to watch: what it recorded, and how it went out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// Stamp or anchor.
    pub kind: WatchKind,
    /// Token or batch id.
    pub key: B256,
    /// Commitment or root.
    pub value: FixedBytes<24>,
    /// Leaves of a batch (1 for a stamp).
    pub size: u32,
    /// The transaction as mined.
    pub sent: Sent,
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Writes watched at the start of the round.
    pub watched: usize,
    /// Final now (no longer watched).
    pub finalised: usize,
    /// Found mined in another block than journalled (a reorg moved them).
    pub moved: usize,
    /// Sent again unchanged after a reorg dropped them.
    pub resent: usize,
    /// Sent as a new transaction (their nonce was taken meanwhile).
    pub renewed: usize,
}

/// A daemon's watch journal.
#[derive(Debug, Clone)]
pub struct Watch {
    store: Arc<Store>,
    owner: String,
}

fn hex24(v: &FixedBytes<24>) -> String {
    format!("0x{}", hex::encode(v))
}

impl Watch {
    /// The watch of `owner` (the daemon's name in the journals) in `store`.
    pub fn new(store: Arc<Store>, owner: impl Into<String>) -> Self {
        Self {
            store,
            owner: owner.into(),
        }
    }

    /// Journals a mined write of `chain`'s writer to watch until it is final.
    pub async fn add(&self, chain: &Chain, r: &Recording) -> Result<()> {
        let Some(writer) = chain.writer else {
            return Ok(());
        };
        let row = WatchedRow {
            writer: writer.to_string(),
            kind: r.kind,
            key: r.key.to_string(),
            chain_id: chain.chain_id,
            registry: chain.registry.to_string(),
            value: hex24(&r.value),
            size: r.size,
            tx: r.sent.recorded.tx.to_string(),
            raw: r.sent.raw.to_vec(),
            nonce: r.sent.nonce,
            block: Some((r.sent.recorded.block, r.sent.block_hash.to_string())),
            owner: self.owner.clone(),
            resent: 0,
            since: crate::util::now(),
        };
        self.store
            .call(move |s| s.add_watched(&row))
            .await
            .context("cannot journal the write to watch")
    }

    /// One round over this daemon's watched writes on `chain` (see the module text).
    pub async fn round(&self, chain: &Chain) -> Result<Round> {
        let Some(writer) = chain.writer else {
            return Ok(Round::default());
        };
        let (owner, id, reg, w) = (
            self.owner.clone(),
            chain.chain_id,
            chain.registry.to_string(),
            writer.to_string(),
        );
        let rows = self
            .store
            .call(move |s| s.watched_of(&owner, id, &reg, &w))
            .await?;
        let mut round = Round {
            watched: rows.len(),
            ..Round::default()
        };
        crate::metrics::METRICS.watched.set(rows.len() as i64);
        if rows.is_empty() {
            return Ok(round);
        }
        let final_n = chain.final_number().await?;
        let numbers: Vec<u64> = rows
            .iter()
            .filter_map(|r| r.block.as_ref().map(|(n, _)| *n))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let hashes: HashMap<u64, Option<B256>> = numbers
            .iter()
            .copied()
            .zip(chain.block_hashes(&numbers).await?)
            .collect();
        let mut done = Vec::new();
        for row in rows {
            let here = row.block.as_ref().and_then(|(n, h)| {
                let same = hashes.get(n).copied().flatten()?.to_string() == *h;
                same.then_some(*n)
            });
            let settled = match here {
                Some(n) => final_n.is_some_and(|f| n <= f),
                None => match self.settle(chain, writer, row.clone(), &mut round).await {
                    Ok(settled) => settled && final_n.is_some(),
                    Err(e) => {
                        warn!(kind = %row.kind, key = %row.key, tx = %row.tx, "watching a recorded write: {e:#}; trying again at the next head");
                        false
                    }
                },
            };
            if settled {
                done.push((row.writer, row.kind, row.key));
            }
        }
        round.finalised = done.len();
        self.store.call(move |s| s.remove_watched(&done)).await?;
        Ok(round)
    }

    /// A write whose journalled block is gone (or that was sent again and not seen mined):
    /// follows it, or sends it again. Whether it is final already (only for a record another
    /// transaction of ours wrote, found at the final block).
    async fn settle(
        &self,
        chain: &Chain,
        writer: Address,
        mut row: WatchedRow,
        round: &mut Round,
    ) -> Result<bool> {
        let tx: B256 = row.tx.parse().context("journalled transaction hash")?;
        let key: B256 = row.key.parse().context("journalled key")?;
        let rkey = match row.kind {
            WatchKind::Stamp => RecordKey::Stamp(key),
            WatchKind::Anchor => RecordKey::Batch(key),
        };
        if let Some((n, h)) = chain.mined_at(tx).await? {
            if row.block.is_some() {
                round.moved += 1;
                info!(kind = %row.kind, key = %row.key, %tx, block = n, "a reorg moved a recorded write to another block");
            }
            row.block = Some((n, h.to_string()));
            self.store.call(move |s| s.add_watched(&row)).await?;
            return Ok(false);
        }
        if chain.record_at_head(writer, rkey).await?.is_some() {
            // Another transaction of ours (a fee replacement) wrote it: final once the record
            // is at the final block.
            return Ok(match chain.final_number().await? {
                Some(f) => chain.record_at(writer, rkey, f).await?.is_some(),
                None => false,
            });
        }
        let first = row.block.is_some();
        match chain
            .rebroadcast(&alloy::primitives::Bytes::from(row.raw.clone()))
            .await
        {
            Ok(()) => {
                round.resent += 1;
                crate::metrics::transaction("resent");
                warn!(kind = %row.kind, key = %row.key, %tx, "a reorg dropped a recorded write: sent the same transaction again");
                row.resent += 1;
                row.block = None;
                self.store.call(move |s| s.add_watched(&row)).await?;
            }
            Err(e) if chain.nonce_mined(row.nonce).await? => {
                // The nonce went to another transaction and the record is still missing: the
                // same call as a new transaction.
                let value = FixedBytes::<24>::from_slice(
                    &hex::decode(row.value.trim_start_matches("0x")).context("journalled value")?,
                );
                let sent = match row.kind {
                    WatchKind::Stamp => chain.stamp_sent(key, value).await?,
                    WatchKind::Anchor => chain.anchor_sent(key, value, row.size).await?,
                };
                round.renewed += 1;
                crate::metrics::transaction("renewed");
                warn!(kind = %row.kind, key = %row.key, old = %tx, new = %sent.recorded.tx, "a reorg dropped a recorded write and its nonce was taken ({e:#}): recorded again as a new transaction");
                row.tx = sent.recorded.tx.to_string();
                row.raw = sent.raw.to_vec();
                row.nonce = sent.nonce;
                row.block = Some((sent.recorded.block, sent.block_hash.to_string()));
                row.resent += 1;
                self.store.call(move |s| s.add_watched(&row)).await?;
            }
            // Typically "already known": the node has it in its pool; wait for it.
            Err(e) if first => {
                info!(kind = %row.kind, key = %row.key, %tx, "a reorg dropped a recorded write; the node still holds it ({e:#})");
                row.block = None;
                self.store.call(move |s| s.add_watched(&row)).await?;
            }
            Err(_) => {}
        }
        Ok(false)
    }
}
