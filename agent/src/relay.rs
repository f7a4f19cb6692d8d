// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp relay`: the agent as an SMTP hop, for MTAs without milter support (or a
//! Postfix `content_filter`). It owns the SMTP server side (smtp-proto parsing on a buffered
//! stream, pipelining, size limit, timeouts, session cap, graceful shutdown), the `[relay]`
//! configuration, the quarantine directory, and forwarding to the next hop (mail-send). Every
//! decision — maps per stage, outbound or inbound, verdict → action, header texts — is
//! [`crate::session`]'s, exactly as for the milter; the settings and the chain connection are
//! the milter's [`Milter`].
//!
//! The final 250 after DATA is sent only once the next hop has accepted the message: a
//! next-hop failure is a 4xx (the sending MTA keeps the mail and retries), a 5xx from the next
//! hop is passed on as a 5xx.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alloy::signers::local::PrivateKeySigner;
use anyhow::{Result, bail};
use mailstamp_core::MAX_MESSAGE_BYTES;
use serde::Deserialize;
use smtp_proto::request::receiver::DataReceiver;
use smtp_proto::{Error as ProtoError, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Overrides;
use crate::maps::{Action, VerifyPolicy};
use crate::milter::{Milter, Settings, TroublePolicy};
use crate::session::{self, Refusal, Step, UNSTAMPED_HEADER};

/// `[relay]` in the configuration file. The policy (trusted networks, actions per verdict,
/// `on_stamp_error`, `on_temperror`, authserv-id, `lookup_tx`) is `[milter]`'s: one policy,
/// two adapters.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Where the relay listens (`HOST:PORT`); `--listen` overrides it.
    pub listen: String,
    /// Where accepted mail goes (`HOST:PORT`), in clear SMTP: a loopback or private hop
    /// (Postfix's re-injection `smtpd`, a smarthost on the same network).
    pub next_hop: String,
    /// The name in the greeting and EHLO reply, and in EHLO to the next hop (default: this
    /// host's name).
    pub hostname: Option<String>,
    /// Largest message taken (bytes), advertised as SIZE; bigger ones get `552 5.3.4`.
    pub max_message_bytes: usize,
    /// Most SMTP sessions served at once; one more gets `421 4.7.0` (the client retries).
    pub max_sessions: usize,
    /// Most commands in one session (pipelined or not) before `421 4.7.0`.
    pub max_commands: usize,
    /// Most recipients of one message (more get `452 4.5.3`).
    pub max_recipients: usize,
    /// Seconds a client may stay silent between commands or during DATA.
    pub idle_timeout_secs: u64,
    /// Seconds one session may last in all.
    pub session_timeout_secs: u64,
    /// Seconds for the whole exchange with the next hop (connect to final reply).
    pub next_hop_timeout_secs: u64,
    /// Every client of this listener sends outbound mail (to be stamped), whatever its
    /// address — for a listener only the submission side can reach. There is no SMTP AUTH in
    /// the relay: outbound is decided by this flag or `[milter] trusted_networks`.
    pub outbound: bool,
    /// Where messages whose action is `quarantine` are kept (one `.eml` per message, the
    /// envelope in `X-Mailstamp-Envelope-*` fields on top). Without it, quarantine is a
    /// tempfail (never a silent drop).
    pub quarantine_dir: Option<PathBuf>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:10025".to_owned(),
            next_hop: "127.0.0.1:10026".to_owned(),
            hostname: None,
            max_message_bytes: 25 * 1024 * 1024,
            max_sessions: 100,
            max_commands: 1000,
            max_recipients: 1000,
            idle_timeout_secs: 300,
            session_timeout_secs: 1800,
            next_hop_timeout_secs: 120,
            outbound: false,
            quarantine_dir: None,
        }
    }
}

