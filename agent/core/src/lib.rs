// SPDX-License-Identifier: GPL-3.0-or-later
//! The pure mailstamp pipeline: decompose → canonicalise → hash → commit → match.
//!
//! No I/O, no async, no chain: bytes in, decisions out. The agent crate does the talking to
//! MTAs and the chain; everything that decides a verdict lives here. The normative description
//! is `docs/PROTOCOL.md`.
//!
//! # Layers
//!
//! The modules form one-way layers: a module refers to another (`crate::…`, in a `use` line
//! or an inline path) only if its row below lists it, and every module listed sits in a lower
//! layer, so no two modules import each other, directly or round a circle. The crate root
//! (this file: re-exports and the parser) is above them all; a module names the owning
//! module, never a root path such as `crate::Family`, which would hide the real edge.
//! `tests/layers.rs` checks every module's imports against this table (test modules
//! excepted) and the table against its own copy.
//!
//! | layer | module    | may import                                                            |
//! |-------|-----------|-----------------------------------------------------------------------|
//! | 0     | canon     | —                                                                     |
//! | 0     | hex0x     | —                                                                     |
//! | 0     | name      | —                                                                     |
//! | 1     | digest    | name                                                                  |
//! | 1     | writers   | hex0x                                                                 |
//! | 2     | merkle    | digest                                                                |
//! | 3     | component | canon, digest, name                                                   |
//! | 3     | header    | digest, hex0x, merkle, name                                           |
//! | 4     | stamp     | canon, component, digest, header, merkle, name                        |
//! | 5     | verify    | canon, component, digest, header, hex0x, merkle, name, stamp, writers |
//! | 6     | hops      | canon, component, digest, header, hex0x, name, stamp, verify, writers |

pub mod canon;
pub mod component;
pub mod digest;
pub mod header;
mod hex0x;
pub mod hops;
pub mod merkle;
pub mod name;
pub mod stamp;
pub mod verify;
pub mod writers;

pub use component::{Envelope, Selection};
pub use header::{HeaderError, StampHeader};
pub use hops::{
    Chain, ChainInspection, ChainReport, HopField, ListSettings, evaluate_chain, inspect_chain,
    list_changes, prepare_hop,
};
/// The parser the pipeline is built on, for callers that hold parsed messages.
pub use mail_parser;
pub use name::{ComponentName, Family};
pub use stamp::{ChainRef, Prepared, StampError, insert_header, prepare};
pub use verify::{Inspection, Lookup, Policy, Report, Status, Verdict, evaluate, inspect};
pub use writers::WriterAuth;

/// Largest message the core takes (bytes). Larger input is refused by the callers with a
/// clear error rather than parsed: bounded memory and time.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Most lines starting with `--` a message may have (docs/PERFORMANCE.md, "Bounds").
/// Every MIME part of a multipart body follows a delimiter line (`--boundary`), so this is
/// an upper bound on the parts mail-parser finds outside encoded nested messages, counted
/// before parsing: mail-parser keeps ~460 bytes per part, so a 25 MiB message of minimal
/// parts (`--b`, a blank line, one character) would cost ~1.6 GB to parse; at this bound
/// the parts cost at most ~25 MB, and a real message (10,000 parts measured) is far below.
pub const MAX_DELIMITER_LINES: usize = 50_000;

/// Why `raw` is too large to be parsed, or `None` when it is within the bounds: more than
/// [`MAX_MESSAGE_BYTES`] bytes or more than [`MAX_DELIMITER_LINES`] lines starting with
/// `--`. Callers refuse such a message (stamping) or call it `invalid` (verifying) without
/// parsing it: bounded memory and time, and a clear reason.
pub fn oversized(raw: &[u8]) -> Option<String> {
    if raw.len() > MAX_MESSAGE_BYTES {
        return Some(format!(
            "message is {} bytes, more than the {MAX_MESSAGE_BYTES} allowed",
            raw.len()
        ));
    }
    let starts = std::iter::once(0).chain(
        raw.iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'\n')
            .map(|(i, _)| i + 1),
    );
    let delimiters = starts
        .filter(|&i| raw.get(i..i + 2) == Some(b"--"))
        .take(MAX_DELIMITER_LINES + 1)
        .count();
    (delimiters > MAX_DELIMITER_LINES).then(|| {
        format!(
            "message has more than {MAX_DELIMITER_LINES} lines starting with \"--\" (MIME delimiters), more than allowed"
        )
    })
}

/// The message parser: mail-parser's default treatment of every header that the pipeline or
/// the MIME structure reads; `Received` and `List-*` are skipped over (value
/// `HeaderValue::Empty`; name, offsets and `header_raw` stay), and `Return-Path`,
/// `References` and `In-Reply-To` kept as raw text, instead of being parsed into structures
/// nobody here reads. Parsing `Received` alone was ~15% of verification CPU
/// (docs/PERFORMANCE.md). Every header the pipeline reads is parsed exactly as by
/// mail-parser's default, so every component, digest and verdict is unchanged (the
/// `lean_parse_*` tests compare both parsers on the corpus). Code that needs trace or list
/// header values parses with `mail_parser::MessageParser::default()` itself.
static PARSER: std::sync::LazyLock<mail_parser::MessageParser> = std::sync::LazyLock::new(|| {
    use mail_parser::HeaderName as H;
    let p = mail_parser::MessageParser::new();
    let p = [
        H::Subject,
        H::Comments,
        H::ContentDescription,
        H::ContentLocation,
        H::ContentTransferEncoding,
    ]
    .into_iter()
    .fold(p, |p, h| p.header_text(h));
    let p = [
        H::From,
        H::To,
        H::Cc,
        H::Bcc,
        H::ReplyTo,
        H::Sender,
        H::ResentTo,
        H::ResentFrom,
        H::ResentBcc,
        H::ResentCc,
        H::ResentSender,
    ]
    .into_iter()
    .fold(p, |p, h| p.header_address(h));
    let p = [H::Date, H::ResentDate]
        .into_iter()
        .fold(p, |p, h| p.header_date(h));
    let p = [H::MessageId, H::ContentId, H::ResentMessageId]
        .into_iter()
        .fold(p, |p, h| p.header_id(h));
    let p = [H::Keywords, H::ContentLanguage]
        .into_iter()
        .fold(p, |p, h| p.header_comma_separated(h));
    // Trace and list headers: many and long, read by nothing here; skipped over (their
    // offsets and raw bytes stay available, their value is `HeaderValue::Empty`).
    let p = [
        H::Received,
        H::ListArchive,
        H::ListHelp,
        H::ListId,
        H::ListOwner,
        H::ListPost,
        H::ListSubscribe,
        H::ListUnsubscribe,
    ]
    .into_iter()
    .fold(p, |p, h| p.ignore_header(h));
    [H::ContentType, H::ContentDisposition]
        .into_iter()
        .fold(p, |p, h| p.header_content_type(h))
});

/// Parses a message. `None` when it has no header section at all (not a message).
pub fn parse(raw: &[u8]) -> Option<mail_parser::Message<'_>> {
    PARSER.parse(raw)
}
