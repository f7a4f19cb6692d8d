// SPDX-License-Identifier: GPL-3.0-or-later
//! Hop chains on real corpus messages (docs/PROTOCOL.md §5c): a plain forward and list copies
//! (subject tag, footer, From rewritten) come out `wanted` with the path reported; a hop copy
//! replayed to someone else, a re-pointed hop, a hop declaring a change it did not make, a
//! chain longer than allowed, and garbage hop fields do not — and never panic.

mod common;

use common::{env, fixtures, pass, stamp};
use mailstamp_core::hops::{
    AuthorField, ChainError, ChainInspection, ChainReport, Change, HopField, HopSpec, LevelInputs,
    MAX_FIELDS, NotApplicable, PrepareHopError, PrevRef, evaluate_chain, insert_hop, inspect_chain,
    not_applicable, other_address, prepare_hop,
};
use mailstamp_core::{ChainRef, Lookup, Policy, Selection, Verdict, WriterAuth, parse};

/// The forwarder's or list's own record.
const HOP_CHAIN: ChainRef = ChainRef {
    chain_id: 31337,
    registry: [0xaa; 20],
    writer: [0xcc; 20],
};

const BOB: &str = "bob@b.example";
const BOB_FWD: &str = "bob@forward.example";
const LIST: &str = "list@lists.example";

/// The corpus messages with one plain-text part and no transfer encoding: a footer can be
/// appended to their bytes as a list server does.
const PLAIN: [&str; 5] = [
    "easy-ham-1-00537.eml",
    "easy-ham-1-00661.eml",
    "easy-ham-1-00898.eml",
    "easy-ham-2-00051.eml",
    "easy-ham-2-00292.eml",
];

fn corpus() -> Vec<(String, Vec<u8>)> {
    fixtures("corpus")
}

fn eol(raw: &[u8]) -> &'static str {
    mailstamp_core::stamp::line_ending(raw)
}

/// `raw` with a trace field on top, as every relay adds.
fn with_trace(raw: &[u8], by: &str) -> Vec<u8> {
    let e = eol(raw);
    let mut out = format!("Received: from mx.b.example by {by}; Tue, 1 Dec 2026 10:00:00 +0000{e}")
        .into_bytes();
    out.extend_from_slice(raw);
    out
}

/// The byte range of the first `name` field, name to end of line ending.
fn field_range(raw: &[u8], name: &str) -> Option<(usize, usize, usize)> {
    let msg = parse(raw)?;
    let h = msg
        .headers()
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case(name))?;
    Some((
        h.offset_field() as usize,
        h.offset_start() as usize,
        h.offset_end() as usize,
    ))
}

/// The subject with `tag` and a space put in front, as a list does.
fn tag_subject(raw: &[u8], tag: &str) -> Vec<u8> {
    let (_, start, _) = field_range(raw, "Subject").expect("has a subject");
    let mut out = raw[..start].to_vec();
    out.extend_from_slice(format!(" {tag}").as_bytes());
    out.extend_from_slice(&raw[start..]);
    out
}

/// `footer` appended to the (single, unencoded) body, on lines of its own.
fn add_footer(raw: &[u8], footer: &[&str]) -> Vec<u8> {
    let e = eol(raw);
    let mut out = raw.to_vec();
    if !out.ends_with(b"\n") {
        out.extend_from_slice(e.as_bytes());
    }
    out.extend_from_slice(e.as_bytes());
    for line in footer {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(e.as_bytes());
    }
    out
}

/// From rewritten to the list, the author's From value moved to `field` (any earlier field of
/// that name removed): Mailman's DMARC mitigation.
fn rewrite_from(raw: &[u8], field: AuthorField) -> Vec<u8> {
    let mut raw = raw.to_vec();
    if let Some((f, _, end)) = field_range(&raw, field.field()) {
        raw.drain(f..end);
    }
    let (f, start, end) = field_range(&raw, "From").expect("has From");
    let author = String::from_utf8_lossy(&raw[start..end])
        .trim_end()
        .to_owned();
    let e = eol(&raw);
    let mut out = raw[..f].to_vec();
    out.extend_from_slice(format!("From: \"Alice via List\" <{LIST}>{e}").as_bytes());
    out.extend_from_slice(format!("{}:{author}{e}", field.field()).as_bytes());
    out.extend_from_slice(&raw[end..]);
    out
}

/// What a hop does: prepares its field over `sent` for `to`, puts it on top, returns the
/// message and its record.
fn hop(sent: &[u8], changes: &[Change], domain: &str, to: &[&str], seed: u8) -> (Vec<u8>, Lookup) {
    let msg = parse(sent).expect("parses");
    let spec = HopSpec {
        changes,
        domain,
        received_for: BOB,
    };
    let p = prepare_hop(
        &msg,
        &env(to),
        [seed; 16],
        &HOP_CHAIN,
        &Selection::all(),
        &spec,
    )
    .unwrap_or_else(|e| panic!("hop prepared: {e}"));
    (
        insert_hop(sent, &p.field),
        Lookup::Found {
            commitment: p.commitment,
            time: 1_700_000_050,
        },
    )
}

/// The receiver: every writer authorised, the records as given.
fn receive(raw: &[u8], to: &[&str], lookups: &[Lookup]) -> ChainReport {
    let msg = parse(raw).expect("parses");
    let chain = match inspect_chain(&msg) {
        ChainInspection::Chain(c) => c,
        other => panic!("not a chain: {other:?}"),
    };
    let auths: Vec<WriterAuth> = chain.auth_domains(&msg).iter().map(|_| pass()).collect();
    let inputs = LevelInputs {
        lookups,
        auths: &auths,
    };
    evaluate_chain(
        &msg,
        &chain,
        &env(to),
        &inputs,
        &Policy::default(),
        Some(1_700_000_100),
    )
}

fn describe(r: &ChainReport) -> String {
    let levels: Vec<String> = r
        .levels
        .iter()
        .map(|l| {
            format!(
                "i={} {}: {}",
                l.index,
                l.domain,
                common::describe(&l.report)
            )
        })
        .collect();
    format!("{:?} {:?} [{}]", r.verdict, r.reason, levels.join(" | "))
}

#[test]
fn a_plain_forward_is_wanted_and_names_the_forwarder() {
    let mut n = 0;
    // Under LF and CRLF: the hop's field takes the message's own line ending.
    let both = corpus().into_iter().flat_map(|(name, raw)| {
        [
            (name.clone(), raw.clone()),
            (format!("{name} (CRLF)"), common::to_crlf(&raw)),
        ]
    });
    for (name, raw) in both {
        let (stamped, origin) = stamp(&raw, &[BOB], 1);
        let sent = with_trace(&stamped, "mx.b.example");
        let (fwd, rec) = hop(&sent, &[Change::Trace], "b.example", &[BOB_FWD], 2);
        let r = receive(&fwd, &[BOB_FWD], &[origin, rec]);
        assert_eq!(r.verdict, Verdict::Wanted, "{name}: {}", describe(&r));
        let reason = r.reason.as_deref().unwrap_or("");
        assert!(
            reason.starts_with("forwarded by b.example, author "),
            "{name}: {reason}"
        );
        assert_eq!(r.levels.len(), 2);
        n += 1;
    }
    assert!(n >= 60, "only {n} corpus messages ran");
}

