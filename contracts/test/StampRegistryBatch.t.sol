// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IStampRegistry, MAX_PROOF_LENGTH} from "../src/IStampRegistry.sol";
import {StampRegistry} from "../src/StampRegistry.sol";
import {MerkleTree} from "./MerkleTree.sol";
import {Test} from "forge-std/Test.sol";

contract StampRegistryBatchTest is Test {
    StampRegistry internal registry;

    address internal alice = makeAddr("alice");
    address internal bob = makeAddr("bob");
    bytes32 internal constant BATCH = keccak256("batch-1");
    bytes24 internal constant ROOT = bytes24(keccak256("root-1"));

    function setUp() public {
        registry = new StampRegistry();
        vm.warp(1_700_000_000);
    }

    /// @dev Anchors a tree of `size` commitments from `seed` as `writer` under `batchId`.
    function _anchorTree(address writer, bytes32 batchId, uint256 seed, uint256 size)
        internal
        returns (bytes24[] memory cs, bytes32[][] memory levels)
    {
        cs = MerkleTree.commitments(seed, size);
        levels = MerkleTree.build(cs);
        vm.prank(writer);
        // Callers pass at most 1,024 leaves.
        // forge-lint: disable-next-line(unsafe-typecast)
        registry.anchor(batchId, MerkleTree.root(levels), uint32(size));
    }

    function _verify(address writer, bytes32 batchId, bytes24 commitment, bytes32[] memory proof)
        internal
        view
        returns (bool)
    {
        return registry.verifyStamp(writer, batchId, commitment, proof);
    }

    // ---- anchor / getAnchor

    function test_Anchor_RecordsRootAndTime() public {
        vm.prank(alice);
        registry.anchor(BATCH, ROOT, 16);

        (bytes24 root, uint64 time) = registry.getAnchor(alice, BATCH);
        assertEq(root, ROOT);
        assertEq(time, 1_700_000_000);
    }

    function test_Anchor_EmitsAnchored() public {
        vm.expectEmit(true, true, false, true, address(registry));
        emit IStampRegistry.Anchored(alice, BATCH, ROOT, 1024);
        vm.prank(alice);
        registry.anchor(BATCH, ROOT, 1024);
    }

    function test_GetAnchor_ReturnsZerosForNone() public {
        (bytes24 root, uint64 time) = registry.getAnchor(alice, BATCH);
        assertEq(root, bytes24(0));
        assertEq(time, 0);

        vm.prank(alice);
        registry.anchor(BATCH, ROOT, 1);
        (root, time) = registry.getAnchor(alice, bytes32(uint256(BATCH) + 1));
        assertEq(root, bytes24(0));
        assertEq(time, 0);
        (root, time) = registry.getAnchor(bob, BATCH);
        assertEq(root, bytes24(0));
        assertEq(time, 0);
    }

    function test_Anchor_StampsAndAnchorsAreSeparateKeySpaces() public {
        vm.prank(alice);
        registry.anchor(BATCH, ROOT, 1);
        (bytes24 commitment,) = registry.getStamp(alice, BATCH);
        assertEq(commitment, bytes24(0));

        // The same bytes32 used as a stamp token is still free, and stamping it leaves the
        // anchor as it was.
        vm.prank(alice);
        registry.stamp(BATCH, bytes24(keccak256("commitment")));
        (bytes24 root, uint64 time) = registry.getAnchor(alice, BATCH);
        assertEq(root, ROOT);
        assertEq(time, 1_700_000_000);
    }

    function test_Anchor_IndependentWritersShareBatchId() public {
        bytes24 other = bytes24(keccak256("root-2"));

        vm.prank(alice);
        registry.anchor(BATCH, ROOT, 4);
        vm.warp(1_700_000_060);
        vm.expectEmit(true, true, false, true, address(registry));
        emit IStampRegistry.Anchored(bob, BATCH, other, 8);
        vm.prank(bob);
        registry.anchor(BATCH, other, 8);

        (bytes24 a, uint64 aTime) = registry.getAnchor(alice, BATCH);
        (bytes24 b, uint64 bTime) = registry.getAnchor(bob, BATCH);
        assertEq(a, ROOT);
        assertEq(aTime, 1_700_000_000);
        assertEq(b, other);
        assertEq(bTime, 1_700_000_060);
    }

    function test_RevertWhen_AnchoringTheSameBatchTwice() public {
        vm.prank(alice);
        registry.anchor(BATCH, ROOT, 2);

        vm.warp(1_700_000_060);
        vm.expectRevert(
            abi.encodeWithSelector(
                IStampRegistry.StampRegistry_AlreadyAnchored.selector, alice, BATCH
            )
        );
        vm.prank(alice);
        registry.anchor(BATCH, bytes24(keccak256("a different root")), 3);

        (bytes24 root, uint64 time) = registry.getAnchor(alice, BATCH);
        assertEq(root, ROOT);
        assertEq(time, 1_700_000_000);
    }

    function test_RevertWhen_RootIsZero() public {
        vm.expectRevert(IStampRegistry.StampRegistry_ZeroRoot.selector);
        vm.prank(alice);
        registry.anchor(BATCH, bytes24(0), 1);

        (bytes24 root,) = registry.getAnchor(alice, BATCH);
        assertEq(root, bytes24(0));
    }

    function test_RevertWhen_BatchIsEmpty() public {
        vm.expectRevert(IStampRegistry.StampRegistry_EmptyBatch.selector);
        vm.prank(alice);
        registry.anchor(BATCH, ROOT, 0);

        (bytes24 root,) = registry.getAnchor(alice, BATCH);
        assertEq(root, bytes24(0));
    }

    function test_RevertWhen_BatchIdIsZero() public {
        vm.expectRevert(IStampRegistry.StampRegistry_ZeroBatchId.selector);
        vm.prank(alice);
        registry.anchor(bytes32(0), ROOT, 1);

        // Checked first: with every argument invalid the batch id is named.
        vm.expectRevert(IStampRegistry.StampRegistry_ZeroBatchId.selector);
        vm.prank(alice);
        registry.anchor(bytes32(0), bytes24(0), 0);

        (bytes24 root, uint64 time) = registry.getAnchor(alice, bytes32(0));
        assertEq(root, bytes24(0));
        assertEq(time, 0);
    }

    function testFuzz_RevertWhen_BatchIdIsZero(address writer, bytes24 root, uint32 size) public {
        vm.expectRevert(IStampRegistry.StampRegistry_ZeroBatchId.selector);
        vm.prank(writer);
        registry.anchor(bytes32(0), root, size);
    }

    // ---- verifyStamp

    function test_VerifyStamp_SingleLeafBatch() public {
        bytes24 commitment = bytes24(keccak256("only message"));
        bytes24 root = bytes24(keccak256(abi.encode(commitment)));
        vm.prank(alice);
        registry.anchor(BATCH, root, 1);

        bytes32[] memory empty = new bytes32[](0);
        assertTrue(_verify(alice, BATCH, commitment, empty));
        assertFalse(_verify(alice, BATCH, bytes24(keccak256("another message")), empty));
        assertFalse(_verify(bob, BATCH, commitment, empty));
    }

    /// @dev Hashes computed outside Solidity (`cast keccak`) for commitments 1, 2, 3 (as
    /// uint192): the same vector pins the Rust tree builder to the contract.
    function test_VerifyStamp_KnownAnswer() public {
        bytes24[] memory cs = new bytes24[](3);
        cs[0] = bytes24(uint192(1));
        cs[1] = bytes24(uint192(2));
        cs[2] = bytes24(uint192(3));
        bytes32 leaf0 = 0xd0efa0dfe4ed9e53ca9d02cb3744c3f0317da5057735ae4b2fec135adffb2c35;
        bytes32 leaf1 = 0x97dcd8435292fec7b0037ce4db0bbdd62e290b0b1c1a9dc1f2bdea360ac3b9e0;
        bytes32 leaf2 = 0x375546a76337673f65dfa4ff8ea6b5032ec099ce600e963fb6b05f3b5b26a0af;
        bytes32 node01 = 0x31e4db2cd466beab9298013681971bef3bde229ac44cd20f00608fdc8c4d4927;
        bytes24 root = 0x822cca8e11289c26249dfd9b27606a86100c49f6817c9056;

        bytes32[][] memory levels = MerkleTree.build(cs);
        assertEq(levels[0][0], leaf0);
        assertEq(levels[0][1], leaf1);
        assertEq(levels[0][2], leaf2);
        assertEq(levels[1][0], node01);
        assertEq(MerkleTree.root(levels), root);

        vm.prank(alice);
        registry.anchor(BATCH, root, 3);
        bytes32[] memory proof = new bytes32[](2);
        proof[0] = leaf1;
        proof[1] = leaf2;
        assertTrue(_verify(alice, BATCH, cs[0], proof));
        proof[0] = leaf0;
        assertTrue(_verify(alice, BATCH, cs[1], proof));
        // The odd third leaf was carried up: its proof is the single node above the first two.
        bytes32[] memory short = new bytes32[](1);
        short[0] = node01;
        assertTrue(_verify(alice, BATCH, cs[2], short));
    }

    function test_VerifyStamp_FalseWithoutAnchor() public view {
        bytes32[] memory empty = new bytes32[](0);
        assertFalse(_verify(alice, BATCH, bytes24(0), empty));
        assertFalse(_verify(alice, BATCH, bytes24(keccak256("message")), empty));
        // The zero batch id can never be anchored: a question about it is answered, with false.
        assertFalse(_verify(alice, bytes32(0), bytes24(keccak256("message")), empty));
        assertFalse(_verify(alice, bytes32(0), bytes24(keccak256("message")), _path(1, 32)));
    }

    /// @dev A proof of exactly MAX_PROOF_LENGTH siblings is accepted and verifies: the bound is
    /// inclusive, and a path that long (a lopsided tree) is still only hashing.
    function test_VerifyStamp_ProofOfMaxLength() public {
        bytes24 commitment = bytes24(keccak256("deep message"));
        bytes32[] memory proof = _path(2, MAX_PROOF_LENGTH);
        vm.prank(alice);
        registry.anchor(BATCH, _rootOf(commitment, proof), type(uint32).max);

        assertTrue(_verify(alice, BATCH, commitment, proof));
        proof[MAX_PROOF_LENGTH - 1] ^= bytes32(uint256(1));
        assertFalse(_verify(alice, BATCH, commitment, proof));
    }

    /// @dev One sibling more than MAX_PROOF_LENGTH is refused with a named error, not false,
    /// even for a proof that would lead to the anchored root and for a batch that does not
    /// exist: the length is checked before anything else.
    function test_RevertWhen_ProofIsTooLong() public {
        bytes24 commitment = bytes24(keccak256("too deep"));
        bytes32[] memory proof = _path(3, MAX_PROOF_LENGTH + 1);
        vm.prank(alice);
        registry.anchor(BATCH, _rootOf(commitment, proof), type(uint32).max);

        vm.expectRevert(
            abi.encodeWithSelector(
                IStampRegistry.StampRegistry_ProofTooLong.selector,
                MAX_PROOF_LENGTH + 1,
                MAX_PROOF_LENGTH
            )
        );
        registry.verifyStamp(alice, BATCH, commitment, proof);

        vm.expectRevert(
            abi.encodeWithSelector(
                IStampRegistry.StampRegistry_ProofTooLong.selector,
                MAX_PROOF_LENGTH + 1,
                MAX_PROOF_LENGTH
            )
        );
        registry.verifyStamp(bob, BATCH, commitment, proof);
    }

    function testFuzz_RevertWhen_ProofIsTooLong(
        address writer,
        bytes32 batchId,
        bytes24 commitment,
        uint256 rawLength
    ) public {
        uint256 length = _bound(rawLength, MAX_PROOF_LENGTH + 1, 1024);
        // Zeros: the length is checked before any element is read.
        bytes32[] memory proof = new bytes32[](length);
        vm.expectRevert(
            abi.encodeWithSelector(
                IStampRegistry.StampRegistry_ProofTooLong.selector, length, MAX_PROOF_LENGTH
            )
        );
        registry.verifyStamp(writer, batchId, commitment, proof);
    }

    /// @dev `length` pseudo-random sibling hashes: the path of a leaf at the bottom of a
    /// lopsided tree, each sibling standing for a whole subtree.
    function _path(uint256 seed, uint256 length) internal pure returns (bytes32[] memory proof) {
        proof = new bytes32[](length);
        for (uint256 i = 0; i < length; i++) {
            proof[i] = keccak256(abi.encode("sibling", seed, i));
        }
    }

    /// @dev The root `proof` leads to from `commitment`, with the test's own hashing.
    function _rootOf(bytes24 commitment, bytes32[] memory proof) internal pure returns (bytes24) {
        bytes32 h = MerkleTree.leafHash(commitment);
        for (uint256 i = 0; i < proof.length; i++) {
            h = MerkleTree.nodeHash(h, proof[i]);
        }
        // Truncation is the definition of the root.
        // forge-lint: disable-next-line(unsafe-typecast)
        return bytes24(h);
    }

    /// @dev An inner node presented as a leaf (its first 24 bytes as the commitment, with the
    /// rest of the path as the proof) does not verify: leaves hash 32 bytes, nodes 64.
    function test_VerifyStamp_InnerNodeIsNotALeaf() public {
        (, bytes32[][] memory levels) = _anchorTree(alice, BATCH, 7, 4);
        bytes32[] memory upper = new bytes32[](1);
        upper[0] = levels[1][1];
        assertFalse(_verify(alice, BATCH, bytes24(levels[1][0]), upper));
        // ... and neither does the top node with an empty proof.
        assertFalse(_verify(alice, BATCH, bytes24(levels[2][0]), new bytes32[](0)));
    }

    /// @dev Gas of verifyStamp (the call frame, as in the gas report; cold storage) for one proof
    /// of each depth; scripts/contracts-test prints these lines.
    function test_VerifyStamp_GasByDepth() public {
        uint256[4] memory sizes = [uint256(1), 16, 256, 1024];
        for (uint256 i = 0; i < sizes.length; i++) {
            bytes32 batchId = keccak256(abi.encode("gas", i));
            (bytes24[] memory cs, bytes32[][] memory levels) =
                _anchorTree(alice, batchId, i, sizes[i]);
            bytes32[] memory proof = MerkleTree.proof(levels, sizes[i] - 1);
            // As in a fresh eth_call: the anchor's slot has not been touched yet.
            vm.cool(address(registry));
            assertTrue(registry.verifyStamp(alice, batchId, cs[sizes[i] - 1], proof));
            emit log_named_uint(
                string.concat("verifyStamp gas, depth ", vm.toString(proof.length)),
                vm.lastCallGas().gasTotalUsed
            );
        }
        // The agent's largest batch (65,536 leaves) and the registry's bound, as lopsided paths:
        // the cost depends only on the proof's length.
        uint256[2] memory depths = [uint256(16), MAX_PROOF_LENGTH];
        for (uint256 i = 0; i < depths.length; i++) {
            bytes32 batchId = keccak256(abi.encode("gas path", i));
            bytes24 commitment = bytes24(keccak256(abi.encode("gas path commitment", i)));
            bytes32[] memory proof = _path(i, depths[i]);
            vm.prank(alice);
            registry.anchor(batchId, _rootOf(commitment, proof), uint32(1) << 16);
            vm.cool(address(registry));
            assertTrue(registry.verifyStamp(alice, batchId, commitment, proof));
            emit log_named_uint(
                string.concat("verifyStamp gas, depth ", vm.toString(proof.length)),
                vm.lastCallGas().gasTotalUsed
            );
        }
    }

    // ---- fuzz

    function testFuzz_Anchor(
        address writer,
        bytes32 batchId,
        uint192 rawRoot,
        uint32 rawSize,
        uint256 time
    ) public {
        batchId = _nonZero(batchId);
        bytes24 root = bytes24(uint192(bound(rawRoot, 1, type(uint192).max)));
        uint32 size = uint32(bound(rawSize, 1, type(uint32).max));
        time = bound(time, 1, type(uint64).max);
        vm.warp(time);

        vm.expectEmit(true, true, false, true, address(registry));
        emit IStampRegistry.Anchored(writer, batchId, root, size);
        vm.prank(writer);
        registry.anchor(batchId, root, size);

        (bytes24 got, uint64 gotTime) = registry.getAnchor(writer, batchId);
        assertEq(got, root);
        assertEq(gotTime, time);
    }

    function testFuzz_RevertWhen_AnchoringTheSameBatchTwice(
        address writer,
        bytes32 batchId,
        uint192 first,
        uint192 second
    ) public {
        batchId = _nonZero(batchId);
        bytes24 a = bytes24(uint192(bound(first, 1, type(uint192).max)));
        bytes24 b = bytes24(uint192(bound(second, 1, type(uint192).max)));
        vm.prank(writer);
        registry.anchor(batchId, a, 1);

        vm.expectRevert(
            abi.encodeWithSelector(
                IStampRegistry.StampRegistry_AlreadyAnchored.selector, writer, batchId
            )
        );
        vm.prank(writer);
        registry.anchor(batchId, b, 1);

        (bytes24 got,) = registry.getAnchor(writer, batchId);
        assertEq(got, a);
    }

    /// @dev A tree of 1…1024 random commitments: a sample of up to 64 leaves (all of them for
    /// small trees, always the first and the last) verify with their proofs; a wrong leaf, a
    /// flipped proof bit, a dropped proof element, a wrong batch id and another writer (who
    /// anchored a different tree under the same batch id) never do.
    function testFuzz_VerifyStamp_TreeSizes(
        uint256 rawSize,
        uint256 seed,
        address writer,
        address other,
        bytes32 batchId
    ) public {
        vm.assume(writer != other);
        batchId = _nonZero(batchId);
        uint256 size = bound(rawSize, 1, 1024);
        (bytes24[] memory cs, bytes32[][] memory levels) = _anchorTree(writer, batchId, seed, size);
        _anchorTree(other, batchId, ~seed, size);
        Key memory key = Key({writer: writer, other: other, batchId: batchId});

        uint256 samples = size < 64 ? size : 64;
        for (uint256 j = 0; j < samples; j++) {
            uint256 i;
            if (samples == size) i = j;
            else if (j == 0) i = 0;
            else if (j == 1) i = size - 1;
            else i = uint256(keccak256(abi.encode(seed, "pick", j))) % size;
            _checkLeaf(key, cs[i], MerkleTree.proof(levels, i), keccak256(abi.encode(seed, j)));
        }
    }

    /// @dev Any fuzzed batch id but zero, which `anchor` refuses (the fuzzer tries zero often).
    /// `_bound` is the silent `bound`: no log line per run under -vv.
    function _nonZero(bytes32 key) internal pure returns (bytes32) {
        return bytes32(_bound(uint256(key), 1, type(uint256).max));
    }

    /// @dev Who anchored what in testFuzz_VerifyStamp_TreeSizes (a struct keeps the stack small).
    struct Key {
        address writer;
        address other;
        bytes32 batchId;
    }

    /// @dev `c` verifies with `proof` under key.writer only, and no single change to it does.
    function _checkLeaf(Key memory key, bytes24 c, bytes32[] memory proof, bytes32 salt)
        internal
        view
    {
        assertTrue(_verify(key.writer, key.batchId, c, proof), "leaf does not verify");
        bytes32 otherBatch = bytes32(uint256(key.batchId) ^ 1);
        assertFalse(_verify(key.writer, otherBatch, c, proof), "verified under another batch");
        assertFalse(_verify(key.other, key.batchId, c, proof), "verified under another writer");

        uint256 bit = uint256(salt) % 192;
        bytes24 wrong = c ^ bytes24(uint192(1) << bit);
        assertFalse(_verify(key.writer, key.batchId, wrong, proof), "wrong leaf verified");

        if (proof.length > 0) {
            uint256 pos = uint256(keccak256(abi.encode(salt))) % proof.length;
            bytes32 flip = bytes32(uint256(1) << (uint256(salt) >> 248));
            proof[pos] ^= flip;
            assertFalse(_verify(key.writer, key.batchId, c, proof), "flipped proof verified");
            proof[pos] ^= flip;

            bytes32[] memory shorter = new bytes32[](proof.length - 1);
            for (uint256 k = 0; k < shorter.length; k++) {
                shorter[k] = proof[k];
            }
            assertFalse(_verify(key.writer, key.batchId, c, shorter), "short proof verified");
        }
    }
}

