// SPDX-License-Identifier: GPL-3.0-or-later
//! The agent library against a real anvil: deploy, stamp, confirmations, chain outage,
//! untrusted registries, write-once records.

use alloy::node_bindings::AnvilInstance;
use alloy::primitives::{Address, B256, FixedBytes};
use alloy::providers::{Provider, ProviderBuilder};
use mailstamp::chain::{self, Chain};
use mailstamp::config::{ChainConfig, Confirmations};
use mailstamp::stamping::{self, StampContext};
use mailstamp::util;
use mailstamp::verifying::{self, VerifyContext};
use mailstamp_core::{Envelope, Policy, Selection, Verdict};

use crate::harness::{anvil, authority, corpus, corpus_trust, signer, tamper_body};

const RCPT: &str = "bob@b.example";

fn cfg(url: &str, confirmations: Confirmations) -> ChainConfig {
    ChainConfig {
        rpc_url: url.to_owned(),
        confirmations,
        timeout_secs: 5,
        ..ChainConfig::default()
    }
}

fn env(r: &str) -> Envelope {
    Envelope {
        rcpts: vec![r.to_owned()],
        client_ip: None,
    }
}

const T: std::time::Duration = std::time::Duration::from_secs(5);

/// Deploys the registry with account `i` (CREATE2 unless `plain`).
async fn deploy(a: &AnvilInstance, i: usize, plain: bool) -> chain::Deployed {
    chain::deploy(&a.endpoint(), signer(a, i), !plain, T)
        .await
        .unwrap()
}

/// Connects to `registry`, as writer account `i` when given, counting records `depth` deep.
async fn connect(a: &AnvilInstance, registry: Address, writer: Option<usize>, depth: u64) -> Chain {
    let s = writer.map(|i| signer(a, i));
    Chain::connect(
        &cfg(&a.endpoint(), Confirmations::Depth(depth)),
        registry,
        s,
    )
    .await
    .unwrap()
}

/// Verification trusting `registry`, with writer account 0 pinned for every corpus domain.
fn ctx(a: &AnvilInstance, registry: Address) -> VerifyContext {
    VerifyContext {
        authority: authority(&corpus_trust(signer(a, 0).address())),
        trusted: vec![registry],
        policy: Policy::default(),
        now: Some(util::now()),
        patience: Default::default(),
    }
}

/// Stamping as writer account `i`, which the trust map pins for every corpus domain.
fn sctx(a: &AnvilInstance, i: usize) -> StampContext {
    StampContext {
        selection: Selection::default(),
        authority: authority(&corpus_trust(signer(a, i).address())),
        check_writer: true,
        active_only: None,
    }
}

#[tokio::test]
async fn deploy_is_deterministic_and_idempotent() {
    let a = anvil();
    let d1 = deploy(&a, 0, false).await;
    assert_eq!(d1.address, chain::predicted_address());
    assert!(!d1.already_deployed && d1.tx.is_some());
    let d2 = deploy(&a, 1, false).await;
    assert_eq!(d2.address, d1.address);
    assert!(d2.already_deployed && d2.tx.is_none());
    let c = connect(&a, d1.address, None, 1).await;
    assert_eq!(c.check_registry().await.unwrap(), "1.2.0");
}

#[tokio::test]
async fn corpus_sample_round_trips_on_chain_and_tampering_never_passes() {
    let a = anvil();
    let d = deploy(&a, 0, false).await;
    let c = connect(&a, d.address, Some(0), 1).await;
    let sample: Vec<_> = corpus().into_iter().step_by(151).collect(); // 41 messages, all groups
    assert!(sample.len() >= 40);
    let (mut wanted, mut tampered, mut tampered_wanted, mut replay_wanted) = (0, 0, 0, 0);
    for (name, raw) in &sample {
        let s = stamping::stamp(&c, &sctx(&a, 0), raw, &env(RCPT))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let r = verifying::verify(Ok(&c), &ctx(&a, d.address), &s.message, &env(RCPT)).await;
        if r.verdict == Verdict::Wanted {
            wanted += 1;
        } else {
            eprintln!("{name}: {:?} {:?}", r.verdict, r.reason);
        }
        if let Some(t) = tamper_body(&s.message) {
            tampered += 1;
            if verifying::verify(Ok(&c), &ctx(&a, d.address), &t, &env(RCPT))
                .await
                .verdict
                == Verdict::Wanted
            {
                tampered_wanted += 1;
            }
        }
        if verifying::verify(
            Ok(&c),
            &ctx(&a, d.address),
            &s.message,
            &env("eve@b.example"),
        )
        .await
        .verdict
            == Verdict::Wanted
        {
            replay_wanted += 1;
        }
    }
    eprintln!(
        "on chain: {wanted}/{} wanted; tampered {tampered_wanted}/{tampered} wanted",
        sample.len()
    );
    assert_eq!(wanted, sample.len());
    assert!(
        tampered * 10 >= sample.len() * 9,
        "too few messages could be tampered: {tampered}"
    );
    assert_eq!(tampered_wanted, 0);
    assert_eq!(replay_wanted, 0);
}

