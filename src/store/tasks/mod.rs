//! The `tasks` table: task rows decoded into the domain's [`Task`], written
//! whole (one upsert for new and changed rows alike, a statement per chunk),
//! and the reads the use cases and the views need, by id, by reference, by
//! state and by server.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::servers::ServerRow;
use super::sql::{InList, MAX_IN, MAX_PARAMS, Params, query};
use super::{Store, StoreError, WriteTx};
use crate::domain::{ServerId, Task, TaskCounts, TaskId, TaskState, WorkflowId};

mod row;

pub(in crate::store) use row::{
    COLS, INSERT, LIFE_COLS, UPSERT, bind, bind_life, bind_life_id_last, decode, task_columns,
    update_life_many, update_life_one,
};

/// A task of `workflow` by id, else by name.
pub(super) async fn by_ref(
    conn: &mut AnyConnection,
    workflow: WorkflowId,
    reference: &str,
) -> Result<Option<Task>, StoreError> {
    let by_id = match reference.parse::<TaskId>() {
        Ok(id) => {
            sqlx::query(concat!(
                "SELECT ",
                task_columns!(),
                " FROM tasks WHERE id = $1 AND workflow_id = $2"
            ))
            .bind(id.to_string())
            .bind(workflow.to_string())
            .fetch_optional(&mut *conn)
            .await?
        }
        Err(_) => None,
    };
    let row = match by_id {
        Some(r) => Some(r),
        None => {
            sqlx::query(concat!(
                "SELECT ",
                task_columns!(),
                " FROM tasks WHERE workflow_id = $1 AND name = $2"
            ))
            .bind(workflow.to_string())
            .bind(reference)
            .fetch_optional(&mut *conn)
            .await?
        }
    };
    row.as_ref().map(decode).transpose()
}

/// A task a reply is about, with what recording the reply needs to know.
#[derive(Debug, Clone)]
pub struct ReplyContext {
    /// The task as stored.
    pub task: Task,
    /// Whether any task depends on it.
    pub has_dependents: bool,
    /// Whether its workflow is paused.
    pub paused: bool,
    /// Its server's row, if the server is known.
    pub server: Option<ServerRow>,
}

/// Task counts from `(state, n)` rows of a `GROUP BY state`.
fn counts_of(rows: &[AnyRow]) -> Result<TaskCounts, StoreError> {
    let mut counts = TaskCounts::default();
    for row in rows {
        let state: String = row.try_get("state")?;
        let n: i64 = row.try_get("n")?;
        counts
            .0
            .insert(state.parse().map_err(StoreError::Corrupt)?, n as u64);
    }
    Ok(counts)
}

