// SPDX-License-Identifier: GPL-3.0-or-later
//! What the maps (seed 002) say at each SMTP stage — CONNECT, HELO, MAIL FROM, RCPT TO — and
//! the refusal that goes with it; whether a client sends outbound mail; the size limit.

use std::net::IpAddr;

use tracing::{info, warn};

use crate::maps::{AddrAction, ConnAction, VerifyPolicy};
use crate::util::clean;

use super::Settings;

/// An SMTP refusal: reply code, enhanced status code, text (printable ASCII).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 451, 550, 552, …
    pub code: u16,
    /// RFC 3463 code, `4.7.1`, …
    pub xcode: String,
    /// The reply text.
    pub text: String,
}

impl Refusal {
    /// A refusal: 550 (permanent) or 451; `5.3.4` (too big) is always 552.
    pub fn new(permanent: bool, xcode: &str, text: &str) -> Self {
        let code = if xcode == "5.3.4" {
            552
        } else if permanent {
            550
        } else {
            451
        };
        Self {
            code,
            xcode: xcode.to_owned(),
            text: clean(text, 400),
        }
    }

    /// Whether the refusal is permanent (5xx).
    pub fn permanent(&self) -> bool {
        self.code >= 500
    }
}

/// What a stage decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Go on.
    Go,
    /// Refuse with this reply.
    Refuse(Refusal),
    /// Take the message and drop it (access(5) DISCARD).
    Discard,
}

/// Whether a client sends outbound mail by where it connects from: an IP in
/// `trusted_networks`, or a Postfix `{daemon_name}` listed in `outbound_daemons`.
pub fn outbound_client(s: &Settings, ip: Option<IpAddr>, daemon: Option<&str>) -> bool {
    let mc = &s.cfg.milter;
    ip.is_some_and(|ip| mc.trusted_networks.iter().any(|n| n.contains(ip)))
        || daemon.is_some_and(|d| mc.outbound_daemons.iter().any(|o| o == d))
}

fn conn_step(a: Option<&ConnAction>, what: &str) -> (Step, bool) {
    match a {
        Some(ConnAction::Accept) => (Step::Go, true),
        Some(ConnAction::Reject(t)) => (
            Step::Refuse(Refusal::new(
                true,
                "5.7.1",
                t.as_deref()
                    .unwrap_or(&format!("mailstamp: {what} refused by the connection map")),
            )),
            false,
        ),
        Some(ConnAction::Tempfail(t)) => (
            Step::Refuse(Refusal::new(
                false,
                "4.7.1",
                t.as_deref()
                    .unwrap_or(&format!("mailstamp: {what} deferred by the connection map")),
            )),
            false,
        ),
        Some(ConnAction::Continue) | None => (Step::Go, false),
    }
}

/// The connection map at CONNECT; the flag says the client is accepted (later maps skipped).
pub fn at_connect(s: &Settings, ip: Option<IpAddr>, host: &str) -> (Step, bool) {
    let r = conn_step(s.maps.connection.at_connect(ip, host), "client");
    if r.0 != Step::Go {
        info!(client = ?ip, host, step = ?r.0, "connection map");
    }
    r
}

/// The connection map at HELO/EHLO (not consulted for an accepted client).
pub fn at_helo(s: &Settings, helo: &str) -> (Step, bool) {
    let r = conn_step(s.maps.connection.at_helo(helo), "HELO name");
    if r.0 != Step::Go {
        info!(helo, step = ?r.0, "connection map (HELO)");
    }
    r
}

/// The refusal of a message over `limit` bytes.
pub fn too_big(limit: usize) -> Refusal {
    Refusal::new(
        true,
        "5.3.4",
        &format!("Message size exceeds the mailstamp limit of {limit} bytes"),
    )
}

/// MAIL FROM: the declared SIZE against `limit`, then the sender map (skipped for a client
/// the connection map accepted). `Ok` carries the sender's verify policy.
pub fn at_mail(
    s: &Settings,
    sender: &str,
    declared: Option<u64>,
    limit: usize,
    client_accepted: bool,
) -> Result<Option<VerifyPolicy>, Step> {
    // SIZE= is the client's promise; refuse early rather than buffer what we will refuse.
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Step::Refuse(too_big(limit)));
    }
    if client_accepted {
        return Ok(None);
    }
    addr_step(
        s.maps.sender.lookup(sender, s.maps.delimiter),
        sender,
        "sender",
        "Sender",
    )
}

fn addr_step(
    a: Option<&AddrAction>,
    addr: &str,
    map: &str,
    what: &str,
) -> Result<Option<VerifyPolicy>, Step> {
    match a {
        Some(AddrAction::Reject(t)) => {
            info!(addr, "{map} map: reject");
            let t = t.as_deref().map_or_else(
                || format!("{what} address rejected by mailstamp"),
                str::to_owned,
            );
            Err(Step::Refuse(Refusal::new(
                true,
                "5.7.1",
                &format!("<{addr}>: {t}"),
            )))
        }
        Some(AddrAction::Tempfail(t)) => {
            info!(addr, "{map} map: tempfail");
            let t = t.as_deref().map_or_else(
                || format!("{what} address deferred by mailstamp"),
                str::to_owned,
            );
            Err(Step::Refuse(Refusal::new(
                false,
                "4.7.1",
                &format!("<{addr}>: {t}"),
            )))
        }
        Some(AddrAction::Discard) => {
            info!(addr, "{map} map: discard");
            Err(Step::Discard)
        }
        Some(AddrAction::Verify(p)) => Ok(Some(p.clone())),
        Some(AddrAction::Accept | AddrAction::Continue) | None => Ok(None),
    }
}

/// RCPT TO: the recipient map, then (provider mode, inbound only) whether the recipient's
/// domain is an active customer domain — asked of the store on the blocking pool, never on a
/// runtime worker. `Ok` carries the recipient's verify policy.
pub async fn at_rcpt(
    s: &Settings,
    rcpt: &str,
    outbound: bool,
) -> Result<Option<VerifyPolicy>, Step> {
    let policy = addr_step(
        s.maps.recipient.lookup(rcpt, s.maps.delimiter),
        rcpt,
        "recipient",
        "Recipient",
    )?;
    // Provider mode (seed 000): inbound mail only for customer domains that are onboarded
    // and verified.
    if !outbound && let Some(store) = &s.stamp.active_only {
        let domain = rcpt
            .rsplit_once('@')
            .map_or("", |(_, d)| d)
            .to_ascii_lowercase();
        let d = domain.clone();
        match store.call(move |st| st.is_active(&d)).await {
            Ok(true) => {}
            Ok(false) => {
                info!(rcpt, "provider mode: domain not onboarded");
                let t = format!("<{rcpt}>: domain {domain} is not an active customer domain here");
                return Err(Step::Refuse(Refusal::new(true, "5.1.2", &t)));
            }
            Err(e) => {
                warn!(rcpt, error = %e, "provider mode: store unreadable");
                return Err(Step::Refuse(Refusal::new(
                    false,
                    "4.3.0",
                    "mailstamp state store unavailable, try later",
                )));
            }
        }
    }
    Ok(policy)
}
