// SPDX-License-Identifier: GPL-3.0-or-later
//! The agent's durable state, in one of two backends behind one interface ([`Store`]):
//! SQLite (rusqlite, bundled; the default, embedded: one file, WAL journal so milter sessions
//! can read while one writes, a busy timeout instead of "database is locked", migrations keyed
//! by `PRAGMA user_version`) or PostgreSQL (`store.url = "postgres://…"`: one database shared
//! by several MX hosts, a small r2d2 pool of the sync `postgres` client per host, migrations
//! counted in a `schema_version` table and run under a transaction-scoped advisory lock, so
//! hosts starting at once migrate once). Every operation is written once in the SQL both
//! speak ([`sql`]); the two schemas are kept equivalent, migration for migration.
//!
//! This module owns the schema (later features add migrations at the end of
//! [`MIGRATIONS`] and [`PG_MIGRATIONS`], never edit earlier ones), every statement run on it
//! (the people lists and recovery decisions in [`people`]), the one way async code reaches it
//! ([`Store::call`]: the blocking pool), the one string mapping of every enum kept in it
//! (`stored_enum!`: an unknown stored word is an error) and which rows are whose: domains,
//! authorised senders, the allowlist and recovery decisions are shared by every host of a
//! store; the daemon batch journal and the watch journal name their host ([`Store::host`]),
//! and each host recovers only its own until `mailstamp store takeover` hands a dead host's
//! rows to another.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use crate::config::StoreConfig;
use crate::error::{Context, Result, bail, err};
use rusqlite::Connection;
use serde::Serialize;
use sql::{Lite, Pg, Sql, vals};

pub mod scratch;
pub(crate) mod sql;

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
    // 8: several hosts on one store (issue 17): the batch and watch journals name the host
    // (`store.host`) whose daemon wrote them; each host recovers and watches only its own.
    // '' is a row from before: whichever host reads the store owns it (a SQLite store has
    // one host).
    "ALTER TABLE daemon_batches ADD COLUMN host TEXT NOT NULL DEFAULT '';
    ALTER TABLE watched ADD COLUMN host TEXT NOT NULL DEFAULT '';
    CREATE INDEX daemon_batches_host ON daemon_batches (host, state);",
    // 9: a user's other addresses that forward to them (issue 13 point 3, docs/PROTOCOL.md
    // §5c): mail stamped for `address` arriving for `user` was addressed to the user. Shared
    // by every host, as the other lists.
    r#"CREATE TABLE forwards (
        "user"  TEXT NOT NULL,
        address TEXT NOT NULL,
        added   INTEGER NOT NULL,
        PRIMARY KEY ("user", address)
    ) STRICT;"#,
    // 10: stamps a mailing list of `[forward.lists]` received `wanted` (issue 13): its copies
    // go out under the list's hop only when the stamp they carry is one of these. `stamp` is
    // the received top field's token (hex), unique per message in both recording modes.
    "CREATE TABLE list_received (
        list     TEXT NOT NULL,
        stamp    TEXT NOT NULL,
        received INTEGER NOT NULL,
        PRIMARY KEY (list, stamp)
    ) STRICT;
    CREATE INDEX list_received_received ON list_received (received);",
];

