// SPDX-License-Identifier: GPL-3.0-or-later
//! Prometheus metrics of the daemons (`[metrics] listen`, docs/MTA.md "Metrics"): one
//! process-wide registry of the reference client (`prometheus-client`, OpenMetrics text), fed by
//! the layers that do the work, and served at `/metrics` by [`serve`] (hyper). Recording is
//! always on and costs an atomic add; nothing is served unless `[metrics] listen` is set.
//!
//! Names follow Prometheus conventions: `mailstamp_…_total` counters, `_seconds` histograms.

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    /// Messages by direction (`inbound`, `outbound`) and verdict or outcome.
    pub messages: Family<Labels, Counter>,
    /// End-of-data latency by direction.
    pub eod_seconds: Histograms,
    /// Registry RPC calls that failed or timed out, by call.
    pub rpc_errors: Family<Labels, Counter>,
    /// Registry RPC latency, by call.
    pub rpc_seconds: Histograms,
    /// JSON-RPC requests that failed or timed out, by endpoint (scheme, host and port only).
    pub endpoint_errors: Family<Labels, Counter>,
    /// JSON-RPC request latency by endpoint.
    pub endpoint_seconds: Histograms,
    /// Lookups refused because the endpoints did not agree (`chain.quorum`) or a proof did not
    /// verify (`verify.mode = "proof"`), by reason.
    pub untrusted_answers: Family<Labels, Counter>,
    /// Transactions by event (`sent`, `replaced`, `mined`, `resent`, `renewed`).
    pub transactions: Family<Labels, Counter>,
    /// Leaves per anchored batch.
    pub batch_size: Histogram,
    /// A batch's age (first leaf to anchor mined) when its messages are released.
    pub batch_age_seconds: Histogram,
    /// Writes in the watch journal (last round).
    pub watched: Gauge,
    /// Time a lookup waited for confirmations (`verify.confirm_wait_secs`).
    pub confirm_wait_seconds: Histogram,
    /// The writer's balance, in ETH.
    pub writer_balance_eth: Gauge<f64, AtomicU64>,
    /// Hours the balance lasts at the rate spent since start (absent until a spend is seen).
    pub writer_runway_hours: Gauge<f64, AtomicU64>,
    /// Writer checks in DNS (and the trust map) by result (`pass`, `fail`, `temperror`, …).
    pub writer_checks: Family<Labels, Counter>,
    /// Store calls' latency.
    pub store_seconds: Histogram,
    /// Store calls that failed (SQLite busy past its timeout, PostgreSQL unreachable…): the
    /// callers then go on by the busy-store rules (separate folder, 4xx), never lose mail.
    pub store_errors: Counter,
    /// SMTP or milter sessions open now, by adapter.
    pub sessions_open: Family<Labels, Gauge>,
}

fn latency() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("mailstamp");
    let m = Metrics {
        messages: Family::default(),
        eod_seconds: Family::new_with_constructor(latency),
        rpc_errors: Family::default(),
        rpc_seconds: Family::new_with_constructor(latency),
        endpoint_errors: Family::default(),
        endpoint_seconds: Family::new_with_constructor(latency),
        untrusted_answers: Family::default(),
        transactions: Family::default(),
        batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 17)),
        batch_age_seconds: latency(),
        watched: Gauge::default(),
        confirm_wait_seconds: latency(),
        writer_balance_eth: Gauge::default(),
        writer_runway_hours: Gauge::default(),
        writer_checks: Family::default(),
        store_seconds: latency(),
        store_errors: Counter::default(),
        sessions_open: Family::default(),
        registry: Registry::default(),
    };
    registry.register(
        "messages",
        "Messages by direction and verdict (inbound) or outcome (outbound)",
        m.messages.clone(),
    );
    registry.register(
        "eod_seconds",
        "End-of-data latency by direction",
        m.eod_seconds.clone(),
    );
    registry.register(
        "chain_rpc_errors",
        "Registry RPC calls that failed or timed out, by call",
        m.rpc_errors.clone(),
    );
    registry.register(
        "chain_rpc_seconds",
        "Registry RPC latency by call",
        m.rpc_seconds.clone(),
    );
    registry.register(
        "chain_endpoint_errors",
        "JSON-RPC requests that failed or timed out, by endpoint",
        m.endpoint_errors.clone(),
    );
    registry.register(
        "chain_endpoint_seconds",
        "JSON-RPC request latency by endpoint",
        m.endpoint_seconds.clone(),
    );
    registry.register(
        "chain_untrusted_answers",
        "Lookups refused: endpoints disagreeing or a proof that does not verify, by reason",
        m.untrusted_answers.clone(),
    );
    registry.register(
        "transactions",
        "Registry transactions by event (sent, replaced, mined, resent, renewed)",
        m.transactions.clone(),
    );
    registry.register(
        "batch_size",
        "Leaves per anchored batch",
        m.batch_size.clone(),
    );
    registry.register(
        "batch_age_seconds",
        "A batch's age from its first leaf to its anchor mined",
        m.batch_age_seconds.clone(),
    );
    registry.register(
        "watched_writes",
        "Stamps and anchors in the watch journal, not final yet",
        m.watched.clone(),
    );
    registry.register(
        "confirm_wait_seconds",
        "Time a lookup waited for its record's confirmations",
        m.confirm_wait_seconds.clone(),
    );
    registry.register(
        "writer_balance_eth",
        "The writer's balance in ETH",
        m.writer_balance_eth.clone(),
    );
    registry.register(
        "writer_runway_hours",
        "Hours the writer's balance lasts at the rate spent since start",
        m.writer_runway_hours.clone(),
    );
    registry.register(
        "writer_checks",
        "Writer authorisation checks by result",
        m.writer_checks.clone(),
    );
    registry.register(
        "store_seconds",
        "Store call latency",
        m.store_seconds.clone(),
    );
    registry.register(
        "store_errors",
        "Store calls that failed (busy or unreachable store)",
        m.store_errors.clone(),
    );
    registry.register(
        "sessions_open",
        "Sessions open now by adapter",
        m.sessions_open.clone(),
    );
    Metrics { registry, ..m }
});

