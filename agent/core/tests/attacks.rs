// SPDX-License-Identifier: GPL-3.0-or-later
//! Where mail-parser and a mail client can read one message differently, and Unicode in what
//! people see (issue 12 item 3): duplicate `Content-Type` / `Content-Transfer-Encoding`
//! fields or a duplicate `boundary=` parameter, at the top or in a part; a text and an HTML
//! alternative that disagree; encoded-word tricks in the Subject and the display name;
//! confusable and unnormalised Unicode in the display name and the address.

mod common;

use common::*;
use mailstamp_core::{
    Inspection, Lookup, Policy, Report, Selection, StampError, Status, Verdict, evaluate,
    insert_header, inspect, parse, prepare,
};

const RCPT: &str = "bob@b.example";

fn stamp_all(raw: &[u8]) -> (Vec<u8>, Lookup) {
    let msg = parse(raw).expect("parses");
    let p = prepare(&msg, &env(&[RCPT]), [9; 16], &CHAIN, &Selection::all()).expect("stamps");
    let lookup = Lookup::Found {
        commitment: p.commitment,
        time: 1_700_000_000,
    };
    (insert_header(raw, &p.header), lookup)
}

fn verify(raw: &[u8], lookup: &Lookup) -> Report {
    let msg = parse(raw).expect("parses");
    let Inspection::Stamped(h) = inspect(&msg) else {
        panic!("stamped");
    };
    evaluate(
        &msg,
        &h,
        &env(&[RCPT]),
        lookup,
        &pass(),
        &Policy::default(),
        Some(1_700_000_100),
    )
}

fn status_of(r: &Report, name: &str) -> Option<Status> {
    r.components
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.status)
}

/// `stamped` with `from` replaced by `to` (first occurrence).
fn edit(stamped: &[u8], from: &str, to: &str) -> Vec<u8> {
    let s = String::from_utf8(stamped.to_vec()).unwrap();
    assert!(s.contains(from), "{from}");
    s.replacen(from, to, 1).into_bytes()
}

const HEAD: &str = "From: Alice <alice@a.example>\nTo: bob@b.example\nSubject: hi\n\
Date: Mon, 4 Mar 2024 10:00:00 +0100\nMessage-ID: <n1@a.example>\nMIME-Version: 1.0\n";

fn alternative() -> Vec<u8> {
    format!(
        "{HEAD}Content-Type: multipart/alternative; boundary=\"alt\"\n\n--alt\n\
         Content-Type: text/plain; charset=utf-8\n\nPay invoice 1234 to account A.\n--alt\n\
         Content-Type: text/html; charset=utf-8\n\n<p>Pay invoice 1234 to account A.</p>\n--alt--\n"
    )
    .into_bytes()
}

// --- (b) duplicate Content-Type / boundary ------------------------------------------------

#[test]
fn a_second_content_type_at_the_top_is_never_wanted() {
    let raw = format!("{HEAD}Content-Type: text/plain; charset=utf-8\n\nHello Bob\n").into_bytes();
    let (stamped, rec) = stamp_all(&raw);
    assert_eq!(verify(&stamped, &rec).verdict, Verdict::Wanted);
    // Another Content-Type above the real one: mail-parser reads the last, a client that
    // reads the first renders the body as something else.
    let twice = edit(
        &stamped,
        "Content-Type: text/plain",
        "Content-Type: text/html\nContent-Type: text/plain",
    );
    let r = verify(&twice, &rec);
    assert_eq!(r.verdict, Verdict::Spam, "{r:?}");
    assert!(
        r.reason.as_deref().unwrap().contains("Content-Type"),
        "{r:?}"
    );
    // And a writer does not stamp such a message.
    let msg = parse(&twice).unwrap();
    let unstamped = format!("{HEAD}Content-Type: text/html\nContent-Type: text/plain\n\nHello\n");
    let msg2 = parse(unstamped.as_bytes()).unwrap();
    let e = prepare(&msg2, &env(&[RCPT]), [9; 16], &CHAIN, &Selection::all()).unwrap_err();
    assert!(
        matches!(e, StampError::DuplicateField(ref f) if f.contains("Content-Type")),
        "{e}"
    );
    drop(msg);
}

