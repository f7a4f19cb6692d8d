// SPDX-License-Identifier: GPL-3.0-or-later
//! Trust no single RPC endpoint (issue 14, docs/PROTOCOL.md §6): a real anvil with a block
//! clock behind lying proxies. For each lie — a forged `eth_call` answer, a forged
//! `eth_getProof` value, one altered proof node, another state root or block hash, a lie about
//! `finalized`, a stall — `call` mode with the liar as its one endpoint is fooled (the risk,
//! shown), while `proof` mode, or a 2-of-3 quorum with one liar, never finds a forged or a
//! missing record: the answer is `temperror` with the reason named, and real records still
//! verify. Writes reach the chain through any one honest endpoint, and reads fail over.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::node_bindings::AnvilInstance;
use alloy::primitives::{Address, B256, FixedBytes, keccak256};
use alloy::transports::http::reqwest;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use mailstamp::chain::{self, Chain, RecordKey};
use mailstamp::config::{ChainConfig, Confirmations, ReadMode};
use mailstamp_core::Lookup;
use serde_json::Value;

use crate::harness::{anvil_clocked, signer};

/// What a proxy does to the answers it passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lie {
    /// Nothing: an honest endpoint.
    None,
    /// Every `getStamp` / `getAnchor` call answers the forged record.
    ForgeCall,
    /// Every storage proof's value is the forged record.
    ForgeProofValue,
    /// One byte of the last account-proof node flipped.
    AlterProofNode,
    /// Blocks carry another state root (the hash left as it was).
    OtherStateRoot,
    /// Blocks carry another hash.
    OtherBlockHash,
    /// `finalized` is the head (a deeper chain is claimed than the others have).
    FinalIsHead,
    /// No answer at all.
    Stall,
    /// `eth_sendRawTransaction` answered with a made-up hash, never passed on.
    SwallowSends,
}

/// The forged record: this commitment, at this time.
const FORGED: [u8; 24] = [0x5a; 24];

struct Proxy {
    url: String,
    lie: Arc<Mutex<Lie>>,
    /// JSON-RPC calls passed on, by method.
    calls: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    fn set(&self, lie: Lie) {
        *self.lie.lock().unwrap() = lie;
    }

    fn count(&self, method: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|m| *m == method)
            .count()
    }
}

async fn proxy(upstream: String, lie: Lie) -> Proxy {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let lie = Arc::new(Mutex::new(lie));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let client = reqwest::Client::new();
    let (l2, c2) = (lie.clone(), calls.clone());
    let task = tokio::spawn(async move {
        while let Ok((conn, _)) = l.accept().await {
            let (lie, calls, client, upstream) =
                (l2.clone(), c2.clone(), client.clone(), upstream.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (lie, calls, client, upstream) =
                        (lie.clone(), calls.clone(), client.clone(), upstream.clone());
                    async move {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        let body = body.unwrap_or_default();
                        let out = answer(&client, &upstream, &body, &lie, &calls).await;
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(out)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                    .await;
            });
        }
    });
    Proxy {
        url,
        lie,
        calls,
        task,
    }
}

