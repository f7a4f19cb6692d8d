// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp milter`: the agent beside Postfix or Sendmail, on indymilter. It owns the milter
//! session (one per SMTP connection), the `[milter]` configuration (whose policy part —
//! trusted networks, actions, trouble policies — the relay applies too), the settings and the
//! chain connection both adapters share ([`Milter`]), and the translation of
//! [`crate::session`]'s decisions into milter replies ([`disposition`]). The decisions
//! themselves (maps per stage, verdict → action, header texts) are in [`crate::session`].

use std::ffi::CString;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use alloy::signers::local::PrivateKeySigner;
use anyhow::{Context as _, Result, bail};
use indymilter::{
    Actions, Callbacks, Context, ContextActions, EomContext, MacroStage, NegotiateContext,
    ProtoOpts, SetErrorReply, SocketInfo, Status,
};
use mailstamp_core::{MAX_MESSAGE_BYTES, Verdict};
use serde::Deserialize;
use tracing::{info, warn};

use crate::auth::Authenticator;
use crate::batcher::{Batcher, Recovered};
use crate::chain::{Chain, NoncePool};
use crate::config::{Config, Overrides, PendingPolicy, StampMode};
use crate::dns::Authority;
use crate::maps::{Action, Maps, Net, VerifyPolicy};
use crate::ops::StampContext;
use crate::session::{self, Refusal, Step};
use crate::store::{DaemonBatchRow, Store};

pub use crate::session::{SCORE_HEADER, UNSTAMPED_HEADER, VERDICT_HEADER, ar_result, ar_value};
/// The eom actions the milter uses: add headers, delete forged ones, quarantine.
const NEEDED_ACTIONS: Actions = Actions::ADD_HEADER
    .union(Actions::CHANGE_HEADER)
    .union(Actions::QUARANTINE);

/// What to do when the chain cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TroublePolicy {
    /// Answer 451: the MTA keeps the message and retries.
    Tempfail,
    /// Let the message through, marked (outbound: `X-Mailstamp-Unstamped`; inbound:
    /// `mailstamp=temperror`).
    Pass,
}

/// The action per verdict (`[milter.actions]`); `temperror` is `on_temperror`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionTable {
    /// All components match.
    pub wanted: Action,
    /// Most of it matches.
    pub suspect: Action,
    /// Forged, altered or replayed.
    pub spam: Action,
    /// No stamp.
    pub unstamped: Action,
    /// A stamp that does not decode or names an untrusted registry.
    pub invalid: Action,
}

impl Default for ActionTable {
    fn default() -> Self {
        Self {
            wanted: Action::AddHeader,
            suspect: Action::AddHeader,
            spam: Action::AddHeader,
            unstamped: Action::AddHeader,
            invalid: Action::AddHeader,
        }
    }
}

impl ActionTable {
    /// The configured action for `v` (`temperror` has none here: see `on_temperror`).
    pub fn get(&self, v: Verdict) -> Option<Action> {
        match v {
            Verdict::Wanted => Some(self.wanted),
            Verdict::Suspect => Some(self.suspect),
            Verdict::Spam => Some(self.spam),
            Verdict::Unstamped => Some(self.unstamped),
            Verdict::Invalid => Some(self.invalid),
            Verdict::Temperror => None,
        }
    }
}

/// `[milter]` in the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MilterConfig {
    /// The authserv-id of `Authentication-Results:` (default: this host's name).
    pub authserv_id: Option<String>,
    /// Clients in these networks send outbound mail (stamped, not verified).
    pub trusted_networks: Vec<Net>,
    /// Postfix `{daemon_name}` values (`-o milter_macro_daemon_name=…`) whose mail is outbound.
    pub outbound_daemons: Vec<String>,
    /// SASL-authenticated senders (`{auth_authen}` set) send outbound mail.
    pub outbound_authenticated: bool,
    /// Largest message taken (bytes); bigger ones get `552 5.3.4`.
    pub max_message_bytes: usize,
    /// Most SMTP sessions served at once (read at start; not changed by a reload).
    pub max_sessions: usize,
    /// Outbound mail when the stamp cannot be recorded: `tempfail` (default) or `pass`.
    pub on_stamp_error: TroublePolicy,
    /// Inbound mail whose verdict is `temperror`: `tempfail` (default) or `pass`.
    pub on_temperror: TroublePolicy,
    /// Look up the recording transaction of a found stamp and name it in the header.
    pub lookup_tx: bool,
    /// Action per verdict.
    pub actions: ActionTable,
}

