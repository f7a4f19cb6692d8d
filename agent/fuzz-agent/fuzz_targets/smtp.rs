// SPDX-License-Identifier: GPL-3.0-or-later
//! The relay's SMTP dialogue as the relay reads it (agent/src/relay/mod.rs): the input cut
//! into lines at LF, a line longer than the relay's limit refused without parsing, every
//! other line parsed by smtp-proto's `Request::parse`; after a `DATA` line, the rest goes
//! through smtp-proto's `DataReceiver` in chunks the input chooses, as the relay feeds it.
//! Asserts: no panic; a parsed `MAIL FROM` / `RCPT TO` address has no more characters than
//! the line has bytes (smtp-proto turns an 8-bit byte into a character of 2–3 UTF-8 bytes);
//! the message `DataReceiver` gives back is never longer than what it was fed (plus the two
//! bytes of CRLF the relay primes it with), and the same whether fed in one go or in pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_proto::Request;
use smtp_proto::request::receiver::DataReceiver;

/// The relay's line limit (`relay::MAX_LINE`, RFC 5321 §4.5.3.1.6 with room for extensions).
const MAX_LINE: usize = 4096;

/// Feeds `bytes` to a fresh receiver in pieces of `step` bytes; (message, whether it ended).
fn data(bytes: &[u8], step: usize) -> (Vec<u8>, bool) {
    let (mut rx, mut out) = (DataReceiver::new(), Vec::new());
    rx.ingest(&mut b"\r\n".iter(), &mut out);
    for chunk in bytes.chunks(step.max(1)) {
        if rx.ingest(&mut chunk.iter(), &mut out) {
            return (out, true);
        }
    }
    (out, false)
}

fuzz_target!(|input: &[u8]| {
    let (step, input) = input
        .split_first()
        .map_or((1, input), |(s, r)| (*s as usize, r));
    let mut rest = input;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let (line, tail) = rest.split_at(end);
        rest = tail;
        if line.len() > MAX_LINE {
            continue;
        }
        match Request::parse(&mut line.iter()).map(Request::into_owned) {
            Ok(Request::Mail { from }) => assert!(from.address.chars().count() <= line.len()),
            Ok(Request::Rcpt { to }) => assert!(to.address.chars().count() <= line.len()),
            Ok(Request::Data) => {
                let (whole, ended) = data(rest, rest.len());
                assert!(whole.len() <= rest.len() + 2);
                let (pieces, ended2) = data(rest, step);
                assert_eq!(
                    (&whole, ended),
                    (&pieces, ended2),
                    "fed in pieces of {step}"
                );
                return;
            }
            _ => {}
        }
    }
});
