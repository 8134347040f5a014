//! Creating a workflow and adding tasks to one: names checked, references
//! resolved (within the batch by name, then among the workflow's tasks by id
//! or name), the batch ordered dependencies first (a cycle is refused), and
//! each new task released, skipped or left waiting in memory before the
//! unit of work writes the batch.

use std::collections::{HashMap, HashSet};

use tracing::instrument;

use super::input::NewWorkflow;
use super::release::decide;
use super::secrets::seal_inputs;
use super::unit::UnitOfWork;
use super::{App, AppError, locked_workflow, now_us};
use crate::domain::refs::is_referable;
use crate::domain::{
    FieldError, Task, TaskId, TaskSpec, TaskState, Workflow, WorkflowId, check_name, check_text,
    input_refs, topological_order,
};
use crate::store::WriteTx;

/// Tasks created at once beyond which the store's planner statistics are
/// refreshed (PostgreSQL).
const BULK_TASKS: usize = 1_000;

impl App {
    /// Creates a workflow and its first batch of tasks (validated already);
    /// returns its id and, with `keep_tasks`, the tasks as committed.
    ///
    /// # Errors
    /// Invalid name, or any error of [`App::add_tasks`].
    #[instrument(skip_all, fields(workflow_id, tasks = tasks.len()))]
    pub async fn create_workflow(
        &self,
        new: NewWorkflow,
        tasks: Vec<TaskSpec>,
        keep_tasks: bool,
    ) -> Result<(WorkflowId, Vec<Task>), AppError> {
        check_workflow_name(&new.name)?;
        check_description(new.description.as_deref())?;
        let now = now_us();
        let wf = Workflow::new(new.name, new.description, now);
        tracing::Span::current().record("workflow_id", tracing::field::display(wf.id));
        let mut tx = self.begin().await?;
        let mut uow = UnitOfWork::default();
        let id = wf.id;
        uow.create_workflow(wf.clone());
        let created = self
            .insert_tasks(&mut tx, &mut uow, &wf, 0, tasks, now)
            .await?;
        // A copy of every task only for a caller that shows them: a large
        // batch's copy would double what the create holds.
        let tasks: Vec<Task> = if keep_tasks {
            created
                .iter()
                .filter_map(|id| uow.task(*id).cloned())
                .collect()
        } else {
            Vec::new()
        };
        self.commit(tx, uow, now).await.map_err(duplicate_names)?;
        if created.len() >= BULK_TASKS {
            self.refresh_statistics();
        }
        Ok((id, tasks))
    }

    /// After a bulk insert, refreshes the store's planner statistics in
    /// the background ([`crate::store::Store::analyze_tasks`]).
    fn refresh_statistics(&self) {
        let store = self.store().clone();
        tokio::spawn(async move {
            if let Err(e) = store.analyze_tasks().await {
                tracing::warn!(error = %e, "cannot refresh the store's statistics after a bulk insert");
            }
        });
    }