impl RelayConfig {
    /// Checks the limits and the next hop's form (done when the settings are built).
    pub(crate) fn check(&self) -> Result<()> {
        if self.max_message_bytes == 0 || self.max_message_bytes > MAX_MESSAGE_BYTES {
            bail!("relay.max_message_bytes must be between 1 and {MAX_MESSAGE_BYTES}");
        }
        if self.max_sessions == 0 || self.max_commands == 0 || self.max_recipients == 0 {
            bail!("relay.max_sessions, max_commands and max_recipients must be at least 1");
        }
        if self.idle_timeout_secs == 0
            || self.session_timeout_secs == 0
            || self.next_hop_timeout_secs == 0
        {
            bail!("relay timeouts must be at least 1 second");
        }
        let (host, port) = split_host_port(&self.next_hop)?;
        if host.is_empty() || port == 0 {
            bail!("relay.next_hop `{}`: give HOST:PORT", self.next_hop);
        }
        Ok(())
    }
}

fn split_host_port(s: &str) -> Result<(&str, u16)> {
    let Some((host, port)) = s.rsplit_once(':') else {
        bail!("`{s}`: give HOST:PORT");
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match port.parse::<u16>() {
        Ok(p) => Ok((host, p)),
        Err(_) => bail!("`{s}`: the port is not a number"),
    }
}

/// The relay: the milter's settings and chain connection, served over SMTP.
pub struct Relay {
    core: Milter,
}

impl Relay {
    /// A relay judging with `settings`, stamping with `signer` (none: outbound mail cannot be
    /// stamped and meets `on_stamp_error`); `source` is the config file [`Relay::reload`]
    /// reads again.
    pub fn new(
        settings: Settings,
        signer: Option<PrivateKeySigner>,
        source: Option<(PathBuf, Overrides)>,
    ) -> Result<Self> {
        // `Settings::new` checked `[relay]`; settings built by hand are checked here.
        settings.cfg.relay.check()?;
        Ok(Self {
            core: Milter::new(settings, signer, source).with_owner("relay"),
        })
    }

    /// Names this relay in the batch journal (default `relay`; see [`Milter::with_owner`]).
    pub fn with_owner(self, owner: impl Into<String>) -> Self {
        Self {
            core: self.core.with_owner(owner),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.core.settings()
    }

    /// At start, in batched mode: the batches a previous run left pending (see
    /// [`Milter::pending_batches`]); call it before serving.
    pub async fn pending_batches(&self) -> Result<Vec<crate::store::DaemonBatchRow>> {
        self.core.pending_batches().await
    }

    /// Deletes old ended batches from the journal (see [`Milter::prune_journal`]).
    pub async fn prune_journal(&self) -> Result<usize> {
        self.core.prune_journal().await
    }

    /// Applies `stamp.pending_on_restart` to `pending` (see [`Milter::recover_batches`]).
    pub async fn recover_batches(
        &self,
        pending: Vec<crate::store::DaemonBatchRow>,
    ) -> Result<Vec<crate::batcher::Recovered>> {
        self.core.recover_batches(pending).await
    }

    /// Reads the config file and maps again; on error the old ones stay in force. The
    /// listen address and the session cap are read at start only.
    pub async fn reload(&self) -> Result<()> {
        self.core.reload().await
    }
}

/// Serves SMTP on `listener` until `shutdown` completes. Then idle sessions get
/// `421 4.3.2` and the ones handling a message finish it (bounded by the timeouts) before
/// this returns.
pub async fn run(
    listener: TcpListener,
    relay: Arc<Relay>,
    shutdown: impl Future,
) -> std::io::Result<()> {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(relay.settings().cfg.relay.max_sessions));
    tokio::pin!(shutdown);
    let result = loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break Ok(()),
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) if is_transient(&e) => {
                    warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => break Err(e),
            },
        };
        let relay = relay.clone();
        let cancel = cancel.clone();
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                tracker.spawn(async move {
                    let _permit = permit;
                    serve(&relay, stream, peer, &cancel).await;
                });
            }
            Err(_) => {
                tracker.spawn(async move {
                    let mut stream = stream;
                    let _ = stream
                        .write_all(b"421 4.7.0 Too many sessions, try again later\r\n")
                        .await;
                });
            }
        }
    };
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    result
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || e.raw_os_error().is_some_and(|c| c == 24 || c == 23) // EMFILE, ENFILE
}

