//! The `workflows` table: workflow rows, and their row locks, which order
//! every transaction that changes a workflow's tasks (PostgreSQL; SQLite's
//! one writer holds the whole database).

use sqlx::Row;
use sqlx::any::AnyRow;

use std::sync::LazyLock;

use super::sql::{InList, MAX_IN, Params, query, statement};
use super::{Backend, Store, StoreError, WriteTx, parse_id};
use crate::domain::{TaskCounts, TaskId, TaskState, Workflow, WorkflowId, WorkflowState};

macro_rules! workflow_columns {
    () => {
        "id, name, description, cancelled, paused, created_at, updated_at"
    };
}

fn decode(row: &AnyRow) -> Result<Workflow, StoreError> {
    let id: String = row.try_get("id")?;
    Ok(Workflow {
        id: parse_id(&id)?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        cancelled: row.try_get::<i64, _>("cancelled")? != 0,
        paused: row.try_get::<i64, _>("paused")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Store {
    /// # Errors
    /// A database failure.
    pub async fn workflow(&self, id: WorkflowId) -> Result<Option<Workflow>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            workflow_columns!(),
            " FROM workflows WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode).transpose()
    }

    /// One page of workflows in creation order after `marker`, each with
    /// its task counts, in one statement; with `state`, only the workflows
    /// whose derived state ([`WorkflowState::derive`]) it is, the rule
    /// evaluated in SQL ([`derived_state_sql`]), so the page holds `limit`
    /// of them whatever their share.
    ///
    /// # Errors
    /// A database failure.
    pub async fn workflow_page(
        &self,
        marker: Option<WorkflowId>,
        limit: u32,
        state: Option<WorkflowState>,
    ) -> Result<Vec<(Workflow, TaskCounts)>, StoreError> {
        // Ids are UUIDv7: their text order is their creation order.
        let marker = marker.map(|m| m.to_string()).unwrap_or_default();
        let sql = &PAGE_SQL[usize::from(state.is_some())];
        let mut q = statement(sql.clone(), true)
            .bind(marker)
            .bind(i64::from(limit));
        if let Some(state) = state {
            q = q.bind(state.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let mut counts = TaskCounts::default();
                for (st, column) in TaskState::ALL.into_iter().zip(COUNT_COLUMNS.iter()) {
                    let n: i64 = row.try_get(column.as_str())?;
                    if n > 0 {
                        counts.0.insert(st, n as u64);
                    }
                }
                Ok((decode(row)?, counts))
            })
            .collect()
    }
}

/// The columns of a page row that count the workflow's tasks in each
/// state, in the order of [`TaskState::ALL`].
static COUNT_COLUMNS: LazyLock<Vec<String>> = LazyLock::new(|| {
    TaskState::ALL
        .into_iter()
        .map(|s| format!("n_{}", s.as_str()))
        .collect()
});

/// SQL counting the joined tasks (`t`) in any of `states`.
fn count_of(states: impl IntoIterator<Item = TaskState>) -> String {
    let list: Vec<String> = states
        .into_iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    if list.is_empty() {
        return "0".to_owned();
    }
    format!(
        "SUM(CASE WHEN t.state IN ({}) THEN 1 ELSE 0 END)",
        list.join(", ")
    )
}

/// [`WorkflowState::derive`] as an SQL expression over a workflow row `w`
/// grouped with its tasks `t`: the same tests in the same order, built
/// from the same classification of task states.
fn derived_state_sql() -> String {
    let total = "COUNT(t.id)";
    let unfinished = count_of(TaskState::ALL.into_iter().filter(|s| !s.is_terminal()));
    let succeeded = count_of([TaskState::Succeeded]);
    let failing = count_of(WorkflowState::FAILING);
    format!(
        "CASE WHEN w.cancelled <> 0 THEN '{cancelled}' \
         WHEN {total} = 0 THEN '{empty}' \
         WHEN {unfinished} > 0 THEN '{running}' \
         WHEN {succeeded} = {total} THEN '{ok}' \
         WHEN {failing} > 0 THEN '{failed}' \
         ELSE '{cancelled}' END",
        cancelled = WorkflowState::Cancelled.as_str(),
        empty = WorkflowState::Empty.as_str(),
        running = WorkflowState::Running.as_str(),
        ok = WorkflowState::Succeeded.as_str(),
        failed = WorkflowState::Failed.as_str(),
    )
}

/// The page statements of [`Store::workflow_page`]: without, then with the
/// state filter (`$3`). Keyset paging on the primary key, grouped by it
/// alone (the other columns depend on it), so both backends walk the key's
/// index in order and stop at `limit`; each workflow's tasks are counted
/// through `tasks_by_state` (workflow_id, state).
static PAGE_SQL: LazyLock<[String; 2]> = LazyLock::new(|| {
    let counts: Vec<String> = TaskState::ALL
        .into_iter()
        .zip(COUNT_COLUMNS.iter())
        .map(|(s, column)| format!("{} AS {column}", count_of([s])))
        .collect();
    let columns: Vec<String> = workflow_columns!()
        .split(", ")
        .map(|c| format!("w.{c}"))
        .collect();
    let columns = columns.join(", ");
    let page = |filter: &str| {
        format!(
            "SELECT {columns}, {counts} FROM workflows w \
             LEFT JOIN tasks t ON t.workflow_id = w.id \
             WHERE w.id > $1 GROUP BY w.id {filter} ORDER BY w.id LIMIT $2",
            counts = counts.join(", "),
        )
    };
    [
        page(""),
        page(&format!("HAVING {} = $3", derived_state_sql())),
    ]
});

impl WriteTx {
    /// # Errors
    /// A database failure.
    pub async fn insert_workflow(&mut self, w: &Workflow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO workflows (id, name, description, cancelled, paused, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(w.id.to_string())
        .bind(&w.name)
        .bind(&w.description)
        .bind(i64::from(w.cancelled))
        .bind(i64::from(w.paused))
        .bind(w.created_at)
        .bind(w.updated_at)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// A workflow, locked until this transaction ends (on PostgreSQL; SQLite's
    /// transactions hold the whole database): read it first, before any of
    /// its tasks, in every transaction that changes them.
    ///
    /// # Errors
    /// A database failure.
    pub async fn workflow(&mut self, id: WorkflowId) -> Result<Option<Workflow>, StoreError> {
        let sql = match self.backend {
            Backend::Sqlite => concat!(
                "SELECT ",
                workflow_columns!(),
                " FROM workflows WHERE id = $1"
            ),
            Backend::Postgres => concat!(
                "SELECT ",
                workflow_columns!(),
                " FROM workflows WHERE id = $1 FOR UPDATE"
            ),
        };
        let row = sqlx::query(sql)
            .bind(id.to_string())
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    /// Writes name, description, the cancel and pause flags and updated_at.
    ///
    /// # Errors
    /// A database failure.
    pub async fn update_workflow(&mut self, w: &Workflow) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE workflows SET name = $2, description = $3, cancelled = $4, paused = $6, \
             updated_at = $5 WHERE id = $1",
        )
        .bind(w.id.to_string())
        .bind(&w.name)
        .bind(&w.description)
        .bind(i64::from(w.cancelled))
        .bind(w.updated_at)
        .bind(i64::from(w.paused))
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Deletes a workflow with its tasks and their edges (outbox cancels stay).
    ///
    /// # Errors
    /// A database failure.
    pub async fn delete_workflow(&mut self, id: WorkflowId) -> Result<(), StoreError> {
        let id = id.to_string();
        sqlx::query(
            "DELETE FROM outbox WHERE kind = 'task' AND task_id IN \
             (SELECT id FROM tasks WHERE workflow_id = $1)",
        )
        .bind(&id)
        .execute(&mut *self.tx)
        .await?;
        for table in ["task_attempts", "task_output"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE task_id IN (SELECT id FROM tasks WHERE workflow_id = $1)"
            )))
            .bind(&id)
            .execute(&mut *self.tx)
            .await?;
        }
        sqlx::query(
            "DELETE FROM task_deps WHERE task_id IN (SELECT id FROM tasks WHERE workflow_id = $1)",
        )
        .bind(&id)
        .execute(&mut *self.tx)
        .await?;
        sqlx::query("DELETE FROM tasks WHERE workflow_id = $1")
            .bind(&id)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("DELETE FROM workflows WHERE id = $1")
            .bind(&id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Which of `workflows` are paused.
    ///
    /// # Errors
    /// A database failure.
    pub async fn paused_workflows(
        &mut self,
        workflows: &[WorkflowId],
    ) -> Result<Vec<WorkflowId>, StoreError> {
        let mut out = Vec::new();
        for chunk in workflows.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let sql = format!(
                "SELECT id FROM workflows WHERE paused <> 0 AND id IN ({})",
                Params::new(self.backend).list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len());
            for id in list.values() {
                q = q.bind(id.to_string());
            }
            for row in q.fetch_all(&mut *self.tx).await? {
                out.push(parse_id(&row.try_get::<String, _>("id")?)?);
            }
        }
        Ok(out)
    }

    /// Whether [`WriteTx::lock_workflows_of`] takes locks: not on SQLite,
    /// whose one writer runs one transaction at a time.
    pub fn locks_workflows(&self) -> bool {
        self.backend != Backend::Sqlite
    }

    /// Locks, until this transaction ends, the workflows of `tasks` (see
    /// [`WriteTx::workflow`]); call it before reading any of their rows.
    /// The locks are taken in id order, the same for every transaction, so
    /// two transactions locking overlapping sets cannot deadlock. A no-op on
    /// SQLite, whose write transactions hold the whole database.
    ///
    /// # Errors
    /// A database failure.
    pub async fn lock_workflows_of(&mut self, tasks: &[TaskId]) -> Result<(), StoreError> {
        if self.backend == Backend::Sqlite || tasks.is_empty() {
            return Ok(());
        }
        // The rows are locked as the sorted scan returns them, in id order.
        if tasks.len() <= MAX_IN {
            // One statement (a reply batch, a relay round).
            let list = InList::new(tasks);
            let sql = format!(
                "SELECT id FROM workflows WHERE id IN \
                 (SELECT workflow_id FROM tasks WHERE id IN ({})) ORDER BY id FOR UPDATE",
                Params::new(self.backend).list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len());
            for id in list.values() {
                q = q.bind(id.to_string());
            }
            q.fetch_all(&mut *self.tx).await?;
            return Ok(());
        }
        // More: find the workflows first (a task never changes workflow, so
        // nothing read here goes stale), then lock them all in one order.
        let mut workflows = Vec::new();
        for chunk in tasks.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let sql = format!(
                "SELECT DISTINCT workflow_id FROM tasks WHERE id IN ({})",
                Params::new(self.backend).list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len());
            for id in list.values() {
                q = q.bind(id.to_string());
            }
            for row in q.fetch_all(&mut *self.tx).await? {
                workflows.push(row.try_get::<String, _>("workflow_id")?);
            }
        }
        workflows.sort_unstable();
        workflows.dedup();
        for chunk in workflows.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let sql = format!(
                "SELECT id FROM workflows WHERE id IN ({}) ORDER BY id FOR UPDATE",
                Params::new(self.backend).list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len());
            for id in list.values() {
                q = q.bind(id.as_str());
            }
            q.fetch_all(&mut *self.tx).await?;
        }
        Ok(())
    }
}
