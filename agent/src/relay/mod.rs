// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp relay`: the agent as an SMTP hop, for MTAs without milter support (or a
//! Postfix `content_filter`). It owns the SMTP server side (smtp-proto parsing on a buffered
//! stream, pipelining, size limit, timeouts, session cap, graceful shutdown) and, in
//! [`forward`], the quarantine directory and the hand-over to the next hop (mail-send). Every
//! decision — maps per stage, outbound or inbound, verdict → action, header texts — is
//! [`crate::session`]'s, exactly as for the milter; the daemon state is the same [`Daemon`].
//!
//! The final 250 after DATA is sent only once the next hop has accepted the message: a
//! next-hop failure is a 4xx (the sending MTA keeps the mail and retries), a 5xx from the next
//! hop is passed on as a 5xx.

mod forward;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::request::receiver::DataReceiver;
use smtp_proto::{Error as ProtoError, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{RelayConfig, VerdictAction};
use crate::error::{Result, err};
use crate::session::message::Client;
use crate::session::{self, Daemon, Judgement, Message, Outbound, Refusal, Step, stages};
use crate::util::{clean, now};

use forward::{forward, host_name, quarantine, received, strip_ours, unstuffed_tail};

/// Serves SMTP on `listener` until `shutdown` completes. Then idle sessions get
/// `421 4.3.2` and the ones handling a message finish it (bounded by the timeouts) before
/// this returns. The session cap and the listen address are read at start only.
pub async fn run(
    listener: TcpListener,
    daemon: Arc<Daemon>,
    shutdown: impl Future,
) -> std::io::Result<()> {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(daemon.settings().cfg.relay.max_sessions));
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
        let daemon = daemon.clone();
        let cancel = cancel.clone();
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                tracker.spawn(async move {
                    let _permit = permit;
                    let _open = crate::metrics::SessionGuard::open("relay");
                    serve(&daemon, stream, peer, &cancel).await;
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

/// One message from MAIL FROM to the end of DATA: the session's [`Message`] and what only the
/// SMTP hop needs.
struct Msg {
    m: Message,
    /// The relay's own id of this message (it has no MTA queue id), in its log lines.
    queue_id: String,
    /// A map said discard: take the message, then drop it.
    discard: bool,
    /// The client declared `BODY=8BITMIME`; the next hop is told the same.
    eight_bit: bool,
}

/// A fresh id for a message taken by this relay: the start time of the process and a count,
/// in upper-case hex like a Postfix queue id (`R` first: it is not the MTA's).
fn next_queue_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STARTED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    format!("R{:X}{n:04X}", STARTED.get_or_init(now))
}

/// One SMTP connection.
struct Conn<'a> {
    daemon: &'a Daemon,
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

/// The DATA being read: smtp-proto's receiver, the bytes so far, and whether they ran over
/// the size limit (then they are dropped and the rest is read to the final dot).
struct Data {
    receiver: DataReceiver,
    raw: Vec<u8>,
    overflow: bool,
}

/// What has been read of the current command line or DATA.
#[derive(Default)]
struct Input {
    /// The command line being read.
    line: Vec<u8>,
    /// It already ran over [`MAX_LINE`].
    overlong: bool,
    data: Option<Data>,
}

fn reply(out: &mut Vec<u8>, code: u16, xcode: &str, text: &str) {
    out.extend_from_slice(format!("{code} {xcode} {text}\r\n").as_bytes());
}

fn refuse(out: &mut Vec<u8>, r: &Refusal) {
    reply(out, r.code, &r.xcode, &r.text);
}

/// Serves one SMTP connection from `peer` on `stream` to its end: the connection map, the
/// greeting, the dialogue (commands, DATA, the judgement or stamp, the hand-over to the next
/// hop) and the last replies. [`run`] calls it for each accepted TCP connection; any byte
/// stream will do (the fuzz target `relay` drives it over an in-memory pipe). `cancel` asks an
/// idle session to close with `421 4.3.2`.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    daemon: &Daemon,
    mut stream: S,
    peer: SocketAddr,
    cancel: &CancellationToken,
) {
    let s = daemon.settings();
    let rc = s.cfg.relay.clone();
    let ip = peer.ip();
    let mut c = Conn {
        daemon,
        peer,
        hostname: host_name(&s),
        helo: None,
        client_accepted: false,
        outbound_client: rc.outbound || stages::outbound_client(&s, Some(ip), None),
        msg: None,
        commands: 0,
        out: Vec::new(),
    };
    // No reverse DNS here: hostname keys of the connection map never match a relay client.
    let (step, accepted) = stages::at_connect(&s, Some(ip), "unknown");
    c.client_accepted = accepted;
    if let Step::Refuse(r) = step {
        // 554 / 421 greeting: no mail is taken on this connection.
        let code = if r.permanent() { 554 } else { 421 };
        reply(&mut c.out, code, &r.xcode, &r.text);
        let _ = stream.write_all(&c.out).await;
        return;
    }
    let greeting = format!("220 {} ESMTP mailstamp relay\r\n", c.hostname);
    c.out.extend_from_slice(greeting.as_bytes());
    drop(s);
    c.dialogue(&mut stream, &rc, cancel).await;
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
            &format!("unsupported parameter {}", clean(param, 40)),
        ),
        ProtoError::NeedsMoreData { .. } | ProtoError::InvalidResponse { .. } => {
            reply(out, 500, "5.5.2", "syntax error")
        }
    }
}

