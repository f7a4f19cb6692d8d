// SPDX-License-Identifier: GPL-3.0-or-later
//! The hash functions of protocol v1 (docs/PROTOCOL.md §4). Owns the keccak256 primitive
//! (keccak-asm underneath), the sizes and types of salts, digests and commitments, and the
//! labelled hashes built on them: component and recipient digests, the token, the commitment.
//! Every input starts with a domain-separation label so a digest of one kind can never stand
//! in for another. Component names reach it only as text to hash.

use keccak_asm::Digest as _;

use crate::name::ComponentName;

/// A keccak256 state (the Ethereum variant, not SHA3-256), backed by keccak-asm's assembly
/// permutation; the small surface the pipeline uses.
#[derive(Clone)]
pub(crate) struct Keccak(keccak_asm::Keccak256);

impl Keccak {
    /// A fresh keccak256 state.
    pub(crate) fn v256() -> Self {
        Self(keccak_asm::Keccak256::new())
    }

    /// Absorbs `data`.
    pub(crate) fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The 32-byte digest.
    pub(crate) fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.0.finalize());
        out
    }
}

/// Length of the per-message secret salt.
pub const SALT_LEN: usize = 16;
/// Length of a component digest carried in the header.
pub const DIGEST_LEN: usize = 16;
/// Length of one envelope-recipient digest.
pub const RCPT_DIGEST_LEN: usize = 8;
/// Length of the on-chain commitment.
pub const COMMITMENT_LEN: usize = 24;

/// The per-message secret salt.
pub type Salt = [u8; SALT_LEN];
/// A salted, truncated component digest.
pub type Digest = [u8; DIGEST_LEN];
/// A salted, truncated envelope-recipient digest.
pub type RcptDigest = [u8; RCPT_DIGEST_LEN];
/// The commitment recorded on chain.
pub type Commitment = [u8; COMMITMENT_LEN];

const COMPONENT_LABEL: &[u8] = b"mailstamp:v1:component";
const RCPT_LABEL: &[u8] = b"mailstamp:v1:rcpt";
const TOKEN_LABEL: &[u8] = b"mailstamp:v1:token";
const COMMIT_LABEL: &[u8] = b"mailstamp:v1:commit";
const HOP_LABEL: &[u8] = b"mailstamp:v3:hop";
const PREV_LABEL: &[u8] = b"mailstamp:v3:prev";

/// keccak256 of one byte string.
pub fn keccak256(data: &[u8]) -> [u8; 32] {
    let mut k = Keccak::v256();
    k.update(data);
    k.finish()
}

/// keccak256 of `data` with every CRLF read as LF: `keccak256(&canon::lf_bytes(data))`,
/// streamed instead of copied.
pub fn keccak256_lf(data: &[u8]) -> [u8; 32] {
    let mut k = Keccak::v256();
    let mut from = 0;
    let mut at = 0;
    while let Some(p) = data[at..].iter().position(|&b| b == b'\r') {
        let cr = at + p;
        if data.get(cr + 1) == Some(&b'\n') {
            k.update(&data[from..cr]);
            from = cr + 1;
        }
        at = cr + 1;
    }
    k.update(&data[from..]);
    k.finish()
}

/// The first `N` bytes of a digest: the truncated digests, the commitment, a short root.
pub(crate) fn truncate<const N: usize>(full: [u8; 32]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&full[..N]);
    out
}

/// A keccak state that has absorbed label, salt and component name: feed the value, then
/// [`ComponentHasher::finish`]. Cloning it lets us hash many prefixes of one value in one pass.
#[derive(Clone)]
pub struct ComponentHasher(Keccak);

impl ComponentHasher {
    /// Starts the digest of component `name` under `salt`.
    pub fn new(salt: &Salt, name: &str) -> Self {
        let mut k = Keccak::v256();
        k.update(COMPONENT_LABEL);
        k.update(salt);
        // Names are short ASCII (checked by the header decoder); the length prefix keeps
        // (name, value) pairs unambiguous.
        k.update(&[name.len().min(255) as u8]);
        k.update(name.as_bytes());
        Self(k)
    }

    /// Absorbs more of the value.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The truncated digest.
    pub fn finish(self) -> Digest {
        truncate(self.0.finish())
    }
}

/// Digest of component `name` with canonical value `value`.
pub fn component_digest(salt: &Salt, name: &str, value: &[u8]) -> Digest {
    let mut h = ComponentHasher::new(salt, name);
    h.update(value);
    h.finish()
}

/// Digest of one canonical envelope recipient.
pub fn rcpt_digest(salt: &Salt, rcpt: &str) -> RcptDigest {
    let mut k = Keccak::v256();
    k.update(RCPT_LABEL);
    k.update(salt);
    k.update(rcpt.as_bytes());
    truncate(k.finish())
}

/// The record key derived from the salt: knowing the token tells nothing about the salt.
pub fn token(salt: &Salt) -> [u8; 32] {
    let mut k = Keccak::v256();
    k.update(TOKEN_LABEL);
    k.update(salt);
    k.finish()
}

/// Everything the commitment binds, in protocol order.
pub struct CommitInput<'a> {
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// Registry contract address.
    pub registry: &'a [u8; 20],
    /// Writer (transaction sender) address.
    pub writer: &'a [u8; 20],
    /// Record key.
    pub token: &'a [u8; 32],
    /// Component names in header order.
    pub names: &'a [ComponentName],
    /// Component digests, one per name.
    pub digests: &'a [Digest],
    /// Sorted envelope-recipient digests.
    pub rcpts: &'a [RcptDigest],
}

