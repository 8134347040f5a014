//! The reads both APIs serve, and the commands that answer with a view:
//! each takes parsed input and returns the view REST and the oslo RPC API
//! both answer with, so the two cannot drift.

use std::collections::{BTreeSet, HashMap};

use super::input::{LabelPatch, NewTask, NewWorkflow, validate_tasks};
use super::views::{
    AttemptView, AttemptsView, ChildView, ServerList, ServerView, TaskPage, TaskView, WorkflowView,
};
use super::{App, AppError};
use crate::domain::{Labels, ServerId, carries_all};
use crate::domain::{Task, TaskId, TaskState, WorkflowId};
use crate::protocol::TaskResult;

/// What an operator does to a whole workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkflowAction {
    /// Cancel every unfinished task; it takes no new tasks.
    Cancel,
    /// Publish nothing more until resumed.
    Pause,
    /// Release what became ready while paused.
    Resume,
    /// Run every task that ended unsuccessfully again.
    Rerun,
}

/// Up to this many tasks, [`App::task_views`] reads the edges of those
/// tasks only (a page of a large workflow); beyond, the workflow's.
const PAGE_EDGES: usize = 1_000;

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
        let paused = self.paused(row.workflow_id).await?;
        let (group, parent) = (row.is_group().then_some(row.id), row.parent_id);
        let mut view = TaskView::new(row, &deps, paused, seen, self.online(seen))?;
        if let Some(g) = group {
            let children = self.store().children(Some(g), None).await?;
            view.children = Some(children.iter().map(ChildView::of).collect());
        }
        if let Some(p) = parent {
            view.parent = self.store().task_names(&[p]).await?.remove(&p);
        }
        Ok(view)
    }

    /// Whether a workflow is paused (false for one that is gone).
    async fn paused(&self, workflow: WorkflowId) -> Result<bool, AppError> {
        Ok(self
            .store()
            .workflow(workflow)
            .await?
            .is_some_and(|w| w.paused))
    }

    /// Every attempt of a task that has a result, oldest first: the
    /// results later attempts replaced, then the task's own.
    ///
    /// # Errors
    /// A store failure, or stored data that does not parse.
    pub async fn attempts_view(&self, row: Task) -> Result<AttemptsView, AppError> {
        let view = |result: TaskResult, outputs: &[crate::domain::OutputSpec]| AttemptView {
            attempt: i64::from(result.attempt),
            state: result.end(outputs),
            result: result.masked(),
        };
        let outputs = row.outputs()?;
        let mut attempts = Vec::new();
        for a in self.store().attempts(row.id).await? {
            let result: TaskResult = serde_json::from_str(&a.result)
                .map_err(|e| crate::domain::Corrupt(format!("attempt {}: {e}", a.attempt)))?;
            attempts.push(view(result, &outputs));
        }
        if let Some(result) = TaskResult::of_task(&row)? {
            attempts.push(view(result, &outputs));
        }
        Ok(AttemptsView {
            current_attempt: row.attempt,
            attempts,
        })
    }

    /// One page of a workflow's tasks in creation order (see
    /// [`crate::store::Store::tasks_page`]), with the marker of the next
    /// page when there is one: one row more than the page is read to know.
    ///
    /// # Errors
    /// A store failure, or stored data that does not parse.
    pub async fn task_page(
        &self,
        workflow: WorkflowId,
        state: Option<TaskState>,
        server: Option<&ServerId>,
        after: Option<TaskId>,
        limit: u32,
    ) -> Result<TaskPage, AppError> {
        let mut rows = self
            .store()
            .tasks_page(workflow, state, server, after, limit.saturating_add(1))
            .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_marker = if more {
            rows.last().map(|r| r.id)
        } else {
            None
        };
        Ok(TaskPage {
            tasks: self.task_views(workflow, rows).await?,
            next_marker,
        })
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
        // A page reads its own tasks' edges; a whole batch, the workflow's.
        let mut deps: HashMap<_, Vec<(String, TaskState)>> = HashMap::new();
        if rows.len() <= PAGE_EDGES {
            let ids: Vec<TaskId> = rows.iter().map(|r| r.id).collect();
            deps = self.store().dependencies_many(&ids).await?;
        } else {
            for (task, name, state) in self.store().dependency_edges(workflow).await? {
                deps.entry(task).or_default().push((name, state));
            }
        }
        // Only the servers these tasks name, not every server bora knows.
        let servers: BTreeSet<&str> = rows.iter().map(|r| r.server_id.as_str()).collect();
        let servers: Vec<&str> = servers.into_iter().collect();
        let seen = self.store().last_seen_many(&servers).await?;
        let paused = self.paused(workflow).await?;
        // Groups list their children; children name their group.
        let mut children: HashMap<crate::domain::TaskId, Vec<ChildView>> = HashMap::new();
        let mut parents = Vec::new();
        if rows.iter().any(|r| r.is_group() || r.parent_id.is_some()) {
            for c in self.store().children(None, Some(workflow)).await? {
                if let Some(p) = c.parent_id {
                    children.entry(p).or_default().push(ChildView::of(&c));
                    parents.push(p);
                }
            }
        }
        parents.sort_unstable();
        parents.dedup();
        let names = if parents.is_empty() {
            HashMap::new()
        } else {
            self.store().task_names(&parents).await?
        };
        rows.into_iter()
            .map(|row| {
                let last = seen.get(&row.server_id).copied();
                let d = deps.get(&row.id).map(Vec::as_slice).unwrap_or(&[]);
                let (id, group, parent) = (row.id, row.is_group(), row.parent_id);
                let mut view = TaskView::new(row, d, paused, last, self.online(last))?;
                if group {
                    view.children = Some(children.remove(&id).unwrap_or_default());
                }
                view.parent = parent.and_then(|p| names.get(&p).cloned());
                Ok(view)
            })
            .collect()
    }

    /// Creates a workflow and its first tasks; the view lists the tasks
    /// when some were given and `list_tasks` says so (a large batch's
    /// views are most of its answer's cost).
    ///
    /// # Errors
    /// Invalid fields (all of them), or any error of [`App::create_workflow`].
    pub async fn create_workflow_view(
        &self,
        mut new: NewWorkflow,
        list_tasks: bool,
    ) -> Result<WorkflowView, AppError> {
        let tasks = new.tasks.take();
        let with_tasks = tasks.is_some() && list_tasks;
        let specs =
            validate_tasks(tasks.unwrap_or_default(), "tasks").map_err(AppError::validation)?;
        let (id, mut rows) = self.create_workflow(new, specs, with_tasks).await?;
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

    /// Reruns a task that ended unsuccessfully (with the dependents it had
    /// skipped); answers with the task as it is then.
    ///
    /// # Errors
    /// Any error of [`App::rerun_task`].
    pub async fn rerun_task_view(&self, workflow: &str, task: &str) -> Result<TaskView, AppError> {
        let wf = self.existing_workflow(workflow).await?;
        let row = self.task(wf, task).await?;
        self.rerun_task(wf, &row.id.to_string()).await?;
        self.task_view(self.task(wf, &row.id.to_string()).await?)
            .await
    }

    /// Approves (`approve`) or rejects an approval gate; answers with the
    /// gate as it is then.
    ///
    /// # Errors
    /// Any error of [`App::decide_gate`].
    pub async fn decide_gate_view(
        &self,
        workflow: &str,
        task: &str,
        approve: bool,
        comment: Option<String>,
    ) -> Result<TaskView, AppError> {
        let wf = self.existing_workflow(workflow).await?;
        let row = self.task(wf, task).await?;
        let id = row.id.to_string();
        self.decide_gate(wf, &id, approve, comment).await?;
        self.task_view(self.task(wf, &id).await?).await
    }

    /// Every attempt with a result of a task (`GET .../attempts`).
    ///
    /// # Errors
    /// Unknown workflow or task; a store failure.
    pub async fn task_attempts_view(
        &self,
        workflow: &str,
        task: &str,
    ) -> Result<AttemptsView, AppError> {
        let wf = self.existing_workflow(workflow).await?;
        let row = self.task(wf, task).await?;
        self.attempts_view(row).await
    }

    /// Applies an operator's action to a workflow and answers with the
    /// workflow as it is then.
    ///
    /// # Errors
    /// Any error of the action's use case.
    pub async fn workflow_action_view(
        &self,
        workflow: &str,
        action: WorkflowAction,
    ) -> Result<WorkflowView, AppError> {
        let id = workflow_id(workflow)?;
        match action {
            WorkflowAction::Cancel => self.cancel_workflow(id).await?,
            WorkflowAction::Pause => self.pause_workflow(id).await?,
            WorkflowAction::Resume => self.resume_workflow(id).await?,
            WorkflowAction::Rerun => {
                self.rerun_workflow(id).await?;
            }
        }
        self.workflow_view(id).await
    }
}

