// SPDX-License-Identifier: GPL-3.0-or-later
//! Deploying the registry through the CREATE2 deployer, so that it has the same address on
//! every chain that has the deployer (`mailstamp deploy`).

use std::time::Duration;

use alloy::network::TransactionBuilder as _;
use alloy::primitives::{Address, B256, Bytes, address, keccak256};
use alloy::providers::Provider;
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;

use crate::error::{Context, Result, bail};

use super::{StampRegistry, provider, within};

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
            .with_context(|| format!("cannot reach the chain at {}", super::redact_url(url)))?;
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
