// SPDX-License-Identifier: GPL-3.0-or-later
//! The chain client: typed bindings to `StampRegistry` (from the checked-in Forge artifact
//! `agent/abi/StampRegistry.json`), deployment through the CREATE2 deployer, recording, and the
//! confirmed lookups verification needs. Every RPC call has a timeout; a failure to reach the
//! chain is reported as such (the caller turns it into `temperror`), never as "no record".
//!
//! Here: the connection ([`Chain::connect`]) and what every part shares. [`write`]: EIP-1559
//! fees from the node's estimate, nonces handed out by the agent ([`nonce`]: many transactions
//! in flight from one writer never share one), and a transaction without a receipt after
//! `chain.replace_after_secs` re-sent with the same nonce and higher fees. [`read`]: confirmed
//! lookups, cached, batched when they arrive together, and lookups that wait for new heads
//! ([`heads`]: one watcher per connection). [`watch`]: what the watch of this agent's own
//! writes asks (final block, block hashes, re-sends). [`funds`]: the writer's balance and the
//! clear "insufficient funds" error. [`deploy`]: the registry through the CREATE2 deployer.
//! [`events`]: the registry's events, the head and `verifyStamp`, for the audit page.

mod deploy;
mod endpoints;
mod events;
mod funds;
mod heads;
mod nonce;
mod read;
mod trust;
mod watch;
mod write;

use std::sync::Arc;
use std::time::Duration;

use alloy::{
    network::EthereumWallet,
    primitives::{Address, B256},
    providers::{DynProvider, Provider, ProviderBuilder},
    signers::local::PrivateKeySigner,
    sol,
};

use crate::config::{ChainConfig, Confirmations, ReadMode};
use crate::error::{Context, Result, bail, err};

pub use deploy::{
    CREATE2_DEPLOYER, Deployed, creation_code, deploy, deploy_salt, predicted_address,
};
pub use endpoints::redact_url;
pub use events::{EventKind, RegistryEvent};
pub use funds::{STAMP_GAS, eth, funds_warning};
pub use nonce::NoncePool;
use nonce::Nonces;
use read::{ReadBatcher, RecordCache};

sol!(
    #[sol(rpc)]
    #[allow(missing_docs)]
    #[derive(Debug)]
    StampRegistry,
    "abi/StampRegistry.json"
);

/// A connection to the chain and the registry.
#[derive(Clone)]
pub struct Chain {
    /// Every endpoint as one transport: reads fail over, writes go to all.
    provider: DynProvider,
    /// The endpoints, each on its own (the quorum and the proofs ask them one by one).
    pool: endpoints::Pool,
    each: Arc<[DynProvider]>,
    /// `chain.quorum`.
    quorum: usize,
    /// `verify.mode`.
    mode: ReadMode,
    /// The registry's runtime code hash the proofs must lead to.
    code_hash: B256,
    /// The last agreed confirmed block and when it was agreed (`trust`).
    agreed: Arc<tokio::sync::Mutex<Option<trust::AgreedAt>>>,
    agreed_ttl: Duration,
    /// The registry address.
    pub registry: Address,
    /// The chain id the node reports.
    pub chain_id: u64,
    /// The writer's address, when a key was given.
    pub writer: Option<Address>,
    /// The writer's key: writes are signed here, so their hash is known before they are sent.
    wallet: Option<EthereumWallet>,
    confirmations: Confirmations,
    /// When a write of this agent is final (`chain.final_confirmations`).
    final_confirmations: Confirmations,
    timeout: Duration,
    cache: Arc<RecordCache>,
    fees: FeePolicy,
    nonces: Arc<Nonces>,
    reads: Arc<ReadBatcher>,
    heads: Arc<heads::Heads>,
}

/// When and how a stuck transaction is replaced.
#[derive(Debug, Clone, Copy)]
struct FeePolicy {
    replace_after: Duration,
    bump_percent: u128,
    max_replacements: u32,
}

impl FeePolicy {
    /// The longest a write (or the wait for one sent before a restart) lasts: every
    /// replacement's interval, one more for the last to be mined, and three RPC timeouts.
    fn deadline(&self, rpc_timeout: Duration) -> Duration {
        self.replace_after * (self.max_replacements + 1) + rpc_timeout * 3
    }
}

/// What an [`OnSigned`] journal returns: the write waits for it (it runs off the runtime's
/// workers, e.g. through `Store::call`).
pub type Journalled = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

/// Told the hash of each transaction of a write before it is sent (see
/// [`Chain::anchor_journalled`]).
pub type OnSigned = dyn Fn(B256) -> Journalled + Send + Sync;