#[test]
fn a_list_copy_with_subject_tag_and_footer_is_wanted() {
    for (name, crlf) in PLAIN.into_iter().flat_map(|n| [(n, false), (n, true)]) {
        let raw = corpus().into_iter().find(|(n, _)| n == name).unwrap().1;
        let raw = if crlf { common::to_crlf(&raw) } else { raw };
        let (stamped, origin) = stamp(&raw, &[LIST], 1);
        let footer = [
            "_______________________________________________",
            "List mailing list",
            "https://lists.example/list",
        ];
        let sent = add_footer(&tag_subject(&stamped, "[List]"), &footer);
        let changes = [
            Change::SubjectTag("[List]".into()),
            Change::Footer(3),
            Change::Trace,
        ];
        let spec_for = |to: &[&str]| hop_for_list(&sent, &changes, to);
        let (copy, rec) = spec_for(&[BOB]);
        let r = receive(&copy, &[BOB], &[origin, rec]);
        assert_eq!(r.verdict, Verdict::Wanted, "{name}: {}", describe(&r));
        assert!(
            r.reason
                .as_deref()
                .unwrap_or("")
                .starts_with("via list at lists.example"),
            "{name}: {:?}",
            r.reason
        );
    }
}

/// A list's hop: it received the message for its own address.
fn hop_for_list(sent: &[u8], changes: &[Change], to: &[&str]) -> (Vec<u8>, Lookup) {
    let msg = parse(sent).expect("parses");
    let spec = HopSpec {
        changes,
        domain: "lists.example",
        received_for: LIST,
    };
    let p = prepare_hop(
        &msg,
        &env(to),
        [7; 16],
        &HOP_CHAIN,
        &Selection::all(),
        &spec,
    )
    .unwrap_or_else(|e| panic!("list hop prepared: {e}"));
    (
        insert_hop(sent, &p.field),
        Lookup::Found {
            commitment: p.commitment,
            time: 1_700_000_060,
        },
    )
}

#[test]
fn a_list_copy_with_from_rewritten_is_wanted_and_reports_the_author() {
    for name in PLAIN {
        let raw = corpus().into_iter().find(|(n, _)| n == name).unwrap().1;
        let (stamped, origin) = stamp(&raw, &[LIST], 1);
        let author = mailstamp_core::component::from_address(&parse(&stamped).unwrap());
        for field in [AuthorField::ReplyTo, AuthorField::XOriginalFrom] {
            let sent = rewrite_from(&tag_subject(&stamped, "[List]"), field);
            let changes = [
                Change::SubjectTag("[List]".into()),
                Change::FromRewritten(field),
                Change::Trace,
            ];
            let (copy, rec) = hop_for_list(&sent, &changes, &[BOB]);
            let r = receive(&copy, &[BOB], &[origin.clone(), rec]);
            assert_eq!(
                r.verdict,
                Verdict::Wanted,
                "{name} {field:?}: {}",
                describe(&r)
            );
            assert_eq!(r.author.as_deref(), Some(author.as_str()), "{name}");
            let reason = r.reason.clone().unwrap_or_default();
            assert_eq!(
                reason,
                format!("via list {LIST}, author {author} verified there")
            );
            // The originator's writer is checked for the author's domain, the list's for its own.
            let msg = parse(&copy).unwrap();
            let ChainInspection::Chain(chain) = inspect_chain(&msg) else {
                panic!()
            };
            let domains = chain.auth_domains(&msg);
            assert_eq!(domains[1], "lists.example");
            assert_eq!(domains[0], author.rsplit('@').next().unwrap());
        }
    }
}

#[test]
fn a_hop_copy_replayed_to_someone_else_is_not_wanted() {
    for (name, raw) in corpus() {
        let (stamped, origin) = stamp(&raw, &[BOB], 1);
        let (fwd, rec) = hop(&stamped, &[], "b.example", &[BOB_FWD], 2);
        let r = receive(&fwd, &["mallory@c.example"], &[origin, rec]);
        assert_eq!(r.verdict, Verdict::Spam, "{name}: {}", describe(&r));
        assert!(
            r.reason
                .as_deref()
                .unwrap_or("")
                .starts_with("hop i=2 (b.example)"),
            "{name}: {:?}",
            r.reason
        );
    }
}

#[test]
fn a_stamped_message_without_a_hop_still_fails_at_a_forward_address() {
    // No agent at the forwarder: the originator's stamp does not cover the new address.
    let raw = &corpus()[0].1;
    let (stamped, origin) = stamp(raw, &[BOB], 1);
    let r = receive(&with_trace(&stamped, "mx.b.example"), &[BOB_FWD], &[origin]);
    assert_eq!(r.verdict, Verdict::Spam, "{}", describe(&r));
}

/// The originator's stamp of a stamped message, and its commitment.
fn origin_of(stamped: &[u8]) -> (mailstamp_core::StampHeader, [u8; 24]) {
    let msg = parse(stamped).unwrap();
    let ChainInspection::Chain(chain) = inspect_chain(&msg) else {
        panic!("stamped")
    };
    let c = chain.commitments()[0];
    (chain.origin, c)
}

/// A plain forward's prepared hop over `stamped`, not yet inserted.
fn forward_field(stamped: &[u8]) -> HopField {
    let msg = parse(stamped).unwrap();
    let spec = HopSpec {
        changes: &[],
        domain: "b.example",
        received_for: BOB,
    };
    prepare_hop(
        &msg,
        &env(&[BOB_FWD]),
        [2; 16],
        &HOP_CHAIN,
        &Selection::all(),
        &spec,
    )
    .unwrap()
    .field
}

fn found(commitment: [u8; 24]) -> Lookup {
    Lookup::Found {
        commitment,
        time: 1_700_000_050,
    }
}

#[test]
fn a_re_pointed_hop_is_invalid_or_spam() {
    for (name, raw) in corpus().into_iter().take(8) {
        let (stamped, origin) = stamp(&raw, &[BOB], 1);
        let (_, orig_commitment) = origin_of(&stamped);
        let field = forward_field(&stamped);
        let rec = found(field.commitment(&orig_commitment));
        // Another real stamp of the same message for bob (another salt, its own record).
        let (other, other_rec) = stamp(&raw, &[BOB], 9);
        let (other_header, _) = origin_of(&other);
        // Re-pointed at the other record, with that stamp below: the reference names the
        // field below, but the hop's record binds the first one.
        let mut repointed = field.clone();
        repointed.prev = PrevRef::of(&other_header);
        let moved = insert_hop(&other, &repointed);
        let r = receive(&moved, &[BOB_FWD], &[other_rec.clone(), rec.clone()]);
        assert_eq!(r.verdict, Verdict::Spam, "{name}: {}", describe(&r));
        // The hop put over the other stamp unchanged: its reference does not name it.
        let msg_bytes = insert_hop(&other, &field);
        let msg = parse(&msg_bytes).unwrap();
        assert!(
            matches!(
                inspect_chain(&msg),
                ChainInspection::Invalid(ChainError::Reference { index: 2, .. })
            ),
            "{name}"
        );
        // And the honest chain is wanted (the control).
        let good = insert_hop(&stamped, &field);
        let r = receive(&good, &[BOB_FWD], &[origin, rec]);
        assert_eq!(r.verdict, Verdict::Wanted, "{name}: {}", describe(&r));
    }
}

