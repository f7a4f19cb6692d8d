// SPDX-License-Identifier: GPL-3.0-or-later
//! The audit page's HTTP server (hyper, HTTP/1.1): the embedded page (`page/`: one HTML file,
//! one script, one style sheet; no CDN, no external request) and its JSON endpoints. Read-only:
//! every route is a `GET` except `POST /api/verify`, which verifies the uploaded message in
//! memory and answers its report — the message is neither stored nor logged. Bounded: the
//! upload is capped at `milter.max_message_bytes`, a connection has 10 s to send its headers
//! and 60 s for its body, at most 64 connections and 2 verifications run at once. Unless the
//! page is public (`--public`), a request must name a loopback host (`Host: 127.0.0.1:…`,
//! `localhost`), so a web page elsewhere cannot read it through DNS rebinding.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, B256, FixedBytes};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use mailstamp_core::header::Mode;
use mailstamp_core::{Envelope, Inspection, inspect};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{Auditor, Unit, parse_cursor, report_json};
use crate::verifying::{self, VerifyContext};

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const APP_CSS: &str = include_str!("page/app.css");

/// Every response's security headers: the page's own files only (CSP), no sniffing, no
/// framing, no referrer (a token in the URL stays here).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// Connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// Events per activity page at most.
const MAX_PAGE: usize = 200;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Whether requests may name any host (`--public`); else loopback names only.
    pub public: bool,
    /// The largest message `POST /api/verify` takes.
    pub max_message_bytes: usize,
}

struct State {
    auditor: Auditor,
    ctx: VerifyContext,
    opts: Options,
    verifying: Semaphore,
}

type Resp = Response<Full<Bytes>>;

/// Serves the page on `listener` until `shutdown` completes; connections under way are
/// dropped then (every request is a read).
pub async fn run(
    listener: TcpListener,
    auditor: Auditor,
    opts: Options,
    shutdown: impl Future<Output = ()>,
) -> crate::Result<()> {
    let ctx = VerifyContext::from_config(auditor.config(), None)?;
    let state = Arc::new(State {
        auditor,
        ctx,
        opts,
        verifying: Semaphore::new(2),
    });
    let conns = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tasks = tokio_util::task::TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = conns.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors or the like: try again shortly, without spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let state = state.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, service)
                .await;
        });
    }
    tasks.close();
    Ok(())
}

/// Whether `addr` may be listened on without `--public`.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

fn host_is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn respond(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        "content-type",
        hyper::header::HeaderValue::from_static(ctype),
    );
    h.insert(
        "content-security-policy",
        hyper::header::HeaderValue::from_static(CSP),
    );
    h.insert(
        "x-content-type-options",
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "x-frame-options",
        hyper::header::HeaderValue::from_static("DENY"),
    );
    h.insert(
        "referrer-policy",
        hyper::header::HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cache-control",
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

fn json_ok(v: &impl Serialize) -> Resp {
    match serde_json::to_vec(v) {
        Ok(b) => respond(StatusCode::OK, "application/json", b),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")),
    }
}

/// An error answer: `{"error": "..."}` saying what was wrong and what to do.
fn error(status: StatusCode, msg: impl Into<String>) -> Resp {
    let body = json!({"error": msg.into()}).to_string();
    respond(status, "application/json", body)
}

fn chain_error(e: crate::Error) -> Resp {
    error(
        StatusCode::BAD_GATEWAY,
        format!("the chain did not answer: {e:#} (check chain.rpc_url and the node)"),
    )
}

/// The query's parameters, in order (a name may repeat: `rcpt`).
fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// A `400 Bad Request` saying what was wrong.
fn bad(msg: String) -> Resp {
    error(StatusCode::BAD_REQUEST, msg)
}

fn writer_param(
    q: &[(String, String)],
    default: Option<Address>,
) -> Result<Option<Address>, String> {
    match param(q, "writer") {
        Some("any") => Ok(None),
        Some(w) => w
            .parse()
            .map(Some)
            .map_err(|_| format!("`{w}` is not a writer address (0x followed by 40 hex digits)")),
        None => Ok(default),
    }
}

fn b256_param(q: &[(String, String)], name: &str, what: &str) -> Result<B256, String> {
    let v = param(q, name).ok_or_else(|| format!("no `{name}` given: add ?{name}=0x… ({what})"))?;
    v.trim()
        .parse()
        .map_err(|_| format!("`{v}` is not {what} (0x followed by 64 hex digits)"))
}

async fn handle(state: &State, req: Request<Incoming>) -> Resp {
    if !state.opts.public {
        let host = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !host_is_loopback(host) {
            return error(
                StatusCode::MISDIRECTED_REQUEST,
                "this audit page answers loopback names only (127.0.0.1, [::1], localhost); \
                 start it with --public to serve other names",
            );
        }
    }
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/api/verify") => verify(state, req).await,
        (Method::GET | Method::HEAD, _) => get(state, &req, &path).await,
        (_, _) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "read-only: GET, or POST /api/verify with a message",
        ),
    }
}

