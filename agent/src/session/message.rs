// SPDX-License-Identifier: GPL-3.0-or-later
//! The work on one whole message, the same for both adapters: an outbound message is stamped
//! ([`stamp`]: recorded, or refused, or passed unstamped by policy), an inbound one is judged
//! ([`judge`]: verified once, parsed once, its action and the headers to add). Outbound mail
//! teaches the allowlist; authenticated inbound mail completes it; unstamped inbound mail gets
//! its folder from the people lists ([`folder_headers`]). Store work runs on the blocking pool
//! within [`STORE_WAIT`], never on a runtime worker.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::B256;
use mailstamp_core::{Envelope, Report, Verdict};
use tracing::{info, warn};

use crate::auth::AuthOutcome;
use crate::config::{Config, StampMode, TroublePolicy, VerdictAction};
use crate::error::Result;
use crate::inbound::{self, Decision, Folder};
use crate::maps::VerifyPolicy;
use crate::people::{FromIdentity, allowlist, user_of};
use crate::stamping::batcher;
use crate::stamping::{self, Stamped};
use crate::store::Store;
use crate::util::{clean, now};
use crate::verifying::{self, VerifyContext};

use super::results::{SCORE_HEADER, VERDICT_HEADER, ar_value};
use super::verdict::{action_for, adds_headers, verdict_refusal};
use super::{Daemon, Refusal, Settings};

/// One message from MAIL FROM to the end of its data, as both adapters keep it.
#[derive(Clone)]
pub struct Message {
    /// The settings in force when MAIL FROM came (a reload applies to the next message).
    pub settings: Arc<Settings>,
    /// Outbound (stamped) or inbound (verified).
    pub outbound: bool,
    /// The envelope sender (MAIL FROM), empty for the null sender.
    pub sender: String,
    /// The envelope recipients taken so far.
    pub rcpts: Vec<String>,
    /// The sender map's verify policy.
    pub sender_policy: Option<VerifyPolicy>,
    /// Each recipient's verify policy, in the order of `rcpts`.
    pub rcpt_policies: Vec<Option<VerifyPolicy>>,
}

impl Message {
    /// A message from `sender`, no recipients yet.
    pub fn new(
        settings: Arc<Settings>,
        outbound: bool,
        sender: String,
        sender_policy: Option<VerifyPolicy>,
    ) -> Self {
        Self {
            settings,
            outbound,
            sender,
            rcpts: Vec::new(),
            sender_policy,
            rcpt_policies: Vec::new(),
        }
    }
}

/// The SMTP client a message came from: its address and HELO name (SPF).
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The client's IP address, when known.
    pub ip: Option<IpAddr>,
    /// What it said in HELO/EHLO.
    pub helo: &'a str,
}

/// What became of an outbound message.
#[derive(Debug)]
pub enum Outbound {
    /// Recorded: the message with its `Mail-Stamp:` header, and where the record landed.
    Stamped(Stamped),
    /// Not stamped, passed on by `milter.on_stamp_error = "pass"` with this value (leading
    /// space) of [`super::UNSTAMPED_HEADER`].
    Unstamped(String),
    /// Refused: permanently (5xx, the From domain may not be stamped for, no writer key…) or
    /// for now (4xx, chain trouble).
    Refused(Refusal),
}

/// Stamps an outbound message for its recipients and says what the MTA is to answer: a
/// refusal that asking again cannot change is permanent (`550 5.7.1` naming the record to
/// publish, `550 5.3.5` without a writer key) and leaves the chain connection alone; chain or
/// RPC trouble is `451 4.7.1` and makes the next message reconnect. With `on_stamp_error =
/// "pass"` both pass unstamped, marked. A stamped message teaches the allowlist.
pub async fn stamp(d: &Daemon, m: &Message, raw: &[u8]) -> Outbound {
    let started = std::time::Instant::now();
    let out = stamp_inner(d, m, raw).await;
    let outcome = match &out {
        Outbound::Stamped(_) => "stamped",
        Outbound::Unstamped(_) => "unstamped",
        Outbound::Refused(r) if r.code >= 500 => "refused",
        Outbound::Refused(_) => "deferred",
    };
    crate::metrics::message("outbound", outcome, started.elapsed());
    out
}

