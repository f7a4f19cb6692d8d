// SPDX-License-Identifier: GPL-3.0-or-later
//! The chain client: typed bindings to `StampRegistry` (from the checked-in Forge artifact
//! `agent/abi/StampRegistry.json`), deployment through the CREATE2 deployer, recording, and the
//! confirmed lookups verification needs. Every RPC call has a timeout; a failure to reach the
//! chain is reported as such (the caller turns it into `temperror`), never as "no record".
//!
//! Writes: EIP-1559 fees from the node's estimate, nonces handed out by the agent (many
//! transactions in flight from one writer never share one), and a transaction without a
//! receipt after `chain.replace_after_secs` re-sent with the same nonce and higher fees (see
//! [`Chain::stamp_sent`]). Reads: lookups of different records that arrive together go out as
//! one JSON-RPC batch (see [`Chain::lookup`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OnceCell, oneshot};

use alloy::{
    eips::{BlockId, BlockNumberOrTag},
    network::{EthereumWallet, NetworkTransactionBuilder as _},
    primitives::{Address, B256, Bytes, FixedBytes, address, keccak256},
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::client::BatchRequest,
    rpc::types::{Filter, TransactionRequest},
    signers::local::PrivateKeySigner,
    sol,
    sol_types::{SolCall, SolEvent},
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
    /// The writer's key: writes are signed here, so their hash is known before they are sent.
    wallet: Option<EthereumWallet>,
    confirmations: Confirmations,
    timeout: Duration,
    cache: Arc<RecordCache>,
    fees: FeePolicy,
    nonces: Arc<Nonces>,
    reads: Arc<ReadBatcher>,
}

/// When and how a stuck transaction is replaced.
#[derive(Debug, Clone, Copy)]
struct FeePolicy {
    replace_after: Duration,
    bump_percent: u128,
    max_replacements: u32,
}

/// The writers' nonce counters of one process, keyed by (chain id, writer): every connection
/// made through the same pool ([`Chain::connect_in`]) shares one counter per writer, so a
/// reconnect (after an error or a reload) while transactions of the old connection are still
/// in flight never hands out their nonces again. The milter and relay keep one pool for their
/// lifetime. Clones share the pool.
#[derive(Clone, Default)]
pub struct NoncePool(Arc<Mutex<NonceMap>>);

/// Each writer's counter, by (chain id, writer).
type NonceMap = HashMap<(u64, Address), Arc<Nonces>>;

impl std::fmt::Debug for NoncePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoncePool").finish_non_exhaustive()
    }
}

impl NoncePool {
    fn get(&self, chain_id: u64, writer: Option<Address>) -> Arc<Nonces> {
        let Some(writer) = writer else {
            return Arc::default();
        };
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((chain_id, writer))
            .or_default()
            .clone()
    }
}

/// One writer's nonces, handed out by the agent: the first from the node's pending count, then
/// one more each time, so transactions sent at the same time never share one (alloy's
/// `CachedNonceManager` does the same). Unlike it, a nonce whose transaction never reached the
/// node (or never got mined) makes the next caller ask the node again, so a gap does not block
/// every later transaction; and a nonce still in flight (its write has not ended) is never
/// handed out again, even when the node's count, read after such a reset, is below it (a
/// transaction not yet seen by this node, or queued behind a gap).
#[derive(Default)]
pub(crate) struct Nonces {
    state: Mutex<NonceState>,
}

#[derive(Default)]
struct NonceState {
    /// The next nonce to try; `None`: ask the node.
    next: Option<u64>,
    /// Nonces handed out whose write has not ended.
    in_flight: std::collections::BTreeSet<u64>,
}

/// A nonce handed out; it counts as in flight until this is dropped (the write ended).
pub(crate) struct Taken {
    nonces: Arc<Nonces>,
    n: u64,
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.nonces.lock().in_flight.remove(&self.n);
    }
}

impl Nonces {
    fn lock(&self) -> std::sync::MutexGuard<'_, NonceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn take(self: &Arc<Self>, provider: &DynProvider, from: Address) -> Result<Taken> {
        let cached = self.lock().next;
        let base = match cached {
            Some(n) => n,
            None => provider
                .get_transaction_count(from)
                .pending()
                .await
                .context("reading the writer's nonce")?,
        };
        let mut s = self.lock();
        // Another caller may have read the count meanwhile: its counter wins.
        let mut n = s.next.unwrap_or(base);
        while s.in_flight.contains(&n) {
            n += 1;
        }
        s.in_flight.insert(n);
        s.next = Some(n + 1);
        Ok(Taken {
            nonces: self.clone(),
            n,
        })
    }

    fn resync(&self) {
        self.lock().next = None;
    }
}

