// SPDX-License-Identifier: GPL-3.0-or-later
//! Per-user authorised senders (seed 003): each local user lists the senders whose unstamped
//! mail goes to the inbox — an address (`ann@example.org`) or a whole domain (`example.org`,
//! or `@example.org`). Kept in the store's `senders` table; managed with `mailstamp senders
//! add|remove|list|import`. A hit here counts only when the message is authenticated for its
//! From domain ([`crate::inbound::decide`] applies that rule).

use crate::error::{Result, bail};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::people::{normalise_address, normalise_domain};
use crate::store::Store;

/// Most authorised senders one user may have (bounded growth; `senders add` refuses more).
pub const MAX_PER_USER: usize = 10_000;

/// What an authorised-sender entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SenderKind {
    /// One address.
    Address,
    /// Every address at a domain.
    Domain,
}

crate::store::stored_enum!(SenderKind, "authorised-sender kind", {
    Address => "address",
    Domain => "domain",
});

/// One authorised sender of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SenderRow {
    /// The local user (lower case address).
    pub user: String,
    /// The address or domain (lower case).
    pub pattern: String,
    /// Address or domain.
    pub kind: SenderKind,
    /// When it was added (unix seconds).
    pub added: u64,
    /// Free text (where it came from).
    pub note: Option<String>,
}

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
        let count: i64 = self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM senders WHERE user = ?1",
                [&user],
                |r| r.get(0),
            )
        })?;
        let n = self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO senders (user, pattern, kind, added, note)
                 SELECT ?1, ?2, ?3, ?4, ?5 WHERE ?6 < ?7",
                params![
                    user,
                    pattern,
                    kind.as_str(),
                    now as i64,
                    note,
                    count,
                    MAX_PER_USER as i64
                ],
            )
        })?;
        if n == 0 && count >= MAX_PER_USER as i64 && self.sender(&user, &pattern)?.is_none() {
            bail!(
                "{user} already has {MAX_PER_USER} authorised senders (the cap); remove some or authorise whole domains"
            );
        }
        Ok(n > 0)
    }

    /// One entry.
    pub fn sender(&self, user: &str, pattern: &str) -> Result<Option<SenderRow>> {
        self.with(|c| {
            c.query_row(
                "SELECT user, pattern, kind, added, note FROM senders WHERE user = ?1 AND pattern = ?2",
                params![user, pattern],
                sender_row,
            )
            .optional()
        })
    }

    /// Removes an entry; false if it was not there.
    pub fn remove_sender(&self, user: &str, pattern: &str) -> Result<bool> {
        let user = normalise_address(user).map_err(|e| crate::error::err!("--user: {e}"))?;
        let (pattern, _) = parse_pattern(pattern)?;
        Ok(self.with(|c| {
            c.execute(
                "DELETE FROM senders WHERE user = ?1 AND pattern = ?2",
                params![user, pattern],
            )
        })? > 0)
    }

    /// A user's entries (every user's when `user` is `None`), by user then pattern.
    pub fn senders(&self, user: Option<&str>) -> Result<Vec<SenderRow>> {
        let user = user
            .map(|u| normalise_address(u).map_err(|e| crate::error::err!("--user: {e}")))
            .transpose()?;
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT user, pattern, kind, added, note FROM senders
                 WHERE ?1 IS NULL OR user = ?1 ORDER BY user, pattern",
            )?;
            st.query_map([user], sender_row)?.collect()
        })
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

fn sender_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SenderRow> {
    Ok(SenderRow {
        user: r.get(0)?,
        pattern: r.get(1)?,
        kind: r.get(2)?,
        added: r.get::<_, i64>(3)? as u64,
        note: r.get(4)?,
    })
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

    #[test]
    fn addresses_and_domains_authorise() {
        let s = Store::in_memory().unwrap();
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
    }
}
