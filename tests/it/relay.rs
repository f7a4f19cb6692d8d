// SPDX-License-Identifier: GPL-3.0-or-later
//! The SMTP relay, black-box: `relay::run` on a loopback port, raw SMTP from the test as the
//! sending MTA, a small in-test SMTP sink as the next hop (it records what it accepted and can
//! hold, refuse or be absent), a real anvil with the registry behind it. Covers stamping and
//! verifying across two relays, quarantine and reject of a tampered message, the 250 after DATA
//! only once the next hop accepted, next-hop failures, pipelining, size limit, maps at their
//! stage, chain outage, protocol errors and shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::node_bindings::AnvilInstance;
use alloy::primitives::Address;
use mailstamp::chain;
use mailstamp::config::Overrides;
use mailstamp::relay;
use mailstamp::session::{Daemon, Settings};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::harness::{TempDir, anvil, own_store, signer, tamper_body};

const T: Duration = Duration::from_secs(10);

/// What the sink answers after the final dot.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Accept,
    /// 554 5.7.1 after DATA.
    Refuse5,
    /// 451 4.3.0 after DATA.
    Refuse4,
    /// Wait for `release` before answering 250.
    Hold,
}

/// One message the sink accepted.
#[derive(Clone, Debug)]
pub(crate) struct Got {
    from: String,
    /// The whole MAIL FROM line, parameters included.
    mail_line: String,
    pub(crate) rcpts: Vec<String>,
    pub(crate) data: String,
}

/// A next hop that speaks just enough SMTP.
pub(crate) struct Sink {
    pub(crate) addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    mode: Arc<Mutex<Mode>>,
    release: Arc<Notify>,
}

impl Sink {
    pub(crate) async fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(Mutex::new(Mode::Accept));
        let release = Arc::new(Notify::new());
        let (g, m, r) = (got.clone(), mode.clone(), release.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (g, m, r) = (g.clone(), m.clone(), r.clone());
                tokio::spawn(async move {
                    let _ = sink_session(s, g, m, r).await;
                });
            }
        });
        Self {
            addr,
            got,
            mode,
            release,
        }
    }

    fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    pub(crate) fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

async fn sink_session(
    s: TcpStream,
    got: Arc<Mutex<Vec<Got>>>,
    mode: Arc<Mutex<Mode>>,
    release: Arc<Notify>,
) -> std::io::Result<()> {
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 sink ESMTP\r\n").await?;
    let (mut from, mut rcpts, mut mail_line) = (String::new(), Vec::new(), String::new());
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let up = line.to_ascii_uppercase();
        let addr = || {
            line.split_once('<')
                .and_then(|(_, a)| a.split_once('>'))
                .map(|(a, _)| a.to_owned())
                .unwrap_or_default()
        };
        if up.starts_with("EHLO") || up.starts_with("HELO") {
            w.write_all(b"250-sink\r\n250 PIPELINING\r\n").await?;
        } else if up.starts_with("MAIL") {
            from = addr();
            mail_line = line.trim_end().to_owned();
            rcpts.clear();
            w.write_all(b"250 2.1.0 ok\r\n").await?;
        } else if up.starts_with("RCPT") {
            rcpts.push(addr());
            w.write_all(b"250 2.1.5 ok\r\n").await?;
        } else if up.starts_with("DATA") {
            w.write_all(b"354 go ahead\r\n").await?;
            let mut data = String::new();
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).await? == 0 {
                    return Ok(());
                }
                if l == ".\r\n" {
                    break;
                }
                data.push_str(l.strip_prefix('.').unwrap_or(&l));
            }
            let m = *mode.lock().unwrap();
            match m {
                Mode::Refuse5 => w.write_all(b"554 5.7.1 sink says no\r\n").await?,
                Mode::Refuse4 => w.write_all(b"451 4.3.0 sink is busy\r\n").await?,
                Mode::Accept | Mode::Hold => {
                    if m == Mode::Hold {
                        release.notified().await;
                    }
                    got.lock().unwrap().push(Got {
                        from: from.clone(),
                        mail_line: mail_line.clone(),
                        rcpts: rcpts.clone(),
                        data,
                    });
                    w.write_all(b"250 2.0.0 queued\r\n").await?;
                }
            }
        } else if up.starts_with("QUIT") {
            w.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            w.write_all(b"250 ok\r\n").await?;
        }
    }
}

