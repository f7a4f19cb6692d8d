// SPDX-License-Identifier: GPL-3.0-or-later
//! Onboarding a customer domain (seed 000). The provider gives every customer account its own
//! DNS names under the provider's zone:
//!
//! - `<account>.mx.<zone>`: the account's mail host (A/AAAA to the provider's servers);
//! - `<account>._mailstamp.<zone>`: the account's writer record (TXT `v=mailstamp1; w=…`).
//!
//! The customer proves control of its domain, and gives permission, by publishing an MX to the
//! first and a CNAME from `_mailstamp.<domain>` to the second — the CNAME also lets the
//! provider rotate writer keys without the customer touching DNS. Only then does the domain go
//! from `pending` to `active`, and only active domains are stamped and accepted in provider
//! mode.

use crate::error::{Result, bail};
use alloy::primitives::Address;
use mailstamp_core::writers::{RECORD_LABEL, WriterRecord};

use crate::config::ProviderConfig;
use crate::dns::{Answer, Authority};
use crate::store::Store;
use crate::util::normalise_name as normalise;
pub use crate::util::validate_domain;

/// The account-specific names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The account's mail host, the customer's MX target.
    pub mx: String,
    /// The account's writer record, the target of the customer's `_mailstamp` CNAME.
    pub writer: String,
}

impl ProviderConfig {
    /// The names of `account`.
    pub fn names(&self, account: &str) -> Names {
        let zone = normalise(&self.zone);
        Names {
            mx: format!("{account}.mx.{zone}"),
            writer: format!("{account}.{RECORD_LABEL}.{zone}"),
        }
    }
}

/// Checks an account id: a DNS label (`a-z`, `0-9`, `-`, 1–63, not starting or ending with `-`).
pub fn validate_account(account: &str) -> Result<()> {
    let ok = !account.is_empty()
        && account.len() <= 63
        && account
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !account.starts_with('-')
        && !account.ends_with('-');
    if !ok {
        bail!(
            "account `{account}` must be a DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'"
        );
    }
    Ok(())
}

/// The records the customer must publish for `domain`, as zone-file lines.
pub fn customer_records(p: &ProviderConfig, domain: &str, names: &Names) -> Vec<String> {
    vec![
        format!("{domain}. {} IN MX 10 {}.", p.ttl, names.mx),
        format!(
            "{RECORD_LABEL}.{domain}. {} IN CNAME {}.",
            p.ttl, names.writer
        ),
    ]
}

/// The provider-side zone lines for every account in the store.
pub fn zone_lines(p: &ProviderConfig, store: &Store, writers: &[Address]) -> Result<Vec<String>> {
    p.require()?;
    if writers.is_empty() {
        bail!("no writer address to publish: set provider.writers or a writer key");
    }
    let mut accounts: Vec<String> = store.domains()?.into_iter().map(|d| d.account).collect();
    accounts.sort();
    accounts.dedup();
    let record = WriterRecord::format(&writers.iter().map(|w| w.0.0).collect::<Vec<_>>());
    let mut out = Vec::new();
    for a in accounts {
        let n = p.names(&a);
        for ip in &p.mail_host_addresses {
            let rr = if ip.is_ipv4() { "A" } else { "AAAA" };
            out.push(format!("{}. {} IN {rr} {ip}", n.mx, p.ttl));
        }
        out.push(format!("{}. {} IN TXT \"{record}\"", n.writer, p.ttl));
    }
    Ok(out)
}

/// What is missing or wrong in a customer's DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The MX does not point at the account's mail host.
    Mx {
        /// The record to publish.
        want: String,
        /// What DNS has.
        found: Vec<String>,
    },
    /// `_mailstamp.<domain>` is not a CNAME to the account's writer record.
    Writer {
        /// The record to publish.
        want: String,
        /// What DNS has.
        found: Option<String>,
    },
    /// DNS gave no answer; try again.
    Dns(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Mx { want, found } if found.is_empty() => {
                write!(f, "no MX record; publish: {want}")
            }
            Problem::Mx { want, found } => {
                write!(
                    f,
                    "MX points at {} instead; publish: {want}",
                    found.join(", ")
                )
            }
            Problem::Writer { want, found: None } => write!(f, "no writer CNAME; publish: {want}"),
            Problem::Writer {
                want,
                found: Some(t),
            } => write!(f, "writer CNAME points at {t} instead; publish: {want}"),
            Problem::Dns(e) => write!(f, "DNS trouble, try again: {e}"),
        }
    }
}