#[tokio::test]
async fn depth_and_outage_give_temperror_never_spam() {
    let a = anvil();
    let d = deploy(&a, 0, false).await;
    let writer = connect(&a, d.address, Some(0), 1).await;
    let (_, raw) = &corpus()[7];
    let s = stamping::stamp(&writer, &sctx(&a, 0), raw, &env(RCPT))
        .await
        .unwrap();

    let deep = connect(&a, d.address, None, 3).await;
    let vctx = ctx(&a, d.address);
    let r = verifying::verify(Ok(&deep), &vctx, &s.message, &env(RCPT)).await;
    assert_eq!(r.verdict, Verdict::Temperror, "{:?}", r.reason);
    assert!(r.reason.unwrap().contains("not confirmed"));

    let p = ProviderBuilder::new().connect_http(a.endpoint_url());
    let _: serde_json::Value = p.raw_request("anvil_mine".into(), (2u64,)).await.unwrap();
    let r = verifying::verify(Ok(&deep), &vctx, &s.message, &env(RCPT)).await;
    assert_eq!(r.verdict, Verdict::Wanted, "{:?}", r.reason);
    let (_, raw2) = &corpus()[8];
    let s2 = stamping::stamp(&writer, &sctx(&a, 0), raw2, &env(RCPT))
        .await
        .unwrap();

    drop(a); // the chain goes away
    // A confirmed record never changes: the one already seen is answered from the cache…
    let r = verifying::verify(Ok(&deep), &vctx, &s.message, &env(RCPT)).await;
    assert_eq!(r.verdict, Verdict::Wanted, "{:?}", r.reason);
    // …one never seen needs the chain: temperror, never spam.
    let r = verifying::verify(Ok(&deep), &vctx, &s2.message, &env(RCPT)).await;
    assert_eq!(r.verdict, Verdict::Temperror, "{:?}", r.reason);
    assert!(r.reason.unwrap().contains("chain unavailable"));
    // A fresh connection has no cache: the chain is needed for the first one too.
    let down = mailstamp::Error::msg("connection refused");
    let r = verifying::verify(Err(&down), &vctx, &s.message, &env(RCPT)).await;
    assert_eq!(r.verdict, Verdict::Temperror);
}

#[tokio::test]
async fn foreign_registry_chain_and_forged_records() {
    let a = anvil();
    let d = deploy(&a, 0, false).await;
    // A second registry (plain CREATE) that the verifier does not trust.
    let rogue = deploy(&a, 2, true).await;
    assert_ne!(rogue.address, d.address);
    let rogue_writer = connect(&a, rogue.address, Some(2), 1).await;
    let (_, raw) = &corpus()[11];
    let s = stamping::stamp(&rogue_writer, &sctx(&a, 2), raw, &env(RCPT))
        .await
        .unwrap();
    let verifier = connect(&a, d.address, None, 1).await;
    let r = verifying::verify(Ok(&verifier), &ctx(&a, d.address), &s.message, &env(RCPT)).await;
    assert_eq!(r.verdict, Verdict::Invalid);
    assert!(r.reason.unwrap().contains("not trusted"));

    // A header whose record does not exist (made up by a forger) is spam, not temperror.
    let honest = connect(&a, d.address, Some(0), 1).await;
    let s = stamping::stamp(&honest, &sctx(&a, 0), raw, &env(RCPT))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&s.message).into_owned();
    // Same header, other writer: the record under (other writer, token) does not exist.
    let other = alloy::hex::encode(signer(&a, 3).address());
    let mine = alloy::hex::encode(signer(&a, 0).address());
    assert!(text.contains(&mine));
    let forged = text.replacen(&mine, &other, 1);
    let r = verifying::verify(
        Ok(&verifier),
        &ctx(&a, d.address),
        forged.as_bytes(),
        &env(RCPT),
    )
    .await;
    assert_eq!(r.verdict, Verdict::Spam, "{:?}", r.reason);
}

