//! Changing a workflow's name or description, and a task that still waits
//! for its dependencies: the task's spec is re-validated, its new
//! dependencies resolved and checked for a cycle, and the release rule
//! applied again (a new dependency may already have ended).

use tracing::instrument;

use super::create::{check_description, check_workflow_name};
use super::input::{TaskPatch, WorkflowPatch};
use super::release::evaluate;
use super::secrets::seal_inputs;
use super::unit::UnitOfWork;
use super::{App, AppError, locked_workflow, now_us};
use crate::domain::refs::is_referable;
use crate::domain::{TaskId, WorkflowId, creates_cycle, input_refs};

impl App {
    /// Changes a workflow's name or description.
    ///
    /// # Errors
    /// Unknown workflow (404), invalid name (422).
    #[instrument(skip_all, fields(workflow_id = %workflow))]
    pub async fn patch_workflow(
        &self,
        workflow: WorkflowId,
        patch: WorkflowPatch,
    ) -> Result<(), AppError> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let mut wf = locked_workflow(&mut tx, workflow).await?;
        if let Some(name) = patch.name {
            check_workflow_name(&name)?;
            wf.name = name;
        }
        if let Some(d) = patch.description {
            check_description(Some(&d))?;
            wf.description = Some(d);
        }
        wf.updated_at = now;
        let mut uow = UnitOfWork::default();
        uow.change_workflow(wf);
        self.commit(tx, uow, now).await?;
        Ok(())
    }

    /// Changes a task that is still waiting for its dependencies.
    ///
    /// # Errors
    /// Unknown workflow or task (404), task no longer waiting or duplicate name
    /// (409), invalid fields, unknown dependency or cycle (422).
    #[instrument(skip_all, fields(workflow_id = %workflow, task_id))]
    pub async fn patch_task(
        &self,
        workflow: WorkflowId,
        reference: &str,
        patch: TaskPatch,
    ) -> Result<TaskId, AppError> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let wf = locked_workflow(&mut tx, workflow).await?;
        let mut task = tx
            .task_by_ref(workflow, reference)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("task {reference:?} not found")))?;
        tracing::Span::current().record("task_id", tracing::field::display(task.id));
        if wf.cancelled || !task.awaits_release() {
            return Err(AppError::conflict(
                "task_not_waiting",
                format!(
                    "task {:?} is {} and was already handed to the broker or finished; only waiting tasks can change",
                    task.name,
                    task.state()
                ),
            ));
        }
        let deps_changed = patch.depends_on.is_some();
        let inputs_given = patch.inputs.is_some();
        let old_deps = tx.dependency_names(task.id).await?;
        let mut spec = patch
            .apply(&task.spec(old_deps)?)
            .map_err(AppError::validation)?;
        if inputs_given {
            // New inputs come plain from the client; kept ones are sealed.
            seal_inputs(&self.sealer, &mut spec.inputs)?;
        }
        if let (true, Some(server)) = (self.config.require_registration, &spec.server_id)
            && !tx.is_registered(server.as_str()).await?
        {
            return Err(AppError::invalid(
                "unregistered_server",
                format!("server {:?} is not registered", server.as_str()),
            ));
        }
        let mut uow = UnitOfWork::default();
        uow.note_paused(wf.id, wf.paused);
        let mut dependencies = if deps_changed {
            let mut deps = Vec::new();
            for r in &spec.depends_on {
                let dep = tx.task_by_ref(workflow, r).await?.ok_or_else(|| {
                    AppError::invalid(
                        "unknown_dependency",
                        format!(
                            "task {:?} depends on {r:?}, which is not in workflow {workflow}",
                            spec.name
                        ),
                    )
                })?;
                // One task named twice is one dependency.
                if !deps.iter().any(|(id, _)| *id == dep.id) {
                    deps.push((dep.id, dep.state()));
                }
            }
            deps
        } else {
            tx.dependency_states(task.id).await?
        };
        // Input references (re-validated) imply dependencies too.
        let mut implied = false;
        let refs =
            input_refs(&spec.inputs).map_err(|e| AppError::invalid("invalid_reference", e))?;
        for (input, r) in refs {
            let producer = tx.task_by_ref(workflow, &r.task).await?.ok_or_else(|| {
                AppError::invalid(
                    "invalid_reference",
                    format!(
                        "inputs.{input}: task {:?} is not in workflow {workflow}",
                        r.task
                    ),
                )
            })?;
            if producer.id == task.id {
                return Err(AppError::invalid(
                    "dependency_cycle",
                    format!("task {:?} refers to its own output", spec.name),
                ));
            }
            if !is_referable(&r.output, &producer.outputs()?) {
                return Err(AppError::invalid(
                    "invalid_reference",
                    format!(
                        "inputs.{input}: task {:?} declares no output {:?}",
                        r.task, r.output
                    ),
                ));
            }
            if !dependencies.iter().any(|(id, _)| *id == producer.id) {
                dependencies.push((producer.id, producer.state()));
                implied = true;
            }
        }
        if deps_changed || implied {
            let ids: Vec<TaskId> = dependencies.iter().map(|(id, _)| *id).collect();
            let edges = tx.workflow_edges(workflow).await?;
            if creates_cycle(task.id, &ids, &edges) {
                return Err(AppError::invalid(
                    "dependency_cycle",
                    format!(
                        "the new dependencies of task {:?} would form a cycle",
                        spec.name
                    ),
                ));
            }
            uow.replace_edges(task.id, &ids);
        }
        task.set_spec(&spec);
        task.updated_at = now;
        uow.respecify(task.id);
        let id = task.id;
        let name = task.name.clone();
        evaluate(&mut tx, &mut uow, &self.config, task, dependencies, now).await?;
        self.commit(tx, uow, now).await.map_err(|e| {
            if e.is_unique_violation() {
                AppError::conflict(
                    "duplicate_name",
                    format!("workflow already has a task named {name:?}"),
                )
            } else {
                e.into()
            }
        })?;
        Ok(id)
    }
}