/// Checks the customer's records for `domain` against `account`'s names. Empty: all good.
pub async fn check(
    dns: &Authority,
    p: &ProviderConfig,
    domain: &str,
    account: &str,
) -> Vec<Problem> {
    let names = p.names(account);
    let want = customer_records(p, domain, &names);
    let mut problems = Vec::new();
    match dns.mx(domain).await {
        Answer::Records(mx) if mx.contains(&names.mx) => {}
        Answer::Records(mx) => problems.push(Problem::Mx {
            want: want[0].clone(),
            found: mx,
        }),
        Answer::NoRecords => problems.push(Problem::Mx {
            want: want[0].clone(),
            found: vec![],
        }),
        Answer::Trouble(e) => problems.push(Problem::Dns(e)),
    }
    match dns.cname(&format!("{RECORD_LABEL}.{domain}")).await {
        Answer::Records(t) if t == names.writer => {}
        Answer::Records(t) => problems.push(Problem::Writer {
            want: want[1].clone(),
            found: Some(t),
        }),
        Answer::NoRecords => problems.push(Problem::Writer {
            want: want[1].clone(),
            found: None,
        }),
        Answer::Trouble(e) => problems.push(Problem::Dns(e)),
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_records_are_account_specific() {
        let p = ProviderConfig {
            zone: "Provider.Example.".into(),
            ..Default::default()
        };
        let n = p.names("acme");
        assert_eq!(n.mx, "acme.mx.provider.example");
        assert_eq!(n.writer, "acme._mailstamp.provider.example");
        let r = customer_records(&p, "c1.example", &n);
        assert_eq!(r[0], "c1.example. 3600 IN MX 10 acme.mx.provider.example.");
        assert_eq!(
            r[1],
            "_mailstamp.c1.example. 3600 IN CNAME acme._mailstamp.provider.example."
        );
    }

    #[test]
    fn accounts_and_domains_are_checked() {
        for ok in ["acme", "a1-b2", "x"] {
            validate_account(ok).unwrap();
        }
        for bad in ["", "-a", "a-", "Acme", "a.b", "a_b", &"a".repeat(64)] {
            assert!(validate_account(bad).is_err(), "{bad}");
        }
        assert_eq!(validate_domain("C1.Example.").unwrap(), "c1.example");
        for bad in ["localhost", "a..b", "-a.b", "a b.c", "ü.example"] {
            assert!(validate_domain(bad).is_err(), "{bad}");
        }
    }

    crate::store::on_both_backends!(fn zone_lines_cover_every_account(s) {
        s.add_domain("c1.example", "acme", 1).unwrap();
        s.add_domain("c2.example", "acme", 1).unwrap();
        s.add_domain("c3.example", "beta", 1).unwrap();
        let p = ProviderConfig {
            zone: "provider.example".into(),
            mail_host_addresses: vec![
                "192.0.2.25".parse().unwrap(),
                "2001:db8::25".parse().unwrap(),
            ],
            ..Default::default()
        };
        let w: Address = "0x00000000000000000000000000000000000000aa"
            .parse()
            .unwrap();
        let lines = zone_lines(&p, &s, &[w]).unwrap();
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert!(lines.contains(&"acme.mx.provider.example. 3600 IN A 192.0.2.25".to_owned()));
        assert!(lines.contains(&"beta.mx.provider.example. 3600 IN AAAA 2001:db8::25".to_owned()));
        assert!(lines.contains(&format!(
            "beta._mailstamp.provider.example. 3600 IN TXT \"v=mailstamp1; w={w:#x}\""
        )));
    });
}