impl Default for MilterConfig {
    fn default() -> Self {
        Self {
            authserv_id: None,
            trusted_networks: Vec::new(),
            outbound_daemons: Vec::new(),
            outbound_authenticated: true,
            max_message_bytes: 25 * 1024 * 1024,
            max_sessions: 100,
            on_stamp_error: TroublePolicy::Tempfail,
            on_temperror: TroublePolicy::Tempfail,
            lookup_tx: true,
            actions: ActionTable::default(),
        }
    }
}

/// Everything a message is judged with; replaced as a whole on reload.
#[derive(Clone)]
pub struct Settings {
    /// The agent configuration (chain, stamp, verify).
    pub cfg: Config,
    /// `[milter]`.
    pub milter: MilterConfig,
    /// The loaded maps.
    pub maps: Maps,
    /// The authserv-id in use.
    pub authserv_id: String,
    /// Outbound: selection, writer check, provider mode.
    pub stamp: StampContext,
    /// Writer records and the trust map, for inbound checks.
    pub authority: Authority,
    /// The store holding authorised senders and the allowlist (`[inbound] enabled`).
    pub people: Option<Arc<Store>>,
    /// DMARC checks for the inbound folder decision (`[inbound] enabled`).
    pub authenticator: Option<Arc<Authenticator>>,
}

impl Settings {
    /// Builds settings from parts (the maps already loaded).
    pub fn new(cfg: Config, milter: MilterConfig, maps: Maps) -> Result<Self> {
        if milter.max_message_bytes == 0 || milter.max_message_bytes > MAX_MESSAGE_BYTES {
            bail!("milter.max_message_bytes must be between 1 and {MAX_MESSAGE_BYTES}");
        }
        if milter.max_sessions == 0 {
            bail!("milter.max_sessions must be at least 1");
        }
        cfg.relay.check()?;
        let authserv_id = match &milter.authserv_id {
            Some(id) if id.is_empty() || id.contains([';', ' ', '\t', '\r', '\n']) => {
                bail!("milter.authserv_id `{id}` must be one token (a host name)")
            }
            Some(id) => id.clone(),
            None => hostname(),
        };
        let authority = Authority::new(&cfg.dns, &cfg.trust)?;
        let active_only = if cfg.provider.enabled {
            Some(Arc::new(Store::open(&cfg.store.path).context(
                "provider mode needs the store (store.path / --store)",
            )?))
        } else {
            None
        };
        // Authorised senders and the allowlist (issue 5): the same file, their own connection
        // with a short busy timeout (session::open_people_store).
        let (people, authenticator) = if cfg.inbound.enabled {
            let store = session::open_people_store(&cfg.store.path).context(
                "inbound.enabled needs the store (store.path / --store); set inbound.enabled = false to go without",
            )?;
            let auth = Authenticator::new(&cfg.dns, &authserv_id)?;
            (Some(store), Some(Arc::new(auth)))
        } else {
            (None, None)
        };
        let stamp = StampContext {
            selection: cfg.stamp.selection(),
            authority: authority.clone(),
            check_writer: cfg.stamp.check_writer,
            active_only,
        };
        Ok(Self {
            cfg,
            milter,
            maps,
            authserv_id,
            stamp,
            authority,
            people,
            authenticator,
        })
    }

