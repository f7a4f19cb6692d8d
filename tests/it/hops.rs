// SPDX-License-Identifier: GPL-3.0-or-later
//! The receiver's walk of a hop chain (issue 13, docs/PROTOCOL.md §5c) through the agent's
//! verification: a real anvil holding every level's record, the DNS fixture publishing each
//! level's writer for its own domain, real corpus mail. a.example stamps (the agent's
//! `stamping::stamp`), b.example forwards it under a hop and lists.example sends it on with a
//! subject tag and a footer (each hop prepared with the core's `prepare_hop` and recorded with
//! its own writer), the receiver verifies with `verifying::verify` and `mailstamp verify`.
//! The forwarder side in the milter is not built yet: the hops here are made as it will make
//! them.

use alloy::primitives::{Address, B256, FixedBytes};
use mailstamp::chain::Chain;
use mailstamp::config::{ChainConfig, Confirmations};
use mailstamp::dns::Authority;
use mailstamp::session::results::ar_value;
use mailstamp::stamping::{self, StampContext};
use mailstamp::util;
use mailstamp::verifying::{self, VerifyContext};
use mailstamp_core::hops::{Change, HopSpec, insert_hop, prepare_hop};
use mailstamp_core::writers::WriterRecord;
use mailstamp_core::{ChainRef, Envelope, Policy, Selection, Verdict};

use crate::dnsfix::DnsServer;
use crate::harness::{TempDir, anvil, corpus, mailstamp, signer};

const A: usize = 1;
const B: usize = 2;
const LISTS: usize = 3;
const ATTACKER: usize = 4;

fn env(to: &str) -> Envelope {
    Envelope {
        rcpts: vec![to.into()],
        client_ip: None,
    }
}

/// A corpus message from Alice at a.example (the rest is real mail).
fn from_alice(i: usize) -> Vec<u8> {
    let (_, raw) = &corpus()[i];
    let msg = mailstamp_core::parse(raw).unwrap();
    let h = msg
        .headers()
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case("From"))
        .unwrap();
    let (a, b) = (h.offset_start() as usize, h.offset_end() as usize);
    [&raw[..a], b" Alice <alice@a.example>\n", &raw[b..]].concat()
}

struct World {
    a: alloy::node_bindings::AnvilInstance,
    registry: Address,
    dns: DnsServer,
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

    fn verifying(&self) -> VerifyContext {
        VerifyContext {
            authority: Authority::new(&self.dns.config(), &Default::default()).unwrap(),
            trusted: vec![self.registry],
            policy: Policy::default(),
            now: Some(util::now()),
            patience: Default::default(),
        }
    }

    /// Alice's message stamped at a.example for `to`.
    async fn stamped(&self, i: usize, to: &str) -> Vec<u8> {
        let ctx = StampContext {
            selection: Selection::default(),
            authority: Authority::new(&self.dns.config(), &Default::default()).unwrap(),
            check_writer: true,
            active_only: None,
        };
        stamping::stamp(&self.writer(A).await, &ctx, &from_alice(i), &env(to))
            .await
            .unwrap()
            .message
    }

    /// `sent` sent on by writer `i` under a hop for `domain`, received for `received_for`,
    /// now for `to`, declaring `changes`; recorded on chain unless `record` is false.
    async fn hop(
        &self,
        i: usize,
        sent: &[u8],
        spec: &HopSpec<'_>,
        to: &str,
        record: bool,
    ) -> Vec<u8> {
        let w = self.writer(i).await;
        let at = ChainRef {
            chain_id: w.chain_id,
            registry: self.registry.0.0,
            writer: signer(&self.a, i).address().0.0,
        };
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).unwrap();
        let msg = mailstamp_core::parse(sent).unwrap();
        let hop = prepare_hop(&msg, &env(to), salt, &at, &Selection::all(), spec).unwrap();
        if record {
            w.stamp(B256::from(hop.token), FixedBytes::from(hop.commitment))
                .await
                .unwrap();
        }
        insert_hop(sent, &hop.field)
    }

    async fn second_look(
        &self,
        raw: &[u8],
        to: &str,
        report: mailstamp_core::Report,
        others: &[String],
    ) -> mailstamp_core::Report {
        let c = self.writer(A).await;
        let parsed = verifying::parse(raw);
        verifying::second_look(
            Ok(&c),
            &self.verifying(),
            raw,
            parsed.as_ref(),
            &env(to),
            report,
            others,
        )
        .await
    }

    async fn verify(&self, raw: &[u8], to: &str) -> mailstamp_core::Report {
        let c = self.writer(A).await;
        verifying::verify(Ok(&c), &self.verifying(), raw, &env(to)).await
    }
}

