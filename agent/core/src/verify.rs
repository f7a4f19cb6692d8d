// SPDX-License-Identifier: GPL-3.0-or-later
//! Inbound: find the stamp, compare the message with it, and decide (docs/PROTOCOL.md §6–§8).
//! Owns the verdict and its [`Report`], the matching [`Policy`], the per-component comparison
//! and the further processing that explains what lists change (list footers, subject tags).
//!
//! Verification is split in two so that this crate stays free of I/O: [`inspect`] finds and
//! decodes the header; the caller looks the record up on chain; [`evaluate`] decides. The
//! outcome is shaped like mail-auth's results: a chain that cannot be read is `temperror`,
//! never `spam`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

use mail_parser::Message;
use serde::{Deserialize, Serialize};

use crate::canon::{self, Lines};
use crate::component::{self, Decomposed, Envelope, Selection, Value};
use crate::digest::{Commitment, Digest};
use crate::header::{FIELD_NAME, Mode, StampHeader};
use crate::hex0x;
use crate::name::{ComponentName, Family};
use crate::stamp::{bytes_digest, rcpt_digests, value_digest};
use crate::writers::WriterAuth;

/// A footer a list may append: at most this many lines…
pub const MAX_FOOTER_LINES: usize = 24;
/// …and at most this many bytes.
pub const MAX_FOOTER_BYTES: usize = 4096;

/// The decision about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every component matches (or differs only in ways further processing explains).
    Wanted,
    /// Enough matches to pass the threshold, but some differences are not explained.
    Suspect,
    /// A forged, replayed or altered stamp: required components differ, too little matches,
    /// the record does not exist or does not match the header.
    Spam,
    /// No `Mail-Stamp:` header.
    Unstamped,
    /// A header that does not decode, or names a registry or chain we do not trust.
    Invalid,
    /// The chain could not be asked, or the record is not confirmed yet: try again later.
    Temperror,
    /// A sound stamp that does not apply to this copy (docs/PROTOCOL.md §5c): its record
    /// matches, but it was not addressed to this recipient and no hop says why, or From was
    /// moved to another domain — a forwarder or list that runs no agent. Neither `wanted` (it
    /// may be a replay) nor `spam`: delivered as if unstamped, the other checks decide.
    Inapplicable,
}

impl Verdict {
    /// The lowercase name used in headers, JSON and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Wanted => "wanted",
            Verdict::Suspect => "suspect",
            Verdict::Spam => "spam",
            Verdict::Unstamped => "unstamped",
            Verdict::Invalid => "invalid",
            Verdict::Temperror => "temperror",
            Verdict::Inapplicable => "inapplicable",
        }
    }
}

/// How one component compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Same digest.
    Match,
    /// Differs in a way further processing recognises as benign.
    Explained,
    /// Differs.
    Mismatch,
    /// Stamped, but the message no longer has it.
    Missing,
    /// In the message, but not stamped.
    Added,
    /// The verifier cannot compute it here (e.g. origin IP unknown); not scored.
    Unavailable,
}

/// One component's comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentResult {
    /// Component name (`subject`, `text.0`, `rcpt`…).
    pub name: String,
    /// Its family.
    #[serde(skip)]
    pub family: Option<Family>,
    /// Outcome.
    pub status: Status,
    /// Its weight in the score.
    pub weight: u32,
    /// What further processing found, or why it is unavailable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Matching policy: weights, required components, threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    /// Weighted share at or above which a partial match is `suspect` rather than `spam`.
    pub threshold: f64,
    /// Weight per family; a family not listed weighs 1.
    pub weights: BTreeMap<Family, u32>,
    /// Families whose mismatch makes the message `spam` whatever the score.
    pub required: BTreeSet<Family>,
    /// A record older than this many seconds at verification is a replay (`spam`);
    /// `None` disables the check.
    pub max_age_secs: Option<u64>,
    /// The lowest stamp version accepted (docs/PROTOCOL.md §6 step 1): a stamp of a lower
    /// version is `invalid`. 1 (the default) accepts every version; 2 refuses version-1
    /// stamps, which do not cover the display name.
    pub min_version: u32,
    /// The domains whose hops count as forwarders and lists here (docs/PROTOCOL.md §5c,
    /// "trusted forwarders"), lower case; a chain through a hop of any other domain is at
    /// best `suspect`. `None` (the default): every hop whose writer its domain authorises.
    pub forwarders: Option<BTreeSet<String>>,
}

