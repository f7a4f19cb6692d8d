// SPDX-License-Identifier: GPL-3.0-or-later
//! Configuration: a documented TOML file (see `mailstamp.example.toml`), overridden by
//! environment variables, overridden by flags. Secrets (the writer key, keystore password)
//! come only from files or the environment and are never printed.
//!
//! This module is a leaf: every section's data, defaults and checks live here (the adapters'
//! sections in [`daemon`], the people lists' in [`people`]), and [`Config::check`] checks them
//! all, so a mistake fails start-up (or a reload, which keeps the old configuration) with the
//! file, the key and what is wrong — never the first message that needs the value.

pub mod daemon;
pub mod people;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use alloy::primitives::Address;
use mailstamp_core::{Family, Policy, Selection};
use serde::Deserialize;

pub use daemon::{
    ActionTable, MapsConfig, MilterConfig, RelayConfig, TroublePolicy, VerdictAction,
};
pub use people::{AllowlistConfig, ForwardConfig, InboundConfig, PartialMatch, RecoverConfig};

use crate::error::{Context, Error, Result};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the registry lives.
    pub chain: ChainConfig,
    /// Who writes stamps.
    pub writer: WriterConfig,
    /// Outbound options.
    pub stamp: StampConfig,
    /// Inbound options.
    pub verify: VerifyConfig,
    /// Resolver used for writer records and onboarding checks.
    pub dns: DnsConfig,
    /// Operator trust map: domain → writers allowed to stamp for it. Wins over DNS (private
    /// deployments, partners).
    pub trust: BTreeMap<String, Vec<Address>>,
    /// Hosting-provider mode and customer onboarding (seed 000).
    pub provider: ProviderConfig,
    /// The agent's durable state.
    pub store: StoreConfig,
    /// The milter adapter.
    pub milter: MilterConfig,
    /// The SMTP relay adapter (`mailstamp relay`).
    pub relay: RelayConfig,
    /// The MTA access maps (seed 002).
    pub maps: MapsConfig,
    /// The inbound folder decision (seed 003).
    pub inbound: InboundConfig,
    /// The self-training allowlist (seed 004).
    pub allowlist: AllowlistConfig,
    /// Aliases forwarded under a hop (issue 13).
    pub forward: ForwardConfig,
    /// `mailstamp recover` (seed 004).
    pub recover: RecoverConfig,
    /// How the log lines on stderr are written.
    pub log: LogConfig,
    /// The Prometheus endpoint of the daemons.
    pub metrics: MetricsConfig,
    /// The audit page (`mailstamp audit --serve`).
    pub audit: AuditConfig,
}

/// `[audit]`: the read-only audit page of `mailstamp audit --serve` (docs/AUDIT.md). The
/// uploaded message's size cap is `milter.max_message_bytes`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// `HOST:PORT` the page is served on (`--listen` wins). A non-loopback address needs
    /// `--public`.
    pub listen: String,
    /// Blocks per `eth_getLogs` request when the page reads the registry's events (public RPC
    /// endpoints cap the range; 10,000 suits most, some free tiers need 500 or less).
    pub log_range_blocks: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8897".to_owned(),
            log_range_blocks: 10_000,
        }
    }
}

impl AuditConfig {
    /// The `[audit]` checks.
    pub fn check(&self) -> Result<()> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(Error::config(
                "audit.listen",
                format!(
                    "`{}` is not HOST:PORT (an IP address and a port, e.g. 127.0.0.1:8897)",
                    self.listen
                ),
            ));
        }
        if !(1..=1_000_000).contains(&self.log_range_blocks) {
            return Err(Error::config(
                "audit.log_range_blocks",
                format!(
                    "{} blocks per request: give 1 to 1000000 (10000 suits most endpoints)",
                    self.log_range_blocks
                ),
            ));
        }
        Ok(())
    }
}

/// `[metrics]`: where the milter and relay serve `GET /metrics` (Prometheus / OpenMetrics
/// text). Off unless `listen` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `HOST:PORT`, e.g. `127.0.0.1:9466` (port 0: any free port, logged at start).
    pub listen: Option<String>,
}

/// `[log]`: the format of the lines on stderr. The level comes from `MAILSTAMP_LOG` (an
/// `EnvFilter`: `info`, `warn`, `mailstamp::milter=debug`…), not from the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default: one human-readable line per event) or `json` (one JSON object per
    /// line, the event's fields at the top level).
    pub format: LogFormat,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogConfig {
    /// The `[log]` checks. The format is an enum (an unknown word fails the parse, naming
    /// `log.format`); nothing else can be wrong yet.
    pub fn check(&self) -> Result<()> {
        Ok(())
    }

    /// The `[log]` section of a config file's text, read before anything else (the logger is
    /// set up before the whole file is loaded and checked). Lenient: text that does not parse,
    /// or a `[log]` that is wrong, gives the default here, and the full load that follows
    /// reports the mistake with its file, key and line.
    pub fn peek(text: &str) -> Self {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Only {
            log: LogConfig,
        }
        toml::from_str::<Only>(text)
            .map(|o| o.log)
            .unwrap_or_default()
    }
}

/// `[dns]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Name servers (`ip:port`); empty means the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// Seconds before one query is given up.
    pub timeout_secs: u64,
    /// Tries per query.
    pub attempts: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout_secs: 3,
            attempts: 2,
        }
    }
}

