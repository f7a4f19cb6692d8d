// SPDX-License-Identifier: GPL-3.0-or-later
//! What the relay does with a whole message besides deciding it: the trace line it adds, the
//! fields that claim our results stripped, the quarantine directory, and the hand-over to the
//! next hop (mail-send), whose answer becomes our client's.

use std::path::PathBuf;
use std::time::Duration;

use tracing::{info, warn};

use crate::error::{Result, bail, err};
use crate::session::results::is_ours;
use crate::session::{Message, Refusal, Settings};
use crate::util::{clean, split_host_port};

/// The name in the greeting, the EHLO reply and the EHLO to the next hop.
pub(super) fn host_name(s: &Settings) -> String {
    s.cfg
        .relay
        .hostname
        .clone()
        .unwrap_or_else(|| s.authserv_id.clone())
}

/// The `Received:` line this hop adds (RFC 5321 4.4), folded, CRLF-terminated.
pub(super) fn received(helo: &str, ip: std::net::IpAddr, by: &str, now: u64) -> String {
    let helo = clean(helo, 100).replace([' ', '(', ')', ';'], "?");
    format!(
        "Received: from {helo} ([{ip}])\r\n\tby {by} (mailstamp relay) with ESMTP;\r\n\t{}\r\n",
        crate::util::rfc5322_date(now)
    )
}

/// DATA content ends with the CRLF before the final dot; mail-send adds that CRLF again.
pub(super) fn unstuffed_tail(mut raw: Vec<u8>) -> Vec<u8> {
    if raw.ends_with(b"\r\n") {
        raw.truncate(raw.len() - 2);
    }
    raw
}

/// Removes header fields that claim our results (a sender could write them to fool a Sieve
/// rule); the body is untouched.
pub(super) fn strip_ours(raw: &[u8], authserv_id: &str) -> Vec<u8> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |i| i + 2);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < head_end {
        // One field: its first line and the continuation lines after it.
        let mut j = i;
        loop {
            let nl = raw[j..head_end]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(head_end, |p| j + p + 1);
            j = nl;
            if j >= head_end || !matches!(raw[j], b' ' | b'\t') {
                break;
            }
        }
        let field = &raw[i..j];
        let keep = match field.iter().position(|&b| b == b':') {
            Some(colon) => {
                let name = String::from_utf8_lossy(&field[..colon]);
                !is_ours(name.trim(), &field[colon + 1..], authserv_id)
            }
            None => true,
        };
        if keep {
            out.extend_from_slice(field);
        }
        i = j;
    }
    out.extend_from_slice(&raw[head_end..]);
    out
}

/// Keeps a message in the quarantine directory: the envelope on top, then the message with
/// its result headers. Written under a temporary name, then renamed.
pub(super) async fn quarantine(s: &Settings, msg: &Message, message: &[u8]) -> Result<PathBuf> {
    let Some(dir) = &s.cfg.relay.quarantine_dir else {
        bail!("relay.quarantine_dir is not set");
    };
    let mut salt = [0u8; 6];
    getrandom::fill(&mut salt).map_err(|e| err!("random: {e}"))?;
    let name = format!("{}-{}", crate::util::now(), hex::encode(salt));
    let mut b = format!(
        "X-Mailstamp-Envelope-From: <{}>\r\nX-Mailstamp-Envelope-To: {}\r\n",
        clean(&msg.sender, 300),
        msg.rcpts
            .iter()
            .map(|r| format!("<{}>", clean(r, 300)))
            .collect::<Vec<_>>()
            .join(", ")
    )
    .into_bytes();
    b.extend_from_slice(message);
    tokio::fs::create_dir_all(dir).await?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(format!("{name}.eml"));
    tokio::fs::write(&tmp, &b).await?;
    tokio::fs::rename(&tmp, &path).await?;
    Ok(path)
}