async fn stamp_inner(d: &Daemon, m: &Message, raw: &[u8]) -> Outbound {
    let s = &m.settings;
    match record(d, s, raw, &m.rcpts).await {
        Ok(st) => {
            learn_outbound(s, raw, &m.sender, &m.rcpts, now()).await;
            Outbound::Stamped(st)
        }
        Err(e) => match (e.refusal(), s.cfg.milter.on_stamp_error) {
            (Some((xcode, reason)), TroublePolicy::Tempfail) => {
                warn!(sender = m.sender, "refusing to stamp: {reason}");
                Outbound::Refused(Refusal::new(true, xcode, &format!("mailstamp: {reason}")))
            }
            (Some((_, reason)), TroublePolicy::Pass) => {
                warn!(
                    sender = m.sender,
                    "not stamped (passed unstamped): {reason}"
                );
                Outbound::Unstamped(format!(" refused: {}", clean(reason, 200)))
            }
            (None, policy) => {
                warn!(sender = m.sender, "cannot stamp: {e:#}");
                d.drop_chain().await;
                match policy {
                    TroublePolicy::Tempfail => Outbound::Refused(Refusal::new(
                        false,
                        "4.7.1",
                        "mailstamp: cannot record the stamp now, try again later",
                    )),
                    TroublePolicy::Pass => Outbound::Unstamped(" temporary chain error".to_owned()),
                }
            }
        },
    }
}

/// Records the stamp of `raw` for `rcpts`: one transaction (`stamp.mode = "direct"`), or a
/// leaf in the shared batch, waiting at most `stamp.hold_timeout_ms` for its anchor.
async fn record(d: &Daemon, s: &Settings, raw: &[u8], rcpts: &[String]) -> Result<Stamped> {
    let env = Envelope {
        rcpts: rcpts.to_vec(),
        client_ip: None,
    };
    let chain = d
        .chain()
        .await
        .map_err(|e| e.context("chain unavailable"))?;
    match s.cfg.stamp.mode {
        StampMode::Direct => {
            let st = stamping::stamp(&chain, &s.stamp, raw, &env).await?;
            if let Some(r) = &st.recording {
                // The stamp is mined: a journal that fails costs only its watch (logged).
                let watched = async { d.watch().await?.add(&chain, r).await }.await;
                if let Err(e) = watched {
                    warn!(token = %st.token, "{e:#}: the stamp is mined, but a reorg would not be noticed");
                }
            }
            Ok(st)
        }
        StampMode::Batch => {
            let b = d.batcher().await?;
            let hold = batcher::Hold::of(&s.cfg.stamp);
            batcher::stamp_batched(&chain, &s.stamp, &b, hold, raw, &env).await
        }
    }
}

/// A message this host forwards under its hop (`[forward]`, docs/PROTOCOL.md §5c): the
/// stamped message with the hop on top, the alias it arrived for, and where it goes now.
pub struct Forward {
    /// The message with its hop field on top (the MTA gets only the field).
    pub stamped: Stamped,
    /// The alias it arrived for, as the client wrote it in RCPT TO (the recipient the MTA
    /// is told to remove).
    pub alias: String,
    /// The new envelope recipients (added).
    pub targets: Vec<String>,
}

