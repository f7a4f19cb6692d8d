// SPDX-License-Identifier: GPL-3.0-or-later
//! The statements of the shared lists (migrations 3 and 4): authorised senders, the
//! self-training allowlist and `mailstamp recover` decisions. Every host of a store reads and
//! writes the same rows. The rules (normalising, caps, matching, expiry) live in
//! `people::senders`, `people::allowlist` and `recover`; these are only their reads and
//! writes, the same on both backends.

use serde::Serialize;

use super::Store;
use super::sql::{Row, Sql, vals};
use crate::error::Result;

/// What an authorised-sender entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SenderKind {
    /// One address.
    Address,
    /// Every address at a domain.
    Domain,
}

stored_enum!(SenderKind, "authorised-sender kind", {
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

/// Partial (we wrote to them) or complete (they wrote back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryState {
    /// Created by outbound mail only.
    Partial,
    /// The correspondent wrote back (authenticated).
    Complete,
}

stored_enum!(EntryState, "allowlist state", {
    Partial => "partial",
    Complete => "complete",
});

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllowlistEntry {
    /// Our user (lower case address).
    pub user: String,
    /// The correspondent's address (lower case).
    pub address: String,
    /// Its domain.
    pub domain: String,
    /// The display name last seen for it, if any.
    pub display_name: Option<String>,
    /// Partial or complete.
    pub state: EntryState,
    /// First traffic (unix seconds).
    pub first_seen: u64,
    /// Last traffic (unix seconds).
    pub last_seen: u64,
    /// Stamped messages our user sent to it.
    pub sent: u64,
    /// Authenticated messages it sent our user.
    pub received: u64,
}

/// One outbound message to record in the allowlist ([`Store::allowlist_outbound`]).
#[derive(Debug, Clone, Copy)]
pub struct OutboundEntry<'a> {
    /// Our user (lower case).
    pub user: &'a str,
    /// The correspondent (lower case).
    pub address: &'a str,
    /// Its domain.
    pub domain: &'a str,
    /// Its display name, cleaned.
    pub display_name: Option<&'a str>,
    /// Now (unix seconds).
    pub now: u64,
    /// Entries last seen before this are expired (deleted on the way).
    pub cutoff: u64,
    /// The user's cap: the least recently seen beyond it go.
    pub max_per_user: u64,
}

/// A recorded recovery decision as stored: its words are parsed by `recover`, which owns
/// them (an unknown word is an error there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryRecord {
    /// `release` or `keep`.
    pub action: String,
    /// The reason's word.
    pub reason: String,
    /// The authenticated sender, if any.
    pub sender: Option<String>,
    /// Whether a release was carried out.
    pub applied: bool,
    /// When `--watch` learned the sender.
    pub learned: Option<u64>,
}

const SENDER_COLS: &str = r#"SELECT "user", pattern, kind, added, note FROM senders"#;

fn sender_row(r: &Row) -> Result<SenderRow> {
    Ok(SenderRow {
        user: r.text(0)?,
        pattern: r.text(1)?,
        kind: r.word(2)?,
        added: r.u64(3)?,
        note: r.opt_text(4)?,
    })
}

const ENTRY_COLS: &str = r#"SELECT "user", address, domain, display_name, state, first_seen, last_seen, sent, received FROM allowlist"#;

fn entry(r: &Row) -> Result<AllowlistEntry> {
    Ok(AllowlistEntry {
        user: r.text(0)?,
        address: r.text(1)?,
        domain: r.text(2)?,
        display_name: r.opt_text(3)?,
        state: r.word(4)?,
        first_seen: r.u64(5)?,
        last_seen: r.u64(6)?,
        sent: r.u64(7)?,
        received: r.u64(8)?,
    })
}

fn entries(c: &mut dyn Sql, sql: &str, p: &[super::sql::Val]) -> Result<Vec<AllowlistEntry>> {
    c.query(sql, p)?.iter().map(entry).collect()
}

impl Store {
    /// How many authorised senders `user` has.
    pub fn sender_count(&self, user: &str) -> Result<u64> {
        self.run(|c| {
            c.query_one(
                r#"SELECT COUNT(*) FROM senders WHERE "user" = ?1"#,
                vals![user],
            )?
            .u64(0)
        })
    }

    /// Inserts an authorised sender unless `user` already has that pattern; whether it is new.
    pub fn insert_sender(&self, row: &SenderRow) -> Result<bool> {
        let n = self.run(|c| {
            c.exec(
                r#"INSERT INTO senders ("user", pattern, kind, added, note)
                   VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT ("user", pattern) DO NOTHING"#,
                vals![
                    &row.user,
                    &row.pattern,
                    row.kind.as_str(),
                    row.added,
                    row.note.as_deref()
                ],
            )
        })?;
        Ok(n > 0)
    }

