//! The task entity: a task as bora holds it, and the one writer of its
//! state. Every state move goes through [`Task`]'s methods, each of which
//! checks [`TaskState::check_transition`] first; `state` is private, so no
//! other code can assign it. The methods say whether the task moved (an
//! event is due); what to do about it (events, messages, the release of
//! dependents) is the use case's.

use serde_json::{Map, Value};

use super::secret;
use super::target::{Target, TargetMode, child_name};
use super::{
    APPROVAL_GROUP, Delivery, IllegalTransition, OnDependencyFailure, OutputSpec, ServerId, TaskId,
    TaskSpec, TaskState, WorkflowId,
};

/// How an attempt ended unsuccessfully, as the retry policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The task itself failed, with this exit code (-1 when no process ran).
    Exit(i64),
    /// No result within `timeout_s`, or the worker killed it then.
    TimedOut,
    /// Its worker went silent.
    Lost,
}

/// A stored value of a task that does not parse (the store was written by
/// something else, or by hand).
#[derive(Debug, Clone, thiserror::Error)]
#[error("corrupt task data: {0}")]
pub struct Corrupt(pub String);

fn json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T, Corrupt> {
    serde_json::from_str(s).map_err(|e| Corrupt(format!("{what}: {e}")))
}

/// A task. JSON fields stay text (as stored) and are parsed only where a
/// value is needed: most moves never look at them.
#[derive(Debug, Clone)]
pub struct Task {
    /// Never changes.
    pub id: TaskId,
    /// Never changes.
    pub workflow_id: WorkflowId,
    /// Unique in its workflow.
    pub name: String,
    /// The target server's id (validated when the spec was); empty for an
    /// approval gate, a group task, and an `any` task before its release.
    pub server_id: String,
    /// The servers it targets by label, and once released those matched.
    pub target: Option<Target>,
    /// For a group's child, the group task.
    pub parent_id: Option<TaskId>,
    /// The runner or hook that runs it.
    pub group: String,
    /// The script or hook configuration.
    pub config: String,
    /// JSON object text, as the client wrote it (references included).
    pub inputs: String,
    /// JSON object text: what each input reference resolved to when the
    /// task was released (`NAME -> {"value", "from"}`); `None` before.
    pub resolved_inputs: Option<String>,
    /// JSON list text of [`OutputSpec`].
    pub outputs: String,
    /// JSON object text.
    pub options: String,
    /// What it does when a dependency ends unsuccessfully.
    pub on_dependency_failure: OnDependencyFailure,
    /// Seconds an attempt may run.
    pub timeout_s: i64,
    /// Attempts after a failure.
    pub retries: i64,
    /// Seconds before the first retry.
    pub retry_delay_s: i64,
    /// Factor by which each retry's delay grows.
    pub retry_backoff: f64,
    /// The longest delay before a retry, in seconds.
    pub retry_max_delay_s: i64,
    /// When set, the exit codes whose failures are retried.
    pub retry_exit_codes: Option<Vec<i64>>,
    /// Whether a lost attempt may run again.
    pub delivery: Delivery,
    /// Private: only this entity's methods move it.
    state: TaskState,
    /// Whether its current attempt was handed out (to the outbox, or to a
    /// person for a gate). A `waiting` task that is not released waits for
    /// the release rule: its dependencies, a resume, a rerun.
    released: bool,
    /// When the next attempt's message is due, while a retry waits for its
    /// delay (microseconds since the epoch).
    pub next_attempt_at: Option<i64>,
    /// 0 until its first attempt goes out; the current attempt after.
    pub attempt: i64,
    /// Failed attempts retried so far (against `retries`).
    pub failures: i64,
    /// Attempts sent again after a lost worker (against `max_redeliveries`).
    pub redeliveries: i64,
    /// JSON text of the last result.
    pub result: Option<String>,
    /// Times in microseconds since the epoch.
    pub created_at: i64,
    /// When the broker confirmed the current attempt (or it reported first).
    pub queued_at: Option<i64>,
    /// When the current attempt reported that it started.
    pub started_at: Option<i64>,
    /// When it reached a terminal state.
    pub finished_at: Option<i64>,
    /// The current attempt's last heartbeat.
    pub last_heartbeat_at: Option<i64>,
    /// The last change of any field.
    pub updated_at: i64,
}