/// `[provider]`: this agent runs for a hosting provider that onboards customer domains.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// Provider mode: stamp and accept mail only for active customer domains.
    pub enabled: bool,
    /// The provider's zone, under which account names are made (e.g. `mailstamp-provider.net`).
    pub zone: String,
    /// Addresses of the provider's inbound mail servers (the A/AAAA of every account's mail host).
    pub mail_host_addresses: Vec<IpAddr>,
    /// The provider's writer addresses, published in every account's writer record. Several
    /// during a key rotation; default: the configured writer key's address.
    pub writers: Vec<Address>,
    /// TTL of the records printed for zone files.
    pub ttl: u32,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            zone: String::new(),
            mail_host_addresses: Vec::new(),
            writers: Vec::new(),
            ttl: 3600,
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite file (the default backend: one host).
    pub path: PathBuf,
    /// A shared PostgreSQL store for several hosts (`postgres://USER:PASSWORD@HOST/DB`);
    /// when set, `path` is not used.
    pub url: Option<String>,
    /// This host's name among the hosts sharing the store: the batch and watch journal rows
    /// it writes carry it, and it recovers only those. Default: the host name. Give every
    /// host its own, and keep it when the host is rebuilt.
    pub host: Option<String>,
}

impl StoreConfig {
    /// The `[store]` checks (at load: a mistyped URL is not first met at the first message).
    /// The URL is never echoed: it may hold a password.
    pub fn check(&self) -> Result<()> {
        if let Some(url) = &self.url {
            let scheme_ok = ["postgres://", "postgresql://"].iter().any(|p| {
                url.get(..p.len())
                    .is_some_and(|s| s.eq_ignore_ascii_case(p))
            });
            let parsed = url.parse::<postgres::Config>();
            if !scheme_ok || parsed.is_err() {
                let why = parsed.err().map_or(String::new(), |e| format!(" ({e})"));
                return Err(Error::config(
                    "store.url",
                    format!(
                        "is not a PostgreSQL URL{why}: write postgres://USER:PASSWORD@HOST:PORT/DATABASE, or leave it out for the SQLite file store.path"
                    ),
                ));
            }
        }
        if let Some(h) = &self.host
            && (h.is_empty()
                || h.len() > 253
                || h.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(Error::config(
                "store.host",
                format!(
                    "`{}` is not a host name: give 1 to 253 characters without spaces (e.g. mx1), or leave it out for the system's host name",
                    h.escape_debug()
                ),
            ));
        }
        Ok(())
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/mailstamp/state.sqlite"),
            url: None,
            host: None,
        }
    }
}

/// `[chain]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChainConfig {
    /// JSON-RPC endpoint (one; `rpc_urls` names several).
    pub rpc_url: String,
    /// Several JSON-RPC endpoints of one chain, best first (when set, `rpc_url` is not used):
    /// writes go to all, reads fail over, and `quorum` of them must agree on the confirmed
    /// block (docs/PROTOCOL.md §6d).
    pub rpc_urls: Vec<String>,
    /// How many endpoints must agree on the confirmed block's number and hash (and, in
    /// `verify.mode = "call"`, on each record read at it) before a lookup is believed; fewer
    /// agreeing is `temperror`, never the minority's answer. 1: the first that answers.
    pub quorum: usize,
    /// Milliseconds an endpoint may take before the next one is asked as well (the first
    /// answer wins; a failing endpoint passes the request on at once).
    pub failover_after_ms: u64,
    /// `verify.mode`, copied here at load: how records are read (`call` or `proof`).
    #[serde(skip)]
    pub read_mode: ReadMode,
    /// Expected chain id; checked against the node when set.
    pub chain_id: Option<u64>,
    /// The registry contract.
    pub registry: Option<Address>,
    /// When a record counts: a depth (1 = in the latest block) or a block tag
    /// (`"finalized"`, `"safe"`, `"latest"`).
    pub confirmations: Confirmations,
    /// Seconds before an RPC call is given up (and the result is a temporary error).
    pub timeout_secs: u64,
    /// Explorer page of a transaction; `{tx}` is replaced by its hash.
    pub explorer_tx_url: Option<String>,
    /// First block to search for registry events (the deployment block), for `audit`.
    pub from_block: u64,
    /// Seconds without a receipt before a sent transaction is re-sent with the same nonce and
    /// higher fees.
    pub replace_after_secs: u64,
    /// How much each replacement raises both EIP-1559 fees, in percent (at least 10: nodes
    /// refuse smaller bumps).
    pub fee_bump_percent: u64,
    /// Replacements per transaction at most; after that the agent only waits.
    pub max_replacements: u32,
    /// Milliseconds a registry read waits for others to share its JSON-RPC batch (0: none;
    /// reads arriving while a batch is out still share the next one).
    pub read_batch_window_ms: u64,
    /// Lookups per JSON-RPC batch at most (1 = no batching).
    pub read_batch_max: usize,
    /// Milliseconds between two `eth_blockNumber` polls of the head watcher, which wakes the
    /// lookups waiting for a confirmation (`verify.confirm_wait_secs`) and drives the watch of
    /// recorded stamps. It polls only while someone waits or watches.
    pub head_poll_ms: u64,
    /// When a stamp or anchor this agent recorded is final: a depth or a block tag, as for
    /// `confirmations`. Until then the daemons keep it journalled and send it again if a reorg
    /// drops it (docs/PROTOCOL.md §5b).
    pub final_confirmations: Confirmations,
    /// The writer's funds: a warning is logged when the balance would last fewer than this
    /// many hours at the rate observed since the daemon started (or, before any spend was
    /// seen, covers fewer than 100 writes at the current fees).
    pub low_funds_hours: u64,
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self {
            rpc_url: "http://127.0.0.1:8545".to_owned(),
            rpc_urls: Vec::new(),
            quorum: 1,
            failover_after_ms: 2000,
            read_mode: ReadMode::Call,
            chain_id: None,
            registry: None,
            confirmations: Confirmations::Depth(1),
            timeout_secs: 10,
            explorer_tx_url: None,
            from_block: 0,
            replace_after_secs: 30,
            fee_bump_percent: 20,
            max_replacements: 5,
            read_batch_window_ms: 0,
            read_batch_max: 64,
            head_poll_ms: 1000,
            final_confirmations: Confirmations::Tag(BlockTag::Finalized),
            low_funds_hours: 24,
        }
    }
}

