// SPDX-License-Identifier: GPL-3.0-or-later
//! What the fuzz targets share: the message alphabet of `message_tokens` and the invariants of
//! the whole pipeline (parse → inspect → decompose → canonicalise → prepare → evaluate), checked
//! on every input by `message` and `message_tokens` (docs/FUZZING.md).
//!
//! Only the public API of `mailstamp-core` is used: the root re-exports, and the few items that
//! only have a module path (`verify::recorded_value`, `component::decompose`, `header::MAX_*`);
//! if a refactor moves one of those, this crate stops compiling and the fuzz step of
//! `scripts/test` says so.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::LazyLock;

use mailstamp_core::component::decompose;
use mailstamp_core::header::{MAX_COMPONENTS, MAX_RCPTS};
use mailstamp_core::mail_parser::MessageParser;
use mailstamp_core::verify::recorded_value;
use mailstamp_core::{
    ChainRef, ComponentName, Envelope, Family, Inspection, Lookup, Policy, Selection, StampError,
    StampHeader, Verdict, WriterAuth, evaluate, insert_header, inspect, parse, prepare,
};

/// The chain every stamp of the targets points to (the one the core's tests use).
pub const CHAIN: ChainRef = ChainRef {
    chain_id: 31337,
    registry: [0xaa; 20],
    writer: [0xbb; 20],
};

/// The fixed salt of the stamps the targets make: a fixed salt keeps every run reproducible.
pub const SALT: [u8; 16] = [7; 16];

/// Block time of the record the fixed lookup reports, and "now" one hour later.
const RECORDED_AT: u64 = 1_700_000_000;
const NOW: u64 = RECORDED_AT + 3600;

/// The longest message a token input expands to; longer ones are cut (the raw target is
/// bounded by libFuzzer's `-max_len` instead).
pub const MAX_EXPANDED: usize = 512 * 1024;

/// The tokens of `tokens.txt`, in order.
pub static TOKENS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    include_str!("../tokens.txt")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(unescape)
        .collect()
});

/// Decodes one line of `tokens.txt`: `\r \n \t \s \\ \xHH`. A malformed escape is a bug in the
/// file and panics on the first input, so it cannot go unnoticed.
fn unescape(line: &str) -> Vec<u8> {
    let b = line.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b's') => out.push(b' '),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex = line
                    .get(i + 2..i + 4)
                    .expect("tokens.txt: \\x needs two digits");
                out.push(u8::from_str_radix(hex, 16).expect("tokens.txt: bad \\x escape"));
                i += 2;
            }
            _ => panic!("tokens.txt: bad escape in {line:?}"),
        }
        i += 2;
    }
    out
}

/// Expands token numbers into the message they stand for (each byte `b` is token
/// `b % TOKENS.len()`), at most [`MAX_EXPANDED`] bytes.
pub fn expand(data: &[u8]) -> Vec<u8> {
    let tokens = &*TOKENS;
    let mut out = Vec::with_capacity(data.len() * 4);
    for &b in data {
        out.extend_from_slice(&tokens[usize::from(b) % tokens.len()]);
        if out.len() >= MAX_EXPANDED {
            out.truncate(MAX_EXPANDED);
            break;
        }
    }
    out
}

fn envelope() -> Envelope {
    Envelope {
        rcpts: vec!["bob@b.example".to_owned()],
        client_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))),
    }
}

