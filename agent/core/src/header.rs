// SPDX-License-Identifier: GPL-3.0-or-later
//! The `Mail-Stamp:` header field (docs/PROTOCOL.md §2): encoding, folding and a strict,
//! bounded decoder. A header that does not decode is the verdict `invalid`, never a panic.
//! Owns [`StampHeader`], its recording [`Mode`] and the commitment a header claims.

use std::borrow::Cow;
use std::collections::BTreeSet;

use base64::{Engine, engine::general_purpose::STANDARD as B64};

use crate::digest::{
    self, CommitInput, Commitment, DIGEST_LEN, Digest, RCPT_DIGEST_LEN, RcptDigest, SALT_LEN, Salt,
};
use crate::hex0x;
use crate::name::{ComponentName, Family};

/// The header field name.
pub const FIELD_NAME: &str = "Mail-Stamp";
/// The newest protocol version this code speaks; it reads every version from 1 up to it.
/// A header's version is not chosen: it is the lowest one that defines every family its `h`
/// names ([`StampHeader::version`]), so a stamp without the newer families stays readable by
/// older verifiers.
pub const VERSION: u32 = 2;
/// Longest header value we decode (bytes, folded). Larger is `invalid`.
pub const MAX_VALUE_LEN: usize = 8192;
/// Most components one header may list.
pub const MAX_COMPONENTS: usize = 64;
/// Most envelope-recipient digests one header may carry.
pub const MAX_RCPTS: usize = 512;

/// Why a header did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Longer than [`MAX_VALUE_LEN`].
    #[error("header value is {0} bytes, more than the {MAX_VALUE_LEN} allowed")]
    Oversized(usize),
    /// A `tag=value` pair is malformed.
    #[error("malformed tag list near `{0}`")]
    Syntax(String),
    /// A tag appears twice.
    #[error("tag `{0}` appears twice")]
    Duplicate(String),
    /// A required tag is absent.
    #[error("required tag `{0}` is missing")]
    Missing(&'static str),
    /// A tag's value is not what the protocol allows.
    #[error("tag `{tag}`: {why}")]
    BadValue {
        /// The tag.
        tag: &'static str,
        /// What is wrong.
        why: String,
    },
    /// Not a version this code speaks (1 to [`VERSION`]).
    #[error("unsupported version `{0}` (this agent speaks v=1 and v=2)")]
    Version(String),
}

fn bad(tag: &'static str, why: impl Into<String>) -> HeaderError {
    HeaderError::BadValue {
        tag,
        why: why.into(),
    }
}

/// How the commitment was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// One registry record per message (`m=d`), keyed by the token.
    Direct,
    /// One anchor per batch (`m=b`): the commitment is a leaf under the root anchored at
    /// (writer, `batch`), and `proof` leads there (docs/PROTOCOL.md §5a).
    Batch {
        /// The batch id: the anchor's key.
        batch: [u8; 32],
        /// Sibling nodes from the leaf up.
        proof: Vec<crate::merkle::Node>,
    },
}

/// A decoded `Mail-Stamp:` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StampHeader {
    /// EIP-155 chain id of the registry.
    pub chain_id: u64,
    /// Registry contract address.
    pub registry: [u8; 20],
    /// The address that wrote the record.
    pub writer: [u8; 20],
    /// Per-message secret salt.
    pub salt: Salt,
    /// Recording mode.
    pub mode: Mode,
    /// Stamped component names, in order.
    pub names: Vec<ComponentName>,
    /// One digest per name.
    pub digests: Vec<Digest>,
    /// Sorted, distinct envelope-recipient digests; `None` when `rcpt` was not stamped.
    pub rcpts: Option<Vec<RcptDigest>>,
}

impl StampHeader {
    /// The registry key derived from the salt.
    pub fn token(&self) -> [u8; 32] {
        digest::token(&self.salt)
    }

    /// The commitment this header claims is on chain.
    pub fn commitment(&self) -> Commitment {
        self.commitment_with_token(&self.token())
    }

    /// [`StampHeader::commitment`] when the token is already at hand.
    pub(crate) fn commitment_with_token(&self, token: &[u8; 32]) -> Commitment {
        digest::commitment(&self.commit_input(token))
    }

