// SPDX-License-Identifier: GPL-3.0-or-later
//! Decomposition: a parsed message becomes named components in canonical form
//! (docs/PROTOCOL.md §3). Which families are taken is the caller's [`Selection`]; what the
//! MTA knows beyond the bytes is the [`Envelope`]. Owns the component values ([`Value`],
//! [`Decomposed`]) and the address sets the header fields reduce to; the names themselves
//! live in [`crate::name`] and are re-exported here.

use std::{collections::BTreeSet, net::IpAddr};

use mail_parser::{Encoding, Message, MessagePart, MimeHeaders, PartType};

use crate::canon::{self, Lines};
use crate::digest::{keccak256, keccak256_lf};
pub use crate::name::{ComponentName, Family, MAX_PER_FAMILY};

/// Which families a stamp covers; `origin` is only stamped when the origin IP is known.
///
/// The default is every family of protocol version 1 — what a stamp covered before
/// `from.name` — so a caller that names no selection makes the stamps it always made (the
/// pinned v1 fixtures rely on it); [`Selection::all`] is every family, what the agent stamps
/// unless configured otherwise (`stamp.components`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection(pub BTreeSet<Family>);

impl Default for Selection {
    fn default() -> Self {
        Self(Family::ALL.into_iter().filter(|f| f.since() == 1).collect())
    }
}

impl Selection {
    /// Every family, the newest version's included.
    pub fn all() -> Self {
        Self(Family::ALL.into_iter().collect())
    }

    /// Whether `f` is selected.
    pub fn has(&self, f: Family) -> bool {
        self.0.contains(&f)
    }
}

/// What the MTA knows about a message beyond its bytes.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// Envelope recipients (RCPT TO). Empty when unknown.
    pub rcpts: Vec<String>,
    /// The client IP of the SMTP session, when known.
    pub client_ip: Option<IpAddr>,
}

/// A canonical component value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Plain bytes.
    Bytes(Vec<u8>),
    /// Body text as canonical lines (hashed joined by LF); kept as lines so that further
    /// processing can try prefixes (an appended list footer).
    Lines(Lines),
}

impl Value {
    /// The exact bytes that are hashed for this value (after the salt and name): `Bytes` as
    /// they are, `Lines` joined by LF with trailing empty lines dropped.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        match self {
            Value::Bytes(b) => b.clone(),
            Value::Lines(l) => l.prefix(l.len()).as_bytes().to_vec(),
        }
    }

    /// The canonical bytes without a copy: what [`Value::canonical_bytes`] returns.
    pub fn canonical_slice(&self) -> &[u8] {
        match self {
            Value::Bytes(b) => b,
            Value::Lines(l) => l.prefix(l.len()).as_bytes(),
        }
    }
}

/// A message taken apart: component values in header order, plus the envelope recipients.
#[derive(Debug, Clone, Default)]
pub struct Decomposed {
    /// Named canonical values, in header order.
    pub values: Vec<(ComponentName, Value)>,
    /// Item count per indexed family, before the [`MAX_PER_FAMILY`] cap.
    pub counts: PartCounts,
}

/// Item counts of the indexed families.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartCounts {
    /// Text parts.
    pub text: usize,
    /// HTML parts.
    pub html: usize,
    /// Attachments.
    pub att: usize,
}

impl PartCounts {
    /// The canonical `parts` value. It counts every indexed family whatever the selection, so
    /// it reads the same at both ends even when a selected family had no item.
    pub fn value(&self) -> Vec<u8> {
        format!("text={} html={} att={}", self.text, self.html, self.att).into_bytes()
    }
}

impl Decomposed {
    /// The value of one component, if the message has it.
    pub fn get(&self, name: &ComponentName) -> Option<&Value> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// The canonical addresses in a run of address headers, sorted and distinct.
pub(crate) fn addresses<'a>(
    headers: impl Iterator<Item = &'a mail_parser::Address<'a>>,
) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for a in headers {
        for addr in a.iter() {
            if let Some(x) = addr.address() {
                set.insert(canon::address(x));
            }
        }
    }
    set
}