/// Longest command line taken (RFC 5321 asks for 512; extensions make lines longer).
const MAX_LINE: usize = 4096;

/// One message from MAIL FROM to the end of DATA.
struct Msg {
    settings: Arc<Settings>,
    outbound: bool,
    sender: String,
    rcpts: Vec<String>,
    sender_policy: Option<VerifyPolicy>,
    rcpt_policies: Vec<Option<VerifyPolicy>>,
    /// A map said discard: take the message, then drop it.
    discard: bool,
    /// The client declared `BODY=8BITMIME`; the next hop is told the same.
    eight_bit: bool,
}

/// One SMTP connection.
struct Conn<'a> {
    relay: &'a Relay,
    peer: SocketAddr,
    hostname: String,
    helo: Option<String>,
    client_accepted: bool,
    outbound_client: bool,
    msg: Option<Msg>,
    commands: usize,
    out: Vec<u8>,
}

/// What the connection does after a command.
enum Next {
    Command,
    Data,
    Close,
}

fn reply(out: &mut Vec<u8>, code: u16, xcode: &str, text: &str) {
    out.extend_from_slice(format!("{code} {xcode} {text}\r\n").as_bytes());
}

fn refuse(out: &mut Vec<u8>, r: &Refusal) {
    reply(out, r.code, &r.xcode, &r.text);
}

fn host_name(s: &Settings) -> String {
    s.cfg
        .relay
        .hostname
        .clone()
        .unwrap_or_else(|| s.authserv_id.clone())
}

