// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @dev Builds sorted-pair Merkle trees over bytes24 commitments and their proofs in memory, for
/// the tests. Written apart from src/MerkleSorted.sol (bytes.concat here, abi.encode there) so
/// that a mistake in one shows up against the other; the known-answer test pins both to hashes
/// computed outside Solidity.
///
/// Shape: level 0 holds the leaves in the given order; level k+1 holds node(level k[2i],
/// level k[2i+1]), and an odd last element is carried up unchanged. N leaves give
/// ceil(log2 N) levels above the leaves, so every proof of a 2^d-leaf tree has d elements.
library MerkleTree {
    function leafHash(bytes24 commitment) internal pure returns (bytes32) {
        return keccak256(bytes.concat(commitment, bytes8(0)));
    }

    function nodeHash(bytes32 a, bytes32 b) internal pure returns (bytes32) {
        return
            uint256(a) < uint256(b) ? keccak256(bytes.concat(a, b)) : keccak256(bytes.concat(b, a));
    }

    /// @dev Every level of the tree, leaves first, the single top node last.
    function build(bytes24[] memory cs) internal pure returns (bytes32[][] memory levels) {
        require(cs.length > 0, "MerkleTree: no leaves");
        uint256 depth = 0;
        for (uint256 n = cs.length; n > 1; n = (n + 1) / 2) {
            depth++;
        }
        levels = new bytes32[][](depth + 1);
        levels[0] = new bytes32[](cs.length);
        for (uint256 i = 0; i < cs.length; i++) {
            levels[0][i] = leafHash(cs[i]);
        }
        for (uint256 k = 0; k < depth; k++) {
            bytes32[] memory below = levels[k];
            bytes32[] memory above = new bytes32[]((below.length + 1) / 2);
            for (uint256 i = 0; i < above.length; i++) {
                above[i] = 2 * i + 1 < below.length
                    ? nodeHash(below[2 * i], below[2 * i + 1])
                    : below[2 * i];
            }
            levels[k + 1] = above;
        }
    }

    /// @dev The anchored root: the first 24 bytes of the top node.
    function root(bytes32[][] memory levels) internal pure returns (bytes24) {
        return bytes24(levels[levels.length - 1][0]);
    }

    /// @dev The siblings of leaf `index` from the bottom up, skipping levels where it has none.
    function proof(bytes32[][] memory levels, uint256 index)
        internal
        pure
        returns (bytes32[] memory siblings)
    {
        require(index < levels[0].length, "MerkleTree: index out of range");
        uint256 count = 0;
        uint256 pos = index;
        for (uint256 k = 0; k + 1 < levels.length; k++) {
            if ((pos ^ 1) < levels[k].length) count++;
            pos >>= 1;
        }
        siblings = new bytes32[](count);
        count = 0;
        pos = index;
        for (uint256 k = 0; k + 1 < levels.length; k++) {
            if ((pos ^ 1) < levels[k].length) siblings[count++] = levels[k][pos ^ 1];
            pos >>= 1;
        }
    }

    /// @dev `size` distinct pseudo-random non-zero commitments derived from `seed`.
    function commitments(uint256 seed, uint256 size) internal pure returns (bytes24[] memory cs) {
        cs = new bytes24[](size);
        for (uint256 i = 0; i < size; i++) {
            cs[i] = bytes24(keccak256(abi.encode("commitment", seed, i)));
            if (cs[i] == bytes24(0)) cs[i] = bytes24(uint192(1));
        }
    }
}