/// The forward of an inbound message, when it is one: exactly one envelope recipient, an
/// alias of `[forward]`, and a `wanted` verdict (a hop vouches for what it checked: never
/// for a message that did not verify). `None`: deliver it as it came; `Some(Err)`: the hop
/// could not be recorded now (the MTA defers the message, nothing is lost).
pub async fn forward(
    d: &Daemon,
    m: &Message,
    raw: &[u8],
    report: &Report,
) -> Option<Result<Forward>> {
    let s = &m.settings;
    let [rcpt] = m.rcpts.as_slice() else {
        return None;
    };
    let (alias, targets) = s.cfg.forward.targets(rcpt)?;
    if report.verdict != Verdict::Wanted {
        info!(
            alias,
            verdict = report.verdict.as_str(),
            "not forwarded under a hop: the message is not wanted here"
        );
        return None;
    }
    let alias = alias.to_ascii_lowercase();
    let domain = alias.rsplit_once('@').map_or("", |(_, d)| d).to_owned();
    let env = Envelope {
        rcpts: targets.to_vec(),
        client_ip: None,
    };
    let changes = [mailstamp_core::hops::Change::Trace];
    let spec = mailstamp_core::hops::HopSpec {
        changes: &changes,
        domain: &domain,
        received_for: &alias,
    };
    let r = record_hop(d, s, raw, &env, &spec)
        .await
        .map(|stamped| Forward {
            stamped,
            alias: rcpt.clone(),
            targets: targets.to_vec(),
        });
    if let Err(e) = &r {
        warn!(alias, "cannot record the hop: {e:#}");
    }
    Some(r)
}

/// Records this host's hop for `raw` sent on to `env` (direct or batched as `stamp.mode`,
/// watched like a stamp); chain trouble makes the next message reconnect.
async fn record_hop(
    d: &Daemon,
    s: &Settings,
    raw: &[u8],
    env: &Envelope,
    spec: &mailstamp_core::hops::HopSpec<'_>,
) -> Result<Stamped> {
    let r: Result<Stamped> = async {
        let chain = d
            .chain()
            .await
            .map_err(|e| e.context("chain unavailable"))?;
        let batcher = match s.cfg.stamp.mode {
            StampMode::Direct => None,
            StampMode::Batch => Some(d.batcher().await?),
        };
        let how = match &batcher {
            None => stamping::HopRecording::Direct,
            Some(b) => stamping::HopRecording::Batched(b, batcher::Hold::of(&s.cfg.stamp)),
        };
        let stamped = stamping::stamp_hop(&chain, &s.stamp, how, raw, env, spec).await?;
        if let Some(r) = &stamped.recording {
            let watched = async { d.watch().await?.add(&chain, r).await }.await;
            if let Err(e) = watched {
                warn!(token = %stamped.token, "{e:#}: the hop is mined, but a reorg would not be noticed");
            }
        }
        Ok(stamped)
    }
    .await;
    if r.as_ref().is_err_and(|e| e.refusal().is_none()) {
        d.drop_chain().await;
    }
    r
}

/// How long a list remembers a stamp it received `wanted` (`[forward.lists]`): a copy sent
/// later (held for moderation longer) goes out without the list's hop.
pub const LIST_MEMORY_SECS: u64 = 30 * 86_400;

/// The token (hex) of the top `Mail-Stamp:` field of `raw`, when its fields form a chain.
fn top_stamp(msg: &mailstamp_core::mail_parser::Message<'_>) -> Option<String> {
    match mailstamp_core::inspect_chain(msg) {
        mailstamp_core::ChainInspection::Chain(c) => {
            c.stamp(c.len() - 1).map(|h| alloy::hex::encode(h.token()))
        }
        _ => None,
    }
}

