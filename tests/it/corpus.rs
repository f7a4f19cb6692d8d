// SPDX-License-Identifier: GPL-3.0-or-later
//! The whole SpamAssassin corpus through the pure core: every message stamped and verified
//! `wanted`; every message with one changed body letter never `wanted`; garbled headers
//! `invalid` without a panic.

use mailstamp_core::{
    ChainRef, Envelope, Inspection, Lookup, Policy, Selection, Verdict, evaluate, insert_header,
    inspect, parse, prepare,
};

use crate::harness::{corpus, tamper_body};

const CHAIN: ChainRef = ChainRef {
    chain_id: 31337,
    registry: [0x5a; 20],
    writer: [0xa5; 20],
};

fn env() -> Envelope {
    Envelope {
        rcpts: vec!["bob@b.example".into()],
        client_ip: None,
    }
}

#[test]
fn every_corpus_message_verifies_and_no_tampered_one_does() {
    let all = corpus();
    assert_eq!(all.len(), 6046, "the full corpus");
    let (mut stamped_n, mut wanted, mut refused) = (0usize, 0usize, Vec::new());
    let (mut tampered, mut tampered_wanted) = (0usize, 0usize);
    let pass = mailstamp_core::WriterAuth::Pass("writer listed (test)".into());
    for (i, (name, raw)) in all.iter().enumerate() {
        let Some(msg) = parse(raw) else {
            refused.push(format!("{name}: unparseable"));
            continue;
        };
        let mut salt = [0u8; 16];
        salt[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let p = match prepare(&msg, &env(), salt, &CHAIN, &Selection::all()) {
            Ok(p) => p,
            Err(e) => {
                refused.push(format!("{name}: {e}"));
                continue;
            }
        };
        stamped_n += 1;
        let stamped = insert_header(raw, &p.header);
        let lookup = Lookup::Found {
            commitment: p.commitment,
            time: 1_000,
        };
        let check = |bytes: &[u8]| {
            let m = parse(bytes).expect("a stamped message parses");
            match inspect(&m) {
                Inspection::Stamped(h) => evaluate(
                    &m,
                    &h,
                    &env(),
                    &lookup,
                    &pass,
                    &Policy::default(),
                    Some(2_000),
                ),
                other => panic!("{name}: {other:?}"),
            }
        };
        let r = check(&stamped);
        if r.verdict == Verdict::Wanted {
            wanted += 1;
        } else {
            eprintln!("{name}: {:?} {:?}", r.verdict, r.reason);
        }
        if let Some(t) = tamper_body(&stamped) {
            tampered += 1;
            if check(&t).verdict == Verdict::Wanted {
                tampered_wanted += 1;
                eprintln!("{name}: tampered body still wanted");
            }
        }
    }
    eprintln!(
        "corpus: {stamped_n} stamped, {wanted} wanted; {tampered} tampered, {tampered_wanted} of them wanted; refused: {refused:?}"
    );
    // Refusing to stamp is allowed only for messages without a From address or recipient, or
    // with a field RFC 5322 allows once given twice (no receiver would take that stamp:
    // docs/PROTOCOL.md §6 step 1; 14 spam messages, two Cc or two Reply-To).
    assert!(refused.len() < 40, "{refused:?}");
    for r in &refused {
        assert!(
            r.contains("no From address")
                || r.contains("no recipients")
                || r.contains("more than one"),
            "{r}"
        );
    }
    assert_eq!(wanted, stamped_n);
    assert!(
        tampered * 100 >= stamped_n * 95,
        "only {tampered} of {stamped_n} could be tampered"
    );
    assert_eq!(tampered_wanted, 0);
}

#[test]
fn garbled_headers_are_invalid_without_panic() {
    let all = corpus();
    let (_, raw) = &all[42];
    let msg = parse(raw).unwrap();
    let p = prepare(&msg, &env(), [1; 16], &CHAIN, &Selection::default()).unwrap();
    let good = p.header.value();
    let garbles = [
        good.replace("v=1", "v=9"),
        good.replace("d=", "d=%%%"),
        good.replace("h=", "h=bogus:"),
        good.chars().rev().collect(),
        "\u{0}\u{1}\u{2}".to_owned(),
        format!("{good}; x={}", "y".repeat(10_000)),
        String::from_utf8_lossy(&[0xff, 0xfe, b'=', b';']).into_owned(),
    ];
    for g in garbles {
        let mut m = format!("Mail-Stamp: {g}\n").into_bytes();
        m.extend_from_slice(raw);
        let parsed = parse(&m).unwrap();
        assert!(
            matches!(inspect(&parsed), Inspection::Invalid(_)),
            "accepted: {g:.60}"
        );
    }
}
