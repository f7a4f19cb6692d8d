// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @dev The longest proof `verifyStamp` accepts, in sibling hashes. A batch's size is a uint32,
/// and N leaves paired level by level (PROTOCOL §5a; an odd last node carried up) give proofs of
/// at most ceil(log2 N) ≤ 32 siblings, so every batch `anchor` can describe fits; the header's
/// `p=` carries at most 32 nodes too (PROTOCOL §2). The agent's batches are at most 65,536
/// leaves (depth 16), so the margin is twice its depth. It also bounds the work of a view anyone
/// can call: a 32-sibling proof costs about 13,600 gas (test_VerifyStamp_GasByDepth).
uint256 constant MAX_PROOF_LENGTH = 32;

/// @title IStampRegistry
/// @notice A write-once public notebook of mail stamps. A sending mail server records, under its
/// own address and a per-message token, a 24-byte commitment to the message; a receiving server
/// looks the stamp up and checks the message it got against it.
/// @dev A stamp is keyed by (writer, token): only `msg.sender` can write under its own key, and a
/// key is written at most once, so a recorded stamp never changes.
///
/// Batched mode (since 1.1.0): a writer gathers many commitments, builds a Merkle tree over
/// them and anchors only the tree's root under (writer, batchId); each message carries its
/// proof, and `verifyStamp` checks it against the anchored root. Anchors follow the same rules
/// as stamps (own key only, write-once) in a separate key space. The tree, exactly:
///
///   leaf(c)    = keccak256(abi.encode(c)) for a bytes24 commitment c, i.e. the keccak of 32
///                bytes: the 24 bytes of c followed by 8 zero bytes.
///   node(a, b) = a < b ? keccak256(a ‖ b) : keccak256(b ‖ a), for 32-byte a and b compared as
///                unsigned big-endian integers; ‖ is concatenation, a 64-byte preimage.
///   root       = the first (most significant) 24 bytes of the 32-byte top node.
///
/// A leaf hashes 32 bytes and a node 64, so no inner node can pass for a leaf. Pairs are sorted,
/// as in OpenZeppelin's MerkleProof, so a proof is just the sibling hashes from the leaf up to
/// the top, with no left/right flags. A one-leaf batch has top node = leaf(c) and an empty proof.
/// The contract fixes only the hashing, not the tree's shape: any tree built with `node` works,
/// provided its proofs have at most `MAX_PROOF_LENGTH` (32) siblings.
///
/// Zero keys (since 1.2.0): `stamp` refuses a zero token and `anchor` a zero batch id. The agent
/// never makes either (a token is a keccak output, a batch id 32 random bytes), so a zero key
/// comes only from a caller that left it unset (a default value, a failed decode). Accepted, the
/// first such call would succeed silently and take the key for good, and every later one fail
/// with `AlreadyStamped`/`AlreadyAnchored`, which points away from the bug; refused, the bug
/// shows at its first call with an error that names it. Zero thus never has a record: `getStamp`
/// and `getAnchor` return zeros for it and `verifyStamp` false, as for any key never written.
interface IStampRegistry {
    /// @notice One stamp; packed into one storage slot.
    struct Stamp {
        // Truncated hash of the canonicalised message parts, chosen by the writer. Never zero.
        bytes24 commitment;
        // block.timestamp when the stamp was recorded.
        uint64 time;
    }

    /// @notice One anchored batch root; packed into one storage slot.
    struct Anchor {
        // First 24 bytes of the Merkle root of the batch's leaves (see above). Never zero.
        bytes24 root;
        // block.timestamp when the batch was anchored.
        uint64 time;
    }

    /// @notice Emitted when `writer` records `commitment` under `token`.
    /// @param writer The account that recorded the stamp (`msg.sender`).
    /// @param token The per-message token the stamp is filed under.
    /// @param commitment The recorded commitment.
    event Stamped(address indexed writer, bytes32 indexed token, bytes24 commitment);

    /// @notice Emitted when `writer` anchors the batch `batchId` with Merkle root `root`.
    /// @param writer The account that anchored the batch (`msg.sender`).
    /// @param batchId The batch identifier the root is filed under.
    /// @param root The anchored root (first 24 bytes of the tree's top node).
    /// @param size The number of leaves in the batch as stated by the writer; not stored and not
    /// checked, for explorers and indexers only.
    event Anchored(address indexed writer, bytes32 indexed batchId, bytes24 root, uint32 size);

    /// @notice `writer` already recorded a stamp under `token`; stamps are write-once.
    error StampRegistry_AlreadyStamped(address writer, bytes32 token);