#[test]
fn a_hop_declaring_a_subject_tag_it_did_not_add_is_spam() {
    for name in PLAIN {
        let raw = corpus().into_iter().find(|(n, _)| n == name).unwrap().1;
        let (stamped, origin) = stamp(&raw, &[BOB], 1);
        let msg = parse(&stamped).unwrap();
        let claim = [Change::SubjectTag("[List]".into())];
        let spec = HopSpec {
            changes: &claim,
            domain: "b.example",
            received_for: BOB,
        };
        let refused = prepare_hop(
            &msg,
            &env(&[BOB_FWD]),
            [2; 16],
            &HOP_CHAIN,
            &Selection::all(),
            &spec,
        );
        assert!(
            matches!(refused, Err(PrepareHopError::Change(_))),
            "{name}: prepare_hop must refuse a change it cannot see: {refused:?}"
        );
        // A hop that makes such a field anyway (another implementation) and records it.
        let (_, orig_commitment) = origin_of(&stamped);
        let mut field = forward_field(&stamped);
        field.changes = claim.to_vec();
        let rec = found(field.commitment(&orig_commitment));
        let copy = insert_hop(&stamped, &field);
        let r = receive(&copy, &[BOB_FWD], &[origin, rec]);
        assert_eq!(r.verdict, Verdict::Spam, "{name}: {}", describe(&r));
        let reason = r.reason.unwrap_or_default();
        assert!(
            reason.contains("declared change not made"),
            "{name}: {reason}"
        );
    }
}

#[test]
fn more_fields_than_a_chain_may_have_are_invalid() {
    let raw = &corpus()[0].1;
    let (mut msg_bytes, _) = stamp(raw, &[BOB], 1);
    // Seven honest hops: a chain of eight fields, each forwarding to bob again.
    for k in 0..(MAX_FIELDS - 1) {
        let msg = parse(&msg_bytes).unwrap();
        let spec = HopSpec {
            changes: &[],
            domain: "b.example",
            received_for: BOB,
        };
        let p = prepare_hop(
            &msg,
            &env(&[BOB]),
            [k as u8 + 2; 16],
            &HOP_CHAIN,
            &Selection::all(),
            &spec,
        )
        .unwrap_or_else(|e| panic!("hop {k}: {e}"));
        msg_bytes = insert_hop(&msg_bytes, &p.field);
    }
    let msg = parse(&msg_bytes).unwrap();
    let ChainInspection::Chain(chain) = inspect_chain(&msg) else {
        panic!("eight fields are a chain")
    };
    assert_eq!(chain.len(), MAX_FIELDS);
    let spec = HopSpec {
        changes: &[],
        domain: "b.example",
        received_for: BOB,
    };
    let full = prepare_hop(
        &msg,
        &env(&[BOB]),
        [99; 16],
        &HOP_CHAIN,
        &Selection::all(),
        &spec,
    );
    assert_eq!(full.unwrap_err(), PrepareHopError::Full);
    // A ninth field (a copy of the top one) is refused before anything is decoded.
    let top = field_text(&msg_bytes, 0);
    let mut nine = format!("Mail-Stamp:{top}").into_bytes();
    nine.extend_from_slice(&msg_bytes);
    let msg = parse(&nine).unwrap();
    assert_eq!(
        inspect_chain(&msg),
        ChainInspection::Invalid(ChainError::TooMany(MAX_FIELDS + 1))
    );
}

#[test]
fn fields_out_of_order_are_invalid() {
    let raw = &corpus()[0].1;
    let (stamped, _) = stamp(raw, &[BOB], 1);
    let field = forward_field(&stamped);
    let with_hop = insert_hop(&stamped, &field);
    // Two originator stamps, no hop: as before, invalid.
    let (twice, _) = stamp(raw, &[BOB], 5);
    let mut both = format!("Mail-Stamp:{}", field_text(&twice, 0)).into_bytes();
    both.extend_from_slice(&stamped);
    assert!(matches!(
        inspect_chain(&parse(&both).unwrap()),
        ChainInspection::Invalid(ChainError::Field { position: 1, .. })
    ));
    // The hop below the originator's stamp.
    let text = String::from_utf8(with_hop.clone()).unwrap();
    let (hop_v, orig_v) = (field_text(&with_hop, 0), field_text(&with_hop, 1));
    let swapped = text
        .replacen(&hop_v, "\u{1}", 1)
        .replacen(&orig_v, &hop_v, 1)
        .replacen("\u{1}", &orig_v, 1);
    assert!(matches!(
        inspect_chain(&parse(swapped.as_bytes()).unwrap()),
        ChainInspection::Invalid(ChainError::Field { position: 2, .. })
    ));
    // A hop index that skips.
    let mut skipped = field.clone();
    skipped.index = 3;
    let bad = insert_hop(&stamped, &skipped);
    assert!(matches!(
        inspect_chain(&parse(&bad).unwrap()),
        ChainInspection::Invalid(ChainError::Order { .. })
    ));
    // A lone hop field: the stamp it forwards is missing.
    let lone = format!("Mail-Stamp:{hop_v}Subject: x\n\nbody\n");
    assert!(matches!(
        inspect_chain(&parse(lone.as_bytes()).unwrap()),
        ChainInspection::Invalid(ChainError::Field { position: 1, .. })
    ));
}

#[test]
fn one_field_judges_exactly_as_the_one_stamp_path() {
    for (name, raw) in corpus() {
        let (stamped, origin) = stamp(&raw, &[BOB], 1);
        for to in [BOB, "mallory@c.example"] {
            let one = common::verify(&stamped, &[to], &origin);
            let r = receive(&stamped, &[to], std::slice::from_ref(&origin));
            assert_eq!(r.levels.len(), 1);
            assert_eq!(r.levels[0].report, one, "{name}");
            assert_eq!(r.verdict, one.verdict, "{name}");
        }
    }
}

#[test]
fn an_earlier_record_that_is_missing_or_unconfirmed_decides() {
    let raw = &corpus()[0].1;
    let (stamped, _) = stamp(raw, &[BOB], 1);
    let (fwd, rec) = hop(&stamped, &[], "b.example", &[BOB_FWD], 2);
    let r = receive(&fwd, &[BOB_FWD], &[Lookup::NotFound, rec.clone()]);
    assert_eq!(r.verdict, Verdict::Spam, "{}", describe(&r));
    assert!(r.reason.unwrap_or_default().starts_with("originator"));
    let r = receive(&fwd, &[BOB_FWD], &[Lookup::Unconfirmed, rec]);
    assert_eq!(r.verdict, Verdict::Temperror, "{}", describe(&r));
}

