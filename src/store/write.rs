//! The write of a unit of work: changed task rows, the events they owe and
//! the messages they cause, across three tables. On PostgreSQL, where each
//! statement is a round trip to the server, they go as one statement (the
//! rows and events as data-modifying `WITH` parts of the last insert) when
//! they fit; on SQLite, or larger, one statement per table and chunk.

use super::sql::{MAX_PARAMS, Params, SMALL, statement};
use super::{Backend, NewEvent, NewMessage, Queued, StoreError, WriteTx, events, outbox, tasks};
use crate::domain::Task;

impl WriteTx {
    /// Writes `rows` whole (insert or overwrite) and what the lives of
    /// `lived` changed (existing rows: see [`WriteTx::update_lives`]),
    /// appends `events` in order and queues `messages`, all at `now`;
    /// returns the messages' ids.
    ///
    /// # Errors
    /// A database failure, or a duplicate task name
    /// (see [`StoreError::is_unique_violation`]).
    pub async fn write(
        &mut self,
        rows: &[&Task],
        lived: &[&Task],
        events: &[NewEvent],
        messages: &[NewMessage],
        now: i64,
    ) -> Result<Vec<Queued>, StoreError> {
        let nonempty = [
            !rows.is_empty(),
            !lived.is_empty(),
            !events.is_empty(),
            !messages.is_empty(),
        ];
        let fits = rows.len() <= MAX_PARAMS / tasks::COLS
            && lived.len() <= MAX_PARAMS / (tasks::LIFE_COLS + 1)
            && events.len() <= MAX_PARAMS / events::COLS
            && messages.len() <= MAX_PARAMS / outbox::COLS;
        if self.backend == Backend::Sqlite || !fits || nonempty.iter().filter(|p| **p).count() < 2 {
            if !rows.is_empty() {
                self.write_tasks(rows).await?;
            }
            if !lived.is_empty() {
                self.update_lives(lived).await?;
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
        // others are `WITH` parts before it, numbered in binding order.
        let mut p = Params::new(self.backend);
        // (alias, statement) of each non-empty part, in binding order; the
        // update of lived rows reads its values from a `WITH` part of its own.
        let mut with: Vec<String> = Vec::new();
        let mut parts: Vec<(&str, String)> = Vec::new();
        if !rows.is_empty() {
            let values = p.values(rows.len(), tasks::COLS);
            parts.push(("t", format!("{}{values}{}", tasks::INSERT, tasks::UPSERT)));
        }
        if !lived.is_empty() {
            let (values, update) = tasks::update_life_many(&mut p, lived.len());
            with.push(values);
            parts.push(("l", update));
        }
        if !events.is_empty() {
            let values = p.values(events.len(), events::COLS);
            parts.push(("e", format!("{}{values}", events::INSERT)));
        }
        if !messages.is_empty() {
            let values = p.values(messages.len(), outbox::COLS);
            parts.push((
                "o",
                format!("{}{values}{}", outbox::INSERT, outbox::RETURNING),
            ));
        }
        let main = parts.pop().map(|(_, part)| part).unwrap_or_default();
        with.extend(
            parts
                .into_iter()
                .map(|(alias, part)| format!("{alias} AS ({part})")),
        );
        let sql = if with.is_empty() {
            main
        } else {
            format!("WITH {} {main}", with.join(", "))
        };
        // A chain link's shape (two rows, an event, two messages) and other
        // small ones are prepared once.
        let small = rows.len() <= SMALL
            && lived.len() <= SMALL
            && events.len() <= SMALL
            && messages.len() <= SMALL;
        let mut q = statement(sql, small);
        for t in rows {
            q = tasks::bind(q, t);
        }
        for t in lived {
            q = tasks::bind_life(q, t);
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
