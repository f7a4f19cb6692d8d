// SPDX-License-Identifier: GPL-3.0-or-later
//! Decomposition: a parsed message becomes named components in canonical form
//! (docs/PROTOCOL.md §3). Which families are taken is the caller's [`Selection`]; what the
//! MTA knows beyond the bytes is the [`Envelope`]. Owns the component values ([`Value`],
//! [`Decomposed`]) and the address sets the header fields reduce to; the names themselves
//! live in [`crate::name`] and are re-exported here.

use std::{collections::BTreeSet, net::IpAddr};

use mail_parser::{Encoding, Message, MimeHeaders, PartType};

use crate::canon::{self, Lines};
use crate::digest::{keccak256, keccak256_lf};
pub use crate::name::{ComponentName, Family, MAX_PER_FAMILY};

/// Which families a stamp covers. The default is all of them; `origin` is only stamped when
/// the origin IP is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection(pub BTreeSet<Family>);

impl Default for Selection {
    fn default() -> Self {
        Self(Family::ALL.into_iter().collect())
    }
}

impl Selection {
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

fn address_set<'a>(addrs: impl Iterator<Item = &'a mail_parser::Address<'a>>) -> Vec<u8> {
    let mut set: BTreeSet<String> = BTreeSet::new();
    for a in addrs {
        for addr in a.iter() {
            if let Some(x) = addr.address() {
                set.insert(canon::address(x));
            }
        }
    }
    set.into_iter().collect::<Vec<_>>().join("\n").into_bytes()
}

/// The first From address, canonical, or empty.
pub fn from_address(msg: &Message<'_>) -> String {
    msg.from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(canon::address)
        .unwrap_or_default()
}

/// The To, Cc and Bcc addresses, canonical: the envelope `sendmail -t` would use.
pub fn header_recipients(msg: &Message<'_>) -> Vec<String> {
    let mut set = BTreeSet::new();
    for a in msg.all_to().chain(msg.all_cc()).chain(msg.all_bcc()) {
        for addr in a.iter() {
            if let Some(x) = addr.address() {
                set.insert(canon::address(x));
            }
        }
    }
    set.into_iter().collect()
}

/// Takes a message apart into the selected components.
pub fn decompose(msg: &Message<'_>, env: &Envelope, sel: &Selection) -> Decomposed {
    let mut out = Decomposed {
        values: Vec::with_capacity(Family::ALL.len() + 4),
        ..Decomposed::default()
    };
    let push = |name: ComponentName, v: Value, out: &mut Decomposed| {
        out.values.push((name, v));
    };

    let from = from_address(msg);
    let (local, domain) = canon::split_address(&from);
    let single = |f| ComponentName::single(f);
    if sel.has(Family::From) {
        push(
            single(Family::From),
            Value::Bytes(from.as_bytes().to_vec()),
            &mut out,
        );
    }
    if sel.has(Family::FromLocal) {
        push(
            single(Family::FromLocal),
            Value::Bytes(local.as_bytes().to_vec()),
            &mut out,
        );
    }
    if sel.has(Family::FromDomain) {
        push(
            single(Family::FromDomain),
            Value::Bytes(domain.as_bytes().to_vec()),
            &mut out,
        );
    }
    if sel.has(Family::To) {
        push(
            single(Family::To),
            Value::Bytes(address_set(msg.all_to())),
            &mut out,
        );
    }
    if sel.has(Family::Cc) {
        push(
            single(Family::Cc),
            Value::Bytes(address_set(msg.all_cc())),
            &mut out,
        );
    }
    if sel.has(Family::Subject) {
        let s = canon::collapse_whitespace(msg.subject().unwrap_or(""));
        push(
            single(Family::Subject),
            Value::Bytes(s.into_bytes()),
            &mut out,
        );
    }
    if sel.has(Family::Date) {
        let d = match msg.date() {
            Some(d) => d.to_timestamp().to_string(),
            None => canon::collapse_whitespace(msg.header_raw("Date").unwrap_or("")),
        };
        push(single(Family::Date), Value::Bytes(d.into_bytes()), &mut out);
    }
    if sel.has(Family::MessageId) {
        let id = msg.message_id().unwrap_or("").trim();
        push(
            single(Family::MessageId),
            Value::Bytes(id.as_bytes().to_vec()),
            &mut out,
        );
    }

    // Parts, in MIME order; multipart containers are structure and not counted.
    let mut texts: Vec<Lines> = Vec::new();
    let mut htmls: Vec<Vec<u8>> = Vec::new();
    let mut atts: Vec<Vec<u8>> = Vec::new();
    for (i, part) in msg.parts.iter().enumerate() {
        let is_att = msg.attachments.contains(&(i as u32));
        // The attachment's content hash, computed on the parser's buffer without a copy.
        let content: Option<[u8; 32]> = match &part.body {
            PartType::Multipart(_) => continue,
            PartType::Text(t) if !is_att => {
                texts.push(canon::text_lines(t));
                None
            }
            PartType::Html(h) if !is_att => {
                htmls.push(canon::collapse_whitespace(h).into_bytes());
                None
            }
            PartType::Text(t) | PartType::Html(t) => Some(keccak256_lf(t.as_bytes())),
            // Only base64 carries exact bytes; a 7bit/8bit/QP body is line-oriented text whose
            // line endings are CRLF on the wire and whatever the MTA likes on disk.
            PartType::Binary(b) | PartType::InlineBinary(b)
                if part.encoding == Encoding::Base64 =>
            {
                Some(keccak256(b))
            }
            PartType::Binary(b) | PartType::InlineBinary(b) => Some(keccak256_lf(b)),
            PartType::Message(m) => Some(keccak256_lf(m.raw_message())),
        };
        if let Some(content) = content {
            let name = part
                .attachment_name()
                .map(canon::collapse_whitespace)
                .unwrap_or_default();
            let mut v = name.into_bytes();
            v.push(0);
            v.extend_from_slice(&content);
            atts.push(v);
        }
    }
    out.counts = PartCounts {
        text: texts.len(),
        html: htmls.len(),
        att: atts.len(),
    };
    if sel.has(Family::Parts) {
        push(
            single(Family::Parts),
            Value::Bytes(out.counts.value()),
            &mut out,
        );
    }

    // The signature block comes off the first text part.
    let signature = texts
        .first_mut()
        .map(Lines::split_signature)
        .unwrap_or_default();
    if sel.has(Family::Text) {
        for (i, t) in texts.into_iter().take(MAX_PER_FAMILY).enumerate() {
            let name = ComponentName {
                family: Family::Text,
                index: i as u8,
            };
            push(name, Value::Lines(t), &mut out);
        }
    }
    if sel.has(Family::Signature) {
        push(single(Family::Signature), Value::Lines(signature), &mut out);
    }
    if sel.has(Family::Html) {
        for (i, h) in htmls.into_iter().take(MAX_PER_FAMILY).enumerate() {
            let name = ComponentName {
                family: Family::Html,
                index: i as u8,
            };
            push(name, Value::Bytes(h), &mut out);
        }
    }
    if sel.has(Family::Attachment) {
        for (i, a) in atts.into_iter().take(MAX_PER_FAMILY).enumerate() {
            let name = ComponentName {
                family: Family::Attachment,
                index: i as u8,
            };
            push(name, Value::Bytes(a), &mut out);
        }
    }
    if sel.has(Family::Origin)
        && let Some(ip) = env.client_ip
    {
        push(
            single(Family::Origin),
            Value::Bytes(ip.to_string().into_bytes()),
            &mut out,
        );
    }
    out
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