impl Default for Policy {
    fn default() -> Self {
        use Family::*;
        let weights = [
            (From, 3),
            (FromLocal, 1),
            (FromDomain, 1),
            (FromName, 2),
            (To, 2),
            (Cc, 1),
            (Rcpt, 3),
            (Subject, 2),
            (Date, 1),
            (MessageId, 1),
            (Parts, 1),
            (Text, 3),
            (Signature, 1),
            (Html, 2),
            (Attachment, 3),
            (Origin, 1),
        ]
        .into_iter()
        .collect();
        Self {
            threshold: 0.75,
            weights,
            required: [From, FromName, Rcpt].into_iter().collect(),
            max_age_secs: Some(7 * 24 * 3600),
            min_version: 1,
            forwarders: None,
        }
    }
}

impl Policy {
    /// The weight of a family.
    pub fn weight(&self, f: Family) -> u32 {
        self.weights.get(&f).copied().unwrap_or(1)
    }
}

/// How the reason of a `temperror` begins when the chain could not be read (not a record that
/// is unconfirmed or missing yet): callers that reconnect on chain trouble look for it.
pub const CHAIN_UNAVAILABLE: &str = "chain unavailable";

/// What the chain says about the record a header points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A confirmed record.
    Found {
        /// The recorded commitment.
        commitment: Commitment,
        /// Block timestamp of the record (unix seconds).
        time: u64,
    },
    /// The record exists but is not yet as deep as the confirmation policy asks.
    Unconfirmed,
    /// No record under (writer, token).
    NotFound,
    /// No record yet, but the chain may still change (the stamp was first seen within the
    /// verifier's grace period, docs/PROTOCOL.md §6): `temperror`, with the reason.
    NotFoundYet(String),
    /// The chain could not be read (RPC down, timeout…), with the reason.
    Unavailable(String),
}

/// Where the stamp points, for audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampInfo {
    /// Chain id.
    pub chain_id: u64,
    /// Registry address, 0x-hex.
    pub registry: String,
    /// Writer address, 0x-hex.
    pub writer: String,
    /// Record key of a direct stamp, 0x-hex.
    pub token: String,
    /// Batch id (the anchor's key) of a batched stamp, 0x-hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    /// Block timestamp of the record, when found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
}

impl StampInfo {
    /// The audit facts of a header.
    pub fn of(h: &StampHeader) -> Self {
        Self {
            chain_id: h.chain_id,
            registry: hex0x::encode(&h.registry),
            writer: hex0x::encode(&h.writer),
            token: hex0x::encode(&h.token()),
            batch: match &h.mode {
                Mode::Direct => None,
                Mode::Batch { batch, .. } => Some(hex0x::encode(batch)),
            },
            time: None,
        }
    }
}

/// The outcome of verifying one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The verdict.
    pub verdict: Verdict,
    /// Weighted share of matching components, when components were compared.
    pub score: Option<f64>,
    /// Why, in a few words.
    pub reason: Option<String>,
    /// Per-component results.
    pub components: Vec<ComponentResult>,
    /// The record the stamp points to.
    pub stamp: Option<StampInfo>,
    /// Whether the writer may write for the From domain, when that was checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writer_auth: Option<WriterAuth>,
    /// For a message with hops (docs/PROTOCOL.md §5c): every level of its chain, bottom-up
    /// (the originator first); the fields above are the top level's, the verdict and reason
    /// the whole chain's. Empty for a message with one stamp.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<ChainLevel>,
    /// For a chain that verified: the author (the originator's stamped From address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
}

