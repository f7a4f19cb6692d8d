// SPDX-License-Identifier: GPL-3.0-or-later
//! Hops: forwarding and mailing lists (docs/PROTOCOL.md §5c). Owns the hop field (`v=3`), the
//! named transformations a hop declares and their undo, the ordered chain of every
//! `Mail-Stamp:` field of a message, preparing a hop for a forwarder or list, and judging a
//! chain with one lookup and one writer check per field.
//!
//! A chain is read bottom-up: level 0 is the originator's stamp (a v1/v2 field, the lowest
//! `Mail-Stamp:` in the header section), level k the hop with `i=k+1`. Every level is judged
//! by the one-stamp code of [`crate::verify`]; what this module adds is what each level is
//! compared with: the top hop with the message and envelope as received, every level below
//! it with the message once the changes declared above it are undone, and, instead of the
//! envelope, the address the hop above says it received the message for.
//!
//! # Using it
//!
//! A forwarder calls [`prepare_hop`] on the message as it sends it, records the returned
//! commitment under the returned token (directly or in a batch, as any stamp) and puts the
//! field on with [`insert_hop`]. A receiver calls [`inspect_chain`]; for every level `k` it
//! looks up the record of [`Chain::stamp`]`(k)` (writer and token, or batch id) — it must hold
//! [`Chain::recorded_values`]`()[k]` — and checks that level's writer for
//! [`Chain::auth_domains`]`()[k]`; then [`evaluate_chain`] decides.
//!
//! ```
//! use mailstamp_core::hops::{Change, ChainInspection, HopSpec, LevelInputs, insert_hop};
//! use mailstamp_core::{ChainRef, Envelope, Lookup, Policy, Selection, Verdict, WriterAuth};
//! use mailstamp_core::{evaluate_chain, insert_header, inspect_chain, parse, prepare, prepare_hop};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let raw = b"From: Alice <alice@a.example>\nTo: bob@b.example\nSubject: hi\n\
//!     Date: Tue, 1 Dec 2026 10:00:00 +0000\nMessage-ID: <1@a.example>\n\nHello Bob\n";
//! let env = |a: &str| Envelope { rcpts: vec![a.into()], client_ip: None };
//! // a.example stamps for bob@b.example.
//! let a = ChainRef { chain_id: 1, registry: [1; 20], writer: [2; 20] };
//! let origin = prepare(&parse(raw).unwrap(), &env("bob@b.example"), [7; 16], &a, &Selection::all())?;
//! let stamped = insert_header(raw, &origin.header);
//! // b.example forwards it to bob@forward.example under a hop of its own.
//! let b = ChainRef { writer: [3; 20], ..a };
//! let spec = HopSpec { changes: &[Change::Trace], domain: "b.example", received_for: "bob@b.example" };
//! let sent = parse(&stamped).unwrap();
//! let hop = prepare_hop(&sent, &env("bob@forward.example"), [8; 16], &b, &Selection::all(), &spec)?;
//! let received = insert_hop(&stamped, &hop.field);
//! // forward.example walks the chain: one lookup and one writer check per level.
//! let msg = parse(&received).unwrap();
//! let ChainInspection::Chain(chain) = inspect_chain(&msg) else { panic!("a chain") };
//! assert_eq!(chain.recorded_values(), [origin.commitment, hop.commitment]);
//! assert_eq!(chain.auth_domains(&msg), ["a.example", "b.example"]);
//! let lookups = [origin.commitment, hop.commitment].map(|commitment| Lookup::Found { commitment, time: 0 });
//! let auths = [(), ()].map(|_| WriterAuth::Pass("listed".into()));
//! let inputs = LevelInputs { lookups: &lookups, auths: &auths };
//! let r = evaluate_chain(&msg, &chain, &env("bob@forward.example"), &inputs, &Policy::default(), None);
//! assert_eq!(r.verdict, Verdict::Wanted);
//! assert_eq!(r.reason.as_deref(), Some("forwarded by b.example, author alice@a.example verified there"));
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use mail_parser::Message;
use serde::{Deserialize, Serialize};

use crate::canon::{self, Lines};
use crate::component::{self, Decomposed, Envelope, Selection, Value};
use crate::digest::{self, Commitment, HopInput, PrevInput, Salt};
use crate::header::{self, FIELD_NAME, HOP_VERSION, HeaderError, Mode, StampHeader};
use crate::hex0x;
use crate::name::{ComponentName, Family};
use crate::stamp::{self, ChainRef, StampError};
use crate::verify::{
    self, Claim, ComponentResult, Lookup, Policy, Report, Status, Verdict, judge_stamp,
};
use crate::writers::WriterAuth;

/// Most `Mail-Stamp:` fields a chain may have, the originator's included: seven hops.
pub const MAX_FIELDS: usize = 8;
/// Most transformations one hop may declare (one of each kind).
pub const MAX_CHANGES: usize = 8;
/// Longest subject tag a hop may declare (bytes, as decoded).
pub const MAX_TAG_LEN: usize = 64;

/// Why a hop field or a chain of fields is not well formed: the message is `invalid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HopError {
    /// A tag the hop shares with every stamp (§2) is wrong.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// A hop tag is missing.
    #[error("hop tag `{0}` is missing")]
    Missing(&'static str),
    /// A hop tag's value is not what §5c allows.
    #[error("hop tag `{tag}`: {why}")]
    BadValue {
        /// The tag.
        tag: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// Why the `Mail-Stamp:` fields of a message do not form a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// More fields than [`MAX_FIELDS`].
    #[error("{0} {FIELD_NAME} fields, more than the {MAX_FIELDS} a chain may have")]
    TooMany(usize),
    /// The field at `position` (1 = topmost) does not decode.
    #[error("{FIELD_NAME} field {position} from the top: {error}")]
    Field {
        /// 1 for the topmost field.
        position: usize,
        /// Why.
        error: HopError,
    },
    /// The lowest field is a hop, or a field above it is not.
    #[error("{FIELD_NAME} field {position} from the top: {why}")]
    Order {
        /// 1 for the topmost field.
        position: usize,
        /// What is wrong.
        why: String,
    },
    /// A hop does not cite the field directly below it.
    #[error(
        "hop i={index} cites a record that is not the {FIELD_NAME} field below it ({what} differs)"
    )]
    Reference {
        /// The hop's index.
        index: u8,
        /// Which part of the reference differs.
        what: &'static str,
    },
    /// A field's raw bytes are not readable text.
    #[error("{FIELD_NAME} field {0} from the top is not UTF-8 or out of range")]
    Unreadable(usize),
}

fn bad(tag: &'static str, why: impl Into<String>) -> HopError {
    HopError::BadValue {
        tag,
        why: why.into(),
    }
}

/// Where the author's address is kept when a list rewrites From (DMARC mitigation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AuthorField {
    /// `Reply-To:` (Mailman's `from_is_list = munge_from`).
    ReplyTo,
    /// `X-Original-From:`.
    XOriginalFrom,
}

impl AuthorField {
    /// The header field name.
    pub fn field(self) -> &'static str {
        match self {
            AuthorField::ReplyTo => "Reply-To",
            AuthorField::XOriginalFrom => "X-Original-From",
        }
    }

    fn token(self) -> &'static str {
        match self {
            AuthorField::ReplyTo => "reply-to",
            AuthorField::XOriginalFrom => "x-original-from",
        }
    }
}

/// A transformation a hop declares it made (tag `t`, docs/PROTOCOL.md §5c). Each kind at most
/// once per hop; the receiver undoes or sets aside exactly these, and a declared change the
/// message does not show is a mismatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// `subject-tag/<base64>`: this tag (canonical text, 1–64 bytes) and one space were put
    /// in front of the subject.
    SubjectTag(String),
    /// `footer/<n>`: `n` canonical lines (1–24) were appended to the last text part.
    Footer(u8),
    /// `footer-part`: one text part was appended after the last one.
    FooterPart,
    /// `from/<field>`: From was rewritten to the hop's own address; the author's mailbox is
    /// in `field`.
    FromRewritten(AuthorField),
    /// `reply-to`: Reply-To was added or replaced (no stamped family covers it).
    ReplyTo,
    /// `reencode`: transfer encodings or charsets changed (canonicalised away).
    Reencoded,
    /// `trace`: trace or list header fields were added (never components).
    Trace,
}

