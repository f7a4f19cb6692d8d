// SPDX-License-Identifier: GPL-3.0-or-later
//! The config file: TOML text → `Config::parse` → `Config::check`, what every daemon and
//! command runs at start. Asserts: no panic; an error names a key or the TOML problem (never
//! empty); a config that parses and checks gives a policy whose threshold is a share and
//! whose `min_version` is a protocol version, and parsing is deterministic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailstamp::config::Config;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(cfg) => {
            let again = Config::parse(&text).expect("parses twice");
            assert_eq!(
                format!("{:?}", again.verify.policy()),
                format!("{:?}", cfg.verify.policy())
            );
            match cfg.check() {
                Err(e) => assert!(!e.to_string().is_empty()),
                Ok(()) => {
                    let p = cfg.verify.policy();
                    assert!((0.0..=1.0).contains(&p.threshold));
                    assert!(
                        (1..=mailstamp_core::header::VERSION).contains(&p.min_version),
                        "{}",
                        p.min_version
                    );
                }
            }
        }
    }
});