/// At inbound: a `wanted` message for the posting address of a list of `[forward.lists]` is
/// remembered for that list (its top stamp, in the store), so that the list's copies of it
/// go out under the list's hop. `Err`: the store cannot be written now (the MTA defers the
/// message: else its copies would go out without the hop).
pub async fn remember_for_lists(
    d: &Daemon,
    m: &Message,
    raw: &[u8],
    report: &Report,
) -> Result<()> {
    let s = &m.settings;
    let lists: Vec<String> = m
        .rcpts
        .iter()
        .filter_map(|r| s.cfg.forward.list(r))
        .map(|l| l.address.to_ascii_lowercase())
        .collect();
    if lists.is_empty() || report.verdict != Verdict::Wanted {
        return Ok(());
    }
    let Some(stamp) = mailstamp_core::parse(raw).and_then(|msg| top_stamp(&msg)) else {
        return Ok(());
    };
    let store = d.store().await?;
    let now = now();
    let before = now.saturating_sub(LIST_MEMORY_SECS);
    store
        .call(move |st| {
            for list in &lists {
                st.remember_list_received(list, &stamp, now, before)?;
            }
            Ok(())
        })
        .await
}

/// What became of a list's outgoing copy.
pub enum ListCopy {
    /// Under the list's hop: the copy with the field on top.
    Hop(Stamped),
    /// As it came (no hop, no stamp of ours), and why.
    AsItCame(String),
}

/// At outbound: the hop of a copy a list of `[forward.lists]` sends (its envelope sender is
/// the list's), when the stamp it carries was received `wanted` here; the changes are found
/// by comparing the copy with that stamp ([`mailstamp_core::list_changes`]). `None`: not a
/// list's copy, or the list's own unstamped message From its domain (a digest, a notice):
/// stamped as any outbound mail. A copy the list cannot vouch for goes as it
/// came; `Err`: the hop cannot be recorded now (the MTA defers the copy, nothing is lost).
pub async fn list_copy(
    d: &Daemon,
    m: &Message,
    raw: &[u8],
    queue_id: &str,
) -> Option<Result<ListCopy>> {
    let started = std::time::Instant::now();
    let out = list_copy_inner(d, m, raw, queue_id).await;
    if let Some(r) = &out {
        let outcome = match r {
            Ok(ListCopy::Hop(_)) => "list-hop",
            Ok(ListCopy::AsItCame(_)) => "list-as-it-came",
            Err(_) => "deferred",
        };
        crate::metrics::message("outbound", outcome, started.elapsed());
    }
    out
}