/// Passes one HTTP body of JSON-RPC (a call or a batch) to anvil and lies about the answer.
async fn answer(
    client: &reqwest::Client,
    upstream: &str,
    body: &[u8],
    lie: &Mutex<Lie>,
    calls: &Mutex<Vec<String>>,
) -> Vec<u8> {
    let lie = *lie.lock().unwrap();
    if lie == Lie::Stall {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let reqs: Vec<Value> = match &req {
        Value::Array(v) => v.clone(),
        one => vec![one.clone()],
    };
    {
        let mut c = calls.lock().unwrap();
        for r in &reqs {
            c.push(r["method"].as_str().unwrap_or("").to_owned());
        }
    }
    if lie == Lie::SwallowSends && reqs.iter().any(|r| r["method"] == "eth_sendRawTransaction") {
        let made_up = Value::String(format!("{}", B256::repeat_byte(0x11)));
        let out: Vec<Value> = reqs
            .iter()
            .map(|r| serde_json::json!({"jsonrpc": "2.0", "id": r["id"], "result": made_up}))
            .collect();
        return serde_json::to_vec(&if req.is_array() {
            Value::Array(out)
        } else {
            out[0].clone()
        })
        .unwrap();
    }
    // `finalized` asked as the head: the liar claims the head is final.
    let mut sent = req.clone();
    if lie == Lie::FinalIsHead {
        for r in as_list(&mut sent) {
            if r["method"] == "eth_getBlockByNumber" && r["params"][0] == "finalized" {
                r["params"][0] = Value::String("latest".into());
            }
        }
    }
    let resp = client
        .post(upstream)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&sent).unwrap())
        .send()
        .await;
    let Ok(resp) = resp else {
        return b"{}".to_vec();
    };
    let bytes = resp.bytes().await.unwrap_or_default();
    let mut v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let methods: Vec<(Value, String, Value)> = reqs
        .iter()
        .map(|r| {
            (
                r["id"].clone(),
                r["method"].as_str().unwrap_or("").to_owned(),
                r["params"].clone(),
            )
        })
        .collect();
    for r in as_list(&mut v) {
        let Some((_, method, params)) = methods.iter().find(|(id, _, _)| *id == r["id"]) else {
            continue;
        };
        tell_a_lie(lie, method, params, &mut r["result"]);
    }
    serde_json::to_vec(&v).unwrap()
}

fn as_list(v: &mut Value) -> Vec<&mut Value> {
    match v {
        Value::Array(a) => a.iter_mut().collect(),
        one => vec![one],
    }
}

fn selector(sig: &str) -> String {
    format!("0x{}", alloy::hex::encode(&keccak256(sig)[..4]))
}

fn tell_a_lie(lie: Lie, method: &str, params: &Value, result: &mut Value) {
    let word = forged_word();
    match (lie, method) {
        (Lie::ForgeCall, "eth_call") => {
            let data = params[0]["input"]
                .as_str()
                .or(params[0]["data"].as_str())
                .unwrap_or("");
            let reads = [
                selector("getStamp(address,bytes32)"),
                selector("getAnchor(address,bytes32)"),
            ];
            if reads.iter().any(|s| data.starts_with(s.as_str())) {
                // ABI: bytes24 left-aligned in its word, then the uint64 time.
                let mut out = [0u8; 64];
                out[..24].copy_from_slice(&FORGED);
                out[56..].copy_from_slice(&1_700_000_000u64.to_be_bytes());
                *result = Value::String(format!("0x{}", alloy::hex::encode(out)));
            }
        }
        (Lie::ForgeProofValue, "eth_getProof") => {
            if let Some(ps) = result["storageProof"].as_array_mut() {
                for p in ps {
                    p["value"] = Value::String(word.clone());
                }
            }
        }
        (Lie::AlterProofNode, "eth_getProof") => {
            if let Some(last) = result["accountProof"]
                .as_array_mut()
                .and_then(|a| a.last_mut())
            {
                let mut s = last.as_str().unwrap_or("0x00").to_owned();
                // Flip the last hex digit.
                let c = s.pop().unwrap_or('0');
                s.push(if c == '0' { '1' } else { '0' });
                *last = Value::String(s);
            }
        }
        (Lie::OtherStateRoot, "eth_getBlockByNumber" | "eth_getBlockByHash")
            if result.is_object() =>
        {
            result["stateRoot"] = Value::String(format!("{}", B256::repeat_byte(0x77)));
        }
        (Lie::OtherBlockHash, "eth_getBlockByNumber" | "eth_getBlockByHash")
            if result.is_object() =>
        {
            result["hash"] = Value::String(format!("{}", B256::repeat_byte(0x66)));
        }
        _ => {}
    }
}

/// The forged record as its storage word: time above, commitment in the low 24 bytes.
fn forged_word() -> String {
    let mut w = [0u8; 32];
    w[..8].copy_from_slice(&1_700_000_000u64.to_be_bytes());
    w[8..].copy_from_slice(&FORGED);
    format!("0x{}", alloy::hex::encode(w).trim_start_matches('0'))
}

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
    let registry = chain::deploy(&a.endpoint(), signer(&a, 0), true, Duration::from_secs(10))
        .await
        .unwrap()
        .address;
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
