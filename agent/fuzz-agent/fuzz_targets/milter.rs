// SPDX-License-Identifier: GPL-3.0-or-later
//! The milter session (agent/src/milter.rs) as the MTA drives it: milter protocol packets
//! into `mailstamp::milter::run` — indymilter's own decoder, the real callbacks, the real
//! connect / HELO / MAIL / RCPT stages, the inbound judgement or the outbound stamp at end of
//! message, the actions and replies — over an in-memory pipe, with no chain, name server or
//! store behind it (a stamp is then a temperror, stamping is refused or passed unstamped).
//!
//! Input: one byte choosing the config (`mailstamp_fuzz_agent::CONFIGS`, low two bits), the
//! body chunk size (bits 3–7) and whether the rest is raw protocol (bit 2); raw, the rest
//! follows the negotiation as it is. Otherwise a script, then a blank line, then the message:
//! script lines `C host addr` (connect; addr an IP, `unix:PATH` or anything: unknown
//! family), `H name`, `M args…`, `R args…` (space-separated C strings), `A user` (the
//! `{auth_authen}` macro), `O name` (`{daemon_name}`), `I id` (the queue id), `T` (DATA),
//! `U text` (unknown command), `X` (abort), `E` (end of message). The message goes as
//! Postfix sends it: header fields (name, value with its leading space, folds as LF) until
//! the first line that is not one, end of header, the body in chunks, end of message; then
//! quit.
//!
//! Asserts: no panic, no hang; every reply is a whole packet; the milter only answers,
//! negotiates, adds, inserts or removes header fields and quarantines (never touches the
//! envelope or the body); an added `X-Mailstamp-Verdict` names one of the six verdicts.
#![no_main]

use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;
use mailstamp::session::VERDICT_HEADER;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// The MTA's side of the negotiation, as Postfix offers it: protocol 6, every action, every
/// option (LEADING_SPACE, 0x100000, among them).
const OPTNEG: [u8; 12] = [0, 0, 0, 6, 0, 0, 0x01, 0xff, 0, 0x1f, 0xff, 0xff];

/// A listener that hands out one in-memory connection, then none.
struct Once(Option<DuplexStream>);

impl indymilter::Listener for Once {
    type Io = DuplexStream;

    fn poll_accept(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<DuplexStream>> {
        match self.0.take() {
            Some(s) => Poll::Ready(Ok(s)),
            None => Poll::Pending,
        }
    }
}

/// Appends one packet: length (command byte included), command, payload.
fn packet(out: &mut Vec<u8>, cmd: u8, payload: &[u8]) {
    let len = u32::try_from(payload.len() + 1).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(cmd);
    out.extend_from_slice(payload);
}

/// NUL-terminated strings, one after another.
fn cstrings<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p);
        v.push(0);
    }
    v
}

/// A macro packet for the stage of command `stage`.
fn macros(out: &mut Vec<u8>, stage: u8, name: &[u8], value: &[u8]) {
    let mut p = vec![stage];
    p.extend(cstrings([name, value]));
    packet(out, b'D', &p);
}

/// The connect packet: hostname, family, port, address.
fn connect(out: &mut Vec<u8>, args: &[u8]) {
    let mut words = args.splitn(2, |&b| b == b' ');
    let host = words.next().unwrap_or_default();
    let addr = words.next().unwrap_or_default();
    let mut p = cstrings([host]);
    let text = String::from_utf8_lossy(addr);
    match text.parse::<std::net::IpAddr>() {
        Ok(ip) => {
            p.push(if ip.is_ipv4() { b'4' } else { b'6' });
            p.extend_from_slice(&25u16.to_be_bytes());
            p.extend(cstrings([addr]));
        }
        Err(_) => match addr.strip_prefix(b"unix:") {
            Some(path) => {
                p.push(b'L');
                p.extend_from_slice(&0u16.to_be_bytes());
                p.extend(cstrings([path]));
            }
            None => p.push(b'U'),
        },
    }
    packet(out, b'C', &p);
}

/// The header fields and the body of `msg`, as Postfix hands them to a milter.
fn message(out: &mut Vec<u8>, msg: &[u8], chunk: usize) {
    let mut rest = msg;
    let mut field: Option<(Vec<u8>, Vec<u8>)> = None;
    let flush = |out: &mut Vec<u8>, f: &mut Option<(Vec<u8>, Vec<u8>)>| {
        if let Some((name, value)) = f.take() {
            packet(out, b'L', &cstrings([name.as_slice(), value.as_slice()]));
        }
    };
    loop {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let line = &rest[..end];
        let bare = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if matches!(bare.first(), Some(b' ' | b'\t')) && field.is_some() {
            if let Some((_, value)) = field.as_mut() {
                value.push(b'\n');
                value.extend_from_slice(bare);
            }
        } else if let Some(colon) = bare.iter().position(|&b| b == b':') {
            flush(out, &mut field);
            field = Some((bare[..colon].to_vec(), bare[colon + 1..].to_vec()));
        } else {
            // The blank line, or a line that is no field: the body starts (after a blank
            // line, with the line after it).
            if bare.is_empty() {
                rest = &rest[end..];
            }
            break;
        }
        rest = &rest[end..];
    }
    flush(out, &mut field);
    packet(out, b'N', &[]);
    for c in rest.chunks(chunk) {
        packet(out, b'B', c);
    }
    packet(out, b'E', &[]);
}

