// SPDX-License-Identifier: GPL-3.0-or-later
//! Generators of the oversized messages of issue 12 item 5 ("bounds"), shared by the
//! `bounds` tests and the `bounds` example that measures them (docs/PERFORMANCE.md,
//! "Bounds"). Each is a well-formed message a real sender could write, only large.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::fmt::Write as _;

/// The header lines every generated message starts with (LF line endings).
const HEAD: &str = "From: Alice <alice@a.example>\nTo: bob@b.example\nSubject: bounds\n\
Date: Tue, 1 Dec 2026 10:00:00 +0000\nMessage-ID: <bounds@a.example>\nMIME-Version: 1.0\n";

/// A multipart/mixed message with `n` small text/plain parts.
pub fn many_parts(n: usize) -> Vec<u8> {
    let mut m = String::from(HEAD);
    m.push_str("Content-Type: multipart/mixed; boundary=\"b\"\n\n");
    for i in 0..n {
        let _ = write!(m, "--b\nContent-Type: text/plain\n\npart {i}\n");
    }
    m.push_str("--b--\n");
    m.into_bytes()
}

/// `depth` multipart/mixed containers, one inside the other (boundary `bK` at depth K),
/// with one text part at the bottom.
pub fn deep_nesting(depth: usize) -> Vec<u8> {
    let mut m = String::from(HEAD);
    m.push_str("Content-Type: multipart/mixed; boundary=\"b0\"\n\n");
    for k in 1..depth {
        let _ = write!(
            m,
            "--b{}\nContent-Type: multipart/mixed; boundary=\"b{k}\"\n\n",
            k - 1
        );
    }
    let _ = write!(
        m,
        "--b{}\nContent-Type: text/plain\n\nthe bottom\n",
        depth - 1
    );
    for k in (0..depth).rev() {
        let _ = writeln!(m, "--b{k}--");
    }
    m.into_bytes()
}

/// A plain message whose header section is at least `bytes` long: [`HEAD`] and then
/// `X-Filler-N:` fields of 100 bytes each (what a long trace or a spammer's padding looks
/// like).
pub fn big_header(bytes: usize) -> Vec<u8> {
    let mut m = String::from(HEAD);
    let mut i = 0;
    while m.len() < bytes {
        let _ = writeln!(m, "X-Filler-{i:07}: {}", "x".repeat(80));
        i += 1;
    }
    m.push_str("\nbody\n");
    m.into_bytes()
}

/// A plain message whose Subject alone is `bytes` long, folded every 76 characters: one
/// field of a 1 MB header section.
pub fn big_subject(bytes: usize) -> Vec<u8> {
    let mut m = String::from(
        "From: Alice <alice@a.example>\nTo: bob@b.example\nDate: Tue, 1 Dec 2026 10:00:00 +0000\n\
         Message-ID: <bounds@a.example>\nSubject: start",
    );
    let mut n = 0;
    while n < bytes {
        m.push_str("\n ");
        m.push_str(&"s".repeat(75));
        n += 77;
    }
    m.push_str("\n\nbody\n");
    m.into_bytes()
}

/// The `n` recipient addresses of [`many_rcpts`].
pub fn rcpt_list(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("r{i}@b.example")).collect()
}

/// A message addressed to `n` recipients in one To field (folded, one address per line).
pub fn many_rcpts(n: usize) -> Vec<u8> {
    let mut m = String::from(
        "From: Alice <alice@a.example>\nSubject: bounds\nDate: Tue, 1 Dec 2026 10:00:00 +0000\n\
         Message-ID: <bounds@a.example>\nTo: ",
    );
    m.push_str(&rcpt_list(n).join(",\n "));
    m.push_str("\n\nhello all\n");
    m.into_bytes()
}

/// A `Mail-Stamp:` value of at least `bytes` bytes: well-formed tags (the shape of a real
/// stamp) followed by an unknown tag carrying the padding, folded every 76 characters.
pub fn big_stamp_value(bytes: usize) -> String {
    let mut v = String::from(
        "v=1; c=31337; r=0xaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa;\n\
         \tw=0xbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb; s=AAAAAAAAAAAAAAAAAAAAAA==; h=from;\n\
         \td=AAAAAAAAAAAAAAAAAAAAAA==; x=",
    );
    while v.len() < bytes {
        v.push_str(&"A".repeat(76));
        v.push_str("\n\t");
    }
    v
}

/// An unstamped message carrying `Mail-Stamp: <big_stamp_value(bytes)>` on top.
pub fn big_stamp(bytes: usize) -> Vec<u8> {
    let mut m = format!("Mail-Stamp: {}\n", big_stamp_value(bytes).trim_end());
    m.push_str(HEAD);
    m.push_str("\nhello\n");
    m.into_bytes()
}

/// A multipart/mixed message with `n` parts of the smallest form (a delimiter, no header,
/// one character): the most parts per byte of input.
pub fn minimal_parts(n: usize) -> Vec<u8> {
    let mut m = String::from(HEAD);
    m.push_str("Content-Type: multipart/mixed; boundary=b\n\n");
    m.push_str(&"--b\n\nx\n".repeat(n));
    m.push_str("--b--\n");
    m.into_bytes()
}