/// The commitment over a stamp: what goes on chain.
pub fn commitment(input: &CommitInput<'_>) -> Commitment {
    truncate(commitment_hash(input))
}

/// The full 32-byte hash whose first [`COMMITMENT_LEN`] bytes are [`commitment`]; a hop's
/// commitment is built on it, so the v1 commitment code is the one place both are hashed.
fn commitment_hash(input: &CommitInput<'_>) -> [u8; 32] {
    let mut k = Keccak::v256();
    k.update(COMMIT_LABEL);
    k.update(&input.chain_id.to_be_bytes());
    k.update(input.registry);
    k.update(input.writer);
    k.update(input.token);
    k.update(&(input.names.len() as u32).to_be_bytes());
    for (name, digest) in input.names.iter().zip(input.digests) {
        name.with_str(|name| {
            k.update(&[name.len().min(255) as u8]);
            k.update(name.as_bytes());
        });
        k.update(digest);
    }
    k.update(&(input.rcpts.len() as u32).to_be_bytes());
    for r in input.rcpts {
        k.update(r);
    }
    k.finish()
}

/// The record a hop cites (docs/PROTOCOL.md §5c): where it is, under which key, and the
/// commitment the field below claims, so a batched record (one root, many leaves) names one
/// leaf and a hop cannot be pointed at another message of the same batch.
pub struct PrevInput<'a> {
    /// EIP-155 chain id of the previous record.
    pub chain_id: u64,
    /// Its registry.
    pub registry: &'a [u8; 20],
    /// Its writer.
    pub writer: &'a [u8; 20],
    /// Whether it is batched (`m=b`): then `key` is the batch id, else the token.
    pub batched: bool,
    /// Its registry key.
    pub key: &'a [u8; 32],
    /// The commitment of the field below (its own, before any Merkle proof).
    pub commitment: &'a Commitment,
}

/// What a hop's commitment binds beyond the v1 stamp (docs/PROTOCOL.md §5c).
pub struct HopInput<'a> {
    /// Hop index, 2 for the first hop after the originator.
    pub index: u8,
    /// The previous stamp the hop cites.
    pub prev: PrevInput<'a>,
    /// The hop's own domain (`dom`), whose writer record must list the hop's writer.
    pub domain: &'a str,
    /// The address the hop received the message for (`a`), canonical.
    pub received_for: &'a str,
    /// The declared transformations, as encoded in tag `t`.
    pub changes: &'a str,
}

/// The commitment of a hop: the v1 commitment over its own components and envelope, hashed
/// again with the reference to the previous stamp and the declared changes, so that neither
/// can be altered or re-pointed without changing what is on chain.
pub fn hop_commitment(base: &CommitInput<'_>, hop: &HopInput<'_>) -> Commitment {
    let p = &hop.prev;
    let mut r = Keccak::v256();
    r.update(PREV_LABEL);
    r.update(&p.chain_id.to_be_bytes());
    r.update(p.registry);
    r.update(p.writer);
    r.update(&[u8::from(p.batched)]);
    r.update(p.key);
    r.update(p.commitment);
    let mut k = Keccak::v256();
    k.update(HOP_LABEL);
    k.update(&commitment_hash(base));
    k.update(&[hop.index]);
    k.update(&r.finish());
    k.update(&[hop.domain.len().min(255) as u8]);
    k.update(hop.domain.as_bytes());
    k.update(&[hop.received_for.len().min(255) as u8]);
    k.update(hop.received_for.as_bytes());
    k.update(&(hop.changes.len() as u32).to_be_bytes());
    k.update(hop.changes.as_bytes());
    truncate(k.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keccak_matches_the_known_empty_digest() {
        assert_eq!(
            hex::encode(keccak256(b"")),
            "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
        );
    }

    #[test]
    fn keccak_lf_equals_keccak_of_lf_bytes() {
        for s in [
            &b""[..],
            b"\r",
            b"\r\n",
            b"a\r\nb\rc\n\r\r\n",
            b"no line ends",
            b"\r\r\r\n\n",
        ] {
            assert_eq!(
                keccak256_lf(s),
                keccak256(&crate::canon::lf_bytes(s)),
                "{s:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn keccak_lf_equals_keccak_of_lf_bytes_on_any_bytes(
            s in proptest::collection::vec(proptest::sample::select(vec![b'\r', b'\n', b'a', 0xff]), 0..300)
        ) {
            proptest::prop_assert_eq!(keccak256_lf(&s), keccak256(&crate::canon::lf_bytes(&s)));
        }
    }

    #[test]
    fn salt_and_name_both_change_the_digest() {
        let s1 = [1u8; SALT_LEN];
        let s2 = [2u8; SALT_LEN];
        let d = component_digest(&s1, "subject", b"hi");
        assert_ne!(d, component_digest(&s2, "subject", b"hi"));
        assert_ne!(d, component_digest(&s1, "to", b"hi"));
        assert_eq!(d, component_digest(&s1, "subject", b"hi"));
    }

    #[test]
    fn incremental_equals_one_shot() {
        let s = [7u8; SALT_LEN];
        let mut h = ComponentHasher::new(&s, "text.0");
        h.update(b"hello ");
        let snapshot = h.clone();
        h.update(b"world");
        assert_eq!(h.finish(), component_digest(&s, "text.0", b"hello world"));
        assert_eq!(snapshot.finish(), component_digest(&s, "text.0", b"hello "));
    }
}