async fn serve(relay: &Relay, mut stream: TcpStream, peer: SocketAddr, cancel: &CancellationToken) {
    let s = relay.settings();
    let rc = s.cfg.relay.clone();
    let ip = peer.ip();
    let mut c = Conn {
        relay,
        peer,
        hostname: host_name(&s),
        helo: None,
        client_accepted: false,
        outbound_client: rc.outbound || session::outbound_client(&s, Some(ip), None),
        msg: None,
        commands: 0,
        out: Vec::new(),
    };
    // No reverse DNS here: hostname keys of the connection map never match a relay client.
    let (step, accepted) = session::at_connect(&s, Some(ip), "unknown");
    c.client_accepted = accepted;
    match step {
        Step::Go | Step::Discard => {
            let greeting = format!("220 {} ESMTP mailstamp relay\r\n", c.hostname);
            c.out.extend_from_slice(greeting.as_bytes());
        }
        Step::Refuse(r) => {
            // 554 / 421 greeting: no mail is taken on this connection.
            let code = if r.permanent() { 554 } else { 421 };
            reply(&mut c.out, code, &r.xcode, &r.text);
            let _ = stream.write_all(&c.out).await;
            return;
        }
    }
    drop(s);
    let idle = Duration::from_secs(rc.idle_timeout_secs);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(rc.session_timeout_secs);
    // The command line being read, and whether it already ran over MAX_LINE.
    let mut line: Vec<u8> = Vec::with_capacity(512);
    let mut overlong = false;
    let mut data: Option<(DataReceiver, Vec<u8>, bool)> = None;
    let mut buf = vec![0u8; 16 * 1024];
    'conn: loop {
        if !c.out.is_empty() {
            if stream.write_all(&c.out).await.is_err() {
                return;
            }
            c.out.clear();
        }
        let wait = idle.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let n = tokio::select! {
            _ = cancel.cancelled(), if data.is_none() => {
                reply(&mut c.out, 421, "4.3.2", "mailstamp relay shutting down, try again later");
                break 'conn;
            }
            r = tokio::time::timeout(wait, stream.read(&mut buf)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => n,
                Err(_) => {
                    reply(&mut c.out, 421, "4.4.2", "timeout, closing the connection");
                    break 'conn;
                }
            },
        };
        let mut bytes = buf[..n].iter();
        while bytes.len() > 0 {
            if let Some((receiver, raw, overflow)) = data.as_mut() {
                let done = receiver.ingest(&mut bytes, raw);
                let limit = rc.max_message_bytes;
                if raw.len() > limit {
                    // Keep reading to the final dot, without keeping what we will refuse.
                    *overflow = true;
                    raw.clear();
                }
                if !done {
                    continue;
                }
                let Some((_, mut raw, overflow)) = data.take() else {
                    continue;
                };
                raw.drain(..raw.len().min(2));
                // Replies to the commands before DATA are out already (sent with 354).
                let msg = c.msg.take();
                match msg {
                    _ if overflow => refuse(&mut c.out, &session::too_big(limit)),
                    None => reply(&mut c.out, 503, "5.5.1", "no transaction"),
                    Some(msg) => {
                        let r = c.finish(msg, raw).await;
                        refuse(&mut c.out, &r);
                    }
                }
                continue;
            }
            // Whole lines only, each at most MAX_LINE bytes: a longer one is answered (500)
            // once its end arrives, without keeping it.
            let rest = bytes.as_slice();
            let (chunk, complete) = match rest.iter().position(|&b| b == b'\n') {
                Some(p) => (&rest[..=p], true),
                None => (rest, false),
            };
            bytes = rest[chunk.len()..].iter();
            if line.len() + chunk.len() > MAX_LINE {
                overlong = true;
                line.clear();
            } else if !overlong {
                line.extend_from_slice(chunk);
            }
            if !complete {
                continue;
            }
            let req = if std::mem::take(&mut overlong) {
                Err(ProtoError::ResponseTooLong)
            } else {
                Request::parse(&mut line.iter()).map(Request::into_owned)
            };
            line.clear();
            c.commands += 1;
            if c.commands > rc.max_commands {
                reply(
                    &mut c.out,
                    421,
                    "4.7.0",
                    "too many commands, closing the connection",
                );
                break 'conn;
            }
            match req {
                Ok(req) => match c.command(req) {
                    Next::Command => {}
                    Next::Data => {
                        // Primed with the CRLF of the DATA line, so that a dot right at the
                        // start ends an empty message; the two bytes go again at the end.
                        let (mut receiver, mut raw) = (DataReceiver::new(), Vec::new());
                        receiver.ingest(&mut b"\r\n".iter(), &mut raw);
                        data = Some((receiver, raw, false));
                    }
                    Next::Close => break 'conn,
                },
                Err(e) => protocol_error(&mut c.out, &e),
            }
        }
    }
    if !c.out.is_empty() {
        let _ = stream.write_all(&c.out).await;
    }
    let _ = stream.shutdown().await;
}

fn protocol_error(out: &mut Vec<u8>, e: &ProtoError) {
    match e {
        ProtoError::ResponseTooLong => reply(out, 500, "5.5.2", "line too long"),
        ProtoError::UnknownCommand => reply(out, 500, "5.5.1", "command unrecognized"),
        ProtoError::InvalidSenderAddress => reply(out, 501, "5.1.7", "bad sender address syntax"),
        ProtoError::InvalidRecipientAddress => {
            reply(out, 501, "5.1.3", "bad recipient address syntax")
        }
        ProtoError::SyntaxError { syntax } => {
            reply(out, 501, "5.5.4", &format!("syntax: {syntax}"))
        }
        ProtoError::InvalidParameter { param } => {
            reply(out, 501, "5.5.4", &format!("invalid parameter {param}"))
        }
        ProtoError::UnsupportedParameter { param } => reply(
            out,
            555,
            "5.5.4",
            &format!("unsupported parameter {}", session::clean(param, 40)),
        ),
        ProtoError::NeedsMoreData { .. } | ProtoError::InvalidResponse { .. } => {
            reply(out, 500, "5.5.2", "syntax error")
        }
    }
}