    /// Reads the configuration file (with `over` applied) and the map files it names
    /// (relative to the file's directory).
    pub fn load(path: Option<&Path>, over: &Overrides) -> Result<Self> {
        let cfg = Config::load(path, over)?;
        let base = path
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let maps = Maps::load(&cfg.maps, &base)?;
        let milter = cfg.milter.clone();
        Self::new(cfg, milter, maps)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace))
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The milter: settings (reloadable), the writer key, and a lazily (re)connected chain.
pub struct Milter {
    settings: RwLock<Arc<Settings>>,
    pub(crate) source: Option<(PathBuf, Overrides)>,
    signer: Option<PrivateKeySigner>,
    chain: tokio::sync::Mutex<Option<Chain>>,
    /// The writer's nonce counter, kept across reconnects (sessions may still hold the old
    /// connection with transactions in flight).
    nonces: NoncePool,
    /// Who this daemon is in the batch journal (see [`Milter::with_owner`]).
    owner: String,
    /// `stamp.mode = "batch"`: the batcher every session shares (made on first use; its
    /// store is `store.path` as it was then).
    batcher: tokio::sync::OnceCell<Arc<Batcher>>,
}

impl Milter {
    /// A milter judging with `settings`, stamping with `signer` (none: outbound mail cannot be
    /// stamped and meets `on_stamp_error`). `source` is the config file [`Milter::reload`]
    /// reads again.
    pub fn new(
        settings: Settings,
        signer: Option<PrivateKeySigner>,
        source: Option<(PathBuf, Overrides)>,
    ) -> Self {
        Self {
            settings: RwLock::new(Arc::new(settings)),
            source,
            signer,
            chain: tokio::sync::Mutex::new(None),
            nonces: NoncePool::default(),
            owner: "milter".to_owned(),
            batcher: tokio::sync::OnceCell::new(),
        }
    }

    /// Names this daemon in the batch journal (default `milter`): the daemons give their kind
    /// and listen address, so that a milter and a relay sharing one store each recover only
    /// the batches they opened. Call it before serving.
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// The shared batcher, opening the store on first use.
    pub(crate) async fn batcher(&self) -> Result<Arc<Batcher>, String> {
        self.batcher
            .get_or_try_init(|| async {
                let s = self.settings();
                let store = match &s.stamp.active_only {
                    // Provider mode already opened the same file.
                    Some(st) => st.clone(),
                    None => Arc::new(Store::open(&s.cfg.store.path).map_err(|e| {
                        format!("batched stamping needs the store (store.path): {e:#}")
                    })?),
                };
                Ok(Arc::new(Batcher::new(store, self.owner.clone())))
            })
            .await
            .cloned()
    }

    /// At start, in batched mode: the batches a previous run left pending (none in direct
    /// mode). Call it before serving: a batch opened after this is not among them, so
    /// [`Milter::recover_batches`] can then run beside the sessions.
    pub async fn pending_batches(&self) -> Result<Vec<DaemonBatchRow>> {
        if self.settings().cfg.stamp.mode != StampMode::Batch {
            return Ok(Vec::new());
        }
        let b = self.batcher().await.map_err(anyhow::Error::msg)?;
        b.pending()
    }

    /// Batched mode: deletes anchored and dropped batches older than
    /// `stamp.journal_retention_days` from the journal; the daemons call it at start and
    /// hourly. Nothing in direct mode.
    pub async fn prune_journal(&self) -> Result<usize> {
        let s = self.settings();
        if s.cfg.stamp.mode != StampMode::Batch {
            return Ok(0);
        }
        let b = self.batcher().await.map_err(anyhow::Error::msg)?;
        b.prune(s.cfg.stamp.journal_retention_days)
    }

