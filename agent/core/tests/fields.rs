// SPDX-License-Identifier: GPL-3.0-or-later
//! What people see first: the sender's display name and the first of two header fields
//! (issue 12, items 1 and 2). A stamped message whose From display name was changed, or that
//! carries a second copy of a field RFC 5322 allows once, or a second `Mail-Stamp:`, is never
//! `wanted`; a stamp that covers no display name (version 1) verifies as it always did; the
//! display name survives re-encoding. `wire-v2.txt` pins the version-2 wire output the way
//! `wire_golden.rs` pins version 1 (`MAILSTAMP_BLESS=1` rewrites it; review it like code).
//!
//! Every test here is written against the API of the code before version 2 (the stamps take
//! `Family::ALL`, which then had no display name), so each attack test compiles on that code
//! and fails there.

mod common;

use common::*;
use mailstamp_core::component::Selection;
use mailstamp_core::digest::keccak256;
use mailstamp_core::{
    Family, Inspection, Lookup, Policy, Report, Verdict, evaluate, insert_header, inspect, parse,
    prepare,
};

const RCPT: &str = "bob@b.example";

/// Every family there is (the agent's default `stamp.components`).
fn every_family() -> Selection {
    Selection(Family::ALL.into_iter().collect())
}

/// Stamps `raw` for [`RCPT`] with `sel`; the stamped message and its record.
fn stamp_with(raw: &[u8], seed: u8, sel: &Selection) -> (Vec<u8>, Lookup) {
    let msg = parse(raw).expect("parses");
    let p = prepare(&msg, &env(&[RCPT]), [seed; 16], &CHAIN, sel).expect("stamps");
    let lookup = Lookup::Found {
        commitment: p.commitment,
        time: 1_700_000_000,
    };
    (insert_header(raw, &p.header), lookup)
}

/// The line ending of `raw`.
fn eol(raw: &[u8]) -> &'static str {
    mailstamp_core::stamp::line_ending(raw)
}

/// `raw` with its (last, as mail-parser reads it) `name` field replaced by `name: value`.
fn replace_field(raw: &[u8], name: &str, value: &str) -> Vec<u8> {
    let msg = parse(raw).expect("parses");
    let h = msg
        .headers()
        .iter()
        .rev()
        .find(|h| h.name().eq_ignore_ascii_case(name))
        .unwrap_or_else(|| panic!("no {name} field"));
    let (start, end) = (h.offset_field() as usize, h.offset_end() as usize);
    let mut out = raw[..start].to_vec();
    out.extend_from_slice(format!("{name}: {value}{}", eol(raw)).as_bytes());
    out.extend_from_slice(&raw[end..]);
    out
}

/// `raw` with `line` (no line ending) inserted at byte `at`.
fn insert_line(raw: &[u8], at: usize, line: &str) -> Vec<u8> {
    let mut out = raw[..at].to_vec();
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(eol(raw).as_bytes());
    out.extend_from_slice(&raw[at..]);
    out
}

/// Where the (last) `name` field starts.
fn field_start(raw: &[u8], name: &str) -> usize {
    let msg = parse(raw).expect("parses");
    msg.headers()
        .iter()
        .rev()
        .find(|h| h.name().eq_ignore_ascii_case(name))
        .map(|h| h.offset_field() as usize)
        .unwrap_or_else(|| panic!("no {name} field"))
}

fn from_address(raw: &[u8]) -> String {
    mailstamp_core::component::from_address(&parse(raw).expect("parses"))
}

