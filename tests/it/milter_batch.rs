// SPDX-License-Identifier: GPL-3.0-or-later
//! Batched anchoring inside the daemons (`stamp.mode = "batch"`), black-box against a real
//! anvil: concurrent outbound messages through the milter (indymilter-test as the MTA) and the
//! relay (raw SMTP, an in-test next hop) share ONE anchor transaction and each header verifies
//! `wanted`; an anchor that is not mined within `hold_timeout_ms` defers the message without a
//! header (and a later anchor of that batch harms nothing); the chain gone is a 451; and the
//! real binary, crashed before or after its anchor by `MAILSTAMP_FAULT`, applies
//! `stamp.pending_on_restart` at the next start without ever anchoring a batch twice.

use std::net::SocketAddr;
use std::path::Path;

use alloy::primitives::{Address, B256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::Filter;
use alloy::sol_types::SolEvent;
use indymilter_test::{MacroStage, Status, TestConnection};
use mailstamp::chain::{Chain, StampRegistry};
use mailstamp::config::{ChainConfig, Confirmations};
use mailstamp::store::{DaemonBatchState, Store};
use mailstamp::util;
use mailstamp::verifying::{self, VerifyContext};
use mailstamp_core::header::Mode;
use mailstamp_core::{Envelope, Inspection, Policy, Verdict, inspect, parse};

use crate::harness::{TempDir, authority, key_hex, milter_split, signer};
use crate::milter::{INBOUND, Outcome, Smtp, T, chain, chain_toml, play, start, with_stamp};

/// A message from alice@a.example to bob@b.example, made distinct by `n`.
fn msg(n: usize) -> Vec<u8> {
    format!(
        "From: Alice <alice@a.example>\r\n\
To: Bob <bob@b.example>\r\n\
Subject: batched message {n}\r\n\
Date: Tue, 24 Nov 2026 03:00:00 +0000\r\n\
Message-ID: <b{n}@a.example>\r\n\
\r\n\
Hello Bob, this is message number {n} of the batch.\r\n"
    )
    .into_bytes()
}

const SUBMIT: Smtp<'static> = Smtp {
    ip: "127.0.0.1",
    host: "localhost",
    ..INBOUND
};

/// `[store]` and `[stamp]` for batched mode, and the milter's trusted network.
fn batch_toml(store: &Path, max: usize, wait_ms: u64, hold_ms: u64, extra: &str) -> String {
    format!(
        "[store]\npath = \"{}\"\n\
         [stamp]\nmode = \"batch\"\nbatch_max = {max}\nbatch_wait_ms = {wait_ms}\n\
         hold_timeout_ms = {hold_ms}\n{extra}\n\
         [milter]\ntrusted_networks = [\"127.0.0.0/8\"]\n",
        store.display()
    )
}

/// `Anchored` events of the registry.
async fn anchors(url: &str, registry: Address) -> Vec<B256> {
    let p = ProviderBuilder::new().connect_http(url.parse().unwrap());
    let f = Filter::new()
        .address(registry)
        .event_signature(StampRegistry::Anchored::SIGNATURE_HASH)
        .from_block(0);
    p.get_logs(&f)
        .await
        .unwrap()
        .iter()
        .map(|l| l.topics()[2])
        .collect()
}

async fn nonce(url: &str, who: Address) -> u64 {
    let p = ProviderBuilder::new().connect_http(url.parse().unwrap());
    p.get_transaction_count(who).await.unwrap()
}

async fn rpc(url: &str, method: &'static str, params: serde_json::Value) {
    let p = ProviderBuilder::new().connect_http(url.parse().unwrap());
    let _: serde_json::Value = p.raw_request(method.into(), params).await.unwrap();
}

