// SPDX-License-Identifier: GPL-3.0-or-later
//! The relay's SMTP dialogue (agent/src/relay/mod.rs) past the line reader the `smtp` target
//! covers: the client's bytes into `mailstamp::relay::serve` — the connection map and
//! greeting, smtp-proto's parsing, the state of HELO / MAIL / RCPT / DATA / RSET, the limits,
//! DATA up to its final dot, the judgement or stamp and the hand-over to the next hop —
//! over an in-memory pipe, with no chain, name server or next hop reachable (the hand-over
//! is then a 451).
//!
//! Input: one byte choosing the config (`mailstamp_fuzz_agent::CONFIGS`, bits 0–1), the
//! client's address (bits 2–3: an outside one, a trusted one, two in contrib's connection
//! map) and the size of the pieces the client writes (bits 4–7); then what the client sends.
//!
//! Asserts: no panic, no hang; the relay writes only whole reply lines (`NNN text` or
//! `NNN-text`, a code from 200 to 599, CRLF), the last one final; it opens with a greeting
//! (220) or a refusal (554, 421); it answers no more than once per line the client sent,
//! plus the greeting.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The client addresses: outside, trusted (outbound in config 1), refused and deferred by
/// contrib's connection map.
const PEERS: [&str; 4] = [
    "203.0.113.5:2525",
    "127.0.0.1:2525",
    "192.0.2.1:2525",
    "198.51.100.7:2525",
];

/// Checks the relay's output; returns the number of final reply lines.
fn check_replies(out: &[u8]) -> usize {
    let mut finals = 0;
    let mut last_final = true;
    for (i, line) in out.split_inclusive(|&b| b == b'\n').enumerate() {
        let text = String::from_utf8_lossy(line);
        assert!(line.ends_with(b"\r\n"), "reply line without CRLF: {text:?}");
        let code = line
            .get(..3)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse::<u16>().ok());
        let Some(code) = code.filter(|c| (200..600).contains(c)) else {
            panic!("reply line without a code: {text:?}");
        };
        if i == 0 {
            assert!([220, 554, 421].contains(&code), "first reply {text:?}");
        }
        match line.get(3) {
            Some(b' ') => {
                finals += 1;
                last_final = true;
            }
            Some(b'-') => last_final = false,
            _ => panic!("reply line with neither space nor dash after its code: {text:?}"),
        }
    }
    assert!(last_final, "the last reply line is a continuation");
    finals
}

fuzz_target!(|input: &[u8]| {
    let Some((&head, rest)) = input.split_first() else {
        return;
    };
    let daemon = mailstamp_fuzz_agent::daemon(head & 3);
    let peer: SocketAddr = PEERS[usize::from(head >> 2) & 3]
        .parse()
        .expect("a socket address");
    let piece = match head >> 4 {
        0 => rest.len().max(1),
        n => usize::from(n) * 7,
    };
    let sent = rest.to_vec();
    let lines = sent.iter().filter(|&&b| b == b'\n').count();
    let out = mailstamp_fuzz_agent::runtime().block_on(async move {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let cancel = CancellationToken::new();
        let serve = mailstamp::relay::serve(&daemon, server, peer, &cancel);
        let talk = async move {
            let (mut rd, mut wr) = tokio::io::split(client);
            let write = async {
                for p in sent.chunks(piece) {
                    // The relay may close first (QUIT, a limit): the rest is not taken.
                    if wr.write_all(p).await.is_err() {
                        break;
                    }
                    // Let the relay read this piece alone.
                    tokio::task::yield_now().await;
                }
                let _ = wr.shutdown().await;
            };
            let mut out = Vec::new();
            let read = rd.read_to_end(&mut out);
            let (_, read) = tokio::join!(write, read);
            read.expect("the pipe reads to its end");
            out
        };
        tokio::join!(serve, talk).1
    });
    let finals = check_replies(&out);
    assert!(
        finals <= lines + 1,
        "{finals} final replies to {lines} lines: {:?}",
        String::from_utf8_lossy(&out)
    );
});
