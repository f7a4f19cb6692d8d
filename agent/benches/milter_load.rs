// SPDX-License-Identifier: GPL-3.0-or-later
//! Inbound milter latency and memory under load (bounded, loopback only), in one process and
//! one run: anvil with the registry, N corpus messages stamped once, an inbound milter served
//! in-process, and indymilter-test playing the MTA for every message, one connection per
//! message. Latency is per message, from the connect (negotiation included) to the
//! end-of-message reply. The same milter listens three ways: TCP on 127.0.0.1 as
//! `milter::bind` sets it up, TCP with TCP_NODELAY on the milter's sockets, and a Unix socket.
//! Passes: stamped messages sequentially (the first pass with a cold record cache, the rest
//! warm) and with 100 sessions at once, and as a baseline the same messages without their
//! stamp (verdict `unstamped`: no chain read). Peak RSS (VmHWM) of the process — milter and
//! MTA side together, anvil excluded — before and after the first 100-session pass.
//!
//! Outbound (first, same run): the same corpus messages sent from a trusted network to two
//! more milters, one with `stamp.mode = "direct"` (one `stamp` transaction per message) and one
//! with `"batch"` (one `anchor` per batch; the EOM waits for it): messages/s, EOM latency
//! p50/p99 and transactions sent, sequentially and with 100 sessions at once.
//!
//! Run: `source scripts/lib.sh && cargo bench -p mailstamp --bench milter_load`
//! (`MAILSTAMP_BENCH_N` messages, default 300, at most 2000; `MAILSTAMP_BENCH_PART=outbound`
//! or `inbound` for one half only.)

#![allow(missing_docs, dead_code, unreachable_pub)]

#[path = "../../tests/it/harness.rs"]
mod harness;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailstamp::chain::{self, Chain};
use mailstamp::config::{ChainConfig, Confirmations, Overrides};
use mailstamp::milter;
use mailstamp::session::{Daemon, Settings};
use mailstamp::stamping::{self, StampContext};
use mailstamp_core::{Envelope, Selection};
use tokio_util::sync::CancellationToken;

const N_MAX: usize = 2000;
const SESSIONS: usize = 100;

#[path = "common/milter_play.rs"]
mod milter_play;

use milter_play::{Prepared, Target, added, prepare, row};

/// Which way a message goes: inbound from 192.0.2.10 (judged, `Authentication-Results`
/// expected) or outbound from 127.0.0.1, a trusted network (stamped, `Mail-Stamp` expected).
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Inbound,
    Outbound,
}

/// A pass of `msgs` from sender@a.example to bob@b.example; `ars` holds the header the milter
/// added on that side (`Authentication-Results` or `Mail-Stamp`), every message checked.
struct Pass {
    lat: Vec<Duration>,
    wall: Duration,
    ars: Vec<String>,
}

async fn pass(to: &Target, msgs: &Arc<Vec<Prepared>>, sessions: usize) -> Pass {
    pass_as(to, msgs, sessions, Side::Inbound).await
}

async fn pass_as(to: &Target, msgs: &Arc<Vec<Prepared>>, sessions: usize, side: Side) -> Pass {
    let (ip, want): (IpAddr, &str) = match side {
        Side::Inbound => ("192.0.2.10".parse().expect("ip"), "Authentication-Results"),
        Side::Outbound => ("127.0.0.1".parse().expect("ip"), "Mail-Stamp"),
    };
    let env = milter_play::Envelope {
        ip,
        sender: "sender@a.example".into(),
        rcpts: vec!["bob@b.example".into()],
    };
    let p = milter_play::pass(to, msgs, sessions, &env).await;
    let ars = p
        .actions
        .iter()
        .enumerate()
        .map(|(i, a)| added(a, want).unwrap_or_else(|| panic!("message {i}: no {want}")))
        .collect();
    Pass {
        lat: p.lat,
        wall: p.wall,
        ars,
    }
}

/// (VmHWM, VmRSS) of this process in kB.
fn mem() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb = |key: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (kb("VmHWM:"), kb("VmRSS:"))
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

