// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IStampRegistry} from "../src/IStampRegistry.sol";
import {StampRegistry} from "../src/StampRegistry.sol";
import {Test} from "forge-std/Test.sol";

contract StampRegistryTest is Test {
    StampRegistry internal registry;

    address internal alice = makeAddr("alice");
    address internal bob = makeAddr("bob");
    bytes32 internal constant TOKEN = keccak256("message-1");
    bytes24 internal constant COMMITMENT = bytes24(keccak256("commitment-1"));

    function setUp() public {
        registry = new StampRegistry();
        vm.warp(1_700_000_000);
    }

    function test_Stamp_RecordsCommitmentAndTime() public {
        vm.prank(alice);
        registry.stamp(TOKEN, COMMITMENT);

        (bytes24 commitment, uint64 time) = registry.getStamp(alice, TOKEN);
        assertEq(commitment, COMMITMENT);
        assertEq(time, 1_700_000_000);
    }

    function test_Stamp_EmitsStamped() public {
        vm.expectEmit(true, true, false, true, address(registry));
        emit IStampRegistry.Stamped(alice, TOKEN, COMMITMENT);
        vm.prank(alice);
        registry.stamp(TOKEN, COMMITMENT);
    }

    function test_GetStamp_ReturnsZerosForNone() public {
        (bytes24 commitment, uint64 time) = registry.getStamp(alice, TOKEN);
        assertEq(commitment, bytes24(0));
        assertEq(time, 0);

        // A stamp under one key leaves every other key empty.
        vm.prank(alice);
        registry.stamp(TOKEN, COMMITMENT);
        (commitment, time) = registry.getStamp(alice, bytes32(uint256(TOKEN) + 1));
        assertEq(commitment, bytes24(0));
        assertEq(time, 0);
        (commitment, time) = registry.getStamp(bob, TOKEN);
        assertEq(commitment, bytes24(0));
        assertEq(time, 0);
    }

    function test_Version() public view {
        assertEq(registry.version(), "1.2.0");
    }

    function test_Stamp_IndependentWritersShareToken() public {
        bytes24 other = bytes24(keccak256("commitment-2"));

        vm.prank(alice);
        registry.stamp(TOKEN, COMMITMENT);
        vm.warp(1_700_000_060);
        vm.expectEmit(true, true, false, true, address(registry));
        emit IStampRegistry.Stamped(bob, TOKEN, other);
        vm.prank(bob);
        registry.stamp(TOKEN, other);

        (bytes24 a, uint64 aTime) = registry.getStamp(alice, TOKEN);
        (bytes24 b, uint64 bTime) = registry.getStamp(bob, TOKEN);
        assertEq(a, COMMITMENT);
        assertEq(aTime, 1_700_000_000);
        assertEq(b, other);
        assertEq(bTime, 1_700_000_060);
    }

    function test_RevertWhen_StampingTheSameKeyTwice() public {
        vm.prank(alice);
        registry.stamp(TOKEN, COMMITMENT);

        vm.warp(1_700_000_060);
        vm.expectRevert(
            abi.encodeWithSelector(
                IStampRegistry.StampRegistry_AlreadyStamped.selector, alice, TOKEN
            )
        );
        vm.prank(alice);
        registry.stamp(TOKEN, bytes24(keccak256("a different commitment")));

        (bytes24 commitment, uint64 time) = registry.getStamp(alice, TOKEN);
        assertEq(commitment, COMMITMENT);
        assertEq(time, 1_700_000_000);
    }

    function test_RevertWhen_CommitmentIsZero() public {
        vm.expectRevert(IStampRegistry.StampRegistry_ZeroCommitment.selector);
        vm.prank(alice);
        registry.stamp(TOKEN, bytes24(0));

        (bytes24 commitment,) = registry.getStamp(alice, TOKEN);
        assertEq(commitment, bytes24(0));
    }

    /// @dev A zero token is refused, whatever the commitment, and leaves nothing behind: the
    /// zero key reads as "no stamp" like every key never written.
    function test_RevertWhen_TokenIsZero() public {
        vm.expectRevert(IStampRegistry.StampRegistry_ZeroToken.selector);
        vm.prank(alice);
        registry.stamp(bytes32(0), COMMITMENT);

        // Checked before the commitment: a call with both zero names the token.
        vm.expectRevert(IStampRegistry.StampRegistry_ZeroToken.selector);
        vm.prank(alice);
        registry.stamp(bytes32(0), bytes24(0));

        (bytes24 commitment, uint64 time) = registry.getStamp(alice, bytes32(0));
        assertEq(commitment, bytes24(0));
        assertEq(time, 0);
    }

    function testFuzz_RevertWhen_TokenIsZero(address writer, bytes24 commitment) public {
        vm.expectRevert(IStampRegistry.StampRegistry_ZeroToken.selector);
        vm.prank(writer);
        registry.stamp(bytes32(0), commitment);
    }

    function testFuzz_Stamp(address writer, bytes32 token, uint192 rawCommitment, uint256 time)
        public
    {
        token = _nonZero(token);
        bytes24 commitment = bytes24(uint192(bound(rawCommitment, 1, type(uint192).max)));
        time = bound(time, 1, type(uint64).max);
        vm.warp(time);

        vm.expectEmit(true, true, false, true, address(registry));
        emit IStampRegistry.Stamped(writer, token, commitment);
        vm.prank(writer);
        registry.stamp(token, commitment);

        (bytes24 got, uint64 gotTime) = registry.getStamp(writer, token);
        assertEq(got, commitment);
        assertEq(gotTime, time);
    }

    function testFuzz_RevertWhen_StampingTheSameKeyTwice(
        address writer,
        bytes32 token,
        uint192 first,
        uint192 second
    ) public {
        token = _nonZero(token);
        bytes24 a = bytes24(uint192(bound(first, 1, type(uint192).max)));
        bytes24 b = bytes24(uint192(bound(second, 1, type(uint192).max)));
        vm.prank(writer);
        registry.stamp(token, a);

        vm.expectRevert(
            abi.encodeWithSelector(
                IStampRegistry.StampRegistry_AlreadyStamped.selector, writer, token
            )
        );
        vm.prank(writer);
        registry.stamp(token, b);

        (bytes24 got,) = registry.getStamp(writer, token);
        assertEq(got, a);
    }

    function testFuzz_Stamp_LeavesOtherKeysEmpty(
        address writer,
        bytes32 token,
        address otherWriter,
        bytes32 otherToken
    ) public {
        token = _nonZero(token);
        vm.assume(writer != otherWriter || token != otherToken);
        vm.prank(writer);
        registry.stamp(token, COMMITMENT);

        (bytes24 commitment, uint64 time) = registry.getStamp(otherWriter, otherToken);
        assertEq(commitment, bytes24(0));
        assertEq(time, 0);
    }

    /// @dev Any fuzzed key but zero, which `stamp` refuses (the fuzzer tries zero often).
    /// `_bound` is the silent `bound`: no log line per run under -vv.
    function _nonZero(bytes32 key) internal pure returns (bytes32) {
        return bytes32(_bound(uint256(key), 1, type(uint256).max));
    }
}

