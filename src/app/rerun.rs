//! Rerunning what ended unsuccessfully (SPEC 7.3): one task, with the
//! dependents it had skipped, or every such task of a workflow. Each goes
//! back to `waiting` for the release rule with its retry budget renewed;
//! its attempts count on, and the results of the earlier ones stay
//! readable.

use std::collections::{HashMap, HashSet};

use tracing::instrument;

use super::group;
use super::release::evaluate;
use super::unit::UnitOfWork;
use super::{App, AppConfig, AppError, locked_workflow, now_us};
use crate::domain::{Task, TaskId, TaskState, Workflow, WorkflowId};
use crate::store::WriteTx;

/// A workflow's tasks and edges, read once for an action on many of them.
pub(super) struct WorkflowGraph {
    /// Every task, by id.
    pub tasks: HashMap<TaskId, Task>,
    /// Every task's ids, in id (creation) order.
    pub order: Vec<TaskId>,
    /// Each task's dependencies.
    pub dependencies: HashMap<TaskId, Vec<TaskId>>,
    /// Each task's dependents.
    pub dependents: HashMap<TaskId, Vec<TaskId>>,
}

impl WorkflowGraph {
    /// Reads `workflow`'s tasks and edges (its lock is held).
    pub async fn read(tx: &mut WriteTx, workflow: WorkflowId) -> Result<Self, AppError> {
        let rows = tx.workflow_tasks(workflow).await?;
        let order = rows.iter().map(|t| t.id).collect();
        let tasks = rows.into_iter().map(|t| (t.id, t)).collect();
        let mut dependencies: HashMap<TaskId, Vec<TaskId>> = HashMap::new();
        let mut dependents: HashMap<TaskId, Vec<TaskId>> = HashMap::new();
        for (task, dep) in tx.workflow_edges(workflow).await? {
            dependencies.entry(task).or_default().push(dep);
            dependents.entry(dep).or_default().push(task);
        }
        Ok(Self {
            tasks,
            order,
            dependencies,
            dependents,
        })
    }

    /// The ids of the tasks for which `keep` holds, in id (creation) order.
    pub fn ids_where(&self, keep: impl Fn(&Task) -> bool) -> Vec<TaskId> {
        self.order
            .iter()
            .filter(|id| self.tasks.get(id).is_some_and(&keep))
            .copied()
            .collect()
    }

    /// The children of group `group`, in id order.
    pub fn children(&self, group: TaskId) -> impl Iterator<Item = &Task> {
        self.order
            .iter()
            .filter_map(|id| self.tasks.get(id))
            .filter(move |t| t.parent_id == Some(group))
    }

    /// Applies the release rule to each of `ids` that awaits release, in
    /// order, with its dependencies' states as `uow` has them (else as
    /// read).
    pub async fn release(
        &self,
        tx: &mut WriteTx,
        uow: &mut UnitOfWork,
        cfg: &AppConfig,
        ids: &[TaskId],
        now: i64,
    ) -> Result<(), AppError> {
        for id in ids {
            let Some(task) = uow.task(*id).or_else(|| self.tasks.get(id)).cloned() else {
                continue;
            };
            if !task.awaits_release() {
                continue;
            }
            let deps = self
                .dependencies
                .get(id)
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .filter_map(|d| self.tasks.get(d).map(|t| (*d, t.state())))
                .collect();
            evaluate(tx, uow, cfg, task, deps, now).await?;
        }
        Ok(())
    }
}

/// The workflow `workflow`, locked, and its task `reference` (id or name),
/// for an operator's action on the task (recorded in the span).
///
/// # Errors
/// Unknown workflow or task (404); a cancelled workflow (409).
pub(super) async fn operated_task(
    tx: &mut WriteTx,
    workflow: WorkflowId,
    reference: &str,
) -> Result<(Workflow, Task), AppError> {
    let wf = locked_workflow(tx, workflow).await?;
    refuse_cancelled(&wf)?;
    let task = tx
        .task_by_ref(workflow, reference)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("task {reference:?} not found")))?;
    tracing::Span::current().record("task_id", tracing::field::display(task.id));
    Ok((wf, task))
}

/// 409 for any action on a cancelled workflow.
pub(super) fn refuse_cancelled(wf: &Workflow) -> Result<(), AppError> {
    if wf.cancelled {
        return Err(AppError::conflict(
            "workflow_cancelled",
            format!("workflow {} is cancelled", wf.id),
        ));
    }
    Ok(())
}

