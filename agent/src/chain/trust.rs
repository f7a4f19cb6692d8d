// SPDX-License-Identifier: GPL-3.0-or-later
//! Whom a lookup believes (docs/PROTOCOL.md §6d).
//!
//! - **The confirmed block** is agreed, not taken: with `chain.quorum` = q, every endpoint is
//!   asked for its confirmed block number (its head less the depth, or its block at the tag),
//!   the q-th highest is the candidate (so at least q endpoints reached it, and a minority that
//!   claims a later block — a lie about `finalized` — cannot move it), and then every endpoint
//!   for that block's hash: q endpoints naming the same hash, and no other hash named by q,
//!   is the agreed block. Anything less is an error naming the endpoints and what each said:
//!   the lookup is `temperror`, never the minority's answer.
//! - **In `call` mode** with a quorum, the record read at the agreed block hash must be the
//!   same from q endpoints too.
//! - **In `proof` mode** the agreed block's header is fetched and its hash recomputed from its
//!   fields (alloy's `Header::hash_slow`), which binds its state root; the record's storage
//!   slot is read with `eth_getProof` at that block and checked here, with alloy's trie crate
//!   (`verify_proof`): the account proof from the state root to the registry's account, whose
//!   code hash must be the registry's runtime code this agent was built with, and the storage
//!   proof from the account's storage root to the slot (an exclusion proof for an empty slot).
//!   An endpoint whose proof does not verify is passed over for the next; none verifying is an
//!   error. Many records of a burst share one `eth_getProof` (one account proof).
//!
//! Not checked here: that the agreed block is canonical by the chain's consensus rules. With
//! one endpoint in `proof` mode the endpoint still chooses the header (a liar can make up a
//! block whose state says anything); it cannot alter a real block's records. A light client
//! (helios beside the agent) is what would close that; it is documented as the next step.

use std::time::Instant;

use alloy::eips::{BlockId, BlockNumberOrTag};
use alloy::primitives::{Address, B256, FixedBytes, U256, keccak256};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::EIP1186AccountProofResponse;
use alloy::trie::{Nibbles, TrieAccount, proof::verify_proof};

use crate::config::{BlockTag, Confirmations, ReadMode};
use crate::error::{Result, bail, err};

use super::{Chain, RecordKey, StampRegistry, within};

/// The confirmed block the endpoints agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Agreed {
    pub(super) number: u64,
    pub(super) hash: B256,
    /// The state root of its header, whose hash was recomputed (`proof` mode only).
    pub(super) state_root: Option<B256>,
}

/// An agreed block (or "nothing confirmed") and when it was agreed.
pub(super) type AgreedAt = (Instant, Option<Agreed>);

/// The storage slot of a record: `_stamps` is slot 0 of `StampRegistry`, `_anchors` slot 1
/// (mappings of mappings: `keccak(key . keccak(writer . base))`). Pinned by the proof-mode
/// integration tests, which read every record both ways.
pub(super) fn record_slot(writer: Address, key: RecordKey) -> B256 {
    let (k, base) = match key {
        RecordKey::Stamp(t) => (t, 0u8),
        RecordKey::Batch(b) => (b, 1u8),
    };
    let mut outer = [0u8; 64];
    outer[..32].copy_from_slice(writer.into_word().as_slice());
    outer[63] = base;
    let inner = keccak256(outer);
    let mut slot = [0u8; 64];
    slot[..32].copy_from_slice(k.as_slice());
    slot[32..].copy_from_slice(inner.as_slice());
    keccak256(slot)
}

/// A record's slot as a (commitment or root, time) pair: `struct { bytes24; uint64 }` packs
/// the first member into the low 24 bytes and the time above it.
pub(super) fn decode_slot(value: U256) -> (FixedBytes<24>, u64) {
    let word = value.to_be_bytes::<32>();
    let mut time = [0u8; 8];
    time.copy_from_slice(&word[..8]);
    (FixedBytes::from_slice(&word[8..]), u64::from_be_bytes(time))
}

