// SPDX-License-Identifier: GPL-3.0-or-later
//! `[milter]`, `[relay]` and `[maps]`: the MTA adapters' settings. `[milter]` holds the policy
//! both adapters apply (trusted networks, the action per verdict, what chain trouble does);
//! `[relay]` only what the SMTP hop adds. Data, defaults and checks only.

use std::path::PathBuf;

use mailstamp_core::{MAX_MESSAGE_BYTES, Verdict};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::util::{Net, split_host_port};

/// What to do with a message after verification (per verdict), and the strictness order used
/// when several recipients ask for different things: later variants are stricter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerdictAction {
    /// Deliver without any mailstamp header.
    Accept,
    /// Deliver with `Authentication-Results:` and the verdict headers.
    AddHeader,
    /// Add the headers and hold the message (Postfix: the hold queue).
    Quarantine,
    /// Accept the message and drop it.
    Discard,
    /// Refuse with a temporary error (the client retries).
    Tempfail,
    /// Refuse with a permanent error (5xx): the sender gets a bounce.
    Reject,
}

impl std::str::FromStr for VerdictAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "accept" => Self::Accept,
            "add-header" => Self::AddHeader,
            "quarantine" => Self::Quarantine,
            "discard" => Self::Discard,
            "tempfail" => Self::Tempfail,
            "reject" => Self::Reject,
            other => {
                return Err(format!(
                    "`{other}` is not an action: accept | add-header | quarantine | discard | tempfail | reject"
                ));
            }
        })
    }
}

impl VerdictAction {
    /// The word of the config file (`add-header`, …), as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::AddHeader => "add-header",
            Self::Quarantine => "quarantine",
            Self::Discard => "discard",
            Self::Tempfail => "tempfail",
            Self::Reject => "reject",
        }
    }
}

/// `[maps]` in the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapsConfig {
    /// Connection map file (client IP / CIDR, hostname, `helo:` name).
    pub connection: Option<PathBuf>,
    /// Sender map file (MAIL FROM).
    pub sender: Option<PathBuf>,
    /// Recipient map file (RCPT TO).
    pub recipient: Option<PathBuf>,
    /// The `user+tag` delimiter (Postfix `recipient_delimiter`); empty for none.
    pub delimiter: String,
}

impl Default for MapsConfig {
    fn default() -> Self {
        Self {
            connection: None,
            sender: None,
            recipient: None,
            delimiter: "+".to_owned(),
        }
    }
}

/// What to do when the chain cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TroublePolicy {
    /// Answer 451: the MTA keeps the message and retries.
    Tempfail,
    /// Let the message through, marked (outbound: `X-Mailstamp-Unstamped`; inbound:
    /// `mailstamp=temperror`).
    Pass,
}

/// The action per verdict (`[milter.actions]`); `temperror` is `on_temperror`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionTable {
    /// All components match.
    pub wanted: VerdictAction,
    /// Most of it matches.
    pub suspect: VerdictAction,
    /// Forged, altered or replayed.
    pub spam: VerdictAction,
    /// No stamp.
    pub unstamped: VerdictAction,
    /// A stamp that does not decode or names an untrusted registry.
    pub invalid: VerdictAction,
}

impl Default for ActionTable {
    fn default() -> Self {
        Self {
            wanted: VerdictAction::AddHeader,
            suspect: VerdictAction::AddHeader,
            spam: VerdictAction::AddHeader,
            unstamped: VerdictAction::AddHeader,
            invalid: VerdictAction::AddHeader,
        }
    }
}

impl ActionTable {
    /// The configured action for `v` (`temperror` has none here: see `on_temperror`).
    pub fn get(&self, v: Verdict) -> Option<VerdictAction> {
        match v {
            Verdict::Wanted => Some(self.wanted),
            Verdict::Suspect => Some(self.suspect),
            Verdict::Spam => Some(self.spam),
            Verdict::Unstamped => Some(self.unstamped),
            Verdict::Invalid => Some(self.invalid),
            Verdict::Temperror => None,
            // A stamp that does not apply counts as none (docs/PROTOCOL.md §5c).
            Verdict::Inapplicable => Some(self.unstamped),
        }
    }
}

/// `[milter]` in the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MilterConfig {
    /// The authserv-id of `Authentication-Results:` (default: this host's name).
    pub authserv_id: Option<String>,
    /// Clients in these networks send outbound mail (stamped, not verified).
    pub trusted_networks: Vec<Net>,
    /// Postfix `{daemon_name}` values (`-o milter_macro_daemon_name=…`) whose mail is outbound.
    pub outbound_daemons: Vec<String>,
    /// SASL-authenticated senders (`{auth_authen}` set) send outbound mail.
    pub outbound_authenticated: bool,
    /// Largest message taken (bytes); bigger ones get `552 5.3.4`.
    pub max_message_bytes: usize,
    /// Most SMTP sessions served at once (read at start; not changed by a reload).
    pub max_sessions: usize,
    /// Outbound mail when the stamp cannot be recorded: `tempfail` (default) or `pass`.
    pub on_stamp_error: TroublePolicy,
    /// Inbound mail whose verdict is `temperror`: `tempfail` (default) or `pass`.
    pub on_temperror: TroublePolicy,
    /// Look up the recording transaction of a found stamp and name it in the header.
    pub lookup_tx: bool,
    /// VerdictAction per verdict.
    pub actions: ActionTable,
}

impl Default for MilterConfig {
    fn default() -> Self {
        Self {
            authserv_id: None,
            trusted_networks: Vec::new(),
            outbound_daemons: Vec::new(),
            outbound_authenticated: true,
            max_message_bytes: 25 * 1024 * 1024,
            max_sessions: 100,
            on_stamp_error: TroublePolicy::Tempfail,
            on_temperror: TroublePolicy::Tempfail,
            lookup_tx: true,
            actions: ActionTable::default(),
        }
    }
}