/// Where a recorded stamp landed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Recorded {
    /// Transaction hash.
    pub tx: B256,
    /// Block number.
    pub block: u64,
}

/// A registry write as it went out: the nonce, every transaction sent with it (the first, then
/// each replacement, in order), and where the one that was mined landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The mined transaction (one of `hashes`).
    pub recorded: Recorded,
    /// The nonce all of `hashes` share.
    pub nonce: u64,
    /// Every transaction broadcast for this write.
    pub hashes: Vec<B256>,
    /// The mined transaction as signed (EIP-2718 bytes): what is sent again, unchanged, when
    /// a reorg drops it.
    pub raw: alloy::primitives::Bytes,
    /// The hash of the block it was mined in (a reorg changes the block at that number).
    pub block_hash: B256,
}

async fn within<T>(
    timeout: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let started = std::time::Instant::now();
    let r = match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(err!(
            "{what}: no answer from the RPC endpoint within {}s",
            timeout.as_secs()
        )),
    };
    crate::metrics::rpc(what, started.elapsed(), r.is_err());
    r
}

/// Builds a provider for `url`, with a wallet when a signer is given.
pub fn provider(url: &str, signer: Option<PrivateKeySigner>) -> Result<DynProvider> {
    let url: reqwest_url::Url = url.parse().map_err(|e| {
        err!("`{url}` is not a valid RPC URL (expected e.g. http://127.0.0.1:8545): {e}")
    })?;
    // The recommended fillers (gas, nonce through a CachedNonceManager, chain id) serve
    // `deploy`; `Chain`'s writes set every field themselves, so the fillers only sign them.
    Ok(match signer {
        Some(s) => ProviderBuilder::new()
            .wallet(EthereumWallet::from(s))
            .connect_http(url)
            .erased(),
        None => ProviderBuilder::new().connect_http(url).erased(),
    })
}

mod reqwest_url {
    pub(super) use alloy::transports::http::reqwest::Url;
}

impl Chain {
    /// Connects to the node named in `cfg`, checks its chain id, and binds the registry.
    /// Its nonce counter is its own: see [`Chain::connect_in`] for one shared with other
    /// connections.
    pub async fn connect(
        cfg: &ChainConfig,
        registry: Address,
        signer: Option<PrivateKeySigner>,
    ) -> Result<Self> {
        Self::connect_in(cfg, registry, signer, &NoncePool::default()).await
    }

    /// As [`Chain::connect`], with the writer's nonce counter taken from `nonce_pool`:
    /// connections made through one pool never hand out the same nonce of a writer twice.
    pub async fn connect_in(
        cfg: &ChainConfig,
        registry: Address,
        signer: Option<PrivateKeySigner>,
        nonce_pool: &NoncePool,
    ) -> Result<Self> {
        // Checked at load already; a hand-made config is checked by the same rules here.
        cfg.check()?;
        let chain = Self::unchecked(cfg, registry, signer, cfg.chain_id.unwrap_or(0))?;
        let (pool, each) = (&chain.pool, &chain.each);
        let timeout = Duration::from_secs(cfg.timeout_secs);
        let names = (0..pool.len())
            .map(|i| pool.label(i))
            .collect::<Vec<_>>()
            .join(", ");
        // Every endpoint must be of the chain configured (or of the first one's).
        let ids = futures_util::future::join_all(each.iter().enumerate().map(|(i, p)| {
            let label = pool.label(i).to_owned();
            within(timeout, "eth_chainId", async move {
                p.get_chain_id()
                    .await
                    .with_context(|| format!("cannot reach the chain at {label}"))
            })
        }))
        .await;
        let mut chain_id = cfg.chain_id;
        let mut unreachable = Vec::new();
        for (i, id) in ids.into_iter().enumerate() {
            match id {
                Ok(id) if *chain_id.get_or_insert(id) == id => {}
                Ok(id) => bail!(
                    "the node at {} is chain {id}, but {} {}; fix the RPC URL or the config",
                    pool.label(i),
                    if cfg.chain_id.is_some() {
                        "chain.chain_id says"
                    } else {
                        "the other endpoints are chain"
                    },
                    chain_id.unwrap_or_default()
                ),
                Err(e) => unreachable.push(e),
            }
        }
        // Unreachable endpoints are tolerated while the rest can meet the quorum (reads fail
        // over; health is logged); too few reachable is the error it always was.
        let reached = pool.len() - unreachable.len();
        if reached < cfg.quorum.max(1) {
            let first = unreachable.remove(0);
            return Err(if pool.len() == 1 {
                first
            } else {
                first.context(format!(
                    "{reached} of the RPC endpoints ({names}) answered; chain.quorum is {}",
                    cfg.quorum
                ))
            });
        }
        for e in &unreachable {
            tracing::warn!("{e:#}; going on with the other endpoints");
        }
        let Some(chain_id) = chain_id else {
            bail!("no RPC endpoint told its chain id ({names})");
        };
        Ok(Self {
            chain_id,
            nonces: nonce_pool.get(chain_id, chain.writer),
            ..chain
        })
    }

