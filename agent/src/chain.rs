// SPDX-License-Identifier: GPL-3.0-or-later
//! The chain client: typed bindings to `StampRegistry` (from the checked-in Forge artifact
//! `agent/abi/StampRegistry.json`), deployment through the CREATE2 deployer, recording, and the
//! confirmed lookups verification needs. Every RPC call has a timeout; a failure to reach the
//! chain is reported as such (the caller turns it into `temperror`), never as "no record".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;

use alloy::{
    eips::{BlockId, BlockNumberOrTag},
    network::EthereumWallet,
    primitives::{Address, B256, Bytes, FixedBytes, address, keccak256},
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::types::{Filter, TransactionRequest},
    signers::local::PrivateKeySigner,
    sol,
    sol_types::SolEvent,
};
use anyhow::{Context, Result, anyhow, bail};
use mailstamp_core::Lookup;

use crate::config::{BlockTag, ChainConfig, Confirmations};

sol!(
    #[sol(rpc)]
    #[allow(missing_docs)]
    #[derive(Debug)]
    StampRegistry,
    "abi/StampRegistry.json"
);

/// The deterministic-deployment proxy (Arachnid's CREATE2 factory), present on anvil, Sepolia
/// and most EVM chains at this address.
pub const CREATE2_DEPLOYER: Address = address!("4e59b44847b379578588920cA78FbF26c0B4956C");

/// The CREATE2 salt of the registry, shared with `contracts/script/Deploy.s.sol`.
pub fn deploy_salt() -> B256 {
    keccak256("mailstamp.registry.v1")
}

/// The registry's creation code (pinned: no metadata hash, so the address is the same on
/// every chain).
pub fn creation_code() -> Bytes {
    StampRegistry::BYTECODE.clone()
}

/// The address the registry gets on any chain with the CREATE2 deployer.
pub fn predicted_address() -> Address {
    CREATE2_DEPLOYER.create2_from_code(deploy_salt(), creation_code())
}

/// A connection to the chain and the registry.
#[derive(Clone)]
pub struct Chain {
    provider: DynProvider,
    /// The registry address.
    pub registry: Address,
    /// The chain id the node reports.
    pub chain_id: u64,
    /// The writer's address, when a key was given.
    pub writer: Option<Address>,
    confirmations: Confirmations,
    timeout: Duration,
    cache: Arc<RecordCache>,
}

/// Confirmed records, shared by every clone of a [`Chain`]. A confirmed record never changes
/// (the registry is write-once), so it is kept; anything else (not found, not confirmed yet,
/// chain trouble) is asked again next time. Lookups of the same record that overlap (a burst
/// of messages from one batch) share one RPC round: the first caller asks, the others wait for
/// its answer.
#[derive(Default)]
struct RecordCache {
    cells: Mutex<HashMap<(Address, RecordKey), Cell>>,
}

/// One record's lookup, shared by everyone asking for it at the same time.
type Cell = Arc<OnceCell<Lookup>>;

/// Bound on cached records; past it the cache starts over (cheap, and rare: 64k entries).
const CACHE_MAX: usize = 65_536;

/// Where a recorded stamp landed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Recorded {
    /// Transaction hash.
    pub tx: B256,
    /// Block number.
    pub block: u64,
}

async fn within<T>(
    timeout: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => bail!(
            "{what}: no answer from the RPC endpoint within {}s",
            timeout.as_secs()
        ),
    }
}

