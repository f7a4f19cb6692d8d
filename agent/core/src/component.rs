// SPDX-License-Identifier: GPL-3.0-or-later
//! Decomposition: a parsed message becomes named components in canonical form
//! (docs/PROTOCOL.md §3). Which families are taken is the caller's [`Selection`].

use std::{collections::BTreeSet, fmt, net::IpAddr, str::FromStr};

use mail_parser::{Encoding, Message, MimeHeaders, PartType};
use serde::{Deserialize, Serialize};

use crate::canon::{self, Lines};
use crate::digest::{keccak256, keccak256_lf};

/// At most this many items of one indexed family (text, html, att) are stamped; the `parts`
/// component still counts them all, so adding or removing one beyond the cap is seen.
pub const MAX_PER_FAMILY: usize = 16;

/// A kind of component. Indexed families (text, html, att) yield one component per item,
/// named `family.N`; the others yield exactly one component named like the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Family {
    /// The first From address.
    From,
    /// Its local part.
    FromLocal,
    /// Its domain.
    FromDomain,
    /// The set of To addresses.
    To,
    /// The set of Cc addresses.
    Cc,
    /// The set of envelope recipients (carried as per-recipient digests, so Bcc works).
    Rcpt,
    /// The decoded Subject.
    Subject,
    /// The Date, as a UTC timestamp.
    Date,
    /// The Message-ID.
    MessageId,
    /// How many items each indexed family has.
    Parts,
    /// Each text part (the first one without its signature block).
    Text,
    /// The signature block of the first text part.
    Signature,
    /// Each HTML part.
    Html,
    /// Each attachment: file name and content hash.
    Attachment,
    /// The IP address the writer delivers from, compared with the receiver's SMTP client IP.
    Origin,
}

impl Family {
    /// Every family, in header order.
    pub const ALL: [Family; 15] = [
        Family::From,
        Family::FromLocal,
        Family::FromDomain,
        Family::To,
        Family::Cc,
        Family::Rcpt,
        Family::Subject,
        Family::Date,
        Family::MessageId,
        Family::Parts,
        Family::Text,
        Family::Signature,
        Family::Html,
        Family::Attachment,
        Family::Origin,
    ];

    /// The protocol name.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::From => "from",
            Family::FromLocal => "from.local",
            Family::FromDomain => "from.domain",
            Family::To => "to",
            Family::Cc => "cc",
            Family::Rcpt => "rcpt",
            Family::Subject => "subject",
            Family::Date => "date",
            Family::MessageId => "message-id",
            Family::Parts => "parts",
            Family::Text => "text",
            Family::Signature => "signature",
            Family::Html => "html",
            Family::Attachment => "att",
            Family::Origin => "origin",
        }
    }

    /// The family with protocol name `s`.
    pub fn lookup(s: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// Whether components of this family carry an index (`text.0`).
    pub fn indexed(self) -> bool {
        matches!(self, Family::Text | Family::Html | Family::Attachment)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Family::lookup(s).ok_or_else(|| {
            let known: Vec<_> = Family::ALL.iter().map(|f| f.as_str()).collect();
            format!(
                "unknown component family `{s}` (known: {})",
                known.join(", ")
            )
        })
    }
}

impl TryFrom<String> for Family {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Family> for String {
    fn from(f: Family) -> String {
        f.as_str().to_owned()
    }
}

/// A component name as it appears in the header: a family and, for indexed ones, an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ComponentName {
    /// The family.
    pub family: Family,
    /// The item index for indexed families, 0 otherwise.
    pub index: u8,
}

impl ComponentName {
    /// A non-indexed component.
    pub fn single(family: Family) -> Self {
        Self { family, index: 0 }
    }

    /// Parses `subject` or `text.3`. Indices run from 0 to [`MAX_PER_FAMILY`]` - 1`.
    pub fn parse(s: &str) -> Option<Self> {
        // `Family::lookup`, not `FromStr`: its error message is not needed here, and this
        // runs for every name of every header verified.
        if let Some(family) = Family::lookup(s) {
            return (!family.indexed()).then_some(Self::single(family));
        }
        let (fam, idx) = s.rsplit_once('.')?;
        let family = Family::lookup(fam)?;
        if !family.indexed()
            || idx.is_empty()
            || idx.len() > 2
            || (idx.len() > 1 && idx.starts_with('0'))
        {
            return None;
        }
        let index: u8 = idx.parse().ok()?;
        (usize::from(index) < MAX_PER_FAMILY).then_some(Self { family, index })
    }
}

impl ComponentName {
    /// Calls `f` with the name as text (what `Display` writes), without allocating.
    pub fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        let fam = self.family.as_str();
        if !self.family.indexed() {
            return f(fam);
        }
        let mut buf = [0u8; 16];
        let mut n = fam.len();
        buf[..n].copy_from_slice(fam.as_bytes());
        buf[n] = b'.';
        n += 1;
        if self.index >= 100 {
            buf[n] = b'0' + self.index / 100;
            n += 1;
        }
        if self.index >= 10 {
            buf[n] = b'0' + self.index / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + self.index % 10;
        n += 1;
        // Only ASCII was written.
        f(std::str::from_utf8(&buf[..n]).unwrap_or(fam))
    }
}

impl fmt::Display for ComponentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.family.indexed() {
            write!(f, "{}.{}", self.family, self.index)
        } else {
            f.write_str(self.family.as_str())
        }
    }
}

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
    fn names_round_trip_and_reject_garbage() {
        for s in [
            "from",
            "from.local",
            "text.0",
            "att.15",
            "message-id",
            "origin",
        ] {
            let n = ComponentName::parse(s).unwrap();
            assert_eq!(n.to_string(), s);
            n.with_str(|x| assert_eq!(x, s));
        }
        // `with_str` agrees with `Display` for every name that can be built, even indices the
        // protocol does not use.
        for family in Family::ALL {
            for index in 0..=u8::MAX {
                let n = ComponentName { family, index };
                n.with_str(|x| assert_eq!(x, n.to_string()));
            }
        }
        for s in [
            "text", "from.0", "att.16", "text.01", "text.", "nope", "html.-1", "",
        ] {
            assert!(ComponentName::parse(s).is_none(), "{s}");
        }
    }

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