/// One level of a hop chain in a [`Report`] (built by `hops::ChainReport::into_report`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainLevel {
    /// 1 for the originator, then the hop index (`i`).
    pub index: u8,
    /// The domain its writer was checked for (the author's for level 1, `dom` for a hop).
    pub domain: String,
    /// The changes the hop declared, as written in its `t` tag; empty for the originator.
    pub changes: Vec<String>,
    /// The level's own verdict.
    pub verdict: Verdict,
    /// Why, for this level.
    pub reason: Option<String>,
    /// The record this level's stamp points to.
    pub stamp: Option<StampInfo>,
}

impl Report {
    /// A report without component comparison.
    pub fn bare(verdict: Verdict, reason: impl Into<String>, stamp: Option<&StampHeader>) -> Self {
        Self {
            verdict,
            score: None,
            reason: Some(reason.into()),
            components: Vec::new(),
            stamp: stamp.map(StampInfo::of),
            writer_auth: None,
            chain: Vec::new(),
            author: None,
        }
    }
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspection {
    /// No `Mail-Stamp:` header.
    Unstamped,
    /// A header that does not decode, and why.
    Invalid(String),
    /// A decoded header.
    Stamped(Box<StampHeader>),
}

/// Finds and decodes the `Mail-Stamp:` header. The value is taken from the raw bytes
/// (offsets mail-parser records), so folding is undone by the decoder, not by guesswork.
///
/// More than one `Mail-Stamp:` field is `invalid` here: this is the one-stamp reader, and
/// nothing in one field says which speaks for the message. A message forwarded under hops
/// (docs/PROTOCOL.md §5c) is read by `crate::hops::inspect_chain`, which accepts several
/// fields only as a well-formed chain and judges a chain of one field exactly as this path.
pub fn inspect(msg: &Message<'_>) -> Inspection {
    let raw = msg.raw_message();
    let mut fields = msg
        .headers()
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case(FIELD_NAME));
    let Some(h) = fields.next() else {
        return Inspection::Unstamped;
    };
    if fields.next().is_some() {
        return Inspection::Invalid(format!(
            "more than one {FIELD_NAME} field, and no hop is declared"
        ));
    }
    let (start, end) = (h.offset_start() as usize, h.offset_end() as usize);
    let Some(bytes) = raw.get(start..end.max(start)) else {
        return Inspection::Invalid("header offsets out of range".into());
    };
    let Ok(value) = std::str::from_utf8(bytes) else {
        return Inspection::Invalid("header is not UTF-8".into());
    };
    match StampHeader::decode(value) {
        Ok(h) => Inspection::Stamped(Box::new(h)),
        Err(e) => Inspection::Invalid(e.to_string()),
    }
}

/// What the registry must hold for this header: the commitment itself (direct mode), or the
/// batch root the header's proof leads to from it (batched mode).
pub fn recorded_value(header: &StampHeader) -> Commitment {
    recorded_value_of(header, &header.commitment())
}

/// [`recorded_value`] for a field whose commitment is `commitment` (a hop's, docs/PROTOCOL.md
/// §5c, is not the one [`StampHeader::commitment`] computes): the commitment itself, or the
/// root its proof leads to.
pub fn recorded_value_of(header: &StampHeader, commitment: &Commitment) -> Commitment {
    match &header.mode {
        Mode::Direct => *commitment,
        Mode::Batch { proof, .. } => {
            crate::merkle::short(&crate::merkle::root_from_proof(commitment, proof))
        }
    }
}

/// One stamp to judge: its header, the commitment it claims is recorded, and the version whose
/// required families it is asked for. The one-stamp path ([`evaluate`]) and every level of a
/// hop chain (`crate::hops`) go through [`judge_stamp`] with one of these.
pub(crate) struct Claim<'a> {
    /// The decoded field.
    pub(crate) header: &'a StampHeader,
    /// What its record must hold (before a batch proof is applied).
    pub(crate) commitment: Commitment,
    /// The version deciding which required families must be stamped (§6 step 7).
    pub(crate) version: u32,
}

