// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title IStampRegistry
/// @notice A write-once public notebook of mail stamps. A sending mail server records, under its
/// own address and a per-message token, a 24-byte commitment to the message; a receiving server
/// looks the stamp up and checks the message it got against it.
/// @dev A stamp is keyed by (writer, token): only `msg.sender` can write under its own key, and a
/// key is written at most once, so a recorded stamp never changes.
interface IStampRegistry {
    /// @notice One stamp; packed into one storage slot.
    struct Stamp {
        // Truncated hash of the canonicalised message parts, chosen by the writer. Never zero.
        bytes24 commitment;
        // block.timestamp when the stamp was recorded.
        uint64 time;
    }

    /// @notice Emitted when `writer` records `commitment` under `token`.
    /// @param writer The account that recorded the stamp (`msg.sender`).
    /// @param token The per-message token the stamp is filed under.
    /// @param commitment The recorded commitment.
    event Stamped(address indexed writer, bytes32 indexed token, bytes24 commitment);

    /// @notice `writer` already recorded a stamp under `token`; stamps are write-once.
    error StampRegistry_AlreadyStamped(address writer, bytes32 token);

    /// @notice The commitment is zero, which `getStamp` uses to mean "no stamp".
    error StampRegistry_ZeroCommitment();

    /// @notice Records `commitment` under (`msg.sender`, `token`) with the current block time.
    /// @dev Reverts with `StampRegistry_ZeroCommitment` for a zero commitment and with
    /// `StampRegistry_AlreadyStamped` if the caller already stamped `token`. Emits `Stamped`.
    /// @param token The per-message token to file the stamp under.
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

    /// @notice The version of this registry's interface and behaviour.
    /// @return The semantic version, "1.0.0".
    function version() external pure returns (string memory);
}
