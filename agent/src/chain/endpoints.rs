// SPDX-License-Identifier: GPL-3.0-or-later
//! Several JSON-RPC endpoints of one chain as one transport (`chain.rpc_urls`): a request goes
//! to the healthiest endpoint first, and to the next as well when the first fails or has not
//! answered within `chain.failover_after_ms` (the first answer wins, a slow endpoint is not cut
//! off); a signed transaction (`eth_sendRawTransaction`) goes to every endpoint at once, so one
//! endpoint that drops it does not keep it from the chain. Each endpoint's health (consecutive
//! failures, latency) ranks them, is logged when it changes (down, answering again) and feeds the
//! `chain_endpoint_*` metrics, labelled by the endpoint's scheme, host and port (never its path
//! or query, which often carry an API key).
//!
//! Written here rather than taken from alloy's `FallbackLayer`: that layer either asks the top
//! endpoints all at once for every read (N× the load), or asks only the top one (no failover
//! within a request, and a stalled endpoint stays on top because a request that never ends is
//! never scored). This one hedges: the next endpoint is asked only when the first is late.
//!
//! What the endpoints answer is not compared here: that is the confirmed block's quorum and the
//! proofs (`trust`). This layer only keeps the agent reachable.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use alloy::rpc::json_rpc::{RequestPacket, ResponsePacket};
use alloy::transports::http::{Http, reqwest};
use alloy::transports::{TransportError, TransportErrorKind, TransportFut};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tower_service::Service;

use crate::error::{Result, err};

/// An RPC URL as it may be shown: `scheme://host:port`, without the path, query or user
/// part, which often carry an API key.
pub fn redact_url(url: &str) -> String {
    match url.parse::<reqwest::Url>() {
        // `host_str` keeps an IPv6 address in brackets.
        Ok(u) => match (u.host_str(), u.port_or_known_default()) {
            (Some(h), Some(p)) => format!("{}://{h}:{p}", u.scheme()),
            (Some(h), None) => format!("{}://{h}", u.scheme()),
            _ => "(not a URL)".to_owned(),
        },
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// One endpoint and what the agent has seen of it.
pub(super) struct Endpoint {
    /// The redacted URL: what logs, metrics and errors name.
    pub(super) label: String,
    http: Http<reqwest::Client>,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    /// Failures since the last answer (0: healthy).
    failing: u32,
    /// Latency of the answers, smoothed (milliseconds).
    latency_ms: f64,
}

impl Endpoint {
    fn failing(&self) -> u32 {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failing
    }

    /// Records one request's outcome; logs the endpoint going down and coming back.
    fn record(&self, took: Duration, error: Option<&TransportError>) {
        crate::metrics::endpoint(&self.label, took, error.is_some());
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        match error {
            Some(e) => {
                if h.failing == 0 {
                    tracing::warn!(endpoint = %self.label, "RPC endpoint failing: {e}; the other endpoints are asked meanwhile");
                }
                h.failing = h.failing.saturating_add(1);
            }
            None => {
                if h.failing > 0 {
                    tracing::info!(endpoint = %self.label, failures = h.failing, "RPC endpoint answers again");
                }
                h.failing = 0;
                let ms = took.as_secs_f64() * 1000.0;
                h.latency_ms = if h.latency_ms == 0.0 {
                    ms
                } else {
                    0.8 * h.latency_ms + 0.2 * ms
                };
            }
        }
    }

    async fn send(self: Arc<Self>, req: RequestPacket) -> Result<ResponsePacket, TransportError> {
        let mut pending = Pending {
            endpoint: self.clone(),
            started: Instant::now(),
            done: false,
        };
        let r = self.http.clone().call(req).await;
        pending.done = true;
        self.record(pending.started.elapsed(), r.as_ref().err());
        r
    }
}

/// A request on its way; given up before its answer (a timeout, another endpoint answered
/// first), it counts against the endpoint, so a stalled endpoint drops in the ranking.
struct Pending {
    endpoint: Arc<Endpoint>,
    started: Instant,
    done: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let e = TransportErrorKind::custom_str("no answer in time (the request was given up)");
            self.endpoint.record(self.started.elapsed(), Some(&e));
        }
    }
}

/// The endpoints of a connection as one transport (see the module documentation).
#[derive(Clone)]
pub(super) struct Pool {
    endpoints: Arc<[Arc<Endpoint>]>,
    hedge: Duration,
}

