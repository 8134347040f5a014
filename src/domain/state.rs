//! The task state machine and the workflow state derived from it.
//!
//! [`TaskState`] is one closed set whose names the store persists;
//! [`TaskState::check_transition`] is the one rule of legal moves, applied
//! by the task entity ([`super::Task`]), the only writer of a task's state.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::OnDependencyFailure;

/// Where a task is in its life. One closed set; the store persists these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Some dependency is not finished, or the task is handed to the outbox and
    /// the broker has not confirmed it yet.
    Waiting,
    /// Published and confirmed by the broker.
    Queued,
    /// The worker reported that it started.
    Running,
    /// The last attempt's result was a success: exit code 0, no error, no
    /// non-empty `error_output`.
    Succeeded,
    /// The last attempt failed, or its worker was lost, and no new attempt
    /// is allowed.
    Failed,
    /// The last attempt outran its `timeout_s` (the worker killed it, or no
    /// result came in time) and no retry is left.
    TimedOut,
    /// Cancelled through an API (the task, its workflow, or a revoked server).
    Cancelled,
    /// A dependency ended unsuccessfully and `on_dependency_failure` is `skip`.
    Skipped,
}

impl TaskState {
    /// Every state, in the order of a task's life: for counts, metrics and
    /// parsing.
    pub const ALL: [TaskState; 8] = [
        TaskState::Waiting,
        TaskState::Queued,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::TimedOut,
        TaskState::Cancelled,
        TaskState::Skipped,
    ];

    /// The snake_case name the store, the APIs and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Waiting => "waiting",
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::TimedOut => "timed_out",
            TaskState::Cancelled => "cancelled",
            TaskState::Skipped => "skipped",
        }
    }

    /// Whether the task has ended: its state never moves again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded
                | TaskState::Failed
                | TaskState::TimedOut
                | TaskState::Cancelled
                | TaskState::Skipped
        )
    }

    /// Whether a dependent with `policy` may run after its dependency ended in `self`.
    /// `None` while `self` is not terminal.
    pub fn satisfies(self, policy: OnDependencyFailure) -> Option<bool> {
        if !self.is_terminal() {
            return None;
        }
        Some(self == TaskState::Succeeded || policy == OnDependencyFailure::Run)
    }

    /// The one rule of legal state moves.
    ///
    /// A published attempt may report before its confirm is recorded (a fast
    /// worker), so `waiting` may move straight to `running` or an end; `queued`
    /// and `running` go back to `waiting` when a new attempt is scheduled (retry,
    /// lost worker). Terminal states never move.
    ///
    /// # Errors
    /// [`IllegalTransition`] for any other move, including staying in place.
    pub fn check_transition(self, to: TaskState) -> Result<(), IllegalTransition> {
        use TaskState::*;
        let ok = match (self, to) {
            (from, _) if from.is_terminal() => false,
            (Waiting, Queued | Running) => true,
            (Waiting, Succeeded | Failed | TimedOut | Cancelled | Skipped) => true,
            (Queued, Running | Waiting) => true,
            (Queued, Succeeded | Failed | TimedOut | Cancelled) => true,
            (Running, Waiting) => true,
            (Running, Succeeded | Failed | TimedOut | Cancelled) => true,
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(IllegalTransition { from: self, to })
        }
    }
}

impl TaskState {
    /// Whether a task that ended in `self` may run again (SPEC 7.3's
    /// rerun): every end but `succeeded`.
    ///
    /// # Errors
    /// [`IllegalTransition`] (to `waiting`) for a task that has not ended
    /// or that succeeded.
    pub fn check_rerun(self) -> Result<(), IllegalTransition> {
        if self.is_terminal() && self != TaskState::Succeeded {
            Ok(())
        } else {
            Err(IllegalTransition {
                from: self,
                to: TaskState::Waiting,
            })
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown task state {s:?}"))
    }
}

/// A state move [`TaskState::check_transition`] refuses (a bug, or a race
/// the locks should have prevented); nothing is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal task state change from {from} to {to}")]
pub struct IllegalTransition {
    /// The state the task was in.
    pub from: TaskState,
    /// The state it was asked to enter.
    pub to: TaskState,
}

/// Derived from a workflow's tasks (and its cancel flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowState {
    /// It has no tasks.
    Empty,
    /// Some task has not ended.
    Running,
    /// Every task succeeded.
    Succeeded,
    /// Every task ended, and one failed, timed out or was skipped.
    Failed,
    /// Cancelled through the API, or only single-task cancels kept it from
    /// succeeding.
    Cancelled,
}

impl WorkflowState {
    /// The task ends that make a finished workflow `failed` (rather than
    /// `cancelled`) when not all of its tasks succeeded.
    pub const FAILING: [TaskState; 3] =
        [TaskState::Failed, TaskState::TimedOut, TaskState::Skipped];