    /// What the commitment binds, given the token: also the base of a hop's commitment.
    pub(crate) fn commit_input<'a>(&'a self, token: &'a [u8; 32]) -> CommitInput<'a> {
        CommitInput {
            chain_id: self.chain_id,
            registry: &self.registry,
            writer: &self.writer,
            token,
            names: &self.names,
            digests: &self.digests,
            rcpts: self.rcpts.as_deref().unwrap_or(&[]),
        }
    }

    /// The protocol version of this stamp: the lowest that defines every family in `names`
    /// (what the `v` tag says).
    pub fn version(&self) -> u32 {
        version_of(&self.names)
    }

    /// The header value on one line.
    pub fn value(&self) -> String {
        self.tags()
            .iter()
            .map(|(t, v)| format!("{t}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The tags in the order they are written, `v` first.
    pub(crate) fn tags(&self) -> Vec<(&'static str, String)> {
        let names: Vec<String> = self.names.iter().map(|n| n.to_string()).collect();
        let mut d = Vec::with_capacity(self.digests.len() * DIGEST_LEN);
        for x in &self.digests {
            d.extend_from_slice(x);
        }
        let mut tags = vec![
            ("v", self.version().to_string()),
            ("c", self.chain_id.to_string()),
            ("r", hex0x::encode(&self.registry)),
            ("w", hex0x::encode(&self.writer)),
            (
                "m",
                match self.mode {
                    Mode::Direct => "d".to_owned(),
                    Mode::Batch { .. } => "b".to_owned(),
                },
            ),
            ("s", B64.encode(self.salt)),
            ("h", names.join(":")),
            ("d", B64.encode(d)),
        ];
        if let Some(rcpts) = &self.rcpts {
            tags.push(("e", B64.encode(rcpts.concat())));
        }
        if let Mode::Batch { batch, proof } = &self.mode {
            tags.push(("b", hex0x::encode(batch)));
            tags.push(("p", B64.encode(proof.concat())));
        }
        tags
    }

    /// The header value folded to lines of at most 78 characters (with the field name),
    /// continuation lines starting with a tab, lines joined by `eol`.
    pub fn folded_value(&self, eol: &str) -> String {
        fold(&self.tags(), eol)
    }

    /// Decodes a header value. Strict about every tag this version defines; tags it does not
    /// know are ignored (they are not covered by the commitment and change nothing). The
    /// first problem found is the error, tags checked in the order v, c, r, w, m (b, p), s,
    /// h (then `v` against the families `h` names), d, e.
    pub fn decode(value: &str) -> Result<Self, HeaderError> {
        decode_with(value, false).map(|(h, _)| h)
    }
}

/// A tag list folded to lines of at most 78 characters (with the field name), continuation
/// lines starting with a tab, lines joined by `eol`: the one folding of every field kind.
pub(crate) fn fold(tags: &[(&'static str, String)], eol: &str) -> String {
    const WIDTH: usize = 76;
    let mut out = String::new();
    let mut col = FIELD_NAME.len() + 2;
    for (i, (t, v)) in tags.iter().enumerate() {
        let mut piece = format!("{t}={v}");
        if i + 1 < tags.len() {
            piece.push(';');
        }
        // Start a new line when the tag does not fit; split long base64 values (FWS inside
        // a value is allowed and removed by the decoder).
        if col > FIELD_NAME.len() + 2 && col + 1 + piece.len() > WIDTH {
            out.push_str(eol);
            out.push('\t');
            col = 8;
        } else if !out.is_empty() {
            out.push(' ');
            col += 1;
        }
        let mut rest = piece.as_str();
        while col + rest.len() > WIDTH {
            let room = WIDTH.saturating_sub(col).max(16).min(rest.len());
            out.push_str(&rest[..room]);
            out.push_str(eol);
            out.push('\t');
            col = 8;
            rest = &rest[room..];
        }
        out.push_str(rest);
        col += rest.len();
    }
    out
}

/// Tags the shared decoder does not define, in order, folding whitespace removed.
pub(crate) type OtherTags<'a> = Vec<(&'a str, Cow<'a, str>)>;

/// The version of a hop field (docs/PROTOCOL.md §5c): only hop fields carry it.
pub const HOP_VERSION: u32 = 3;

/// Decodes the tags a stamp and a hop field share. With `hop`, the field must say
/// `v=3` (its `h` may name any family of versions 1 and 2) and the tags this decoder does not
/// know are returned, for the hop decoder (`crate::hops` reads its own); without, `v` must be
/// 1 or 2 and match `h`, and unknown tags are dropped.
pub(crate) fn decode_with(
    value: &str,
    hop: bool,
) -> Result<(StampHeader, OtherTags<'_>), HeaderError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(HeaderError::Oversized(value.len()));
    }
    let t = Tags::split(value)?;
    let v = required("v", t.v)?;
    let version = match (v.as_ref(), hop) {
        ("1", false) => 1,
        ("2", false) => 2,
        ("3", true) => HOP_VERSION,
        _ => return Err(HeaderError::Version(v.chars().take(16).collect())),
    };
    let chain_id = chain_id_tag(&required("c", t.c)?)?;
    let registry = address_tag("r", required("r", t.r)?)?;
    let writer = address_tag("w", required("w", t.w)?)?;
    let mode = mode_tags(t.m.as_deref(), t.b, t.p)?;
    let salt = salt_tag(&required("s", t.s)?)?;
    let names = names_tag(&required("h", t.h)?)?;
    if version != HOP_VERSION && version_of(&names) != version {
        return Err(bad(
            "v",
            format!(
                "is {version}, but the components in h make a v={} stamp",
                version_of(&names)
            ),
        ));
    }
    let digests = digests_tag(&required("d", t.d)?, names.len())?;
    let rcpts = t.e.map(|e| rcpts_tag(&e)).transpose()?;
    let header = StampHeader {
        chain_id,
        registry,
        writer,
        salt,
        mode,
        names,
        digests,
        rcpts,
    };
    Ok((header, t.rest))
}

/// The lowest protocol version that defines every family of `names`.
fn version_of(names: &[ComponentName]) -> u32 {
    names.iter().map(|n| n.family.since()).max().unwrap_or(1)
}

/// The values of the tags this version defines, as written (folding whitespace removed): the
/// field-parsing half of [`StampHeader::decode`], which then validates each.
#[derive(Default)]
struct Tags<'a> {
    v: Option<Cow<'a, str>>,
    c: Option<Cow<'a, str>>,
    r: Option<Cow<'a, str>>,
    w: Option<Cow<'a, str>>,
    m: Option<Cow<'a, str>>,
    s: Option<Cow<'a, str>>,
    h: Option<Cow<'a, str>>,
    d: Option<Cow<'a, str>>,
    e: Option<Cow<'a, str>>,
    b: Option<Cow<'a, str>>,
    p: Option<Cow<'a, str>>,
    /// The tags this decoder does not define, in order (at most [`MAX_VALUE_LEN`] bytes).
    rest: Vec<(&'a str, Cow<'a, str>)>,
}

impl<'a> Tags<'a> {
    /// Splits a value into `tag=value` pairs: every tag lower-case ASCII, at most 16 bytes,
    /// and present at most once (unknown tags included); unknown tags' values are dropped.
    fn split(value: &'a str) -> Result<Self, HeaderError> {
        let mut tags = Self::default();
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        for pair in value.split(';') {
            if pair.trim().is_empty() {
                continue;
            }
            let Some((tag, val)) = pair.split_once('=') else {
                return Err(HeaderError::Syntax(trunc(pair.trim())));
            };
            let tag = tag.trim();
            if tag.is_empty() || tag.len() > 16 || !tag.bytes().all(|b| b.is_ascii_lowercase()) {
                return Err(HeaderError::Syntax(trunc(tag)));
            }
            if !seen.insert(tag) {
                return Err(HeaderError::Duplicate(tag.to_owned()));
            }
            match tags.slot(tag) {
                Some(slot) => *slot = Some(unfold(val)),
                None => tags.rest.push((tag, unfold(val))),
            }
        }
        Ok(tags)
    }

    /// Where the value of a defined tag goes; `None` for a tag this version does not know.
    fn slot(&mut self, tag: &str) -> Option<&mut Option<Cow<'a, str>>> {
        Some(match tag {
            "v" => &mut self.v,
            "c" => &mut self.c,
            "r" => &mut self.r,
            "w" => &mut self.w,
            "m" => &mut self.m,
            "s" => &mut self.s,
            "h" => &mut self.h,
            "d" => &mut self.d,
            "e" => &mut self.e,
            "b" => &mut self.b,
            "p" => &mut self.p,
            _ => return None,
        })
    }
}

/// A tag value with folding whitespace removed (ASCII, so splitting on it keeps UTF-8
/// intact); a value without any is borrowed as it is.
fn unfold(val: &str) -> Cow<'_, str> {
    if val.bytes().any(|b| b.is_ascii_whitespace()) {
        Cow::Owned(val.split(|ch: char| ch.is_ascii_whitespace()).collect())
    } else {
        Cow::Borrowed(val)
    }
}

/// The value of a required tag, or the error that it is missing.
fn required<T>(tag: &'static str, value: Option<T>) -> Result<T, HeaderError> {
    value.ok_or(HeaderError::Missing(tag))
}

/// `c`: a decimal chain id that fits in 64 bits.
pub(crate) fn chain_id_tag(c: &str) -> Result<u64, HeaderError> {
    if c.is_empty() || c.len() > 20 || !c.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("c", "chain id must be a decimal number"));
    }
    c.parse().map_err(|_| bad("c", "chain id out of range"))
}

