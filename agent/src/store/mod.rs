// SPDX-License-Identifier: GPL-3.0-or-later
//! The agent's durable local state in SQLite (rusqlite, bundled): one file, WAL journal so
//! milter sessions can read while one writes, a busy timeout instead of "database is locked",
//! and schema migrations keyed by `PRAGMA user_version`. This module owns the schema (later
//! features add migrations at the end of [`MIGRATIONS`], never edit earlier ones), the one way
//! async code reaches it ([`Store::call`]: the blocking pool) and the one string mapping of
//! every enum kept in it (`stored_enum!`: an unknown stored word is an error).

use std::path::Path;
use std::sync::Mutex;

use crate::error::{Context, Result, bail};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// Schema migrations, applied in order; `user_version` counts how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: customer domains being onboarded (seed 000).
    "CREATE TABLE domains (
        domain   TEXT PRIMARY KEY,
        account  TEXT NOT NULL,
        status   TEXT NOT NULL CHECK (status IN ('pending', 'active')),
        added    INTEGER NOT NULL,
        verified INTEGER
    ) STRICT;
    CREATE INDEX domains_account ON domains (account);",
    // 2: batches whose stamped messages are spooled and whose anchor may not be on chain yet
    // (issue 6): a crash between spooling and anchoring loses nothing and anchors nothing twice.
    "CREATE TABLE batches (
        batch_id TEXT PRIMARY KEY,
        root     TEXT NOT NULL,
        size     INTEGER NOT NULL,
        spool    TEXT NOT NULL,
        out_dir  TEXT NOT NULL,
        state    TEXT NOT NULL CHECK (state IN ('pending', 'done')),
        tx       TEXT,
        created  INTEGER NOT NULL
    ) STRICT;",
    // 3: per-user authorised senders (seed 003) and the self-training allowlist (seed 004,
    // issue 5). `senders.pattern` is a lower-case address, or a lower-case domain when
    // kind = 'domain'. An allowlist entry is created 'partial' by an outbound stamped message
    // and 'complete' once the correspondent wrote back; idle entries expire (last_seen).
    "CREATE TABLE senders (
        user    TEXT NOT NULL,
        pattern TEXT NOT NULL,
        kind    TEXT NOT NULL CHECK (kind IN ('address', 'domain')),
        added   INTEGER NOT NULL,
        note    TEXT,
        PRIMARY KEY (user, pattern)
    ) STRICT;
    CREATE TABLE allowlist (
        user         TEXT NOT NULL,
        address      TEXT NOT NULL,
        domain       TEXT NOT NULL,
        display_name TEXT,
        state        TEXT NOT NULL CHECK (state IN ('partial', 'complete')),
        first_seen   INTEGER NOT NULL,
        last_seen    INTEGER NOT NULL,
        sent         INTEGER NOT NULL DEFAULT 0,
        received     INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user, address)
    ) STRICT;
    CREATE INDEX allowlist_domain ON allowlist (user, domain);
    CREATE INDEX allowlist_last_seen ON allowlist (last_seen);",
    // 4: `mailstamp recover` decisions (seed 004, issue 5), keyed by the keccak-256 of the raw
    // message (file names change with flags), so re-runs do not decide twice; `applied` marks
    // a release carried out, `learned` a kept message the user moved out by hand (`--watch`).
    // Pruned after `[recover] retention_days`.
    "CREATE TABLE recoveries (
        user     TEXT NOT NULL,
        message  TEXT NOT NULL,
        action   TEXT NOT NULL CHECK (action IN ('release', 'keep')),
        reason   TEXT NOT NULL,
        sender   TEXT,
        applied  INTEGER NOT NULL DEFAULT 0,
        learned  INTEGER,
        decided  INTEGER NOT NULL,
        PRIMARY KEY (user, message)
    ) STRICT;
    CREATE INDEX recoveries_decided ON recoveries (decided);",
    // 5: the milter's and relay's batches (stamp.mode = "batch"): every accepted leaf is
    // journalled before its batch closes, the root before the anchor is sent, the outcome
    // after; what a crash leaves `open`/`closed` meets stamp.pending_on_restart. `sent`: every
    // anchor transaction signed for the batch (space-separated hashes), journalled before it
    // is broadcast, so a restart finds one still in the pool instead of anchoring again.
    // `owner`: the daemon that opened the batch (kind and listen address), so a milter and a
    // relay sharing one store each recover only their own.
    "CREATE TABLE daemon_batches (
        batch_id TEXT PRIMARY KEY,
        state    TEXT NOT NULL CHECK (state IN ('open', 'closed', 'anchored', 'dropped')),
        root     TEXT,
        size     INTEGER,
        tx       TEXT,
        sent     TEXT NOT NULL DEFAULT '',
        owner    TEXT NOT NULL DEFAULT '',
        note     TEXT,
        created  INTEGER NOT NULL,
        updated  INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX daemon_batches_state ON daemon_batches (state);
    CREATE TABLE daemon_leaves (
        batch_id   TEXT NOT NULL REFERENCES daemon_batches (batch_id),
        leaf       INTEGER NOT NULL,
        commitment TEXT NOT NULL,
        PRIMARY KEY (batch_id, leaf)
    ) STRICT;",
    // 6: the stamps and anchors a daemon recorded, watched until final (issue 11,
    // docs/PROTOCOL.md §5b). `raw` is the mined transaction as signed, sent again unchanged
    // when a reorg drops it; `value`/`size` are what a new transaction would record if its
    // nonce was taken meanwhile. `block`/`block_hash`: where it is mined now (NULL: sent
    // again, not mined yet). `owner` as in daemon_batches.
    "CREATE TABLE watched (
        writer     TEXT NOT NULL,
        kind       TEXT NOT NULL CHECK (kind IN ('stamp', 'anchor')),
        key        TEXT NOT NULL,
        chain_id   INTEGER NOT NULL,
        registry   TEXT NOT NULL,
        value      TEXT NOT NULL,
        size       INTEGER NOT NULL,
        tx         TEXT NOT NULL,
        raw        BLOB NOT NULL,
        nonce      INTEGER NOT NULL,
        block      INTEGER,
        block_hash TEXT,
        owner      TEXT NOT NULL,
        resent     INTEGER NOT NULL DEFAULT 0,
        since      INTEGER NOT NULL,
        PRIMARY KEY (writer, kind, key)
    ) STRICT;
    CREATE INDEX watched_owner ON watched (owner, chain_id, registry, writer);",
    // 7: `stamp.release = "closed"` (issue 11, docs/PROTOCOL.md §5a): a batch whose messages
    // got their headers when it closed, before its anchor was mined. Such a batch is anchored
    // whatever stamp.pending_on_restart says, and retried until it is: never dropped.
    "ALTER TABLE daemon_batches ADD COLUMN released INTEGER NOT NULL DEFAULT 0;",
];