/// @dev Drives the batched side of the registry for the invariant test: a few actors anchor
/// small trees (1…16 leaves) under a small pool of batch ids (so keys collide), try invalid
/// anchors, and call verifyStamp with honest, tampered and misdirected proofs. Ghost state
/// mirrors every anchor that succeeded and the commitments its tree holds. `_bound` is the silent
/// form of `bound` (no log line per call under -vv).
contract StampRegistryBatchHandler is Test {
    StampRegistry public immutable registry;

    address[] public actors;
    bytes32[] public batchIds;

    /// @dev What each successful anchor recorded, by the actor that called anchor; zero = never.
    mapping(address writer => mapping(bytes32 batchId => IStampRegistry.Anchor anchor)) public
        ghostAnchors;
    /// @dev The commitments of each anchored tree, in leaf order.
    mapping(address writer => mapping(bytes32 batchId => bytes24[] commitments)) internal
        _ghostLeaves;
    uint256 public ghostAnchorCount;
    /// @dev verifyStamp said true for a commitment that is not in that writer's batch.
    uint256 public ghostFalsePositives;
    /// @dev verifyStamp said false for an honest proof of a leaf of that writer's batch.
    uint256 public ghostFalseNegatives;
    /// @dev How many verifyStamp calls said true (every anchor checks all its leaves at once).
    uint256 public ghostVerified;

    constructor(StampRegistry registry_) {
        registry = registry_;
        for (uint256 i = 0; i < 3; i++) {
            actors.push(makeAddr(string.concat("actor-", vm.toString(i))));
        }
        for (uint256 i = 0; i < 4; i++) {
            batchIds.push(keccak256(abi.encode("batch", i)));
        }
    }

    function anchor(
        uint256 actorSeed,
        uint256 batchSeed,
        uint256 sizeSeed,
        uint256 seed,
        uint256 warpBy
    ) external {
        address actor = actors[_bound(actorSeed, 0, actors.length - 1)];
        bytes32 batchId = batchIds[_bound(batchSeed, 0, batchIds.length - 1)];
        uint256 size = _bound(sizeSeed, 1, 16);
        bytes24[] memory cs = MerkleTree.commitments(seed, size);
        bytes32[][] memory levels = MerkleTree.build(cs);
        bytes24 root = MerkleTree.root(levels);
        vm.warp(block.timestamp + _bound(warpBy, 0, 1 days));

        vm.prank(actor);
        // size is bounded to 1…16 above.
        // forge-lint: disable-next-line(unsafe-typecast)
        try registry.anchor(batchId, root, uint32(size)) {
            assertEq(ghostAnchors[actor][batchId].root, bytes24(0), "anchored a taken key");
            ghostAnchors[actor][batchId] =
                IStampRegistry.Anchor({root: root, time: uint64(block.timestamp)});
            ghostAnchorCount++;
            for (uint256 i = 0; i < size; i++) {
                _ghostLeaves[actor][batchId].push(cs[i]);
                bool ok = registry.verifyStamp(actor, batchId, cs[i], MerkleTree.proof(levels, i));
                if (ok) ghostVerified++;
                else ghostFalseNegatives++;
            }
        } catch (bytes memory reason) {
            assertNotEq(ghostAnchors[actor][batchId].root, bytes24(0), "refused a free key");
            assertEq(
                reason,
                abi.encodeWithSelector(
                    IStampRegistry.StampRegistry_AlreadyAnchored.selector, actor, batchId
                )
            );
        }
    }

    function anchorInvalid(uint256 actorSeed, uint256 batchSeed, uint192 rawRoot, bool zeroRoot)
        external
    {
        address actor = actors[_bound(actorSeed, 0, actors.length - 1)];
        bytes32 batchId = batchIds[_bound(batchSeed, 0, batchIds.length - 1)];
        bytes24 root =
            zeroRoot ? bytes24(0) : bytes24(uint192(_bound(rawRoot, 1, type(uint192).max)));
        uint32 size = zeroRoot ? 1 : 0;

        vm.prank(actor);
        try registry.anchor(batchId, root, size) {
            revert("invalid anchor accepted");
        } catch (bytes memory reason) {
            assertEq(
                reason,
                zeroRoot
                    ? abi.encodeWithSelector(IStampRegistry.StampRegistry_ZeroRoot.selector)
                    : abi.encodeWithSelector(IStampRegistry.StampRegistry_EmptyBatch.selector)
            );
        }
    }

    /// @dev Takes a leaf and its honest proof from one (writer, batch) — or a random commitment
    /// with no proof when that batch does not exist — optionally tampers with it (mode 1: flip a
    /// commitment bit, 2: flip a proof bit, 3: drop the last proof element), and asks about the
    /// same (writer, batch) or, when `misdirect`, a random one.
    function verify(
        uint256 fromActorSeed,
        uint256 fromBatchSeed,
        bool misdirect,
        uint256 toActorSeed,
        uint256 toBatchSeed,
        uint256 leafSeed,
        uint256 mode
    ) external {
        address from = actors[_bound(fromActorSeed, 0, actors.length - 1)];
        bytes32 fromBatch = batchIds[_bound(fromBatchSeed, 0, batchIds.length - 1)];
        address to = misdirect ? actors[_bound(toActorSeed, 0, actors.length - 1)] : from;
        bytes32 toBatch =
            misdirect ? batchIds[_bound(toBatchSeed, 0, batchIds.length - 1)] : fromBatch;
        mode = _bound(mode, 0, 3);

        bytes24[] memory cs = _ghostLeaves[from][fromBatch];
        bytes24 commitment;
        bytes32[] memory proof;
        if (cs.length == 0) {
            commitment = bytes24(keccak256(abi.encode("stray", leafSeed)));
            proof = new bytes32[](0);
        } else {
            uint256 i = _bound(leafSeed, 0, cs.length - 1);
            commitment = cs[i];
            proof = MerkleTree.proof(MerkleTree.build(cs), i);
        }
        uint256 bit = leafSeed % 192;
        if (mode == 1) {
            commitment ^= bytes24(uint192(1) << bit);
        } else if (mode == 2 && proof.length > 0) {
            proof[proof.length - 1] ^= bytes32(uint256(1) << bit);
        } else if (mode == 3 && proof.length > 0) {
            bytes32[] memory shorter = new bytes32[](proof.length - 1);
            for (uint256 k = 0; k < shorter.length; k++) {
                shorter[k] = proof[k];
            }
            proof = shorter;
        } else {
            mode = 0;
        }

        bool ok = registry.verifyStamp(to, toBatch, commitment, proof);
        if (ok) {
            ghostVerified++;
            if (!_isLeaf(to, toBatch, commitment)) ghostFalsePositives++;
        } else if (mode == 0 && cs.length > 0 && from == to && fromBatch == toBatch) {
            ghostFalseNegatives++;
        }
    }

    function _isLeaf(address writer, bytes32 batchId, bytes24 commitment)
        internal
        view
        returns (bool)
    {
        bytes24[] storage cs = _ghostLeaves[writer][batchId];
        for (uint256 i = 0; i < cs.length; i++) {
            if (cs[i] == commitment) return true;
        }
        return false;
    }

    function actorCount() external view returns (uint256) {
        return actors.length;
    }

    function batchCount() external view returns (uint256) {
        return batchIds.length;
    }
}