/// `m`, and for a batched stamp `b` (batch id) and `p` (proof); no `m` is direct.
fn mode_tags(
    m: Option<&str>,
    b: Option<Cow<'_, str>>,
    p: Option<Cow<'_, str>>,
) -> Result<Mode, HeaderError> {
    match m {
        None | Some("d") => Ok(Mode::Direct),
        Some("b") => {
            let batch = required("b", b)?;
            let batch = batch
                .strip_prefix("0x")
                .filter(|h| h.len() == 64)
                .and_then(|h| hex::decode(h).ok())
                .ok_or_else(|| bad("b", "batch id must be 0x and 64 hex digits"))?;
            let proof = b64_tag("p", &required("p", p)?)?;
            if proof.len() % 32 != 0 || proof.len() / 32 > crate::merkle::MAX_DEPTH {
                return Err(bad("p", "proof must be at most 32 nodes of 32 bytes"));
            }
            Ok(Mode::Batch {
                batch: array::<32>(&batch),
                proof: proof.chunks_exact(32).map(array::<32>).collect(),
            })
        }
        Some(other) => Err(bad("m", format!("unknown mode `{}`", trunc(other)))),
    }
}

/// `s`: the base64 salt of exactly [`SALT_LEN`] bytes.
fn salt_tag(s: &str) -> Result<Salt, HeaderError> {
    b64_tag("s", s)?
        .try_into()
        .map_err(|_| bad("s", format!("salt must be {SALT_LEN} bytes")))
}

