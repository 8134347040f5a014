//! What the relay reports back: messages the broker confirmed (a task's
//! attempt becomes `queued`, the row leaves the outbox), messages to try
//! again later, and messages that became moot. Each is one transaction
//! under the locks of the workflows the messages are about.

use tracing::instrument;

use super::unit::UnitOfWork;
use super::{App, AppError, now_us};
use crate::domain::TaskId;
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
        lock_workflows(&mut tx, confirmed).await?;
        let ids: Vec<i64> = confirmed.iter().map(|i| i.id).collect();
        tx.delete_outbox_many(&ids).await?;
        // Confirmed task messages: (task, attempt).
        let published: Vec<(TaskId, i64)> = confirmed
            .iter()
            .filter(|i| i.kind == OutboxKind::Task)
            .filter_map(|i| i.task_id.map(|t| (t, i.attempt)))
            .collect();
        let mut uow = UnitOfWork::default();
        if !published.is_empty() {
            let tasks: Vec<TaskId> = published.iter().map(|(t, _)| *t).collect();
            let mut rows: std::collections::HashMap<TaskId, crate::domain::Task> = tx
                .tasks_by_ids(&tasks)
                .await?
                .into_iter()
                .map(|t| (t.id, t))
                .collect();
            for (id, attempt) in published {
                if let Some(task) = rows.get_mut(&id)
                    && task.confirm_published(attempt, now)?
                {
                    uow.keep(task, true);
                }
            }
        }
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

/// Locks the workflows of the tasks outbox rows name. Transactions that
/// change a workflow's tasks also change their outbox rows, under the
/// workflow's lock: taking it first here too keeps every lock in one order.
async fn lock_workflows(tx: &mut WriteTx, items: &[OutboxItem]) -> Result<(), AppError> {
    let tasks: Vec<TaskId> = items.iter().filter_map(|i| i.task_id).collect();
    Ok(tx.lock_workflows_of(&tasks).await?)
}
