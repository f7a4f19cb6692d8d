// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp recover` on real mail: a Junk Maildir built from the SpamAssassin corpus, with
//! the DNS the tests run (tests/it/dnsfix.rs) publishing DKIM keys and DMARC records.
//!
//! - ham marked as spam by an `X-Spam-Flag: YES` header, whose senders the user wrote to
//!   before (the allowlist filled through outbound learning), DKIM-signed by mail-auth for
//!   their From domains → released;
//! - spam → kept;
//! - spam wearing the From of an allowlisted correspondent, unsigned or signed with a key the
//!   domain does not publish → kept, reason `unauthenticated_hit`.
//!
//! Dry run, then `--apply` (every released file in the inbox with its flags, nothing lost or
//! doubled), then a re-run that changes nothing. `--watch` learning is checked on the same
//! kind of folder: a kept, authenticated message the user moves out by hand authorises its
//! sender; an unauthenticated one does not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::Engine;
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mailstamp::config::Config;
use mailstamp::people::FromIdentity;
use mailstamp::people::allowlist;
use mailstamp::store::Store;
use serde_json::Value;

use crate::dnsfix::DnsServer;
use crate::harness::{TempDir, corpus, mailstamp};

const USER: &str = "bob@b.example";
const HAM: usize = 300;
const SPAM: usize = 200;
const SPOOF: usize = 40;

/// An Ed25519 DKIM key and its public half as a TXT value.
pub(crate) fn dkim_key() -> (Vec<u8>, String) {
    let der = Ed25519Key::generate_pkcs8().unwrap();
    let public = Ed25519Key::from_pkcs8_der(&der).unwrap().public_key();
    let txt = format!(
        "v=DKIM1; k=ed25519; p={}",
        base64::engine::general_purpose::STANDARD.encode(public)
    );
    (der, txt)
}

/// `raw` with a DKIM-Signature for `domain` (selector s1) on top.
pub(crate) fn dkim_sign(der: &[u8], domain: &str, raw: &[u8]) -> Vec<u8> {
    let key = Ed25519Key::from_pkcs8_der(der).unwrap();
    let sig = DkimSigner::from_key(key)
        .domain(domain)
        .selector("s1")
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(raw)
        .unwrap_or_else(|e| panic!("signing for {domain}: {e}"));
    let mut out = sig.to_header().into_bytes();
    out.extend_from_slice(raw);
    out
}