impl Store {
    /// A task by id or, failing that, by name.
    ///
    /// # Errors
    /// A database failure.
    pub async fn task_by_ref(
        &self,
        workflow: WorkflowId,
        reference: &str,
    ) -> Result<Option<Task>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        by_ref(&mut conn, workflow, reference).await
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
    ) -> Result<Vec<Task>, StoreError> {
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
        rows.iter().map(decode).collect()
    }

    /// One page of a workflow's tasks in creation (id) order, optionally
    /// filtered: at most `limit` tasks after `after` (keyset, not an
    /// offset, so a page costs the same wherever it is).
    ///
    /// # Errors
    /// A database failure.
    pub async fn tasks_page(
        &self,
        workflow: WorkflowId,
        state: Option<TaskState>,
        server: Option<&ServerId>,
        after: Option<TaskId>,
        limit: u32,
    ) -> Result<Vec<Task>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE workflow_id = $1 AND ($2 = '' OR state = $2) \
             AND ($3 = '' OR server_id = $3) AND id > $4 ORDER BY id LIMIT $5"
        ))
        .bind(workflow.to_string())
        .bind(state.map(TaskState::as_str).unwrap_or(""))
        .bind(server.map(ServerId::as_str).unwrap_or(""))
        .bind(after.map(|a| a.to_string()).unwrap_or_default())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// The children of group `group` (or, with `workflow`, of every group
    /// of that workflow), in id order.
    ///
    /// # Errors
    /// A database failure.
    pub async fn children(
        &self,
        group: Option<TaskId>,
        workflow: Option<WorkflowId>,
    ) -> Result<Vec<Task>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE parent_id IS NOT NULL AND ($1 = '' OR parent_id = $1) \
             AND ($2 = '' OR workflow_id = $2) ORDER BY id"
        ))
        .bind(group.map(|g| g.to_string()).unwrap_or_default())
        .bind(workflow.map(|w| w.to_string()).unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// The names of tasks by id (a child's group, shown with the child).
    ///
    /// # Errors
    /// A database failure.
    pub async fn task_names(
        &self,
        ids: &[TaskId],
    ) -> Result<std::collections::HashMap<TaskId, String>, StoreError> {
        let mut out = std::collections::HashMap::new();
        for chunk in ids.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let sql = format!(
                "SELECT id, name FROM tasks WHERE id IN ({})",
                Params::new(self.backend).list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len());
            for id in list.values() {
                q = q.bind(id.to_string());
            }
            for row in q.fetch_all(&self.pool).await? {
                let id: String = row.try_get("id")?;
                out.insert(super::parse_id(&id)?, row.try_get("name")?);
            }
        }
        Ok(out)
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

    /// How many unfinished tasks each server has (servers with none are
    /// left out): what the servers' views show.
    ///
    /// # Errors
    /// A database failure.
    pub async fn unfinished_by_server(
        &self,
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let rows = sqlx::query(
            "SELECT server_id, COUNT(*) AS n FROM tasks \
             WHERE state IN ('waiting', 'queued', 'running') GROUP BY server_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = std::collections::HashMap::new();
        for row in rows {
            let n: i64 = row.try_get("n")?;
            out.insert(row.try_get("server_id")?, n as u64);
        }
        Ok(out)
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
}

impl WriteTx {
    /// Writes tasks whole: inserts new rows, overwrites every column of
    /// existing ones (an upsert on the id), a statement per chunk.
    ///
    /// # Errors
    /// A database failure, or a duplicate name (see [`StoreError::is_unique_violation`]).
    pub async fn write_tasks(&mut self, tasks: &[&Task]) -> Result<(), StoreError> {
        let size = MAX_PARAMS / COLS;
        for chunk in tasks.chunks(size) {
            let sql = format!(
                "{INSERT}{}{UPSERT}",
                Params::new(self.backend).values(chunk.len(), COLS)
            );
            let mut q = query(sql, chunk.len() == size, chunk.len());
            for t in chunk {
                q = bind(q, t);
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Writes what the lives of existing tasks changed (their state,
    /// attempt, times, result...; see `row::LIFE`), never their spec: on
    /// SQLite a prepared statement per task, on PostgreSQL a statement per
    /// chunk.
    ///
    /// # Errors
    /// A database failure.
    pub async fn update_lives(&mut self, tasks: &[&Task]) -> Result<(), StoreError> {
        if self.backend == super::Backend::Sqlite {
            for t in tasks {
                bind_life_id_last(sqlx::query(update_life_one()).persistent(true), t)
                    .execute(&mut *self.tx)
                    .await?;
            }
            return Ok(());
        }
        let size = MAX_PARAMS / (LIFE_COLS + 1);
        for chunk in tasks.chunks(size) {
            let (with, update) = update_life_many(&mut Params::new(self.backend), chunk.len());
            let mut q = query(
                format!("WITH {with} {update}"),
                chunk.len() == size,
                chunk.len(),
            );
            for t in chunk {
                q = bind_life(q, t);
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Deletes tasks with their edges and unconfirmed `run_task` messages.
    ///
    /// # Errors
    /// A database failure.
    pub async fn delete_tasks(&mut self, ids: &[TaskId]) -> Result<(), StoreError> {
        for id in ids {
            let id = id.to_string();
            sqlx::query("DELETE FROM outbox WHERE kind = 'task' AND task_id = $1")
                .bind(&id)
                .execute(&mut *self.tx)
                .await?;
            for sql in [
                "DELETE FROM task_attempts WHERE task_id = $1",
                "DELETE FROM task_output WHERE task_id = $1",
            ] {
                sqlx::query(sql).bind(&id).execute(&mut *self.tx).await?;
            }
            sqlx::query("DELETE FROM task_deps WHERE task_id = $1 OR dep_id = $1")
                .bind(&id)
                .execute(&mut *self.tx)
                .await?;
            sqlx::query("DELETE FROM tasks WHERE id = $1")
                .bind(&id)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    /// A task by id or, failing that, by name.
    ///
    /// # Errors
    /// A database failure.
    pub async fn task_by_ref(
        &mut self,
        workflow: WorkflowId,
        reference: &str,
    ) -> Result<Option<Task>, StoreError> {
        by_ref(&mut self.tx, workflow, reference).await
    }

    /// The tasks among `ids` that exist, one query per chunk.
    ///
    /// # Errors
    /// A database failure.
    pub async fn tasks_by_ids(&mut self, ids: &[TaskId]) -> Result<Vec<Task>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let sql = format!(
                concat!("SELECT ", task_columns!(), " FROM tasks WHERE id IN ({})"),
                Params::new(self.backend).list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len());
            for id in list.values() {
                q = q.bind(id.to_string());
            }
            for row in q.fetch_all(&mut *self.tx).await? {
                out.push(decode(&row)?);
            }
        }
        Ok(out)
    }

    /// The unfinished tasks of a workflow (`workflow`) or aimed at a server
    /// (`server`), in id order.
    ///
    /// # Errors
    /// A database failure.
    pub async fn unfinished_tasks(
        &mut self,
        workflow: Option<WorkflowId>,
        server: Option<&str>,
    ) -> Result<Vec<Task>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE ($1 = '' OR workflow_id = $1) AND ($2 = '' OR server_id = $2) \
             AND state IN ('waiting', 'queued', 'running') ORDER BY id"
        ))
        .bind(workflow.map(|w| w.to_string()).unwrap_or_default())
        .bind(server.unwrap_or(""))
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// Every task of a workflow, in id order (an operator's action on the
    /// whole workflow: rerun, resume).
    ///
    /// # Errors
    /// A database failure.
    pub async fn workflow_tasks(&mut self, workflow: WorkflowId) -> Result<Vec<Task>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE workflow_id = $1 ORDER BY id"
        ))
        .bind(workflow.to_string())
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// The children of a group task, in id order.
    ///
    /// # Errors
    /// A database failure.
    pub async fn children_of(&mut self, group: TaskId) -> Result<Vec<Task>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE parent_id = $1 ORDER BY id"
        ))
        .bind(group.to_string())
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// How many unfinished tasks each of `servers` has (those with none are
    /// left out): what `any` targeting weighs.
    ///
    /// # Errors
    /// A database failure.
    pub async fn unfinished_per_server(
        &mut self,
        servers: &[&str],
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let mut out = std::collections::HashMap::new();
        for chunk in servers.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let sql = format!(
                "SELECT server_id, COUNT(*) AS n FROM tasks WHERE server_id IN ({}) \
                 AND state IN ('waiting', 'queued', 'running') GROUP BY server_id",
                Params::new(self.backend).list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len());
            for s in list.values() {
                q = q.bind(*s);
            }
            for row in q.fetch_all(&mut *self.tx).await? {
                let n: i64 = row.try_get("n")?;
                out.insert(row.try_get("server_id")?, n as u64);
            }
        }
        Ok(out)
    }

    /// How many tasks a workflow holds.
    ///
    /// # Errors
    /// A database failure.
    pub async fn count_tasks(&mut self, workflow: WorkflowId) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE workflow_id = $1")
            .bind(workflow.to_string())
            .fetch_one(&mut *self.tx)
            .await?;
        Ok(n as u64)
    }

    /// Whether any of a workflow's tasks is unfinished: one index probe,
    /// not a count (a workflow of 100,000 tasks asks this at every end).
    ///
    /// # Errors
    /// A database failure.
    pub async fn has_open_tasks(&mut self, workflow: WorkflowId) -> Result<bool, StoreError> {
        let open: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM tasks WHERE workflow_id = $1 \
             AND state IN ('waiting', 'queued', 'running') LIMIT 1",
        )
        .bind(workflow.to_string())
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(open.is_some())
    }

    /// The tasks a batch of replies is about, each with whether any task
    /// depends on it, whether its workflow is paused, and its server's row
    /// (`None`: not known): one query per chunk of ids.
    ///
    /// # Errors
    /// A database failure.
    pub async fn tasks_for_replies(
        &mut self,
        ids: &[TaskId],
    ) -> Result<Vec<ReplyContext>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let sql = format!(
                concat!(
                    "SELECT ",
                    task_columns!(t),
                    ", CAST(CASE WHEN EXISTS (SELECT 1 FROM task_deps d WHERE d.dep_id = t.id) ",
                    "THEN 1 ELSE 0 END AS BIGINT) AS has_dependents, ",
                    "s.server_id AS s_server_id, s.kind AS s_kind, s.registered AS s_registered, ",
                    "s.last_seen AS s_last_seen, s.created_at AS s_created_at, ",
                    "s.labels AS s_labels, ",
                    "w.paused AS w_paused ",
                    "FROM tasks t JOIN workflows w ON w.id = t.workflow_id ",
                    "LEFT JOIN servers s ON s.server_id = t.server_id ",
                    "WHERE t.id IN ({})"
                ),
                Params::new(self.backend).list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len());
            for id in list.values() {
                q = q.bind(id.to_string());
            }
            for row in q.fetch_all(&mut *self.tx).await? {
                let flag: i64 = row.try_get("has_dependents")?;
                let paused: i64 = row.try_get("w_paused")?;
                out.push(ReplyContext {
                    task: decode(&row)?,
                    has_dependents: flag != 0,
                    paused: paused != 0,
                    server: ServerRow::from_joined(&row)?,
                });
            }
        }
        Ok(out)
    }

    /// Which of `names` a workflow's tasks already have.
    ///
    /// # Errors
    /// A database failure.
    pub async fn taken_names(
        &mut self,
        workflow: WorkflowId,
        names: &[&str],
    ) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for chunk in names.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let mut p = Params::new(self.backend);
            let sql = format!(
                "SELECT name FROM tasks WHERE workflow_id = {} AND name IN ({})",
                p.one(),
                p.list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len()).bind(workflow.to_string());
            for n in list.values() {
                q = q.bind(*n);
            }
            for row in q.fetch_all(&mut *self.tx).await? {
                out.push(row.try_get("name")?);
            }
        }
        Ok(out)
    }

    /// Running attempts whose last heartbeat is older than `cutoff`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn silent_running(&mut self, cutoff: i64) -> Result<Vec<Task>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            // A task with no server (an approval gate, a group) has no
            // worker to go silent.
            " FROM tasks WHERE state = 'running' AND server_id <> '' \
             AND COALESCE(last_heartbeat_at, started_at, 0) < $1 \
             ORDER BY id LIMIT 1000"
        ))
        .bind(cutoff)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// Queued or running attempts published more than their `timeout_s`
    /// (plus `grace_us`, for a worker's report of its own kill; not for an
    /// approval gate, which no worker holds) before `now`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn overdue(&mut self, now: i64, grace_us: i64) -> Result<Vec<Task>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            // A group (no server, not a gate) ends with its children.
            " FROM tasks WHERE state IN ('queued', 'running') AND queued_at IS NOT NULL \
             AND (server_id <> '' OR task_group = 'bora.approval') \
             AND queued_at + timeout_s * 1000000 \
             + CASE WHEN task_group = 'bora.approval' THEN 0 ELSE $2 END < $1 \
             ORDER BY id LIMIT 1000"
        ))
        .bind(now)
        .bind(grace_us)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(decode).collect()
    }
}
