// SPDX-License-Identifier: GPL-3.0-or-later
//! The SMTP-session decisions shared by both MTA adapters, the milter ([`crate::milter`]) and
//! the relay ([`crate::relay`]): outbound or inbound, what each map says at its stage and
//! the refusal that goes with it, THE mapping from a verdict to an action ([`action_for`]),
//! stamping and judging a whole message, and the texts of the headers mailstamp adds. The
//! adapters only turn these answers into their own wire form (milter status / SMTP reply).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::B256;
use mailstamp_core::{Envelope, Report, Verdict};
use tracing::{info, warn};

use crate::allowlist;
use crate::auth::AuthOutcome;
use crate::batcher::Cut;
use crate::config::StampMode;
use crate::inbound::{self, Folder, FromIdentity};
use crate::maps::{Action, AddrAction, ConnAction, VerifyPolicy};
use crate::milter::{Milter, MilterConfig, Settings, TroublePolicy};
use crate::ops::{self, Stamped, VerifyContext};
use crate::store::Store;

/// Name of the verdict header a Sieve rule can file on.
pub const VERDICT_HEADER: &str = "X-Mailstamp-Verdict";
/// Name of the score header (present when components were compared).
pub const SCORE_HEADER: &str = "X-Mailstamp-Score";
/// Header added to outbound mail passed unstamped by `on_stamp_error = "pass"`.
pub const UNSTAMPED_HEADER: &str = "X-Mailstamp-Unstamped";

/// An SMTP refusal: reply code, enhanced status code, text (printable ASCII).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 451, 550, 552, …
    pub code: u16,
    /// RFC 3463 code, `4.7.1`, …
    pub xcode: String,
    /// The reply text.
    pub text: String,
}

impl Refusal {
    /// A refusal: 550 (permanent) or 451; `5.3.4` (too big) is always 552.
    pub fn new(permanent: bool, xcode: &str, text: &str) -> Self {
        let code = if xcode == "5.3.4" {
            552
        } else if permanent {
            550
        } else {
            451
        };
        Self {
            code,
            xcode: xcode.to_owned(),
            text: clean(text, 400),
        }
    }

    /// Whether the refusal is permanent (5xx).
    pub fn permanent(&self) -> bool {
        self.code >= 500
    }
}

/// What a stage decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Go on.
    Go,
    /// Refuse with this reply.
    Refuse(Refusal),
    /// Take the message and drop it (access(5) DISCARD).
    Discard,
}

/// Printable ASCII only, at most `max` characters.
pub fn clean(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(max)
        .collect()
}

/// Whether a client sends outbound mail by where it connects from: an IP in
/// `trusted_networks`, or a Postfix `{daemon_name}` listed in `outbound_daemons`.
pub fn outbound_client(s: &Settings, ip: Option<IpAddr>, daemon: Option<&str>) -> bool {
    ip.is_some_and(|ip| s.milter.trusted_networks.iter().any(|n| n.contains(ip)))
        || daemon.is_some_and(|d| s.milter.outbound_daemons.iter().any(|o| o == d))
}

fn conn_step(a: Option<&ConnAction>, what: &str) -> (Step, bool) {
    match a {
        Some(ConnAction::Accept) => (Step::Go, true),
        Some(ConnAction::Reject(t)) => (
            Step::Refuse(Refusal::new(
                true,
                "5.7.1",
                t.as_deref()
                    .unwrap_or(&format!("mailstamp: {what} refused by the connection map")),
            )),
            false,
        ),
        Some(ConnAction::Tempfail(t)) => (
            Step::Refuse(Refusal::new(
                false,
                "4.7.1",
                t.as_deref()
                    .unwrap_or(&format!("mailstamp: {what} deferred by the connection map")),
            )),
            false,
        ),
        Some(ConnAction::Continue) | None => (Step::Go, false),
    }
}

/// The connection map at CONNECT; the flag says the client is accepted (later maps skipped).
pub fn at_connect(s: &Settings, ip: Option<IpAddr>, host: &str) -> (Step, bool) {
    let r = conn_step(s.maps.connection.at_connect(ip, host), "client");
    if r.0 != Step::Go {
        info!(client = ?ip, host, step = ?r.0, "connection map");
    }
    r
}

