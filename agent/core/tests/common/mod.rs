// SPDX-License-Identifier: GPL-3.0-or-later
//! Helpers shared by the core's integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod bounds;

use std::path::{Path, PathBuf};

use mailstamp_core::{
    ChainRef, Envelope, Inspection, Lookup, Policy, Report, Selection, evaluate, insert_header,
    inspect, parse, prepare,
};

pub const CHAIN: ChainRef = ChainRef {
    chain_id: 31337,
    registry: [0xaa; 20],
    writer: [0xbb; 20],
};

pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Every `.eml` in a fixture folder, sorted, as (file name, bytes).
pub fn fixtures(name: &str) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(fixture_dir(name))
        .expect("fixture dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no fixtures in {name}");
    v
}

pub fn to_crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 20);
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

pub fn env(rcpts: &[&str]) -> Envelope {
    Envelope {
        rcpts: rcpts.iter().map(|s| s.to_string()).collect(),
        client_ip: None,
    }
}

/// Stamps `raw` for `rcpts`; returns the stamped message and the record the chain would hold.
pub fn stamp(raw: &[u8], rcpts: &[&str], seed: u8) -> (Vec<u8>, Lookup) {
    let msg = parse(raw).expect("parses");
    let salt = [seed; 16];
    let p = prepare(&msg, &env(rcpts), salt, &CHAIN, &Selection::default()).expect("stamps");
    let stamped = insert_header(raw, &p.header);
    (
        stamped,
        Lookup::Found {
            commitment: p.commitment,
            time: 1_700_000_000,
        },
    )
}

/// The writer check as it comes out when the From domain lists the writer.
pub fn pass() -> mailstamp_core::WriterAuth {
    mailstamp_core::WriterAuth::Pass("writer listed (test)".into())
}

/// Verifies `raw` against `lookup` as received by `rcpts`.
pub fn verify(raw: &[u8], rcpts: &[&str], lookup: &Lookup) -> Report {
    let msg = parse(raw).expect("parses");
    match inspect(&msg) {
        Inspection::Stamped(h) => evaluate(
            &msg,
            &h,
            &env(rcpts),
            lookup,
            &pass(),
            &Policy::default(),
            Some(1_700_000_100),
        ),
        other => panic!("not stamped: {other:?}"),
    }
}

pub fn describe(r: &Report) -> String {
    let bad: Vec<String> = r
        .components
        .iter()
        .filter(|c| c.status != mailstamp_core::Status::Match)
        .map(|c| format!("{}={:?}", c.name, c.status))
        .collect();
    format!(
        "{:?} score={:?} reason={:?} [{}]",
        r.verdict,
        r.score,
        r.reason,
        bad.join(" ")
    )
}