impl Change {
    /// The encoding in tag `t`.
    pub fn encode(&self) -> String {
        match self {
            Change::SubjectTag(t) => format!("subject-tag/{}", B64.encode(t)),
            Change::Footer(n) => format!("footer/{n}"),
            Change::FooterPart => "footer-part".into(),
            Change::FromRewritten(f) => format!("from/{}", f.token()),
            Change::ReplyTo => "reply-to".into(),
            Change::Reencoded => "reencode".into(),
            Change::Trace => "trace".into(),
        }
    }

    /// Decodes one item of tag `t`, strictly (the encoding must be the canonical one).
    pub fn parse(s: &str) -> Result<Self, HopError> {
        let (kind, arg) = match s.split_once('/') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        let change = match (kind, arg) {
            ("subject-tag", Some(a)) => Change::SubjectTag(subject_tag_arg(a)?),
            ("footer", Some(a)) => Change::Footer(footer_arg(a)?),
            ("footer-part", None) => Change::FooterPart,
            ("from", Some("reply-to")) => Change::FromRewritten(AuthorField::ReplyTo),
            ("from", Some("x-original-from")) => Change::FromRewritten(AuthorField::XOriginalFrom),
            ("reply-to", None) => Change::ReplyTo,
            ("reencode", None) => Change::Reencoded,
            ("trace", None) => Change::Trace,
            _ => return Err(bad("t", format!("unknown change `{}`", trunc(s)))),
        };
        Ok(change)
    }

    /// The kind, for the once-per-hop rule (a footer of 2 lines and one of 3 are one kind).
    fn kind(&self) -> std::mem::Discriminant<Self> {
        std::mem::discriminant(self)
    }

    /// Whether this is what a mailing list does (for the report: "via list" rather than
    /// "forwarded by").
    fn is_list(&self) -> bool {
        matches!(
            self,
            Change::SubjectTag(_)
                | Change::Footer(_)
                | Change::FooterPart
                | Change::FromRewritten(_)
        )
    }
}

fn trunc(s: &str) -> String {
    s.chars().take(32).collect()
}

fn subject_tag_arg(a: &str) -> Result<String, HopError> {
    let raw = B64
        .decode(a)
        .map_err(|e| bad("t", format!("subject tag is not base64: {e}")))?;
    let tag = String::from_utf8(raw).map_err(|_| bad("t", "subject tag is not UTF-8"))?;
    if tag.is_empty() || tag.len() > MAX_TAG_LEN || canon::collapse_whitespace(&tag) != tag {
        return Err(bad(
            "t",
            format!("subject tag must be 1-{MAX_TAG_LEN} bytes of canonical text"),
        ));
    }
    Ok(tag)
}

fn footer_arg(a: &str) -> Result<u8, HopError> {
    let n: u8 = a
        .parse()
        .map_err(|_| bad("t", "footer line count is not a number"))?;
    if n == 0 || usize::from(n) > verify::MAX_FOOTER_LINES || n.to_string() != a {
        return Err(bad(
            "t",
            format!(
                "footer line count must be 1-{} without leading zeros",
                verify::MAX_FOOTER_LINES
            ),
        ));
    }
    Ok(n)
}

/// The changes as tag `t` writes them: comma-separated, in the hop's order.
pub fn encode_changes(changes: &[Change]) -> String {
    changes
        .iter()
        .map(Change::encode)
        .collect::<Vec<_>>()
        .join(",")
}

/// Decodes tag `t`: at most [`MAX_CHANGES`] items, each kind at most once.
pub fn decode_changes(t: &str) -> Result<Vec<Change>, HopError> {
    let mut out: Vec<Change> = Vec::new();
    if t.is_empty() {
        return Ok(out);
    }
    for item in t.split(',') {
        let c = Change::parse(item)?;
        if out.iter().any(|o| o.kind() == c.kind()) {
            return Err(bad("t", format!("change `{}` declared twice", trunc(item))));
        }
        out.push(c);
        if out.len() > MAX_CHANGES {
            return Err(bad("t", format!("more than {MAX_CHANGES} changes")));
        }
    }
    Ok(out)
}

/// The record a hop cites: enough to find it (chain, registry, writer, token or batch id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrevRef {
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// Registry.
    pub registry: [u8; 20],
    /// Writer.
    pub writer: [u8; 20],
    /// Whether the record is a batch anchor: then `key` is the batch id, else the token.
    pub batched: bool,
    /// The registry key.
    pub key: [u8; 32],
}

impl PrevRef {
    /// The reference to the record of `h`.
    pub fn of(h: &StampHeader) -> Self {
        let (batched, key) = match &h.mode {
            Mode::Direct => (false, h.token()),
            Mode::Batch { batch, .. } => (true, *batch),
        };
        Self {
            chain_id: h.chain_id,
            registry: h.registry,
            writer: h.writer,
            batched,
            key,
        }
    }

    /// Which part differs from `other`, if any (for the error naming it).
    fn differs(&self, other: &Self) -> Option<&'static str> {
        if self.chain_id != other.chain_id {
            Some("chain")
        } else if self.registry != other.registry {
            Some("registry")
        } else if self.writer != other.writer {
            Some("writer")
        } else if self.batched != other.batched {
            Some("mode")
        } else if self.key != other.key {
            Some("token or batch id")
        } else {
            None
        }
    }
}

/// A decoded hop field (`v=3`): a stamp of its own over the message as the hop sent it, plus
/// what ties it to the stamp below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopField {
    /// `i`: 2 for the first hop after the originator.
    pub index: u8,
    /// The hop's own stamp: its record, salt, components and new envelope recipients.
    pub stamp: StampHeader,
    /// `pc`, `pr`, `pw`, `pm`, `pk`: the record of the field below.
    pub prev: PrevRef,
    /// `dom`: the hop's own domain; its writer record must list `stamp.writer`.
    pub domain: String,
    /// `a`: the address the hop received the message for (canonical, at `domain` or a
    /// subdomain of it); its rcpt digest under the salt of the field below must be among that
    /// field's `e`.
    pub received_for: String,
    /// `t`: what the hop changed.
    pub changes: Vec<Change>,
}

impl HopField {
    /// The commitment of this hop given the commitment of the field below (§5c): what its
    /// record holds (directly, or as a leaf of its batch).
    pub fn commitment(&self, prev_commitment: &Commitment) -> Commitment {
        let token = self.stamp.token();
        let changes = encode_changes(&self.changes);
        let hop = HopInput {
            index: self.index,
            prev: PrevInput {
                chain_id: self.prev.chain_id,
                registry: &self.prev.registry,
                writer: &self.prev.writer,
                batched: self.prev.batched,
                key: &self.prev.key,
                commitment: prev_commitment,
            },
            domain: &self.domain,
            received_for: &self.received_for,
            changes: &changes,
        };
        digest::hop_commitment(&self.stamp.commit_input(&token), &hop)
    }

    fn tags(&self) -> Vec<(&'static str, String)> {
        let mut tags = vec![
            ("v", HOP_VERSION.to_string()),
            ("i", self.index.to_string()),
        ];
        tags.extend(self.stamp.tags().into_iter().filter(|(t, _)| *t != "v"));
        tags.extend([
            ("pc", self.prev.chain_id.to_string()),
            ("pr", hex0x::encode(&self.prev.registry)),
            ("pw", hex0x::encode(&self.prev.writer)),
            ("pm", if self.prev.batched { "b" } else { "d" }.to_owned()),
            ("pk", hex0x::encode(&self.prev.key)),
            ("dom", self.domain.clone()),
            ("a", self.received_for.clone()),
        ]);
        if !self.changes.is_empty() {
            tags.push(("t", encode_changes(&self.changes)));
        }
        tags
    }

