// SPDX-License-Identifier: GPL-3.0-or-later
//! The recovery engine (seed 004, issue 5): re-examines mail another filter (rspamd,
//! SpamAssassin, anything) already filed in a Maildir folder such as Junk, against stamps,
//! the user's authorised senders and the self-training allowlist, and decides for each
//! message `release` (back to the inbox) or `keep`, with a reason.
//!
//! The decision is the inbound one ([`crate::inbound::decide`]), so a message is released
//! exactly when the milter would have put it in the INBOX: a stamp `wanted`, or an
//! authenticated hit in one of the lists. Authentication after delivery: DKIM is re-verified
//! on the stored bytes; SPF needs the SMTP client, which is taken only from `Received:`
//! headers written by our own MTA (`[recover] mta_hosts`, default the milter's authserv-id) —
//! anything below the first foreign `Received:` could be forged by the sender.
//!
//! Decisions are recorded in the store (migration 4) keyed by the keccak-256 of the raw
//! message, not by its file name (which changes with flags), so re-runs are idempotent: a
//! decided message is not decided again (unless asked), and a release recorded before a crash
//! is carried out by the next run. A `temperror` (chain or DNS trouble) is never recorded: the
//! message is kept and examined again next run. Nothing is ever deleted: `keep` leaves the file
//! where it is, `release` is one `rename(2)` ([`crate::maildir::move_to`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::error::{Context, Result, err};
use alloy::primitives::keccak256;
use mailstamp_core::mail_parser::{HeaderName, HeaderValue, Host, Message, MessageParser};
use mailstamp_core::{Envelope, Verdict};
use serde::Serialize;

use crate::auth::{AuthOutcome, AuthResult, Authenticator};
use crate::chain::Chain;
use crate::config::Config;
use crate::inbound::{self, Folder, Reason};
use crate::maildir::{self, Entry};
use crate::people::FromIdentity;
use crate::store::Store;
use crate::verifying::{self, VerifyContext};

/// What a spam filter wrote on a message, for the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FilterMark {
    /// `spamassassin`, `rspamd` or `generic`.
    pub filter: &'static str,
    /// Whether it called the message spam, when it says.
    pub spam: Option<bool>,
    /// Its score, when it gives one.
    pub score: Option<f64>,
    /// The header it came from.
    pub header: String,
}

