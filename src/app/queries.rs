//! The reads both APIs serve, and the commands that answer with a view:
//! each takes parsed input and returns the view REST and the oslo RPC API
//! both answer with, so the two cannot drift.

use std::collections::{BTreeSet, HashMap};

use super::input::{NewTask, NewWorkflow, validate_tasks};
use super::views::{TaskView, WorkflowView};
use super::{App, AppError};
use crate::domain::{Task, TaskState, WorkflowId};

/// Parses a workflow id given by a client; anything else names no workflow.
///
/// # Errors
/// Not a workflow id: not found.
pub fn workflow_id(raw: &str) -> Result<WorkflowId, AppError> {
    raw.parse()
        .map_err(|_| AppError::NotFound(format!("workflow {raw:?} not found")))
}

impl App {
    /// The id of a workflow that exists.
    ///
    /// # Errors
    /// Not a workflow id, or no such workflow (not found); a store failure.
    pub async fn existing_workflow(&self, raw: &str) -> Result<WorkflowId, AppError> {
        let id = workflow_id(raw)?;
        self.store()
            .workflow(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("workflow {id} not found")))?;
        Ok(id)
    }

    /// A task of `workflow` by id or name.
    ///
    /// # Errors
    /// No such task (not found); a store failure.
    pub async fn task(&self, workflow: WorkflowId, reference: &str) -> Result<Task, AppError> {
        self.store()
            .task_by_ref(workflow, reference)
            .await?
            .ok_or_else(|| {
                AppError::NotFound(format!(
                    "task {reference:?} not found in workflow {workflow}"
                ))
            })
    }

    /// One workflow, with its derived state and counts.
    ///
    /// # Errors
    /// No such workflow (not found); a store failure.
    pub async fn workflow_view(&self, id: WorkflowId) -> Result<WorkflowView, AppError> {
        let row = self
            .store()
            .workflow(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("workflow {id} not found")))?;
        let counts = self.store().task_counts(id).await?;
        Ok(WorkflowView::new(row, counts))
    }

    /// One task, with its dependencies and its server's last heartbeat.
    ///
    /// # Errors
    /// A store failure, or stored data that does not parse.
    pub async fn task_view(&self, row: Task) -> Result<TaskView, AppError> {
        let deps = self.store().dependencies(row.id).await?;
        let seen = self.store().server_last_seen(&row.server_id).await?;
        Ok(TaskView::new(row, &deps, seen, self.online(seen))?)
    }

    /// Views of many tasks of one workflow, with two extra queries in all.
    ///
    /// # Errors
    /// A store failure, or stored data that does not parse.
    pub async fn task_views(
        &self,
        workflow: WorkflowId,
        rows: Vec<Task>,
    ) -> Result<Vec<TaskView>, AppError> {
        let mut deps: HashMap<_, Vec<(String, TaskState)>> = HashMap::new();
        for (task, name, state) in self.store().dependency_edges(workflow).await? {
            deps.entry(task).or_default().push((name, state));
        }
        // Only the servers these tasks name, not every server bora knows.
        let servers: BTreeSet<&str> = rows.iter().map(|r| r.server_id.as_str()).collect();
        let servers: Vec<&str> = servers.into_iter().collect();
        let seen = self.store().last_seen_many(&servers).await?;
        rows.into_iter()
            .map(|row| {
                let last = seen.get(&row.server_id).copied();
                let d = deps.get(&row.id).map(Vec::as_slice).unwrap_or(&[]);
                TaskView::new(row, d, last, self.online(last)).map_err(AppError::from)
            })
            .collect()
    }

    /// Creates a workflow and its first tasks; the view lists the tasks
    /// when some were given.
    ///
    /// # Errors
    /// Invalid fields (all of them), or any error of [`App::create_workflow`].
    pub async fn create_workflow_view(
        &self,
        mut new: NewWorkflow,
    ) -> Result<WorkflowView, AppError> {
        let tasks = new.tasks.take();
        let with_tasks = tasks.is_some();
        let specs =
            validate_tasks(tasks.unwrap_or_default(), "tasks").map_err(AppError::validation)?;
        let (id, mut rows) = self.create_workflow(new, specs).await?;
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
    ///
    /// # Errors
    /// Invalid fields, or any error of [`App::add_tasks`].
    pub async fn add_task_view(&self, workflow: &str, task: NewTask) -> Result<TaskView, AppError> {
        let wf = workflow_id(workflow)?;
        let specs = validate_tasks(vec![task], "tasks").map_err(AppError::validation)?;
        let ids = self.add_tasks(wf, specs).await?;
        let id = ids
            .first()
            .ok_or_else(|| AppError::NotFound("task vanished".into()))?;
        let row = self.task(wf, &id.to_string()).await?;
        self.task_view(row).await
    }

    /// Cancels every unfinished task of a workflow.
    ///
    /// # Errors
    /// Not a workflow, or any error of [`App::cancel_workflow`].
    pub async fn cancel_workflow_view(&self, workflow: &str) -> Result<WorkflowView, AppError> {
        let id = workflow_id(workflow)?;
        self.cancel_workflow(id).await?;
        self.workflow_view(id).await
    }
}