/// The packets of `input` (see the module text), without the negotiation.
fn script(input: &[u8], chunk: usize) -> Vec<u8> {
    let split = input.windows(2).position(|w| w == b"\n\n");
    let (lines, msg) = match split {
        Some(i) => (&input[..i], Some(&input[i + 2..])),
        None => (input, None),
    };
    let mut out = Vec::new();
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some((&op, args)) = line.split_first() else {
            continue;
        };
        let args = args.strip_prefix(b" ").unwrap_or(args);
        let words = || args.split(|&b| b == b' ').filter(|w| !w.is_empty());
        match op {
            b'C' => connect(&mut out, args),
            b'H' => packet(&mut out, b'H', &cstrings([args])),
            b'M' => packet(&mut out, b'M', &cstrings(words())),
            b'R' => packet(&mut out, b'R', &cstrings(words())),
            b'A' => macros(&mut out, b'M', b"{auth_authen}", args),
            b'O' => macros(&mut out, b'C', b"{daemon_name}", args),
            b'I' => macros(&mut out, b'E', b"i", args),
            b'T' => packet(&mut out, b'T', &[]),
            b'U' => packet(&mut out, b'U', &cstrings([args])),
            b'X' => packet(&mut out, b'A', &[]),
            b'E' => packet(&mut out, b'E', &[]),
            _ => {}
        }
    }
    if let Some(msg) = msg {
        message(&mut out, msg, chunk);
    }
    out
}

/// Checks the milter's replies: whole packets, only the kinds mailstamp sends, verdict
/// headers that name a verdict.
fn check_replies(mut r: &[u8]) {
    while !r.is_empty() {
        assert!(r.len() >= 5, "a cut reply packet: {r:?}");
        let len = u32::from_be_bytes([r[0], r[1], r[2], r[3]]) as usize;
        assert!(
            len >= 1 && r.len() >= 4 + len,
            "a reply packet of length {len}"
        );
        let (cmd, payload) = (r[4], &r[5..4 + len]);
        match cmd {
            b'a' | b'c' | b'd' | b'r' | b't' | b'y' | b'm' | b'q' | b'O' | b'p' | b's' => {}
            b'h' | b'i' => {
                let fields = if cmd == b'i' {
                    payload
                        .get(4..)
                        .expect("an insert-header reply has its index")
                } else {
                    payload
                };
                let mut parts = fields.split(|&b| b == 0);
                let (name, value) = (parts.next().unwrap_or_default(), parts.next());
                if name == VERDICT_HEADER.as_bytes() {
                    let v = String::from_utf8_lossy(value.unwrap_or_default());
                    assert!(
                        [
                            "wanted",
                            "suspect",
                            "spam",
                            "unstamped",
                            "invalid",
                            "temperror"
                        ]
                        .contains(&v.trim()),
                        "verdict header {v:?}"
                    );
                }
            }
            other => panic!("a reply mailstamp never sends: {:?}", other as char),
        }
        r = &r[4 + len..];
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&head, rest)) = input.split_first() else {
        return;
    };
    let daemon = mailstamp_fuzz_agent::daemon(head & 3);
    let raw = head & 4 != 0;
    let chunk = (usize::from(head >> 3) + 1) * 61;
    let mut mta = Vec::new();
    packet(&mut mta, b'O', &OPTNEG);
    if raw {
        mta.extend_from_slice(rest);
    } else {
        mta.extend(script(rest, chunk));
        packet(&mut mta, b'Q', &[]);
    }
    let replies = mailstamp_fuzz_agent::runtime().block_on(async move {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let milter = mailstamp::milter::run(Once(Some(server)), daemon, async {
            let _ = rx.await;
        });
        let talk = async move {
            let (mut rd, mut wr) = tokio::io::split(client);
            let write = async {
                // The milter may close first (a malformed packet): the rest is not taken.
                let _ = wr.write_all(&mta).await;
                let _ = wr.shutdown().await;
            };
            let mut replies = Vec::new();
            let read = rd.read_to_end(&mut replies);
            let (_, read) = tokio::join!(write, read);
            read.expect("the pipe reads to its end");
            let _ = tx.send(());
            replies
        };
        let (served, replies) = tokio::join!(milter, talk);
        served.expect("the milter stops cleanly");
        replies
    });
    assert_eq!(
        replies.get(4),
        Some(&b'O'),
        "the negotiation is answered first"
    );
    check_replies(&replies);
});
