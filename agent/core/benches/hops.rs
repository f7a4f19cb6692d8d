// SPDX-License-Identifier: GPL-3.0-or-later
//! What a hop costs the CPU (issue 13), beside the one-stamp baseline in the same run, over
//! the corpus fixtures: the forwarder's `prepare_hop` against the sender's `prepare`, and the
//! receiver's `evaluate_chain` of a two-level chain (originator + forward hop) against
//! `evaluate` of the lone stamp; and the list agent's `list_changes` (finding the changes a
//! list made to its copy: subject tag, From munged to the list) beside `prepare_hop` with the
//! changes given. Parse included on both sides; no chain, no DNS (every record given, every
//! writer listed).
//!
//! Run: `cargo bench -p mailstamp-core --bench hops` (`MAILSTAMP_BENCH_N` rounds over the
//! corpus, default 20).

#![allow(missing_docs)]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use mailstamp_core::hops::{
    AuthorField, ChainInspection, Change, HopSpec, LevelInputs, ListSettings, insert_hop,
    list_changes,
};
use mailstamp_core::{
    ChainRef, Envelope, Inspection, Lookup, Policy, Selection, WriterAuth, evaluate,
    evaluate_chain, insert_header, inspect, inspect_chain, parse, prepare, prepare_hop,
};

const A: ChainRef = ChainRef {
    chain_id: 31337,
    registry: [0xaa; 20],
    writer: [0xbb; 20],
};
const F: ChainRef = ChainRef {
    writer: [0xcc; 20],
    ..A
};
const NOW: u64 = 1_700_000_100;

fn env(to: &str) -> Envelope {
    Envelope {
        rcpts: vec![to.into()],
        client_ip: None,
    }
}

fn found(commitment: [u8; 24]) -> Lookup {
    Lookup::Found {
        commitment,
        time: 1_700_000_000,
    }
}

struct Case {
    raw: Vec<u8>,
    stamped: Vec<u8>,
    origin: Lookup,
    hopped: Vec<u8>,
    hop: Lookup,
    /// The list's copy of a message stamped for the list: subject tagged, From munged (for
    /// messages with Subject after From and no Reply-To).
    list_copy: Option<Vec<u8>>,
}

const LIST: &str = "dev@lists.example";

/// A list's copy of `stamped`: `[dev] ` before the subject, From rewritten to the list with
/// the author's From value in Reply-To (Mailman's munge_from). Header fields only, so it
/// applies to every corpus message.
fn list_copy(stamped: &[u8]) -> Option<Vec<u8>> {
    let msg = parse(stamped)?;
    let field = |name: &str| {
        msg.headers()
            .iter()
            .find(|h| h.name().eq_ignore_ascii_case(name))
            .map(|h| {
                (
                    h.offset_field() as usize,
                    h.offset_start() as usize,
                    h.offset_end() as usize,
                )
            })
    };
    let (_, subject, _) = field("Subject")?;
    let (from, author, end) = field("From")?;
    if field("Reply-To").is_some() || subject < from {
        return None;
    }
    let eol = mailstamp_core::stamp::line_ending(stamped);
    let value = String::from_utf8_lossy(&stamped[author..end])
        .trim_end()
        .to_owned();
    let mut out = stamped[..from].to_vec();
    out.extend_from_slice(
        format!("From: \"Author via dev\" <{LIST}>{eol}Reply-To:{value}{eol}").as_bytes(),
    );
    out.extend_from_slice(&stamped[end..subject]);
    out.extend_from_slice(b" [dev]");
    out.extend_from_slice(&stamped[subject..]);
    Some(out)
}

fn report(name: &str, mut lat: Vec<Duration>) -> f64 {
    lat.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = us(lat.iter().sum::<Duration>()) / lat.len() as f64;
    println!(
        "{name:<40} {:>7} msgs  mean {:>8.1} µs  p50 {:>8.1} µs  p99 {:>8.1} µs",
        lat.len(),
        mean,
        us(lat[lat.len() / 2]),
        us(lat[(lat.len() * 99 / 100).min(lat.len() - 1)])
    );
    mean
}