/// The same schema in PostgreSQL, migration for migration ([`MIGRATIONS`] says what each is
/// for): INTEGER is BIGINT (every integer crosses as 64 bits), BLOB is BYTEA, and the two
/// journals that SQLite orders by its implicit rowid have a `seq` BIGSERIAL for the same
/// tie-break. `"user"` is quoted: it is a reserved word in PostgreSQL.
const PG_MIGRATIONS: &[&str] = &[
    "CREATE TABLE domains (
        domain   TEXT PRIMARY KEY,
        account  TEXT NOT NULL,
        status   TEXT NOT NULL CHECK (status IN ('pending', 'active')),
        added    BIGINT NOT NULL,
        verified BIGINT
    );
    CREATE INDEX domains_account ON domains (account);",
    "CREATE TABLE batches (
        batch_id TEXT PRIMARY KEY,
        root     TEXT NOT NULL,
        size     BIGINT NOT NULL,
        spool    TEXT NOT NULL,
        out_dir  TEXT NOT NULL,
        state    TEXT NOT NULL CHECK (state IN ('pending', 'done')),
        tx       TEXT,
        created  BIGINT NOT NULL
    );",
    "CREATE TABLE senders (
        \"user\"  TEXT NOT NULL,
        pattern TEXT NOT NULL,
        kind    TEXT NOT NULL CHECK (kind IN ('address', 'domain')),
        added   BIGINT NOT NULL,
        note    TEXT,
        PRIMARY KEY (\"user\", pattern)
    );
    CREATE TABLE allowlist (
        \"user\"       TEXT NOT NULL,
        address      TEXT NOT NULL,
        domain       TEXT NOT NULL,
        display_name TEXT,
        state        TEXT NOT NULL CHECK (state IN ('partial', 'complete')),
        first_seen   BIGINT NOT NULL,
        last_seen    BIGINT NOT NULL,
        sent         BIGINT NOT NULL DEFAULT 0,
        received     BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (\"user\", address)
    );
    CREATE INDEX allowlist_domain ON allowlist (\"user\", domain);
    CREATE INDEX allowlist_last_seen ON allowlist (last_seen);",
    "CREATE TABLE recoveries (
        \"user\"   TEXT NOT NULL,
        message  TEXT NOT NULL,
        action   TEXT NOT NULL CHECK (action IN ('release', 'keep')),
        reason   TEXT NOT NULL,
        sender   TEXT,
        applied  BIGINT NOT NULL DEFAULT 0,
        learned  BIGINT,
        decided  BIGINT NOT NULL,
        PRIMARY KEY (\"user\", message)
    );
    CREATE INDEX recoveries_decided ON recoveries (decided);",
    "CREATE TABLE daemon_batches (
        batch_id TEXT PRIMARY KEY,
        state    TEXT NOT NULL CHECK (state IN ('open', 'closed', 'anchored', 'dropped')),
        root     TEXT,
        size     BIGINT,
        tx       TEXT,
        sent     TEXT NOT NULL DEFAULT '',
        owner    TEXT NOT NULL DEFAULT '',
        note     TEXT,
        created  BIGINT NOT NULL,
        updated  BIGINT NOT NULL,
        seq      BIGSERIAL NOT NULL
    );
    CREATE INDEX daemon_batches_state ON daemon_batches (state);
    CREATE TABLE daemon_leaves (
        batch_id   TEXT NOT NULL REFERENCES daemon_batches (batch_id),
        leaf       BIGINT NOT NULL,
        commitment TEXT NOT NULL,
        PRIMARY KEY (batch_id, leaf)
    );",
    "CREATE TABLE watched (
        writer     TEXT NOT NULL,
        kind       TEXT NOT NULL CHECK (kind IN ('stamp', 'anchor')),
        key        TEXT NOT NULL,
        chain_id   BIGINT NOT NULL,
        registry   TEXT NOT NULL,
        value      TEXT NOT NULL,
        size       BIGINT NOT NULL,
        tx         TEXT NOT NULL,
        raw        BYTEA NOT NULL,
        nonce      BIGINT NOT NULL,
        block      BIGINT,
        block_hash TEXT,
        owner      TEXT NOT NULL,
        resent     BIGINT NOT NULL DEFAULT 0,
        since      BIGINT NOT NULL,
        seq        BIGSERIAL NOT NULL,
        PRIMARY KEY (writer, kind, key)
    );
    CREATE INDEX watched_owner ON watched (owner, chain_id, registry, writer);",
    "ALTER TABLE daemon_batches ADD COLUMN released BIGINT NOT NULL DEFAULT 0;",
    "ALTER TABLE daemon_batches ADD COLUMN host TEXT NOT NULL DEFAULT '';
    ALTER TABLE watched ADD COLUMN host TEXT NOT NULL DEFAULT '';
    CREATE INDEX daemon_batches_host ON daemon_batches (host, state);",
    r#"CREATE TABLE forwards (
        "user"  TEXT NOT NULL,
        address TEXT NOT NULL,
        added   BIGINT NOT NULL,
        PRIMARY KEY ("user", address)
    );"#,
    "CREATE TABLE list_received (
        list     TEXT NOT NULL,
        stamp    TEXT NOT NULL,
        received BIGINT NOT NULL,
        PRIMARY KEY (list, stamp)
    );
    CREATE INDEX list_received_received ON list_received (received);",
];

/// The advisory lock key PostgreSQL migrations run under (any fixed 64-bit number; this is
/// "mailstmp" in ASCII).
const MIGRATION_LOCK: i64 = 0x6d61_696c_7374_6d70;

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
/// printed, and its `Display`) and `FromStr` (an unknown word is an [`UnknownValue`]), so
/// that a column can only be read back into a variant or fail ([`sql::Row::word`]).
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

    };
}
pub(crate) use stored_enum;