/// One label set.
pub fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// One message's end of data: `direction` (`inbound`, `outbound`), its verdict or outcome,
/// and how long the work took.
pub fn message(direction: &'static str, verdict: &str, took: std::time::Duration) {
    let m = &*METRICS;
    m.messages
        .get_or_create(&labels(&[("direction", direction), ("verdict", verdict)]))
        .inc();
    m.eod_seconds
        .get_or_create(&labels(&[("direction", direction)]))
        .observe(took.as_secs_f64());
}

/// A registry RPC call (`what`, as the timeouts name it) that took `took`, failed or not.
pub fn rpc(what: &str, took: std::time::Duration, failed: bool) {
    let m = &*METRICS;
    let l = labels(&[("call", what)]);
    m.rpc_seconds.get_or_create(&l).observe(took.as_secs_f64());
    if failed {
        m.rpc_errors.get_or_create(&l).inc();
    }
}

/// One JSON-RPC request to `endpoint` (a redacted URL) that took `took`, failed or not.
pub fn endpoint(endpoint: &str, took: std::time::Duration, failed: bool) {
    let m = &*METRICS;
    let l = labels(&[("endpoint", endpoint)]);
    m.endpoint_seconds
        .get_or_create(&l)
        .observe(took.as_secs_f64());
    if failed {
        m.endpoint_errors.get_or_create(&l).inc();
    }
}

/// A lookup refused for `reason` (`disagreement`, `proof`).
pub fn untrusted(reason: &'static str) {
    METRICS
        .untrusted_answers
        .get_or_create(&labels(&[("reason", reason)]))
        .inc();
}

/// A registry transaction event (`sent`, `replaced`, `mined`, `resent`, `renewed`).
pub fn transaction(event: &'static str) {
    METRICS
        .transactions
        .get_or_create(&labels(&[("event", event)]))
        .inc();
}

/// The OpenMetrics text of every metric.
pub fn render() -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &METRICS.registry);
    out
}

/// Counts a session open while it lives.
pub struct SessionGuard(&'static str);

impl SessionGuard {
    /// A session of `adapter` (`milter`, `relay`) begins.
    pub fn open(adapter: &'static str) -> Self {
        METRICS
            .sessions_open
            .get_or_create(&labels(&[("adapter", adapter)]))
            .inc();
        Self(adapter)
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        METRICS
            .sessions_open
            .get_or_create(&labels(&[("adapter", self.0)]))
            .dec();
    }
}

/// Binds `listen` (`HOST:PORT`) for [`serve`]; the bound address.
pub async fn bind(listen: &str) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let l = tokio::net::TcpListener::bind(listen).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// Serves `GET /metrics` (anything else: 404) on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode};
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors or the like: try again shortly, without spinning.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(Full::new(Bytes::from(render())))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"see /metrics\n")))
                    }
                },
            );
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_the_prefix_and_total_suffix() {
        message("inbound", "wanted", std::time::Duration::from_millis(3));
        let text = render();
        assert!(
            text.contains("mailstamp_messages_total{direction=\"inbound\",verdict=\"wanted\"}"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE mailstamp_eod_seconds histogram"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
