// SPDX-License-Identifier: GPL-3.0-or-later
//! Configuration: a documented TOML file (see `mailstamp.example.toml`), overridden by
//! environment variables, overridden by flags. Secrets (the writer key, keystore password)
//! come only from files or the environment and are never printed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use alloy::primitives::Address;
use anyhow::{Context, Result, bail};
use mailstamp_core::{Family, Policy, Selection};
use serde::Deserialize;

use crate::allowlist::AllowlistConfig;
use crate::dns::DnsConfig;
use crate::inbound::InboundConfig;
use crate::maps::MapsConfig;
use crate::milter::MilterConfig;
use crate::onboard::ProviderConfig;
use crate::relay::RelayConfig;

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
    /// `mailstamp recover` (seed 004).
    pub recover: crate::recover::RecoverConfig,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite file.
    pub path: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/mailstamp/state.sqlite"),
        }
    }
}

/// `[chain]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChainConfig {
    /// JSON-RPC endpoint.
    pub rpc_url: String,
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
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self {
            rpc_url: "http://127.0.0.1:8545".to_owned(),
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
        }
    }
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
    /// Batch mode: what a daemon does at start with batches a crash left unanchored.
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

impl Config {
    /// Loads the file at `path` (if any) and applies `over`.
    pub fn load(path: Option<&Path>, over: &Overrides) -> Result<Self> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config file {}", p.display()))?;
                Self::parse(&text).with_context(|| format!("config file {}", p.display()))?
            }
            None => Self::default(),
        };
        if let Some(u) = &over.rpc_url {
            cfg.chain.rpc_url = u.clone();
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
        cfg.check()?;
        Ok(cfg)
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self> {
        let cfg: Self = toml::from_str(text)?;
        Ok(cfg)
    }

    fn check(&self) -> Result<()> {
        let p = &self.verify;
        if !(0.0..=1.0).contains(&p.threshold) {
            bail!(
                "verify.threshold is {}; give a share between 0 and 1 (default 0.75)",
                p.threshold
            );
        }
        if self.chain.timeout_secs == 0 {
            bail!("chain.timeout_secs must be at least 1");
        }
        if self.chain.confirmations == Confirmations::Depth(0) {
            bail!(
                "chain.confirmations = 0 would count records that are not on chain; use 1 or more"
            );
        }
        if self.provider.enabled {
            self.provider.require()?;
        }
        self.inbound.check()?;
        self.allowlist.check()?;
        if self.stamp.components.is_empty() {
            bail!(
                "stamp.components is empty: nothing would be stamped; remove the key for all families"
            );
        }
        let st = &self.stamp;
        if st.batch_max == 0 || st.batch_max > BATCH_MAX_LIMIT {
            bail!(
                "stamp.batch_max is {}; give 1 to {BATCH_MAX_LIMIT} messages per batch",
                st.batch_max
            );
        }
        if st.batch_wait_ms == 0 {
            bail!("stamp.batch_wait_ms must be at least 1 (milliseconds a batch stays open)");
        }
        if st.hold_timeout_ms <= st.batch_wait_ms {
            bail!(
                "stamp.hold_timeout_ms ({}) must be longer than stamp.batch_wait_ms ({}): a message \
                 waits for its batch to close and then for the anchor to be mined",
                st.hold_timeout_ms,
                st.batch_wait_ms
            );
        }
        for f in [Family::From, Family::Rcpt] {
            if p.required.contains(&f) && !self.stamp.components.contains(&f) {
                bail!("verify.required lists `{f}` but stamp.components does not stamp it");
            }
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
        let text = include_str!("../mailstamp.example.toml");
        let cfg = Config::parse(text).unwrap();
        assert_eq!(
            cfg.chain.confirmations,
            Confirmations::Tag(BlockTag::Finalized)
        );
        assert_eq!(cfg.verify.policy(), Policy::default());
        // The documented [inbound] / [allowlist] values are the defaults.
        assert_eq!(cfg.inbound, crate::inbound::InboundConfig::default());
        assert_eq!(cfg.allowlist, crate::allowlist::AllowlistConfig::default());
        cfg.check().unwrap();
    }

    #[test]
    fn defaults_are_sane() {
        let cfg = Config::parse("").unwrap();
        assert_eq!(cfg.chain.confirmations, Confirmations::Depth(1));
        assert_eq!(cfg.verify.policy(), Policy::default());
        assert_eq!(cfg.stamp.selection(), Selection::default());
        assert_eq!(cfg.stamp.mode, StampMode::Direct);
        assert_eq!(cfg.stamp.pending_on_restart, PendingPolicy::Drop);
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