    /// The field value on one line.
    pub fn value(&self) -> String {
        self.tags()
            .iter()
            .map(|(t, v)| format!("{t}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The field value folded as every `Mail-Stamp:` field is (§2).
    pub fn folded_value(&self, eol: &str) -> String {
        header::fold(&self.tags(), eol)
    }

    /// Decodes a hop field value: the tags of §2 as any stamp (strict, bounded), `v=3`, and
    /// the hop tags of §5c, all required but `t`; a hop must stamp its envelope (`e`).
    pub fn decode(value: &str) -> Result<Self, HopError> {
        let (stamp, rest) = header::decode_with(value, true)?;
        if stamp.rcpts.is_none() {
            return Err(bad("e", "a hop must stamp its envelope recipients"));
        }
        let tag = |name: &'static str| -> Option<&Cow<'_, str>> {
            rest.iter().find(|(t, _)| *t == name).map(|(_, v)| v)
        };
        let need = |name: &'static str| tag(name).ok_or(HopError::Missing(name));
        let index = index_tag(need("i")?)?;
        let prev = PrevRef {
            chain_id: header::chain_id_tag(need("pc")?)?,
            registry: header::address_tag("pr", need("pr")?.clone())?,
            writer: header::address_tag("pw", need("pw")?.clone())?,
            batched: mode_tag(need("pm")?)?,
            key: key_tag(need("pk")?)?,
        };
        let domain = domain_tag(need("dom")?)?;
        let received_for = received_for_tag(need("a")?, &domain)?;
        let changes = tag("t").map_or(Ok(Vec::new()), |t| decode_changes(t))?;
        Ok(Self {
            index,
            stamp,
            prev,
            domain,
            received_for,
            changes,
        })
    }
}

fn index_tag(i: &str) -> Result<u8, HopError> {
    let max = MAX_FIELDS as u8;
    match i.parse::<u8>() {
        Ok(n) if (2..=max).contains(&n) && n.to_string() == i => Ok(n),
        _ => Err(bad("i", format!("hop index must be 2-{max}"))),
    }
}

fn mode_tag(m: &str) -> Result<bool, HopError> {
    match m {
        "d" => Ok(false),
        "b" => Ok(true),
        _ => Err(bad("pm", "must be d or b")),
    }
}

fn key_tag(k: &str) -> Result<[u8; 32], HopError> {
    k.strip_prefix("0x")
        .filter(|h| h.len() == 64)
        .and_then(|h| hex::decode(h).ok())
        .map(|b| header::array::<32>(&b))
        .ok_or_else(|| bad("pk", "must be 0x and 64 hex digits"))
}

/// `dom`: a lower-case DNS name, at most 253 bytes, labels of 1–63 letters, digits, `-`.
fn domain_tag(d: &str) -> Result<String, HopError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if d.is_empty() || d.len() > 253 || !d.split('.').all(label_ok) {
        return Err(bad("dom", "must be a lower-case domain name"));
    }
    Ok(d.to_owned())
}

/// `a`: a canonical address (lower case, no white space, `;` or `,`, at most 254 bytes) whose
/// domain is `dom` or a subdomain of it: a hop forwards only what it received at its own
/// domain, and says for which address, so the receiver can check both (§5c).
fn received_for_tag(a: &str, dom: &str) -> Result<String, HopError> {
    let plain = |b: u8| !b.is_ascii_whitespace() && b != b';' && b != b',';
    if a.is_empty() || a.len() > 254 || !a.bytes().all(plain) || crate::canon::address(a) != a {
        return Err(bad("a", "must be one canonical address"));
    }
    let (_, at) = canon::split_address(a);
    let own = at == dom || at.strip_suffix(dom).is_some_and(|sub| sub.ends_with('.'));
    if !a.contains('@') || !own {
        return Err(bad(
            "a",
            format!("`{}` is not an address at {dom}", trunc(a)),
        ));
    }
    Ok(a.to_owned())
}

/// Every `Mail-Stamp:` field of a message as an ordered chain: the originator's stamp and the
/// hops above it, bottom-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Level 0: the originator's stamp (v1 or v2).
    pub origin: StampHeader,
    /// Levels 1…: `hops[k]` has `i = k + 2`.
    pub hops: Vec<HopField>,
}

impl Chain {
    /// How many fields (levels).
    pub fn len(&self) -> usize {
        1 + self.hops.len()
    }

    /// Always false: a chain has its originator.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The stamp of level `k` (0 = originator).
    pub fn stamp(&self, k: usize) -> Option<&StampHeader> {
        match k {
            0 => Some(&self.origin),
            k => self.hops.get(k - 1).map(|h| &h.stamp),
        }
    }

    /// The commitment of every level, bottom-up: what each record must hold (before a batch
    /// proof). The caller looks each one up under its stamp's writer and token or batch id.
    pub fn commitments(&self) -> Vec<Commitment> {
        let mut out = vec![self.origin.commitment()];
        for hop in &self.hops {
            let below = out[out.len() - 1];
            out.push(hop.commitment(&below));
        }
        out
    }

    /// What the registry must hold for every level: [`Chain::commitments`], or the batch root
    /// each one's proof leads to.
    pub fn recorded_values(&self) -> Vec<Commitment> {
        self.commitments()
            .iter()
            .enumerate()
            .filter_map(|(k, c)| Some(verify::recorded_value_of(self.stamp(k)?, c)))
            .collect()
    }

    /// The domain whose writer record must list each level's writer, bottom-up: for a hop its
    /// `dom`, for the originator the domain of the author's From as the walk recovers it (the
    /// received From, or where a hop that rewrote From says it kept the author).
    pub fn auth_domains(&self, msg: &Message<'_>) -> Vec<String> {
        let origin = if self.hops.is_empty() {
            // No hop: the From as received, without decomposing the whole message.
            let from = component::from_address(msg);
            canon::split_address(&from).1.to_owned()
        } else {
            walk(msg, self).origin_domain
        };
        let mut out = vec![origin];
        out.extend(self.hops.iter().map(|h| h.domain.clone()));
        out
    }
}

/// What [`inspect_chain`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainInspection {
    /// No `Mail-Stamp:` field.
    Unstamped,
    /// The fields do not form a chain, and why: the verdict is `invalid`.
    Invalid(ChainError),
    /// A well-formed chain (of one field, for a message nobody forwarded with a hop).
    Chain(Box<Chain>),
}

/// Decodes every `Mail-Stamp:` field of `msg` (topmost first in the header section) into a
/// chain: at most [`MAX_FIELDS`], the lowest a v1/v2 stamp, the one above it `i=2`, and so on
/// up, each hop citing the field directly below it. Counted before anything is decoded.
pub fn inspect_chain(msg: &Message<'_>) -> ChainInspection {
    let fields: Vec<_> = msg
        .headers()
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case(FIELD_NAME))
        .collect();
    if fields.is_empty() {
        return ChainInspection::Unstamped;
    }
    if fields.len() > MAX_FIELDS {
        return ChainInspection::Invalid(ChainError::TooMany(fields.len()));
    }
    let raw = msg.raw_message();
    let mut values = Vec::with_capacity(fields.len());
    for (i, h) in fields.iter().enumerate() {
        let (start, end) = (h.offset_start() as usize, h.offset_end() as usize);
        match raw
            .get(start..end.max(start))
            .and_then(|b| std::str::from_utf8(b).ok())
        {
            Some(v) => values.push(v),
            None => return ChainInspection::Invalid(ChainError::Unreadable(i + 1)),
        }
    }
    match chain_of(&values) {
        Ok(c) => ChainInspection::Chain(Box::new(c)),
        Err(e) => ChainInspection::Invalid(e),
    }
}

/// The chain of field values given topmost first.
pub fn chain_of(values: &[&str]) -> Result<Chain, ChainError> {
    let n = values.len();
    if n > MAX_FIELDS {
        return Err(ChainError::TooMany(n));
    }
    let Some(lowest) = values.last() else {
        return Err(ChainError::Order {
            position: 0,
            why: "no field".into(),
        });
    };
    let origin = StampHeader::decode(lowest).map_err(|e| ChainError::Field {
        position: n,
        error: if HopField::decode(lowest).is_ok() {
            bad(
                "v",
                "the lowest field is a hop: the stamp it forwards is missing",
            )
        } else {
            HopError::Header(e)
        },
    })?;
    let mut chain = Chain {
        origin,
        hops: Vec::with_capacity(n - 1),
    };
    for (k, value) in values[..n - 1].iter().rev().enumerate() {
        let position = n - 1 - k;
        let hop = HopField::decode(value).map_err(|error| ChainError::Field { position, error })?;
        let want = (k + 2) as u8;
        if hop.index != want {
            return Err(ChainError::Order {
                position,
                why: format!(
                    "hop index i={} where i={want} belongs (indices count up from the lowest field)",
                    hop.index
                ),
            });
        }
        let below = chain.stamp(k).map(PrevRef::of);
        if let Some(what) = below.and_then(|b| hop.prev.differs(&b)) {
            return Err(ChainError::Reference { index: want, what });
        }
        chain.hops.push(hop);
    }
    Ok(chain)
}