async fn get(state: &State, req: &Request<Incoming>, path: &str) -> Resp {
    let a = &state.auditor;
    let q = query(req);
    match path {
        "/" | "/index.html" => respond(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
        "/app.js" => respond(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS),
        "/app.css" => respond(StatusCode::OK, "text/css; charset=utf-8", APP_CSS),
        "/api/health" => match a.health().await {
            Ok(h) => json_ok(&h),
            Err(e) => chain_error(e),
        },
        "/api/activity" => {
            let writer = match writer_param(&q, a.writer) {
                Ok(w) => w,
                Err(m) => return bad(m),
            };
            let before = match param(&q, "before") {
                None => None,
                Some(c) => match parse_cursor(c) {
                    Some(c) => Some(c),
                    None => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("`{c}` is not a page cursor (BLOCK.LOGINDEX, as `next` gave)"),
                        );
                    }
                },
            };
            let limit = param(&q, "limit")
                .and_then(|l| l.parse::<usize>().ok())
                .unwrap_or(25)
                .clamp(1, MAX_PAGE);
            match a.activity(writer, before, limit).await {
                Ok(p) => json_ok(&json!({"writer": writer, "page": p})),
                Err(e) => chain_error(e),
            }
        }
        "/api/chart" => {
            let writer = match writer_param(&q, a.writer) {
                Ok(w) => w,
                Err(m) => return bad(m),
            };
            let unit = match param(&q, "unit") {
                None | Some("hour") => Unit::Hour,
                Some("day") => Unit::Day,
                Some(u) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("`{u}` is not a chart unit: give hour or day"),
                    );
                }
            };
            match a.chart(writer, unit).await {
                Ok(c) => json_ok(&c),
                Err(e) => chain_error(e),
            }
        }
        "/api/record" => {
            let id = match b256_param(&q, "id", "a token or batch id") {
                Ok(i) => i,
                Err(m) => return bad(m),
            };
            let writer = match writer_param(&q, None) {
                Ok(w) => w,
                Err(m) => return bad(m),
            };
            match a.record(id, writer).await {
                Ok(Some(r)) => json_ok(&r),
                Ok(None) => error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no stamp or anchor {id} in registry {} from block {}: check the id, \
                         the writer, and chain.from_block",
                        a.chain.registry,
                        a.config().chain.from_block
                    ),
                ),
                Err(e) => chain_error(e),
            }
        }
        "/api/verify-stamp" => verify_stamp(a, &q).await,
        _ => error(StatusCode::NOT_FOUND, format!("no page {path}: see /")),
    }
}