#[test]
fn a_hop_whose_writer_its_domain_does_not_list_is_spam() {
    let raw = &corpus()[0].1;
    let (stamped, origin) = stamp(raw, &[BOB], 1);
    let (fwd, rec) = hop(&stamped, &[], "b.example", &[BOB_FWD], 2);
    let msg = parse(&fwd).unwrap();
    let ChainInspection::Chain(chain) = inspect_chain(&msg) else {
        panic!()
    };
    let auths = [
        pass(),
        WriterAuth::Fail("b.example lists other writers".into()),
    ];
    let lookups = [origin, rec];
    let inputs = LevelInputs {
        lookups: &lookups,
        auths: &auths,
    };
    let r = evaluate_chain(
        &msg,
        &chain,
        &env(&[BOB_FWD]),
        &inputs,
        &Policy::default(),
        Some(1_700_000_100),
    );
    assert_eq!(r.verdict, Verdict::Spam, "{}", describe(&r));
    assert!(r.reason.unwrap_or_default().contains("unauthorised-writer"));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    /// Hop fields cut, spliced and salted with the characters tags use never panic the
    /// decoder or the walk, whatever they decode to.
    #[test]
    fn garbage_hop_fields_never_panic(
        cut in 0usize..2000,
        junk in proptest::collection::vec(proptest::sample::select(
            vec![b'a', b'=', b';', b',', b'/', b'0', b'x', b' ', b'\t', b'3', b'i', b't', b'p', b'\n']), 0..64),
        at in 0usize..2000,
    ) {
        let fwd: &[u8] = &FORWARDED;
        let top = field_text(fwd, 0);
        let mut v = top.clone().into_bytes();
        let at = at.min(v.len());
        v.splice(at..at, junk);
        v.truncate(cut.max(1).min(v.len()));
        v.extend_from_slice(b"\n");
        // The hop field replaced by its mangled copy, the originator's field below it kept.
        let start = fwd.windows(top.len()).position(|w| w == top.as_bytes()).unwrap();
        let mut msg_bytes = fwd[..start].to_vec();
        msg_bytes.extend_from_slice(&v);
        msg_bytes.extend_from_slice(&fwd[start + top.len()..]);
        if let Some(msg) = parse(&msg_bytes)
            && let ChainInspection::Chain(chain) = inspect_chain(&msg)
        {
            let lookups: Vec<Lookup> = chain.commitments().into_iter().map(found).collect();
            let auths: Vec<WriterAuth> = lookups.iter().map(|_| pass()).collect();
            let inputs = LevelInputs { lookups: &lookups, auths: &auths };
            let _ = evaluate_chain(&msg, &chain, &env(&[BOB_FWD]), &inputs, &Policy::default(), None);
        }
    }
}

/// A forwarded corpus message (with its hop), shared by the property test.
static FORWARDED: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let raw = corpus().into_iter().find(|(n, _)| n == PLAIN[0]).unwrap().1;
    let (stamped, _) = stamp(&raw, &[BOB], 1);
    let (fwd, _) = hop(&stamped, &[Change::Trace], "b.example", &[BOB_FWD], 2);
    fwd
});

/// The value of the `k`-th `Mail-Stamp:` field from the top, as written (folded, with its
/// line ending).
fn field_text(raw: &[u8], k: usize) -> String {
    let msg = parse(raw).unwrap();
    let h = msg
        .headers()
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case("Mail-Stamp"))
        .nth(k)
        .unwrap();
    String::from_utf8_lossy(&raw[h.offset_start() as usize..h.offset_end() as usize]).into_owned()
}

/// `raw` stamped for `rcpts` as the second of a batch of three (two other corpus messages
/// around it), with its batch root as the record.
fn stamp_batched(raw: &[u8], rcpts: &[&str]) -> (Vec<u8>, Lookup) {
    let others = corpus();
    let prep = |m: &[u8], seed: u8| {
        let msg = parse(m).unwrap();
        mailstamp_core::prepare(
            &msg,
            &env(rcpts),
            [seed; 16],
            &common::CHAIN,
            &Selection::all(),
        )
        .unwrap()
    };
    let mut batch = vec![
        prep(&others[3].1, 11),
        prep(raw, 12),
        prep(&others[4].1, 13),
    ];
    let root = mailstamp_core::stamp::into_batch(&mut batch, [0x42; 32]).unwrap();
    (
        mailstamp_core::insert_header(raw, &batch[1].header),
        found(mailstamp_core::merkle::short(&root)),
    )
}

#[test]
fn mixed_modes_originator_batched_hop_batched_are_wanted() {
    for (name, raw) in corpus().into_iter().take(6) {
        let (stamped, origin) = stamp_batched(&raw, &[BOB]);
        let field = forward_field(&stamped);
        let (_, orig_commitment) = origin_of(&stamped);
        assert!(field.prev.batched, "{name}: the hop cites the batch");
        // The hop batched with one other leaf.
        let c = field.commitment(&orig_commitment);
        let tree = mailstamp_core::merkle::Tree::build(&[[0x77; 24], c]).unwrap();
        let mut batched = field.clone();
        batched.stamp.mode = mailstamp_core::header::Mode::Batch {
            batch: [0x43; 32],
            proof: tree.proof(1),
        };
        let rec = found(mailstamp_core::merkle::short(&tree.root()));
        let fwd = insert_hop(&stamped, &batched);
        let r = receive(&fwd, &[BOB_FWD], &[origin.clone(), rec.clone()]);
        assert_eq!(r.verdict, Verdict::Wanted, "{name}: {}", describe(&r));
        // The direct record of the same hop is not what the batch anchor holds.
        let r = receive(&fwd, &[BOB_FWD], &[origin, found(c)]);
        assert_eq!(r.verdict, Verdict::Spam, "{name}: {}", describe(&r));
    }
}

#[test]
fn a_forward_then_a_list_is_wanted_with_both_hops_reported() {
    let raw = corpus().into_iter().find(|(n, _)| n == PLAIN[1]).unwrap().1;
    let (stamped, origin) = stamp(&raw, &[BOB], 1);
    // b.example forwards bob's copy to the list, which tags it and sends it to carol.
    let (fwd, rec1) = hop(&stamped, &[Change::Trace], "b.example", &[LIST], 2);
    let sent = add_footer(&tag_subject(&fwd, "[List]"), &["-- ", "list footer"]);
    let msg = parse(&sent).unwrap();
    let changes = [Change::SubjectTag("[List]".into()), Change::Footer(2)];
    let spec = HopSpec {
        changes: &changes,
        domain: "lists.example",
        received_for: LIST,
    };
    let p = prepare_hop(
        &msg,
        &env(&["carol@c.example"]),
        [3; 16],
        &HOP_CHAIN,
        &Selection::all(),
        &spec,
    )
    .unwrap();
    let copy = insert_hop(&sent, &p.field);
    let rec2 = found(p.commitment);
    let r = receive(&copy, &["carol@c.example"], &[origin, rec1, rec2]);
    assert_eq!(r.verdict, Verdict::Wanted, "{}", describe(&r));
    let reason = r.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("forwarded by b.example, then via list at lists.example, author "),
        "{reason}"
    );
    // The whole chain is in the JSON report, level by level.
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["levels"].as_array().map(Vec::len), Some(3));
    assert_eq!(json["levels"][2]["domain"], "lists.example");
    assert_eq!(json["verdict"], "wanted");
}

