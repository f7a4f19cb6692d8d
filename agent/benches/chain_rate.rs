// SPDX-License-Identifier: GPL-3.0-or-later
//! Recording and verification throughput against a local anvil (bounded, loopback only), side
//! by side in one run: direct stamps one after the other, direct stamps with many transactions
//! in flight (the agent's nonces), batched stamps (one anchor per batch), verification of what
//! was stamped (one after the other, and a burst with a cold cache: lookups one by one vs
//! JSON-RPC batches), raw registry lookups in a burst, and finally direct stamps in flight on
//! a chain with 1 s blocks (anvil interval mining).
//!
//! Run: `source scripts/lib.sh && cargo bench -p mailstamp --bench chain_rate`
//! (`MAILSTAMP_BENCH_N` messages per mode, default 200.)

#![allow(missing_docs, dead_code, unreachable_pub)]

#[path = "../../tests/it/harness.rs"]
mod harness;

use std::sync::Arc;
use std::time::Instant;

use alloy::providers::{Provider, ProviderBuilder};
use mailstamp::chain::{self, Chain, RecordKey};
use mailstamp::config::{ChainConfig, Confirmations};
use mailstamp::stamping::{
    self, StampContext,
    batch::{self, BatchInput},
};
use mailstamp::store::Store;
use mailstamp::util;
use mailstamp::verifying::{self, VerifyContext};
use mailstamp_core::{Envelope, Lookup, Policy, Selection, Verdict};

fn env() -> Envelope {
    Envelope {
        rcpts: vec!["bob@b.example".into()],
        client_ip: None,
    }
}

