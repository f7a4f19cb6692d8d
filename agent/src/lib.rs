// SPDX-License-Identifier: GPL-3.0-or-later
//! The mailstamp agent: configuration, the chain client, the writer key, and the commands the
//! CLI runs (stamp, verify, audit, deploy). The verdict logic itself lives in `mailstamp-core`.

pub mod allowlist;
pub mod auth;
pub mod batcher;
pub mod chain;
pub mod config;
pub mod dns;
pub mod inbound;
pub mod keys;
pub mod maildir;
pub mod maps;
pub mod milter;
pub mod onboard;
pub mod ops;
pub mod recover;
pub mod relay;
pub mod senders;
pub mod session;
pub mod store;