    /// One authorised sender (`user` and `pattern` already normalised).
    pub fn sender_row(&self, user: &str, pattern: &str) -> Result<Option<SenderRow>> {
        self.run(|c| {
            c.query_opt(
                &format!(r#"{SENDER_COLS} WHERE "user" = ?1 AND pattern = ?2"#),
                vals![user, pattern],
            )?
            .map(|r| sender_row(&r))
            .transpose()
        })
    }

    /// Deletes one authorised sender; whether it was there.
    pub fn delete_sender(&self, user: &str, pattern: &str) -> Result<bool> {
        let n = self.run(|c| {
            c.exec(
                r#"DELETE FROM senders WHERE "user" = ?1 AND pattern = ?2"#,
                vals![user, pattern],
            )
        })?;
        Ok(n > 0)
    }

    /// The authorised senders of `user` (every user's with `None`), by user then pattern.
    pub fn sender_rows(&self, user: Option<&str>) -> Result<Vec<SenderRow>> {
        self.run(|c| {
            c.query(
                &format!(
                    r#"{SENDER_COLS} WHERE CAST(?1 AS TEXT) IS NULL OR "user" = ?1
                       ORDER BY "user", pattern"#
                ),
                vals![user],
            )?
            .iter()
            .map(sender_row)
            .collect()
        })
    }

    /// Records an outbound message in the allowlist, in one write transaction: expired
    /// entries go, the entry is created partial or refreshed (last seen, sent count, display
    /// name; a complete entry stays complete), and the user's cap is enforced.
    pub fn allowlist_outbound(&self, e: &OutboundEntry<'_>) -> Result<()> {
        self.tx(|c| {
            c.exec("DELETE FROM allowlist WHERE last_seen < ?1", vals![e.cutoff])?;
            c.exec(
                r#"INSERT INTO allowlist ("user", address, domain, display_name, state, first_seen, last_seen, sent, received)
                   VALUES (?1, ?2, ?3, ?4, 'partial', ?5, ?5, 1, 0)
                   ON CONFLICT ("user", address) DO UPDATE SET
                      last_seen = CASE WHEN excluded.last_seen > allowlist.last_seen
                                  THEN excluded.last_seen ELSE allowlist.last_seen END,
                      sent = allowlist.sent + 1,
                      display_name = COALESCE(excluded.display_name, allowlist.display_name)"#,
                vals![e.user, e.address, e.domain, e.display_name, e.now],
            )?;
            // The cap: drop the least recently seen beyond it (counted first: the sort runs
            // only when a new entry took the user over the cap).
            let n = c
                .query_one(
                    r#"SELECT COUNT(*) FROM allowlist WHERE "user" = ?1"#,
                    vals![e.user],
                )?
                .u64(0)?;
            if n > e.max_per_user {
                c.exec(
                    r#"DELETE FROM allowlist WHERE "user" = ?1 AND address NOT IN (
                         SELECT address FROM allowlist WHERE "user" = ?1
                         ORDER BY last_seen DESC, address LIMIT ?2)"#,
                    vals![e.user, e.max_per_user],
                )?;
            }
            Ok(())
        })
    }

    /// Completes (and refreshes) the live entry of `user` for `address`; whether there was
    /// one (last seen at or after `cutoff`).
    pub fn allowlist_complete(
        &self,
        user: &str,
        address: &str,
        display_name: Option<&str>,
        now: u64,
        cutoff: u64,
    ) -> Result<bool> {
        let n = self.run(|c| {
            c.exec(
                r#"UPDATE allowlist SET state = 'complete', received = received + 1,
                      last_seen = CASE WHEN last_seen > ?3 THEN last_seen ELSE ?3 END,
                      display_name = COALESCE(CAST(?4 AS TEXT), display_name)
                   WHERE "user" = ?1 AND address = ?2 AND last_seen >= ?5"#,
                vals![user, address, now, display_name, cutoff],
            )
        })?;
        Ok(n > 0)
    }