impl Task {
    /// A new task for a validated spec: `waiting`, attempt 0.
    pub fn new(workflow_id: WorkflowId, spec: &TaskSpec, now: i64) -> Self {
        let mut task = Self::restored(spec.id, workflow_id, TaskState::Waiting);
        task.created_at = now;
        task.updated_at = now;
        task.set_spec(spec);
        task
    }

    /// A task in `state` with every other field empty, for the store's
    /// decoding to fill in. Not a move: it restores what was stored.
    pub fn restored(id: TaskId, workflow_id: WorkflowId, state: TaskState) -> Self {
        Self {
            id,
            workflow_id,
            name: String::new(),
            server_id: String::new(),
            target: None,
            parent_id: None,
            group: String::new(),
            config: String::new(),
            inputs: "{}".into(),
            resolved_inputs: None,
            outputs: "[]".into(),
            options: "{}".into(),
            on_dependency_failure: OnDependencyFailure::default(),
            timeout_s: 0,
            retries: 0,
            retry_delay_s: 0,
            retry_backoff: 1.0,
            retry_max_delay_s: i64::from(super::DEFAULT_RETRY_MAX_DELAY_S),
            retry_exit_codes: None,
            delivery: Delivery::default(),
            state,
            released: state != TaskState::Waiting,
            next_attempt_at: None,
            attempt: 0,
            failures: 0,
            redeliveries: 0,
            result: None,
            created_at: 0,
            queued_at: None,
            started_at: None,
            finished_at: None,
            last_heartbeat_at: None,
            updated_at: 0,
        }
    }

    /// Where the task is in its life.
    pub fn state(&self) -> TaskState {
        self.state
    }

    /// Whether the current attempt was handed out (see the field).
    pub fn released(&self) -> bool {
        self.released
    }

    /// Restores the stored `released` flag (the store's decoding only).
    pub fn restore_released(&mut self, released: bool) {
        self.released = released;
    }

    /// Whether the task waits for the release rule (its first attempt, or
    /// the next after a rerun or a pause, has not gone out): the only tasks
    /// the release rule decides about.
    pub fn awaits_release(&self) -> bool {
        self.state == TaskState::Waiting && !self.released
    }

    /// Whether it is an approval gate: no server, ended by a person.
    pub fn is_gate(&self) -> bool {
        self.group == APPROVAL_GROUP
    }

    /// Whether it is a group task (`target` with mode `all`): it runs
    /// nowhere itself; its children, one per matched server, do.
    pub fn is_group(&self) -> bool {
        self.target
            .as_ref()
            .is_some_and(|t| t.mode == TargetMode::All)
    }

    /// Whether it runs nowhere itself: an approval gate or a group. Such a
    /// task goes to `running` at release with no message, and no worker
    /// can report on it.
    pub fn runs_nowhere(&self) -> bool {
        self.is_gate() || self.is_group()
    }

    /// The child of group task `group` on `server` (a new task, `waiting`
    /// for the group to release it): the group's spec on one server, with
    /// the group's resolved inputs.
    pub fn child(group: &Task, id: TaskId, server: &str, now: i64) -> Self {
        let mut child = group.clone();
        child.id = id;
        child.name = child_name(&group.name, server);
        child.server_id = server.to_owned();
        child.target = None;
        child.parent_id = Some(group.id);
        child.state = TaskState::Waiting;
        child.released = false;
        child.attempt = 0;
        child.failures = 0;
        child.redeliveries = 0;
        child.result = None;
        child.next_attempt_at = None;
        child.created_at = now;
        child.queued_at = None;
        child.started_at = None;
        child.finished_at = None;
        child.last_heartbeat_at = None;
        child.updated_at = now;
        child
    }

    /// The delay before the next attempt (µs) if the retry policy retries
    /// `failure` now, else `None`: `retries` left, and for a task's own
    /// failure an exit code in `retry_exit_codes` when that is set. The
    /// delay before attempt n+1 is `min(retry_delay_s × retry_backoff^(n−1),
    /// retry_max_delay_s)`, times `1 + jitter` (the caller draws `jitter`
    /// from ±0.1). An approval gate is never retried.
    pub fn retry_delay_us(&self, failure: Failure, jitter: f64) -> Option<i64> {
        if self.failures >= self.retries || self.is_gate() {
            return None;
        }
        if let (Failure::Exit(code), Some(codes)) = (failure, &self.retry_exit_codes)
            && !codes.contains(&code)
        {
            return None;
        }
        let n = (self.failures + 1) as i32;
        let base = self.retry_delay_s as f64 * self.retry_backoff.powi(n - 1);
        let capped = base.min(self.retry_max_delay_s as f64);
        Some((capped * (1.0 + jitter.clamp(-0.1, 0.1)) * 1e6).max(0.0) as i64)
    }

