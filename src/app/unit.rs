//! The unit of work: what one use case changed, kept in memory while it
//! decides, then written with one statement per table (one in all on
//! PostgreSQL when it fits) just before the commit. It is the only path
//! by which task rows, their events and the messages they cause reach the
//! store: no use case writes a task row any other way, so nothing is ever
//! written before a decision that might still read it.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::domain::{Task, TaskId, TaskState, Workflow, WorkflowId};
use crate::protocol::TaskResult;
use crate::store::{
    NewAttempt, NewChunk, NewEvent, NewMessage, OutboxItem, OutboxKind, StoreError, WriteTx,
};

/// What a use case changed and has not written yet.
#[derive(Debug, Default)]
pub(crate) struct UnitOfWork {
    /// The latest version of every task changed (new ones too).
    tasks: HashMap<TaskId, Task>,
    /// Tasks in the order they were first changed (rows are written so).
    order: Vec<TaskId>,
    /// Tasks created here (not in the store yet).
    created: Vec<TaskId>,
    /// Tasks written whole: those created here, and existing ones whose
    /// spec changed here (a patch); every other task changed here is
    /// written in what its life changes only ([`WriteTx::write`]).
    whole: HashSet<TaskId>,
    /// The events owed, in order.
    events: Vec<NewEvent>,
    /// Messages to queue: (kind, task, attempt then, due at).
    messages: Vec<(OutboxKind, TaskId, i64, i64)>,
    /// Tasks that reached a terminal state here (their ends are announced).
    ended: Vec<TaskId>,
    /// Tasks whose unconfirmed `run_task` messages are dropped.
    dropped: Vec<TaskId>,
    /// Dependency edges: tasks whose edges are replaced, and edges added.
    cleared: Vec<TaskId>,
    edges: Vec<(TaskId, TaskId)>,
    /// Deleted after everything else is written.
    deleted_tasks: Vec<TaskId>,
    deleted_workflows: Vec<WorkflowId>,
    /// Written before the tasks (a new workflow) or after (a changed one).
    new_workflows: Vec<Workflow>,
    changed_workflows: Vec<Workflow>,
    /// Results a later attempt replaced, kept in `task_attempts`.
    archived: Vec<NewAttempt>,
    /// Live output to keep.
    output: Vec<NewChunk>,
    /// Whether each workflow the use case read is paused (not written: the
    /// release rule reads it here before asking the store).
    paused: HashMap<WorkflowId, bool>,
}

/// How the commit treats the messages it queues.
pub(crate) struct Publishing {
    /// Queue task- and workflow-end notifications.
    pub notifications: bool,
    /// Messages due at once are claimed until then for this dispatcher's
    /// relay, which takes them from the commit; `None`: no relay listens.
    pub handoff_lease: Option<i64>,
}

/// What a written unit of work leaves for after the commit.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// Messages claimed for this dispatcher's relay, whole.
    pub handed: Vec<OutboxItem>,
    /// Whether messages were queued that the relay must find in the store.
    pub wake_relay: bool,
    /// The state of every task event written, in order.
    pub entered: Vec<TaskState>,
}

impl UnitOfWork {
    /// The latest version of a task this unit changed.
    pub fn task(&self, id: TaskId) -> Option<&Task> {
        self.tasks.get(&id)
    }