    /// The live entry of `user` for exactly `address`.
    pub fn allowlist_exact(
        &self,
        user: &str,
        address: &str,
        cutoff: u64,
    ) -> Result<Option<AllowlistEntry>> {
        self.run(|c| {
            c.query_opt(
                &format!(r#"{ENTRY_COLS} WHERE "user" = ?1 AND address = ?2 AND last_seen >= ?3"#),
                vals![user, address, cutoff],
            )?
            .map(|r| entry(&r))
            .transpose()
        })
    }

    /// The live complete entries of `user` at `domain`, most recently seen first.
    pub fn allowlist_complete_at(
        &self,
        user: &str,
        domain: &str,
        cutoff: u64,
    ) -> Result<Vec<AllowlistEntry>> {
        self.run(|c| {
            entries(
                c,
                &format!(
                    r#"{ENTRY_COLS} WHERE "user" = ?1 AND domain = ?2 AND last_seen >= ?3
                         AND state = 'complete'
                       ORDER BY last_seen DESC, address"#
                ),
                vals![user, domain, cutoff],
            )
        })
    }

    /// Deletes entries last seen before `cutoff`; how many.
    pub fn allowlist_expire(&self, cutoff: u64) -> Result<usize> {
        let n =
            self.run(|c| c.exec("DELETE FROM allowlist WHERE last_seen < ?1", vals![cutoff]))?;
        Ok(n as usize)
    }

    /// Entries of `user` (all users' with `None`), by user then most recent first.
    pub fn allowlist_entries(&self, user: Option<&str>) -> Result<Vec<AllowlistEntry>> {
        self.run(|c| {
            entries(
                c,
                &format!(
                    r#"{ENTRY_COLS} WHERE CAST(?1 AS TEXT) IS NULL OR "user" = ?1
                       ORDER BY "user", last_seen DESC, address"#
                ),
                vals![user],
            )
        })
    }

    /// One entry, live or not.
    pub fn allowlist_entry(&self, user: &str, address: &str) -> Result<Option<AllowlistEntry>> {
        self.run(|c| {
            c.query_opt(
                &format!(r#"{ENTRY_COLS} WHERE "user" = ?1 AND address = ?2"#),
                vals![user, address],
            )?
            .map(|r| entry(&r))
            .transpose()
        })
    }

    /// Deletes one entry of `user` (every entry of `user` with `None`); how many went.
    pub fn allowlist_forget(&self, user: &str, address: Option<&str>) -> Result<usize> {
        let n = self.run(|c| match address {
            Some(a) => c.exec(
                r#"DELETE FROM allowlist WHERE "user" = ?1 AND address = ?2"#,
                vals![user, a],
            ),
            None => c.exec(r#"DELETE FROM allowlist WHERE "user" = ?1"#, vals![user]),
        })?;
        Ok(n as usize)
    }

    /// The recorded decision on message `id` for `user`, as stored.
    pub fn recovery_record(&self, user: &str, id: &str) -> Result<Option<RecoveryRecord>> {
        self.run(|c| {
            c.query_opt(
                r#"SELECT action, reason, sender, applied, learned FROM recoveries
                   WHERE "user" = ?1 AND message = ?2"#,
                vals![user, id],
            )?
            .map(|r| {
                Ok(RecoveryRecord {
                    action: r.text(0)?,
                    reason: r.text(1)?,
                    sender: r.opt_text(2)?,
                    applied: r.flag(3)?,
                    learned: r.opt_u64(4)?,
                })
            })
            .transpose()
        })
    }

    /// Records (or replaces) a decision, not applied yet.
    pub fn put_recovery(
        &self,
        user: &str,
        id: &str,
        action: &str,
        reason: &str,
        sender: Option<&str>,
        now: u64,
    ) -> Result<()> {
        self.run(|c| {
            c.exec(
                r#"INSERT INTO recoveries ("user", message, action, reason, sender, applied, decided)
                   VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)
                   ON CONFLICT ("user", message) DO UPDATE SET action = excluded.action,
                      reason = excluded.reason, sender = excluded.sender, applied = 0,
                      decided = excluded.decided"#,
                vals![user, id, action, reason, sender, now],
            )
        })?;
        Ok(())
    }

    /// Marks a recorded release as carried out.
    pub fn recovery_applied(&self, user: &str, id: &str) -> Result<()> {
        self.run(|c| {
            c.exec(
                r#"UPDATE recoveries SET applied = 1 WHERE "user" = ?1 AND message = ?2"#,
                vals![user, id],
            )
        })?;
        Ok(())
    }

    /// Marks a kept message's sender as learned (the user released it by hand).
    pub fn recovery_learned(&self, user: &str, id: &str, now: u64) -> Result<()> {
        self.run(|c| {
            c.exec(
                r#"UPDATE recoveries SET learned = ?3 WHERE "user" = ?1 AND message = ?2"#,
                vals![user, id, now],
            )
        })?;
        Ok(())
    }

    /// Kept messages of `user` whose sender was not learned yet: (id, authenticated sender).
    pub fn kept_unlearned_rows(&self, user: &str) -> Result<Vec<(String, Option<String>)>> {
        self.run(|c| {
            c.query(
                r#"SELECT message, sender FROM recoveries
                   WHERE "user" = ?1 AND action = 'keep' AND learned IS NULL"#,
                vals![user],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, r.opt_text(1)?)))
            .collect()
        })
    }

