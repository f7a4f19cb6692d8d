// SPDX-License-Identifier: GPL-3.0-or-later
//! The writer key: from `MAILSTAMP_PRIVATE_KEY` or an encrypted keystore. The key is never
//! printed or logged; errors name where we looked, not what we found.

use std::path::Path;

use crate::error::{Context, Result, bail};
use alloy::signers::local::PrivateKeySigner;

use crate::config::WriterConfig;

/// Environment variable holding a hex private key.
pub const PRIVATE_KEY_ENV: &str = "MAILSTAMP_PRIVATE_KEY";
/// Environment variable holding the keystore password.
pub const PASSWORD_ENV: &str = "MAILSTAMP_KEYSTORE_PASSWORD";

/// Loads the writer key. `keystore` (a flag) wins over the config file; the environment
/// variable is used when no keystore is named.
pub fn load(cfg: &WriterConfig, keystore: Option<&Path>) -> Result<PrivateKeySigner> {
    if let Some(path) = keystore.or(cfg.keystore.as_deref()) {
        let password = match &cfg.password_file {
            Some(f) => std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the keystore password file {}", f.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            None => std::env::var(PASSWORD_ENV).with_context(|| {
                format!(
                    "keystore {} needs a password: set {PASSWORD_ENV} or writer.password_file",
                    path.display()
                )
            })?,
        };
        return PrivateKeySigner::decrypt_keystore(path, password).map_err(|e| {
            crate::error::err!(
                "cannot open keystore {}: {e} (wrong password or not a keystore file)",
                path.display()
            )
        });
    }
    match std::env::var(PRIVATE_KEY_ENV) {
        Ok(k) => parse_key(&k),
        Err(_) => bail!(
            "no writer key: set {PRIVATE_KEY_ENV} (hex private key), or writer.keystore in the config / --keystore"
        ),
    }
}

/// Parses a hex private key without echoing it in errors.
pub fn parse_key(k: &str) -> Result<PrivateKeySigner> {
    k.trim()
        .parse::<PrivateKeySigner>()
        .map_err(|_| crate::error::err!("{PRIVATE_KEY_ENV} is not a 32-byte hex private key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_key_is_named_but_not_echoed() {
        let e = parse_key("0xnot-a-key-SECRET").unwrap_err().to_string();
        assert!(e.contains(PRIVATE_KEY_ENV));
        assert!(!e.contains("SECRET"));
    }

    #[test]
    fn a_good_key_gives_its_address() {
        let s = parse_key("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
            .unwrap();
        assert_eq!(
            s.address().to_string(),
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        );
    }
}