    /// Applies `stamp.pending_on_restart` to `pending` (from [`Milter::pending_batches`]).
    /// It may wait for the chain (and for an anchor still in the pool), so the daemons run it
    /// on its own task once they listen.
    pub async fn recover_batches(&self, pending: Vec<DaemonBatchRow>) -> Result<Vec<Recovered>> {
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.settings();
        let b = self.batcher().await.map_err(anyhow::Error::msg)?;
        let policy = s.cfg.stamp.pending_on_restart;
        let chain =
            match policy {
                PendingPolicy::Drop => None,
                PendingPolicy::Anchor => Some(self.chain().await.map_err(|e| {
                    anyhow::anyhow!("pending batches left for the next start: {e}")
                })?),
            };
        b.recover(pending, policy, chain.as_ref()).await
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the config file and maps again. On any error the old settings stay in force and
    /// the error (with file and line for a map) is returned. Sessions under way keep the
    /// settings they started the message with.
    pub async fn reload(&self) -> Result<()> {
        let Some((path, over)) = &self.source else {
            bail!("no config file to reload");
        };
        let new = Settings::load(Some(path), over)?;
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        // The chain settings may have changed: connect afresh on the next message.
        *self.chain.lock().await = None;
        Ok(())
    }

    /// The chain connection, made on first use and after any failure.
    pub(crate) async fn chain(&self) -> Result<Chain, String> {
        let mut slot = self.chain.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let s = self.settings();
        let registry = s.cfg.registry().map_err(|e| format!("{e:#}"))?;
        let c = Chain::connect_in(&s.cfg.chain, registry, self.signer.clone(), &self.nonces)
            .await
            .map_err(|e| format!("{e:#}"))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Forgets the connection (after an error), so that the next message reconnects; the
    /// nonce counter is kept (it asks the node again after a failed send).
    pub(crate) async fn drop_chain(&self) {
        *self.chain.lock().await = None;
    }
}

/// Serves milter connections on `listener` until `shutdown` completes; sessions under way
/// finish their current command.
pub async fn run(
    listener: impl indymilter::Listener,
    milter: Arc<Milter>,
    shutdown: impl Future,
) -> std::io::Result<()> {
    let config = indymilter::Config {
        max_connections: milter.settings().milter.max_sessions,
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
}

/// Per-message state, from MAIL FROM to end of message.
struct Msg {
    settings: Arc<Settings>,
    outbound: bool,
    /// The envelope sender (MAIL FROM), empty for the null sender.
    sender: String,
    rcpts: Vec<String>,
    sender_policy: Option<VerifyPolicy>,
    rcpt_policies: Vec<Option<VerifyPolicy>>,
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

fn callbacks(m: Arc<Milter>) -> Callbacks<Session> {
    let (m1, m2, m3, m4, m5, m6) = (
        m.clone(),
        m.clone(),
        m.clone(),
        m.clone(),
        m.clone(),
        m.clone(),
    );
    Callbacks::new()
        .on_negotiate(|cx, actions, opts| Box::pin(negotiate(cx, actions, opts)))
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
            Box::pin(async move { rcpt(cx, &args) })
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
) -> Status {
    // Without LEADING_SPACE the MTA strips the space after the colon: the header values we
    // hash would differ from the ones the receiver hashes.
    if !opts.contains(ProtoOpts::LEADING_SPACE) || !actions.contains(NEEDED_ACTIONS) {
        warn!(
            "the MTA offers neither LEADING_SPACE nor the header actions mailstamp needs (milter protocol 6 required); refusing the session"
        );
        return Status::Reject;
    }
    cx.requested_actions = NEEDED_ACTIONS;
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

fn connect(m: &Milter, cx: &mut Context<Session>, host: &str, info: SocketInfo) -> Status {
    let s = m.settings();
    let ip = match info {
        SocketInfo::Inet(a) => Some(a.ip()),
        _ => None,
    };
    let daemon = cx
        .macros
        .get(&c("{daemon_name}"))
        .map(|d| d.to_string_lossy().into_owned());
    let (step, accepted) = session::at_connect(&s, ip, host);
    cx.data = Some(Session {
        client_ip: ip,
        outbound_client: session::outbound_client(&s, ip, daemon.as_deref()),
        client_accepted: accepted,
        helo: String::new(),
        msg: None,
    });
    step_status(&mut cx.reply, &step)
}

fn helo(m: &Milter, cx: &mut Context<Session>, helo: &str) -> Status {
    let Some(session) = cx.data.as_mut() else {
        return missing_state(&mut cx.reply, "helo");
    };
    session.helo = helo.to_owned();
    if session.client_accepted {
        return Status::Continue;
    }
    let (step, accepted) = session::at_helo(&m.settings(), helo);
    session.client_accepted = accepted;
    step_status(&mut cx.reply, &step)
}

fn addr_of(args: &[CString]) -> String {
    args.first()
        .map(|a| {
            a.to_string_lossy()
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
        .unwrap_or_default()
}

fn mail(m: &Milter, cx: &mut Context<Session>, args: &[CString]) -> Status {
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
    let outbound = session.outbound_client || (s.milter.outbound_authenticated && authenticated);
    let sender_policy = match session::at_mail(
        &s,
        &sender,
        declared,
        s.milter.max_message_bytes,
        session.client_accepted,
    ) {
        Ok(p) => p,
        Err(step) => return step_status(&mut cx.reply, &step),
    };
    session.msg = Some(Msg {
        settings: s,
        outbound,
        sender,
        rcpts: Vec::new(),
        sender_policy,
        rcpt_policies: Vec::new(),
        raw: Vec::new(),
        seen: std::collections::HashMap::new(),
        forged: Vec::new(),
    });
    Status::Continue
}

fn too_big(reply: &mut indymilter::SmtpReply, limit: usize) -> Status {
    reply_with(reply, &session::too_big(limit))
}

fn rcpt(cx: &mut Context<Session>, args: &[CString]) -> Status {
    let Some(msg) = cx.data.as_mut().and_then(|s| s.msg.as_mut()) else {
        return missing_state(&mut cx.reply, "rcpt");
    };
    let rcpt = addr_of(args);
    let policy = match session::at_rcpt(&msg.settings, &rcpt, msg.outbound) {
        Ok(p) => p,
        Err(step) => return step_status(&mut cx.reply, &step),
    };
    msg.rcpts.push(rcpt);
    msg.rcpt_policies.push(policy);
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
    let limit = msg.settings.milter.max_message_bytes;
    if msg.raw.len() + name.len() + value.len() * 2 + 3 > limit {
        return too_big(&mut cx.reply, limit);
    }
    let index = msg.count(name);
    // Headers that claim our results came from outside: they go, or a Sieve rule could be
    // fooled by a sender who writes them — on outbound (local submission) mail too, which a
    // local recipient's or the next site's Sieve rule reads.
    if session::is_ours(name, value, &msg.settings.authserv_id) {
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
    let limit = msg.settings.milter.max_message_bytes;
    if msg.raw.len() + bytes.len() > limit {
        msg.raw = Vec::new();
        return too_big(&mut cx.reply, limit);
    }
    msg.raw.extend_from_slice(bytes);
    Status::Continue
}

async fn eom(m: &Milter, cx: &mut EomContext<Session>) -> Status {
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
    if msg.outbound {
        outbound(m, cx, msg, &queue_id).await
    } else {
        inbound(m, cx, msg, client_ip, &helo, &queue_id).await
    }
}

async fn outbound(m: &Milter, cx: &mut EomContext<Session>, msg: Msg, queue_id: &str) -> Status {
    remove_forged(cx, &msg, queue_id).await;
    let s = &msg.settings;
    match session::stamp(m, s, &msg.raw, &msg.sender, &msg.rcpts).await {
        Ok(st) => {
            let Some(value) = session::stamp_value(&st.message, msg.raw.len()) else {
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
            info!(queue_id, token = %st.token, tx = %st.recorded.tx, block = st.recorded.block, batch = ?st.batch, rcpts = msg.rcpts.len(), "stamped");
            Status::Continue
        }
        Err(e) => {
            warn!(queue_id, "cannot stamp: {e}");
            match s.milter.on_stamp_error {
                TroublePolicy::Tempfail => refuse(
                    &mut cx.reply,
                    false,
                    "4.7.1",
                    "mailstamp: cannot record the stamp now, try again later",
                ),
                TroublePolicy::Pass => {
                    if let Err(e) = cx
                        .actions
                        .add_header(UNSTAMPED_HEADER, " temporary chain error")
                        .await
                    {
                        warn!(queue_id, "cannot add {UNSTAMPED_HEADER}: {e}");
                    }
                    Status::Continue
                }
            }
        }
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
    pub action: Action,
    /// The milter reply at end of message.
    pub status: Status,
    /// Reply code, enhanced code and text for reject / tempfail.
    pub reply: Option<(&'static str, String, String)>,
    /// Whether the result headers are added.
    pub headers: bool,
    /// Whether the message is quarantined.
    pub quarantine: bool,
}

/// A verdict as the milter's answer: the action is [`session::action_for`]'s (the one
/// mapping from verdict to action), turned into a milter status and reply.
pub fn disposition(
    verdict: Verdict,
    mc: &MilterConfig,
    sender: Option<&VerifyPolicy>,
    rcpts: &[Option<VerifyPolicy>],
) -> Disposition {
    let action = session::action_for(verdict, mc, sender, rcpts);
    disposition_of(action, verdict)
}

fn disposition_of(action: Action, verdict: Verdict) -> Disposition {
    let status = match action {
        Action::Accept | Action::AddHeader | Action::Quarantine => Status::Continue,
        Action::Discard => Status::Discard,
        Action::Tempfail => Status::Tempfail,
        Action::Reject => Status::Reject,
    };
    let reply = session::verdict_refusal(action, verdict).map(|r| {
        let code = if r.permanent() { "550" } else { "451" };
        (code, r.xcode, r.text)
    });
    Disposition {
        action,
        status,
        reply,
        headers: session::adds_headers(action),
        quarantine: action == Action::Quarantine,
    }
}

async fn inbound(
    m: &Milter,
    cx: &mut EomContext<Session>,
    msg: Msg,
    client_ip: Option<IpAddr>,
    helo: &str,
    queue_id: &str,
) -> Status {
    let s = &msg.settings;
    let j = session::judge(
        m,
        s,
        &msg.raw,
        &msg.rcpts,
        client_ip,
        helo,
        &msg.sender,
        msg.sender_policy.as_ref(),
        &msg.rcpt_policies,
    )
    .await;
    let d = disposition_of(j.action, j.report.verdict);
    info!(
        queue_id,
        verdict = j.report.verdict.as_str(),
        score = j.report.score,
        action = ?d.action,
        reason = j.report.reason.as_deref().unwrap_or(""),
        "verified"
    );
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
    if d.quarantine
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
    if let Some((code, xcode, text)) = &d.reply
        && let Err(e) = cx
            .reply
            .set_error_reply(code, Some(xcode.as_str()), [text.as_str()])
    {
        warn!(queue_id, "cannot set the SMTP reply: {e}");
    }
    d.status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::AddrAction;
    use crate::session::{authserv_id_of, stamp_value};
    use mailstamp_core::Report;

    fn pol(actions: &[(Verdict, Action)]) -> Option<VerifyPolicy> {
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
            assert_eq!(d.action, Action::AddHeader, "{v:?}");
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
            (Action::Accept, Status::Continue, false, false, None),
            (Action::AddHeader, Status::Continue, true, false, None),
            (Action::Quarantine, Status::Continue, true, true, None),
            (Action::Discard, Status::Discard, false, false, None),
            (
                Action::Tempfail,
                Status::Tempfail,
                false,
                false,
                Some("451"),
            ),
            (Action::Reject, Status::Reject, false, false, Some("550")),
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
        let strict = pol(&[(Verdict::Spam, Action::Reject)]);
        let lax = pol(&[(Verdict::Spam, Action::Accept)]);
        assert_eq!(
            disposition(Verdict::Spam, &mc, None, std::slice::from_ref(&lax)).action,
            Action::Accept
        );
        assert_eq!(
            disposition(Verdict::Spam, &mc, None, &[lax.clone(), None]).action,
            Action::AddHeader
        );
        assert_eq!(
            disposition(Verdict::Spam, &mc, None, &[lax.clone(), strict.clone()]).action,
            Action::Reject
        );
        // A sender policy applies to recipients without their own.
        let q = pol(&[(Verdict::Spam, Action::Quarantine)]);
        assert_eq!(
            disposition(Verdict::Spam, &mc, q.as_ref(), &[None, lax]).action,
            Action::Quarantine
        );
        // Other verdicts are untouched.
        assert_eq!(
            disposition(Verdict::Wanted, &mc, None, &[strict]).action,
            Action::AddHeader
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
        assert_eq!(s.milter.actions.spam, Action::Quarantine);
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
        assert_eq!(s.milter.actions.spam, Action::Quarantine);
        assert_eq!(s.milter.on_temperror, TroublePolicy::Pass);
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
