//! The `task_deps` table: the edges `(task, dependency)` of every
//! workflow's graph, written in batches, and read the ways the release
//! walk (dependents with their dependencies' states), the cycle check (a
//! workflow's edges) and the views (names and states) need.

use std::collections::{HashMap, HashSet};

use sqlx::Row;

use super::sql::{InList, MAX_IN, MAX_PARAMS, Params, query};
use super::tasks::{decode, task_columns};
use super::{Store, StoreError, WriteTx, parse_id};
use crate::domain::{Task, TaskId, TaskState, WorkflowId};

fn state(s: &str) -> Result<TaskState, StoreError> {
    s.parse().map_err(StoreError::Corrupt)
}

impl Store {
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
                let s: String = r.try_get("state")?;
                Ok((parse_id(&task)?, r.try_get("name")?, state(&s)?))
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
                let s: String = r.try_get("state")?;
                Ok((r.try_get("name")?, state(&s)?))
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
        for chunk in tasks.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let sql = format!(
                "SELECT d.task_id AS task_id, t.name AS name, t.state AS state FROM task_deps d \
                 JOIN tasks t ON t.id = d.dep_id WHERE d.task_id IN ({}) ORDER BY d.dep_id",
                Params::new(self.backend).list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len());
            for id in list.values() {
                q = q.bind(id.to_string());
            }
            for r in q.fetch_all(&self.pool).await? {
                let task: String = r.try_get("task_id")?;
                let s: String = r.try_get("state")?;
                out.entry(parse_id(&task)?)
                    .or_default()
                    .push((r.try_get("name")?, state(&s)?));
            }
        }
        Ok(out)
    }
}

impl WriteTx {
    /// Inserts dependency edges `(task, dependency)`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn add_dependencies(&mut self, edges: &[(TaskId, TaskId)]) -> Result<(), StoreError> {
        let size = MAX_PARAMS / 2;
        for chunk in edges.chunks(size) {
            let sql = format!(
                "INSERT INTO task_deps (task_id, dep_id) VALUES {}",
                Params::new(self.backend).values(chunk.len(), 2)
            );
            let mut q = query(sql, chunk.len() == size, chunk.len());
            for (t, d) in chunk {
                q = q.bind(t.to_string()).bind(d.to_string());
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Removes every dependency of `tasks`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn clear_dependencies(&mut self, tasks: &[TaskId]) -> Result<(), StoreError> {
        for task in tasks {
            sqlx::query("DELETE FROM task_deps WHERE task_id = $1")
                .bind(task.to_string())
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    /// A task's dependencies, as (id, state).
    ///
    /// # Errors
    /// A database failure.
    pub async fn dependency_states(
        &mut self,
        task: TaskId,
    ) -> Result<Vec<(TaskId, TaskState)>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.id AS id, t.state AS state FROM task_deps d JOIN tasks t ON t.id = d.dep_id \
             WHERE d.task_id = $1",
        )
        .bind(task.to_string())
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("id")?;
                let s: String = r.try_get("state")?;
                Ok((parse_id(&id)?, state(&s)?))
            })
            .collect()
    }

    /// The tasks that depend on any of `tasks`, whole and each once, in id
    /// order, with the id and state of every dependency each has: one query
    /// per chunk of ids.
    ///
    /// # Errors
    /// A database failure.
    pub async fn dependents_many(
        &mut self,
        tasks: &[TaskId],
    ) -> Result<Vec<(Task, Vec<(TaskId, TaskState)>)>, StoreError> {
        let mut out: Vec<(Task, Vec<(TaskId, TaskState)>)> = Vec::new();
        let mut seen = HashSet::new();
        for chunk in tasks.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let sql = format!(
                concat!(
                    "SELECT ",
                    task_columns!(t),
                    ", s.id AS dep_id, s.state AS dep_state FROM tasks t ",
                    "JOIN task_deps d2 ON d2.task_id = t.id JOIN tasks s ON s.id = d2.dep_id ",
                    "WHERE t.id IN (SELECT d.task_id FROM task_deps d WHERE d.dep_id IN ({})) ",
                    "ORDER BY t.id"
                ),
                Params::new(self.backend).list(list.len())
            );
            let mut q = query(sql, false, list.len());
            for id in list.values() {
                q = q.bind(id.to_string());
            }
            let mut fresh = false;
            for row in q.fetch_all(&mut *self.tx).await? {
                let id = parse_id(&row.try_get::<String, _>("id")?)?;
                let dep = parse_id(&row.try_get::<String, _>("dep_id")?)?;
                let dep_state = state(&row.try_get::<String, _>("dep_state")?)?;
                match out.last_mut() {
                    Some((t, deps)) if t.id == id && fresh => deps.push((dep, dep_state)),
                    _ => {
                        // A dependent found by an earlier chunk too is kept once.
                        fresh = seen.insert(id);
                        if fresh {
                            out.push((decode(&row)?, vec![(dep, dep_state)]));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every dependency edge `(task, dependency)` among a workflow's tasks.
    ///
    /// # Errors
    /// A database failure.
    pub async fn workflow_edges(
        &mut self,
        workflow: WorkflowId,
    ) -> Result<Vec<(TaskId, TaskId)>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.task_id AS task_id, d.dep_id AS dep_id FROM task_deps d \
             JOIN tasks t ON t.id = d.task_id WHERE t.workflow_id = $1",
        )
        .bind(workflow.to_string())
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter()
            .map(|r| {
                let a: String = r.try_get("task_id")?;
                let b: String = r.try_get("dep_id")?;
                Ok((parse_id(&a)?, parse_id(&b)?))
            })
            .collect()
    }

    /// The names of a task's dependencies (for `depends_on` on re-validation).
    ///
    /// # Errors
    /// A database failure.
    pub async fn dependency_names(&mut self, task: TaskId) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.name AS name FROM task_deps d JOIN tasks t ON t.id = d.dep_id \
             WHERE d.task_id = $1 ORDER BY t.id",
        )
        .bind(task.to_string())
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter()
            .map(|r| r.try_get("name").map_err(StoreError::from))
            .collect()
    }
}
