// SPDX-License-Identifier: GPL-3.0-or-later
//! What a hop costs a forwarder's and a list's milter in latency (issue 13), beside the plain
//! verification of the same messages in the same run: anvil with the registry (instant
//! mining), N corpus messages stamped once by a.example's writer, and b.example's milters
//! served in-process, each played with indymilter-test, one connection per message, latency =
//! connect … EOM reply:
//!
//! - **verify only** (baseline): a milter without `[forward]`, the message for bob@b.example;
//! - **alias, direct**: the same messages to a milter forwarding bob@b.example to
//!   bob@forward.example under its hop, one `stamp` transaction per message;
//! - **alias, batched**: the same with `stamp.mode = "batch"` (the EOM waits for the anchor),
//!   sequentially and with 20 sessions at once;
//! - **list copy, direct**: the list's outgoing copies (subject tagged) of messages posted to
//!   dev@lists.b.example and remembered at inbound, under the list's hop; beside the
//!   **ordinary outbound stamp** of the same number of messages by the same milter (baseline).
//!
//! Every message is checked: the hop field or the stamp added, the recipients changed for
//! the alias. Each milter gets one warm-up pass first (records cached, connections made).
//!
//! Run: `source scripts/lib.sh && cargo bench -p mailstamp --bench hop_latency`
//! (`MAILSTAMP_BENCH_N` messages, default 100, at most 1000.)

#![allow(missing_docs, dead_code, unreachable_pub)]

#[path = "../../tests/it/harness.rs"]
mod harness;
#[path = "common/milter_play.rs"]
mod milter_play;

use std::sync::Arc;
use std::time::Duration;

use indymilter_test::EomAction;
use mailstamp::chain::{self, Chain};
use mailstamp::config::{ChainConfig, Confirmations, Overrides};
use mailstamp::milter;
use mailstamp::session::{Daemon, Settings};
use mailstamp::stamping::{self, StampContext};
use mailstamp_core::Selection;
use milter_play::{Envelope, Pass, Prepared, Target, added, pass, prepare, row};
use tokio_util::sync::CancellationToken;

const N_MAX: usize = 1000;
const LIST: &str = "dev@lists.b.example";

/// A milter of b.example served in-process on a Unix socket (no TCP stalls in the figures):
/// `rest` is its config after the chain and trust sections.
async fn milter_at(
    dir: &std::path::Path,
    name: &str,
    base: &str,
    rest: &str,
    key: alloy::signers::local::PrivateKeySigner,
    stop: &CancellationToken,
) -> Target {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "{base}[store]\npath = \"{}\"\n[milter]\nauthserv_id = \"mx.b.example\"\nlookup_tx = false\n\
             trusted_networks = [\"127.0.0.1/32\"]\n{rest}",
            dir.join(format!("{name}.sqlite")).display()
        ),
    )
    .expect("config");
    let settings = Settings::load(Some(&path), &Overrides::default()).expect("settings");
    let d = Arc::new(Daemon::new(settings, Some(key), None));
    let sock = dir.join(format!("{name}.sock"));
    let (listener, _) = milter::bind(&format!("unix:{}", sock.display()))
        .await
        .expect("bind unix");
    tokio::spawn(milter::run(listener, d, stop.clone().cancelled_owned()));
    Target::Unix(sock)
}

