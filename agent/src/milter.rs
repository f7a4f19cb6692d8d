// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp milter`: the agent beside Postfix or Sendmail, on indymilter. It owns the milter
//! side only — negotiation, the per-connection and per-message state, the header and body
//! bytes as the MTA sends them, and the translation of [`crate::session`]'s answers into
//! milter statuses and actions ([`disposition`]). Every decision (maps per stage, stamping,
//! verdict → action, header texts) is `session`'s, exactly as for the relay.

use std::ffi::CString;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use indymilter::{
    Actions, Callbacks, Context, ContextActions, EomContext, MacroStage, NegotiateContext,
    ProtoOpts, SetErrorReply, SocketInfo, Status,
};
use mailstamp_core::Verdict;
use tracing::warn;

use crate::config::{MilterConfig, VerdictAction};
use crate::error::{Context as _, Result, bail};
use crate::maps::VerifyPolicy;
use crate::session::message::Client;
use crate::session::{self, Daemon, Message, Outbound, Refusal, Step, results, stages, verdict};
use crate::util::bare_address;

/// The eom actions the milter uses: add headers, delete forged ones, quarantine.
const NEEDED_ACTIONS: Actions = Actions::ADD_HEADER
    .union(Actions::CHANGE_HEADER)
    .union(Actions::QUARANTINE);

/// Serves milter connections on `listener` until `shutdown` completes; sessions under way
/// finish their current command.
pub async fn run(
    listener: impl indymilter::Listener,
    milter: Arc<Daemon>,
    shutdown: impl Future,
) -> std::io::Result<()> {
    let config = indymilter::Config {
        max_connections: milter.settings().cfg.milter.max_sessions,
        actions: NEEDED_ACTIONS,
        ..indymilter::Config::default()
    };
    indymilter::run(listener, callbacks(milter), config, shutdown).await
}

/// A listening socket of either kind.
pub type Listener = indymilter::EitherListener<NoDelayTcp, tokio::net::UnixListener>;

/// A TCP listener whose accepted connections have TCP_NODELAY set. indymilter writes each
/// end-of-message action separately; with Nagle on, the second write waits for the MTA's
/// delayed ACK (~40 ms per message on loopback, measured by `cargo bench --bench milter_load`).
#[derive(Debug)]
pub struct NoDelayTcp(pub tokio::net::TcpListener);

impl indymilter::Listener for NoDelayTcp {
    type Io = tokio::net::TcpStream;

    fn poll_accept(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<Self::Io>> {
        self.0.poll_accept(cx).map_ok(|(s, _)| {
            // Best effort: a socket that refuses the option still works, only slower.
            let _ = s.set_nodelay(true);
            s
        })
    }
}

/// Binds `inet:HOST:PORT` or `unix:/path`. A Unix socket file that no milter answers on any
/// more (left by a crash) is removed first; one that answers is an error. Returns the listener
/// and the address actually bound (the port the OS chose for port 0).
pub async fn bind(spec: &str) -> Result<(Listener, String)> {
    if let Some(addr) = spec.strip_prefix("inet:") {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {spec}"))?;
        let a = l.local_addr()?;
        return Ok((
            indymilter::EitherListener::Tcp(NoDelayTcp(l)),
            format!("inet:{a}"),
        ));
    }
    if let Some(path) = spec.strip_prefix("unix:") {
        use std::os::unix::fs::FileTypeExt;
        let p = Path::new(path);
        if let Ok(md) = std::fs::symlink_metadata(p) {
            if !md.file_type().is_socket() {
                bail!("{path} exists and is not a socket; refusing to replace it");
            }
            if tokio::net::UnixStream::connect(p).await.is_ok() {
                bail!("another milter is listening on {path}");
            }
            std::fs::remove_file(p)
                .with_context(|| format!("cannot remove stale socket {path}"))?;
        }
        let l = tokio::net::UnixListener::bind(p)
            .with_context(|| format!("cannot listen on {spec}"))?;
        return Ok((indymilter::EitherListener::Unix(l), spec.to_owned()));
    }
    bail!("--listen `{spec}`: give inet:HOST:PORT or unix:/path/to/socket")
}

/// Removes the socket file of a `unix:` listen address (after shutdown).
pub fn unbind(spec: &str) {
    if let Some(path) = spec.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
    }
}