pub use watched::{WatchKind, WatchedRow};

/// A stored value this version does not know (a row written by a newer mailstamp, or edited by
/// hand): an error, never a default.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the store holds {what} `{value}`, which this version of mailstamp does not know: upgrade mailstamp, or correct the row"
)]
pub struct UnknownValue {
    /// What the column holds (`batch state`, …).
    pub what: &'static str,
    /// The value read.
    pub value: String,
}

/// Declares the one string mapping of an enum kept in the store: `as_str` (also what is
/// printed, and its `Display`), `FromStr` (an unknown word is an [`UnknownValue`]), and
/// rusqlite's `ToSql` and
/// `FromSql`, so that a column can only be read back into a variant or fail.
macro_rules! stored_enum {
    ($t:ty, $what:literal, { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$v),+];

            /// The stored (and printed) word.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$v => $s),+
                }
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $t {
            type Err = $crate::store::UnknownValue;
            fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
                match s {
                    $($s => Ok(Self::$v),)+
                    other => Err($crate::store::UnknownValue {
                        what: $what,
                        value: other.to_owned(),
                    }),
                }
            }
        }

        impl rusqlite::types::FromSql for $t {
            fn column_result(
                v: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                v.as_str()?
                    .parse()
                    .map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
            }
        }

        impl rusqlite::types::ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }
    };
}
pub(crate) use stored_enum;

/// The state store.
pub struct Store {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Onboarding state of a customer domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainStatus {
    /// Added; the customer's DNS records are not verified yet.
    Pending,
    /// Records verified: mail is stamped and accepted for it.
    Active,
}

stored_enum!(DomainStatus, "domain status", { Pending => "pending", Active => "active" });

// After the macro: the watch journal's kind is a stored enum too.
mod watched;

/// One customer domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainRow {
    /// The domain (lower case).
    pub domain: String,
    /// The customer account it belongs to.
    pub account: String,
    /// Pending or active.
    pub status: DomainStatus,
    /// When it was added (unix seconds).
    pub added: u64,
    /// When its records were last verified.
    pub verified: Option<u64>,
}

