//! The durable store: the only authority on workflow and task state.
//!
//! SQLite (the default, a file with WAL) through sqlx's `Any` driver, with SQL
//! and column types chosen so PostgreSQL can follow with the same queries (ids
//! as UUID text, times as BIGINT microseconds, JSON as text). Every state
//! change happens inside one [`WriteTx`]; reads use the shared pool.
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
pub use tx::{Dependent, WriteTx};

use crate::domain::{ServerId, TaskCounts, TaskId, TaskState, WorkflowId};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A store failure. Bad input never gets here: the API validates first.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported store url {0:?}: use sqlite://PATH")]
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
    /// `SQLITE_BUSY`.
    writer: AnyPool,
}

impl Store {
    /// Opens (creating if needed) the store at `url` and runs its migrations.
    ///
    /// # Errors
    /// An unsupported URL, a database that cannot be opened, or a failed migration.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
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
        Ok(Self { pool, writer })
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
        // IMMEDIATE takes the write lock now, so a transaction that reads and
        // then writes can never fail half-way on a lock upgrade.
        let tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx::new(tx))
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
        let mut counts = TaskCounts::default();
        for row in rows {
            let state: String = row.try_get("state")?;
            let n: i64 = row.try_get("n")?;
            let state = TaskState::from_str(&state).map_err(StoreError::Corrupt)?;
            counts.0.insert(state, n as u64);
        }
        Ok(counts)
    }

    /// Task counts per state over every workflow (the `bora_tasks` gauge).
    ///
    /// # Errors
    /// A database failure.
    pub async fn task_counts_all(&self) -> Result<TaskCounts, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM tasks GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        let mut counts = TaskCounts::default();
        for row in rows {
            let state: String = row.try_get("state")?;
            let n: i64 = row.try_get("n")?;
            let state = TaskState::from_str(&state).map_err(StoreError::Corrupt)?;
            counts.0.insert(state, n as u64);
        }
        Ok(counts)
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
    /// # Errors
    /// A database failure.
    pub async fn due_outbox(&self, now: i64, limit: u32) -> Result<Vec<OutboxItem>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT o.id AS o_id, o.kind AS o_kind, o.task_id AS o_task_id, ",
            "o.attempt AS o_attempt, o.server_id AS o_server_id, o.workflow_id AS o_workflow_id, ",
            "o.created_at AS o_created_at, ",
            "t.state AS t_state, ",
            task_columns!(t),
            " FROM outbox o LEFT JOIN tasks t ON t.id = o.task_id ",
            "WHERE o.not_before <= $1 ORDER BY o.id LIMIT $2"
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
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
        let v: Option<i64> = sqlx::query_scalar("SELECT MIN(not_before) FROM outbox")
            .fetch_one(&self.pool)
            .await?;
        Ok(v)
    }
}
