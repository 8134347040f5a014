//! The durable store: the only authority on workflow and task state, and
//! the only place with SQL.
//!
//! SQLite (the default, a file with WAL) or PostgreSQL through sqlx's `Any`
//! driver, with one set of queries for both (ids as UUID text, times as
//! BIGINT microseconds, JSON as text); where the dialects differ (batch
//! placeholders, row locks, outbox claims) [`Backend`] decides. Every state
//! change happens inside one [`WriteTx`]; reads use the shared pool.
//!
//! One file per table ([`tasks`], [`deps`], [`workflows`], [`events`],
//! [`outbox`], [`servers`], and `meta`: facts about the store itself), each with its statements for the pool
//! (`impl Store`) and for a transaction (`impl WriteTx`), the one-row and
//! many-row forms side by side; [`write`] writes a unit of work across
//! three of them at once. It imports only the domain: it decides nothing
//! and holds no state of its callers.
//!
//! Concurrency: SQLite has one writer (`BEGIN IMMEDIATE` on a single
//! connection), so a transaction always sees what it will change. On
//! PostgreSQL several transactions, from several dispatchers, run at once:
//! a transaction that changes a workflow's tasks first locks that workflow's
//! row ([`WriteTx::workflow`], [`WriteTx::lock_workflows_of`]), so two
//! results that each release the same dependent are recorded one after the
//! other, never both against the state before the other; and the outbox
//! relay claims rows with `FOR UPDATE SKIP LOCKED` and a lease
//! ([`Store::due_outbox`]), so two relays never publish the same row at once.

pub mod attempts;
pub mod deps;
pub mod events;
pub mod graph;
mod meta;
pub mod outbox;
pub mod output;
pub mod scratch;
pub mod servers;
mod sql;
pub mod tasks;
mod tx;
pub mod workflows;
mod write;

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection};

pub use attempts::{AttemptRow, NewAttempt};
pub use events::{EventRow, NewEvent};
pub use graph::GraphTask;
pub use outbox::{NewMessage, OutboxItem, OutboxKind, Queued};
pub use output::{ChunkRow, NewChunk};
pub use servers::ServerRow;
pub use tasks::ReplyContext;
use tx::SqliteWriter;
pub use tx::WriteTx;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The database behind a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (WAL): one writer, one dispatcher.
    Sqlite,
    /// A PostgreSQL database: row locks, several dispatchers.
    Postgres,
}

impl Backend {
    /// The backend a store URL names, if bora supports it.
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// A store failure. Bad input never gets here: the API validates first.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or is unreachable.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The migrations could not be applied at open.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The store URL names no supported database (the URL given).
    #[error("unsupported store url {0:?}: use sqlite://PATH or postgres://USER@HOST/DATABASE")]
    Url(String),
    /// A stored value bora cannot read back (unknown state, bad JSON).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl From<crate::domain::Corrupt> for StoreError {
    fn from(e: crate::domain::Corrupt) -> Self {
        StoreError::Corrupt(e.0)
    }
}

impl StoreError {
    /// Whether the same statement may well succeed if tried again: the
    /// database is unreachable, busy, out of resources, or rolled the
    /// transaction back (a deadlock, a serialization failure). Anything
    /// else — a constraint, a value the database refuses, a row bora
    /// cannot read — fails again every time with the same data.
    pub fn is_transient(&self) -> bool {
        let StoreError::Db(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                if code.len() == 5 {
                    // PostgreSQL's SQLSTATE: connection (08), transaction
                    // rollback (40), insufficient resources (53), operator
                    // intervention (57), system (58).
                    matches!(&code[..2], "08" | "40" | "53" | "57" | "58")
                } else {
                    // SQLite's result code (primary code in the low byte):
                    // BUSY, LOCKED, NOMEM, IOERR, FULL, CANTOPEN, PROTOCOL.
                    code.parse::<i32>()
                        .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 7 | 10 | 13 | 14 | 15))
                }
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            _ => false,
        }
    }

    /// Whether the error is a uniqueness violation (a duplicate name).
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Database(e)) => e.is_unique_violation(),
            _ => false,
        }
    }
}

