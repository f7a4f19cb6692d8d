// SPDX-License-Identifier: GPL-3.0-or-later
//! Component names (docs/PROTOCOL.md §3): the [`Family`] vocabulary, a [`ComponentName`] as
//! it appears in the header and the commitment (`subject`, `text.3`), and the per-family item
//! cap that bounds the indices. A leaf: it knows nothing of messages or hashes, so the header
//! codec, the digests and the decomposition can all name components without importing each
//! other.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

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
    /// The display name of the first From address, decoded (version 2).
    FromName,
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
    pub const ALL: [Family; 16] = [
        Family::From,
        Family::FromLocal,
        Family::FromDomain,
        Family::FromName,
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
            Family::FromName => "from.name",
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

    /// The protocol version that introduced the family (docs/PROTOCOL.md §2): a header naming
    /// it must carry at least that `v`, and a stamp of an older version is not asked for it.
    pub fn since(self) -> u32 {
        match self {
            Family::FromName => 2,
            _ => 1,
        }
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
        self.with_str(|name| f.write_str(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reject_garbage() {
        for s in [
            "from",
            "from.local",
            "from.name",
            "text.0",
            "att.15",
            "message-id",
            "origin",
        ] {
            let n = ComponentName::parse(s).unwrap();
            assert_eq!(n.to_string(), s);
            n.with_str(|x| assert_eq!(x, s));
        }
        // `with_str` (and `Display`, which writes it) is `family` or `family.index` for every
        // name that can be built, even indices the protocol does not use.
        for family in Family::ALL {
            for index in 0..=u8::MAX {
                let n = ComponentName { family, index };
                let want = if family.indexed() {
                    format!("{}.{index}", family.as_str())
                } else {
                    family.as_str().to_owned()
                };
                n.with_str(|x| assert_eq!(x, want));
                assert_eq!(n.to_string(), want);
            }
        }
        for s in [
            "text",
            "from.0",
            "from.name.0",
            "att.16",
            "text.01",
            "text.",
            "nope",
            "html.-1",
            "",
        ] {
            assert!(ComponentName::parse(s).is_none(), "{s}");
        }
    }
}
