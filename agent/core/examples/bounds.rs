// SPDX-License-Identifier: GPL-3.0-or-later
//! Measures the core on the oversized messages of issue 12 item 5 (docs/PERFORMANCE.md,
//! "Bounds"): `cargo run --release -p mailstamp-core --example bounds -- CASE [SIZE]` builds
//! the message, then times parse + `prepare` (stamp) and parse + `inspect` + `evaluate`
//! (verify) of the stamped bytes, and prints the outcome. Peak memory is the process's:
//! run it under `/usr/bin/time -v`. CASE: parts, nesting, header, subject, rcpts, stamp, minparts.

#[path = "../tests/common/bounds.rs"]
mod bounds;

use std::time::Instant;

use mailstamp_core::{
    ChainRef, Envelope, Inspection, Lookup, Policy, Selection, WriterAuth, evaluate, insert_header,
    inspect, parse, prepare,
};

const CHAIN: ChainRef = ChainRef {
    chain_id: 31337,
    registry: [0xaa; 20],
    writer: [0xbb; 20],
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let case = args.first().map_or("parts", String::as_str);
    let size = |default: usize| args.get(1).and_then(|s| s.parse().ok()).unwrap_or(default);
    let mut env = Envelope {
        rcpts: vec!["bob@b.example".into()],
        client_ip: None,
    };
    let raw = match case {
        "parts" => bounds::many_parts(size(10_000)),
        "nesting" => bounds::deep_nesting(size(1_000)),
        "header" => bounds::big_header(size(1 << 20)),
        "subject" => bounds::big_subject(size(1 << 20)),
        "rcpts" => {
            let n = size(10_000);
            env.rcpts = bounds::rcpt_list(n);
            bounds::many_rcpts(n)
        }
        "stamp" => bounds::big_stamp(size(64 << 10)),
        "minparts" => bounds::minimal_parts(size(500_000)),
        other => {
            eprintln!("unknown case {other}");
            std::process::exit(2);
        }
    };
    println!("case {case}: message {} bytes", raw.len());

    let t = Instant::now();
    let Some(msg) = parse(&raw) else {
        println!("parse: not a message");
        return;
    };
    let parse_s = t.elapsed().as_secs_f64();
    println!(
        "parse: {:.3} ms, {} MIME parts",
        parse_s * 1e3,
        msg.parts.len()
    );

    let t = Instant::now();
    let prepared = prepare(&msg, &env, [7; 16], &CHAIN, &Selection::all());
    let stamp_s = t.elapsed().as_secs_f64();
    let stamped = match &prepared {
        Ok(p) => {
            println!("stamp (prepare): {:.3} ms: ok", stamp_s * 1e3);
            insert_header(&raw, &p.header)
        }
        Err(e) => {
            println!("stamp (prepare): {:.3} ms: refused: {e}", stamp_s * 1e3);
            raw.clone()
        }
    };

    let t = Instant::now();
    let Some(msg) = parse(&stamped) else {
        println!("verify: not a message");
        return;
    };
    let outcome = match inspect(&msg) {
        Inspection::Unstamped => "unstamped".to_owned(),
        Inspection::Invalid(why) => format!("invalid: {why}"),
        Inspection::Stamped(h) => {
            let lookup = match &prepared {
                Ok(p) => Lookup::Found {
                    commitment: p.commitment,
                    time: 1_700_000_000,
                },
                Err(_) => Lookup::NotFound,
            };
            let auth = WriterAuth::Pass("bench".into());
            let r = evaluate(
                &msg,
                &h,
                &env,
                &lookup,
                &auth,
                &Policy::default(),
                Some(1_700_000_100),
            );
            format!("{} ({})", r.verdict.as_str(), r.reason.unwrap_or_default())
        }
    };
    let verify_s = t.elapsed().as_secs_f64();
    println!(
        "verify (parse+inspect+evaluate): {:.3} ms: {outcome}",
        verify_s * 1e3
    );
}