/// The connection map at HELO/EHLO (not consulted for an accepted client).
pub fn at_helo(s: &Settings, helo: &str) -> (Step, bool) {
    let r = conn_step(s.maps.connection.at_helo(helo), "HELO name");
    if r.0 != Step::Go {
        info!(helo, step = ?r.0, "connection map (HELO)");
    }
    r
}

/// The refusal of a message over `limit` bytes.
pub fn too_big(limit: usize) -> Refusal {
    Refusal::new(
        true,
        "5.3.4",
        &format!("Message size exceeds the mailstamp limit of {limit} bytes"),
    )
}

/// MAIL FROM: the declared SIZE against `limit`, then the sender map (skipped for a client
/// the connection map accepted). `Ok` carries the sender's verify policy.
pub fn at_mail(
    s: &Settings,
    sender: &str,
    declared: Option<u64>,
    limit: usize,
    client_accepted: bool,
) -> Result<Option<VerifyPolicy>, Step> {
    // SIZE= is the client's promise; refuse early rather than buffer what we will refuse.
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Step::Refuse(too_big(limit)));
    }
    if client_accepted {
        return Ok(None);
    }
    addr_step(
        s.maps.sender.lookup(sender, s.maps.delimiter),
        sender,
        "sender",
        "Sender",
    )
}

fn addr_step(
    a: Option<&AddrAction>,
    addr: &str,
    map: &str,
    what: &str,
) -> Result<Option<VerifyPolicy>, Step> {
    match a {
        Some(AddrAction::Reject(t)) => {
            info!(addr, "{map} map: reject");
            let t = t.as_deref().map_or_else(
                || format!("{what} address rejected by mailstamp"),
                str::to_owned,
            );
            Err(Step::Refuse(Refusal::new(
                true,
                "5.7.1",
                &format!("<{addr}>: {t}"),
            )))
        }
        Some(AddrAction::Tempfail(t)) => {
            info!(addr, "{map} map: tempfail");
            let t = t.as_deref().map_or_else(
                || format!("{what} address deferred by mailstamp"),
                str::to_owned,
            );
            Err(Step::Refuse(Refusal::new(
                false,
                "4.7.1",
                &format!("<{addr}>: {t}"),
            )))
        }
        Some(AddrAction::Discard) => {
            info!(addr, "{map} map: discard");
            Err(Step::Discard)
        }
        Some(AddrAction::Verify(p)) => Ok(Some(p.clone())),
        Some(AddrAction::Accept | AddrAction::Continue) | None => Ok(None),
    }
}

/// RCPT TO: the recipient map, then (provider mode, inbound only) whether the recipient's
/// domain is an active customer domain. `Ok` carries the recipient's verify policy.
pub fn at_rcpt(s: &Settings, rcpt: &str, outbound: bool) -> Result<Option<VerifyPolicy>, Step> {
    let policy = addr_step(
        s.maps.recipient.lookup(rcpt, s.maps.delimiter),
        rcpt,
        "recipient",
        "Recipient",
    )?;
    // Provider mode (seed 000): inbound mail only for customer domains that are onboarded
    // and verified.
    if !outbound && let Some(store) = &s.stamp.active_only {
        let domain = rcpt
            .rsplit_once('@')
            .map_or("", |(_, d)| d)
            .to_ascii_lowercase();
        match store.is_active(&domain) {
            Ok(true) => {}
            Ok(false) => {
                info!(rcpt, "provider mode: domain not onboarded");
                let t = format!("<{rcpt}>: domain {domain} is not an active customer domain here");
                return Err(Step::Refuse(Refusal::new(true, "5.1.2", &t)));
            }
            Err(e) => {
                warn!(rcpt, error = %e, "provider mode: store unreadable");
                return Err(Step::Refuse(Refusal::new(
                    false,
                    "4.3.0",
                    "mailstamp state store unavailable, try later",
                )));
            }
        }
    }
    Ok(policy)
}

