// SPDX-License-Identifier: GPL-3.0-or-later
//! Who may stamp for a domain (docs/PROTOCOL.md §6a): the writer record a domain publishes in
//! DNS at `_mailstamp.<domain>`, parsed strictly, and the outcome of checking a stamp's writer
//! against it — shaped like mail-auth's results, so DNS trouble is a temporary error, never a
//! failure.

use serde::{Deserialize, Serialize};

use crate::hex0x;

/// The DNS label under which a domain publishes its writers.
pub const RECORD_LABEL: &str = "_mailstamp";
/// The version tag every writer record starts with.
pub const RECORD_VERSION: &str = "v=mailstamp1";
/// Most writers one record may list.
pub const MAX_WRITERS: usize = 16;

/// One parsed writer record: `v=mailstamp1; w=0x…[,0x…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterRecord {
    /// Authorised writer addresses.
    pub writers: Vec<[u8; 20]>,
}

/// Why a writer record does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not a mailstamp record at all (another TXT at the same name); ignored.
    #[error("not a mailstamp record")]
    NotOurs,
    /// A mailstamp record that is malformed.
    #[error("malformed writer record: {0}")]
    Malformed(String),
}

impl WriterRecord {
    /// Parses the text of one TXT record (its character-strings already concatenated).
    pub fn parse(txt: &str) -> Result<Self, RecordError> {
        let mut tags = txt.split(';').map(str::trim).filter(|t| !t.is_empty());
        let first = tags.next().unwrap_or("");
        if first.replace(' ', "") != RECORD_VERSION {
            return Err(RecordError::NotOurs);
        }
        let mut writers = Vec::new();
        let mut seen_w = false;
        for tag in tags {
            let Some((k, v)) = tag.split_once('=') else {
                return Err(RecordError::Malformed(format!(
                    "`{}` is not tag=value",
                    cut(tag)
                )));
            };
            // Tags other than w are for later versions and ignored.
            if k.trim() == "w" {
                if seen_w {
                    return Err(RecordError::Malformed("tag w appears twice".into()));
                }
                seen_w = true;
                for a in v.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                    writers.push(parse_address(a)?);
                }
            }
        }
        if writers.is_empty() {
            return Err(RecordError::Malformed("no writer (tag w) listed".into()));
        }
        if writers.len() > MAX_WRITERS {
            return Err(RecordError::Malformed(format!(
                "more than {MAX_WRITERS} writers"
            )));
        }
        Ok(Self { writers })
    }

    /// The record text for `writers`.
    pub fn format(writers: &[[u8; 20]]) -> String {
        let list: Vec<String> = writers.iter().map(|w| hex0x::encode(w)).collect();
        format!("{RECORD_VERSION}; w={}", list.join(","))
    }
}

fn cut(s: &str) -> String {
    s.chars().take(40).collect()
}

fn parse_address(a: &str) -> Result<[u8; 20], RecordError> {
    let h = a
        .strip_prefix("0x")
        .or_else(|| a.strip_prefix("0X"))
        .ok_or_else(|| RecordError::Malformed(format!("writer `{}` must start with 0x", cut(a))))?;
    let mut out = [0u8; 20];
    if h.len() != 40 || hex::decode_to_slice(h, &mut out).is_err() {
        return Err(RecordError::Malformed(format!(
            "writer `{}` is not 40 hex digits",
            cut(a)
        )));
    }
    Ok(out)
}

/// Whether a stamp's writer may write for the From domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "result", content = "detail")]
pub enum WriterAuth {
    /// Listed by the domain's record, or pinned by the operator's trust map (the detail says
    /// which).
    Pass(String),
    /// The domain publishes writers and this is not one of them.
    Fail(String),
    /// The domain publishes no writer record: a stamp proves nothing about the From domain.
    None(String),
    /// The domain's records are malformed.
    PermError(String),
    /// DNS could not be asked (timeout, SERVFAIL…): try again later.
    TempError(String),
}

