// SPDX-License-Identifier: GPL-3.0-or-later
//! Fast recording and fast reads against a real anvil: a stamp stuck behind a raised base fee
//! is replaced (same nonce, higher fees) and mined once; many stamps in flight from one writer
//! get distinct nonces; concurrent lookups of different records share JSON-RPC batches
//! (counted by a small HTTP proxy in front of anvil) and answer as one-by-one lookups do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use alloy::consensus::Transaction as _;
use alloy::node_bindings::AnvilInstance;
use alloy::primitives::{Address, B256, FixedBytes, U256, keccak256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use mailstamp::chain::{self, Chain, RecordKey};
use mailstamp::config::{ChainConfig, Confirmations};
use mailstamp_core::Lookup;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{anvil, signer};

const GWEI: u128 = 1_000_000_000;

fn cfg(url: &str, depth: u64) -> ChainConfig {
    ChainConfig {
        rpc_url: url.to_owned(),
        confirmations: Confirmations::Depth(depth),
        timeout_secs: 5,
        ..ChainConfig::default()
    }
}

async fn deploy(a: &AnvilInstance) -> Address {
    chain::deploy(&a.endpoint(), signer(a, 0), true, Duration::from_secs(5))
        .await
        .unwrap()
        .address
}

fn raw(a: &AnvilInstance) -> DynProvider {
    ProviderBuilder::new()
        .connect_http(a.endpoint().parse().unwrap())
        .erased()
}

async fn rpc(p: &DynProvider, method: &'static str, params: serde_json::Value) {
    let _: serde_json::Value = p.raw_request(method.into(), params).await.unwrap();
}

fn token(tag: &str, i: usize) -> B256 {
    keccak256(format!("chain_fees/{tag}/{i}"))
}

fn commitment(i: usize) -> FixedBytes<24> {
    FixedBytes::from_slice(&keccak256(format!("commitment {i}"))[..24])
}

/// Mines a block every `every` until `stop` is set (the chain runs with automine off).
fn miner(p: DynProvider, every: Duration, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(every).await;
            rpc(&p, "evm_mine", serde_json::json!([])).await;
        }
    })
}

#[tokio::test]
async fn stuck_stamp_is_replaced_with_higher_fees_and_mined_once() {
    let a = anvil();
    let registry = deploy(&a).await;
    let mut c = cfg(&a.endpoint(), 1);
    c.replace_after_secs = 1;
    c.fee_bump_percent = 20;
    c.max_replacements = 5;
    let writer = Chain::connect(&c, registry, Some(signer(&a, 0)))
        .await
        .unwrap();
    let w = signer(&a, 0).address();
    let p = raw(&a);
    let nonce0 = p.get_transaction_count(w).await.unwrap();
    rpc(&p, "evm_setAutomine", serde_json::json!([false])).await;

    let (t, cm) = (token("stuck", 0), commitment(0));
    let sending = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.stamp_sent(t, cm).await })
    };
    // Wait until the first transaction is in the pool, then make the next block's base fee far
    // above what it offers and mine that block: the transaction cannot be included.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while p.get_transaction_count(w).pending().await.unwrap() == nonce0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stamp never reached the pool"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let high = U256::from(100 * GWEI);
    rpc(
        &p,
        "anvil_setNextBlockBaseFeePerGas",
        serde_json::json!([high]),
    )
    .await;
    rpc(&p, "evm_mine", serde_json::json!([])).await;
    assert_eq!(
        p.get_transaction_count(w).await.unwrap(),
        nonce0,
        "the under-priced stamp was mined"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let mining = miner(p.clone(), Duration::from_millis(300), stop.clone());
    let sent = tokio::time::timeout(Duration::from_secs(60), sending)
        .await
        .expect("the stuck stamp was not replaced and mined within 60 s")
        .unwrap()
        .expect("stamp_sent");
    stop.store(true, Ordering::Relaxed);
    mining.await.unwrap();

    assert_eq!(sent.nonce, nonce0);
    assert!(
        sent.hashes.len() >= 2,
        "no replacement was sent: {:?}",
        sent.hashes
    );
    assert_ne!(
        sent.recorded.tx, sent.hashes[0],
        "the under-priced one was mined"
    );
    assert!(sent.hashes.contains(&sent.recorded.tx));
    // Exactly one transaction of that nonce was mined: the one returned.
    let mut mined = Vec::new();
    for h in &sent.hashes {
        if let Some(r) = p.get_transaction_receipt(*h).await.unwrap() {
            assert!(r.status());
            mined.push(*h);
        }
    }
    assert_eq!(mined, vec![sent.recorded.tx]);
    assert_eq!(p.get_transaction_count(w).await.unwrap(), nonce0 + 1);
    let tx = p
        .get_transaction_by_hash(sent.recorded.tx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tx.inner.nonce(), nonce0);
    let block = p
        .get_block_by_number(sent.recorded.block.into())
        .await
        .unwrap()
        .unwrap();
    let base = u128::from(block.header.base_fee_per_gas.unwrap());
    assert!(
        tx.inner.max_fee_per_gas() >= base && base > GWEI,
        "mined at base fee {base} with max fee {}",
        tx.inner.max_fee_per_gas()
    );
    assert!(matches!(
        writer.lookup(w, RecordKey::Stamp(t)).await,
        Lookup::Found { commitment, .. } if commitment == cm.0
    ));
}

