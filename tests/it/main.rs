// SPDX-License-Identifier: GPL-3.0-or-later
//! Integration tests of the mailstamp agent: a real anvil started from `anvil.toml`, the real
//! registry deployed from the checked-in artifact, the real `mailstamp` binary, and real mail
//! from the SpamAssassin corpus (installed by `scripts/setup`). One binary so it compiles once.

mod harness;
mod hops;
mod lists;

mod abi_drift;
mod allowlist;
mod audit_web;
mod batch;
mod bounds;
mod chain_e2e;
mod chain_fees;
mod cli;
mod clock;
mod corpus;
mod dns;
mod dnsfix;
mod doctor;
mod dovecot;
mod logs;
mod lying_proxy;
mod milter;
mod milter_batch;
mod paths;
mod postfix;
mod recover;
mod relay;
mod senders;
mod three_sites;
mod trust;
mod two_hosts;
mod two_postfix;