/// The `to` and `cc` value: [`addresses`], one per line.
fn address_set<'a>(headers: impl Iterator<Item = &'a mail_parser::Address<'a>>) -> Vec<u8> {
    addresses(headers)
        .into_iter()
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes()
}

/// The first From address, canonical, or empty.
pub fn from_address(msg: &Message<'_>) -> String {
    msg.from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(canon::address)
        .unwrap_or_default()
}

/// The display name of the first From address (the mailbox [`from_address`] reads): decoded
/// (RFC 2047 encoded words, quoted strings), every whitespace run one space, trimmed; empty
/// when it has none. Case is kept: it is what a mail client shows.
pub fn from_name(msg: &Message<'_>) -> String {
    msg.from()
        .and_then(|a| a.first())
        .and_then(|a| a.name())
        .map(canon::collapse_whitespace)
        .unwrap_or_default()
}

/// The fields RFC 5322 §3.6 allows at most once.
pub const SINGLE_FIELDS: [&str; 11] = [
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Bcc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Subject",
    "Date",
];

/// How many mailboxes the From field lists (groups included). RFC 5322 allows several
/// authors; the stamp covers the first ([`from_address`], [`from_name`]) while a mail client
/// shows them all, so more than one is treated like a second From field.
pub fn from_mailboxes(msg: &Message<'_>) -> usize {
    msg.from().map_or(0, |a| a.iter().count())
}

/// The [`SINGLE_FIELDS`] the message's own header section has more than once, in table
/// order. Names compare case-insensitively, as RFC 5322 says.
pub fn duplicate_fields(msg: &Message<'_>) -> Vec<&'static str> {
    let mut counts = [0usize; SINGLE_FIELDS.len()];
    for h in msg.headers() {
        let name = h.name();
        if let Some(i) = SINGLE_FIELDS
            .iter()
            .position(|f| name.eq_ignore_ascii_case(f))
        {
            counts[i] += 1;
        }
    }
    SINGLE_FIELDS
        .into_iter()
        .zip(counts)
        .filter(|(_, n)| *n > 1)
        .map(|(f, _)| f)
        .collect()
}

/// The MIME fields a part may have at most once (RFC 2045 §3, RFC 2183): they decide what its
/// body decodes to, and so what the body components read.
pub const MIME_SINGLE_FIELDS: [&str; 3] = [
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
];

/// What in the MIME structure two readers may take differently (docs/PROTOCOL.md §6 step 1),
/// in MIME order, described for a reason: a [`MIME_SINGLE_FIELDS`] field twice in the
/// message's header section or in a part's (`Content-Type`, `Content-Type in part 2`), or a
/// `Content-Type` parameter given twice (`boundary= parameter`). mail-parser reads the last
/// field and the first parameter; a mail client may read the other one, and then shows
/// another body than the one the stamp covers. Parts of a nested `message/rfc822` are not
/// walked (such a message is hashed as one attachment).
pub fn ambiguous_mime(msg: &Message<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, part) in msg.parts.iter().enumerate() {
        let place = if i == 0 {
            String::new()
        } else {
            format!(" in part {i}")
        };
        for field in MIME_SINGLE_FIELDS {
            let n = part
                .headers
                .iter()
                .filter(|h| h.name().eq_ignore_ascii_case(field))
                .count();
            if n > 1 {
                out.push(format!("{field}{place}"));
            }
        }
        let attrs = part
            .content_type()
            .and_then(|ct| ct.attributes())
            .unwrap_or_default();
        let mut seen: Vec<&str> = Vec::new();
        for a in attrs {
            if seen.iter().any(|s| s.eq_ignore_ascii_case(&a.name)) {
                let d = format!("{}= parameter{place}", a.name.to_ascii_lowercase());
                if !out.contains(&d) {
                    out.push(d);
                }
            } else {
                seen.push(&a.name);
            }
        }
    }
    out
}

/// The To, Cc and Bcc addresses, canonical: the envelope `sendmail -t` would use.
pub fn header_recipients(msg: &Message<'_>) -> Vec<String> {
    addresses(msg.all_to().chain(msg.all_cc()).chain(msg.all_bcc()))
        .into_iter()
        .collect()
}

