// SPDX-License-Identifier: GPL-3.0-or-later
//! Canonicalisation by meaning: hand-built variants of one message that a relay, an MUA or a
//! list could produce decompose identically and verify `wanted`; the changes further
//! processing must explain are explained (verdict *and* component status); the changes it must
//! not explain are not; and hostile `Mail-Stamp:` headers get an answer, never a panic.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use mailstamp_core::component::{Decomposed, Value, decompose};
use mailstamp_core::verify::{MAX_FOOTER_BYTES, MAX_FOOTER_LINES};
use mailstamp_core::{
    Envelope, Inspection, Lookup, Policy, Report, Selection, StampHeader, Status, Verdict,
    evaluate, insert_header, inspect, parse, prepare,
};
use proptest::prelude::*;

const RCPT: &str = "bob@b.example";

// ---------------------------------------------------------------------------------------------
// Building messages

/// The body text every body variant carries. One line is longer than 76 columns so that QP
/// and base64 encoders have to wrap it; every non-ASCII letter is in Latin-1.
const BODY: &str = "Hallo Bob,\n\
\n\
Grüße aus Köln! Das Wetter ist schön, und die Straßenbahn fährt wieder pünktlich über die Brücke.\n\
Wir sehen uns nächste Woche im Büro.\n\
\n\
Viele Grüße\n\
Alice\n";

const SUBJECT: &str = "Grüße aus Köln: Treffen am Montag";

/// The common header block, without Subject and To (the variants vary those).
fn std_headers() -> Vec<String> {
    vec![
        "From: Alice Example <alice@a.example>".into(),
        "Cc: dave@d.example".into(),
        "Date: Mon, 4 Mar 2024 10:00:00 +0100".into(),
        "Message-ID: <m1@a.example>".into(),
        "MIME-Version: 1.0".into(),
    ]
}