    /// The one assignment of `state`.
    fn move_to(&mut self, to: TaskState, now: i64) -> Result<(), IllegalTransition> {
        self.state.check_transition(to)?;
        self.state = to;
        self.updated_at = now;
        Ok(())
    }

    /// Hands out the next attempt: the first one at release, another after
    /// a failure or a lost worker. The task is `waiting` until the broker
    /// confirms the publish. Returns whether the state moved (back to
    /// `waiting`).
    ///
    /// # Errors
    /// The task has ended.
    pub fn dispatch(&mut self, now: i64) -> Result<bool, IllegalTransition> {
        let moved = self.state != TaskState::Waiting;
        if moved {
            self.move_to(TaskState::Waiting, now)?;
        }
        self.attempt += 1;
        self.released = true;
        self.next_attempt_at = None;
        self.queued_at = None;
        self.started_at = None;
        self.last_heartbeat_at = None;
        self.updated_at = now;
        Ok(moved)
    }

    /// [`Task::dispatch`] with the message due at `at`: a retry after its
    /// delay shows when it is due (`next_attempt_at`).
    ///
    /// # Errors
    /// The task has ended.
    pub fn dispatch_at(&mut self, now: i64, at: i64) -> Result<bool, IllegalTransition> {
        let moved = self.dispatch(now)?;
        self.next_attempt_at = (at > now).then_some(at);
        Ok(moved)
    }

    /// Takes back a dispatched attempt whose message has not left (a retry
    /// waiting for its delay) when the workflow is paused: the attempt
    /// number is given back, and the task waits for the release rule again
    /// (a resume dispatches it, at `next_attempt_at` at the earliest).
    /// Returns whether it was taken back: only a `waiting`, released task
    /// is.
    pub fn withdraw(&mut self, now: i64) -> bool {
        if self.state != TaskState::Waiting || !self.released || self.attempt == 0 {
            return false;
        }
        self.attempt -= 1;
        self.released = false;
        self.updated_at = now;
        true
    }

    /// Holds the next attempt instead of dispatching it, while the
    /// workflow is paused: the task waits for the release rule again (a
    /// resume dispatches it). Returns whether the state moved.
    ///
    /// # Errors
    /// The task has ended.
    pub fn hold(&mut self, now: i64) -> Result<bool, IllegalTransition> {
        let moved = self.state != TaskState::Waiting;
        if moved {
            self.move_to(TaskState::Waiting, now)?;
        }
        self.released = false;
        self.updated_at = now;
        Ok(moved)
    }

    /// Runs an unsuccessfully ended task again (SPEC 7.3): back to
    /// `waiting` for the release rule, with its retry budget renewed; the
    /// attempts go on counting up and the last result stays until the next
    /// comes.
    ///
    /// # Errors
    /// The task has not ended, or it succeeded.
    pub fn rerun(&mut self, now: i64) -> Result<(), IllegalTransition> {
        self.state.check_rerun()?;
        if let Some(t) = &mut self.target
            && t.mode == TargetMode::Any
        {
            // Chosen again at its release.
            self.server_id.clear();
            t.servers = None;
        }
        self.state = TaskState::Waiting;
        self.released = false;
        self.failures = 0;
        self.redeliveries = 0;
        self.next_attempt_at = None;
        self.queued_at = None;
        self.started_at = None;
        self.finished_at = None;
        self.last_heartbeat_at = None;
        self.updated_at = now;
        Ok(())
    }

    /// A dependency ended in a way its policy does not accept.
    ///
    /// # Errors
    /// The task is not `waiting`.
    pub fn skip(&mut self, now: i64) -> Result<(), IllegalTransition> {
        self.move_to(TaskState::Skipped, now)?;
        self.finished_at = Some(now);
        Ok(())
    }