async fn list_copy_inner(
    d: &Daemon,
    m: &Message,
    raw: &[u8],
    queue_id: &str,
) -> Option<Result<ListCopy>> {
    let s = &m.settings;
    let list = s.cfg.forward.list_of(&m.sender)?;
    let address = list.address.to_ascii_lowercase();
    let domain = address.rsplit_once('@').map_or("", |(_, d)| d).to_owned();
    let as_it_came = |why: String| {
        info!(
            queue_id,
            list = address,
            "list copy sent without a hop: {why}"
        );
        Some(Ok(ListCopy::AsItCame(why)))
    };
    // Too big to stamp is too big to compare: it could not get a hop anyway.
    if let Some(why) = mailstamp_core::oversized(raw) {
        return as_it_came(format!("no hop: {why}"));
    }
    let Some(msg) = mailstamp_core::parse(raw) else {
        return as_it_came("not an RFC 5322 message".into());
    };
    let Some(stamp) = top_stamp(&msg) else {
        // The list's own messages (a digest, a notice) From the list's domain are stamped as
        // any outbound mail; an unstamped post it sends on, it cannot stamp for its author.
        let from = mailstamp_core::component::from_address(&msg);
        if mailstamp_core::canon::split_address(&from).1 == domain {
            return None;
        }
        return as_it_came("it carries no stamp chain (an unstamped post)".into());
    };
    let store = match d.store().await {
        Ok(st) => st,
        Err(e) => return Some(Err(e)),
    };
    let (l, t) = (address.clone(), stamp.clone());
    match store.call(move |st| st.list_received(&l, &t)).await {
        Ok(true) => {}
        Ok(false) => {
            return as_it_came(format!(
                "its stamp {stamp} was not received wanted by the list here (or longer ago than {} days)",
                LIST_MEMORY_SECS / 86_400
            ));
        }
        Err(e) => return Some(Err(e)),
    }
    let settings = mailstamp_core::ListSettings {
        subject_tag: list.config.subject_tag.as_deref(),
        domain: &domain,
    };
    let changes = match mailstamp_core::list_changes(&msg, &settings) {
        Ok(c) => c,
        Err(e) => return as_it_came(e.to_string()),
    };
    let env = Envelope {
        rcpts: m.rcpts.clone(),
        client_ip: None,
    };
    let spec = mailstamp_core::hops::HopSpec {
        changes: &changes,
        domain: &domain,
        received_for: &address,
    };
    match record_hop(d, s, raw, &env, &spec).await {
        Ok(st) => {
            info!(queue_id, list = address, changes = mailstamp_core::hops::encode_changes(&changes), token = %st.token, "list copy sent under the list's hop");
            Some(Ok(ListCopy::Hop(st)))
        }
        // A refusal (the writer not listed for the list's domain, …) would refuse it
        // again: the copy goes as it came rather than bounce at the list server.
        Err(e) if e.refusal().is_some() => {
            warn!(queue_id, list = address, "no hop for the list copy: {e:#}");
            as_it_came(format!("{e:#}"))
        }
        Err(e) => {
            warn!(
                queue_id,
                list = address,
                "cannot record the list's hop: {e:#}"
            );
            Some(Err(e))
        }
    }
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
pub fn open_people_store(cfg: &crate::config::StoreConfig) -> Result<Arc<Store>> {
    Ok(Arc::new(Store::connect(cfg, Some(SESSION_BUSY_TIMEOUT))?))
}

/// Runs `f` (store work) on the blocking pool ([`Store::call`]); `None` (logged) when it does
/// not finish within [`STORE_WAIT`]. The work itself still finishes in the background (or
/// fails on SQLite's own busy timeout).
async fn store_work<T: Send + 'static>(
    what: &'static str,
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> T + Send + 'static,
) -> Option<T> {
    match tokio::time::timeout(STORE_WAIT, store.call(move |s| Ok(f(s)))).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            warn!("{what}: store task failed: {e:#}");
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
    let user = user_of(sender, s.maps.delimiter);
    let to = FromIdentity::of_recipients(raw, rcpts);
    let cfg = s.cfg.clone();
    store_work("allowlist learning", &store, move |st| {
        for to in to {
            if let Err(e) = allowlist::record_outbound(st, &cfg.allowlist, &user, &to, now) {
                warn!(user, to = to.address, "allowlist not updated: {e:#}");
            }
        }
    })
    .await;
}

/// Most recipients given a [`inbound::LIST_HEADER`] field (more are decided, not reported).
pub const MAX_LIST_HEADERS: usize = 50;

/// An inbound message as the folder decision reads it (its From taken from [`judge`]'s parse).
struct Inbound<'a> {
    raw: &'a [u8],
    from: Option<&'a FromIdentity>,
    rcpts: &'a [String],
    client: Client<'a>,
    mail_from: &'a str,
}

