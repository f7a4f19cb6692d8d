// SPDX-License-Identifier: GPL-3.0-or-later
//! Batched anchoring (issue 6) against a real anvil: one `anchor` for many stamps, every
//! message verifies through the same path as direct stamps, the registry's own `verifyStamp`
//! agrees with the agent's proofs, and a crash before or after anchoring loses nothing and
//! anchors nothing twice.

use alloy::primitives::{Address, B256, FixedBytes};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::Filter;
use alloy::sol_types::SolEvent;
use mailstamp::chain::{self, Chain, StampRegistry};
use mailstamp::config::{ChainConfig, Confirmations};
use mailstamp::stamping::{
    StampContext,
    batch::{self, BatchInput},
};
use mailstamp::store::Store;
use mailstamp::util;
use mailstamp::verifying::{self, VerifyContext};
use mailstamp_core::header::Mode;
use mailstamp_core::{Envelope, Inspection, Policy, Selection, Verdict, inspect, parse};

use crate::harness::{
    TempDir, anvil, authority, corpus, corpus_trust, key_hex, mailstamp, signer, tamper_body,
    trust_config_toml,
};

const RCPT: &str = "bob@b.example";

fn env() -> Envelope {
    Envelope {
        rcpts: vec![RCPT.into()],
        client_ip: None,
    }
}

async fn anchored_events(url: &str, registry: Address, batch: Option<B256>) -> usize {
    let p = ProviderBuilder::new().connect_http(url.parse().unwrap());
    let mut f = Filter::new()
        .address(registry)
        .event_signature(StampRegistry::Anchored::SIGNATURE_HASH)
        .from_block(0);
    if let Some(b) = batch {
        f = f.topic2(b);
    }
    p.get_logs(&f).await.unwrap().len()
}

#[tokio::test]
async fn one_anchor_for_a_batch_and_every_message_verifies() {
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
    let cfg = ChainConfig {
        rpc_url: a.endpoint(),
        confirmations: Confirmations::Depth(1),
        timeout_secs: 5,
        ..Default::default()
    };
    let c = Chain::connect(&cfg, registry, Some(signer(&a, 0)))
        .await
        .unwrap();
    let trust = corpus_trust(signer(&a, 0).address());
    let sctx = StampContext {
        selection: Selection::default(),
        authority: authority(&trust),
        check_writer: true,
        active_only: None,
    };
    let vctx = VerifyContext {
        authority: authority(&trust),
        trusted: vec![registry],
        policy: Policy::default(),
        now: Some(util::now()),
        patience: Default::default(),
    };
    let dir = TempDir::new("batch");
    let store = Store::open(&dir.0.join("state.sqlite")).unwrap();
    let inputs: Vec<BatchInput> = corpus()
        .into_iter()
        .step_by(97)
        .take(40)
        .enumerate()
        .map(|(i, (_, raw))| BatchInput {
            name: format!("m{i:02}.eml"),
            raw,
            env: env(),
        })
        .collect();
    let n = inputs.len();
    let nonce_before = c.provider_nonce().await;
    let out = batch::stamp_batch(&c, &sctx, &store, inputs, &dir.0)
        .await
        .unwrap();
    assert!(out.refused.is_empty(), "{:?}", out.refused);
    assert_eq!(out.size as usize, n);
    assert_eq!(
        c.provider_nonce().await,
        nonce_before + 1,
        "one transaction for the whole batch"
    );
    assert_eq!(
        anchored_events(&a.endpoint(), registry, Some(out.batch)).await,
        1
    );
    assert!(store.pending_batches().unwrap().is_empty());

    let reg = StampRegistry::new(
        registry,
        ProviderBuilder::new().connect_http(a.endpoint_url()),
    );
    let mut wanted = 0;
    for i in 0..n {
        let m = std::fs::read(dir.0.join(format!("m{i:02}.eml"))).unwrap();
        let r = verifying::verify(Ok(&c), &vctx, &m, &env()).await;
        if r.verdict == Verdict::Wanted {
            wanted += 1;
        }
        assert_eq!(
            r.stamp.as_ref().unwrap().batch.as_deref(),
            Some(out.batch.to_string().as_str())
        );
        // The registry's view agrees with the agent's proof, and refuses a wrong leaf.
        let msg = parse(&m).unwrap();
        let Inspection::Stamped(h) = inspect(&msg) else {
            panic!()
        };
        let Mode::Batch { proof, .. } = &h.mode else {
            panic!()
        };
        let proof: Vec<B256> = proof.iter().map(|p| B256::from(*p)).collect();
        let ok = reg
            .verifyStamp(
                signer(&a, 0).address(),
                out.batch,
                FixedBytes::from(h.commitment()),
                proof.clone(),
            )
            .call()
            .await
            .unwrap();
        assert!(ok, "message {i}: registry refuses the agent's proof");
        let bad = reg
            .verifyStamp(
                signer(&a, 0).address(),
                out.batch,
                FixedBytes::repeat_byte(1),
                proof,
            )
            .call()
            .await
            .unwrap();
        assert!(!bad);
        if let Some(t) = tamper_body(&m) {
            assert_ne!(
                verifying::verify(Ok(&c), &vctx, &t, &env()).await.verdict,
                Verdict::Wanted
            );
        }
    }
    assert_eq!(wanted, n, "every batched message verifies");
}

