//! The `task_attempts` table: the results of attempts a later attempt
//! replaced (SPEC 7.3: every attempt's result stays readable). The current
//! attempt's result stays on the task row, so a task that succeeds at once
//! costs nothing here.

use sqlx::Row;

use super::sql::{Params, query};
use super::{Store, StoreError, WriteTx};
use crate::domain::TaskId;

/// A replaced result to keep.
#[derive(Debug, Clone)]
pub struct NewAttempt {
    /// The task it belongs to.
    pub task_id: TaskId,
    /// The attempt it is the result of.
    pub attempt: i64,
    /// The result, JSON text.
    pub result: String,
}

/// A kept result as read back.
#[derive(Debug, Clone)]
pub struct AttemptRow {
    /// The attempt it is the result of.
    pub attempt: i64,
    /// The result, JSON text.
    pub result: String,
    /// When a later attempt replaced it (µs since the epoch).
    pub recorded_at: i64,
}

impl Store {
    /// The replaced results of a task, oldest first.
    ///
    /// # Errors
    /// A database failure.
    pub async fn attempts(&self, task: TaskId) -> Result<Vec<AttemptRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT attempt, result, recorded_at FROM task_attempts WHERE task_id = $1 ORDER BY id",
        )
        .bind(task.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AttemptRow {
                    attempt: r.try_get("attempt")?,
                    result: r.try_get("result")?,
                    recorded_at: r.try_get("recorded_at")?,
                })
            })
            .collect()
    }
}

impl WriteTx {
    /// Keeps replaced results, in order.
    ///
    /// # Errors
    /// A database failure.
    pub async fn insert_attempts(
        &mut self,
        attempts: &[NewAttempt],
        now: i64,
    ) -> Result<(), StoreError> {
        for chunk in attempts.chunks(100) {
            let sql = format!(
                "INSERT INTO task_attempts (task_id, attempt, result, recorded_at) VALUES {}",
                Params::new(self.backend).values(chunk.len(), 4)
            );
            let mut q = query(sql, false, chunk.len());
            for a in chunk {
                q = q
                    .bind(a.task_id.to_string())
                    .bind(a.attempt)
                    .bind(&a.result)
                    .bind(now);
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }
}