fn main() {
    let rounds: usize = std::env::var("MAILSTAMP_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corpus");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("the corpus fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    paths.sort();
    let spec = HopSpec {
        changes: &[Change::Trace],
        domain: "b.example",
        received_for: "bob@b.example",
    };
    let cases: Vec<Case> = paths
        .iter()
        .filter_map(|p| {
            let raw = std::fs::read(p).ok()?;
            let p = prepare(
                &parse(&raw)?,
                &env("bob@b.example"),
                [1; 16],
                &A,
                &Selection::all(),
            )
            .ok()?;
            let stamped = insert_header(&raw, &p.header);
            let h = prepare_hop(
                &parse(&stamped)?,
                &env("bob@forward.example"),
                [2; 16],
                &F,
                &Selection::all(),
                &spec,
            )
            .ok()?;
            let for_list =
                prepare(&parse(&raw)?, &env(LIST), [3; 16], &A, &Selection::all()).ok()?;
            Some(Case {
                hopped: insert_hop(&stamped, &h.field),
                list_copy: list_copy(&insert_header(&raw, &for_list.header)),
                raw,
                stamped,
                origin: found(p.commitment),
                hop: found(h.commitment),
            })
        })
        .collect();
    println!("{} corpus messages × {rounds} rounds", cases.len());
    let pass = || WriterAuth::Pass(String::new());
    let policy = Policy::default();
    let listed: Vec<&Case> = cases.iter().filter(|c| c.list_copy.is_some()).collect();
    println!("{} of them with a list copy", listed.len());
    let time_over = |cases: &[&Case], f: &dyn Fn(&Case)| {
        let mut lat = Vec::with_capacity(cases.len() * rounds);
        for _ in 0..rounds {
            for c in cases {
                let t = Instant::now();
                f(c);
                lat.push(t.elapsed());
            }
        }
        lat
    };
    let all: Vec<&Case> = cases.iter().collect();
    let time = |f: &dyn Fn(&Case)| time_over(&all, f);
    let stamp = report(
        "sender: prepare (baseline)",
        time(&|c| {
            let m = parse(black_box(&c.raw)).unwrap();
            black_box(prepare(&m, &env("bob@b.example"), [1; 16], &A, &Selection::all()).unwrap());
        }),
    );
    let hop = report(
        "forwarder: prepare_hop",
        time(&|c| {
            let m = parse(black_box(&c.stamped)).unwrap();
            black_box(
                prepare_hop(
                    &m,
                    &env("bob@forward.example"),
                    [2; 16],
                    &F,
                    &Selection::all(),
                    &spec,
                )
                .unwrap(),
            );
        }),
    );
    let one = report(
        "receiver: evaluate, one stamp (baseline)",
        time(&|c| {
            let m = parse(black_box(&c.stamped)).unwrap();
            let Inspection::Stamped(h) = inspect(&m) else {
                panic!("stamped")
            };
            let r = evaluate(
                &m,
                &h,
                &env("bob@b.example"),
                &c.origin,
                &pass(),
                &policy,
                Some(NOW),
            );
            assert_eq!(r.verdict, mailstamp_core::Verdict::Wanted);
        }),
    );
    let chain = report(
        "receiver: evaluate_chain, stamp + hop",
        time(&|c| {
            let m = parse(black_box(&c.hopped)).unwrap();
            let ChainInspection::Chain(ch) = inspect_chain(&m) else {
                panic!("a chain")
            };
            let lookups = [c.origin.clone(), c.hop.clone()];
            let auths = [pass(), pass()];
            let inputs = LevelInputs {
                lookups: &lookups,
                auths: &auths,
            };
            let r = evaluate_chain(
                &m,
                &ch,
                &env("bob@forward.example"),
                &inputs,
                &policy,
                Some(NOW),
            );
            assert_eq!(r.verdict, mailstamp_core::Verdict::Wanted);
        }),
    );
    let list = ListSettings {
        subject_tag: Some("[dev]"),
        domain: "lists.example",
    };
    let list_changes_made = [
        Change::SubjectTag("[dev]".into()),
        Change::FromRewritten(AuthorField::ReplyTo),
        Change::Trace,
    ];
    let list_spec = HopSpec {
        changes: &list_changes_made,
        domain: "lists.example",
        received_for: LIST,
    };
    let given = report(
        "list: prepare_hop, changes given",
        time_over(&listed, &|c| {
            let m = parse(black_box(c.list_copy.as_deref().unwrap())).unwrap();
            black_box(
                prepare_hop(
                    &m,
                    &env("carol@c.example"),
                    [4; 16],
                    &F,
                    &Selection::all(),
                    &list_spec,
                )
                .unwrap(),
            );
        }),
    );
    let found = report(
        "list agent: list_changes + prepare_hop",
        time_over(&listed, &|c| {
            let m = parse(black_box(c.list_copy.as_deref().unwrap())).unwrap();
            let changes = list_changes(&m, &list).unwrap();
            assert_eq!(changes, list_changes_made);
            let spec = HopSpec {
                changes: &changes,
                ..list_spec.clone()
            };
            black_box(
                prepare_hop(
                    &m,
                    &env("carol@c.example"),
                    [4; 16],
                    &F,
                    &Selection::all(),
                    &spec,
                )
                .unwrap(),
            );
        }),
    );
    println!(
        "prepare_hop / prepare = {:.2}×; evaluate_chain (2 levels) / evaluate = {:.2}×; list agent (finding the changes) / prepare_hop = {:.2}×",
        hop / stamp,
        chain / one,
        found / given
    );
}
