// SPDX-License-Identifier: GPL-3.0-or-later
//! What the inbound folder decision costs per message and recipient (issue 5): a real SQLite
//! store file (WAL) filled to the caps — one user with `max_per_user` (5 000) allowlist
//! entries and 1 000 authorised senders, 99 other users with 1 000 entries each (~104 000
//! rows) — then, sequentially, `inbound::decide` for a full allowlist hit, an authorised
//! domain, and a stranger (the slowest path: every list consulted), `allowlist::complete`,
//! and `allowlist::record_outbound` (the write each stamped message makes per recipient). And
//! the DMARC check of a DKIM-signed message by `auth::Authenticator` against the tests'
//! loopback DNS server (first message cold, the rest with the resolver's cache warm).
//!
//! Run: `cargo bench -p mailstamp --bench inbound_lists` (`MAILSTAMP_BENCH_N` iterations per
//! case, default 5000). Every write is its own SQLite transaction in WAL mode with
//! `synchronous = FULL` (the default): its cost is mostly the fsync of the WAL, so the
//! figures depend on the disk.

#![allow(missing_docs, dead_code, unreachable_pub)]

#[path = "../../tests/it/dnsfix.rs"]
mod dnsfix;

use std::time::{Duration, Instant};

use base64::Engine;
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mailstamp::auth::{AuthOutcome, AuthResult, Authenticator};
use mailstamp::config::AllowlistConfig;
use mailstamp::config::Config;
use mailstamp::inbound::{self, Folder, Reason};
use mailstamp::people::FromIdentity;
use mailstamp::people::allowlist;
use mailstamp::store::Store;

fn report(name: &str, mut lat: Vec<Duration>) {
    lat.sort();
    let total: Duration = lat.iter().sum();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{name:<42} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>10.0}",
        lat.len(),
        q(0.5).as_secs_f64() * 1e6,
        q(0.99).as_secs_f64() * 1e6,
        lat.last().unwrap().as_secs_f64() * 1e6,
        lat.len() as f64 / total.as_secs_f64()
    );
}

fn time(n: usize, mut f: impl FnMut(usize)) -> Vec<Duration> {
    (0..n)
        .map(|i| {
            let t = Instant::now();
            f(i);
            t.elapsed()
        })
        .collect()
}