/// A relay served on 127.0.0.1:0 until dropped.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    dir: TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The chain half of a config (as the milter tests): RPC, registry, trust in the writer for
/// a.example, a DNS server that never answers.
fn chain_toml(rpc: &str, registry: Address, writer: Address) -> String {
    format!(
        "[chain]\nrpc_url = \"{rpc}\"\nregistry = \"{registry}\"\ntimeout_secs = 3\n\
         [dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\nattempts = 1\n\
         [trust]\n\"a.example\" = [\"{writer}\"]\n"
    )
}

/// No chain at all (closed port): enough for unstamped inbound mail and protocol tests.
const NO_CHAIN: &str = "[chain]\nrpc_url = \"http://127.0.0.1:1\"\ntimeout_secs = 1\n\
    [dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\nattempts = 1\n";

/// Starts a relay with `toml` (its `[relay]` section given separately, `next_hop` added) and
/// map files beside it.
pub(crate) async fn start(
    toml: &str,
    relay_toml: &str,
    next_hop: SocketAddr,
    maps: &[(&str, &str)],
    key: Option<&AnvilInstance>,
) -> Running {
    start_keyed(toml, relay_toml, next_hop, maps, key.map(|a| (a, 0))).await
}

/// As [`start`], writing with anvil account `i` of `key = (anvil, i)`.
async fn start_keyed(
    toml: &str,
    relay_toml: &str,
    next_hop: SocketAddr,
    maps: &[(&str, &str)],
    key: Option<(&AnvilInstance, usize)>,
) -> Running {
    let dir = TempDir::new("relay");
    for (name, text) in maps {
        std::fs::write(dir.0.join(name), text).unwrap();
    }
    let path = dir.0.join("mailstamp.toml");
    let q = dir.0.join("quarantine");
    std::fs::write(
        &path,
        own_store(
            &format!(
                "{toml}\n[relay]\nnext_hop = \"{next_hop}\"\nquarantine_dir = \"{}\"\nnext_hop_timeout_secs = 5\n{relay_toml}\n",
                q.display()
            ),
            &dir.0,
        ),
    )
    .unwrap();
    let settings = Settings::load(Some(&path), &Overrides::default()).unwrap();
    let r = Arc::new(
        Daemon::new(
            settings,
            key.map(|(a, i)| signer(a, i)),
            Some((path, Overrides::default())),
        )
        .with_owner("relay"),
    );
    let (listener, addr) = relay::bind("127.0.0.1:0").await.unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(relay::run(listener, r, stop.clone().cancelled_owned()));
    Running {
        addr,
        stop,
        server: Some(server),
        dir,
    }
}

/// A chain with the registry deployed; returns (anvil, registry, writer address).
async fn chain() -> (AnvilInstance, Address, Address) {
    let a = anvil();
    let d = chain::deploy(&a.endpoint(), signer(&a, 0), true, T)
        .await
        .unwrap();
    let w = signer(&a, 0).address();
    (a, d.address, w)
}

const MSG: &str = "From: Alice <alice@a.example>\r\n\
To: Bob <bob@b.example>\r\n\
Subject:  two spaces and a fold,\r\n\tsecond line\r\n\
Date: Tue, 24 Nov 2026 03:00:00 +0000\r\n\
Message-ID: <r1@a.example>\r\n\
\r\n\
Hello Bob,\r\n\
.a line that starts with a dot\r\n\
\r\n\
the quarterly figures are attached in spirit. Regards, Alice\r\n";

/// The sending MTA: raw SMTP.
struct Client {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    /// Connects and returns the client with the greeting.
    async fn connect(addr: SocketAddr) -> (Self, String) {
        let s = TcpStream::connect(addr).await.unwrap();
        let (r, w) = s.into_split();
        let mut c = Self {
            r: BufReader::new(r),
            w,
        };
        let g = c.reply().await;
        (c, g)
    }