/// Per-connection state.
#[derive(Default)]
pub struct Session {
    client_ip: Option<IpAddr>,
    /// The connection map accepted the client: the HELO and sender maps are skipped.
    client_accepted: bool,
    /// The client is in `trusted_networks` or came through an outbound daemon.
    outbound_client: bool,
    /// The HELO/EHLO name (SPF).
    helo: String,
    msg: Option<Msg>,
    /// Counts this connection in `mailstamp_sessions_open` while it lives.
    _open: Option<crate::metrics::SessionGuard>,
}

/// Per-message state, from MAIL FROM to end of message: the session's [`Message`] and the
/// bytes as the milter protocol brings them.
struct Msg {
    m: Message,
    raw: Vec<u8>,
    /// Occurrences seen per header name (lowercase), for deleting by index.
    seen: std::collections::HashMap<String, i32>,
    /// Incoming headers that claim our results: (name, index among that name).
    forged: Vec<(String, i32)>,
}

impl Msg {
    fn count(&mut self, name: &str) -> i32 {
        let c = self.seen.entry(name.to_ascii_lowercase()).or_insert(0);
        *c = c.saturating_add(1);
        *c
    }
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

fn callbacks(m: Arc<Daemon>) -> Callbacks<Session> {
    let m0 = m.clone();
    let (m1, m2, m3, m4, m5, m6) = (
        m.clone(),
        m.clone(),
        m.clone(),
        m.clone(),
        m.clone(),
        m.clone(),
    );
    Callbacks::new()
        .on_negotiate(move |cx, actions, opts| {
            // Recipient changes serve `[forward]` only: asked for when aliases are configured.
            let forwards = !m0.settings().cfg.forward.aliases.is_empty();
            Box::pin(negotiate(cx, actions, opts, forwards))
        })
        .on_connect(move |cx, host, info| {
            let m = m1.clone();
            Box::pin(async move { connect(&m, cx, &host.to_string_lossy(), info) })
        })
        .on_helo(move |cx, helo| {
            let m = m2.clone();
            Box::pin(async move { self::helo(&m, cx, &helo.to_string_lossy()) })
        })
        .on_mail(move |cx, args| {
            let m = m3.clone();
            Box::pin(async move { mail(&m, cx, &args) })
        })
        .on_rcpt(move |cx, args| {
            let _ = &m4;
            Box::pin(async move { rcpt(cx, &args).await })
        })
        .on_header(move |cx, name, value| {
            let _ = &m5;
            Box::pin(async move { header(cx, &name.to_string_lossy(), value.as_bytes()) })
        })
        .on_eoh(|cx| Box::pin(async move { append(cx, b"\r\n") }))
        .on_body(|cx, chunk| Box::pin(async move { append(cx, &chunk) }))
        .on_eom(move |cx| {
            let m = m6.clone();
            Box::pin(async move { eom(&m, cx).await })
        })
        .on_abort(|cx| {
            Box::pin(async move {
                if let Some(s) = cx.data.as_mut() {
                    s.msg = None;
                }
                Status::Continue
            })
        })
}

async fn negotiate(
    cx: &mut NegotiateContext<Session>,
    actions: Actions,
    opts: ProtoOpts,
    forwards: bool,
) -> Status {
    // Without LEADING_SPACE the MTA strips the space after the colon: the header values we
    // hash would differ from the ones the receiver hashes.
    if !opts.contains(ProtoOpts::LEADING_SPACE) || !actions.contains(NEEDED_ACTIONS) {
        warn!(
            "the MTA offers neither LEADING_SPACE nor the header actions mailstamp needs (milter protocol 6 required); refusing the session"
        );
        return Status::Reject;
    }
    // Recipient changes serve `[forward]` (a hop replaces the alias by its targets): with
    // aliases configured they are required too.
    let rcpt_changes = Actions::ADD_RCPT | Actions::DELETE_RCPT;
    if forwards && !actions.contains(rcpt_changes) {
        warn!(
            "[forward] aliases are configured, but the MTA does not offer recipient changes (milter protocol 6 required); refusing the session"
        );
        return Status::Reject;
    }
    cx.requested_actions = if forwards {
        NEEDED_ACTIONS | rcpt_changes
    } else {
        NEEDED_ACTIONS
    };
    cx.requested_opts |= ProtoOpts::LEADING_SPACE;
    cx.requested_macros
        .insert(MacroStage::Connect, c("{daemon_name}"));
    cx.requested_macros
        .insert(MacroStage::Mail, c("{auth_authen}"));
    cx.requested_macros.insert(MacroStage::Eom, c("i"));
    Status::Continue
}

/// Sets an SMTP reply and returns the matching status.
fn refuse(reply: &mut indymilter::SmtpReply, permanent: bool, xcode: &str, text: &str) -> Status {
    reply_with(reply, &Refusal::new(permanent, xcode, text))
}

/// Sets the SMTP reply of `r` and returns the matching status.
fn reply_with(reply: &mut indymilter::SmtpReply, r: &Refusal) -> Status {
    if let Err(e) = reply.set_error_reply(
        &r.code.to_string(),
        Some(r.xcode.as_str()),
        [r.text.as_str()],
    ) {
        warn!("cannot set the SMTP reply: {e}");
    }
    if r.permanent() {
        Status::Reject
    } else {
        Status::Tempfail
    }
}

/// A stage's decision as a milter status (the reply set for a refusal).
fn step_status(reply: &mut indymilter::SmtpReply, step: &Step) -> Status {
    match step {
        Step::Go => Status::Continue,
        Step::Discard => Status::Discard,
        Step::Refuse(r) => reply_with(reply, r),
    }
}

fn missing_state(reply: &mut indymilter::SmtpReply, stage: &str) -> Status {
    warn!("milter {stage} without session state: tempfail");
    refuse(
        reply,
        false,
        "4.3.0",
        "mailstamp: session state lost, try again later",
    )
}

fn connect(m: &Daemon, cx: &mut Context<Session>, host: &str, info: SocketInfo) -> Status {
    let s = m.settings();
    let ip = match info {
        SocketInfo::Inet(a) => Some(a.ip()),
        _ => None,
    };
    let daemon = cx
        .macros
        .get(&c("{daemon_name}"))
        .map(|d| d.to_string_lossy().into_owned());
    let (step, accepted) = stages::at_connect(&s, ip, host);
    cx.data = Some(Session {
        client_ip: ip,
        outbound_client: stages::outbound_client(&s, ip, daemon.as_deref()),
        client_accepted: accepted,
        helo: String::new(),
        msg: None,
        _open: Some(crate::metrics::SessionGuard::open("milter")),
    });
    step_status(&mut cx.reply, &step)
}

fn helo(m: &Daemon, cx: &mut Context<Session>, helo: &str) -> Status {
    let Some(session) = cx.data.as_mut() else {
        return missing_state(&mut cx.reply, "helo");
    };
    session.helo = helo.to_owned();
    if session.client_accepted {
        return Status::Continue;
    }
    let (step, accepted) = stages::at_helo(&m.settings(), helo);
    session.client_accepted = accepted;
    step_status(&mut cx.reply, &step)
}

fn addr_of(args: &[CString]) -> String {
    args.first()
        .map(|a| bare_address(&a.to_string_lossy()).to_owned())
        .unwrap_or_default()
}

fn mail(m: &Daemon, cx: &mut Context<Session>, args: &[CString]) -> Status {
    let authenticated = cx
        .macros
        .get(&c("{auth_authen}"))
        .is_some_and(|v| !v.to_bytes().is_empty());
    let Some(session) = cx.data.as_mut() else {
        return missing_state(&mut cx.reply, "mail");
    };
    let s = m.settings();
    let sender = addr_of(args);
    let declared = args.iter().skip(1).find_map(|a| {
        let a = a.to_string_lossy();
        a.get(..5)
            .filter(|p| p.eq_ignore_ascii_case("SIZE="))
            .and_then(|_| a[5..].parse::<u64>().ok())
    });
    let outbound =
        session.outbound_client || (s.cfg.milter.outbound_authenticated && authenticated);
    let sender_policy = match stages::at_mail(
        &s,
        &sender,
        declared,
        s.cfg.milter.max_message_bytes,
        session.client_accepted,
    ) {
        Ok(p) => p,
        Err(step) => return step_status(&mut cx.reply, &step),
    };
    session.msg = Some(Msg {
        m: Message::new(s, outbound, sender, sender_policy),
        raw: Vec::new(),
        seen: std::collections::HashMap::new(),
        forged: Vec::new(),
    });
    Status::Continue
}

fn too_big(reply: &mut indymilter::SmtpReply, limit: usize) -> Status {
    reply_with(reply, &stages::too_big(limit))
}

async fn rcpt(cx: &mut Context<Session>, args: &[CString]) -> Status {
    let Some(msg) = cx.data.as_mut().and_then(|s| s.msg.as_mut()) else {
        return missing_state(&mut cx.reply, "rcpt");
    };
    let rcpt = addr_of(args);
    let settings = msg.m.settings.clone();
    let policy = match stages::at_rcpt(&settings, &rcpt, msg.m.outbound).await {
        Ok(p) => p,
        Err(step) => return step_status(&mut cx.reply, &step),
    };
    msg.m.rcpts.push(rcpt);
    msg.m.rcpt_policies.push(policy);
    Status::Continue
}

/// Appends `bytes`, turning bare LF (how the milter protocol carries folded header lines) into
/// CRLF.
fn push_crlf(buf: &mut Vec<u8>, bytes: &[u8]) {
    let mut prev = 0u8;
    for &b in bytes {
        if b == b'\n' && prev != b'\r' {
            buf.push(b'\r');
        }
        buf.push(b);
        prev = b;
    }
}

fn header(cx: &mut Context<Session>, name: &str, value: &[u8]) -> Status {
    let Some(msg) = cx.data.as_mut().and_then(|s| s.msg.as_mut()) else {
        return missing_state(&mut cx.reply, "header");
    };
    let limit = msg.m.settings.cfg.milter.max_message_bytes;
    if msg.raw.len() + name.len() + value.len() * 2 + 3 > limit {
        return too_big(&mut cx.reply, limit);
    }
    let index = msg.count(name);
    // Headers that claim our results came from outside: they go, or a Sieve rule could be
    // fooled by a sender who writes them — on outbound (local submission) mail too, which a
    // local recipient's or the next site's Sieve rule reads.
    if results::is_ours(name, value, &msg.m.settings.authserv_id) {
        msg.forged.push((name.to_owned(), index));
    }
    msg.raw.extend_from_slice(name.as_bytes());
    msg.raw.push(b':');
    push_crlf(&mut msg.raw, value);
    msg.raw.extend_from_slice(b"\r\n");
    Status::Continue
}

fn append(cx: &mut Context<Session>, bytes: &[u8]) -> Status {
    let Some(msg) = cx.data.as_mut().and_then(|s| s.msg.as_mut()) else {
        return missing_state(&mut cx.reply, "body");
    };
    let limit = msg.m.settings.cfg.milter.max_message_bytes;
    if msg.raw.len() + bytes.len() > limit {
        msg.raw = Vec::new();
        return too_big(&mut cx.reply, limit);
    }
    msg.raw.extend_from_slice(bytes);
    Status::Continue
}

async fn eom(m: &Daemon, cx: &mut EomContext<Session>) -> Status {
    let Some((msg, client_ip, helo)) = cx
        .data
        .as_mut()
        .and_then(|s| s.msg.take().map(|msg| (msg, s.client_ip, s.helo.clone())))
    else {
        return missing_state(&mut cx.reply, "eom");
    };
    let queue_id = cx
        .macros
        .get(&c("i"))
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    if msg.m.outbound {
        outbound(m, cx, msg, &queue_id).await
    } else {
        inbound(m, cx, msg, client_ip, &helo, &queue_id).await
    }
}

async fn outbound(d: &Daemon, cx: &mut EomContext<Session>, msg: Msg, queue_id: &str) -> Status {
    remove_forged(cx, &msg, queue_id).await;
    // A copy a mailing list of `[forward.lists]` sends: under the list's hop, or as it came.
    if let Some(copy) = session::list_copy(d, &msg.m, &msg.raw, queue_id).await {
        return match copy {
            Ok(session::ListCopy::Hop(st)) => {
                let Some(value) = results::stamp_value(&st.message, msg.raw.len()) else {
                    warn!(queue_id, "the list copy has no leading Mail-Stamp field");
                    return refuse(&mut cx.reply, false, "4.3.0", "mailstamp: internal error");
                };
                match cx
                    .actions
                    .insert_header(0, mailstamp_core::header::FIELD_NAME, value)
                    .await
                {
                    Ok(()) => Status::Continue,
                    Err(e) => {
                        warn!(queue_id, "cannot add the list's hop: {e}");
                        refuse(
                            &mut cx.reply,
                            false,
                            "4.3.0",
                            "mailstamp: cannot add the hop",
                        )
                    }
                }
            }
            Ok(session::ListCopy::AsItCame(_)) => Status::Continue,
            Err(_) => refuse(
                &mut cx.reply,
                false,
                "4.7.1",
                "mailstamp: cannot record the list's hop now, try again later",
            ),
        };
    }
    let out = session::stamp(d, &msg.m, &msg.raw).await;
    session::log_outbound(queue_id, &msg.m, d.writer(), &out);
    match out {
        Outbound::Stamped(st) => {
            let Some(value) = results::stamp_value(&st.message, msg.raw.len()) else {
                warn!(queue_id, "stamped message has no leading Mail-Stamp field");
                return refuse(&mut cx.reply, false, "4.3.0", "mailstamp: internal error");
            };
            if let Err(e) = cx
                .actions
                .insert_header(0, mailstamp_core::header::FIELD_NAME, value)
                .await
            {
                warn!(queue_id, "cannot add Mail-Stamp: {e}");
                return refuse(
                    &mut cx.reply,
                    false,
                    "4.3.0",
                    "mailstamp: cannot add the stamp header",
                );
            }
            Status::Continue
        }
        Outbound::Unstamped(value) => {
            let name = session::UNSTAMPED_HEADER;
            if let Err(e) = cx.actions.add_header(name, value.as_str()).await {
                warn!(queue_id, "cannot add {name}: {e}");
            }
            Status::Continue
        }
        Outbound::Refused(r) => reply_with(&mut cx.reply, &r),
    }
}

/// Removes the sender-written fields that claim to be ours (`X-Mailstamp-*`, our
/// `Authentication-Results`), last first so the indexes stay right.
async fn remove_forged(cx: &mut EomContext<Session>, msg: &Msg, queue_id: &str) {
    for (name, index) in msg.forged.iter().rev() {
        if let Err(e) = cx
            .actions
            .change_header(name.as_str(), *index, None::<&str>)
            .await
        {
            warn!(queue_id, "cannot remove a forged {name}: {e}");
        }
    }
}

/// What happens to an inbound message: the milter reply and the headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disposition {
    /// The action chosen.
    pub action: VerdictAction,
    /// The milter reply at end of message.
    pub status: Status,
    /// Reply code, enhanced code and text for reject / tempfail.
    pub reply: Option<(&'static str, String, String)>,
    /// Whether the result headers are added.
    pub headers: bool,
    /// Whether the message is quarantined.
    pub quarantine: bool,
}

/// A verdict as the milter's answer: the action is [`verdict::action_for`]'s (the one
/// mapping from verdict to action), turned into a milter status and reply.
pub fn disposition(
    v: Verdict,
    mc: &MilterConfig,
    sender: Option<&VerifyPolicy>,
    rcpts: &[Option<VerifyPolicy>],
) -> Disposition {
    let action = verdict::action_for(v, mc, sender, rcpts);
    disposition_of(action, v)
}

fn disposition_of(action: VerdictAction, v: Verdict) -> Disposition {
    let status = match action {
        VerdictAction::Accept | VerdictAction::AddHeader | VerdictAction::Quarantine => {
            Status::Continue
        }
        VerdictAction::Discard => Status::Discard,
        VerdictAction::Tempfail => Status::Tempfail,
        VerdictAction::Reject => Status::Reject,
    };
    let reply = verdict::verdict_refusal(action, v).map(|r| {
        let code = if r.permanent() { "550" } else { "451" };
        (code, r.xcode, r.text)
    });
    Disposition {
        action,
        status,
        reply,
        headers: verdict::adds_headers(action),
        quarantine: action == VerdictAction::Quarantine,
    }
}

async fn inbound(
    d: &Daemon,
    cx: &mut EomContext<Session>,
    msg: Msg,
    client_ip: Option<IpAddr>,
    helo: &str,
    queue_id: &str,
) -> Status {
    let client = Client {
        ip: client_ip,
        helo,
    };
    let j = session::judge(d, &msg.m, &msg.raw, client).await;
    session::log_inbound(queue_id, &msg.m, &j);
    let disp = disposition_of(j.action, j.report.verdict);
    remove_forged(cx, &msg, queue_id).await;
    // Authentication-Results goes on top, the others at the end of the header.
    for (i, (name, value)) in j.headers.iter().enumerate() {
        let added = if i == 0 {
            cx.actions.insert_header(0, *name, value.as_str()).await
        } else {
            cx.actions.add_header(*name, value.as_str()).await
        };
        if let Err(e) = added {
            warn!(queue_id, "cannot add the result headers: {e}");
            return refuse(
                &mut cx.reply,
                false,
                "4.3.0",
                "mailstamp: cannot add result headers",
            );
        }
    }
    // For a list of `[forward.lists]`: remembered, so that its copies go out under its hop.
    if let Err(e) = session::remember_for_lists(d, &msg.m, &msg.raw, &j.report).await {
        warn!(queue_id, "cannot remember the message for its list: {e:#}");
        return refuse(
            &mut cx.reply,
            false,
            "4.3.0",
            "mailstamp: cannot remember the message for its list now, try again later",
        );
    }
    // Forwarded under this host's hop (`[forward]`): the hop on top, the alias replaced by
    // where it goes. A hop that cannot be recorded now defers the message (nothing lost).
    if let Some(f) = session::forward(d, &msg.m, &msg.raw, &j.report).await {
        match f {
            Ok(f) => {
                if let Err(status) = forward_actions(cx, &f, msg.raw.len(), queue_id).await {
                    return status;
                }
                tracing::info!(queue_id, alias = f.alias, to = f.targets.len(), token = %f.stamped.token, "forwarded under a hop");
            }
            Err(e) => {
                let (permanent, xcode, text) = match e.refusal() {
                    Some((xcode, reason)) => {
                        (true, xcode.to_owned(), format!("mailstamp: {reason}"))
                    }
                    None => (
                        false,
                        "4.7.1".to_owned(),
                        "mailstamp: cannot record the forward's hop now, try again later"
                            .to_owned(),
                    ),
                };
                return refuse(&mut cx.reply, permanent, &xcode, &text);
            }
        }
    }
    if disp.quarantine
        && let Err(e) = cx
            .actions
            .quarantine(format!("mailstamp verdict {}", j.report.verdict.as_str()))
            .await
    {
        warn!(queue_id, "cannot quarantine: {e}");
        return refuse(
            &mut cx.reply,
            false,
            "4.3.0",
            "mailstamp: cannot quarantine",
        );
    }
    if let Some((code, xcode, text)) = &disp.reply
        && let Err(e) = cx
            .reply
            .set_error_reply(code, Some(xcode.as_str()), [text.as_str()])
    {
        warn!(queue_id, "cannot set the SMTP reply: {e}");
    }
    disp.status
}

/// The MTA's part of a forward: the hop field on top, the alias removed, the targets added.
async fn forward_actions(
    cx: &mut EomContext<Session>,
    f: &session::Forward,
    raw_len: usize,
    queue_id: &str,
) -> Result<(), Status> {
    let Some(value) = results::stamp_value(&f.stamped.message, raw_len) else {
        warn!(
            queue_id,
            "the forwarded message has no leading Mail-Stamp field"
        );
        return Err(refuse(
            &mut cx.reply,
            false,
            "4.3.0",
            "mailstamp: internal error",
        ));
    };
    let done = async {
        cx.actions
            .insert_header(0, mailstamp_core::header::FIELD_NAME, value)
            .await?;
        cx.actions
            .delete_recipient(format!("<{}>", f.alias))
            .await?;
        for t in &f.targets {
            cx.actions.add_recipient(format!("<{t}>")).await?;
        }
        Ok::<_, indymilter::ActionError>(())
    }
    .await;
    done.map_err(|e| {
        warn!(queue_id, "cannot forward (the MTA refused an action; is milter protocol 6 with recipient changes allowed?): {e}");
        refuse(&mut cx.reply, false, "4.3.0", "mailstamp: cannot forward under a hop")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ActionTable, Overrides, TroublePolicy};
    use crate::maps::AddrAction;
    use crate::session::Settings;
    use crate::session::results::{ar_result, ar_value, authserv_id_of, stamp_value};
    use mailstamp_core::Report;

    fn pol(actions: &[(Verdict, VerdictAction)]) -> Option<VerifyPolicy> {
        Some(VerifyPolicy {
            threshold: None,
            actions: actions.to_vec(),
        })
    }

    #[test]
    fn default_is_add_header_for_every_verdict_and_tempfail_on_temperror() {
        let mc = MilterConfig::default();
        for v in [
            Verdict::Wanted,
            Verdict::Suspect,
            Verdict::Spam,
            Verdict::Unstamped,
            Verdict::Invalid,
        ] {
            let d = disposition(v, &mc, None, &[]);
            assert_eq!(d.action, VerdictAction::AddHeader, "{v:?}");
            assert_eq!(d.status, Status::Continue);
            assert!(d.headers && !d.quarantine && d.reply.is_none());
        }
        let d = disposition(Verdict::Temperror, &mc, None, &[None]);
        assert_eq!(d.status, Status::Tempfail);
        assert_eq!(d.reply.as_ref().unwrap().0, "451");
        let pass = MilterConfig {
            on_temperror: TroublePolicy::Pass,
            ..MilterConfig::default()
        };
        let d = disposition(Verdict::Temperror, &pass, None, &[None]);
        assert_eq!((d.status, d.headers), (Status::Continue, true));
    }

    #[test]
    fn each_action_maps_to_one_reply() {
        let cases = [
            (VerdictAction::Accept, Status::Continue, false, false, None),
            (
                VerdictAction::AddHeader,
                Status::Continue,
                true,
                false,
                None,
            ),
            (
                VerdictAction::Quarantine,
                Status::Continue,
                true,
                true,
                None,
            ),
            (VerdictAction::Discard, Status::Discard, false, false, None),
            (
                VerdictAction::Tempfail,
                Status::Tempfail,
                false,
                false,
                Some("451"),
            ),
            (
                VerdictAction::Reject,
                Status::Reject,
                false,
                false,
                Some("550"),
            ),
        ];
        for (a, status, headers, quarantine, code) in cases {
            let mc = MilterConfig {
                actions: ActionTable {
                    spam: a,
                    ..ActionTable::default()
                },
                ..MilterConfig::default()
            };
            let d = disposition(Verdict::Spam, &mc, None, &[None]);
            assert_eq!(d.action, a);
            assert_eq!(d.status, status, "{a:?}");
            assert_eq!((d.headers, d.quarantine), (headers, quarantine), "{a:?}");
            assert_eq!(d.reply.as_ref().map(|r| r.0), code, "{a:?}");
        }
    }

    #[test]
    fn per_address_policies_override_and_the_strictest_recipient_wins() {
        let mc = MilterConfig::default();
        let strict = pol(&[(Verdict::Spam, VerdictAction::Reject)]);
        let lax = pol(&[(Verdict::Spam, VerdictAction::Accept)]);
        assert_eq!(
            disposition(Verdict::Spam, &mc, None, std::slice::from_ref(&lax)).action,
            VerdictAction::Accept
        );
        assert_eq!(
            disposition(Verdict::Spam, &mc, None, &[lax.clone(), None]).action,
            VerdictAction::AddHeader
        );
        assert_eq!(
            disposition(Verdict::Spam, &mc, None, &[lax.clone(), strict.clone()]).action,
            VerdictAction::Reject
        );
        // A sender policy applies to recipients without their own.
        let q = pol(&[(Verdict::Spam, VerdictAction::Quarantine)]);
        assert_eq!(
            disposition(Verdict::Spam, &mc, q.as_ref(), &[None, lax]).action,
            VerdictAction::Quarantine
        );
        // Other verdicts are untouched.
        assert_eq!(
            disposition(Verdict::Wanted, &mc, None, &[strict]).action,
            VerdictAction::AddHeader
        );
    }

    #[test]
    fn ar_results_follow_rfc8601() {
        assert_eq!(ar_result(Verdict::Wanted), "pass");
        assert_eq!(ar_result(Verdict::Suspect), "neutral");
        assert_eq!(ar_result(Verdict::Spam), "fail");
        assert_eq!(ar_result(Verdict::Unstamped), "none");
        assert_eq!(ar_result(Verdict::Invalid), "permerror");
        assert_eq!(ar_result(Verdict::Temperror), "temperror");
        let r = Report::bare(Verdict::Unstamped, "no \"Mail-Stamp\"\r\nheader", None);
        let v = ar_value("mx.b.example", &r, Some("a.example"), None);
        assert_eq!(
            v,
            " mx.b.example;\n\tmailstamp=none (unstamped)\n\treason=\"no 'Mail-Stamp'??header\"\n\theader.from=a.example"
        );
        assert!(!v.contains('\r'));
    }

    #[test]
    fn folded_header_lines_become_crlf_once() {
        let mut b = Vec::new();
        push_crlf(&mut b, b" a\n\tb\r\n\tc");
        assert_eq!(b, b" a\r\n\tb\r\n\tc");
        assert_eq!(
            authserv_id_of(b" MX.b.example; mailstamp=pass"),
            "mx.b.example"
        );
        assert_eq!(authserv_id_of(b" mx.b.example 1; x=y"), "mx.b.example");
    }

    #[test]
    fn the_stamp_value_is_taken_from_the_front_and_lf_folded() {
        let raw = b"From: a@a.example\r\n\r\nhi\r\n";
        let mut st = b"Mail-Stamp: v=1; a=b;\r\n c=d\r\n".to_vec();
        st.extend_from_slice(raw);
        assert_eq!(stamp_value(&st, raw.len()).unwrap(), " v=1; a=b;\n c=d");
        assert_eq!(stamp_value(raw, raw.len() + 1), None);
        assert_eq!(stamp_value(b"X: y\r\nab", 2), None);
    }

    fn load_err(path: &Path) -> String {
        match Settings::load(Some(path), &Overrides::default()) {
            Ok(_) => panic!("{} should not load", path.display()),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn the_contrib_example_config_and_maps_load() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/mailstamp-milter.toml");
        let s = match Settings::load(Some(&path), &Overrides::default()) {
            Ok(s) => s,
            Err(e) => panic!("{e:#}"),
        };
        assert_eq!(s.cfg.milter.actions.spam, VerdictAction::Quarantine);
        assert!(!s.maps.connection.is_empty());
        assert!(!s.maps.sender.is_empty() && !s.maps.recipient.is_empty());
        assert!(matches!(
            s.maps.recipient.lookup("ceo@b.example", s.maps.delimiter),
            Some(AddrAction::Verify(_))
        ));
    }

    #[test]
    fn config_sections_are_split_and_checked() {
        let dir = std::env::temp_dir().join(format!("mailstamp-milter-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rcpt.map"), "bob@b.example reject\n").unwrap();
        let path = dir.join("mailstamp.toml");
        std::fs::write(
            &path,
            "[chain]\nrpc_url = \"http://127.0.0.1:1\"\n\
             [milter]\nauthserv_id = \"mx.b.example\"\ntrusted_networks = [\"10.0.0.0/8\"]\n\
             on_temperror = \"pass\"\n[milter.actions]\nspam = \"quarantine\"\n\
             [maps]\nrecipient = \"rcpt.map\"\n",
        )
        .unwrap();
        let s = Settings::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(s.authserv_id, "mx.b.example");
        assert_eq!(s.cfg.chain.rpc_url, "http://127.0.0.1:1");
        assert_eq!(s.cfg.milter.actions.spam, VerdictAction::Quarantine);
        assert_eq!(s.cfg.milter.on_temperror, TroublePolicy::Pass);
        assert_eq!(s.maps.recipient.len(), 1);
        std::fs::write(&path, "[milter]\nactions = { spam = \"bounce\" }\n").unwrap();
        let e = load_err(&path);
        assert!(e.contains("bounce"), "{e}");
        std::fs::write(&path, "[milter]\nmax_message_bytes = 0\n").unwrap();
        assert!(Settings::load(Some(&path), &Overrides::default()).is_err());
        std::fs::write(&path, "[chain]\nrpc = 1\n").unwrap();
        let e = load_err(&path);
        assert!(e.contains("rpc"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