    /// Deletes decisions older than `before` (unix seconds); returns how many.
    pub fn prune_recoveries(&self, before: u64) -> Result<usize> {
        let n = self.run(|c| c.exec("DELETE FROM recoveries WHERE decided < ?1", vals![before]))?;
        Ok(n as usize)
    }
}

/// One of a user's other addresses: mail stamped for `address` that arrives for `user` was
/// addressed to the user (it forwards there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForwardRow {
    /// The local user (lower case address).
    pub user: String,
    /// Their other address (lower case).
    pub address: String,
    /// When it was added (unix seconds).
    pub added: u64,
}

impl Store {
    /// Adds `address` as one of `user`'s other addresses unless it is there; whether it is new.
    pub fn insert_forward(&self, user: &str, address: &str, now: u64) -> Result<bool> {
        let n = self.run(|c| {
            c.exec(
                r#"INSERT INTO forwards ("user", address, added) VALUES (?1, ?2, ?3)
                   ON CONFLICT ("user", address) DO NOTHING"#,
                vals![user, address, now],
            )
        })?;
        Ok(n > 0)
    }

    /// Removes one of `user`'s other addresses; whether it was there.
    pub fn delete_forward(&self, user: &str, address: &str) -> Result<bool> {
        let n = self.run(|c| {
            c.exec(
                r#"DELETE FROM forwards WHERE "user" = ?1 AND address = ?2"#,
                vals![user, address],
            )
        })?;
        Ok(n > 0)
    }

    /// How many other addresses `user` has.
    pub fn forward_count(&self, user: &str) -> Result<u64> {
        self.run(|c| {
            c.query_one(
                r#"SELECT COUNT(*) FROM forwards WHERE "user" = ?1"#,
                vals![user],
            )?
            .u64(0)
        })
    }

    /// The other addresses of `user` (every user's with `None`), by user then address.
    pub fn forward_rows(&self, user: Option<&str>) -> Result<Vec<ForwardRow>> {
        self.run(|c| {
            c.query(
                r#"SELECT "user", address, added FROM forwards
                   WHERE CAST(?1 AS TEXT) IS NULL OR "user" = ?1 ORDER BY "user", address"#,
                vals![user],
            )?
            .iter()
            .map(|r| {
                Ok(ForwardRow {
                    user: r.text(0)?,
                    address: r.text(1)?,
                    added: r.u64(2)?,
                })
            })
            .collect()
        })
    }
}

impl Store {
    /// Remembers that `list` received the message whose top stamp has token `stamp` (hex)
    /// `wanted`, at `now`; entries older than `before` go at the same time.
    pub fn remember_list_received(
        &self,
        list: &str,
        stamp: &str,
        now: u64,
        before: u64,
    ) -> Result<()> {
        self.run(|c| {
            c.exec(
                "INSERT INTO list_received (list, stamp, received) VALUES (?1, ?2, ?3)
                 ON CONFLICT (list, stamp) DO UPDATE SET received = excluded.received",
                vals![list, stamp, now],
            )?;
            c.exec(
                "DELETE FROM list_received WHERE received < ?1",
                vals![before],
            )
        })?;
        Ok(())
    }

    /// Whether `list` received the message whose top stamp has token `stamp` `wanted`.
    pub fn list_received(&self, list: &str, stamp: &str) -> Result<bool> {
        self.run(|c| {
            c.query_one(
                "SELECT COUNT(*) FROM list_received WHERE list = ?1 AND stamp = ?2",
                vals![list, stamp],
            )?
            .u64(0)
        })
        .map(|n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    #[allow(unused_imports)]
    use super::*;

    crate::store::on_both_backends!(fn a_list_remembers_the_stamps_it_received_per_list_and_forgets_old_ones(store) {
        let store = &store;
        store.remember_list_received("dev@lists.example", "aa", 100, 0).unwrap();
        // Once more (Postfix delivered it again): one row, its time refreshed.
        store.remember_list_received("dev@lists.example", "aa", 200, 0).unwrap();
        assert!(store.list_received("dev@lists.example", "aa").unwrap());
        assert!(!store.list_received("ops@lists.example", "aa").unwrap(), "per list");
        assert!(!store.list_received("dev@lists.example", "bb").unwrap());
        // A later post prunes what is older than its horizon.
        store.remember_list_received("ops@lists.example", "cc", 300, 250).unwrap();
        assert!(!store.list_received("dev@lists.example", "aa").unwrap(), "pruned");
        assert!(store.list_received("ops@lists.example", "cc").unwrap());
    });
}