/// Lookups waiting to go out together as one JSON-RPC batch.
struct ReadBatcher {
    window: Duration,
    max: usize,
    queue: Mutex<ReadQueue>,
    /// Whether a batch failing as a whole was logged (once per connection).
    fallback_logged: std::sync::atomic::AtomicBool,
}

/// The lookups waiting, and whether a task is sending batches (it takes them in turn).
#[derive(Default)]
struct ReadQueue {
    waiting: Vec<Waiting>,
    running: bool,
}

/// Guards a batch-sending task that ends abnormally (a panic, an aborted task): the queue is
/// left with no task, and the lookups still waiting answer "unavailable" (their senders drop)
/// rather than hang.
struct Stopped<'a>(&'a ReadBatcher);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let mut q = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.running = false;
        q.waiting.clear();
    }
}

/// One lookup in a [`ReadBatcher`]'s queue and where its answer goes.
type Waiting = (Address, RecordKey, oneshot::Sender<Lookup>);

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

/// Told the hash of each transaction of a write before it is sent (see
/// [`Chain::anchor_journalled`]).
pub type OnSigned = dyn Fn(B256) -> Result<()> + Send + Sync;

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

    /// As [`Chain::connect`], with the writer's nonce counter taken from `pool`: connections
    /// made through one pool never hand out the same nonce of a writer twice.
    pub async fn connect_in(
        cfg: &ChainConfig,
        registry: Address,
        signer: Option<PrivateKeySigner>,
        pool: &NoncePool,
    ) -> Result<Self> {
        let writer = signer.as_ref().map(|s| s.address());
        let wallet = signer.clone().map(EthereumWallet::from);
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
        if cfg.fee_bump_percent < 10 {
            bail!(
                "chain.fee_bump_percent = {} is too small: nodes refuse a replacement that raises the fees by less than 10%; set 10 or more",
                cfg.fee_bump_percent
            );
        }
        if cfg.replace_after_secs == 0 {
            bail!("chain.replace_after_secs must be at least 1");
        }
        if cfg.read_batch_max == 0 {
            bail!("chain.read_batch_max must be at least 1");
        }
        Ok(Self {
            provider,
            registry,
            chain_id,
            writer,
            wallet,
            confirmations: cfg.confirmations.clone(),
            timeout,
            cache: Arc::default(),
            fees: FeePolicy {
                replace_after: Duration::from_secs(cfg.replace_after_secs),
                bump_percent: u128::from(cfg.fee_bump_percent),
                max_replacements: cfg.max_replacements,
            },
            nonces: pool.get(chain_id, writer),
            reads: Arc::new(ReadBatcher {
                window: Duration::from_millis(cfg.read_batch_window_ms),
                max: cfg.read_batch_max,
                queue: Mutex::default(),
                fallback_logged: Default::default(),
            }),
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

    /// Records `commitment` under `token` and waits for the receipt.
    pub async fn stamp(&self, token: B256, commitment: FixedBytes<24>) -> Result<Recorded> {
        Ok(self.stamp_sent(token, commitment).await?.recorded)
    }

    /// [`Chain::stamp`], telling also every transaction that went out for it. The fees are the
    /// node's EIP-1559 estimate; when none of the sent transactions has a receipt after
    /// `chain.replace_after_secs`, the same call is sent again with the same nonce and fees
    /// raised by `chain.fee_bump_percent` (or the node's fresh estimate when that is higher),
    /// at most `chain.max_replacements` times; whichever of them is mined is the result.
    pub async fn stamp_sent(&self, token: B256, commitment: FixedBytes<24>) -> Result<Sent> {
        let reg = StampRegistry::new(self.registry, &self.provider);
        let tx = reg.stamp(token, commitment).into_transaction_request();
        self.send_replacing(tx, "stamp", None).await
    }

    /// Anchors the root of a batch of `size` stamps under `batch` and waits for the receipt
    /// (with fee replacement as for [`Chain::stamp_sent`]).
    pub async fn anchor(&self, batch: B256, root: FixedBytes<24>, size: u32) -> Result<Recorded> {
        let reg = StampRegistry::new(self.registry, &self.provider);
        let tx = reg.anchor(batch, root, size).into_transaction_request();
        Ok(self.send_replacing(tx, "anchor", None).await?.recorded)
    }

    /// As [`Chain::anchor`], calling `journal` with the hash of every transaction (the first
    /// and each replacement) after it is signed and before it is sent; a `journal` error
    /// stops the write before that transaction goes out.
    pub async fn anchor_journalled(
        &self,
        batch: B256,
        root: FixedBytes<24>,
        size: u32,
        journal: &OnSigned,
    ) -> Result<Recorded> {
        let reg = StampRegistry::new(self.registry, &self.provider);
        let tx = reg.anchor(batch, root, size).into_transaction_request();
        Ok(self
            .send_replacing(tx, "anchor", Some(journal))
            .await?
            .recorded)
    }

    /// Waits for transactions sent earlier (a previous run's, from its journal): the first of
    /// `hashes` mined successfully, or `None` once none of them is mined or known to the node
    /// (dropped from the pool, or never sent). While one is still in the pool it waits, up to
    /// the time a write of this agent would (`replace_after_secs × (max_replacements + 1) + 3
    /// × timeout_secs`); then it fails, and the caller leaves the batch for later.
    pub async fn wait_sent(&self, hashes: &[B256]) -> Result<Option<Recorded>> {
        let policy = self.fees;
        let deadline = Instant::now()
            + policy.replace_after * (policy.max_replacements + 1)
            + self.timeout * 3;
        let poll = self
            .provider
            .client()
            .poll_interval()
            .max(Duration::from_millis(50));
        loop {
            let mut pending = false;
            for h in hashes {
                let r = within(self.timeout, "eth_getTransactionReceipt", async {
                    Ok(self.provider.get_transaction_receipt(*h).await?)
                })
                .await?;
                match r {
                    Some(r) if r.status() => {
                        return Ok(Some(Recorded {
                            tx: *h,
                            block: r.block_number.unwrap_or_default(),
                        }));
                    }
                    Some(_) => {}
                    None => {
                        let known = within(self.timeout, "eth_getTransactionByHash", async {
                            Ok(self.provider.get_transaction_by_hash(*h).await?)
                        })
                        .await?;
                        pending |= known.is_some();
                    }
                }
            }
            if !pending {
                return Ok(None);
            }
            if Instant::now() >= deadline {
                bail!(
                    "an anchor transaction sent before the restart is still pending; trying again later"
                );
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// The root anchored under (`writer`, `batch`) at the head block, confirmed or not.
    pub async fn anchor_at_head(
        &self,
        writer: Address,
        batch: B256,
    ) -> Result<Option<FixedBytes<24>>> {
        let (root, _) = within(self.timeout, "getAnchor", async {
            self.get_record(writer, RecordKey::Batch(batch), BlockId::latest())
                .await
        })
        .await?;
        Ok((root != FixedBytes::ZERO).then_some(root))
    }

    /// Sends `tx` from the writer and waits until one transaction of its nonce is mined,
    /// replacing it with higher fees while it is stuck.
    async fn send_replacing(
        &self,
        tx: TransactionRequest,
        what: &str,
        journal: Option<&OnSigned>,
    ) -> Result<Sent> {
        let from = self.writer.with_context(|| {
            format!(
                "no writer key: a {what} needs one (set writer.keystore or MAILSTAMP_PRIVATE_KEY)"
            )
        })?;
        let tx = tx.from(from);
        // Estimating first means a call the registry refuses fails here, before a nonce is used.
        // Gas and fees are independent: one round trip for both.
        let (gas, mut fees) = within(self.timeout, "eth_estimateGas / eth_feeHistory", async {
            tokio::try_join!(
                async {
                    self.provider
                        .estimate_gas(tx.clone())
                        .await
                        .map_err(|e| refused(e, what))
                },
                async {
                    match self.provider.estimate_eip1559_fees().await {
                        Ok(f) => Ok(f),
                        Err(e) => Err(self.no_eip1559(e).await),
                    }
                }
            )
        })
        .await?;
        let tx = tx.with_gas_limit(gas).with_chain_id(self.chain_id);
        // A refused first send makes the count be read again. If the node then says the nonce
        // is used (a transaction this connection did not send: `deploy`, another process, a
        // connection made meanwhile), one more try with the fresh count heals it.
        let mut tries = 0;
        let (tx, taken, first) = loop {
            let taken = within(self.timeout, "eth_getTransactionCount", async {
                self.nonces.take(&self.provider, from).await
            })
            .await?;
            let nonce = taken.n;
            let tx = tx.clone().with_nonce(nonce);
            match self.broadcast(&tx, fees, what, journal).await {
                // `taken` lives until this write ends: the nonce stays reserved meanwhile.
                Ok(h) => break (tx, taken, h),
                Err(e) => {
                    // Never reached the node: free the nonce before the count is read again.
                    drop(taken);
                    self.nonces.resync();
                    tries += 1;
                    let used = tokio::time::timeout(
                        self.timeout,
                        self.provider.get_transaction_count(from).pending(),
                    )
                    .await
                    .is_ok_and(|n| n.is_ok_and(|n| n > nonce));
                    if tries >= 2 || !used {
                        return Err(e);
                    }
                    tracing::warn!(
                        nonce,
                        "{what}: the nonce was already used; trying again with the node's count: {e:#}"
                    );
                }
            }
        };
        let mut hashes = vec![first];
        let nonce = taken.n;
        let policy = self.fees;
        let start = Instant::now();
        let deadline =
            start + policy.replace_after * (policy.max_replacements + 1) + self.timeout * 3;
        let mut replace_at = start + policy.replace_after;
        let mut replacements = 0;
        let mut pause = Duration::from_millis(5);
        let poll_cap = self.provider.client().poll_interval().max(pause);
        // Set when a replacement was refused: if the nonce is then used on chain and none of
        // ours has a receipt, a transaction this agent did not send took it.
        let mut taken_check = false;
        loop {
            for h in &hashes {
                let receipt = match within(self.timeout, "eth_getTransactionReceipt", async {
                    Ok(self.provider.get_transaction_receipt(*h).await?)
                })
                .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(tx = %h, "{what}: cannot read the receipt yet: {e:#}");
                        None
                    }
                };
                if let Some(r) = receipt {
                    if !r.status() {
                        bail!("{what} transaction {h} reverted");
                    }
                    return Ok(Sent {
                        recorded: Recorded {
                            tx: *h,
                            block: r.block_number.unwrap_or_default(),
                        },
                        nonce,
                        hashes,
                    });
                }
            }
            if std::mem::take(&mut taken_check) && self.taken_by_another(from, nonce, &hashes).await
            {
                self.nonces.resync();
                bail!(
                    "nonce {nonce} of writer {from} was used by a transaction this agent did not send \
                     (another process with the same writer key?); the {what} was not recorded: the mail is kept and retried"
                );
            }
            let now = Instant::now();
            if now >= deadline {
                // The nonce may still be taken later by one of these; ask the node next time.
                self.nonces.resync();
                bail!(
                    "no {what} transaction of nonce {nonce} was mined within {}s ({} sent: {}); the chain may be congested: the mail is kept and retried",
                    (now - start).as_secs(),
                    hashes.len(),
                    hashes
                        .iter()
                        .map(|h| h.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            if now >= replace_at && replacements < policy.max_replacements {
                replacements += 1;
                replace_at = now + policy.replace_after;
                let fresh =
                    tokio::time::timeout(self.timeout, self.provider.estimate_eip1559_fees())
                        .await
                        .ok()
                        .and_then(Result::ok);
                fees = bumped(fees, policy.bump_percent, fresh);
                match self.broadcast(&tx, fees, what, journal).await {
                    Ok(h) => {
                        tracing::warn!(
                            nonce,
                            replaced = %hashes[hashes.len() - 1],
                            by = %h,
                            max_fee_per_gas = fees.max_fee_per_gas,
                            max_priority_fee_per_gas = fees.max_priority_fee_per_gas,
                            "{what}: no receipt after {}s, replaced with higher fees",
                            policy.replace_after.as_secs()
                        );
                        hashes.push(h);
                    }
                    // Typically "nonce too low": one of the sent ones was mined meanwhile,
                    // which the next round of receipts finds.
                    Err(e) => {
                        tracing::warn!(nonce, "{what}: replacement not accepted: {e:#}");
                        taken_check = true;
                    }
                }
                continue;
            }
            let mut sleep = pause.min(deadline - now);
            if replacements < policy.max_replacements {
                sleep = sleep.min(replace_at.saturating_duration_since(now));
            }
            tokio::time::sleep(sleep).await;
            pause = (pause * 2).min(poll_cap);
        }
    }

    /// Why the EIP-1559 fee estimate failed: a chain without a base fee (pre-London, or a
    /// chain that still prices gas the legacy way) is named as such, since every write would
    /// fail the same way; anything else is passed on.
    async fn no_eip1559(&self, e: alloy::transports::TransportError) -> anyhow::Error {
        let latest = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Latest)
            .await;
        match latest {
            Ok(Some(b)) if b.header.base_fee_per_gas.is_none() => anyhow!(
                "chain {} has no EIP-1559 base fee (its blocks carry no baseFeePerGas: a legacy-gas chain); \
                 mailstamp sends EIP-1559 (type 2) transactions only, so it cannot write here: use a chain with \
                 EIP-1559 (docs/PROTOCOL.md, \"Fees\")",
                self.chain_id
            ),
            _ => anyhow!(e).context("estimating EIP-1559 fees"),
        }
    }

    /// Whether `nonce` of `from` is used on chain while none of `hashes` has a receipt: a
    /// transaction this agent did not send took it. Every read is bounded by the timeout; a
    /// read that fails or times out counts as "don't know": no.
    async fn taken_by_another(&self, from: Address, nonce: u64, hashes: &[B256]) -> bool {
        tokio::time::timeout(self.timeout, self.provider.get_transaction_count(from))
            .await
            .is_ok_and(|r| r.is_ok_and(|mined| mined > nonce))
            && !self.any_receipt(hashes).await
    }

    /// Whether any of `hashes` has a receipt (a read error or timeout counts as "don't know":
    /// yes).
    async fn any_receipt(&self, hashes: &[B256]) -> bool {
        for h in hashes {
            match tokio::time::timeout(self.timeout, self.provider.get_transaction_receipt(*h))
                .await
            {
                Ok(Ok(None)) => {}
                Ok(Ok(Some(_)) | Err(_)) | Err(_) => return true,
            }
        }
        false
    }

    /// Signs `tx` with `fees` here, then sends it; the transaction hash. The hash is known
    /// before the send, so a send that fails without an answer (a timeout, a lost connection)
    /// but reached the node is recognised: the node is asked for that hash, and when it knows
    /// it the send counts as done (sending the call again with the next nonce would only
    /// revert).
    async fn broadcast(
        &self,
        tx: &TransactionRequest,
        fees: alloy::eips::eip1559::Eip1559Estimation,
        what: &str,
        journal: Option<&OnSigned>,
    ) -> Result<B256> {
        use alloy::eips::eip2718::Encodable2718 as _;
        let wallet = self.wallet.as_ref().with_context(|| {
            format!(
                "no writer key: a {what} needs one (set writer.keystore or MAILSTAMP_PRIVATE_KEY)"
            )
        })?;
        let envelope = tx
            .clone()
            .with_max_fee_per_gas(fees.max_fee_per_gas)
            .with_max_priority_fee_per_gas(fees.max_priority_fee_per_gas)
            .build(wallet)
            .await
            .map_err(|e| anyhow!("cannot sign the {what} transaction: {e}"))?;
        let hash = *envelope.tx_hash();
        if let Some(j) = journal {
            j(hash).with_context(|| format!("cannot journal the {what} transaction {hash}"))?;
        }
        let raw = envelope.encoded_2718();
        let sent = within(self.timeout, "eth_sendRawTransaction", async {
            // The pending handle is not needed: receipts are polled by hash (with replacements).
            drop(
                self.provider
                    .send_raw_transaction(&raw)
                    .await
                    .map_err(|e| refused(e, what))?,
            );
            Ok(())
        })
        .await;
        match sent {
            Ok(()) => Ok(hash),
            Err(e) => {
                let known =
                    tokio::time::timeout(self.timeout, self.provider.get_transaction_by_hash(hash))
                        .await
                        .is_ok_and(|r| r.is_ok_and(|t| t.is_some()));
                if known {
                    tracing::warn!(tx = %hash, "{what}: the send failed ({e:#}), but the node has the transaction: waiting for it");
                    Ok(hash)
                } else {
                    Err(e)
                }
            }
        }
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
        let r = cell.get_or_init(|| self.read(writer, key)).await.clone();
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

    /// One uncached lookup, through the read queue: when no batch is being sent, it goes out
    /// at once (after `chain.read_batch_window_ms`, 0 by default); lookups that arrive while
    /// one is being sent wait and go out together in the next, up to `chain.read_batch_max`
    /// per batch (a full queue starts another batch at once). So a lone lookup costs what it
    /// did, and a burst costs a few batches instead of a request per record. Batches run in
    /// spawned tasks: a caller that gives up does not strand the others.
    async fn read(&self, writer: Address, key: RecordKey) -> Lookup {
        if self.reads.max <= 1 {
            return self.lookup_uncached(writer, key).await;
        }
        let (tx, rx) = oneshot::channel();
        let (drive, full) = {
            let mut q = self.reads.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.waiting.push((writer, key, tx));
            if !q.running {
                q.running = true;
                (true, None)
            } else if q.waiting.len() >= self.reads.max {
                (false, Some(std::mem::take(&mut q.waiting)))
            } else {
                (false, None)
            }
        };
        if drive {
            tokio::spawn(self.clone().drive());
        } else if let Some(batch) = full {
            let me = self.clone();
            tokio::spawn(async move { me.run_batch(batch).await });
        }
        rx.await.unwrap_or_else(|_| {
            Lookup::Unavailable("registry read: the batched request was abandoned".to_owned())
        })
    }

    /// Sends the queued lookups batch after batch until the queue is empty.
    async fn drive(self) {
        let stopped = Stopped(&self.reads);
        if !self.reads.window.is_zero() {
            tokio::time::sleep(self.reads.window).await;
        }
        loop {
            let batch: Vec<Waiting> = {
                let mut q = self.reads.queue.lock().unwrap_or_else(|p| p.into_inner());
                if q.waiting.is_empty() {
                    // Under the same lock as the check: a lookup queued after this starts a
                    // new task.
                    q.running = false;
                    break;
                }
                let n = q.waiting.len().min(self.reads.max);
                q.waiting.drain(..n).collect()
            };
            self.run_batch(batch).await;
        }
        // A normal end: the guard is only for a panic or an aborted task.
        std::mem::forget(stopped);
    }

    /// Answers every lookup of `batch`: one alone the usual way, several with one JSON-RPC
    /// batch per step (head, records at the confirmed block, then at the latest block for
    /// those not confirmed). The confirmation rule is the one of a single lookup.
    async fn run_batch(&self, mut batch: Vec<Waiting>) {
        if batch.len() == 1 {
            let (w, k, tx) = batch.remove(0);
            let _ = tx.send(self.lookup_uncached(w, k).await);
            return;
        }
        let keys: Vec<(Address, RecordKey)> = batch.iter().map(|(w, k, _)| (*w, *k)).collect();
        let answers = within(self.timeout, "batched registry read", self.read_many(&keys)).await;
        // The batch failing as a whole (some hosted endpoints refuse or cap JSON-RPC batches)
        // must not turn a burst into temperrors: its keys are asked one by one instead.
        let why = match answers {
            Ok(answers) if !answers.iter().all(|a| matches!(a, Lookup::Unavailable(_))) => {
                for ((_, _, tx), a) in batch.into_iter().zip(answers) {
                    let _ = tx.send(a);
                }
                return;
            }
            Ok(answers) => match answers.into_iter().next() {
                Some(Lookup::Unavailable(e)) => e,
                _ => "no answer".to_owned(),
            },
            Err(e) => format!("{e:#}"),
        };
        if !self
            .reads
            .fallback_logged
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                "a JSON-RPC batch of {} registry reads failed as a whole ({why}); reading them one by one (if the endpoint refuses or caps batches, set chain.read_batch_max to 1 or to its cap)",
                keys.len()
            );
        }
        let mut one_by_one = tokio::task::JoinSet::new();
        for (i, (w, k, _)) in batch.iter().enumerate() {
            let (me, w, k) = (self.clone(), *w, *k);
            one_by_one.spawn(async move { (i, me.lookup_uncached(w, k).await) });
        }
        let mut out: Vec<Option<Lookup>> = vec![None; batch.len()];
        while let Some(r) = one_by_one.join_next().await {
            if let Ok((i, l)) = r {
                out[i] = Some(l);
            }
        }
        for ((_, _, tx), l) in batch.into_iter().zip(out) {
            let _ = tx.send(l.unwrap_or_else(|| Lookup::Unavailable(why.clone())));
        }
    }

    async fn read_many(&self, keys: &[(Address, RecordKey)]) -> Result<Vec<Lookup>> {
        let at = self.confirmed_block().await?;
        let mut out: Vec<Option<Lookup>> = vec![None; keys.len()];
        let mut again = Vec::new();
        for (i, r) in self.get_records(keys, at).await?.into_iter().enumerate() {
            match r {
                Ok((c, time)) if c != FixedBytes::<24>::ZERO => {
                    out[i] = Some(Lookup::Found {
                        commitment: c.0,
                        time,
                    });
                }
                Ok(_) => again.push(i),
                Err(e) => out[i] = Some(Lookup::Unavailable(format!("registry read: {e:#}"))),
            }
        }
        if !again.is_empty() {
            let latest: Vec<_> = again.iter().map(|&i| keys[i]).collect();
            let rs = self.get_records(&latest, BlockId::latest()).await?;
            for (i, r) in again.into_iter().zip(rs) {
                out[i] = Some(match r {
                    Ok((c, _)) if c == FixedBytes::<24>::ZERO => Lookup::NotFound,
                    Ok(_) => Lookup::Unconfirmed,
                    Err(e) => Lookup::Unavailable(format!("registry read: {e:#}")),
                });
            }
        }
        Ok(out
            .into_iter()
            .map(|l| l.unwrap_or_else(|| Lookup::Unavailable("registry read: no answer".into())))
            .collect())
    }

    /// `getStamp` / `getAnchor` of every key at `at`, as one JSON-RPC batch. The outer error
    /// is the batch failing as a whole; each record has its own result.
    #[allow(clippy::type_complexity)]
    async fn get_records(
        &self,
        keys: &[(Address, RecordKey)],
        at: BlockId,
    ) -> Result<Vec<Result<(FixedBytes<24>, u64)>>> {
        let reg = StampRegistry::new(self.registry, &self.provider);
        let mut batch = BatchRequest::new(self.provider.client());
        let mut waiters = Vec::with_capacity(keys.len());
        for (w, k) in keys {
            let call = match k {
                RecordKey::Stamp(t) => reg.getStamp(*w, *t).into_transaction_request(),
                RecordKey::Batch(b) => reg.getAnchor(*w, *b).into_transaction_request(),
            };
            waiters.push(batch.add_call::<_, Bytes>("eth_call", &(call, at))?);
        }
        batch
            .send()
            .await
            .context("sending the batched registry read")?;
        let mut out = Vec::with_capacity(keys.len());
        for ((_, k), waiter) in keys.iter().zip(waiters) {
            out.push(match waiter.await {
                // No code at that block (the registry was deployed later): no record there yet.
                Ok(data) if data.is_empty() => Ok((FixedBytes::ZERO, 0)),
                Ok(data) => match k {
                    RecordKey::Stamp(_) => StampRegistry::getStampCall::abi_decode_returns(&data)
                        .map(|r| (r.commitment, r.time))
                        .context("decoding getStamp"),
                    RecordKey::Batch(_) => StampRegistry::getAnchorCall::abi_decode_returns(&data)
                        .map(|r| (r.root, r.time))
                        .context("decoding getAnchor"),
                },
                Err(e) => Err(anyhow!(e)),
            });
        }
        Ok(out)
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

/// A failed estimate or send, decoded into the registry's custom errors when it is one.
fn refused(e: alloy::transports::TransportError, what: &str) -> anyhow::Error {
    if let Some(err) = e
        .as_error_resp()
        .and_then(|p| p.as_decoded_interface_error::<StampRegistry::StampRegistryErrors>())
    {
        return anyhow!("the registry refused the {what}: {err:?}");
    }
    anyhow!(e).context(format!("sending the {what} transaction failed"))
}

/// The fees of a replacement: both raised by `percent` (rounded up, and by at least 1 wei, as
/// nodes require), or the node's fresh estimate where that is higher.
fn bumped(
    old: alloy::eips::eip1559::Eip1559Estimation,
    percent: u128,
    fresh: Option<alloy::eips::eip1559::Eip1559Estimation>,
) -> alloy::eips::eip1559::Eip1559Estimation {
    let up = |v: u128| {
        v.saturating_mul(100 + percent)
            .div_ceil(100)
            .max(v.saturating_add(1))
    };
    let mut max_fee = up(old.max_fee_per_gas);
    let mut priority = up(old.max_priority_fee_per_gas);
    if let Some(f) = fresh {
        max_fee = max_fee.max(f.max_fee_per_gas);
        priority = priority.max(f.max_priority_fee_per_gas);
    }
    alloy::eips::eip1559::Eip1559Estimation {
        max_fee_per_gas: max_fee.max(priority),
        max_priority_fee_per_gas: priority,
    }
}

#[cfg(test)]
mod bump_tests {
    use super::bumped;
    use alloy::eips::eip1559::Eip1559Estimation as Fees;

    const fn fees(max: u128, tip: u128) -> Fees {
        Fees {
            max_fee_per_gas: max,
            max_priority_fee_per_gas: tip,
        }
    }

    #[test]
    fn both_fees_rise_by_the_percentage_rounded_up() {
        let b = bumped(fees(1_000_000_001, 3), 10, None);
        assert_eq!(b.max_fee_per_gas, 1_100_000_002);
        // 3 × 1.1 = 3.3 → 4: never less than the node's +10 %.
        assert_eq!(b.max_priority_fee_per_gas, 4);
    }

    #[test]
    fn a_zero_or_tiny_fee_still_rises() {
        let b = bumped(fees(0, 0), 20, None);
        assert_eq!((b.max_fee_per_gas, b.max_priority_fee_per_gas), (1, 1));
    }

    #[test]
    fn a_higher_fresh_estimate_wins_per_field() {
        let b = bumped(fees(100, 10), 20, Some(fees(1_000, 5)));
        assert_eq!((b.max_fee_per_gas, b.max_priority_fee_per_gas), (1_000, 12));
        let b = bumped(fees(100, 10), 20, Some(fees(50, 50)));
        assert_eq!((b.max_fee_per_gas, b.max_priority_fee_per_gas), (120, 50));
    }

    #[test]
    fn the_max_fee_covers_the_tip_and_huge_fees_saturate() {
        let b = bumped(fees(10, 10), 10, Some(fees(0, 100)));
        assert!(b.max_fee_per_gas >= b.max_priority_fee_per_gas);
        let b = bumped(fees(u128::MAX, 1), 10, None);
        assert_eq!(b.max_fee_per_gas, u128::MAX);
    }
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

#[cfg(test)]
mod nonce_tests {
    use super::{NoncePool, Nonces};
    use alloy::primitives::{Address, U64};
    use alloy::providers::{DynProvider, Provider, ProviderBuilder};
    use alloy::transports::mock::Asserter;
    use std::sync::Arc;

    /// A provider whose answers are `asserter`'s queue (an empty queue answers an error).
    fn node(asserter: &Asserter) -> DynProvider {
        ProviderBuilder::new()
            .connect_mocked_client(asserter.clone())
            .erased()
    }

    const W: Address = Address::repeat_byte(7);

    #[tokio::test]
    async fn connections_of_one_pool_share_the_writers_counter() {
        // A reconnect gets the same counter: the node is asked once, then the counter goes
        // on (the second take would fail on the empty queue if it asked again).
        let pool = NoncePool::default();
        let (old, new) = (pool.get(1, Some(W)), pool.get(1, Some(W)));
        let a = Asserter::new();
        a.push_success(&U64::from(5));
        let n1 = old.take(&node(&a), W).await.unwrap();
        let n2 = new.take(&node(&a), W).await.unwrap();
        let n3 = old.take(&node(&a), W).await.unwrap();
        assert_eq!((n1.n, n2.n, n3.n), (5, 6, 7));
        // Another chain or writer has its own.
        assert!(!Arc::ptr_eq(&old, &pool.get(2, Some(W))));
        assert!(!Arc::ptr_eq(&old, &pool.get(1, Some(Address::ZERO))));
    }

    #[tokio::test]
    async fn a_reset_never_hands_out_a_nonce_still_in_flight_and_fills_freed_gaps() {
        let nonces = Arc::new(Nonces::default());
        let a = Asserter::new();
        a.push_success(&U64::from(5));
        let n5 = nonces.take(&node(&a), W).await.unwrap();
        let n6 = nonces.take(&node(&a), W).await.unwrap();
        // A send failed: the count is read again, and the node has not seen 5 or 6 yet.
        nonces.resync();
        a.push_success(&U64::from(5));
        let n7 = nonces.take(&node(&a), W).await.unwrap();
        assert_eq!((n5.n, n6.n, n7.n), (5, 6, 7), "5 and 6 are still in flight");
        // 5's send failed (never reached the node): freed, and the next reset fills the gap.
        drop(n5);
        nonces.resync();
        a.push_success(&U64::from(5));
        let again = nonces.take(&node(&a), W).await.unwrap();
        assert_eq!(again.n, 5);
        let next = nonces.take(&node(&a), W).await.unwrap();
        assert_eq!(next.n, 8, "skips 6 and 7, still in flight");
        drop((n6, n7, again, next));
    }
}

#[cfg(test)]
mod timeout_tests {
    use super::{Chain, NoncePool, provider};
    use crate::config::ChainConfig;
    use alloy::primitives::{Address, B256};
    use std::time::Duration;

    /// A chain whose RPC endpoint accepts connections and never answers.
    async fn silent() -> (Chain, tokio::task::JoinHandle<()>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((c, _)) = l.accept().await {
                held.push(c);
            }
        });
        let cfg = ChainConfig::default();
        let c = Chain {
            provider: provider(&url, None).unwrap(),
            registry: Address::ZERO,
            chain_id: 1,
            writer: Some(Address::ZERO),
            wallet: None,
            confirmations: cfg.confirmations.clone(),
            timeout: Duration::from_millis(200),
            cache: Default::default(),
            fees: super::FeePolicy {
                replace_after: Duration::from_secs(1),
                bump_percent: 20,
                max_replacements: 1,
            },
            nonces: NoncePool::default().get(1, Some(Address::ZERO)),
            reads: std::sync::Arc::new(super::ReadBatcher {
                window: Duration::ZERO,
                max: 1,
                queue: Default::default(),
                fallback_logged: Default::default(),
            }),
        };
        (c, task)
    }

    #[tokio::test]
    async fn the_checks_of_a_stuck_write_end_when_the_endpoint_hangs() {
        let (c, task) = silent().await;
        // Without their own timeouts these waited forever (the HTTP client has none); the
        // outer bound only keeps a regression from hanging the test run.
        let bound = Duration::from_secs(10);
        let taken =
            tokio::time::timeout(bound, c.taken_by_another(Address::ZERO, 0, &[B256::ZERO]))
                .await
                .expect("the nonce check gives up after chain.timeout_secs");
        assert!(!taken, "an unanswered read proves nothing");
        let any = tokio::time::timeout(bound, c.any_receipt(&[B256::ZERO]))
            .await
            .expect("the receipt check gives up after chain.timeout_secs");
        assert!(any, "an unanswered read counts as \"don't know\"");
        let n = tokio::time::timeout(bound, c.provider_nonce())
            .await
            .expect("provider_nonce gives up after chain.timeout_secs");
        assert_eq!(n, 0);
        task.abort();
    }
}
