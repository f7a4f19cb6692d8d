// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp deploy`: the registry through the CREATE2 deployer (same address everywhere).
use std::path::Path;

use anyhow::Result;
use mailstamp::{chain, config::Config, keys};

pub(crate) async fn run(
    cfg: &Config,
    keystore: Option<&Path>,
    create2: bool,
    json: bool,
) -> Result<u8> {
    let signer = keys::load(&cfg.writer, keystore)?;
    let timeout = std::time::Duration::from_secs(cfg.chain.timeout_secs);
    // A deployment is one transaction from the deployer's key: the first endpoint sends it
    // (with several, the others see it through the chain).
    let url = cfg.chain.endpoints()[0];
    let d = chain::deploy(url, signer, create2, timeout).await?;
    if json {
        println!("{}", serde_json::to_string(&d)?);
    } else if d.already_deployed {
        println!(
            "StampRegistry already deployed at {} on chain {} (nothing to do)",
            d.address, d.chain_id
        );
    } else {
        let tx = d.tx.map(|t| t.to_string()).unwrap_or_default();
        println!(
            "StampRegistry deployed at {} on chain {} (tx {tx})",
            d.address, d.chain_id
        );
        if let Some(link) = cfg.tx_link(&tx) {
            println!("explorer: {link}");
        }
    }
    Ok(0)
}