impl Store {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open the store {}", path.display()))?;
        Self::init(conn).with_context(|| format!("store {}", path.display()))
    }

    /// A store in memory (tests, dry runs).
    pub fn in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL for files; an in-memory database answers "memory", which is fine.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.pragma_update(None, "foreign_keys", true)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let version = usize::try_from(version).unwrap_or(usize::MAX);
        if version > MIGRATIONS.len() {
            bail!(
                "the store has schema version {version}, newer than this agent knows ({}): upgrade mailstamp",
                MIGRATIONS.len()
            );
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction()?;
            tx.execute_batch(m)
                .with_context(|| format!("schema migration {}", i + 1))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// Runs `f` with this store on tokio's blocking pool, never on a runtime worker: SQLite may
    /// wait for another writer's lock (up to its busy timeout) or for an fsync. Every store
    /// call made from async code goes through here.
    pub async fn call<T: Send + 'static>(
        self: &std::sync::Arc<Self>,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let me = self.clone();
        let started = std::time::Instant::now();
        let r = tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| crate::error::err!("store task failed: {e}"))?;
        crate::metrics::METRICS
            .store_seconds
            .observe(started.elapsed().as_secs_f64());
        r
    }

    /// Runs `f` on the connection (one user at a time). The per-feature modules (senders,
    /// allowlist) keep their SQL next to their logic and go through this.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| crate::error::err!("store lock poisoned"))?;
        Ok(f(&conn)?)
    }

    /// Adds `domain` for `account` as pending. Adding it again for the same account returns the
    /// existing row; for another account it is an error (a domain has one owner).
    pub fn add_domain(&self, domain: &str, account: &str, now: u64) -> Result<DomainRow> {
        if let Some(row) = self.domain(domain)? {
            if row.account != account {
                bail!(
                    "{domain} is already onboarded for account {}; remove it first (`mailstamp onboard remove {domain}`)",
                    row.account
                );
            }
            return Ok(row);
        }
        self.with(|c| {
            c.execute(
                "INSERT INTO domains (domain, account, status, added) VALUES (?1, ?2, 'pending', ?3)",
                params![domain, account, now as i64],
            )
        })?;
        self.domain(domain)?.context("row just inserted is missing")
    }

    /// Marks `domain` active as of `now`.
    pub fn set_active(&self, domain: &str, now: u64) -> Result<()> {
        let n = self.with(|c| {
            c.execute(
                "UPDATE domains SET status = 'active', verified = ?2 WHERE domain = ?1",
                params![domain, now as i64],
            )
        })?;
        if n == 0 {
            bail!("{domain} is not onboarded: `mailstamp onboard add {domain} --account ID` first");
        }
        Ok(())
    }

    /// One domain.
    pub fn domain(&self, domain: &str) -> Result<Option<DomainRow>> {
        self.with(|c| {
            c.query_row(
                "SELECT domain, account, status, added, verified FROM domains WHERE domain = ?1",
                [domain],
                row,
            )
            .optional()
        })
    }

    /// Every domain, by account then name.
    pub fn domains(&self) -> Result<Vec<DomainRow>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT domain, account, status, added, verified FROM domains ORDER BY account, domain",
            )?;
            st.query_map([], row)?.collect()
        })
    }

    /// Removes `domain`; false if it was not there.
    pub fn remove_domain(&self, domain: &str) -> Result<bool> {
        Ok(self.with(|c| c.execute("DELETE FROM domains WHERE domain = ?1", [domain]))? > 0)
    }

    /// Whether mail for `domain` may be processed (onboarded and verified).
    pub fn is_active(&self, domain: &str) -> Result<bool> {
        Ok(self
            .domain(domain)?
            .is_some_and(|r| r.status == DomainStatus::Active))
    }
}