/// The batch id and leaf proof of a stamped message.
fn batch_of(stamped: &[u8]) -> (B256, usize) {
    let m = parse(stamped).unwrap();
    match inspect(&m) {
        Inspection::Stamped(h) => match h.mode {
            Mode::Batch { batch, proof } => (B256::from(batch), proof.len()),
            Mode::Direct => panic!("a direct stamp in batched mode"),
        },
        other => panic!("not stamped: {other:?}"),
    }
}

/// Verifies `stamped` (sent to bob@b.example) the way an inbound agent does.
async fn verdict(url: &str, registry: Address, writer: Address, stamped: &[u8]) -> Verdict {
    let cfg = ChainConfig {
        rpc_url: url.to_owned(),
        confirmations: Confirmations::Depth(1),
        timeout_secs: 5,
        ..Default::default()
    };
    let chain = Chain::connect(&cfg, registry, None).await.unwrap();
    let trust = [("a.example".to_owned(), vec![writer])].into();
    let ctx = VerifyContext {
        authority: authority(&trust),
        trusted: vec![registry],
        policy: Policy::default(),
        now: Some(util::now()),
        patience: Default::default(),
    };
    let env = Envelope {
        rcpts: vec!["bob@b.example".into()],
        client_ip: None,
    };
    let r = verifying::verify(Ok(&chain), &ctx, stamped, &env).await;
    assert_eq!(r.verdict, Verdict::Wanted, "{r:?}");
    r.verdict
}

