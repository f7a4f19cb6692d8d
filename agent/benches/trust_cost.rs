// SPDX-License-Identifier: GPL-3.0-or-later
//! What trusting no single endpoint costs (issue 14): the same records looked up in `call`
//! and `proof` mode, with one endpoint and with a 2-of-3 quorum, in one run against one
//! anvil: one lookup after the other and bursts of 64 at once, each with a cold cache (a new
//! connection) and then warm (the same connection again); wall time per message and JSON-RPC
//! calls per message, counted by honest proxies in front of anvil (`tests/it/lying_proxy.rs`).
//!
//! Run: `source scripts/lib.sh && cargo bench -p mailstamp --bench trust_cost`
//! (`MAILSTAMP_BENCH_N` records, default 256, a multiple of 64.)

#![allow(missing_docs, dead_code, unreachable_pub)]

#[path = "../../tests/it/harness.rs"]
mod harness;
#[path = "../../tests/it/lying_proxy.rs"]
mod lying_proxy;

use std::time::{Duration, Instant};

use alloy::primitives::{Address, FixedBytes, keccak256};
use mailstamp::chain::{Chain, RecordKey};
use mailstamp::config::{ChainConfig, Confirmations, ReadMode};
use mailstamp_core::Lookup;

use lying_proxy::{Lie, Proxy, proxy};

fn cfg(urls: &[&str], quorum: usize, mode: ReadMode) -> ChainConfig {
    ChainConfig {
        rpc_urls: urls.iter().map(|u| (*u).to_owned()).collect(),
        quorum,
        read_mode: mode,
        confirmations: Confirmations::Depth(1),
        ..ChainConfig::default()
    }
}

fn calls(ps: &[Proxy]) -> usize {
    ps.iter().map(Proxy::total).sum()
}

async fn one_by_one(c: &Chain, keys: &[(Address, RecordKey)]) {
    for (w, k) in keys {
        assert!(matches!(c.lookup(*w, *k).await, Lookup::Found { .. }));
    }
}

async fn bursts(c: &Chain, keys: &[(Address, RecordKey)]) {
    for chunk in keys.chunks(64) {
        let ls = futures_util::future::join_all(chunk.iter().map(|(w, k)| c.lookup(*w, *k))).await;
        assert!(ls.iter().all(|l| matches!(l, Lookup::Found { .. })));
    }
}

/// Looks every key up (one by one or in bursts); the time taken and the calls it cost.
async fn timed(
    c: &Chain,
    keys: &[(Address, RecordKey)],
    burst: bool,
    ps: &[Proxy],
) -> (Duration, usize) {
    let before = calls(ps);
    let t = Instant::now();
    if burst {
        bursts(c, keys).await;
    } else {
        one_by_one(c, keys).await;
    }
    (t.elapsed(), calls(ps) - before)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("MAILSTAMP_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let a = harness::anvil();
    let registry = harness::deploy_registry(&a).await;
    let writer = harness::signer(&a, 1);
    let w = writer.address();
    let c = Chain::connect(
        &cfg(&[&a.endpoint()], 1, ReadMode::Call),
        registry,
        Some(writer),
    )
    .await
    .unwrap();
    let mut keys = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let sent = futures_util::future::join_all(chunk.iter().map(|i| {
            let t = keccak256(format!("trust_cost/{i}"));
            let v = FixedBytes::<24>::from_slice(&keccak256(format!("c/{i}"))[..24]);
            let c = &c;
            async move { c.stamp(t, v).await.map(|_| t) }
        }))
        .await;
        for t in sent {
            keys.push((w, RecordKey::Stamp(t.unwrap())));
        }
    }
    let ps = [
        proxy(a.endpoint(), Lie::None).await,
        proxy(a.endpoint(), Lie::None).await,
        proxy(a.endpoint(), Lie::None).await,
    ];
    let urls: Vec<&str> = ps.iter().map(|p| p.url.as_str()).collect();
    println!("trust_cost: {n} records, depth 1, anvil on loopback (automine)");
    println!(
        "{:<22} {:<11} {:>12} {:>12} {:>10}",
        "mode", "pattern", "cold ms/msg", "warm ms/msg", "calls/msg"
    );
    let setups: [(&str, &[&str], usize, ReadMode); 4] = [
        ("call, 1 endpoint", &urls[..1], 1, ReadMode::Call),
        ("proof, 1 endpoint", &urls[..1], 1, ReadMode::Proof),
        ("call, 2 of 3", &urls[..], 2, ReadMode::Call),
        ("proof, 2 of 3", &urls[..], 2, ReadMode::Proof),
    ];
    for (name, urls, quorum, mode) in setups {
        for burst in [false, true] {
            let c = Chain::connect(&cfg(urls, quorum, mode), registry, None)
                .await
                .unwrap();
            let (cold, cold_calls) = timed(&c, &keys, burst, &ps).await;
            let (warm, warm_calls) = timed(&c, &keys, burst, &ps).await;
            println!(
                "{:<22} {:<11} {:>12.3} {:>12.4} {:>5.2} / {:.2}",
                name,
                if burst { "burst of 64" } else { "one by one" },
                cold.as_secs_f64() * 1000.0 / n as f64,
                warm.as_secs_f64() * 1000.0 / n as f64,
                cold_calls as f64 / n as f64,
                warm_calls as f64 / n as f64,
            );
        }
    }
}