/// A batch in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchRow {
    /// Batch id, 0x-hex.
    pub batch_id: String,
    /// Root to anchor, 0x-hex (24 bytes).
    pub root: String,
    /// Stamps in the batch.
    pub size: u32,
    /// Where the stamped messages wait.
    pub spool: String,
    /// Where they go once anchored.
    pub out_dir: String,
    /// Anchoring transaction, once known.
    pub tx: Option<String>,
}

impl Store {
    /// Journals a batch as pending (its messages already spooled).
    pub fn add_batch(&self, b: &BatchRow, now: u64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO batches (batch_id, root, size, spool, out_dir, state, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6)",
                params![b.batch_id, b.root, b.size, b.spool, b.out_dir, now as i64],
            )
        })?;
        Ok(())
    }

    /// Batches not finished yet, oldest first.
    pub fn pending_batches(&self) -> Result<Vec<BatchRow>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT batch_id, root, size, spool, out_dir, tx FROM batches
                 WHERE state = 'pending' ORDER BY created, batch_id",
            )?;
            st.query_map([], |r| {
                Ok(BatchRow {
                    batch_id: r.get(0)?,
                    root: r.get(1)?,
                    size: r.get(2)?,
                    spool: r.get(3)?,
                    out_dir: r.get(4)?,
                    tx: r.get(5)?,
                })
            })?
            .collect()
        })
    }

    /// Marks a batch finished (anchored and its messages delivered).
    pub fn finish_batch(&self, batch_id: &str, tx: Option<&str>) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE batches SET state = 'done', tx = COALESCE(?2, tx) WHERE batch_id = ?1",
                params![batch_id, tx],
            )
        })?;
        Ok(())
    }
}

/// State of a daemon batch in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DaemonBatchState {
    /// Taking leaves.
    Open,
    /// Root fixed; the anchor may have been sent.
    Closed,
    /// Anchor mined (or found on chain).
    Anchored,
    /// Given up without anchoring (its messages were deferred).
    Dropped,
}

stored_enum!(DaemonBatchState, "batch state", {
    Open => "open",
    Closed => "closed",
    Anchored => "anchored",
    Dropped => "dropped",
});

/// What one journal write changes in a daemon batch (`None`: kept as it is).
#[derive(Clone, Copy)]
struct BatchUpdate<'a> {
    state: DaemonBatchState,
    root: Option<&'a str>,
    size: Option<u32>,
    tx: Option<&'a str>,
    note: Option<&'a str>,
    /// Sets the `released` flag (false keeps it as it is).
    released: bool,
}

/// A daemon batch in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonBatchRow {
    /// Batch id, 0x-hex.
    pub batch_id: String,
    /// Where it stands.
    pub state: DaemonBatchState,
    /// Root, 0x-hex (24 bytes), once closed.
    pub root: Option<String>,
    /// Leaves, once closed.
    pub size: Option<u32>,
    /// Anchoring transaction, once known.
    pub tx: Option<String>,
    /// Why it was dropped.
    pub note: Option<String>,
    /// Every anchor transaction signed for it (0x-hex), in the order sent.
    pub sent: Vec<String>,
    /// The daemon that opened it (kind and listen address).
    pub owner: String,
    /// The leaves' commitments (0x-hex), in leaf order.
    pub leaves: Vec<String>,
    /// Its messages got their headers when it closed (`stamp.release = "closed"`): it must be
    /// anchored, whatever `stamp.pending_on_restart` says.
    pub released: bool,
}

