// SPDX-License-Identifier: GPL-3.0-or-later
//! Bounds (issue 12 item 5): a message with 10,000 parts, MIME nesting 1,000 deep, a 1 MB
//! header section, 10,000 recipients, a 64 KiB `Mail-Stamp:` — each is stamped and verified
//! (or refused) with a clear outcome, never a panic. Time and memory are measured by
//! `examples/bounds.rs` (docs/PERFORMANCE.md, "Bounds"), not asserted here.

mod common;

use common::bounds::*;
use common::*;
use mailstamp_core::{
    Inspection, Lookup, MAX_DELIMITER_LINES, Policy, Report, Selection, StampError, Verdict,
    evaluate, insert_header, inspect, oversized, parse, prepare,
};

const RCPT: &str = "bob@b.example";

/// Stamps `raw` (every family) for `rcpts`, then verifies the stamped bytes for `verify_rcpts`
/// against the record the stamp made.
fn round_trip(raw: &[u8], rcpts: &[&str], verify_rcpts: &[&str]) -> Report {
    assert_eq!(oversized(raw), None, "within the bounds");
    let msg = parse(raw).expect("parses");
    let p = prepare(&msg, &env(rcpts), [3; 16], &CHAIN, &Selection::all()).expect("stamps");
    let stamped = insert_header(raw, &p.header);
    let msg = parse(&stamped).expect("stamped parses");
    let Inspection::Stamped(h) = inspect(&msg) else {
        panic!("the stamp is found and decodes");
    };
    let lookup = Lookup::Found {
        commitment: p.commitment,
        time: 1_700_000_000,
    };
    evaluate(
        &msg,
        &h,
        &env(verify_rcpts),
        &lookup,
        &pass(),
        &Policy::default(),
        Some(1_700_000_100),
    )
}

#[test]
fn ten_thousand_parts_stamp_and_verify() {
    let raw = many_parts(10_000);
    let msg = parse(&raw).unwrap();
    assert_eq!(msg.parts.len(), 10_001, "the container and every part");
    let r = round_trip(&raw, &[RCPT], &[RCPT]);
    assert_eq!(r.verdict, Verdict::Wanted, "{r:?}");
    assert!(
        r.components.iter().all(|c| c.name != "text.16"),
        "16 per family"
    );
}

#[test]
fn a_dropped_part_among_ten_thousand_is_seen() {
    let raw = many_parts(10_000);
    let msg = parse(&raw).unwrap();
    let p = prepare(&msg, &env(&[RCPT]), [3; 16], &CHAIN, &Selection::all()).unwrap();
    let fewer = many_parts(9_999);
    let stamped = insert_header(&fewer, &p.header);
    let msg = parse(&stamped).unwrap();
    let Inspection::Stamped(h) = inspect(&msg) else {
        panic!("decodes");
    };
    let lookup = Lookup::Found {
        commitment: p.commitment,
        time: 1_700_000_000,
    };
    let r = evaluate(
        &msg,
        &h,
        &env(&[RCPT]),
        &lookup,
        &pass(),
        &Policy::default(),
        None,
    );
    assert_ne!(r.verdict, Verdict::Wanted, "{r:?}");
    assert!(
        r.components
            .iter()
            .any(|c| c.name == "parts" && c.status == mailstamp_core::Status::Mismatch),
        "{r:?}"
    );
}

#[test]
fn nesting_a_thousand_deep_stamps_and_verifies() {
    let raw = deep_nesting(1_000);
    let msg = parse(&raw).unwrap();
    assert_eq!(
        msg.parts.len(),
        1_001,
        "every container and the text at the bottom"
    );
    assert_eq!(
        msg.body_text(0).as_deref().map(str::trim),
        Some("the bottom")
    );
    let r = round_trip(&raw, &[RCPT], &[RCPT]);
    assert_eq!(r.verdict, Verdict::Wanted, "{r:?}");
}

