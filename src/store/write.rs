//! The write of a unit of work: changed task rows, the events they owe and
//! the messages they cause, across three tables. On PostgreSQL, where each
//! statement is a round trip to the server, they go as one statement (the
//! rows and events as data-modifying `WITH` parts of the last insert) when
//! they fit; on SQLite, or larger, one statement per table and chunk.

use super::sql::{MAX_PARAMS, Params, SMALL, statement};
use super::{Backend, NewEvent, NewMessage, Queued, StoreError, WriteTx, events, outbox, tasks};
use crate::domain::Task;

impl WriteTx {
    /// Writes `rows` whole (insert or overwrite), appends `events` in order
    /// and queues `messages`, all at `now`; returns the messages' ids.
    ///
    /// # Errors
    /// A database failure, or a duplicate task name
    /// (see [`StoreError::is_unique_violation`]).
    pub async fn write(
        &mut self,
        rows: &[&Task],
        events: &[NewEvent],
        messages: &[NewMessage],
        now: i64,
    ) -> Result<Vec<Queued>, StoreError> {
        let parts = [!rows.is_empty(), !events.is_empty(), !messages.is_empty()];
        let fits = rows.len() <= MAX_PARAMS / tasks::COLS
            && events.len() <= MAX_PARAMS / events::COLS
            && messages.len() <= MAX_PARAMS / outbox::COLS;
        if self.backend == Backend::Sqlite || !fits || parts.iter().filter(|p| **p).count() < 2 {
            if !rows.is_empty() {
                self.write_tasks(rows).await?;
            }
            if !events.is_empty() {
                self.insert_events(events, now).await?;
            }
            return if messages.is_empty() {
                Ok(Vec::new())
            } else {
                self.insert_messages(messages, now).await
            };
        }
        // One statement: the last non-empty part is the main statement, the
        // others are `WITH` parts before it, bound in the same order.
        let mut p = Params::new(self.backend);
        let mut with = Vec::new();
        let mut main = String::new();
        let mut push = |part: String, alias: &str, is_last: bool| {
            if is_last {
                main = part;
            } else {
                with.push(format!("{alias} AS ({part})"));
            }
        };
        let last = if !messages.is_empty() {
            2
        } else if !events.is_empty() {
            1
        } else {
            0
        };
        if !rows.is_empty() {
            let values = p.values(rows.len(), tasks::COLS);
            push(
                format!("{}{values}{}", tasks::INSERT, tasks::UPSERT),
                "t",
                last == 0,
            );
        }
        if !events.is_empty() {
            let values = p.values(events.len(), events::COLS);
            push(format!("{}{values}", events::INSERT), "e", last == 1);
        }
        if !messages.is_empty() {
            let values = p.values(messages.len(), outbox::COLS);
            push(
                format!("{}{values}{}", outbox::INSERT, outbox::RETURNING),
                "o",
                last == 2,
            );
        }
        let sql = if with.is_empty() {
            main
        } else {
            format!("WITH {} {main}", with.join(", "))
        };
        // A chain link's shape (two rows, an event, two messages) and other
        // small ones are prepared once.
        let small = rows.len() <= SMALL && events.len() <= SMALL && messages.len() <= SMALL;
        let mut q = statement(sql, small);
        for t in rows {
            q = tasks::bind(q, t);
        }
        for e in events {
            q = events::bind(q, e, now);
        }
        for m in messages {
            q = outbox::bind(q, m, now);
        }
        let returned = q.fetch_all(&mut *self.tx).await?;
        outbox::queued(&returned)
    }
}