    /// A connection to the endpoints of `cfg` as chain `chain_id`, nothing asked yet, with a
    /// nonce counter of its own ([`Chain::connect_in`] puts the pool's in).
    fn unchecked(
        cfg: &ChainConfig,
        registry: Address,
        signer: Option<PrivateKeySigner>,
        chain_id: u64,
    ) -> Result<Self> {
        let writer = signer.as_ref().map(|s| s.address());
        let wallet = signer.clone().map(EthereumWallet::from);
        let pool = endpoints::Pool::new(
            &cfg.endpoints(),
            Duration::from_millis(cfg.failover_after_ms),
        )?;
        let on = |p: endpoints::Pool| {
            let client = alloy::rpc::client::RpcClient::new(p.clone(), p.is_local());
            match &signer {
                Some(s) => ProviderBuilder::new()
                    .wallet(EthereumWallet::from(s.clone()))
                    .connect_client(client)
                    .erased(),
                None => ProviderBuilder::new().connect_client(client).erased(),
            }
        };
        let provider = on(pool.clone());
        let each: Arc<[DynProvider]> = (0..pool.len()).map(|i| on(pool.only(i))).collect();
        let timeout = Duration::from_secs(cfg.timeout_secs);
        Ok(Self {
            provider,
            pool,
            each,
            quorum: cfg.quorum,
            mode: cfg.read_mode,
            code_hash: trust::registry_code_hash(),
            agreed: Arc::default(),
            agreed_ttl: Duration::from_millis(cfg.head_poll_ms),
            registry,
            chain_id,
            writer,
            wallet,
            confirmations: cfg.confirmations.clone(),
            final_confirmations: cfg.final_confirmations.clone(),
            timeout,
            cache: Arc::default(),
            fees: FeePolicy {
                replace_after: Duration::from_secs(cfg.replace_after_secs),
                bump_percent: u128::from(cfg.fee_bump_percent),
                max_replacements: cfg.max_replacements,
            },
            nonces: Arc::default(),
            reads: Arc::new(ReadBatcher::new(
                Duration::from_millis(cfg.read_batch_window_ms),
                cfg.read_batch_max,
            )),
            heads: Arc::new(heads::Heads::new(
                Duration::from_millis(cfg.head_poll_ms),
                timeout,
            )),
        })
    }

    /// The writer's next nonce as the node sees it (tests and diagnostics).
    pub async fn provider_nonce(&self) -> u64 {
        match self.writer {
            Some(w) => tokio::time::timeout(self.timeout, self.provider.get_transaction_count(w))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0),
            None => 0,
        }
    }

    /// What the core binds a stamp to: this chain, this registry, `writer`.
    pub fn chain_ref(&self, writer: Address) -> mailstamp_core::ChainRef {
        mailstamp_core::ChainRef {
            chain_id: self.chain_id,
            registry: self.registry.0.0,
            writer: writer.0.0,
        }
    }

    /// Checks that the registry has code and answers `version()`.
    pub async fn check_registry(&self) -> Result<String> {
        let reg = StampRegistry::new(self.registry, &self.provider);
        within(self.timeout, "version()", async {
            let code = self.provider.get_code_at(self.registry).await?;
            if code.is_empty() {
                bail!(
                    "no contract at {} on chain {}: deploy one with `mailstamp deploy` or fix chain.registry",
                    self.registry,
                    self.chain_id
                );
            }
            Ok(reg.version().call().await?)
        })
        .await
    }
}

/// The key of a registry record: a direct stamp's token or a batch's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKey {
    /// `stamp(token, …)` / `getStamp`.
    Stamp(B256),
    /// `anchor(batchId, …)` / `getAnchor`.
    Batch(B256),
}

impl RecordKey {
    /// The record a header points to.
    pub fn of(h: &mailstamp_core::StampHeader) -> Self {
        match &h.mode {
            mailstamp_core::header::Mode::Direct => Self::Stamp(B256::from(h.token())),
            mailstamp_core::header::Mode::Batch { batch, .. } => Self::Batch(B256::from(*batch)),
        }
    }
}