/// Microseconds since the Unix epoch: the store's clock.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// Readers.
    pool: AnyPool,
    /// SQLite's one writer connection (SQLite has one writer at a time,
    /// and queueing for it is fairer and cheaper than spinning on
    /// `SQLITE_BUSY`); PostgreSQL's transactions take connections of
    /// `pool`.
    writer: Option<SqliteWriter>,
    backend: Backend,
}

/// A pooled connection idle at least this long is pinged before it is
/// handed out (one that was busy a moment ago is not: sqlx's default pings
/// every time, a round trip to the database on every acquire). A broken
/// connection in use fails its statement, the caller retries, and sqlx
/// closes it when it comes back.
const PING_IF_IDLE: Duration = Duration::from_secs(1);

/// Pool options shared by both backends: at most `max` connections, and
/// the ping only for connections idle a while ([`PING_IF_IDLE`]).
fn pool_options(max: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

impl Store {
    /// Opens (creating if needed) the store at `url` and runs its migrations.
    ///
    /// # Errors
    /// An unsupported URL, a database that cannot be opened, or a failed migration.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        match Backend::of_url(url) {
            Some(Backend::Sqlite) => Self::open_sqlite(url, max_connections).await,
            Some(Backend::Postgres) => Self::open_postgres(url, max_connections).await,
            None => Err(StoreError::Url(url.to_owned())),
        }
    }

    async fn open_postgres(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = AnyConnectOptions::from_str(url)?;
        let pool = pool_options(max_connections.max(2))
            .connect_with(options)
            .await?;
        // sqlx's migrator holds an advisory lock while it runs, so
        // dispatchers starting together migrate once.
        POSTGRES_MIGRATIONS.run(&pool).await?;
        Ok(Self {
            writer: None,
            pool,
            backend: Backend::Postgres,
        })
    }

    async fn open_sqlite(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let Some(path) = url.strip_prefix("sqlite://") else {
            return Err(StoreError::Url(url.to_owned()));
        };
        if path.is_empty() {
            return Err(StoreError::Url(url.to_owned()));
        }
        // mode=rwc creates the file if missing.
        let sep = if path.contains('?') { '&' } else { '?' };
        let conn_url = format!("sqlite://{path}{sep}mode=rwc");
        let options = AnyConnectOptions::from_str(&conn_url)?;

        let mut writer = AnyConnection::connect_with(&options).await?;
        // WAL: readers never block the writer nor the writer them.
        // NORMAL is durable across process crashes in WAL mode.
        for pragma in [
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = NORMAL",
            "PRAGMA busy_timeout = 10000",
            "PRAGMA foreign_keys = ON",
        ] {
            sqlx::query(pragma).execute(&mut writer).await?;
        }
        SQLITE_MIGRATIONS.run(&mut writer).await?;

        let pool = pool_options(max_connections.max(1))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA busy_timeout = 10000")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            writer: Some(SqliteWriter::new(writer)),
            backend: Backend::Sqlite,
        })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Refreshes PostgreSQL's planner statistics of the task tables, after
    /// a bulk insert made them stale: planned on the statistics of a small
    /// table, the release walk of a 100,000-task workflow hash-joined whole
    /// tables (over 100 ms a batch instead of under 1). Autovacuum would
    /// analyze them too, but in its own time. A no-op on SQLite.
    ///
    /// # Errors
    /// A database failure.
    pub async fn analyze_tasks(&self) -> Result<(), StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(());
        }
        sqlx::query("ANALYZE tasks, task_deps")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether the store answers (for `/readyz`).
    ///
    /// # Errors
    /// The database does not answer.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Starts the one transaction a state change happens in.
    ///
    /// # Errors
    /// The database does not answer.
    pub async fn begin(&self) -> Result<WriteTx, StoreError> {
        match &self.writer {
            // `BEGIN IMMEDIATE` on the one writer.
            Some(writer) => WriteTx::on_writer(writer).await,
            // READ COMMITTED: each statement sees what committed before it,
            // and the row locks a transaction takes first serialise it with
            // any other that changes the same workflow.
            None => WriteTx::pooled(&self.pool, self.backend).await,
        }
    }

    /// Closes the pools, waiting for connections in use.
    pub async fn close(&self) {
        self.pool.close().await;
        if let Some(writer) = &self.writer {
            writer.close().await;
        }
    }
}

/// Parses an id column.
pub(crate) fn parse_id<T: FromStr>(s: &str) -> Result<T, StoreError> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("bad id {s:?}")))
}
