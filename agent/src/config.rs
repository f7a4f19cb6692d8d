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
}

impl Default for StampConfig {
    fn default() -> Self {
        Self {
            components: Family::ALL.to_vec(),
            check_writer: true,
        }
    }
}

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
        assert!("banana".parse::<Confirmations>().is_err());
        assert_eq!(
            "12".parse::<Confirmations>().unwrap(),
            Confirmations::Depth(12)
        );
    }
}