    /// The broker confirmed the publish of `attempt`: `queued`, if the task
    /// still waits for that attempt's confirm (a fast worker's report, or a
    /// newer attempt, may have overtaken it). Returns whether it moved.
    ///
    /// # Errors
    /// Never in practice: a waiting task may always be queued.
    pub fn confirm_published(&mut self, attempt: i64, now: i64) -> Result<bool, IllegalTransition> {
        if self.state != TaskState::Waiting || self.attempt != attempt {
            return Ok(false);
        }
        self.move_to(TaskState::Queued, now)?;
        self.released = true;
        self.next_attempt_at = None;
        self.queued_at = Some(now);
        Ok(true)
    }

    /// The worker reported that the current attempt runs (a heartbeat).
    /// Returns whether the task moved to `running`.
    ///
    /// # Errors
    /// The task has ended.
    pub fn heartbeat(&mut self, now: i64) -> Result<bool, IllegalTransition> {
        let moved = matches!(self.state, TaskState::Waiting | TaskState::Queued);
        if moved {
            self.move_to(TaskState::Running, now)?;
            self.released = true;
            self.next_attempt_at = None;
            self.queued_at.get_or_insert(now);
            self.started_at = Some(now);
        }
        self.last_heartbeat_at = Some(now);
        self.updated_at = now;
        Ok(moved)
    }

    /// Keeps the current attempt's result (JSON text) and returns the one
    /// it replaced (an earlier attempt's, kept elsewhere by the caller). A
    /// result without a started report (instant runners, oslo servers) sets
    /// the times the report would have.
    #[must_use = "the replaced result is an earlier attempt's, to be kept"]
    pub fn keep_result(&mut self, result: String, now: i64) -> Option<String> {
        let old = self.result.replace(result);
        if self.state != TaskState::Running {
            self.queued_at.get_or_insert(now);
            self.started_at.get_or_insert(now);
        }
        self.updated_at = now;
        old
    }

    /// The task ends in `end` (a terminal state).
    ///
    /// # Errors
    /// The task has ended already, or `end` is not reachable from its state.
    pub fn finish(&mut self, end: TaskState, now: i64) -> Result<(), IllegalTransition> {
        self.move_to(end, now)?;
        self.finished_at = Some(now);
        Ok(())
    }

    /// Overwrites the client-given fields with `spec` (not the id).
    pub fn set_spec(&mut self, spec: &TaskSpec) {
        self.name = spec.name.clone();
        self.server_id = spec
            .server_id
            .as_ref()
            .map_or_else(String::new, |s| s.as_str().to_owned());
        self.target = spec.target.clone();
        self.group = spec.group.clone();
        self.config = spec.config.clone();
        self.inputs = Value::Object(spec.inputs.clone()).to_string();
        self.outputs = serde_json::to_string(&spec.outputs).unwrap_or_else(|_| "[]".into());
        self.options = Value::Object(spec.options.clone()).to_string();
        self.on_dependency_failure = spec.on_dependency_failure;
        self.timeout_s = i64::from(spec.timeout_s);
        self.retries = i64::from(spec.retries);
        self.retry_delay_s = i64::from(spec.retry_delay_s);
        self.retry_backoff = spec.retry_backoff;
        self.retry_max_delay_s = i64::from(spec.retry_max_delay_s);
        self.retry_exit_codes = spec.retry_exit_codes.clone();
        self.delivery = spec.delivery;
    }

    /// # Errors
    /// The stored JSON does not parse.
    pub fn inputs(&self) -> Result<Map<String, Value>, Corrupt> {
        json(&self.inputs, "inputs")
    }

    /// What each input reference resolved to (`NAME -> {"value", "from"}`),
    /// once the task was released.
    ///
    /// # Errors
    /// The stored JSON does not parse.
    pub fn resolved_inputs(&self) -> Result<Option<Map<String, Value>>, Corrupt> {
        self.resolved_inputs
            .as_deref()
            .map(|r| json(r, "resolved_inputs"))
            .transpose()
    }