/// Lookup, comparison and decision for one stamp: the record's time when the chain holds the
/// claimed commitment (else the early report), then `components` (called only then: a stamp
/// without its record is not decomposed), the score, the verdict, the writer check.
pub(crate) fn judge_stamp(
    claim: &Claim<'_>,
    lookup: &Lookup,
    auth: &WriterAuth,
    policy: &Policy,
    now: Option<u64>,
    components: impl FnOnce() -> Vec<ComponentResult>,
) -> Report {
    let header = claim.header;
    let time = match recorded_time(header, &claim.commitment, lookup) {
        ControlFlow::Continue(time) => time,
        ControlFlow::Break(report) => return report,
    };
    let components = components();
    let score = score(&components);
    let replay = is_replay(policy, time, now);
    let (verdict, reason) =
        Findings::of(&components, header, claim.version, policy).judge(score, replay, policy);
    let (verdict, reason) = apply_writer_auth(verdict, reason, auth);
    let mut info = StampInfo::of(header);
    info.time = Some(time);
    Report {
        verdict,
        score: Some(score),
        reason,
        components,
        stamp: Some(info),
        writer_auth: Some(auth.clone()),
        chain: Vec::new(),
        author: None,
    }
}

/// Decides about a stamped message, given what the chain said about its record and what the
/// From domain's writer record said about its writer (DESIGN property 2): a valid stamp from a
/// writer the domain does not list is `spam`; from a domain that lists nobody it is at best
/// `suspect`; DNS trouble is `temperror` unless the message is spam anyway.
///
/// In stages: the record (`recorded_time`), the components (`compare`, `score`), the
/// verdict they give (`Findings::judge`), then the writer check (`apply_writer_auth`).
pub fn evaluate(
    msg: &Message<'_>,
    header: &StampHeader,
    env: &Envelope,
    lookup: &Lookup,
    auth: &WriterAuth,
    policy: &Policy,
    now: Option<u64>,
) -> Report {
    if let Some((verdict, reason)) = duplicate_fields(msg) {
        return Report::bare(verdict, reason, Some(header));
    }
    if let Some(report) = version_refused(header, policy) {
        return report;
    }
    let claim = Claim {
        header,
        commitment: header.commitment(),
        version: header.version(),
    };
    judge_stamp(&claim, lookup, auth, policy, now, || {
        compare(msg, header, env, policy)
    })
}

/// `invalid` when the stamp's version is below [`Policy::min_version`]: a receiver that
/// must not accept a stamp without the display name refuses version-1 stamps. Decided from
/// the header alone, so callers check it before they read the chain.
pub fn version_refused(header: &StampHeader, policy: &Policy) -> Option<Report> {
    let v = header.version();
    (v < policy.min_version).then(|| {
        Report::bare(
            Verdict::Invalid,
            format!(
                "stamp version {v} is below the lowest this receiver accepts ({}, verify.min_version)",
                policy.min_version
            ),
            Some(header),
        )
    })
}

/// The verdict a second copy of a field RFC 5322 allows once gives (docs/PROTOCOL.md §6 step
/// 1): `spam` for the fields a stamp compares (From, To, Cc, Subject, Date, Message-ID): the
/// verifier reads one copy and a mail client may show the other, which is the attack itself.
/// `invalid` for the others ([`component::SINGLE_FIELDS`]): the stamp never covers them, so a
/// second copy shows the message is malformed, not that a stamp was defeated.
pub fn duplicate_verdict(field: &str) -> Verdict {
    const COMPARED: [&str; 6] = ["From", "To", "Cc", "Subject", "Date", "Message-ID"];
    if COMPARED.iter().any(|f| f.eq_ignore_ascii_case(field)) {
        Verdict::Spam
    } else {
        Verdict::Invalid
    }
}

