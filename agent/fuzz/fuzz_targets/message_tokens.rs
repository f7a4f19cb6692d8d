// SPDX-License-Identifier: GPL-3.0-or-later
//! The `message` target on the alphabet mail is made of: every input byte is one token of
//! `agent/fuzz/tokens.txt` (header names, MIME types and boundaries, encoded words, CRLF,
//! folding, addresses, printable ASCII…), so mutations insert and delete whole pieces of mail
//! structure instead of random bytes. Same invariants as `message`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mailstamp_fuzz::check_message(&mailstamp_fuzz::expand(data)));