impl Conn<'_> {
    /// HELO / EHLO: the HELO map (unless the client is accepted already), a fresh
    /// transaction, and the greeting (EHLO: with the extensions).
    fn hello(&mut self, host: String, extended: bool) -> Next {
        let s = self.relay.settings();
        self.msg = None;
        if !self.client_accepted {
            let (step, accepted) = session::at_helo(&s, &host);
            self.client_accepted = accepted;
            if let Step::Refuse(r) = step {
                refuse(&mut self.out, &r);
                return Next::Command;
            }
        }
        self.helo = Some(host);
        let text = if extended {
            format!(
                "250-{}\r\n250-PIPELINING\r\n250-SIZE {}\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n",
                self.hostname, s.cfg.relay.max_message_bytes
            )
        } else {
            format!("250 {}\r\n", self.hostname)
        };
        self.out.extend_from_slice(text.as_bytes());
        Next::Command
    }

    fn command(&mut self, req: Request<String>) -> Next {
        let out = &mut self.out;
        match req {
            Request::Helo { host } => return self.hello(host, false),
            Request::Ehlo { host } | Request::Lhlo { host } => return self.hello(host, true),
            Request::Mail { from } => {
                if self.helo.is_none() {
                    reply(out, 503, "5.5.1", "send HELO/EHLO first");
                } else if self.msg.is_some() {
                    reply(out, 503, "5.5.1", "nested MAIL command");
                } else {
                    let s = self.relay.settings();
                    let declared = (from.size > 0).then_some(from.size as u64);
                    let limit = s.cfg.relay.max_message_bytes;
                    let (policy, discard) = match session::at_mail(
                        &s,
                        &from.address,
                        declared,
                        limit,
                        self.client_accepted,
                    ) {
                        Ok(p) => (p, false),
                        Err(Step::Refuse(r)) => {
                            refuse(out, &r);
                            return Next::Command;
                        }
                        Err(Step::Discard | Step::Go) => (None, true),
                    };
                    self.msg = Some(Msg {
                        outbound: self.outbound_client,
                        settings: s,
                        sender: from.address,
                        rcpts: Vec::new(),
                        sender_policy: policy,
                        rcpt_policies: Vec::new(),
                        discard,
                        eight_bit: from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0,
                    });
                    reply(out, 250, "2.1.0", "sender ok");
                }
            }
            Request::Rcpt { to } => match self.msg.as_mut() {
                None => reply(out, 503, "5.5.1", "need MAIL before RCPT"),
                Some(m) if m.rcpts.len() >= m.settings.cfg.relay.max_recipients => {
                    reply(out, 452, "4.5.3", "too many recipients")
                }
                Some(m) => match session::at_rcpt(&m.settings, &to.address, m.outbound) {
                    Ok(p) => {
                        m.rcpts.push(to.address);
                        m.rcpt_policies.push(p);
                        reply(out, 250, "2.1.5", "recipient ok");
                    }
                    Err(Step::Refuse(r)) => refuse(out, &r),
                    Err(Step::Discard | Step::Go) => {
                        m.discard = true;
                        m.rcpts.push(to.address);
                        m.rcpt_policies.push(None);
                        reply(out, 250, "2.1.5", "recipient ok");
                    }
                },
            },
            Request::Data => match &self.msg {
                None => reply(out, 503, "5.5.1", "need MAIL before DATA"),
                Some(m) if m.rcpts.is_empty() => reply(out, 554, "5.5.1", "no valid recipients"),
                Some(_) => {
                    out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                    return Next::Data;
                }
            },
            Request::Rset => {
                self.msg = None;
                reply(out, 250, "2.0.0", "ok");
            }
            Request::Noop { .. } => reply(out, 250, "2.0.0", "ok"),
            Request::Quit => {
                reply(out, 221, "2.0.0", "bye");
                return Next::Close;
            }
            Request::Vrfy { .. } => reply(out, 252, "2.5.0", "cannot VRFY, send some mail"),
            Request::Help { .. } => reply(out, 214, "2.0.0", "see RFC 5321"),
            Request::Bdat { .. } => reply(out, 502, "5.5.1", "CHUNKING is not offered"),
            Request::StartTls | Request::Auth { .. } => {
                reply(out, 502, "5.5.1", "not offered by the mailstamp relay")
            }
            _ => reply(out, 502, "5.5.1", "command not implemented"),
        }
        Next::Command
    }

    /// The whole message is in: stamp or judge it, act, forward. The reply is the one the
    /// client gets after its final dot.
    async fn finish(&mut self, msg: Msg, raw: Vec<u8>) -> Refusal {
        let done = |text: &str| Refusal {
            code: 250,
            xcode: "2.0.0".to_owned(),
            text: text.to_owned(),
        };
        let ip = self.peer.ip();
        if msg.discard {
            info!(client = %ip, sender = msg.sender, "discarded by a map");
            return done("ok, discarded");
        }
        let s = msg.settings.clone();
        let raw = unstuffed_tail(raw);
        // Sender-written fields that claim to be ours go on both paths: a Sieve rule reads
        // them (ours for a local recipient, the next site's for outbound mail).
        let raw = strip_ours(&raw, &s.authserv_id);
        let body = if msg.outbound {
            match session::stamp(&self.relay.core, &s, &raw, &msg.sender, &msg.rcpts).await {
                Ok(st) => {
                    info!(client = %ip, token = %st.token, tx = %st.recorded.tx, batch = ?st.batch, rcpts = msg.rcpts.len(), "stamped");
                    st.message
                }
                Err(e) => {
                    warn!(client = %ip, "cannot stamp: {e}");
                    match s.milter.on_stamp_error {
                        TroublePolicy::Tempfail => {
                            return Refusal::new(
                                false,
                                "4.7.1",
                                "mailstamp: cannot record the stamp now, try again later",
                            );
                        }
                        TroublePolicy::Pass => {
                            let mut b = format!("{UNSTAMPED_HEADER}: temporary chain error\r\n")
                                .into_bytes();
                            b.extend_from_slice(&raw);
                            b
                        }
                    }
                }
            }
        } else {
            let j = session::judge(
                &self.relay.core,
                &s,
                &raw,
                &msg.rcpts,
                Some(ip),
                self.helo.as_deref().unwrap_or(""),
                &msg.sender,
                msg.sender_policy.as_ref(),
                &msg.rcpt_policies,
            )
            .await;
            info!(
                client = %ip,
                verdict = j.report.verdict.as_str(),
                score = j.report.score,
                action = ?j.action,
                reason = j.report.reason.as_deref().unwrap_or(""),
                "verified"
            );
            if let Some(r) = j.refusal {
                return r;
            }
            let mut b = Vec::with_capacity(raw.len() + 512);
            for (name, value) in &j.headers {
                b.extend_from_slice(name.as_bytes());
                b.push(b':');
                b.extend_from_slice(value.replace('\n', "\r\n").as_bytes());
                b.extend_from_slice(b"\r\n");
            }
            b.extend_from_slice(&raw);
            match j.action {
                Action::Discard => return done("ok, discarded"),
                Action::Quarantine => {
                    return match quarantine(&s, &msg, &b).await {
                        Ok(path) => {
                            info!(client = %ip, path = %path.display(), "quarantined");
                            done("ok, held by mailstamp")
                        }
                        Err(e) => {
                            warn!(client = %ip, "cannot quarantine: {e:#}");
                            Refusal::new(false, "4.3.0", "mailstamp: cannot quarantine")
                        }
                    };
                }
                Action::Accept | Action::AddHeader | Action::Tempfail | Action::Reject => b,
            }
        };
        // RFC 5321 4.4: a relaying server adds its trace line.
        let mut traced = received(
            self.helo.as_deref().unwrap_or("unknown"),
            ip,
            &self.hostname,
            crate::ops::now(),
        )
        .into_bytes();
        traced.extend_from_slice(&body);
        forward(&s, &msg, &traced).await
    }
}