/// What one level is compared with: the message's components once the changes of every hop
/// above it are undone, the families set aside, and why a declared change is not there.
#[derive(Debug, Clone, Default)]
struct View {
    got: Decomposed,
    aside: BTreeMap<Family, String>,
    /// The first declared change the message does not show, as the verdict's reason.
    broken: Option<String>,
}

/// The view of every level (index k = level k; the top one is the message as received), and
/// the originator's From domain as recovered.
struct Walk {
    views: Vec<View>,
    origin_domain: String,
}

/// Undoes, from the top down, the changes each hop declared, starting from the received
/// message decomposed with every family (no envelope, no client IP: neither applies below a
/// hop, `origin` is then `unavailable`).
fn walk(msg: &Message<'_>, chain: &Chain) -> Walk {
    let full = component::decompose(msg, &Envelope::default(), &Selection::all());
    let mut view = View {
        got: full,
        ..View::default()
    };
    let mut views = vec![View::default(); chain.len()];
    views[chain.len() - 1] = view.clone();
    for (k, hop) in chain.hops.iter().enumerate().rev() {
        for change in &hop.changes {
            if view.broken.is_some() {
                break;
            }
            if let Err(why) = undo(change, &mut view, msg, hop) {
                view.broken = Some(format!("hop i={} ({}): {why}", hop.index, hop.domain));
            }
        }
        views[k] = view.clone();
    }
    let origin_domain = match view.got.get(&ComponentName::single(Family::From)) {
        Some(v) => canon::split_address(&String::from_utf8_lossy(v.canonical_slice()))
            .1
            .to_owned(),
        None => String::new(),
    };
    Walk {
        views,
        origin_domain,
    }
}

/// Undoes one declared change in `view`, or says why the message does not show it.
fn undo(change: &Change, view: &mut View, msg: &Message<'_>, hop: &HopField) -> Result<(), String> {
    match change {
        Change::SubjectTag(tag) => undo_subject_tag(view, tag),
        Change::Footer(n) => undo_footer(view, usize::from(*n)),
        Change::FooterPart => undo_footer_part(view),
        Change::FromRewritten(field) => undo_from(view, msg, hop.index, &hop.domain, *field),
        Change::ReplyTo => {
            let has = msg
                .headers()
                .iter()
                .any(|h| h.name().eq_ignore_ascii_case("Reply-To"));
            has.then_some(())
                .ok_or_else(|| "declares Reply-To added, but there is none".to_owned())
        }
        Change::Reencoded | Change::Trace => Ok(()),
    }
}

fn set(view: &mut View, name: ComponentName, value: Value) {
    match view.got.values.iter_mut().find(|(n, _)| *n == name) {
        Some((_, v)) => *v = value,
        None => view.got.values.push((name, value)),
    }
}

fn bytes_of(view: &View, family: Family) -> String {
    view.got
        .get(&ComponentName::single(family))
        .map(|v| String::from_utf8_lossy(v.canonical_slice()).into_owned())
        .unwrap_or_default()
}

fn undo_subject_tag(view: &mut View, tag: &str) -> Result<(), String> {
    let subject = bytes_of(view, Family::Subject);
    let rest = subject
        .strip_prefix(tag)
        .filter(|r| r.is_empty() || r.starts_with(' '))
        .ok_or_else(|| {
            format!("declares subject tag `{tag}`, but the subject does not start with it")
        })?;
    let value = Value::Bytes(rest.trim_start().as_bytes().to_vec());
    set(view, ComponentName::single(Family::Subject), value);
    Ok(())
}

/// The index of the last text part the view holds, if any.
fn last_text(view: &View) -> Option<u8> {
    view.got
        .values
        .iter()
        .filter(|(n, _)| n.family == Family::Text)
        .map(|(n, _)| n.index)
        .max()
}

fn lines_of(view: &View, name: &ComponentName) -> Lines {
    match view.got.get(name) {
        Some(Value::Lines(l)) => l.clone(),
        _ => Lines::default(),
    }
}

/// Removes the last `n` canonical lines of the last text part. The first text part's
/// signature block is cut from it (§3), so for it the part is put together again (text,
/// `--`, signature), cut, and split anew.
fn undo_footer(view: &mut View, n: usize) -> Result<(), String> {
    let idx = last_text(view).ok_or("declares a footer, but there is no text part")?;
    let name = ComponentName {
        family: Family::Text,
        index: idx,
    };
    let sig_name = ComponentName::single(Family::Signature);
    let text = lines_of(view, &name);
    let sig = if idx == 0 {
        lines_of(view, &sig_name)
    } else {
        Lines::default()
    };
    let mut all: Vec<&str> = text.iter().collect();
    if !sig.is_empty() {
        all.push("--");
        all.extend(sig.iter());
    }
    if all.len() <= n {
        return Err(format!(
            "declares a footer of {n} lines, but the last text part has only {}",
            all.len()
        ));
    }
    let mut kept = Lines::from_lines(&all[..all.len() - n]);
    if idx == 0 {
        let sig = kept.split_signature();
        set(view, sig_name, Value::Lines(sig));
    }
    set(view, name, Value::Lines(kept));
    Ok(())
}

/// Drops the last text part and counts one text part fewer in `parts`.
fn undo_footer_part(view: &mut View) -> Result<(), String> {
    if view.got.counts.text == 0 {
        return Err("declares a footer part, but the message has no text part".into());
    }
    view.got.counts.text -= 1;
    let last = view.got.counts.text;
    view.got
        .values
        .retain(|(n, _)| !(n.family == Family::Text && usize::from(n.index) == last));
    let parts = Value::Bytes(view.got.counts.value());
    set(view, ComponentName::single(Family::Parts), parts);
    Ok(())
}

/// Puts the author back into the From families: address from `field` (it must match the
/// originator's `from`), display name from there too, set aside when it differs (a list
/// shows `Alice via List`). The hop must stamp for the domain it rewrote From to.
fn undo_from(
    view: &mut View,
    msg: &Message<'_>,
    index: u8,
    domain: &str,
    field: AuthorField,
) -> Result<(), String> {
    let sent_from = bytes_of(view, Family::From);
    let sent_domain = canon::split_address(&sent_from).1;
    if sent_domain != domain {
        return Err(format!(
            "declares From rewritten, but From is at {sent_domain}, not at its own domain {domain}"
        ));
    }
    let (address, name) = author_in(msg, field).ok_or_else(|| {
        format!(
            "declares the author kept in {}, but there is no address there",
            field.field()
        )
    })?;
    let (local, domain) = canon::split_address(&address);
    let (local, domain) = (local.to_owned(), domain.to_owned());
    set(
        view,
        ComponentName::single(Family::From),
        Value::Bytes(address.into_bytes()),
    );
    set(
        view,
        ComponentName::single(Family::FromLocal),
        Value::Bytes(local.into_bytes()),
    );
    set(
        view,
        ComponentName::single(Family::FromDomain),
        Value::Bytes(domain.into_bytes()),
    );
    set(
        view,
        ComponentName::single(Family::FromName),
        Value::Bytes(name.into_bytes()),
    );
    view.aside.insert(
        Family::FromName,
        format!("set aside: From rewritten by hop i={index} ({sent_from})"),
    );
    Ok(())
}

/// The first mailbox of the author field, canonical address and display name, parsed as an
/// address field (mail-parser's own address parser, whatever the field's name).
fn author_in(msg: &Message<'_>, field: AuthorField) -> Option<(String, String)> {
    let raw = msg.header_raw(field.field())?;
    let line = format!("From:{raw}\n\n");
    let parsed = mail_parser::MessageParser::default().parse(line.as_bytes())?;
    let first = parsed.from()?.first()?;
    let address = canon::address(first.address()?);
    let name = first
        .name()
        .map(canon::collapse_whitespace)
        .unwrap_or_default();
    (!address.is_empty()).then_some((address, name))
}