/// `h`: colon-separated component names, each known, not `rcpt`, at most once, at most
/// [`MAX_COMPONENTS`]; empty names are skipped.
fn names_tag(h: &str) -> Result<Vec<ComponentName>, HeaderError> {
    let mut names = Vec::new();
    let mut uniq = BTreeSet::new();
    for n in h.split(':').filter(|n| !n.is_empty()) {
        let name = ComponentName::parse(n)
            .ok_or_else(|| bad("h", format!("unknown component `{}`", trunc(n))))?;
        if name.family == Family::Rcpt {
            return Err(bad("h", "rcpt is carried in tag e, not h"));
        }
        if !uniq.insert(name) {
            return Err(bad("h", format!("component `{name}` listed twice")));
        }
        names.push(name);
        if names.len() > MAX_COMPONENTS {
            return Err(bad("h", format!("more than {MAX_COMPONENTS} components")));
        }
    }
    Ok(names)
}

/// `d`: base64 of exactly one [`DIGEST_LEN`]-byte digest per name.
fn digests_tag(d: &str, names: usize) -> Result<Vec<Digest>, HeaderError> {
    let d = b64_tag("d", d)?;
    if d.len() != names * DIGEST_LEN {
        return Err(bad(
            "d",
            format!("{} bytes of digests for {names} components", d.len()),
        ));
    }
    Ok(d.chunks_exact(DIGEST_LEN)
        .map(array::<DIGEST_LEN>)
        .collect())
}

