// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp recover` throughput and accuracy on the SpamAssassin corpus, in one process:
//! every corpus message (or `MAILSTAMP_BENCH_N`) in one Junk Maildir, each marked spam by an
//! `X-Spam-Flag: YES` header. Ham whose From domain can be served is DKIM-signed (mail-auth,
//! Ed25519) under a key the DNS fixture (tests/it/dnsfix.rs, a real authoritative server on
//! loopback) publishes with a DMARC record, and its sender is in the user's allowlist through
//! outbound learning; spam is left as it came. The engine is `mailstamp::recover` with a real
//! SQLite store and DMARC through that DNS.
//!
//! Passes: a dry run (examine and decide every message), then `--apply` over the same folder
//! (decide, record, move the released ones), then a re-run with `--apply` (every message
//! already decided: the idempotent path). Prints messages/s for each and the share of ham
//! released vs spam wrongly released.
//!
//! Run: `source scripts/lib.sh && cargo bench -p mailstamp --bench recover`

#![allow(missing_docs, dead_code, unreachable_pub)]

#[path = "../../tests/it/dnsfix.rs"]
mod dnsfix;
#[path = "../../tests/it/harness.rs"]
mod harness;
#[path = "../../tests/it/recover.rs"]
mod recover;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use mailstamp::config::Config;
use mailstamp::people::FromIdentity;
use mailstamp::people::allowlist;
use mailstamp::recover::{Options, Recoverer, RecoveryAction, Summary};
use mailstamp::store::Store;

const USER: &str = "bob@b.example";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("MAILSTAMP_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    let all: Vec<(String, Vec<u8>)> = harness::corpus().into_iter().take(n).collect();
    let tmp = harness::TempDir::new("bench-recover");
    let root = tmp.0.join("Maildir");
    let junk = recover::maildir(&root);
    let (der, txt) = recover::dkim_key();

    // Which ham can be authenticated: a From domain the fixture can serve.
    let mut signed_domains = BTreeSet::new();
    let mut tlds = BTreeSet::new();
    let mut class: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut senders = Vec::new();
    let t0 = Instant::now();
    for (i, (name, raw)) in all.iter().enumerate() {
        let from = FromIdentity::of_message(raw).filter(|f| recover::servable(&f.domain));
        if let Some(f) = &from
            && let Some(tld) = f.domain.rsplit('.').next()
        {
            tlds.insert(tld.to_owned());
        }
        let ham = name.contains("ham");
        let body = match (&from, ham) {
            (Some(f), true) => {
                signed_domains.insert(f.domain.clone());
                senders.push(f.clone());
                let raw = recover::strip_fields(raw, &["DKIM-Signature", "DomainKey-Signature"]);
                recover::dkim_sign(&der, &f.domain, &raw)
            }
            _ => raw.clone(),
        };
        let mut marked = b"X-Spam-Flag: YES\n".to_vec();
        marked.extend_from_slice(&body);
        let base = format!("1700000000.{i}.bench");
        std::fs::write(junk.join("cur").join(format!("{base}:2,S")), marked).unwrap();
        class.insert(base, if ham { "ham" } else { "spam" });
    }
    let ham_total = class.values().filter(|c| **c == "ham").count();
    let spam_total = class.len() - ham_total;
    let mut lines = Vec::new();
    for d in &signed_domains {
        lines.push(format!("s1._domainkey.{d} 60 IN TXT \"{txt}\""));
        lines.push(format!("_dmarc.{d} 60 IN TXT \"v=DMARC1; p=reject\""));
    }
    // Authoritative for every TLD seen, so lookups outside the signed domains get NXDOMAIN
    // as on the Internet (not REFUSED).
    let origins: Vec<&str> = signed_domains
        .iter()
        .chain(&tlds)
        .map(String::as_str)
        .collect();
    let dns = dnsfix::DnsServer::start(&origins, &lines).await;
    let store_path = tmp.0.join("state.sqlite");
    let cfg = Config::parse(&format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout_secs = 1\nattempts = 1\n[store]\npath = \"{}\"\n",
        dns.addr,
        store_path.display()
    ))
    .unwrap();
    let store = Store::open(&store_path).unwrap();
    let now = mailstamp::util::now();
    for f in &senders {
        allowlist::record_outbound(&store, &cfg.allowlist, USER, f, now).unwrap();
    }
    eprintln!(
        "folder: {} messages ({ham_total} ham, {} of them DKIM-signed for {} domains; {spam_total} spam), built in {:.1}s",
        class.len(),
        senders.len(),
        signed_domains.len(),
        t0.elapsed().as_secs_f64()
    );

    let r = Recoverer::new(&cfg, store).await.unwrap();
    let mut released: BTreeMap<&str, usize> = BTreeMap::new();
    let run = |label: &str, sum: Summary, secs: f64| {
        println!(
            "{label:<28} {:>6} messages in {secs:>6.2}s  {:>8.0} messages/s  (released {}, kept {}, decided earlier {})",
            sum.scanned,
            sum.scanned as f64 / secs,
            sum.released,
            sum.kept,
            sum.earlier
        );
    };
    let opts = Options {
        user: Some(USER.into()),
        apply: false,
        redecide: false,
    };
    let t = Instant::now();
    let sum = r
        .pass(&junk, &root, &opts, |o, _, _| {
            if o.action == RecoveryAction::Release {
                let name = o.file.file_name().unwrap().to_string_lossy().into_owned();
                let base = mailstamp::maildir::parse_name(&name).0;
                *released.entry(class[&base]).or_default() += 1;
            }
        })
        .await
        .unwrap();
    run("recover (dry run)", sum, t.elapsed().as_secs_f64());
    let apply = Options {
        apply: true,
        ..opts.clone()
    };
    let t = Instant::now();
    let sum = r.pass(&junk, &root, &apply, |_, _, _| {}).await.unwrap();
    run("recover --apply", sum, t.elapsed().as_secs_f64());
    let t = Instant::now();
    let sum = r.pass(&junk, &root, &apply, |_, _, _| {}).await.unwrap();
    run("recover --apply (re-run)", sum, t.elapsed().as_secs_f64());

    let ham_rel = released.get("ham").copied().unwrap_or(0);
    let spam_rel = released.get("spam").copied().unwrap_or(0);
    println!(
        "ham released:  {ham_rel}/{ham_total} = {:.1}% (of the DKIM-signed ham: {:.1}%)",
        100.0 * ham_rel as f64 / ham_total.max(1) as f64,
        100.0 * ham_rel as f64 / senders.len().max(1) as f64
    );
    println!(
        "spam released: {spam_rel}/{spam_total} = {:.2}%",
        100.0 * spam_rel as f64 / spam_total.max(1) as f64
    );
    let inbox = mailstamp::maildir::list(&root).unwrap().len();
    let left = mailstamp::maildir::list(&junk).unwrap().len();
    println!(
        "after --apply: {inbox} in the inbox + {left} in Junk = {} (of {})",
        inbox + left,
        class.len()
    );
}
