// SPDX-License-Identifier: GPL-3.0-or-later
//! Stamp-then-verify over real corpus messages: everything intact is `wanted`, under LF and
//! CRLF; a changed body word, recipient, From or attachment never is.

mod common;

use common::*;
use mailstamp_core::{Verdict, parse};
use proptest::prelude::*;

const RCPT: &str = "bob@b.example";

#[test]
fn every_fixture_verifies_wanted_under_lf_and_crlf() {
    let all = fixtures("corpus");
    for (i, (name, raw)) in all.iter().enumerate() {
        let (stamped, rec) = stamp(raw, &[RCPT], i as u8);
        let r = verify(&stamped, &[RCPT], &rec);
        assert_eq!(r.verdict, Verdict::Wanted, "{name}: {}", describe(&r));
        assert_eq!(r.score, Some(1.0), "{name}");
        let r = verify(&to_crlf(&stamped), &[RCPT], &rec);
        assert_eq!(
            r.verdict,
            Verdict::Wanted,
            "{name} (CRLF): {}",
            describe(&r)
        );
        // Stamped under CRLF, received under LF (a relay converting) works too.
        let (stamped_crlf, rec) = stamp(&to_crlf(raw), &[RCPT], i as u8);
        let lf: Vec<u8> = stamped_crlf
            .iter()
            .copied()
            .filter(|&b| b != b'\r')
            .collect();
        let r = verify(&lf, &[RCPT], &rec);
        assert_eq!(
            r.verdict,
            Verdict::Wanted,
            "{name} (CRLF→LF): {}",
            describe(&r)
        );
    }
    assert!(all.len() >= 30);
}

#[test]
fn added_trace_headers_change_nothing() {
    for (i, (name, raw)) in fixtures("corpus").iter().enumerate() {
        let (stamped, rec) = stamp(raw, &[RCPT], i as u8);
        let mut relayed = b"Received: from relay.example (relay.example [192.0.2.1])\n\tby mx.b.example with ESMTPS id 1234;\n\tMon, 1 Jan 2024 00:00:00 +0000\nX-Spam-Status: No\n".to_vec();
        relayed.extend_from_slice(&stamped);
        let r = verify(&relayed, &[RCPT], &rec);
        assert_eq!(r.verdict, Verdict::Wanted, "{name}: {}", describe(&r));
    }
}

#[test]
fn another_recipient_is_spam() {
    for (i, (name, raw)) in fixtures("corpus").iter().enumerate() {
        let (stamped, rec) = stamp(raw, &[RCPT], i as u8);
        let r = verify(&stamped, &["mallory@evil.example"], &rec);
        assert_eq!(r.verdict, Verdict::Spam, "{name}: {}", describe(&r));
    }
}

#[test]
fn a_changed_from_is_spam() {
    for (i, (name, raw)) in fixtures("corpus").iter().enumerate() {
        let (stamped, rec) = stamp(raw, &[RCPT], i as u8);
        let msg = parse(&stamped).unwrap();
        let h = msg
            .headers()
            .iter()
            .find(|h| h.name().eq_ignore_ascii_case("From"))
            .unwrap();
        let (a, b) = (h.offset_start() as usize, h.offset_end() as usize);
        let forged = [
            &stamped[..a],
            b" Mallory <ceo@bank.example>\n",
            &stamped[b..],
        ]
        .concat();
        let r = verify(&forged, &[RCPT], &rec);
        assert_eq!(r.verdict, Verdict::Spam, "{name}: {}", describe(&r));
    }
}

#[test]
fn a_wrong_record_is_spam_and_no_record_is_spam() {
    let (name, raw) = &fixtures("corpus")[0];
    let (stamped, _) = stamp(raw, &[RCPT], 1);
    let (_, other) = stamp(raw, &[RCPT], 2);
    assert_eq!(
        verify(&stamped, &[RCPT], &other).verdict,
        Verdict::Spam,
        "{name}"
    );
    let r = verify(&stamped, &[RCPT], &mailstamp_core::Lookup::NotFound);
    assert_eq!(r.verdict, Verdict::Spam);
    let r = verify(
        &stamped,
        &[RCPT],
        &mailstamp_core::Lookup::Unavailable("down".into()),
    );
    assert_eq!(r.verdict, Verdict::Temperror);
    let r = verify(&stamped, &[RCPT], &mailstamp_core::Lookup::Unconfirmed);
    assert_eq!(r.verdict, Verdict::Temperror);
}