/// THE mapping from a verdict to an action. The action is the configured one for the
/// verdict, overridden per sender/recipient by `verify` policies; with several recipients
/// the strictest action wins (one message, one answer). `temperror` follows `on_temperror`:
/// a slow chain never makes spam.
pub fn action_for(
    verdict: Verdict,
    mc: &MilterConfig,
    sender: Option<&VerifyPolicy>,
    rcpts: &[Option<VerifyPolicy>],
) -> Action {
    match mc.actions.get(verdict) {
        None => match mc.on_temperror {
            TroublePolicy::Tempfail => Action::Tempfail,
            TroublePolicy::Pass => Action::AddHeader,
        },
        Some(global) => {
            let for_rcpt = |p: &Option<VerifyPolicy>| {
                p.as_ref()
                    .and_then(|p| p.action(verdict))
                    .or_else(|| sender.and_then(|p| p.action(verdict)))
                    .unwrap_or(global)
            };
            if rcpts.is_empty() {
                for_rcpt(&None)
            } else {
                rcpts.iter().map(for_rcpt).max().unwrap_or(global)
            }
        }
    }
}

/// The SMTP refusal of a verdict's action (`tempfail` and `reject` only).
pub fn verdict_refusal(action: Action, verdict: Verdict) -> Option<Refusal> {
    let v = verdict.as_str();
    match action {
        Action::Tempfail => Some(Refusal {
            code: 451,
            xcode: "4.7.1".to_owned(),
            text: if verdict == Verdict::Temperror {
                "mailstamp: the stamp cannot be checked now, try again later".to_owned()
            } else {
                format!("mailstamp: message deferred (verdict {v})")
            },
        }),
        Action::Reject => Some(Refusal {
            code: 550,
            xcode: "5.7.1".to_owned(),
            text: format!("mailstamp: message refused, its stamp verdict is {v}"),
        }),
        Action::Accept | Action::AddHeader | Action::Quarantine | Action::Discard => None,
    }
}

/// Whether the result headers go on a message for `action`.
pub fn adds_headers(action: Action) -> bool {
    matches!(action, Action::AddHeader | Action::Quarantine)
}

/// Whether an incoming header field claims to be one of our results (and must go before a
/// Sieve rule could be fooled by a sender who writes it).
pub fn is_ours(name: &str, value: &[u8], authserv_id: &str) -> bool {
    // Every X-Mailstamp-* field (verdict, score, folder, inbox-for, list) is ours.
    name.get(..12)
        .is_some_and(|p| p.eq_ignore_ascii_case("X-Mailstamp-"))
        || (name.eq_ignore_ascii_case("Authentication-Results")
            && authserv_id_of(value) == authserv_id.to_ascii_lowercase())
}