/// The keccak-256 of the registry's runtime code this agent was built with: the account the
/// proofs lead to must hold exactly this code.
pub(super) fn registry_code_hash() -> B256 {
    keccak256(&StampRegistry::DEPLOYED_BYTECODE)
}

/// Checks an `eth_getProof` answer for `slots` of `registry` against `state_root`; the slots'
/// values in the order asked. An account that does not exist there (the registry deployed
/// later) is proven absent and every slot is zero.
pub(super) fn verify_account_proof(
    resp: &EIP1186AccountProofResponse,
    registry: Address,
    state_root: B256,
    code_hash: B256,
    slots: &[B256],
) -> Result<Vec<U256>> {
    if resp.address != registry {
        bail!(
            "the proof is for account {}, not the registry {registry}",
            resp.address
        );
    }
    let account_key = Nibbles::unpack(keccak256(registry));
    let absent = resp.code_hash == alloy::primitives::KECCAK256_EMPTY
        && resp.nonce == 0
        && resp.balance.is_zero()
        && resp.storage_hash == alloy::trie::EMPTY_ROOT_HASH;
    if absent {
        verify_proof(state_root, account_key, None, &resp.account_proof)
            .map_err(|e| err!("the account proof does not lead to the state root: {e}"))?;
        return Ok(vec![U256::ZERO; slots.len()]);
    }
    if resp.code_hash != code_hash {
        bail!(
            "the account at {registry} holds code {} , not the registry's runtime code ({code_hash}): \
             not a StampRegistry this agent knows (proof mode reads only the registry it was built with)",
            resp.code_hash
        );
    }
    let account = TrieAccount {
        nonce: resp.nonce,
        balance: resp.balance,
        storage_root: resp.storage_hash,
        code_hash: resp.code_hash,
    };
    verify_proof(
        state_root,
        account_key,
        Some(alloy::rlp::encode(account)),
        &resp.account_proof,
    )
    .map_err(|e| err!("the account proof does not lead to the state root: {e}"))?;
    slots
        .iter()
        .map(|slot| {
            let p = resp
                .storage_proof
                .iter()
                .find(|p| p.key.as_b256() == *slot)
                .ok_or_else(|| err!("the answer has no storage proof for slot {slot}"))?;
            let expected = (!p.value.is_zero()).then(|| alloy::rlp::encode(p.value));
            verify_proof(
                resp.storage_hash,
                Nibbles::unpack(keccak256(slot)),
                expected,
                &p.proof,
            )
            .map_err(|e| err!("the storage proof of slot {slot} does not verify: {e}"))?;
            Ok(p.value)
        })
        .collect()
}

/// One record as read: (commitment or root, time), zero when none.
pub(super) type RawRecord = Result<(FixedBytes<24>, u64)>;

impl Chain {
    /// Whether lookups need the endpoints' agreement or a proof (else the confirmed block is
    /// the one endpoint's word, as with a single `rpc_url` in `call` mode).
    pub(super) fn checks_answers(&self) -> bool {
        self.quorum > 1 || self.mode == ReadMode::Proof
    }

    /// The agreed confirmed block (`None`: nothing is confirmed yet), shared for
    /// `chain.head_poll_ms` by the lookups that need it, computed once for those that arrive
    /// together.
    pub(super) async fn agreed_block(&self) -> Result<Option<Agreed>> {
        let mut slot = self.agreed.lock().await;
        if let Some((at, a)) = &*slot
            && at.elapsed() < self.agreed_ttl
        {
            return Ok(a.clone());
        }
        let a = within(self.timeout, "agreed confirmed block", self.agree()).await;
        if a.is_err() {
            crate::metrics::untrusted("disagreement");
        }
        let a = a?;
        *slot = Some((Instant::now(), a.clone()));
        Ok(a)
    }