/// Takes a message apart into the selected components, in header order: the header-field
/// families, `parts`, the body items, `origin`.
pub fn decompose(msg: &Message<'_>, env: &Envelope, sel: &Selection) -> Decomposed {
    let mut out = Decomposed {
        values: Vec::with_capacity(Family::ALL.len() + 4),
        ..Decomposed::default()
    };
    push_header_fields(msg, sel, &mut out.values);
    let body = BodyItems::of(msg);
    out.counts = body.counts();
    if sel.has(Family::Parts) {
        let parts = Value::Bytes(out.counts.value());
        out.values
            .push((ComponentName::single(Family::Parts), parts));
    }
    body.push_selected(sel, &mut out.values);
    if sel.has(Family::Origin)
        && let Some(ip) = env.client_ip
    {
        let origin = Value::Bytes(ip.to_string().into_bytes());
        out.values
            .push((ComponentName::single(Family::Origin), origin));
    }
    out
}

/// The families read from one header field each, in header order.
const HEADER_FIELDS: [Family; 9] = [
    Family::From,
    Family::FromLocal,
    Family::FromDomain,
    Family::FromName,
    Family::To,
    Family::Cc,
    Family::Subject,
    Family::Date,
    Family::MessageId,
];

/// Pushes the selected [`HEADER_FIELDS`] components.
fn push_header_fields(
    msg: &Message<'_>,
    sel: &Selection,
    values: &mut Vec<(ComponentName, Value)>,
) {
    let from = from_address(msg);
    for family in HEADER_FIELDS {
        if sel.has(family) {
            let value = Value::Bytes(header_field(msg, family, &from));
            values.push((ComponentName::single(family), value));
        }
    }
}

/// The canonical value of a [`HEADER_FIELDS`] family; `from` is [`from_address`] of `msg`,
/// computed once for the three From families.
fn header_field(msg: &Message<'_>, family: Family, from: &str) -> Vec<u8> {
    match family {
        Family::From => from.as_bytes().to_vec(),
        Family::FromLocal => canon::split_address(from).0.as_bytes().to_vec(),
        Family::FromDomain => canon::split_address(from).1.as_bytes().to_vec(),
        Family::FromName => from_name(msg).into_bytes(),
        Family::To => address_set(msg.all_to()),
        Family::Cc => address_set(msg.all_cc()),
        Family::Subject => canon::collapse_whitespace(msg.subject().unwrap_or("")).into_bytes(),
        Family::Date => match msg.date() {
            Some(d) => d.to_timestamp().to_string(),
            None => canon::collapse_whitespace(msg.header_raw("Date").unwrap_or("")),
        }
        .into_bytes(),
        Family::MessageId => msg.message_id().unwrap_or("").trim().as_bytes().to_vec(),
        // Not header fields; `HEADER_FIELDS` does not list them.
        Family::Rcpt
        | Family::Parts
        | Family::Text
        | Family::Signature
        | Family::Html
        | Family::Attachment
        | Family::Origin => Vec::new(),
    }
}

/// The body items of a message, canonical, in MIME order and before the
/// [`MAX_PER_FAMILY`] cap.
struct BodyItems {
    texts: Vec<Lines>,
    htmls: Vec<Vec<u8>>,
    /// File name, a zero byte, content hash.
    atts: Vec<Vec<u8>>,
}

impl BodyItems {
    /// Walks the MIME parts; multipart containers are structure and not counted.
    fn of(msg: &Message<'_>) -> Self {
        let mut items = Self {
            texts: Vec::new(),
            htmls: Vec::new(),
            atts: Vec::new(),
        };
        for (i, part) in msg.parts.iter().enumerate() {
            let is_att = msg.attachments.contains(&(i as u32));
            match &part.body {
                PartType::Text(t) if !is_att => items.texts.push(canon::text_lines(t)),
                PartType::Html(h) if !is_att => {
                    items.htmls.push(canon::collapse_whitespace(h).into_bytes());
                }
                _ => {
                    if let Some(content) = content_hash(part) {
                        items.atts.push(attachment_value(part, &content));
                    }
                }
            }
        }
        items
    }

    fn counts(&self) -> PartCounts {
        PartCounts {
            text: self.texts.len(),
            html: self.htmls.len(),
            att: self.atts.len(),
        }
    }