/// The corpus fixtures that have a From address (all of them, today).
fn corpus() -> Vec<(String, Vec<u8>)> {
    let all = fixtures("corpus");
    assert!(all.len() >= 30);
    all.into_iter()
        .filter(|(_, raw)| !from_address(raw).is_empty())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. The display name

#[test]
fn a_display_name_changed_to_paypal_support_is_spam() {
    for (i, (name, raw)) in corpus().iter().enumerate() {
        let (stamped, rec) = stamp_with(raw, i as u8, &every_family());
        assert_eq!(verify(&stamped, &[RCPT], &rec).verdict, Verdict::Wanted);
        let addr = from_address(&stamped);
        let spoofed = replace_field(&stamped, "From", &format!("\"PayPal Support\" <{addr}>"));
        assert_eq!(from_address(&spoofed), addr, "{name}: the address is kept");
        for raw in [spoofed.clone(), to_crlf(&spoofed)] {
            let r = verify(&raw, &[RCPT], &rec);
            assert_eq!(r.verdict, Verdict::Spam, "{name}: {}", describe(&r));
            assert!(
                r.reason.as_deref().unwrap_or("").contains("from.name"),
                "{name}: {}",
                describe(&r)
            );
        }
    }
}

/// A stamped message from `display` <alice@a.example>.
fn from_alice(display: &str) -> Vec<u8> {
    format!(
        "From: {display}\nTo: bob@b.example\nSubject: hi\nDate: Mon, 4 Mar 2024 10:00:00 +0100\n\
         Message-ID: <n1@a.example>\n\nHello Bob\n"
    )
    .into_bytes()
}

#[test]
fn the_display_name_is_compared_by_meaning() {
    let (stamped, rec) = stamp_with(
        &from_alice("Jürgen Müller <alice@a.example>"),
        7,
        &every_family(),
    );
    let same = [
        "\"Jürgen Müller\" <alice@a.example>",
        "=?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <alice@a.example>",
        "=?UTF-8?B?SsO8cmdlbiBNw7xsbGVy?= <alice@a.example>",
        "=?iso-8859-1?q?J=FCrgen?= =?iso-8859-1?q?_M=FCller?= <alice@a.example>",
        "Jürgen    Müller <ALICE@a.example>",
        "Jürgen\n\tMüller\n <alice@a.example>",
    ];
    for display in same {
        let raw = replace_field(&stamped, "From", display);
        let r = verify(&raw, &[RCPT], &rec);
        assert_eq!(r.verdict, Verdict::Wanted, "{display:?}: {}", describe(&r));
    }
    let other = [
        "Jurgen Muller <alice@a.example>",
        "jürgen müller <alice@a.example>",
        "Jürgen Müller (IT) <alice@a.example>",
        "alice@a.example",
        "<alice@a.example>",
        "\"Jürgen Müller via PayPal\" <alice@a.example>",
    ];
    for display in other {
        let raw = replace_field(&stamped, "From", display);
        let r = verify(&raw, &[RCPT], &rec);
        assert_eq!(r.verdict, Verdict::Spam, "{display:?}: {}", describe(&r));
    }
}

#[test]
fn a_stamp_without_a_display_name_is_version_1_and_verifies_as_before() {
    let raw = from_alice("Alice Example <alice@a.example>");
    let msg = parse(&raw).unwrap();
    let v1 = prepare(&msg, &env(&[RCPT]), [3; 16], &CHAIN, &Selection::default()).unwrap();
    let v2 = prepare(&msg, &env(&[RCPT]), [3; 16], &CHAIN, &every_family()).unwrap();
    assert!(
        v1.header.value().starts_with("v=1;"),
        "{}",
        v1.header.value()
    );
    assert!(!v1.header.value().contains("from.name"));
    assert!(
        v2.header.value().starts_with("v=2;"),
        "{}",
        v2.header.value()
    );
    assert!(v2.header.value().contains(":from.name:"));
    // A v1 stamp says nothing about the display name: a change to it is not seen (that is
    // what it always did), and a policy requiring `from.name` does not make it spam.
    let rec = Lookup::Found {
        commitment: v1.commitment,
        time: 1_700_000_000,
    };
    let spoofed = replace_field(
        &insert_header(&raw, &v1.header),
        "From",
        "\"PayPal Support\" <alice@a.example>",
    );
    let r = verify(&spoofed, &[RCPT], &rec);
    assert_eq!(r.verdict, Verdict::Wanted, "{}", describe(&r));
    // The version is what `h` needs, not a choice: v=1 naming from.name, or v=2 naming
    // nothing new, is an undecodable header.
    let bad = [
        v2.header.value().replacen("v=2", "v=1", 1),
        v1.header.value().replacen("v=1", "v=2", 1),
    ];
    for value in bad {
        let raw = [b"Mail-Stamp: ", value.as_bytes(), b"\n", &raw].concat();
        assert!(
            matches!(inspect(&parse(&raw).unwrap()), Inspection::Invalid(_)),
            "{value}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Fields RFC 5322 allows once

#[test]
fn a_second_from_above_the_real_one_is_spam() {
    for (i, (name, raw)) in corpus().iter().enumerate() {
        let (stamped, rec) = stamp_with(raw, i as u8, &every_family());
        let forged = "From: \"PayPal Support\" <service@paypal.example>";
        let at_real = field_start(&stamped, "From");
        for raw in [
            insert_line(&stamped, at_real, forged),
            insert_line(&stamped, 0, forged),
        ] {
            for raw in [raw.clone(), to_crlf(&raw)] {
                let r = verify(&raw, &[RCPT], &rec);
                assert_eq!(r.verdict, Verdict::Spam, "{name}: {}", describe(&r));
            }
        }
        // The same with a stamp of version 1 (every stamp made before version 2).
        let (stamped, rec) = stamp_with(raw, i as u8, &Selection::default());
        let raw = insert_line(&stamped, field_start(&stamped, "From"), forged);
        let r = verify(&raw, &[RCPT], &rec);
        assert_eq!(r.verdict, Verdict::Spam, "{name} (v1): {}", describe(&r));
    }
}

/// A message with every field of RFC 5322 §3.6's "at most once" table, once.
fn every_single_field() -> Vec<u8> {
    b"From: Alice Example <alice@a.example>\n\
Sender: Alice Example <alice@a.example>\n\
Reply-To: alice@a.example\n\
To: Bob <bob@b.example>\n\
Cc: carol@c.example\n\
Bcc: dave@d.example\n\
Subject: The quarterly figures\n\
Date: Mon, 4 Mar 2024 10:00:00 +0100\n\
Message-ID: <q1@a.example>\n\
In-Reply-To: <q0@b.example>\n\
References: <q0@b.example>\n\
MIME-Version: 1.0\n\
Content-Type: text/plain; charset=utf-8\n\
\n\
Dear Bob,\n\
the figures are attached.\n"
        .to_vec()
}

/// Each field, a second value for it, and the verdict a second copy gives (docs/PROTOCOL.md
/// §6 step 1): `spam` for the fields the stamp compares, `invalid` for the others.
const SINGLE: [(&str, &str, Verdict); 11] = [
    (
        "From",
        "PayPal Support <service@paypal.example>",
        Verdict::Spam,
    ),
    ("Sender", "mallory@m.example", Verdict::Invalid),
    ("Reply-To", "mallory@m.example", Verdict::Invalid),
    ("To", "Bob <bob@b.example>", Verdict::Spam),
    ("Cc", "mallory@m.example", Verdict::Spam),
    ("Bcc", "mallory@m.example", Verdict::Invalid),
    ("Subject", "Urgent: wire the money today", Verdict::Spam),
    ("Date", "Tue, 5 Mar 2024 10:00:00 +0100", Verdict::Spam),
    ("Message-ID", "<q2@a.example>", Verdict::Spam),
    ("In-Reply-To", "<q9@b.example>", Verdict::Invalid),
    ("References", "<q9@b.example>", Verdict::Invalid),
];

#[test]
fn a_second_copy_of_any_field_rfc5322_allows_once_is_never_wanted() {
    let raw = every_single_field();
    let (stamped, rec) = stamp_with(&raw, 9, &every_family());
    assert_eq!(verify(&stamped, &[RCPT], &rec).verdict, Verdict::Wanted);
    for (field, other, want) in SINGLE {
        let at = field_start(&stamped, field);
        let original = {
            let msg = parse(&stamped).unwrap();
            let h = msg
                .headers()
                .iter()
                .find(|h| h.name().eq_ignore_ascii_case(field))
                .unwrap();
            String::from_utf8_lossy(&stamped[h.offset_field() as usize..h.offset_end() as usize])
                .trim_end()
                .to_owned()
        };
        let upper = format!("{}: {other}", field.to_ascii_uppercase());
        // RFC 5322 §4.5.3 (obsolete syntax) allows white space before the colon.
        let obs = format!("{field} : {other}");
        let cases = [
            (
                "another value above",
                insert_line(&stamped, at, &format!("{field}: {other}")),
            ),
            (
                "another value on top",
                insert_line(&stamped, 0, &format!("{field}: {other}")),
            ),
            ("the same value again", insert_line(&stamped, at, &original)),
            ("upper-case name", insert_line(&stamped, at, &upper)),
            ("space before the colon", insert_line(&stamped, at, &obs)),
        ];
        for (what, raw) in cases {
            for raw in [raw.clone(), to_crlf(&raw)] {
                let r = verify(&raw, &[RCPT], &rec);
                assert_eq!(r.verdict, want, "{field}, {what}: {}", describe(&r));
                let reason = r.reason.as_deref().unwrap_or("");
                assert!(reason.contains(field), "{field}, {what}: {reason}");
            }
        }
    }
    // A spam field and an invalid one together: spam.
    let raw = insert_line(&stamped, 0, "Reply-To: mallory@m.example");
    let raw = insert_line(&raw, 0, "Subject: Urgent");
    assert_eq!(verify(&raw, &[RCPT], &rec).verdict, Verdict::Spam);
    // Fields RFC 5322 allows many times change nothing.
    let raw = insert_line(&stamped, 0, "Comments: one");
    let raw = insert_line(&raw, 0, "Comments: two");
    let raw = insert_line(&raw, 0, "Keywords: a");
    let raw = insert_line(&raw, 0, "Keywords: b");
    assert_eq!(verify(&raw, &[RCPT], &rec).verdict, Verdict::Wanted);
}

#[test]
fn duplicates_are_decided_before_the_chain_is_read() {
    // A message no record can make wanted is not retried because the chain was down.
    let (stamped, _) = stamp_with(&every_single_field(), 10, &every_family());
    let raw = insert_line(&stamped, 0, "From: mallory@m.example");
    let msg = parse(&raw).unwrap();
    let Inspection::Stamped(h) = inspect(&msg) else {
        panic!("stamped")
    };
    let r = evaluate(
        &msg,
        &h,
        &env(&[RCPT]),
        &Lookup::Unavailable("rpc down".into()),
        &pass(),
        &Policy::default(),
        Some(1_700_000_100),
    );
    assert_eq!(r.verdict, Verdict::Spam, "{}", describe(&r));
}

#[test]
fn two_mail_stamp_fields_are_invalid() {
    let (_, raw) = &fixtures("corpus")[2];
    let msg = parse(raw).unwrap();
    let other = mailstamp_core::ChainRef {
        writer: [0xcc; 20],
        ..CHAIN
    };
    let first = prepare(&msg, &env(&[RCPT]), [4; 16], &CHAIN, &every_family()).unwrap();
    let second = prepare(&msg, &env(&[RCPT]), [5; 16], &other, &every_family()).unwrap();
    let once = insert_header(raw, &first.header);
    let cases = [
        (
            "another writer's on top",
            insert_header(&once, &second.header),
        ),
        ("the same twice", insert_header(&once, &first.header)),
        (
            "a copy at the end of the header section",
            insert_line(&once, field_start(&once, "From"), &{
                format!("Mail-Stamp: {}", first.header.value())
            }),
        ),
    ];
    for (what, raw) in cases {
        for raw in [raw.clone(), to_crlf(&raw)] {
            match inspect(&parse(&raw).unwrap()) {
                Inspection::Invalid(why) => assert!(why.contains("Mail-Stamp"), "{what}: {why}"),
                other => panic!("{what}: {other:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Version-2 wire golden file

/// The golden lines of one message stamped with every family.
fn v2_lines(name: &str, raw: &[u8], seed: u8, out: &mut Vec<String>) {
    let msg = parse(raw).expect("parses");
    let Ok(p) = prepare(&msg, &env(&[RCPT]), [seed; 16], &CHAIN, &every_family()) else {
        out.push(format!("{name} not-stampable"));
        return;
    };
    let stamped = insert_header(raw, &p.header);
    let field_end = stamped.len() - raw.len();
    out.push(format!(
        "{name} stamp commitment={} token={} header={}",
        hex(&p.commitment),
        hex(&p.token),
        hex(&keccak256(&stamped[..field_end])[..12]),
    ));
    let rec = Lookup::Found {
        commitment: p.commitment,
        time: 1_700_000_000,
    };
    let addr = from_address(&stamped);
    let variants = [
        ("intact", stamped.clone()),
        (
            "display-name",
            replace_field(&stamped, "From", &format!("\"PayPal Support\" <{addr}>")),
        ),
        (
            "second-from",
            insert_line(
                &stamped,
                field_start(&stamped, "From"),
                "From: service@paypal.example",
            ),
        ),
    ];
    for (variant, bytes) in variants {
        let r = verify(&bytes, &[RCPT], &rec);
        out.push(format!(
            "{name} {variant} {} report={}",
            r.verdict.as_str(),
            report_hash(&r)
        ));
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn report_hash(r: &Report) -> String {
    hex(&keccak256(serde_json::to_string(r).unwrap().as_bytes())[..12])
}

#[test]
fn version_2_stamps_are_byte_for_byte_as_recorded() {
    let mut out = Vec::new();
    for dir in ["corpus", "golden"] {
        for (i, (name, raw)) in fixtures(dir).iter().enumerate() {
            if from_address(raw).is_empty() {
                continue;
            }
            let lf: Vec<u8> = raw.iter().copied().filter(|&b| b != b'\r').collect();
            v2_lines(&format!("{dir}/{name} lf"), &lf, i as u8, &mut out);
            v2_lines(
                &format!("{dir}/{name} crlf"),
                &to_crlf(&lf),
                i as u8,
                &mut out,
            );
        }
    }
    assert!(out.len() >= 35 * 2 * 4, "only {} lines", out.len());
    let expected = fixture_dir("wire-v2.txt");
    let text = out.join("\n") + "\n";
    let failed = expected.with_extension("txt.failed");
    if std::env::var_os("MAILSTAMP_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&expected, &text).unwrap();
        let _ = std::fs::remove_file(&failed);
        return;
    }
    let want = std::fs::read_to_string(&expected).unwrap_or_default();
    if want != text {
        std::fs::write(&failed, &text).unwrap();
        panic!(
            "version-2 wire output differs from {}; diff it against {} \
             (MAILSTAMP_BLESS=1 only if the protocol change is intended)",
            expected.display(),
            failed.display()
        );
    }
    let _ = std::fs::remove_file(&failed);
}

#[test]
fn a_writer_does_not_stamp_what_every_receiver_would_reject() {
    let raw = every_single_field();
    for (field, other, _) in SINGLE {
        let twice = insert_line(&raw, 0, &format!("{field}: {other}"));
        let msg = parse(&twice).unwrap();
        let e = prepare(&msg, &env(&[RCPT]), [1; 16], &CHAIN, &every_family())
            .expect_err(field)
            .to_string();
        assert!(e.contains(field) && e.contains("more than one"), "{e}");
    }
    let (stamped, _) = stamp_with(&raw, 2, &every_family());
    let msg = parse(&stamped).unwrap();
    let e = prepare(&msg, &env(&[RCPT]), [1; 16], &CHAIN, &every_family())
        .expect_err("already stamped")
        .to_string();
    assert!(e.contains("Mail-Stamp"), "{e}");
}

#[test]
fn a_from_field_with_a_second_mailbox_is_spam() {
    // RFC 5322 allows several authors in one From field; the stamp covers the first, and a
    // mail client shows them all: a mailbox added to a stamped From is a second From.
    let plain = from_alice("Alice Example <alice@a.example>");
    let (stamped, rec) = stamp_with(&plain, 11, &every_family());
    for from in [
        "Alice Example <alice@a.example>, \"PayPal Support\" <service@paypal.example>",
        "Alice Example <alice@a.example>,\n service@paypal.example",
        "Team: Alice Example <alice@a.example>, service@paypal.example;",
    ] {
        let raw = replace_field(&stamped, "From", from);
        for raw in [raw.clone(), to_crlf(&raw)] {
            let r = verify(&raw, &[RCPT], &rec);
            assert_eq!(r.verdict, Verdict::Spam, "{from:?}: {}", describe(&r));
        }
        // …and the writer does not stamp it.
        let unstamped = replace_field(&plain, "From", from);
        let msg = parse(&unstamped).unwrap();
        let e = prepare(&msg, &env(&[RCPT]), [1; 16], &CHAIN, &every_family())
            .expect_err(from)
            .to_string();
        assert!(e.contains("mailboxes"), "{e}");
    }
    // One mailbox in a group is one author.
    let raw = replace_field(&stamped, "From", "Team: Alice Example <alice@a.example>;");
    let r = verify(&raw, &[RCPT], &rec);
    assert_ne!(
        r.reason.as_deref().map(|r| r.contains("mailboxes")),
        Some(true)
    );
}
