// SPDX-License-Identifier: GPL-3.0-or-later
//! The watch journal (migration 6): every stamp and anchor a daemon recorded, until it is
//! final (`stamping::watch`).

use rusqlite::{Row, params};
use serde::Serialize;

use super::Store;
use crate::error::Result;

/// What a watched write recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum WatchKind {
    /// A direct stamp (`stamp(token, commitment)`).
    Stamp,
    /// A batch's anchor (`anchor(batchId, root, size)`).
    Anchor,
}

stored_enum!(WatchKind, "watched kind", { Stamp => "stamp", Anchor => "anchor" });

/// One watched write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WatchedRow {
    /// The writer, 0x-hex.
    pub writer: String,
    /// Stamp or anchor.
    pub kind: WatchKind,
    /// The token or batch id, 0x-hex.
    pub key: String,
    /// The chain.
    pub chain_id: u64,
    /// The registry, 0x-hex.
    pub registry: String,
    /// The commitment or root, 0x-hex (24 bytes).
    pub value: String,
    /// The batch size (1 for a stamp).
    pub size: u32,
    /// The transaction expected on chain, 0x-hex.
    pub tx: String,
    /// That transaction as signed (EIP-2718).
    #[serde(skip)]
    pub raw: Vec<u8>,
    /// Its nonce.
    pub nonce: u64,
    /// Where it is mined now: block number and hash (`None`: not mined, e.g. sent again).
    pub block: Option<(u64, String)>,
    /// The daemon that recorded it.
    pub owner: String,
    /// How many times it was sent again after a reorg.
    pub resent: u32,
    /// When it was journalled (unix seconds).
    pub since: u64,
}

/// The columns [`watched_row`] reads, in its order.
const COLUMNS: &str = "writer, kind, key, chain_id, registry, value, size, tx, raw, nonce, block,
                 block_hash, owner, resent, since";

fn watched_row(r: &Row<'_>) -> rusqlite::Result<WatchedRow> {
    let block: Option<i64> = r.get(10)?;
    let hash: Option<String> = r.get(11)?;
    Ok(WatchedRow {
        writer: r.get(0)?,
        kind: r.get(1)?,
        key: r.get(2)?,
        chain_id: r.get::<_, i64>(3)? as u64,
        registry: r.get(4)?,
        value: r.get(5)?,
        size: r.get(6)?,
        tx: r.get(7)?,
        raw: r.get(8)?,
        nonce: r.get::<_, i64>(9)? as u64,
        block: block.zip(hash).map(|(b, h)| (b as u64, h)),
        owner: r.get(12)?,
        resent: r.get(13)?,
        since: r.get::<_, i64>(14)? as u64,
    })
}

impl Store {
    /// Journals a write to watch (replacing an earlier row of the same writer, kind and key).
    pub fn add_watched(&self, w: &WatchedRow) -> Result<()> {
        let (block, hash) = match &w.block {
            Some((b, h)) => (Some(*b as i64), Some(h.as_str())),
            None => (None, None),
        };
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO watched (writer, kind, key, chain_id, registry, value, size,
                 tx, raw, nonce, block, block_hash, owner, resent, since)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                params![
                    w.writer,
                    w.kind,
                    w.key,
                    w.chain_id as i64,
                    w.registry,
                    w.value,
                    w.size,
                    w.tx,
                    w.raw,
                    w.nonce as i64,
                    block,
                    hash,
                    w.owner,
                    w.resent,
                    w.since as i64
                ],
            )
        })?;
        Ok(())
    }

    /// The writes `owner` watches on (`chain_id`, `registry`) for `writer`, oldest first.
    pub fn watched_of(
        &self,
        owner: &str,
        chain_id: u64,
        registry: &str,
        writer: &str,
    ) -> Result<Vec<WatchedRow>> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLUMNS} FROM watched
                 WHERE owner = ?1 AND chain_id = ?2 AND registry = ?3 AND writer = ?4
                 ORDER BY since, rowid"
            ))?;
            st.query_map(
                params![owner, chain_id as i64, registry, writer],
                watched_row,
            )?
            .collect()
        })
    }

    /// Every watched write (all owners), oldest first: `doctor` and tests.
    pub fn watched(&self) -> Result<Vec<WatchedRow>> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLUMNS} FROM watched ORDER BY since, rowid"
            ))?;
            st.query_map([], watched_row)?.collect()
        })
    }

    /// Forgets the watched writes (writer, kind, key) in `done` (final), in one transaction.
    pub fn remove_watched(&self, done: &[(String, WatchKind, String)]) -> Result<usize> {
        if done.is_empty() {
            return Ok(0);
        }
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            let mut n = 0;
            {
                let mut st =
                    tx.prepare("DELETE FROM watched WHERE writer = ?1 AND kind = ?2 AND key = ?3")?;
                for (w, k, key) in done {
                    n += st.execute(params![w, k, key])?;
                }
            }
            tx.commit()?;
            Ok(n)
        })
    }
}