fn journal(path: &Path, states: &[DaemonBatchState]) -> Vec<mailstamp::store::DaemonBatchRow> {
    Store::open(path).unwrap().daemon_batches(states).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_milter_messages_share_one_anchor_and_each_verifies() {
    let (a, registry, writer) = chain().await;
    let url = a.endpoint();
    let dir = TempDir::new("mbatch");
    let store = dir.0.join("state.sqlite");
    let base = chain_toml(&url, registry, writer);
    // Five leaves close a batch; a lone message waits at most 1.5 s for company.
    let m = start(
        &format!("{base}{}", batch_toml(&store, 5, 1500, 30_000, "")),
        &[],
        Some(&a),
    )
    .await;
    let n0 = nonce(&url, writer).await;

    // Round 1: five messages at once fill one batch → one anchor.
    let outs = futures_join((0..5).map(|i| {
        let addr = m.addr;
        async move { (i, play(addr, &SUBMIT, &msg(i)).await) }
    }))
    .await;
    let (mut batches, mut depths) = (Vec::new(), Vec::new());
    for (i, out) in &outs {
        assert!(out.stop.is_none(), "message {i}: {out:?}");
        let stamped = with_stamp(out, &msg(*i));
        let (b, depth) = batch_of(&stamped);
        batches.push(b);
        depths.push(depth);
        verdict(&url, registry, writer, &stamped).await;
    }
    assert_eq!(
        depths.iter().max(),
        Some(&3),
        "five leaves: proofs up to three nodes"
    );
    batches.dedup();
    assert_eq!(batches.len(), 1, "every message in one batch");
    assert_eq!(anchors(&url, registry).await, batches, "ONE anchor event");
    assert_eq!(nonce(&url, writer).await, n0 + 1, "ONE transaction");

    // Round 2: two messages do not fill a batch; it closes after batch_wait_ms.
    let outs = futures_join((10..12).map(|i| {
        let addr = m.addr;
        async move { (i, play(addr, &SUBMIT, &msg(i)).await) }
    }))
    .await;
    let mut second = Vec::new();
    for (i, out) in &outs {
        assert!(out.stop.is_none(), "message {i}: {out:?}");
        let stamped = with_stamp(out, &msg(*i));
        second.push(batch_of(&stamped).0);
        verdict(&url, registry, writer, &stamped).await;
    }
    second.dedup();
    assert_eq!(second.len(), 1);
    assert_ne!(second[0], batches[0]);
    assert_eq!(anchors(&url, registry).await.len(), 2);
    assert_eq!(nonce(&url, writer).await, n0 + 2);

    // The journal holds both, anchored, with their leaves and transactions.
    let rows = journal(&store, &[DaemonBatchState::Anchored]);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows.iter().map(|r| r.leaves.len()).sum::<usize>(), 7);
    assert!(rows.iter().all(|r| r.tx.is_some()));
    assert!(journal(&store, &[DaemonBatchState::Open, DaemonBatchState::Closed]).is_empty());
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join<F: std::future::Future + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_relay_messages_share_one_anchor_and_each_verifies() {
    use crate::relay::{Sink, deliver, start as start_relay};
    let (a, registry, writer) = chain().await;
    let url = a.endpoint();
    let dir = TempDir::new("rbatch");
    let store = dir.0.join("state.sqlite");
    let base = chain_toml(&url, registry, writer);
    let sink = Sink::start().await;
    let r = start_relay(
        &format!("{base}{}", batch_toml(&store, 4, 1500, 30_000, "")),
        "outbound = true",
        sink.addr,
        &[],
        Some(&a),
    )
    .await;
    let n0 = nonce(&url, writer).await;
    let addr: SocketAddr = r.addr;
    let replies = futures_join((0..4).map(move |i| async move {
        deliver(addr, "alice@a.example", &["bob@b.example"], &msg(i)).await
    }))
    .await;
    for rep in &replies {
        assert!(rep.starts_with("250"), "{rep}");
    }
    let got = sink.got();
    assert_eq!(got.len(), 4);
    let mut batches = Vec::new();
    for g in &got {
        assert_eq!(g.rcpts, ["bob@b.example"]);
        assert!(crate::relay::header(&g.data, "Mail-Stamp").is_some());
        // The relay put a Received line above the stamp: verification ignores it.
        let (b, _) = batch_of(g.data.as_bytes());
        batches.push(b);
        verdict(&url, registry, writer, g.data.as_bytes()).await;
    }
    batches.dedup();
    assert_eq!(batches.len(), 1, "one batch for the four messages");
    assert_eq!(anchors(&url, registry).await, batches);
    assert_eq!(nonce(&url, writer).await, n0 + 1, "ONE transaction");

    // The chain goes away: the next outbound message is a 451, nothing forwarded.
    drop(a);
    let rep = deliver(addr, "alice@a.example", &["bob@b.example"], &msg(9)).await;
    assert!(
        rep.starts_with("451 4.7.1 mailstamp: cannot record the stamp now"),
        "{rep}"
    );
    assert_eq!(sink.got().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anchor_not_mined_within_the_hold_timeout_defers_the_message_without_a_header() {
    let (a, registry, writer) = chain().await;
    let url = a.endpoint();
    let dir = TempDir::new("mhold");
    let store = dir.0.join("state.sqlite");
    let base = chain_toml(&url, registry, writer);
    let hold_ms = 1500;
    let m = start(
        &format!("{base}{}", batch_toml(&store, 8, 100, hold_ms, "")),
        &[],
        Some(&a),
    )
    .await;
    // Warm the connection with one stamped message, then stop mining.
    let out = play(m.addr, &SUBMIT, &msg(0)).await;
    assert!(out.stop.is_none(), "{out:?}");
    let n0 = nonce(&url, writer).await;
    rpc(&url, "evm_setAutomine", serde_json::json!([false])).await;

    let started = std::time::Instant::now();
    let out = play(m.addr, &SUBMIT, &msg(1)).await;
    assert!(
        matches!(out.stop, Some(("eom", Status::Tempfail { .. }))),
        "{out:?}"
    );
    assert!(out.reply().starts_with("451 4.7.1"), "{out:?}");
    assert!(
        out.header("Mail-Stamp").is_none(),
        "no header without an anchor"
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(hold_ms),
        "it held the message for the hold timeout first"
    );
    // The anchor was sent and waits in the pool; the batch is closed, not anchored.
    let closed = journal(&store, &[DaemonBatchState::Closed]);
    assert_eq!(closed.len(), 1, "{closed:?}");
    let late = closed[0].batch_id.parse::<B256>().unwrap();

    // Mining resumes: the late anchor lands. Harmless: no message carries that batch, the MTA
    // sends the deferred one again and it gets a new stamp in a new batch.
    rpc(&url, "evm_setAutomine", serde_json::json!([true])).await;
    rpc(&url, "evm_mine", serde_json::json!([])).await;
    let end = std::time::Instant::now() + T;
    while journal(&store, &[DaemonBatchState::Closed]).len() == 1 {
        assert!(
            std::time::Instant::now() < end,
            "the late anchor is journalled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(anchors(&url, registry).await.contains(&late));
    assert_eq!(nonce(&url, writer).await, n0 + 1);
    let out = play(m.addr, &SUBMIT, &msg(1)).await;
    assert!(out.stop.is_none(), "the retry is stamped: {out:?}");
    let stamped = with_stamp(&out, &msg(1));
    assert_ne!(batch_of(&stamped).0, late, "the retry is in a new batch");
    verdict(&url, registry, writer, &stamped).await;
}

/// Waits until batch `id` is `anchored` in the journal at `store`.
async fn until_anchored(store: &Path, id: B256) {
    let end = std::time::Instant::now() + T;
    loop {
        let done = journal(store, &[DaemonBatchState::Anchored]);
        if done.iter().any(|r| r.batch_id == id.to_string()) {
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "batch {id} is not anchored: {:?}",
            journal(store, &[DaemonBatchState::Closed])
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A milter in batch mode with `release = "closed"`, its chain connection warmed by one
/// stamped message.
async fn released_milter(
    a: &alloy::node_bindings::AnvilInstance,
    registry: Address,
    writer: Address,
    store: &Path,
) -> crate::milter::Running {
    let base = chain_toml(&a.endpoint(), registry, writer);
    let toml = batch_toml(store, 8, 100, 1500, "release = \"closed\"");
    let m = start(&format!("{base}{toml}"), &[], Some(a)).await;
    let out = play(m.addr, &SUBMIT, &msg(0)).await;
    assert!(out.stop.is_none(), "{out:?}");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_at_close_a_message_leaves_before_its_anchor_is_mined_and_verifies_once_it_is() {
    let (a, registry, writer) = chain().await;
    let url = a.endpoint();
    let dir = TempDir::new("mrelease");
    let store = dir.0.join("state.sqlite");
    let m = released_milter(&a, registry, writer, &store).await;
    // Stop mining: nothing the milter sends can be mined now.
    rpc(&url, "evm_setAutomine", serde_json::json!([false])).await;

    // With release = "mined" this message would wait for the hold timeout and get a 451
    // (an_anchor_not_mined_within_the_hold_timeout_…); released at close it leaves at once.
    let out = play(m.addr, &SUBMIT, &msg(1)).await;
    assert!(out.stop.is_none(), "accepted with its header: {out:?}");
    let stamped = with_stamp(&out, &msg(1));
    let (batch, _) = batch_of(&stamped);
    assert!(
        !anchors(&url, registry).await.contains(&batch),
        "the message left before its anchor was mined"
    );
    let closed = journal(&store, &[DaemonBatchState::Closed]);
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert!(closed[0].released, "journalled as released: {closed:?}");
    assert_eq!(closed[0].batch_id, batch.to_string());

    // Mining resumes: the anchor the journal promised lands, and the message verifies.
    rpc(&url, "evm_setAutomine", serde_json::json!([true])).await;
    rpc(&url, "evm_mine", serde_json::json!([])).await;
    until_anchored(&store, batch).await;
    assert!(anchors(&url, registry).await.contains(&batch));
    verdict(&url, registry, writer, &stamped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_batch_is_never_dropped_its_anchor_is_retried_until_mined() {
    let (a, registry, writer) = chain().await;
    let url = a.endpoint();
    let dir = TempDir::new("mretry");
    let store = dir.0.join("state.sqlite");
    let m = released_milter(&a, registry, writer, &store).await;
    let n0 = nonce(&url, writer).await;
    // The writer runs dry: its anchor cannot be sent. A batch that was not released would be
    // dropped here and its message deferred; this one's header is already out.
    let p = ProviderBuilder::new().connect_http(url.parse().unwrap());
    let funds = p.get_balance(writer).await.unwrap();
    rpc(&url, "anvil_setBalance", serde_json::json!([writer, "0x0"])).await;
    let out = play(m.addr, &SUBMIT, &msg(1)).await;
    assert!(out.stop.is_none(), "accepted with its header: {out:?}");
    let stamped = with_stamp(&out, &msg(1));
    let (batch, _) = batch_of(&stamped);
    // It stays closed (not dropped) while the anchor fails: wait for a first failed try.
    let end = std::time::Instant::now() + T;
    while journal(&store, &[DaemonBatchState::Closed]).is_empty() {
        assert!(std::time::Instant::now() < end, "the batch closes");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(journal(&store, &[DaemonBatchState::Dropped]).is_empty());
    assert_eq!(journal(&store, &[DaemonBatchState::Closed]).len(), 1);
    assert!(!anchors(&url, registry).await.contains(&batch));

    // Funds back: a later try anchors it, once.
    rpc(
        &url,
        "anvil_setBalance",
        serde_json::json!([writer, format!("{funds:#x}")]),
    )
    .await;
    until_anchored(&store, batch).await;
    assert_eq!(
        anchors(&url, registry)
            .await
            .iter()
            .filter(|b| **b == batch)
            .count(),
        1
    );
    assert_eq!(nonce(&url, writer).await, n0 + 1, "one anchor transaction");
    verdict(&url, registry, writer, &stamped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_batch_pending_at_restart_is_anchored_even_under_the_drop_policy() {
    let (a, registry, writer) = chain().await;
    let url = a.endpoint();
    let key = key_hex(&a, 0);
    let dir = TempDir::new("mrelrestart");
    let store = dir.0.join("state.sqlite");
    let cfg = dir.0.join("m.toml");
    let base = chain_toml(&url, registry, writer);
    let extra = "release = \"closed\"\npending_on_restart = \"drop\"";
    std::fs::write(
        &cfg,
        format!("{base}{}", batch_toml(&store, 2, 200, 10_000, extra)),
    )
    .unwrap();
    let log = |n: usize| dir.0.join(format!("run{n}.log"));
    let n0 = nonce(&url, writer).await;
    // Dies after the headers were released, before the anchor is sent (whether the MTA got the
    // answer is a race: the journal is what counts).
    let (mut child, addr) = spawn_milter(&cfg, &key, Some("before-anchor"), &log(1));
    let _ = play_dying(addr, &msg(1)).await;
    assert_eq!(child.wait().unwrap().code(), Some(86));
    let left = journal(&store, &[DaemonBatchState::Closed]);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].released);
    let batch = left[0].batch_id.parse::<B256>().unwrap();
    assert_eq!(
        nonce(&url, writer).await,
        n0,
        "nothing sent before the crash"
    );

    let (child, _) = spawn_milter(&cfg, &key, None, &log(2));
    wait_log(&log(2), "(1 leaves): anchored, tx 0x");
    stop(child);
    assert_eq!(
        anchors(&url, registry).await,
        [batch],
        "anchored, not dropped"
    );
    assert_eq!(nonce(&url, writer).await, n0 + 1);
    assert!(journal(&store, &[DaemonBatchState::Dropped]).is_empty());
}

/// Plays one outbound message to a milter that may die during end-of-message; returns the
/// EOM status, or `None` when the connection was lost.
async fn play_dying(addr: SocketAddr, raw: &[u8]) -> Option<Status> {
    let mut c = TestConnection::configure()
        .exact_leading_space(true)
        .open_tcp(addr)
        .await
        .ok()?;
    let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(
        c.connect("localhost", (ip, 25000)).await.ok()?,
        Status::Continue
    );
    assert_eq!(c.helo("localhost").await.ok()?, Status::Continue);
    assert_eq!(c.mail(["<alice@a.example>"]).await.ok()?, Status::Continue);
    assert_eq!(c.rcpt(["<bob@b.example>"]).await.ok()?, Status::Continue);
    let (fields, body) = milter_split(raw);
    for (n, v) in fields {
        c.header(n, std::ffi::CString::new(v).unwrap()).await.ok()?;
    }
    c.eoh().await.ok()?;
    c.body(body).await.ok()?;
    c.macros(MacroStage::Eom, [("i", "QID")]).await.ok()?;
    let (_, status) = c.eom().await.ok()?;
    Some(status)
}

/// The `mailstamp milter` binary on a free port; returns it and its address once listening.
fn spawn_milter(
    cfg: &Path,
    key: &str,
    fault: Option<&str>,
    log: &Path,
) -> (std::process::Child, SocketAddr) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mailstamp"));
    cmd.arg("--config")
        .arg(cfg)
        .args(["milter", "--listen", "inet:127.0.0.1:0"])
        .env_remove("MAILSTAMP_CONFIG")
        .env_remove("MAILSTAMP_FAULT")
        .env("MAILSTAMP_PRIVATE_KEY", key)
        // The recovery's progress is logged at info (the tests wait for it).
        .env("MAILSTAMP_LOG", "info")
        // Not the test runner's pipes: a milter left running by a failed test must not keep
        // cargo waiting for its output to close.
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    if let Some(f) = fault {
        cmd.env("MAILSTAMP_FAULT", f);
    }
    let mut child = cmd.spawn().unwrap();
    let end = std::time::Instant::now() + T;
    let text = loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("listening on inet:") || std::time::Instant::now() > end {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let addr = text
        .split("listening on inet:")
        .nth(1)
        .and_then(|rest| rest.lines().next()?.trim().parse().ok());
    match addr {
        Some(addr) => (child, addr),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("milter did not start:\n{text}");
        }
    }
}

fn stop(mut child: std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_applies_the_pending_policy_and_never_anchors_twice() {
    let (a, registry, writer) = chain().await;
    let url = a.endpoint();
    let key = key_hex(&a, 0);
    let dir = TempDir::new("mrestart");
    let store = dir.0.join("state.sqlite");
    let cfg = dir.0.join("m.toml");
    let base = chain_toml(&url, registry, writer);
    let write_cfg = |policy: &str| {
        let extra = format!("pending_on_restart = \"{policy}\"");
        std::fs::write(
            &cfg,
            format!("{base}{}", batch_toml(&store, 2, 200, 10_000, &extra)),
        )
        .unwrap();
    };
    let log = |n: usize| dir.0.join(format!("run{n}.log"));
    let pending = || journal(&store, &[DaemonBatchState::Open, DaemonBatchState::Closed]);

    // 1. Crash after journalling, before the anchor; policy drop: dropped, no transaction.
    write_cfg("drop");
    let n0 = nonce(&url, writer).await;
    let (child, addr) = spawn_milter(&cfg, &key, Some("before-anchor"), &log(1));
    let status = play_dying(addr, &msg(1)).await;
    assert!(
        status.is_none(),
        "the milter died before answering: {status:?}"
    );
    let mut child = child;
    assert_eq!(child.wait().unwrap().code(), Some(86));
    assert_eq!(pending().len(), 1, "the batch is journalled as pending");
    assert_eq!(pending()[0].leaves.len(), 1);
    let (child, _) = spawn_milter(&cfg, &key, None, &log(2));
    wait_log(&log(2), "(1 leaves): dropped");
    stop(child);
    assert!(pending().is_empty());
    assert_eq!(nonce(&url, writer).await, n0, "drop sends nothing");

    // 2. The same crash with policy anchor: the next start anchors it, once.
    write_cfg("anchor");
    let (mut child, addr) = spawn_milter(&cfg, &key, Some("before-anchor"), &log(3));
    assert!(play_dying(addr, &msg(2)).await.is_none());
    assert_eq!(child.wait().unwrap().code(), Some(86));
    let batch = pending()[0].batch_id.parse::<B256>().unwrap();
    let (child, _) = spawn_milter(&cfg, &key, None, &log(4));
    wait_log(&log(4), "(1 leaves): anchored, tx 0x");
    stop(child);
    assert_eq!(nonce(&url, writer).await, n0 + 1, "exactly one anchor");
    assert_eq!(anchors(&url, registry).await, [batch]);
    let (child, _) = spawn_milter(&cfg, &key, None, &log(5));
    stop(child);
    assert!(
        !std::fs::read_to_string(log(5))
            .unwrap()
            .contains("pending batch")
    );
    assert_eq!(
        nonce(&url, writer).await,
        n0 + 1,
        "nothing pending any more"
    );

    // 3. Crash after the anchor is mined, before the journal says so: recognised, not resent.
    let (mut child, addr) = spawn_milter(&cfg, &key, Some("after-anchor"), &log(6));
    assert!(play_dying(addr, &msg(3)).await.is_none());
    assert_eq!(child.wait().unwrap().code(), Some(86));
    assert_eq!(nonce(&url, writer).await, n0 + 2);
    assert_eq!(pending().len(), 1);
    let (child, _) = spawn_milter(&cfg, &key, None, &log(7));
    wait_log(&log(7), "(1 leaves): already anchored");
    stop(child);
    assert_eq!(nonce(&url, writer).await, n0 + 2, "no second anchor");
    assert_eq!(anchors(&url, registry).await.len(), 2);
    let ends = journal(
        &store,
        &[DaemonBatchState::Anchored, DaemonBatchState::Dropped],
    );
    assert_eq!(
        ends.iter().map(|r| r.state).collect::<Vec<_>>(),
        [
            DaemonBatchState::Dropped,
            DaemonBatchState::Anchored,
            DaemonBatchState::Anchored
        ]
    );

    // A message through the restarted milter is stamped as usual.
    let (child, addr) = spawn_milter(&cfg, &key, None, &log(8));
    let out: Outcome = play(addr, &SUBMIT, &msg(4)).await;
    stop(child);
    assert!(out.stop.is_none(), "{out:?}");
    verdict(&url, registry, writer, &with_stamp(&out, &msg(4))).await;

    // 4. Killed while its anchor waits in the pool: the journal has the transaction's hash;
    // the next start (listening at once) waits for that transaction instead of sending a
    // second anchor, which would revert once the first is mined.
    let n1 = nonce(&url, writer).await;
    rpc(&url, "evm_setAutomine", serde_json::json!([false])).await;
    let (mut child, addr) = spawn_milter(&cfg, &key, None, &log(9));
    let dying = tokio::spawn(async move { play_dying(addr, &msg(5)).await });
    let end = std::time::Instant::now() + T;
    while pending_nonce(&url, writer).await == n1 {
        assert!(
            std::time::Instant::now() < end,
            "the anchor reaches the pool"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        dying.await.unwrap().is_none(),
        "no answer from a killed milter"
    );
    let left = pending();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].sent.len(), 1, "the anchor's hash is journalled");
    let (child, addr) = spawn_milter(&cfg, &key, None, &log(10));
    // The restarted milter serves while the recovery waits for the chain.
    let mut c = TestConnection::configure()
        .exact_leading_space(true)
        .open_tcp(addr)
        .await
        .unwrap();
    let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(
        c.connect("localhost", (ip, 25000)).await.unwrap(),
        Status::Continue
    );
    drop(c);
    // Mining resumes only once the recovery waits for the anchor in the pool (else it could
    // find it mined already, and the path under test would not run).
    wait_log(&log(10), "is not on chain yet; waiting for it");
    rpc(&url, "evm_setAutomine", serde_json::json!([true])).await;
    rpc(&url, "evm_mine", serde_json::json!([])).await;
    wait_log(
        &log(10),
        "(1 leaves): anchored by its transaction from before the restart, tx 0x",
    );
    stop(child);
    assert_eq!(nonce(&url, writer).await, n1 + 1, "no second anchor");
    assert_eq!(anchors(&url, registry).await.len(), 4);
    assert!(pending().is_empty());
}

/// The writer's nonce counting transactions in the pool.
async fn pending_nonce(url: &str, who: Address) -> u64 {
    let p = ProviderBuilder::new().connect_http(url.parse().unwrap());
    p.get_transaction_count(who).pending().await.unwrap()
}

/// Waits until the log at `path` has `needle` (the daemons deal with pending batches on a
/// task of their own, after they listen); its text.
fn wait_log(path: &Path, needle: &str) -> String {
    let end = std::time::Instant::now() + T;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            std::time::Instant::now() < end,
            "no `{needle}` in the log:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The short root of a batch of `leaves`, as the registry records it.
fn root_of(leaves: &[mailstamp_core::digest::Commitment]) -> mailstamp_core::digest::Commitment {
    mailstamp_core::merkle::short(&mailstamp_core::merkle::Tree::build(leaves).unwrap().root())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_change_closes_the_open_batch_and_anchors_it_where_its_headers_point() {
    use mailstamp::chain::RecordKey;
    use mailstamp::stamping::batcher::{Batcher, Cut};
    use mailstamp_core::Lookup;
    let (a, registry, w0) = chain().await;
    let url = a.endpoint();
    let dir = TempDir::new("mkey");
    let store = std::sync::Arc::new(Store::open(&dir.0.join("state.sqlite")).unwrap());
    let cfg = ChainConfig {
        rpc_url: url.clone(),
        confirmations: Confirmations::Depth(1),
        timeout_secs: 5,
        ..Default::default()
    };
    // Two writers stand for a reload that changed `[chain]` while a batch was open: the
    // first message's header names writer 0, the second's writer 1.
    let c0 = Chain::connect(&cfg, registry, Some(signer(&a, 0)))
        .await
        .unwrap();
    let c1 = Chain::connect(&cfg, registry, Some(signer(&a, 1)))
        .await
        .unwrap();
    let w1 = c1.writer.unwrap();
    assert_ne!(w0, w1);
    let b = std::sync::Arc::new(Batcher::new(store.clone(), "test"));
    let cut = Cut {
        max: 2,
        wait: std::time::Duration::from_secs(2),
        release: mailstamp::config::Release::Mined,
    };
    let (l0, l1) = ([1u8; 24], [2u8; 24]);
    let r0 = b.submit(&c0, l0, cut).await.unwrap();
    let r1 = b.submit(&c1, l1, cut).await.unwrap();
    let first = r0.await.unwrap().unwrap();
    let second = r1.await.unwrap().unwrap();
    assert_ne!(first.batch, second.batch, "one batch per chain settings");
    assert_eq!((first.size, second.size), (1, 1));
    // Each batch is anchored by the writer its header names, with its own root.
    for (c, w, leaf, got) in [(&c0, w0, l0, &first), (&c1, w1, l1, &second)] {
        match c.lookup(w, RecordKey::Batch(got.batch)).await {
            Lookup::Found { commitment, .. } => assert_eq!(commitment, root_of(&[leaf])),
            other => panic!("batch {} not anchored by {w}: {other:?}", got.batch),
        }
    }
    assert!(matches!(
        c0.lookup(w1, RecordKey::Batch(first.batch)).await,
        Lookup::NotFound
    ));
    assert_eq!(anchors(&url, registry).await.len(), 2);
    let rows = journal(&dir.0.join("state.sqlite"), &[DaemonBatchState::Anchored]);
    assert_eq!(rows.len(), 2, "{rows:?}");
}
