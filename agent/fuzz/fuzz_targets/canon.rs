// SPDX-License-Identifier: GPL-3.0-or-later
//! The canonical forms and the digests built on them, on decoded text and raw bytes: each
//! fast implementation against the plain definition its documentation gives.
//! - `collapse_whitespace` (SWAR word runs) = `split_whitespace` joined by single spaces;
//! - `text_lines` = lines split at CRLF / CR / LF, each collapsed, empty lines at both ends
//!   dropped; idempotent; `split_signature` cuts at the first `--` line;
//! - `lf_bytes` = every CRLF replaced by LF; `keccak256_lf(x)` = `keccak256(lf_bytes(x))`;
//! - a `ComponentHasher` fed in pieces = `component_digest` in one go (keccak-asm buffering);
//! - `subject_tag_cuts`, `address` and `split_address` keep to what they promise.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailstamp_core::canon::{self, Lines};
use mailstamp_core::digest::{self, ComponentHasher};

/// Lines as the definition says, without the one-pass buffer.
fn reference_lines(s: &str) -> Vec<String> {
    let mut lines: Vec<String> = s
        .split("\r\n")
        .flat_map(|l| l.split(['\r', '\n']))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    let first = lines
        .iter()
        .position(|l| !l.is_empty())
        .unwrap_or(lines.len());
    lines.drain(..first);
    lines
}

/// `lines[a..z]` without empty lines at either end.
fn trimmed(lines: &[String]) -> Vec<String> {
    let a = lines
        .iter()
        .position(|l| !l.is_empty())
        .unwrap_or(lines.len());
    let z = lines
        .iter()
        .rposition(|l| !l.is_empty())
        .map_or(a, |z| z + 1);
    lines[a..z.max(a)].to_vec()
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);

    let words: Vec<&str> = s.split_whitespace().collect();
    assert_eq!(canon::collapse_whitespace(&s), words.join(" "));

    let lines = canon::text_lines(&s);
    let want = reference_lines(&s);
    assert_eq!(lines, Lines::from_lines(&want), "text_lines({s:?})");
    let text = lines.prefix(lines.len());
    assert_eq!(text, want.join("\n"));
    assert_eq!(
        canon::text_lines(text),
        lines,
        "text_lines is not idempotent"
    );
    for k in [0, 1, lines.len() / 2, lines.len().saturating_sub(1)] {
        assert_eq!(
            lines.prefix(k),
            trimmed(&want[..k.min(want.len())]).join("\n")
        );
    }

    let mut body = lines.clone();
    let sig = body.split_signature();
    match want.iter().position(|l| l == "--") {
        None => {
            assert!(sig.is_empty());
            assert_eq!(body, lines);
        }
        Some(sep) => {
            assert_eq!(body, Lines::from_lines(trimmed(&want[..sep])));
            assert_eq!(sig, Lines::from_lines(trimmed(&want[sep + 1..])));
        }
    }

    let cuts = canon::subject_tag_cuts(&s);
    assert!(cuts.len() <= 4);
    let mut longest = s.len();
    for c in &cuts {
        assert!(s.ends_with(c) && c.len() < longest, "cut {c:?} of {s:?}");
        longest = c.len();
    }

    let a = canon::address(&s);
    let (local, domain) = canon::split_address(&a);
    if a.contains('@') {
        assert_eq!(format!("{local}@{domain}"), a);
        assert!(!domain.contains('@'));
    } else {
        assert_eq!((local, domain), (a.as_str(), ""));
    }

    let lf = canon::lf_bytes(data);
    let mut want_lf = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(b"\r\n") {
            i += 1;
        }
        want_lf.push(data[i]);
        i += 1;
    }
    assert_eq!(lf, want_lf);
    assert_eq!(digest::keccak256_lf(data), digest::keccak256(&lf));

    // Pieces of every length up to a few keccak blocks (136 bytes each), taken from the data.
    let salt = [3u8; 16];
    let mut h = ComponentHasher::new(&salt, "text.0");
    let mut rest = data;
    let mut sizes = data.iter().cycle();
    while !rest.is_empty() {
        let n = (usize::from(*sizes.next().unwrap_or(&1)) + 1).min(rest.len());
        h.update(&rest[..n]);
        rest = &rest[n..];
    }
    assert_eq!(h.finish(), digest::component_digest(&salt, "text.0", data));
});
