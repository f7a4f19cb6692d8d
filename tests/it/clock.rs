// SPDX-License-Identifier: GPL-3.0-or-later
//! A chain with a clock (issue 11, docs/PROTOCOL.md §5b and §6): anvil mining a block a second,
//! receivers asking for depth 3. Stamped mail is delivered with no 4xx (the receiver waits for
//! the confirmations, woken by the head watcher); a reorg that drops a stamp or an anchor —
//! before or after the receiver verified, and across a restart of the sender — never makes a
//! genuine stamp `spam`: the sender's watch sends it again; a made-up stamp is deferred for the
//! grace period and only then `spam`.

use std::time::{Duration, Instant};

use alloy::node_bindings::AnvilInstance;
use alloy::primitives::{Address, B256};
use alloy::providers::{Provider, ProviderBuilder};
use mailstamp::chain::{self, Chain, RecordKey};
use mailstamp::config::{Config, Overrides};
use mailstamp::store::{Store, WatchedRow};
use mailstamp::verifying::{self, VerifyContext};
use mailstamp_core::{Envelope, Selection, Verdict};

use crate::harness::{TempDir, anvil_clocked, corpus, signer};
use crate::milter::{INBOUND, Smtp, T, chain_toml, play, start, with_stamp};

/// Seconds between blocks, the receivers' depth, and the sender's finality (deeper: a reorg
/// after the receiver verified is still inside the sender's watch).
const BLOCK_SECS: u64 = 1;
const DEPTH: u64 = 3;
const FINAL: u64 = 8;

const SUBMIT: Smtp<'static> = Smtp {
    ip: "127.0.0.1",
    host: "localhost",
    ..INBOUND
};

/// A clocked chain with the registry deployed: (anvil, registry, writer).
async fn clocked() -> (AnvilInstance, Address, Address) {
    let a = anvil_clocked(BLOCK_SECS);
    let d = chain::deploy(&a.endpoint(), signer(&a, 0), true, T * 3)
        .await
        .unwrap();
    let w = signer(&a, 0).address();
    (a, d.address, w)
}

/// The `[chain]` of both sides: depth 3 for records, 8 for the sender's finality, the head
/// polled every 200 ms.
fn clocked_toml(rpc: &str, registry: Address, writer: Address) -> String {
    chain_toml(rpc, registry, writer).replace(
        "timeout_secs = 3\n",
        &format!(
            "timeout_secs = 3\nconfirmations = {DEPTH}\nfinal_confirmations = {FINAL}\nhead_poll_ms = 200\n"
        ),
    )
}

/// A corpus message re-addressed from alice@a.example (trusted for the writer) to bob.
fn message(i: usize) -> Vec<u8> {
    let (_, raw) = &corpus()[i];
    let text = String::from_utf8_lossy(raw);
    let body = text
        .split_once("\n\n")
        .or_else(|| text.split_once("\r\n\r\n"))
        .map_or("", |(_, b)| b);
    format!(
        "From: Alice <alice@a.example>\r\nTo: Bob <bob@b.example>\r\nSubject: corpus {i}\r\n\
         Date: Tue, 24 Nov 2026 03:00:00 +0000\r\nMessage-ID: <c{i}@a.example>\r\n\r\n{}",
        body.replace("\r\n", "\n").replace('\n', "\r\n")
    )
    .into_bytes()
}

async fn rpc(url: &str, method: &'static str, params: serde_json::Value) {
    let p = ProviderBuilder::new().connect_http(url.parse().unwrap());
    let _: serde_json::Value = p.raw_request(method.into(), params).await.unwrap();
}

/// Rolls the chain back until transaction `tx` (mined in `block`) is no longer mined: the
/// blocks from `block` on are gone (anvil drops their transactions; they are not pooled).
async fn drop_block_of(url: &str, tx: B256, block: u64) {
    let p = ProviderBuilder::new().connect_http(url.parse().unwrap());
    for _ in 0..5 {
        let h = p.get_block_number().await.unwrap();
        if h >= block {
            rpc(url, "anvil_rollback", serde_json::json!([h - block + 1])).await;
        }
        if p.get_transaction_receipt(tx).await.unwrap().is_none() {
            return;
        }
    }
    panic!("transaction {tx} still mined after rolling back to block {block}");
}

/// Replaces the blocks from `block` on with as many empty ones (`anvil_reorg`: same height,
/// other hashes) until transaction `tx` is no longer mined.
async fn reorg_out(url: &str, tx: B256, block: u64) {
    let p = ProviderBuilder::new().connect_http(url.parse().unwrap());
    for _ in 0..5 {
        let h = p.get_block_number().await.unwrap();
        let before = p.get_block_number().await.unwrap();
        rpc(url, "anvil_reorg", serde_json::json!([h - block + 1, []])).await;
        assert!(
            p.get_block_number().await.unwrap() >= before,
            "a reorg keeps the height"
        );
        if p.get_transaction_receipt(tx).await.unwrap().is_none() {
            return;
        }
    }
    panic!("transaction {tx} still mined after reorganising from block {block}");
}