/// `[relay]` in the configuration file. The policy (trusted networks, actions per verdict,
/// `on_stamp_error`, `on_temperror`, authserv-id, `lookup_tx`) is `[milter]`'s: one policy,
/// two adapters.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Where the relay listens (`HOST:PORT`); `--listen` overrides it.
    pub listen: String,
    /// Where accepted mail goes (`HOST:PORT`), in clear SMTP: a loopback or private hop
    /// (Postfix's re-injection `smtpd`, a smarthost on the same network).
    pub next_hop: String,
    /// The name in the greeting and EHLO reply, and in EHLO to the next hop (default: this
    /// host's name).
    pub hostname: Option<String>,
    /// Largest message taken (bytes), advertised as SIZE; bigger ones get `552 5.3.4`.
    pub max_message_bytes: usize,
    /// Most SMTP sessions served at once; one more gets `421 4.7.0` (the client retries).
    pub max_sessions: usize,
    /// Most commands in one session (pipelined or not) before `421 4.7.0`.
    pub max_commands: usize,
    /// Most recipients of one message (more get `452 4.5.3`).
    pub max_recipients: usize,
    /// Seconds a client may stay silent between commands or during DATA.
    pub idle_timeout_secs: u64,
    /// Seconds one session may last in all.
    pub session_timeout_secs: u64,
    /// Seconds for the whole exchange with the next hop (connect to final reply).
    pub next_hop_timeout_secs: u64,
    /// Every client of this listener sends outbound mail (to be stamped), whatever its
    /// address — for a listener only the submission side can reach. There is no SMTP AUTH in
    /// the relay: outbound is decided by this flag or `[milter] trusted_networks`.
    pub outbound: bool,
    /// Where messages whose action is `quarantine` are kept (one `.eml` per message, the
    /// envelope in `X-Mailstamp-Envelope-*` fields on top). Without it, quarantine is a
    /// tempfail (never a silent drop).
    pub quarantine_dir: Option<PathBuf>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:10025".to_owned(),
            next_hop: "127.0.0.1:10026".to_owned(),
            hostname: None,
            max_message_bytes: 25 * 1024 * 1024,
            max_sessions: 100,
            max_commands: 1000,
            max_recipients: 1000,
            idle_timeout_secs: 300,
            session_timeout_secs: 1800,
            next_hop_timeout_secs: 120,
            outbound: false,
            quarantine_dir: None,
        }
    }
}

impl MilterConfig {
    /// The `[milter]` checks.
    pub fn check(&self) -> Result<()> {
        if self.max_message_bytes == 0 || self.max_message_bytes > MAX_MESSAGE_BYTES {
            return Err(Error::config(
                "milter.max_message_bytes",
                format!("must be between 1 and {MAX_MESSAGE_BYTES}"),
            ));
        }
        if self.max_sessions == 0 {
            return Err(Error::config("milter.max_sessions", "must be at least 1"));
        }
        if let Some(id) = &self.authserv_id
            && (id.is_empty() || id.contains([';', ' ', '\t', '\r', '\n']))
        {
            return Err(Error::config(
                "milter.authserv_id",
                format!("`{id}` must be one token (a host name)"),
            ));
        }
        Ok(())
    }
}

impl RelayConfig {
    /// The `[relay]` checks: the limits and the next hop's form.
    pub fn check(&self) -> Result<()> {
        if self.max_message_bytes == 0 || self.max_message_bytes > MAX_MESSAGE_BYTES {
            return Err(Error::config(
                "relay.max_message_bytes",
                format!("must be between 1 and {MAX_MESSAGE_BYTES}"),
            ));
        }
        for (k, v) in [
            ("max_sessions", self.max_sessions),
            ("max_commands", self.max_commands),
            ("max_recipients", self.max_recipients),
        ] {
            if v == 0 {
                return Err(Error::config(format!("relay.{k}"), "must be at least 1"));
            }
        }
        for (k, v) in [
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("session_timeout_secs", self.session_timeout_secs),
            ("next_hop_timeout_secs", self.next_hop_timeout_secs),
        ] {
            if v == 0 {
                return Err(Error::config(
                    format!("relay.{k}"),
                    "must be at least 1 second",
                ));
            }
        }
        match split_host_port(&self.next_hop) {
            Ok((host, port)) if !host.is_empty() && port != 0 => Ok(()),
            _ => Err(Error::config(
                "relay.next_hop",
                format!("`{}`: give HOST:PORT", self.next_hop),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_documented_relay_section_loads() {
        let doc =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/MTA.md"))
                .unwrap();
        let start = doc.find("```toml\n[relay]").unwrap() + "```toml\n".len();
        let end = start + doc[start..].find("```").unwrap();
        let cfg: crate::config::Config = toml::from_str(&doc[start..end]).unwrap();
        cfg.relay.check().unwrap();
        assert_eq!(cfg.relay.next_hop, "127.0.0.1:10026");
        assert!(cfg.relay.quarantine_dir.is_some());
    }

    #[test]
    fn the_relay_section_is_checked() {
        assert!(RelayConfig::default().check().is_ok());
        for bad in [
            RelayConfig {
                next_hop: "nohost".into(),
                ..RelayConfig::default()
            },
            RelayConfig {
                next_hop: "h:x".into(),
                ..RelayConfig::default()
            },
            RelayConfig {
                max_message_bytes: 0,
                ..RelayConfig::default()
            },
            RelayConfig {
                idle_timeout_secs: 0,
                ..RelayConfig::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        assert_eq!(split_host_port("[::1]:25").unwrap(), ("::1", 25));
    }
}
