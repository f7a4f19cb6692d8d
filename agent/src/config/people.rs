// SPDX-License-Identifier: GPL-3.0-or-later
//! `[inbound]`, `[allowlist]` and `[recover]`: the unstamped-mail decision (seeds 003, 004),
//! the self-training allowlist and the Junk recovery pass. Data, defaults and checks only;
//! the behaviour is in `crate::people`, `crate::inbound` and `crate::recover`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `[inbound]` in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboundConfig {
    /// Decide a folder for inbound mail and add the folder headers; also turns on learning
    /// the allowlist from outbound mail. Needs the store (`[store] path`). Off by default so
    /// that an agent without a store or Sieve rule behaves as before.
    pub enabled: bool,
    /// The separate folder for mail from strangers (an IMAP folder name, never INBOX).
    pub folder: String,
}

impl Default for InboundConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            folder: "Unknown".to_owned(),
        }
    }
}

impl InboundConfig {
    /// Checks that `folder` is a safe IMAP folder name: 1–64 characters of letters, digits,
    /// `.`, `-`, `_` and `/` (hierarchy), no empty level, not `INBOX`.
    pub fn check(&self) -> Result<()> {
        check_folder(&self.folder)
    }
}

/// See [`InboundConfig::check`].
pub fn check_folder(f: &str) -> Result<()> {
    let ok = !f.is_empty()
        && f.len() <= 64
        && f.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'))
        && f.split(['/', '.']).all(|l| !l.is_empty())
        && !f.eq_ignore_ascii_case("inbox");
    if !ok {
        return Err(Error::config(
            "inbound.folder",
            format!(
                "`{f}` is not a safe folder name: use 1-64 letters, digits, `.`, `-`, `_` (e.g. \"Unknown\"), not INBOX"
            ),
        ));
    }
    Ok(())
}

/// `[allowlist]` in the configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AllowlistConfig {
    /// Learn from outbound mail and consult the list at inbound.
    pub enabled: bool,
    /// Days without traffic after which an entry expires (and is deleted).
    pub expire_days: u64,
    /// Most entries per user; when full, the least recently seen entry is dropped.
    pub max_per_user: usize,
    /// Partial matches consulted: `name_domain` (same display name and domain), `domain`.
    pub partial: Vec<PartialMatch>,
    /// Weight of a full (exact address) match.
    pub weight_full: f64,
    /// Weight of a same-display-name-and-domain match.
    pub weight_name_domain: f64,
    /// Weight of a same-domain match.
    pub weight_domain: f64,
    /// A hit counts toward the inbox only with at least this weight (lighter hits are
    /// reported, not trusted).
    pub min_weight: f64,
}

/// A kind of partial match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartialMatch {
    /// Same display name (case-insensitive) and same domain.
    NameDomain,
    /// Same domain.
    Domain,
}

impl Default for AllowlistConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            expire_days: 365,
            max_per_user: 5_000,
            partial: vec![PartialMatch::NameDomain, PartialMatch::Domain],
            weight_full: 1.0,
            // Below min_weight: partial matches are reported, not trusted (see the module
            // comment; docs/MTA.md "Matching").
            weight_name_domain: 0.45,
            weight_domain: 0.3,
            min_weight: 0.5,
        }
    }
}

/// `[recover]` in the configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecoverConfig {
    /// Host names (the `by` of `Received:`) of our own MTA hops, whose trace headers are
    /// trusted for the SMTP client IP, HELO and MAIL FROM (SPF after delivery). Empty: the
    /// milter's authserv-id (this host's name by default).
    pub mta_hosts: Vec<String>,
    /// Days a recorded decision is kept (bounded growth); older ones are pruned each run, and
    /// a message still in the folder after that is examined afresh.
    pub retention_days: u64,
    /// Seconds between two scans with `--watch`.
    pub watch_interval_secs: u64,
}

impl Default for RecoverConfig {
    fn default() -> Self {
        Self {
            mta_hosts: Vec::new(),
            retention_days: 180,
            watch_interval_secs: 5,
        }
    }
}

impl AllowlistConfig {
    /// Rejects weights outside 0..=1 and a zero expiry or cap.
    pub fn check(&self) -> Result<()> {
        for (k, v) in [
            ("weight_full", self.weight_full),
            ("weight_name_domain", self.weight_name_domain),
            ("weight_domain", self.weight_domain),
            ("min_weight", self.min_weight),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::config(
                    format!("allowlist.{k}"),
                    format!("is {v}; give a weight between 0 and 1"),
                ));
            }
        }
        if self.expire_days == 0 {
            return Err(Error::config(
                "allowlist.expire_days",
                "must be at least 1 (days without traffic before an entry goes)",
            ));
        }
        if self.max_per_user == 0 {
            return Err(Error::config(
                "allowlist.max_per_user",
                "must be at least 1; set allowlist.enabled = false to turn learning off",
            ));
        }
        Ok(())
    }
}

/// `[forward]`: addresses this host forwards to other domains under a hop of its own
/// (docs/PROTOCOL.md §5c, issue 13) — an alias or `.forward`, done by the milter: a message
/// that arrives for exactly one of these addresses, and whose stamp (or chain) is `wanted`
/// here, gets this host's hop for the new recipients, and its envelope recipient is replaced
/// by them. Everything else is delivered as it came.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardConfig {
    /// Alias → where it goes (`"bob@b.example" = ["bob@forward.example"]`).
    pub aliases: BTreeMap<String, Vec<String>>,
    /// Mailing lists whose server runs behind this MTA (Mailman or any other), by posting
    /// address: `[forward.lists."dev@lists.example"]`. Their copies go out under this host's
    /// hop with the changes the list made (docs/MTA.md "Beside Mailman").
    pub lists: BTreeMap<String, ListConfig>,
}

