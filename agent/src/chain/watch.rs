// SPDX-License-Identifier: GPL-3.0-or-later
//! What the watch of this agent's own writes asks the chain (`stamping::watch`, docs/PROTOCOL.md
//! §5b): the newest final block, the hashes of the blocks writes landed in (a reorg changes
//! them), where a transaction is mined now, a signed transaction sent again unchanged, and
//! whether a nonce is used.

use alloy::eips::{BlockId, BlockNumberOrTag};
use alloy::primitives::{B256, Bytes};
use alloy::providers::Provider;
use alloy::rpc::client::BatchRequest;

use crate::config::{BlockTag, Confirmations};
use crate::error::{Context, Result, err};

use super::{Chain, within};

impl Chain {
    /// The number of the newest block that `chain.final_confirmations` counts as final
    /// (`None`: none yet, the chain is shorter than the depth).
    pub async fn final_number(&self) -> Result<Option<u64>> {
        within(self.timeout, "the final block", async {
            Ok(match &self.final_confirmations {
                Confirmations::Depth(d) => {
                    let head = self.provider.get_block_number().await?;
                    head.checked_sub(d.saturating_sub(1))
                }
                Confirmations::Tag(tag) => {
                    let tag = match tag {
                        BlockTag::Latest => BlockNumberOrTag::Latest,
                        BlockTag::Safe => BlockNumberOrTag::Safe,
                        BlockTag::Finalized => BlockNumberOrTag::Finalized,
                    };
                    self.provider
                        .get_block_by_number(tag)
                        .await?
                        .map(|b| b.header.number)
                }
            })
        })
        .await
    }

    /// The hash of the block at each of `numbers` now, as one JSON-RPC batch (`None`: no block
    /// there, a rollback shortened the chain).
    pub async fn block_hashes(&self, numbers: &[u64]) -> Result<Vec<Option<B256>>> {
        if numbers.is_empty() {
            return Ok(Vec::new());
        }
        within(self.timeout, "eth_getBlockByNumber (batched)", async {
            let mut batch = BatchRequest::new(self.provider.client());
            let mut waiters = Vec::with_capacity(numbers.len());
            for n in numbers {
                waiters.push(batch.add_call::<_, Option<alloy::rpc::types::Block>>(
                    "eth_getBlockByNumber",
                    &(BlockNumberOrTag::Number(*n), false),
                )?);
            }
            batch
                .send()
                .await
                .context("sending the batched block read")?;
            let mut out = Vec::with_capacity(numbers.len());
            for w in waiters {
                out.push(w.await?.map(|b| b.header.hash));
            }
            Ok(out)
        })
        .await
    }

    /// Where transaction `tx` is mined now: its block number and hash (`None` while it is not
    /// mined, e.g. after a reorg dropped its block). A reverted one is an error.
    pub async fn mined_at(&self, tx: B256) -> Result<Option<(u64, B256)>> {
        let r = within(self.timeout, "eth_getTransactionReceipt", async {
            Ok(self.provider.get_transaction_receipt(tx).await?)
        })
        .await?;
        match r {
            None => Ok(None),
            Some(r) if !r.status() => Err(err!("transaction {tx} reverted")),
            Some(r) => Ok(r.block_number.zip(r.block_hash)),
        }
    }

    /// Sends a transaction signed earlier again, unchanged (after a reorg dropped it).
    pub async fn rebroadcast(&self, raw: &Bytes) -> Result<()> {
        within(self.timeout, "eth_sendRawTransaction", async {
            drop(self.provider.send_raw_transaction(raw).await?);
            Ok(())
        })
        .await
    }

    /// Whether the writer's `nonce` is used by a mined transaction (its count at the head
    /// is past it).
    pub async fn nonce_mined(&self, nonce: u64) -> Result<bool> {
        let Some(w) = self.writer else {
            return Ok(false);
        };
        within(self.timeout, "eth_getTransactionCount", async {
            Ok(self
                .provider
                .get_transaction_count(w)
                .block_id(BlockId::latest())
                .await?
                > nonce)
        })
        .await
    }
}