/// One level's outcome in a [`ChainReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelReport {
    /// 1 for the originator, then the hop index.
    pub index: u8,
    /// The domain its writer was checked for.
    pub domain: String,
    /// The changes it declared (`t` items), empty for the originator.
    pub changes: Vec<Change>,
    /// Its own verdict, components and record.
    pub report: Report,
}

/// The outcome of verifying a message by its whole chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainReport {
    /// The verdict for the message: the worst of the levels'.
    pub verdict: Verdict,
    /// Why, in a few words: the path for a good chain, the failing level's reason otherwise.
    pub reason: Option<String>,
    /// The author (the originator's stamped From address), when it verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Every level, bottom-up (the originator first).
    pub levels: Vec<LevelReport>,
}

impl ChainReport {
    /// The chain's outcome as one [`Report`], for callers that handle every message alike
    /// (the milter's headers, `verify --json`): the top level's components, record and
    /// writer check, the whole chain's verdict and reason, and every level in
    /// [`Report::chain`]. A chain refused as a whole (no levels) is a bare report.
    pub fn into_report(self) -> Report {
        let levels: Vec<verify::ChainLevel> = self
            .levels
            .iter()
            .map(|l| verify::ChainLevel {
                index: l.index,
                domain: l.domain.clone(),
                changes: l.changes.iter().map(Change::encode).collect(),
                verdict: l.report.verdict,
                reason: l.report.reason.clone(),
                stamp: l.report.stamp.clone(),
            })
            .collect();
        let mut report = match self.levels.into_iter().last() {
            Some(top) => top.report,
            None => Report::bare(self.verdict, String::new(), None),
        };
        report.verdict = self.verdict;
        report.reason = self.reason;
        if levels.len() > 1 {
            report.chain = levels;
            report.author = self.author;
        }
        report
    }
}

/// What [`evaluate_chain`] needs per level, bottom-up, in [`Chain`] order.
pub struct LevelInputs<'a> {
    /// What the chain said about each level's record.
    pub lookups: &'a [Lookup],
    /// The writer check of each level, for the domain [`Chain::auth_domains`] names.
    pub auths: &'a [WriterAuth],
}

/// Judges a chain (docs/PROTOCOL.md §5c "Receiver walk"): the top level like any stamp,
/// against the message and the envelope it arrived with (so a hop copy replayed to someone
/// else fails there); every level below against the message with the changes above undone,
/// its recipients replaced by the `a` of the hop above; every record confirmed; each writer
/// authorised for its domain. A chain of one level is judged exactly as [`verify::evaluate`]
/// judges it.
pub fn evaluate_chain(
    msg: &Message<'_>,
    chain: &Chain,
    env: &Envelope,
    inputs: &LevelInputs<'_>,
    policy: &Policy,
    now: Option<u64>,
) -> ChainReport {
    let n = chain.len();
    if inputs.lookups.len() != n || inputs.auths.len() != n {
        let why = format!(
            "{} lookups and {} writer checks given for {n} {FIELD_NAME} fields",
            inputs.lookups.len(),
            inputs.auths.len()
        );
        return whole(Verdict::Temperror, why);
    }
    if let Some((verdict, why)) = verify::duplicate_fields(msg) {
        return whole(verdict, why);
    }
    if let Some(r) = verify::version_refused(&chain.origin, policy) {
        return whole(Verdict::Invalid, r.reason.unwrap_or_default());
    }
    if n == 1 {
        let r = verify::evaluate(
            msg,
            &chain.origin,
            env,
            &inputs.lookups[0],
            &inputs.auths[0],
            policy,
            now,
        );
        return one_level(msg, chain, r);
    }
    let walk = walk(msg, chain);
    let commitments = chain.commitments();
    let domains: Vec<String> = std::iter::once(walk.origin_domain.clone())
        .chain(chain.hops.iter().map(|h| h.domain.clone()))
        .collect();
    let levels = domains
        .into_iter()
        .enumerate()
        .map(|(k, domain)| LevelReport {
            index: (k + 1) as u8,
            domain,
            changes: k
                .checked_sub(1)
                .and_then(|h| chain.hops.get(h))
                .map_or(Vec::new(), |h| h.changes.clone()),
            report: judge_level(msg, chain, k, env, &walk, &commitments, inputs, policy, now),
        })
        .collect();
    conclude(chain, &walk, levels, policy)
}

/// A report for the whole message without per-level results.
fn whole(verdict: Verdict, why: String) -> ChainReport {
    ChainReport {
        verdict,
        reason: Some(why),
        author: None,
        levels: Vec::new(),
    }
}

fn one_level(msg: &Message<'_>, chain: &Chain, r: Report) -> ChainReport {
    let author = (r.verdict == Verdict::Wanted).then(|| component::from_address(msg));
    let domain = chain.auth_domains(msg).swap_remove(0);
    ChainReport {
        verdict: r.verdict,
        reason: r.reason.clone(),
        author,
        levels: vec![LevelReport {
            index: 1,
            domain,
            changes: Vec::new(),
            report: r,
        }],
    }
}

/// One level of a chain of two or more.
#[allow(clippy::too_many_arguments)]
fn judge_level(
    msg: &Message<'_>,
    chain: &Chain,
    k: usize,
    env: &Envelope,
    walk: &Walk,
    commitments: &[Commitment],
    inputs: &LevelInputs<'_>,
    policy: &Policy,
    now: Option<u64>,
) -> Report {
    let top = k + 1 == chain.len();
    let Some(header) = chain.stamp(k) else {
        return Report::bare(Verdict::Invalid, "no such level", None);
    };
    let claim = Claim {
        header,
        commitment: commitments[k],
        // Hops are v3: every required family, from.name included, must be stamped.
        version: if k == 0 {
            header.version()
        } else {
            HOP_VERSION
        },
    };
    let (lookup, auth) = (&inputs.lookups[k], &inputs.auths[k]);
    // Age is judged at the top: a list may send on a stamp recorded days before.
    let now = if top { now } else { None };
    let mut report = judge_stamp(&claim, lookup, auth, policy, now, || {
        if top {
            top_components(msg, header, env, policy)
        } else {
            lower_components(header, &walk.views[k], &chain.hops[k], policy)
        }
    });
    if !top
        && report.score.is_some()
        && report.verdict != Verdict::Spam
        && let Some(why) = &walk.views[k].broken
    {
        report.verdict = Verdict::Spam;
        report.reason = Some(format!("declared change not made: {why}"));
    }
    report
}

fn top_components(
    msg: &Message<'_>,
    header: &StampHeader,
    env: &Envelope,
    policy: &Policy,
) -> Vec<ComponentResult> {
    let got = component::decompose(msg, env, &verify::selection_of(header));
    let rcpt = header
        .rcpts
        .as_ref()
        .map(|set| verify::compare_rcpts(msg, header, env, set));
    verify::compare_values(header, &got, None, rcpt, policy)
}

/// A level below the top: its components against the view, its recipients against the
/// address the hop above (`above`) says it received the message for.
fn lower_components(
    header: &StampHeader,
    view: &View,
    above: &HopField,
    policy: &Policy,
) -> Vec<ComponentResult> {
    let rcpt = header.rcpts.as_ref().map(|set| {
        let d = digest::rcpt_digest(&header.salt, &above.received_for);
        if set.binary_search(&d).is_ok() {
            (
                Status::Match,
                Some(format!(
                    "addressed to hop i={} ({}) as {}",
                    above.index, above.domain, above.received_for
                )),
            )
        } else {
            (
                Status::Mismatch,
                Some(format!(
                    "hop i={} ({}) says it received the message for {}, not a recipient of this stamp",
                    above.index, above.domain, above.received_for
                )),
            )
        }
    });
    verify::compare_values(header, &view.got, Some(&view.aside), rcpt, policy)
}