#[tokio::test]
async fn a_nonce_taken_by_another_sender_fails_clearly_and_the_next_stamp_works() {
    let a = anvil();
    let registry = deploy(&a).await;
    let mut c = cfg(&a.endpoint(), 1);
    c.replace_after_secs = 1;
    let writer = Chain::connect(&c, registry, Some(signer(&a, 0)))
        .await
        .unwrap();
    let w = signer(&a, 0).address();
    let p = raw(&a);
    let nonce0 = p.get_transaction_count(w).await.unwrap();
    rpc(&p, "evm_setAutomine", serde_json::json!([false])).await;
    let (t, cm) = (token("taken", 0), commitment(0));
    let sending = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.stamp_sent(t, cm).await })
    };
    while p.get_transaction_count(w).pending().await.unwrap() == nonce0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Another process with the same key sends its own transaction with that nonce, paying
    // enough to replace the stamp in the pool, and it is mined.
    let other = ProviderBuilder::new()
        .wallet(alloy::network::EthereumWallet::from(signer(&a, 0)))
        .connect_http(a.endpoint().parse().unwrap());
    let foreign = alloy::rpc::types::TransactionRequest::default()
        .from(w)
        .to(w)
        .nonce(nonce0)
        .gas_limit(21_000)
        .max_fee_per_gas(300 * GWEI)
        .max_priority_fee_per_gas(2 * GWEI);
    let foreign = *other.send_transaction(foreign).await.unwrap().tx_hash();
    rpc(&p, "evm_mine", serde_json::json!([])).await;
    assert!(p.get_transaction_receipt(foreign).await.unwrap().is_some());

    let e = tokio::time::timeout(Duration::from_secs(30), sending)
        .await
        .expect("the stamp neither failed nor was mined")
        .unwrap()
        .expect_err("the stamp cannot be mined: its nonce is gone");
    let e = format!("{e:#}");
    assert!(
        e.contains(&format!("nonce {nonce0}")) && e.contains("did not send"),
        "{e}"
    );
    assert_eq!(
        writer.lookup(w, RecordKey::Stamp(t)).await,
        Lookup::NotFound
    );
    // The agent asks the node for the nonce again: the next stamp goes through.
    rpc(&p, "evm_setAutomine", serde_json::json!([true])).await;
    let next = writer.stamp_sent(t, cm).await.unwrap();
    assert_eq!(next.nonce, nonce0 + 1);
    assert!(matches!(
        writer.lookup(w, RecordKey::Stamp(t)).await,
        Lookup::Found { commitment, .. } if commitment == cm.0
    ));
}

#[tokio::test]
async fn a_stale_nonce_count_heals_with_one_more_try() {
    let a = anvil();
    let registry = deploy(&a).await;
    let writer = Chain::connect(&cfg(&a.endpoint(), 1), registry, Some(signer(&a, 0)))
        .await
        .unwrap();
    let w = signer(&a, 0).address();
    writer
        .stamp(token("stale", 0), commitment(0))
        .await
        .unwrap();
    // The same key sends two transactions the agent does not know of: its count is stale.
    let other = ProviderBuilder::new()
        .wallet(alloy::network::EthereumWallet::from(signer(&a, 0)))
        .connect_http(a.endpoint().parse().unwrap());
    for _ in 0..2 {
        let tx = alloy::rpc::types::TransactionRequest::default()
            .from(w)
            .to(w);
        other
            .send_transaction(tx)
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
    }
    let p = raw(&a);
    let before = p.get_transaction_count(w).await.unwrap();
    let sent = writer
        .stamp_sent(token("stale", 1), commitment(1))
        .await
        .expect("a stale count is healed, not a failure");
    assert_eq!(sent.nonce, before);
    assert!(matches!(
        writer.lookup(w, RecordKey::Stamp(token("stale", 1))).await,
        Lookup::Found { commitment: c, .. } if c == commitment(1).0
    ));
}