    /// The inputs a worker receives, still sealed, and the names of the
    /// secret ones: the inputs as written, with every reference replaced by
    /// the value it resolved to. A secret's value here is its sealed value
    /// (a group's output: an object of them), for the relay to open
    /// ([`super::secret::open_value`]); a secret is a kept
    /// `{"secret": <sealed>}` input or a resolved entry flagged `secret`.
    ///
    /// # Errors
    /// The stored JSON does not parse.
    pub fn effective_inputs(&self) -> Result<(Map<String, Value>, Vec<String>), Corrupt> {
        let mut inputs = self.inputs()?;
        let mut secrets = Vec::new();
        if secret::may_hold_sealed(&self.inputs) {
            for (name, value) in inputs.iter_mut() {
                if let Some(sealed) = secret::kept_secret(value) {
                    *value = sealed.clone();
                    secrets.push(name.clone());
                }
            }
        }
        if let Some(resolved) = self.resolved_inputs()? {
            for (name, r) in resolved {
                let (value, is_secret) = match r {
                    Value::Object(mut r) => (
                        r.remove("value").unwrap_or(Value::Null),
                        r.get(secret::SECRET) == Some(&Value::Bool(true)),
                    ),
                    other => (other, false),
                };
                secrets.retain(|s| *s != name);
                if is_secret {
                    secrets.push(name.clone());
                }
                inputs.insert(name, value);
            }
        }
        Ok((inputs, secrets))
    }

    /// # Errors
    /// The stored JSON does not parse.
    pub fn options(&self) -> Result<Map<String, Value>, Corrupt> {
        json(&self.options, "options")
    }

    /// # Errors
    /// The stored JSON does not parse.
    pub fn outputs(&self) -> Result<Vec<OutputSpec>, Corrupt> {
        json(&self.outputs, "outputs")
    }

    /// The target server's id.
    ///
    /// # Errors
    /// The stored id is not a valid server id.
    pub fn server(&self) -> Result<ServerId, Corrupt> {
        ServerId::parse(&self.server_id).map_err(Corrupt)
    }

