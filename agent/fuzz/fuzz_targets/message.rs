// SPDX-License-Identifier: GPL-3.0-or-later
//! A whole message as raw bytes through the whole pipeline: `parse` → `inspect` (and, for a
//! stamped message, `evaluate` against the record its header claims) → `decompose` with the
//! lean and the default parser → `prepare` → `insert_header` → `evaluate`, which must say
//! `wanted`. The invariants are in `mailstamp_fuzz::check_message`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mailstamp_fuzz::check_message(data));