/// Parses a server id given in a path; anything else names no server.
///
/// # Errors
/// Not a server id: not found.
pub fn server_id(raw: &str) -> Result<ServerId, AppError> {
    ServerId::parse(raw).map_err(|_| AppError::NotFound(format!("server {raw:?} not found")))
}

impl App {
    /// One server bora knows, with its labels and last heartbeat.
    ///
    /// # Errors
    /// No such server (not found); a store failure.
    pub async fn server_view(&self, server: &ServerId) -> Result<ServerView, AppError> {
        let row = self
            .store()
            .server(server.as_str())
            .await?
            .ok_or_else(|| AppError::NotFound(format!("server {server} not found")))?;
        let online = self.online(row.last_seen);
        let unfinished = self.store().unfinished_by_server().await?;
        let mut view = ServerView::new(row, online);
        view.unfinished_tasks = Some(unfinished.get(&view.server_id).copied().unwrap_or(0));
        Ok(view)
    }

    /// The servers bora knows that carry every label of `wanted` (all of
    /// them for an empty set), by id.
    ///
    /// # Errors
    /// A store failure.
    pub async fn servers_view(&self, wanted: &Labels) -> Result<ServerList, AppError> {
        let unfinished = self.store().unfinished_by_server().await?;
        let servers = self
            .store()
            .servers()
            .await?
            .into_iter()
            .filter(|r| carries_all(&r.labels, wanted))
            .map(|r| {
                let online = self.online(r.last_seen);
                let mut view = ServerView::new(r, online);
                view.unfinished_tasks = Some(unfinished.get(&view.server_id).copied().unwrap_or(0));
                view
            })
            .collect();
        Ok(ServerList { servers })
    }

    /// Changes a registered server's labels (see [`App::label_server`]) and
    /// answers with the server as it is then.
    ///
    /// # Errors
    /// Any error of [`App::label_server`].
    pub async fn label_server_view(
        &self,
        server: &ServerId,
        patch: &LabelPatch,
    ) -> Result<ServerView, AppError> {
        let row = self.label_server(server, patch).await?;
        let online = self.online(row.last_seen);
        Ok(ServerView::new(row, online))
    }
}
