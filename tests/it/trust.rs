// SPDX-License-Identifier: GPL-3.0-or-later
//! Trust no single RPC endpoint (issue 14, docs/PROTOCOL.md §6): a real anvil with a block
//! clock behind lying proxies. For each lie — a forged `eth_call` answer, a forged
//! `eth_getProof` value, one altered proof node, another state root or block hash, a lie about
//! `finalized`, a stall — `call` mode with the liar as its one endpoint is fooled (the risk,
//! shown), while `proof` mode, or a 2-of-3 quorum with one liar, never finds a forged or a
//! missing record: the answer is `temperror` with the reason named, and real records still
//! verify. Writes reach the chain through any one honest endpoint, and reads fail over.

use std::time::Duration;

use alloy::node_bindings::AnvilInstance;
use alloy::primitives::{Address, B256, FixedBytes, keccak256};
use mailstamp::chain::{Chain, RecordKey};
use mailstamp::config::{ChainConfig, Confirmations, ReadMode};
use mailstamp_core::Lookup;

use crate::harness::{anvil_clocked, deploy_registry, signer};
use crate::lying_proxy::{FORGED, Lie, proxy};

fn cfg(urls: &[&str], quorum: usize, mode: ReadMode) -> ChainConfig {
    ChainConfig {
        rpc_url: urls[0].to_owned(),
        rpc_urls: urls.iter().map(|u| (*u).to_owned()).collect(),
        quorum,
        read_mode: mode,
        confirmations: Confirmations::Depth(2),
        timeout_secs: 5,
        failover_after_ms: 300,
        head_poll_ms: 200,
        ..ChainConfig::default()
    }
}

/// A clocked anvil with the registry, one real stamp and one real anchor, both confirmed.
struct World {
    a: AnvilInstance,
    registry: Address,
    writer: Address,
    stamp: (B256, FixedBytes<24>),
    anchor: (B256, FixedBytes<24>),
}

async fn world() -> World {
    let a = anvil_clocked(1);
    let registry = deploy_registry(&a).await;
    let c = Chain::connect(
        &cfg(&[&a.endpoint()], 1, ReadMode::Call),
        registry,
        Some(signer(&a, 1)),
    )
    .await
    .unwrap();
    let stamp = (keccak256("trust/stamp"), FixedBytes::from([0x21; 24]));
    let anchor = (keccak256("trust/anchor"), FixedBytes::from([0x42; 24]));
    c.stamp(stamp.0, stamp.1).await.unwrap();
    c.anchor(anchor.0, anchor.1, 3).await.unwrap();
    let writer = signer(&a, 1).address();
    // Confirmed at depth 2.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let l = c
        .lookup_until(writer, RecordKey::Batch(anchor.0), deadline)
        .await;
    assert!(matches!(l, Lookup::Found { .. }), "{l:?}");
    World {
        a,
        registry,
        writer,
        stamp,
        anchor,
    }
}

/// A token nobody recorded: the forger's.
fn forged_key() -> RecordKey {
    RecordKey::Stamp(keccak256("trust/never recorded"))
}

fn found(l: &Lookup, c: &FixedBytes<24>) -> bool {
    matches!(l, Lookup::Found { commitment, .. } if commitment == &c.0)
}

fn forged(l: &Lookup) -> bool {
    matches!(l, Lookup::Found { commitment, .. } if *commitment == FORGED)
}

async fn connect(w: &World, urls: &[&str], quorum: usize, mode: ReadMode) -> Chain {
    Chain::connect(&cfg(urls, quorum, mode), w.registry, None)
        .await
        .unwrap()
}

#[tokio::test]
async fn one_endpoint_in_call_mode_is_fooled_and_proof_mode_is_not() {
    let w = world().await;
    let liar = proxy(w.a.endpoint(), Lie::ForgeCall).await;

    // The risk: one endpoint's word is the verdict.
    let call = connect(&w, &[&liar.url], 1, ReadMode::Call).await;
    let l = call.lookup(w.writer, forged_key()).await;
    assert!(forged(&l), "call mode believes its endpoint: {l:?}");

    // Proof mode reads the slot and checks it: the forged eth_call answer is never asked, a
    // missing record is proven missing, a real one proven there.
    let proof = connect(&w, &[&liar.url], 1, ReadMode::Proof).await;
    let l = proof.lookup(w.writer, forged_key()).await;
    assert!(!forged(&l), "{l:?}");
    assert!(!matches!(l, Lookup::Found { .. }), "{l:?}");
    let real = proof.lookup(w.writer, RecordKey::Stamp(w.stamp.0)).await;
    assert!(found(&real, &w.stamp.1), "{real:?}");
    let real = proof.lookup(w.writer, RecordKey::Batch(w.anchor.0)).await;
    assert!(found(&real, &w.anchor.1), "{real:?}");
    assert!(liar.count("eth_getProof") >= 2);
}

