// SPDX-License-Identifier: GPL-3.0-or-later
//! Who is who in a message, as both lists compare it: the From identity (address, domain,
//! display name), the local user a recipient stands for, the normal form of an address and a
//! domain, and how a sender matched a list entry.

use serde::Serialize;

use crate::error::{Result, bail, err};
use crate::util::{bare_address, net::domain_name, normalise_name};

/// The author of a message (RFC 5322 From), normalised: lower-case address, its domain, and
/// the display name if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FromIdentity {
    /// `local@domain`, lower case.
    pub address: String,
    /// The domain, lower case.
    pub domain: String,
    /// The display name (`"Ann Lee" <ann@…>`), trimmed.
    pub display_name: Option<String>,
}

impl FromIdentity {
    /// An identity from an address and an optional display name; `None` when the address is
    /// not a usable `local@domain`.
    pub fn new(address: &str, display_name: Option<&str>) -> Option<Self> {
        let address = normalise_address(address).ok()?;
        let domain = normalise_domain(address.rsplit_once('@')?.1).ok()?;
        Some(Self {
            address,
            domain,
            display_name: display_name
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty()),
        })
    }

    /// The first From address of a raw message; `None` when there is none usable. Parses the
    /// header section only (no body decoding); a caller that has the message parsed already
    /// takes [`FromIdentity::of_parsed`].
    pub fn of_message(raw: &[u8]) -> Option<Self> {
        let msg = mailstamp_core::mail_parser::MessageParser::default().parse_headers(raw)?;
        Self::of_parsed(&msg)
    }

    /// The first From address of a parsed message; `None` when there is none usable.
    pub fn of_parsed(msg: &mailstamp_core::mail_parser::Message<'_>) -> Option<Self> {
        let a = msg.from()?.first()?;
        Self::new(a.address()?, a.name())
    }

    /// The identities of `rcpts` (envelope recipients) with the display names the message's
    /// To/Cc give them (outbound learning).
    pub fn of_recipients(raw: &[u8], rcpts: &[String]) -> Vec<Self> {
        let msg = mailstamp_core::parse(raw);
        let named: Vec<(String, String)> = msg
            .iter()
            .flat_map(|m| m.to().into_iter().chain(m.cc()))
            .flat_map(|a| a.iter())
            .filter_map(|a| Some((a.address()?.to_ascii_lowercase(), a.name()?.to_owned())))
            .collect();
        rcpts
            .iter()
            .filter_map(|r| {
                let lower = r.trim().to_ascii_lowercase();
                let name = named
                    .iter()
                    .find(|(a, _)| *a == lower)
                    .map(|(_, n)| n.as_str());
                Self::new(r, name)
            })
            .collect()
    }
}

/// How a sender matched a list entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchKind {
    /// The exact address (or, for authorised senders, an authorised whole domain).
    Full,
    /// Partial: same display name and domain as an entry.
    PartialNameDomain,
    /// Partial: same domain as an entry.
    PartialDomain,
}

impl MatchKind {
    /// `full` / `name_domain` / `domain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::PartialNameDomain => "name_domain",
            Self::PartialDomain => "domain",
        }
    }
}

/// The local user a recipient address stands for: lower case, `user+tag` folded to `user`
/// with the recipient `delimiter` (none when `None`).
pub fn user_of(rcpt: &str, delimiter: Option<char>) -> String {
    let a = bare_address(rcpt).to_ascii_lowercase();
    match (delimiter, a.rsplit_once('@')) {
        (Some(d), Some((local, domain))) => match local.split_once(d) {
            Some((u, _)) if !u.is_empty() => format!("{u}@{domain}"),
            _ => a,
        },
        _ => a,
    }
}

/// Checks and normalises a domain name: lower case, labels of letters, digits and `-`, at
/// least two labels.
pub fn normalise_domain(d: &str) -> Result<String> {
    domain_name(d).ok_or_else(|| {
        err!(
            "`{}` is not a domain name (want e.g. example.org)",
            normalise_name(d)
        )
    })
}

/// Checks and normalises a mail address: `local@domain`, the domain as
/// [`normalise_domain`], the whole address in (ASCII) lower case — the comparison mail systems
/// make in practice, and the one [`user_of`] makes.
pub fn normalise_address(a: &str) -> Result<String> {
    let a = bare_address(a);
    let Some((local, domain)) = a.rsplit_once('@') else {
        bail!("`{a}` is not a mail address (want user@example.org)");
    };
    if local.is_empty()
        || local.len() > 64
        || local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | '"'))
    {
        bail!("`{a}` has no usable local part (want user@example.org)");
    }
    let domain = normalise_domain(domain).map_err(|e| err!("`{a}`: {e}"))?;
    Ok(format!("{}@{domain}", local.to_ascii_lowercase()))
}
