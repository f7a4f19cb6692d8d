// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title MerkleSorted
/// @notice The Merkle hashing of batched stamps: leaves over bytes24 commitments, sorted-pair
/// nodes as in OpenZeppelin's MerkleProof. The exact definitions are in {IStampRegistry}.
/// @dev Plain Solidity, no assembly: `abi.encode` allocates fresh memory per node, which costs a
/// few gas per level at the depths we use (≤ 16 for the agent's 65,536 leaves; the registry
/// accepts at most `MAX_PROOF_LENGTH` = 32 levels).
library MerkleSorted {
    /// @dev leaf(c) = keccak256(abi.encode(c)): a 32-byte preimage (c then 8 zero bytes), never
    /// the 64-byte preimage of a node.
    function leaf(bytes24 commitment) internal pure returns (bytes32) {
        return keccak256(abi.encode(commitment));
    }

    /// @dev node(a, b) = keccak256 of the smaller then the larger of the two, so the order in
    /// which a proof presents them does not matter.
    function node(bytes32 a, bytes32 b) internal pure returns (bytes32) {
        return a < b ? keccak256(abi.encode(a, b)) : keccak256(abi.encode(b, a));
    }

    /// @dev The top node reached from `leafHash` by folding in each sibling of `proof` in order.
    function processProof(bytes32[] calldata proof, bytes32 leafHash)
        internal
        pure
        returns (bytes32 computed)
    {
        computed = leafHash;
        for (uint256 i = 0; i < proof.length; i++) {
            computed = node(computed, proof[i]);
        }
    }
}