#[tokio::test]
async fn proof_mode_with_one_lying_endpoint_never_finds_a_forged_record() {
    let w = world().await;
    let liar = proxy(w.a.endpoint(), Lie::None).await;
    let c = connect(&w, &[&liar.url], 1, ReadMode::Proof).await;
    // Exclusion proven: no record.
    let l = c.lookup(w.writer, forged_key()).await;
    assert_eq!(l, Lookup::NotFound);
    for (lie, why) in [
        (Lie::ForgeProofValue, "does not verify"),
        (Lie::AlterProofNode, "does not lead to the state root"),
        (Lie::OtherStateRoot, "does not hash to"),
        (Lie::OtherBlockHash, "does not hash to"),
    ] {
        liar.set(lie);
        // Past the agreed block's cache (chain.head_poll_ms).
        tokio::time::sleep(Duration::from_millis(250)).await;
        for key in [forged_key(), RecordKey::Stamp(w.stamp.0)] {
            let l = c.lookup(w.writer, key).await;
            match &l {
                Lookup::Unavailable(reason) => {
                    assert!(reason.contains(why), "{lie:?}: {reason}");
                }
                other => panic!("{lie:?}: expected temperror, got {other:?}"),
            }
        }
    }
    liar.set(Lie::None);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let real = c.lookup(w.writer, RecordKey::Stamp(w.stamp.0)).await;
    assert!(found(&real, &w.stamp.1), "honest again: {real:?}");
}

#[tokio::test]
async fn two_of_three_outvote_one_liar_in_either_mode() {
    let w = world().await;
    let honest1 = proxy(w.a.endpoint(), Lie::None).await;
    let honest2 = proxy(w.a.endpoint(), Lie::None).await;
    let liar = proxy(w.a.endpoint(), Lie::None).await;
    let urls = [
        liar.url.as_str(),
        honest1.url.as_str(),
        honest2.url.as_str(),
    ];
    for lie in [
        Lie::ForgeCall,
        Lie::OtherBlockHash,
        Lie::ForgeProofValue,
        Lie::AlterProofNode,
        Lie::Stall,
    ] {
        liar.set(lie);
        for mode in [ReadMode::Call, ReadMode::Proof] {
            let c = connect(&w, &urls, 2, mode).await;
            let l = c.lookup(w.writer, forged_key()).await;
            assert_eq!(l, Lookup::NotFound, "{lie:?} {mode:?}");
            let real = c.lookup(w.writer, RecordKey::Stamp(w.stamp.0)).await;
            assert!(found(&real, &w.stamp.1), "{lie:?} {mode:?}: {real:?}");
            let real = c.lookup(w.writer, RecordKey::Batch(w.anchor.0)).await;
            assert!(found(&real, &w.anchor.1), "{lie:?} {mode:?}: {real:?}");
        }
        liar.set(Lie::None);
    }
    // Two liars of three telling the same lie are a majority the quorum cannot see through in
    // call mode — but they cannot agree with the honest one, so with quorum 3 it is temperror.
    honest2.set(Lie::ForgeCall);
    liar.set(Lie::ForgeCall);
    let c = connect(&w, &urls, 3, ReadMode::Call).await;
    match c.lookup(w.writer, forged_key()).await {
        Lookup::Unavailable(reason) => {
            assert!(reason.contains("do not agree"), "{reason}");
            assert!(
                reason.contains(&honest1.url[7..]),
                "names the endpoints: {reason}"
            );
        }
        other => panic!("expected temperror, got {other:?}"),
    }
}