/// A domain the DNS fixture can serve: at least two labels of letters, digits and `-`.
pub(crate) fn servable(d: &str) -> bool {
    d.contains('.')
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() < 64
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Removes the header fields named `names` (with their folded lines).
pub(crate) fn strip_fields(raw: &[u8], names: &[&str]) -> Vec<u8> {
    let end = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .map_or(raw.len(), |i| i + 1);
    let (head, body) = raw.split_at(end);
    let mut out = Vec::new();
    let mut skip = false;
    for line in head.split_inclusive(|&b| b == b'\n') {
        let folded = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !folded {
            let l = String::from_utf8_lossy(line).to_ascii_lowercase();
            skip = names
                .iter()
                .any(|n| l.starts_with(&format!("{}:", n.to_ascii_lowercase())));
        }
        if !skip {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(body);
    out
}

/// A Junk folder in a Maildir++ root (`root/.Junk`), both created.
pub(crate) fn maildir(root: &Path) -> PathBuf {
    mailstamp::maildir::create_folder(root).unwrap();
    let junk = root.join(".Junk");
    mailstamp::maildir::create_folder(&junk).unwrap();
    junk
}

/// The Message-IDs of every message in a folder (multiset as a sorted list).
pub(crate) fn message_ids(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = mailstamp::maildir::list(dir)
        .unwrap()
        .iter()
        .map(|e| {
            let raw = std::fs::read(&e.path).unwrap();
            mailstamp_core::parse(&raw)
                .and_then(|m| m.message_id().map(str::to_owned))
                .unwrap_or_else(|| format!("(none) {}", e.base))
        })
        .collect();
    v.sort();
    v
}

/// Runs `mailstamp recover` with `args`, the config at `config`; returns the JSON lines.
pub(crate) fn recover(config: &Path, args: &[&str]) -> (Vec<Value>, Value) {
    let mut a = vec!["--config", config.to_str().unwrap(), "recover", "--json"];
    a.extend_from_slice(args);
    let out = mailstamp(&a, &[], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "recover {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let summary = lines.pop().expect("a summary line")["summary"].clone();
    (lines, summary)
}

struct Folder {
    _tmp: TempDir,
    root: PathBuf,
    junk: PathBuf,
    config: PathBuf,
    /// File base name → class (`ham`, `spam`, `spoof`).
    class: BTreeMap<String, &'static str>,
}

/// Builds the Junk folder, the DNS records and the store (allowlist from outbound learning).
async fn build(tag: &str, ham_n: usize, spam_n: usize, spoof_n: usize) -> (Folder, DnsServer) {
    let mut seen = BTreeSet::new();
    let tmp = TempDir::new(tag);
    let root = tmp.0.join("Maildir");
    let junk = maildir(&root);
    let (der, txt) = dkim_key();
    let (wrong, _) = dkim_key();
    let all = corpus();
    let from_of = |raw: &[u8]| FromIdentity::of_message(raw).filter(|f| servable(&f.domain));
    let ham: Vec<(Vec<u8>, FromIdentity)> = all
        .iter()
        .filter(|(n, _)| n.contains("ham"))
        .filter_map(|(_, raw)| Some((raw.clone(), from_of(raw)?)))
        // One message per correspondent domain: a domain's partial match stays out of it.
        .filter(|(_, f)| seen.insert(f.domain.clone()))
        .take(ham_n)
        .collect();
    assert_eq!(ham.len(), ham_n, "not enough ham with a usable From");
    let spam: Vec<Vec<u8>> = all
        .iter()
        .filter(|(n, _)| n.starts_with("spam-1"))
        .map(|(_, raw)| raw.clone())
        .take(spam_n)
        .collect();
    let spoof_src: Vec<Vec<u8>> = all
        .iter()
        .filter(|(n, _)| n.starts_with("spam-2"))
        .map(|(_, raw)| raw.clone())
        .take(spoof_n)
        .collect();
    let domains: BTreeSet<String> = ham.iter().map(|(_, f)| f.domain.clone()).collect();
    // The fixture is also authoritative for their top-level domains, so that DMARC's tree
    // walk (`_dmarc.com`) gets NXDOMAIN as on the Internet, not REFUSED (a temperror).
    let tlds: BTreeSet<String> = domains
        .iter()
        .filter_map(|d| d.rsplit('.').next().map(str::to_owned))
        .collect();
    let origins: Vec<&str> = domains.iter().chain(&tlds).map(String::as_str).collect();
    let mut lines = Vec::new();
    for d in &domains {
        lines.push(format!("s1._domainkey.{d} 60 IN TXT \"{txt}\""));
        lines.push(format!("_dmarc.{d} 60 IN TXT \"v=DMARC1; p=reject\""));
    }
    let dns = DnsServer::start(&origins, &lines).await;

    let store_path = tmp.0.join("state.sqlite");
    let config = tmp.0.join("mailstamp.toml");
    std::fs::write(
        &config,
        format!(
            "[dns]\nnameservers = [\"{}\"]\ntimeout_secs = 1\nattempts = 1\n\n[store]\npath = \"{}\"\n\n[milter]\nauthserv_id = \"mx.b.example\"\n",
            dns.addr,
            store_path.display()
        ),
    )
    .unwrap();
    // The user wrote to every ham sender before: outbound learning made partial entries.
    let store = Store::open(&store_path).unwrap();
    let cfg = Config::default();
    let now = mailstamp::util::now();
    for (_, f) in &ham {
        allowlist::record_outbound(&store, &cfg.allowlist, USER, f, now).unwrap();
    }
    drop(store);

    let mut class = BTreeMap::new();
    let mut put = |name: String, raw: Vec<u8>, c: &'static str, cur: bool| {
        let mut marked = b"X-Spam-Flag: YES\nX-Spam-Status: Yes, score=6.1 required=5.0\n".to_vec();
        marked.extend_from_slice(&raw);
        let path = if cur {
            junk.join("cur").join(format!("{name}:2,S"))
        } else {
            junk.join("new").join(&name)
        };
        std::fs::write(path, marked).unwrap();
        class.insert(name, c);
    };
    for (i, (raw, f)) in ham.iter().enumerate() {
        let raw = strip_fields(raw, &["DKIM-Signature", "DomainKey-Signature"]);
        put(
            format!("1700000000.ham{i}.host"),
            dkim_sign(&der, &f.domain, &raw),
            "ham",
            i.is_multiple_of(2),
        );
    }
    for (i, raw) in spam.iter().enumerate() {
        put(
            format!("1700000000.spam{i}.host"),
            raw.clone(),
            "spam",
            i.is_multiple_of(3),
        );
    }
    for (i, raw) in spoof_src.iter().enumerate() {
        let victim = &ham[i % ham.len()].1;
        let raw = strip_fields(raw, &["From", "DKIM-Signature", "DomainKey-Signature"]);
        let mut forged = format!("From: <{}>\n", victim.address).into_bytes();
        forged.extend_from_slice(&raw);
        // Half unsigned, half signed with a key the domain does not publish.
        let forged = if i.is_multiple_of(2) {
            forged
        } else {
            dkim_sign(&wrong, &victim.domain, &forged)
        };
        put(
            format!("1700000000.spoof{i}.host"),
            forged,
            "spoof",
            i.is_multiple_of(2),
        );
    }
    (
        Folder {
            _tmp: tmp,
            root,
            junk,
            config,
            class,
        },
        dns,
    )
}

fn base_of(v: &Value) -> String {
    let f = v["file"].as_str().unwrap();
    let name = Path::new(f)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    mailstamp::maildir::parse_name(&name).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_ham_is_released_spam_and_spoofs_are_kept() {
    let (f, _dns) = build("recover-corpus", HAM, SPAM, SPOOF).await;
    let total = HAM + SPAM + SPOOF;
    let ids_before = {
        let mut v = message_ids(&f.junk);
        v.extend(message_ids(&f.root));
        v.sort();
        v
    };
    assert_eq!(ids_before.len(), total);
    let cfg = f.config.clone();
    let junk = f.junk.to_str().unwrap().to_owned();

    // Dry run: every message decided as its class says, nothing moved.
    let (lines, sum) = {
        let (cfg, junk) = (cfg.clone(), junk.clone());
        tokio::task::spawn_blocking(move || recover(&cfg, &[&junk, "--user", USER]))
            .await
            .unwrap()
    };
    assert_eq!(lines.len(), total);
    let mut wrong = Vec::new();
    for l in &lines {
        let c = f.class[&base_of(l)];
        let (action, reason) = (l["action"].as_str().unwrap(), l["reason"].as_str().unwrap());
        let ok = match c {
            "ham" => action == "release" && reason == "allowlisted",
            "spam" => action == "keep",
            _ => action == "keep" && reason == "unauthenticated_hit",
        };
        if !ok {
            wrong.push(format!(
                "{c} {} → {action} {reason}: {}",
                base_of(l),
                l["detail"]
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(sum["scanned"], total);
    assert_eq!(sum["released"], HAM);
    assert_eq!(sum["kept"], SPAM + SPOOF);
    // The spam filter's headers are reported.
    assert_eq!(lines[0]["filters"][0]["filter"], "spamassassin");
    assert_eq!(mailstamp::maildir::list(&f.junk).unwrap().len(), total);

    // --apply: the released files move to the inbox with their flags; none lost or doubled.
    let (_, sum) = {
        let (cfg, junk) = (cfg.clone(), junk.clone());
        tokio::task::spawn_blocking(move || recover(&cfg, &[&junk, "--user", USER, "--apply"]))
            .await
            .unwrap()
    };
    assert_eq!(
        (sum["released"].as_u64(), sum["kept"].as_u64()),
        (Some(HAM as u64), Some((SPAM + SPOOF) as u64))
    );
    let inbox = mailstamp::maildir::list(&f.root).unwrap();
    assert_eq!(inbox.len(), HAM);
    for e in &inbox {
        assert_eq!(f.class[&e.base], "ham", "{}", e.path.display());
        let i: usize = e
            .base
            .trim_start_matches("1700000000.ham")
            .trim_end_matches(".host")
            .parse()
            .unwrap();
        // Even ones were in cur/ with `S`, odd ones in new/: kept as they were.
        assert_eq!(
            e.flags,
            if i.is_multiple_of(2) { "S" } else { "" },
            "{}",
            e.path.display()
        );
    }
    let mut ids_after = message_ids(&f.junk);
    ids_after.extend(message_ids(&f.root));
    ids_after.sort();
    assert_eq!(ids_after, ids_before, "a message was lost or doubled");

    // Re-run: nothing to release, every kept message decided earlier.
    let (_, sum) = {
        let (cfg, junk) = (cfg.clone(), junk.clone());
        tokio::task::spawn_blocking(move || recover(&cfg, &[&junk, "--user", USER, "--apply"]))
            .await
            .unwrap()
    };
    assert_eq!(sum["released"], 0);
    assert_eq!(sum["kept"], SPAM + SPOOF);
    assert_eq!(sum["earlier"], SPAM + SPOOF);
    assert_eq!(mailstamp::maildir::list(&f.root).unwrap().len(), HAM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_releases_new_mail_and_learns_a_sender_the_user_moves_out_by_hand() {
    // Two ham (distinct domains) and one spoof wearing ham0's From.
    let (f, _dns) = build("recover-watch", 2, 0, 1).await;
    tokio::task::spawn_blocking(move || watch_scenario(&f))
        .await
        .unwrap();
}

fn watch_scenario(f: &Folder) {
    let store_path = f.config.parent().unwrap().join("state.sqlite");
    let find = |dir: &Path, tag: &str| {
        mailstamp::maildir::list(dir)
            .unwrap()
            .into_iter()
            .find(|e| e.base.contains(tag))
    };
    let ham0 = std::fs::read(find(&f.junk, "ham0").unwrap().path).unwrap();
    let ham0_from = FromIdentity::of_message(&ham0).unwrap();
    {
        // The user never wrote to ham0's sender: its (authenticated) message is kept.
        let store = Store::open(&store_path).unwrap();
        allowlist::forget(&store, USER, Some(&ham0_from.address)).unwrap();
    }
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_mailstamp"))
        .args(["--config", f.config.to_str().unwrap(), "recover", "--json"])
        .arg(&f.junk)
        .args(["--user", USER, "--apply", "--watch", "--interval", "1"])
        .env_remove("MAILSTAMP_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let junk_left = || mailstamp::maildir::list(&f.junk).unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // The first pass releases ham1 (allowlisted) and keeps ham0 (stranger) and the spoof.
        assert!(
            wait_until(20, || junk_left().len() == 2),
            "the first pass did not release ham1"
        );
        assert!(find(&f.root, "ham1").is_some());
        // Mail arriving while it watches is examined: another message from ham1's sender
        // (a trace header added on top keeps the DKIM signature valid).
        let mut later = b"X-Arrived: later\n".to_vec();
        later.extend_from_slice(&std::fs::read(find(&f.root, "ham1").unwrap().path).unwrap());
        std::fs::write(f.junk.join("new/1700000001.later.host"), later).unwrap();
        assert!(
            wait_until(20, || find(&f.root, "later").is_some()),
            "a message arriving during --watch was not released"
        );
        // The user moves both kept messages to the inbox by hand, under new names as an IMAP
        // server does.
        for e in junk_left() {
            let to = f
                .root
                .join("cur")
                .join(format!("1700000002.{}.moved:2,S", e.base));
            std::fs::rename(&e.path, to).unwrap();
        }
        assert!(
            wait_until(20, || {
                let s = Store::open(&store_path).unwrap();
                !s.senders(Some(USER)).unwrap().is_empty()
            }),
            "nothing learned"
        );
    }));
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if let Err(e) = result {
        eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        std::panic::resume_unwind(e);
    }
    let s = Store::open(&store_path).unwrap();
    let senders: Vec<String> = s
        .senders(Some(USER))
        .unwrap()
        .into_iter()
        .map(|r| r.pattern)
        .collect();
    // Only the authenticated sender is learned, not the spoofed From (the same address,
    // but the spoof proves nothing: it was kept without an authenticated sender).
    assert_eq!(senders, vec![ham0_from.address.clone()]);
    assert!(stdout.contains("\"learned\""), "{stdout}");
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["summary"]["learned"], 1, "{stdout}");
    assert_eq!(out.status.code(), Some(0), "{stdout}");
}

fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    false
}

#[test]
fn bad_arguments_get_a_clear_error() {
    let tmp = TempDir::new("recover-args");
    let config = tmp.0.join("c.toml");
    std::fs::write(
        &config,
        format!("[store]\npath = \"{}\"\n", tmp.0.join("s.sqlite").display()),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let plain = tmp.0.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let junk = maildir(&tmp.0.join("Maildir"));
    let cases: [(Vec<&str>, &str); 5] = [
        (vec![plain.to_str().unwrap()], "not a Maildir folder"),
        (vec!["/nonexistent/.Junk"], "does not exist"),
        (vec![junk.to_str().unwrap(), "--watch"], "needs --apply"),
        (
            vec![junk.to_str().unwrap(), "--apply", "--watch"],
            "give --user",
        ),
        (
            vec![junk.to_str().unwrap(), "--user", "not an address"],
            "--user",
        ),
    ];
    for (args, want) in cases {
        let mut a = vec!["--config", c, "recover"];
        a.extend(args.iter().copied());
        let out = mailstamp(&a, &[], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // A Junk that is not a Maildir++ sub-folder and no --inbox: told to pass --inbox.
    let lone = tmp.0.join("lone");
    mailstamp::maildir::create_folder(&lone).unwrap();
    let out = mailstamp(
        &["--config", c, "recover", lone.to_str().unwrap(), "--apply"],
        &[],
        None,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--inbox"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_user_the_delivered_to_decides_and_reruns_are_idempotent() {
    let tmp = TempDir::new("recover-delivered-to");
    let junk = maildir(&tmp.0.join("Maildir"));
    let dns = DnsServer::start(&["example"], &[]).await;
    let config = tmp.0.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[dns]\nnameservers = [\"{}\"]\ntimeout_secs = 1\nattempts = 1\n[store]\npath = \"{}\"\n",
            dns.addr,
            tmp.0.join("s.sqlite").display()
        ),
    )
    .unwrap();
    for (i, to) in ["bob@b.example", "dave@b.example"].iter().enumerate() {
        std::fs::write(
            junk.join("new").join(format!("1700000000.d{i}.host")),
            format!(
                "Delivered-To: {to}\nFrom: eve@c.example\nTo: {to}\nSubject: s{i}\nMessage-ID: <d{i}@c.example>\n\nhi\n"
            ),
        )
        .unwrap();
    }
    std::fs::write(
        junk.join("new/1700000000.nouser.host"),
        "From: eve@c.example\nSubject: x\n\nhi\n",
    )
    .unwrap();
    let j = junk.to_str().unwrap().to_owned();
    let (lines, sum) = tokio::task::spawn_blocking(move || {
        let first = recover(&config, &[&j, "--apply"]);
        let second = recover(&config, &[&j, "--apply"]);
        (first.0, (first.1, second.1))
    })
    .await
    .unwrap();
    let users: BTreeSet<String> = lines
        .iter()
        .filter_map(|l| l["user"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        users,
        BTreeSet::from(["bob@b.example".to_owned(), "dave@b.example".to_owned()])
    );
    let no_user = lines.iter().find(|l| l["user"].is_null()).unwrap();
    assert_eq!(
        (no_user["action"].as_str(), no_user["reason"].as_str()),
        (Some("keep"), Some("no-user"))
    );
    assert_eq!(
        (sum.0["kept"].as_u64(), sum.0["earlier"].as_u64()),
        (Some(3), Some(0))
    );
    // The second run: the two with a user are decided already; the one without is examined
    // again (nothing recorded for it), still kept.
    assert_eq!(
        (sum.1["kept"].as_u64(), sum.1["earlier"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(mailstamp::maildir::list(&junk).unwrap().len(), 3);
}

#[test]
fn chain_trouble_keeps_a_stamped_message_as_temperror_and_retries_it() {
    let tmp = TempDir::new("recover-temperror");
    let junk = maildir(&tmp.0.join("Maildir"));
    // A well-formed stamp whose chain cannot be reached (a closed port).
    let raw =
        b"From: a@a.example\nTo: bob@b.example\nSubject: x\nMessage-ID: <t@a.example>\n\nhi\n";
    let msg = mailstamp_core::parse(raw).unwrap();
    let chain = mailstamp_core::ChainRef {
        chain_id: 31337,
        registry: [1; 20],
        writer: [2; 20],
    };
    let p = mailstamp_core::prepare(
        &msg,
        &Default::default(),
        [3; 16],
        &chain,
        &Default::default(),
    )
    .unwrap();
    std::fs::write(
        junk.join("new/1700000000.t.host"),
        mailstamp_core::insert_header(raw, &p.header),
    )
    .unwrap();
    let config = tmp.0.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[chain]\nrpc_url = \"http://127.0.0.1:9\"\nregistry = \"0x{}\"\ntimeout_secs = 1\n\
             [dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\nattempts = 1\n\
             [store]\npath = \"{}\"\n",
            "01".repeat(20),
            tmp.0.join("s.sqlite").display()
        ),
    )
    .unwrap();
    let j = junk.to_str().unwrap();
    for run in 0..2 {
        let (lines, sum) = recover(&config, &[j, "--user", USER, "--apply"]);
        assert_eq!(lines.len(), 1);
        let l = &lines[0];
        assert_eq!(
            (
                l["action"].as_str(),
                l["reason"].as_str(),
                l["verdict"].as_str()
            ),
            (Some("keep"), Some("temperror"), Some("temperror")),
            "run {run}: {l}"
        );
        // Not recorded: examined again on the next run.
        assert_eq!(sum["earlier"], 0, "run {run}");
    }
    assert_eq!(mailstamp::maildir::list(&junk).unwrap().len(), 1);
}

/// A stamped message that sat in Junk for longer than `[verify] max_age_secs` (7 days) is no
/// replay: it is verified as at its delivery (the top-most `Received:` our MTA wrote), as the
/// milter did at SMTP time, and released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stamp_is_verified_as_at_delivery_not_now() {
    use alloy::node_bindings::Anvil;
    use mailstamp::chain::{self, Chain};
    use mailstamp::config::{ChainConfig, Confirmations};
    use mailstamp::stamping::{self, StampContext};
    use mailstamp::util;
    use mailstamp::verifying::{self, VerifyContext};
    use mailstamp_core::{Envelope, Policy, Selection, Verdict};

    use crate::harness::{authority, signer, tool};

    // A chain whose clock started ten days ago: the stamp is recorded then.
    let then = util::now() - 10 * 86_400;
    let a = Anvil::at(tool("anvil"))
        .port(0u16)
        .arg("--timestamp")
        .arg(then.to_string())
        .try_spawn()
        .expect("anvil starts");
    let t = std::time::Duration::from_secs(5);
    let registry = chain::deploy(&a.endpoint(), signer(&a, 0), true, t)
        .await
        .unwrap()
        .address;
    let writer = signer(&a, 0).address();
    let c = Chain::connect(
        &ChainConfig {
            rpc_url: a.endpoint(),
            confirmations: Confirmations::Depth(1),
            timeout_secs: 5,
            ..ChainConfig::default()
        },
        registry,
        Some(signer(&a, 0)),
    )
    .await
    .unwrap();
    let trust = BTreeMap::from([("a.example".to_owned(), vec![writer])]);
    let date = mail_parser::DateTime::from_timestamp(then as i64 + 30).to_rfc822();
    let raw = format!(
        "From: Ann <ann@a.example>\nTo: bob@b.example\nSubject: sat in Junk\nDate: {date}\n\
         Message-ID: <old@a.example>\n\nstill wanted\n"
    );
    let env = Envelope {
        rcpts: vec![USER.to_owned()],
        client_ip: None,
    };
    let sctx = StampContext {
        selection: Selection::default(),
        authority: authority(&trust),
        check_writer: true,
        active_only: None,
    };
    let stamped = stamping::stamp(&c, &sctx, raw.as_bytes(), &env)
        .await
        .unwrap()
        .message;
    // The precondition: verified as at now, it is a replay.
    let now_ctx = VerifyContext {
        authority: authority(&trust),
        trusted: vec![registry],
        policy: Policy::default(),
        now: Some(util::now()),
        patience: Default::default(),
    };
    let r = verifying::verify(Ok(&c), &now_ctx, &stamped, &env).await;
    assert_eq!(r.verdict, Verdict::Spam, "{r:?}");
    let at_delivery = VerifyContext {
        now: Some(then + 60),
        ..now_ctx
    };
    assert_eq!(
        verifying::verify(Ok(&c), &at_delivery, &stamped, &env)
            .await
            .verdict,
        Verdict::Wanted
    );

    let tmp = TempDir::new("recover-old-stamp");
    let junk = maildir(&tmp.0.join("Maildir"));
    let received = mail_parser::DateTime::from_timestamp(then as i64 + 60).to_rfc822();
    let mut file = format!(
        "X-Spam-Flag: YES\nReceived: from mail.a.example (mail.a.example [192.0.2.7]) by mx.b.example (Postfix) with ESMTP id Q1; {received}\n"
    )
    .into_bytes();
    file.extend_from_slice(&stamped);
    std::fs::write(junk.join("new/1700000000.old.host"), file).unwrap();
    let config = tmp.0.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[chain]\nrpc_url = \"{}\"\nregistry = \"{registry:#x}\"\ntimeout_secs = 5\n\
             [dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\nattempts = 1\n\
             [store]\npath = \"{}\"\n[milter]\nauthserv_id = \"mx.b.example\"\n\
             [trust]\n\"a.example\" = [\"{writer:#x}\"]\n",
            a.endpoint(),
            tmp.0.join("s.sqlite").display()
        ),
    )
    .unwrap();
    let j = junk.to_str().unwrap().to_owned();
    let (lines, sum) =
        tokio::task::spawn_blocking(move || recover(&config, &[&j, "--user", USER, "--apply"]))
            .await
            .unwrap();
    let l = &lines[0];
    assert_eq!(
        (
            l["action"].as_str(),
            l["reason"].as_str(),
            l["verdict"].as_str(),
            l["verified_at"].as_u64()
        ),
        (
            Some("release"),
            Some("stamp_wanted"),
            Some("wanted"),
            Some(then + 60)
        ),
        "{l}"
    );
    assert_eq!(sum["released"], 1);

    // The user puts it back in Junk: the next run reports the earlier release and leaves it
    // there (never fights the user), run after run.
    let moved = std::path::PathBuf::from(l["moved_to"].as_str().unwrap());
    let back = junk.join("cur/1700000000.old.host:2,S");
    std::fs::rename(&moved, &back).unwrap();
    for run in 0..2 {
        let j = junk.to_str().unwrap().to_owned();
        let config = tmp.0.join("c.toml");
        let (lines, _) =
            tokio::task::spawn_blocking(move || recover(&config, &[&j, "--user", USER, "--apply"]))
                .await
                .unwrap();
        let l = &lines[0];
        assert_eq!(
            (l["earlier"].as_bool(), l["moved_to"].is_null()),
            (Some(true), true),
            "run {run}: {l}"
        );
        assert!(back.exists(), "run {run}: left where the user put it");
    }
}
