// SPDX-License-Identifier: GPL-3.0-or-later
//! Per-user authorised senders (seed 003): each local user lists the senders whose unstamped
//! mail goes to the inbox — an address (`ann@example.org`) or a whole domain (`example.org`,
//! or `@example.org`). Kept in the store's `senders` table; managed with `mailstamp senders
//! add|remove|list|import`. A hit here counts only when the message is authenticated for its
//! From domain ([`crate::inbound::decide`] applies that rule).

use crate::error::{Result, bail};
use serde::Serialize;

use crate::people::{normalise_address, normalise_domain};
use crate::store::Store;
pub use crate::store::{SenderKind, SenderRow};

/// Most authorised senders one user may have (bounded growth; `senders add` refuses more).
pub const MAX_PER_USER: usize = 10_000;

/// Parses an entry as an operator writes it: an address, a domain, or `@domain`.
pub fn parse_pattern(p: &str) -> Result<(String, SenderKind)> {
    let p = p.trim();
    if let Some(d) = p.strip_prefix('@') {
        return Ok((normalise_domain(d)?, SenderKind::Domain));
    }
    if p.contains('@') {
        return Ok((normalise_address(p)?, SenderKind::Address));
    }
    Ok((
        normalise_domain(p).map_err(|_| {
            crate::error::err!(
                "`{p}` is neither a mail address (user@example.org) nor a domain (example.org)"
            )
        })?,
        SenderKind::Domain,
    ))
}

impl Store {
    /// Authorises `pattern` (address, domain or `@domain`) for `user`. Adding it again keeps
    /// the first entry; returns whether it is new.
    pub fn add_sender(
        &self,
        user: &str,
        pattern: &str,
        note: Option<&str>,
        now: u64,
    ) -> Result<bool> {
        let user = normalise_address(user).map_err(|e| crate::error::err!("--user: {e}"))?;
        let (pattern, kind) = parse_pattern(pattern)?;
        let count = self.sender_count(&user)?;
        if count >= MAX_PER_USER as u64 {
            if self.sender(&user, &pattern)?.is_some() {
                return Ok(false);
            }
            bail!(
                "{user} already has {MAX_PER_USER} authorised senders (the cap); remove some or authorise whole domains"
            );
        }
        self.insert_sender(&SenderRow {
            user,
            pattern,
            kind,
            added: now,
            note: note.map(str::to_owned),
        })
    }

    /// One entry.
    pub fn sender(&self, user: &str, pattern: &str) -> Result<Option<SenderRow>> {
        self.sender_row(user, pattern)
    }

    /// Removes an entry; false if it was not there.
    pub fn remove_sender(&self, user: &str, pattern: &str) -> Result<bool> {
        let user = normalise_address(user).map_err(|e| crate::error::err!("--user: {e}"))?;
        let (pattern, _) = parse_pattern(pattern)?;
        self.delete_sender(&user, &pattern)
    }

    /// A user's entries (every user's when `user` is `None`), by user then pattern.
    pub fn senders(&self, user: Option<&str>) -> Result<Vec<SenderRow>> {
        let user = user
            .map(|u| normalise_address(u).map_err(|e| crate::error::err!("--user: {e}")))
            .transpose()?;
        self.sender_rows(user.as_deref())
    }

    /// The entry authorising `address` (lower case) for `user`: the address itself first,
    /// else its domain or a parent domain (`example.org` covers `mail.example.org`).
    pub fn authorised(&self, user: &str, address: &str) -> Result<Option<SenderRow>> {
        if let Some(r) = self.sender(user, address)? {
            return Ok(Some(r));
        }
        let Some((_, mut domain)) = address.rsplit_once('@') else {
            return Ok(None);
        };
        loop {
            if let Some(r) = self.sender(user, domain)?
                && r.kind == SenderKind::Domain
            {
                return Ok(Some(r));
            }
            match domain.split_once('.') {
                Some((_, rest)) if rest.contains('.') => domain = rest,
                _ => return Ok(None),
            }
        }
    }
}

/// What `mailstamp senders import` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    /// New entries.
    pub added: usize,
    /// Entries already there.
    pub present: usize,
}

/// Imports one pattern per line (`#` starts a comment; blank lines skipped) for `user`. The
/// whole file is checked first: a bad line is an error naming the line, and nothing is added.
pub fn import(
    store: &Store,
    user: &str,
    text: &str,
    source: &str,
    now: u64,
) -> Result<ImportSummary> {
    let mut patterns = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        parse_pattern(line).map_err(|e| {
            crate::error::err!(
                "{source} line {}: {e}; nothing was imported, fix the line and run again",
                i + 1
            )
        })?;
        patterns.push(line.to_owned());
    }
    let note = format!("imported from {source}");
    let mut sum = ImportSummary::default();
    for p in patterns {
        if store.add_sender(user, &p, Some(&note), now)? {
            sum.added += 1;
        } else {
            sum.present += 1;
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_checked_and_normalised() {
        assert_eq!(
            parse_pattern(" Ann@Example.ORG ").unwrap(),
            ("ann@example.org".to_owned(), SenderKind::Address)
        );
        assert_eq!(
            parse_pattern("@Example.org").unwrap(),
            ("example.org".to_owned(), SenderKind::Domain)
        );
        assert_eq!(parse_pattern("example.org.").unwrap().1, SenderKind::Domain);
        for bad in [
            "",
            "nodot",
            "a@",
            "@",
            "a b@example.org",
            "x@-bad.example",
            "ex..org",
        ] {
            assert!(parse_pattern(bad).is_err(), "{bad}");
        }
    }

    crate::store::on_both_backends!(fn addresses_and_domains_authorise(s) {
        assert!(
            s.add_sender("alice@ours.example", "ann@a.example", None, 1)
                .unwrap()
        );
        assert!(
            !s.add_sender("Alice@ours.example", "ANN@a.example", None, 2)
                .unwrap()
        );
        assert!(
            s.add_sender("alice@ours.example", "b.example", None, 3)
                .unwrap()
        );
        assert!(
            s.authorised("alice@ours.example", "ann@a.example")
                .unwrap()
                .is_some()
        );
        assert!(
            s.authorised("alice@ours.example", "bob@a.example")
                .unwrap()
                .is_none()
        );
        assert_eq!(
            s.authorised("alice@ours.example", "x@mail.b.example")
                .unwrap()
                .unwrap()
                .pattern,
            "b.example"
        );
        assert!(
            s.authorised("bob@ours.example", "ann@a.example")
                .unwrap()
                .is_none()
        );
        assert_eq!(s.senders(Some("alice@ours.example")).unwrap().len(), 2);
        assert!(s.remove_sender("alice@ours.example", "@b.example").unwrap());
        assert!(!s.remove_sender("alice@ours.example", "b.example").unwrap());
        let e = import(
            &s,
            "alice@ours.example",
            "c.example\nnot an entry\n",
            "f.txt",
            4,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("f.txt line 2"), "{e}");
        assert!(
            s.authorised("alice@ours.example", "x@c.example")
                .unwrap()
                .is_none()
        );
    });
}