#[test]
fn a_hop_that_was_not_addressed_is_spam() {
    let raw = &corpus()[0].1;
    let (stamped, origin) = stamp(raw, &[BOB], 1);
    let msg = parse(&stamped).unwrap();
    let spec = HopSpec {
        changes: &[],
        domain: "evil.example",
        received_for: "eve@evil.example",
    };
    let refused = prepare_hop(
        &msg,
        &env(&[BOB_FWD]),
        [2; 16],
        &HOP_CHAIN,
        &Selection::all(),
        &spec,
    );
    assert!(
        matches!(refused, Err(PrepareHopError::NotAddressed(_))),
        "{refused:?}"
    );
    // Made anyway, with eve's digest: the originator's level fails on rcpt.
    let (_, orig_commitment) = origin_of(&stamped);
    let mut field = forward_field(&stamped);
    let (orig, _) = origin_of(&stamped);
    let _ = orig;
    field.received_for = "eve@evil.example".into();
    field.domain = "evil.example".into();
    let rec = found(field.commitment(&orig_commitment));
    let r = receive(&insert_hop(&stamped, &field), &[BOB_FWD], &[origin, rec]);
    assert_eq!(r.verdict, Verdict::Spam, "{}", describe(&r));
    assert!(r.reason.unwrap_or_default().contains("rcpt"));
    // Nor may it claim to have received the message for bob: bob is not at evil.example.
    // (Anyone holding the message could compute bob's digest; an address in clear, at the
    // hop's own domain, is what a receiver can check.)
    let mut claim = forward_field(&stamped);
    claim.domain = "evil.example".into();
    let claimed = insert_hop(&stamped, &claim);
    let msg = parse(&claimed).unwrap();
    let ChainInspection::Invalid(e) = inspect_chain(&msg) else {
        panic!("a hop at evil.example claiming bob@b.example must not decode")
    };
    assert!(
        e.to_string().contains("not an address at evil.example"),
        "{e}"
    );
}

/// The one-stamp report of `raw` for `to`, with the writer check given.
fn one_stamp(raw: &[u8], to: &str, lookup: &Lookup, auth: WriterAuth) -> mailstamp_core::Report {
    let msg = parse(raw).unwrap();
    let mailstamp_core::Inspection::Stamped(h) = mailstamp_core::inspect(&msg) else {
        panic!("stamped")
    };
    mailstamp_core::evaluate(
        &msg,
        &h,
        &env(&[to]),
        lookup,
        &auth,
        &Policy::default(),
        Some(1_700_000_100),
    )
}

#[test]
fn without_a_forwarding_agent_the_stamp_does_not_apply_or_counts_for_another_address() {
    let policy = Policy::default();
    for (name, raw) in corpus() {
        let (stamped, origin) = stamp(&raw, &[BOB], 1);
        let fwd = with_trace(&stamped, "mx.b.example");
        let r = one_stamp(&fwd, BOB_FWD, &origin, pass());
        assert_eq!(r.verdict, Verdict::Spam, "{name}");
        assert_eq!(
            not_applicable(&header_of(&fwd), &r, &policy, Some(1_700_000_100)),
            Some(NotApplicable::NotAddressed),
            "{name}: {}",
            common::describe(&r)
        );
        // Too old: a replay in time stays spam.
        assert_eq!(
            not_applicable(&header_of(&fwd), &r, &policy, Some(1_800_000_000)),
            None,
            "{name}"
        );
        // An unauthorised writer stays spam.
        let unauth = one_stamp(
            &fwd,
            BOB_FWD,
            &origin,
            WriterAuth::Fail("not listed".into()),
        );
        assert_eq!(
            not_applicable(&header_of(&fwd), &unauth, &policy, None),
            None,
            "{name}"
        );
        // bob lists bob@b.example among his other addresses: judged for it, wanted.
        let msg = parse(&fwd).unwrap();
        let mailstamp_core::Inspection::Stamped(h) = mailstamp_core::inspect(&msg) else {
            panic!()
        };
        let others = ["bob@old.example".to_owned(), "Bob@B.example".to_owned()];
        let other = other_address(&h, &others);
        assert_eq!(other, Some("Bob@B.example"), "{name}");
        let again = one_stamp(&fwd, other.unwrap(), &origin, pass());
        assert_eq!(again.verdict, Verdict::Wanted, "{name}");
    }
}

#[test]
fn without_a_list_agent_from_moved_to_the_list_does_not_apply_but_a_changed_body_is_spam() {
    let policy = Policy::default();
    for name in PLAIN {
        let raw = corpus().into_iter().find(|(n, _)| n == name).unwrap().1;
        let (stamped, origin) = stamp(&raw, &[LIST], 1);
        let listed = rewrite_from(&tag_subject(&stamped, "[List]"), AuthorField::ReplyTo);
        // The writer check was made for lists.example, which does not list the author's writer.
        let r = one_stamp(
            &listed,
            BOB,
            &origin,
            WriterAuth::Fail("lists.example".into()),
        );
        assert_eq!(
            not_applicable(&header_of(&listed), &r, &policy, None),
            Some(NotApplicable::FromMoved),
            "{name}: {}",
            common::describe(&r)
        );
        // The body changed as well: spam.
        let changed = add_footer(&listed, &["buy now"]);
        let changed = String::from_utf8_lossy(&changed).replacen("\n\n", "\n\nInserted.\n", 1);
        let r = one_stamp(changed.as_bytes(), BOB, &origin, pass());
        assert_eq!(
            not_applicable(&header_of(changed.as_bytes()), &r, &policy, None),
            None,
            "{name}: {}",
            common::describe(&r)
        );
    }
    // From changed within the stamped domain: the spoofing a stamp stops, spam.
    let raw = corpus().into_iter().find(|(n, _)| n == PLAIN[0]).unwrap().1;
    let (stamped, origin) = stamp(&raw, &[BOB], 1);
    let msg = parse(&stamped).unwrap();
    let from = mailstamp_core::component::from_address(&msg);
    let domain = from.rsplit('@').next().unwrap().to_owned();
    let (f, _, end) = field_range(&stamped, "From").unwrap();
    let mut spoofed = stamped[..f].to_vec();
    spoofed.extend_from_slice(format!("From: ceo@{domain}\n").as_bytes());
    spoofed.extend_from_slice(&stamped[end..]);
    let r = one_stamp(&spoofed, BOB, &origin, pass());
    assert_eq!(r.verdict, Verdict::Spam);
    assert_eq!(
        not_applicable(&header_of(&spoofed), &r, &policy, None),
        None,
        "{}",
        common::describe(&r)
    );
}

/// A footer part appended to a multipart message, before its closing delimiter, as Mailman
/// does for a message it cannot append to in place.
fn add_footer_part(raw: &[u8]) -> Option<Vec<u8>> {
    use mailstamp_core::mail_parser::MimeHeaders;
    let msg = parse(raw)?;
    let boundary = msg.content_type()?.attribute("boundary")?.to_owned();
    let close = format!("--{boundary}--");
    let at = raw
        .windows(close.len())
        .rposition(|w| w == close.as_bytes())?;
    let e = eol(raw);
    let part = format!(
        "--{boundary}{e}Content-Type: text/plain; charset=us-ascii{e}Content-Disposition: inline{e}{e}_______________{e}List mailing list{e}{e}"
    );
    let mut out = raw[..at].to_vec();
    out.extend_from_slice(part.as_bytes());
    out.extend_from_slice(&raw[at..]);
    Some(out)
}