    /// Reads one reply (all its lines); empty at end of stream.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut l = String::new();
            let n = tokio::time::timeout(T, self.r.read_line(&mut l))
                .await
                .expect("a reply in time")
                .unwrap();
            if n == 0 {
                return all;
            }
            all.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.unwrap();
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// EHLO, MAIL, RCPT…, DATA; panics unless each is accepted.
    async fn envelope(&mut self, from: &str, rcpts: &[&str]) {
        assert!(self.cmd("EHLO mx.a.example").await.starts_with("250"));
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        assert!(r.starts_with("250"), "{r}");
        for rc in rcpts {
            let r = self.cmd(&format!("RCPT TO:<{rc}>")).await;
            assert!(r.starts_with("250"), "{r}");
        }
        let r = self.cmd("DATA").await;
        assert!(r.starts_with("354"), "{r}");
    }

    /// Sends a message body (dot-stuffed here) and its final dot; returns the reply.
    async fn data(&mut self, raw: &[u8]) -> String {
        self.send(&stuff(raw)).await;
        self.reply().await
    }
}

fn stuff(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 8);
    let mut bol = true;
    for &b in raw {
        if bol && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        bol = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// One whole message through `addr`; the reply after the final dot.
pub(crate) async fn deliver(addr: SocketAddr, from: &str, rcpts: &[&str], raw: &[u8]) -> String {
    let (mut c, g) = Client::connect(addr).await;
    assert!(g.starts_with("220"), "{g}");
    c.envelope(from, rcpts).await;
    let r = c.data(raw).await;
    let _ = c.cmd("QUIT").await;
    r
}

/// The value of header `name` in `data` (first line only).
pub(crate) fn header(data: &str, name: &str) -> Option<String> {
    data.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

fn head(data: &str) -> String {
    data.split("\r\n\r\n").next().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stamped_by_one_relay_verified_by_another_tampering_quarantined_or_refused() {
    let (a, registry, writer) = chain().await;
    let base = chain_toml(&a.endpoint(), registry, writer);
    let sink = Sink::start().await;
    // b.example's relay (inbound) in front of the sink; a.example's (outbound) in front of it.
    let inbound = start(
        &format!("{base}[milter]\nauthserv_id = \"mx.b.example\"\n[milter.actions]\nspam = \"quarantine\"\nsuspect = \"quarantine\"\n"),
        "",
        sink.addr,
        &[],
        None,
    )
    .await;
    let outbound = start(&base, "outbound = true", inbound.addr, &[], Some(&a)).await;

    let r = deliver(
        outbound.addr,
        "alice@a.example",
        &["bob@b.example"],
        MSG.as_bytes(),
    )
    .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let got = sink.got();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(
        (m.from.as_str(), m.rcpts.clone()),
        ("alice@a.example", vec!["bob@b.example".to_owned()])
    );
    assert!(header(&m.data, "Mail-Stamp").is_some(), "{}", head(&m.data));
    let h = head(&m.data);
    assert!(
        h.contains("mx.b.example;\r\n\tmailstamp=pass (wanted"),
        "{h}"
    );
    assert_eq!(
        header(&m.data, "X-Mailstamp-Verdict").as_deref(),
        Some("wanted")
    );
    // The body came through intact, dot line included.
    assert!(
        m.data.contains("\r\n.a line that starts with a dot\r\n"),
        "{}",
        m.data
    );
    assert!(m.data.ends_with("Regards, Alice\r\n"), "{:?}", m.data);

    // The stamped message as it left a.example, one body letter changed, sent again to b.
    let stamped = strip_results(&m.data);
    assert!(!stamped.contains("mailstamp=pass"));
    let tampered = tamper_body(stamped.as_bytes()).expect("a letter to flip");
    let r = deliver(
        inbound.addr,
        "alice@a.example",
        &["bob@b.example"],
        &tampered,
    )
    .await;
    assert!(r.starts_with("250"), "quarantine is an accept: {r}");
    assert_eq!(
        sink.got().len(),
        1,
        "a quarantined message is not forwarded"
    );
    let q: Vec<_> = std::fs::read_dir(inbound.dir.0.join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    assert_eq!(q.len(), 1, "{q:?}");
    let held = std::fs::read_to_string(&q[0]).unwrap();
    assert!(held.starts_with("X-Mailstamp-Envelope-From: <alice@a.example>\r\nX-Mailstamp-Envelope-To: <bob@b.example>\r\n"), "{held}");
    let v = header(&held, "X-Mailstamp-Verdict").unwrap();
    assert!(v == "spam" || v == "suspect", "{held}");

    // Another receiver rejects spam: 550 after DATA, nothing forwarded.
    let rejecting = start(
        &format!("{base}[milter.actions]\nspam = \"reject\"\nsuspect = \"reject\"\n"),
        "",
        sink.addr,
        &[],
        None,
    )
    .await;
    let r = deliver(
        rejecting.addr,
        "alice@a.example",
        &["bob@b.example"],
        &tampered,
    )
    .await;
    assert!(r.starts_with("550 5.7.1 mailstamp: message refused"), "{r}");
    // A forged verdict header from outside is removed before ours is added.
    let mut forged = b"X-Mailstamp-Verdict: wanted\r\n".to_vec();
    forged.extend_from_slice(stamped.as_bytes());
    let r = deliver(
        rejecting.addr,
        "alice@a.example",
        &["bob@b.example"],
        &forged,
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    let last = sink.got().pop().unwrap();
    assert_eq!(
        last.data.matches("X-Mailstamp-Verdict").count(),
        1,
        "{}",
        head(&last.data)
    );
    assert!(
        head(&last.data).contains("mailstamp=pass"),
        "{}",
        head(&last.data)
    );
}

/// The message without the result headers b.example's relay added (as it left a.example).
fn strip_results(data: &str) -> String {
    let (h, body) = data.split_once("\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let mut skip = false;
    for l in h.split("\r\n") {
        if l.starts_with(' ') || l.starts_with('\t') {
            if !skip {
                out.push(l);
            }
            continue;
        }
        skip = l.starts_with("Authentication-Results:") || l.starts_with("X-Mailstamp-");
        if !skip {
            out.push(l);
        }
    }
    format!("{}\r\n\r\n{body}", out.join("\r\n"))
}

const UNSTAMPED: &str =
    "From: Carol <carol@c.example>\r\nTo: bob@b.example\r\nSubject: hi\r\n\r\nplain mail\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_250_after_data_waits_for_the_next_hop_and_its_failures_come_back() {
    let sink = Sink::start().await;
    let r = start(NO_CHAIN, "", sink.addr, &[], None).await;

    // Held at the sink: no reply to the final dot until the sink accepted.
    sink.set(Mode::Hold);
    let (mut c, _) = Client::connect(r.addr).await;
    c.envelope("carol@c.example", &["bob@b.example"]).await;
    c.send(&stuff(UNSTAMPED.as_bytes())).await;
    let mut line = String::new();
    let early = tokio::time::timeout(Duration::from_millis(500), c.r.read_line(&mut line)).await;
    assert!(
        early.is_err(),
        "replied before the next hop accepted: {line}"
    );
    assert!(sink.got().is_empty());
    sink.release.notify_one();
    let reply = c.reply().await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert_eq!(sink.got().len(), 1);
    let data = &sink.got()[0].data;
    assert!(head(data).contains("mailstamp=none (unstamped)"), "{data}");

    // A 5xx from the next hop is passed on; a 4xx, or no next hop, is a 4xx.
    sink.set(Mode::Refuse5);
    let reply = c.cmd("MAIL FROM:<carol@c.example>").await;
    assert!(reply.starts_with("250"), "{reply}");
    assert!(c.cmd("RCPT TO:<bob@b.example>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    let reply = c.data(UNSTAMPED.as_bytes()).await;
    assert!(
        reply.starts_with("554 5.7.1 next hop: sink says no"),
        "{reply}"
    );
    sink.set(Mode::Refuse4);
    let reply = deliver(
        r.addr,
        "carol@c.example",
        &["bob@b.example"],
        UNSTAMPED.as_bytes(),
    )
    .await;
    assert!(reply.starts_with("451 4.4.1"), "{reply}");
    assert_eq!(sink.got().len(), 1);

    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let r2 = start(NO_CHAIN, "", closed, &[], None).await;
    let reply = deliver(
        r2.addr,
        "carol@c.example",
        &["bob@b.example"],
        UNSTAMPED.as_bytes(),
    )
    .await;
    assert!(
        reply.starts_with("451 4.4.1 mailstamp: next hop unavailable"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_get_their_replies_in_order() {
    let sink = Sink::start().await;
    let r = start(NO_CHAIN, "", sink.addr, &[], None).await;
    let (mut c, g) = Client::connect(r.addr).await;
    assert!(g.starts_with("220 "), "{g}");
    let ehlo = c.cmd("EHLO mx.c.example").await;
    for cap in [
        "PIPELINING",
        "SIZE 26214400",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
    ] {
        assert!(ehlo.contains(cap), "{ehlo}");
    }
    // One write: MAIL, three RCPT, DATA (RFC 2920 group).
    c.send(b"MAIL FROM:<carol@c.example> SIZE=200 BODY=8BITMIME\r\nRCPT TO:<bob@b.example>\r\nRCPT TO:<eve@b.example>\r\nNOOP\r\nDATA\r\n")
        .await;
    for want in ["250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.0.0", "354"] {
        let got = c.reply().await;
        assert!(got.starts_with(want), "{want}: {got}");
    }
    // The message, its dot and the next transaction in one write.
    let mut batch = stuff(UNSTAMPED.as_bytes());
    batch.extend_from_slice(b"RSET\r\nMAIL FROM:<>\r\nRCPT TO:<bob@b.example>\r\nQUIT\r\n");
    c.send(&batch).await;
    for want in ["250 2.0.0", "250 2.0.0", "250 2.1.0", "250 2.1.5", "221"] {
        let got = c.reply().await;
        assert!(got.starts_with(want), "{want}: {got}");
    }
    assert_eq!(c.reply().await, "", "closed after QUIT");
    let got = sink.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpts, vec!["bob@b.example", "eve@b.example"]);
    assert!(
        got[0].mail_line.contains("BODY=8BITMIME"),
        "{}",
        got[0].mail_line
    );
    let trace = header(&got[0].data, "Received").unwrap();
    assert!(
        trace.starts_with("from mx.c.example ([127.0.0.1])"),
        "{trace}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_size_limit_and_bounds() {
    let sink = Sink::start().await;
    let r = start(
        NO_CHAIN,
        "max_message_bytes = 1000\nmax_recipients = 2\nmax_commands = 30",
        sink.addr,
        &[],
        None,
    )
    .await;
    let (mut c, _) = Client::connect(r.addr).await;
    assert!(
        c.cmd("MAIL FROM:<a@c.example>")
            .await
            .starts_with("503 5.5.1")
    );
    assert!(c.cmd("EHLO x").await.contains("SIZE 1000"));
    assert!(
        c.cmd("RCPT TO:<b@b.example>")
            .await
            .starts_with("503 5.5.1")
    );
    assert!(c.cmd("DATA").await.starts_with("503 5.5.1"));
    assert!(c.cmd("FROB").await.starts_with("500 5.5.1"));
    assert!(
        c.cmd("MAIL FROM:<a@c.example> SIZE=5000")
            .await
            .starts_with("552 5.3.4")
    );
    let long = format!("NOOP {}", "x".repeat(5000));
    assert!(c.cmd(&long).await.starts_with("500 5.5.2"));
    // The session is still usable after each refusal.
    let nudge = c.cmd("NOOP").await;
    assert!(
        nudge.starts_with("250") || nudge.starts_with("500"),
        "{nudge}"
    );
    assert!(c.cmd("RSET").await.starts_with("250 2.0.0"));
    assert!(c.cmd("MAIL FROM:<a@c.example>").await.starts_with("250"));
    assert!(
        c.cmd("MAIL FROM:<a@c.example>")
            .await
            .starts_with("503 5.5.1")
    );
    for rc in ["b@b.example", "c@b.example"] {
        assert!(c.cmd(&format!("RCPT TO:<{rc}>")).await.starts_with("250"));
    }
    assert!(
        c.cmd("RCPT TO:<d@b.example>")
            .await
            .starts_with("452 4.5.3")
    );
    assert!(c.cmd("DATA").await.starts_with("354"));
    // Over the limit without SIZE: read to the dot, then 552; nothing forwarded.
    let mut big = UNSTAMPED.as_bytes().to_vec();
    big.extend_from_slice("0123456789abcdef\r\n".repeat(100).as_bytes());
    assert!(c.data(&big).await.starts_with("552 5.3.4"));
    assert!(sink.got().is_empty());
    assert!(c.cmd("NOOP").await.starts_with("250"));
    // An empty message (the dot right after DATA) ends too.
    assert!(c.cmd("MAIL FROM:<a@c.example>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@b.example>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    let r = c.cmd(".").await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(sink.got().len(), 1);
    // Too many commands: 421 and the connection closes.
    let mut last = String::new();
    for _ in 0..30 {
        last = c.cmd("NOOP").await;
        if !last.starts_with("250") {
            break;
        }
    }
    assert!(last.starts_with("421 4.7.0"), "{last}");
    assert_eq!(c.reply().await, "");
    assert!(c.cmd("STARTTLS").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_refuse_at_their_stage() {
    let sink = Sink::start().await;
    let maps = [
        ("conn.map", "helo:bad.example reject No HELO like that\n"),
        (
            "sender.map",
            "spammer@c.example reject Go away\nlater@c.example tempfail\ntrap@c.example discard\n",
        ),
        (
            "rcpt.map",
            "gone@b.example reject\nbusy@b.example tempfail Mailbox busy\n",
        ),
    ];
    let toml = format!(
        "{NO_CHAIN}[maps]\nconnection = \"conn.map\"\nsender = \"sender.map\"\nrecipient = \"rcpt.map\"\n"
    );
    let r = start(&toml, "", sink.addr, &maps, None).await;
    let (mut c, _) = Client::connect(r.addr).await;
    assert!(
        c.cmd("EHLO bad.example")
            .await
            .starts_with("550 5.7.1 No HELO like that")
    );
    assert!(c.cmd("EHLO good.example").await.starts_with("250"));
    assert!(
        c.cmd("MAIL FROM:<spammer@c.example>")
            .await
            .starts_with("550 5.7.1 <spammer@c.example>: Go away")
    );
    assert!(
        c.cmd("MAIL FROM:<later@c.example>")
            .await
            .starts_with("451 4.7.1")
    );
    assert!(
        c.cmd("MAIL FROM:<carol@c.example>")
            .await
            .starts_with("250")
    );
    assert!(
        c.cmd("RCPT TO:<gone@b.example>")
            .await
            .starts_with("550 5.7.1 <gone@b.example>")
    );
    assert!(
        c.cmd("RCPT TO:<busy@b.example>")
            .await
            .starts_with("451 4.7.1 <busy@b.example>: Mailbox busy")
    );
    assert!(c.cmd("RCPT TO:<bob@b.example>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    assert!(c.data(UNSTAMPED.as_bytes()).await.starts_with("250"));
    let got = sink.got();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].rcpts,
        vec!["bob@b.example"],
        "refused recipients are not forwarded"
    );
    // discard: 250 at every stage, nothing forwarded.
    let reply = deliver(
        r.addr,
        "trap@c.example",
        &["bob@b.example"],
        UNSTAMPED.as_bytes(),
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    assert_eq!(sink.got().len(), 1);

    // A client refused by the connection map gets 554 at the greeting and nothing else.
    let toml2 = format!("{NO_CHAIN}[maps]\nconnection = \"conn.map\"\n");
    let r3 = start(
        &toml2,
        "",
        sink.addr,
        &[("conn.map", "127.0.0.0/8 reject Not from here\n")],
        None,
    )
    .await;
    let (mut c, g) = Client::connect(r3.addr).await;
    assert!(g.starts_with("554 5.7.1 Not from here"), "{g}");
    assert_eq!(c.reply().await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_outage_is_a_4xx_never_a_loss() {
    let (a, registry, writer) = chain().await;
    let base = chain_toml(&a.endpoint(), registry, writer);
    let sink = Sink::start().await;
    let inbound = start(&base, "", sink.addr, &[], None).await;
    let out_sink = Sink::start().await;
    let outbound = start(&base, "outbound = true", out_sink.addr, &[], Some(&a)).await;
    // Stamp one message while the chain is up.
    let reply = deliver(
        outbound.addr,
        "alice@a.example",
        &["bob@b.example"],
        MSG.as_bytes(),
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    let stamped = out_sink.got()[0].data.clone();
    drop(a);
    // Inbound: the stamp cannot be checked → 451, not spam, nothing forwarded.
    let reply = deliver(
        inbound.addr,
        "alice@a.example",
        &["bob@b.example"],
        stamped.as_bytes(),
    )
    .await;
    assert!(
        reply.starts_with("451 4.7.1 mailstamp: the stamp cannot be checked now"),
        "{reply}"
    );
    assert!(sink.got().is_empty());
    // Outbound: the stamp cannot be recorded → 451.
    let reply = deliver(
        outbound.addr,
        "alice@a.example",
        &["bob@b.example"],
        MSG.as_bytes(),
    )
    .await;
    assert!(
        reply.starts_with("451 4.7.1 mailstamp: cannot record the stamp now"),
        "{reply}"
    );
    assert_eq!(out_sink.got().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_421_to_idle_sessions_and_waits_for_them() {
    let sink = Sink::start().await;
    let mut r = start(NO_CHAIN, "", sink.addr, &[], None).await;
    let (mut c, _) = Client::connect(r.addr).await;
    assert!(c.cmd("EHLO x").await.starts_with("250"));
    r.stop.cancel();
    assert!(c.reply().await.starts_with("421 4.3.2"));
    let server = r.server.take().unwrap();
    tokio::time::timeout(T, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(r.addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_capped_and_idle_ones_time_out() {
    let sink = Sink::start().await;
    let r = start(
        NO_CHAIN,
        "max_sessions = 1\nidle_timeout_secs = 1",
        sink.addr,
        &[],
        None,
    )
    .await;
    let (mut first, g) = Client::connect(r.addr).await;
    assert!(g.starts_with("220"), "{g}");
    let (mut second, g) = Client::connect(r.addr).await;
    assert!(g.starts_with("421 4.7.0"), "{g}");
    assert_eq!(second.reply().await, "");
    // Silent for longer than idle_timeout_secs: 421 and closed; the slot is free again.
    assert!(first.reply().await.starts_with("421 4.4.2"));
    assert_eq!(first.reply().await, "");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_third, g) = Client::connect(r.addr).await;
    assert!(g.starts_with("220"), "{g}");
}

/// Defect 1 of issue 10, through the relay: a From domain that does not authorise our writer
/// is refused for good (`550 5.7.1`, naming the record to publish), not deferred as chain
/// trouble; nothing is forwarded; the next authorised message is stamped; `on_stamp_error =
/// "pass"` forwards it unstamped with the refusal in the mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_stamping_refusal_is_a_5xx_not_chain_trouble() {
    let (a, registry, writer) = chain().await;
    let base = chain_toml(&a.endpoint(), registry, writer).replace(
        "[trust]\n",
        "[trust]\n\"c.example\" = [\"0x000000000000000000000000000000000000dEaD\"]\n",
    );
    let foreign = MSG.replace("alice@a.example", "carol@c.example");
    let sink = Sink::start().await;
    let strict = start(&base, "outbound = true", sink.addr, &[], Some(&a)).await;
    let reply = deliver(
        strict.addr,
        "carol@c.example",
        &["bob@b.example"],
        foreign.as_bytes(),
    )
    .await;
    assert!(
        reply.starts_with("550 5.7.1 mailstamp: refusing to stamp for `c.example`")
            && reply.contains("_mailstamp.c.example TXT"),
        "{reply}"
    );
    assert!(sink.got().is_empty());
    let reply = deliver(
        strict.addr,
        "alice@a.example",
        &["bob@b.example"],
        MSG.as_bytes(),
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    assert!(sink.got()[0].data.starts_with("Received: "));
    assert!(sink.got()[0].data.contains("Mail-Stamp: "));

    let keyless = start(&base, "outbound = true", sink.addr, &[], None).await;
    let reply = deliver(
        keyless.addr,
        "alice@a.example",
        &["bob@b.example"],
        MSG.as_bytes(),
    )
    .await;
    assert!(
        reply.starts_with("550 5.3.5 mailstamp: stamping needs a writer key"),
        "{reply}"
    );

    let pass_sink = Sink::start().await;
    let lenient = start(
        &format!("{base}[milter]\non_stamp_error = \"pass\"\n"),
        "outbound = true",
        pass_sink.addr,
        &[],
        Some(&a),
    )
    .await;
    let reply = deliver(
        lenient.addr,
        "carol@c.example",
        &["bob@b.example"],
        foreign.as_bytes(),
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    let got = &pass_sink.got()[0].data;
    assert!(
        got.contains("X-Mailstamp-Unstamped: refused: refusing to stamp for `c.example`")
            && !got.contains("Mail-Stamp: "),
        "{got}"
    );
}

/// The relay as a forwarder and as a list agent (issue 13): a.example's outbound relay →
/// b.example's inbound relay (the alias bob@b.example forwarded under its hop; a post for the
/// list dev@lists.b.example remembered) → forward.example's verifying relay → the sink. The
/// list's copy, made from the post as it arrived (subject tag, footer), goes out through
/// b.example's outbound relay (the same store) under the list's hop; a copy of a message the
/// list never received goes as it came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_forwards_an_alias_and_a_list_copy_under_its_hops() {
    let (a, registry, writer) = chain().await;
    let list_writer = signer(&a, 1).address();
    let base = format!(
        "{}\"b.example\" = [\"{list_writer}\"]\n\"lists.b.example\" = [\"{list_writer}\"]\n",
        chain_toml(&a.endpoint(), registry, writer)
    );
    let sink = Sink::start().await;
    let receiver = start(
        &format!("{base}[milter]\nauthserv_id = \"mx.forward.example\"\n"),
        "",
        sink.addr,
        &[],
        None,
    )
    .await;
    let shared = TempDir::new("relay-lists");
    let f = format!(
        "{base}[store]\npath = \"{}\"\n[milter]\nauthserv_id = \"mx.b.example\"\n\
         [forward]\naliases = {{ \"bob@b.example\" = [\"bob@forward.example\"] }}\n\
         [forward.lists.\"dev@lists.b.example\"]\nsubject_tag = \"[dev]\"\n",
        shared.0.join("b.sqlite").display()
    );
    let f_in = start_keyed(&f, "", receiver.addr, &[], Some((&a, 1))).await;
    let f_out = start_keyed(&f, "outbound = true", receiver.addr, &[], Some((&a, 1))).await;
    let sender = start(&base, "outbound = true", f_in.addr, &[], Some(&a)).await;

    // The alias: forwarded under b.example's hop, the envelope now bob@forward.example.
    let r = deliver(
        sender.addr,
        "alice@a.example",
        &["bob@b.example"],
        MSG.as_bytes(),
    )
    .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let got = sink.got();
    let m = got.last().unwrap();
    assert_eq!(m.rcpts, ["bob@forward.example"]);
    let h = head(&m.data).replace("\r\n\t", " ");
    assert!(
        h.contains("mailstamp=pass (wanted")
            && h.contains("forwarded by b.example, author alice@a.example verified there"),
        "{h}"
    );
    assert_eq!(h.matches("Mail-Stamp:").count(), 2, "{h}");
    let forwarded = strip_results(&m.data);

    // A post to the list: remembered at b.example, delivered on (the sink is the list's inbox).
    let post = "From: Alice <alice@a.example>\r\nTo: dev@lists.b.example\r\n\
        Subject: release plan\r\nDate: Tue, 24 Nov 2026 03:00:00 +0000\r\n\
        Message-ID: <p1@a.example>\r\n\r\nWe ship on Friday.\r\n";
    let r = deliver(
        sender.addr,
        "alice@a.example",
        &["dev@lists.b.example"],
        post.as_bytes(),
    )
    .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let received = strip_results(&sink.got().last().unwrap().data);
    // The list server's copy: tag and footer; sent by the list's bounce address.
    let copy = received.replace("Subject: release plan", "Subject: [dev] release plan")
        + "_______________\r\ndev mailing list\r\n";
    let r = deliver(
        f_out.addr,
        "dev-bounces@lists.b.example",
        &["carol@forward.example"],
        copy.as_bytes(),
    )
    .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let m = sink.got().pop().unwrap();
    assert_eq!(m.rcpts, ["carol@forward.example"]);
    let h = head(&m.data).replace("\r\n\t", " ");
    assert!(
        h.contains("mailstamp=pass (wanted")
            && h.contains("via list at lists.b.example, author alice@a.example verified there"),
        "{h}"
    );

    // The forwarded message sent by the list, which never received it: no hop of the list's.
    let r = deliver(
        f_out.addr,
        "dev-bounces@lists.b.example",
        &["carol@forward.example"],
        forwarded.as_bytes(),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    let m = sink.got().pop().unwrap();
    let h = head(&m.data).replace("\r\n\t", " ");
    assert_eq!(h.matches("Mail-Stamp:").count(), 2, "as it came:\n{h}");
    assert!(!h.contains("mailstamp=pass"), "{h}");
}