impl Conn<'_> {
    /// Reads and answers until the client quits, times out, breaks a limit or the relay shuts
    /// down (not in the middle of DATA). Replies are written before each read, so pipelined
    /// commands are answered together.
    async fn dialogue<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        rc: &RelayConfig,
        cancel: &CancellationToken,
    ) {
        let idle = Duration::from_secs(rc.idle_timeout_secs);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(rc.session_timeout_secs);
        let mut input = Input::default();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if !self.out.is_empty() {
                if stream.write_all(&self.out).await.is_err() {
                    // The client is gone: nothing more to say.
                    self.out.clear();
                    return;
                }
                self.out.clear();
            }
            let wait = idle.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            let n = tokio::select! {
                _ = cancel.cancelled(), if input.data.is_none() => {
                    reply(&mut self.out, 421, "4.3.2", "mailstamp relay shutting down, try again later");
                    return;
                }
                r = tokio::time::timeout(wait, stream.read(&mut buf)) => match r {
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        self.out.clear();
                        return;
                    }
                    Ok(Ok(n)) => n,
                    Err(_) => {
                        reply(&mut self.out, 421, "4.4.2", "timeout, closing the connection");
                        return;
                    }
                },
            };
            if let Next::Close = self.take(&mut input, &buf[..n], rc).await {
                return;
            }
        }
    }

    /// Takes the bytes of one read: DATA content up to its final dot, then whole command
    /// lines, each answered in turn.
    async fn take(&mut self, input: &mut Input, read: &[u8], rc: &RelayConfig) -> Next {
        let mut bytes = read.iter();
        while bytes.len() > 0 {
            if input.data.is_some() {
                self.take_data(input, &mut bytes, rc.max_message_bytes)
                    .await;
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
            if input.line.len() + chunk.len() > MAX_LINE {
                input.overlong = true;
                input.line.clear();
            } else if !input.overlong {
                input.line.extend_from_slice(chunk);
            }
            if !complete {
                continue;
            }
            let req = if std::mem::take(&mut input.overlong) {
                Err(ProtoError::ResponseTooLong)
            } else {
                Request::parse(&mut input.line.iter()).map(Request::into_owned)
            };
            input.line.clear();
            self.commands += 1;
            if self.commands > rc.max_commands {
                reply(
                    &mut self.out,
                    421,
                    "4.7.0",
                    "too many commands, closing the connection",
                );
                return Next::Close;
            }
            match req {
                Ok(req) => match self.command(req).await {
                    Next::Command => {}
                    Next::Data => {
                        // Primed with the CRLF of the DATA line, so that a dot right at the
                        // start ends an empty message; the two bytes go again at the end.
                        let (mut receiver, mut raw) = (DataReceiver::new(), Vec::new());
                        receiver.ingest(&mut b"\r\n".iter(), &mut raw);
                        input.data = Some(Data {
                            receiver,
                            raw,
                            overflow: false,
                        });
                    }
                    Next::Close => return Next::Close,
                },
                Err(e) => protocol_error(&mut self.out, &e),
            }
        }
        Next::Command
    }

    /// DATA content: into the message until the final dot, which finishes the message.
    async fn take_data(
        &mut self,
        input: &mut Input,
        bytes: &mut std::slice::Iter<'_, u8>,
        limit: usize,
    ) {
        let Some(d) = input.data.as_mut() else {
            return;
        };
        let done = d.receiver.ingest(bytes, &mut d.raw);
        if d.raw.len() > limit {
            // Keep reading to the final dot, without keeping what we will refuse.
            d.overflow = true;
            d.raw.clear();
        }
        if !done {
            return;
        }
        let Some(Data {
            mut raw, overflow, ..
        }) = input.data.take()
        else {
            return;
        };
        raw.drain(..raw.len().min(2));
        // Replies to the commands before DATA are out already (sent with 354).
        match self.msg.take() {
            _ if overflow => refuse(&mut self.out, &stages::too_big(limit)),
            None => reply(&mut self.out, 503, "5.5.1", "no transaction"),
            Some(msg) => {
                let r = self.finish(msg, raw).await;
                refuse(&mut self.out, &r);
            }
        }
    }

    /// HELO / EHLO: the HELO map (unless the client is accepted already), a fresh
    /// transaction, and the greeting (EHLO: with the extensions).
    fn hello(&mut self, host: String, extended: bool) -> Next {
        let s = self.daemon.settings();
        self.msg = None;
        if !self.client_accepted {
            let (step, accepted) = stages::at_helo(&s, &host);
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

    /// MAIL FROM: the size and the sender map, then a new transaction.
    fn mail(&mut self, from: smtp_proto::MailFrom<String>) {
        let out = &mut self.out;
        if self.helo.is_none() {
            return reply(out, 503, "5.5.1", "send HELO/EHLO first");
        }
        if self.msg.is_some() {
            return reply(out, 503, "5.5.1", "nested MAIL command");
        }
        let s = self.daemon.settings();
        let declared = (from.size > 0).then_some(from.size as u64);
        let limit = s.cfg.relay.max_message_bytes;
        let (policy, discard) =
            match stages::at_mail(&s, &from.address, declared, limit, self.client_accepted) {
                Ok(p) => (p, false),
                Err(Step::Refuse(r)) => return refuse(out, &r),
                Err(Step::Discard | Step::Go) => (None, true),
            };
        self.msg = Some(Msg {
            m: Message::new(s, self.outbound_client, from.address, policy),
            queue_id: next_queue_id(),
            discard,
            eight_bit: from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0,
        });
        reply(out, 250, "2.1.0", "sender ok");
    }

    /// RCPT TO: the recipient cap, then the recipient map (and provider mode).
    async fn rcpt(&mut self, to: String) {
        let out = &mut self.out;
        let Some(msg) = self.msg.as_mut() else {
            return reply(out, 503, "5.5.1", "need MAIL before RCPT");
        };
        let m = &mut msg.m;
        if m.rcpts.len() >= m.settings.cfg.relay.max_recipients {
            return reply(out, 452, "4.5.3", "too many recipients");
        }
        let settings = m.settings.clone();
        match stages::at_rcpt(&settings, &to, m.outbound).await {
            Ok(p) => {
                m.rcpts.push(to);
                m.rcpt_policies.push(p);
                reply(out, 250, "2.1.5", "recipient ok");
            }
            Err(Step::Refuse(r)) => refuse(out, &r),
            Err(Step::Discard | Step::Go) => {
                msg.discard = true;
                m.rcpts.push(to);
                m.rcpt_policies.push(None);
                reply(out, 250, "2.1.5", "recipient ok");
            }
        }
    }

    async fn command(&mut self, req: Request<String>) -> Next {
        match req {
            Request::Helo { host } => return self.hello(host, false),
            Request::Ehlo { host } | Request::Lhlo { host } => return self.hello(host, true),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to.address).await,
            Request::Data => {
                let out = &mut self.out;
                match &self.msg {
                    None => reply(out, 503, "5.5.1", "need MAIL before DATA"),
                    Some(m) if m.m.rcpts.is_empty() => {
                        reply(out, 554, "5.5.1", "no valid recipients")
                    }
                    Some(_) => {
                        out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                        return Next::Data;
                    }
                }
            }
            Request::Rset => {
                self.msg = None;
                reply(&mut self.out, 250, "2.0.0", "ok");
            }
            Request::Quit => {
                reply(&mut self.out, 221, "2.0.0", "bye");
                return Next::Close;
            }
            other => other_command(&mut self.out, &other),
        }
        Next::Command
    }

    /// The whole message is in: stamp or judge it, act, forward. The reply is the one the
    /// client gets after its final dot.
    async fn finish(&mut self, msg: Msg, raw: Vec<u8>) -> Refusal {
        let ip = self.peer.ip();
        if msg.discard {
            info!(client = %ip, sender = msg.m.sender, "discarded by a map");
            return done("ok, discarded");
        }
        let s = msg.m.settings.clone();
        let raw = unstuffed_tail(raw);
        // Sender-written fields that claim to be ours go on both paths: a Sieve rule reads
        // them (ours for a local recipient, the next site's for outbound mail).
        let raw = strip_ours(&raw, &s.authserv_id);
        // The envelope it goes on with: the client's, or a forward's targets.
        let mut envelope = msg.m.clone();
        let body = if msg.m.outbound {
            match self.outbound(&msg, raw).await {
                Ok(b) => b,
                Err(r) => return r,
            }
        } else {
            match self.inbound(&msg, raw, &mut envelope).await {
                Ok(b) => b,
                Err(r) => return r,
            }
        };
        // RFC 5321 4.4: a relaying server adds its trace line.
        let helo = self.helo.as_deref().unwrap_or("unknown");
        let mut traced = received(helo, ip, &self.hostname, now()).into_bytes();
        traced.extend_from_slice(&body);
        forward(&s, &envelope, msg.eight_bit, &traced).await
    }

    /// An inbound message: judged and acted on; remembered for its list (`[forward.lists]`);
    /// forwarded under this host's hop when it is for an alias of `[forward]` (the hop field
    /// on top, `envelope`'s recipients replaced by the alias's targets).
    async fn inbound(
        &self,
        msg: &Msg,
        raw: Vec<u8>,
        envelope: &mut Message,
    ) -> std::result::Result<Vec<u8>, Refusal> {
        let ip = self.peer.ip();
        let helo = self.helo.as_deref().unwrap_or("");
        let client = Client { ip: Some(ip), helo };
        let j = session::judge(self.daemon, &msg.m, &raw, client).await;
        session::log_inbound(&msg.queue_id, &msg.m, &j);
        if let Err(e) = session::remember_for_lists(self.daemon, &msg.m, &raw, &j.report).await {
            warn!(
                queue_id = msg.queue_id,
                "cannot remember the message for its list: {e:#}"
            );
            return Err(Refusal::new(
                false,
                "4.3.0",
                "mailstamp: cannot remember the message for its list now, try again later",
            ));
        }
        let raw = match session::forward(self.daemon, &msg.m, &raw, &j.report).await {
            None => raw,
            Some(Ok(f)) => {
                info!(queue_id = msg.queue_id, alias = f.alias, to = f.targets.len(), token = %f.stamped.token, "forwarded under a hop");
                envelope.rcpts = f.targets;
                f.stamped.message
            }
            Some(Err(e)) => {
                return Err(match e.refusal() {
                    Some((xcode, reason)) => {
                        Refusal::new(true, xcode, &format!("mailstamp: {reason}"))
                    }
                    None => Refusal::new(
                        false,
                        "4.7.1",
                        "mailstamp: cannot record the forward's hop now, try again later",
                    ),
                });
            }
        };
        act(&msg.m, j, &raw, ip).await
    }

    /// An outbound message: stamped, passed unstamped, or refused.
    async fn outbound(&self, msg: &Msg, raw: Vec<u8>) -> std::result::Result<Vec<u8>, Refusal> {
        // A copy a mailing list of `[forward.lists]` sends: under the list's hop, or as it came.
        match session::list_copy(self.daemon, &msg.m, &raw, &msg.queue_id).await {
            Some(Ok(session::ListCopy::Hop(st))) => return Ok(st.message),
            Some(Ok(session::ListCopy::AsItCame(_))) => return Ok(raw),
            Some(Err(_)) => {
                return Err(Refusal::new(
                    false,
                    "4.7.1",
                    "mailstamp: cannot record the list's hop now, try again later",
                ));
            }
            None => {}
        }
        let out = session::stamp(self.daemon, &msg.m, &raw).await;
        session::log_outbound(&msg.queue_id, &msg.m, self.daemon.writer(), &out);
        match out {
            Outbound::Stamped(st) => Ok(st.message),
            Outbound::Unstamped(value) => {
                let mut b = format!("{}:{value}\r\n", session::UNSTAMPED_HEADER).into_bytes();
                b.extend_from_slice(&raw);
                Ok(b)
            }
            Outbound::Refused(r) => Err(r),
        }
    }
}

/// The commands that change no state.
fn other_command(out: &mut Vec<u8>, req: &Request<String>) {
    match req {
        Request::Noop { .. } => reply(out, 250, "2.0.0", "ok"),
        Request::Vrfy { .. } => reply(out, 252, "2.5.0", "cannot VRFY, send some mail"),
        Request::Help { .. } => reply(out, 214, "2.0.0", "see RFC 5321"),
        Request::Bdat { .. } => reply(out, 502, "5.5.1", "CHUNKING is not offered"),
        Request::StartTls | Request::Auth { .. } => {
            reply(out, 502, "5.5.1", "not offered by the mailstamp relay")
        }
        _ => reply(out, 502, "5.5.1", "command not implemented"),
    }
}

/// A 250 after the final dot.
fn done(text: &str) -> Refusal {
    Refusal {
        code: 250,
        xcode: "2.0.0".to_owned(),
        text: text.to_owned(),
    }
}

/// An inbound message after its judgement: refused, discarded, quarantined, or the message
/// with its result headers on top, to be forwarded.
async fn act(
    m: &Message,
    j: Judgement,
    raw: &[u8],
    ip: std::net::IpAddr,
) -> std::result::Result<Vec<u8>, Refusal> {
    if let Some(r) = j.refusal {
        return Err(r);
    }
    let mut b = Vec::with_capacity(raw.len() + 512);
    for (name, value) in &j.headers {
        b.extend_from_slice(name.as_bytes());
        b.push(b':');
        b.extend_from_slice(value.replace('\n', "\r\n").as_bytes());
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(raw);
    match j.action {
        VerdictAction::Discard => Err(done("ok, discarded")),
        VerdictAction::Quarantine => Err(match quarantine(&m.settings, m, &b).await {
            Ok(path) => {
                info!(client = %ip, path = %path.display(), "quarantined");
                done("ok, held by mailstamp")
            }
            Err(e) => {
                warn!(client = %ip, "cannot quarantine: {e:#}");
                Refusal::new(false, "4.3.0", "mailstamp: cannot quarantine")
            }
        }),
        VerdictAction::Accept
        | VerdictAction::AddHeader
        | VerdictAction::Tempfail
        | VerdictAction::Reject => Ok(b),
    }
}

/// Binds the relay's listening socket; returns it and the address actually bound.
pub async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| err!("cannot listen on {addr}: {e}"))?;
    let a = l.local_addr()?;
    Ok((l, a))
}
