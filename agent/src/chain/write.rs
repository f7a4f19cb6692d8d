// SPDX-License-Identifier: GPL-3.0-or-later
//! Registry writes: EIP-1559 fees from the node's estimate, the nonce from the writer's
//! counter ([`super::nonce`]), the transaction signed here (its hash journalled before it is
//! sent), and while no receipt comes, the same call sent again with the same nonce and higher
//! fees — until one is mined or the write's deadline passes.

use std::time::{Duration, Instant};

use alloy::eips::BlockNumberOrTag;
use alloy::network::{NetworkTransactionBuilder as _, TransactionBuilder as _};
use alloy::primitives::{Address, B256, Bytes, FixedBytes};
use alloy::providers::Provider;
use alloy::rpc::types::TransactionRequest;

use crate::error::{Context, Error, Result, bail, err};

use super::nonce::Taken;
use super::{Chain, OnSigned, Recorded, Sent, StampRegistry, within};

/// One write in flight: the signed call, its nonce, every transaction sent for it, the fees
/// of the latest.
struct Write<'a> {
    tx: TransactionRequest,
    from: Address,
    nonce: u64,
    hashes: Vec<B256>,
    /// The signed bytes of each of `hashes`, in the same order.
    raws: Vec<Bytes>,
    fees: alloy::eips::eip1559::Eip1559Estimation,
    what: &'a str,
    journal: Option<&'a OnSigned>,
}

/// The refusal of a write without a writer key (permanent: a daemon without a key never has
/// one until it is restarted with one).
fn no_key(what: &str) -> Error {
    Error::refused(
        "5.3.5",
        format!("no writer key: a {what} needs one (set writer.keystore or MAILSTAMP_PRIVATE_KEY)"),
    )
}

