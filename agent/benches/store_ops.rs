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
//!
//! Then the milter's inbound latency on each store, the same messages for each row: real
//! `mailstamp milter` daemons served in-process (one per host, each its own `store.host`),
//! provider mode (the RCPT check reads the onboarded domains) and `[inbound] enabled` (the
//! folder decision reads the authorised senders and the allowlist, pre-trained from outbound
//! mail, and completes entries), indymilter-test playing the MTA, one connection per message
//! from an outside address, unstamped mail (no chain read: the store is what differs), half
//! from known correspondents (SPF pass from the loopback DNS fixture → INBOX), half from
//! strangers. Latency is from connect to the end-of-message reply; p50/p99 over every
//! message of every host, sequential and with 16 sessions per host at once.

#![allow(missing_docs, dead_code, unreachable_pub)]

#[path = "../../tests/it/dnsfix.rs"]
mod dnsfix;
#[path = "../../tests/it/harness.rs"]
mod harness;

use std::ffi::CString;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indymilter_test::{EomAction, Status, TestConnection};
use mailstamp::config::{AllowlistConfig, Overrides, StoreConfig};
use mailstamp::milter;
use mailstamp::people::{FromIdentity, allowlist};
use mailstamp::session::{Daemon, Settings};
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

/// The correspondents' address: their SPF record allows it.
const OUTSIDE: &str = "198.51.100.7";
/// Messages per host in the milter part (a tenth of the store part's, at least 100).
const SESSIONS: usize = 16;

/// Message `i` to user `u{i % 50}`: from a correspondent the user wrote to (even `i`) or a
/// stranger (odd).
fn inbound_message(i: usize) -> (String, String, Vec<u8>) {
    let user = format!("u{}@b.example", i % 50);
    let from = if i.is_multiple_of(2) {
        format!("c{}@c.example", i % 40)
    } else {
        format!("s{i}@c.example")
    };
    let raw = format!(
        "From: C <{from}>\r\nTo: <{user}>\r\nSubject: note {i}\r\n\
         Date: Tue, 24 Nov 2026 05:00:00 +0000\r\nMessage-ID: <n{i}@c.example>\r\n\r\n\
         Hello,\r\n\r\nthe figures for this week are attached below.\r\n"
    );
    (from, user, raw.into_bytes())
}

/// One inbound session; the time from connect to the EOM reply and the folder it gave.
async fn play(addr: SocketAddr, i: usize) -> (Duration, String) {
    let (from, user, raw) = inbound_message(i);
    let t = Instant::now();
    let mut c = TestConnection::configure()
        .exact_leading_space(true)
        .open_tcp(addr)
        .await
        .expect("the milter answers");
    let ip: std::net::IpAddr = OUTSIDE.parse().unwrap();
    let ok = |s: Status, what: &str| assert_eq!(s, Status::Continue, "{what}");
    ok(
        c.connect("client.c.example", (ip, 25000)).await.unwrap(),
        "connect",
    );
    ok(c.helo("mail.c.example").await.unwrap(), "helo");
    ok(c.mail([format!("<{from}>")]).await.unwrap(), "mail");
    ok(c.rcpt([format!("<{user}>")]).await.unwrap(), "rcpt");
    let (fields, body) = harness::milter_split(&raw);
    for (n, v) in fields {
        ok(
            c.header(n, CString::new(v).unwrap()).await.unwrap(),
            "header",
        );
    }
    ok(c.eoh().await.unwrap(), "eoh");
    ok(c.body(body).await.unwrap(), "body");
    // No macro packet before EOM: the client does not set TCP_NODELAY, and a second small
    // write before the first is acknowledged would wait for the milter's delayed ACK (40 ms),
    // hiding the store's cost.
    let (eom, status) = c.eom().await.unwrap();
    let took = t.elapsed();
    let _ = c.close().await;
    assert_eq!(status, Status::Continue, "message {i} accepted");
    let folder = eom
        .actions
        .iter()
        .find_map(|a| match a {
            EomAction::AddHeader { name, value } | EomAction::InsertHeader { name, value, .. }
                if name.to_str().unwrap() == "X-Mailstamp-Folder" =>
            {
                Some(value.to_str().unwrap().trim().to_owned())
            }
            _ => None,
        })
        .unwrap_or_default();
    (took, folder)
}

/// `n` messages per host through each host's milter, `sessions` at once per host.
async fn milter_pass(addrs: &[SocketAddr], n: usize, sessions: usize) -> (Vec<Duration>, f64) {
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (h, addr) in addrs.iter().enumerate() {
        let sem = Arc::new(tokio::sync::Semaphore::new(sessions));
        for i in 0..n {
            let (sem, addr) = (sem.clone(), *addr);
            set.spawn(async move {
                let _p = sem.acquire_owned().await.unwrap();
                (h, i, play(addr, i).await)
            });
        }
    }
    let mut lat = Vec::new();
    let mut inbox = 0;
    while let Some(j) = set.join_next().await {
        let (_, i, (d, folder)) = j.unwrap();
        let want = if i.is_multiple_of(2) {
            "INBOX"
        } else {
            "Unknown"
        };
        assert_eq!(folder, want, "message {i}: the store decided");
        inbox += usize::from(folder == "INBOX");
        lat.push(d);
    }
    assert_eq!(inbox, addrs.len() * n.div_ceil(2));
    let secs = t.elapsed().as_secs_f64();
    lat.sort();
    (lat, (addrs.len() * n) as f64 / secs)
}