/// The message's verdict from its levels: the worst (invalid, spam, temperror, suspect,
/// wanted, in that order), with that level's reason; for a good chain the path.
fn conclude(chain: &Chain, walk: &Walk, levels: Vec<LevelReport>, policy: &Policy) -> ChainReport {
    let rank = |v: Verdict| match v {
        Verdict::Invalid => 0,
        Verdict::Spam => 1,
        Verdict::Temperror => 2,
        Verdict::Suspect => 3,
        Verdict::Unstamped | Verdict::Inapplicable => 4,
        Verdict::Wanted => 5,
    };
    // The topmost of the worst levels speaks: a failure above explains those below it.
    let Some(worst) = levels.iter().rev().min_by_key(|l| rank(l.report.verdict)) else {
        return whole(Verdict::Invalid, "empty chain".into());
    };
    let (verdict, reason) = (worst.report.verdict, level_reason(worst));
    let author = bytes_of(&walk.views[0], Family::From);
    if verdict != Verdict::Wanted {
        return ChainReport {
            verdict,
            reason: Some(reason),
            author: None,
            levels,
        };
    }
    let reason = format!("{}, author {author} verified there", path(chain, walk));
    // Trusted forwarders only: a good chain through another domain's hop is at best suspect.
    let untrusted = policy.forwarders.as_ref().and_then(|trusted| {
        chain
            .hops
            .iter()
            .find(|h| !trusted.contains(&h.domain.to_ascii_lowercase()))
    });
    if let Some(h) = untrusted {
        return ChainReport {
            verdict: Verdict::Suspect,
            reason: Some(format!(
                "{reason}; but hop i={} ({}) is not one of the trusted forwarders here",
                h.index, h.domain
            )),
            author: Some(author),
            levels,
        };
    }
    ChainReport {
        verdict,
        reason: Some(reason),
        author: Some(author),
        levels,
    }
}

fn level_reason(l: &LevelReport) -> String {
    let who = if l.index == 1 {
        format!("originator ({})", l.domain)
    } else {
        format!("hop i={} ({})", l.index, l.domain)
    };
    format!(
        "{who}: {}",
        l.report
            .reason
            .as_deref()
            .unwrap_or(l.report.verdict.as_str())
    )
}

/// "forwarded by F" / "via list L", one per hop, bottom-up, joined by ", then ".
fn path(chain: &Chain, walk: &Walk) -> String {
    let steps: Vec<String> = chain
        .hops
        .iter()
        .enumerate()
        .map(|(k, hop)| {
            if !hop.changes.iter().any(Change::is_list) {
                return format!("forwarded by {}", hop.domain);
            }
            let rewrote = hop
                .changes
                .iter()
                .any(|c| matches!(c, Change::FromRewritten(_)));
            // The list's address is the From it sent; without a rewrite, its domain.
            let sent = walk.views.get(k + 1).map(|v| bytes_of(v, Family::From));
            match sent {
                Some(list) if rewrote && !list.is_empty() => format!("via list {list}"),
                _ => format!("via list at {}", hop.domain),
            }
        })
        .collect();
    steps.join(", then ")
}

/// What a forwarder or list says about its hop when it prepares it.
#[derive(Debug, Clone)]
pub struct HopSpec<'a> {
    /// What it changed.
    pub changes: &'a [Change],
    /// Its own domain: its writer record must list its writer.
    pub domain: &'a str,
    /// The address it received the message for (its RCPT TO under the previous stamp).
    pub received_for: &'a str,
}

/// Why a hop cannot be prepared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareHopError {
    /// The message as sent has no chain to extend.
    #[error("the message carries no {FIELD_NAME} field to forward under a hop")]
    Unstamped,
    /// Its fields do not form a chain: receivers would call it invalid.
    #[error("the message's {FIELD_NAME} fields do not form a chain: {0}")]
    Chain(ChainError),
    /// The chain is full.
    #[error("the message already has {MAX_FIELDS} {FIELD_NAME} fields, the most a chain may have")]
    Full,
    /// The previous stamp was not addressed to `received_for`.
    #[error(
        "the previous stamp does not list {0} among its recipients: a hop must have received the message"
    )]
    NotAddressed(String),
    /// A required family is not selected.
    #[error("a hop must stamp from, from.name and rcpt")]
    Selection,
    /// A declared change the message does not show.
    #[error("declared change not made: {0}")]
    Change(String),
    /// The copy differs from the stamp below in a way no change a hop can declare explains.
    #[error(
        "the copy differs from the stamp it forwards in {0}, which no change a hop can declare explains"
    )]
    Undeclared(String),
    /// The hop's domain is not a domain name, or the address it received for is not there.
    #[error("hop domain: {0}")]
    Domain(HopError),
    /// The message cannot be stamped at all.
    #[error(transparent)]
    Stamp(#[from] StampError),
}

/// A prepared hop: the field to put on top and the record to write (as for any stamp:
/// `stamp(token, commitment)` directly, or the commitment as a leaf of a batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedHop {
    /// The field.
    pub field: HopField,
    /// The registry key (as for any stamp, from the hop's salt).
    pub token: [u8; 32],
    /// The registry value.
    pub commitment: Commitment,
}

/// Prepares the hop of a forwarder or list for `sent`: the message as the hop sends it (the
/// received message with its changes made, its `Mail-Stamp:` fields kept), its new envelope
/// `env`, a fresh `salt` and the hop's own record `chain`. Checks what receivers will check
/// and a hop can know: the chain is well formed and not full, the stamp below was addressed
/// to `received_for`, and every declared change is visible.
pub fn prepare_hop(
    sent: &Message<'_>,
    env: &Envelope,
    salt: Salt,
    chain: &ChainRef,
    sel: &Selection,
    spec: &HopSpec<'_>,
) -> Result<PreparedHop, PrepareHopError> {
    let below = extendable(sent)?;
    if ![Family::From, Family::FromName, Family::Rcpt]
        .iter()
        .all(|f| sel.has(*f))
    {
        return Err(PrepareHopError::Selection);
    }
    let domain = domain_tag(spec.domain).map_err(PrepareHopError::Domain)?;
    let top = below
        .stamp(below.len() - 1)
        .ok_or(PrepareHopError::Unstamped)?;
    let received_for = received_for_tag(&canon::address(spec.received_for), &domain)
        .map_err(PrepareHopError::Domain)?;
    let digest = digest::rcpt_digest(&top.salt, &received_for);
    let addressed = top
        .rcpts
        .as_ref()
        .is_some_and(|e| e.binary_search(&digest).is_ok());
    if !addressed {
        return Err(PrepareHopError::NotAddressed(spec.received_for.to_owned()));
    }
    let stamp = stamp::stamp_header(sent, env, salt, chain, sel, true)?;
    let field = HopField {
        index: (below.len() + 1) as u8,
        stamp,
        prev: PrevRef::of(top),
        domain,
        received_for,
        changes: spec.changes.to_vec(),
    };
    let mut extended = (*below).clone();
    extended.hops.push(field.clone());
    if let Some(why) = walk(sent, &extended)
        .views
        .iter()
        .find_map(|v| v.broken.clone())
    {
        return Err(PrepareHopError::Change(why));
    }
    let prev_commitment = below.commitments()[below.len() - 1];
    Ok(PreparedHop {
        token: field.stamp.token(),
        commitment: field.commitment(&prev_commitment),
        field,
    })
}

/// The chain of `sent` a hop would extend: well formed and not full.
fn extendable(sent: &Message<'_>) -> Result<Box<Chain>, PrepareHopError> {
    let below = match inspect_chain(sent) {
        ChainInspection::Unstamped => return Err(PrepareHopError::Unstamped),
        ChainInspection::Invalid(e) => return Err(PrepareHopError::Chain(e)),
        ChainInspection::Chain(c) => c,
    };
    if below.len() >= MAX_FIELDS {
        return Err(PrepareHopError::Full);
    }
    Ok(below)
}

/// What a mailing list may do to its copies, for [`list_changes`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ListSettings<'a> {
    /// The subject prefix it puts in front (Mailman's `subject_prefix`, without the trailing
    /// space), when it tags subjects.
    pub subject_tag: Option<&'a str>,
    /// Its own domain: a From it rewrote is at this domain.
    pub domain: &'a str,
}

