// SPDX-License-Identifier: GPL-3.0-or-later
//! Audit: what the CLI's `audit` and `verify --json` print and what the audit page of
//! `mailstamp audit --serve` shows, computed once here — one record by token or batch id, a
//! writer's activity from the registry's events (paged, newest first), stamps per hour or day,
//! the health of the connection, and a verification report as JSON. [`server`] serves them
//! (read-only, on loopback by default) with the page embedded in the binary (docs/AUDIT.md).

pub mod server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use alloy::primitives::{Address, B256, FixedBytes};
use mailstamp_core::{Lookup, Report};
use serde::Serialize;
use serde_json::{Value, json};

use crate::chain::{self, Chain, EventKind, RecordKey, Recorded, RegistryEvent};
use crate::config::{BlockTag, Config, Confirmations};
use crate::error::Result;

/// The JSON object of one verification report, as `verify --json` prints it (without its
/// `file`): verdict, score, reason, each component, the record, the writer check, the
/// recording transaction when found, and for a message with hops every level of its chain.
pub fn report_json(cfg: &Config, report: &Report, rec: Option<&Recorded>) -> Value {
    let s = report.stamp.as_ref();
    let comps: Vec<_> = report
        .components
        .iter()
        .map(|c| json!({"name": c.name, "match": c.status, "weight": c.weight, "note": c.note}))
        .collect();
    let tx = rec.map(|r| r.tx);
    let mut v = json!({
        "verdict": report.verdict, "score": report.score, "reason": report.reason,
        "components": comps,
        "chain_id": s.map(|s| s.chain_id), "registry": s.map(|s| &s.registry),
        "writer": s.map(|s| &s.writer), "token": s.map(|s| &s.token),
        "batch": s.and_then(|s| s.batch.as_ref()),
        "time": s.and_then(|s| s.time),
        "writer_auth": report.writer_auth.as_ref().map(|w| w.as_str()),
        "writer_auth_detail": report.writer_auth.as_ref().map(|w| w.detail()),
        "tx": tx, "block": rec.map(|r| r.block),
        "explorer": tx.and_then(|t| cfg.tx_link(&t.to_string())),
    });
    // A hop chain (docs/PROTOCOL.md §5c): the fields above are the top level's; every level,
    // bottom-up, and the author that verified.
    if !report.chain.is_empty() {
        v["chain"] = json!(report.chain);
        v["author"] = json!(report.author);
    }
    v
}

pub use crate::chain::redact_url;

/// One registry record as the audit shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordView {
    /// `stamp` (a direct stamp's token) or `anchor` (a batch id).
    pub kind: &'static str,
    /// The writer.
    pub writer: Address,
    /// The token or batch id.
    pub key: B256,
    /// The commitment (stamp) or Merkle root (anchor) the event recorded.
    pub value: FixedBytes<24>,
    /// Messages in the batch (anchors).
    pub size: Option<u32>,
    /// Block and transaction of the event.
    pub block: u64,
    /// Transaction hash.
    pub tx: B256,
    /// Block timestamp.
    pub time: Option<u64>,
    /// Blocks from the record's block to the head, both counted (1 = in the head block).
    pub confirmations: u64,
    /// Whether the record counts under `chain.confirmations` now.
    pub confirmed: bool,
    /// The explorer link of `tx`, when `chain.explorer_tx_url` is set.
    pub explorer: Option<String>,
}

/// One event of a writer's activity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActivityItem {
    /// The event.
    #[serde(flatten)]
    pub event: RegistryEvent,
    /// Its block's timestamp.
    pub time: Option<u64>,
    /// The explorer link of its transaction.
    pub explorer: Option<String>,
}

/// One page of activity, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActivityPage {
    /// The events of this page.
    pub items: Vec<ActivityItem>,
    /// Where the next (older) page starts (`BLOCK.LOGINDEX`, exclusive), when there may be one.
    pub next: Option<String>,
    /// The block range searched for this page.
    pub searched: (u64, u64),
}