    /// Whether nothing was changed.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.events.is_empty()
            && self.deleted_tasks.is_empty()
            && self.deleted_workflows.is_empty()
            && self.new_workflows.is_empty()
            && self.changed_workflows.is_empty()
            && self.archived.is_empty()
            && self.output.is_empty()
    }

    /// How many tasks of `workflow` this unit of work creates.
    pub fn created_in(&self, workflow: WorkflowId) -> u64 {
        self.created
            .iter()
            .filter(|id| {
                self.tasks
                    .get(id)
                    .is_some_and(|t| t.workflow_id == workflow)
            })
            .count() as u64
    }

    /// The children of group `group` this unit of work holds.
    pub fn children_of(&self, group: TaskId) -> impl Iterator<Item = &Task> {
        self.tasks
            .values()
            .filter(move |t| t.parent_id == Some(group))
    }

    /// Keeps `task` as it is now, with an event if it `moved` (a task that
    /// ended is announced).
    pub fn keep(&mut self, task: &Task, moved: bool) {
        if moved {
            self.events.push(event_of(task));
            if task.state().is_terminal() {
                self.ended.push(task.id);
            }
        }
        if self.tasks.insert(task.id, task.clone()).is_none() {
            self.order.push(task.id);
        }
    }

    /// Notes that `task`'s spec changed (a patch), so its row is written
    /// whole; keep it too.
    pub fn respecify(&mut self, task: TaskId) {
        self.whole.insert(task);
    }

    /// Keeps a new task (not in the store yet) as it is, with its
    /// creation event (`waiting`).
    pub fn create(&mut self, task: Task) {
        self.created.push(task.id);
        self.whole.insert(task.id);
        self.events.push(event_of(&task));
        self.order.push(task.id);
        self.tasks.insert(task.id, task);
    }

    /// Queues the `run_task` call of `task`'s current attempt, due at `at`.
    pub fn publish(&mut self, task: &Task, at: i64) {
        self.messages
            .push((OutboxKind::Task, task.id, task.attempt, at));
    }

    /// Queues a `cancel_task` cast for `task`'s current attempt, at once.
    pub fn tell_cancel(&mut self, task: &Task, now: i64) {
        self.messages
            .push((OutboxKind::Cancel, task.id, task.attempt, now));
    }

    /// Drops the `run_task` messages of `task` not confirmed yet: those of
    /// earlier commits, and any queued here.
    pub fn drop_publishes(&mut self, task: TaskId) {
        self.messages
            .retain(|(kind, t, _, _)| !(*kind == OutboxKind::Task && *t == task));
        self.dropped.push(task);
    }

    /// Gives `task` `result` as its current attempt's, and keeps the result
    /// it replaces (an earlier attempt's, see [`Task::keep_result`]) among
    /// the task's earlier attempts.
    ///
    /// # Errors
    /// The result does not serialise (a bug).
    pub fn keep_result(
        &mut self,
        task: &mut Task,
        result: &TaskResult,
        now: i64,
    ) -> Result<(), StoreError> {
        #[derive(serde::Deserialize)]
        struct Attempt {
            #[serde(default)]
            attempt: i64,
        }
        let text = serde_json::to_string(result).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if let Some(old) = task.keep_result(text, now) {
            let attempt = serde_json::from_str::<Attempt>(&old).map_or(0, |a| a.attempt);
            self.archived.push(NewAttempt {
                task_id: task.id,
                attempt,
                result: old,
            });
        }
        Ok(())
    }

    /// Keeps a chunk of live output.
    pub fn output(&mut self, chunk: NewChunk) {
        self.output.push(chunk);
    }

    /// Notes whether `workflow` is paused, as read under its lock.
    pub fn note_paused(&mut self, workflow: WorkflowId, paused: bool) {
        self.paused.insert(workflow, paused);
    }

    /// Whether `workflow` is paused, if this unit of work was told.
    pub fn paused(&self, workflow: WorkflowId) -> Option<bool> {
        self.paused.get(&workflow).copied()
    }

    /// Appends a workflow-level event (`cancelled`, `paused`, `resumed`).
    pub fn workflow_event(&mut self, workflow: WorkflowId, state: &'static str) {
        self.events.push(NewEvent::Workflow {
            workflow_id: workflow,
            state,
        });
    }

    /// Inserts a new workflow (before its tasks).
    pub fn create_workflow(&mut self, workflow: Workflow) {
        self.note_paused(workflow.id, workflow.paused);
        self.new_workflows.push(workflow);
    }

    /// Writes a changed workflow's row.
    pub fn change_workflow(&mut self, workflow: Workflow) {
        self.note_paused(workflow.id, workflow.paused);
        self.changed_workflows.push(workflow);
    }

    /// Adds dependency edges `(task, dependency)`.
    pub fn add_edges(&mut self, edges: impl IntoIterator<Item = (TaskId, TaskId)>) {
        self.edges.extend(edges);
    }

    /// Replaces the dependencies of `task` with `deps`.
    pub fn replace_edges(&mut self, task: TaskId, deps: &[TaskId]) {
        self.cleared.push(task);
        self.edges.extend(deps.iter().map(|&d| (task, d)));
    }

    /// Deletes a task once everything is written.
    pub fn delete_task(&mut self, task: TaskId) {
        self.deleted_tasks.push(task);
    }

    /// Deletes a workflow with its tasks once everything is written.
    pub fn delete_workflow(&mut self, workflow: WorkflowId) {
        self.deleted_workflows.push(workflow);
    }

    /// Writes everything, in the order the tables' keys need: new
    /// workflows, dropped messages and cleared edges, then the task rows,
    /// events and messages together (with the notifications of the tasks
    /// that ended, and of the workflows that ended with them), then edges,
    /// changed workflows and deletions.
    ///
    /// # Errors
    /// A database failure, or a duplicate task name
    /// (see [`StoreError::is_unique_violation`]).
    pub async fn write(
        self,
        tx: &mut WriteTx,
        publishing: &Publishing,
        now: i64,
    ) -> Result<Written, StoreError> {
        for w in &self.new_workflows {
            tx.insert_workflow(w).await?;
        }
        if !self.dropped.is_empty() {
            tx.drop_task_messages(&self.dropped).await?;
        }
        if !self.cleared.is_empty() {
            tx.clear_dependencies(&self.cleared).await?;
        }
        let lease = |at: i64| match publishing.handoff_lease {
            Some(lease) if at <= now => lease,
            _ => 0,
        };
        let mut messages: Vec<NewMessage> = Vec::with_capacity(self.messages.len());
        for &(kind, id, attempt, at) in &self.messages {
            if let Some(t) = self.tasks.get(&id) {
                messages.push(message(kind, t, attempt, at, lease(at)));
            } else {
                return Err(StoreError::Corrupt(format!(
                    "a message about task {id}, which this unit of work does not hold"
                )));
            }
        }
        let dispatched_in: HashSet<WorkflowId> = self
            .messages
            .iter()
            .filter(|m| m.0 == OutboxKind::Task)
            .filter_map(|m| self.tasks.get(&m.1).map(|t| t.workflow_id))
            .collect();
        if publishing.notifications {
            for id in &self.ended {
                if let Some(t) = self.tasks.get(id) {
                    messages.push(message(OutboxKind::TaskEnd, t, t.attempt, now, lease(now)));
                }
            }
        }
        let (rows, lived): (Vec<&Task>, Vec<&Task>) = self
            .order
            .iter()
            .filter_map(|id| self.tasks.get(id))
            .partition(|t| self.whole.contains(&t.id));
        let queued = tx
            .write(&rows, &lived, &self.events, &messages, now)
            .await?;
        if !self.archived.is_empty() {
            tx.insert_attempts(&self.archived, now).await?;
        }
        if !self.output.is_empty() {
            tx.insert_output(&self.output).await?;
        }
        let mut written = Written {
            entered: self
                .events
                .iter()
                .filter_map(|e| match e {
                    NewEvent::Task { state, .. } => Some(*state),
                    NewEvent::Workflow { .. } => None,
                })
                .collect(),
            ..Written::default()
        };
        written.note(&messages, &queued, &self.tasks, now);
        if publishing.notifications {
            // A workflow whose last unfinished task ended here ends with
            // this commit (one that got a task message here has not).
            let ended_in: BTreeSet<WorkflowId> = self
                .ended
                .iter()
                .filter_map(|id| self.tasks.get(id).map(|t| t.workflow_id))
                .filter(|wf| !dispatched_in.contains(wf))
                .collect();
            for wf in ended_in {
                if !tx.has_open_tasks(wf).await? {
                    let end = NewMessage {
                        kind: OutboxKind::WorkflowEnd,
                        task_id: None,
                        workflow_id: wf,
                        attempt: 0,
                        server_id: String::new(),
                        not_before: now,
                        lease_until: lease(now),
                    };
                    let queued = tx.insert_messages(std::slice::from_ref(&end), now).await?;
                    written.note(std::slice::from_ref(&end), &queued, &self.tasks, now);
                }
            }
        }
        if !self.edges.is_empty() {
            tx.add_dependencies(&self.edges).await?;
        }
        for w in &self.changed_workflows {
            tx.update_workflow(w).await?;
        }
        if !self.deleted_tasks.is_empty() {
            tx.delete_tasks(&self.deleted_tasks).await?;
        }
        for wf in &self.deleted_workflows {
            tx.delete_workflow(*wf).await?;
        }
        Ok(written)
    }
}