/// `e`: base64 of at most [`MAX_RCPTS`] recipient digests, sorted and distinct.
fn rcpts_tag(e: &str) -> Result<Vec<RcptDigest>, HeaderError> {
    let raw = b64_tag("e", e)?;
    if raw.len() % RCPT_DIGEST_LEN != 0 || raw.len() / RCPT_DIGEST_LEN > MAX_RCPTS {
        return Err(bad("e", "recipient digests have the wrong length"));
    }
    let list: Vec<RcptDigest> = raw
        .chunks_exact(RCPT_DIGEST_LEN)
        .map(array::<RCPT_DIGEST_LEN>)
        .collect();
    if list.windows(2).any(|w| w[0] >= w[1]) {
        return Err(bad("e", "recipient digests must be sorted and distinct"));
    }
    Ok(list)
}

/// A chunk of exactly `N` bytes as an array.
pub(crate) fn array<const N: usize>(chunk: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(chunk);
    out
}

/// The first 32 characters of `s`, to quote it in an error.
pub(crate) fn trunc(s: &str) -> String {
    s.chars().take(32).collect()
}

/// `r` or `w`: `0x` and 40 hex digits.
pub(crate) fn address_tag(tag: &'static str, v: Cow<'_, str>) -> Result<[u8; 20], HeaderError> {
    let hex_part = v
        .strip_prefix("0x")
        .ok_or_else(|| bad(tag, "address must start with 0x"))?;
    if hex_part.len() != 40 {
        return Err(bad(tag, "address must be 40 hex digits"));
    }
    let mut out = [0u8; 20];
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| bad(tag, "address is not hex"))?;
    Ok(out)
}

/// A base64 tag value, decoded.
pub(crate) fn b64_tag(tag: &'static str, v: &str) -> Result<Vec<u8>, HeaderError> {
    B64.decode(v)
        .map_err(|e| bad(tag, format!("not base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StampHeader {
        StampHeader {
            chain_id: 31337,
            registry: [0x11; 20],
            writer: [0x22; 20],
            salt: [0x33; SALT_LEN],
            mode: Mode::Direct,
            names: vec![
                ComponentName::single(Family::From),
                ComponentName {
                    family: Family::Text,
                    index: 0,
                },
            ],
            digests: vec![[1; DIGEST_LEN], [2; DIGEST_LEN]],
            rcpts: Some(vec![[1; RCPT_DIGEST_LEN], [9; RCPT_DIGEST_LEN]]),
        }
    }

    #[test]
    fn round_trips_on_one_line_and_folded() {
        let h = sample();
        assert_eq!(StampHeader::decode(&h.value()).unwrap(), h);
        let folded = h.folded_value("\r\n");
        for (i, line) in folded.split("\r\n").enumerate() {
            let len = line.len() + if i == 0 { FIELD_NAME.len() + 2 } else { 0 };
            assert!(len <= 78, "line too long: {line}");
        }
        assert_eq!(StampHeader::decode(&folded).unwrap(), h);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let good = sample().value();
        let cases = [
            String::new(),
            "v=2".to_owned(),
            "garbage".to_owned(),
            good.replace("v=1", "v=1; v=1"),
            good.replace("h=from:text.0", "h=from:text.0:bogus"),
            good.replace("h=from:text.0", "h=from:from"),
            good.replace("r=0x", "r=0y"),
            good.replace("c=31337", "c=-1"),
            good.replace("c=31337", "c=999999999999999999999"),
            good.replace("m=d", "m=z"),
            format!("{good}; x={}", "A".repeat(MAX_VALUE_LEN)),
            good.replace("s=", "s=!!"),
            good[..good.len() - 5].to_owned(),
        ];
        for c in cases {
            assert!(StampHeader::decode(&c).is_err(), "accepted: {c}");
        }
    }

    #[test]
    fn unknown_tags_are_ignored() {
        let h = sample();
        assert_eq!(
            StampHeader::decode(&format!("{}; zz=future", h.value())).unwrap(),
            h
        );
    }

    #[test]
    fn unsorted_recipients_are_rejected() {
        let mut h = sample();
        h.rcpts = Some(vec![[9; RCPT_DIGEST_LEN], [1; RCPT_DIGEST_LEN]]);
        assert!(StampHeader::decode(&h.value()).is_err());
    }
}