fn all_have(p: &Pass, what: &str) -> usize {
    p.ars.iter().filter(|a| a.contains(what)).count()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("MAILSTAMP_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
        .clamp(1, N_MAX);
    let a = harness::anvil();
    let registry = chain::deploy(
        &a.endpoint(),
        harness::signer(&a, 0),
        true,
        Duration::from_secs(10),
    )
    .await
    .expect("deploy")
    .address;
    let writer = harness::signer(&a, 0).address();
    let cfg = ChainConfig {
        rpc_url: a.endpoint(),
        confirmations: Confirmations::Depth(1),
        timeout_secs: 30,
        ..Default::default()
    };
    let c = Chain::connect(&cfg, registry, Some(harness::signer(&a, 0)))
        .await
        .expect("connect");
    let trust = harness::corpus_trust(writer);
    let sctx = StampContext {
        selection: Selection::default(),
        authority: harness::authority(&trust),
        check_writer: true,
        active_only: None,
    };
    let raws: Vec<Vec<u8>> = harness::corpus()
        .into_iter()
        .filter(|(_, r)| r.len() < 64 * 1024)
        .step_by(7)
        .take(n)
        .map(|(_, r)| r)
        .collect();
    let n = raws.len();
    let part = std::env::var("MAILSTAMP_BENCH_PART").unwrap_or_else(|_| "all".into());
    if part != "inbound" {
        outbound(&a, registry, &raws, "instant mining", n).await;
        // The same against a chain that mines a block per second, as a real chain does (at
        // 1/12 of Ethereum's block time): every EOM waits for a block in either mode.
        let slow = alloy::node_bindings::Anvil::at(harness::tool("anvil"))
            .port(0u16)
            .block_time(1)
            .try_spawn()
            .expect("anvil --block-time 1");
        let reg = chain::deploy(
            &slow.endpoint(),
            harness::signer(&slow, 0),
            true,
            Duration::from_secs(10),
        )
        .await
        .expect("deploy")
        .address;
        outbound(&slow, reg, &raws, "a block every second", 20).await;
    }
    if part == "outbound" {
        return;
    }
    let env = Envelope {
        rcpts: vec!["bob@b.example".into()],
        client_ip: None,
    };
    let t = Instant::now();
    let mut stamped = Vec::with_capacity(n);
    for m in &raws {
        stamped.push(
            stamping::stamp(&c, &sctx, m, &env)
                .await
                .expect("stamp")
                .message,
        );
    }
    let stamping = t.elapsed();
    let stamped: Arc<Vec<Prepared>> = Arc::new(stamped.iter().map(|m| prepare(m)).collect());
    let plain: Arc<Vec<Prepared>> = Arc::new(raws.iter().map(|m| prepare(m)).collect());
    drop(raws);

    // The inbound milter: chain + trust for the corpus domains, DNS on a closed port.
    let dir = harness::TempDir::new("bench-milter");
    let path = dir.0.join("mailstamp.toml");
    std::fs::write(
        &path,
        format!(
            "[chain]\nrpc_url = \"{}\"\nregistry = \"{registry}\"\ntimeout_secs = 10\n\n{}\n\
             [milter]\nauthserv_id = \"mx.b.example\"\nlookup_tx = false\n",
            a.endpoint(),
            harness::trust_config_toml(writer)
        ),
    )
    .expect("config");
    let settings = Settings::load(Some(&path), &Overrides::default()).expect("settings");
    let max_sessions = settings.cfg.milter.max_sessions;
    let m = Arc::new(Daemon::new(settings, None, None));
    let stop = CancellationToken::new();
    let mut servers = Vec::new();
    // 1. Plain TCP with Nagle on (the baseline that showed the delayed-ACK stalls).
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let tcp = Target::Tcp(l.local_addr().expect("address"));
    servers.push(tokio::spawn(milter::run(
        l,
        m.clone(),
        stop.clone().cancelled_owned(),
    )));
    // 2. TCP as `mailstamp milter --listen inet:…` binds it: TCP_NODELAY on accepted sockets.
    let (listener, spec) = milter::bind("inet:127.0.0.1:0").await.expect("bind");
    let tcp_nodelay = Target::Tcp(
        spec.strip_prefix("inet:")
            .and_then(|a| a.parse().ok())
            .expect("address"),
    );
    servers.push(tokio::spawn(milter::run(
        listener,
        m.clone(),
        stop.clone().cancelled_owned(),
    )));
    // 3. A Unix socket (no Nagle, no delayed ACK).
    let sock = dir.0.join("milter.sock");
    let (listener, _) = milter::bind(&format!("unix:{}", sock.display()))
        .await
        .expect("bind unix");
    let unix = Target::Unix(sock);
    servers.push(tokio::spawn(milter::run(
        listener,
        m,
        stop.clone().cancelled_owned(),
    )));
    let addr = match &tcp {
        Target::Tcp(a) => *a,
        Target::Unix(_) => unreachable!(),
    };

    println!(
        "milter_load: {n} corpus messages (< 64 KiB, every 7th), stamped once in {:.2} s; \
         inbound milter on {addr}, a second TCP port with TCP_NODELAY on the milter's sockets, and a Unix socket (max_sessions {max_sessions}, lookup_tx = false), \
         anvil (instant mining) on loopback; one connection per message; \
         latency = connect .. EOM reply",
        stamping.as_secs_f64()
    );
    let mut rows: Vec<(String, Pass)> = Vec::new();
    // The first pass reads every record from the chain (cold record cache); over the Unix
    // socket, so that no TCP stall hides it. Every later stamped pass finds the records cached.
    let p_cold = pass(&unix, &stamped, 1).await;
    rows.push(("unix        stamped   seq  cold".into(), p_cold));
    rows.push((
        "tcp         stamped   seq  warm".into(),
        pass(&tcp, &stamped, 1).await,
    ));
    rows.push((
        "tcp         unstamped seq".into(),
        pass(&tcp, &plain, 1).await,
    ));
    let before = mem();
    rows.push((
        "tcp         stamped   x100 warm".into(),
        pass(&tcp, &stamped, SESSIONS).await,
    ));
    let after = mem();
    rows.push((
        "tcp         unstamped x100".into(),
        pass(&tcp, &plain, SESSIONS).await,
    ));
    for (name, to) in [("tcp+nodelay", &tcp_nodelay), ("unix", &unix)] {
        rows.push((
            format!("{name:<11} stamped   seq  warm"),
            pass(to, &stamped, 1).await,
        ));
        rows.push((
            format!("{name:<11} unstamped seq"),
            pass(to, &plain, 1).await,
        ));
        rows.push((
            format!("{name:<11} stamped   x100 warm"),
            pass(to, &stamped, SESSIONS).await,
        ));
        rows.push((
            format!("{name:<11} unstamped x100"),
            pass(to, &plain, SESSIONS).await,
        ));
    }
    let end = mem();

    println!(
        "\n{:<34} {:>5} {:>8} {:>8} {:>8} {:>9}",
        "transport / messages / sessions", "msgs", "p50 ms", "p99 ms", "max ms", "msgs/s"
    );
    for (name, p) in &rows {
        println!("{}", row(name, &p.lat, p.wall));
    }
    println!(
        "\npeak RSS (VmHWM, whole process: milter + MTA side + {n} messages held twice): \
         before the first 100-session pass {}, after it {} (VmRSS {} -> {}); at the end {}",
        mb(before.0),
        mb(after.0),
        mb(before.1),
        mb(after.1),
        mb(end.0)
    );

    for (name, p) in &rows {
        let want = if name.contains("unstamped") {
            "mailstamp=none"
        } else {
            "mailstamp=pass"
        };
        let ok = all_have(p, want);
        assert_eq!(ok, n, "{name}: {ok}/{n} messages with {want}");
    }
    println!("every stamped message: mailstamp=pass; every unstamped one: mailstamp=none");
    stop.cancel();
    for s in servers {
        let _ = s.await;
    }
    drop(a);
}

/// An outbound milter (stamping with anvil account `key`) configured by `stamp_toml`, on
/// TCP as `mailstamp milter --listen inet:…` binds it, served until `stop`.
async fn outbound_milter(
    a: &alloy::node_bindings::AnvilInstance,
    dir: &std::path::Path,
    name: &str,
    base: &str,
    stamp_toml: &str,
    key: usize,
    stop: &CancellationToken,
) -> Target {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "{base}\n[store]\npath = \"{}\"\n[stamp]\n{stamp_toml}\n\
             [milter]\ntrusted_networks = [\"127.0.0.0/8\"]\n",
            dir.join(format!("{name}.sqlite")).display()
        ),
    )
    .expect("config");
    let settings = Settings::load(Some(&path), &Overrides::default()).expect("settings");
    let m = Arc::new(Daemon::new(settings, Some(harness::signer(a, key)), None));
    let pending = m.pending_batches().await.expect("fresh store");
    assert!(pending.is_empty(), "a fresh store has no pending batch");
    let (listener, spec) = milter::bind("inet:127.0.0.1:0").await.expect("bind");
    tokio::spawn(milter::run(listener, m, stop.clone().cancelled_owned()));
    Target::Tcp(
        spec.strip_prefix("inet:")
            .and_then(|a| a.parse().ok())
            .expect("address"),
    )
}