    /// @notice The commitment is zero, which `getStamp` uses to mean "no stamp".
    error StampRegistry_ZeroCommitment();

    /// @notice `writer` already anchored a batch under `batchId`; anchors are write-once.
    error StampRegistry_AlreadyAnchored(address writer, bytes32 batchId);

    /// @notice The root is zero, which `getAnchor` uses to mean "no anchor".
    error StampRegistry_ZeroRoot();

    /// @notice The batch size is zero; a batch holds at least one commitment.
    error StampRegistry_EmptyBatch();

    /// @notice The token is zero: an unset value, never a token the agent makes (a keccak output).
    error StampRegistry_ZeroToken();

    /// @notice The batch id is zero: an unset value, never a batch id the agent makes (32 random
    /// bytes).
    error StampRegistry_ZeroBatchId();

    /// @notice The proof has `length` siblings, more than `maxLength` (`MAX_PROOF_LENGTH`): no
    /// batch the registry can anchor needs that many, so the query is malformed.
    error StampRegistry_ProofTooLong(uint256 length, uint256 maxLength);

    /// @notice Records `commitment` under (`msg.sender`, `token`) with the current block time.
    /// @dev Reverts with `StampRegistry_ZeroToken` for a zero token, `StampRegistry_ZeroCommitment`
    /// for a zero commitment and `StampRegistry_AlreadyStamped` if the caller already stamped
    /// `token`. Emits `Stamped`.
    /// @param token The per-message token to file the stamp under; must not be zero.
    /// @param commitment The commitment to the message; must not be zero.
    function stamp(bytes32 token, bytes24 commitment) external;

    /// @notice Returns the stamp that `writer` recorded under `token`.
    /// @param writer The account that recorded the stamp.
    /// @param token The per-message token.
    /// @return commitment The recorded commitment, or zero if there is no stamp.
    /// @return time The block time of the stamp, or zero if there is no stamp.
    function getStamp(address writer, bytes32 token)
        external
        view
        returns (bytes24 commitment, uint64 time);

    /// @notice Records the Merkle root of a batch under (`msg.sender`, `batchId`) with the
    /// current block time: one storage slot for the whole batch.
    /// @dev Reverts with `StampRegistry_ZeroBatchId` for a zero batch id, `StampRegistry_ZeroRoot`
    /// for a zero root, `StampRegistry_EmptyBatch` for a zero size, and
    /// `StampRegistry_AlreadyAnchored` if the caller already anchored `batchId`. Emits `Anchored`.
    /// Batch ids and stamp tokens are separate key spaces.
    /// @param batchId The batch identifier to file the root under; must not be zero.
    /// @param root The first 24 bytes of the batch's Merkle root; must not be zero.
    /// @param size The number of leaves in the batch; must not be zero. Only emitted.
    function anchor(bytes32 batchId, bytes24 root, uint32 size) external;

    /// @notice Returns the anchor that `writer` recorded under `batchId`.
    /// @param writer The account that anchored the batch.
    /// @param batchId The batch identifier.
    /// @return root The anchored root, or zero if there is no anchor.
    /// @return time The block time of the anchor, or zero if there is no anchor.
    function getAnchor(address writer, bytes32 batchId)
        external
        view
        returns (bytes24 root, uint64 time);

    /// @notice Whether `commitment` is a leaf of the batch `writer` anchored under `batchId`.
    /// @dev Computes h = leaf(commitment), then h = node(h, p) for each p in `proof` in order,
    /// and returns true iff an anchor exists and the first 24 bytes of h equal its root (see the
    /// contract-level notes for leaf and node). A wrong proof, commitment, writer or batch id
    /// (zero included) gives false, never a revert. The one revert is
    /// `StampRegistry_ProofTooLong` for a proof of more than `MAX_PROOF_LENGTH` (32) siblings,
    /// whether or not the batch exists: no anchorable batch has such a proof, so the query is
    /// malformed rather than wrong, and a named error tells an auditor so where false would read
    /// as "this message is not in the batch".
    /// @param writer The account that anchored the batch.
    /// @param batchId The batch identifier.
    /// @param commitment The message's commitment (the leaf before hashing).
    /// @param proof The sibling hashes from the leaf up to the top; empty for a one-leaf batch;
    /// at most `MAX_PROOF_LENGTH` (32) of them.
    /// @return True iff the proof leads from `commitment` to the anchored root.
    function verifyStamp(
        address writer,
        bytes32 batchId,
        bytes24 commitment,
        bytes32[] calldata proof
    ) external view returns (bool);

    /// @notice The version of this registry's interface and behaviour.
    /// @return The semantic version, "1.2.0".
    function version() external pure returns (string memory);
}
