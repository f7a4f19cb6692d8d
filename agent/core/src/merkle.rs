// SPDX-License-Identifier: GPL-3.0-or-later
//! Batched anchoring (docs/PROTOCOL.md §5a): many commitments under one Merkle root, with the
//! same rules as the registry's `verifyStamp` — leaf = keccak256(abi.encode(bytes24 commitment)),
//! inner node = keccak256 of the two children sorted ascending (OpenZeppelin's MerkleProof
//! convention), an odd node at the end of a level moves up unchanged. Sorted pairs make a proof
//! a plain list of siblings: no positions needed.

use crate::digest::{COMMITMENT_LEN, Commitment, Keccak, keccak256, truncate};

/// A 32-byte tree node.
pub type Node = [u8; 32];

/// Deepest proof accepted (a batch of up to 2^32 leaves).
pub const MAX_DEPTH: usize = 32;

/// The leaf of a commitment: keccak256 of its ABI encoding (left-aligned in 32 bytes). A
/// 32-byte preimage can never be mistaken for an inner node's 64-byte one.
pub fn leaf(c: &Commitment) -> Node {
    let mut word = [0u8; 32];
    word[..COMMITMENT_LEN].copy_from_slice(c);
    keccak256(&word)
}

/// An inner node: the hash of the two children, smaller first.
pub fn node(a: &Node, b: &Node) -> Node {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut k = Keccak::v256();
    k.update(lo);
    k.update(hi);
    k.finish()
}

/// The root a proof leads to from a commitment.
pub fn root_from_proof(c: &Commitment, proof: &[Node]) -> Node {
    proof.iter().fold(leaf(c), |acc, sib| node(&acc, sib))
}

/// The root as the registry stores it (its first 24 bytes).
pub fn short(root: &Node) -> Commitment {
    truncate(*root)
}

/// A tree over commitments, in the order given.
#[derive(Debug, Clone)]
pub struct Tree {
    levels: Vec<Vec<Node>>,
}

impl Tree {
    /// Builds the tree; `None` for no commitments.
    pub fn build(commitments: &[Commitment]) -> Option<Self> {
        if commitments.is_empty() {
            return None;
        }
        let mut levels = vec![commitments.iter().map(leaf).collect::<Vec<_>>()];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let below = levels.last()?;
            let up = below
                .chunks(2)
                .map(|p| {
                    if p.len() == 2 {
                        node(&p[0], &p[1])
                    } else {
                        p[0]
                    }
                })
                .collect();
            levels.push(up);
        }
        Some(Self { levels })
    }

    /// The root.
    pub fn root(&self) -> Node {
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or([0; 32])
    }

    /// How many leaves.
    pub fn len(&self) -> usize {
        self.levels[0].len()
    }

    /// Whether the tree is empty (never: [`Tree::build`] refuses that).
    pub fn is_empty(&self) -> bool {
        self.levels[0].is_empty()
    }

    /// The proof of leaf `i`: its sibling at every level that has one.
    pub fn proof(&self, mut i: usize) -> Vec<Node> {
        let mut out = Vec::new();
        for level in &self.levels[..self.levels.len() - 1] {
            let sib = i ^ 1;
            if sib < level.len() {
                out.push(level[sib]);
            }
            i /= 2;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(i: u32) -> Commitment {
        let mut x = [0u8; 24];
        x[..4].copy_from_slice(&i.to_be_bytes());
        x[23] = 1;
        x
    }

    #[test]
    fn one_leaf_is_its_own_root() {
        let t = Tree::build(&[c(1)]).unwrap();
        assert_eq!(t.root(), leaf(&c(1)));
        assert!(t.proof(0).is_empty());
        assert!(Tree::build(&[]).is_none());
    }

    #[test]
    fn known_answer_shared_with_the_contract_tests() {
        // Commitments 1, 2, 3 as 24-byte big-endian numbers; the same vector is checked by
        // contracts/test/StampRegistryBatch.t.sol (test_VerifyStamp_KnownAnswer).
        let n = |v: u8| {
            let mut x = [0u8; 24];
            x[23] = v;
            x
        };
        let t = Tree::build(&[n(1), n(2), n(3)]).unwrap();
        assert_eq!(
            hex::encode(short(&t.root())),
            "822cca8e11289c26249dfd9b27606a86100c49f6817c9056"
        );
    }

    proptest! {
        #[test]
        fn every_leaf_proves_and_nothing_else_does(n in 1usize..300, pick in 0usize..300) {
            let cs: Vec<_> = (0..n as u32).map(c).collect();
            let t = Tree::build(&cs).unwrap();
            let i = pick % n;
            let p = t.proof(i);
            prop_assert!(p.len() <= 9);
            prop_assert_eq!(root_from_proof(&cs[i], &p), t.root());
            prop_assert_ne!(root_from_proof(&c(10_000), &p), t.root());
            if let Some(first) = p.first() {
                let mut bad = p.clone();
                bad[0] = node(first, first);
                prop_assert_ne!(root_from_proof(&cs[i], &bad), t.root());
            }
        }
    }
}