/// What a decoded header must satisfy: it encodes back to itself on one line and folded (in
/// both line endings, lines of at most 78 characters with the field name), and every bound
/// the decoder promises holds.
pub fn check_header(h: &StampHeader) {
    let again = StampHeader::decode(&h.value());
    assert_eq!(again.as_ref(), Ok(h), "value() does not decode back");
    for eol in ["\r\n", "\n"] {
        let folded = h.folded_value(eol);
        assert_eq!(
            StampHeader::decode(&folded).as_ref(),
            Ok(h),
            "folded_value({eol:?}) does not decode back: {folded:?}"
        );
        for (i, line) in folded.split(eol).enumerate() {
            let width = line.len() + if i == 0 { "Mail-Stamp: ".len() } else { 0 };
            assert!(
                width <= 78,
                "folded line {i} is {width} characters: {line:?}"
            );
        }
    }
    assert_eq!(h.names.len(), h.digests.len());
    assert!(h.names.len() <= MAX_COMPONENTS);
    let distinct: BTreeSet<&ComponentName> = h.names.iter().collect();
    assert_eq!(distinct.len(), h.names.len(), "a component is listed twice");
    for n in &h.names {
        assert_ne!(n.family, Family::Rcpt, "rcpt accepted in h=");
        assert_eq!(ComponentName::parse(&n.to_string()), Some(*n));
        n.with_str(|s| assert_eq!(s, n.to_string()));
    }
    if let Some(r) = &h.rcpts {
        assert!(r.len() <= MAX_RCPTS);
        assert!(r.windows(2).all(|w| w[0] < w[1]), "recipients not sorted");
    }
    // The record key and value are computable for every header that decodes.
    let _ = (h.token(), h.commitment(), recorded_value(h));
}

/// Every invariant of the pipeline on one raw message; panics (a libFuzzer crash) when one
/// fails. Only a message `parse` accepts is looked at further.
pub fn check_message(raw: &[u8]) {
    let Some(msg) = parse(raw) else {
        return;
    };
    let env = envelope();
    let policy = Policy::default();

    // The lean parser reads every header the pipeline uses exactly as mail-parser's default
    // one does (agent/core/src/lib.rs): the components must be the same.
    if let Some(full) = MessageParser::default().parse(raw) {
        let sel = Selection::default();
        let lean = decompose(&msg, &env, &sel);
        let full = decompose(&full, &env, &sel);
        assert_eq!(lean.values, full.values, "lean and default parser disagree");
        assert_eq!(
            lean.counts, full.counts,
            "lean and default parser count parts differently"
        );
    }

    // A message that already carries a stamp: the verdict against the record its own header
    // claims, under every shape the writer check can take.
    match inspect(&msg) {
        Inspection::Unstamped | Inspection::Invalid(_) => {}
        Inspection::Stamped(h) => {
            check_header(&h);
            check_received(&msg, &h, &policy, raw.len());
        }
    }

    // Stamp it, then verify exactly those bytes: that is `wanted`, always.
    match prepare(&msg, &env, SALT, &CHAIN, &Selection::all()) {
        Err(StampError::NoFrom) => {
            assert!(mailstamp_core::component::from_address(&msg).is_empty());
        }
        Err(StampError::LeadingFold) => {
            assert!(matches!(raw.first(), Some(b' ' | b'\t')));
        }
        Err(StampError::DuplicateField(_)) => {
            assert!(
                !mailstamp_core::component::duplicate_fields(&msg).is_empty()
                    || !mailstamp_core::component::ambiguous_mime(&msg).is_empty()
            );
        }
        Err(StampError::SeveralAuthors(n)) => {
            assert!(n > 1 && mailstamp_core::component::from_mailboxes(&msg) == n);
        }
        Err(StampError::AlreadyStamped) => {
            assert!(!matches!(inspect(&msg), Inspection::Unstamped));
        }
        Err(e) => panic!("prepare failed with envelope recipients given: {e}"),
        Ok(p) => {
            assert_eq!(p.token, p.header.token());
            assert_eq!(p.commitment, p.header.commitment());
            assert_eq!(recorded_value(&p.header), p.commitment);
            check_header(&p.header);
            let stamped = insert_header(raw, &p.header);
            let msg2 = parse(&stamped).expect("a stamped message parses");
            let h = match inspect(&msg2) {
                Inspection::Stamped(h) => h,
                other => panic!("the stamp just inserted reads as {other:?}"),
            };
            assert_eq!(
                *h, p.header,
                "the stamp just inserted decodes to another header"
            );
            let found = Lookup::Found {
                commitment: p.commitment,
                time: RECORDED_AT,
            };
            let pass = WriterAuth::Pass("fuzz".into());
            let r = evaluate(&msg2, &h, &env, &found, &pass, &policy, Some(NOW));
            assert_eq!(
                r.verdict,
                Verdict::Wanted,
                "stamped then verified unchanged, but: {:?} {:?}",
                r.reason,
                r.components
            );
            assert_eq!(r.score, Some(1.0));
        }
    }
}