contract StampRegistryBatchInvariantTest is Test {
    StampRegistry internal registry;
    StampRegistryBatchHandler internal handler;

    function setUp() public {
        registry = new StampRegistry();
        handler = new StampRegistryBatchHandler(registry);

        bytes4[] memory selectors = new bytes4[](3);
        selectors[0] = StampRegistryBatchHandler.anchor.selector;
        selectors[1] = StampRegistryBatchHandler.anchorInvalid.selector;
        selectors[2] = StampRegistryBatchHandler.verify.selector;
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
        targetContract(address(handler));
    }

    /// @dev An anchor never changes: the registry always returns what the first successful
    /// anchor wrote.
    function invariant_AnchorsNeverChange() public view {
        for (uint256 i = 0; i < handler.actorCount(); i++) {
            address actor = handler.actors(i);
            for (uint256 j = 0; j < handler.batchCount(); j++) {
                bytes32 batchId = handler.batchIds(j);
                (bytes24 ghost, uint64 ghostTime) = handler.ghostAnchors(actor, batchId);
                (bytes24 root, uint64 time) = registry.getAnchor(actor, batchId);
                assertEq(root, ghost);
                assertEq(time, ghostTime);
            }
        }
    }

    /// @dev An anchor under (w, b) exists only if w itself called anchor(b, …): no other account,
    /// the handler that forwards the calls included, ever gets one.
    function invariant_AnchorExistsOnlyForItsWriter() public view {
        uint256 anchored = 0;
        for (uint256 j = 0; j < handler.batchCount(); j++) {
            bytes32 batchId = handler.batchIds(j);
            for (uint256 i = 0; i < handler.actorCount(); i++) {
                (bytes24 root,) = registry.getAnchor(handler.actors(i), batchId);
                if (root != bytes24(0)) anchored++;
            }
            (bytes24 viaHandler,) = registry.getAnchor(address(handler), batchId);
            (bytes24 viaTest,) = registry.getAnchor(address(this), batchId);
            assertEq(viaHandler, bytes24(0));
            assertEq(viaTest, bytes24(0));
        }
        assertEq(anchored, handler.ghostAnchorCount());
    }

    /// @dev verifyStamp says true only for a commitment the writer put in that batch, and
    /// always for an honest proof of one.
    function invariant_VerifiedCommitmentIsInTheWritersBatch() public view {
        assertEq(handler.ghostFalsePositives(), 0, "verified a commitment not in the batch");
        assertEq(handler.ghostFalseNegatives(), 0, "refused an honest proof");
        // Every successful anchor verified at least its own leaves.
        assertGe(handler.ghostVerified(), handler.ghostAnchorCount());
    }
}