/// A page cursor: events strictly older than (block, log index).
pub fn parse_cursor(s: &str) -> Option<(u64, u64)> {
    let (b, i) = s.split_once('.')?;
    Some((b.parse().ok()?, i.parse().ok()?))
}

/// The width of a chart bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// 3,600 s; the chart spans 24 of them.
    Hour,
    /// 86,400 s; the chart spans 30 of them.
    Day,
}

impl Unit {
    fn secs(self) -> u64 {
        match self {
            Self::Hour => 3_600,
            Self::Day => 86_400,
        }
    }
    fn buckets(self) -> u64 {
        match self {
            Self::Hour => 24,
            Self::Day => 30,
        }
    }
}

/// Messages recorded per hour or day, oldest bucket first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chart {
    /// Bucket width.
    pub unit: Unit,
    /// Start time of each bucket (Unix seconds, aligned to the unit).
    pub starts: Vec<u64>,
    /// Messages stamped directly per bucket.
    pub direct: Vec<u64>,
    /// Messages anchored in batches per bucket.
    pub batched: Vec<u64>,
    /// Whether the scan stopped at its bound before the chart's start (the oldest buckets
    /// may then be low).
    pub partial: bool,
}

/// The health view: where the page reads from and what it sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// The chain id the node reports.
    pub chain_id: u64,
    /// The head block and its time.
    pub head: u64,
    /// Timestamp of the head block.
    pub head_time: Option<u64>,
    /// The RPC endpoints, `scheme://host:port` only.
    pub rpc: Vec<String>,
    /// The registry and its `version()` (or why it has none).
    pub registry: Address,
    /// `version()`, or the error.
    pub registry_version: std::result::Result<String, String>,
    /// `chain.confirmations` as configured.
    pub confirmations: String,
    /// First block searched for events.
    pub from_block: u64,
    /// The writer of the configured key (or `--writer`).
    pub writer: Option<Address>,
    /// Its balance in ETH, when a writer is known.
    pub balance: Option<String>,
    /// Whether explorer links are configured.
    pub explorer: bool,
}

/// Most `eth_getLogs` windows one request of the page scans (bounded work per request).
const MAX_WINDOWS: u64 = 50;
/// Block times kept; past it the cache starts over.
const TIMES_MAX: usize = 100_000;

/// The audit's reads over one connection, with the block times it has seen.
#[derive(Clone)]
pub struct Auditor {
    /// The connection.
    pub chain: Chain,
    cfg: Arc<Config>,
    /// The writer whose activity is shown by default (from the key, or `--writer`).
    pub writer: Option<Address>,
    times: Arc<Mutex<HashMap<u64, u64>>>,
}