async fn world() -> World {
    let a = anvil();
    let registry = mailstamp::chain::deploy(
        &a.endpoint(),
        signer(&a, 0),
        true,
        std::time::Duration::from_secs(10),
    )
    .await
    .unwrap()
    .address;
    let rec = |i: usize| WriterRecord::format(&[signer(&a, i).address().0.0]);
    let lines = vec![
        format!("_mailstamp.a.example. 60 IN TXT \"{}\"", rec(A)),
        format!("_mailstamp.b.example. 60 IN TXT \"{}\"", rec(B)),
        format!("_mailstamp.lists.example. 60 IN TXT \"{}\"", rec(LISTS)),
        format!("_mailstamp.evil.example. 60 IN TXT \"{}\"", rec(ATTACKER)),
    ];
    let dns = DnsServer::start(
        &["a.example", "b.example", "lists.example", "evil.example"],
        &lines,
    )
    .await;
    World { a, registry, dns }
}

fn says(r: &mailstamp_core::Report) -> String {
    format!("{:?}: {}", r.verdict, r.reason.as_deref().unwrap_or(""))
}

/// `footer` appended to a single-part plain-text message's body.
fn with_footer(raw: &[u8], footer: &[&str]) -> Vec<u8> {
    let mut out = raw.to_vec();
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.push(b'\n');
    for l in footer {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    out
}

/// `tag` put in front of the Subject's value.
fn tagged(raw: &[u8], tag: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw);
    let at = text.find("\nSubject:").expect("a Subject") + "\nSubject:".len();
    [&raw[..at], format!(" {tag}").as_bytes(), &raw[at..]].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_and_a_list_under_hops_are_wanted_and_their_copies_replayed_or_forged_are_not() {
    let w = world().await;

    // A plain forward without a hop is a replay to the receiver: not wanted (today's answer
    // for every forward, issue 13).
    let stamped = w.stamped(3, "bob@b.example").await;
    let r = w.verify(&stamped, "bob@b.example").await;
    assert_eq!(r.verdict, Verdict::Wanted, "{}", says(&r));
    let r = w.verify(&stamped, "bob@forward.example").await;
    assert_eq!(r.verdict, Verdict::Spam, "{}", says(&r));
    // A second look (what the milter, recover and the CLI do with a spam verdict): a sound
    // stamp not addressed here is `inapplicable`, not spam; stamped for bob's other address,
    // listed by bob, it is wanted.
    let looked = w
        .second_look(&stamped, "bob@forward.example", r.clone(), &[])
        .await;
    assert_eq!(looked.verdict, Verdict::Inapplicable, "{}", says(&looked));
    assert_eq!(
        looked.reason.as_deref(),
        Some("stamp does not apply: not addressed to this recipient")
    );
    let others = ["bob@b.example".to_owned()];
    let looked = w
        .second_look(&stamped, "bob@forward.example", r, &others)
        .await;
    assert_eq!(looked.verdict, Verdict::Wanted, "{}", says(&looked));
    assert!(
        looked
            .reason
            .as_deref()
            .is_some_and(|s| s.contains("other address bob@b.example")),
        "{}",
        says(&looked)
    );
    // A changed body is spam whatever the envelope: nothing to look at again.
    let altered = crate::harness::tamper_body(&stamped).expect("a body to alter");
    let r = w.verify(&altered, "bob@forward.example").await;
    let looked = w
        .second_look(&altered, "bob@forward.example", r, &others)
        .await;
    assert_eq!(looked.verdict, Verdict::Spam, "{}", says(&looked));

    // b.example forwards it to bob@forward.example under its hop: wanted, the forwarder named.
    let forward = HopSpec {
        changes: &[],
        domain: "b.example",
        received_for: "bob@b.example",
    };
    let fwd = w
        .hop(B, &stamped, &forward, "bob@forward.example", true)
        .await;
    let r = w.verify(&fwd, "bob@forward.example").await;
    assert_eq!(r.verdict, Verdict::Wanted, "{}", says(&r));
    assert_eq!(
        r.reason.as_deref(),
        Some("forwarded by b.example, author alice@a.example verified there")
    );
    assert_eq!(r.chain.len(), 2, "both levels reported");
    assert_eq!(r.chain[1].domain, "b.example");
    assert_eq!(r.author.as_deref(), Some("alice@a.example"));
    let ar = ar_value("mx.forward.example", &r, Some("a.example"), None);
    let origin = r.chain[0].stamp.as_ref().unwrap();
    assert!(ar.contains("mailstamp=pass (wanted"), "{ar}");
    assert!(
        ar.contains(&format!("policy.writer={}", origin.writer)),
        "the originator's record stays policy.*: {ar}"
    );
    assert!(
        ar.contains("policy.author=alice@a.example") && ar.contains("policy.hop2-domain=b.example"),
        "{ar}"
    );

    // A receiver that trusts only some forwarders (`[verify] forwarders`): b.example is not
    // one of them, so the good chain is at best suspect; listed, it is wanted again.
    let c = w.writer(A).await;
    for (trusted, want) in [
        ("lists.example", Verdict::Suspect),
        ("b.example", Verdict::Wanted),
    ] {
        let mut ctx = w.verifying();
        ctx.policy.forwarders = Some([trusted.to_owned()].into_iter().collect());
        let r = verifying::verify(Ok(&c), &ctx, &fwd, &env("bob@forward.example")).await;
        assert_eq!(r.verdict, want, "trusting {trusted}: {}", says(&r));
    }

    // The hop copy replayed to someone else fails at the top hop.
    let r = w.verify(&fwd, "eve@forward.example").await;
    assert_eq!(r.verdict, Verdict::Spam, "{}", says(&r));

    // A hop whose record is not on chain is not wanted (no grace here: spam at once).
    let unrecorded = w
        .hop(B, &stamped, &forward, "bob@forward.example", false)
        .await;
    let r = w.verify(&unrecorded, "bob@forward.example").await;
    assert_eq!(r.verdict, Verdict::Spam, "{}", says(&r));

    // A forged hop: the attacker's writer claims b.example, which does not list it.
    let forged = w
        .hop(ATTACKER, &stamped, &forward, "bob@forward.example", true)
        .await;
    let r = w.verify(&forged, "bob@forward.example").await;
    assert_eq!(r.verdict, Verdict::Spam, "{}", says(&r));

    // Two fields that are no chain (a second originator stamp on top): invalid.
    let twice = [&w.stamped(3, "bob@b.example").await[..], &stamped[..]].concat();
    let twice = {
        // The second message's header section on top of the first's whole message would not be
        // one message: keep only its Mail-Stamp field.
        let text = String::from_utf8_lossy(&twice).into_owned();
        let first = text.split("\nFrom:").next().unwrap().to_owned();
        let field_end = first.find("\n").unwrap();
        let mut field = first[..field_end + 1].to_owned();
        for l in first[field_end + 1..].lines() {
            if l.starts_with([' ', '\t']) {
                field.push_str(l);
                field.push('\n');
            } else {
                break;
            }
        }
        [field.as_bytes(), &stamped[..]].concat()
    };
    let r = w.verify(&twice, "bob@b.example").await;
    assert_eq!(r.verdict, Verdict::Invalid, "{}", says(&r));

    // A list: stamped for its address, sent on with a subject tag and a footer under the
    // list's hop — wanted "via list" at carol's; a copy whose footer the hop did not declare
    // is not.
    let plain = b"From: Alice <alice@a.example>\nTo: team@lists.example\nSubject: Plans for Q1\n\
        Date: Tue, 01 Dec 2026 10:00:00 +0000\nMessage-ID: <plans-1@a.example>\n\n\
        Hi all,\n\nthe plans for the first quarter are below.\n\nAlice\n";
    let ctx = StampContext {
        selection: Selection::default(),
        authority: Authority::new(&w.dns.config(), &Default::default()).unwrap(),
        check_writer: true,
        active_only: None,
    };
    let to_list = stamping::stamp(&w.writer(A).await, &ctx, plain, &env("team@lists.example"))
        .await
        .unwrap()
        .message;
    let footer = ["_______________", "team mailing list"];
    let sent = with_footer(&tagged(&to_list, "[team]"), &footer);
    let list = HopSpec {
        changes: &[
            Change::SubjectTag("[team]".into()),
            Change::Footer(footer.len() as u8),
        ],
        domain: "lists.example",
        received_for: "team@lists.example",
    };
    let copy = w.hop(LISTS, &sent, &list, "carol@c.example", true).await;
    let r = w.verify(&copy, "carol@c.example").await;
    assert_eq!(r.verdict, Verdict::Wanted, "{}", says(&r));
    assert!(
        r.reason
            .as_deref()
            .is_some_and(|s| s.starts_with("via list")),
        "{}",
        says(&r)
    );
    let undeclared = HopSpec {
        changes: &[Change::SubjectTag("[team]".into())],
        ..list
    };
    let sneaky = w
        .hop(LISTS, &sent, &undeclared, "carol@c.example", true)
        .await;
    let r = w.verify(&sneaky, "carol@c.example").await;
    assert_ne!(
        r.verdict,
        Verdict::Wanted,
        "an undeclared footer: {}",
        says(&r)
    );

    // The CLI walks the same chain and prints every level.
    let dir = TempDir::new("hops-cli");
    let cfg = dir.0.join("r.toml");
    std::fs::write(
        &cfg,
        format!(
            "[chain]\nrpc_url = \"{}\"\nregistry = \"{}\"\nconfirmations = 1\n\
             [dns]\nnameservers = [\"{}\"]\ntimeout_secs = 2\nattempts = 1\n\
             [store]\npath = \"{}\"\n",
            w.a.endpoint(),
            w.registry,
            w.dns.addr,
            dir.0.join("s.sqlite").display()
        ),
    )
    .unwrap();
    let file = dir.0.join("fwd.eml");
    std::fs::write(&file, &fwd).unwrap();
    let (cfg_s, file_s) = (cfg.display().to_string(), file.display().to_string());
    let out = tokio::task::spawn_blocking(move || {
        mailstamp(
            &[
                "--config",
                &cfg_s,
                "verify",
                "--json",
                "--grace",
                "0",
                "--rcpt",
                "bob@forward.example",
                &file_s,
            ],
            &[],
            None,
        )
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let report = if v.get("report").is_some() {
        &v["report"]
    } else {
        &v
    };
    assert_eq!(report["verdict"], "wanted", "{text}");
    assert_eq!(report["chain"].as_array().map(Vec::len), Some(2), "{text}");
    assert_eq!(report["chain"][1]["domain"], "b.example", "{text}");

    // `mailstamp verify` of the plain forward: inapplicable (exit 15) until bob lists his other
    // address with `mailstamp forwards`, then wanted (exit 0).
    let plain_fwd = dir.0.join("plain-fwd.eml");
    std::fs::write(&plain_fwd, &stamped).unwrap();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            mailstamp(&refs, &[], None)
        })
    };
    let cfg_s = cfg.display().to_string();
    let verify_args = vec![
        "--config".to_owned(),
        cfg_s.clone(),
        "verify".to_owned(),
        "--grace".to_owned(),
        "0".to_owned(),
        "--rcpt".to_owned(),
        "bob@forward.example".to_owned(),
        plain_fwd.display().to_string(),
    ];
    let out = run(verify_args.clone()).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(15), "{text}");
    assert!(text.contains("inapplicable"), "{text}");
    let out = run([
        "--config",
        &cfg_s,
        "forwards",
        "add",
        "--user",
        "bob@forward.example",
        "bob@b.example",
    ]
    .map(str::to_owned)
    .to_vec())
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(verify_args).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("other address bob@b.example"), "{text}");
}
