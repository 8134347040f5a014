//! The `outbox` table: the messages a state change causes, committed with
//! it and published by the relay after. A row is claimed by a relay while
//! `lease_until` is ahead (inserted claimed when the committing
//! dispatcher's relay takes it straight from the commit) and deleted once
//! the broker confirmed it.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::sql::{AnyQuery, InList, MAX_IN, MAX_PARAMS, Params, query};
use super::tasks::{decode, task_columns};
use super::{Backend, Store, StoreError, WriteTx, parse_id};
use crate::domain::{Task, TaskId, WorkflowId};

/// An outbox row `o` with its task `t` (LEFT JOIN), as [`OutboxItem`] reads it.
macro_rules! outbox_item_columns {
    () => {
        concat!(
            "o.id AS o_id, o.kind AS o_kind, o.task_id AS o_task_id, ",
            "o.attempt AS o_attempt, o.server_id AS o_server_id, o.workflow_id AS o_workflow_id, ",
            "o.created_at AS o_created_at, t.state AS t_state, ",
            task_columns!(t)
        )
    };
}

/// What an outbox row asks the relay to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxKind {
    /// A `run_task` call for one attempt, to the server's task queue.
    Task,
    /// A `cancel_task` cast, to the server's control queue.
    Cancel,
    /// An oslo notification `bora.task.end`.
    TaskEnd,
    /// An oslo notification `bora.workflow.end`.
    WorkflowEnd,
}

impl OutboxKind {
    /// The name stored in the `kind` column (and written in logs).
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxKind::Task => "task",
            OutboxKind::Cancel => "cancel",
            OutboxKind::TaskEnd => "task_end",
            OutboxKind::WorkflowEnd => "workflow_end",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "task" => OutboxKind::Task,
            "cancel" => OutboxKind::Cancel,
            "task_end" => OutboxKind::TaskEnd,
            "workflow_end" => OutboxKind::WorkflowEnd,
            other => return Err(StoreError::Corrupt(format!("outbox kind {other:?}"))),
        })
    }
}

/// One due outbox message.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    /// The row's id, to delete it once the broker confirmed the publish.
    pub id: i64,
    /// What it is.
    pub kind: OutboxKind,
    /// The task concerned; `None` for a workflow's end.
    pub task_id: Option<TaskId>,
    /// The workflow of a workflow's end.
    pub workflow_id: Option<WorkflowId>,
    /// The task's attempt it is about (0 for a workflow's end).
    pub attempt: i64,
    /// The server whose queue a task or cancel message goes to.
    pub server_id: String,
    /// When the transaction that queued it committed (microseconds); the
    /// start of the publish latency.
    pub created_at: i64,
    /// The task as it is now; `None` once deleted (a cancel may outlive it).
    pub task: Option<Task>,
}

impl OutboxItem {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let kind: String = row.try_get("o_kind")?;
        let task_id: String = row.try_get("o_task_id")?;
        let workflow_id: Option<String> = row.try_get("o_workflow_id")?;
        let t_state: Option<String> = row.try_get("t_state")?;
        Ok(Self {
            id: row.try_get("o_id")?,
            kind: OutboxKind::parse(&kind)?,
            task_id: (!task_id.is_empty())
                .then(|| parse_id(&task_id))
                .transpose()?,
            workflow_id: workflow_id.as_deref().map(parse_id).transpose()?,
            attempt: row.try_get("o_attempt")?,
            server_id: row.try_get("o_server_id")?,
            created_at: row.try_get("o_created_at")?,
            task: match t_state {
                Some(_) => Some(decode(row)?),
                None => None,
            },
        })
    }
}

/// A message to queue.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// What it is.
    pub kind: OutboxKind,
    /// The task it is about; `None` for a workflow's end.
    pub task_id: Option<TaskId>,
    /// The workflow it is about.
    pub workflow_id: WorkflowId,
    /// The task's attempt it is about (0 for a workflow's end).
    pub attempt: i64,
    /// The server whose queue a task or cancel message goes to.
    pub server_id: String,
    /// Not published before this time (a retry's delay).
    pub not_before: i64,
    /// Claimed until then by the committing dispatcher's relay; 0: free
    /// for any relay's sweep.
    pub lease_until: i64,
}

