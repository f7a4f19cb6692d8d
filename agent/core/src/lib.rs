// SPDX-License-Identifier: GPL-3.0-or-later
//! The pure mailstamp pipeline: decompose → canonicalise → hash → commit → match.
//!
//! No I/O, no async, no chain: bytes in, decisions out. The agent crate does the talking to
//! MTAs and the chain; everything that decides a verdict lives here. The normative description
//! is `docs/PROTOCOL.md`.

pub mod canon;
pub mod component;
pub mod digest;
pub mod header;
pub mod merkle;
pub mod stamp;
pub mod verify;
pub mod writers;

pub use component::{ComponentName, Envelope, Family, Selection};
pub use header::{HeaderError, StampHeader};
/// The parser the pipeline is built on, for callers that hold parsed messages.
pub use mail_parser;
pub use stamp::{ChainRef, Prepared, StampError, insert_header, prepare};
pub use verify::{Inspection, Lookup, Policy, Report, Status, Verdict, evaluate, inspect};
pub use writers::WriterAuth;

/// Largest message the core takes (bytes). Larger input is refused by the callers with a
/// clear error rather than parsed: bounded memory and time.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Parses a message. `None` when it has no header section at all (not a message).
pub fn parse(raw: &[u8]) -> Option<mail_parser::Message<'_>> {
    mail_parser::MessageParser::default().parse(raw)
}