#[test]
fn a_list_copy_with_a_footer_part_is_wanted_and_an_undeclared_one_is_not() {
    let mut n = 0;
    for (name, raw) in corpus() {
        let (stamped, origin) = stamp(&raw, &[LIST], 1);
        let Some(sent) = add_footer_part(&stamped) else {
            continue;
        };
        let parts = |m: &[u8]| {
            mailstamp_core::component::decompose(&parse(m).unwrap(), &env(&[]), &Selection::all())
                .counts
                .text
        };
        if parts(&sent) != parts(&stamped) + 1 {
            // Broken MIME (a spam's missing or misplaced delimiter): the part is not one.
            eprintln!("{name}: footer part not seen as a text part, skipped");
            continue;
        }
        let (copy, rec) = hop_for_list(&sent, &[Change::FooterPart], &[BOB]);
        let r = receive(&copy, &[BOB], &[origin.clone(), rec]);
        assert_eq!(r.verdict, Verdict::Wanted, "{name}: {}", describe(&r));
        // Not declared: below a hop nothing is explained that the hop did not declare.
        let (copy, rec) = hop_for_list(&sent, &[], &[BOB]);
        let r = receive(&copy, &[BOB], &[origin, rec]);
        assert_ne!(r.verdict, Verdict::Wanted, "{name}: {}", describe(&r));
        n += 1;
    }
    assert!(n >= 5, "only {n} multipart corpus messages ran");
}

#[test]
fn a_declared_reply_to_must_be_there() {
    let raw = corpus().into_iter().find(|(n, _)| n == PLAIN[2]).unwrap().1;
    let (stamped, origin) = stamp(&raw, &[BOB], 1);
    let e = eol(&stamped);
    let mut with_reply_to = format!("Reply-To: <bob@b.example>{e}").into_bytes();
    with_reply_to.extend_from_slice(&stamped);
    let (copy, rec) = hop(
        &with_reply_to,
        &[Change::ReplyTo],
        "b.example",
        &[BOB_FWD],
        2,
    );
    let r = receive(&copy, &[BOB_FWD], &[origin.clone(), rec]);
    assert_eq!(r.verdict, Verdict::Wanted, "{}", describe(&r));
    // Declared over a message without one: prepare_hop refuses, and a hop that does it
    // anyway is spam.
    let (_, orig_commitment) = origin_of(&stamped);
    let has_reply_to = parse(&stamped)
        .unwrap()
        .headers()
        .iter()
        .any(|h| h.name().eq_ignore_ascii_case("Reply-To"));
    if !has_reply_to {
        let mut field = forward_field(&stamped);
        field.changes = vec![Change::ReplyTo];
        let rec = found(field.commitment(&orig_commitment));
        let r = receive(&insert_hop(&stamped, &field), &[BOB_FWD], &[origin, rec]);
        assert_eq!(r.verdict, Verdict::Spam, "{}", describe(&r));
    }
}

/// The single body re-encoded to base64 (lines of 76), its transfer encoding said so.
fn to_base64(raw: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let e = eol(raw);
    let sep = format!("{e}{e}");
    let at = raw
        .windows(sep.len())
        .position(|w| w == sep.as_bytes())
        .unwrap();
    let head = String::from_utf8_lossy(&raw[..at]).into_owned();
    let head = head.replace(
        "Content-Transfer-Encoding: 7bit",
        "Content-Transfer-Encoding: base64",
    );
    let head = head.replace(
        "Content-Transfer-Encoding: 8bit",
        "Content-Transfer-Encoding: base64",
    );
    let body = base64::engine::general_purpose::STANDARD.encode(&raw[at + sep.len()..]);
    let mut out = head.into_bytes();
    out.extend_from_slice(sep.as_bytes());
    for chunk in body.as_bytes().chunks(76) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(e.as_bytes());
    }
    out
}

#[test]
fn a_re_encoded_forward_is_wanted() {
    for name in PLAIN {
        let raw = corpus().into_iter().find(|(n, _)| n == name).unwrap().1;
        let (stamped, origin) = stamp(&raw, &[BOB], 1);
        let sent = to_base64(&stamped);
        assert_ne!(sent, stamped);
        let (fwd, rec) = hop(&sent, &[Change::Reencoded], "b.example", &[BOB_FWD], 2);
        let r = receive(&fwd, &[BOB_FWD], &[origin, rec]);
        assert_eq!(r.verdict, Verdict::Wanted, "{name}: {}", describe(&r));
    }
}

#[test]
fn a_receiver_refusing_v1_stamps_refuses_a_chain_on_one() {
    let raw = &corpus()[0].1;
    let (stamped, origin) = stamp(raw, &[BOB], 1);
    let (fwd, rec) = hop(&stamped, &[], "b.example", &[BOB_FWD], 2);
    let msg = parse(&fwd).unwrap();
    let ChainInspection::Chain(chain) = inspect_chain(&msg) else {
        panic!()
    };
    let policy = Policy {
        min_version: 2,
        ..Policy::default()
    };
    let lookups = [origin, rec];
    let auths = [pass(), pass()];
    let inputs = LevelInputs {
        lookups: &lookups,
        auths: &auths,
    };
    let r = evaluate_chain(&msg, &chain, &env(&[BOB_FWD]), &inputs, &policy, None);
    assert_eq!(r.verdict, Verdict::Invalid, "{}", describe(&r));
}

/// The one stamp of a message.
fn header_of(raw: &[u8]) -> mailstamp_core::StampHeader {
    let msg = parse(raw).unwrap();
    match mailstamp_core::inspect(&msg) {
        mailstamp_core::Inspection::Stamped(h) => *h,
        other => panic!("not stamped: {other:?}"),
    }
}

#[test]
fn a_stamp_leaving_out_a_required_family_does_not_pass_as_not_applicable() {
    let raw = &corpus()[0].1;
    let msg = parse(raw).unwrap();
    // Stamped without `from`: such a stamp proves nothing about From.
    let mut sel = Selection::default();
    sel.0.remove(&mailstamp_core::Family::From);
    let p = mailstamp_core::prepare(&msg, &env(&[BOB]), [4; 16], &common::CHAIN, &sel).unwrap();
    let stamped = mailstamp_core::insert_header(raw, &p.header);
    let rec = found(p.commitment);
    let r = one_stamp(&with_trace(&stamped, "mx.b.example"), BOB_FWD, &rec, pass());
    assert_eq!(r.verdict, Verdict::Spam);
    assert_eq!(
        not_applicable(&p.header, &r, &Policy::default(), None),
        None
    );
}

/// DKIM (Ed25519, mail-auth) of a.example, with its key answered from memory.
mod dkim {
    use std::borrow::Borrow;
    use std::collections::HashMap;
    use std::hash::Hash;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    use std::time::Instant;

    use base64::Engine;
    use mail_auth::common::crypto::Ed25519Key;
    use mail_auth::common::parse::TxtRecordParser;
    use mail_auth::common::verify::DomainKey;
    use mail_auth::dkim::DkimSigner;
    use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
    use mail_auth::{
        AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
    };

