// SPDX-License-Identifier: GPL-3.0-or-later
//! The mailstamp agent: everything around the pure pipeline of `mailstamp-core` — the chain,
//! the store, DNS, the people lists, stamping and verifying, the SMTP-session decisions and
//! the two MTA adapters. The binary (`src/main.rs`, `src/cli/`) only parses flags and prints.
//!
//! The modules form one-way layers: a module imports only from the rows above its own (the
//! `layers` test reads `src/**/*.rs` and fails on an import against this table):
//!
//! | row | modules | what they own |
//! |-----|---------|---------------|
//! | 0 | `error`, `util`, `metrics`, `config` | the error type; clock, text, networks; the Prometheus registry; every config section with its checks |
//! | 1 | `store`, `chain`, `dns`, `keys`, `maildir`, `maps` | infrastructure: SQLite, the registry, DNS, the writer key, Maildir, the access maps |
//! | 2 | `auth` | DMARC through the resolver of `dns` |
//! | 3 | `people`, `stamping`, `verifying`, `onboard` | the domain: who is who, stamping (direct, batch, the daemons' batcher), verifying, customer domains |
//! | 4 | `inbound` | the inbound folder decision |
//! | 5 | `session`, `recover`, `doctor` | SMTP-session decisions and daemon state; the Junk recovery pass; the deployment checks |
//! | 6 | `milter`, `relay`, `audit` | the adapters: protocol events in, one `session` call, one reply out; the audit page (records, activity, health, a report over HTTP) |
//!
//! Two modules of one row never use each other (row 0 has its own order: `error`, then
//! `util`, then `metrics`, then `config`). Inside one module's own tree (`session/`, `chain/`…) the files are
//! one room: the parent re-exports its children and the children use the parent's types
//! (`super::`), as Rust's `impl` blocks across files need; the rows are about rooms.

pub mod error;
pub mod metrics;
pub mod util;

pub mod config;

pub mod chain;
pub mod dns;
pub mod keys;
pub mod maildir;
pub mod maps;
pub mod store;

pub mod auth;

pub mod onboard;
pub mod people;
pub mod stamping;
pub mod verifying;

pub mod inbound;

pub mod doctor;
pub mod recover;
pub mod session;

pub mod audit;
pub mod milter;
pub mod relay;

pub use error::{Error, Result};

#[cfg(test)]
mod layers;