fn main() {
    let n: usize = std::env::var("MAILSTAMP_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let dir = std::env::temp_dir().join(format!("mailstamp-bench-inbound-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&dir.join("state.sqlite")).unwrap();
    let cfg = Config::default();
    let acfg = AllowlistConfig::default();
    let now = mailstamp::util::now();
    let bob = "bob@b.example";
    let t = Instant::now();
    {
        // Filled in one transaction straight through SQLite (the agent writes one row per
        // message; that cost is measured below).
        let mut c = rusqlite::Connection::open(dir.join("state.sqlite")).unwrap();
        let tx = c.transaction().unwrap();
        {
            let mut ins = tx
                .prepare(
                    "INSERT INTO allowlist (user, address, domain, display_name, state, first_seen, last_seen, sent, received)
                     VALUES (?1, ?2, ?3, ?4, 'partial', ?5, ?5, 1, 0)",
                )
                .unwrap();
            for i in 0..acfg.max_per_user {
                let d = format!("d{}.example", i % 500);
                let when = (now - 1000 + (i % 1000) as u64) as i64;
                ins.execute(rusqlite::params![
                    bob,
                    format!("c{i}@{d}"),
                    d,
                    "Someone",
                    when
                ])
                .unwrap();
            }
            for u in 0..99 {
                for i in 0..1000 {
                    let d = format!("d{}.example", i % 300);
                    ins.execute(rusqlite::params![
                        format!("u{u}@b.example"),
                        format!("c{i}@{d}"),
                        d,
                        None::<String>,
                        now as i64
                    ])
                    .unwrap();
                }
            }
            let mut snd = tx
                .prepare("INSERT INTO senders (user, pattern, kind, added) VALUES (?1, ?2, 'domain', ?3)")
                .unwrap();
            for i in 0..1000 {
                snd.execute(rusqlite::params![
                    bob,
                    format!("auth{i}.example"),
                    now as i64
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    println!(
        "store filled: {} allowlist rows + 1000 senders in {:.1}s\n",
        acfg.max_per_user + 99 * 1000,
        t.elapsed().as_secs_f64()
    );
    println!(
        "{:<42} {:>6} {:>9} {:>9} {:>9} {:>10}",
        "case", "n", "p50 µs", "p99 µs", "max µs", "ops/s"
    );
    let pass = AuthOutcome {
        dmarc: AuthResult::Pass,
        aligned: Some("dkim"),
        ..AuthOutcome::none()
    };
    let ids: Vec<FromIdentity> = (0..n)
        .map(|i| {
            FromIdentity::new(&format!("c{}@d{}.example", i % 5000, i % 5000 % 500), None).unwrap()
        })
        .collect();
    report(
        "decide: full allowlist hit",
        time(n, |i| {
            let d = inbound::decide(&store, &cfg, bob, Some(&ids[i]), None, &pass, now).unwrap();
            assert_eq!(d.reason, Reason::Allowlisted);
        }),
    );
    let auth_ids: Vec<FromIdentity> = (0..n)
        .map(|i| FromIdentity::new(&format!("x@mail.auth{}.example", i % 1000), None).unwrap())
        .collect();
    report(
        "decide: authorised domain (parent)",
        time(n, |i| {
            let d =
                inbound::decide(&store, &cfg, bob, Some(&auth_ids[i]), None, &pass, now).unwrap();
            assert_eq!(d.reason, Reason::AuthorisedSender);
        }),
    );
    let strangers: Vec<FromIdentity> = (0..n)
        .map(|i| FromIdentity::new(&format!("s{i}@stranger{i}.example"), None).unwrap())
        .collect();
    report(
        "decide: stranger (every list consulted)",
        time(n, |i| {
            let d =
                inbound::decide(&store, &cfg, bob, Some(&strangers[i]), None, &pass, now).unwrap();
            assert_eq!(d.folder, Folder::Separate("Unknown".into()));
        }),
    );
    report(
        "allowlist::complete (authenticated reply)",
        time(n, |i| {
            assert!(allowlist::complete(&store, &acfg, bob, &ids[i], now).unwrap());
        }),
    );
    report(
        "allowlist::record_outbound (per rcpt)",
        time(n, |i| {
            allowlist::record_outbound(&store, &acfg, bob, &ids[i], now).unwrap();
        }),
    );

    // DMARC against the loopback authoritative server.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let der = Ed25519Key::generate_pkcs8().unwrap();
        let public = Ed25519Key::from_pkcs8_der(&der).unwrap().public_key();
        let lines = vec![
            "c.example 60 IN TXT \"v=spf1 ip4:192.0.2.20 -all\"".to_owned(),
            format!(
                "s1._domainkey.c.example 60 IN TXT \"v=DKIM1; k=ed25519; p={}\"",
                base64::engine::general_purpose::STANDARD.encode(public)
            ),
            "_dmarc.c.example 60 IN TXT \"v=DMARC1; p=reject\"".to_owned(),
        ];
        let dns = dnsfix::DnsServer::start(&["example", "c.example"], &lines).await;
        let authn = Authenticator::new(&dns.config(), "mx.b.example").unwrap();
        let raw = b"From: Carol <carol@c.example>\r\nTo: bob@b.example\r\nSubject: hi\r\n\
Date: Tue, 24 Nov 2026 05:00:00 +0000\r\nMessage-ID: <m@c.example>\r\n\r\nHello Bob.\r\n";
        let sig = DkimSigner::from_key(Ed25519Key::from_pkcs8_der(&der).unwrap())
            .domain("c.example")
            .selector("s1")
            .headers(["From", "To", "Subject", "Date", "Message-ID"])
            .sign(raw)
            .unwrap();
        let mut signed = sig.to_header().into_bytes();
        signed.extend_from_slice(raw);
        let ip = "192.0.2.20".parse().ok();
        let m = n.min(2000);
        let mut lat = Vec::with_capacity(m);
        for _ in 0..m {
            let t = Instant::now();
            let o = authn
                .authenticate(&signed, ip, "mail.c.example", "carol@c.example")
                .await;
            lat.push(t.elapsed());
            assert!(o.pass() && o.spf == AuthResult::Pass && o.dkim == AuthResult::Pass);
        }
        report("DMARC (SPF+DKIM) first message, cold", lat[..1].to_vec());
        report("DMARC (SPF+DKIM), resolver cache warm", lat[1..].to_vec());
    });
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