#[test]
fn a_second_content_type_or_encoding_in_a_part_is_never_wanted() {
    let (stamped, rec) = stamp_all(&alternative());
    assert_eq!(verify(&stamped, &rec).verdict, Verdict::Wanted);
    for (from, to) in [
        (
            "Content-Type: text/html; charset=utf-8",
            "Content-Type: text/plain\nContent-Type: text/html; charset=utf-8",
        ),
        (
            "Content-Type: text/plain; charset=utf-8\n",
            "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\
             Content-Transfer-Encoding: 7bit\n",
        ),
    ] {
        let r = verify(&edit(&stamped, from, to), &rec);
        assert_eq!(r.verdict, Verdict::Spam, "{to}: {r:?}");
        assert!(r.reason.as_deref().unwrap().contains("Content-"), "{r:?}");
    }
}

#[test]
fn a_second_boundary_parameter_is_never_wanted() {
    let (stamped, rec) = stamp_all(&alternative());
    // A client taking the first boundary sees no parts at all (or the attacker's).
    let twice = edit(
        &stamped,
        "boundary=\"alt\"",
        "boundary=\"evil\"; boundary=\"alt\"",
    );
    let r = verify(&twice, &rec);
    assert_eq!(r.verdict, Verdict::Spam, "{r:?}");
    assert!(r.reason.as_deref().unwrap().contains("boundary"), "{r:?}");
}

// --- (c) text and HTML alternatives -------------------------------------------------------

#[test]
fn an_html_alternative_that_disagrees_with_the_text_is_a_difference() {
    let (stamped, rec) = stamp_all(&alternative());
    let changed = edit(
        &stamped,
        "<p>Pay invoice 1234 to account A.",
        "<p>Pay invoice 1234 to account B.",
    );
    let r = verify(&changed, &rec);
    assert_ne!(r.verdict, Verdict::Wanted, "{r:?}");
    assert_eq!(status_of(&r, "html.0"), Some(Status::Mismatch), "{r:?}");
    assert_eq!(status_of(&r, "text.0"), Some(Status::Match), "{r:?}");
    // And the other way round.
    let changed = edit(
        &stamped,
        "\nPay invoice 1234 to account A.",
        "\nPay invoice 1234 to account B.",
    );
    let r = verify(&changed, &rec);
    assert_eq!(status_of(&r, "text.0"), Some(Status::Mismatch), "{r:?}");
    assert_eq!(status_of(&r, "html.0"), Some(Status::Match), "{r:?}");
}

// --- (d) encoded words --------------------------------------------------------------------

#[test]
fn encoded_word_tricks_in_the_subject_and_display_name() {
    let (stamped, rec) = stamp_all(&format!("{HEAD}\nHello\n").into_bytes());
    // An encoded word that decodes to the same visible text is the same component…
    let same = edit(&stamped, "Subject: hi", "Subject: =?utf-8?q?hi?=");
    assert_eq!(verify(&same, &rec).verdict, Verdict::Wanted);
    // …one that decodes to a line break and more text is not.
    let nl = edit(
        &stamped,
        "Subject: hi",
        "Subject: =?utf-8?q?hi=0D=0ABcc=3A_eve=40e.example?=",
    );
    let r = verify(&nl, &rec);
    assert_eq!(status_of(&r, "subject"), Some(Status::Mismatch), "{r:?}");
    // A display name that decodes to an address-like text is a changed name (spam).
    let spoof = edit(
        &stamped,
        "From: Alice <",
        "From: =?utf-8?q?support=40paypal=2Ecom_=3Csupport=40paypal=2Ecom=3E?= <",
    );
    let r = verify(&spoof, &rec);
    assert_eq!(r.verdict, Verdict::Spam, "{r:?}");
    assert_eq!(status_of(&r, "from.name"), Some(Status::Mismatch), "{r:?}");
    // A right-to-left override hidden in an encoded word changes what is shown: differs.
    let rlo = edit(
        &stamped,
        "From: Alice <",
        "From: =?utf-8?q?Alice=E2=80=AE?= <",
    );
    assert_eq!(verify(&rlo, &rec).verdict, Verdict::Spam);
}