impl WriterAuth {
    /// The short name (`pass`, `fail`, `none`, `permerror`, `temperror`).
    pub fn as_str(&self) -> &'static str {
        match self {
            WriterAuth::Pass(_) => "pass",
            WriterAuth::Fail(_) => "fail",
            WriterAuth::None(_) => "none",
            WriterAuth::PermError(_) => "permerror",
            WriterAuth::TempError(_) => "temperror",
        }
    }

    /// The detail text.
    pub fn detail(&self) -> &str {
        match self {
            WriterAuth::Pass(d)
            | WriterAuth::Fail(d)
            | WriterAuth::None(d)
            | WriterAuth::PermError(d)
            | WriterAuth::TempError(d) => d,
        }
    }
}

/// Checks `writer` against the TXT records found at `_mailstamp.<domain>` (each already
/// concatenated). Records that are not mailstamp records are ignored; several mailstamp
/// records add up (a rotation window lists the old and the new writer).
pub fn authorise(domain: &str, txts: &[String], writer: &[u8; 20]) -> WriterAuth {
    let mut writers = Vec::new();
    let mut errors = Vec::new();
    for t in txts {
        match WriterRecord::parse(t) {
            Ok(r) => writers.extend(r.writers),
            Err(RecordError::NotOurs) => {}
            Err(RecordError::Malformed(e)) => errors.push(e),
        }
    }
    let w = hex0x::encode(writer);
    if writers.contains(writer) {
        WriterAuth::Pass(format!("{RECORD_LABEL}.{domain} lists {w}"))
    } else if !writers.is_empty() {
        WriterAuth::Fail(format!("{RECORD_LABEL}.{domain} does not list {w}"))
    } else if let Some(e) = errors.first() {
        WriterAuth::PermError(format!("{RECORD_LABEL}.{domain}: {e}"))
    } else {
        WriterAuth::None(format!(
            "{domain} publishes no writer record at {RECORD_LABEL}.{domain}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 20] = [0xaa; 20];
    const B: [u8; 20] = [0xbb; 20];

    #[test]
    fn records_round_trip_and_garbage_is_named() {
        let txt = WriterRecord::format(&[A, B]);
        assert_eq!(WriterRecord::parse(&txt).unwrap().writers, vec![A, B]);
        assert_eq!(
            WriterRecord::parse("v=spf1 -all"),
            Err(RecordError::NotOurs)
        );
        for bad in [
            "v=mailstamp1",
            "v=mailstamp1; w=",
            "v=mailstamp1; w=0x12",
            "v=mailstamp1; w=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "v=mailstamp1; w=0xzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
            "v=mailstamp1; garbage",
            "v=mailstamp1; w=0xaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; w=0xaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(
                matches!(WriterRecord::parse(bad), Err(RecordError::Malformed(_))),
                "{bad}"
            );
        }
        let many: Vec<[u8; 20]> = (0..17).map(|i| [i as u8; 20]).collect();
        assert!(WriterRecord::parse(&WriterRecord::format(&many)).is_err());
    }

    #[test]
    fn authorisation_outcomes() {
        let a = WriterRecord::format(&[A]);
        let b = WriterRecord::format(&[B]);
        assert_eq!(
            authorise("x.org", std::slice::from_ref(&a), &A).as_str(),
            "pass"
        );
        assert_eq!(
            authorise("x.org", std::slice::from_ref(&a), &B).as_str(),
            "fail"
        );
        // Rotation: two records (or one listing both) authorise both writers.
        assert_eq!(
            authorise("x.org", &[a.clone(), b.clone()], &B).as_str(),
            "pass"
        );
        assert_eq!(
            authorise("x.org", &["v=spf1 -all".into()], &A).as_str(),
            "none"
        );
        assert_eq!(authorise("x.org", &[], &A).as_str(), "none");
        assert_eq!(
            authorise("x.org", &["v=mailstamp1; w=0x1".into()], &A).as_str(),
            "permerror"
        );
        // A good record wins over a broken one next to it.
        assert_eq!(
            authorise("x.org", &["v=mailstamp1; w=0x1".into(), a], &A).as_str(),
            "pass"
        );
    }
}