/// The authserv-id an `Authentication-Results:` value starts with.
pub fn authserv_id_of(value: &[u8]) -> String {
    let v = String::from_utf8_lossy(value);
    v.trim_start()
        .split([';', ' ', '\t', '\r', '\n'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// The RFC 8601 result of a verdict for method `mailstamp`.
pub fn ar_result(v: Verdict) -> &'static str {
    match v {
        Verdict::Wanted => "pass",
        Verdict::Suspect => "neutral",
        Verdict::Spam => "fail",
        Verdict::Unstamped => "none",
        Verdict::Invalid => "permerror",
        Verdict::Temperror => "temperror",
    }
}

/// The `Authentication-Results:` value (leading space, LF-folded) for a report.
pub fn ar_value(
    authserv_id: &str,
    report: &Report,
    from: Option<&str>,
    tx: Option<B256>,
) -> String {
    let mut v = format!(
        " {authserv_id};\n\tmailstamp={} ({}",
        ar_result(report.verdict),
        report.verdict.as_str()
    );
    if let Some(sc) = report.score {
        v.push_str(&format!(", score {sc:.2}"));
    }
    v.push(')');
    if let Some(r) = &report.reason {
        let r = clean(r, 200).replace(['"', '\\'], "'");
        v.push_str(&format!("\n\treason=\"{r}\""));
    }
    if let Some(d) = from {
        v.push_str(&format!("\n\theader.from={d}"));
    }
    if let Some(st) = &report.stamp {
        v.push_str(&format!(
            "\n\tpolicy.chain={} policy.writer={}\n\tpolicy.token={}",
            st.chain_id, st.writer, st.token
        ));
    }
    if let Some(tx) = tx {
        v.push_str(&format!("\n\tpolicy.tx={tx}"));
    }
    v
}

/// The value of the header that `ops::stamp` put in front of `raw`, in milter form: the
/// leading space kept, folded lines joined by LF (the MTA adds the CR).
pub fn stamp_value(stamped: &[u8], raw_len: usize) -> Option<String> {
    let field = stamped.get(..stamped.len().checked_sub(raw_len)?)?;
    let field = std::str::from_utf8(field).ok()?;
    let (name, value) = field.split_once(':')?;
    if !name.eq_ignore_ascii_case(mailstamp_core::header::FIELD_NAME) {
        return None;
    }
    Some(value.trim_end_matches(['\r', '\n']).replace("\r\n", "\n"))
}

/// Stamps an outbound message (the stamp covers `rcpts`): one transaction for it
/// (`stamp.mode = "direct"`), or a leaf in the shared batch, waiting at most
/// `stamp.hold_timeout_ms` for the batch's anchor (`"batch"`). An error is chain or RPC
/// trouble, an anchor not mined in time, or a refused From domain; the connection is dropped
/// so the next message reconnects.
/// A stamped message teaches the allowlist ([`learn_outbound`]) for `sender`.
pub async fn stamp(
    m: &Milter,
    s: &Settings,
    raw: &[u8],
    sender: &str,
    rcpts: &[String],
) -> Result<Stamped, String> {
    let env = Envelope {
        rcpts: rcpts.to_vec(),
        client_ip: None,
    };
    let result = match m.chain().await {
        Ok(chain) => match s.cfg.stamp.mode {
            StampMode::Direct => ops::stamp(&chain, &s.stamp, raw, &env)
                .await
                .map_err(|e| format!("{e:#}")),
            StampMode::Batch => match m.batcher().await {
                Ok(b) => {
                    let st = &s.cfg.stamp;
                    let cut = Cut {
                        max: st.batch_max,
                        wait: Duration::from_millis(st.batch_wait_ms),
                    };
                    let hold = Duration::from_millis(st.hold_timeout_ms);
                    ops::stamp_batched(&chain, &s.stamp, &b, cut, hold, raw, &env)
                        .await
                        .map_err(|e| format!("{e:#}"))
                }
                Err(e) => Err(e),
            },
        },
        Err(e) => Err(format!("chain unavailable: {e}")),
    };
    if result.is_err() {
        m.drop_chain().await;
    } else {
        learn_outbound(s, raw, sender, rcpts, ops::now()).await;
    }
    result
}

/// The longest a milter/relay session waits for the store (authorised senders, allowlist).
/// Store work is synchronous SQLite behind a lock: it runs on tokio's blocking pool, never on
/// a worker, and a session that cannot get it within this time (another writer holds the
/// SQLite write lock — `recover --apply`, the CLI, another milter) goes on without it:
/// learning is skipped and logged, the folder decision is the separate folder (never lost).
pub const STORE_WAIT: Duration = Duration::from_millis(1500);

/// SQLite's busy timeout for the sessions' store work: short, so that a write meeting
/// another writer's lock gives up (best effort, logged) instead of holding the store's lock
/// for SQLite's usual 5 s while every other session queues behind it.
pub const SESSION_BUSY_TIMEOUT: Duration = Duration::from_millis(200);

/// Opens the store for the sessions' people lists (authorised senders, allowlist): its own
/// connection — not the one batches are written through, which keeps SQLite's 5 s — with
/// [`SESSION_BUSY_TIMEOUT`].
pub fn open_people_store(path: &std::path::Path) -> anyhow::Result<Arc<Store>> {
    let store = Store::open(path)?;
    store.with(|c| c.busy_timeout(SESSION_BUSY_TIMEOUT))?;
    Ok(Arc::new(store))
}

/// Runs `f` (store work) on the blocking pool; `None` (logged) when it does not finish within
/// [`STORE_WAIT`]. The work itself still finishes in the background (or fails on SQLite's own
/// busy timeout).
async fn store_work<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    match tokio::time::timeout(STORE_WAIT, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            warn!("{what}: store task failed: {e}");
            None
        }
        Err(_) => {
            warn!(
                "{what}: the store is busy (another writer holds it); skipped after {} ms",
                STORE_WAIT.as_millis()
            );
            None
        }
    }
}