/// Byte ranges of the bodies of the parts of one kind (text or attachment).
fn body_ranges(raw: &[u8], attachments: bool) -> Vec<(usize, usize)> {
    let msg = parse(raw).unwrap();
    msg.parts
        .iter()
        .enumerate()
        .filter(|(i, p)| {
            let is_att = msg.attachments.contains(&(*i as u32));
            match &p.body {
                mail_parser::PartType::Text(_) => !is_att && !attachments,
                mail_parser::PartType::Multipart(_) => false,
                _ => is_att && attachments,
            }
        })
        .map(|(_, p)| (p.offset_body as usize, p.offset_end as usize))
        .filter(|(a, b)| b > a)
        .collect()
}

/// Flips the case of one letter at or after `pos` inside `range`; `None` if no letter.
fn flip_letter(raw: &[u8], range: (usize, usize), pos: usize) -> Option<Vec<u8>> {
    let span = range.1 - range.0;
    (0..span)
        .map(|k| range.0 + (pos + k) % span)
        .find(|&i| raw[i].is_ascii_alphabetic())
        .map(|i| {
            let mut v = raw.to_vec();
            v[i] ^= 0x20;
            v
        })
}

fn decoded_changed(a: &[u8], b: &[u8], fam: mailstamp_core::Family) -> bool {
    let (ma, mb) = (parse(a).unwrap(), parse(b).unwrap());
    let sel = mailstamp_core::Selection::default();
    let da = mailstamp_core::component::decompose(&ma, &common::env(&[]), &sel);
    let db = mailstamp_core::component::decompose(&mb, &common::env(&[]), &sel);
    let pick = |d: &mailstamp_core::component::Decomposed| {
        d.values
            .iter()
            .filter(|(n, _)| {
                n.family == fam
                    || (fam == mailstamp_core::Family::Text
                        && n.family == mailstamp_core::Family::Signature)
            })
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    pick(&da) != pick(&db)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn a_changed_body_word_is_never_wanted(idx in 0usize..1000, part in 0usize..8, pos in 0usize..100_000) {
        let all = fixtures("corpus");
        let (name, raw) = &all[idx % all.len()];
        let (stamped, rec) = stamp(raw, &[RCPT], 9);
        let ranges = body_ranges(&stamped, false);
        prop_assume!(!ranges.is_empty());
        let range = ranges[part % ranges.len()];
        let Some(tampered) = flip_letter(&stamped, range, pos) else { return Ok(()) };
        // Only count changes that change the decoded text (a flipped letter in a QP soft break
        // or a charset-irrelevant spot may not).
        prop_assume!(decoded_changed(&stamped, &tampered, mailstamp_core::Family::Text));
        let r = verify(&tampered, &[RCPT], &rec);
        prop_assert_ne!(r.verdict, Verdict::Wanted, "{}: {}", name, describe(&r));
    }

    #[test]
    fn a_changed_attachment_is_never_wanted(idx in 0usize..1000, pos in 0usize..100_000) {
        let all: Vec<_> = fixtures("corpus").into_iter().filter(|(_, r)| !body_ranges(r, true).is_empty()).collect();
        prop_assert!(all.len() >= 3, "too few fixtures with attachments");
        let (name, raw) = &all[idx % all.len()];
        let (stamped, rec) = stamp(raw, &[RCPT], 3);
        let range = body_ranges(&stamped, true)[0];
        let Some(tampered) = flip_letter(&stamped, range, pos) else { return Ok(()) };
        prop_assume!(decoded_changed(&stamped, &tampered, mailstamp_core::Family::Attachment));
        let r = verify(&tampered, &[RCPT], &rec);
        prop_assert_ne!(r.verdict, Verdict::Wanted, "{}: {}", name, describe(&r));
    }
}

#[test]
fn the_selection_decides_what_is_stamped() {
    use mailstamp_core::{Family, Selection, prepare};
    let (name, raw) = &fixtures("corpus")[3];
    let msg = parse(raw).unwrap();
    let sel = Selection(
        [Family::From, Family::Rcpt, Family::Subject]
            .into_iter()
            .collect(),
    );
    let p = prepare(&msg, &env(&[RCPT]), [5; 16], &CHAIN, &sel).unwrap();
    let names: Vec<String> = p.header.names.iter().map(|n| n.to_string()).collect();
    assert_eq!(names, ["from", "subject"], "{name}");
    assert!(p.header.rcpts.is_some());
    let stamped = mailstamp_core::insert_header(raw, &p.header);
    let rec = mailstamp_core::Lookup::Found {
        commitment: p.commitment,
        time: 1_700_000_000,
    };
    assert_eq!(verify(&stamped, &[RCPT], &rec).verdict, Verdict::Wanted);
    // The body is not stamped, so changing it changes nothing; the subject is.
    if let Some(t) = body_ranges(&stamped, false)
        .first()
        .and_then(|&r| flip_letter(&stamped, r, 0))
    {
        assert_eq!(verify(&t, &[RCPT], &rec).verdict, Verdict::Wanted);
    }
    let s = String::from_utf8_lossy(&stamped).replacen("\nSubject: ", "\nSubject: CHANGED ", 1);
    assert_ne!(verify(s.as_bytes(), &[RCPT], &rec).verdict, Verdict::Wanted);
}

#[test]
fn a_stamp_that_leaves_out_a_required_family_is_spam() {
    use mailstamp_core::{Family, Selection, prepare};
    let (_, raw) = &fixtures("corpus")[5];
    let msg = parse(raw).unwrap();
    // A writer that stamps only the subject, hoping any From will then pass.
    let sel = Selection([Family::Subject, Family::Rcpt].into_iter().collect());
    let p = prepare(&msg, &env(&[RCPT]), [6; 16], &CHAIN, &sel).unwrap();
    let stamped = mailstamp_core::insert_header(raw, &p.header);
    let rec = mailstamp_core::Lookup::Found {
        commitment: p.commitment,
        time: 1_700_000_000,
    };
    let r = verify(&stamped, &[RCPT], &rec);
    assert_eq!(r.verdict, Verdict::Spam);
    assert!(r.reason.unwrap().contains("not stamped: from"));
}

#[test]
fn the_writer_check_decides_between_wanted_suspect_spam_and_temperror() {
    use mailstamp_core::{Inspection, Policy, WriterAuth, evaluate, inspect};
    let (_, raw) = &fixtures("corpus")[2];
    let (stamped, rec) = stamp(raw, &[RCPT], 4);
    let run = |bytes: &[u8], auth: WriterAuth| {
        let msg = parse(bytes).unwrap();
        let Inspection::Stamped(h) = inspect(&msg) else {
            panic!()
        };
        evaluate(
            &msg,
            &h,
            &env(&[RCPT]),
            &rec,
            &auth,
            &Policy::default(),
            Some(1_700_000_100),
        )
    };
    let r = run(&stamped, WriterAuth::Pass("listed".into()));
    assert_eq!(r.verdict, Verdict::Wanted);
    let r = run(
        &stamped,
        WriterAuth::Fail("_mailstamp.x does not list 0xbb…".into()),
    );
    assert_eq!(r.verdict, Verdict::Spam);
    assert!(r.reason.unwrap().starts_with("unauthorised-writer"));
    let r = run(&stamped, WriterAuth::None("no record".into()));
    assert_eq!(
        r.verdict,
        Verdict::Suspect,
        "no writer record never counts as wanted"
    );
    let r = run(&stamped, WriterAuth::PermError("malformed".into()));
    assert_eq!(r.verdict, Verdict::Suspect);
    let r = run(&stamped, WriterAuth::TempError("timeout".into()));
    assert_eq!(r.verdict, Verdict::Temperror, "DNS trouble is never spam");
    // …unless the message is spam on its own: another recipient stays spam whatever DNS says.
    let msg = parse(&stamped).unwrap();
    let Inspection::Stamped(h) = inspect(&msg) else {
        panic!()
    };
    let r = evaluate(
        &msg,
        &h,
        &env(&["eve@b.example"]),
        &rec,
        &WriterAuth::TempError("t".into()),
        &Policy::default(),
        Some(1_700_000_100),
    );
    assert_eq!(r.verdict, Verdict::Spam);
}

#[test]
fn batched_stamps_verify_against_the_anchored_root_and_headers_round_trip() {
    use mailstamp_core::header::Mode;
    use mailstamp_core::stamp::into_batch;
    use mailstamp_core::{Lookup, Selection, StampHeader, merkle, prepare};
    let all = fixtures("corpus");
    let mut stamps: Vec<_> = all
        .iter()
        .enumerate()
        .map(|(i, (_, raw))| {
            let msg = parse(raw).unwrap();
            prepare(
                &msg,
                &env(&[RCPT]),
                [i as u8; 16],
                &CHAIN,
                &Selection::default(),
            )
            .unwrap()
        })
        .collect();
    let root = into_batch(&mut stamps, [9; 32]).unwrap();
    let rec = Lookup::Found {
        commitment: merkle::short(&root),
        time: 1_700_000_000,
    };
    for ((name, raw), p) in all.iter().zip(&stamps) {
        assert!(matches!(p.header.mode, Mode::Batch { .. }));
        assert_eq!(
            StampHeader::decode(&p.header.folded_value("\r\n")).unwrap(),
            p.header
        );
        let stamped = mailstamp_core::insert_header(raw, &p.header);
        let r = verify(&stamped, &[RCPT], &rec);
        assert_eq!(r.verdict, Verdict::Wanted, "{name}: {}", describe(&r));
        assert_eq!(
            r.stamp.unwrap().batch.unwrap(),
            format!("0x{}", "09".repeat(32))
        );
    }
    // Another batch's root, or this message's header with another message's proof: spam.
    let (_, raw) = &all[0];
    let other = Lookup::Found {
        commitment: [7; 24],
        time: 1_700_000_000,
    };
    let stamped = mailstamp_core::insert_header(raw, &stamps[0].header);
    assert_eq!(verify(&stamped, &[RCPT], &other).verdict, Verdict::Spam);
    let mut h = stamps[0].header.clone();
    h.mode = stamps[1].header.mode.clone();
    let swapped = mailstamp_core::insert_header(raw, &h);
    assert_eq!(verify(&swapped, &[RCPT], &rec).verdict, Verdict::Spam);
}

/// Found by the `message` fuzz target (agent/fuzz/seeds/message/leading-fold.eml): a message
/// whose first line starts with white space. A `Mail-Stamp:` field put on top would take that
/// line into its own value, so the stamp would not decode at the receiver; stamping refuses it.
#[test]
fn a_message_that_starts_with_a_folded_line_is_not_stamped() {
    let raw = b" rorFfomk-admin@xent.com  Sat Oct  5 12:39:20 2002\nFrom: Ann <ann@a.example>\nTo: bob@b.example\nSubject: hi\n\nbody\n";
    let msg = mailstamp_core::parse(raw).unwrap();
    let sel = mailstamp_core::Selection::default();
    let e = mailstamp_core::prepare(&msg, &env(&[RCPT]), [7; 16], &CHAIN, &sel).unwrap_err();
    assert_eq!(e, mailstamp_core::StampError::LeadingFold);
    // A message that starts with a field is stamped, and its stamp decodes.
    let ok = &raw[raw.iter().position(|&b| b == b'\n').unwrap() + 1..];
    let msg = mailstamp_core::parse(ok).unwrap();
    let p = mailstamp_core::prepare(&msg, &env(&[RCPT]), [7; 16], &CHAIN, &sel).unwrap();
    let stamped = mailstamp_core::insert_header(ok, &p.header);
    let again = mailstamp_core::parse(&stamped).unwrap();
    assert!(matches!(
        mailstamp_core::inspect(&again),
        mailstamp_core::Inspection::Stamped(_)
    ));
}