fn rate(n: usize, t: std::time::Duration) -> String {
    format!(
        "{n:>5} in {:>7.2} s = {:>8.1} msg/s",
        t.as_secs_f64(),
        n as f64 / t.as_secs_f64()
    )
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("MAILSTAMP_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let a = harness::anvil();
    let registry = chain::deploy(
        &a.endpoint(),
        harness::signer(&a, 0),
        true,
        std::time::Duration::from_secs(10),
    )
    .await
    .expect("deploy")
    .address;
    let cfg = ChainConfig {
        rpc_url: a.endpoint(),
        confirmations: Confirmations::Depth(1),
        timeout_secs: 30,
        ..Default::default()
    };
    let c = Chain::connect(&cfg, registry, Some(harness::signer(&a, 0)))
        .await
        .expect("connect");
    let trust = harness::corpus_trust(harness::signer(&a, 0).address());
    let sctx = StampContext {
        selection: Selection::default(),
        authority: harness::authority(&trust),
        check_writer: true,
        active_only: None,
    };
    let vctx = VerifyContext {
        authority: harness::authority(&trust),
        trusted: vec![registry],
        policy: Policy::default(),
        now: Some(util::now()),
        patience: Default::default(),
    };
    let msgs: Vec<Vec<u8>> = harness::corpus()
        .into_iter()
        .filter(|(_, r)| r.len() < 64 * 1024)
        .step_by(7)
        .take(n)
        .map(|(_, r)| r)
        .collect();
    let n = msgs.len();
    println!("chain_rate: {n} corpus messages per mode, anvil (instant mining) on loopback");

    // Direct, one at a time: each stamp waits for its receipt before the next is sent. Stamping
    // and verification use separate connections (the verifier's record cache starts empty).
    let verifier = Chain::connect(&cfg, registry, None).await.expect("connect");
    let t = Instant::now();
    let mut stamped = Vec::with_capacity(n);
    let mut tokens = Vec::with_capacity(n);
    for m in &msgs {
        let s = stamping::stamp(&c, &sctx, m, &env()).await.expect("stamp");
        stamped.push(s.message);
        tokens.push(s.token);
    }
    println!("direct, sequential           {}", rate(n, t.elapsed()));

    // Direct, 32 in flight (cached nonces; receipts awaited concurrently).
    let t = Instant::now();
    let (c2, s2) = (Arc::new(c.clone()), Arc::new(sctx.clone()));
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut set = tokio::task::JoinSet::new();
    for m in msgs.clone() {
        let (c2, s2, sem) = (c2.clone(), s2.clone(), sem.clone());
        set.spawn(async move {
            let _p = sem.acquire_owned().await.expect("semaphore");
            stamping::stamp(&c2, &s2, &m, &env())
                .await
                .expect("stamp")
                .message
        });
    }
    let mut concurrent = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        concurrent.push(r.expect("task"));
    }
    println!("direct, 32 in flight         {}", rate(n, t.elapsed()));

    // Batched: one anchor for all, and batches of 16.
    let dir = std::env::temp_dir().join(format!("mailstamp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let store = Store::open(&dir.join("state.sqlite")).expect("store");
    for size in [n, 16] {
        let out = dir.join(format!("batch-{size}"));
        std::fs::create_dir_all(&out).expect("out");
        let t = Instant::now();
        for (k, chunk) in msgs.chunks(size).enumerate() {
            let inputs = chunk
                .iter()
                .enumerate()
                .map(|(i, m)| BatchInput {
                    name: format!("{k}-{i}.eml"),
                    raw: m.clone(),
                    env: env(),
                })
                .collect();
            batch::stamp_batch(&c, &sctx, &store, inputs, &out)
                .await
                .expect("batch");
        }
        println!("batched, {size:>4} per anchor     {}", rate(n, t.elapsed()));
    }

    // Verification of the direct stamps, twice on one verifier connection: cold (every record
    // read from the chain) and warm (confirmed records from the agent's cache).
    let mut wanted = 0;
    for pass in ["cold", "warm"] {
        let t = Instant::now();
        for m in &stamped {
            if verifying::verify(Ok(&verifier), &vctx, m, &env())
                .await
                .verdict
                == Verdict::Wanted
            {
                wanted += 1;
            }
        }
        println!("verify, {pass} record cache     {}", rate(n, t.elapsed()));
    }
    wanted /= 2;
    assert_eq!(wanted, n);
    // The same cold pass with read batching off: what the batching costs a lone lookup.
    let plain = Chain::connect(
        &ChainConfig {
            read_batch_max: 1,
            ..cfg.clone()
        },
        registry,
        None,
    )
    .await
    .expect("connect");
    let t = Instant::now();
    for m in &stamped {
        let v = verifying::verify(Ok(&plain), &vctx, m, &env())
            .await
            .verdict;
        assert_eq!(v, Verdict::Wanted);
    }
    println!("verify, cold, batching off      {}", rate(n, t.elapsed()));

    // A burst of verifications, 64 in flight, each pass on a fresh connection (cold cache):
    // every registry read on its own vs reads coalesced into JSON-RPC batches.
    let vctx = Arc::new(vctx);
    let stamped = Arc::new(stamped);
    for (label, max) in [("one by one", 1), ("batched reads", 64)] {
        let vcfg = ChainConfig {
            read_batch_max: max,
            ..cfg.clone()
        };
        let v = Arc::new(
            Chain::connect(&vcfg, registry, None)
                .await
                .expect("connect"),
        );
        let t = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..stamped.len() {
            let (v, vctx, stamped, sem) = (v.clone(), vctx.clone(), stamped.clone(), sem.clone());
            set.spawn(async move {
                let _p = sem.acquire_owned().await.expect("semaphore");
                verifying::verify(Ok(&v), &vctx, &stamped[i], &env())
                    .await
                    .verdict
            });
        }
        let mut ok = 0;
        while let Some(r) = set.join_next().await {
            ok += usize::from(r.expect("task") == Verdict::Wanted);
        }
        println!(
            "verify, 64 in flight, cold, {label:<13} {}",
            rate(n, t.elapsed())
        );
        assert_eq!(ok, n);
    }

    // The registry reads alone: n records (a quarter of them absent), all asked at once on a
    // fresh connection.
    let writer = harness::signer(&a, 0).address();
    let keys: Vec<RecordKey> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            RecordKey::Stamp(if i % 4 == 3 {
                alloy::primitives::keccak256(i.to_le_bytes())
            } else {
                *t
            })
        })
        .collect();
    for (label, max) in [("one by one", 1), ("batched reads", 64)] {
        let vcfg = ChainConfig {
            read_batch_max: max,
            ..cfg.clone()
        };
        let v = Chain::connect(&vcfg, registry, None)
            .await
            .expect("connect");
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for k in keys.clone() {
            let v = v.clone();
            set.spawn(async move { v.lookup(writer, k).await });
        }
        let mut found = 0;
        while let Some(r) = set.join_next().await {
            let l = r.expect("task");
            assert!(!matches!(l, Lookup::Unavailable(_)), "{l:?}");
            found += usize::from(matches!(l, Lookup::Found { .. }));
        }
        let e = t.elapsed();
        println!(
            "lookups, {n} at once, cold, {label:<13} {n:>5} in {:>7.2} s = {:>8.1} lookups/s",
            e.as_secs_f64(),
            n as f64 / e.as_secs_f64()
        );
        assert_eq!(found, n - (n + 1) / 4);
    }

    // Direct stamps on a chain with 1 s blocks: what in-flight transactions (distinct nonces
    // from the agent) buy when every receipt waits for a block.
    let p = ProviderBuilder::new()
        .connect_http(a.endpoint().parse().expect("url"))
        .erased();
    let _: serde_json::Value = p
        .raw_request("evm_setIntervalMining".into(), (1u64,))
        .await
        .expect("interval mining");
    let few = 5.min(n);
    let t = Instant::now();
    for m in &msgs[..few] {
        stamping::stamp(&c, &sctx, m, &env()).await.expect("stamp");
    }
    println!("1 s blocks, direct, sequential  {}", rate(few, t.elapsed()));
    for inflight in [32, 128] {
        let t = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(inflight));
        let mut set = tokio::task::JoinSet::new();
        for m in msgs.clone() {
            let (c2, s2, sem) = (c2.clone(), s2.clone(), sem.clone());
            set.spawn(async move {
                let _p = sem.acquire_owned().await.expect("semaphore");
                stamping::stamp(&c2, &s2, &m, &env())
                    .await
                    .expect("stamp")
                    .recorded
            });
        }
        let mut blocks = std::collections::BTreeSet::new();
        while let Some(r) = set.join_next().await {
            blocks.insert(r.expect("task").expect("a direct stamp is mined").block);
        }
        println!(
            "1 s blocks, direct, {inflight:>3} in flight {} ({} blocks)",
            rate(n, t.elapsed()),
            blocks.len()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