impl App {
    /// Runs a task that ended other than `succeeded` again; the dependents
    /// it had skipped (and theirs) go back to `waiting` with it.
    ///
    /// # Errors
    /// Unknown workflow or task (404); a cancelled workflow, a task that
    /// has not ended or that succeeded (409).
    #[instrument(skip_all, fields(workflow_id = %workflow, task_id))]
    pub async fn rerun_task(&self, workflow: WorkflowId, reference: &str) -> Result<(), AppError> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let (wf, task) = operated_task(&mut tx, workflow, reference).await?;
        match task.state() {
            TaskState::Succeeded => {
                return Err(AppError::conflict(
                    "task_succeeded",
                    format!("task {:?} succeeded: there is nothing to rerun", task.name),
                ));
            }
            s if !s.is_terminal() => {
                return Err(AppError::conflict(
                    "task_not_ended",
                    format!("task {:?} has not ended ({s})", task.name),
                ));
            }
            _ => {}
        }
        let graph = WorkflowGraph::read(&mut tx, workflow).await?;
        // The task (a group's child: with its group, if that ended; a
        // group: with its children that did not succeed), then every
        // dependent down the graph that was skipped.
        let mut reset = vec![task.id];
        if let Some(parent) = task.parent_id.and_then(|p| graph.tasks.get(&p))
            && parent.state().check_rerun().is_ok()
        {
            reset.push(parent.id);
        }
        if task.is_group() {
            reset.extend(
                graph
                    .children(task.id)
                    .filter(|c| c.state().check_rerun().is_ok())
                    .map(|c| c.id),
            );
        }
        let mut seen: HashSet<TaskId> = reset.iter().copied().collect();
        let mut next = 0;
        while next < reset.len() {
            let id = reset[next];
            next += 1;
            for d in graph.dependents.get(&id).map(Vec::as_slice).unwrap_or(&[]) {
                if graph
                    .tasks
                    .get(d)
                    .is_some_and(|t| t.state() == TaskState::Skipped)
                    && seen.insert(*d)
                {
                    reset.push(*d);
                }
            }
        }
        let mut uow = UnitOfWork::default();
        uow.note_paused(wf.id, wf.paused);
        self.rerun(&mut tx, &mut uow, &graph, &reset, now).await?;
        self.commit(tx, uow, now).await?;
        Ok(())
    }

    /// Runs every task of a workflow that ended other than `succeeded`
    /// again; returns how many.
    ///
    /// # Errors
    /// Unknown workflow (404); a cancelled workflow, or one with nothing to
    /// rerun (409).
    #[instrument(skip_all, fields(workflow_id = %workflow))]
    pub async fn rerun_workflow(&self, workflow: WorkflowId) -> Result<usize, AppError> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let wf = locked_workflow(&mut tx, workflow).await?;
        refuse_cancelled(&wf)?;
        let graph = WorkflowGraph::read(&mut tx, workflow).await?;
        let reset = graph.ids_where(|t| t.state().check_rerun().is_ok());
        if reset.is_empty() {
            return Err(AppError::conflict(
                "nothing_to_rerun",
                format!("workflow {workflow} has no task that ended unsuccessfully"),
            ));
        }
        let mut uow = UnitOfWork::default();
        uow.note_paused(wf.id, wf.paused);
        self.rerun(&mut tx, &mut uow, &graph, &reset, now).await?;
        self.commit(tx, uow, now).await?;
        Ok(reset.len())
    }

    /// Puts every task of `reset` back to `waiting` (an event each, and one
    /// `rerun` event for the workflow), then applies the release rule to
    /// them: all are reset before any is evaluated, so none is skipped
    /// again for a dependency that is about to run again. A group that had
    /// children is opened again on the servers it matched (`running`), and
    /// its reset children are released by its batch, not by the rule.
    async fn rerun(
        &self,
        tx: &mut WriteTx,
        uow: &mut UnitOfWork,
        graph: &WorkflowGraph,
        reset: &[TaskId],
        now: i64,
    ) -> Result<(), AppError> {
        let Some(first) = reset.first().and_then(|id| graph.tasks.get(id)) else {
            return Ok(());
        };
        uow.workflow_event(first.workflow_id, "rerun");
        let mut reopened = Vec::new();
        let mut released = Vec::new();
        for id in reset {
            let Some(mut task) = graph.tasks.get(id).cloned() else {
                continue;
            };
            task.rerun(now)?;
            if task.is_group() && graph.children(task.id).next().is_some() {
                task.dispatch(now)?;
                task.heartbeat(now)?;
                reopened.push(task.id);
            } else if let Some(parent) = task.parent_id {
                if !reopened.contains(&parent) && !reset.contains(&parent) {
                    reopened.push(parent);
                }
            } else {
                released.push(task.id);
            }
            uow.keep(&task, true);
        }
        graph.release(tx, uow, &self.config, &released, now).await?;
        for g in reopened {
            group::progress(tx, uow, &self.config, g, false, now).await?;
        }
        Ok(())
    }
}
