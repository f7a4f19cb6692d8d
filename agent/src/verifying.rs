// SPDX-License-Identifier: GPL-3.0-or-later
//! Verifying one message: parse it, find its `Mail-Stamp:`, ask the chain for the record and
//! DNS for the writer's authorisation at once, and let the core decide ([`verify`]); and the
//! transaction that recorded a found stamp, for audit ([`recording_tx`]). Every problem is a
//! verdict, never an error: chain trouble is `temperror`, never `spam`.

use alloy::primitives::Address;
use mailstamp_core::mail_parser::Message;
use mailstamp_core::{
    Envelope, Inspection, MAX_MESSAGE_BYTES, Policy, Report, Verdict, evaluate, inspect,
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
        })
    }
}

thread_local! {
    /// Messages this thread parsed for verification (see [`parse`]).
    static PARSES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Parses a message for verification (the core's parser) and counts it, so that a test can
/// hold the inbound path to one parse per message ([`parses`]).
pub fn parse(raw: &[u8]) -> Option<Message<'_>> {
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
    let parsed = (raw.len() <= MAX_MESSAGE_BYTES)
        .then(|| parse(raw))
        .flatten();
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
    if raw.len() > MAX_MESSAGE_BYTES {
        return Report::bare(
            Verdict::Invalid,
            format!(
                "message is {} bytes, more than the {MAX_MESSAGE_BYTES} verified",
                raw.len()
            ),
            None,
        );
    }
    let Some(msg) = parsed else {
        return Report::bare(
            Verdict::Invalid,
            "not an RFC 5322 message: no header section",
            None,
        );
    };
    let header = match inspect(msg) {
        Inspection::Unstamped => {
            return Report::bare(Verdict::Unstamped, "no Mail-Stamp header", None);
        }
        Inspection::Invalid(why) => {
            return Report::bare(Verdict::Invalid, format!("Mail-Stamp header: {why}"), None);
        }
        Inspection::Stamped(h) => h,
    };
    let chain = match chain {
        Ok(c) => c,
        Err(why) => {
            return Report::bare(
                Verdict::Temperror,
                format!("chain unavailable: {why:#}"),
                Some(&header),
            );
        }
    };
    on_chain(chain, ctx, msg, &header, env).await
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
    if header.chain_id != chain.chain_id {
        return Report::bare(
            Verdict::Invalid,
            format!(
                "stamp is on chain {}, this agent reads chain {}",
                header.chain_id, chain.chain_id
            ),
            Some(header),
        );
    }
    let registry = Address::from(header.registry);
    if !ctx.trusted.contains(&registry) {
        return Report::bare(
            Verdict::Invalid,
            format!(
                "stamp names registry {registry}, which is not trusted (chain.registry / verify.trusted_registries)"
            ),
            Some(header),
        );
    }
    // The record and the writer check are independent: ask the chain and DNS at once.
    let writer = Address::from(header.writer);
    let from = mailstamp_core::component::from_address(msg);
    let (_, domain) = mailstamp_core::canon::split_address(&from);
    let (lookup, auth) = tokio::join!(
        chain.lookup(writer, RecordKey::of(header)),
        ctx.authority.check(domain, writer)
    );
    evaluate(msg, header, env, &lookup, &auth, &ctx.policy, ctx.now)
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