/// `verify.mode`: how the agent reads a record (docs/PROTOCOL.md §6d).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// `eth_call` of `getStamp` / `getAnchor` at the confirmed block: the endpoint's word (or,
    /// with `chain.quorum` > 1, the word of that many endpoints).
    #[default]
    Call,
    /// `eth_getProof` of the record's storage slot at the confirmed block, checked by the
    /// agent against the block's state root (the header's hash recomputed, the registry's
    /// code hash pinned): an endpoint can withhold an answer, not forge one.
    Proof,
}

/// When a record is counted as confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Confirmations {
    /// At least this many blocks deep (1 = included in the latest block).
    Depth(u64),
    /// At a named block tag.
    Tag(BlockTag),
}

/// Block tags a confirmation policy may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockTag {
    /// The latest block (no confirmation beyond inclusion).
    Latest,
    /// The node's `safe` block.
    Safe,
    /// The node's `finalized` block.
    Finalized,
}

impl std::str::FromStr for Confirmations {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "latest" => Ok(Self::Tag(BlockTag::Latest)),
            "safe" => Ok(Self::Tag(BlockTag::Safe)),
            "finalized" => Ok(Self::Tag(BlockTag::Finalized)),
            n => n.parse::<u64>().map(Self::Depth).map_err(|_| {
                format!("`{n}` is not a confirmation policy: give a depth (1, 12…) or latest|safe|finalized")
            }),
        }
    }
}

/// `[writer]`: the key that sends `stamp` transactions. The private key itself is only ever
/// read from `MAILSTAMP_PRIVATE_KEY` or an encrypted keystore file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriterConfig {
    /// An encrypted JSON keystore (as written by `cast wallet import` or geth).
    pub keystore: Option<PathBuf>,
    /// A file holding the keystore password (else `MAILSTAMP_KEYSTORE_PASSWORD`).
    pub password_file: Option<PathBuf>,
}

/// `[stamp]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StampConfig {
    /// Families to stamp (default: all).
    pub components: Vec<Family>,
    /// Refuse to stamp for a From domain whose writer record (or trust-map entry) does not list
    /// this agent's writer: receivers would not count such a stamp anyway.
    pub check_writer: bool,
    /// How the milter and relay record outbound stamps: one transaction per message
    /// (`direct`, the default) or one anchor per batch (`batch`, docs/PROTOCOL.md §5a).
    pub mode: StampMode,
    /// Batch mode: a batch closes after this many messages…
    pub batch_max: usize,
    /// …or this many milliseconds after its first message, whichever comes first.
    pub batch_wait_ms: u64,
    /// Batch mode: how long a message's end-of-data waits for its batch's anchor to be mined;
    /// past it the message is deferred (4xx) and gets no header. Keep it well under the MTA's
    /// own timeout (Postfix `milter_content_timeout`, 300 s).
    pub hold_timeout_ms: u64,
    /// Batch mode: when a message gets its header — once its batch's anchor is mined
    /// (`mined`, the default) or as soon as its batch closes (`closed`: the root is journalled
    /// first and the anchor retried until mined, never dropped; docs/PROTOCOL.md §5a).
    pub release: Release,
    /// Batch mode: what a daemon does at start with batches a crash left unanchored (a
    /// batch released at close is anchored whatever this says).
    pub pending_on_restart: PendingPolicy,
    /// Batch mode: days an anchored or dropped batch (and its leaves) stays in the journal;
    /// older ones are deleted at start and hourly. 0 keeps them for ever.
    pub journal_retention_days: u64,
}

impl Default for StampConfig {
    fn default() -> Self {
        Self {
            components: Family::ALL.to_vec(),
            check_writer: true,
            mode: StampMode::Direct,
            batch_max: 64,
            batch_wait_ms: 1000,
            hold_timeout_ms: 60_000,
            release: Release::Mined,
            pending_on_restart: PendingPolicy::Drop,
            journal_retention_days: 7,
        }
    }
}

