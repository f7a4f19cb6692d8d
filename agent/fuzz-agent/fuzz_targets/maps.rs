// SPDX-License-Identifier: GPL-3.0-or-later
//! The access maps (agent/src/maps.rs): the input split at the first NUL into the text of a
//! connection map and of an address map, each parsed; the words of the input then looked up
//! as client IP, hostname, HELO name and address. Asserts: no panic; an error names the file
//! and is not empty; `lookup_keys` gives at least one key; a map that parses answers every lookup, an empty one with nothing.
#![no_main]

use std::net::IpAddr;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mailstamp::maps::{AddrMap, ConnectionMap, lookup_keys};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (conn, addr) = text.split_once('\0').unwrap_or((&text, &text));
    let path = Path::new("fuzz.map");
    let words: Vec<&str> = text.split_whitespace().take(64).collect();
    match ConnectionMap::parse(conn, path) {
        Err(e) => assert!(e.to_string().contains("fuzz.map"), "{e}"),
        Ok(m) => {
            for w in &words {
                let ip = w.parse::<IpAddr>().ok();
                let _ = m.at_connect(ip, w);
                let _ = m.at_helo(w);
            }
            if m.is_empty() {
                assert!(words.iter().all(|w| m.at_helo(w).is_none()));
            }
        }
    }
    match AddrMap::parse(addr, path) {
        Err(e) => assert!(e.to_string().contains("fuzz.map"), "{e}"),
        Ok(m) => {
            for w in &words {
                let _ = m.lookup(w, Some('+'));
                let _ = m.lookup(w, None);
            }
        }
    }
    for w in &words {
        let keys = lookup_keys(w, Some('+'));
        assert!(!keys.is_empty(), "{w}");
    }
});
