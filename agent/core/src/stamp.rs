// SPDX-License-Identifier: GPL-3.0-or-later
//! Outbound: compute a stamp for a message (docs/PROTOCOL.md §4), put its header on, and
//! gather stamps into a batch (§5a). Owns the digests of decomposed values and of recipient
//! lists, which verification recomputes the same way.

use std::collections::BTreeSet;

use mail_parser::Message;

use crate::component::{self, Envelope, Selection, Value};
use crate::digest::{self, Commitment, Digest, RcptDigest, Salt};
use crate::header::{FIELD_NAME, Mode, StampHeader};
use crate::name::{ComponentName, Family};

/// Where a stamp is recorded and who records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainRef {
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// Registry contract address.
    pub registry: [u8; 20],
    /// The writer: the address that sends the `stamp` transaction.
    pub writer: [u8; 20],
}

/// Why a message cannot be stamped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    /// No From address: RFC 5322 requires one and the stamp binds it.
    #[error("the message has no From address; add a From header before stamping")]
    NoFrom,
    /// A field RFC 5322 allows once is there more than once: every receiver would reject the
    /// stamp (docs/PROTOCOL.md §6 step 1), so it is not made.
    #[error(
        "the message has more than one {0} (RFC 5322 and MIME allow one); remove the extra ones before stamping"
    )]
    DuplicateField(String),
    /// The From field lists more than one mailbox: receivers take that like a second From
    /// field (docs/PROTOCOL.md §6 step 1).
    #[error(
        "the From field lists {0} mailboxes, more than one; send with one author (and Sender) or split the message"
    )]
    SeveralAuthors(usize),
    /// The message already carries a `Mail-Stamp:` field: a second originator's stamp makes
    /// it `invalid` at every receiver (docs/PROTOCOL.md §6 step 1); a forwarder adds a hop
    /// instead (`crate::hops::prepare_hop`, §5c).
    #[error("the message already carries a {FIELD_NAME} field; remove it before stamping again")]
    AlreadyStamped,
    /// `rcpt` is selected but there is no recipient at all.
    #[error("no recipients: give envelope recipients or To/Cc/Bcc headers")]
    NoRecipients,
    /// More recipients than one header can carry.
    #[error("{0} recipients, more than the {max} one stamp can carry; split the message", max = crate::header::MAX_RCPTS)]
    TooManyRecipients(usize),
    /// The header section starts with a folded line (white space before the first field): a
    /// `Mail-Stamp:` field put on top would take that line into its own value (found by the
    /// `message` fuzz target).
    #[error(
        "the message starts with white space (a folded line before any header field): it is malformed; fix the submitting client"
    )]
    LeadingFold,
}

/// A computed stamp: the header to add and the record to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The header.
    pub header: StampHeader,
    /// The registry key.
    pub token: [u8; 32],
    /// The registry value.
    pub commitment: Commitment,
}

/// Digest of a component value.
pub(crate) fn value_digest(salt: &Salt, name: &ComponentName, value: &Value) -> Digest {
    bytes_digest(salt, name, value.canonical_slice())
}

/// Digest of component `name` with canonical bytes `bytes`.
pub(crate) fn bytes_digest(salt: &Salt, name: &ComponentName, bytes: &[u8]) -> Digest {
    name.with_str(|n| digest::component_digest(salt, n, bytes))
}

/// Canonical, sorted, distinct digests of envelope recipients.
pub(crate) fn rcpt_digests(salt: &Salt, rcpts: &[String]) -> Vec<RcptDigest> {
    let set: BTreeSet<RcptDigest> = rcpts
        .iter()
        .map(|r| digest::rcpt_digest(salt, &crate::canon::address(r)))
        .collect();
    set.into_iter().collect()
}

