// SPDX-License-Identifier: GPL-3.0-or-later
//! The Rust bindings come from the checked-in artifact `agent/abi/StampRegistry.json`; this
//! fails when it drifts from a fresh `forge build` of `contracts/`.

use crate::harness::{TempDir, root, tool};

#[test]
fn checked_in_artifact_matches_a_fresh_forge_build() {
    let out = TempDir::new("forge-out");
    let cache = TempDir::new("forge-cache");
    let status = std::process::Command::new(tool("forge"))
        .current_dir(root().join("contracts"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                root().join("scripts/toolchain").display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .args(["build", "--quiet", "--out"])
        .arg(&out.0)
        .arg("--cache-path")
        .arg(&cache.0)
        .status()
        .expect("forge runs");
    assert!(status.success(), "forge build failed");
    let fresh: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.0.join("StampRegistry.sol/StampRegistry.json")).unwrap(),
    )
    .unwrap();
    let checked_in: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("agent/abi/StampRegistry.json")).unwrap(),
    )
    .unwrap();
    for key in ["abi", "bytecode", "deployedBytecode"] {
        let (a, b) = (&fresh[key], &checked_in[key]);
        let (a, b) = if key == "abi" {
            (a.clone(), b.clone())
        } else {
            (a["object"].clone(), b["object"].clone())
        };
        assert_eq!(
            a, b,
            "agent/abi/StampRegistry.json `{key}` differs from forge build: run scripts/export-abi"
        );
    }
}

#[test]
fn the_registry_address_is_the_one_the_forge_script_predicts() {
    // Deploy.s.sol uses the same salt and the CREATE2 deployer; the helper proved the forge side
    // lands here (scripts/contracts-test). Pin it so a change of bytecode is a visible decision.
    assert_eq!(
        mailstamp::chain::predicted_address().to_string(),
        "0xE2efc4fb1D54aEC214810C00148E4Fa3E497DC17"
    );
}