/// Builds a provider for `url`, with a wallet when a signer is given.
pub fn provider(url: &str, signer: Option<PrivateKeySigner>) -> Result<DynProvider> {
    let url: reqwest_url::Url = url.parse().with_context(|| {
        format!("`{url}` is not a valid RPC URL (expected e.g. http://127.0.0.1:8545)")
    })?;
    Ok(match signer {
        Some(s) => ProviderBuilder::new()
            .with_cached_nonce_management()
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
    pub async fn connect(
        cfg: &ChainConfig,
        registry: Address,
        signer: Option<PrivateKeySigner>,
    ) -> Result<Self> {
        let writer = signer.as_ref().map(|s| s.address());
        let provider = provider(&cfg.rpc_url, signer)?;
        let timeout = Duration::from_secs(cfg.timeout_secs);
        let chain_id = within(timeout, "eth_chainId", async {
            provider
                .get_chain_id()
                .await
                .with_context(|| format!("cannot reach the chain at {}", cfg.rpc_url))
        })
        .await?;
        if let Some(want) = cfg.chain_id
            && want != chain_id
        {
            bail!(
                "the node at {} is chain {chain_id}, but chain.chain_id says {want}; fix the RPC URL or the config",
                cfg.rpc_url
            );
        }
        Ok(Self {
            provider,
            registry,
            chain_id,
            writer,
            confirmations: cfg.confirmations.clone(),
            timeout,
            cache: Arc::default(),
        })
    }

    /// The writer's next nonce as the node sees it (tests and diagnostics).
    pub async fn provider_nonce(&self) -> u64 {
        match self.writer {
            Some(w) => self.provider.get_transaction_count(w).await.unwrap_or(0),
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

    /// Records `commitment` under `token` and waits for the receipt.
    pub async fn stamp(&self, token: B256, commitment: FixedBytes<24>) -> Result<Recorded> {
        let reg = StampRegistry::new(self.registry, &self.provider);
        within(self.timeout * 3, "stamp transaction", async {
            mined(reg.stamp(token, commitment).send().await, "stamp").await
        })
        .await
    }

    /// Anchors the root of a batch of `size` stamps under `batch` and waits for the receipt.
    pub async fn anchor(&self, batch: B256, root: FixedBytes<24>, size: u32) -> Result<Recorded> {
        let reg = StampRegistry::new(self.registry, &self.provider);
        within(self.timeout * 3, "anchor transaction", async {
            mined(reg.anchor(batch, root, size).send().await, "anchor").await
        })
        .await
    }

    /// The block at which records count as confirmed.
    async fn confirmed_block(&self) -> Result<BlockId> {
        Ok(match &self.confirmations {
            Confirmations::Tag(BlockTag::Latest) => BlockId::latest(),
            Confirmations::Tag(BlockTag::Safe) => BlockId::Number(BlockNumberOrTag::Safe),
            Confirmations::Tag(BlockTag::Finalized) => BlockId::Number(BlockNumberOrTag::Finalized),
            Confirmations::Depth(d) => {
                let head = self.provider.get_block_number().await?;
                let Some(n) = head.checked_sub(d.saturating_sub(1)) else {
                    // The chain is shorter than the depth: nothing is confirmed yet.
                    return Ok(BlockId::Number(BlockNumberOrTag::Earliest));
                };
                BlockId::number(n)
            }
        })
    }

    async fn get_record(
        &self,
        writer: Address,
        key: RecordKey,
        at: BlockId,
    ) -> Result<(FixedBytes<24>, u64)> {
        match key {
            RecordKey::Stamp(token) => self.get_stamp(writer, token, at).await,
            RecordKey::Batch(batch) => {
                let reg = StampRegistry::new(self.registry, &self.provider);
                match reg.getAnchor(writer, batch).block(at).call().await {
                    Ok(r) => Ok((r.root, r.time)),
                    Err(alloy::contract::Error::ZeroData(..)) => Ok((FixedBytes::ZERO, 0)),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    async fn get_stamp(
        &self,
        writer: Address,
        token: B256,
        at: BlockId,
    ) -> Result<(FixedBytes<24>, u64)> {
        let reg = StampRegistry::new(self.registry, &self.provider);
        match reg.getStamp(writer, token).block(at).call().await {
            Ok(r) => Ok((r.commitment, r.time)),
            // No code at that block (the registry was deployed later): no record there yet.
            Err(alloy::contract::Error::ZeroData(..)) => Ok((FixedBytes::ZERO, 0)),
            Err(e) => Err(e.into()),
        }
    }

    /// What the chain says about the record (writer, key): a confirmed record, an unconfirmed
    /// one, none, or that the chain could not be read. Confirmed records come from the cache
    /// once seen; overlapping lookups of one record share one round of RPC.
    pub async fn lookup(&self, writer: Address, key: RecordKey) -> Lookup {
        let cell = {
            let mut cells = self.cache.cells.lock().unwrap_or_else(|p| p.into_inner());
            if cells.len() >= CACHE_MAX {
                cells.clear();
            }
            cells.entry((writer, key)).or_default().clone()
        };
        let r = cell
            .get_or_init(|| self.lookup_uncached(writer, key))
            .await
            .clone();
        if !matches!(r, Lookup::Found { .. }) {
            // Only confirmed records are final; let the next caller ask again.
            let mut cells = self.cache.cells.lock().unwrap_or_else(|p| p.into_inner());
            if cells
                .get(&(writer, key))
                .is_some_and(|c| Arc::ptr_eq(c, &cell))
            {
                cells.remove(&(writer, key));
            }
        }
        r
    }

    async fn lookup_uncached(&self, writer: Address, key: RecordKey) -> Lookup {
        let r = within(self.timeout, "registry read", async {
            let at = self.confirmed_block().await?;
            let (c, time) = self.get_record(writer, key, at).await?;
            if c != FixedBytes::<24>::ZERO {
                return Ok(Lookup::Found {
                    commitment: c.0,
                    time,
                });
            }
            let (c, _) = self.get_record(writer, key, BlockId::latest()).await?;
            Ok(if c == FixedBytes::<24>::ZERO {
                Lookup::NotFound
            } else {
                Lookup::Unconfirmed
            })
        })
        .await;
        r.unwrap_or_else(|e| Lookup::Unavailable(format!("{e:#}")))
    }

    /// The `Stamped` (or, for a batch, `Anchored`) event of `key` by `writer` (by any writer
    /// when `None`: the first one), with the writer, transaction and block, for audit.
    pub async fn find_event(
        &self,
        writer: Option<Address>,
        key: RecordKey,
        from_block: u64,
    ) -> Result<Option<(Address, Recorded)>> {
        let (signature, key) = match key {
            RecordKey::Stamp(t) => (StampRegistry::Stamped::SIGNATURE_HASH, t),
            RecordKey::Batch(b) => (StampRegistry::Anchored::SIGNATURE_HASH, b),
        };
        let mut filter = Filter::new()
            .address(self.registry)
            .event_signature(signature)
            .topic2(key)
            .from_block(from_block);
        if let Some(w) = writer {
            filter = filter.topic1(w.into_word());
        }
        let logs = within(self.timeout, "eth_getLogs", async {
            Ok(self.provider.get_logs(&filter).await?)
        })
        .await?;
        Ok(logs.first().and_then(|l| {
            let writer = Address::from_word(*l.topics().get(1)?);
            let rec = Recorded {
                tx: l.transaction_hash?,
                block: l.block_number?,
            };
            Some((writer, rec))
        }))
    }

    /// Timestamp of a block.
    pub async fn block_time(&self, block: u64) -> Result<Option<u64>> {
        within(self.timeout, "eth_getBlockByNumber", async {
            Ok(self
                .provider
                .get_block_by_number(block.into())
                .await?
                .map(|b| b.header.timestamp))
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

/// Sends are decoded into the registry's custom errors; a mined transaction must succeed.
async fn mined(
    sent: Result<
        alloy::providers::PendingTransactionBuilder<alloy::network::Ethereum>,
        alloy::contract::Error,
    >,
    what: &str,
) -> Result<Recorded> {
    let pending = match sent {
        Ok(p) => p,
        Err(e) => {
            if let Some(err) = e.as_decoded_interface_error::<StampRegistry::StampRegistryErrors>()
            {
                bail!("the registry refused the {what}: {err:?}");
            }
            return Err(anyhow!(e).context(format!("sending the {what} transaction failed")));
        }
    };
    let receipt = pending
        .get_receipt()
        .await
        .with_context(|| format!("waiting for the {what} receipt"))?;
    if !receipt.status() {
        bail!("{what} transaction {} reverted", receipt.transaction_hash);
    }
    Ok(Recorded {
        tx: receipt.transaction_hash,
        block: receipt.block_number.unwrap_or_default(),
    })
}

/// The outcome of `deploy`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Deployed {
    /// Registry address.
    pub address: Address,
    /// Chain id.
    pub chain_id: u64,
    /// Deployment transaction (none when the registry was already there).
    pub tx: Option<B256>,
    /// Whether the registry already existed at the deterministic address.
    pub already_deployed: bool,
    /// Whether the CREATE2 deployer was used (same address on every chain).
    pub create2: bool,
}

/// Deploys the registry. With the CREATE2 deployer (default) the address is the same on every
/// chain and a second run finds it and does nothing.
pub async fn deploy(
    url: &str,
    signer: PrivateKeySigner,
    create2: bool,
    timeout: Duration,
) -> Result<Deployed> {
    let provider = provider(url, Some(signer))?;
    within(timeout * 3, "deploy", async {
        let chain_id = provider
            .get_chain_id()
            .await
            .with_context(|| format!("cannot reach the chain at {url}"))?;
        if !create2 {
            let pending = provider
                .send_transaction(TransactionRequest::default().with_deploy_code(creation_code()))
                .await
                .context("sending the deployment transaction")?;
            let receipt = pending.get_receipt().await?;
            let address = receipt
                .contract_address
                .context("the deployment receipt names no contract address")?;
            return Ok(Deployed { address, chain_id, tx: Some(receipt.transaction_hash), already_deployed: false, create2 });
        }
        let address = predicted_address();
        if !provider.get_code_at(address).await?.is_empty() {
            return Ok(Deployed { address, chain_id, tx: None, already_deployed: true, create2 });
        }
        if provider.get_code_at(CREATE2_DEPLOYER).await?.is_empty() {
            bail!(
                "chain {chain_id} has no CREATE2 deployer at {CREATE2_DEPLOYER}; run `mailstamp deploy --no-create2` \
                 (the address will then differ from other chains)"
            );
        }
        let mut data = deploy_salt().to_vec();
        data.extend_from_slice(&creation_code());
        let tx = TransactionRequest::default().to(CREATE2_DEPLOYER).input(Bytes::from(data).into());
        let receipt = provider
            .send_transaction(tx)
            .await
            .context("sending the deployment transaction")?
            .get_receipt()
            .await?;
        if !receipt.status() || provider.get_code_at(address).await?.is_empty() {
            bail!("deployment transaction {} did not create the registry", receipt.transaction_hash);
        }
        Ok(Deployed { address, chain_id, tx: Some(receipt.transaction_hash), already_deployed: false, create2 })
    })
    .await
}

use alloy::network::TransactionBuilder as _;
