// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/*
Deploys StampRegistry through the deterministic CREATE2 deployer
(0x4e59b44847b379578588920cA78FbF26c0B4956C: built into anvil, present on Sepolia, mainnet and
most L2s) with SALT = keccak256("mailstamp.registry.v1"). The bytecode is pinned (foundry.toml:
bytecode_hash = "none", cbor_metadata = false, solc 0.8.37, optimizer 10000 runs, cancun), so the
registry has the same address on every chain. Running it again is a no-op.

Run (from contracts/, tools on PATH via scripts/lib.sh):
  PRIVATE_KEY=0x… forge script script/Deploy.s.sol --rpc-url "$RPC_URL" --broadcast
  forge script script/Deploy.s.sol --rpc-url "$RPC_URL" --broadcast --account NAME   # keystore
  forge script script/Deploy.s.sol --rpc-url "$RPC_URL" --broadcast --ledger --sender 0x…
Without --broadcast forge only simulates.

Verify on a block explorer (ADDR = the address this script logs; replace the chain as needed).
The compiler settings are read from foundry.toml; pass the version explicitly because our solc is
a local shim. Without a metadata hash Sourcify reports a "match" (partial), not an exact match.
  Etherscan:
    forge verify-contract ADDR src/StampRegistry.sol:StampRegistry --chain sepolia \
      --verifier etherscan --etherscan-api-key "$ETHERSCAN_API_KEY" \
      --compiler-version v0.8.37+commit.f401782d --watch
  Blockscout:
    forge verify-contract ADDR src/StampRegistry.sol:StampRegistry --chain sepolia \
      --verifier blockscout --verifier-url https://eth-sepolia.blockscout.com/api/ \
      --compiler-version v0.8.37+commit.f401782d --watch
  Sourcify:
    forge verify-contract ADDR src/StampRegistry.sol:StampRegistry --chain sepolia \
      --verifier sourcify --compiler-version v0.8.37+commit.f401782d --watch
*/

import {StampRegistry} from "../src/StampRegistry.sol";
import {Script, console} from "forge-std/Script.sol";

contract Deploy is Script {
    bytes32 public constant SALT = keccak256("mailstamp.registry.v1");

    /// @dev Signs with PRIVATE_KEY when it is set, otherwise with whatever forge was given
    /// (--account, --private-key, --ledger, --sender …).
    modifier broadcast() {
        uint256 key = vm.envOr("PRIVATE_KEY", uint256(0));
        if (key != 0) vm.startBroadcast(key);
        else vm.startBroadcast();
        _;
        vm.stopBroadcast();
    }

    /// @notice The address the registry has (or will have) on every chain.
    function predictedAddress() public pure returns (address) {
        return vm.computeCreate2Address(
            SALT, keccak256(type(StampRegistry).creationCode), CREATE2_FACTORY
        );
    }

    function run() external returns (StampRegistry registry) {
        address predicted = predictedAddress();
        if (predicted.code.length != 0) {
            console.log("StampRegistry already deployed at", predicted);
            return StampRegistry(predicted);
        }
        if (CREATE2_FACTORY.code.length == 0) {
            revert("no CREATE2 deployer (0x4e59b448...) on this chain");
        }
        registry = _deploy();
        require(address(registry) == predicted, "CREATE2 address mismatch");
        console.log("StampRegistry deployed at", address(registry));
    }

    function _deploy() internal broadcast returns (StampRegistry) {
        return new StampRegistry{salt: SALT}();
    }
}