/// A message from header lines and a body, LF line endings.
fn mail(headers: &[String], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for h in headers {
        out.extend_from_slice(h.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

/// A single-part text/plain message with the standard headers.
fn text_mail(subject: &str, to: &str, ct: &str, cte: &str, body: &[u8]) -> Vec<u8> {
    let mut h = std_headers();
    h.push(format!("To: {to}"));
    h.push(format!("Subject: {subject}"));
    h.push(format!("Content-Type: {ct}"));
    h.push(format!("Content-Transfer-Encoding: {cte}"));
    mail(&h, body)
}

fn plain(body: &[u8]) -> Vec<u8> {
    text_mail(
        SUBJECT,
        "Bob <bob@b.example>, carol@c.example",
        "text/plain; charset=utf-8",
        "8bit",
        body,
    )
}

/// Quoted-printable with soft breaks so no line exceeds `width` (RFC 2045 §6.7).
fn qp(bytes: &[u8], width: usize) -> Vec<u8> {
    let mut out = String::new();
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    for (li, line) in lines.iter().enumerate() {
        let mut col = 0;
        for (i, &b) in line.iter().enumerate() {
            let last = i + 1 == line.len();
            let tok = match b {
                b' ' | b'\t' if last => format!("={b:02X}"),
                b'=' => "=3D".to_owned(),
                b' ' | b'\t' | 33..=126 => (b as char).to_string(),
                _ => format!("={b:02X}"),
            };
            if col + tok.len() > width - 1 {
                out.push_str("=\n");
                col = 0;
            }
            out.push_str(&tok);
            col += tok.len();
        }
        if li + 1 < lines.len() {
            out.push('\n');
        }
    }
    out.into_bytes()
}

/// Base64 in lines of `width` characters.
fn b64(bytes: &[u8], width: usize) -> Vec<u8> {
    let enc = B64.encode(bytes);
    let mut out = Vec::new();
    for chunk in enc.as_bytes().chunks(width) {
        out.extend_from_slice(chunk);
        out.push(b'\n');
    }
    out
}

/// The text in ISO-8859-1; every character must be representable.
fn latin1(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| u8::try_from(u32::from(c)).expect("Latin-1 text"))
        .collect()
}

fn decomposition(raw: &[u8]) -> Decomposed {
    let msg = parse(raw).expect("parses");
    decompose(&msg, &Envelope::default(), &Selection::default())
}

/// A readable form of a decomposition, for assertion messages.
fn show(d: &Decomposed) -> String {
    d.values
        .iter()
        .map(|(n, v)| match v {
            Value::Bytes(b) => format!("{n}={:?}", String::from_utf8_lossy(b)),
            Value::Lines(l) => format!("{n}={l:?}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The stamp of `raw` for [`RCPT`] and the record the chain would hold.
fn stamp_of(raw: &[u8], seed: u8) -> (StampHeader, Lookup) {
    let msg = parse(raw).expect("parses");
    let p = prepare(
        &msg,
        &env(&[RCPT]),
        [seed; 16],
        &CHAIN,
        &Selection::default(),
    )
    .expect("stamps");
    let rec = Lookup::Found {
        commitment: p.commitment,
        time: 1_700_000_000,
    };
    (p.header, rec)
}

/// `raw` received with `header` on top (as if it had been stamped and then changed on the
/// way), verified by [`RCPT`].
fn verify_as(raw: &[u8], header: &StampHeader, rec: &Lookup) -> Report {
    verify(&insert_header(raw, header), &[RCPT], rec)
}

fn status<'a>(r: &'a Report, name: &str) -> (Status, Option<&'a str>) {
    let c = r
        .components
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no component {name}: {}", describe(r)));
    (c.status, c.note.as_deref())
}

/// All variants decompose like the first, and the stamp of the first verifies every variant
/// `wanted` with every component an exact match, under LF and CRLF.
fn assert_same_meaning(what: &str, variants: &[(&str, Vec<u8>)]) {
    let (base_name, base) = &variants[0];
    let want = decomposition(base);
    let (header, rec) = stamp_of(base, 7);
    for (name, v) in variants {
        for (eol, raw) in [("LF", v.clone()), ("CRLF", to_crlf(v))] {
            let got = decomposition(&raw);
            assert!(
                got.values == want.values && got.counts == want.counts,
                "{what}: `{name}` ({eol}) decomposes differently from `{base_name}`:\n\
                 --- want\n{}\n--- got\n{}",
                show(&want),
                show(&got)
            );
            let r = verify_as(&raw, &header, &rec);
            assert_eq!(
                r.verdict,
                Verdict::Wanted,
                "{what}: `{name}` ({eol}): {}",
                describe(&r)
            );
            assert!(
                r.components
                    .iter()
                    .all(|c| c.status == Status::Match || c.name == "rcpt"),
                "{what}: `{name}` ({eol}) only explained: {}",
                describe(&r)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Same meaning, different bytes

#[test]
fn body_transfer_encodings_and_charsets() {
    let utf8 = BODY.as_bytes();
    let variants = [
        ("8bit utf-8", plain(utf8)),
        (
            "qp utf-8 76",
            text_mail(
                SUBJECT,
                "Bob <bob@b.example>, carol@c.example",
                "text/plain; charset=utf-8",
                "quoted-printable",
                &qp(utf8, 76),
            ),
        ),
        (
            "qp utf-8 40",
            text_mail(
                SUBJECT,
                "Bob <bob@b.example>, carol@c.example",
                "text/plain; charset=\"UTF-8\"",
                "Quoted-Printable",
                &qp(utf8, 40),
            ),
        ),
        (
            "base64 utf-8 76",
            text_mail(
                SUBJECT,
                "Bob <bob@b.example>, carol@c.example",
                "text/plain; charset=utf-8",
                "base64",
                &b64(utf8, 76),
            ),
        ),
        (
            "base64 utf-8 60",
            text_mail(
                SUBJECT,
                "Bob <bob@b.example>, carol@c.example",
                "text/plain; charset=utf-8",
                "BASE64",
                &b64(utf8, 60),
            ),
        ),
        (
            "base64 of CRLF text",
            text_mail(
                SUBJECT,
                "Bob <bob@b.example>, carol@c.example",
                "text/plain; charset=utf-8",
                "base64",
                &b64(&to_crlf(utf8), 76),
            ),
        ),
        (
            "qp iso-8859-1",
            text_mail(
                SUBJECT,
                "Bob <bob@b.example>, carol@c.example",
                "text/plain; charset=iso-8859-1",
                "quoted-printable",
                &qp(&latin1(BODY), 76),
            ),
        ),
        (
            "8bit iso-8859-1",
            text_mail(
                SUBJECT,
                "Bob <bob@b.example>, carol@c.example",
                "text/plain; charset=ISO-8859-1",
                "8bit",
                &latin1(BODY),
            ),
        ),
        (
            "base64 windows-1252",
            text_mail(
                SUBJECT,
                "Bob <bob@b.example>, carol@c.example",
                "text/plain; charset=windows-1252",
                "base64",
                &b64(&latin1(BODY), 72),
            ),
        ),
    ];
    assert_same_meaning("body encoding", &variants);
}

#[test]
fn subject_encodings_and_folding() {
    let to = "Bob <bob@b.example>, carol@c.example";
    let ct = "text/plain; charset=utf-8";
    let b = BODY.as_bytes();
    let subjects = [
        ("raw utf-8", SUBJECT.to_owned()),
        (
            "B-encoded",
            format!("=?UTF-8?B?{}?=", B64.encode(SUBJECT.as_bytes())),
        ),
        (
            "Q-encoded",
            "=?utf-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln:_Treffen_am_Montag?=".to_owned(),
        ),
        (
            "Q-encoded Latin-1 words between plain words",
            "=?ISO-8859-1?Q?Gr=FC=DFe?= aus =?iso-8859-1?q?K=F6ln=3A?= Treffen am Montag"
                .to_owned(),
        ),
        (
            "two encoded words folded",
            "=?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_?=\n =?UTF-8?B?S8O2bG46IFRyZWZmZW4gYW0gTW9udGFn?="
                .to_owned(),
        ),
        (
            "raw folded over two lines",
            "Grüße aus Köln:\n\tTreffen   am Montag".to_owned(),
        ),
    ];
    let variants: Vec<(&str, Vec<u8>)> = subjects
        .iter()
        .map(|(n, s)| (*n, text_mail(s, to, ct, "8bit", b)))
        .collect();
    assert_same_meaning("subject", &variants);
}

#[test]
fn address_headers_folded_reordered_recased_renamed() {
    let ct = "text/plain; charset=utf-8";
    let b = BODY.as_bytes();
    let tos = [
        ("plain", "Bob <bob@b.example>, carol@c.example"),
        (
            "folded, reordered, recased",
            "Carol <CAROL@C.Example>,\n\t\"Bob, the Builder\" <Bob@B.EXAMPLE>",
        ),
        (
            "encoded display name",
            "=?utf-8?q?B=C3=B6b?= <bob@b.example>,\n   <carol@c.example>",
        ),
        ("bare addresses", "bob@b.example,carol@c.example"),
        (
            "with a comment",
            "bob@b.example (Bob at home), carol@c.example",
        ),
    ];
    let mut variants: Vec<(&str, Vec<u8>)> = tos
        .iter()
        .map(|(n, to)| (*n, text_mail(SUBJECT, to, ct, "8bit", b)))
        .collect();
    // From and Date are components too; their spelling may change, their meaning not.
    let mut h = std_headers();
    h[0] = "From: \"Example, Alice\" <ALICE@A.EXAMPLE>".into();
    h[2] = "Date: Mon, 04 Mar 2024 09:00:00 +0000 (UTC)".into();
    h[3] = "Message-ID:\n <m1@a.example>".into();
    h.push("To: Bob <bob@b.example>, carol@c.example".into());
    h.push(format!("Subject: {SUBJECT}"));
    h.push(format!("Content-Type: {ct}"));
    variants.push(("From renamed, Date in UTC, Message-ID folded", mail(&h, b)));
    assert_same_meaning("addresses", &variants);
}

#[test]
fn line_endings_trailing_whitespace_and_blank_lines() {
    let ragged = BODY
        .replace(",\n", ",   \n")
        .replace("Alice\n", "Alice\t\n\n\n   \n");
    let crlf_in_lf = String::from_utf8(to_crlf(BODY.as_bytes())).unwrap();
    let variants = [
        ("as written", plain(BODY.as_bytes())),
        (
            "trailing whitespace and blank lines",
            plain(ragged.as_bytes()),
        ),
        ("leading blank line", plain(format!("\n{BODY}").as_bytes())),
        ("no final newline", plain(BODY.trim_end().as_bytes())),
        ("CRLF body under LF headers", plain(crlf_in_lf.as_bytes())),
        (
            "inner runs of spaces",
            plain(BODY.replace("Viele Grüße", "Viele   Grüße").as_bytes()),
        ),
    ];
    assert_same_meaning("whitespace", &variants);
}

const HTML: &str = "<html><body>\n<p>Grüße aus <b>Köln</b>!</p>\n<p>Das Wetter ist schön, und die Straßenbahn fährt wieder pünktlich über die Brücke.</p>\n</body></html>\n";

fn alternative(text_cte: &str, text: &[u8], html_cte: &str, html: &[u8]) -> Vec<u8> {
    let mut h = std_headers();
    h.push("To: Bob <bob@b.example>, carol@c.example".into());
    h.push(format!("Subject: {SUBJECT}"));
    h.push("Content-Type: multipart/alternative; boundary=\"alt-1\"".into());
    let mut body = b"This is a multi-part message in MIME format.\n\n--alt-1\n".to_vec();
    body.extend_from_slice(
        format!(
            "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: {text_cte}\n\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(text);
    body.extend_from_slice(b"\n--alt-1\n");
    body.extend_from_slice(
        format!(
            "Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: {html_cte}\n\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(html);
    body.extend_from_slice(b"\n--alt-1--\n");
    mail(&h, &body)
}

#[test]
fn alternative_html_reencoded() {
    let t = BODY.as_bytes();
    let h = HTML.as_bytes();
    let variants = [
        ("8bit html", alternative("8bit", t, "8bit", h)),
        ("base64 html", alternative("8bit", t, "base64", &b64(h, 76))),
        (
            "qp html, qp text",
            alternative(
                "quoted-printable",
                &qp(t, 76),
                "quoted-printable",
                &qp(h, 76),
            ),
        ),
        (
            "qp html narrow, base64 text",
            alternative("base64", &b64(t, 64), "quoted-printable", &qp(h, 30)),
        ),
        (
            "html reflowed",
            alternative(
                "8bit",
                t,
                "8bit",
                HTML.replace("<p>", "\n  <p>").replace(' ', "\n").as_bytes(),
            ),
        ),
    ];
    assert_same_meaning("alternative", &variants);
    let d = decomposition(&variants[0].1);
    assert_eq!(d.counts.text, 1);
    assert_eq!(d.counts.html, 1);
}

/// Binary content with CR, LF and CRLF inside: base64 must keep it exact.
fn payload() -> Vec<u8> {
    (0u32..1500)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .chain(*b"\r\n\n\r\x00\xff")
        .collect()
}

fn with_attachment(att_headers: &str, att_body: &[u8], extra: Option<&[u8]>) -> Vec<u8> {
    let mut h = std_headers();
    h.push("To: Bob <bob@b.example>, carol@c.example".into());
    h.push(format!("Subject: {SUBJECT}"));
    h.push("Content-Type: multipart/mixed; boundary=\"mix-1\"".into());
    let mut body = b"--mix-1\nContent-Type: text/plain; charset=utf-8\n\n".to_vec();
    body.extend_from_slice(BODY.as_bytes());
    body.extend_from_slice(b"\n--mix-1\n");
    body.extend_from_slice(att_headers.as_bytes());
    body.extend_from_slice(b"\n\n");
    body.extend_from_slice(att_body);
    if let Some(extra) = extra {
        body.extend_from_slice(b"\n--mix-1\n");
        body.extend_from_slice(extra);
    }
    body.extend_from_slice(b"\n--mix-1--\n");
    mail(&h, &body)
}

const ATT_HEADERS: &str = "Content-Type: application/octet-stream; name=\"report.bin\"\n\
Content-Transfer-Encoding: base64\n\
Content-Disposition: attachment; filename=\"report.bin\"";

#[test]
fn attachment_rewrapped() {
    let p = payload();
    let variants = [
        (
            "76 columns",
            with_attachment(ATT_HEADERS, &b64(&p, 76), None),
        ),
        (
            "60 columns",
            with_attachment(ATT_HEADERS, &b64(&p, 60), None),
        ),
        (
            "one long line, unquoted name",
            with_attachment(
                "Content-Type: application/octet-stream; name=report.bin\n\
                 Content-Transfer-Encoding: BASE64\n\
                 Content-Disposition: attachment;\n\tfilename=report.bin",
                &b64(&p, 4096),
                None,
            ),
        ),
    ];
    assert_same_meaning("attachment", &variants);
    let d = decomposition(&variants[0].1);
    assert_eq!(d.counts.att, 1, "{}", show(&d));
}

// ---------------------------------------------------------------------------------------------
// Further processing: what lists do is explained, what attackers do is not

const FOOTER: &str = "_______________________________________________\n\
kölsch-list mailing list\n\
koelsch-list@lists.example\n\
https://lists.example/mailman/listinfo/koelsch-list\n";

fn assert_explained(r: &Report, name: &str, needle: &str) {
    assert_eq!(r.verdict, Verdict::Wanted, "{}", describe(r));
    let (st, note) = status(r, name);
    assert_eq!(st, Status::Explained, "{name}: {}", describe(r));
    assert!(
        note.is_some_and(|n| n.contains(needle)),
        "{name} note {note:?} lacks `{needle}`"
    );
    assert!(
        r.reason.as_deref().is_some_and(|x| x.contains(needle)),
        "reason {:?} lacks `{needle}`",
        r.reason
    );
}

#[test]
fn list_footer_on_the_text_is_explained() {
    let (h, rec) = stamp_of(&plain(BODY.as_bytes()), 11);
    for (what, body) in [
        ("directly", format!("{BODY}{FOOTER}")),
        ("after a blank line", format!("{BODY}\n{FOOTER}")),
        ("one-line footer", format!("{BODY}-- sent via the list\n")),
    ] {
        let r = verify_as(&plain(body.as_bytes()), &h, &rec);
        assert_explained(&r, "text.0", "footer");
        assert_eq!(status(&r, "signature").0, Status::Match, "{what}");
    }
}

fn signed(body_and_sig: &str) -> Vec<u8> {
    plain(body_and_sig.as_bytes())
}

const SIGNED: &str = "Hallo Bob,\n\nbis Montag im Büro.\n\n-- \nAlice Example\nhttps://a.example\n";

#[test]
fn list_footer_after_a_signature_is_explained() {
    let (h, rec) = stamp_of(&signed(SIGNED), 12);
    let r = verify_as(&signed(&format!("{SIGNED}{FOOTER}")), &h, &rec);
    assert_explained(&r, "signature", "footer");
    assert_eq!(status(&r, "text.0").0, Status::Match);
}

#[test]
fn list_footer_with_its_own_separator_after_a_signature_is_explained() {
    // Lists such as ILUG's (see corpus easy-ham-2-00051) start their footer with `-- `.
    let (h, rec) = stamp_of(&signed(SIGNED), 13);
    let footer = format!("-- \n{FOOTER}");
    let r = verify_as(&signed(&format!("{SIGNED}{footer}")), &h, &rec);
    assert_eq!(r.verdict, Verdict::Wanted, "{}", describe(&r));
    assert_eq!(status(&r, "text.0").0, Status::Match, "{}", describe(&r));
    assert_eq!(status(&r, "signature").0, Status::Explained);
    // Without an author signature, the list's separated footer becomes the signature.
    let (h, rec) = stamp_of(&plain(BODY.as_bytes()), 14);
    let r = verify_as(&plain(format!("{BODY}{footer}").as_bytes()), &h, &rec);
    assert_eq!(r.verdict, Verdict::Wanted, "{}", describe(&r));
    assert_eq!(status(&r, "text.0").0, Status::Match);
    assert_eq!(status(&r, "signature").0, Status::Explained);
}

#[test]
fn list_wrapping_a_single_part_into_multipart_with_a_footer_part_is_explained() {
    let original = plain(BODY.as_bytes());
    let (h, rec) = stamp_of(&original, 15);
    let mut hs = std_headers();
    hs.push("To: Bob <bob@b.example>, carol@c.example".into());
    hs.push(format!("Subject: {SUBJECT}"));
    hs.push("Content-Type: multipart/mixed; boundary=\"===============1234==\"".into());
    let body = format!(
        "--===============1234==\n\
         Content-Type: text/plain; charset=\"utf-8\"\n\
         Content-Transfer-Encoding: 8bit\n\
         \n\
         {BODY}\n\
         --===============1234==\n\
         Content-Type: text/plain; charset=\"us-ascii\"\n\
         MIME-Version: 1.0\n\
         Content-Transfer-Encoding: 7bit\n\
         Content-Disposition: inline\n\
         \n\
         _______________________________________________\n\
         koelsch-list mailing list\n\
         https://lists.example/mailman/listinfo/koelsch-list\n\
         \n\
         --===============1234==--\n"
    );
    let r = verify_as(&mail(&hs, body.as_bytes()), &h, &rec);
    assert_eq!(r.verdict, Verdict::Wanted, "{}", describe(&r));
    assert_eq!(status(&r, "text.0").0, Status::Match);
    for name in ["parts", "text.1"] {
        let (st, note) = status(&r, name);
        assert_eq!(st, Status::Explained, "{name}: {}", describe(&r));
        assert!(
            note.is_some_and(|n| n.contains("footer")),
            "{name}: {note:?}"
        );
    }
}

#[test]
fn subject_tag_is_explained() {
    let to = "Bob <bob@b.example>, carol@c.example";
    let ct = "text/plain; charset=utf-8";
    let (h, rec) = stamp_of(&plain(BODY.as_bytes()), 16);
    for subject in [
        format!("[koelsch-list] {SUBJECT}"),
        "[koelsch-list] =?utf-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln:_Treffen_am_Montag?=".to_owned(),
        format!("[koelsch-list]\n {SUBJECT}"),
    ] {
        let r = verify_as(
            &text_mail(&subject, to, ct, "8bit", BODY.as_bytes()),
            &h,
            &rec,
        );
        assert_explained(&r, "subject", "subject tag");
    }
    // A list tag in front of a tag the sender already had.
    let (h2, rec2) = stamp_of(
        &text_mail(
            &format!("[ILUG] {SUBJECT}"),
            to,
            ct,
            "8bit",
            BODY.as_bytes(),
        ),
        16,
    );
    let r = verify_as(
        &text_mail(
            &format!("[koelsch-list] [ILUG] {SUBJECT}"),
            to,
            ct,
            "8bit",
            BODY.as_bytes(),
        ),
        &h2,
        &rec2,
    );
    assert_explained(&r, "subject", "subject tag");
    // A tag is explained; a rewritten subject is not.
    let r = verify_as(
        &text_mail(
            "[koelsch-list] Grüße aus Bonn",
            to,
            ct,
            "8bit",
            BODY.as_bytes(),
        ),
        &h,
        &rec,
    );
    assert_ne!(r.verdict, Verdict::Wanted, "{}", describe(&r));
    assert_eq!(status(&r, "subject").0, Status::Mismatch);
}

#[test]
fn a_footer_beyond_the_limits_is_not_explained() {
    let (h, rec) = stamp_of(&plain(BODY.as_bytes()), 17);
    let many_lines: String = (0..=MAX_FOOTER_LINES)
        .map(|i| format!("footer line {i}\n"))
        .collect();
    let many_bytes = format!("{}\n", "x".repeat(MAX_FOOTER_BYTES + 1));
    for (what, footer) in [("lines", many_lines), ("bytes", many_bytes)] {
        let r = verify_as(&plain(format!("{BODY}{footer}").as_bytes()), &h, &rec);
        assert_ne!(r.verdict, Verdict::Wanted, "{what}: {}", describe(&r));
        assert_eq!(status(&r, "text.0").0, Status::Mismatch, "{what}");
    }
    // Just inside the line limit is still a footer.
    let ok: String = (0..MAX_FOOTER_LINES)
        .map(|i| format!("footer line {i}\n"))
        .collect();
    let r = verify_as(&plain(format!("{BODY}{ok}").as_bytes()), &h, &rec);
    assert_explained(&r, "text.0", "footer");
}

#[test]
fn a_changed_word_is_suspect_and_named() {
    let (h, rec) = stamp_of(&plain(BODY.as_bytes()), 18);
    let changed = BODY.replace("nächste Woche", "übernächste Woche");
    let r = verify_as(&plain(changed.as_bytes()), &h, &rec);
    assert_eq!(r.verdict, Verdict::Suspect, "{}", describe(&r));
    assert_eq!(status(&r, "text.0").0, Status::Mismatch);
    assert!(
        r.reason.as_deref().is_some_and(|x| x.contains("text.0")),
        "{:?}",
        r.reason
    );
}

#[test]
fn an_added_attachment_is_not_wanted() {
    let p = payload();
    let original = with_attachment(ATT_HEADERS, &b64(&p, 76), None);
    let (h, rec) = stamp_of(&original, 19);
    let extra = format!(
        "Content-Type: application/octet-stream; name=\"invoice.exe\"\n\
         Content-Transfer-Encoding: base64\n\
         Content-Disposition: attachment; filename=\"invoice.exe\"\n\n{}",
        B64.encode(b"MZ\x90\x00 not really")
    );
    let tampered = with_attachment(ATT_HEADERS, &b64(&p, 76), Some(extra.as_bytes()));
    let r = verify_as(&tampered, &h, &rec);
    assert_ne!(r.verdict, Verdict::Wanted, "{}", describe(&r));
    assert_eq!(status(&r, "att.1").0, Status::Added);
    assert_eq!(status(&r, "parts").0, Status::Mismatch);
    // A swapped attachment is not wanted either.
    let mut q = p.clone();
    q[700] ^= 1;
    let r = verify_as(&with_attachment(ATT_HEADERS, &b64(&q, 76), None), &h, &rec);
    assert_ne!(r.verdict, Verdict::Wanted, "{}", describe(&r));
    assert_eq!(status(&r, "att.0").0, Status::Mismatch);
}

// ---------------------------------------------------------------------------------------------
// Hostile headers

fn inspect_raw(raw: &[u8]) -> Inspection {
    let msg = parse(raw).expect("parses");
    inspect(&msg)
}

#[test]
fn garbled_mail_stamp_headers_are_invalid() {
    let (_, real) = &fixtures("corpus")[0];
    let (h, _) = stamp_of(real, 21);
    let good = h.value();
    assert!(matches!(
        inspect_raw(&insert_header(real, &h)),
        Inspection::Stamped(_)
    ));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("garbage", b"hello world".to_vec()),
        ("no tags", b";;;".to_vec()),
        (
            "oversized",
            format!("{good}; x={}", "A".repeat(9000)).into_bytes(),
        ),
        ("duplicate tag", format!("{good}; s=AAAA").into_bytes()),
        ("wrong version", good.replacen("v=1", "v=2", 1).into_bytes()),
        ("version 10", good.replacen("v=1", "v=10", 1).into_bytes()),
        ("missing digests", good.replace("; d=", "; x=").into_bytes()),
        ("truncated", good.as_bytes()[..good.len() / 2].to_vec()),
        ("not utf-8", [good.as_bytes(), b"; z=\xff\xfe"].concat()),
        ("encoded word", b"=?utf-8?b?dj0x?=".to_vec()),
        (
            "digest count off",
            good.replacen("h=from:", "h=from:cc:", 1).into_bytes(),
        ),
        (
            "upper-case tag",
            good.replacen("v=1", "V=1", 1).into_bytes(),
        ),
    ];
    for (what, value) in cases {
        let raw = [b"Mail-Stamp: ".as_slice(), &value, b"\n", real].concat();
        for raw in [raw.clone(), to_crlf(&raw)] {
            match inspect_raw(&raw) {
                Inspection::Invalid(why) => assert!(!why.is_empty(), "{what}"),
                other => panic!("{what}: {other:?}"),
            }
        }
    }
    assert_eq!(inspect_raw(real), Inspection::Unstamped);
}

#[test]
fn the_topmost_mail_stamp_counts() {
    let (_, real) = &fixtures("corpus")[1];
    let (h, _) = stamp_of(real, 22);
    let raw = [b"Mail-Stamp: v=9\n".as_slice(), &insert_header(real, &h)].concat();
    assert!(matches!(inspect_raw(&raw), Inspection::Invalid(_)));
}

/// What mail is made of: printable ASCII, line breaks, tab, some 8-bit bytes, and the
/// characters that structure headers, tags and MIME.
fn mail_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        8 => 0x20u8..0x7f,
        2 => prop::sample::select(b"\r\n\t=;:-<>@\"".to_vec()),
        1 => prop::sample::select(vec![0x80u8, 0xa0, 0xc3, 0xbc, 0xe2, 0xff, 0x00]),
    ]
}

/// Fragments that push a random message into the interesting branches of the parsers.
fn mail_token() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop::collection::vec(mail_byte(), 0..24),
        1 => prop::sample::select(vec![
            b"\nContent-Type: multipart/mixed; boundary=b\n\n--b\n".to_vec(),
            b"\n--b\n".to_vec(),
            b"\n--b--\n".to_vec(),
            b"Content-Transfer-Encoding: base64\n".to_vec(),
            b"Content-Transfer-Encoding: quoted-printable\n".to_vec(),
            b"Content-Type: text/html; charset=iso-8859-1\n".to_vec(),
            b"Content-Type: message/rfc822\n\n".to_vec(),
            b"=?utf-8?q?=C3=BC?=".to_vec(),
            b"\n-- \n".to_vec(),
            b"From: a@b.c\nTo: d@e.f\n".to_vec(),
            b"; h=from:text.0:att.15; d=".to_vec(),
        ]),
    ]
}

fn mail_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(mail_token(), 0..max).prop_map(|v| v.concat())
}

/// Runs the whole inbound path on `raw`; with a decoded header, evaluates against both the
/// matching record and a foreign one.
fn inbound(raw: &[u8]) {
    let Some(msg) = parse(raw) else { return };
    if let Inspection::Stamped(h) = inspect(&msg) {
        for lookup in [
            Lookup::Found {
                commitment: h.commitment(),
                time: 1_700_000_000,
            },
            Lookup::Found {
                commitment: [0; 24],
                time: 0,
            },
        ] {
            for env in [env(&[]), env(&[RCPT])] {
                let r = evaluate(
                    &msg,
                    &h,
                    &env,
                    &lookup,
                    &common::pass(),
                    &Policy::default(),
                    Some(1),
                );
                if let Some(s) = r.score {
                    assert!((0.0..=1.0).contains(&s));
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_header_values_never_panic(value in mail_bytes(12), body in mail_bytes(24)) {
        let (_, real) = &fixtures("corpus")[2];
        inbound(&[b"Mail-Stamp: ".as_slice(), &value, b"\n", real].concat());
        inbound(&[b"Mail-Stamp: ".as_slice(), &value, b"\n", &body].concat());
        inbound(&body);
    }

    #[test]
    fn mutated_valid_headers_never_panic(
        pos in 0usize..4096, cut in 0usize..64, insert in mail_bytes(4), body in mail_bytes(24),
    ) {
        let base = plain(BODY.as_bytes());
        let (h, _) = stamp_of(&base, 23);
        let value = h.folded_value("\n");
        let pos = pos % (value.len() + 1);
        let end = (pos + cut).min(value.len());
        let mutated = [&value.as_bytes()[..pos], &insert, &value.as_bytes()[end..]].concat();
        inbound(&[b"Mail-Stamp: ".as_slice(), &mutated, b"\n", &base].concat());
        inbound(&[b"Mail-Stamp: ".as_slice(), &mutated, b"\n", &base[..base.len() / 2], &body].concat());
        // The unmutated header over an arbitrary body reaches the comparison itself.
        inbound(&[b"Mail-Stamp: ".as_slice(), value.as_bytes(), b"\n", &body].concat());
    }
}