#[tokio::test]
async fn a_lie_about_finalized_moves_no_quorum() {
    let w = world().await;
    let honest1 = proxy(w.a.endpoint(), Lie::None).await;
    let honest2 = proxy(w.a.endpoint(), Lie::None).await;
    let liar = proxy(w.a.endpoint(), Lie::FinalIsHead).await;
    let urls = [
        liar.url.as_str(),
        honest1.url.as_str(),
        honest2.url.as_str(),
    ];
    let mut c = cfg(&urls, 2, ReadMode::Proof);
    c.confirmations = Confirmations::Tag(mailstamp::config::BlockTag::Finalized);
    let chain = Chain::connect(&c, w.registry, None).await.unwrap();
    // A record just written: at the head, not finalized yet (anvil with one slot per epoch
    // finalizes two blocks behind the head).
    let writer = Chain::connect(
        &cfg(&[&w.a.endpoint()], 1, ReadMode::Call),
        w.registry,
        Some(signer(&w.a, 2)),
    )
    .await
    .unwrap();
    let key = keccak256("trust/fresh");
    writer
        .stamp(key, FixedBytes::from([0x33; 24]))
        .await
        .unwrap();
    let me = signer(&w.a, 2).address();
    // The risk: the liar alone, in call mode, calls the fresh record final.
    let mut alone = cfg(&[&liar.url], 1, ReadMode::Call);
    alone.confirmations = c.confirmations.clone();
    let fooled = Chain::connect(&alone, w.registry, None).await.unwrap();
    let l = fooled.lookup(me, RecordKey::Stamp(key)).await;
    assert!(
        found(&l, &FixedBytes::from([0x33; 24])),
        "call mode believes it: {l:?}"
    );
    // The liar says the head is final; the quorum takes the second highest claim, the
    // honest one: the fresh record is not confirmed yet.
    let l = chain.lookup(me, RecordKey::Stamp(key)).await;
    assert_eq!(
        l,
        Lookup::Unconfirmed,
        "a minority's finalized is not believed"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let l = chain
        .lookup_until(me, RecordKey::Stamp(key), deadline)
        .await;
    assert!(found(&l, &FixedBytes::from([0x33; 24])), "{l:?}");
}

#[tokio::test]
async fn writes_reach_the_chain_past_a_swallowing_endpoint_and_reads_fail_over() {
    let w = world().await;
    let swallow = proxy(w.a.endpoint(), Lie::SwallowSends).await;
    let honest = proxy(w.a.endpoint(), Lie::None).await;
    // The swallower listed first: a signed transaction goes to both anyway.
    let c = Chain::connect(
        &cfg(&[&swallow.url, &honest.url], 1, ReadMode::Call),
        w.registry,
        Some(signer(&w.a, 3)),
    )
    .await
    .unwrap();
    let key = keccak256("trust/broadcast");
    let rec = tokio::time::timeout(
        Duration::from_secs(30),
        c.stamp(key, FixedBytes::from([0x44; 24])),
    )
    .await
    .expect("recorded in time")
    .expect("recorded");
    assert!(rec.block > 0);
    assert_eq!(honest.count("eth_sendRawTransaction"), 1);
    assert_eq!(swallow.count("eth_sendRawTransaction"), 1);

    // The first endpoint stalls: reads go to the second after chain.failover_after_ms.
    swallow.set(Lie::Stall);
    let before = honest.count("eth_call");
    let l = c
        .lookup_until(
            signer(&w.a, 3).address(),
            RecordKey::Stamp(key),
            tokio::time::Instant::now() + Duration::from_secs(20),
        )
        .await;
    assert!(found(&l, &FixedBytes::from([0x44; 24])), "{l:?}");
    assert!(
        honest.count("eth_call") > before,
        "the second endpoint answered"
    );
}

#[test]
fn corpus_messages_verify_wanted_through_the_binary_in_proof_mode_with_a_quorum() {
    use crate::harness::{
        TempDir, anvil, corpus, deploy_with_binary, key_hex, mailstamp, trust_config_toml,
    };
    let a = anvil();
    let url = a.endpoint();
    let key = key_hex(&a, 0);
    let registry = deploy_with_binary(&a);
    let dir = TempDir::new("trust-cli");
    let trust = trust_config_toml(signer(&a, 0).address());
    let stamp_cfg = dir.0.join("stamp.toml");
    std::fs::write(&stamp_cfg, &trust).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ps: Vec<_> = (0..3)
        .map(|_| rt.block_on(proxy(url.clone(), Lie::None)))
        .collect();
    let verify_cfg = dir.0.join("verify.toml");
    let urls: Vec<String> = ps.iter().map(|p| format!("\"{}\"", p.url)).collect();
    std::fs::write(
        &verify_cfg,
        format!(
            "[chain]\nrpc_urls = [{}]\nquorum = 2\n\n[verify]\nmode = \"proof\"\n\n{trust}",
            urls.join(", ")
        ),
    )
    .unwrap();
    for (_, raw) in corpus().into_iter().step_by(1201).take(3) {
        let env = [
            ("MAILSTAMP_RPC_URL", url.as_str()),
            ("MAILSTAMP_PRIVATE_KEY", key.as_str()),
            ("MAILSTAMP_REGISTRY", registry.as_str()),
            ("MAILSTAMP_CONFIG", stamp_cfg.to_str().unwrap()),
        ];
        let o = mailstamp(&["stamp", "--rcpt", "bob@b.example"], &env, Some(&raw));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let env = [
            ("MAILSTAMP_REGISTRY", registry.as_str()),
            ("MAILSTAMP_CONFIG", verify_cfg.to_str().unwrap()),
        ];
        let before: usize = ps.iter().map(|p| p.count("eth_getProof")).sum();
        let v = mailstamp(
            &["verify", "--rcpt", "bob@b.example", "--json"],
            &env,
            Some(&o.stdout),
        );
        let out: serde_json::Value = serde_json::from_slice(&v.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&v.stderr)));
        assert_eq!(out["verdict"], "wanted", "{out}");
        let after: usize = ps.iter().map(|p| p.count("eth_getProof")).sum();
        assert!(after > before, "the record was proven, not called");
    }
    drop(ps);
    drop(rt);
}