/// Hands the message to the next hop; the reply is the one our client gets. 2xx from the
/// next hop: 250. 5xx: passed on (code and enhanced code). Anything else — refused for now,
/// unreachable, timed out — 451 4.4.x: the client keeps the message and retries.
pub(super) async fn forward(s: &Settings, msg: &Message, eight_bit: bool, body: &[u8]) -> Refusal {
    let rc = &s.cfg.relay;
    let t = Duration::from_secs(rc.next_hop_timeout_secs);
    let sent = tokio::time::timeout(
        t,
        send(&rc.next_hop, &host_name(s), t, msg, eight_bit, body),
    )
    .await;
    match sent {
        Ok(Ok(())) => {
            info!(next_hop = rc.next_hop, rcpts = msg.rcpts.len(), "forwarded");
            Refusal {
                code: 250,
                xcode: "2.0.0".to_owned(),
                text: "ok, accepted by the next hop".to_owned(),
            }
        }
        Ok(Err(mail_send::Error::UnexpectedReply(r))) if r.code >= 500 && r.code < 600 => {
            warn!(
                next_hop = rc.next_hop,
                code = r.code,
                "next hop refused the message"
            );
            let [a, b, c] = r.esc;
            let xcode = if a == 5 {
                format!("{a}.{b}.{c}")
            } else {
                "5.0.0".to_owned()
            };
            Refusal {
                code: r.code,
                xcode,
                text: format!("next hop: {}", clean(&r.message, 300)),
            }
        }
        Ok(Err(e)) => {
            warn!(next_hop = rc.next_hop, "next hop failed: {e}");
            Refusal::new(
                false,
                "4.4.1",
                "mailstamp: next hop unavailable, try again later",
            )
        }
        Err(_) => {
            warn!(next_hop = rc.next_hop, "next hop timed out");
            Refusal::new(
                false,
                "4.4.2",
                "mailstamp: next hop timed out, try again later",
            )
        }
    }
}

async fn send(
    next_hop: &str,
    helo: &str,
    timeout: Duration,
    msg: &Message,
    eight_bit: bool,
    body: &[u8],
) -> std::result::Result<(), mail_send::Error> {
    let (host, port) = split_host_port(next_hop).map_err(|_| mail_send::Error::InvalidTLSName)?;
    let mut client = mail_send::SmtpClientBuilder::new(host, port)
        .map_err(|_| mail_send::Error::InvalidTLSName)?
        .helo_host(helo)
        .timeout(timeout)
        .connect_plain()
        .await?;
    let mut params = mail_send::smtp::message::Parameters::new();
    if eight_bit {
        params.add(("BODY", "8BITMIME"));
    }
    let m = mail_send::smtp::message::Message {
        mail_from: mail_send::smtp::message::Address::new(msg.sender.as_str(), params),
        rcpt_to: msg.rcpts.iter().map(|r| r.as_str().into()).collect(),
        body: body.into(),
    };
    client.send(m).await?;
    let _ = client.quit().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_result_fields_are_stripped_with_their_folds() {
        let raw = b"Authentication-Results: mx.b.example;\r\n\tmailstamp=pass\r\n\
X-Mailstamp-Verdict: wanted\r\n\
Authentication-Results: other.example; spf=pass\r\n\
Subject: hi\r\n\r\nX-Mailstamp-Verdict: in the body stays\r\n";
        let out = strip_ours(raw, "MX.b.example");
        assert_eq!(
            out,
            b"Authentication-Results: other.example; spf=pass\r\nSubject: hi\r\n\r\n\
X-Mailstamp-Verdict: in the body stays\r\n"
        );
        assert_eq!(strip_ours(b"no header end", "x"), b"no header end");
    }

    #[test]
    fn the_trace_line_is_folded_and_cleaned() {
        assert!(received("mx (x)", "192.0.2.1".parse().unwrap(), "r", 0).starts_with(
            "Received: from mx??x? ([192.0.2.1])\r\n\tby r (mailstamp relay) with ESMTP;\r\n\tThu, 1 Jan 1970"
        ));
    }
}