// --- (a) Unicode ---------------------------------------------------------------------------

#[test]
fn a_confusable_letter_in_the_name_or_domain_is_spam() {
    let (stamped, rec) = stamp_all(&format!("{HEAD}\nHello\n").into_bytes());
    // Cyrillic а (U+0430) for Latin a, encoded so it survives any transport.
    let name = edit(&stamped, "From: Alice <", "From: =?utf-8?q?Alic=D0=B5?= <");
    let r = verify(&name, &rec);
    assert_eq!(r.verdict, Verdict::Spam, "{r:?}");
    assert_eq!(status_of(&r, "from.name"), Some(Status::Mismatch), "{r:?}");
    let domain = edit(&stamped, "alice@a.example>", "alice@\u{430}.example>");
    let r = verify(&domain, &rec);
    assert_eq!(r.verdict, Verdict::Spam, "{r:?}");
    assert_eq!(
        status_of(&r, "from.domain"),
        Some(Status::Mismatch),
        "{r:?}"
    );
}

#[test]
fn the_display_name_is_not_normalised_a_decomposed_form_differs() {
    // "José" precomposed (U+00E9) at stamping, decomposed (e + U+0301) on arrival: the same
    // glyphs, other code points. The stamp commits to the decoded text exactly (PROTOCOL §3:
    // no NFC), so this is a difference, not a match.
    let raw = format!(
        "{}\nHello\n",
        HEAD.replace("From: Alice", "From: =?utf-8?q?Jos=C3=A9?=")
    );
    let (stamped, rec) = stamp_all(raw.as_bytes());
    assert_eq!(verify(&stamped, &rec).verdict, Verdict::Wanted);
    let nfd = edit(&stamped, "Jos=C3=A9", "Jose=CC=81");
    let r = verify(&nfd, &rec);
    assert_eq!(status_of(&r, "from.name"), Some(Status::Mismatch), "{r:?}");
}

// --- verify.min_version ----------------------------------------------------------------

#[test]
fn a_receiver_can_refuse_version_1_stamps() {
    let raw = format!("{HEAD}\nHello\n").into_bytes();
    let msg = parse(&raw).unwrap();
    // Selection::default() is the version-1 families: a v=1 stamp.
    let p1 = prepare(&msg, &env(&[RCPT]), [9; 16], &CHAIN, &Selection::default()).unwrap();
    assert_eq!(p1.header.version(), 1);
    let v1 = insert_header(&raw, &p1.header);
    let rec1 = Lookup::Found {
        commitment: p1.commitment,
        time: 1_700_000_000,
    };
    let (v2, rec2) = stamp_all(&raw);
    let judge = |raw: &[u8], rec: &Lookup, min_version: u32| {
        let msg = parse(raw).unwrap();
        let Inspection::Stamped(h) = inspect(&msg) else {
            panic!("stamped");
        };
        let policy = Policy {
            min_version,
            ..Policy::default()
        };
        evaluate(
            &msg,
            &h,
            &env(&[RCPT]),
            rec,
            &pass(),
            &policy,
            Some(1_700_000_100),
        )
    };
    assert_eq!(
        judge(&v1, &rec1, 1).verdict,
        Verdict::Wanted,
        "the default takes v1"
    );
    assert_eq!(judge(&v2, &rec2, 2).verdict, Verdict::Wanted);
    let r = judge(&v1, &rec1, 2);
    assert_eq!(r.verdict, Verdict::Invalid, "{r:?}");
    assert!(
        r.reason.as_deref().unwrap().contains("verify.min_version"),
        "{r:?}"
    );
    // Decided from the header: whatever the chain says.
    let r = judge(&v1, &Lookup::Unavailable("down".into()), 2);
    assert_eq!(r.verdict, Verdict::Invalid, "{r:?}");
}