    /// The snake_case name the APIs and notifications use.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowState::Empty => "empty",
            WorkflowState::Running => "running",
            WorkflowState::Succeeded => "succeeded",
            WorkflowState::Failed => "failed",
            WorkflowState::Cancelled => "cancelled",
        }
    }

    /// The state of a workflow with these task counts.
    ///
    /// `cancelled` when cancelled through the API; otherwise `empty`, `running`
    /// while any task is not terminal, `succeeded` when all succeeded, `failed`
    /// when any failed, timed out or was skipped, and `cancelled` when the only
    /// unsuccessful ends are single-task cancels.
    pub fn derive(cancelled: bool, counts: &TaskCounts) -> Self {
        if cancelled {
            return WorkflowState::Cancelled;
        }
        let total: u64 = counts.0.values().sum();
        let get = |s: TaskState| counts.0.get(&s).copied().unwrap_or(0);
        if total == 0 {
            WorkflowState::Empty
        } else if TaskState::ALL
            .iter()
            .any(|s| !s.is_terminal() && get(*s) > 0)
        {
            WorkflowState::Running
        } else if get(TaskState::Succeeded) == total {
            WorkflowState::Succeeded
        } else if Self::FAILING.iter().any(|s| get(*s) > 0) {
            WorkflowState::Failed
        } else {
            WorkflowState::Cancelled
        }
    }
}

impl FromStr for WorkflowState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            WorkflowState::Empty,
            WorkflowState::Running,
            WorkflowState::Succeeded,
            WorkflowState::Failed,
            WorkflowState::Cancelled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| format!("unknown workflow state {s:?}"))
    }
}

/// Number of tasks per state; every state is present in the JSON form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskCounts(pub BTreeMap<TaskState, u64>);

impl Serialize for TaskCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(TaskState::ALL.len()))?;
        for st in TaskState::ALL {
            m.serialize_entry(st.as_str(), &self.0.get(&st).copied().unwrap_or(0))?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn state_names_round_trip() {
        for st in TaskState::ALL {
            assert_eq!(st.as_str().parse::<TaskState>().unwrap(), st);
            assert_eq!(serde_json::to_value(st).unwrap(), json!(st.as_str()));
        }
        assert!("done".parse::<TaskState>().is_err());
    }

    #[test]
    fn terminal_states_never_move() {
        for from in TaskState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in TaskState::ALL {
                assert!(from.check_transition(to).is_err(), "{from} -> {to}");
            }
        }
        assert!(
            TaskState::Waiting
                .check_transition(TaskState::Queued)
                .is_ok()
        );
        assert!(
            TaskState::Queued
                .check_transition(TaskState::Skipped)
                .is_err()
        );
        assert!(
            TaskState::Running
                .check_transition(TaskState::Queued)
                .is_err()
        );
        assert!(
            TaskState::Running
                .check_transition(TaskState::Running)
                .is_err()
        );
    }

    #[test]
    fn only_unsuccessful_ends_rerun() {
        for st in TaskState::ALL {
            let ok = matches!(
                st,
                TaskState::Failed | TaskState::TimedOut | TaskState::Cancelled | TaskState::Skipped
            );
            assert_eq!(st.check_rerun().is_ok(), ok, "{st}");
        }
    }

    #[test]
    fn dependency_satisfaction() {
        use OnDependencyFailure::*;
        assert_eq!(TaskState::Running.satisfies(Skip), None);
        assert_eq!(TaskState::Succeeded.satisfies(Skip), Some(true));
        assert_eq!(TaskState::Failed.satisfies(Skip), Some(false));
        assert_eq!(TaskState::Skipped.satisfies(Run), Some(true));
        assert_eq!(TaskState::Cancelled.satisfies(Run), Some(true));
    }

    fn counts(pairs: &[(TaskState, u64)]) -> TaskCounts {
        TaskCounts(pairs.iter().copied().collect())
    }

    #[test]
    fn workflow_state_is_derived() {
        use TaskState::*;
        assert_eq!(
            WorkflowState::derive(false, &counts(&[])),
            WorkflowState::Empty
        );
        assert_eq!(
            WorkflowState::derive(false, &counts(&[(Succeeded, 2), (Queued, 1)])),
            WorkflowState::Running
        );
        assert_eq!(
            WorkflowState::derive(false, &counts(&[(Succeeded, 3)])),
            WorkflowState::Succeeded
        );
        assert_eq!(
            WorkflowState::derive(false, &counts(&[(Succeeded, 1), (Skipped, 1)])),
            WorkflowState::Failed
        );
        assert_eq!(
            WorkflowState::derive(false, &counts(&[(Succeeded, 1), (Cancelled, 1)])),
            WorkflowState::Cancelled
        );
        assert_eq!(
            WorkflowState::derive(true, &counts(&[(Succeeded, 1)])),
            WorkflowState::Cancelled
        );
    }

    #[test]
    fn task_counts_list_every_state() {
        let v = serde_json::to_value(counts(&[(TaskState::Failed, 2)])).unwrap();
        assert_eq!(v["failed"], 2);
        assert_eq!(v["waiting"], 0);
        assert_eq!(v.as_object().unwrap().len(), 8);
    }
}