    /// The `._domainkey` record, answered from memory (no DNS).
    pub(crate) struct Keys(HashMap<Box<str>, Txt>);

    impl ResolverCache<Box<str>, Txt> for Keys {
        fn get<Q>(&self, name: &Q) -> Option<Txt>
        where
            Box<str>: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            self.0.get(name).cloned()
        }

        fn remove<Q>(&self, _: &Q) -> Option<Txt>
        where
            Box<str>: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            None
        }

        fn insert(&self, _: Box<str>, _: Txt, _: Instant) {}
    }

    pub(crate) struct Dkim {
        signer: DkimSigner<Ed25519Key, mail_auth::dkim::Done>,
        auth: MessageAuthenticator,
        keys: Keys,
    }

    impl Dkim {
        /// a.example's key; it signs what a signer usually signs.
        pub(crate) fn new() -> Self {
            let key = Ed25519Key::from_pkcs8_der(&Ed25519Key::generate_pkcs8().unwrap()).unwrap();
            let txt = format!(
                "v=DKIM1; k=ed25519; p={}",
                base64::engine::general_purpose::STANDARD.encode(key.public_key())
            );
            let record = Txt::from(DomainKey::parse(txt.as_bytes()).unwrap());
            Dkim {
                signer: DkimSigner::from_key(key)
                    .domain("a.example")
                    .selector("s1")
                    .headers([
                        "From",
                        "To",
                        "Cc",
                        "Subject",
                        "Date",
                        "Message-ID",
                        "Reply-To",
                    ]),
                auth: MessageAuthenticator::new(ResolverConfig::default(), ResolverOpts::default())
                    .unwrap(),
                keys: Keys(HashMap::from([("s1._domainkey.a.example.".into(), record)])),
            }
        }

        /// `msg` with a DKIM-Signature of a.example on top.
        pub(crate) fn sign(&self, msg: &[u8]) -> Vec<u8> {
            let sig = self.signer.sign(msg).unwrap();
            let mut out = Vec::new();
            sig.write(&mut out, true);
            out.extend_from_slice(msg);
            out
        }

        /// Whether a.example's signature passes.
        pub(crate) fn passes(&self, msg: &[u8]) -> bool {
            let Some(m) = AuthenticatedMessage::parse(msg) else {
                return false;
            };
            let f = self
                .auth
                .verify_dkim(Parameters::new(&m).with_txt_cache(&self.keys));
            let out = match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(v) => v,
                Poll::Pending => panic!("verify_dkim tried DNS"),
            };
            out.iter().any(|o| o.result() == &DkimResult::Pass)
        }
    }
}

/// The side-by-side table of issue 13 (docs/PERFORMANCE.md, "Forwarding and lists"): the same
/// messages, DKIM-signed by a.example and stamped, checked after each path — direct, a plain
/// forward, a list copy (subject tag and footer), a list copy with From rewritten — with the
/// forwarder or list running no agent, and running one (its hop). Run with `--nocapture` to
/// see the figures: `cargo test -p mailstamp-core --test hops side_by_side -- --nocapture`.
#[test]
fn dkim_and_mailstamp_side_by_side_per_path() {
    let dkim = dkim::Dkim::new();
    let policy = Policy::default();
    #[derive(Default)]
    struct Row {
        n: usize,
        dkim: usize,
        wanted: usize,
        inapplicable: usize,
    }
    let mut rows: Vec<(&str, Row)> = [
        "direct",
        "forward, no agent",
        "forward, hop",
        "list (tag + footer), no agent",
        "list (tag + footer), hop",
        "list with From rewrite, no agent",
        "list with From rewrite, hop",
    ]
    .into_iter()
    .map(|p| (p, Row::default()))
    .collect();
    let one = |raw: &[u8], to: &str, origin: &Lookup| {
        let r = one_stamp(raw, to, origin, pass());
        let na = not_applicable(&header_of(raw), &r, &policy, Some(1_700_000_100));
        match (r.verdict, na) {
            (Verdict::Spam, Some(_)) => "inapplicable",
            (v, _) => v.as_str(),
        }
    };
    let mut count = |k: usize, dkim_ok: bool, verdict: &str| {
        let row = &mut rows[k].1;
        row.n += 1;
        row.dkim += usize::from(dkim_ok);
        row.wanted += usize::from(verdict == "wanted");
        row.inapplicable += usize::from(verdict == "inapplicable");
    };
    for (name, raw) in corpus() {
        // Direct and forwarded: every corpus message that stamps.
        let (stamped, origin) = stamp(&raw, &[BOB], 1);
        let signed = dkim.sign(&stamped);
        count(0, dkim.passes(&signed), one(&signed, BOB, &origin));
        let fwd = with_trace(&signed, "mx.b.example");
        count(1, dkim.passes(&fwd), one(&fwd, BOB_FWD, &origin));
        let (hopped, rec) = hop(&fwd, &[Change::Trace], "b.example", &[BOB_FWD], 3);
        let r = receive(&hopped, &[BOB_FWD], &[origin.clone(), rec]);
        count(2, dkim.passes(&hopped), r.verdict.as_str());
        // Lists: the plain-text messages a footer can be appended to.
        if !PLAIN.contains(&name.as_str()) {
            continue;
        }
        let (stamped, origin) = stamp(&raw, &[LIST], 1);
        let signed = dkim.sign(&stamped);
        let footer = ["_______________", "List mailing list"];
        let copy = add_footer(&tag_subject(&signed, "[List]"), &footer);
        count(3, dkim.passes(&copy), one(&copy, BOB, &origin));
        let changes = [
            Change::SubjectTag("[List]".into()),
            Change::Footer(2),
            Change::Trace,
        ];
        let (hopped, rec) = hop_for_list(&copy, &changes, &[BOB]);
        let r = receive(&hopped, &[BOB], &[origin.clone(), rec]);
        count(4, dkim.passes(&hopped), r.verdict.as_str());
        let moved = rewrite_from(&copy, AuthorField::ReplyTo);
        count(5, dkim.passes(&moved), one(&moved, BOB, &origin));
        let changes = [
            Change::SubjectTag("[List]".into()),
            Change::Footer(2),
            Change::FromRewritten(AuthorField::ReplyTo),
            Change::Trace,
        ];
        let (hopped, rec) = hop_for_list(&moved, &changes, &[BOB]);
        let r = receive(&hopped, &[BOB], &[origin.clone(), rec]);
        count(6, dkim.passes(&hopped), r.verdict.as_str());
    }
    let pct = |a: usize, n: usize| 100.0 * a as f64 / n.max(1) as f64;
    println!(
        "| path | messages | DKIM (a.example) pass | mailstamp wanted | mailstamp inapplicable |"
    );
    println!(
        "|------|----------|-----------------------|------------------|------------------------|"
    );
    for (p, r) in &rows {
        println!(
            "| {p} | {} | {:.0} % | {:.0} % | {:.0} % |",
            r.n,
            pct(r.dkim, r.n),
            pct(r.wanted, r.n),
            pct(r.inapplicable, r.n)
        );
    }
    let share = |k: usize| {
        let r = &rows[k].1;
        (
            pct(r.dkim, r.n),
            pct(r.wanted, r.n),
            pct(r.inapplicable, r.n),
        )
    };
    assert_eq!(share(0), (100.0, 100.0, 0.0), "direct");
    assert_eq!(share(1), (100.0, 0.0, 100.0), "a forward without an agent");
    assert_eq!(share(2), (100.0, 100.0, 0.0), "a forward under a hop");
    assert_eq!(share(3).0, 0.0, "a list copy breaks DKIM");
    assert_eq!(
        share(3).1,
        0.0,
        "a list copy without an agent is not wanted"
    );
    assert_eq!(share(4), (0.0, 100.0, 0.0), "a list copy under a hop");
    assert_eq!(share(6), (0.0, 100.0, 0.0), "From rewritten under a hop");
}

