// SPDX-License-Identifier: GPL-3.0-or-later
//! Verifying one message: parse it, find its `Mail-Stamp:` (or the chain of them a forwarder
//! or list added, docs/PROTOCOL.md §5c), ask the chain for every record and DNS for every
//! writer's authorisation at once, and let the core decide ([`verify`]); and the
//! transaction that recorded a found stamp, for audit ([`recording_tx`]). Every problem is a
//! verdict, never an error: chain trouble is `temperror`, never `spam`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::Address;
use mailstamp_core::hops::{ChainInspection, LevelInputs};
use mailstamp_core::mail_parser::Message;
use mailstamp_core::{
    Envelope, Inspection, Lookup, Policy, Report, Verdict, WriterAuth, evaluate, inspect,
};

use crate::chain::{Chain, RecordKey, Recorded};
use crate::config::Config;
use crate::dns::Authority;
use crate::error::{Error, Result};

/// What verification needs besides the message.
#[derive(Clone, Debug)]
pub struct VerifyContext {
    /// Writer records and the trust map.
    pub authority: Authority,
    /// Registries whose records count.
    pub trusted: Vec<Address>,
    /// Matching policy.
    pub policy: Policy,
    /// Verification time (unix seconds) for the replay check.
    pub now: Option<u64>,
    /// How long to wait for the chain, and when a missing record may be called spam.
    pub patience: Patience,
}

/// How long verification waits for a record, and how long "no record" stays `temperror`
/// (docs/PROTOCOL.md §6, "A chain has a clock"). The default waits for nothing and calls a
/// missing record `spam` at once (one-shot checks of a settled chain).
#[derive(Clone, Debug, Default)]
pub struct Patience {
    /// How long a lookup waits for a record that is on chain but not confirmed yet, or not
    /// found yet (`verify.confirm_wait_secs`), woken by each new head. Zero: no wait.
    pub wait: Duration,
    /// How long after a stamp was first seen "no record" is `temperror`
    /// (`verify.missing_grace_secs`). Zero: `spam` at once.
    pub grace: Duration,
    /// When each stamp was first seen: shared by every message a daemon verifies.
    pub seen: Arc<Sightings>,
}

impl Patience {
    /// The patience `[verify]` asks for, remembering first sightings in `seen`.
    pub fn from_config(v: &crate::config::VerifyConfig, seen: Arc<Sightings>) -> Self {
        Self {
            wait: Duration::from_secs(v.confirm_wait_secs),
            grace: Duration::from_secs(v.missing_grace_secs),
            seen,
        }
    }
}

/// When each stamp (writer and record key) was first seen without a record, in unix seconds.
/// Kept in memory: a daemon restart starts the grace again (a made-up stamp is deferred once
/// more, never called spam early).
#[derive(Debug, Default)]
pub struct Sightings {
    first: Mutex<HashMap<(Address, RecordKey), u64>>,
}

/// Bound on remembered sightings; past it those older than the grace are forgotten first.
const SIGHTINGS_MAX: usize = 65_536;

impl Sightings {
    /// When (`writer`, `key`) was first seen, recording `now` if it was not seen before.
    pub fn first_seen(&self, writer: Address, key: RecordKey, now: u64, grace: u64) -> u64 {
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.len() >= SIGHTINGS_MAX && !first.contains_key(&(writer, key)) {
            first.retain(|_, t| now.saturating_sub(*t) < grace);
            if first.len() >= SIGHTINGS_MAX {
                first.clear();
            }
        }
        *first.entry((writer, key)).or_insert(now)
    }
}

impl VerifyContext {
    /// Inbound options from the config (trusted registries, policy, writer checks), with the
    /// replay check as of `now`. Build it once and reuse it: it holds the resolver and its cache.
    pub fn from_config(cfg: &Config, now: Option<u64>) -> Result<Self> {
        Ok(Self {
            authority: Authority::new(&cfg.dns, &cfg.trust)?,
            trusted: cfg.trusted_registries(),
            policy: cfg.verify.policy(),
            now,
            patience: Patience::from_config(&cfg.verify, Arc::default()),
        })
    }
}