/// @dev Drives the registry for the invariant test: a few actors stamp tokens from a small pool
/// (so keys collide and the write-once rule is exercised) while time moves on. Ghost state
/// mirrors every stamp that succeeded. It uses `_bound`, the silent form of `bound`, so that
/// `forge test -vv` does not print a log line per bounded value of every call.
contract StampRegistryHandler is Test {
    StampRegistry public immutable registry;

    address[] public actors;
    bytes32[] public tokens;

    /// @dev What each successful stamp recorded, by the actor that called stamp; zero = never.
    mapping(address writer => mapping(bytes32 token => IStampRegistry.Stamp stamp)) public
        ghostStamps;
    uint256 public ghostStampCount;

    constructor(StampRegistry registry_) {
        registry = registry_;
        for (uint256 i = 0; i < 4; i++) {
            actors.push(makeAddr(string.concat("actor-", vm.toString(i))));
        }
        for (uint256 i = 0; i < 6; i++) {
            tokens.push(keccak256(abi.encode("token", i)));
        }
    }

    function stamp(uint256 actorSeed, uint256 tokenSeed, uint192 rawCommitment, uint256 warpBy)
        external
    {
        address actor = actors[_bound(actorSeed, 0, actors.length - 1)];
        bytes32 token = tokens[_bound(tokenSeed, 0, tokens.length - 1)];
        bytes24 commitment = bytes24(uint192(_bound(rawCommitment, 1, type(uint192).max)));
        vm.warp(block.timestamp + _bound(warpBy, 0, 1 days));

        vm.prank(actor);
        try registry.stamp(token, commitment) {
            assertEq(ghostStamps[actor][token].commitment, bytes24(0), "stamped a taken key");
            ghostStamps[actor][token] =
                IStampRegistry.Stamp({commitment: commitment, time: uint64(block.timestamp)});
            ghostStampCount++;
        } catch (bytes memory reason) {
            assertNotEq(ghostStamps[actor][token].commitment, bytes24(0), "refused a free key");
            assertEq(
                reason,
                abi.encodeWithSelector(
                    IStampRegistry.StampRegistry_AlreadyStamped.selector, actor, token
                )
            );
        }
    }

    function stampZero(uint256 actorSeed, uint256 tokenSeed) external {
        address actor = actors[_bound(actorSeed, 0, actors.length - 1)];
        bytes32 token = tokens[_bound(tokenSeed, 0, tokens.length - 1)];

        vm.prank(actor);
        try registry.stamp(token, bytes24(0)) {
            revert("zero commitment accepted");
        } catch (bytes memory reason) {
            assertEq(
                reason, abi.encodeWithSelector(IStampRegistry.StampRegistry_ZeroCommitment.selector)
            );
        }
    }

    function stampZeroToken(uint256 actorSeed, uint192 rawCommitment) external {
        address actor = actors[_bound(actorSeed, 0, actors.length - 1)];
        bytes24 commitment = bytes24(uint192(_bound(rawCommitment, 1, type(uint192).max)));

        vm.prank(actor);
        try registry.stamp(bytes32(0), commitment) {
            revert("zero token accepted");
        } catch (bytes memory reason) {
            assertEq(
                reason, abi.encodeWithSelector(IStampRegistry.StampRegistry_ZeroToken.selector)
            );
        }
    }

    function actorCount() external view returns (uint256) {
        return actors.length;
    }

    function tokenCount() external view returns (uint256) {
        return tokens.length;
    }
}