/// Where the record `stamped` points to was written: its transaction and block.
async fn recorded(url: &str, registry: Address, stamped: &[u8]) -> (B256, u64) {
    let cfg = mailstamp::config::ChainConfig {
        rpc_url: url.to_owned(),
        ..Default::default()
    };
    let chain = Chain::connect(&cfg, registry, None).await.unwrap();
    let msg = mailstamp_core::parse(stamped).unwrap();
    let mailstamp_core::Inspection::Stamped(h) = mailstamp_core::inspect(&msg) else {
        panic!("not stamped");
    };
    let (_, r) = chain
        .find_event(Some(Address::from(h.writer)), RecordKey::of(&h), 0)
        .await
        .unwrap()
        .expect("the record's event");
    (r.tx, r.block)
}

fn journal(store: &std::path::Path) -> Vec<WatchedRow> {
    Store::open(store).unwrap().watched().unwrap()
}

/// Waits until the watch journal in `store` is empty (every write final), at most 30 s.
async fn until_forgotten(store: &std::path::Path, what: &str) {
    let deadline = Instant::now() + T * 3;
    while !journal(store).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{what}: still watched: {:?}",
            journal(store)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The receiver's verdicts for `stamped` until one is final (not `temperror`), each lookup
/// waiting as the config says; none may be `spam`.
async fn receive(cfg: &Config, stamped: &[u8]) -> Vec<Verdict> {
    let env = Envelope {
        rcpts: vec!["bob@b.example".into()],
        client_ip: None,
    };
    let mut seen = Vec::new();
    for _ in 0..4 {
        // A fresh connection each time: nothing cached from before the reorg.
        let chain = Chain::connect(&cfg.chain, cfg.registry().unwrap(), None)
            .await
            .unwrap();
        let ctx = VerifyContext::from_config(cfg, Some(mailstamp::util::now())).unwrap();
        let r = verifying::verify(Ok(&chain), &ctx, stamped, &env).await;
        assert_ne!(
            r.verdict,
            Verdict::Spam,
            "a genuine stamp called spam: {r:?}"
        );
        seen.push(r.verdict);
        if r.verdict != Verdict::Temperror {
            break;
        }
    }
    seen
}

fn receiver_config(dir: &TempDir, toml: &str) -> Config {
    let path = dir.0.join("receiver.toml");
    std::fs::write(&path, toml).unwrap();
    Config::load(Some(&path), &Overrides::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clocked_chain_delivers_stamped_mail_without_4xx_in_both_modes() {
    let (a, registry, writer) = clocked().await;
    let base = clocked_toml(&a.endpoint(), registry, writer);
    let receiver = start(
        &format!(
            "{base}[verify]\nconfirm_wait_secs = 20\n[milter]\nauthserv_id = \"mx.b.example\"\n"
        ),
        &[],
        None,
    )
    .await;
    for mode in ["direct", "batch"] {
        let sender = start(
            &format!(
                "{base}[stamp]\nmode = \"{mode}\"\nbatch_max = 4\nbatch_wait_ms = 300\n\
                 [milter]\ntrusted_networks = [\"127.0.0.0/8\"]\n"
            ),
            &[],
            Some(&a),
        )
        .await;
        // Four messages at once: one batch in batch mode, four transactions in direct mode.
        let outs = futures_join(
            (0..4)
                .map(|i| {
                    let raw = message(i);
                    let addr = sender.addr;
                    tokio::spawn(async move { (play(addr, &SUBMIT, &raw).await, raw) })
                })
                .collect(),
        )
        .await;
        let mut checks = Vec::new();
        for (out, raw) in outs {
            assert!(out.stop.is_none(), "{mode}: the sender deferred: {out:?}");
            let stamped = with_stamp(&out, &raw);
            let addr = receiver.addr;
            checks.push(tokio::spawn(async move {
                let start = Instant::now();
                let out = play(addr, &INBOUND, &stamped).await;
                (out, start.elapsed())
            }));
        }
        for c in checks {
            let (out, took) = c.await.unwrap();
            assert!(
                out.stop.is_none(),
                "{mode}: the receiver answered {:?} ({})",
                out.stop,
                out.reply()
            );
            assert_eq!(
                out.header("X-Mailstamp-Verdict").as_deref(),
                Some(" wanted"),
                "{mode}: {out:?}"
            );
            // At most the depth's worth of blocks, plus slack for a loaded machine.
            assert!(
                took < Duration::from_secs(BLOCK_SECS * DEPTH + 10),
                "{mode}: the receiver took {took:?}"
            );
        }
    }
}

async fn futures_join<T: Send + 'static>(hs: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(hs.len());
    for h in hs {
        out.push(h.await.unwrap());
    }
    out
}

/// Stamps one message through a sender milter whose watch runs; the stamped message.
async fn stamp_one(addr: std::net::SocketAddr, i: usize) -> Vec<u8> {
    let raw = message(i);
    let out = play(addr, &SUBMIT, &raw).await;
    assert!(out.stop.is_none(), "{out:?}");
    with_stamp(&out, &raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_before_or_after_verification_never_makes_a_genuine_stamp_spam() {
    let (a, registry, writer) = clocked().await;
    let url = a.endpoint();
    let base = clocked_toml(&url, registry, writer);
    let dir = TempDir::new("clock-reorg");
    let rcfg = receiver_config(
        &dir,
        &format!("{base}[verify]\nconfirm_wait_secs = 15\nmissing_grace_secs = 120\n"),
    );
    for mode in ["direct", "batch"] {
        let store = dir.0.join(format!("{mode}.sqlite"));
        let sender = start(
            &format!(
                "{base}[store]\npath = \"{}\"\n[stamp]\nmode = \"{mode}\"\nbatch_max = 1\n\
                 [milter]\ntrusted_networks = [\"127.0.0.0/8\"]\n",
                store.display()
            ),
            &[],
            Some(&a),
        )
        .await;
        let m = sender.milter.clone();
        let watch = tokio::spawn(async move { m.watch_until_final().await });

        // Before: the record's block is dropped as soon as the message is out.
        let stamped = stamp_one(sender.addr, 10).await;
        let (tx, block) = recorded(&url, registry, &stamped).await;
        drop_block_of(&url, tx, block).await;
        let seen = receive(&rcfg, &stamped).await;
        assert_eq!(seen.last(), Some(&Verdict::Wanted), "{mode}: {seen:?}");

        // After: verified first, then the record's block (now deeper, not yet final for the
        // sender) is dropped.
        let stamped = stamp_one(sender.addr, 11).await;
        assert_eq!(
            receive(&rcfg, &stamped).await.last(),
            Some(&Verdict::Wanted)
        );
        let (tx, block) = recorded(&url, registry, &stamped).await;
        drop_block_of(&url, tx, block).await;
        let seen = receive(&rcfg, &stamped).await;
        assert_eq!(seen.last(), Some(&Verdict::Wanted), "{mode}: {seen:?}");

        // A reorg at the same height (other blocks, other hashes, the record not in them).
        let stamped = stamp_one(sender.addr, 14).await;
        let (tx, block) = recorded(&url, registry, &stamped).await;
        reorg_out(&url, tx, block).await;
        let seen = receive(&rcfg, &stamped).await;
        assert_eq!(seen.last(), Some(&Verdict::Wanted), "{mode}: {seen:?}");

        // The watch sent them again; they become final and are forgotten.
        until_forgotten(&store, mode).await;
        watch.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_restarted_during_the_watch_sends_the_dropped_stamp_again() {
    let (a, registry, writer) = clocked().await;
    let url = a.endpoint();
    let base = clocked_toml(&url, registry, writer);
    let dir = TempDir::new("clock-restart");
    let store = dir.0.join("state.sqlite");
    // Final by the `finalized` tag here (anvil: one slot per epoch), by a depth elsewhere.
    let sender_toml = format!(
        "{}[store]\npath = \"{}\"\n[milter]\ntrusted_networks = [\"127.0.0.0/8\"]\n",
        base.replace(
            &format!("final_confirmations = {FINAL}\n"),
            "final_confirmations = \"finalized\"\n"
        ),
        store.display()
    );
    // The first sender stamps and stops before any head came: its watch never ran.
    let first = start(&sender_toml, &[], Some(&a)).await;
    let stamped = stamp_one(first.addr, 12).await;
    drop(first);
    let (tx, block) = recorded(&url, registry, &stamped).await;
    assert_eq!(journal(&store).len(), 1, "the stamp is journalled to watch");
    assert_eq!(journal(&store)[0].tx, tx.to_string());
    drop_block_of(&url, tx, block).await;
    let p = ProviderBuilder::new().connect_http(url.parse().unwrap());
    // The next run finds the journal and sends the same transaction again.
    let second = start(&sender_toml, &[], Some(&a)).await;
    let m = second.milter.clone();
    let watch = tokio::spawn(async move { m.watch_until_final().await });
    let rcfg = receiver_config(
        &dir,
        &format!("{base}[verify]\nconfirm_wait_secs = 15\nmissing_grace_secs = 120\n"),
    );
    let seen = receive(&rcfg, &stamped).await;
    assert_eq!(seen.last(), Some(&Verdict::Wanted), "{seen:?}");
    let again = p
        .get_transaction_receipt(tx)
        .await
        .unwrap()
        .expect("the same signed transaction was mined again");
    assert!(again.block_number.unwrap() >= block);
    // Final by the tag: forgotten.
    until_forgotten(&store, "restart").await;
    watch.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_made_up_stamp_is_deferred_for_the_grace_period_then_spam() {
    let (a, registry, writer) = clocked().await;
    let base = clocked_toml(&a.endpoint(), registry, writer);
    let dir = TempDir::new("clock-grace");
    let (wait, grace) = (1u64, 4u64);
    let cfg = receiver_config(
        &dir,
        &format!("{base}[verify]\nconfirm_wait_secs = {wait}\nmissing_grace_secs = {grace}\n"),
    );
    // A stamp prepared for the trusted writer but never recorded.
    let chain = Chain::connect(&cfg.chain, registry, None).await.unwrap();
    let raw = message(13);
    let env = Envelope {
        rcpts: vec!["bob@b.example".into()],
        client_ip: None,
    };
    let msg = mailstamp_core::parse(&raw).unwrap();
    let p = mailstamp_core::prepare(
        &msg,
        &env,
        [9u8; mailstamp_core::digest::SALT_LEN],
        &chain.chain_ref(writer),
        &Selection(mailstamp_core::Family::ALL.iter().copied().collect()),
    )
    .unwrap();
    let forged = mailstamp_core::insert_header(&raw, &p.header);
    // One context: the daemon's memory of first sightings.
    let ctx = VerifyContext::from_config(&cfg, None).unwrap();
    let first = Instant::now();
    let r = verifying::verify(Ok(&chain), &ctx, &forged, &env).await;
    let waited = first.elapsed();
    assert_eq!(r.verdict, Verdict::Temperror, "{r:?}");
    assert!(
        r.reason
            .as_deref()
            .unwrap()
            .contains("verify.missing_grace_secs"),
        "{r:?}"
    );
    assert!(
        waited >= Duration::from_secs(wait),
        "the lookup waited {waited:?}, confirm_wait_secs is {wait}"
    );
    // Still inside the grace: deferred again.
    let r = verifying::verify(Ok(&chain), &ctx, &forged, &env).await;
    if first.elapsed() < Duration::from_secs(grace - 1) {
        assert_eq!(r.verdict, Verdict::Temperror, "{r:?}");
    }
    // Past it: spam, with the plain reason.
    let until = Duration::from_secs(grace + 1);
    if let Some(left) = until.checked_sub(first.elapsed()) {
        tokio::time::sleep(left).await;
    }
    let r = verifying::verify(Ok(&chain), &ctx, &forged, &env).await;
    assert_eq!(r.verdict, Verdict::Spam, "{r:?}");
    assert_eq!(
        r.reason.as_deref(),
        Some("no record on chain for this stamp")
    );
    // A daemon that never saw it starts its own grace.
    let fresh = VerifyContext::from_config(&cfg, None).unwrap();
    let r = verifying::verify(Ok(&chain), &fresh, &forged, &env).await;
    assert_eq!(r.verdict, Verdict::Temperror, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_on_a_clocked_chain_deliver_without_4xx_in_both_modes() {
    use crate::relay::{Sink, deliver, header, start as relay};
    let (a, registry, writer) = clocked().await;
    let base = clocked_toml(&a.endpoint(), registry, writer);
    let sink = Sink::start().await;
    let inbound = relay(
        &format!(
            "{base}[verify]\nconfirm_wait_secs = 20\n[milter]\nauthserv_id = \"mx.b.example\"\n"
        ),
        "",
        sink.addr,
        &[],
        None,
    )
    .await;
    let mut want = 0;
    for mode in ["direct", "batch"] {
        let outbound = relay(
            &format!("{base}[stamp]\nmode = \"{mode}\"\nbatch_max = 2\nbatch_wait_ms = 300\n"),
            "outbound = true",
            inbound.addr,
            &[],
            Some(&a),
        )
        .await;
        let sends: Vec<_> = (20..22)
            .map(|i| {
                let addr = outbound.addr;
                tokio::spawn(async move {
                    deliver(addr, "alice@a.example", &["bob@b.example"], &message(i)).await
                })
            })
            .collect();
        for s in sends {
            let r = s.await.unwrap();
            // The outbound relay answers after the inbound one (and the sink) accepted: no 4xx
            // anywhere on the way.
            assert!(r.starts_with("250"), "{mode}: {r}");
        }
        want += 2;
        let got = sink.got();
        assert_eq!(got.len(), want, "{mode}");
        for g in &got {
            assert_eq!(
                header(&g.data, "X-Mailstamp-Verdict").as_deref(),
                Some("wanted"),
                "{mode}"
            );
        }
    }
}