/// The verdict and reason when the top-level header section has more than one of a
/// [`component::SINGLE_FIELDS`] field (`spam` if any of them is a `spam` field, else
/// `invalid`), a From field with more than one mailbox (`spam`, like a second From), or a
/// MIME field or parameter twice ([`component::ambiguous_mime`], `spam`).
pub(crate) fn duplicate_fields(msg: &Message<'_>) -> Option<(Verdict, String)> {
    let authors = component::from_mailboxes(msg);
    if authors > 1 {
        return Some((
            Verdict::Spam,
            format!(
                "the From field lists {authors} mailboxes, more than one: the stamp covers the first, a mail client shows them all"
            ),
        ));
    }
    let mime = component::ambiguous_mime(msg);
    if !mime.is_empty() {
        return Some((
            Verdict::Spam,
            format!(
                "more than one {} (MIME allows one): the verifier and a mail client may read different bodies",
                mime.join(", ")
            ),
        ));
    }
    let twice = component::duplicate_fields(msg);
    let verdict = twice
        .iter()
        .map(|f| duplicate_verdict(f))
        .min_by_key(|v| *v != Verdict::Spam)?;
    Some((
        verdict,
        format!(
            "more than one {} field (RFC 5322 allows one): the verifier and a mail client may read different ones",
            twice.join(", ")
        ),
    ))
}

/// The lookup stage: the record's block time when the chain holds what the header claims,
/// else the final report (`temperror` when the chain cannot tell yet, `spam` when it holds
/// nothing or something else).
fn recorded_time(
    header: &StampHeader,
    claimed: &Commitment,
    lookup: &Lookup,
) -> ControlFlow<Report, u64> {
    let report = match lookup {
        Lookup::Found { commitment, time } if *commitment == recorded_value_of(header, claimed) => {
            return ControlFlow::Continue(*time);
        }
        Lookup::Found { time, .. } => {
            let mut r = Report::bare(
                Verdict::Spam,
                "header does not match the recorded commitment",
                Some(header),
            );
            if let Some(s) = &mut r.stamp {
                s.time = Some(*time);
            }
            r
        }
        Lookup::Unavailable(why) => Report::bare(
            Verdict::Temperror,
            format!("{CHAIN_UNAVAILABLE}: {why}"),
            Some(header),
        ),
        Lookup::Unconfirmed => {
            Report::bare(Verdict::Temperror, "record not confirmed yet", Some(header))
        }
        Lookup::NotFound => Report::bare(
            Verdict::Spam,
            "no record on chain for this stamp",
            Some(header),
        ),
        Lookup::NotFoundYet(why) => Report::bare(Verdict::Temperror, why.clone(), Some(header)),
    };
    ControlFlow::Break(report)
}

/// The weighted share of components that match or are explained; unavailable ones are not
/// scored, and nothing to score is a full score.
fn score(components: &[ComponentResult]) -> f64 {
    let (mut num, mut den) = (0u64, 0u64);
    for c in components {
        match c.status {
            Status::Match | Status::Explained => {
                num += u64::from(c.weight);
                den += u64::from(c.weight);
            }
            Status::Mismatch | Status::Missing | Status::Added => den += u64::from(c.weight),
            Status::Unavailable => {}
        }
    }
    if den == 0 {
        1.0
    } else {
        num as f64 / den as f64
    }
}

/// Whether a record from `time` is older than the policy allows at `now` (both known).
fn is_replay(policy: &Policy, time: u64, now: Option<u64>) -> bool {
    match (policy.max_age_secs, now) {
        (Some(max), Some(now)) => now > time.saturating_add(max),
        _ => false,
    }
}

/// The component results a verdict turns on, by name.
struct Findings<'a> {
    /// Components that differ, are missing or were added.
    differing: Vec<&'a str>,
    /// Required components that differ or are missing.
    required_bad: Vec<&'a str>,
    /// Required components that cannot be computed here.
    required_unknown: Vec<&'a str>,
    /// Required families the stamp does not cover.
    unstamped_required: Vec<&'static str>,
    /// What further processing explained, as `name: why`.
    explained: Vec<String>,
}