/// Outbound learning (seed 004): our user (`sender`, the envelope sender, `+tag` folded) wrote
/// to each of `rcpts`: create or refresh a partial allowlist entry for each. Best effort:
/// store trouble or a busy store ([`STORE_WAIT`]) is logged, never fails or holds the
/// message. Does nothing unless `[inbound] enabled`.
pub async fn learn_outbound(s: &Settings, raw: &[u8], sender: &str, rcpts: &[String], now: u64) {
    let Some(store) = s.people.clone() else {
        return;
    };
    if sender.trim().is_empty() || !s.cfg.allowlist.enabled {
        return;
    }
    let user = inbound::user_of(sender, s.maps.delimiter);
    let to = FromIdentity::of_recipients(raw, rcpts);
    let cfg = s.cfg.allowlist.clone();
    store_work("allowlist learning", move || {
        for to in to {
            if let Err(e) = allowlist::record_outbound(&store, &cfg, &user, &to, now) {
                warn!(user, to = to.address, "allowlist not updated: {e:#}");
            }
        }
    })
    .await;
}

/// Most recipients given a [`inbound::LIST_HEADER`] field (more are decided, not reported).
pub const MAX_LIST_HEADERS: usize = 50;

/// The inbound folder decision for every recipient (seeds 003, 004) and the headers that
/// carry it: [`inbound::FOLDER_HEADER`] (`INBOX` or the separate folder), when recipients
/// disagree [`inbound::INBOX_FOR_HEADER`] (the recipients for whom it is INBOX), and one
/// [`inbound::LIST_HEADER`] per recipient with a list hit. Authenticated messages complete
/// allowlist entries. Nothing for a `spam`/`invalid` stamp (the verdict header files it) or
/// when `[inbound] enabled` is off.
#[allow(clippy::too_many_arguments)]
pub async fn folder_headers(
    s: &Settings,
    raw: &[u8],
    from: Option<&FromIdentity>,
    rcpts: &[String],
    client_ip: Option<IpAddr>,
    helo: &str,
    mail_from: &str,
    report: &Report,
    now: u64,
) -> Vec<(&'static str, String)> {
    let (Some(store), Some(authn)) = (s.people.clone(), &s.authenticator) else {
        return Vec::new();
    };
    if matches!(report.verdict, Verdict::Spam | Verdict::Invalid) {
        return Vec::new();
    }
    let from = from.cloned();
    let auth = if inbound::stamp_authenticates(report) {
        AuthOutcome::none()
    } else {
        authn.authenticate(raw, client_ip, helo, mail_from).await
    };
    let separate = Folder::Separate(s.cfg.inbound.folder.clone());
    let mut inbox_for = Vec::new();
    let mut lists = Vec::new();
    let mut all_inbox = true;
    // Every recipient's decision and learning in one go on the blocking pool (STORE_WAIT).
    let users: Vec<String> = rcpts
        .iter()
        .map(|r| inbound::user_of(r, s.maps.delimiter))
        .collect();
    // Reads first (the decision; WAL readers are not blocked by a writer), then the writes
    // (completing allowlist entries), each on the blocking pool within STORE_WAIT: a busy
    // store costs the learning, not the decision.
    let cfg = Arc::new(s.cfg.clone());
    let decided = {
        let (store, cfg, from, report, auth) = (
            store.clone(),
            cfg.clone(),
            from.clone(),
            report.clone(),
            auth.clone(),
        );
        let users = users.clone();
        store_work("inbound decision", move || {
            users
                .iter()
                .map(|user| {
                    inbound::decide(&store, &cfg, user, from.as_ref(), Some(&report), &auth, now)
                })
                .collect::<Vec<anyhow::Result<inbound::Decision>>>()
        })
        .await
    };
    if let Some(ds) = &decided {
        let learnable: Vec<(String, inbound::Decision)> = users
            .iter()
            .zip(ds)
            .filter_map(|(u, d)| Some((u.clone(), d.as_ref().ok()?.clone())))
            .filter(|(_, d)| d.authenticated)
            .collect();
        if !learnable.is_empty() {
            let from = from.clone();
            store_work("allowlist completion", move || {
                for (user, d) in learnable {
                    if let Err(e) = inbound::learn(&store, &cfg, &user, from.as_ref(), &d, now) {
                        warn!(user, "allowlist not completed: {e:#}");
                    }
                }
            })
            .await;
        }
    }
    let mut decided = decided.map(Vec::into_iter);
    for rcpt in rcpts {
        let d = match decided.as_mut().and_then(Iterator::next) {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                // Never lost: an unreadable store files the message in the separate folder
                // (a wanted stamp needs no store: INBOX all the same).
                warn!(rcpt, "inbound decision without the store: {e:#}");
                store_trouble(report, rcpt, &mut inbox_for, &mut all_inbox);
                continue;
            }
            None => {
                // The store is busy (logged once above): as above.
                store_trouble(report, rcpt, &mut inbox_for, &mut all_inbox);
                continue;
            }
        };
        info!(
            rcpt,
            folder = d.folder.name(),
            reason = d.reason.as_str(),
            hit = ?d.list_hit,
            auth = auth.summary(),
            "inbound folder"
        );
        if lists.len() < MAX_LIST_HEADERS
            && let Some(h) = d.list_header(&clean(&rcpt.to_ascii_lowercase(), 200))
        {
            let detail = if d.auth_method == Some("dmarc") || !d.authenticated {
                // The From domain comes from the message: printable ASCII only.
                format!(" ({})", clean(&auth.summary(), 300))
            } else {
                String::new()
            };
            lists.push((inbound::LIST_HEADER, format!("{h}{detail}")));
        }
        if d.folder == Folder::Inbox {
            inbox_for.push(format!("<{}>", clean(&rcpt.to_ascii_lowercase(), 200)));
        } else {
            all_inbox = false;
        }
    }
    let mut headers = Vec::new();
    if all_inbox && !rcpts.is_empty() {
        headers.push((inbound::FOLDER_HEADER, " INBOX".to_owned()));
    } else {
        headers.push((inbound::FOLDER_HEADER, format!(" {}", separate.name())));
        if !inbox_for.is_empty() {
            headers.push((
                inbound::INBOX_FOR_HEADER,
                format!(" {}", inbox_for.join(",\n\t")),
            ));
        }
    }
    headers.extend(lists);
    headers
}