/// One mailing list of `[forward.lists]`. At inbound, a message for the list's posting
/// address that is `wanted` here is remembered (its stamp, in the store); at outbound, a copy
/// from one of `senders` that carries a remembered stamp gets the list's hop with the changes
/// found by comparing it with that stamp (subject tag, footer, From rewritten). A copy whose
/// stamp was not `wanted` here, or that differs in a way no declared change explains, goes
/// out as it came (never with a second originator stamp).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListConfig {
    /// The envelope senders of the list's outgoing copies; a VERP suffix (`local+…@domain`)
    /// is allowed on each. Default: `<local>-bounces@<domain>` (Mailman's).
    pub senders: Vec<String>,
    /// The subject prefix the list puts in front (Mailman's `subject_prefix` without its
    /// trailing space, e.g. `"[dev]"`), when it tags subjects.
    pub subject_tag: Option<String>,
}

/// A configured list's posting address and settings (see [`ForwardConfig::list_of`]).
pub struct ListOf<'a> {
    /// The posting address (lower case as configured).
    pub address: &'a str,
    /// Its settings.
    pub config: &'a ListConfig,
}

impl ListConfig {
    /// Whether `sender` (an envelope sender) is one of this list's, for `address`.
    pub fn sends_as(&self, address: &str, sender: &str) -> bool {
        let sender = sender.trim_matches(['<', '>']).to_ascii_lowercase();
        let Some((local, domain)) = sender.rsplit_once('@') else {
            return false;
        };
        let matches = |s: &str| {
            s.to_ascii_lowercase()
                .rsplit_once('@')
                .is_some_and(|(l, d)| {
                    d == domain
                        && (local == l
                            || local
                                .strip_prefix(l)
                                .is_some_and(|rest| rest.starts_with('+')))
                })
        };
        if self.senders.is_empty() {
            address
                .rsplit_once('@')
                .is_some_and(|(l, d)| matches(&format!("{l}-bounces@{d}")))
        } else {
            self.senders.iter().any(|s| matches(s))
        }
    }
}

/// Most addresses one alias forwards to (a hop carries one recipient digest each).
pub const MAX_FORWARD_TARGETS: usize = 16;

impl ForwardConfig {
    /// Where `rcpt` goes, when it is an alias (case-insensitive).
    pub fn targets(&self, rcpt: &str) -> Option<(&str, &[String])> {
        self.aliases
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(rcpt.trim_matches(['<', '>'])))
            .map(|(a, t)| (a.as_str(), t.as_slice()))
    }

    /// The configured list `rcpt` is the posting address of (case-insensitive).
    pub fn list(&self, rcpt: &str) -> Option<ListOf<'_>> {
        self.lists
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(rcpt.trim_matches(['<', '>'])))
            .map(|(address, config)| ListOf { address, config })
    }

    /// The configured list whose outgoing copies come from `sender`.
    pub fn list_of(&self, sender: &str) -> Option<ListOf<'_>> {
        self.lists
            .iter()
            .find(|(a, l)| l.sends_as(a, sender))
            .map(|(address, config)| ListOf { address, config })
    }

    /// Every alias and target an address; an alias not its own target; at most
    /// [`MAX_FORWARD_TARGETS`] targets; every list an address, its senders addresses, its
    /// subject tag 1–64 bytes.
    pub fn check(&self) -> Result<()> {
        let is_address = |a: &str| {
            a.split_once('@').is_some_and(|(l, d)| {
                !l.is_empty() && d.contains('.') && !a.contains(char::is_whitespace)
            })
        };
        for (list, l) in &self.lists {
            let key = format!("forward.lists.\"{list}\"");
            if !is_address(list) {
                return Err(Error::config(
                    key,
                    "is not a mail address (want the list's posting address, e.g. dev@lists.example.org)",
                ));
            }
            if let Some(s) = l.senders.iter().find(|s| !is_address(s)) {
                return Err(Error::config(
                    format!("{key}.senders"),
                    format!(
                        "`{s}` is not a mail address (want e.g. dev-bounces@lists.example.org)"
                    ),
                ));
            }
            if let Some(t) = &l.subject_tag {
                let canonical = t.split_whitespace().collect::<Vec<_>>().join(" ");
                if canonical.is_empty() || canonical.len() > mailstamp_core::hops::MAX_TAG_LEN {
                    return Err(Error::config(
                        format!("{key}.subject_tag"),
                        "give the list's subject prefix, 1-64 bytes (e.g. \"[dev]\"), or leave it out",
                    ));
                }
            }
        }
        for (alias, targets) in &self.aliases {
            let key = format!("forward.aliases.\"{alias}\"");
            if !is_address(alias) {
                return Err(Error::config(
                    key,
                    "is not a mail address (want user@example.org)",
                ));
            }
            if targets.is_empty() || targets.len() > MAX_FORWARD_TARGETS {
                return Err(Error::config(
                    key,
                    format!("give 1 to {MAX_FORWARD_TARGETS} addresses to forward to"),
                ));
            }
            for t in targets {
                if !is_address(t) {
                    return Err(Error::config(key, format!("`{t}` is not a mail address")));
                }
                if t.eq_ignore_ascii_case(alias) {
                    return Err(Error::config(key, "forwards to itself"));
                }
            }
        }
        Ok(())
    }
}