/// Computes the stamp of `msg`. Envelope recipients come from `env`; when it has none, the
/// To, Cc and Bcc addresses stand in (what `sendmail -t` would send to).
pub fn prepare(
    msg: &Message<'_>,
    env: &Envelope,
    salt: Salt,
    chain: &ChainRef,
    sel: &Selection,
) -> Result<Prepared, StampError> {
    let header = stamp_header(msg, env, salt, chain, sel, false)?;
    let token = header.token();
    Ok(Prepared {
        token,
        commitment: header.commitment_with_token(&token),
        header,
    })
}

/// The header [`prepare`] computes. `hop` lets the message carry `Mail-Stamp:` fields
/// already: a hop stamps a message that is stamped (`crate::hops`, docs/PROTOCOL.md §5c).
pub(crate) fn stamp_header(
    msg: &Message<'_>,
    env: &Envelope,
    salt: Salt,
    chain: &ChainRef,
    sel: &Selection,
    hop: bool,
) -> Result<StampHeader, StampError> {
    if matches!(msg.raw_message().first(), Some(b' ' | b'\t')) {
        return Err(StampError::LeadingFold);
    }
    if component::from_address(msg).is_empty() {
        return Err(StampError::NoFrom);
    }
    let authors = component::from_mailboxes(msg);
    if authors > 1 {
        return Err(StampError::SeveralAuthors(authors));
    }
    let mut twice: Vec<String> = component::duplicate_fields(msg)
        .into_iter()
        .map(str::to_owned)
        .collect();
    twice.extend(component::ambiguous_mime(msg));
    if !twice.is_empty() {
        return Err(StampError::DuplicateField(twice.join(", ")));
    }
    if !hop
        && msg
            .headers()
            .iter()
            .any(|h| h.name().eq_ignore_ascii_case(FIELD_NAME))
    {
        return Err(StampError::AlreadyStamped);
    }
    let parts = component::decompose(msg, env, sel);
    let names: Vec<ComponentName> = parts.values.iter().map(|(n, _)| *n).collect();
    let digests = parts
        .values
        .iter()
        .map(|(n, v)| value_digest(&salt, n, v))
        .collect();
    let rcpts = if sel.has(Family::Rcpt) {
        let list = if env.rcpts.is_empty() {
            component::header_recipients(msg)
        } else {
            env.rcpts.clone()
        };
        if list.is_empty() {
            return Err(StampError::NoRecipients);
        }
        let d = rcpt_digests(&salt, &list);
        if d.len() > crate::header::MAX_RCPTS {
            return Err(StampError::TooManyRecipients(d.len()));
        }
        Some(d)
    } else {
        None
    };
    Ok(StampHeader {
        chain_id: chain.chain_id,
        registry: chain.registry,
        writer: chain.writer,
        salt,
        mode: Mode::Direct,
        names,
        digests,
        rcpts,
    })
}

/// The line ending a message uses (CRLF if its first line ends so, else LF).
pub fn line_ending(raw: &[u8]) -> &'static str {
    match raw.iter().position(|&b| b == b'\n') {
        Some(i) if i > 0 && raw[i - 1] == b'\r' => "\r\n",
        _ => "\n",
    }
}

/// The message with the stamp header put on top, in the message's own line ending.
pub fn insert_header(raw: &[u8], header: &StampHeader) -> Vec<u8> {
    let eol = line_ending(raw);
    let field = format!("{FIELD_NAME}: {}{eol}", header.folded_value(eol));
    let mut out = Vec::with_capacity(field.len() + raw.len());
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(raw);
    out
}

/// Puts prepared stamps into one batch with id `batch`: builds the Merkle tree over their
/// commitments (in the order given), gives every header its proof, and returns the root to
/// anchor (`None` for no stamps).
pub fn into_batch(stamps: &mut [Prepared], batch: [u8; 32]) -> Option<crate::merkle::Node> {
    let commitments: Vec<Commitment> = stamps.iter().map(|p| p.commitment).collect();
    let tree = crate::merkle::Tree::build(&commitments)?;
    for (i, p) in stamps.iter_mut().enumerate() {
        p.header.mode = Mode::Batch {
            batch,
            proof: tree.proof(i),
        };
    }
    Some(tree.root())
}