/// The inbound folder decision for every recipient (seeds 003, 004) and the headers that
/// carry it: [`inbound::FOLDER_HEADER`] (`INBOX` or the separate folder), when recipients
/// disagree [`inbound::INBOX_FOR_HEADER`] (the recipients for whom it is INBOX), and one
/// [`inbound::LIST_HEADER`] per recipient with a list hit. Authenticated messages complete
/// allowlist entries. Nothing for a `spam`/`invalid` stamp (the verdict header files it) or
/// when `[inbound] enabled` is off.
async fn folder_headers(
    s: &Settings,
    msg: &Inbound<'_>,
    report: &Report,
    now: u64,
) -> Vec<(&'static str, String)> {
    let (Some(store), Some(authn)) = (&s.people, &s.authenticator) else {
        return Vec::new();
    };
    if matches!(report.verdict, Verdict::Spam | Verdict::Invalid) {
        return Vec::new();
    }
    let auth = if inbound::stamp_authenticates(report) {
        AuthOutcome::none()
    } else {
        // mail-auth reads the header section with its own parser: its `from_parsed` over our
        // parse was tried and gave other DKIM results on corpus mail (neutral for pass).
        let Client { ip, helo } = msg.client;
        authn.authenticate(msg.raw, ip, helo, msg.mail_from).await
    };
    let users: Vec<String> = msg
        .rcpts
        .iter()
        .map(|r| user_of(r, s.maps.delimiter))
        .collect();
    let decided = decide_all(s, store, &users, msg.from, report, &auth, now).await;
    if let Some(ds) = &decided {
        learn_inbound(s, store, &users, ds, msg.from, now).await;
    }
    folder_fields(s, msg.rcpts, decided, report, &auth)
}

/// Every recipient's decision in one go on the blocking pool (reads only: WAL readers are not
/// blocked by a writer); `None` when the store is busy ([`STORE_WAIT`]).
async fn decide_all(
    s: &Settings,
    store: &Arc<Store>,
    users: &[String],
    from: Option<&FromIdentity>,
    report: &Report,
    auth: &AuthOutcome,
    now: u64,
) -> Option<Vec<Result<Decision>>> {
    let (cfg, users, from, report, auth) = (
        s.cfg.clone(),
        users.to_vec(),
        from.cloned(),
        report.clone(),
        auth.clone(),
    );
    store_work("inbound decision", store, move |st| {
        users
            .iter()
            .map(|user| inbound::decide(st, &cfg, user, from.as_ref(), Some(&report), &auth, now))
            .collect()
    })
    .await
}

/// Completes the allowlist entries of the users for whom the message is authenticated (the
/// writes after the reads; a busy store costs the learning, not the decision).
async fn learn_inbound(
    s: &Settings,
    store: &Arc<Store>,
    users: &[String],
    decided: &[Result<Decision>],
    from: Option<&FromIdentity>,
    now: u64,
) {
    let learnable: Vec<(String, Decision)> = users
        .iter()
        .zip(decided)
        .filter_map(|(u, d)| Some((u.clone(), d.as_ref().ok()?.clone())))
        .filter(|(_, d)| d.authenticated)
        .collect();
    if learnable.is_empty() {
        return;
    }
    let (cfg, from): (Arc<Config>, _) = (s.cfg.clone(), from.cloned());
    store_work("allowlist completion", store, move |st| {
        for (user, d) in learnable {
            if let Err(e) = inbound::learn(st, &cfg, &user, from.as_ref(), &d, now) {
                warn!(user, "allowlist not completed: {e:#}");
            }
        }
    })
    .await;
}