/// `verifyStamp` for a leaf given by hand: writer, batch, commitment, proof (comma- or
/// space-separated sibling hashes).
async fn verify_stamp(a: &Auditor, q: &[(String, String)]) -> Resp {
    let writer = match writer_param(q, None) {
        Ok(Some(w)) => w,
        Ok(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "give the batch's writer: ?writer=0x…",
            );
        }
        Err(m) => return bad(m),
    };
    let batch = match b256_param(q, "batch", "a batch id") {
        Ok(b) => b,
        Err(m) => return bad(m),
    };
    let Some(c) = param(q, "commitment") else {
        return error(
            StatusCode::BAD_REQUEST,
            "give the leaf: ?commitment=0x… (48 hex digits)",
        );
    };
    let Ok(commitment) = c.trim().parse::<FixedBytes<24>>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{c}` is not a commitment (0x followed by 48 hex digits)"),
        );
    };
    let mut proof = Vec::new();
    for p in param(q, "proof")
        .unwrap_or("")
        .split([',', ' ', '\n'])
        .filter(|s| !s.trim().is_empty())
    {
        match p.trim().parse::<B256>() {
            Ok(n) if proof.len() < 32 => proof.push(n),
            Ok(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "a proof has at most 32 sibling hashes",
                );
            }
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("`{p}` in the proof is not a hash (0x followed by 64 hex digits)"),
                );
            }
        }
    }
    match a.chain.verify_stamp(writer, batch, commitment, proof).await {
        Ok(ok) => json_ok(
            &json!({"writer": writer, "batch": batch, "commitment": commitment, "verify_stamp": ok}),
        ),
        Err(e) => chain_error(e),
    }
}

/// `POST /api/verify?rcpt=…&name=…`: the body is the message, verified in memory.
async fn verify(state: &State, req: Request<Incoming>) -> Resp {
    let cap = state.opts.max_message_bytes;
    let q = query(&req);
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_big = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the message is larger than the {cap} bytes this page takes (milter.max_message_bytes)"
            ),
        )
    };
    if declared.is_some_and(|n| n > cap as u64) {
        return too_big();
    }
    let body = Limited::new(req.into_body(), cap);
    let raw = match tokio::time::timeout(Duration::from_secs(60), body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_big(),
        Ok(Err(_)) | Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "the upload did not arrive whole within 60 s: try again",
            );
        }
    };
    if raw.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "no message: drop an .eml file or paste one",
        );
    }
    let Ok(_one) = state.verifying.acquire().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let env = Envelope {
        rcpts: q
            .iter()
            .filter(|(k, v)| k == "rcpt" && !v.trim().is_empty())
            .take(100)
            .map(|(_, v)| v.trim().to_owned())
            .collect(),
        client_ip: None,
    };
    let mut ctx = state.ctx.clone();
    ctx.now = Some(crate::util::now());
    let chain = &state.auditor.chain;
    let parsed = verifying::parse(&raw);
    let report = verifying::verify_parsed(Ok(chain), &ctx, &raw, parsed.as_ref(), &env).await;
    let from_block = state.auditor.config().chain.from_block;
    let rec = verifying::recording_tx(chain, &report, from_block).await;
    let mut v = report_json(state.auditor.config(), &report, rec.as_ref());
    let (from, subject, leaf) = match &parsed {
        Some(m) => (
            m.from()
                .and_then(|a| a.first())
                .map(|a| match (a.name(), a.address()) {
                    (Some(n), Some(ad)) => format!("{n} <{ad}>"),
                    (None, Some(ad)) => ad.to_owned(),
                    (Some(n), None) => n.to_owned(),
                    (None, None) => String::new(),
                }),
            m.subject().map(str::to_owned),
            match inspect(m) {
                Inspection::Stamped(h) => match &h.mode {
                    Mode::Batch { batch, proof } => Some((
                        Address::from(h.writer),
                        B256::from(*batch),
                        FixedBytes::<24>::from(h.commitment()),
                        proof.iter().map(|n| B256::from(*n)).collect::<Vec<_>>(),
                    )),
                    Mode::Direct => None,
                },
                _ => None,
            },
        ),
        None => (None, None, None),
    };
    // The contract's own check of a batched leaf, beside the agent's.
    let verify_stamp: Value = match leaf {
        Some((w, b, c, p)) => match chain.verify_stamp(w, b, c, p).await {
            Ok(ok) => json!(ok),
            Err(e) => json!(format!("unavailable: {e:#}")),
        },
        None => Value::Null,
    };
    if let Value::Object(o) = &mut v {
        o.insert("from".into(), json!(from));
        o.insert("subject".into(), json!(subject));
        o.insert("verify_stamp".into(), verify_stamp);
        o.insert("file".into(), json!(param(&q, "name")));
        o.insert("rcpts".into(), json!(env.rcpts));
        o.insert(
            "differs".into(),
            json!(crate::session::message::differed(&report)),
        );
    }
    json_ok(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_pass_unless_public() {
        for h in [
            "127.0.0.1:8897",
            "127.0.0.1",
            "localhost:80",
            "LOCALHOST",
            "[::1]:8897",
            "127.1.2.3:1",
        ] {
            assert!(host_is_loopback(h), "{h}");
        }
        for h in [
            "",
            "evil.example:8897",
            "localhost.evil.example",
            "10.0.0.1:8897",
            "[::2]:1",
        ] {
            assert!(!host_is_loopback(h), "{h}");
        }
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("app.css", APP_CSS),
        ] {
            // The SVG namespace is a name, not a request.
            let text = text.replace("\"http://www.w3.org/2000/svg\"", "");
            assert!(
                !text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"),
                "{name} names an external URL"
            );
        }
        // Message contents reach the DOM as text only.
        assert!(
            !APP_JS.contains("innerHTML")
                && !APP_JS.contains("outerHTML")
                && !APP_JS.contains("insertAdjacentHTML")
        );
        assert!(!APP_JS.contains("document.write") && !APP_JS.contains("eval("));
    }
}