fn yes(v: &str) -> Option<bool> {
    let w = v.trim().split([',', ' ', ';', '(']).next().unwrap_or("");
    if w.eq_ignore_ascii_case("yes") || w.eq_ignore_ascii_case("true") {
        Some(true)
    } else if w.eq_ignore_ascii_case("no") || w.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// The number after `key` (`score=5.2`, `hits=3`).
fn number_after(v: &str, key: &str) -> Option<f64> {
    let lower = v.to_ascii_lowercase();
    let i = lower.find(key)? + key.len();
    let rest = &v[i..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Reads the headers spam filters write: SpamAssassin (`X-Spam-Flag`, `X-Spam-Status`),
/// rspamd (`X-Spamd-Result`, `X-Spam`, `X-Rspamd-Action`, `X-Rspamd-Score`) and generic ones
/// (`X-Spam-Score`, `X-Spam-Level`, `X-Spam-Verdict`). Only reported: whatever they say, the
/// decision is ours.
pub fn filter_marks(msg: &Message<'_>) -> Vec<FilterMark> {
    let mut out = Vec::new();
    for h in msg.headers() {
        let name = h.name.as_str();
        let Some(v) = h.value.as_text() else { continue };
        let v = v.trim();
        let lname = name.to_ascii_lowercase();
        let mark = match lname.as_str() {
            "x-spam-flag" => Some(("spamassassin", yes(v), None)),
            "x-spam-status" => Some((
                "spamassassin",
                yes(v),
                number_after(v, "score=").or_else(|| number_after(v, "hits=")),
            )),
            "x-spamd-result" => {
                // `default: True [12.30 / 15.00]; SYMBOL(1.0)…`
                let spam = v
                    .split_once(':')
                    .and_then(|(_, r)| yes(r.trim_start().trim_start_matches('[')));
                let score = v
                    .split_once('[')
                    .and_then(|(_, r)| r.split('/').next())
                    .and_then(|s| s.trim().parse().ok());
                Some(("rspamd", spam, score))
            }
            "x-spam" => Some(("rspamd", yes(v), None)),
            "x-rspamd-action" => Some(("rspamd", Some(!v.eq_ignore_ascii_case("no action")), None)),
            "x-rspamd-score" => Some(("rspamd", None, v.parse().ok())),
            "x-spam-score" => Some(("generic", None, v.parse().ok())),
            "x-spam-level" => Some((
                "generic",
                None,
                Some(v.chars().filter(|c| *c == '*').count() as f64),
            )),
            "x-spam-verdict" => Some((
                "generic",
                Some(v.to_ascii_lowercase().contains("spam")),
                None,
            )),
            _ => None,
        };
        if let Some((filter, spam, score)) = mark {
            out.push(FilterMark {
                filter,
                spam,
                score,
                header: format!("{name}: {}", crate::util::clean(v, 120)),
            });
        }
    }
    out
}

/// The stable identity of a message: keccak-256 of its bytes, 0x-hex. The file name is no
/// identity (a client changes it with every flag).
pub fn identity(raw: &[u8]) -> String {
    format!("{}", keccak256(raw))
}

/// What our own MTA recorded about the SMTP session that brought a message in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Trace {
    /// The client that connected to our MTA.
    pub client_ip: Option<IpAddr>,
    /// Its HELO name.
    pub helo: String,
    /// The envelope sender (`Return-Path:`, written by the delivering agent).
    pub mail_from: String,
    /// The date (unix seconds) of the top-most `Received:` written by our own MTA: when the
    /// message was delivered here.
    pub delivered: Option<u64>,
}

fn host_name(h: &Host<'_>) -> String {
    match h {
        Host::Name(n) => n.trim_end_matches('.').to_ascii_lowercase(),
        Host::IpAddr(ip) => ip.to_string(),
    }
}

/// The SMTP session as our MTA wrote it in trace headers. Walks `Received:` from the top
/// (the newest) while they are written `by` one of `our_hosts`; hops between our own
/// programs (a loopback client, e.g. LMTP or a content filter) are passed over; the first
/// non-loopback client of our hops is the one SPF is about. One of ours with no client IP
/// (a local submission, or a line our parser cannot read) ends the walk without a client. The walk stops at the first
/// `Received:` not by one of our hosts: those below came with the message and prove nothing.
pub fn trace(msg: &Message<'_>, our_hosts: &[String]) -> Trace {
    let mut t = Trace::default();
    for h in msg.headers() {
        match &h.name {
            HeaderName::ReturnPath if t.mail_from.is_empty() => {
                if let Some(v) = h.value.as_text() {
                    t.mail_from = v.trim().trim_matches(['<', '>']).to_owned();
                }
            }
            HeaderName::Received if t.client_ip.is_none() => {
                let HeaderValue::Received(r) = &h.value else {
                    break;
                };
                let by = r.by().map(host_name).unwrap_or_default();
                if !our_hosts.iter().any(|o| o.eq_ignore_ascii_case(&by)) {
                    break;
                }
                if t.delivered.is_none() {
                    t.delivered = r
                        .date()
                        .map(|d| d.to_timestamp())
                        .and_then(|s| u64::try_from(s).ok());
                }
                match r.from_ip() {
                    // A hop between our own programs (LMTP, a content filter): look further.
                    Some(ip) if ip.is_loopback() => continue,
                    Some(ip) => {
                        t.client_ip = Some(ip);
                        t.helo = r.helo().or(r.from()).map(host_name).unwrap_or_default();
                    }
                    // Ours, but no client address (a local submission, a garbled line): the
                    // walk stops here — going on would read headers the sender wrote.
                    None => break,
                }
            }
            _ => {}
        }
    }
    t
}

/// When the message was delivered here (unix seconds), the time its stamp is verified as at —
/// as the milter would have at SMTP time, so that mail that sat in Junk for longer than
/// `[verify] max_age_secs` is not called a replay. The date of the top-most `Received:` our
/// MTA wrote ([`Trace::delivered`]), else the file's mtime (Dovecot keeps the IMAP
/// INTERNALDATE there, also across moves), else the delivery time at the start of its Maildir
/// base name; never later than `now`.
pub fn delivered_at(t: &Trace, file: &Path, now: u64) -> u64 {
    let mtime = || {
        std::fs::metadata(file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    };
    let by_name = || {
        file.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('.').next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    t.delivered
        .or_else(mtime)
        .or_else(by_name)
        .unwrap_or(now)
        .min(now)
}

/// Parses a message with every header value parsed: the trace walk needs `Received:`, which
/// [`mailstamp_core::parse`] (tuned for verification) leaves unparsed. `None` when it has no
/// header section.
pub fn parse_full(raw: &[u8]) -> Option<Message<'_>> {
    MessageParser::default().parse(raw)
}

/// Reads one message file, refusing one larger than the verifier takes
/// ([`mailstamp_core::MAX_MESSAGE_BYTES`]) before reading it: such a file is left in place
/// and counted as an error, never loaded whole.
fn read_message(path: &Path) -> std::io::Result<Vec<u8>> {
    let len = std::fs::metadata(path)?.len();
    if len > mailstamp_core::MAX_MESSAGE_BYTES as u64 {
        return Err(std::io::Error::other(format!(
            "{len} bytes, more than the {} a message may have; left in place",
            mailstamp_core::MAX_MESSAGE_BYTES
        )));
    }
    std::fs::read(path)
}

/// `release` or `keep`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecoveryAction {
    /// Back to the inbox.
    Release,
    /// Stays where it is.
    Keep,
}

crate::store::stored_enum!(RecoveryAction, "recovery action", {
    Release => "release",
    Keep => "keep",
});

/// Why a message is released or kept: the inbound decision's reason, or why there was none.
/// Stored and printed as one word: the decision's ([`Reason`]) or one of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryReason {
    /// The inbound folder decision, and its reason.
    Decided(Reason),
    /// Not a message (no header section).
    Unparsable,
    /// Whose lists apply is unknown (no `--user`, no Delivered-To / X-Original-To).
    NoUser,
    /// Chain, DNS or store trouble: not a decision, examined again next run.
    Temperror,
}

/// The words of the reasons that are not a decision's.
const UNDECIDED: [(RecoveryReason, &str); 3] = [
    (RecoveryReason::Unparsable, "unparsable"),
    (RecoveryReason::NoUser, "no-user"),
    (RecoveryReason::Temperror, "temperror"),
];

impl RecoveryReason {
    /// The stored (and printed) word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decided(r) => r.as_str(),
            other => UNDECIDED
                .iter()
                .find(|(r, _)| *r == other)
                .map_or("", |(_, w)| w),
        }
    }
}

