//! The state side of server registration: a registered server's row (its
//! kind), and forgetting a revoked server, whose unfinished tasks are
//! cancelled and their dependents released. The broker side (users,
//! permissions, queues) is `registration`'s.

use tracing::instrument;

use super::cancel::cancel;
use super::release::walk;
use super::unit::UnitOfWork;
use super::{App, AppError, now_us};
use crate::domain::{ServerId, ServerKind, TaskId};

impl App {
    /// Marks a server registered (its broker user exists).
    ///
    /// # Errors
    /// A store failure.
    #[instrument(skip_all, fields(server_id = %server))]
    pub async fn register_server(
        &self,
        server: &ServerId,
        kind: ServerKind,
    ) -> Result<(), AppError> {
        let mut tx = self.begin().await?;
        tx.register_server(server.as_str(), kind, now_us()).await?;
        self.commit_plain(tx, false).await?;
        Ok(())
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