/// `stamp.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StampMode {
    /// One `stamp` transaction per message (`m=d`).
    Direct,
    /// One `anchor` transaction per batch of messages (`m=b`, a Merkle proof in the header).
    Batch,
}

/// `stamp.release`: when a batched message gets its header (docs/PROTOCOL.md §5a).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Release {
    /// Once the batch's anchor is mined (default): no message goes out whose anchor may never
    /// land; the SMTP session is held for the batch wait plus about one block.
    #[default]
    Mined,
    /// As soon as the batch closes and its root is journalled: the session is held only for
    /// the batch wait; the anchor is retried until mined. Receivers find the record a block
    /// later and wait for it (`verify.confirm_wait_secs`).
    Closed,
}

/// `stamp.pending_on_restart`: a batch journalled by a daemon but not known to be anchored
/// when the daemon stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PendingPolicy {
    /// Mark it dropped without a transaction (default): no message of it was accepted with a
    /// header — the MTA got no reply and sends it again, with a new stamp in a new batch.
    Drop,
    /// Anchor it (at most once: an anchor already on chain is recognised, not repeated).
    Anchor,
}

/// Most messages in one batch: the proof in each header grows by 43 characters per doubling.
pub const BATCH_MAX_LIMIT: usize = 65_536;

impl StampConfig {
    /// The selection these options describe.
    pub fn selection(&self) -> Selection {
        Selection(self.components.iter().copied().collect())
    }
}

/// `[verify]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyConfig {
    /// Registries whose records we believe, besides `chain.registry`. A stamp naming any
    /// other registry is `invalid`: anyone can deploy a contract that says yes.
    pub trusted_registries: Vec<Address>,
    /// Weighted share at or above which a partial match is `suspect` rather than `spam`.
    pub threshold: f64,
    /// Weight per family (unlisted families weigh 1).
    pub weights: BTreeMap<Family, u32>,
    /// Families whose mismatch is `spam` whatever the score.
    pub required: BTreeSet<Family>,
    /// Records older than this many seconds at verification are replays.
    pub max_age_secs: Option<u64>,
    /// How long the milter and relay wait for a record that is on chain but not confirmed
    /// yet, or not found yet, before answering `temperror` (4xx): they are woken by each new
    /// head. Keep it under Postfix's `milter_content_timeout` (300 s). 0: answer at once.
    pub confirm_wait_secs: u64,
    /// Seconds after this daemon first saw a stamp during which "no record on chain" is
    /// `temperror`, not `spam` (a reorg may have dropped the record and the sender is sending
    /// it again). After it, a stamp still without a record is `spam`. 0: `spam` at once.
    pub missing_grace_secs: u64,
    /// The lowest stamp version accepted: 1 (default) takes every stamp; 2 calls version-1
    /// stamps, which do not cover the From display name, `invalid`.
    pub min_version: u32,
    /// How records are read: `call` (the endpoints' word) or `proof` (storage proofs checked
    /// by the agent); docs/PROTOCOL.md §6d.
    pub mode: ReadMode,
    /// Only hops of these domains count as forwarders and lists (docs/PROTOCOL.md §5c): a
    /// chain through any other domain's hop is at best `suspect`. Absent (the default): every
    /// hop whose writer its own domain authorises.
    pub forwarders: Option<Vec<String>>,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        let p = Policy::default();
        Self {
            trusted_registries: Vec::new(),
            threshold: p.threshold,
            weights: p.weights,
            required: p.required,
            max_age_secs: p.max_age_secs,
            confirm_wait_secs: 60,
            missing_grace_secs: 300,
            min_version: p.min_version,
            mode: ReadMode::Call,
            forwarders: None,
        }
    }
}

impl VerifyConfig {
    /// The matching policy these options describe.
    pub fn policy(&self) -> Policy {
        Policy {
            threshold: self.threshold,
            weights: self.weights.clone(),
            required: self.required.clone(),
            max_age_secs: self.max_age_secs,
            min_version: self.min_version,
            forwarders: self.forwarders.as_ref().map(|f| {
                f.iter()
                    .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
                    .collect()
            }),
        }
    }
}

/// Overrides from flags and environment, applied over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--rpc-url` / `MAILSTAMP_RPC_URL`.
    pub rpc_url: Option<String>,
    /// `--registry` / `MAILSTAMP_REGISTRY`.
    pub registry: Option<Address>,
    /// `--confirmations` / `MAILSTAMP_CONFIRMATIONS`.
    pub confirmations: Option<Confirmations>,
    /// `--store` / `MAILSTAMP_STORE`.
    pub store: Option<PathBuf>,
}

impl ChainConfig {
    /// The endpoints to use, best first: `rpc_urls` when set, else `rpc_url`.
    pub fn endpoints(&self) -> Vec<&str> {
        if self.rpc_urls.is_empty() {
            vec![self.rpc_url.as_str()]
        } else {
            self.rpc_urls.iter().map(String::as_str).collect()
        }
    }