    /// Adds a batch of tasks to a workflow. Tasks in the batch may refer to
    /// each other by name in any order, and to existing tasks by id or name.
    ///
    /// # Errors
    /// Unknown workflow (404), cancelled workflow or duplicate name (409),
    /// unknown dependency, cycle or unregistered server (422).
    #[instrument(skip_all, fields(workflow_id = %workflow, tasks = tasks.len()))]
    pub async fn add_tasks(
        &self,
        workflow: WorkflowId,
        tasks: Vec<TaskSpec>,
    ) -> Result<Vec<TaskId>, AppError> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let wf = locked_workflow(&mut tx, workflow).await?;
        let existing = if tasks.is_empty() {
            0
        } else {
            tx.count_tasks(workflow).await?
        };
        let mut uow = UnitOfWork::default();
        let ids = self
            .insert_tasks(&mut tx, &mut uow, &wf, existing, tasks, now)
            .await?;
        self.commit(tx, uow, now).await.map_err(duplicate_names)?;
        Ok(ids)
    }

    /// Checks and resolves a batch, then keeps its tasks in `uow` as they
    /// end up: created `waiting` (an event each, in request order), then
    /// released in dependency order. Returns their ids in request order.
    async fn insert_tasks(
        &self,
        tx: &mut WriteTx,
        uow: &mut UnitOfWork,
        wf: &Workflow,
        existing: u64,
        mut tasks: Vec<TaskSpec>,
        now: i64,
    ) -> Result<Vec<TaskId>, AppError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        if wf.cancelled {
            return Err(AppError::conflict(
                "workflow_cancelled",
                format!("workflow {} is cancelled: it takes no new tasks", wf.id),
            ));
        }
        uow.note_paused(wf.id, wf.paused);
        let limit = self.config.max_tasks_per_workflow;
        if existing + tasks.len() as u64 > limit {
            return Err(AppError::invalid(
                "too_many_tasks",
                format!(
                    "workflow {} would hold {} tasks; the limit is {limit} (dispatch.max_tasks_per_workflow)",
                    wf.id,
                    existing + tasks.len() as u64,
                ),
            ));
        }
        // Names are unique within the batch and the workflow. One query asks
        // the store which of the batch's names are taken (none can be in a
        // workflow that has no tasks yet).
        let taken: HashSet<String> = if existing == 0 {
            HashSet::new()
        } else {
            let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
            tx.taken_names(wf.id, &names).await?.into_iter().collect()
        };
        let mut registered: HashMap<&str, bool> = HashMap::new();
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        for (i, t) in tasks.iter().enumerate() {
            if by_name.insert(t.name.as_str(), i).is_some() {
                return Err(AppError::conflict(
                    "duplicate_name",
                    format!("task name {:?} appears twice in the request", t.name),
                ));
            }
            if taken.contains(&t.name) {
                return Err(AppError::conflict(
                    "duplicate_name",
                    format!("workflow already has a task named {:?}", t.name),
                ));
            }
            if let (true, Some(server)) = (self.config.require_registration, &t.server_id) {
                let server = server.as_str();
                let ok = match registered.get(server) {
                    Some(&ok) => ok,
                    None => {
                        let ok = tx.is_registered(server).await?;
                        registered.insert(server, ok);
                        ok
                    }
                };
                if !ok {
                    return Err(AppError::invalid(
                        "unregistered_server",
                        format!(
                            "tasks[{i}].server_id: server {server:?} is not registered (dispatch.require_registration is on)"
                        ),
                    ));
                }
            }
        }
        // Resolve references: first within the batch (by name), then existing tasks.
        let mut batch_edges: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
        let mut existing_deps: Vec<Vec<TaskId>> = vec![Vec::new(); tasks.len()];
        // Existing tasks named so far, by the reference that named them: each
        // is read once however often the batch names it.
        let mut resolved: HashMap<String, Task> = HashMap::new();
        for (i, t) in tasks.iter().enumerate() {
            for r in &t.depends_on {
                if let Some(&j) = by_name.get(r.as_str()) {
                    if j == i {
                        return Err(AppError::invalid(
                            "dependency_cycle",
                            format!("task {:?} depends on itself", t.name),
                        ));
                    }
                    if !batch_edges[i].contains(&j) {
                        batch_edges[i].push(j);
                    }
                } else if let Some(Task { id, .. }) = resolved.get(r.as_str()) {
                    // One task named twice (by id and by name, or two
                    // spellings of its id) is one dependency.
                    if !existing_deps[i].contains(id) {
                        existing_deps[i].push(*id);
                    }
                } else if let Some(dep) = tx.task_by_ref(wf.id, r).await? {
                    if !existing_deps[i].contains(&dep.id) {
                        existing_deps[i].push(dep.id);
                    }
                    resolved.insert(r.clone(), dep);
                } else {
                    return Err(AppError::invalid(
                        "unknown_dependency",
                        format!(
                            "task {:?} depends on {r:?}, which is neither in this request nor in workflow {}",
                            t.name, wf.id
                        ),
                    ));
                }
            }
        }
        // Input references name a task of the batch (by name) or of the
        // workflow and one of its outputs, and imply a dependency on it.
        for (i, t) in tasks.iter().enumerate() {
            let refs = input_refs(&t.inputs)
                .map_err(|e| AppError::invalid("invalid_reference", format!("tasks[{i}].{e}")))?;
            for (input, r) in refs {
                let unknown_output = |declared: &[crate::domain::OutputSpec]| {
                    (!is_referable(&r.output, declared)).then(|| {
                        AppError::invalid(
                            "invalid_reference",
                            format!(
                                "tasks[{i}].inputs.{input}: task {:?} declares no output {:?}",
                                r.task, r.output
                            ),
                        )
                    })
                };
                if let Some(&j) = by_name.get(r.task.as_str()) {
                    if j == i {
                        return Err(AppError::invalid(
                            "dependency_cycle",
                            format!("task {:?} refers to its own output", t.name),
                        ));
                    }
                    if let Some(e) = unknown_output(&tasks[j].outputs) {
                        return Err(e);
                    }
                    if !batch_edges[i].contains(&j) {
                        batch_edges[i].push(j);
                    }
                    continue;
                }
                let producer = match resolved.get(&r.task) {
                    Some(p) => Some(p.clone()),
                    None => tx.task_by_ref(wf.id, &r.task).await?,
                };
                let producer = producer.ok_or_else(|| {
                    AppError::invalid(
                        "invalid_reference",
                        format!(
                            "tasks[{i}].inputs.{input}: task {:?} is neither in this request nor in workflow {}",
                            r.task, wf.id
                        ),
                    )
                })?;
                if let Some(e) = unknown_output(&producer.outputs()?) {
                    return Err(e);
                }
                if !existing_deps[i].contains(&producer.id) {
                    existing_deps[i].push(producer.id);
                }
                resolved.insert(r.task.clone(), producer);
            }
        }
        let order = topological_order(&batch_edges).map_err(|cycle| {
            let names: Vec<&str> = cycle.iter().map(|&i| tasks[i].name.as_str()).collect();
            AppError::invalid(
                "dependency_cycle",
                format!("dependency cycle among tasks {names:?}"),
            )
        })?;
        let existing_states: HashMap<TaskId, TaskState> =
            resolved.values().map(|t| (t.id, t.state())).collect();
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        for spec in &mut tasks {
            // From here on bora holds a secret input only sealed.
            seal_inputs(&self.sealer, &mut spec.inputs)?;
            uow.create(Task::new(wf.id, spec, now));
        }
        // The tasks hold all the specs say from here on.
        drop(tasks);
        // Released dependencies first, so a skip travels down the batch in
        // one pass and each row is written as it ends up.
        for &i in &order {
            let Some(task) = uow.task(ids[i]).cloned() else {
                continue;
            };
            let dependencies: Vec<(TaskId, TaskState)> = batch_edges[i]
                .iter()
                .filter_map(|&j| uow.task(ids[j]).map(|t| (t.id, t.state())))
                .chain(
                    existing_deps[i]
                        .iter()
                        .filter_map(|d| existing_states.get(d).map(|s| (*d, *s))),
                )
                .collect();
            decide(tx, uow, &self.config, task, &dependencies, now).await?;
        }
        for i in 0..ids.len() {
            uow.add_edges(batch_edges[i].iter().map(|&j| (ids[i], ids[j])));
            uow.add_edges(existing_deps[i].iter().map(|&d| (ids[i], d)));
        }
        Ok(ids)
    }
}

/// A name taken by a concurrent request shows up as a uniqueness violation.
fn duplicate_names(e: crate::store::StoreError) -> AppError {
    if e.is_unique_violation() {
        AppError::conflict(
            "duplicate_name",
            "workflow already has a task of one of these names",
        )
    } else {
        e.into()
    }
}

/// A workflow description: the rule of [`check_text`], as a field error.
pub(super) fn check_description(description: Option<&str>) -> Result<(), AppError> {
    match description.map(check_text) {
        Some(Err(e)) => Err(AppError::validation(vec![FieldError {
            field: "description".into(),
            message: e,
        }])),
        _ => Ok(()),
    }
}

/// A workflow name: the rule of [`check_name`], as a field error.
pub(super) fn check_workflow_name(name: &str) -> Result<(), AppError> {
    check_name(name).map_err(|e| AppError::Invalid {
        code: "validation_failed",
        message: format!("name: {e}"),
        details: vec![FieldError {
            field: "name".into(),
            message: e,
        }],
    })
}