impl Store {
    /// Journals a new, empty daemon batch of `owner` (the daemon that opened it).
    pub fn open_daemon_batch(&self, batch_id: &str, owner: &str, now: u64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO daemon_batches (batch_id, state, owner, created, updated)
                 VALUES (?1, 'open', ?2, ?3, ?3)",
                params![batch_id, owner, now as i64],
            )
        })?;
        Ok(())
    }

    /// Journals leaf number `leaf` of a batch; refused unless the batch is `open` (a closed
    /// batch's root is fixed, and a recovered one is no longer anyone's to fill).
    pub fn add_daemon_leaf(&self, batch_id: &str, leaf: u32, commitment: &str) -> Result<()> {
        let n = self.with(|c| {
            c.execute(
                "INSERT INTO daemon_leaves (batch_id, leaf, commitment)
                 SELECT ?1, ?2, ?3 WHERE EXISTS
                   (SELECT 1 FROM daemon_batches WHERE batch_id = ?1 AND state = 'open')",
                params![batch_id, leaf, commitment],
            )
        })?;
        if n == 0 {
            bail!("batch {batch_id} is not open in the journal: no leaf can be added");
        }
        Ok(())
    }

    /// Journals an anchor transaction of a batch, before it is broadcast.
    pub fn add_daemon_sent(&self, batch_id: &str, tx: &str, now: u64) -> Result<()> {
        let n = self.with(|c| {
            c.execute(
                "UPDATE daemon_batches SET sent = trim(sent || ' ' || ?2), updated = ?3
                 WHERE batch_id = ?1",
                params![batch_id, tx, now as i64],
            )
        })?;
        if n == 0 {
            bail!("batch {batch_id} is not in the journal");
        }
        Ok(())
    }

    /// Fixes the root of a batch (before its anchor is sent); `released`: its messages get
    /// their headers now, before the anchor is mined (a flag that is never cleared).
    pub fn close_daemon_batch(
        &self,
        batch_id: &str,
        root: &str,
        size: u32,
        released: bool,
        now: u64,
    ) -> Result<()> {
        let update = BatchUpdate {
            state: DaemonBatchState::Closed,
            root: Some(root),
            size: Some(size),
            tx: None,
            note: None,
            released,
        };
        self.set_daemon_batch(batch_id, &update, now)
    }

    /// Records the outcome of a batch: anchored (with its transaction when this agent sent it)
    /// or dropped (with why).
    pub fn end_daemon_batch(
        &self,
        batch_id: &str,
        state: DaemonBatchState,
        tx: Option<&str>,
        note: Option<&str>,
        now: u64,
    ) -> Result<()> {
        let update = BatchUpdate {
            state,
            root: None,
            size: None,
            tx,
            note,
            released: false,
        };
        self.set_daemon_batch(batch_id, &update, now)
    }

    fn set_daemon_batch(&self, batch_id: &str, u: &BatchUpdate<'_>, now: u64) -> Result<()> {
        let BatchUpdate {
            state,
            root,
            size,
            tx,
            note,
            released,
        } = *u;
        let n = self.with(|c| {
            c.execute(
                "UPDATE daemon_batches SET state = ?2, root = COALESCE(?3, root),
                 size = COALESCE(?4, size), tx = COALESCE(?5, tx), note = COALESCE(?6, note),
                 released = MAX(released, ?8), updated = ?7 WHERE batch_id = ?1",
                params![
                    batch_id,
                    state.as_str(),
                    root,
                    size,
                    tx,
                    note,
                    now as i64,
                    released
                ],
            )
        })?;
        if n == 0 {
            bail!("batch {batch_id} is not in the journal");
        }
        Ok(())
    }

    /// Deletes the `anchored` and `dropped` daemon batches last changed before `before`
    /// (unix seconds), with their leaves; how many batches went. Pending ones are kept
    /// whatever their age.
    pub fn prune_daemon_batches(&self, before: u64) -> Result<usize> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            tx.execute(
                "DELETE FROM daemon_leaves WHERE batch_id IN (SELECT batch_id FROM daemon_batches
                 WHERE state IN ('anchored', 'dropped') AND updated < ?1)",
                params![before as i64],
            )?;
            let n = tx.execute(
                "DELETE FROM daemon_batches WHERE state IN ('anchored', 'dropped') AND updated < ?1",
                params![before as i64],
            )?;
            tx.commit()?;
            Ok(n)
        })
    }

    /// The daemon batches of `owner` in `states`, oldest first, with their leaves.
    pub fn daemon_batches_of(
        &self,
        owner: &str,
        states: &[DaemonBatchState],
    ) -> Result<Vec<DaemonBatchRow>> {
        let mut rows = self.daemon_batches(states)?;
        rows.retain(|r| r.owner == owner);
        Ok(rows)
    }

    /// Daemon batches in `states` (every owner's), oldest first, with their leaves.
    pub fn daemon_batches(&self, states: &[DaemonBatchState]) -> Result<Vec<DaemonBatchRow>> {
        let wanted: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT batch_id, state, root, size, tx, note, sent, owner, released
                 FROM daemon_batches
                 ORDER BY created, rowid",
            )?;
            let rows: Vec<DaemonBatchRow> = st
                .query_map([], |r| {
                    Ok(DaemonBatchRow {
                        batch_id: r.get(0)?,
                        state: r.get(1)?,
                        root: r.get(2)?,
                        size: r.get(3)?,
                        tx: r.get(4)?,
                        note: r.get(5)?,
                        sent: r
                            .get::<_, String>(6)?
                            .split_whitespace()
                            .map(str::to_owned)
                            .collect(),
                        owner: r.get(7)?,
                        leaves: Vec::new(),
                        released: r.get(8)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut leaves = c.prepare(
                "SELECT commitment FROM daemon_leaves WHERE batch_id = ?1 ORDER BY leaf",
            )?;
            rows.into_iter()
                .filter(|r| wanted.contains(&r.state.as_str()))
                .map(|mut r| {
                    r.leaves = leaves
                        .query_map([&r.batch_id], |x| x.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    Ok(r)
                })
                .collect()
        })
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DomainRow> {
    Ok(DomainRow {
        domain: r.get(0)?,
        account: r.get(1)?,
        status: r.get(2)?,
        added: r.get::<_, i64>(3)? as u64,
        verified: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_stored_state_is_an_error_not_a_default() {
        // Before: an unknown batch state read back as `dropped`, so the batch was never
        // recovered. Written past the CHECK constraint, as a newer version or a hand edit could.
        let s = Store::in_memory().unwrap();
        s.open_daemon_batch("0xb1", "milter inet:a", 1).unwrap();
        s.with(|c| {
            c.execute_batch(
                "PRAGMA ignore_check_constraints = ON;
                 UPDATE daemon_batches SET state = 'frozen' WHERE batch_id = '0xb1';
                 PRAGMA ignore_check_constraints = OFF;",
            )
        })
        .unwrap();
        let e = s
            .daemon_batches_of("milter inet:a", &[DaemonBatchState::Open])
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("batch state `frozen`") && e.contains("upgrade"),
            "{e}"
        );
        s.add_domain("c1.example", "acme", 1).unwrap();
        s.with(|c| {
            c.execute_batch(
                "PRAGMA ignore_check_constraints = ON;
                 UPDATE domains SET status = 'suspended';",
            )
        })
        .unwrap();
        let e = format!("{:#}", s.domain("c1.example").unwrap_err());
        assert!(e.contains("domain status `suspended`"), "{e}");
    }

    #[test]
    fn every_stored_enum_reads_back_what_it_writes() {
        for v in DaemonBatchState::ALL {
            assert_eq!(v.as_str().parse::<DaemonBatchState>(), Ok(*v));
        }
        for v in DomainStatus::ALL {
            assert_eq!(v.as_str().parse::<DomainStatus>(), Ok(*v));
        }
        assert_eq!(
            "Open".parse::<DaemonBatchState>(),
            Err(UnknownValue {
                what: "batch state",
                value: "Open".into()
            }),
            "exact words only"
        );
        // Through SQLite too.
        let s = Store::in_memory().unwrap();
        for v in DaemonBatchState::ALL {
            let back: DaemonBatchState = s
                .with(|c| c.query_row("SELECT ?1", [v], |r| r.get(0)))
                .unwrap();
            assert_eq!(back, *v);
        }
    }

    #[test]
    fn domains_go_from_pending_to_active_and_belong_to_one_account() {
        let s = Store::in_memory().unwrap();
        let r = s.add_domain("c1.example", "acme", 10).unwrap();
        assert_eq!(r.status, DomainStatus::Pending);
        assert!(!s.is_active("c1.example").unwrap());
        assert_eq!(s.add_domain("c1.example", "acme", 11).unwrap().added, 10);
        assert!(
            s.add_domain("c1.example", "other", 12)
                .unwrap_err()
                .to_string()
                .contains("acme")
        );
        s.set_active("c1.example", 20).unwrap();
        assert!(s.is_active("c1.example").unwrap());
        assert_eq!(s.domain("c1.example").unwrap().unwrap().verified, Some(20));
        assert!(s.set_active("nope.example", 1).is_err());
        assert_eq!(s.domains().unwrap().len(), 1);
        assert!(s.remove_domain("c1.example").unwrap());
        assert!(!s.remove_domain("c1.example").unwrap());
    }

    #[test]
    fn daemon_batches_go_from_open_to_anchored_or_dropped_with_their_leaves() {
        use DaemonBatchState::*;
        let s = Store::in_memory().unwrap();
        s.open_daemon_batch("0xb1", "milter inet:a", 1).unwrap();
        s.add_daemon_leaf("0xb1", 0, "0xc0").unwrap();
        s.add_daemon_leaf("0xb1", 1, "0xc1").unwrap();
        assert!(
            s.add_daemon_leaf("0xb1", 1, "0xc2").is_err(),
            "a leaf is written once"
        );
        assert!(
            s.add_daemon_leaf("0xnone", 0, "0xc2").is_err(),
            "only into a journalled batch"
        );
        s.open_daemon_batch("0xb2", "milter inet:a", 2).unwrap();
        s.open_daemon_batch("0xb3", "relay 127.0.0.1:2525", 2)
            .unwrap();
        s.close_daemon_batch("0xb1", "0xr1", 2, false, 3).unwrap();
        assert!(
            s.add_daemon_leaf("0xb1", 2, "0xc2").is_err(),
            "no leaf into a closed batch"
        );
        let relay = s
            .daemon_batches_of("relay 127.0.0.1:2525", &[Open, Closed])
            .unwrap();
        assert_eq!(relay.len(), 1, "each daemon sees its own batches");
        assert_eq!(relay[0].batch_id, "0xb3");
        s.end_daemon_batch("0xb3", Dropped, None, None, 3).unwrap();
        assert!(
            s.add_daemon_leaf("0xb3", 0, "0xc3").is_err(),
            "no leaf into a dropped batch"
        );
        let pending = s
            .daemon_batches_of("milter inet:a", &[Open, Closed])
            .unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].state, Closed);
        assert_eq!(pending[0].leaves, ["0xc0", "0xc1"]);
        assert_eq!(pending[0].root.as_deref(), Some("0xr1"));
        assert_eq!(pending[1].state, Open);
        assert!(pending[0].sent.is_empty());
        s.add_daemon_sent("0xb1", "0xs1", 3).unwrap();
        s.add_daemon_sent("0xb1", "0xs2", 3).unwrap();
        assert!(s.add_daemon_sent("0xnone", "0xs3", 3).is_err());
        assert_eq!(
            s.daemon_batches(&[Closed]).unwrap()[0].sent,
            ["0xs1", "0xs2"]
        );
        s.end_daemon_batch("0xb1", Anchored, Some("0xt"), None, 4)
            .unwrap();
        s.end_daemon_batch("0xb2", Dropped, None, Some("restart"), 4)
            .unwrap();
        assert!(s.daemon_batches(&[Open, Closed]).unwrap().is_empty());
        let done = s.daemon_batches(&[Anchored, Dropped]).unwrap();
        assert_eq!(done[0].tx.as_deref(), Some("0xt"));
        assert_eq!(done[0].size, Some(2));
        assert_eq!(done[1].note.as_deref(), Some("restart"));
        assert!(
            s.end_daemon_batch("0xnone", Dropped, None, None, 5)
                .is_err()
        );
        // Retention: ended batches last changed before the cut go, with their leaves;
        // pending ones stay whatever their age.
        s.open_daemon_batch("0xold", "milter inet:a", 0).unwrap();
        s.add_daemon_leaf("0xold", 0, "0xc9").unwrap();
        assert_eq!(s.prune_daemon_batches(4).unwrap(), 1, "0xb3 (updated at 3)");
        assert_eq!(
            s.prune_daemon_batches(5).unwrap(),
            2,
            "0xb1 and 0xb2 (at 4)"
        );
        let left = s
            .daemon_batches(&[Open, Closed, Anchored, Dropped])
            .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].batch_id, "0xold");
        assert_eq!(left[0].leaves, ["0xc9"]);
        let orphans: i64 = s
            .with(|c| c.query_row("SELECT count(*) FROM daemon_leaves", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(orphans, 1, "the pruned batches' leaves went with them");
    }

    #[test]
    fn a_file_store_survives_reopening_and_refuses_a_newer_schema() {
        let dir = std::env::temp_dir().join(format!("mailstamp-store-{}", std::process::id()));
        let path = dir.join("state.sqlite");
        {
            let s = Store::open(&path).unwrap();
            s.add_domain("c2.example", "acme", 1).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert!(s.domain("c2.example").unwrap().is_some());
        drop(s);
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let e = Store::open(&path).err().unwrap();
        assert!(format!("{e:#}").contains("upgrade mailstamp"), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