/// Outbound direct vs batched, in one run against one anvil.
async fn outbound(
    a: &alloy::node_bindings::AnvilInstance,
    registry: alloy::primitives::Address,
    raws: &[Vec<u8>],
    mining: &str,
    seq_direct: usize,
) {
    use alloy::providers::{Provider, ProviderBuilder};
    const SEQ_BATCHED: usize = 20;
    const BATCH: &str =
        "mode = \"batch\"\nbatch_max = 100\nbatch_wait_ms = 250\nhold_timeout_ms = 30000";
    let n = raws.len();
    let msgs: Arc<Vec<Prepared>> = Arc::new(raws.iter().map(|m| prepare(m)).collect());
    let seq: Arc<Vec<Prepared>> =
        Arc::new(raws.iter().take(seq_direct).map(|m| prepare(m)).collect());
    let few: Arc<Vec<Prepared>> =
        Arc::new(raws.iter().take(SEQ_BATCHED).map(|m| prepare(m)).collect());
    let dir = harness::TempDir::new("bench-outbound");
    let (w_direct, w_batch) = (
        harness::signer(a, 1).address(),
        harness::signer(a, 2).address(),
    );
    let mut base = format!(
        "[chain]\nrpc_url = \"{}\"\nregistry = \"{registry}\"\ntimeout_secs = 10\n\
         [dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\nattempts = 1\n[trust]\n",
        a.endpoint()
    );
    for d in harness::corpus_domains() {
        base.push_str(&format!(
            "\"{d}\" = [\"{w_direct:#x}\", \"{w_batch:#x}\"]\n"
        ));
    }
    let stop = CancellationToken::new();
    let direct = outbound_milter(a, &dir.0, "direct", &base, "mode = \"direct\"", 1, &stop).await;
    let batched = outbound_milter(a, &dir.0, "batch", &base, BATCH, 2, &stop).await;
    let p = ProviderBuilder::new().connect_http(a.endpoint().parse().expect("url"));
    let nonce = async |w| p.get_transaction_count(w).await.expect("nonce");

    println!(
        "milter_load outbound: {n} corpus messages (< 64 KiB, every 7th) sent from 127.0.0.1 \
         (a trusted network) to two outbound milters on TCP (TCP_NODELAY): stamp.mode = direct, \
         and stamp.mode = batch with batch_max = 100, batch_wait_ms = 250; anvil ({mining}) \
         on loopback; one connection per message; latency = connect .. EOM reply \
         (the batched EOM includes waiting for its batch to close and its anchor to be mined)"
    );
    println!(
        "\n{:<34} {:>5} {:>8} {:>8} {:>8} {:>9} {:>5} {:>10}",
        "mode / sessions", "msgs", "p50 ms", "p99 ms", "max ms", "msgs/s", "txs", "msgs/tx"
    );
    let runs = [
        ("direct  seq", &direct, &seq, 1, w_direct),
        ("direct  x100", &direct, &msgs, SESSIONS, w_direct),
        ("batch   seq", &batched, &few, 1, w_batch),
        ("batch   x100", &batched, &msgs, SESSIONS, w_batch),
    ];
    for (name, to, set, sessions, w) in runs {
        let before = nonce(w).await;
        let p = pass_as(to, set, sessions, Side::Outbound).await;
        let txs = nonce(w).await - before;
        println!(
            "{} {:>5} {:>10.1}",
            row(name, &p.lat, p.wall),
            txs,
            p.ars.len() as f64 / txs.max(1) as f64
        );
        let mode = if name.starts_with("batch") {
            "m=b;"
        } else {
            "m=d;"
        };
        let ok = p.ars.iter().filter(|v| v.contains(mode)).count();
        assert_eq!(
            ok,
            p.ars.len(),
            "{name}: {ok}/{} headers with {mode}",
            p.ars.len()
        );
    }
    println!("every outbound message got its Mail-Stamp header (m=d direct, m=b batched)\n");
    stop.cancel();
}