/// Declares a store test run on both backends, the same body: `NAME::sqlite` (in memory) and
/// `NAME::postgres` (a fresh database on the process's scratch cluster, [`scratch`]).
#[cfg(test)]
macro_rules! on_both_backends {
    ($(#[$m:meta])* fn $name:ident($s:ident) $body:block) => {
        $(#[$m])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn sqlite() {
                let $s = $crate::store::Store::in_memory().unwrap();
                $body
            }

            #[test]
            fn postgres() {
                let $s = $crate::store::Store::connect(
                    &$crate::config::StoreConfig {
                        url: Some($crate::store::scratch::shared::database()),
                        ..Default::default()
                    },
                    None,
                )
                .unwrap();
                $body
            }
        }
    };
}
#[cfg(test)]
pub(crate) use on_both_backends;

/// The state store: one SQLite connection, or a pool of PostgreSQL connections, and the
/// host this agent is among the hosts sharing it.
pub struct Store {
    backend: Backend,
    host: String,
}

enum Backend {
    /// One connection, one user at a time.
    Sqlite(Mutex<Connection>),
    /// A pool of the sync client: every call takes one connection for its statements.
    Postgres(PgPool),
}

type Pool = r2d2::Pool<r2d2_postgres::PostgresConnectionManager<postgres::NoTls>>;

/// The pool, closed off any tokio runtime: closing a sync client drives its own runtime,
/// which cannot run on a runtime's worker (a store dropped in async code).
struct PgPool(Option<Pool>);

impl std::ops::Deref for PgPool {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        // Only `drop` takes it out.
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("pool used after drop"))
    }
}

impl Drop for PgPool {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            off_runtime(move || drop(pool));
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend_name())
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// How long a call waits for a pooled PostgreSQL connection, and a new connection for the
/// server, before failing as an outage (the callers' rules for a busy store apply then).
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections one host keeps to PostgreSQL at most (milter sessions, batcher, watch).
const PG_POOL_SIZE: u32 = 8;

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

// After the macro: the watch journal's kind and the people lists' words are stored enums too.
pub mod people;
mod watched;

