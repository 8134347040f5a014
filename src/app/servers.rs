//! The state side of server registration: a registered server's row (its
//! kind and labels), changing its labels, and forgetting a revoked server,
//! whose unfinished tasks are cancelled and their dependents released. The
//! broker side (users, permissions, queues) is `registration`'s. Labels
//! change only here, through the APIs: nothing a worker sends reaches them.

use tracing::instrument;

use super::cancel::cancel;
use super::input::{LabelPatch, label_patch_errors};
use super::release::walk;
use super::unit::UnitOfWork;
use super::{App, AppError, now_us};
use crate::domain::{
    Labels, ServerId, ServerKind, TaskId, check_label_count, field_err, merge_labels,
};
use crate::store::ServerRow;

impl App {
    /// Marks a server registered (its broker user exists), replacing its
    /// labels when `labels` is given (validated by the caller); returns the
    /// labels it carries now.
    ///
    /// # Errors
    /// A store failure.
    #[instrument(skip_all, fields(server_id = %server))]
    pub async fn register_server(
        &self,
        server: &ServerId,
        kind: ServerKind,
        labels: Option<&Labels>,
    ) -> Result<Labels, AppError> {
        let mut tx = self.begin().await?;
        tx.register_server(server.as_str(), kind, labels, now_us())
            .await?;
        let row = tx.server_for_update(server.as_str()).await?;
        self.commit_plain(tx, false).await?;
        Ok(row.map(|r| r.labels).unwrap_or_default())
    }

    /// Changes a registered server's labels by a JSON merge patch (a value
    /// sets a label, `None` removes it) and returns its row as it is now.
    ///
    /// # Errors
    /// `validation_failed` naming every bad key or value, or the count when
    /// more than 32 would remain; not found when the server is not
    /// registered; a store failure.
    #[instrument(skip_all, fields(server_id = %server))]
    pub async fn label_server(
        &self,
        server: &ServerId,
        patch: &LabelPatch,
    ) -> Result<ServerRow, AppError> {
        let errors = label_patch_errors(patch);
        if !errors.is_empty() {
            return Err(AppError::validation(errors));
        }
        let mut tx = self.begin().await?;
        let mut row = tx
            .server_for_update(server.as_str())
            .await?
            .filter(|r| r.registered)
            .ok_or_else(|| AppError::NotFound(format!("server {server} is not registered")))?;
        let before = row.labels.clone();
        merge_labels(&mut row.labels, patch);
        if let Err(e) = check_label_count(row.labels.len()) {
            return Err(AppError::validation(vec![field_err("labels", e)]));
        }
        if row.labels != before {
            tx.set_server_labels(server.as_str(), &row.labels).await?;
            self.commit_plain(tx, false).await?;
            tracing::info!(labels = row.labels.len(), "server labels changed");
        }
        Ok(row)
    }

    /// Forgets a server whose broker user was removed: cancels its unfinished
    /// tasks (their dependents are skipped or released) and deletes its row.
    /// Returns how many tasks were cancelled.
    ///
    /// # Errors
    /// A store failure.
    #[instrument(skip_all, fields(server_id = %server))]
    pub async fn forget_server(&self, server: &ServerId) -> Result<usize, AppError> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let tasks = tx.unfinished_tasks(None, Some(server.as_str())).await?;
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        tx.lock_workflows_of(&ids).await?;
        // Read again under the locks: they may have moved on meanwhile.
        let mut tasks = tx.tasks_by_ids(&ids).await?;
        tasks.sort_unstable_by_key(|t| t.id);
        let mut uow = UnitOfWork::default();
        let mut cancelled = 0;
        for t in tasks {
            // An earlier release in this loop may have skipped it already.
            let task = uow.task(t.id).cloned().unwrap_or(t);
            if task.state().is_terminal() {
                continue;
            }
            let task = cancel(&mut uow, task, now)?;
            walk(&mut tx, &mut uow, &self.config, vec![task.id], now).await?;
            cancelled += 1;
        }
        tx.delete_server(server.as_str()).await?;
        self.commit(tx, uow, now).await?;
        Ok(cancelled)
    }
}