    /// The endpoints to ask for agreement: every one with a quorum, else the healthiest that
    /// answers (through the failover transport).
    fn voters(&self) -> Vec<(String, &DynProvider)> {
        if self.quorum > 1 {
            (0..self.each.len())
                .map(|i| (self.pool.label(i).to_owned(), &self.each[i]))
                .collect()
        } else {
            vec![("the RPC endpoints".to_owned(), &self.provider)]
        }
    }

    /// Every voter's answer, in order — without waiting for a stalled one: once `chain.quorum`
    /// have answered, the others get `chain.failover_after_ms` more, and one still silent then
    /// counts as "no answer".
    async fn gather<T>(
        &self,
        asks: impl IntoIterator<Item = impl std::future::Future<Output = Result<T>>>,
    ) -> Vec<Result<T>> {
        use futures_util::StreamExt;
        let mut flying: futures_util::stream::FuturesUnordered<_> = asks
            .into_iter()
            .enumerate()
            .map(|(i, f)| async move { (i, f.await) })
            .collect();
        let mut out: Vec<Option<Result<T>>> = (0..flying.len()).map(|_| None).collect();
        let (mut answered, mut until) = (0, None);
        loop {
            let next = match until {
                Some(t) => match tokio::time::timeout_at(t, flying.next()).await {
                    Ok(n) => n,
                    Err(_) => break,
                },
                None => flying.next().await,
            };
            let Some((i, r)) = next else { break };
            answered += usize::from(r.is_ok());
            out[i] = Some(r);
            if answered >= self.quorum && until.is_none() {
                until = Some(tokio::time::Instant::now() + self.pool.hedge());
            }
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(err!(
                        "no answer within {:?} of the others",
                        self.pool.hedge()
                    ))
                })
            })
            .collect()
    }

    async fn agree(&self) -> Result<Option<Agreed>> {
        let voters = self.voters();
        let rule = &self.confirmations;
        let numbers = self
            .gather(
                voters
                    .iter()
                    .map(|(_, p)| async move { confirmed_number(p, rule).await }),
            )
            .await;
        let mut heights = Vec::new();
        let mut said = Vec::new();
        for ((label, _), r) in voters.iter().zip(numbers) {
            match r {
                Ok(n) => heights.push(n),
                Err(e) => said.push(format!("{label}: {e:#}")),
            }
        }
        if heights.len() < self.quorum {
            bail!(
                "only {} of {} RPC endpoints answered for the confirmed block (chain.quorum = {}): {}",
                heights.len(),
                voters.len(),
                self.quorum,
                said.join("; ")
            );
        }
        // Highest first; "nothing confirmed" (None) sorts last.
        heights.sort_by(|a, b| b.cmp(a));
        let Some(number) = heights[self.quorum - 1] else {
            return Ok(None);
        };
        let blocks = self
            .gather(voters.iter().map(|(_, p)| async move {
                p.get_block_by_number(BlockNumberOrTag::Number(number))
                    .await
                    .map_err(|e| err!("{e}"))
            }))
            .await;
        let mut votes: Vec<(B256, Vec<usize>)> = Vec::new();
        let mut headers = Vec::new();
        let mut said = Vec::new();
        for (i, r) in blocks.into_iter().enumerate() {
            let label = &voters[i].0;
            match r {
                Ok(Some(b)) => {
                    said.push(format!("{label}: {}", b.header.hash));
                    match votes.iter_mut().find(|(h, _)| *h == b.header.hash) {
                        Some((_, v)) => v.push(i),
                        None => votes.push((b.header.hash, vec![i])),
                    }
                    headers.push((i, b.header));
                }
                Ok(None) => said.push(format!("{label}: no block {number}")),
                Err(e) => said.push(format!("{label}: {e:#}")),
            }
        }
        let mut met = votes.iter().filter(|(_, v)| v.len() >= self.quorum);
        let (hash, voted) = match (met.next(), met.next()) {
            (Some(one), None) => one,
            _ => bail!(
                "the RPC endpoints do not agree on block {number} (chain.quorum = {} of {}): {}",
                self.quorum,
                voters.len(),
                said.join(", ")
            ),
        };
        if self.mode != ReadMode::Proof {
            return Ok(Some(Agreed {
                number,
                hash: *hash,
                state_root: None,
            }));
        }
        // The header's hash recomputed from its fields: the state root is the agreed block's.
        let mut bad = Vec::new();
        for (i, h) in headers.iter().filter(|(i, _)| voted.contains(i)) {
            if h.inner.hash_slow() == *hash && h.inner.number == number {
                return Ok(Some(Agreed {
                    number,
                    hash: *hash,
                    state_root: Some(h.inner.state_root),
                }));
            }
            bad.push(voters[*i].0.clone());
        }
        bail!(
            "the header of block {number} from {} does not hash to {hash}: its fields were altered",
            bad.join(", ")
        )
    }

    /// The records `keys` at the agreed block: proven (`proof` mode) or the same from
    /// `chain.quorum` endpoints (`call` mode).
    pub(super) async fn records_agreed(
        &self,
        keys: &[(Address, RecordKey)],
        at: &Agreed,
    ) -> Result<Vec<RawRecord>> {
        match at.state_root {
            Some(root) => self.records_proven(keys, at.hash, root).await,
            None => self.records_voted(keys, at.hash).await,
        }
    }

    /// Whether each of `keys`, not confirmed, is on chain above the confirmed block (the
    /// lookup then waits for it) — with a quorum, only when `chain.quorum` endpoints see it
    /// at their latest block, so a minority cannot hold a missing record in "wait". This
    /// decides only between waiting and "no record"; nothing unproven is ever `Found`.
    pub(super) async fn pending_above(
        &self,
        keys: &[(Address, RecordKey)],
    ) -> Result<Vec<Result<bool>>> {
        if self.quorum <= 1 {
            let rs = self
                .get_records_on(&self.provider, keys, BlockId::latest())
                .await?;
            return Ok(rs
                .into_iter()
                .map(|r| r.map(|(c, _)| c != FixedBytes::ZERO))
                .collect());
        }
        let answers = self
            .gather(
                self.each
                    .iter()
                    .map(|p| self.get_records_on(p, keys, BlockId::latest())),
            )
            .await;
        let answered = answers.iter().filter(|a| a.is_ok()).count();
        if answered < self.quorum {
            bail!(
                "only {answered} of {} RPC endpoints answered for the latest block (chain.quorum = {})",
                self.each.len(),
                self.quorum
            );
        }
        Ok((0..keys.len())
            .map(|k| {
                let seen = answers
                    .iter()
                    .filter(|a| {
                        a.as_ref().is_ok_and(|rs| {
                            rs[k].as_ref().is_ok_and(|(c, _)| *c != FixedBytes::ZERO)
                        })
                    })
                    .count();
                Ok(seen >= self.quorum)
            })
            .collect())
    }

    async fn records_voted(
        &self,
        keys: &[(Address, RecordKey)],
        hash: B256,
    ) -> Result<Vec<RawRecord>> {
        let answers = self
            .gather(
                self.each
                    .iter()
                    .map(|p| self.get_records_on(p, keys, BlockId::hash(hash))),
            )
            .await;
        let mut out = Vec::with_capacity(keys.len());
        for (k, key) in keys.iter().enumerate() {
            let mut votes: Vec<((FixedBytes<24>, u64), usize)> = Vec::new();
            let mut said = Vec::new();
            for (i, a) in answers.iter().enumerate() {
                let label = self.pool.label(i);
                match a.as_ref().map(|rs| &rs[k]) {
                    Ok(Ok(v)) => {
                        said.push(format!("{label}: {}", v.0));
                        match votes.iter_mut().find(|(x, _)| x == v) {
                            Some((_, n)) => *n += 1,
                            None => votes.push((*v, 1)),
                        }
                    }
                    Ok(Err(e)) => said.push(format!("{label}: {e:#}")),
                    Err(e) => said.push(format!("{label}: {e:#}")),
                }
            }
            let mut met = votes.iter().filter(|(_, n)| *n >= self.quorum);
            out.push(match (met.next(), met.next()) {
                (Some((v, _)), None) => Ok(*v),
                _ => {
                    crate::metrics::untrusted("disagreement");
                    Err(err!(
                        "the RPC endpoints do not agree on record {:?} of {} at block {hash} (chain.quorum = {}): {}",
                        key.1,
                        key.0,
                        self.quorum,
                        said.join(", ")
                    ))
                }
            });
        }
        Ok(out)
    }

    async fn records_proven(
        &self,
        keys: &[(Address, RecordKey)],
        hash: B256,
        state_root: B256,
    ) -> Result<Vec<RawRecord>> {
        let slots: Vec<B256> = keys.iter().map(|(w, k)| record_slot(*w, *k)).collect();
        let mut asked: Vec<B256> = slots.clone();
        asked.sort();
        asked.dedup();
        let mut said = Vec::new();
        let ranked = self.pool.ranked();
        let last = ranked.len().saturating_sub(1);
        for (n, i) in ranked.into_iter().enumerate() {
            let label = self.pool.label(i);
            // A stalled endpoint holds the others up for `chain.failover_after_ms` at most.
            let wait = if n == last {
                self.timeout
            } else {
                self.pool.hedge()
            };
            let answer = tokio::time::timeout(
                wait,
                self.each[i]
                    .get_proof(self.registry, asked.clone())
                    .block_id(BlockId::hash(hash)),
            )
            .await;
            let resp = match answer {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    said.push(format!("{label}: {e}"));
                    continue;
                }
                Err(_) => {
                    said.push(format!("{label}: no answer within {wait:?}"));
                    continue;
                }
            };
            match verify_account_proof(&resp, self.registry, state_root, self.code_hash, &slots) {
                Ok(values) => {
                    return Ok(values.into_iter().map(|v| Ok(decode_slot(v))).collect());
                }
                Err(e) => {
                    crate::metrics::untrusted("proof");
                    tracing::warn!(endpoint = %label, block = %hash, "a storage proof from this endpoint does not verify: {e:#}");
                    said.push(format!("{label}: {e:#}"));
                }
            }
        }
        bail!(
            "no RPC endpoint gave a storage proof that verifies at block {hash}: {}",
            said.join("; ")
        )
    }
}

