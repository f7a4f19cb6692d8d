// SPDX-License-Identifier: GPL-3.0-or-later
//! The watch journal (migration 6): every stamp and anchor a daemon recorded, until it is
//! final (`stamping::watch`).

use serde::Serialize;

use super::Store;
use super::sql::{Row, vals};
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

fn watched_row(r: &Row) -> Result<WatchedRow> {
    let block = r.opt_u64(10)?;
    let hash = r.opt_text(11)?;
    Ok(WatchedRow {
        writer: r.text(0)?,
        kind: r.word(1)?,
        key: r.text(2)?,
        chain_id: r.u64(3)?,
        registry: r.text(4)?,
        value: r.text(5)?,
        size: r.u32(6)?,
        tx: r.text(7)?,
        raw: r.blob(8)?,
        nonce: r.u64(9)?,
        block: block.zip(hash),
        owner: r.text(12)?,
        resent: r.u32(13)?,
        since: r.u64(14)?,
    })
}

impl Store {
    /// Journals a write to watch, on this host (replacing an earlier row of the same writer,
    /// kind and key).
    pub fn add_watched(&self, w: &WatchedRow) -> Result<()> {
        let (block, hash) = match &w.block {
            Some((b, h)) => (Some(*b), Some(h.as_str())),
            None => (None, None),
        };
        self.run(|c| {
            c.exec(
                "INSERT INTO watched (writer, kind, key, chain_id, registry, value, size,
                 tx, raw, nonce, block, block_hash, owner, resent, since, host)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
                 ON CONFLICT (writer, kind, key) DO UPDATE SET chain_id = excluded.chain_id,
                   registry = excluded.registry, value = excluded.value, size = excluded.size,
                   tx = excluded.tx, raw = excluded.raw, nonce = excluded.nonce,
                   block = excluded.block, block_hash = excluded.block_hash,
                   owner = excluded.owner, resent = excluded.resent, since = excluded.since,
                   host = excluded.host",
                vals![
                    &w.writer,
                    w.kind.as_str(),
                    &w.key,
                    w.chain_id,
                    &w.registry,
                    &w.value,
                    w.size,
                    &w.tx,
                    w.raw.as_slice(),
                    w.nonce,
                    block,
                    hash,
                    &w.owner,
                    w.resent,
                    w.since,
                    &self.host
                ],
            )
        })?;
        Ok(())
    }

    /// The writes `owner` watches on (`chain_id`, `registry`) for `writer` on this host,
    /// oldest first.
    pub fn watched_of(
        &self,
        owner: &str,
        chain_id: u64,
        registry: &str,
        writer: &str,
    ) -> Result<Vec<WatchedRow>> {
        self.run(|c| {
            c.query(
                &format!(
                    "SELECT {COLUMNS} FROM watched
                     WHERE owner = ?1 AND chain_id = ?2 AND registry = ?3 AND writer = ?4
                       AND (host = ?5 OR host = '')
                     ORDER BY since, rowid"
                ),
                vals![owner, chain_id, registry, writer, &self.host],
            )?
            .iter()
            .map(watched_row)
            .collect()
        })
    }

    /// Every watched write (all owners, all hosts), oldest first: `doctor` and tests.
    pub fn watched(&self) -> Result<Vec<WatchedRow>> {
        self.run(|c| {
            c.query(
                &format!("SELECT {COLUMNS} FROM watched ORDER BY since, rowid"),
                &[],
            )?
            .iter()
            .map(watched_row)
            .collect()
        })
    }

    /// Forgets the watched writes (writer, kind, key) in `done` (final), in one transaction.
    pub fn remove_watched(&self, done: &[(String, WatchKind, String)]) -> Result<usize> {
        if done.is_empty() {
            return Ok(0);
        }
        self.tx(|c| {
            let mut n = 0;
            for (w, k, key) in done {
                n += c.exec(
                    "DELETE FROM watched WHERE writer = ?1 AND kind = ?2 AND key = ?3",
                    vals![w, k.as_str(), key],
                )?;
            }
            Ok(n as usize)
        })
    }
}