/// Asserts every message of `p` got a `Mail-Stamp` field whose `v=` is `v`, and, when
/// `forwarded`, its recipient replaced by bob@forward.example.
fn check(name: &str, p: &Pass, v: &str, forwarded: bool) {
    for (i, a) in p.actions.iter().enumerate() {
        let stamp =
            added(a, "Mail-Stamp").unwrap_or_else(|| panic!("{name}: message {i}: no Mail-Stamp"));
        assert!(
            stamp.contains(&format!("v={v};")),
            "{name}: message {i}: {stamp}"
        );
        if forwarded {
            let to_target = a.iter().any(|x| {
                matches!(x, EomAction::AddRecipient { rcpt, .. } if rcpt.to_bytes() == b"<bob@forward.example>")
            });
            assert!(to_target, "{name}: message {i}: recipient not replaced");
        }
    }
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("MAILSTAMP_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
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
    let origin = harness::signer(&a, 0).address();
    let cfg = ChainConfig {
        rpc_url: a.endpoint(),
        confirmations: Confirmations::Depth(1),
        timeout_secs: 30,
        ..Default::default()
    };
    let c = Chain::connect(&cfg, registry, Some(harness::signer(&a, 0)))
        .await
        .expect("connect");
    let sctx = StampContext {
        selection: Selection::default(),
        authority: harness::authority(&harness::corpus_trust(origin)),
        check_writer: true,
        active_only: None,
    };
    let raws: Vec<Vec<u8>> = harness::corpus()
        .into_iter()
        .filter(|(_, r)| r.len() < 64 * 1024)
        .step_by(11)
        .take(n)
        .map(|(_, r)| r)
        .collect();
    let n = raws.len();
    let env = |to: &str| mailstamp_core::Envelope {
        rcpts: vec![to.into()],
        client_ip: None,
    };
    let (mut for_bob, mut for_list) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for m in &raws {
        for_bob.push(
            stamping::stamp(&c, &sctx, m, &env("bob@b.example"))
                .await
                .expect("stamp")
                .message,
        );
        for_list.push(
            stamping::stamp(&c, &sctx, m, &env(LIST))
                .await
                .expect("stamp")
                .message,
        );
    }
    // The list's copies: the subject tagged, as the list server sends them.
    let copies: Vec<Vec<u8>> = for_list
        .iter()
        .map(|m| {
            let s = String::from_utf8_lossy(m).into_owned();
            match s.find("\nSubject:") {
                Some(at) => {
                    let mut s = s;
                    s.insert_str(at + "\nSubject:".len(), " [dev]");
                    s.into_bytes()
                }
                None => m.clone(),
            }
        })
        // Only copies whose tag the list agent finds (a folded or missing Subject is not
        // tagged this simply): the others would go without a hop and time nothing.
        .filter(|c| {
            let settings = mailstamp_core::hops::ListSettings {
                subject_tag: Some("[dev]"),
                domain: "lists.b.example",
            };
            mailstamp_core::parse(c)
                .and_then(|m| mailstamp_core::list_changes(&m, &settings).ok())
                .is_some_and(|ch| ch.len() == 2)
        })
        .collect();
    let prep = |v: &[Vec<u8>]| Arc::new(v.iter().map(|m| prepare(m)).collect::<Vec<Prepared>>());
    let (for_bob, for_list, copies) = (prep(&for_bob), prep(&for_list), prep(&copies));

    // b.example's writer is account 1; the trust map pins the corpus domains to a.example's
    // writer and b.example, lists.b.example to b.example's.
    // (Account 3 is the batched milter's: one account per daemon, each keeps its own nonce.)
    let (w1, w3) = (
        harness::signer(&a, 1).address(),
        harness::signer(&a, 3).address(),
    );
    let base = format!(
        "[chain]\nrpc_url = \"{}\"\nregistry = \"{registry}\"\ntimeout_secs = 10\n\n{}\
         \"b.example\" = [\"{w1:#x}\", \"{w3:#x}\"]\n\"lists.b.example\" = [\"{w1:#x}\"]\n",
        a.endpoint(),
        harness::trust_config_toml(origin)
    );
    let dir = harness::TempDir::new("bench-hops");
    let stop = CancellationToken::new();
    let forward = "[forward]\naliases = { \"bob@b.example\" = [\"bob@forward.example\"] }\n";
    let lists = format!("[forward.lists.\"{LIST}\"]\nsubject_tag = \"[dev]\"\n");
    let key = |i| harness::signer(&a, i);
    let verify = milter_at(&dir.0, "verify", &base, "", key(2), &stop).await;
    let direct = milter_at(
        &dir.0,
        "direct",
        &base,
        &format!("{forward}{lists}"),
        key(1),
        &stop,
    )
    .await;
    let batched = milter_at(
        &dir.0,
        "batched",
        &base,
        &format!("[stamp]\nmode = \"batch\"\nbatch_wait_ms = 100\n{forward}"),
        key(3),
        &stop,
    )
    .await;
    let inbound = |to: &str| Envelope {
        ip: "192.0.2.10".parse().expect("ip"),
        sender: "sender@a.example".into(),
        rcpts: vec![to.into()],
    };
    let list_out = Envelope {
        ip: "127.0.0.1".parse().expect("ip"),
        sender: "dev-bounces@lists.b.example".into(),
        rcpts: vec!["carol@c.example".into(), "dave@d.example".into()],
    };
    let own_out = Envelope {
        ip: "127.0.0.1".parse().expect("ip"),
        sender: "news@b.example".into(),
        rcpts: vec!["carol@c.example".into(), "dave@d.example".into()],
    };
    // b.example's own messages for the outbound baseline: the corpus bodies From news@b.example.
    let own: Vec<Vec<u8>> = raws
        .iter()
        .map(|m| {
            let s = String::from_utf8_lossy(m).into_owned();
            let body = s.split_once("\n\n").map_or("", |(_, b)| b);
            format!(
                "From: News <news@b.example>\nTo: carol@c.example\nSubject: news\n\
                 Date: Tue, 1 Dec 2026 10:00:00 +0000\nMessage-ID: <n@b.example>\n\n{body}"
            )
            .into_bytes()
        })
        .collect();
    let own = prep(&own);

    println!(
        "hop_latency: {n} corpus messages (< 64 KiB, every 11th) stamped by a.example; b.example's milters in-process on Unix sockets, \
         anvil (instant mining) on loopback; one connection per message; latency = connect .. EOM reply"
    );
    let mut rows: Vec<(String, Pass)> = Vec::new();
    // Warm-up passes (records cached, chain connections and nonces made), then the measured ones.
    pass(&verify, &for_bob, 1, &inbound("bob@b.example")).await;
    let p = pass(&verify, &for_bob, 1, &inbound("bob@b.example")).await;
    rows.push(("verify only (baseline)".into(), p));
    pass(&direct, &for_bob, 1, &inbound("bob@b.example")).await;
    let p = pass(&direct, &for_bob, 1, &inbound("bob@b.example")).await;
    check("alias, direct", &p, "3", true);
    rows.push(("alias: verify + hop, direct".into(), p));
    pass(&batched, &for_bob, 20, &inbound("bob@b.example")).await;
    let p = pass(&batched, &for_bob, 1, &inbound("bob@b.example")).await;
    check("alias, batched", &p, "3", true);
    rows.push(("alias: verify + hop, batched".into(), p));
    let p = pass(&batched, &for_bob, 20, &inbound("bob@b.example")).await;
    check("alias, batched x20", &p, "3", true);
    rows.push(("alias: verify + hop, batched x20".into(), p));
    // The posts to the list (remembered), then the list's copies under its hop.
    pass(&direct, &for_list, 1, &inbound(LIST)).await;
    pass(&direct, &own, 1, &own_out).await;
    let p = pass(&direct, &own, 1, &own_out).await;
    check("own outbound", &p, "2", false);
    rows.push(("outbound: stamp (baseline)".into(), p));
    let p = pass(&direct, &copies, 1, &list_out).await;
    check("list copy", &p, "3", false);
    rows.push(("list copy: list_changes + hop".into(), p));
    println!(
        "\n{:<34} {:>5} {:>8} {:>8} {:>8} {:>9}",
        "milter / path", "msgs", "p50 ms", "p99 ms", "max ms", "msgs/s"
    );
    for (name, p) in &rows {
        println!("{}", row(name, &p.lat, p.wall));
    }
    stop.cancel();
}