#[tokio::test]
async fn many_stamps_in_flight_get_distinct_nonces_and_all_mine() {
    let a = anvil();
    let registry = deploy(&a).await;
    let writer = Chain::connect(&cfg(&a.endpoint(), 1), registry, Some(signer(&a, 0)))
        .await
        .unwrap();
    let w = signer(&a, 0).address();
    let p = raw(&a);
    let nonce0 = p.get_transaction_count(w).await.unwrap();
    rpc(&p, "evm_setAutomine", serde_json::json!([false])).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mining = miner(p.clone(), Duration::from_millis(200), stop.clone());

    const N: usize = 12;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..N {
        let writer = writer.clone();
        set.spawn(async move { (i, writer.stamp_sent(token("many", i), commitment(i)).await) });
    }
    let mut sent = Vec::new();
    while let Some(r) = set.join_next().await {
        let (i, s) = r.unwrap();
        sent.push((i, s.expect("stamp_sent")));
    }
    stop.store(true, Ordering::Relaxed);
    mining.await.unwrap();

    let mut nonces: Vec<u64> = sent.iter().map(|(_, s)| s.nonce).collect();
    nonces.sort_unstable();
    assert_eq!(nonces, (nonce0..nonce0 + N as u64).collect::<Vec<_>>());
    assert_eq!(p.get_transaction_count(w).await.unwrap(), nonce0 + N as u64);
    let blocks: std::collections::BTreeSet<u64> =
        sent.iter().map(|(_, s)| s.recorded.block).collect();
    assert!(
        blocks.len() < N,
        "every stamp got its own block: they were not in flight together"
    );
    for (i, s) in &sent {
        let r = p
            .get_transaction_receipt(s.recorded.tx)
            .await
            .unwrap()
            .unwrap();
        assert!(r.status());
        assert!(matches!(
            writer.lookup(w, RecordKey::Stamp(token("many", *i))).await,
            Lookup::Found { commitment: c, .. } if c == commitment(*i).0
        ));
    }
}

/// A loopback HTTP/1.1 proxy in front of anvil that counts requests and JSON-RPC calls, and
/// can be told to drop every request (the RPC endpoint failing), or to pass the next
/// `eth_sendRawTransaction` to anvil and lose its answer (`lose_send`, cleared when done), or
/// to refuse JSON-RPC batches as some hosted endpoints do (`refuse_batches`: anvil gets a body
/// it cannot parse instead, and answers one error; `refused` counts them).
struct Proxy {
    url: String,
    http: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    lose_send: Arc<AtomicBool>,
    refuse_batches: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy(upstream: SocketAddr) -> Proxy {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let (http, calls, down, lose_send) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (refuse_batches, refused) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let counters = (
        http.clone(),
        calls.clone(),
        down.clone(),
        lose_send.clone(),
        refuse_batches.clone(),
        refused.clone(),
    );
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((c, _)) = l.accept().await {
            conns.spawn(relay(c, upstream, counters.clone()));
        }
    });
    Proxy {
        url,
        http,
        calls,
        down,
        lose_send,
        refuse_batches,
        refused,
        task,
    }
}

/// The proxy's counters and switches: HTTP requests, JSON-RPC calls, `down`, `lose_send`,
/// `refuse_batches`, `refused`.
type Counters = (
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    Arc<AtomicBool>,
    Arc<AtomicBool>,
    Arc<AtomicBool>,
    Arc<AtomicUsize>,
);

