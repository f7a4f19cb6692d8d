// SPDX-License-Identifier: GPL-3.0-or-later
//! The value of a `Mail-Stamp:` header field: `StampHeader::decode`, and the same value read
//! from a message by `inspect` (which takes it from the raw bytes at mail-parser's offsets).
//! A value that decodes must encode back to the same header, on one line and folded; `inspect`
//! must agree with `decode`. Squeezed by `agent/fuzz/dict/mail_stamp_header.dict` (tags, names,
//! hex and base64 of the right lengths).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailstamp_core::{Inspection, StampHeader, inspect, parse};

fuzz_target!(|data: &[u8]| {
    // Headers are text: `inspect` refuses non-UTF-8 before decoding, so decode sees only str.
    let value = String::from_utf8_lossy(data);
    let decoded = StampHeader::decode(&value);
    if let Ok(h) = &decoded {
        mailstamp_fuzz::check_header(h);
    }
    // As one header field of a message (a value with a line break in it would be another
    // field or a fold, which is a different value).
    if value.contains(['\r', '\n']) {
        return;
    }
    let raw = format!("Mail-Stamp:{value}\r\nFrom: a@a.example\r\n\r\nbody\r\n");
    let Some(msg) = parse(raw.as_bytes()) else {
        return;
    };
    match (inspect(&msg), &decoded) {
        (Inspection::Stamped(got), Ok(want)) => assert_eq!(*got, *want),
        (Inspection::Invalid(_), Err(_)) => {}
        (got, want) => panic!("inspect says {got:?}, decode says {want:?}"),
    }
});
