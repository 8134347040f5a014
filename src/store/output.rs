//! The `task_output` table: live output of running attempts (SPEC 7.5), a
//! row per chunk a worker sent, keyed by (task, attempt, stream, offset) so
//! a chunk sent twice is kept once; its `id` orders every chunk of a task
//! across both streams, for a stream to resume from.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::sql::{Params, query};
use super::{Store, StoreError, WriteTx, parse_id};
use crate::domain::TaskId;

/// A chunk to keep.
#[derive(Debug, Clone)]
pub struct NewChunk {
    /// Its task.
    pub task_id: TaskId,
    /// The attempt that printed it.
    pub attempt: i64,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// Where it starts in its stream, in bytes.
    pub offset: i64,
    /// The text.
    pub data: String,
    /// The stream's cap marker.
    pub truncated: bool,
}

/// A kept chunk.
#[derive(Debug, Clone)]
pub struct ChunkRow {
    /// Its place among the task's chunks.
    pub id: i64,
    /// Its task.
    pub task_id: TaskId,
    /// The attempt that printed it.
    pub attempt: i64,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// Where it starts in its stream, in bytes.
    pub offset: i64,
    /// The text.
    pub data: String,
    /// The stream's cap marker.
    pub truncated: bool,
}

fn decode(row: &AnyRow) -> Result<ChunkRow, StoreError> {
    let task: String = row.try_get("task_id")?;
    Ok(ChunkRow {
        id: row.try_get("id")?,
        task_id: parse_id(&task)?,
        attempt: row.try_get("attempt")?,
        stream: row.try_get("stream")?,
        offset: row.try_get("offset_bytes")?,
        data: row.try_get("data")?,
        truncated: row.try_get::<i64, _>("truncated")? != 0,
    })
}

impl Store {
    /// The chunks of `task`'s `attempt` after chunk `after` (0: from the
    /// first), in the order they were kept, at most `limit`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn output_after(
        &self,
        task: TaskId,
        attempt: i64,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChunkRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, task_id, attempt, stream, offset_bytes, data, truncated FROM task_output \
             WHERE task_id = $1 AND attempt = $2 AND id > $3 ORDER BY id LIMIT $4",
        )
        .bind(task.to_string())
        .bind(attempt)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// The place of the chunk of `task` at (`attempt`, `stream`, `offset`),
    /// if it was kept: what a client resuming after it reads from.
    ///
    /// # Errors
    /// A database failure.
    pub async fn output_chunk_id(
        &self,
        task: TaskId,
        attempt: i64,
        stream: &str,
        offset: i64,
    ) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM task_output WHERE task_id = $1 AND attempt = $2 AND stream = $3 \
             AND offset_bytes = $4",
        )
        .bind(task.to_string())
        .bind(attempt)
        .bind(stream)
        .bind(offset)
        .fetch_optional(&self.pool)
        .await?)
    }
}

impl WriteTx {
    /// Keeps chunks; one already kept (sent again) is left as it is.
    ///
    /// # Errors
    /// A database failure.
    pub async fn insert_output(&mut self, chunks: &[NewChunk]) -> Result<(), StoreError> {
        for chunk in chunks.chunks(100) {
            let sql = format!(
                "INSERT INTO task_output (task_id, attempt, stream, offset_bytes, data, truncated) \
                 VALUES {} ON CONFLICT (task_id, attempt, stream, offset_bytes) DO NOTHING",
                Params::new(self.backend).values(chunk.len(), 6)
            );
            let mut q = query(sql, false, chunk.len());
            for c in chunk {
                q = q
                    .bind(c.task_id.to_string())
                    .bind(c.attempt)
                    .bind(c.stream)
                    .bind(c.offset)
                    .bind(&c.data)
                    .bind(i64::from(c.truncated));
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }
}