/// The event of `task` entering the state it is in now.
fn event_of(task: &Task) -> NewEvent {
    NewEvent::Task {
        workflow_id: task.workflow_id,
        task_id: task.id,
        task_name: task.name.clone(),
        server_id: task.server_id.clone(),
        state: task.state(),
        attempt: task.attempt,
    }
}

fn message(kind: OutboxKind, t: &Task, attempt: i64, at: i64, lease_until: i64) -> NewMessage {
    NewMessage {
        kind,
        task_id: Some(t.id),
        workflow_id: t.workflow_id,
        attempt,
        server_id: t.server_id.clone(),
        not_before: at,
        lease_until,
    }
}

impl Written {
    /// Sorts the queued `messages` (the store gave them `queued` ids) into
    /// those handed to this dispatcher's relay and those left to a sweep.
    fn note(
        &mut self,
        messages: &[NewMessage],
        queued: &[crate::store::Queued],
        tasks: &HashMap<TaskId, Task>,
        now: i64,
    ) {
        let mut by_key: HashMap<(OutboxKind, Option<TaskId>), &NewMessage> = HashMap::new();
        for m in messages {
            if m.lease_until == 0 {
                self.wake_relay = true;
            } else {
                by_key.insert((m.kind, m.task_id), m);
            }
        }
        for q in queued {
            let Some(m) = by_key.get(&(q.kind, q.task_id)) else {
                continue;
            };
            self.handed.push(OutboxItem {
                id: q.id,
                kind: m.kind,
                task_id: m.task_id,
                workflow_id: Some(m.workflow_id),
                attempt: m.attempt,
                server_id: m.server_id.clone(),
                created_at: now,
                task: m.task_id.and_then(|t| tasks.get(&t).cloned()),
            });
        }
    }
}
