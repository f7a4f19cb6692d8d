// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IStampRegistry} from "./IStampRegistry.sol";

/// @title StampRegistry
/// @notice Write-once registry of mail stamps keyed by (writer, token). See {IStampRegistry}.
/// @dev No owner, no upgrade path, no fees: one fresh storage slot and one event per stamp.
contract StampRegistry is IStampRegistry {
    /// @dev Stamps by writer, then by token. A zero commitment means "no stamp".
    mapping(address writer => mapping(bytes32 token => Stamp stamp)) private _stamps;

    /// @inheritdoc IStampRegistry
    function stamp(bytes32 token, bytes24 commitment) external {
        if (commitment == bytes24(0)) revert StampRegistry_ZeroCommitment();
        Stamp storage slot = _stamps[msg.sender][token];
        if (slot.commitment != bytes24(0)) {
            revert StampRegistry_AlreadyStamped(msg.sender, token);
        }
        // Both fields share one slot; writing them through the pointer skips a second
        // keccak of the key (~230 gas less per stamp than assigning a struct literal).
        slot.commitment = commitment;
        slot.time = uint64(block.timestamp);
        emit Stamped(msg.sender, token, commitment);
    }

    /// @inheritdoc IStampRegistry
    function getStamp(address writer, bytes32 token)
        external
        view
        returns (bytes24 commitment, uint64 time)
    {
        Stamp storage s = _stamps[writer][token];
        return (s.commitment, s.time);
    }

    /// @inheritdoc IStampRegistry
    function version() external pure returns (string memory) {
        return "1.0.0";
    }
}
