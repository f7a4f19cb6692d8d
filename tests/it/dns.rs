// SPDX-License-Identifier: GPL-3.0-or-later
//! Who may stamp for a domain, against a real authoritative DNS server (hickory-server on
//! loopback) and a real anvil: DNS-published writers, CNAME to the provider's zone, rotation,
//! unauthorised writers, no record, DNS outage, and customer onboarding from `pending` to
//! `active` with exactly the records the tool prints.

use std::sync::Arc;

use alloy::node_bindings::AnvilInstance;
use alloy::primitives::Address;
use mailstamp::chain::{self, Chain};
use mailstamp::config::{ChainConfig, Confirmations};
use mailstamp::dns::Authority;
use mailstamp::stamping::{self, StampContext};
use mailstamp::store::Store;
use mailstamp::util;
use mailstamp::verifying::{self, VerifyContext};
use mailstamp_core::writers::WriterRecord;
use mailstamp_core::{Envelope, Policy, Selection, Verdict};

use crate::dnsfix::DnsServer;
use crate::harness::{TempDir, anvil, corpus, key_hex, mailstamp, signer};

const RCPT: &str = "bob@b.example";
const PROVIDER: usize = 0;
const OLD: usize = 1;
const NEW: usize = 2;
const ATTACKER: usize = 5;

fn rec(ws: &[Address]) -> String {
    WriterRecord::format(&ws.iter().map(|w| w.0.0).collect::<Vec<_>>())
}

/// A corpus message with its From replaced by `from` (the rest is real mail).
fn mail_from(i: usize, from: &str) -> Vec<u8> {
    let (_, raw) = &corpus()[i];
    let msg = mailstamp_core::parse(raw).unwrap();
    let h = msg
        .headers()
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case("From"))
        .unwrap();
    let (a, b) = (h.offset_start() as usize, h.offset_end() as usize);
    [
        &raw[..a],
        format!(" Alice <{from}>\n").as_bytes(),
        &raw[b..],
    ]
    .concat()
}

struct World {
    a: AnvilInstance,
    registry: Address,
    dns: DnsServer,
}

