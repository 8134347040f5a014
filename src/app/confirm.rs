//! What the relay reports back: messages the broker confirmed (a task's
//! attempt becomes `queued`, the row leaves the outbox), messages to try
//! again later, messages that became moot, and task messages that cannot
//! be rendered (their tasks fail). Each is one transaction under the locks
//! of the workflows the messages are about (a confirm: of those whose task
//! still waits for it).

use tracing::instrument;

use super::release::{fail, walk};
use super::unit::UnitOfWork;
use super::{App, AppError, now_us};
use crate::domain::{TaskId, TaskState};
use crate::store::{OutboxItem, OutboxKind, WriteTx};

impl App {
    /// Records what the broker confirmed: published attempts still waiting
    /// for that confirm become `queued` (a fast worker's report, or a newer
    /// attempt, may have overtaken it), and the rows leave the outbox.
    ///
    /// # Errors
    /// A store failure: the messages stay in the outbox and are sent again.
    #[instrument(skip_all, fields(messages = confirmed.len()))]
    pub async fn confirm_published(&self, confirmed: &[OutboxItem]) -> Result<(), AppError> {
        if confirmed.is_empty() {
            return Ok(());
        }
        let now = now_us();
        let mut tx = self.begin().await?;
        let ids: Vec<i64> = confirmed.iter().map(|i| i.id).collect();
        // Confirmed task messages: (task, attempt).
        let published: Vec<(TaskId, i64)> = confirmed
            .iter()
            .filter(|i| i.kind == OutboxKind::Task)
            .filter_map(|i| i.task_id.map(|t| (t, i.attempt)))
            .collect();
        let mut uow = UnitOfWork::default();
        if !published.is_empty() {
            let tasks: Vec<TaskId> = published.iter().map(|(t, _)| *t).collect();
            // Read before any lock: an attempt no longer waiting for its
            // confirm never waits for it again (attempts only count up, and
            // one taken back was never sent), so only the workflows of the
            // tasks still waiting are locked. A chain's task has mostly
            // ended by the time its confirm is recorded: then nothing is
            // locked, and this transaction never makes a result wait.
            let mut rows: std::collections::HashMap<TaskId, crate::domain::Task> = tx
                .tasks_by_ids(&tasks)
                .await?
                .into_iter()
                .map(|t| (t.id, t))
                .collect();
            let waiting: Vec<TaskId> = published
                .iter()
                .filter(|(id, attempt)| {
                    rows.get(id)
                        .is_some_and(|t| t.state() == TaskState::Waiting && t.attempt == *attempt)
                })
                .map(|(id, _)| *id)
                .collect();
            if !waiting.is_empty() && tx.locks_workflows() {
                tx.lock_workflows_of(&waiting).await?;
                // Read again under the locks: they may have moved on.
                rows.extend(
                    tx.tasks_by_ids(&waiting)
                        .await?
                        .into_iter()
                        .map(|t| (t.id, t)),
                );
            }
            for (id, attempt) in published {
                if let Some(task) = rows.get_mut(&id)
                    && task.confirm_published(attempt, now)?
                {
                    uow.keep(task, true);
                }
            }
        }
        tx.delete_outbox_many(&ids).await?;
        if uow.is_empty() {
            self.commit_plain(tx, false).await?;
        } else {
            self.commit(tx, uow, now).await?;
        }
        Ok(())
    }

    /// Postpones messages whose publish failed; they are tried again at `retry_at`.
    ///
    /// # Errors
    /// A store failure.
    pub async fn postpone(&self, failed: &[OutboxItem], retry_at: i64) -> Result<(), AppError> {
        if failed.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        lock_workflows(&mut tx, failed).await?;
        let ids: Vec<i64> = failed.iter().map(|i| i.id).collect();
        tx.postpone_outbox_many(&ids, retry_at).await?;
        self.commit_plain(tx, false).await?;
        Ok(())
    }

    /// Drops outbox messages that are moot (their task is gone or moved on).
    ///
    /// # Errors
    /// A store failure.
    pub async fn discard(&self, moot: &[OutboxItem]) -> Result<(), AppError> {
        if moot.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        lock_workflows(&mut tx, moot).await?;
        let ids: Vec<i64> = moot.iter().map(|i| i.id).collect();
        tx.delete_outbox_many(&ids).await?;
        self.commit_plain(tx, false).await?;
        Ok(())
    }
}

impl App {
    /// Fails the tasks whose message cannot be rendered (a stored value
    /// that does not parse, a secret that does not open with this
    /// dispatcher's key), each with its reason: an attempt still waiting
    /// for that message ends `failed`, unpublished, with the reason as its
    /// result's `error`, and the release rule walks on from it; the rows
    /// leave the outbox. Never a silent drop that would leave the task
    /// waiting for ever.
    ///
    /// # Errors
    /// A store failure: the rows stay claimed until their lease ends.
    #[instrument(skip_all, fields(messages = items.len()))]
    pub async fn fail_unsendable(&self, items: &[(OutboxItem, String)]) -> Result<(), AppError> {
        if items.is_empty() {
            return Ok(());
        }
        let now = now_us();
        let mut tx = self.begin().await?;
        let rows: Vec<OutboxItem> = items.iter().map(|(i, _)| i.clone()).collect();
        lock_workflows(&mut tx, &rows).await?;
        let ids: Vec<i64> = rows.iter().map(|i| i.id).collect();
        tx.delete_outbox_many(&ids).await?;
        let task_ids: Vec<TaskId> = rows.iter().filter_map(|i| i.task_id).collect();
        let mut tasks: std::collections::HashMap<TaskId, crate::domain::Task> = tx
            .tasks_by_ids(&task_ids)
            .await?
            .into_iter()
            .map(|t| (t.id, t))
            .collect();
        let mut uow = UnitOfWork::default();
        let mut ended = Vec::new();
        for (item, why) in items {
            let Some(task) = item.task_id.and_then(|id| tasks.remove(&id)) else {
                continue;
            };
            if task.state() != TaskState::Waiting || task.attempt != item.attempt {
                continue;
            }
            ended.push(task.id);
            fail(&mut uow, task, why.clone(), now)?;
        }
        walk(&mut tx, &mut uow, &self.config, ended, now).await?;
        if uow.is_empty() {
            self.commit_plain(tx, false).await?;
        } else {
            self.commit(tx, uow, now).await?;
        }
        Ok(())
    }
}

/// Locks the workflows of the tasks outbox rows name. Transactions that
/// change a workflow's tasks also change their outbox rows, under the
/// workflow's lock: taking it first here too keeps every lock in one order.
async fn lock_workflows(tx: &mut WriteTx, items: &[OutboxItem]) -> Result<(), AppError> {
    let tasks: Vec<TaskId> = items.iter().filter_map(|i| i.task_id).collect();
    Ok(tx.lock_workflows_of(&tasks).await?)
}