contract StampRegistryInvariantTest is Test {
    StampRegistry internal registry;
    StampRegistryHandler internal handler;

    function setUp() public {
        registry = new StampRegistry();
        handler = new StampRegistryHandler(registry);

        bytes4[] memory selectors = new bytes4[](3);
        selectors[0] = StampRegistryHandler.stamp.selector;
        selectors[1] = StampRegistryHandler.stampZero.selector;
        selectors[2] = StampRegistryHandler.stampZeroToken.selector;
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
        targetContract(address(handler));
    }

    /// @dev A recorded stamp never changes: the registry always returns what the first
    /// successful stamp wrote.
    function invariant_RecordedStampsNeverChange() public view {
        for (uint256 i = 0; i < handler.actorCount(); i++) {
            address actor = handler.actors(i);
            for (uint256 j = 0; j < handler.tokenCount(); j++) {
                bytes32 token = handler.tokens(j);
                (bytes24 ghost, uint64 ghostTime) = handler.ghostStamps(actor, token);
                (bytes24 commitment, uint64 time) = registry.getStamp(actor, token);
                assertEq(commitment, ghost);
                assertEq(time, ghostTime);
            }
        }
    }

    /// @dev A stamp under (w, t) exists only if w itself called stamp(t, …): no other account,
    /// the handler that forwards the calls included, ever gets a stamp.
    function invariant_StampExistsOnlyForItsWriter() public view {
        uint256 stamped = 0;
        for (uint256 j = 0; j < handler.tokenCount(); j++) {
            bytes32 token = handler.tokens(j);
            for (uint256 i = 0; i < handler.actorCount(); i++) {
                (bytes24 commitment,) = registry.getStamp(handler.actors(i), token);
                if (commitment != bytes24(0)) stamped++;
            }
            (bytes24 viaHandler,) = registry.getStamp(address(handler), token);
            (bytes24 viaTest,) = registry.getStamp(address(this), token);
            assertEq(viaHandler, bytes24(0));
            assertEq(viaTest, bytes24(0));
        }
        assertEq(stamped, handler.ghostStampCount());
        // The zero token is refused for everyone.
        for (uint256 i = 0; i < handler.actorCount(); i++) {
            (bytes24 zeroKey,) = registry.getStamp(handler.actors(i), bytes32(0));
            assertEq(zeroKey, bytes24(0));
        }
    }
}