/// The `Received:` line this hop adds (RFC 5321 4.4), folded, CRLF-terminated.
fn received(helo: &str, ip: std::net::IpAddr, by: &str, now: u64) -> String {
    let helo = session::clean(helo, 100).replace([' ', '(', ')', ';'], "?");
    format!(
        "Received: from {helo} ([{ip}])\r\n\tby {by} (mailstamp relay) with ESMTP;\r\n\t{}\r\n",
        rfc5322_date(now)
    )
}

/// `Tue, 24 Nov 2026 03:00:00 +0000` for a unix time (UTC).
fn rfc5322_date(t: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = t / 86_400;
    let (y, m, d, secs) = crate::ops::civil(t);
    format!(
        "{}, {d} {} {y} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// DATA content ends with the CRLF before the final dot; mail-send adds that CRLF again.
fn unstuffed_tail(mut raw: Vec<u8>) -> Vec<u8> {
    if raw.ends_with(b"\r\n") {
        raw.truncate(raw.len() - 2);
    }
    raw
}

/// Removes header fields that claim our results (a sender could write them to fool a Sieve
/// rule); the body is untouched.
fn strip_ours(raw: &[u8], authserv_id: &str) -> Vec<u8> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |i| i + 2);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < head_end {
        // One field: its first line and the continuation lines after it.
        let mut j = i;
        loop {
            let nl = raw[j..head_end]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(head_end, |p| j + p + 1);
            j = nl;
            if j >= head_end || !matches!(raw[j], b' ' | b'\t') {
                break;
            }
        }
        let field = &raw[i..j];
        let keep = match field.iter().position(|&b| b == b':') {
            Some(colon) => {
                let name = String::from_utf8_lossy(&field[..colon]);
                !session::is_ours(name.trim(), &field[colon + 1..], authserv_id)
            }
            None => true,
        };
        if keep {
            out.extend_from_slice(field);
        }
        i = j;
    }
    out.extend_from_slice(&raw[head_end..]);
    out
}