/// A list agent finds what its list server did by comparing the copy with the stamp below:
/// tag, footer (its line count), footer part, From rewritten (where the author went); a copy
/// with nothing but list fields is a `trace` hop; a copy whose text was edited gets no hop.
/// Under the changes found, every copy is `wanted` at the receiver.
#[test]
fn a_list_agent_finds_the_changes_its_list_made() {
    use mailstamp_core::hops::{ListSettings, list_changes};
    let list = ListSettings {
        subject_tag: Some("[List]"),
        domain: "lists.example",
    };
    let found = |sent: &[u8]| list_changes(&parse(sent).unwrap(), &list);
    let footer = [
        "_______________",
        "List mailing list",
        "https://lists.example/",
    ];
    for name in PLAIN {
        let raw = corpus().into_iter().find(|(n, _)| n == name).unwrap().1;
        let (stamped, origin) = stamp(&raw, &[LIST], 1);
        let tagged = add_footer(&tag_subject(&stamped, "[List]"), &footer);
        let cases = [
            (stamped.clone(), vec![Change::Trace]),
            (
                tagged.clone(),
                vec![
                    Change::SubjectTag("[List]".into()),
                    Change::Footer(3),
                    Change::Trace,
                ],
            ),
            (
                rewrite_from(&tagged, AuthorField::ReplyTo),
                vec![
                    Change::SubjectTag("[List]".into()),
                    Change::Footer(3),
                    Change::FromRewritten(AuthorField::ReplyTo),
                    Change::Trace,
                ],
            ),
            (
                rewrite_from(&stamped, AuthorField::XOriginalFrom),
                vec![
                    Change::FromRewritten(AuthorField::XOriginalFrom),
                    Change::Trace,
                ],
            ),
        ];
        for (k, (sent, want)) in cases.into_iter().enumerate() {
            let changes = found(&sent).unwrap_or_else(|e| panic!("{name} case {k}: {e}"));
            assert_eq!(changes, want, "{name} case {k}");
            let (copy, rec) = hop_for_list(&sent, &changes, &[BOB]);
            let r = receive(&copy, &[BOB], &[origin.clone(), rec]);
            assert_eq!(
                r.verdict,
                Verdict::Wanted,
                "{name} case {k}: {}",
                describe(&r)
            );
        }
        // The list edited the text itself: nothing a hop declares explains that.
        let edited = add_footer(&stamped, &footer);
        let edited = {
            let s = String::from_utf8_lossy(&edited).into_owned();
            let at = s.find("\n\n").or_else(|| s.find("\r\n\r\n")).unwrap() + 2;
            let mut s = s;
            s.insert_str(at, "Edited by the moderator.\n\n");
            s.into_bytes()
        };
        match found(&edited) {
            Err(PrepareHopError::Undeclared(what)) => assert!(what.contains("text"), "{what}"),
            other => panic!("{name}: an edited text gets no hop, got {other:?}"),
        }
        // A subject tag the list does not use is not taken for its own.
        let other = tag_subject(&stamped, "[Other]");
        assert!(
            matches!(found(&other), Err(PrepareHopError::Undeclared(w)) if w.contains("subject")),
            "{name}"
        );
    }
    // Multipart copies with an appended text part.
    let mut n = 0;
    for (name, raw) in corpus() {
        let (stamped, _) = stamp(&raw, &[LIST], 1);
        let Some(sent) = add_footer_part(&stamped) else {
            continue;
        };
        if let Ok(changes) = found(&sent) {
            assert!(
                changes == [Change::FooterPart, Change::Trace]
                    || matches!(changes[0], Change::Footer(_)),
                "{name}: {changes:?}"
            );
            n += 1;
        }
    }
    assert!(
        n >= 5,
        "only {n} multipart copies had their footer part found"
    );
    // Not a chain to extend.
    let plain = corpus().remove(0).1;
    assert!(matches!(found(&plain), Err(PrepareHopError::Unstamped)));
}

/// With trusted forwarders configured (`Policy::forwarders`), a good chain through a hop of
/// another domain is at best `suspect`, naming the hop; through trusted ones it stays
/// `wanted`; a chain of one field is not affected.
#[test]
fn only_trusted_forwarders_make_a_chain_wanted_when_they_are_configured() {
    let raw = corpus().into_iter().find(|(n, _)| n == PLAIN[1]).unwrap().1;
    let (stamped, origin) = stamp(&raw, &[BOB], 1);
    let (fwd, rec) = hop(&stamped, &[Change::Trace], "b.example", &[BOB_FWD], 2);
    let judge = |raw: &[u8], to: &str, lookups: &[Lookup], trusted: &[&str]| {
        let msg = parse(raw).unwrap();
        let ChainInspection::Chain(chain) = inspect_chain(&msg) else {
            panic!("a chain")
        };
        let auths: Vec<WriterAuth> = chain.auth_domains(&msg).iter().map(|_| pass()).collect();
        let policy = Policy {
            forwarders: Some(trusted.iter().map(|d| (*d).to_owned()).collect()),
            ..Policy::default()
        };
        let inputs = LevelInputs {
            lookups,
            auths: &auths,
        };
        evaluate_chain(
            &msg,
            &chain,
            &env(&[to]),
            &inputs,
            &policy,
            Some(1_700_000_100),
        )
    };
    let r = judge(
        &fwd,
        BOB_FWD,
        &[origin.clone(), rec.clone()],
        &["b.example"],
    );
    assert_eq!(r.verdict, Verdict::Wanted, "{}", describe(&r));
    let r = judge(
        &fwd,
        BOB_FWD,
        &[origin.clone(), rec.clone()],
        &["lists.example"],
    );
    assert_eq!(r.verdict, Verdict::Suspect, "{}", describe(&r));
    let reason = r.reason.unwrap_or_default();
    assert!(
        reason.contains("hop i=2 (b.example) is not one of the trusted forwarders"),
        "{reason}"
    );
    assert_eq!(
        r.author.as_deref(),
        Some(mailstamp_core::component::from_address(&parse(&stamped).unwrap()).as_str())
    );
    // A bad chain stays as bad as it was; a lone stamp is judged as ever.
    let r = judge(
        &fwd,
        "eve@forward.example",
        &[origin.clone(), rec],
        &["lists.example"],
    );
    assert_eq!(r.verdict, Verdict::Spam, "{}", describe(&r));
    let r = judge(&stamped, BOB, &[origin], &[]);
    assert_eq!(r.verdict, Verdict::Wanted, "{}", describe(&r));
}