/// The names of the components `keep` accepts, in order.
fn names_where(
    components: &[ComponentResult],
    keep: impl Fn(&ComponentResult) -> bool,
) -> Vec<&str> {
    components
        .iter()
        .filter(|c| keep(c))
        .map(|c| c.name.as_str())
        .collect()
}

impl<'a> Findings<'a> {
    fn of(
        components: &'a [ComponentResult],
        header: &StampHeader,
        version: u32,
        policy: &Policy,
    ) -> Self {
        let required = |c: &ComponentResult| c.family.is_some_and(|f| policy.required.contains(&f));
        Self {
            differing: names_where(components, |c| {
                matches!(c.status, Status::Mismatch | Status::Missing | Status::Added)
            }),
            required_bad: names_where(components, |c| {
                matches!(c.status, Status::Mismatch | Status::Missing) && required(c)
            }),
            required_unknown: names_where(components, |c| {
                c.status == Status::Unavailable && required(c)
            }),
            // A stamp that leaves out a required family proves nothing about it: a writer
            // could stamp an empty list and have any content pass. A stamp of a version
            // before the family existed is not asked for it (it verifies as it always did).
            unstamped_required: policy
                .required
                .iter()
                .filter(|f| match f {
                    Family::Rcpt => header.rcpts.is_none(),
                    f if f.since() > version => false,
                    f => !header.names.iter().any(|n| n.family == **f),
                })
                .map(|f| f.as_str())
                .collect(),
            explained: components
                .iter()
                .filter(|c| c.status == Status::Explained)
                .map(|c| format!("{}: {}", c.name, c.note.as_deref().unwrap_or("benign")))
                .collect(),
        }
    }

    /// The verdict the components give, before the writer check, and why.
    fn judge(&self, score: f64, replay: bool, policy: &Policy) -> (Verdict, Option<String>) {
        let spam = |why: String| (Verdict::Spam, Some(why));
        if replay {
            return spam(format!(
                "stamp recorded more than {}s ago: replay",
                policy.max_age_secs.unwrap_or(0)
            ));
        }
        if !self.unstamped_required.is_empty() {
            return spam(format!(
                "required component not stamped: {}",
                self.unstamped_required.join(", ")
            ));
        }
        if !self.required_bad.is_empty() {
            return spam(format!(
                "required component differs: {}",
                self.required_bad.join(", ")
            ));
        }
        if self.differing.is_empty() && self.required_unknown.is_empty() {
            let reason = (!self.explained.is_empty())
                .then(|| format!("explained: {}", self.explained.join("; ")));
            return (Verdict::Wanted, reason);
        }
        if score >= policy.threshold {
            let mut why = Vec::new();
            if !self.differing.is_empty() {
                why.push(format!("differs: {}", self.differing.join(", ")));
            }
            if !self.required_unknown.is_empty() {
                why.push("recipients unknown".to_owned());
            }
            return (Verdict::Suspect, Some(why.join("; ")));
        }
        spam(format!(
            "score {score:.2} below threshold {:.2}; differs: {}",
            policy.threshold,
            self.differing.join(", ")
        ))
    }
}

/// Folds the writer check into a verdict reached from the components.
fn apply_writer_auth(
    verdict: Verdict,
    reason: Option<String>,
    auth: &WriterAuth,
) -> (Verdict, Option<String>) {
    let because = |what: &str| {
        let mut r = format!("{what}: {}", auth.detail());
        if let Some(old) = &reason {
            r.push_str("; ");
            r.push_str(old);
        }
        Some(r)
    };
    match (verdict, auth) {
        (_, WriterAuth::Pass(_)) | (Verdict::Spam, _) => (verdict, reason),
        (_, WriterAuth::Fail(_)) => (Verdict::Spam, because("unauthorised-writer")),
        (_, WriterAuth::TempError(_)) => (Verdict::Temperror, because("writer check failed")),
        (Verdict::Wanted | Verdict::Suspect, WriterAuth::None(_) | WriterAuth::PermError(_)) => (
            Verdict::Suspect,
            because("writer not authorised by the From domain"),
        ),
        (v, _) => (v, reason),
    }
}