impl Chain {
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
        Ok(self.anchor_sent(batch, root, size).await?.recorded)
    }

    /// [`Chain::anchor`], telling also every transaction that went out for it.
    pub async fn anchor_sent(&self, batch: B256, root: FixedBytes<24>, size: u32) -> Result<Sent> {
        let reg = StampRegistry::new(self.registry, &self.provider);
        let tx = reg.anchor(batch, root, size).into_transaction_request();
        self.send_replacing(tx, "anchor", None).await
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
    ) -> Result<Sent> {
        let reg = StampRegistry::new(self.registry, &self.provider);
        let tx = reg.anchor(batch, root, size).into_transaction_request();
        self.send_replacing(tx, "anchor", Some(journal)).await
    }

    /// Waits for transactions sent earlier (a previous run's, from its journal): the first of
    /// `hashes` mined successfully, or `None` once none of them is mined or known to the node
    /// (dropped from the pool, or never sent). While one is still in the pool it waits, up to
    /// the time a write of this agent would (`replace_after_secs × (max_replacements + 1) + 3
    /// × timeout_secs`); then it fails, and the caller leaves the batch for later.
    pub async fn wait_sent(&self, hashes: &[B256]) -> Result<Option<Recorded>> {
        let deadline = Instant::now() + self.fees.deadline(self.timeout);
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

    /// Sends `tx` from the writer and waits until one transaction of its nonce is mined,
    /// replacing it with higher fees while it is stuck.
    async fn send_replacing(
        &self,
        tx: TransactionRequest,
        what: &str,
        journal: Option<&OnSigned>,
    ) -> Result<Sent> {
        let from = self.writer.ok_or_else(|| no_key(what))?;
        let tx = tx.from(from);
        let (gas, fees) = self.estimate(&tx, what).await?;
        let tx = tx.with_gas_limit(gas).with_chain_id(self.chain_id);
        let (tx, taken, (first, raw)) = self.first_send(tx, from, fees, what, journal).await?;
        crate::metrics::transaction("sent");
        let mut w = Write {
            tx,
            from,
            nonce: taken.n,
            hashes: vec![first],
            raws: vec![raw],
            fees,
            what,
            journal,
        };
        // `taken` lives until this write ends: the nonce stays reserved meanwhile.
        let sent = self.until_mined(&mut w).await;
        drop(taken);
        sent
    }

    /// Gas and fees for `tx`, in one round trip. Estimating first means a call the registry
    /// refuses fails here, before a nonce is used.
    async fn estimate(
        &self,
        tx: &TransactionRequest,
        what: &str,
    ) -> Result<(u64, alloy::eips::eip1559::Eip1559Estimation)> {
        within(self.timeout, "eth_estimateGas / eth_feeHistory", async {
            let (gas, fees) = tokio::join!(self.provider.estimate_gas(tx.clone()), async {
                match self.provider.estimate_eip1559_fees().await {
                    Ok(f) => Ok(f),
                    Err(e) => Err(self.no_eip1559(e).await),
                }
            });
            let gas = match gas {
                Ok(g) => g,
                Err(e) if super::funds::is_insufficient_funds(&e) => {
                    let fee = fees.as_ref().map_or(0, |f| f.max_fee_per_gas);
                    return Err(self.no_funds(what, super::STAMP_GAS, fee).await);
                }
                Err(e) => return Err(refused(e, what)),
            };
            Ok((gas, fees?))
        })
        .await
    }

    /// The first broadcast, with a nonce from the writer's counter. A refused first send makes
    /// the count be read again. If the node then says the nonce is used (a transaction this
    /// connection did not send: `deploy`, another process, a connection made meanwhile), one
    /// more try with the fresh count heals it.
    async fn first_send(
        &self,
        tx: TransactionRequest,
        from: Address,
        fees: alloy::eips::eip1559::Eip1559Estimation,
        what: &str,
        journal: Option<&OnSigned>,
    ) -> Result<(TransactionRequest, Taken, (B256, Bytes))> {
        let mut tries = 0;
        loop {
            let taken = within(self.timeout, "eth_getTransactionCount", async {
                self.nonces.take(&self.provider, from).await
            })
            .await?;
            let nonce = taken.n;
            let tx = tx.clone().with_nonce(nonce);
            match self.broadcast(&tx, fees, what, journal).await {
                Ok(h) => return Ok((tx, taken, h)),
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
        }
    }

    /// Polls the receipts of every transaction of `w` until one is mined, replacing the
    /// latest with higher fees every `chain.replace_after_secs` (at most
    /// `chain.max_replacements` times), until the write's deadline ([`FeePolicy::deadline`]).
    async fn until_mined(&self, w: &mut Write<'_>) -> Result<Sent> {
        let policy = self.fees;
        let start = Instant::now();
        let deadline = start + policy.deadline(self.timeout);
        let mut replace_at = start + policy.replace_after;
        let mut replacements = 0;
        let mut pause = Duration::from_millis(5);
        let poll_cap = self.provider.client().poll_interval().max(pause);
        // Set when a replacement was refused: if the nonce is then used on chain and none of
        // ours has a receipt, a transaction this agent did not send took it.
        let mut taken_check = false;
        loop {
            if let Some(sent) = self.mined(w).await? {
                crate::metrics::transaction("mined");
                return Ok(sent);
            }
            let (nonce, from, what) = (w.nonce, w.from, w.what);
            if std::mem::take(&mut taken_check)
                && self.taken_by_another(from, nonce, &w.hashes).await
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
                    w.hashes.len(),
                    w.hashes
                        .iter()
                        .map(|h| h.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            if now >= replace_at && replacements < policy.max_replacements {
                replacements += 1;
                replace_at = now + policy.replace_after;
                taken_check = !self.replace(w).await;
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

    /// The write as mined, when one of its transactions has a receipt (a reverted one is an
    /// error); a receipt that cannot be read yet counts as none.
    async fn mined(&self, w: &Write<'_>) -> Result<Option<Sent>> {
        for (h, raw) in w.hashes.iter().zip(&w.raws) {
            let receipt = match within(self.timeout, "eth_getTransactionReceipt", async {
                Ok(self.provider.get_transaction_receipt(*h).await?)
            })
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(tx = %h, "{}: cannot read the receipt yet: {e:#}", w.what);
                    None
                }
            };
            if let Some(r) = receipt {
                if !r.status() {
                    bail!("{} transaction {h} reverted", w.what);
                }
                return Ok(Some(Sent {
                    recorded: Recorded {
                        tx: *h,
                        block: r.block_number.unwrap_or_default(),
                    },
                    nonce: w.nonce,
                    hashes: w.hashes.clone(),
                    raw: raw.clone(),
                    block_hash: r.block_hash.unwrap_or_default(),
                }));
            }
        }
        Ok(None)
    }

    /// Sends the write again with the same nonce and fees raised by `chain.fee_bump_percent`
    /// (or the node's fresh estimate, when higher); whether the node took it. A refusal is
    /// typically "nonce too low": one of the sent ones was mined meanwhile, which the next
    /// round of receipts finds.
    async fn replace(&self, w: &mut Write<'_>) -> bool {
        let fresh = tokio::time::timeout(self.timeout, self.provider.estimate_eip1559_fees())
            .await
            .ok()
            .and_then(Result::ok);
        w.fees = bumped(w.fees, self.fees.bump_percent, fresh);
        let (nonce, fees, what) = (w.nonce, w.fees, w.what);
        match self.broadcast(&w.tx, fees, what, w.journal).await {
            Ok((h, raw)) => {
                tracing::warn!(
                    nonce,
                    replaced = %w.hashes[w.hashes.len() - 1],
                    by = %h,
                    max_fee_per_gas = fees.max_fee_per_gas,
                    max_priority_fee_per_gas = fees.max_priority_fee_per_gas,
                    "{what}: no receipt after {}s, replaced with higher fees",
                    self.fees.replace_after.as_secs()
                );
                w.hashes.push(h);
                w.raws.push(raw);
                crate::metrics::transaction("replaced");
                true
            }
            Err(e) => {
                tracing::warn!(nonce, "{what}: replacement not accepted: {e:#}");
                false
            }
        }
    }

    /// Why the EIP-1559 fee estimate failed: a chain without a base fee (pre-London, or a
    /// chain that still prices gas the legacy way) is named as such, since every write would
    /// fail the same way; anything else is passed on.
    async fn no_eip1559(&self, e: alloy::transports::TransportError) -> crate::error::Error {
        let latest = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Latest)
            .await;
        match latest {
            Ok(Some(b)) if b.header.base_fee_per_gas.is_none() => err!(
                "chain {} has no EIP-1559 base fee (its blocks carry no baseFeePerGas: a legacy-gas chain); \
                 mailstamp sends EIP-1559 (type 2) transactions only, so it cannot write here: use a chain with \
                 EIP-1559 (docs/PROTOCOL.md, \"Fees\")",
                self.chain_id
            ),
            _ => crate::error::Error::from(e).context("estimating EIP-1559 fees"),
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

    /// Signs `tx` with `fees` here, then sends it; the transaction hash and its signed bytes.
    /// The hash is known
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
    ) -> Result<(B256, Bytes)> {
        use alloy::eips::eip2718::Encodable2718 as _;
        let wallet = self.wallet.as_ref().ok_or_else(|| no_key(what))?;
        let envelope = tx
            .clone()
            .with_max_fee_per_gas(fees.max_fee_per_gas)
            .with_max_priority_fee_per_gas(fees.max_priority_fee_per_gas)
            .build(wallet)
            .await
            .map_err(|e| err!("cannot sign the {what} transaction: {e}"))?;
        let hash = *envelope.tx_hash();
        if let Some(j) = journal {
            j(hash)
                .await
                .with_context(|| format!("cannot journal the {what} transaction {hash}"))?;
        }
        let raw = Bytes::from(envelope.encoded_2718());
        // Whether the node answered with an error (it refused the transaction): only then is it
        // certainly not in its pool. Any other failure (a timeout, a lost answer) may have
        // reached it.
        let mut answered = false;
        let sent = within(self.timeout, "eth_sendRawTransaction", async {
            // The pending handle is not needed: receipts are polled by hash (with replacements).
            match self.provider.send_raw_transaction(&raw).await {
                Ok(pending) => {
                    drop(pending);
                    Ok(())
                }
                Err(e) => {
                    answered = e.as_error_resp().is_some();
                    Err(refused(e, what))
                }
            }
        })
        .await;
        match sent {
            Ok(()) => Ok((hash, raw)),
            Err(e) if super::funds::is_insufficient_funds(&format!("{e:#}")) => {
                let gas = tx.gas.unwrap_or(super::STAMP_GAS);
                Err(self.no_funds(what, gas, fees.max_fee_per_gas).await)
            }
            Err(e) if answered => Err(e),
            Err(e) => {
                // The request may still be on its way to the node: ask for the hash a few
                // times before calling it lost (a copy sent with the next nonce would only
                // revert: the registry is write-once).
                for _ in 0..5 {
                    let known = tokio::time::timeout(
                        self.timeout,
                        self.provider.get_transaction_by_hash(hash),
                    )
                    .await
                    .is_ok_and(|r| r.is_ok_and(|t| t.is_some()));
                    if known {
                        tracing::warn!(tx = %hash, "{what}: the send failed ({e:#}), but the node has the transaction: waiting for it");
                        return Ok((hash, raw));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e)
            }
        }
    }
}

/// A failed estimate or send, decoded into the registry's custom errors when it is one.
fn refused(e: alloy::transports::TransportError, what: &str) -> crate::error::Error {
    if let Some(err) = e
        .as_error_resp()
        .and_then(|p| p.as_decoded_interface_error::<StampRegistry::StampRegistryErrors>())
    {
        return err!("the registry refused the {what}: {err:?}");
    }
    crate::error::Error::from(e).context(format!("sending the {what} transaction failed"))
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

#[cfg(test)]
mod timeout_tests {
    use crate::chain::{Chain, NoncePool};
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
        let cfg = ChainConfig {
            rpc_url: url,
            replace_after_secs: 1,
            max_replacements: 1,
            read_batch_max: 1,
            ..ChainConfig::default()
        };
        let mut c = Chain::unchecked(&cfg, Address::ZERO, None, 1).unwrap();
        c.writer = Some(Address::ZERO);
        c.nonces = NoncePool::default().get(1, Some(Address::ZERO));
        c.timeout = Duration::from_millis(200);
        c.heads = std::sync::Arc::new(super::super::heads::Heads::new(
            Duration::from_secs(1),
            c.timeout,
        ));
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