#[test]
fn a_crash_before_or_after_anchoring_loses_nothing_and_anchors_once() {
    let a = anvil();
    let url = a.endpoint();
    let key = key_hex(&a, 0);
    let o = mailstamp(
        &["deploy", "--json"],
        &[("MAILSTAMP_RPC_URL", &url), ("MAILSTAMP_PRIVATE_KEY", &key)],
        None,
    );
    assert!(o.status.success());
    let registry = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["address"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = TempDir::new("crash");
    let config = dir.0.join("mailstamp.toml");
    std::fs::write(&config, trust_config_toml(signer(&a, 0).address())).unwrap();
    let store = dir.0.join("state.sqlite");
    let (inbox, out) = (dir.0.join("in"), dir.0.join("out"));
    std::fs::create_dir_all(&inbox).unwrap();
    let mut files = Vec::new();
    for (i, (_, raw)) in corpus().into_iter().step_by(503).take(8).enumerate() {
        let p = inbox.join(format!("m{i}.eml"));
        std::fs::write(&p, raw).unwrap();
        files.push(p.to_string_lossy().into_owned());
    }
    let base = [
        ("MAILSTAMP_RPC_URL", url.as_str()),
        ("MAILSTAMP_PRIVATE_KEY", key.as_str()),
        ("MAILSTAMP_REGISTRY", registry.as_str()),
        ("MAILSTAMP_CONFIG", config.to_str().unwrap()),
        ("MAILSTAMP_STORE", store.to_str().unwrap()),
    ];
    let with_fault = |f: &'static str| {
        let mut e = base.to_vec();
        e.push(("MAILSTAMP_FAULT", f));
        e
    };
    let delivered = || {
        std::fs::read_dir(&out)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_file())
                    .count()
            })
            .unwrap_or(0)
    };
    let nonce = || {
        let o = std::process::Command::new(crate::harness::tool("cast"))
            .args([
                "nonce",
                "--rpc-url",
                &url,
                &format!("{:#x}", signer(&a, 0).address()),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let mut args = vec![
        "stamp",
        "--batch",
        "--rcpt",
        RCPT,
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend(files.iter().map(String::as_str));

    // 1. Crash after spooling, before the anchor is sent: nothing on chain, nothing lost.
    let n0 = nonce();
    let o = mailstamp(&args, &with_fault("before-anchor"), None);
    assert_eq!(
        o.status.code(),
        Some(86),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(nonce(), n0, "no transaction before the crash");
    assert_eq!(delivered(), 0, "nothing delivered before the anchor");
    let o = mailstamp(&["stamp", "--resume"], &base, None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("anchored now"));
    assert_eq!(nonce(), n0 + 1, "exactly one anchor");
    assert_eq!(delivered(), 8);

    // 2. Crash after the anchor is mined, before delivery: resume anchors nothing again.
    let out2 = dir.0.join("out2");
    let mut args2 = vec![
        "stamp",
        "--batch",
        "--rcpt",
        RCPT,
        "-o",
        out2.to_str().unwrap(),
    ];
    args2.extend(files.iter().map(String::as_str));
    let o = mailstamp(&args2, &with_fault("after-anchor"), None);
    assert_eq!(o.status.code(), Some(86));
    let n1 = nonce();
    assert_eq!(n1, n0 + 2);
    let o = mailstamp(&["stamp", "--resume"], &base, None);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("already anchored"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(nonce(), n1, "no second anchor for the same batch");
    let o = mailstamp(&["stamp", "--resume"], &base, None);
    assert!(String::from_utf8_lossy(&o.stdout).contains("no pending batch"));

    // Everything delivered verifies; the chain holds two anchors in all.
    for d in [&out, &out2] {
        let o = mailstamp(
            &["verify", "--rcpt", RCPT, "--json", d.to_str().unwrap()],
            &base,
            None,
        );
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
        assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 8);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(
        rt.block_on(anchored_events(&url, registry.parse().unwrap(), None)),
        2
    );
    // Audit of a batched message names its batch and checks its proof against the root.
    let f = std::fs::read_dir(&out2)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let o = mailstamp(&["audit", "--json", f.to_str().unwrap()], &base, None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["header_matches"], true, "{v}");
    assert!(v["batch"].is_string());
}