/// Whether `report` is a `temperror` because the chain could not be read (the caller may
/// reconnect), rather than a record not confirmed or not found yet.
pub fn chain_trouble(report: &Report) -> bool {
    report.verdict == Verdict::Temperror
        && report
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with(mailstamp_core::verify::CHAIN_UNAVAILABLE))
}

thread_local! {
    /// Messages this thread parsed for verification (see [`parse`]).
    static PARSES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Parses a message for verification (the core's parser) and counts it, so that a test can
/// hold the inbound path to one parse per message ([`parses`]). `None` for a message past the
/// core's bounds ([`mailstamp_core::oversized`], checked before parsing: the parser's memory
/// grows with the part count) or with no header section.
pub fn parse(raw: &[u8]) -> Option<Message<'_>> {
    if mailstamp_core::oversized(raw).is_some() {
        return None;
    }
    PARSES.with(|n| n.set(n.get() + 1));
    mailstamp_core::parse(raw)
}

/// How many messages this thread has parsed through [`parse`].
pub fn parses() -> u64 {
    PARSES.with(std::cell::Cell::get)
}

/// Verifies one message. Never fails: every problem is a verdict (`invalid`, `temperror`…).
/// `chain` is the connection, or why there is none: an unstamped or garbled message is judged
/// without the chain, a stamped one is `temperror` until the chain answers.
pub async fn verify(
    chain: std::result::Result<&Chain, &Error>,
    ctx: &VerifyContext,
    raw: &[u8],
    env: &Envelope,
) -> Report {
    let parsed = parse(raw);
    verify_parsed(chain, ctx, raw, parsed.as_ref(), env).await
}

/// [`verify`] of a message the caller parsed already ([`parse`]; `None`: too big, or not a
/// message), so that one parse serves every reader of an inbound message.
pub async fn verify_parsed(
    chain: std::result::Result<&Chain, &Error>,
    ctx: &VerifyContext,
    raw: &[u8],
    parsed: Option<&Message<'_>>,
    env: &Envelope,
) -> Report {
    let Some(msg) = parsed else {
        // Why there is no message (only this rare path scans for the bounds again).
        if let Some(why) = mailstamp_core::oversized(raw) {
            return Report::bare(Verdict::Invalid, format!("not verified: {why}"), None);
        }
        return Report::bare(
            Verdict::Invalid,
            "not an RFC 5322 message: no header section",
            None,
        );
    };
    // Two or more fields: a chain of hops (docs/PROTOCOL.md §5c), or `invalid`.
    let fields = msg
        .headers()
        .iter()
        .filter(|h| {
            h.name()
                .eq_ignore_ascii_case(mailstamp_core::header::FIELD_NAME)
        })
        .count();
    if fields > 1 {
        return walk_chain(chain, ctx, msg, env).await;
    }
    let header = match inspect(msg) {
        Inspection::Unstamped => {
            return Report::bare(Verdict::Unstamped, "no Mail-Stamp header", None);
        }
        Inspection::Invalid(why) => {
            return Report::bare(Verdict::Invalid, format!("Mail-Stamp header: {why}"), None);
        }
        Inspection::Stamped(h) => h,
    };
    // Decided from the header alone: no chain needed, no wait.
    if let Some(report) = mailstamp_core::verify::version_refused(&header, &ctx.policy) {
        return report;
    }
    let chain = match chain {
        Ok(c) => c,
        Err(why) => {
            return Report::bare(
                Verdict::Temperror,
                format!("{}: {why:#}", mailstamp_core::verify::CHAIN_UNAVAILABLE),
                Some(&header),
            );
        }
    };
    on_chain(chain, ctx, msg, &header, env).await
}

/// Why a stamp's chain or registry is not read here, if so: `invalid`, said for `what`
/// ("stamp" or "hop i=N").
fn foreign(
    chain: &Chain,
    ctx: &VerifyContext,
    header: &mailstamp_core::StampHeader,
    what: &str,
) -> Option<Report> {
    if header.chain_id != chain.chain_id {
        return Some(Report::bare(
            Verdict::Invalid,
            format!(
                "{what} is on chain {}, this agent reads chain {}",
                header.chain_id, chain.chain_id
            ),
            Some(header),
        ));
    }
    let registry = Address::from(header.registry);
    if !ctx.trusted.contains(&registry) {
        return Some(Report::bare(
            Verdict::Invalid,
            format!(
                "{what} names registry {registry}, which is not trusted (chain.registry / verify.trusted_registries)"
            ),
            Some(header),
        ));
    }
    None
}

/// The record of one stamp and its writer's check for `domain`, asked at once, with the
/// patience `[verify]` asks for.
async fn record_and_writer(
    chain: &Chain,
    ctx: &VerifyContext,
    header: &mailstamp_core::StampHeader,
    domain: &str,
) -> (Lookup, WriterAuth) {
    // The record and the writer check are independent: ask the chain and DNS at once.
    let writer = Address::from(header.writer);
    let key = RecordKey::of(header);
    let (lookup, auth) = tokio::join!(
        chain.lookup(writer, key),
        ctx.authority.check(domain, writer)
    );
    let lookup = patient(chain, ctx, writer, key, lookup, &auth).await;
    (lookup, auth)
}

/// The checks of a decoded stamp against the chain: the chain and registry it names, then
/// the record and the writer's authorisation (asked at once), then the core's comparison.
async fn on_chain(
    chain: &Chain,
    ctx: &VerifyContext,
    msg: &Message<'_>,
    header: &mailstamp_core::StampHeader,
    env: &Envelope,
) -> Report {
    if let Some(r) = foreign(chain, ctx, header, "stamp") {
        return r;
    }
    let from = mailstamp_core::component::from_address(msg);
    let (_, domain) = mailstamp_core::canon::split_address(&from);
    let (lookup, auth) = record_and_writer(chain, ctx, header, domain).await;
    evaluate(msg, header, env, &lookup, &auth, &ctx.policy, ctx.now)
}

/// A message with several `Mail-Stamp:` fields: the chain of hops (docs/PROTOCOL.md §5c),
/// every level's record and writer (for its own domain) asked at once, then the core's walk.
/// Fields that do not form a chain are `invalid`.
async fn walk_chain(
    chain: std::result::Result<&Chain, &Error>,
    ctx: &VerifyContext,
    msg: &Message<'_>,
    env: &Envelope,
) -> Report {
    let hops = match mailstamp_core::inspect_chain(msg) {
        ChainInspection::Chain(c) => c,
        ChainInspection::Invalid(why) => {
            return Report::bare(Verdict::Invalid, format!("Mail-Stamp chain: {why}"), None);
        }
        ChainInspection::Unstamped => {
            return Report::bare(Verdict::Unstamped, "no Mail-Stamp header", None);
        }
    };
    let chain = match chain {
        Ok(c) => c,
        Err(why) => {
            return Report::bare(
                Verdict::Temperror,
                format!("{}: {why:#}", mailstamp_core::verify::CHAIN_UNAVAILABLE),
                hops.stamp(hops.len() - 1),
            );
        }
    };
    let stamps: Vec<&mailstamp_core::StampHeader> =
        (0..hops.len()).filter_map(|k| hops.stamp(k)).collect();
    for (k, h) in stamps.iter().enumerate() {
        let what = if k == 0 {
            "stamp".to_owned()
        } else {
            format!("hop i={}", k + 1)
        };
        if let Some(r) = foreign(chain, ctx, h, &what) {
            return r;
        }
    }
    let domains = hops.auth_domains(msg);
    let asked = futures_util::future::join_all(
        stamps
            .iter()
            .zip(&domains)
            .map(|(h, d)| record_and_writer(chain, ctx, h, d)),
    )
    .await;
    let (lookups, auths): (Vec<Lookup>, Vec<WriterAuth>) = asked.into_iter().unzip();
    let inputs = LevelInputs {
        lookups: &lookups,
        auths: &auths,
    };
    mailstamp_core::evaluate_chain(msg, &hops, env, &inputs, &ctx.policy, ctx.now).into_report()
}

/// `lookup` after the patience `[verify]` asks for: a record not confirmed or not found yet
/// is waited for (`confirm_wait_secs`), and "no record" stays `temperror` during the grace
/// after the stamp was first seen (`missing_grace_secs`).
async fn patient(
    chain: &Chain,
    ctx: &VerifyContext,
    writer: Address,
    key: RecordKey,
    mut lookup: Lookup,
    auth: &WriterAuth,
) -> Lookup {
    // Waiting serves a writer the domain may have authorised; an unauthorised one is spam
    // whatever the chain says, and must not hold a session.
    let authorised = !matches!(auth, WriterAuth::Fail(_));
    let p = &ctx.patience;
    if authorised && !p.wait.is_zero() && matches!(lookup, Lookup::Unconfirmed | Lookup::NotFound) {
        let started = tokio::time::Instant::now();
        lookup = chain.lookup_until(writer, key, started + p.wait).await;
        crate::metrics::METRICS
            .confirm_wait_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    if authorised && lookup == Lookup::NotFound && !p.grace.is_zero() {
        let now = crate::util::now();
        let grace = p.grace.as_secs();
        let age = now.saturating_sub(p.seen.first_seen(writer, key, now, grace));
        if age < grace {
            lookup = Lookup::NotFoundYet(format!(
                "no record on chain for this stamp yet (first seen {age} s ago): it counts as \
                 spam once {grace} s (verify.missing_grace_secs) pass without one"
            ));
        }
    }
    lookup
}

/// A second look at a lone stamp that came out `spam` (docs/PROTOCOL.md §5c, "When the
/// forwarder or the list runs no agent"): stamped for one of `others` — the recipients' own
/// other addresses that forward to them (`mailstamp forwards`) — it is judged again as if it
/// had arrived for that address and, if that is `wanted`, says so; a sound stamp whose only
/// differences are the envelope recipient or a From moved to another domain is
/// `inapplicable` (neither wanted nor spam: the other checks decide). Anything else, and
/// every chain of hops, stays as it was.
pub async fn second_look(
    chain: std::result::Result<&Chain, &Error>,
    ctx: &VerifyContext,
    raw: &[u8],
    parsed: Option<&Message<'_>>,
    env: &Envelope,
    report: Report,
    others: &[String],
) -> Report {
    if report.verdict != Verdict::Spam || !report.chain.is_empty() {
        return report;
    }
    let Some(Inspection::Stamped(header)) = parsed.map(inspect) else {
        return report;
    };
    if let Some(other) = mailstamp_core::hops::other_address(&header, others) {
        let env2 = Envelope {
            rcpts: vec![other.to_owned()],
            client_ip: env.client_ip,
        };
        let mut r = verify_parsed(chain, ctx, raw, parsed, &env2).await;
        if r.verdict == Verdict::Wanted {
            r.reason = Some(format!(
                "addressed to the recipient's other address {other} (mailstamp forwards)"
            ));
            return r;
        }
    }
    match mailstamp_core::hops::not_applicable(&header, &report, &ctx.policy, ctx.now) {
        Some(why) => Report {
            verdict: Verdict::Inapplicable,
            reason: Some(why.reason().to_owned()),
            ..report
        },
        None => report,
    }
}

/// The transaction that recorded a found stamp (its `Stamped` event, or its batch's
/// `Anchored` event), for audit headers and reports; `None` when not found.
pub async fn recording_tx(chain: &Chain, report: &Report, from_block: u64) -> Option<Recorded> {
    let s = report.stamp.as_ref().filter(|s| s.time.is_some())?;
    let w = s.writer.parse::<Address>().ok()?;
    let key = match &s.batch {
        Some(b) => RecordKey::Batch(b.parse().ok()?),
        None => RecordKey::Stamp(s.token.parse().ok()?),
    };
    chain
        .find_event(Some(w), key, from_block)
        .await
        .ok()
        .flatten()
        .map(|(_, r)| r)
}