impl From<Reason> for RecoveryReason {
    fn from(r: Reason) -> Self {
        Self::Decided(r)
    }
}

impl std::fmt::Display for RecoveryReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RecoveryReason {
    type Err = crate::store::UnknownValue;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match UNDECIDED.iter().find(|(_, w)| *w == s) {
            Some((r, _)) => Ok(*r),
            None => {
                s.parse::<Reason>()
                    .map(Self::Decided)
                    .map_err(|e| crate::store::UnknownValue {
                        what: "recovery reason",
                        ..e
                    })
            }
        }
    }
}

impl Serialize for RecoveryReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The decision on one message.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The file as found.
    pub file: PathBuf,
    /// [`identity`] of its bytes.
    pub id: String,
    /// Its Message-ID, for reports.
    pub message_id: Option<String>,
    /// The mailbox owner it was judged for.
    pub user: Option<String>,
    /// The From address.
    pub from: Option<String>,
    /// Release or keep.
    pub action: RecoveryAction,
    /// Why ([`RecoveryReason`]).
    pub reason: RecoveryReason,
    /// The longer explanation.
    pub detail: String,
    /// The From address, when the message is authenticated for its domain (what `--watch`
    /// may learn).
    pub authenticated_sender: Option<String>,
    /// The stamp verdict.
    pub verdict: Verdict,
    /// The time (unix seconds) the stamp was verified as at: the delivery ([`delivered_at`]).
    pub verified_at: Option<u64>,
    /// SPF/DKIM/DMARC.
    pub auth: AuthOutcome,
    /// What the spam filters said.
    pub filters: Vec<FilterMark>,
    /// Decided in an earlier run (not examined again).
    pub earlier: bool,
    /// Where the message went (with `--apply`, released).
    pub moved_to: Option<PathBuf>,
}

impl Outcome {
    /// Nothing known yet of the message at `file`: kept, unstamped.
    fn blank(file: &Path, raw: &[u8]) -> Self {
        Self {
            file: file.to_path_buf(),
            id: identity(raw),
            message_id: None,
            user: None,
            from: None,
            action: RecoveryAction::Keep,
            reason: RecoveryReason::Decided(Reason::Stranger),
            detail: String::new(),
            authenticated_sender: None,
            verdict: Verdict::Unstamped,
            verified_at: None,
            auth: AuthOutcome::none(),
            filters: Vec::new(),
            earlier: false,
            moved_to: None,
        }
    }

    /// The inbound decision as this outcome: release to the inbox or keep, with why.
    fn decided(
        &mut self,
        d: &inbound::Decision,
        from: Option<FromIdentity>,
        report: &mailstamp_core::Report,
    ) {
        self.action = if d.folder == Folder::Inbox {
            RecoveryAction::Release
        } else {
            RecoveryAction::Keep
        };
        self.reason = d.reason.into();
        self.detail = match &d.list_hit {
            Some(h) => format!(
                "{} hit ({}, weight {:.2}, entry {}){}; {}",
                h.list.as_str(),
                h.kind.as_str(),
                h.weight,
                h.entry,
                if h.trusted { "" } else { ", not trusted" },
                self.auth.summary()
            ),
            None => format!("stamp {}; {}", report.verdict.as_str(), self.auth.summary()),
        };
        self.authenticated_sender = from.filter(|_| d.authenticated).map(|f| f.address);
    }

    /// Trouble that a retry may clear (chain, DNS) is not a decision: examined next run.
    fn defer_trouble(&mut self, report: &mailstamp_core::Report) {
        let dns_trouble = self.auth.dmarc == AuthResult::TempError
            && self.reason == RecoveryReason::Decided(Reason::UnauthenticatedHit);
        if self.action == RecoveryAction::Keep
            && (report.verdict == Verdict::Temperror || dns_trouble)
        {
            let why = if report.verdict == Verdict::Temperror {
                report.reason.clone().unwrap_or_default()
            } else {
                format!("DNS trouble ({})", self.auth.summary())
            };
            self.detail = format!("{}: {why}; examined again next run", self.reason);
            self.reason = RecoveryReason::Temperror;
        }
    }
}