async fn world() -> World {
    let a = anvil();
    let registry = chain::deploy(
        &a.endpoint(),
        signer(&a, 0),
        true,
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap()
    .address;
    let w = |i| signer(&a, i).address();
    let lines = vec![
        format!(
            "acme._mailstamp.provider.example. 60 IN TXT \"{}\"",
            rec(&[w(PROVIDER)])
        ),
        "acme.mx.provider.example. 60 IN A 127.0.0.1".to_owned(),
        "_mailstamp.c1.example. 60 IN CNAME acme._mailstamp.provider.example.".to_owned(),
        "c1.example. 60 IN MX 10 acme.mx.provider.example.".to_owned(),
        // c2 rotates its key: two records, the old writer and the new one.
        format!("_mailstamp.c2.example. 60 IN TXT \"{}\"", rec(&[w(OLD)])),
        format!("_mailstamp.c2.example. 60 IN TXT \"{}\"", rec(&[w(NEW)])),
        "_mailstamp.c2.example. 60 IN TXT \"v=spf1 -all\"".to_owned(),
        format!(
            "_mailstamp.attacker.example. 60 IN TXT \"{}\"",
            rec(&[w(ATTACKER)])
        ),
    ];
    let origins = [
        "provider.example",
        "c1.example",
        "c2.example",
        "c3.example",
        "attacker.example",
        "nopolicy.example",
    ];
    let dns = DnsServer::start(&origins, &lines).await;
    World { a, registry, dns }
}

impl World {
    async fn writer(&self, i: usize) -> Chain {
        let cfg = ChainConfig {
            rpc_url: self.a.endpoint(),
            confirmations: Confirmations::Depth(1),
            timeout_secs: 5,
            ..Default::default()
        };
        Chain::connect(&cfg, self.registry, Some(signer(&self.a, i)))
            .await
            .unwrap()
    }
    fn authority(&self) -> Authority {
        Authority::new(&self.dns.config(), &Default::default()).unwrap()
    }
    fn stamping(&self, check_writer: bool) -> StampContext {
        StampContext {
            selection: Selection::default(),
            authority: self.authority(),
            check_writer,
            active_only: None,
        }
    }
    fn verifying(&self) -> VerifyContext {
        VerifyContext {
            authority: self.authority(),
            trusted: vec![self.registry],
            policy: Policy::default(),
            now: Some(util::now()),
            patience: Default::default(),
        }
    }
    /// Writer `i` stamps corpus message `n` sent as `from`, checking its own authorisation first
    /// when `check`.
    async fn stamp_as(
        &self,
        i: usize,
        check: bool,
        n: usize,
        from: &str,
    ) -> mailstamp::Result<stamping::Stamped> {
        stamping::stamp(
            &self.writer(i).await,
            &self.stamping(check),
            &mail_from(n, from),
            &env(),
        )
        .await
    }
    async fn verdict(&self, msg: &[u8]) -> (Verdict, String) {
        let c = self.writer(PROVIDER).await;
        let r = verifying::verify(Ok(&c), &self.verifying(), msg, &env()).await;
        let auth = r
            .writer_auth
            .as_ref()
            .map(|a| a.as_str())
            .unwrap_or("-")
            .to_owned();
        (
            r.verdict,
            format!("{auth}: {}", r.reason.unwrap_or_default()),
        )
    }
}

fn env() -> Envelope {
    Envelope {
        rcpts: vec![RCPT.into()],
        client_ip: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_writers_the_from_domain_publishes_count() {
    let mut w = world().await;

    // The provider's writer, authorised through c1's CNAME into the provider zone.
    let s = w
        .stamp_as(PROVIDER, true, 3, "alice@c1.example")
        .await
        .unwrap();
    let (v, why) = w.verdict(&s.message).await;
    assert_eq!(v, Verdict::Wanted, "{why}");

    // An attacker with a perfectly valid stamp of its own, claiming c1.example: spam.
    let forged = w
        .stamp_as(ATTACKER, false, 4, "ceo@c1.example")
        .await
        .unwrap();
    let (v, why) = w.verdict(&forged.message).await;
    assert_eq!(v, Verdict::Spam, "{why}");
    assert!(why.contains("unauthorised-writer"), "{why}");
    // …and the agent itself refuses to write such a stamp when it checks (the default).
    let e = w
        .stamp_as(ATTACKER, true, 4, "ceo@c1.example")
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("refusing to stamp for `c1.example`"),
        "{e:#}"
    );
    // The attacker's own domain lists the attacker: that stamp is fine, and proves only that.
    let own = w
        .stamp_as(ATTACKER, true, 4, "x@attacker.example")
        .await
        .unwrap();
    assert_eq!(w.verdict(&own.message).await.0, Verdict::Wanted);

    // Rotation window: the old and the new writer both pass; a third does not.
    for (i, want) in [
        (OLD, Verdict::Wanted),
        (NEW, Verdict::Wanted),
        (PROVIDER, Verdict::Spam),
    ] {
        let s = w.stamp_as(i, false, 5, "bob@c2.example").await.unwrap();
        let (v, why) = w.verdict(&s.message).await;
        assert_eq!(v, want, "writer {i}: {why}");
    }

    // No record at all: a distinct result that never counts as wanted; stamping refuses.
    let s = w
        .stamp_as(PROVIDER, false, 6, "x@nopolicy.example")
        .await
        .unwrap();
    let (v, why) = w.verdict(&s.message).await;
    assert_eq!(v, Verdict::Suspect, "{why}");
    assert!(why.starts_with("none:"), "{why}");
    let e = w
        .stamp_as(PROVIDER, true, 6, "x@nopolicy.example")
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("publish _mailstamp.nopolicy.example TXT"),
        "{e:#}"
    );

    // DNS goes away: temperror, never spam; stamping asks to retry.
    let good = mail_from(3, "alice@c1.example");
    let s = stamping::stamp(&w.writer(PROVIDER).await, &w.stamping(true), &good, &env())
        .await
        .unwrap();
    w.dns.stop().await;
    let (v, why) = w.verdict(&s.message).await;
    assert_eq!(v, Verdict::Temperror, "{why}");
    let e = stamping::stamp(&w.writer(PROVIDER).await, &w.stamping(true), &good, &env())
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("retry later"), "{e:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_domain_goes_from_onboard_add_to_active_with_the_printed_records() {
    let w = world().await;
    let dir = TempDir::new("onboard");
    let store = dir.0.join("state.sqlite");
    let cfg = dir.0.join("provider.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dns]\nnameservers = [\"{}\"]\ntimeout_secs = 1\nattempts = 1\n\n[store]\npath = \"{}\"\n\n\
             [provider]\nenabled = true\nzone = \"provider.example\"\nmail_host_addresses = [\"127.0.0.1\"]\n",
            w.dns.addr,
            store.display()
        ),
    )
    .unwrap();
    let key = key_hex(&w.a, PROVIDER);
    let run = |args: Vec<String>| {
        let cfg = cfg.clone();
        let key = key.clone();
        tokio::task::spawn_blocking(move || {
            let mut full = vec!["--config".to_owned(), cfg.to_string_lossy().into_owned()];
            full.extend(args);
            let refs: Vec<&str> = full.iter().map(String::as_str).collect();
            mailstamp(&refs, &[("MAILSTAMP_PRIVATE_KEY", key.as_str())], None)
        })
    };
    let args = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();

    let o = run(args("onboard add C3.example --account acme"))
        .await
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let printed: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(|l| l.trim().to_owned())
        .collect();
    assert_eq!(printed.len(), 2, "{out}");
    assert!(
        printed[0].starts_with("c3.example. 3600 IN MX 10 acme.mx.provider.example."),
        "{out}"
    );
    assert!(
        printed[1]
            .starts_with("_mailstamp.c3.example. 3600 IN CNAME acme._mailstamp.provider.example.")
    );

    // Nothing published yet: verify names both missing records and the domain stays pending.
    let o = run(args("onboard verify c3.example")).await.unwrap();
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains("no MX record; publish: c3.example. 3600 IN MX 10 acme.mx.provider.example."),
        "{err}"
    );
    assert!(
        err.contains("no writer CNAME; publish: _mailstamp.c3.example."),
        "{err}"
    );

    // Provider mode refuses to stamp for a pending domain.
    let st = Arc::new(Store::open(&store).unwrap());
    let ctx = StampContext {
        active_only: Some(st.clone()),
        ..w.stamping(true)
    };
    let e = stamping::stamp(
        &w.writer(PROVIDER).await,
        &ctx,
        &mail_from(8, "ann@c3.example"),
        &env(),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("not an active customer domain"),
        "{e:#}"
    );

    // Publish only the MX: verify names the writer CNAME alone.
    w.dns.add(&printed[0]).await;
    let o = run(args("onboard verify c3.example")).await.unwrap();
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !err.contains("MX") && err.contains("no writer CNAME"),
        "{err}"
    );

    // Publish the CNAME exactly as printed: active.
    w.dns.add(&printed[1]).await;
    let o = run(args("onboard verify c3.example")).await.unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(args("onboard list --json")).await.unwrap();
    let row: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    assert_eq!(row["status"], "active");
    assert_eq!(row["account"], "acme");

    // The provider side: `onboard zone` lists the account's mail host and writer record, and
    // the writer record served from those lines authorises the provider for c3.example.
    let o = run(args("onboard zone")).await.unwrap();
    let zone = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        zone.contains("acme.mx.provider.example. 3600 IN A 127.0.0.1"),
        "{zone}"
    );
    let txt = zone.lines().find(|l| l.contains(" TXT ")).unwrap();
    assert!(
        txt.contains(&format!("{:#x}", signer(&w.a, PROVIDER).address())),
        "{zone}"
    );

    // Now stamping for c3.example works and the receiver finds the writer through the CNAME.
    let s = stamping::stamp(
        &w.writer(PROVIDER).await,
        &ctx,
        &mail_from(8, "ann@c3.example"),
        &env(),
    )
    .await
    .unwrap();
    let (v, why) = w.verdict(&s.message).await;
    assert_eq!(v, Verdict::Wanted, "{why}");
    // Other domains stay refused in provider mode.
    let e = stamping::stamp(
        &w.writer(PROVIDER).await,
        &ctx,
        &mail_from(8, "x@c2.example"),
        &env(),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("not an active customer domain"),
        "{e:#}"
    );

    let o = run(args("onboard remove c3.example")).await.unwrap();
    assert!(o.status.success());
    assert!(!st.is_active("c3.example").unwrap());
}