/// The id the store gave a queued message, and what it was.
#[derive(Debug, Clone, Copy)]
pub struct Queued {
    /// The outbox row's id.
    pub id: i64,
    /// The message's kind.
    pub kind: OutboxKind,
    /// The task it is about.
    pub task_id: Option<TaskId>,
}

pub(super) const INSERT: &str = "INSERT INTO outbox (kind, task_id, workflow_id, attempt, \
     server_id, not_before, created_at, lease_until) VALUES ";
pub(super) const COLS: usize = 8;
pub(super) const RETURNING: &str = " RETURNING id, kind, task_id";

/// Binds one message's columns, in [`INSERT`]'s order.
pub(super) fn bind<'q>(q: AnyQuery<'q>, m: &'q NewMessage, now: i64) -> AnyQuery<'q> {
    q.bind(m.kind.as_str())
        .bind(m.task_id.map(|t| t.to_string()).unwrap_or_default())
        .bind(m.workflow_id.to_string())
        .bind(m.attempt)
        .bind(m.server_id.as_str())
        .bind(m.not_before)
        .bind(now)
        .bind(m.lease_until)
}

/// The `RETURNING id, kind, task_id` rows of an insert.
pub(super) fn queued(rows: &[AnyRow]) -> Result<Vec<Queued>, StoreError> {
    rows.iter()
        .map(|row| {
            let kind: String = row.try_get("kind")?;
            let task_id: String = row.try_get("task_id")?;
            Ok(Queued {
                id: row.try_get("id")?,
                kind: OutboxKind::parse(&kind)?,
                task_id: (!task_id.is_empty())
                    .then(|| parse_id(&task_id))
                    .transpose()?,
            })
        })
        .collect()
}

impl Store {
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

impl WriteTx {
    /// Queues messages, a statement per chunk; returns their ids.
    ///
    /// # Errors
    /// A database failure.
    pub async fn insert_messages(
        &mut self,
        messages: &[NewMessage],
        now: i64,
    ) -> Result<Vec<Queued>, StoreError> {
        let mut out = Vec::with_capacity(messages.len());
        let size = MAX_PARAMS / COLS;
        for chunk in messages.chunks(size) {
            let sql = format!(
                "{INSERT}{}{RETURNING}",
                Params::new(self.backend).values(chunk.len(), COLS)
            );
            let mut q = query(sql, chunk.len() == size, chunk.len());
            for m in chunk {
                q = bind(q, m, now);
            }
            out.extend(queued(&q.fetch_all(&mut *self.tx).await?)?);
        }
        Ok(out)
    }

    /// Drops the `run_task` messages of `tasks` that were not confirmed yet.
    ///
    /// # Errors
    /// A database failure.
    pub async fn drop_task_messages(&mut self, tasks: &[TaskId]) -> Result<(), StoreError> {
        for task in tasks {
            sqlx::query("DELETE FROM outbox WHERE kind = 'task' AND task_id = $1")
                .bind(task.to_string())
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    /// Removes outbox messages (confirmed, or moot).
    ///
    /// # Errors
    /// A database failure.
    pub async fn delete_outbox_many(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        for chunk in ids.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let sql = format!(
                "DELETE FROM outbox WHERE id IN ({})",
                Params::new(self.backend).list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len());
            for id in list.values() {
                q = q.bind(*id);
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Postpones outbox messages to `not_before` (or gives claimed ones back).
    ///
    /// # Errors
    /// A database failure.
    pub async fn postpone_outbox_many(
        &mut self,
        ids: &[i64],
        not_before: i64,
    ) -> Result<(), StoreError> {
        for chunk in ids.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let mut p = Params::new(self.backend);
            let sql = format!(
                "UPDATE outbox SET not_before = {}, lease_until = 0 WHERE id IN ({})",
                p.one(),
                p.list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len()).bind(not_before);
            for id in list.values() {
                q = q.bind(*id);
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }
}
