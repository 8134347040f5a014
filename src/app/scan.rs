//! The timeout scan: ends attempts whose worker went silent and attempts
//! past their deadline, so no task stays `queued` or `running` forever on a
//! worker that died after acking. One transaction per scan.

use std::collections::{HashMap, HashSet};

use tracing::{instrument, warn};

use super::group::choose_any;
use super::release::walk;
use super::replies::{Retry, again, end_attempt};
use super::unit::UnitOfWork;
use super::{App, AppError, now_us};
use crate::config::secs_to_us;
use crate::domain::{Delivery, TargetMode, Task, TaskId, TaskState, WorkflowId};
use crate::protocol::TaskResult;

/// What one scan ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanReport {
    /// Attempts whose worker went silent.
    pub lost: usize,
    /// Attempts past their deadline.
    pub expired: usize,
}

impl App {
    /// Ends attempts whose worker went silent for `heartbeat_timeout_s`, and
    /// attempts with no result `timeout_s` (+ `grace_s`) after their publish,
    /// judging both up to `heard_until`: the moment up to which every reply
    /// sent has been recorded (the clock when the consumer keeps up; earlier
    /// while it is behind, so a late heartbeat or result is not a silence).
    ///
    /// # Errors
    /// A store failure (nothing changed; the next scan tries again).
    #[instrument(skip_all)]
    pub async fn scan(
        &self,
        heard_until: i64,
        heartbeat_timeout_s: u64,
        grace_s: u64,
    ) -> Result<ScanReport, AppError> {
        let now = now_us();
        let heard_until = heard_until.min(now);
        let mut report = ScanReport::default();
        let mut tx = self.begin().await?;
        let cutoff = heard_until.saturating_sub(secs_to_us(heartbeat_timeout_s));
        let grace_us = secs_to_us(grace_s);
        let silent = tx.silent_running(cutoff).await?;
        let overdue = tx.overdue(heard_until, grace_us).await?;
        if silent.is_empty() && overdue.is_empty() {
            // Nothing to change: no need to hold the write lock for a commit.
            return Ok(report);
        }
        // Found without locks: lock their workflows, then decide on the rows
        // as they are now (another dispatcher's scan or a late result may
        // have moved them on).
        let ids: Vec<TaskId> = silent.iter().chain(&overdue).map(|t| t.id).collect();
        tx.lock_workflows_of(&ids).await?;
        let current: HashMap<TaskId, Task> = tx
            .tasks_by_ids(&ids)
            .await?
            .into_iter()
            .map(|t| (t.id, t))
            .collect();
        let mut uow = UnitOfWork::default();
        let workflows: Vec<WorkflowId> = current
            .values()
            .map(|t| t.workflow_id)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let paused: HashSet<WorkflowId> =
            tx.paused_workflows(&workflows).await?.into_iter().collect();
        for wf in workflows {
            uow.note_paused(wf, paused.contains(&wf));
        }
        let mut ended = Vec::new();
        for t in silent {
            let Some(task) = current.get(&t.id).cloned() else {
                continue;
            };
            if task.attempt != t.attempt
                || task.state() != TaskState::Running
                || task.last_heartbeat_at.or(task.started_at).unwrap_or(0) >= cutoff
            {
                continue;
            }
            warn!(task_id = %task.id, workflow_id = %task.workflow_id, server_id = %task.server_id, attempt = task.attempt, "worker went silent; attempt lost");
            let held = paused.contains(&task.workflow_id);
            // A task aimed at `any` matching server may go to another.
            let elsewhere = match task.target.as_ref().filter(|t| t.mode == TargetMode::Any) {
                Some(t) => {
                    choose_any(&mut tx, &self.config, &t.labels, Some(&task.server_id), now).await?
                }
                None => None,
            };
            if self.lose(&mut uow, task, heartbeat_timeout_s, held, elsewhere, now)? {
                ended.push(t.id);
            }
            report.lost += 1;
        }
        for t in overdue {
            // A lost attempt above may have moved on already.
            let Some(task) = uow.task(t.id).or_else(|| current.get(&t.id)).cloned() else {
                continue;
            };
            if task.attempt != t.attempt
                || !matches!(task.state(), TaskState::Queued | TaskState::Running)
            {
                continue;
            }
            warn!(task_id = %task.id, workflow_id = %task.workflow_id, server_id = %task.server_id, attempt = task.attempt, "no result within the task's timeout");
            let held = paused.contains(&task.workflow_id);
            if expire(&mut uow, task, held, now)? {
                ended.push(t.id);
            }
            report.expired += 1;
        }
        if report == ScanReport::default() {
            return Ok(report);
        }
        walk(&mut tx, &mut uow, &self.config, ended, now).await?;
        self.commit(tx, uow, now).await?;
        Ok(report)
    }

    /// The worker of the current attempt went silent after acking it. An
    /// `at_least_once` task gets a new attempt (not counted against
    /// `retries`, at most `max_redeliveries` times); an `at_most_once` task
    /// fails with `worker lost`, since running it again could run it twice.
    /// The old attempt is cancelled in case its worker is alive but cut off.
    /// While the workflow is `paused`, the new attempt waits for the
    /// resume. A task aimed at `any` server goes to `elsewhere` if given.
    /// Returns whether the task ended.
    fn lose(
        &self,
        uow: &mut UnitOfWork,
        mut task: Task,
        silence_s: u64,
        paused: bool,
        elsewhere: Option<String>,
        now: i64,
    ) -> Result<bool, AppError> {
        uow.tell_cancel(&task, now);
        let max = i64::from(self.config.max_redeliveries);
        if task.delivery == Delivery::AtLeastOnce && task.redeliveries < max {
            task.redeliveries += 1;
            if let (Some(server), Some(target)) = (elsewhere, &mut task.target) {
                warn!(task_id = %task.id, from = %task.server_id, to = %server, "a task for any matching server goes to another");
                target.servers = Some(vec![server.clone()]);
                task.server_id = server;
            }
            again(uow, task, now, paused, now)?;
            return Ok(false);
        }
        let message = if task.delivery == Delivery::AtMostOnce {
            format!("worker lost: no heartbeat for {silence_s} s (at_most_once: not run again)")
        } else {
            format!(
                "worker lost: no heartbeat for {silence_s} s, after {} redeliveries",
                task.redeliveries
            )
        };
        let result = TaskResult::error(task.attempt as u32, message);
        // An at_most_once attempt may have run: never start it again.
        let retry = match task.delivery {
            Delivery::AtLeastOnce => Retry::Lost,
            Delivery::AtMostOnce => Retry::Never,
        };
        end_attempt(uow, task, &result, retry, paused, now)
    }
}

/// The current attempt got no result within `timeout_s` of its publish: it
/// ends `timed_out` (or is retried while `retries` allow) and its worker is
/// told to stop. Returns whether the task ended.
fn expire(uow: &mut UnitOfWork, task: Task, paused: bool, now: i64) -> Result<bool, AppError> {
    let message = if task.is_gate() {
        format!("timed out: no decision within {} s", task.timeout_s)
    } else {
        uow.tell_cancel(&task, now);
        format!(
            "timed out: no result within {} s of publish",
            task.timeout_s
        )
    };
    let mut result = TaskResult::error(task.attempt as u32, message);
    result.timed_out = true;
    end_attempt(uow, task, &result, Retry::Policy, paused, now)
}
