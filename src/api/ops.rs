//! The operations REST and the oslo RPC API share: each takes parsed input
//! and returns the view both APIs answer with, so the two cannot drift.

use super::error::ApiError;
use super::tasks::task_row;
use super::views::{TaskView, WorkflowView};
use super::workflows::validate_tasks;
use super::{AppState, workflow_id};
use crate::domain::{NewTask, NewWorkflow};

impl AppState {
    /// Creates a workflow and its first tasks; the view lists the tasks
    /// when some were given.
    pub(crate) async fn create_workflow(
        &self,
        mut new: NewWorkflow,
    ) -> Result<WorkflowView, ApiError> {
        let tasks = new.tasks.take();
        let with_tasks = tasks.is_some();
        let specs = validate_tasks(tasks.unwrap_or_default(), "tasks")?;
        let (id, mut rows) = self.tracker.create_workflow(new, specs).await?;
        let mut view = self.workflow_view(id).await?;
        if with_tasks {
            // The tasks as committed (not read back: a batch may be large),
            // in id order like every task list.
            rows.sort_unstable_by_key(|r| r.id);
            view.tasks = Some(self.task_views(id, rows).await?);
        }
        Ok(view)
    }

    /// Adds one task to the workflow named by `workflow` (an id).
    pub(crate) async fn add_task(
        &self,
        workflow: &str,
        task: NewTask,
    ) -> Result<TaskView, ApiError> {
        let wf = workflow_id(workflow)?;
        let specs = validate_tasks(vec![task], "tasks")?;
        let ids = self.tracker.add_tasks(wf, specs).await?;
        let id = ids
            .first()
            .ok_or_else(|| ApiError::not_found("task vanished"))?;
        let row = task_row(self, wf, &id.to_string()).await?;
        self.task_view(row).await
    }

    /// Cancels every unfinished task of a workflow.
    pub(crate) async fn cancel_workflow(&self, workflow: &str) -> Result<WorkflowView, ApiError> {
        let id = workflow_id(workflow)?;
        self.tracker.cancel_workflow(id).await?;
        self.workflow_view(id).await
    }
}