pub(crate) fn selection_of(header: &StampHeader) -> Selection {
    let mut s: BTreeSet<Family> = header.names.iter().map(|n| n.family).collect();
    // The signature is cut from the first text part whether or not text is stamped.
    s.insert(Family::Signature);
    Selection(s)
}

fn compare(
    msg: &Message<'_>,
    header: &StampHeader,
    env: &Envelope,
    policy: &Policy,
) -> Vec<ComponentResult> {
    let got = component::decompose(msg, env, &selection_of(header));
    let rcpt = header
        .rcpts
        .as_ref()
        .map(|set| compare_rcpts(msg, header, env, set));
    compare_values(header, &got, None, rcpt, policy)
}

/// Compares the stamped components of `header` with the values `got` (the received message
/// decomposed, or what a hop chain makes of it once the changes of the hops above are undone,
/// `crate::hops`). `declared` is `None` for a stamp judged on its own: further processing
/// (§7) may explain what lists change. Below a hop it is the families the hops above set
/// aside, each with the note a difference in it gets (`explained`); nothing else is
/// explained there, since a hop declares what it changed (§5c). `rcpt` is the recipients'
/// result when `rcpt` was stamped.
pub(crate) fn compare_values(
    header: &StampHeader,
    got: &Decomposed,
    declared: Option<&BTreeMap<Family, String>>,
    rcpt: Option<(Status, Option<String>)>,
    policy: &Policy,
) -> Vec<ComponentResult> {
    let mut out = Vec::with_capacity(header.names.len() + 1);
    let result = |name: &ComponentName, status, note: Option<String>| ComponentResult {
        name: name.with_str(str::to_owned),
        family: Some(name.family),
        status,
        weight: policy.weight(name.family),
        note,
    };

    for (name, want) in header.names.iter().zip(&header.digests) {
        let (status, note) = match got.get(name) {
            None if name.family == Family::Origin => (
                Status::Unavailable,
                Some("client IP not known here".to_owned()),
            ),
            None => (Status::Missing, None),
            Some(v) if value_digest(&header.salt, name, v) == *want => (Status::Match, None),
            Some(v) => match declared {
                Some(aside) => match aside.get(&name.family) {
                    Some(note) => (Status::Explained, Some(note.clone())),
                    None => (Status::Mismatch, None),
                },
                None => match explain(header, name, v, want, got) {
                    Some(why) => (Status::Explained, Some(why.to_owned())),
                    None => (Status::Mismatch, None),
                },
            },
        };
        out.push(result(name, status, note));
    }

    // Items of a stamped indexed family beyond what was stamped were added on the way.
    for fam in [Family::Text, Family::Html, Family::Attachment] {
        if !header.names.iter().any(|n| n.family == fam) {
            continue;
        }
        let stamped: BTreeSet<&ComponentName> =
            header.names.iter().filter(|n| n.family == fam).collect();
        for (name, v) in got
            .values
            .iter()
            .filter(|(n, _)| n.family == fam && !stamped.contains(n))
        {
            let footer = declared.is_none()
                && fam == Family::Text
                && matches!(v, Value::Lines(l) if is_footer_sized(l));
            let (status, note) = if footer {
                (Status::Explained, Some("list footer part added".to_owned()))
            } else {
                (Status::Added, None)
            };
            out.push(result(name, status, note));
        }
    }

    if let Some((status, note)) = rcpt {
        out.push(result(&ComponentName::single(Family::Rcpt), status, note));
    }
    out
}

fn is_footer_sized(lines: &Lines) -> bool {
    lines.len() <= MAX_FOOTER_LINES
        && lines.iter().map(|l| l.len() + 1).sum::<usize>() <= MAX_FOOTER_BYTES
}

