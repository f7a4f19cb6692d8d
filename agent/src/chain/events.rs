// SPDX-License-Identifier: GPL-3.0-or-later
//! Registry events for audit: every `Stamped` and `Anchored` event of a writer (or of all
//! writers) in a block range, decoded, and the head block and balance a health view shows.
//! Read-only: nothing here needs a key.

use alloy::primitives::{Address, B256, FixedBytes};
use alloy::providers::Provider;
use alloy::rpc::types::{Filter, Log};
use alloy::sol_types::SolEvent;

use crate::error::Result;

use super::{Chain, StampRegistry, within};

/// What a registry event recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EventKind {
    /// `stamp(token, commitment)`: one message.
    Stamp {
        /// The record's key.
        token: B256,
        /// The commitment recorded.
        commitment: FixedBytes<24>,
    },
    /// `anchor(batchId, root, size)`: a batch of `size` messages.
    Anchor {
        /// The record's key.
        batch: B256,
        /// The Merkle root (first 24 bytes) recorded.
        root: FixedBytes<24>,
        /// Messages in the batch.
        size: u32,
    },
}

impl EventKind {
    /// Messages this event recorded (a stamp: one; an anchor: its batch's size).
    pub fn messages(&self) -> u64 {
        match self {
            Self::Stamp { .. } => 1,
            Self::Anchor { size, .. } => u64::from(*size),
        }
    }
}

/// One registry event where it happened.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RegistryEvent {
    /// The writer (the event's first indexed topic).
    pub writer: Address,
    /// What it recorded.
    #[serde(flatten)]
    pub kind: EventKind,
    /// Block number.
    pub block: u64,
    /// Position of the log in its block (orders events of one block).
    pub log_index: u64,
    /// Transaction hash.
    pub tx: B256,
}

fn decode(log: &Log) -> Option<RegistryEvent> {
    let topic0 = *log.topic0()?;
    let kind = if topic0 == StampRegistry::Stamped::SIGNATURE_HASH {
        let e = StampRegistry::Stamped::decode_log(&log.inner).ok()?;
        EventKind::Stamp {
            token: e.data.token,
            commitment: e.data.commitment,
        }
    } else if topic0 == StampRegistry::Anchored::SIGNATURE_HASH {
        let e = StampRegistry::Anchored::decode_log(&log.inner).ok()?;
        EventKind::Anchor {
            batch: e.data.batchId,
            root: e.data.root,
            size: e.data.size,
        }
    } else {
        return None;
    };
    Some(RegistryEvent {
        writer: Address::from_word(*log.topics().get(1)?),
        kind,
        block: log.block_number?,
        log_index: log.log_index?,
        tx: log.transaction_hash?,
    })
}

impl Chain {
    /// The `Stamped` and `Anchored` events of `writer` (of every writer when `None`) in blocks
    /// `from..=to`, oldest first. One `eth_getLogs`: the caller keeps the range within what
    /// its node serves (public endpoints cap it, often at 10,000 blocks or fewer).
    pub async fn events(
        &self,
        writer: Option<Address>,
        from: u64,
        to: u64,
    ) -> Result<Vec<RegistryEvent>> {
        let mut filter = Filter::new()
            .address(self.registry)
            .event_signature(vec![
                StampRegistry::Stamped::SIGNATURE_HASH,
                StampRegistry::Anchored::SIGNATURE_HASH,
            ])
            .from_block(from)
            .to_block(to);
        if let Some(w) = writer {
            filter = filter.topic1(w.into_word());
        }
        let logs = within(self.timeout, "eth_getLogs", async {
            Ok(self.provider.get_logs(&filter).await?)
        })
        .await?;
        let mut v: Vec<RegistryEvent> = logs.iter().filter_map(decode).collect();
        v.sort_by_key(|e| (e.block, e.log_index));
        Ok(v)
    }

    /// The head block number.
    pub async fn head(&self) -> Result<u64> {
        within(self.timeout, "eth_blockNumber", async {
            Ok(self.provider.get_block_number().await?)
        })
        .await
    }

    /// The balance of `account` at the head, in wei.
    pub async fn balance_of(&self, account: Address) -> Result<alloy::primitives::U256> {
        within(self.timeout, "eth_getBalance", async {
            Ok(self.provider.get_balance(account).await?)
        })
        .await
    }

    /// `verifyStamp(writer, batch, commitment, proof)` at the head: whether `proof` leads from
    /// the leaf `commitment` to the root anchored under (`writer`, `batch`), as the contract
    /// computes it.
    pub async fn verify_stamp(
        &self,
        writer: Address,
        batch: B256,
        commitment: FixedBytes<24>,
        proof: Vec<B256>,
    ) -> Result<bool> {
        let reg = StampRegistry::new(self.registry, &self.provider);
        within(self.timeout, "verifyStamp()", async {
            Ok(reg
                .verifyStamp(writer, batch, commitment, proof)
                .call()
                .await?)
        })
        .await
    }
}