#[test]
fn a_one_megabyte_header_section_stamps_and_verifies() {
    for raw in [big_header(1 << 20), big_subject(1 << 20)] {
        assert!(raw.len() >= 1 << 20);
        let r = round_trip(&raw, &[RCPT], &[RCPT]);
        assert_eq!(r.verdict, Verdict::Wanted, "{r:?}");
    }
    // A changed letter inside the megabyte Subject is still a difference.
    let raw = big_subject(1 << 20);
    let msg = parse(&raw).unwrap();
    let p = prepare(&msg, &env(&[RCPT]), [3; 16], &CHAIN, &Selection::all()).unwrap();
    let mut changed = raw.clone();
    let at = changed.len() / 2;
    let at = at + changed[at..].iter().position(|&b| b == b's').unwrap();
    changed[at] = b't';
    let stamped = insert_header(&changed, &p.header);
    let msg = parse(&stamped).unwrap();
    let Inspection::Stamped(h) = inspect(&msg) else {
        panic!("decodes");
    };
    let lookup = Lookup::Found {
        commitment: p.commitment,
        time: 1_700_000_000,
    };
    let r = evaluate(
        &msg,
        &h,
        &env(&[RCPT]),
        &lookup,
        &pass(),
        &Policy::default(),
        None,
    );
    assert!(
        r.components
            .iter()
            .any(|c| c.name == "subject" && c.status == mailstamp_core::Status::Mismatch),
        "{r:?}"
    );
}

#[test]
fn ten_thousand_recipients_are_refused_with_a_reason() {
    let raw = many_rcpts(10_000);
    let all = rcpt_list(10_000);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let msg = parse(&raw).unwrap();
    assert_eq!(msg.to().map(|a| a.iter().count()), Some(10_000));
    // Envelope of 10,000, and (no envelope) the 10,000 To addresses: both refused.
    for rcpts in [&all[..], &[]] {
        let e = prepare(&msg, &env(rcpts), [3; 16], &CHAIN, &Selection::all()).unwrap_err();
        assert!(matches!(e, StampError::TooManyRecipients(10_000)), "{e}");
        assert!(e.to_string().contains("split the message"), "{e}");
    }
}

#[test]
fn a_stamp_for_512_of_10000_recipients_verifies_only_for_them() {
    let raw = many_rcpts(10_000);
    let all = rcpt_list(10_000);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let stamped_for = &all[..mailstamp_core::header::MAX_RCPTS];
    let r = round_trip(&raw, stamped_for, stamped_for);
    assert_eq!(r.verdict, Verdict::Wanted, "{r:?}");
    // Received with an envelope of all 10,000: 9,488 were never stamped.
    let r = round_trip(&raw, stamped_for, &all);
    assert_eq!(r.verdict, Verdict::Spam, "{r:?}");
    // No envelope: the To field's 10,000 addresses, one stamped one is enough.
    let r = round_trip(&raw, stamped_for, &[]);
    assert_eq!(r.verdict, Verdict::Wanted, "{r:?}");
}

#[test]
fn a_64_kib_mail_stamp_is_invalid_with_a_reason() {
    let raw = big_stamp(64 << 10);
    assert!(raw.len() > 64 << 10);
    let msg = parse(&raw).unwrap();
    match inspect(&msg) {
        Inspection::Invalid(why) => assert!(why.contains("more than the 8192"), "{why}"),
        other => panic!("not invalid: {other:?}"),
    }
    // And it is not stamped over either.
    let e = prepare(&msg, &env(&[RCPT]), [3; 16], &CHAIN, &Selection::all()).unwrap_err();
    assert!(matches!(e, StampError::AlreadyStamped), "{e}");
}

#[test]
fn too_many_delimiter_lines_are_refused_before_parsing() {
    assert_eq!(oversized(&many_parts(10_000)), None);
    assert_eq!(
        oversized(&minimal_parts(MAX_DELIMITER_LINES - 1)),
        None,
        "the closing one"
    );
    let why = oversized(&minimal_parts(MAX_DELIMITER_LINES)).expect("one over");
    assert!(why.contains("lines starting with"), "{why}");
    let big = vec![b'a'; mailstamp_core::MAX_MESSAGE_BYTES + 1];
    assert!(oversized(&big).unwrap().contains("bytes"));
}