/// Keeps a message in the quarantine directory: the envelope on top, then the message with
/// its result headers. Written under a temporary name, then renamed.
async fn quarantine(s: &Settings, msg: &Msg, message: &[u8]) -> Result<PathBuf> {
    let Some(dir) = &s.cfg.relay.quarantine_dir else {
        bail!("relay.quarantine_dir is not set");
    };
    let mut salt = [0u8; 6];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let name = format!("{}-{}", crate::ops::now(), hex::encode(salt));
    let mut b = format!(
        "X-Mailstamp-Envelope-From: <{}>\r\nX-Mailstamp-Envelope-To: {}\r\n",
        session::clean(&msg.sender, 300),
        msg.rcpts
            .iter()
            .map(|r| format!("<{}>", session::clean(r, 300)))
            .collect::<Vec<_>>()
            .join(", ")
    )
    .into_bytes();
    b.extend_from_slice(message);
    tokio::fs::create_dir_all(dir).await?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(format!("{name}.eml"));
    tokio::fs::write(&tmp, &b).await?;
    tokio::fs::rename(&tmp, &path).await?;
    Ok(path)
}

/// Hands the message to the next hop; the reply is the one our client gets. 2xx from the
/// next hop: 250. 5xx: passed on (code and enhanced code). Anything else — refused for now,
/// unreachable, timed out — 451 4.4.x: the client keeps the message and retries.
async fn forward(s: &Settings, msg: &Msg, body: &[u8]) -> Refusal {
    let rc = &s.cfg.relay;
    let t = Duration::from_secs(rc.next_hop_timeout_secs);
    let sent = tokio::time::timeout(t, send(&rc.next_hop, &host_name(s), t, msg, body)).await;
    match sent {
        Ok(Ok(())) => {
            info!(next_hop = rc.next_hop, rcpts = msg.rcpts.len(), "forwarded");
            Refusal {
                code: 250,
                xcode: "2.0.0".to_owned(),
                text: "ok, accepted by the next hop".to_owned(),
            }
        }
        Ok(Err(mail_send::Error::UnexpectedReply(r))) if r.code >= 500 && r.code < 600 => {
            warn!(
                next_hop = rc.next_hop,
                code = r.code,
                "next hop refused the message"
            );
            let [a, b, c] = r.esc;
            let xcode = if a == 5 {
                format!("{a}.{b}.{c}")
            } else {
                "5.0.0".to_owned()
            };
            Refusal {
                code: r.code,
                xcode,
                text: format!("next hop: {}", session::clean(&r.message, 300)),
            }
        }
        Ok(Err(e)) => {
            warn!(next_hop = rc.next_hop, "next hop failed: {e}");
            Refusal::new(
                false,
                "4.4.1",
                "mailstamp: next hop unavailable, try again later",
            )
        }
        Err(_) => {
            warn!(next_hop = rc.next_hop, "next hop timed out");
            Refusal::new(
                false,
                "4.4.2",
                "mailstamp: next hop timed out, try again later",
            )
        }
    }
}

