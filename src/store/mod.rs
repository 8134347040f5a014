//! The durable store: the only authority on workflow and task state.
//!
//! SQLite (the default, a file with WAL) or PostgreSQL through sqlx's `Any`
//! driver, with one set of queries for both (ids as UUID text, times as
//! BIGINT microseconds, JSON as text); where the dialects differ (batch
//! placeholders, row locks, outbox claims) [`Backend`] decides. Every state
//! change happens inside one [`WriteTx`]; reads use the shared pool.
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
//!
//! All SQL lives in this module. It knows nothing of AMQP or HTTP, and it does
//! not decide anything: which rows change, and to what, is the tracker's call.

#[macro_use]
mod rows;
mod batch;
mod tx;

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Row};

pub use rows::{EventRow, OutboxItem, OutboxKind, ServerRow, TaskRow, WorkflowRow};
pub use tx::WriteTx;

use crate::domain::{ServerId, TaskCounts, TaskId, TaskState, WorkflowId};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The database behind a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
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
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported store url {0:?}: use sqlite://PATH or postgres://USER@HOST/DATABASE")]
    Url(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
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
    /// Writers. For SQLite a single connection: SQLite has one writer at a
    /// time, and queueing on the pool is fairer and cheaper than spinning on
    /// `SQLITE_BUSY`. For PostgreSQL the same pool as `pool`.
    writer: AnyPool,
    backend: Backend,
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
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        // sqlx's migrator holds an advisory lock while it runs, so
        // dispatchers starting together migrate once.
        POSTGRES_MIGRATIONS.run(&pool).await?;
        Ok(Self {
            writer: pool.clone(),
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

        let writer = AnyPoolOptions::new()
            .max_connections(1)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL: readers never block the writer nor the writer them.
                    // NORMAL is durable across process crashes in WAL mode.
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous = NORMAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 10000")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await?;
        SQLITE_MIGRATIONS.run(&writer).await?;

        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
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
            writer,
            backend: Backend::Sqlite,
        })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
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
        let tx = match self.backend {
            // IMMEDIATE takes the write lock now, so a transaction that reads
            // and then writes can never fail half-way on a lock upgrade.
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            // READ COMMITTED: each statement sees what committed before it,
            // and the row locks a transaction takes first serialise it with
            // any other that changes the same workflow.
            Backend::Postgres => self.writer.begin().await?,
        };
        Ok(WriteTx::new(tx, self.backend))
    }

    /// Closes the pools, waiting for connections in use.
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }

    /// # Errors
    /// A database failure.
    pub async fn workflow(&self, id: WorkflowId) -> Result<Option<WorkflowRow>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            workflow_columns!(),
            " FROM workflows WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(WorkflowRow::from_row).transpose()
    }

    /// One page of workflows in creation order, after `marker`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn workflows_after(
        &self,
        marker: Option<WorkflowId>,
        limit: u32,
    ) -> Result<Vec<WorkflowRow>, StoreError> {
        // Ids are UUIDv7: their text order is their creation order.
        let marker = marker.map(|m| m.to_string()).unwrap_or_default();
        let rows = sqlx::query(concat!(
            "SELECT ",
            workflow_columns!(),
            " FROM workflows WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(marker)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(WorkflowRow::from_row).collect()
    }

    /// Task counts per state of one workflow.
    ///
    /// # Errors
    /// A database failure.
    pub async fn task_counts(&self, id: WorkflowId) -> Result<TaskCounts, StoreError> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS n FROM tasks WHERE workflow_id = $1 GROUP BY state",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        counts_of(&rows)
    }

    /// Task counts per state over every workflow (the `bora_tasks` gauge).
    ///
    /// # Errors
    /// A database failure.
    pub async fn task_counts_all(&self) -> Result<TaskCounts, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM tasks GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        counts_of(&rows)
    }

    /// A task by id or, failing that, by name.
    ///
    /// # Errors
    /// A database failure.
    pub async fn task_by_ref(
        &self,
        workflow: WorkflowId,
        reference: &str,
    ) -> Result<Option<TaskRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        rows::task_by_ref(&mut conn, workflow, reference).await
    }

    /// The tasks of a workflow in creation order, optionally filtered.
    ///
    /// # Errors
    /// A database failure.
    pub async fn tasks(
        &self,
        workflow: WorkflowId,
        state: Option<TaskState>,
        server: Option<&ServerId>,
    ) -> Result<Vec<TaskRow>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE workflow_id = $1 AND ($2 = '' OR state = $2) \
             AND ($3 = '' OR server_id = $3) ORDER BY id"
        ))
        .bind(workflow.to_string())
        .bind(state.map(TaskState::as_str).unwrap_or(""))
        .bind(server.map(ServerId::as_str).unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(TaskRow::from_row).collect()
    }

    /// Every dependency edge of a workflow, with the dependency's name and state:
    /// `(task, dependency name, dependency state)`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn dependency_edges(
        &self,
        workflow: WorkflowId,
    ) -> Result<Vec<(TaskId, String, TaskState)>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.task_id AS task_id, t.name AS name, t.state AS state \
             FROM task_deps d JOIN tasks t ON t.id = d.dep_id \
             WHERE t.workflow_id = $1 ORDER BY d.dep_id",
        )
        .bind(workflow.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let task: String = r.try_get("task_id")?;
                let name: String = r.try_get("name")?;
                let state: String = r.try_get("state")?;
                Ok((
                    rows::parse_id(&task)?,
                    name,
                    TaskState::from_str(&state).map_err(StoreError::Corrupt)?,
                ))
            })
            .collect()
    }

    /// One task's dependencies as (name, state), in creation order.
    ///
    /// # Errors
    /// A database failure.
    pub async fn dependencies(&self, task: TaskId) -> Result<Vec<(String, TaskState)>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.name AS name, t.state AS state FROM task_deps d \
             JOIN tasks t ON t.id = d.dep_id WHERE d.task_id = $1 ORDER BY d.dep_id",
        )
        .bind(task.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let name: String = r.try_get("name")?;
                let state: String = r.try_get("state")?;
                Ok((
                    name,
                    TaskState::from_str(&state).map_err(StoreError::Corrupt)?,
                ))
            })
            .collect()
    }

    /// The dependencies, as (name, state), of each of `tasks` that has any
    /// (the notifications of a relay round, rendered with one query).
    ///
    /// # Errors
    /// A database failure.
    pub async fn dependencies_many(
        &self,
        tasks: &[TaskId],
    ) -> Result<HashMap<TaskId, Vec<(String, TaskState)>>, StoreError> {
        let mut out: HashMap<TaskId, Vec<(String, TaskState)>> = HashMap::new();
        for chunk in tasks.chunks(batch::MAX_IN) {
            let list = batch::InList::new(chunk);
            let sql = format!(
                "SELECT d.task_id AS task_id, t.name AS name, t.state AS state FROM task_deps d \
                 JOIN tasks t ON t.id = d.dep_id WHERE d.task_id IN ({}) ORDER BY d.dep_id",
                batch::Params::new(self.backend).list(list.len())
            );
            let mut q = batch::query(sql, list.len() == batch::MAX_IN, list.len());
            for id in list.values() {
                q = q.bind(id.to_string());
            }
            for r in q.fetch_all(&self.pool).await? {
                let task: String = r.try_get("task_id")?;
                let state: String = r.try_get("state")?;
                out.entry(rows::parse_id(&task)?).or_default().push((
                    r.try_get("name")?,
                    TaskState::from_str(&state).map_err(StoreError::Corrupt)?,
                ));
            }
        }
        Ok(out)
    }

    /// The last heartbeat of each of `servers` that sent one.
    ///
    /// # Errors
    /// A database failure.
    pub async fn last_seen_many(
        &self,
        servers: &[&str],
    ) -> Result<HashMap<String, i64>, StoreError> {
        let mut out = HashMap::new();
        for chunk in servers.chunks(batch::MAX_IN) {
            let list = batch::InList::new(chunk);
            let sql = format!(
                "SELECT server_id, last_seen FROM servers WHERE last_seen IS NOT NULL \
                 AND server_id IN ({})",
                batch::Params::new(self.backend).list(list.len())
            );
            let mut q = batch::query(sql, list.len() == batch::MAX_IN, list.len());
            for s in list.values() {
                q = q.bind(*s);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.insert(r.try_get("server_id")?, r.try_get("last_seen")?);
            }
        }
        Ok(out)
    }

    /// The last heartbeat seen from each server that ever sent one.
    ///
    /// # Errors
    /// A database failure.
    pub async fn servers_last_seen(&self) -> Result<HashMap<String, i64>, StoreError> {
        let rows =
            sqlx::query("SELECT server_id, last_seen FROM servers WHERE last_seen IS NOT NULL")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("server_id")?, r.try_get("last_seen")?)))
            .collect()
    }

    /// Every server known, by id.
    ///
    /// # Errors
    /// A database failure.
    pub async fn servers(&self) -> Result<Vec<ServerRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT server_id, kind, registered, last_seen, created_at FROM servers ORDER BY server_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(ServerRow::from_row).collect()
    }

    /// One server.
    ///
    /// # Errors
    /// A database failure.
    pub async fn server(&self, server: &str) -> Result<Option<ServerRow>, StoreError> {
        let row = sqlx::query(
            "SELECT server_id, kind, registered, last_seen, created_at FROM servers WHERE server_id = $1",
        )
        .bind(server)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(ServerRow::from_row).transpose()
    }

    /// The last heartbeat of one server.
    ///
    /// # Errors
    /// A database failure.
    pub async fn server_last_seen(&self, server: &str) -> Result<Option<i64>, StoreError> {
        let v: Option<Option<i64>> =
            sqlx::query_scalar("SELECT last_seen FROM servers WHERE server_id = $1")
                .bind(server)
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.flatten())
    }

    /// Outbox messages due at `now`, oldest first, with what they need to be
    /// rendered (the task row, when it still exists).
    ///
    /// Rows claimed by a relay (`lease_until` ahead) are not due. The rows
    /// returned are claimed until `lease_until` (on PostgreSQL skipping rows
    /// another relay is claiming right now), so neither another
    /// dispatcher's relay nor this relay's next sweep takes them while they
    /// are published and until the confirm is recorded. A confirmed message
    /// is deleted; one whose relay died is due again when its lease ends
    /// (SQLite, with its one dispatcher, ends every claim at start:
    /// [`Store::release_leases`]).
    ///
    /// # Errors
    /// A database failure.
    pub async fn due_outbox(
        &self,
        now: i64,
        limit: u32,
        lease_until: i64,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let rows = match self.backend {
            Backend::Sqlite => {
                // No DML in a CTE: claim, then read what this claim holds
                // (`lease_until` is this sweep's own), in one transaction.
                let mut tx = self.begin().await?;
                let claimed = sqlx::query(
                    "UPDATE outbox SET lease_until = $3 WHERE id IN (SELECT id FROM outbox \
                     WHERE not_before <= $1 AND lease_until <= $1 ORDER BY id LIMIT $2)",
                )
                .bind(now)
                .bind(i64::from(limit))
                .bind(lease_until)
                .execute(&mut *tx.tx)
                .await?;
                if claimed.rows_affected() == 0 {
                    return Ok(Vec::new());
                }
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    outbox_item_columns!(),
                    " FROM outbox o LEFT JOIN tasks t ON t.id = o.task_id ",
                    "WHERE o.lease_until = $1 ORDER BY o.id"
                ))
                .bind(lease_until)
                .fetch_all(&mut *tx.tx)
                .await?;
                tx.commit().await?;
                rows
            }
            Backend::Postgres => {
                sqlx::query(concat!(
                    "WITH o AS (UPDATE outbox SET lease_until = $3 WHERE id IN ",
                    "(SELECT id FROM outbox WHERE not_before <= $1 AND lease_until <= $1 ",
                    "ORDER BY id LIMIT $2 ",
                    "FOR UPDATE SKIP LOCKED) RETURNING *) SELECT ",
                    outbox_item_columns!(),
                    " FROM o LEFT JOIN tasks t ON t.id = o.task_id ORDER BY o.id"
                ))
                .bind(now)
                .bind(i64::from(limit))
                .bind(lease_until)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(OutboxItem::from_row).collect()
    }

    /// A workflow's events after event id `after`, oldest first.
    ///
    /// # Errors
    /// A database failure.
    pub async fn events_after(
        &self,
        workflow: WorkflowId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<EventRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, workflow_id, task_id, task_name, server_id, kind, state, attempt, at \
             FROM events WHERE workflow_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(workflow.to_string())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(EventRow::from_row).collect()
    }

    /// When the next not-yet-due outbox message falls due.
    ///
    /// # Errors
    /// A database failure.
    pub async fn next_outbox_due(&self) -> Result<Option<i64>, StoreError> {
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(CASE WHEN lease_until > not_before THEN lease_until ELSE not_before END) \
             FROM outbox",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(v)
    }

    /// Ends every claim on the outbox. Only for SQLite at start-up: the one
    /// dispatcher it has is starting, so no relay holds anything, and the
    /// rows its previous run held go at once instead of after their lease.
    ///
    /// # Errors
    /// A database failure.
    pub async fn release_leases(&self) -> Result<u64, StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        let r = sqlx::query("UPDATE outbox SET lease_until = 0 WHERE lease_until > 0")
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected())
    }
}

/// Task counts from `(state, n)` rows of a `GROUP BY state`.
fn counts_of(rows: &[sqlx::any::AnyRow]) -> Result<TaskCounts, StoreError> {
    let mut counts = TaskCounts::default();
    for row in rows {
        let state: String = row.try_get("state")?;
        let n: i64 = row.try_get("n")?;
        let state = TaskState::from_str(&state).map_err(StoreError::Corrupt)?;
        counts.0.insert(state, n as u64);
    }
    Ok(counts)
}