/// A recorded decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoveryRow {
    /// Release or keep.
    pub action: RecoveryAction,
    /// Why.
    pub reason: RecoveryReason,
    /// The authenticated sender, if any.
    pub sender: Option<String>,
    /// Whether a release was carried out.
    pub applied: bool,
    /// When `--watch` learned the sender (the user moved the message by hand).
    pub learned: Option<u64>,
}

impl Store {
    /// The recorded decision on message `id` for `user`.
    pub fn recovery(&self, user: &str, id: &str) -> Result<Option<RecoveryRow>> {
        self.recovery_record(user, id)?
            .map(|r| {
                Ok(RecoveryRow {
                    action: r.action.parse().map_err(|e| err!("{e}"))?,
                    reason: r.reason.parse().map_err(|e| err!("{e}"))?,
                    sender: r.sender,
                    applied: r.applied,
                    learned: r.learned,
                })
            })
            .transpose()
    }

    /// Records (or replaces) a decision.
    pub fn record_recovery(
        &self,
        user: &str,
        id: &str,
        action: RecoveryAction,
        reason: RecoveryReason,
        sender: Option<&str>,
        now: u64,
    ) -> Result<()> {
        self.put_recovery(user, id, action.as_str(), reason.as_str(), sender, now)
    }

    /// Kept messages of `user` whose sender was not learned yet: id → authenticated sender.
    pub fn kept_unlearned(&self, user: &str) -> Result<BTreeMap<String, Option<String>>> {
        Ok(self.kept_unlearned_rows(user)?.into_iter().collect())
    }
}

/// Options of one pass.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The mailbox owner; `None`: each message's `Delivered-To:` / `X-Original-To:`.
    pub user: Option<String>,
    /// Move released messages and record decisions.
    pub apply: bool,
    /// Decide again messages decided in an earlier run.
    pub redecide: bool,
}

/// Counts of one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Messages looked at.
    pub scanned: usize,
    /// Released (moved with `--apply`; would be, in a dry run).
    pub released: usize,
    /// Kept.
    pub kept: usize,
    /// Of those, decided in an earlier run.
    pub earlier: usize,
    /// Files that could not be read or moved (left where they were).
    pub errors: usize,
    /// Decisions by reason.
    pub by_reason: BTreeMap<String, usize>,
    /// Senders learned by `--watch` from messages moved out by hand.
    pub learned: usize,
}

impl Summary {
    /// Counts one outcome.
    pub fn count(&mut self, o: &Outcome) {
        self.scanned += 1;
        match o.action {
            RecoveryAction::Release => self.released += 1,
            RecoveryAction::Keep => self.kept += 1,
        }
        if o.earlier {
            self.earlier += 1;
        }
        *self
            .by_reason
            .entry(format!("{}:{}", o.action.as_str(), o.reason))
            .or_default() += 1;
    }

    /// Adds another pass's counts.
    pub fn add(&mut self, o: &Summary) {
        self.scanned += o.scanned;
        self.released += o.released;
        self.kept += o.kept;
        self.earlier += o.earlier;
        self.errors += o.errors;
        self.learned += o.learned;
        for (k, v) in &o.by_reason {
            *self.by_reason.entry(k.clone()).or_default() += v;
        }
    }
}

/// The user a message was delivered to, from the delivering agent's headers: the TOP-MOST
/// `Delivered-To:` (else `X-Original-To:`), the one our delivery agent prepended. Never the
/// last one (`Message::header_raw` gives the bottom-most occurrence): a sender can write
/// `Delivered-To: mallory@ours` at the bottom of its own header to be judged against
/// Mallory's lists.
fn delivered_to(msg: &Message<'_>) -> Option<String> {
    ["Delivered-To", "X-Original-To"].iter().find_map(|n| {
        let h = msg
            .headers()
            .iter()
            .find(|h| h.name.as_str().eq_ignore_ascii_case(n))?;
        let v = msg
            .raw_message
            .get(h.offset_start as usize..h.offset_end as usize)?;
        let v = std::str::from_utf8(v).ok()?;
        crate::people::normalise_address(v.trim().trim_matches(['<', '>'])).ok()
    })
}

/// The engine: chain, DNS checks, authenticator and store, built once per run.
pub struct Recoverer {
    cfg: Config,
    chain: Result<Chain>,
    verify: VerifyContext,
    auth: Authenticator,
    store: Store,
    our_hosts: Vec<String>,
}

impl std::fmt::Debug for Recoverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recoverer")
            .field("our_hosts", &self.our_hosts)
            .finish_non_exhaustive()
    }
}