async fn send(
    next_hop: &str,
    helo: &str,
    timeout: Duration,
    msg: &Msg,
    body: &[u8],
) -> Result<(), mail_send::Error> {
    let (host, port) = split_host_port(next_hop).map_err(|_| mail_send::Error::InvalidTLSName)?;
    let mut client = mail_send::SmtpClientBuilder::new(host, port)
        .map_err(|_| mail_send::Error::InvalidTLSName)?
        .helo_host(helo)
        .timeout(timeout)
        .connect_plain()
        .await?;
    let mut params = mail_send::smtp::message::Parameters::new();
    if msg.eight_bit {
        params.add(("BODY", "8BITMIME"));
    }
    let m = mail_send::smtp::message::Message {
        mail_from: mail_send::smtp::message::Address::new(msg.sender.as_str(), params),
        rcpt_to: msg.rcpts.iter().map(|r| r.as_str().into()).collect(),
        body: body.into(),
    };
    client.send(m).await?;
    let _ = client.quit().await;
    Ok(())
}

/// Binds the relay's listening socket; returns it and the address actually bound.
pub async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let a = l.local_addr()?;
    Ok((l, a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn dates_are_rfc5322() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_489_200),
            "Tue, 24 Nov 2026 03:00:00 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn forged_result_fields_are_stripped_with_their_folds() {
        let raw = b"Authentication-Results: mx.b.example;\r\n\tmailstamp=pass\r\n\
X-Mailstamp-Verdict: wanted\r\n\
Authentication-Results: other.example; spf=pass\r\n\
Subject: hi\r\n\r\nX-Mailstamp-Verdict: in the body stays\r\n";
        let out = strip_ours(raw, "MX.b.example");
        assert_eq!(
            out,
            b"Authentication-Results: other.example; spf=pass\r\nSubject: hi\r\n\r\n\
X-Mailstamp-Verdict: in the body stays\r\n"
        );
        assert_eq!(strip_ours(b"no header end", "x"), b"no header end");
    }

    #[test]
    fn the_documented_relay_section_loads() {
        let doc =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/MTA.md"))
                .unwrap();
        let start = doc.find("```toml\n[relay]").unwrap() + "```toml\n".len();
        let end = start + doc[start..].find("```").unwrap();
        let cfg: crate::config::Config = toml::from_str(&doc[start..end]).unwrap();
        cfg.relay.check().unwrap();
        assert_eq!(cfg.relay.next_hop, "127.0.0.1:10026");
        assert!(cfg.relay.quarantine_dir.is_some());
    }

    #[test]
    fn the_relay_section_is_checked() {
        assert!(RelayConfig::default().check().is_ok());
        for bad in [
            RelayConfig {
                next_hop: "nohost".into(),
                ..RelayConfig::default()
            },
            RelayConfig {
                next_hop: "h:x".into(),
                ..RelayConfig::default()
            },
            RelayConfig {
                max_message_bytes: 0,
                ..RelayConfig::default()
            },
            RelayConfig {
                idle_timeout_secs: 0,
                ..RelayConfig::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        assert_eq!(split_host_port("[::1]:25").unwrap(), ("::1", 25));
        assert!(received("mx (x)", "192.0.2.1".parse().unwrap(), "r", 0).starts_with(
            "Received: from mx??x? ([192.0.2.1])\r\n\tby r (mailstamp relay) with ESMTP;\r\n\tThu, 1 Jan 1970"
        ));
    }
}