/// Further processing v1: benign changes that relays and lists make.
fn explain(
    header: &StampHeader,
    name: &ComponentName,
    got: &Value,
    want: &Digest,
    all: &Decomposed,
) -> Option<&'static str> {
    match (name.family, got) {
        (Family::Subject, Value::Bytes(b)) => {
            let s = std::str::from_utf8(b).ok()?;
            canon::subject_tag_cuts(s)
                .into_iter()
                .any(|rest| bytes_digest(&header.salt, name, rest.as_bytes()) == *want)
                .then_some("subject tag added by a list")
        }
        (Family::Text | Family::Signature, Value::Lines(lines)) => {
            // Try every cut point within the last MAX_FOOTER_LINES lines / MAX_FOOTER_BYTES.
            let mut removed = 0usize;
            for k in (0..lines.len()).rev() {
                removed += lines.get(k).map_or(0, str::len) + 1;
                if lines.len() - k > MAX_FOOTER_LINES || removed > MAX_FOOTER_BYTES {
                    break;
                }
                if bytes_digest(&header.salt, name, lines.prefix(k).as_bytes()) == *want {
                    return Some("footer appended by a list");
                }
            }
            None
        }
        (Family::Parts, Value::Bytes(_)) => {
            // Extra text parts at the end, each footer-sized, and nothing else changed.
            let stamped_text = header
                .names
                .iter()
                .filter(|n| n.family == Family::Text)
                .count();
            let extra: Vec<&Value> = all
                .values
                .iter()
                .filter(|(n, _)| n.family == Family::Text && usize::from(n.index) >= stamped_text)
                .map(|(_, v)| v)
                .collect();
            if stamped_text == 0 || all.counts.text <= stamped_text {
                return None;
            }
            if !extra
                .iter()
                .all(|v| matches!(v, Value::Lines(l) if is_footer_sized(l)))
            {
                return None;
            }
            let mut counts = all.counts;
            counts.text = stamped_text;
            (value_digest(&header.salt, name, &Value::Bytes(counts.value())) == *want)
                .then_some("list footer part added")
        }
        _ => None,
    }
}

/// Envelope recipients must all be stamped ones. Without an envelope we fall back on the
/// delivery trace headers the receiving MTA added (X-Original-To, Delivered-To), and then on
/// To/Cc, where one stamped address is enough (a Bcc copy lists nobody there).
pub(crate) fn compare_rcpts(
    msg: &Message<'_>,
    header: &StampHeader,
    env: &Envelope,
    set: &[[u8; 8]],
) -> (Status, Option<String>) {
    let (list, strict, source) = if !env.rcpts.is_empty() {
        (env.rcpts.clone(), true, "envelope")
    } else {
        let trace: Vec<String> = msg
            .headers()
            .iter()
            .filter(|h| {
                h.name().eq_ignore_ascii_case("X-Original-To")
                    || h.name().eq_ignore_ascii_case("Delivered-To")
            })
            .filter_map(|h| h.value().as_text().map(canon::address))
            .take(1)
            .collect();
        if !trace.is_empty() {
            (trace, true, "delivery headers")
        } else {
            let hdr = component::addresses(msg.all_to().chain(msg.all_cc()));
            (hdr.into_iter().collect(), false, "To/Cc headers")
        }
    };
    if list.is_empty() {
        return (
            Status::Unavailable,
            Some("no recipient known to check".to_owned()),
        );
    }
    let got = rcpt_digests(&header.salt, &list);
    let found = got.iter().filter(|d| set.binary_search(d).is_ok()).count();
    let ok = if strict {
        found == got.len()
    } else {
        found > 0
    };
    let note = format!("checked against {source}");
    if ok {
        (Status::Match, Some(note))
    } else {
        (
            Status::Mismatch,
            Some(format!("{note}: not a stamped recipient")),
        )
    }
}