    /// The spec this task was made from, with `depends_on` as given.
    ///
    /// # Errors
    /// A stored value that does not parse.
    pub fn spec(&self, depends_on: Vec<String>) -> Result<TaskSpec, Corrupt> {
        Ok(TaskSpec {
            id: self.id,
            name: self.name.clone(),
            server_id: if self.server_id.is_empty() || self.target.is_some() {
                None
            } else {
                Some(self.server()?)
            },
            target: self.target.clone(),
            group: self.group.clone(),
            config: self.config.clone(),
            inputs: self.inputs()?,
            outputs: self.outputs()?,
            options: self.options()?,
            depends_on,
            on_dependency_failure: self.on_dependency_failure,
            timeout_s: self.timeout_s as u32,
            retries: self.retries as u32,
            retry_delay_s: self.retry_delay_s as u32,
            retry_backoff: self.retry_backoff,
            retry_max_delay_s: self.retry_max_delay_s as u32,
            retry_exit_codes: self.retry_exit_codes.clone(),
            delivery: self.delivery,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> Task {
        let spec = TaskSpec {
            id: TaskId::new(),
            name: "a".into(),
            server_id: Some(ServerId::parse("s").unwrap()),
            target: None,
            group: "script".into(),
            config: String::new(),
            inputs: Map::new(),
            outputs: Vec::new(),
            options: Map::new(),
            depends_on: Vec::new(),
            on_dependency_failure: OnDependencyFailure::Skip,
            timeout_s: 60,
            retries: 0,
            retry_delay_s: 0,
            retry_backoff: 1.0,
            retry_max_delay_s: 3600,
            retry_exit_codes: None,
            delivery: Delivery::AtLeastOnce,
        };
        Task::new(WorkflowId::new(), &spec, 1)
    }

    #[test]
    fn a_life_from_release_to_success() {
        let mut t = task();
        assert!(t.awaits_release());
        assert!(!t.dispatch(2).unwrap(), "the first attempt is no move");
        assert_eq!((t.state(), t.attempt), (TaskState::Waiting, 1));
        assert!(
            !t.confirm_published(2, 3).unwrap(),
            "another attempt's confirm"
        );
        assert!(t.confirm_published(1, 3).unwrap());
        assert!(t.heartbeat(4).unwrap());
        assert!(!t.heartbeat(5).unwrap(), "already running");
        t.finish(TaskState::Succeeded, 6).unwrap();
        assert_eq!(t.finished_at, Some(6));
        assert!(
            t.finish(TaskState::Failed, 7).is_err(),
            "ended tasks never move"
        );
        assert!(t.dispatch(7).is_err());
    }

    #[test]
    fn a_retry_goes_back_to_waiting() {
        let mut t = task();
        t.dispatch(2).unwrap();
        t.heartbeat(3).unwrap();
        assert!(t.dispatch(4).unwrap(), "running -> waiting is an event");
        assert_eq!(
            (t.state(), t.attempt, t.started_at),
            (TaskState::Waiting, 2, None)
        );
    }

    #[test]
    fn retry_delays_grow_to_their_cap() {
        let mut t = task();
        t.retries = 5;
        t.retry_delay_s = 2;
        t.retry_backoff = 3.0;
        t.retry_max_delay_s = 30;
        let delays: Vec<i64> = (0..5)
            .map(|n| {
                t.failures = n;
                t.retry_delay_us(Failure::Exit(1), 0.0).unwrap()
            })
            .collect();
        assert_eq!(
            delays,
            [2_000_000, 6_000_000, 18_000_000, 30_000_000, 30_000_000]
        );
        t.failures = 0;
        let lo = t.retry_delay_us(Failure::Exit(1), -0.5).unwrap();
        let hi = t.retry_delay_us(Failure::Exit(1), 0.5).unwrap();
        assert_eq!((lo, hi), (1_800_000, 2_200_000), "jitter is within 10 %");
        t.failures = 5;
        assert_eq!(
            t.retry_delay_us(Failure::TimedOut, 0.0),
            None,
            "no retries left"
        );
    }

    #[test]
    fn retry_exit_codes_filter_only_the_tasks_own_failures() {
        let mut t = task();
        t.retries = 1;
        t.retry_exit_codes = Some(vec![75]);
        assert!(t.retry_delay_us(Failure::Exit(75), 0.0).is_some());
        assert!(t.retry_delay_us(Failure::Exit(1), 0.0).is_none());
        assert!(t.retry_delay_us(Failure::TimedOut, 0.0).is_some());
        assert!(t.retry_delay_us(Failure::Lost, 0.0).is_some());
        t.group = APPROVAL_GROUP.into();
        assert!(t.retry_delay_us(Failure::TimedOut, 0.0).is_none(), "gates");
    }

    #[test]
    fn a_rerun_waits_for_release_and_renews_the_retries() {
        let mut t = task();
        t.dispatch(2).unwrap();
        t.failures = 1;
        t.finish(TaskState::Failed, 3).unwrap();
        t.rerun(4).unwrap();
        assert!(t.awaits_release());
        assert_eq!(
            (t.state(), t.attempt, t.failures, t.finished_at),
            (TaskState::Waiting, 1, 0, None)
        );
        t.dispatch(5).unwrap();
        assert_eq!(t.attempt, 2, "attempts count on");
        assert!(t.rerun(6).is_err(), "not ended");
        t.finish(TaskState::Succeeded, 7).unwrap();
        assert!(t.rerun(8).is_err(), "succeeded");
    }

    #[test]
    fn a_withdrawn_attempt_gives_its_number_back() {
        let mut t = task();
        t.dispatch(1).unwrap();
        t.heartbeat(2).unwrap();
        t.dispatch_at(3, 10).unwrap();
        assert_eq!((t.attempt, t.next_attempt_at), (2, Some(10)));
        assert!(!t.awaits_release());
        assert!(t.withdraw(4));
        assert!(t.awaits_release());
        assert_eq!((t.attempt, t.next_attempt_at), (1, Some(10)));
        assert!(!t.withdraw(5), "nothing out to take back");
        t.dispatch(6).unwrap();
        assert!(t.confirm_published(2, 7).unwrap());
        assert!(t.released());
    }

    #[test]
    fn a_held_retry_waits_for_release_again() {
        let mut t = task();
        t.dispatch(1).unwrap();
        t.heartbeat(2).unwrap();
        assert!(t.hold(3).unwrap(), "running -> waiting is an event");
        assert!(t.awaits_release());
        assert_eq!(t.attempt, 1);
    }

    #[test]
    fn only_a_waiting_task_is_skipped() {
        let mut t = task();
        t.dispatch(2).unwrap();
        t.confirm_published(1, 3).unwrap();
        assert!(t.skip(4).is_err());
        let mut t = task();
        t.skip(4).unwrap();
        assert_eq!(t.state(), TaskState::Skipped);
    }
}