/// One endpoint's confirmed block number under `rule` (`None`: nothing confirmed yet).
async fn confirmed_number(p: &DynProvider, rule: &Confirmations) -> Result<Option<u64>> {
    let tag = match rule {
        Confirmations::Depth(d) => {
            let head = p.get_block_number().await?;
            return Ok(head.checked_sub(d.saturating_sub(1)));
        }
        Confirmations::Tag(BlockTag::Latest) => BlockNumberOrTag::Latest,
        Confirmations::Tag(BlockTag::Safe) => BlockNumberOrTag::Safe,
        Confirmations::Tag(BlockTag::Finalized) => BlockNumberOrTag::Finalized,
    };
    Ok(p.get_block_by_number(tag).await?.map(|b| b.header.number))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_decodes_time_above_the_commitment() {
        let mut word = [0u8; 32];
        word[..8].copy_from_slice(&1_700_000_000u64.to_be_bytes());
        word[8..].copy_from_slice(&[0xab; 24]);
        let (c, t) = decode_slot(U256::from_be_bytes(word));
        assert_eq!(c, FixedBytes::from([0xab; 24]));
        assert_eq!(t, 1_700_000_000);
        assert_eq!(decode_slot(U256::ZERO), (FixedBytes::ZERO, 0));
    }

    #[test]
    fn stamps_and_anchors_live_in_different_slots() {
        let w = Address::repeat_byte(7);
        let k = B256::repeat_byte(9);
        assert_ne!(
            record_slot(w, RecordKey::Stamp(k)),
            record_slot(w, RecordKey::Batch(k))
        );
        assert_ne!(
            record_slot(w, RecordKey::Stamp(k)),
            record_slot(Address::repeat_byte(8), RecordKey::Stamp(k))
        );
    }
}