    /// The `[chain]` checks (done at load, not at the first connect).
    pub fn check(&self) -> Result<()> {
        let key = if self.rpc_urls.is_empty() {
            "chain.rpc_url"
        } else {
            "chain.rpc_urls"
        };
        for url in self.endpoints() {
            let scheme_ok = ["http://", "https://"].iter().any(|p| {
                url.get(..p.len())
                    .is_some_and(|s| s.eq_ignore_ascii_case(p))
                    && url.len() > p.len()
            });
            if !scheme_ok || url.contains(char::is_whitespace) {
                return Err(Error::config(
                    key,
                    format!("`{url}` is not an RPC URL: give http://HOST:PORT or https://…"),
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = self.rpc_urls.iter().find(|u| !seen.insert(u.as_str())) {
            return Err(Error::config(
                "chain.rpc_urls",
                format!(
                    "`{twice}` is listed twice: one endpoint counts once toward chain.quorum; list independent endpoints"
                ),
            ));
        }
        let n = self.endpoints().len();
        if self.quorum == 0 || self.quorum > n {
            return Err(Error::config(
                "chain.quorum",
                format!(
                    "{} cannot be met by {n} endpoint{}: give 1 to {n} (list more in chain.rpc_urls for a larger quorum)",
                    self.quorum,
                    if n == 1 { "" } else { "s" }
                ),
            ));
        }
        if self.failover_after_ms == 0 {
            return Err(Error::config(
                "chain.failover_after_ms",
                "must be at least 1 (milliseconds before the next endpoint is asked too)",
            ));
        }
        if self.timeout_secs == 0 {
            return Err(Error::config("chain.timeout_secs", "must be at least 1"));
        }
        if self.confirmations == Confirmations::Depth(0) {
            return Err(Error::config(
                "chain.confirmations",
                "0 would count records that are not on chain; use 1 or more",
            ));
        }
        if self.fee_bump_percent < 10 {
            return Err(Error::config(
                "chain.fee_bump_percent",
                format!(
                    "{} is too small: nodes refuse a replacement that raises the fees by less than 10%; set 10 or more",
                    self.fee_bump_percent
                ),
            ));
        }
        if self.replace_after_secs == 0 {
            return Err(Error::config(
                "chain.replace_after_secs",
                "must be at least 1",
            ));
        }
        if self.read_batch_max == 0 {
            return Err(Error::config("chain.read_batch_max", "must be at least 1"));
        }
        if self.head_poll_ms == 0 {
            return Err(Error::config(
                "chain.head_poll_ms",
                "must be at least 1 (milliseconds between two polls of the head block)",
            ));
        }
        if self.final_confirmations == Confirmations::Depth(0) {
            return Err(Error::config(
                "chain.final_confirmations",
                "0 would call a record final before it is on chain; use a depth of 1 or more, or \"finalized\"",
            ));
        }
        Ok(())
    }
}

impl StampConfig {
    /// The `[stamp]` checks.
    pub fn check(&self) -> Result<()> {
        if self.components.is_empty() {
            return Err(Error::config(
                "stamp.components",
                "is empty: nothing would be stamped; remove the key for all families",
            ));
        }
        if self.batch_max == 0 || self.batch_max > BATCH_MAX_LIMIT {
            return Err(Error::config(
                "stamp.batch_max",
                format!(
                    "is {}; give 1 to {BATCH_MAX_LIMIT} messages per batch",
                    self.batch_max
                ),
            ));
        }
        if self.batch_wait_ms == 0 {
            return Err(Error::config(
                "stamp.batch_wait_ms",
                "must be at least 1 (milliseconds a batch stays open)",
            ));
        }
        if self.hold_timeout_ms <= self.batch_wait_ms {
            return Err(Error::config(
                "stamp.hold_timeout_ms",
                format!(
                    "({}) must be longer than stamp.batch_wait_ms ({}): a message waits for its \
                     batch to close and then for the anchor to be mined",
                    self.hold_timeout_ms, self.batch_wait_ms
                ),
            ));
        }
        Ok(())
    }
}

impl VerifyConfig {
    /// The `[verify]` checks, against what `stamp` stamps.
    pub fn check(&self, stamp: &StampConfig) -> Result<()> {
        if self.confirm_wait_secs >= 300 {
            return Err(Error::config(
                "verify.confirm_wait_secs",
                format!(
                    "is {}; keep it under 300 s (Postfix's milter_content_timeout): past it Postfix \
                     gives up on the milter and the sender sees a 4xx anyway",
                    self.confirm_wait_secs
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(Error::config(
                "verify.threshold",
                format!(
                    "is {}; give a share between 0 and 1 (default 0.75)",
                    self.threshold
                ),
            ));
        }
        let newest = mailstamp_core::header::VERSION;
        if !(1..=newest).contains(&self.min_version) {
            return Err(Error::config(
                "verify.min_version",
                format!(
                    "is {}; give a protocol version from 1 to {newest} (1 accepts every stamp)",
                    self.min_version
                ),
            ));
        }
        for f in [Family::From, Family::Rcpt] {
            if self.required.contains(&f) && !stamp.components.contains(&f) {
                return Err(Error::config(
                    "verify.required",
                    format!("lists `{f}` but stamp.components does not stamp it"),
                ));
            }
        }
        let is_domain = |d: &str| {
            let d = d.trim_end_matches('.');
            d.contains('.')
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
        };
        if let Some(bad) = self.forwarders.iter().flatten().find(|d| !is_domain(d)) {
            return Err(Error::config(
                "verify.forwarders",
                format!(
                    "`{bad}` is not a domain name; list the domains whose hops you trust (e.g. \"lists.example.org\"), or leave verify.forwarders out to count every authorised hop"
                ),
            ));
        }
        Ok(())
    }
}

impl ProviderConfig {
    /// Checks the section is usable for onboarding.
    pub fn require(&self) -> Result<()> {
        if self.zone.is_empty() {
            return Err(Error::config(
                "provider.zone",
                "is not set: give the provider's DNS zone (e.g. provider.example) in the config file",
            ));
        }
        crate::util::validate_domain(&self.zone)
            .map_err(|e| Error::config("provider.zone", e.to_string()))?;
        Ok(())
    }
}

impl Config {
    /// Loads the file at `path` (if any), applies `over` and checks the result: a mistake is
    /// an [`Error::Config`] naming the file, the key and what is wrong.
    pub fn load(path: Option<&Path>, over: &Overrides) -> Result<Self> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config file {}", p.display()))?;
                Self::parse(&text).map_err(|e| e.in_file(p))?
            }
            None => Self::default(),
        };
        if let Some(u) = &over.rpc_url {
            // One endpoint named on the command line replaces the configured set.
            cfg.chain.rpc_url = u.clone();
            cfg.chain.rpc_urls.clear();
            cfg.chain.quorum = 1;
        }
        if let Some(r) = over.registry {
            cfg.chain.registry = Some(r);
        }
        if let Some(c) = &over.confirmations {
            cfg.chain.confirmations = c.clone();
        }
        if let Some(p) = &over.store {
            cfg.store.path = p.clone();
        }
        cfg.check().map_err(|e| match path {
            Some(p) => e.in_file(p),
            None => e,
        })?;
        Ok(cfg)
    }

    /// Parses TOML text (not checked: see [`Config::check`]). A mistake names its key (the
    /// dotted path to it) and, from the TOML parser, its line.
    pub fn parse(text: &str) -> Result<Self> {
        let de =
            toml::Deserializer::parse(text).map_err(|e| Error::config("(file)", e.to_string()))?;
        let mut cfg: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = match e.path().to_string() {
                k if k == "." => "(top level)".to_owned(),
                k => k,
            };
            let inner = e.into_inner();
            let line = inner.span().map(|sp| {
                let upto = &text.as_bytes()[..sp.start.min(text.len())];
                upto.iter().filter(|&&b| b == b'\n').count() + 1
            });
            let problem = match line {
                Some(l) => format!("{} (line {l})", inner.message()),
                None => inner.message().to_owned(),
            };
            Error::config(key, problem)
        })?;
        cfg.chain.read_mode = cfg.verify.mode;
        Ok(cfg)
    }

    /// Checks every section, first mistake first, as an [`Error::Config`] naming its key.
    pub fn check(&self) -> Result<()> {
        self.chain.check()?;
        self.store.check()?;
        self.stamp.check()?;
        self.verify.check(&self.stamp)?;
        if self.provider.enabled {
            self.provider.require()?;
        }
        self.inbound.check()?;
        self.allowlist.check()?;
        self.forward.check()?;
        self.milter.check()?;
        self.relay.check()?;
        self.log.check()?;
        self.audit.check()?;
        if let Some(l) = &self.metrics.listen
            && l.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(Error::config(
                "metrics.listen",
                format!("`{l}` is not HOST:PORT (an IP address and a port, e.g. 127.0.0.1:9466)"),
            ));
        }
        Ok(())
    }

    /// The registry, or a clear error saying how to give one.
    pub fn registry(&self) -> Result<Address> {
        self.chain.registry.context(
            "no registry address: set chain.registry in the config file, MAILSTAMP_REGISTRY, or --registry \
             (deploy one with `mailstamp deploy`)",
        )
    }

    /// Every registry whose records count.
    pub fn trusted_registries(&self) -> Vec<Address> {
        let mut v = self.verify.trusted_registries.clone();
        v.extend(self.chain.registry);
        v
    }

    /// The explorer link of a transaction, when a template is configured.
    pub fn tx_link(&self, tx: &str) -> Option<String> {
        self.chain
            .explorer_tx_url
            .as_ref()
            .map(|t| t.replace("{tx}", tx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../mailstamp.example.toml");
        let cfg = Config::parse(text).unwrap();
        assert_eq!(cfg.chain.confirmations, Confirmations::Depth(3));
        assert_eq!(
            cfg.chain.final_confirmations,
            Confirmations::Tag(BlockTag::Finalized)
        );
        assert_eq!(cfg.verify.policy(), Policy::default());
        // The documented chain-clock values are the defaults.
        let d = VerifyConfig::default();
        assert_eq!(
            (cfg.verify.confirm_wait_secs, cfg.verify.missing_grace_secs),
            (d.confirm_wait_secs, d.missing_grace_secs)
        );
        // The documented [inbound] / [allowlist] values are the defaults.
        assert_eq!(cfg.inbound, InboundConfig::default());
        assert_eq!(cfg.allowlist, AllowlistConfig::default());
        cfg.check().unwrap();
    }

    #[test]
    fn a_store_url_and_host_are_checked_at_load_without_showing_the_password() {
        let ok = Config::parse(
            "[store]\nurl = \"postgresql://ms:s3cret@db.internal:5432/mailstamp\"\nhost = \"mx1\"\n",
        )
        .unwrap();
        ok.check().unwrap();
        for (toml, key) in [
            (
                "url = \"mysql://ms:s3cret@db/mailstamp\"",
                "store.url: is not a PostgreSQL URL",
            ),
            (
                "url = \"postgres://ms:s3cret@db:port/x\"",
                "store.url: is not a PostgreSQL URL (",
            ),
            ("host = \"mx 1\"", "store.host: `mx 1` is not a host name"),
            ("host = \"\"", "store.host: `` is not a host name"),
        ] {
            let cfg = Config::parse(&format!("[store]\n{toml}\n")).unwrap();
            let e = cfg.check().unwrap_err().to_string();
            assert!(e.starts_with(key), "{toml}: {e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn forward_lists_are_checked_and_match_their_senders() {
        let cfg = Config::parse(
            "[forward.lists.\"dev@lists.example.org\"]\nsubject_tag = \"[dev]\"\n\
             [forward.lists.\"ops@lists.example.org\"]\nsenders = [\"ops-owner@lists.example.org\"]\n",
        )
        .unwrap();
        cfg.check().unwrap();
        let f = &cfg.forward;
        assert_eq!(
            f.list("<DEV@lists.example.org>").unwrap().address,
            "dev@lists.example.org"
        );
        assert!(f.list("dev-bounces@lists.example.org").is_none());
        // Mailman's default bounce address, with or without VERP; another list's sender not.
        for (sender, list) in [
            (
                "dev-bounces@lists.example.org",
                Some("dev@lists.example.org"),
            ),
            (
                "<Dev-Bounces+bob=b.example@lists.example.org>",
                Some("dev@lists.example.org"),
            ),
            ("dev-bouncesx@lists.example.org", None),
            ("dev-bounces@other.example.org", None),
            ("dev@lists.example.org", None),
            ("ops-owner@lists.example.org", Some("ops@lists.example.org")),
            ("ops-bounces@lists.example.org", None),
            ("", None),
        ] {
            assert_eq!(f.list_of(sender).map(|l| l.address), list, "{sender}");
        }
        for (toml, want) in [
            (
                "[forward.lists.\"dev\"]\n",
                "forward.lists.\"dev\": is not a mail address",
            ),
            (
                "[forward.lists.\"dev@l.example\"]\nsenders = [\"x\"]\n",
                "forward.lists.\"dev@l.example\".senders: `x` is not a mail address",
            ),
            (
                "[forward.lists.\"dev@l.example\"]\nsubject_tag = \"  \"\n",
                "forward.lists.\"dev@l.example\".subject_tag: give the list's subject prefix",
            ),
        ] {
            let e = Config::parse(toml)
                .unwrap()
                .check()
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{toml}: {e}");
        }
    }

    #[test]
    fn verify_forwarders_are_domain_names_and_become_the_policy() {
        let cfg = Config::parse("[verify]\nforwarders = [\"Lists.Example.org.\", \"b.example\"]\n")
            .unwrap();
        cfg.check().unwrap();
        let want: BTreeSet<String> = ["lists.example.org", "b.example"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(cfg.verify.policy().forwarders, Some(want));
        assert_eq!(Config::parse("").unwrap().verify.policy().forwarders, None);
        let e = Config::parse("[verify]\nforwarders = [\"not a domain\"]\n")
            .unwrap()
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("verify.forwarders: `not a domain` is not a domain name"),
            "{e}"
        );
    }

    #[test]
    fn verify_min_version_is_a_known_protocol_version() {
        let cfg = Config::parse("[verify]\nmin_version = 2\n").unwrap();
        cfg.check().unwrap();
        assert_eq!(cfg.verify.policy().min_version, 2);
        assert_eq!(Config::parse("").unwrap().verify.policy().min_version, 1);
        for bad in [0, 3] {
            let cfg = Config::parse(&format!("[verify]\nmin_version = {bad}\n")).unwrap();
            let e = cfg.check().unwrap_err().to_string();
            assert!(e.starts_with("verify.min_version: is "), "{e}");
        }
    }

    #[test]
    fn several_endpoints_a_quorum_they_can_meet_and_the_read_mode() {
        let cfg = Config::parse(
            "[chain]\nrpc_urls = [\"http://a:1\", \"https://b/KEY\", \"http://c:3\"]\nquorum = 2\n\
             [verify]\nmode = \"proof\"\n",
        )
        .unwrap();
        cfg.check().unwrap();
        assert_eq!(
            cfg.chain.endpoints(),
            ["http://a:1", "https://b/KEY", "http://c:3"]
        );
        assert_eq!(
            cfg.chain.read_mode,
            ReadMode::Proof,
            "verify.mode reaches the chain"
        );
        let one = Config::parse("").unwrap();
        assert_eq!(one.chain.endpoints(), ["http://127.0.0.1:8545"]);
        assert_eq!(one.chain.read_mode, ReadMode::Call);
        for (text, want) in [
            (
                "[chain]\nquorum = 2\n",
                "chain.quorum: 2 cannot be met by 1 endpoint: give 1 to 1",
            ),
            (
                "[chain]\nrpc_urls = [\"http://a:1\", \"http://b:2\"]\nquorum = 0\n",
                "chain.quorum: 0 cannot be met by 2 endpoints",
            ),
            (
                "[chain]\nrpc_urls = [\"http://a:1\", \"b:2\"]\n",
                "chain.rpc_urls: `b:2` is not an RPC URL",
            ),
            (
                "[chain]\nrpc_urls = [\"http://a:1\", \"http://a:1\"]\nquorum = 2\n",
                "chain.rpc_urls: `http://a:1` is listed twice",
            ),
        ] {
            let e = Config::parse(text)
                .unwrap()
                .check()
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{e}");
        }
        let e = Config::parse("[verify]\nmode = \"trust\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("verify.mode: unknown variant `trust`"), "{e}");
        // --rpc-url names one endpoint: it replaces the set and its quorum.
        let dir = std::env::temp_dir().join(format!("ms-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            "[chain]\nrpc_urls = [\"http://a:1\", \"http://b:2\"]\nquorum = 2\n",
        )
        .unwrap();
        let over = Overrides {
            rpc_url: Some("http://x:9".into()),
            ..Overrides::default()
        };
        let cfg = Config::load(Some(&f), &over).unwrap();
        assert_eq!(cfg.chain.endpoints(), ["http://x:9"]);
        assert_eq!(cfg.chain.quorum, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_log_format_is_text_unless_the_file_says_json() {
        assert_eq!(Config::parse("").unwrap().log.format, LogFormat::Text);
        let cfg = Config::parse("[log]\nformat = \"json\"\n").unwrap();
        assert_eq!(cfg.log.format, LogFormat::Json);
        let e = Config::parse("[log]\nformat = \"xml\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("log.format: unknown variant `xml`"), "{e}");
        // Peeking ignores the rest of the file and never fails.
        let text = "[chain]\nrpc = 1\n[log]\nformat = \"json\"\n";
        assert_eq!(LogConfig::peek(text).format, LogFormat::Json);
        assert_eq!(LogConfig::peek("[log]\nformat = 3").format, LogFormat::Text);
        assert_eq!(LogConfig::peek("not toml [").format, LogFormat::Text);
    }

    #[test]
    fn defaults_are_sane() {
        let cfg = Config::parse("").unwrap();
        assert_eq!(cfg.chain.confirmations, Confirmations::Depth(1));
        assert_eq!(cfg.verify.policy(), Policy::default());
        assert_eq!(cfg.stamp.selection(), Selection::all());
        assert_eq!(cfg.stamp.mode, StampMode::Direct);
        assert_eq!(cfg.stamp.pending_on_restart, PendingPolicy::Drop);
    }

    #[test]
    fn a_mistake_names_the_file_the_key_and_the_line() {
        let dir = std::env::temp_dir().join(format!("mailstamp-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.toml");
        let err = |text: &str| {
            std::fs::write(&path, text).unwrap();
            let e = Config::load(Some(&path), &Overrides::default()).unwrap_err();
            assert!(e.is_permanent(), "{e}");
            e.to_string()
        };
        let p = path.display();
        assert_eq!(
            err("[chain]\nrpc_url = \"localhost:8545\"\n"),
            format!(
                "{p}: chain.rpc_url: `localhost:8545` is not an RPC URL: give http://HOST:PORT or https://…"
            )
        );
        let e = err("[chain]\ntimeout_secs = 10\nrpc = 1\n");
        assert!(
            e.starts_with(&format!(
                "{p}: chain.rpc: unknown field `rpc`, expected one of `rpc_url`"
            )) && e.ends_with("(line 3)"),
            "{e}"
        );
        let e = err("[stamp]\nmode = \"bulk\"\n");
        assert!(
            e.starts_with(&format!("{p}: stamp.mode: unknown variant `bulk`")),
            "{e}"
        );
        let e = err("[milter]\nmax_sessions = 0\n");
        assert_eq!(e, format!("{p}: milter.max_sessions: must be at least 1"));
        let e = err("[relay]\nnext_hop = \"h:x\"\n");
        assert_eq!(e, format!("{p}: relay.next_hop: `h:x`: give HOST:PORT"));
        let e = err("[chain]\nread_batch_max = 0\n");
        assert_eq!(e, format!("{p}: chain.read_batch_max: must be at least 1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mistakes_are_named() {
        let e = Config::parse("[chain]\nrpc = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rpc"), "{e}");
        let e = Config::parse("[verify]\nthreshold = 2.0")
            .unwrap()
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("threshold"), "{e}");
        let e = Config::parse("[stamp]\ncomponents = [\"nope\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown component family"), "{e}");
        let e = Config::parse("[stamp]\nmode = \"bulk\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("direct") && e.contains("batch"), "{e}");
        let e = Config::parse(
            "[stamp]\nmode = \"batch\"\nbatch_wait_ms = 5000\nhold_timeout_ms = 2000",
        )
        .unwrap()
        .check()
        .unwrap_err()
        .to_string();
        assert!(e.contains("hold_timeout_ms"), "{e}");
        let e = Config::parse("[stamp]\nbatch_max = 0")
            .unwrap()
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_max"), "{e}");
        assert!("banana".parse::<Confirmations>().is_err());
        assert_eq!(
            "12".parse::<Confirmations>().unwrap(),
            Confirmations::Depth(12)
        );
    }
}