impl Pool {
    /// One endpoint per URL, in the order given (the first is preferred while healthy).
    pub(super) fn new(urls: &[&str], hedge: Duration) -> Result<Self> {
        let client = reqwest::Client::new();
        let endpoints = urls
            .iter()
            .map(|url| {
                let u: reqwest::Url = url.parse().map_err(|e| {
                    err!(
                        "`{}` is not a valid RPC URL (expected e.g. http://127.0.0.1:8545): {e}",
                        redact_url(url)
                    )
                })?;
                Ok(Arc::new(Endpoint {
                    label: redact_url(url),
                    http: Http::with_client(client.clone(), u),
                    health: Mutex::default(),
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            endpoints: endpoints.into(),
            hedge,
        })
    }

    /// Whether every endpoint is on this machine (alloy polls a local node faster).
    pub(super) fn is_local(&self) -> bool {
        self.endpoints.iter().all(|e| e.http.guess_local())
    }

    /// `chain.failover_after_ms`: how long an endpoint may take before the next is asked too
    /// (and how long a met quorum waits for the rest).
    pub(super) fn hedge(&self) -> Duration {
        self.hedge
    }

    /// How many endpoints there are.
    pub(super) fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// A pool of endpoint `i` alone (its health shared with this pool): the quorum and the
    /// proofs ask each endpoint on its own.
    pub(super) fn only(&self, i: usize) -> Self {
        Self {
            endpoints: vec![self.endpoints[i].clone()].into(),
            hedge: self.hedge,
        }
    }

    /// Endpoint `i`'s label.
    pub(super) fn label(&self, i: usize) -> &str {
        &self.endpoints[i].label
    }

    /// The endpoints' indices, healthiest first: those answering before those failing (fewer
    /// failures first), the configured order among equals.
    pub(super) fn ranked(&self) -> Vec<usize> {
        let mut order: Vec<(u32, usize)> = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (e.failing(), i))
            .collect();
        order.sort();
        order.into_iter().map(|(_, i)| i).collect()
    }

    /// A read: the healthiest endpoint, the next one as well when it fails or is late.
    async fn failover(self, req: RequestPacket) -> Result<ResponsePacket, TransportError> {
        let mut next = self.ranked().into_iter();
        let mut flying = FuturesUnordered::new();
        let mut last_error = None;
        if let Some(i) = next.next() {
            flying.push(self.endpoints[i].clone().send(req.clone()));
        }
        loop {
            let more = next.len() > 0;
            tokio::select! {
                done = flying.next() => match done {
                    Some(Ok(r)) => return Ok(r),
                    Some(Err(e)) => {
                        last_error = Some(e);
                        if let Some(i) = next.next() {
                            flying.push(self.endpoints[i].clone().send(req.clone()));
                        }
                    }
                    None => break,
                },
                () = tokio::time::sleep(self.hedge), if more => {
                    if let Some(i) = next.next() {
                        flying.push(self.endpoints[i].clone().send(req.clone()));
                    }
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| TransportErrorKind::custom_str("no RPC endpoint is configured")))
    }

    /// A signed transaction: to every endpoint at once. The first endpoint that accepts it
    /// answers; the others' sends go on in the background (one dropping it does not matter).
    /// When none accepts it, the first refusal (a JSON-RPC error: the node's reason) is the
    /// answer, or else the last transport error.
    async fn broadcast(self, req: RequestPacket) -> Result<ResponsePacket, TransportError> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for e in self.endpoints.iter() {
            let (e, req, tx) = (e.clone(), req.clone(), tx.clone());
            tokio::spawn(async move {
                let r = e.send(req).await;
                let _ = tx.send(r);
            });
        }
        drop(tx);
        let (mut refusal, mut last_error) = (None, None);
        while let Some(r) = rx.recv().await {
            match r {
                Ok(resp) if !is_refusal(&resp) => return Ok(resp),
                Ok(resp) => {
                    refusal.get_or_insert(resp);
                }
                Err(e) => last_error = Some(e),
            }
        }
        match (refusal, last_error) {
            (Some(r), _) => Ok(r),
            (None, Some(e)) => Err(e),
            (None, None) => Err(TransportErrorKind::custom_str(
                "no RPC endpoint is configured",
            )),
        }
    }
}

/// Whether an answer is a JSON-RPC error (for a batch: every answer is).
fn is_refusal(resp: &ResponsePacket) -> bool {
    match resp {
        ResponsePacket::Single(r) => r.is_error(),
        ResponsePacket::Batch(rs) => !rs.is_empty() && rs.iter().all(|r| r.is_error()),
    }
}

impl Service<RequestPacket> for Pool {
    type Response = ResponsePacket;
    type Error = TransportError;
    type Future = TransportFut<'static>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: RequestPacket) -> Self::Future {
        let me = self.clone();
        let send = req.method_names().any(|m| m == "eth_sendRawTransaction");
        Box::pin(async move {
            if send && me.endpoints.len() > 1 {
                me.broadcast(req).await
            } else {
                me.failover(req).await
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_endpoint_ranks_last_until_it_answers() {
        let p = Pool::new(
            &["http://127.0.0.1:1", "http://127.0.0.1:2"],
            Duration::from_millis(10),
        )
        .unwrap();
        assert_eq!(p.ranked(), vec![0, 1]);
        let e = TransportErrorKind::custom_str("refused");
        p.endpoints[0].record(Duration::from_millis(5), Some(&e));
        assert_eq!(p.ranked(), vec![1, 0]);
        p.endpoints[1].record(Duration::from_millis(5), Some(&e));
        p.endpoints[1].record(Duration::from_millis(5), Some(&e));
        assert_eq!(p.ranked(), vec![0, 1], "fewer failures first");
        p.endpoints[1].record(Duration::from_millis(5), None);
        assert_eq!(p.ranked(), vec![1, 0]);
        // One endpoint alone shares the health of the pool's.
        assert_eq!(p.only(0).ranked(), vec![0]);
        assert_eq!(p.only(0).endpoints[0].failing(), 1);
    }
}