pub use people::{
    AllowlistEntry, EntryState, ForwardRow, OutboundEntry, RecoveryRecord, SenderKind, SenderRow,
};

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
    /// Opens the store `cfg` names: PostgreSQL when `store.url` is set, else the SQLite file
    /// `store.path`; brings its schema up to date. `busy`: how long one statement may wait
    /// for another writer (SQLite's busy timeout, PostgreSQL's `statement_timeout` and lock
    /// wait), `None` for the default 5 s.
    pub fn connect(cfg: &StoreConfig, busy: Option<Duration>) -> Result<Self> {
        let host = cfg.host.clone().unwrap_or_else(crate::util::hostname);
        let mut store = match &cfg.url {
            Some(url) => Self::open_postgres(url, busy)?,
            None => {
                let s = Self::open(&cfg.path)?;
                if let Some(b) = busy {
                    s.set_busy_timeout(b)?;
                }
                s
            }
        };
        store.host = host;
        Ok(store)
    }

    /// Opens (creating if needed) the SQLite store at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open the store {}", path.display()))?;
        Self::init(conn).with_context(|| format!("store {}", path.display()))
    }

    /// A SQLite store in memory (tests, dry runs).
    pub fn in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self> {
        conn.busy_timeout(Duration::from_secs(5))?;
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
            backend: Backend::Sqlite(Mutex::new(conn)),
            host: crate::util::hostname(),
        })
    }

    /// Connects to PostgreSQL at `url` and migrates: every migration in one transaction
    /// holding an advisory lock, so that hosts starting together wait for the first one and
    /// then find the schema current.
    fn open_postgres(url: &str, busy: Option<Duration>) -> Result<Self> {
        off_runtime(|| Self::open_postgres_here(url, busy))
    }

    fn open_postgres_here(url: &str, busy: Option<Duration>) -> Result<Self> {
        let shown = redact(url);
        let mut pg: postgres::Config = url.parse().map_err(|e| {
            err!("store.url `{shown}` is not a PostgreSQL URL ({e}): write postgres://USER:PASSWORD@HOST:PORT/DATABASE")
        })?;
        pg.connect_timeout(PG_CONNECT_TIMEOUT);
        let busy_ms = busy.unwrap_or(Duration::from_secs(5)).as_millis();
        // A statement waits for another host's row lock at most this long: the same rule as
        // SQLite's busy timeout (the callers then go on without the store, or defer).
        pg.options(&format!(
            "-c statement_timeout={} -c lock_timeout={busy_ms}",
            busy_ms.max(1000) * 2
        ));
        let manager = r2d2_postgres::PostgresConnectionManager::new(pg, postgres::NoTls);
        let pool = r2d2::Pool::builder()
            .max_size(PG_POOL_SIZE)
            .min_idle(Some(0))
            .connection_timeout(PG_CONNECT_TIMEOUT)
            .build(manager)
            .map_err(|e| err!("cannot reach the store {shown}: {e}; check store.url and that PostgreSQL is running and accepts this host"))?;
        let mut conn = pool
            .get()
            .map_err(|e| err!("cannot reach the store {shown}: {e}; check store.url and that PostgreSQL is running and accepts this host"))?;
        let mut tx = conn.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
        let version: Option<i64> = tx
            .query_opt("SELECT version FROM schema_version", &[])?
            .map(|r| r.get(0));
        let version = match version {
            Some(v) => usize::try_from(v).unwrap_or(usize::MAX),
            None => {
                tx.execute("INSERT INTO schema_version (version) VALUES (0)", &[])?;
                0
            }
        };
        if version > PG_MIGRATIONS.len() {
            bail!(
                "the store {shown} has schema version {version}, newer than this agent knows ({}): upgrade mailstamp on this host",
                PG_MIGRATIONS.len()
            );
        }
        for (i, m) in PG_MIGRATIONS.iter().enumerate().skip(version) {
            tx.batch_execute(m)
                .with_context(|| format!("store {shown}: schema migration {}", i + 1))?;
        }
        tx.execute(
            "UPDATE schema_version SET version = $1",
            &[&(PG_MIGRATIONS.len() as i64)],
        )?;
        tx.commit()?;
        drop(conn);
        Ok(Self {
            backend: Backend::Postgres(PgPool(Some(pool))),
            host: crate::util::hostname(),
        })
    }

    /// This host's name among the hosts sharing the store (`store.host`, by default the
    /// host name): the batch and watch journals' rows it writes carry it.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The same store as another host (tests and the benchmark: two agents on one machine).
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// `sqlite` or `postgresql`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgresql",
        }
    }

    /// How long one statement may wait for another writer (see [`Store::connect`]); for
    /// PostgreSQL it is fixed when the pool is made, so this only applies to SQLite.
    pub fn set_busy_timeout(&self, busy: Duration) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(c) => {
                let c = c.lock().map_err(|_| err!("store lock poisoned"))?;
                c.busy_timeout(busy)?;
                Ok(())
            }
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// Runs `f` with this store on tokio's blocking pool, never on a runtime worker: SQLite may
    /// wait for another writer's lock (up to its busy timeout) or for an fsync, PostgreSQL for
    /// the network. Every store call made from async code goes through here. A failure is
    /// counted (`store_errors_total`) and logged by the caller.
    pub async fn call<T: Send + 'static>(
        self: &std::sync::Arc<Self>,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let me = self.clone();
        let started = std::time::Instant::now();
        let r = tokio::task::spawn_blocking(move || {
            OFF_RUNTIME.set(true);
            f(&me)
        })
        .await
        .map_err(|e| crate::error::err!("store task failed: {e}"))?;
        let m = &crate::metrics::METRICS;
        m.store_seconds.observe(started.elapsed().as_secs_f64());
        if r.is_err() {
            m.store_errors.inc();
        }
        r
    }

    /// Runs `f` on one connection, statements outside a transaction.
    pub(crate) fn run<T: Send>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T> + Send,
    ) -> Result<T> {
        match &self.backend {
            Backend::Sqlite(c) => {
                let c = c.lock().map_err(|_| err!("store lock poisoned"))?;
                f(&mut Lite(&c))
            }
            Backend::Postgres(pool) => off_runtime(|| {
                let mut c = self.pg_conn(pool)?;
                f(&mut Pg(&mut *c))
            }),
        }
    }

    /// Runs `f` in one write transaction (SQLite: `BEGIN IMMEDIATE`, which waits on the busy
    /// timeout for another writer instead of failing on a stale snapshot), committed when `f`
    /// returns `Ok`, rolled back otherwise.
    pub(crate) fn tx<T: Send>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T> + Send,
    ) -> Result<T> {
        match &self.backend {
            Backend::Sqlite(c) => {
                let c = c.lock().map_err(|_| err!("store lock poisoned"))?;
                let t = rusqlite::Transaction::new_unchecked(
                    &c,
                    rusqlite::TransactionBehavior::Immediate,
                )?;
                let v = f(&mut Lite(&t))?;
                t.commit()?;
                Ok(v)
            }
            Backend::Postgres(pool) => off_runtime(|| {
                let mut c = self.pg_conn(pool)?;
                let mut t = c.transaction()?;
                let v = f(&mut Pg(&mut t))?;
                t.commit()?;
                Ok(v)
            }),
        }
    }

    fn pg_conn(
        &self,
        pool: &Pool,
    ) -> Result<r2d2::PooledConnection<r2d2_postgres::PostgresConnectionManager<postgres::NoTls>>>
    {
        pool.get()
            .map_err(|e| err!("the store (PostgreSQL) is unreachable: {e}"))
    }

    /// Runs `f` on the SQLite connection itself (tests that hold the lock or write past a
    /// constraint).
    #[cfg(test)]
    pub(crate) fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        match &self.backend {
            Backend::Sqlite(c) => {
                let c = c.lock().map_err(|_| err!("store lock poisoned"))?;
                Ok(f(&c)?)
            }
            Backend::Postgres(_) => bail!("a SQLite-only test ran on PostgreSQL"),
        }
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
        self.run(|c| {
            c.exec(
                "INSERT INTO domains (domain, account, status, added) VALUES (?1, ?2, 'pending', ?3)
                 ON CONFLICT (domain) DO NOTHING",
                vals![domain, account, now],
            )
        })?;
        let row = self
            .domain(domain)?
            .context("row just inserted is missing")?;
        if row.account != account {
            // Another host added it for another account meanwhile.
            bail!(
                "{domain} is already onboarded for account {}; remove it first (`mailstamp onboard remove {domain}`)",
                row.account
            );
        }
        Ok(row)
    }

    /// Marks `domain` active as of `now`.
    pub fn set_active(&self, domain: &str, now: u64) -> Result<()> {
        let n = self.run(|c| {
            c.exec(
                "UPDATE domains SET status = 'active', verified = ?2 WHERE domain = ?1",
                vals![domain, now],
            )
        })?;
        if n == 0 {
            bail!("{domain} is not onboarded: `mailstamp onboard add {domain} --account ID` first");
        }
        Ok(())
    }

    /// One domain.
    pub fn domain(&self, domain: &str) -> Result<Option<DomainRow>> {
        self.run(|c| {
            c.query_opt(
                "SELECT domain, account, status, added, verified FROM domains WHERE domain = ?1",
                vals![domain],
            )?
            .map(|r| domain_row(&r))
            .transpose()
        })
    }

    /// Every domain, by account then name.
    pub fn domains(&self) -> Result<Vec<DomainRow>> {
        self.run(|c| {
            c.query(
                "SELECT domain, account, status, added, verified FROM domains ORDER BY account, domain",
                &[],
            )?
            .iter()
            .map(domain_row)
            .collect()
        })
    }

    /// Removes `domain`; false if it was not there.
    pub fn remove_domain(&self, domain: &str) -> Result<bool> {
        Ok(self.run(|c| c.exec("DELETE FROM domains WHERE domain = ?1", vals![domain]))? > 0)
    }

    /// Whether mail for `domain` may be processed (onboarded and verified).
    pub fn is_active(&self, domain: &str) -> Result<bool> {
        Ok(self
            .domain(domain)?
            .is_some_and(|r| r.status == DomainStatus::Active))
    }
}