    /// Pushes the selected text, signature, html and att components, capped per family.
    fn push_selected(self, sel: &Selection, values: &mut Vec<(ComponentName, Value)>) {
        let Self {
            mut texts,
            htmls,
            atts,
        } = self;
        // The signature block comes off the first text part.
        let signature = texts
            .first_mut()
            .map(Lines::split_signature)
            .unwrap_or_default();
        if sel.has(Family::Text) {
            push_indexed(Family::Text, texts.into_iter().map(Value::Lines), values);
        }
        if sel.has(Family::Signature) {
            values.push((
                ComponentName::single(Family::Signature),
                Value::Lines(signature),
            ));
        }
        if sel.has(Family::Html) {
            push_indexed(Family::Html, htmls.into_iter().map(Value::Bytes), values);
        }
        if sel.has(Family::Attachment) {
            push_indexed(
                Family::Attachment,
                atts.into_iter().map(Value::Bytes),
                values,
            );
        }
    }
}

/// Pushes the first [`MAX_PER_FAMILY`] items as `family.0`, `family.1`, …
fn push_indexed(
    family: Family,
    items: impl Iterator<Item = Value>,
    values: &mut Vec<(ComponentName, Value)>,
) {
    for (i, v) in items.take(MAX_PER_FAMILY).enumerate() {
        let name = ComponentName {
            family,
            index: i as u8,
        };
        values.push((name, v));
    }
}

/// The content hash of a part taken as an attachment, computed on the parser's buffer without
/// a copy; `None` for a multipart container.
fn content_hash(part: &MessagePart<'_>) -> Option<[u8; 32]> {
    match &part.body {
        PartType::Multipart(_) => None,
        PartType::Text(t) | PartType::Html(t) => Some(keccak256_lf(t.as_bytes())),
        // Only base64 carries exact bytes; a 7bit/8bit/QP body is line-oriented text whose
        // line endings are CRLF on the wire and whatever the MTA likes on disk.
        PartType::Binary(b) | PartType::InlineBinary(b) if part.encoding == Encoding::Base64 => {
            Some(keccak256(b))
        }
        PartType::Binary(b) | PartType::InlineBinary(b) => Some(keccak256_lf(b)),
        PartType::Message(m) => Some(keccak256_lf(m.raw_message())),
    }
}

/// An `att` value: the file name (whitespace collapsed), a zero byte, the content hash.
fn attachment_value(part: &MessagePart<'_>, content: &[u8; 32]) -> Vec<u8> {
    let name = part
        .attachment_name()
        .map(canon::collapse_whitespace)
        .unwrap_or_default();
    let mut v = name.into_bytes();
    v.push(0);
    v.extend_from_slice(content);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_bytes_are_what_is_hashed() {
        let salt = [5u8; crate::digest::SALT_LEN];
        let name = ComponentName {
            family: Family::Text,
            index: 0,
        };
        for v in [
            Value::Lines(Lines::from_lines(["a", "", "b c", ""])),
            Value::Lines(Lines::default()),
            Value::Bytes(b"x\0y".to_vec()),
        ] {
            assert_eq!(
                crate::stamp::value_digest(&salt, &name, &v),
                crate::digest::component_digest(&salt, "text.0", &v.canonical_bytes())
            );
        }
    }

    #[test]
    fn signature_is_split_from_the_first_text_part() {
        let raw = b"From: A <A@X.org>\nTo: b@y.org\nSubject: hi\n\nHello\n\n-- \nAlice\n";
        let msg = mail_parser::MessageParser::default().parse(raw).unwrap();
        let d = decompose(&msg, &Envelope::default(), &Selection::default());
        let text = d
            .get(&ComponentName {
                family: Family::Text,
                index: 0,
            })
            .unwrap();
        assert_eq!(text, &Value::Lines(Lines::from_lines(["Hello"])));
        let sig = d.get(&ComponentName::single(Family::Signature)).unwrap();
        assert_eq!(sig, &Value::Lines(Lines::from_lines(["Alice"])));
        let from = d.get(&ComponentName::single(Family::FromDomain)).unwrap();
        assert_eq!(from, &Value::Bytes(b"x.org".to_vec()));
    }
}