/// The folder of `rcpt` when the store could not decide: INBOX for a wanted stamp (the lists
/// are not needed), else the separate folder.
fn store_trouble(report: &Report, rcpt: &str, inbox_for: &mut Vec<String>, all_inbox: &mut bool) {
    if report.verdict == Verdict::Wanted {
        inbox_for.push(format!("<{}>", clean(&rcpt.to_ascii_lowercase(), 200)));
    } else {
        *all_inbox = false;
    }
}

/// What verification decided for an inbound message.
#[derive(Debug, Clone)]
pub struct Judgement {
    /// The verifier's report.
    pub report: Report,
    /// The action ([`action_for`]).
    pub action: Action,
    /// The SMTP refusal for `tempfail` / `reject`.
    pub refusal: Option<Refusal>,
    /// Headers to add (name, value with leading space, folds joined by LF), in order;
    /// `Authentication-Results` first, to go on top. Empty unless the action adds headers.
    pub headers: Vec<(&'static str, String)>,
}

/// Verifies an inbound message and decides its action. Thresholds of sender and recipient
/// policies apply (the highest wins); a `temperror` drops the chain connection. With
/// `[inbound] enabled`, the folder headers ([`folder_headers`]) follow the result headers;
/// `helo` and `mail_from` (the envelope sender) feed SPF.
#[allow(clippy::too_many_arguments)]
pub async fn judge(
    m: &Milter,
    s: &Settings,
    raw: &[u8],
    rcpts: &[String],
    client_ip: Option<IpAddr>,
    helo: &str,
    mail_from: &str,
    sender_policy: Option<&VerifyPolicy>,
    rcpt_policies: &[Option<VerifyPolicy>],
) -> Judgement {
    let mut policy = s.cfg.verify.policy();
    let thresholds = rcpt_policies
        .iter()
        .map(Option::as_ref)
        .chain(std::iter::once(sender_policy))
        .filter_map(|p| p.and_then(|p| p.threshold));
    if let Some(t) = thresholds.reduce(f64::max) {
        policy.threshold = t;
    }
    let ctx = VerifyContext {
        authority: s.authority.clone(),
        trusted: s.cfg.trusted_registries(),
        policy,
        now: Some(ops::now()),
    };
    let env = Envelope {
        rcpts: rcpts.to_vec(),
        client_ip,
    };
    let chain = m.chain().await;
    let report = ops::verify(chain.as_ref().map_err(String::as_str), &ctx, raw, &env).await;
    if report.verdict == Verdict::Temperror {
        m.drop_chain().await;
    }
    let action = action_for(report.verdict, &s.milter, sender_policy, rcpt_policies);
    let mut headers = Vec::new();
    if adds_headers(action) {
        let tx = match &chain {
            Ok(c) if s.milter.lookup_tx => ops::recording_tx(c, &report, s.cfg.chain.from_block)
                .await
                .map(|r| r.tx),
            _ => None,
        };
        let from = FromIdentity::of_message(raw);
        headers.push((
            "Authentication-Results",
            ar_value(
                &s.authserv_id,
                &report,
                from.as_ref().map(|f| f.domain.as_str()),
                tx,
            ),
        ));
        headers.push((VERDICT_HEADER, format!(" {}", report.verdict.as_str())));
        if let Some(sc) = report.score {
            headers.push((SCORE_HEADER, format!(" {sc:.2}")));
        }
        headers.extend(
            folder_headers(
                s,
                raw,
                from.as_ref(),
                rcpts,
                client_ip,
                helo,
                mail_from,
                &report,
                ops::now(),
            )
            .await,
        );
    }
    Judgement {
        refusal: verdict_refusal(action, report.verdict),
        report,
        action,
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_store_only_a_wanted_stamp_keeps_the_inbox() {
        let (mut inbox_for, mut all_inbox) = (Vec::new(), true);
        let wanted = Report::bare(Verdict::Wanted, "all components match", None);
        store_trouble(&wanted, "Bob@B.example", &mut inbox_for, &mut all_inbox);
        assert_eq!(inbox_for, ["<bob@b.example>"]);
        assert!(all_inbox);
        for v in [Verdict::Unstamped, Verdict::Suspect, Verdict::Temperror] {
            let (mut inbox_for, mut all_inbox) = (Vec::new(), true);
            store_trouble(
                &Report::bare(v, "x", None),
                "bob@b.example",
                &mut inbox_for,
                &mut all_inbox,
            );
            assert!(inbox_for.is_empty() && !all_inbox, "{v:?}");
        }
    }

    #[test]
    fn every_x_mailstamp_field_and_our_results_are_ours() {
        for name in [
            "X-Mailstamp-Verdict",
            "x-mailstamp-score",
            "X-Mailstamp-Folder",
            "X-MAILSTAMP-Inbox-For",
            "X-Mailstamp-List",
        ] {
            assert!(is_ours(name, b" INBOX", "mx.b.example"), "{name}");
        }
        assert!(is_ours(
            "Authentication-Results",
            b" MX.b.example; mailstamp=pass",
            "mx.b.example"
        ));
        for (name, value) in [
            ("Authentication-Results", &b" other.example; dkim=pass"[..]),
            ("X-Mailstamp", b" short"),
            ("X-Mailstampede", b" no dash"),
            ("Subject", b" X-Mailstamp-Folder: INBOX"),
        ] {
            assert!(!is_ours(name, value, "mx.b.example"), "{name}");
        }
    }
}
