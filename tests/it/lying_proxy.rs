// SPDX-License-Identifier: GPL-3.0-or-later
//! A lying JSON-RPC proxy in front of anvil (issue 14): passes every call (single or batch)
//! on, counts them by method, and tells the lie it is set to about the answers. Used by the
//! trust tests (`trust.rs`) and the proof-mode benchmark (`agent/benches/trust_cost.rs`).

#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{B256, keccak256};
use alloy::transports::http::reqwest;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use serde_json::Value;

/// What a proxy does to the answers it passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lie {
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
pub(crate) const FORGED: [u8; 24] = [0x5a; 24];

pub(crate) struct Proxy {
    pub(crate) url: String,
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
    pub(crate) fn set(&self, lie: Lie) {
        *self.lie.lock().unwrap() = lie;
    }

    /// Every JSON-RPC call passed on so far (a batch counts each of its calls).
    pub(crate) fn total(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    pub(crate) fn count(&self, method: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|m| *m == method)
            .count()
    }
}

pub(crate) async fn proxy(upstream: String, lie: Lie) -> Proxy {
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
            if r["method"] == "eth_call" && r["params"][1] == "finalized" {
                r["params"][1] = Value::String("latest".into());
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