/// The folder fields from each recipient's decision (or the store's trouble).
fn folder_fields(
    s: &Settings,
    rcpts: &[String],
    decided: Option<Vec<Result<Decision>>>,
    report: &Report,
    auth: &AuthOutcome,
) -> Vec<(&'static str, String)> {
    let mut inbox_for = Vec::new();
    let mut lists = Vec::new();
    let mut all_inbox = true;
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
    let separate = Folder::Separate(s.cfg.inbound.folder.clone());
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

/// The other addresses (`mailstamp forwards`) of every recipient, from the people store when
/// there is one; none when the store is busy or unreadable (logged by [`store_work`]): the
/// stamp is then judged for the envelope alone.
async fn other_addresses(s: &Settings, rcpts: &[String]) -> Vec<String> {
    let Some(store) = s.people.clone() else {
        return Vec::new();
    };
    let users: Vec<String> = rcpts.iter().map(|r| user_of(r, s.maps.delimiter)).collect();
    store_work("other addresses", &store, move |st| {
        let mut all = Vec::new();
        for u in &users {
            match crate::people::forwards::of(st, u) {
                Ok(v) => all.extend(v),
                Err(e) => warn!(user = %u, "other addresses: {e:#}"),
            }
        }
        all
    })
    .await
    .unwrap_or_default()
}

/// What verification decided for an inbound message.
#[derive(Debug, Clone)]
pub struct Judgement {
    /// The verifier's report.
    pub report: Report,
    /// The action ([`action_for`]).
    pub action: VerdictAction,
    /// The SMTP refusal for `tempfail` / `reject`.
    pub refusal: Option<Refusal>,
    /// Headers to add (name, value with leading space, folds joined by LF), in order;
    /// `Authentication-Results` first, to go on top. Empty unless the action adds headers.
    pub headers: Vec<(&'static str, String)>,
    /// The transaction that recorded the stamp, when it was looked up (`milter.lookup_tx`).
    pub tx: Option<B256>,
}

/// The verification context of `m`: the configured policy, with the highest threshold any
/// sender or recipient policy sets.
fn verify_context(d: &Daemon, m: &Message) -> VerifyContext {
    let s = &m.settings;
    let mut policy = s.cfg.verify.policy();
    let thresholds = m
        .rcpt_policies
        .iter()
        .map(Option::as_ref)
        .chain(std::iter::once(m.sender_policy.as_ref()))
        .filter_map(|p| p.and_then(|p| p.threshold));
    if let Some(t) = thresholds.reduce(f64::max) {
        policy.threshold = t;
    }
    VerifyContext {
        authority: s.authority.clone(),
        trusted: s.cfg.trusted_registries(),
        policy,
        now: Some(now()),
        patience: verifying::Patience::from_config(&s.cfg.verify, d.sightings()),
    }
}

/// Verifies an inbound message and decides its action. The message is parsed once and that
/// parse serves the verifier and the From identity (DMARC's mail-auth reads the header section
/// itself). A `temperror` drops the chain
/// connection. With `[inbound] enabled`, the folder headers ([`folder_headers`]) follow the
/// result headers.
pub async fn judge(d: &Daemon, m: &Message, raw: &[u8], client: Client<'_>) -> Judgement {
    let started = std::time::Instant::now();
    let j = judge_inner(d, m, raw, client).await;
    crate::metrics::message("inbound", j.report.verdict.as_str(), started.elapsed());
    j
}

async fn judge_inner(d: &Daemon, m: &Message, raw: &[u8], client: Client<'_>) -> Judgement {
    let s = &m.settings;
    let env = Envelope {
        rcpts: m.rcpts.clone(),
        client_ip: client.ip,
    };
    let ctx = verify_context(d, m);
    let parsed = verifying::parse(raw);
    let chain = d.chain().await;
    let report = verifying::verify_parsed(chain.as_ref(), &ctx, raw, parsed.as_ref(), &env).await;
    let report = if report.verdict == Verdict::Spam {
        let others = other_addresses(s, &m.rcpts).await;
        verifying::second_look(
            chain.as_ref(),
            &ctx,
            raw,
            parsed.as_ref(),
            &env,
            report,
            &others,
        )
        .await
    } else {
        report
    };
    if verifying::chain_trouble(&report) {
        d.drop_chain().await;
    }
    let action = action_for(
        report.verdict,
        &s.cfg.milter,
        m.sender_policy.as_ref(),
        &m.rcpt_policies,
    );
    let mut headers = Vec::new();
    let mut found_tx = None;
    if adds_headers(action) {
        let tx = match &chain {
            Ok(c) if s.cfg.milter.lookup_tx => {
                verifying::recording_tx(c, &report, s.cfg.chain.from_block)
                    .await
                    .map(|r| r.tx)
            }
            _ => None,
        };
        found_tx = tx;
        let from = parsed.as_ref().and_then(FromIdentity::of_parsed);
        headers = result_headers(s, &report, from.as_ref(), tx);
        let msg = Inbound {
            raw,
            from: from.as_ref(),
            rcpts: &m.rcpts,
            client,
            mail_from: &m.sender,
        };
        headers.extend(folder_headers(s, &msg, &report, now()).await);
    }
    Judgement {
        refusal: verdict_refusal(action, report.verdict),
        report,
        action,
        headers,
        tx: found_tx,
    }
}

/// The names of the components that differ (mismatch, missing, added), comma-separated:
/// names only (`subject`, `text.0`), never what they hold.
pub fn differed(report: &Report) -> String {
    use mailstamp_core::Status;
    let d: Vec<&str> = report
        .components
        .iter()
        .filter(|c| {
            !matches!(
                c.status,
                Status::Match | Status::Explained | Status::Unavailable
            )
        })
        .map(|c| c.name.as_str())
        .collect();
    d.join(",")
}

/// The one `info` line of an outbound message, the same from both adapters: the MTA's queue
/// id, `direction = "outbound"`, `verdict` (`stamped`, `unstamped` or `refused`), the token,
/// writer and transaction of a stamp. No secret and no message content: addresses are the
/// envelope's count, reasons are the agent's own words.
pub fn log_outbound(
    queue_id: &str,
    m: &Message,
    writer: Option<alloy::primitives::Address>,
    out: &Outbound,
) {
    let writer = writer.map(|w| format!("{w:#x}"));
    let (verdict, token, tx, block, batch, reason) = match out {
        Outbound::Stamped(st) => (
            "stamped",
            Some(format!("{:#x}", st.token)),
            st.recorded.as_ref().map(|r| format!("{:#x}", r.tx)),
            st.recorded.as_ref().map(|r| r.block),
            st.batch.map(|(b, _)| format!("{b:#x}")),
            None,
        ),
        Outbound::Unstamped(v) => (
            "unstamped",
            None,
            None,
            None,
            None,
            Some(v.trim().to_owned()),
        ),
        Outbound::Refused(r) => (
            "refused",
            None,
            None,
            None,
            None,
            Some(format!("{} {}", r.xcode, r.text)),
        ),
    };
    info!(
        queue_id,
        direction = "outbound",
        verdict,
        token = token.as_deref(),
        writer = writer.as_deref(),
        tx = tx.as_deref(),
        block,
        batch = batch.as_deref(),
        rcpts = m.rcpts.len(),
        reason = reason.as_deref(),
        "mail"
    );
}

/// The one `info` line of an inbound message, with the same fields as [`log_outbound`]'s
/// where they apply, plus the score, the action and the components that differed.
pub fn log_inbound(queue_id: &str, m: &Message, j: &Judgement) {
    let r = &j.report;
    let stamp = r.stamp.as_ref();
    let tx = j.tx.map(|t| format!("{t:#x}"));
    let differed = differed(r);
    info!(
        queue_id,
        direction = "inbound",
        verdict = r.verdict.as_str(),
        score = r.score,
        action = j.action.as_str(),
        token = stamp.map(|s| s.token.as_str()),
        writer = stamp.map(|s| s.writer.as_str()),
        tx = tx.as_deref(),
        batch = stamp.and_then(|s| s.batch.as_deref()),
        differed = differed.as_str(),
        rcpts = m.rcpts.len(),
        reason = r.reason.as_deref(),
        "mail"
    );
}

/// `Authentication-Results` (first, to go on top), the verdict and the score.
fn result_headers(
    s: &Settings,
    report: &Report,
    from: Option<&FromIdentity>,
    tx: Option<B256>,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        (
            "Authentication-Results",
            ar_value(&s.authserv_id, report, from.map(|f| f.domain.as_str()), tx),
        ),
        (VERDICT_HEADER, format!(" {}", report.verdict.as_str())),
    ];
    if let Some(sc) = report.score {
        headers.push((SCORE_HEADER, format!(" {sc:.2}")));
    }
    headers
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
}