async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    (http, calls, down, lose_send, refuse_batches, refused): Counters,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    'requests: loop {
        let head = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match cr.read(&mut chunk).await {
                Ok(0) | Err(_) => break 'requests,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let len = String::from_utf8_lossy(&buf[..head])
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head + len {
            match cr.read(&mut chunk).await {
                Ok(0) | Err(_) => break 'requests,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        if down.load(Ordering::Relaxed) {
            break;
        }
        http.fetch_add(1, Ordering::Relaxed);
        let n = match serde_json::from_slice::<serde_json::Value>(&buf[head..head + len]) {
            Ok(serde_json::Value::Array(v)) => v.len(),
            _ => 1,
        };
        calls.fetch_add(n, Ordering::Relaxed);
        if n > 1 && refuse_batches.load(Ordering::Relaxed) {
            refused.fetch_add(1, Ordering::Relaxed);
            buf[head..head + len].fill(b' ');
            buf[head] = b'!';
        }
        let body = &buf[head..head + len];
        if body.windows(22).any(|w| w == b"eth_sendRawTransaction")
            && lose_send.swap(false, Ordering::Relaxed)
        {
            // Stop passing answers back first, then let anvil have the transaction and
            // close the client's connection without its answer.
            back.abort();
            let _ = (&mut back).await;
            let _ = sw.write_all(&buf[..head + len]).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            return;
        }
        if sw.write_all(&buf[..head + len]).await.is_err() {
            break;
        }
        buf.drain(..head + len);
    }
    back.abort();
}