/// The changes a list made to `sent`, its copy of a received message (every `Mail-Stamp:`
/// field kept), found by comparing the copy with the stamp below it — a list has that stamp's
/// salt, as every receiver does, so it can tell which changes explain the difference without
/// keeping the copy it received. Tried, each only where the stamped family differs: the
/// subject tag of `list`; a footer of 1 to 24 lines appended to the last text part, else an
/// appended text part; From rewritten to `list.domain` with the author in `Reply-To`, else
/// in `X-Original-From`. `trace` is always declared (a list adds list fields). Returned in
/// the order the receiver undoes them. An error when the copy is not a chain to extend, or
/// when some stamped component still differs (a list that converts HTML, strips attachments
/// or edits the text): a hop must never vouch for a change it cannot name, so such a copy
/// gets no hop and goes as it came.
pub fn list_changes(
    sent: &Message<'_>,
    list: &ListSettings<'_>,
) -> Result<Vec<Change>, PrepareHopError> {
    let below = extendable(sent)?;
    let index = (below.len() + 1) as u8;
    let header = below
        .stamp(below.len() - 1)
        .ok_or(PrepareHopError::Unstamped)?;
    let policy = Policy::default();
    // The stamped components that still differ in `view`, among `families` (all: `None`).
    // Only those families are hashed: a footer is tried at up to 24 lengths, and the
    // attachments need not be hashed again for each.
    let differing = |view: &View, families: Option<&[Family]>| -> Vec<String> {
        let only;
        let h = match families {
            None => header,
            Some(f) => {
                let (names, digests) = header
                    .names
                    .iter()
                    .zip(&header.digests)
                    .filter(|(n, _)| f.contains(&n.family))
                    .map(|(n, d)| (*n, *d))
                    .unzip();
                only = StampHeader {
                    names,
                    digests,
                    ..header.clone()
                };
                &only
            }
        };
        verify::compare_values(h, &view.got, Some(&view.aside), None, &policy)
            .into_iter()
            .filter(|c| matches!(c.status, Status::Mismatch | Status::Missing | Status::Added))
            .map(|c| c.name)
            .collect()
    };
    let mut view = View {
        got: component::decompose(sent, &Envelope::default(), &Selection::all()),
        ..View::default()
    };
    let mut changes = Vec::new();
    // Each candidate is kept only when it makes its families match the stamp.
    let mut attempt = |view: &mut View, change: Change, families: &[Family]| -> bool {
        let mut tried = view.clone();
        let undone = match &change {
            Change::SubjectTag(tag) => undo_subject_tag(&mut tried, tag),
            Change::Footer(n) => undo_footer(&mut tried, usize::from(*n)),
            Change::FooterPart => undo_footer_part(&mut tried),
            Change::FromRewritten(field) => undo_from(&mut tried, sent, index, list.domain, *field),
            _ => Ok(()),
        };
        let fits = undone.is_ok() && differing(&tried, Some(families)).is_empty();
        if fits {
            *view = tried;
            changes.push(change);
        }
        fits
    };
    let subject = [Family::Subject];
    if let Some(tag) = list.subject_tag.map(canon::collapse_whitespace)
        && !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && !differing(&view, Some(&subject)).is_empty()
    {
        attempt(&mut view, Change::SubjectTag(tag), &subject);
    }
    let text = [Family::Text, Family::Signature, Family::Parts];
    if !differing(&view, Some(&text)).is_empty() {
        let footer = (1..=verify::MAX_FOOTER_LINES as u8)
            .any(|n| attempt(&mut view, Change::Footer(n), &text));
        if !footer {
            attempt(&mut view, Change::FooterPart, &text);
        }
    }
    let from = [
        Family::From,
        Family::FromLocal,
        Family::FromDomain,
        Family::FromName,
    ];
    if !differing(&view, Some(&from)).is_empty() {
        let _ = [AuthorField::ReplyTo, AuthorField::XOriginalFrom]
            .into_iter()
            .any(|f| attempt(&mut view, Change::FromRewritten(f), &from));
    }
    let left = differing(&view, None);
    if !left.is_empty() {
        return Err(PrepareHopError::Undeclared(left.join(", ")));
    }
    changes.push(Change::Trace);
    Ok(changes)
}

/// The message with the hop field put on top, in the message's own line ending.
pub fn insert_hop(raw: &[u8], field: &HopField) -> Vec<u8> {
    let eol = stamp::line_ending(raw);
    let line = format!("{FIELD_NAME}: {}{eol}", field.folded_value(eol));
    let mut out = Vec::with_capacity(line.len() + raw.len());
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(raw);
    out
}

/// Why a sound stamp does not apply to the copy at hand (docs/PROTOCOL.md §5c, "When the
/// forwarder or the list runs no agent"): the building block of the verdict `inapplicable`,
/// which the agent is still to add. The stamp's record is confirmed and matches; what differs
/// is only what a forwarder or list without an agent changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotApplicable {
    /// The envelope recipient is not among the stamped ones, and nothing else differs: a
    /// forward without a hop, or a replay; the writer is authorised.
    NotAddressed,
    /// From was moved to another domain (`from.domain` differs), perhaps the recipients too,
    /// nothing else: a list without an agent rewrote From. The writer check, made for the
    /// received From domain, does not apply to the author's stamp and is not asked.
    FromMoved,
}

impl NotApplicable {
    /// The reason the report gives.
    pub fn reason(self) -> &'static str {
        match self {
            NotApplicable::NotAddressed => "stamp does not apply: not addressed to this recipient",
            NotApplicable::FromMoved => "stamp does not apply: From rewritten to another domain",
        }
    }
}

/// Whether a one-stamp report ([`verify::evaluate`], no hop) that came out `spam` is really
/// a sound stamp that does not apply here (§5c): `header` is the stamp it judged; the record
/// found and matching, not older than `max_age_secs` at `now`, `from`, `rcpt` and every
/// required family stamped, and every difference one of those
/// [`NotApplicable`] names. A From changed *within* the stamped domain, an unauthorised
/// writer for a mere forward, or any other difference keeps it `spam`.
pub fn not_applicable(
    header: &StampHeader,
    report: &Report,
    policy: &Policy,
    now: Option<u64>,
) -> Option<NotApplicable> {
    if report.verdict != Verdict::Spam || report.components.is_empty() {
        return None;
    }
    let time = report.stamp.as_ref()?.time?;
    if let (Some(max), Some(now)) = (policy.max_age_secs, now)
        && now > time.saturating_add(max)
    {
        return None;
    }
    // Every required family stamped (as §6 step 7 asks): a stamp that leaves one out proves
    // nothing about it, so it is not a sound stamp that merely does not apply.
    let covers = |f: &Family| match f {
        Family::Rcpt => header.rcpts.is_some(),
        f if f.since() > header.version() => true,
        f => header.names.iter().any(|n| n.family == *f),
    };
    if !policy.required.iter().all(covers) || !covers(&Family::From) || !covers(&Family::Rcpt) {
        return None;
    }
    let status = |name: &str| {
        report
            .components
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.status)
    };
    let differs = |c: &ComponentResult| {
        matches!(c.status, Status::Mismatch | Status::Missing | Status::Added)
    };
    let from_family = |c: &ComponentResult| c.name.starts_with("from");
    let moved = status("from.domain") == Some(Status::Mismatch);
    let others_ok = report
        .components
        .iter()
        .filter(|c| differs(c))
        .all(|c| c.name == "rcpt" || (moved && from_family(c)));
    if !others_ok {
        return None;
    }
    if moved {
        return Some(NotApplicable::FromMoved);
    }
    let authorised = matches!(report.writer_auth, Some(WriterAuth::Pass(_)));
    (status("rcpt") == Some(Status::Mismatch) && authorised).then_some(NotApplicable::NotAddressed)
}