/// A received stamped message against the record its header claims: what the chain and the
/// writer check say must map to the verdict as docs/PROTOCOL.md §5 says, whatever the content.
fn check_received(
    msg: &mailstamp_core::mail_parser::Message<'_>,
    h: &StampHeader,
    policy: &Policy,
    pick: usize,
) {
    // No envelope: the recipient check falls back on the trace and To/Cc headers.
    let env = Envelope::default();
    let time = RECORDED_AT;
    // A field RFC 5322 allows once, twice: that verdict, whatever the chain and DNS say.
    // A From with several mailboxes, or a MIME field or parameter twice: spam, whatever the
    // chain and DNS say (the same order as the verifier's own check).
    if mailstamp_core::component::from_mailboxes(msg) > 1
        || !mailstamp_core::component::ambiguous_mime(msg).is_empty()
    {
        let r = evaluate(
            msg,
            h,
            &env,
            &Lookup::NotFound,
            &WriterAuth::Fail("fuzz".into()),
            policy,
            Some(NOW),
        );
        assert_eq!(r.verdict, Verdict::Spam, "{:?}", r.reason);
        return;
    }
    let twice = mailstamp_core::component::duplicate_fields(msg);
    if let Some(first) = twice.first() {
        let want = twice
            .iter()
            .map(|f| mailstamp_core::verify::duplicate_verdict(f))
            .find(|v| *v == Verdict::Spam)
            .unwrap_or_else(|| mailstamp_core::verify::duplicate_verdict(first));
        for lookup in [Lookup::NotFound, Lookup::Unavailable("down".into())] {
            let r = evaluate(
                msg,
                h,
                &env,
                &lookup,
                &WriterAuth::Fail("fuzz".into()),
                policy,
                Some(NOW),
            );
            assert_eq!(r.verdict, want, "{:?}", r.reason);
        }
        return;
    }
    let bare = |lookup: Lookup| {
        evaluate(
            msg,
            h,
            &env,
            &lookup,
            &WriterAuth::Pass("fuzz".into()),
            policy,
            Some(NOW),
        )
        .verdict
    };
    assert_eq!(bare(Lookup::NotFound), Verdict::Spam);
    assert_eq!(bare(Lookup::Unconfirmed), Verdict::Temperror);
    assert_eq!(bare(Lookup::Unavailable("down".into())), Verdict::Temperror);
    let mut wrong = recorded_value(h);
    wrong[0] ^= 1;
    assert_eq!(
        bare(Lookup::Found {
            commitment: wrong,
            time
        }),
        Verdict::Spam
    );
    // One full comparison per input (it decomposes the message); the writer check's outcome
    // is picked by the input so all five are reached.
    let auth = match pick % 5 {
        0 => WriterAuth::Pass("fuzz".into()),
        1 => WriterAuth::Fail("fuzz".into()),
        2 => WriterAuth::None("fuzz".into()),
        3 => WriterAuth::PermError("fuzz".into()),
        _ => WriterAuth::TempError("fuzz".into()),
    };
    let found = Lookup::Found {
        commitment: recorded_value(h),
        time,
    };
    let r = evaluate(msg, h, &env, &found, &auth, policy, Some(NOW));
    let score = r.score.expect("a compared message has a score");
    assert!((0.0..=1.0).contains(&score), "score {score}");
    assert_eq!(
        r.components.is_empty(),
        h.names.is_empty() && h.rcpts.is_none()
    );
    let allowed: &[Verdict] = match auth {
        WriterAuth::Pass(_) => &[Verdict::Wanted, Verdict::Suspect, Verdict::Spam],
        WriterAuth::Fail(_) => &[Verdict::Spam],
        WriterAuth::None(_) | WriterAuth::PermError(_) => &[Verdict::Suspect, Verdict::Spam],
        WriterAuth::TempError(_) => &[Verdict::Temperror, Verdict::Spam],
    };
    assert!(
        allowed.contains(&r.verdict),
        "{:?} with writer check {}: {:?}",
        r.verdict,
        auth.as_str(),
        r.reason
    );
}