impl Auditor {
    /// An auditor over `chain`, configured by `cfg`.
    pub fn new(chain: Chain, cfg: Arc<Config>, writer: Option<Address>) -> Self {
        Self {
            chain,
            cfg,
            writer,
            times: Arc::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Timestamps of `blocks` (cached: a block's time does not change once it is deep; a
    /// reorg near the head may change it, which the page's numbers tolerate).
    async fn times(&self, blocks: impl IntoIterator<Item = u64>) -> HashMap<u64, u64> {
        let mut want: Vec<u64> = blocks.into_iter().collect();
        want.sort_unstable();
        want.dedup();
        let mut out = HashMap::new();
        {
            let c = self.times.lock().unwrap_or_else(|p| p.into_inner());
            want.retain(|b| match c.get(b) {
                Some(t) => {
                    out.insert(*b, *t);
                    false
                }
                None => true,
            });
        }
        // Sixteen at a time: a page of a busy writer is many blocks.
        for chunk in want.chunks(16) {
            let mut set = tokio::task::JoinSet::new();
            for &b in chunk {
                let chain = self.chain.clone();
                set.spawn(async move { (b, chain.block_time(b).await) });
            }
            while let Some(Ok((b, t))) = set.join_next().await {
                if let Ok(Some(t)) = t {
                    out.insert(b, t);
                }
            }
        }
        let mut c = self.times.lock().unwrap_or_else(|p| p.into_inner());
        if c.len() > TIMES_MAX {
            c.clear();
        }
        c.extend(out.iter().map(|(b, t)| (*b, *t)));
        out
    }

    /// The record under `id`: a direct stamp's token, else a batch id; by `writer`, or by
    /// the first writer with such an event. `None`: no event has that key.
    pub async fn record(&self, id: B256, writer: Option<Address>) -> Result<Option<RecordView>> {
        for key in [RecordKey::Stamp(id), RecordKey::Batch(id)] {
            if let Some(v) = self.record_of(key, writer).await? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// The record of `key` (see [`Auditor::record`]).
    pub async fn record_of(
        &self,
        key: RecordKey,
        writer: Option<Address>,
    ) -> Result<Option<RecordView>> {
        let from = self.cfg.chain.from_block;
        let Some((w, rec)) = self.chain.find_event(writer, key, from).await? else {
            return Ok(None);
        };
        let ev = self
            .chain
            .events(Some(w), rec.block, rec.block)
            .await?
            .into_iter()
            .find(|e| match (e.kind, key) {
                (EventKind::Stamp { token, .. }, RecordKey::Stamp(k)) => token == k,
                (EventKind::Anchor { batch, .. }, RecordKey::Batch(k)) => batch == k,
                _ => false,
            });
        let (kind, key_hash, value, size) = match ev.map(|e| e.kind) {
            Some(EventKind::Stamp { token, commitment }) => ("stamp", token, commitment, None),
            Some(EventKind::Anchor { batch, root, size }) => ("anchor", batch, root, Some(size)),
            None => return Ok(None),
        };
        let head = self.chain.head().await?;
        let confirmed = matches!(self.chain.lookup(w, key).await, Lookup::Found { .. });
        let time = self.times([rec.block]).await.get(&rec.block).copied();
        Ok(Some(RecordView {
            kind,
            writer: w,
            key: key_hash,
            value,
            size,
            block: rec.block,
            tx: rec.tx,
            time,
            confirmations: head.saturating_add(1).saturating_sub(rec.block),
            confirmed,
            explorer: self.cfg.tx_link(&rec.tx.to_string()),
        }))
    }

    /// One page of the activity of `writer` (every writer when `None`): up to `limit` events
    /// strictly older than `before` (from the head when `None`), newest first.
    pub async fn activity(
        &self,
        writer: Option<Address>,
        before: Option<(u64, u64)>,
        limit: usize,
    ) -> Result<ActivityPage> {
        let from = self.cfg.chain.from_block;
        let range = self.cfg.audit.log_range_blocks.max(1);
        let mut hi = match before {
            Some((b, _)) => b,
            None => self.chain.head().await?,
        };
        let top = hi;
        let mut found: Vec<RegistryEvent> = Vec::new();
        let mut lo = hi;
        let mut windows = 0;
        while hi >= from && windows < MAX_WINDOWS {
            lo = hi.saturating_sub(range - 1).max(from);
            let mut evs = self.chain.events(writer, lo, hi).await?;
            evs.retain(|e| before.is_none_or(|c| (e.block, e.log_index) < c));
            found.extend(evs);
            windows += 1;
            if found.len() >= limit || lo == from || lo == 0 {
                break;
            }
            hi = lo - 1;
        }
        found.sort_by_key(|e| std::cmp::Reverse((e.block, e.log_index)));
        let more_below = lo > from;
        let next = if found.len() > limit {
            found.truncate(limit);
            found.last().map(|e| format!("{}.{}", e.block, e.log_index))
        } else if more_below {
            Some(format!("{lo}.0"))
        } else {
            None
        };
        let times = self.times(found.iter().map(|e| e.block)).await;
        let items = found
            .into_iter()
            .map(|e| ActivityItem {
                time: times.get(&e.block).copied(),
                explorer: self.cfg.tx_link(&e.tx.to_string()),
                event: e,
            })
            .collect();
        Ok(ActivityPage {
            items,
            next,
            searched: (lo, top),
        })
    }

    /// Messages `writer` recorded per `unit` over the last 24 hours or 30 days (a batch
    /// counts its size), ending at the head block's time.
    pub async fn chart(&self, writer: Option<Address>, unit: Unit) -> Result<Chart> {
        let from = self.cfg.chain.from_block;
        let range = self.cfg.audit.log_range_blocks.max(1);
        let head = self.chain.head().await?;
        let now = self.chain.block_time(head).await?.unwrap_or_default();
        let first = (now / unit.secs() + 1).saturating_sub(unit.buckets()) * unit.secs();
        let n = usize::try_from(unit.buckets()).unwrap_or(0);
        let mut chart = Chart {
            unit,
            starts: (0..unit.buckets())
                .map(|i| first + i * unit.secs())
                .collect(),
            direct: vec![0; n],
            batched: vec![0; n],
            partial: false,
        };
        let mut hi = head;
        let mut windows = 0;
        loop {
            let lo = hi.saturating_sub(range - 1).max(from);
            let evs = self.chain.events(writer, lo, hi).await?;
            let times = self.times(evs.iter().map(|e| e.block)).await;
            for e in &evs {
                let Some(t) = times.get(&e.block).copied().filter(|t| *t >= first) else {
                    continue;
                };
                let i = usize::try_from((t - first) / unit.secs()).unwrap_or(usize::MAX);
                let slot = match e.kind {
                    EventKind::Stamp { .. } => chart.direct.get_mut(i),
                    EventKind::Anchor { .. } => chart.batched.get_mut(i),
                };
                if let Some(s) = slot {
                    *s += e.kind.messages();
                }
            }
            windows += 1;
            let lo_time = self.times([lo]).await.get(&lo).copied().unwrap_or(0);
            if lo == from || lo == 0 || lo_time < first {
                break;
            }
            if windows >= MAX_WINDOWS {
                chart.partial = true;
                break;
            }
            hi = lo - 1;
        }
        Ok(chart)
    }

    /// The health view. The chain id and head must be read; the rest says what failed.
    pub async fn health(&self) -> Result<Health> {
        let head = self.chain.head().await?;
        let head_time = self.chain.block_time(head).await.ok().flatten();
        let registry_version = self
            .chain
            .check_registry()
            .await
            .map_err(|e| format!("{e:#}"));
        let balance = match self.writer {
            Some(w) => Some(match self.chain.balance_of(w).await {
                Ok(b) => format!("{} ETH", chain::eth(b)),
                Err(e) => format!("unknown: {e:#}"),
            }),
            None => None,
        };
        Ok(Health {
            chain_id: self.chain.chain_id,
            head,
            head_time,
            rpc: self
                .cfg
                .chain
                .endpoints()
                .into_iter()
                .map(redact_url)
                .collect(),
            registry: self.chain.registry,
            registry_version,
            confirmations: match &self.cfg.chain.confirmations {
                Confirmations::Depth(n) => format!("{n} block(s) deep"),
                Confirmations::Tag(BlockTag::Latest) => "latest".to_owned(),
                Confirmations::Tag(BlockTag::Safe) => "safe".to_owned(),
                Confirmations::Tag(BlockTag::Finalized) => "finalized".to_owned(),
            },
            from_block: self.cfg.chain.from_block,
            writer: self.writer,
            balance,
            explorer: self.cfg.chain.explorer_tx_url.is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_urls_lose_their_path_query_and_user() {
        assert_eq!(
            redact_url("https://eth-sepolia.g.example.com/v2/SECRETKEY"),
            "https://eth-sepolia.g.example.com:443"
        );
        assert_eq!(
            redact_url("https://user:pw@rpc.example.org:8443/x?apikey=SECRET"),
            "https://rpc.example.org:8443"
        );
        assert_eq!(redact_url("http://127.0.0.1:8545"), "http://127.0.0.1:8545");
        assert_eq!(redact_url("http://[::1]:8545/k"), "http://[::1]:8545");
        assert_eq!(redact_url("not a url SECRET"), "(not a URL)");
    }

    #[test]
    fn cursors_parse_and_bad_ones_do_not() {
        assert_eq!(parse_cursor("120.3"), Some((120, 3)));
        assert_eq!(parse_cursor("120"), None);
        assert_eq!(parse_cursor("a.b"), None);
        assert_eq!(parse_cursor("-1.0"), None);
    }
}
