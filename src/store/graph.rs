//! The light reads a workflow's graph summary is folded from
//! (`GET /v1/workflows/{wf}/graph`): every task's id, name, state, group
//! and parent, and every dependency edge, without the heavy columns
//! (config, inputs, results), so a 100,000-task workflow is two queries.

use sqlx::Row;

use super::{Store, StoreError, parse_id};
use crate::domain::{Target, TargetMode, TaskId, TaskState, WorkflowId};

/// One task as the graph summary sees it.
#[derive(Debug, Clone)]
pub struct GraphTask {
    /// Its id (creation order).
    pub id: TaskId,
    /// Its name in the workflow.
    pub name: String,
    /// Where it stands.
    pub state: TaskState,
    /// Whether it is a group task (targets every matching server).
    pub group: bool,
    /// For a group's child: its group.
    pub parent: Option<TaskId>,
}

impl Store {
    /// Every task of a workflow, light, in id order.
    ///
    /// # Errors
    /// A database failure, or a stored value that does not parse.
    pub async fn graph_tasks(&self, workflow: WorkflowId) -> Result<Vec<GraphTask>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, state, target, parent_id FROM tasks \
             WHERE workflow_id = $1 ORDER BY id",
        )
        .bind(workflow.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let target: Option<String> = r.try_get("target")?;
                let group = match target.as_deref() {
                    Some(t) => {
                        serde_json::from_str::<Target>(t)
                            .map_err(|e| StoreError::Corrupt(format!("target: {e}")))?
                            .mode
                            == TargetMode::All
                    }
                    None => false,
                };
                let parent: Option<String> = r.try_get("parent_id")?;
                let state: String = r.try_get("state")?;
                Ok(GraphTask {
                    id: parse_id(&r.try_get::<String, _>("id")?)?,
                    name: r.try_get("name")?,
                    state: state.parse().map_err(StoreError::Corrupt)?,
                    group,
                    parent: parent.as_deref().map(parse_id).transpose()?,
                })
            })
            .collect()
    }

    /// The id of a workflow's last event (0 before the first): a summary
    /// read after it reflects every event up to it.
    ///
    /// # Errors
    /// A database failure.
    pub async fn last_event_id(&self, workflow: WorkflowId) -> Result<i64, StoreError> {
        let id: Option<i64> =
            sqlx::query_scalar("SELECT MAX(id) FROM events WHERE workflow_id = $1")
                .bind(workflow.to_string())
                .fetch_one(&self.pool)
                .await?;
        Ok(id.unwrap_or(0))
    }

    /// Every dependency edge `(task, dependency)` of a workflow.
    ///
    /// # Errors
    /// A database failure.
    pub async fn graph_edges(
        &self,
        workflow: WorkflowId,
    ) -> Result<Vec<(TaskId, TaskId)>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.task_id AS task_id, d.dep_id AS dep_id FROM task_deps d \
             JOIN tasks t ON t.id = d.task_id WHERE t.workflow_id = $1",
        )
        .bind(workflow.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let a: String = r.try_get("task_id")?;
                let b: String = r.try_get("dep_id")?;
                Ok((parse_id(&a)?, parse_id(&b)?))
            })
            .collect()
    }
}