/// Looks every key up at the same time; the answers in key order.
async fn all_at_once(c: &Chain, keys: &[(Address, RecordKey)]) -> Vec<Lookup> {
    let handles: Vec<_> = keys
        .iter()
        .map(|&(w, k)| {
            let c = c.clone();
            tokio::spawn(async move { c.lookup(w, k).await })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn concurrent_lookups_go_out_as_batches_and_match_one_by_one() {
    let a = anvil();
    let registry = deploy(&a).await;
    let w = signer(&a, 0).address();
    let writer = Chain::connect(&cfg(&a.endpoint(), 1), registry, Some(signer(&a, 0)))
        .await
        .unwrap();
    // Records of every kind: direct stamps and batch anchors (confirmed at depth 2), keys
    // nobody wrote, a record under another writer's key, and a stamp in the head block only
    // (unconfirmed at depth 2; instant mining gives each transaction its own block).
    let mut keys = Vec::new();
    for i in 0..8 {
        writer.stamp(token("read", i), commitment(i)).await.unwrap();
        keys.push((w, RecordKey::Stamp(token("read", i))));
    }
    for i in 0..3 {
        writer
            .anchor(token("batch", i), commitment(100 + i), 16)
            .await
            .unwrap();
        keys.push((w, RecordKey::Batch(token("batch", i))));
    }
    for i in 0..4 {
        keys.push((w, RecordKey::Stamp(token("nobody", i))));
        keys.push((w, RecordKey::Batch(token("nobody", i))));
    }
    keys.push((signer(&a, 1).address(), RecordKey::Stamp(token("read", 0))));
    writer
        .stamp(token("head", 0), commitment(999))
        .await
        .unwrap();
    keys.push((w, RecordKey::Stamp(token("head", 0))));
    let n = keys.len();

    // One by one, on a connection that never batches.
    let mut plain = cfg(&a.endpoint(), 2);
    plain.read_batch_max = 1;
    let single = Chain::connect(&plain, registry, None).await.unwrap();
    let mut expected = Vec::new();
    for &(k_w, k) in &keys {
        expected.push(single.lookup(k_w, k).await);
    }
    let found = expected
        .iter()
        .filter(|l| matches!(l, Lookup::Found { .. }))
        .count();
    assert_eq!(found, 11, "{expected:?}");
    assert_eq!(expected.last(), Some(&Lookup::Unconfirmed));
    assert!(expected.contains(&Lookup::NotFound));

    // All at once through the counting proxy, on a connection that batches.
    let px = proxy(format!("127.0.0.1:{}", a.port()).parse().unwrap()).await;
    let reader = Chain::connect(&cfg(&px.url, 2), registry, None)
        .await
        .unwrap();
    let before = (
        px.http.load(Ordering::Relaxed),
        px.calls.load(Ordering::Relaxed),
    );
    let got = all_at_once(&reader, &keys).await;
    let http = px.http.load(Ordering::Relaxed) - before.0;
    let calls = px.calls.load(Ordering::Relaxed) - before.1;
    println!("{n} concurrent lookups: {http} HTTP requests, {calls} JSON-RPC calls");
    assert_eq!(got, expected);
    assert!(
        http < n,
        "{n} concurrent lookups took {http} HTTP requests ({calls} calls)"
    );
    // Head + reads at the confirmed block + reads at the latest block for the rest, at least.
    assert!(calls > n, "{calls} JSON-RPC calls for {n} lookups");

    // Again: confirmed records come from the cache, the others are asked again.
    let before = px.calls.load(Ordering::Relaxed);
    assert_eq!(all_at_once(&reader, &keys).await, expected);
    let again = px.calls.load(Ordering::Relaxed) - before;
    assert!(
        again < calls && again > 0,
        "second round: {again} calls (first {calls})"
    );

    // An endpoint that refuses JSON-RPC batches: each refused batch falls back to one-by-one
    // lookups of its keys, and the answers are the same.
    px.refuse_batches.store(true, Ordering::Relaxed);
    let fresh = Chain::connect(&cfg(&px.url, 2), registry, None)
        .await
        .unwrap();
    assert_eq!(all_at_once(&fresh, &keys).await, expected);
    assert!(
        px.refused.load(Ordering::Relaxed) > 0,
        "the burst went out as batches, which were refused"
    );
    px.refuse_batches.store(false, Ordering::Relaxed);

    // The endpoint failing mid-burst: every lookup is unavailable, none is "not found".
    px.down.store(true, Ordering::Relaxed);
    let down = all_at_once(&reader, &keys).await;
    for (l, e) in down.iter().zip(&expected) {
        match e {
            Lookup::Found { .. } => assert_eq!(l, e, "a cached confirmed record changed"),
            _ => assert!(matches!(l, Lookup::Unavailable(_)), "{l:?}"),
        }
    }
}

#[tokio::test]
async fn a_send_whose_answer_is_lost_is_recognised_and_not_sent_again() {
    let a = anvil();
    let registry = deploy(&a).await;
    let px = proxy(format!("127.0.0.1:{}", a.port()).parse().unwrap()).await;
    let c = Chain::connect(&cfg(&px.url, 1), registry, Some(signer(&a, 0)))
        .await
        .unwrap();
    let w = c.writer.unwrap();
    let n0 = raw(&a).get_transaction_count(w).await.unwrap();
    // The transaction reaches anvil (and is mined), the agent never hears back.
    px.lose_send.store(true, Ordering::Relaxed);
    let sent = c
        .stamp_sent(token("lost", 0), commitment(0))
        .await
        .expect("the stamp sent once is recognised, not sent again (which would revert)");
    assert!(!px.lose_send.load(Ordering::Relaxed), "the answer was lost");
    assert_eq!(sent.nonce, n0);
    assert_eq!(sent.hashes.len(), 1, "{sent:?}");
    assert_eq!(
        raw(&a).get_transaction_count(w).await.unwrap(),
        n0 + 1,
        "ONE transaction"
    );
    assert!(matches!(
        c.lookup(w, RecordKey::Stamp(token("lost", 0))).await,
        Lookup::Found { commitment: got, .. } if got == commitment(0).0
    ));
}

#[tokio::test]
async fn a_chain_without_eip1559_fails_writes_with_a_clear_message() {
    // A pre-London chain: no base fee in its blocks. Nothing needs to be deployed: the fee
    // estimate fails before anything is sent.
    let a = alloy::node_bindings::Anvil::at(crate::harness::tool("anvil"))
        .port(0u16)
        .args(["--hardfork", "berlin"])
        .try_spawn()
        .expect("anvil starts");
    let c = Chain::connect(
        &cfg(&a.endpoint(), 1),
        Address::repeat_byte(9),
        Some(signer(&a, 0)),
    )
    .await
    .unwrap();
    let e = format!(
        "{:#}",
        c.stamp(token("legacy", 0), commitment(0))
            .await
            .unwrap_err()
    );
    assert!(e.contains("has no EIP-1559 base fee"), "{e}");
    assert!(e.contains("chain 31337"), "{e}");
}

#[tokio::test]
async fn an_unfunded_writer_gets_a_clear_temporary_error_naming_balance_and_need() {
    let a = anvil();
    let registry = deploy(&a).await;
    // A key anvil never funded.
    let poor = alloy::signers::local::PrivateKeySigner::random();
    let who = format!("{:#x}", poor.address());
    let c = Chain::connect(&cfg(&a.endpoint(), 1), registry, Some(poor))
        .await
        .unwrap();
    let e = c.stamp(token("poor", 0), commitment(0)).await.unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains(&who)
            && text.contains("balance 0.000000 ETH")
            && text.contains("needs up to")
            && text.contains("send ETH on chain 31337"),
        "{text}"
    );
    assert!(
        !matches!(e, mailstamp::error::Error::Refused { .. }),
        "temporary, not a refusal: {e:?}"
    );
    assert_eq!(c.balance().await.unwrap(), Some(U256::ZERO));
}
