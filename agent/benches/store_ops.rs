// SPDX-License-Identifier: GPL-3.0-or-later
//! The store's operations per second and the store work of one inbound message (p50/p99),
//! SQLite against PostgreSQL, one host and two hosts at once, the same operations in one run.
//!
//! `cargo bench -p mailstamp --bench store_ops [-- N]` (N messages per host, default 2000).
//! PostgreSQL is a scratch cluster on loopback (`scripts/setup --postgres`), fsync off like
//! the SQLite file's WAL default sync; SQLite is a file in a temporary directory. One
//! "message" is what a milter session asks of the store: outbound learning
//! (`allowlist_outbound`), then at inbound the provider check (`is_active`), the authorised
//! senders (`authorised`), the allowlist lookup and its completion; plus one batch-journal
//! leaf (`add_daemon_leaf`) as batch stamping writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailstamp::config::{AllowlistConfig, StoreConfig};
use mailstamp::people::{FromIdentity, allowlist};
use mailstamp::store::{Store, scratch::Cluster};

fn one_host(store: &Store, host: usize, n: usize) -> Vec<Duration> {
    let cfg = AllowlistConfig {
        enabled: true,
        ..Default::default()
    };
    let batch = format!("0xb{host}{}", std::process::id());
    store.open_daemon_batch(&batch, "milter bench", 1).unwrap();
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let user = format!("u{}@b.example", i % 50);
        let who = FromIdentity::new(&format!("c{i}@c{}.example", i % 20), Some("C")).unwrap();
        allowlist::record_outbound(store, &cfg, &user, &who, 1_000 + i as u64).unwrap();
        let t = Instant::now();
        store.is_active("b.example").unwrap();
        store.authorised(&user, &who.address).unwrap();
        allowlist::lookup(store, &cfg, &user, &who, 2_000).unwrap();
        allowlist::complete(store, &cfg, &user, &who, 2_000).unwrap();
        lat.push(t.elapsed());
        store
            .add_daemon_leaf(&batch, i as u32, &format!("0x{i:048x}"))
            .unwrap();
    }
    lat
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn run(name: &str, hosts: usize, open: &dyn Fn(usize) -> Store, n: usize) {
    let stores: Vec<Arc<Store>> = (0..hosts).map(|h| Arc::new(open(h))).collect();
    stores[0].add_domain("b.example", "acme", 1).unwrap();
    stores[0].set_active("b.example", 1).unwrap();
    let t = Instant::now();
    let threads: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(h, s)| {
            let s = s.clone();
            std::thread::spawn(move || one_host(&s, h, n))
        })
        .collect();
    let mut lat: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let secs = t.elapsed().as_secs_f64();
    lat.sort();
    // 6 operations a message (outbound, 4 inbound, 1 leaf).
    let ops = (6 * n * hosts) as f64 / secs;
    println!(
        "{name:<10} hosts {hosts}  {ops:>8.0} ops/s  inbound store work p50 {:.2} ms  p99 {:.2} ms  ({} messages, {secs:.1} s)",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        n * hosts
    );
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    let pg = Cluster::start().expect("a scratch PostgreSQL: run scripts/setup --postgres");
    for hosts in [1, 2] {
        let dir = std::env::temp_dir().join(format!(
            "mailstamp-bench-store-{}-{hosts}",
            std::process::id()
        ));
        let path = dir.join("state.sqlite");
        run(
            "sqlite",
            hosts,
            &|h| Store::open(&path).unwrap().with_host(format!("mx{h}")),
            n,
        );
        let _ = std::fs::remove_dir_all(&dir);
        let url = pg.database(&format!("bench{hosts}")).unwrap();
        run(
            "postgresql",
            hosts,
            &|h| {
                let cfg = StoreConfig {
                    url: Some(url.clone()),
                    host: Some(format!("mx{h}")),
                    ..Default::default()
                };
                Store::connect(&cfg, None).unwrap()
            },
            n,
        );
    }
}