/// Starts one milter per host on `store_toml(host)`; the domain onboarded and the allowlist
/// trained through the first host's store.
async fn milters(
    dir: &std::path::Path,
    base: &str,
    hosts: usize,
    store_toml: &dyn Fn(usize) -> String,
    stop: &tokio_util::sync::CancellationToken,
) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for h in 0..hosts {
        let config = dir.join(format!("mx{h}.toml"));
        std::fs::write(&config, format!("{base}{}", store_toml(h))).unwrap();
        let settings = Settings::load(Some(&config), &Overrides::default()).unwrap();
        if h == 0 {
            let cfg = settings.cfg.clone();
            tokio::task::spawn_blocking(move || {
                let store = Store::connect(&cfg.store, None).unwrap();
                store.add_domain("b.example", "acme", 1).unwrap();
                store.set_active("b.example", 1).unwrap();
                for i in (0..200).step_by(2) {
                    let (from, user, _) = inbound_message(i);
                    let who = FromIdentity::new(&from, Some("C")).unwrap();
                    let now = mailstamp::util::now();
                    allowlist::record_outbound(&store, &cfg.allowlist, &user, &who, now).unwrap();
                }
            })
            .await
            .unwrap();
        }
        let m = Arc::new(Daemon::new(settings, None, None));
        let (listener, addr) = milter::bind("inet:127.0.0.1:0").await.unwrap();
        addrs.push(addr.strip_prefix("inet:").unwrap().parse().unwrap());
        tokio::spawn(milter::run(listener, m, stop.clone().cancelled_owned()));
    }
    addrs
}

fn milter_row(name: &str, hosts: usize, sessions: usize, (lat, rate): &(Vec<Duration>, f64)) {
    println!(
        "{name:<10} hosts {hosts}  sessions/host {sessions:>2}  inbound EOM p50 {:>6.2} ms  p99 {:>6.2} ms  {rate:>7.0} msg/s  ({} messages)",
        pct(lat, 0.5),
        pct(lat, 0.99),
        lat.len()
    );
}

/// The milter part: each backend, one and two hosts, sequential and concurrent sessions.
fn milter_part(pg: &Cluster, n: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let lines = vec![
            format!("c.example 60 IN TXT \"v=spf1 ip4:{OUTSIDE} -all\""),
            "_dmarc.c.example 60 IN TXT \"v=DMARC1; p=none\"".to_owned(),
        ];
        let dns = dnsfix::DnsServer::start(&["example", "c.example"], &lines).await;
        let a = harness::anvil();
        let base = format!(
            "[chain]\nrpc_url = \"{}\"\nregistry = \"0x5FbDB2315678afecb367f032d93F642f64180aa3\"\n\
             [dns]\nnameservers = [\"{}\"]\ntimeout_secs = 2\nattempts = 1\n\
             [milter]\nauthserv_id = \"mx.b.example\"\ntrusted_networks = [\"127.0.0.1/32\"]\n\
             [inbound]\nenabled = true\n\
             [provider]\nenabled = true\nzone = \"provider.example\"\n\
             mail_host_addresses = [\"127.0.0.2\"]\nwriters = [\"0x70997970C51812dc3A010C7d01b50e0d17dc79C8\"]\n",
            a.endpoint(),
            dns.addr
        );
        println!();
        for hosts in [1, 2] {
            for backend in ["sqlite", "postgresql"] {
                let dir = std::env::temp_dir().join(format!(
                    "mailstamp-bench-milter-{}-{backend}-{hosts}",
                    std::process::id()
                ));
                std::fs::create_dir_all(&dir).unwrap();
                let url = (backend == "postgresql")
                    .then(|| pg.database(&format!("milter{hosts}")).unwrap());
                let file = dir.join("state.sqlite");
                let store_toml = |h: usize| match &url {
                    Some(u) => format!("[store]\nurl = \"{u}\"\nhost = \"mx{h}\"\n"),
                    None => format!("[store]\npath = \"{}\"\nhost = \"mx{h}\"\n", file.display()),
                };
                let stop = tokio_util::sync::CancellationToken::new();
                let addrs = milters(&dir, &base, hosts, &store_toml, &stop).await;
                // One warm-up pass (DNS cache, pools), not reported.
                milter_pass(&addrs, 20, 1).await;
                for sessions in [1, SESSIONS] {
                    let r = milter_pass(&addrs, n, sessions).await;
                    milter_row(backend, hosts, sessions, &r);
                }
                stop.cancel();
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        drop(a);
    });
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
    milter_part(&pg, (n / 10).max(100));
}