thread_local! {
    /// Set on the blocking-pool threads of [`Store::call`]: no runtime is entered there.
    static OFF_RUNTIME: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` where the sync PostgreSQL client may block: right here off any tokio runtime
/// (the blocking pool of [`Store::call`], plain threads), else on a scoped thread of its own —
/// the client drives its own runtime, which cannot start on a runtime's worker (a CLI
/// command's or a test's direct store call).
pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if OFF_RUNTIME.get() || tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// `url` with its password replaced, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            match cred.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn domain_row(r: &sql::Row) -> Result<DomainRow> {
    Ok(DomainRow {
        domain: r.text(0)?,
        account: r.text(1)?,
        status: r.word(2)?,
        added: r.u64(3)?,
        verified: r.opt_u64(4)?,
    })
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
        self.run(|c| {
            c.exec(
                "INSERT INTO batches (batch_id, root, size, spool, out_dir, state, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6)",
                vals![&b.batch_id, &b.root, b.size, &b.spool, &b.out_dir, now],
            )
        })?;
        Ok(())
    }

    /// Batches not finished yet, oldest first.
    pub fn pending_batches(&self) -> Result<Vec<BatchRow>> {
        self.run(|c| {
            c.query(
                "SELECT batch_id, root, size, spool, out_dir, tx FROM batches
                 WHERE state = 'pending' ORDER BY created, batch_id",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(BatchRow {
                    batch_id: r.text(0)?,
                    root: r.text(1)?,
                    size: r.u32(2)?,
                    spool: r.text(3)?,
                    out_dir: r.text(4)?,
                    tx: r.opt_text(5)?,
                })
            })
            .collect()
        })
    }

    /// Marks a batch finished (anchored and its messages delivered).
    pub fn finish_batch(&self, batch_id: &str, tx: Option<&str>) -> Result<()> {
        self.run(|c| {
            c.exec(
                "UPDATE batches SET state = 'done', tx = COALESCE(?2, tx) WHERE batch_id = ?1",
                vals![batch_id, tx],
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
    /// The host whose daemon journals it (`''`: written before hosts were recorded).
    pub host: String,
}

impl Store {
    /// Journals a new, empty daemon batch of `owner` (the daemon that opened it) on this host.
    pub fn open_daemon_batch(&self, batch_id: &str, owner: &str, now: u64) -> Result<()> {
        self.run(|c| {
            c.exec(
                "INSERT INTO daemon_batches (batch_id, state, owner, host, created, updated)
                 VALUES (?1, 'open', ?2, ?3, ?4, ?4)",
                vals![batch_id, owner, &self.host, now],
            )
        })?;
        Ok(())
    }

    /// Journals leaf number `leaf` of a batch; refused unless the batch is `open` (a closed
    /// batch's root is fixed, and a recovered one is no longer anyone's to fill).
    pub fn add_daemon_leaf(&self, batch_id: &str, leaf: u32, commitment: &str) -> Result<()> {
        let n = self.run(|c| {
            c.exec(
                "INSERT INTO daemon_leaves (batch_id, leaf, commitment)
                 SELECT CAST(?1 AS TEXT), CAST(?2 AS BIGINT), CAST(?3 AS TEXT) WHERE EXISTS
                   (SELECT 1 FROM daemon_batches WHERE batch_id = ?1 AND state = 'open')",
                vals![batch_id, leaf, commitment],
            )
        })?;
        if n == 0 {
            bail!("batch {batch_id} is not open in the journal: no leaf can be added");
        }
        Ok(())
    }

    /// Journals an anchor transaction of a batch, before it is broadcast.
    pub fn add_daemon_sent(&self, batch_id: &str, tx: &str, now: u64) -> Result<()> {
        let n = self.run(|c| {
            c.exec(
                "UPDATE daemon_batches SET sent = trim(sent || ' ' || CAST(?2 AS TEXT)), updated = ?3
                 WHERE batch_id = ?1",
                vals![batch_id, tx, now],
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
        let n = self.run(|c| {
            c.exec(
                "UPDATE daemon_batches SET state = ?2, root = COALESCE(?3, root),
                 size = COALESCE(?4, size), tx = COALESCE(?5, tx), note = COALESCE(?6, note),
                 released = CASE WHEN ?8 <> 0 THEN 1 ELSE released END, updated = ?7
                 WHERE batch_id = ?1",
                vals![
                    batch_id,
                    state.as_str(),
                    root,
                    size,
                    tx,
                    note,
                    now,
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
    /// (unix seconds), with their leaves, whichever host's; how many batches went. Pending
    /// ones are kept whatever their age.
    pub fn prune_daemon_batches(&self, before: u64) -> Result<usize> {
        self.tx(|c| {
            c.exec(
                "DELETE FROM daemon_leaves WHERE batch_id IN (SELECT batch_id FROM daemon_batches
                 WHERE state IN ('anchored', 'dropped') AND updated < ?1)",
                vals![before],
            )?;
            let n = c.exec(
                "DELETE FROM daemon_batches WHERE state IN ('anchored', 'dropped') AND updated < ?1",
                vals![before],
            )?;
            Ok(n as usize)
        })
    }

    /// The daemon batches of `owner` on this host in `states`, oldest first, with their
    /// leaves (rows from before hosts were recorded count as this host's).
    pub fn daemon_batches_of(
        &self,
        owner: &str,
        states: &[DaemonBatchState],
    ) -> Result<Vec<DaemonBatchRow>> {
        let mut rows = self.daemon_batches(states)?;
        rows.retain(|r| r.owner == owner && (r.host == self.host || r.host.is_empty()));
        Ok(rows)
    }

    /// Daemon batches in `states` (every owner's, every host's), oldest first, with their
    /// leaves.
    pub fn daemon_batches(&self, states: &[DaemonBatchState]) -> Result<Vec<DaemonBatchRow>> {
        self.run(|c| {
            let rows = c.query(
                "SELECT batch_id, state, root, size, tx, note, sent, owner, released, host
                 FROM daemon_batches
                 ORDER BY created, rowid",
                &[],
            )?;
            let mut out = Vec::new();
            for r in &rows {
                let state: DaemonBatchState = r.word(1)?;
                if !states.contains(&state) {
                    continue;
                }
                let batch_id = r.text(0)?;
                let leaves = c
                    .query(
                        "SELECT commitment FROM daemon_leaves WHERE batch_id = ?1 ORDER BY leaf",
                        vals![&batch_id],
                    )?
                    .iter()
                    .map(|l| l.text(0))
                    .collect::<Result<_>>()?;
                out.push(DaemonBatchRow {
                    batch_id,
                    state,
                    root: r.opt_text(2)?,
                    size: r.opt_u32(3)?,
                    tx: r.opt_text(4)?,
                    note: r.opt_text(5)?,
                    sent: r.text(6)?.split_whitespace().map(str::to_owned).collect(),
                    owner: r.text(7)?,
                    leaves,
                    released: r.flag(8)?,
                    host: r.text(9)?,
                });
            }
            Ok(out)
        })
    }

    /// Hands every pending daemon batch (`open`, `closed`) and every watched write of host
    /// `from` to this host, in one transaction, so that this host's daemons recover and watch
    /// them as their own (`mailstamp store takeover --from HOST`, for a host that is gone).
    /// How many batches and watched writes moved. Taking over from oneself is refused.
    pub fn take_over(&self, from: &str) -> Result<(usize, usize)> {
        if from == self.host {
            bail!(
                "--from {from} is this host (store.host): name the host that is gone, as `mailstamp store hosts` lists it"
            );
        }
        self.tx(|c| {
            let b = c.exec(
                "UPDATE daemon_batches SET host = ?2 WHERE host = ?1 AND state IN ('open', 'closed')",
                vals![from, &self.host],
            )?;
            let w = c.exec(
                "UPDATE watched SET host = ?2 WHERE host = ?1",
                vals![from, &self.host],
            )?;
            Ok((b as usize, w as usize))
        })
    }

    /// Every host with rows in the journals: name, pending batches, watched writes.
    pub fn hosts(&self) -> Result<Vec<(String, u64, u64)>> {
        self.run(|c| {
            c.query(
                "SELECT host, CAST(SUM(pending) AS BIGINT), CAST(SUM(watched) AS BIGINT) FROM (
                   SELECT host, CASE WHEN state IN ('open', 'closed') THEN 1 ELSE 0 END AS pending,
                          0 AS watched FROM daemon_batches
                   UNION ALL SELECT host, 0, 1 FROM watched) AS j
                 GROUP BY host ORDER BY host",
                &[],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, r.u64(1)?, r.u64(2)?)))
            .collect()
        })
    }
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
                .run(|c| c.query_one("SELECT ?1", vals![v.as_str()])?.word(0))
                .unwrap();
            assert_eq!(back, *v);
        }
    }

    crate::store::on_both_backends!(fn domains_go_from_pending_to_active_and_belong_to_one_account(s) {
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
    });

    crate::store::on_both_backends!(fn daemon_batches_go_from_open_to_anchored_or_dropped_with_their_leaves(s) {
        use DaemonBatchState::*;
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
        let orphans = s
            .run(|c| c.query_one("SELECT count(*) FROM daemon_leaves", &[])?.int(0))
            .unwrap();
        assert_eq!(orphans, 1, "the pruned batches' leaves went with them");
    });

    crate::store::on_both_backends!(fn each_host_sees_its_own_journal_until_a_takeover(s) {
        use DaemonBatchState::*;
        let s = s.with_host("mx1");
        s.open_daemon_batch("0xa1", "milter inet:a", 1).unwrap();
        s.add_daemon_leaf("0xa1", 0, "0xc0").unwrap();
        let w = WatchedRow {
            writer: "0xw1".into(),
            kind: WatchKind::Anchor,
            key: "0xa0".into(),
            chain_id: 31337,
            registry: "0xr".into(),
            value: "0xv".into(),
            size: 2,
            tx: "0xt".into(),
            raw: vec![0, 1, 255],
            nonce: 7,
            block: Some((9, "0xh".into())),
            owner: "milter inet:a".into(),
            resent: 0,
            since: 5,
        };
        s.add_watched(&w).unwrap();
        assert_eq!(s.watched_of("milter inet:a", 31337, "0xr", "0xw1").unwrap(), std::slice::from_ref(&w));
        // The same row again replaces it.
        let mut w2 = w.clone();
        w2.block = None;
        w2.resent = 1;
        s.add_watched(&w2).unwrap();
        assert_eq!(s.watched().unwrap(), [w2.clone()]);
        // Another host on the same store: same owner string, none of mx1's rows.
        let s = s.with_host("mx2");
        assert!(s.daemon_batches_of("milter inet:a", &[Open, Closed]).unwrap().is_empty());
        assert!(s.watched_of("milter inet:a", 31337, "0xr", "0xw1").unwrap().is_empty());
        s.open_daemon_batch("0xb1", "milter inet:a", 2).unwrap();
        let all = s.daemon_batches(&[Open]).unwrap();
        assert_eq!(
            all.iter().map(|r| (r.batch_id.as_str(), r.host.as_str())).collect::<Vec<_>>(),
            [("0xa1", "mx1"), ("0xb1", "mx2")]
        );
        assert_eq!(
            s.hosts().unwrap(),
            [("mx1".to_owned(), 1, 1), ("mx2".to_owned(), 1, 0)]
        );
        assert!(s.take_over("mx2").is_err(), "not from oneself");
        assert_eq!(s.take_over("mx1").unwrap(), (1, 1));
        let mine = s.daemon_batches_of("milter inet:a", &[Open, Closed]).unwrap();
        assert_eq!(mine.len(), 2, "mx1's pending batch is mx2's now");
        assert_eq!(mine[0].leaves, ["0xc0"]);
        assert_eq!(s.watched_of("milter inet:a", 31337, "0xr", "0xw1").unwrap(), [w2]);
        assert_eq!(s.take_over("mx1").unwrap(), (0, 0), "nothing left");
        assert_eq!(s.remove_watched(&[("0xw1".into(), WatchKind::Anchor, "0xa0".into())]).unwrap(), 1);
    });

    /// A store on PostgreSQL at `url`, this machine's host name.
    fn on_pg(url: &str) -> Result<Store> {
        let cfg = StoreConfig {
            url: Some(url.to_owned()),
            ..Default::default()
        };
        Store::connect(&cfg, None)
    }

    /// Hosts starting at once migrate once: the advisory lock serialises them and every one
    /// finds the schema current.
    #[test]
    fn hosts_starting_together_migrate_one_schema() {
        let url = scratch::shared::database();
        let threads: Vec<_> = (0..6)
            .map(|i| {
                let cfg = StoreConfig {
                    url: Some(url.clone()),
                    host: Some(format!("mx{i}")),
                    ..Default::default()
                };
                std::thread::spawn(move || {
                    let s = Store::connect(&cfg, None).unwrap();
                    s.add_domain(&format!("d{i}.example"), "acme", 1).unwrap();
                    s.host().to_owned()
                })
            })
            .collect();
        let hosts: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(hosts, ["mx0", "mx1", "mx2", "mx3", "mx4", "mx5"]);
        let s = on_pg(&url).unwrap();
        assert_eq!(s.domains().unwrap().len(), 6, "one store shared by all");
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let v: i64 = c
            .query_one("SELECT version FROM schema_version", &[])
            .unwrap()
            .get(0);
        assert_eq!(v as usize, PG_MIGRATIONS.len());
        let n: i64 = c
            .query_one("SELECT count(*) FROM schema_version", &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
        c.batch_execute("UPDATE schema_version SET version = 99")
            .unwrap();
        let e = on_pg(&url).unwrap_err();
        assert!(format!("{e:#}").contains("upgrade mailstamp"), "{e:#}");
    }

    /// PostgreSQL gone: every call fails quickly with an error saying so, none hangs or panics,
    /// and the store works again once the server is back.
    #[test]
    fn an_unreachable_postgres_is_an_error_then_recovers() {
        let mut cl = scratch::Cluster::start().unwrap();
        let url = cl.database("outage").unwrap();
        let s = on_pg(&url).unwrap();
        s.add_domain("a.example", "acme", 1).unwrap();
        cl.stop();
        let t = std::time::Instant::now();
        let e = s.is_active("a.example").unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert!(format!("{e:#}").contains("unreachable"), "{e:#}");
        let e = on_pg(&url).unwrap_err();
        assert!(format!("{e:#}").contains("cannot reach the store"), "{e:#}");
        cl.launch().unwrap();
        let t = std::time::Instant::now();
        let back = loop {
            match s.domain("a.example") {
                Ok(d) => break d,
                Err(_) if t.elapsed() < Duration::from_secs(15) => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => panic!("the store did not come back: {e:#}"),
            }
        };
        assert_eq!(back.unwrap().account, "acme");
    }

    #[test]
    fn a_password_is_never_shown() {
        assert_eq!(
            redact("postgres://ms:secret@db.example/ms"),
            "postgres://ms:***@db.example/ms"
        );
        assert_eq!(
            redact("postgres://db.example/ms"),
            "postgres://db.example/ms"
        );
        let e = Store::connect(
            &StoreConfig {
                url: Some("postgres://ms:secret@127.0.0.1:1/ms".into()),
                ..Default::default()
            },
            None,
        )
        .unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("127.0.0.1:1") && !e.contains("secret"), "{e}");
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