impl Recoverer {
    /// Connects to the chain (trouble is not an error: stamped messages are then kept as
    /// `temperror`), builds the DNS checks and opens nothing else: `store` is the agent's.
    pub async fn new(cfg: &Config, store: Store) -> Result<Self> {
        let chain = match cfg.registry() {
            Ok(reg) => Chain::connect(&cfg.chain, reg, None).await,
            Err(e) => Err(e),
        };
        let host = cfg
            .milter
            .authserv_id
            .clone()
            .unwrap_or_else(crate::util::hostname)
            .to_ascii_lowercase();
        let our_hosts = if cfg.recover.mta_hosts.is_empty() {
            vec![host.clone()]
        } else {
            cfg.recover
                .mta_hosts
                .iter()
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                .collect()
        };
        Ok(Self {
            // `now` is set per message: the delivery time (see `examine`). No wait and no grace:
            // these messages were delivered already (the grace was the delivering daemon's).
            verify: VerifyContext {
                patience: Default::default(),
                ..VerifyContext::from_config(cfg, None)?
            },
            auth: Authenticator::new(&cfg.dns, &host)?,
            cfg: cfg.clone(),
            chain,
            store,
            our_hosts,
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Examines one message for `user` (or its delivered-to address) and decides.
    pub async fn examine(&self, file: &Path, raw: &[u8], user: Option<&str>) -> Outcome {
        let mut out = Outcome::blank(file, raw);
        // One parse (the full one: trace and filter headers are read) serves the stamp and the
        // From identity; DMARC's mail-auth reads the header section itself.
        let Some(msg) = parse_full(raw) else {
            out.reason = RecoveryReason::Unparsable;
            out.detail = "not an RFC 5322 message (no header section); left in place".into();
            return out;
        };
        out.message_id = msg.message_id().map(str::to_owned);
        out.filters = filter_marks(&msg);
        out.user = user.map(str::to_owned).or_else(|| delivered_to(&msg));
        let from = mailstamp_core::component::from_address(&msg).to_ascii_lowercase();
        out.from = Some(from.clone()).filter(|f| f.contains('@'));
        let report = self.check(&mut out, file, raw, &msg).await;
        let Some(user) = out.user.clone() else {
            out.reason = RecoveryReason::NoUser;
            out.detail =
                "no --user and no Delivered-To / X-Original-To header: whose lists apply is unknown"
                    .into();
            return out;
        };
        let from_id = FromIdentity::of_parsed(&msg);
        let d = inbound::decide(
            &self.store,
            &self.cfg,
            &user,
            from_id.as_ref(),
            Some(&report),
            &out.auth,
            crate::util::now(),
        );
        match d {
            Ok(d) => out.decided(&d, from_id, &report),
            Err(e) => {
                out.reason = RecoveryReason::Temperror;
                out.detail = format!("store: {e:#}");
            }
        }
        out.defer_trouble(&report);
        out
    }

    /// The stamp (verified as at delivery) and DMARC of a parsed message, at once; the verdict
    /// and the authentication go into `out`.
    async fn check(
        &self,
        out: &mut Outcome,
        file: &Path,
        raw: &[u8],
        msg: &Message<'_>,
    ) -> mailstamp_core::Report {
        let t = trace(msg, &self.our_hosts);
        let env = Envelope {
            rcpts: out.user.iter().cloned().collect(),
            client_ip: t.client_ip,
        };
        // Verified as at delivery, not now: a stamped message that sat in Junk for longer than
        // max_age is no replay.
        let at = delivered_at(&t, file, crate::util::now());
        out.verified_at = Some(at);
        let verify = VerifyContext {
            now: Some(at),
            ..self.verify.clone()
        };
        let (report, auth) = tokio::join!(
            verifying::verify_parsed(
                self.chain.as_ref(),
                &verify,
                raw,
                // Past the core's bounds: `invalid`, as at delivery.
                mailstamp_core::oversized(raw).is_none().then_some(msg),
                &env
            ),
            self.auth
                .authenticate(raw, t.client_ip, &t.helo, &t.mail_from)
        );
        // A stamp made for the user's other address, or one a forward or list without an
        // agent made inapplicable (docs/PROTOCOL.md §5c): as at delivery.
        let report = if report.verdict == mailstamp_core::Verdict::Spam {
            let users: Vec<String> = out.user.iter().cloned().collect();
            // The same store reads as the lists' below (a one-shot command, not a session).
            let others: Vec<String> = users
                .iter()
                .filter_map(|u| crate::people::forwards::of(&self.store, u).ok())
                .flatten()
                .collect();
            let msg = mailstamp_core::oversized(raw).is_none().then_some(msg);
            verifying::second_look(
                self.chain.as_ref(),
                &verify,
                raw,
                msg,
                &env,
                report,
                &others,
            )
            .await
        } else {
            report
        };
        out.verdict = report.verdict;
        out.auth = auth;
        report
    }

    /// One pass over `folder`: examines every message not decided before (all with
    /// `redecide`), and with `apply` moves released ones to `inbox` and records the decisions.
    /// `each` sees every outcome (progress, reports).
    pub async fn pass(
        &self,
        folder: &Path,
        inbox: &Path,
        opts: &Options,
        mut each: impl FnMut(&Outcome, usize, usize),
    ) -> Result<Summary> {
        let entries = maildir::list(folder)?;
        if opts.apply {
            maildir::require_folder(inbox).context("the inbox (--inbox)")?;
            let keep = self.cfg.recover.retention_days.saturating_mul(86_400);
            self.store
                .prune_recoveries(crate::util::now().saturating_sub(keep))?;
        }
        let mut sum = Summary::default();
        let total = entries.len();
        // The inbox's base names, read once: a release never takes one already there.
        let mut taken = if opts.apply {
            maildir::bases(inbox)?
        } else {
            Default::default()
        };
        for (i, e) in entries.iter().enumerate() {
            let raw = match read_message(&e.path) {
                Ok(r) => r,
                // Moved or expunged by the user meanwhile: not ours to count.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => {
                    tracing::warn!("cannot read {}: {err}", e.path.display());
                    sum.errors += 1;
                    continue;
                }
            };
            let o = self.one(e, &raw, inbox, opts, &mut taken).await;
            match o {
                Ok(o) => {
                    sum.count(&o);
                    each(&o, i + 1, total);
                }
                Err(err) => {
                    tracing::warn!("{}: {err:#}", e.path.display());
                    sum.errors += 1;
                }
            }
        }
        // One sync per folder instead of two per move: until it, a power loss can only undo
        // moves (the decision is recorded, so the next run carries them out again).
        if opts.apply && sum.released > 0 {
            maildir::sync_folder(inbox)?;
            maildir::sync_folder(folder)?;
        }
        Ok(sum)
    }

    async fn one(
        &self,
        e: &Entry,
        raw: &[u8],
        inbox: &Path,
        opts: &Options,
        taken: &mut std::collections::BTreeSet<String>,
    ) -> Result<Outcome> {
        let id = identity(raw);
        // Whose decision: --user, else the delivering agent's Delivered-To.
        let user = opts
            .user
            .clone()
            .or_else(|| mailstamp_core::parse(raw).and_then(|m| delivered_to(&m)));
        if !opts.redecide
            && let Some(user) = user.as_deref()
            && let Some(r) = self.store.recovery(user, &id)?
        {
            let mut o = Outcome {
                file: e.path.clone(),
                id: id.clone(),
                message_id: None,
                user: Some(user.to_owned()),
                from: None,
                action: r.action,
                reason: r.reason,
                detail: "decided in an earlier run".into(),
                authenticated_sender: r.sender.clone(),
                verdict: Verdict::Unstamped,
                verified_at: None,
                auth: AuthOutcome::none(),
                filters: Vec::new(),
                earlier: true,
                moved_to: None,
            };
            // A release recorded before a crash, not carried out: carry it out now. One carried
            // out already and found here again: the user put it back — never fight the user
            // (a `--watch` tick would otherwise pull it out again and again).
            if r.action == RecoveryAction::Release && r.applied {
                o.detail = "released in an earlier run and put back since (by the user?): left where it is".into();
            } else if opts.apply && r.action == RecoveryAction::Release {
                o.moved_to = Some(maildir::move_unsynced(e, inbox, taken)?);
                self.store.recovery_applied(user, &id)?;
            }
            return Ok(o);
        }
        let mut o = self.examine(&e.path, raw, user.as_deref()).await;
        if opts.apply
            && let Some(user) = o.user.clone()
            && o.reason != RecoveryReason::Temperror
        {
            // Record first, then move: a crash in between leaves a recorded release that the
            // next run carries out; the other order could move without a record.
            self.store.record_recovery(
                &user,
                &o.id,
                o.action,
                o.reason,
                o.authenticated_sender.as_deref(),
                crate::util::now(),
            )?;
            if o.action == RecoveryAction::Release {
                o.moved_to = Some(maildir::move_unsynced(e, inbox, taken)?);
                self.store.recovery_applied(&user, &o.id)?;
            }
        }
        Ok(o)
    }

    /// `--watch` learning: messages of `user` we saw in the folder and kept, now found in
    /// `inbox` (the user moved them out by hand), add their authenticated sender to the user's
    /// authorised senders. An unauthenticated sender is not learned (the From could be forged);
    /// the message is marked so it is not looked at again. Returns the senders learned.
    /// `since` (unix seconds): only files whose inode changed since then are read — a move
    /// (rename) or an IMAP copy changes it — so a tick does not re-hash a large inbox.
    pub fn learn(&self, inbox: &Path, user: &str, since: Option<i64>) -> Result<Vec<String>> {
        use std::os::unix::fs::MetadataExt;
        let kept = self.store.kept_unlearned(user)?;
        if kept.is_empty() {
            return Ok(Vec::new());
        }
        let mut learned = Vec::new();
        for e in maildir::list(inbox)? {
            if let Some(t) = since
                && std::fs::metadata(&e.path).is_ok_and(|m| m.ctime() < t)
            {
                continue;
            }
            let Ok(raw) = read_message(&e.path) else {
                continue;
            };
            let id = identity(&raw);
            let Some(sender) = kept.get(&id) else {
                continue;
            };
            let now = crate::util::now();
            if let Some(s) = sender {
                if self.store.add_sender(
                    user,
                    s,
                    Some("learned: moved out of Junk by the user"),
                    now,
                )? {
                    learned.push(s.clone());
                }
            } else {
                tracing::info!(
                    "{}: moved to the inbox by hand, but its sender is not authenticated: not learned",
                    e.path.display()
                );
            }
            self.store.recovery_learned(user, &id, now)?;
        }
        Ok(learned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_file_is_refused_before_it_is_read() {
        let path = std::env::temp_dir().join(format!("mailstamp-big-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        // Sparse: no 64 MiB written to disk.
        f.set_len(mailstamp_core::MAX_MESSAGE_BYTES as u64 + 1)
            .unwrap();
        let e = read_message(&path).unwrap_err().to_string();
        assert!(e.contains("left in place"), "{e}");
        f.set_len(10).unwrap();
        assert_eq!(read_message(&path).unwrap().len(), 10);
        std::fs::remove_file(&path).unwrap();
    }

    fn parse(s: &str) -> Message<'_> {
        parse_full(s.as_bytes()).unwrap()
    }

    #[test]
    fn spam_filter_headers_are_read() {
        let m = parse(
            "X-Spam-Flag: YES\nX-Spam-Status: Yes, score=7.3 required=5.0 tests=BAYES_99\n\
             X-Spamd-Result: default: True [12.30 / 15.00]; R_SPF_FAIL(1.0)\nX-Spam: Yes\n\
             X-Rspamd-Action: add header\nX-Rspamd-Score: 12.3\nX-Spam-Level: *****\n\
             From: a@b.example\n\nbody\n",
        );
        let f = filter_marks(&m);
        let got: Vec<_> = f.iter().map(|m| (m.filter, m.spam, m.score)).collect();
        assert_eq!(
            got,
            vec![
                ("spamassassin", Some(true), None),
                ("spamassassin", Some(true), Some(7.3)),
                ("rspamd", Some(true), Some(12.3)),
                ("rspamd", Some(true), None),
                ("rspamd", Some(true), None),
                ("rspamd", None, Some(12.3)),
                ("generic", None, Some(5.0)),
            ]
        );
        let m = parse("X-Spam-Status: No, hits=-1.2\nX-Spam-Flag: garbage\n\nx\n");
        let got: Vec<_> = filter_marks(&m).iter().map(|m| (m.spam, m.score)).collect();
        assert_eq!(got, vec![(Some(false), Some(-1.2)), (None, None)]);
    }

    #[test]
    fn the_client_comes_only_from_our_own_received_headers() {
        let ours = vec!["mx.b.example".to_owned()];
        let m = parse(
            "Return-Path: <ann@a.example>\n\
             Received: from mx.b.example ([127.0.0.1]) by mx.b.example (Dovecot) with LMTP id x; Tue, 1 Jan 2030 00:00:00 +0000\n\
             Received: from mail.a.example (mail.a.example [192.0.2.7]) by mx.b.example (Postfix) with ESMTP id Y; Tue, 1 Jan 2030 00:00:00 +0000\n\
             Received: from evil ([198.51.100.1]) by mx.b.example; Tue, 1 Jan 2030 00:00:00 +0000\n\
             From: ann@a.example\n\nx\n",
        );
        let t = trace(&m, &ours);
        assert_eq!(t.client_ip, Some("192.0.2.7".parse().unwrap()));
        // Delivered when the top-most of our Received: says (2030-01-01T00:00:00Z).
        assert_eq!(t.delivered, Some(1_893_456_000));
        assert_eq!(
            delivered_at(&t, Path::new("/nonexistent/1.x.host"), u64::MAX),
            1_893_456_000
        );
        assert_eq!(
            delivered_at(&t, Path::new("/nonexistent/1.x.host"), 5),
            5,
            "never later than now"
        );
        let none = Trace::default();
        assert_eq!(
            delivered_at(
                &none,
                Path::new("/nonexistent/1700000000.M1P2.host:2,S"),
                u64::MAX
            ),
            1_700_000_000
        );
        assert_eq!(delivered_at(&none, Path::new("/nonexistent/junk"), 42), 42);
        assert_eq!(t.helo, "mail.a.example");
        assert_eq!(t.mail_from, "ann@a.example");
        // A Received naming our host below a foreign one is the sender's own writing.
        let m = parse(
            "Received: from relay.c.example ([203.0.113.9]) by other.example; Tue, 1 Jan 2030 00:00:00 +0000\n\
             Received: from x ([192.0.2.7]) by mx.b.example; Tue, 1 Jan 2030 00:00:00 +0000\n\
             From: ann@a.example\n\nx\n",
        );
        assert_eq!(trace(&m, &ours).client_ip, None);
    }

    #[test]
    fn the_walk_stops_at_our_hop_without_a_client_ip() {
        let ours = vec!["mx.b.example".to_owned()];
        // Our pickup of a local submission (no client), above sender-written lines naming
        // our host: no client, not the forged one.
        let m = parse(
            "Received: by mx.b.example (Postfix, from userid 1000) id Z; Tue, 1 Jan 2030 00:00:00 +0000\n\
             Received: from mail.a.example (mail.a.example [192.0.2.7]) by mx.b.example; Tue, 1 Jan 2030 00:00:00 +0000\n\
             From: ann@a.example\n\nx\n",
        );
        assert_eq!(trace(&m, &ours).client_ip, None);
        // A loopback hop is still passed over.
        let m = parse(
            "Received: from mx.b.example ([127.0.0.1]) by mx.b.example (Dovecot) with LMTP id x; Tue, 1 Jan 2030 00:00:00 +0000\n\
             Received: from mail.a.example (mail.a.example [192.0.2.7]) by mx.b.example; Tue, 1 Jan 2030 00:00:00 +0000\n\
             From: ann@a.example\n\nx\n",
        );
        assert_eq!(
            trace(&m, &ours).client_ip,
            Some("192.0.2.7".parse().unwrap())
        );
    }

    #[test]
    fn the_user_is_the_top_most_delivered_to() {
        let raw = "Delivered-To: bob@b.example\n\
                   Received: from x ([192.0.2.7]) by mx.b.example; Tue, 1 Jan 2030 00:00:00 +0000\n\
                   From: ann@a.example\n\
                   Delivered-To: mallory@b.example\n\nx\n";
        assert_eq!(delivered_to(&parse(raw)).as_deref(), Some("bob@b.example"));
        // The verification parser (which `one` uses) gives the same answer.
        let m = mailstamp_core::parse(raw.as_bytes()).unwrap();
        assert_eq!(delivered_to(&m).as_deref(), Some("bob@b.example"));
        let m = parse("X-Original-To: <Bob@B.example>\nFrom: a@a.example\n\nx\n");
        assert_eq!(delivered_to(&m).as_deref(), Some("bob@b.example"));
    }

    #[test]
    fn identity_is_the_bytes_not_the_name() {
        assert_eq!(identity(b"a"), identity(b"a"));
        assert_ne!(identity(b"a"), identity(b"b"));
        assert!(identity(b"a").starts_with("0x") && identity(b"a").len() == 66);
    }

    #[test]
    fn recovery_words_read_back_what_they_write_and_unknown_ones_are_errors() {
        let every = Reason::ALL
            .iter()
            .map(|r| RecoveryReason::Decided(*r))
            .chain(UNDECIDED.iter().map(|(r, _)| *r));
        for r in every {
            assert_eq!(r.as_str().parse::<RecoveryReason>(), Ok(r));
            assert!(!r.as_str().is_empty());
        }
        for a in RecoveryAction::ALL {
            assert_eq!(a.as_str().parse::<RecoveryAction>(), Ok(*a));
        }
        // The inbound reasons keep the words the headers and reports have always used.
        for r in [
            Reason::StampWanted,
            Reason::UnauthenticatedHit,
            Reason::NoFrom,
        ] {
            assert_eq!(RecoveryReason::from(r).as_str(), r.as_str());
        }
        let s = Store::in_memory().unwrap();
        s.with(|c| {
            c.execute(
                "INSERT INTO recoveries (\"user\", message, action, reason, applied, decided)
                 VALUES ('u@b.example', '0x9', 'keep', 'moonphase', 0, 1)",
                [],
            )
        })
        .unwrap();
        let e = format!("{:#}", s.recovery("u@b.example", "0x9").unwrap_err());
        assert!(e.contains("recovery reason `moonphase`"), "{e}");
    }

    crate::store::on_both_backends!(fn decisions_are_recorded_once_and_pruned(s) {
        assert!(s.recovery("u@b.example", "0x1").unwrap().is_none());
        s.record_recovery(
            "u@b.example",
            "0x1",
            RecoveryAction::Keep,
            RecoveryReason::Decided(Reason::Stranger),
            Some("a@x.example"),
            10,
        )
        .unwrap();
        s.record_recovery(
            "u@b.example",
            "0x2",
            RecoveryAction::Release,
            RecoveryReason::Decided(Reason::Allowlisted),
            None,
            20,
        )
        .unwrap();
        let r = s.recovery("u@b.example", "0x2").unwrap().unwrap();
        assert_eq!((r.action, r.applied), (RecoveryAction::Release, false));
        assert_eq!(r.reason, RecoveryReason::Decided(Reason::Allowlisted));
        s.recovery_applied("u@b.example", "0x2").unwrap();
        assert!(s.recovery("u@b.example", "0x2").unwrap().unwrap().applied);
        let k = s.kept_unlearned("u@b.example").unwrap();
        assert_eq!(k.len(), 1);
        assert_eq!(k["0x1"].as_deref(), Some("a@x.example"));
        s.recovery_learned("u@b.example", "0x1", 30).unwrap();
        assert!(s.kept_unlearned("u@b.example").unwrap().is_empty());
        assert_eq!(s.prune_recoveries(15).unwrap(), 1);
        assert!(s.recovery("u@b.example", "0x1").unwrap().is_none());
    });
}