#[tokio::test]
async fn a_record_is_write_once_and_the_error_is_decoded() {
    let a = anvil();
    let d = deploy(&a, 0, false).await;
    let c = connect(&a, d.address, Some(0), 1).await;
    let token = B256::repeat_byte(7);
    c.stamp(token, FixedBytes::repeat_byte(1)).await.unwrap();
    let e = c
        .stamp(token, FixedBytes::repeat_byte(2))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("AlreadyStamped"), "{e}");
    let e = c
        .stamp(B256::repeat_byte(8), FixedBytes::ZERO)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("ZeroCommitment"), "{e}");
    // The first record is still there, unchanged.
    match c
        .lookup(signer(&a, 0).address(), chain::RecordKey::Stamp(token))
        .await
    {
        mailstamp_core::Lookup::Found { commitment, .. } => assert_eq!(commitment, [1u8; 24]),
        other => panic!("{other:?}"),
    }
}

/// `raw` with its From field (the one mail-parser reads) replaced by `From: value`.
fn with_from(raw: &[u8], value: &str) -> Vec<u8> {
    let msg = mailstamp_core::parse(raw).unwrap();
    let h = msg
        .headers()
        .iter()
        .rev()
        .find(|h| h.name().eq_ignore_ascii_case("From"))
        .unwrap();
    let eol = mailstamp_core::stamp::line_ending(raw);
    let (start, end) = (h.offset_field() as usize, h.offset_end() as usize);
    [
        &raw[..start],
        format!("From: {value}{eol}").as_bytes(),
        &raw[end..],
    ]
    .concat()
}

/// Issue 12's two measured attacks, through the agent's own stamping (its default
/// `stamp.components`) and verification against anvil: the display name changed to
/// "PayPal Support" with the address kept, and a second From above the real one.
#[tokio::test]
async fn a_spoofed_display_name_or_a_second_from_is_never_wanted_on_chain() {
    let a = anvil();
    let d = deploy(&a, 0, false).await;
    let c = connect(&a, d.address, Some(0), 1).await;
    let sctx = StampContext {
        selection: mailstamp::config::StampConfig::default().selection(),
        ..sctx(&a, 0)
    };
    let (mut n, mut spoof_wanted, mut second_wanted) = (0, 0, 0);
    for (name, raw) in corpus().into_iter().step_by(301) {
        let Ok(s) = stamping::stamp(&c, &sctx, &raw, &env(RCPT)).await else {
            continue;
        };
        n += 1;
        let v = |m: Vec<u8>| {
            let ctx = ctx(&a, d.address);
            let c = &c;
            async move { verifying::verify(Ok(c), &ctx, &m, &env(RCPT)).await }
        };
        let r = v(s.message.clone()).await;
        assert_eq!(r.verdict, Verdict::Wanted, "{name}: {:?}", r.reason);
        let addr =
            mailstamp_core::component::from_address(&mailstamp_core::parse(&s.message).unwrap());
        let r = v(with_from(
            &s.message,
            &format!("\"PayPal Support\" <{addr}>"),
        ))
        .await;
        if r.verdict == Verdict::Wanted {
            spoof_wanted += 1;
            eprintln!("{name}: spoofed display name wanted");
        }
        let i = s.message.windows(6).position(|w| w == b"\nFrom:").unwrap() + 1;
        let eol = mailstamp_core::stamp::line_ending(&s.message);
        let second = [
            &s.message[..i],
            format!("From: \"PayPal Support\" <service@paypal.example>{eol}").as_bytes(),
            &s.message[i..],
        ]
        .concat();
        if v(second).await.verdict == Verdict::Wanted {
            second_wanted += 1;
            eprintln!("{name}: second From wanted");
        }
    }
    assert!(n >= 15, "only {n} stamped");
    assert_eq!((spoof_wanted, second_wanted), (0, 0), "of {n}");
}
