// SPDX-License-Identifier: GPL-3.0-or-later
//! Mail through two real Postfix instances on loopback, alone and with a mailstamp milter on
//! each side, in one run (issue 3 §5). Bounded: `MAILSTAMP_LOAD_N` messages (default 200, at
//! most 5000) over `MAILSTAMP_LOAD_CONC` SMTP sessions (default 8, at most 64).
//!
//! Run: `source scripts/lib.sh && cargo bench -p mailstamp --bench postfix_load`
//! (installs postfix and swaks from Debian's packages when they are missing; needs root).

#![allow(missing_docs, dead_code, unreachable_pub, unused_imports)]

#[path = "../../tests/it/harness.rs"]
mod harness;
#[path = "../../tests/it/postfix.rs"]
mod postfix;

#[tokio::main]
async fn main() {
    postfix::postfix_load().await;
}