/// The first of a recipient's other addresses (those that forward to it, §5c) that `header`
/// was stamped for, if any. The agent then judges the message again with that address as the
/// envelope recipient: mail stamped for `bob@b.example` arriving for `bob@forward.example`
/// counts as bob's when bob lists `bob@b.example`.
pub fn other_address<'a>(header: &StampHeader, others: &'a [String]) -> Option<&'a str> {
    let stamped = header.rcpts.as_ref()?;
    others
        .iter()
        .find(|a| {
            let d = digest::rcpt_digest(&header.salt, &canon::address(a));
            stamped.binary_search(&d).is_ok()
        })
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HopField {
        let stamp = StampHeader {
            chain_id: 31337,
            registry: [0x11; 20],
            writer: [0x22; 20],
            salt: [0x33; 16],
            mode: Mode::Direct,
            names: vec![
                ComponentName::single(Family::From),
                ComponentName::single(Family::FromName),
            ],
            digests: vec![[1; 16], [2; 16]],
            rcpts: Some(vec![[1; 8], [9; 8]]),
        };
        HopField {
            index: 2,
            stamp,
            prev: PrevRef {
                chain_id: 1,
                registry: [0x44; 20],
                writer: [0x55; 20],
                batched: true,
                key: [0x66; 32],
            },
            domain: "lists.example".into(),
            received_for: "list@lists.example".into(),
            changes: vec![
                Change::SubjectTag("[My List]".into()),
                Change::Footer(3),
                Change::FromRewritten(AuthorField::XOriginalFrom),
                Change::Trace,
            ],
        }
    }

    #[test]
    fn a_hop_field_round_trips_on_one_line_and_folded() {
        let h = sample();
        assert_eq!(HopField::decode(&h.value()).unwrap(), h);
        let folded = h.folded_value("\r\n");
        for (i, line) in folded.split("\r\n").enumerate() {
            let len = line.len() + if i == 0 { FIELD_NAME.len() + 2 } else { 0 };
            assert!(len <= 78, "line too long: {line}");
        }
        assert_eq!(HopField::decode(&folded).unwrap(), h);
        // A v1/v2 decoder does not take it for a stamp.
        assert!(StampHeader::decode(&h.value()).is_err());
    }

    /// The wire format and the commitment, pinned: a change to either is a protocol change
    /// (docs/PROTOCOL.md §5c), not a refactoring. The commitment was also computed from the
    /// formula in PROTOCOL §5c by an independent (pure-Python keccak) script: they agree.
    #[test]
    fn the_hop_field_and_its_commitment_are_pinned() {
        let h = sample();
        assert_eq!(h.value(), PINNED_VALUE);
        assert_eq!(hex::encode(h.commitment(&[9u8; 24])), PINNED_COMMITMENT);
    }

    const PINNED_VALUE: &str = "v=3; i=2; c=31337; r=0x1111111111111111111111111111111111111111; \
        w=0x2222222222222222222222222222222222222222; m=d; s=MzMzMzMzMzMzMzMzMzMzMw==; h=from:from.name; \
        d=AQEBAQEBAQEBAQEBAQEBAQICAgICAgICAgICAgICAgI=; e=AQEBAQEBAQEJCQkJCQkJCQ==; pc=1; \
        pr=0x4444444444444444444444444444444444444444; pw=0x5555555555555555555555555555555555555555; \
        pm=b; pk=0x6666666666666666666666666666666666666666666666666666666666666666; \
        dom=lists.example; a=list@lists.example; \
        t=subject-tag/W015IExpc3Rd,footer/3,from/x-original-from,trace";
    const PINNED_COMMITMENT: &str = "915e3866eaead3ff8c030ce7048dc3f3a3a791a666cc8bf1";

    #[test]
    fn every_change_round_trips_and_garbage_is_refused() {
        let all = [
            Change::SubjectTag("[x]".into()),
            Change::Footer(24),
            Change::FooterPart,
            Change::FromRewritten(AuthorField::ReplyTo),
            Change::FromRewritten(AuthorField::XOriginalFrom),
            Change::ReplyTo,
            Change::Reencoded,
            Change::Trace,
        ];
        for c in &all {
            assert_eq!(&Change::parse(&c.encode()).unwrap(), c);
        }
        let tag = |s: &str| format!("subject-tag/{}", B64.encode(s));
        for bad in [
            "".to_owned(),
            "footer/0".into(),
            "footer/25".into(),
            "footer/03".into(),
            "footer".into(),
            "from/sender".into(),
            "trace/1".into(),
            "subject-tag/!!".into(),
            tag(""),
            tag(" [x]"),
            tag("[a  b]"),
            tag(&"x".repeat(MAX_TAG_LEN + 1)),
        ] {
            assert!(Change::parse(&bad).is_err(), "accepted {bad}");
        }
        assert!(decode_changes("trace,trace").is_err());
        assert!(decode_changes("footer/1,footer/2").is_err());
        assert!(decode_changes("trace,").is_err());
        assert_eq!(decode_changes("").unwrap(), vec![]);
    }

    #[test]
    fn hop_tags_are_strict() {
        let good = sample().value();
        let cases = [
            good.replace("i=2", "i=1"),
            good.replace("i=2", "i=9"),
            good.replace("i=2", "i=02"),
            good.replace("v=3", "v=2"),
            good.replace("pm=b", "pm=x"),
            good.replace("dom=lists.example", "dom=Lists.example"),
            good.replace("dom=lists.example", "dom=lists..example"),
            good.replace("a=list@lists.example", "a=list@other.example"),
            good.replace("a=list@lists.example", "a=List@lists.example"),
            good.replace("a=list@lists.example", "a=list@xlists.example"),
            good.replace("a=list@lists.example", "a=lists.example"),
            good.replace("pk=0x", "pk=0y"),
            good.replace("; dom=lists.example", ""),
            good.replace("i=2; ", "i=2; i=2; "),
        ];
        for c in cases {
            assert!(HopField::decode(&c).is_err(), "accepted: {c}");
        }
        let mut no_e = sample();
        no_e.stamp.rcpts = None;
        assert!(HopField::decode(&no_e.value()).is_err());
    }

    #[test]
    fn the_commitment_binds_every_hop_tag() {
        let h = sample();
        let prev = [9u8; 24];
        let c = h.commitment(&prev);
        assert_ne!(
            c,
            h.stamp.commitment(),
            "a hop is not committed as a v1 stamp"
        );
        assert_ne!(c, h.commitment(&[8u8; 24]));
        let variants: [fn(&mut HopField); 7] = [
            |h| h.index = 3,
            |h| h.prev.key[0] ^= 1,
            |h| h.prev.batched = false,
            |h| h.domain = "other.example".into(),
            |h| h.received_for.insert(0, 'x'),
            |h| h.changes.pop().map_or((), drop),
            |h| h.changes[1] = Change::Footer(4),
        ];
        for f in variants {
            let mut v = h.clone();
            f(&mut v);
            assert_ne!(v.commitment(&prev), c, "{v:?}");
        }
    }

    #[test]
    fn a_footer_is_cut_from_the_signature_block_of_the_first_part() {
        let lines = |v: &[&str]| Value::Lines(Lines::from_lines(v));
        let mut view = View::default();
        view.got.values = vec![
            (
                ComponentName {
                    family: Family::Text,
                    index: 0,
                },
                lines(&["hello"]),
            ),
            (
                ComponentName::single(Family::Signature),
                lines(&["Bob", "", "__", "list"]),
            ),
        ];
        undo_footer(&mut view, 2).unwrap();
        let sig = view
            .got
            .get(&ComponentName::single(Family::Signature))
            .unwrap();
        assert_eq!(sig.canonical_slice(), b"Bob");
        assert!(undo_footer(&mut view, 5).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_text_decodes_to_a_chain_or_an_error(
            fields in proptest::collection::vec(
                proptest::string::string_regex("[a-z0-9=;,/ +x:.\\-]{0,120}").unwrap(), 0..10),
        ) {
            let refs: Vec<&str> = fields.iter().map(String::as_str).collect();
            let _ = chain_of(&refs);
            for f in &refs {
                let _ = HopField::decode(f);
                let _ = decode_changes(f);
            }
        }
    }

    #[test]
    fn a_subject_tag_must_be_there_to_be_undone() {
        let mut view = View::default();
        let subject = ComponentName::single(Family::Subject);
        set(&mut view, subject, Value::Bytes(b"[List] Re: hi".to_vec()));
        assert!(undo_subject_tag(&mut view, "[Other]").is_err());
        assert!(undo_subject_tag(&mut view, "[Li").is_err());
        undo_subject_tag(&mut view, "[List]").unwrap();
        assert_eq!(view.got.get(&subject).unwrap().canonical_slice(), b"Re: hi");
    }
}
