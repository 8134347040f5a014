//! The write of a unit of work: changed task rows, the events they owe and
//! the messages they cause, across three tables, in one call to the
//! database when they fit. On PostgreSQL, where each statement is a round
//! trip to the server, that is one statement (the rows and events as
//! data-modifying `WITH` parts of the last insert). On SQLite, where each
//! call is a hand-off to sqlx's worker thread and back (measured: about
//! 80 µs each on a chain link, more than the statements take), it is the
//! statements one after the other in one call. Larger writes take a
//! statement per table and chunk.

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
        let parts = [
            !rows.is_empty(),
            !lived.is_empty(),
            !events.is_empty(),
            !messages.is_empty(),
        ]
        .iter()
        .filter(|p| **p)
        .count();
        if parts == 0 {
            return Ok(Vec::new());
        }
        let fits = rows.len() <= MAX_PARAMS / tasks::COLS
            && lived.len() <= MAX_PARAMS / (tasks::LIFE_COLS + 1)
            && events.len() <= MAX_PARAMS / events::COLS
            && messages.len() <= MAX_PARAMS / outbox::COLS;
        // A chain link's shape (two rows, an event, two messages) and other
        // small ones are prepared once.
        let small = rows.len() <= SMALL
            && lived.len() <= SMALL
            && events.len() <= SMALL
            && messages.len() <= SMALL;
        let one_call = fits
            && match self.backend {
                Backend::Sqlite => lived.len() <= SQLITE_ONE_CALL,
                // One statement is worth its `WITH` only for two parts or more.
                Backend::Postgres => parts >= 2,
            };
        if !one_call {
            return self.write_each(rows, lived, events, messages, now).await;
        }
        let mut p = Params::new(self.backend);
        let sql = match self.backend {
            Backend::Sqlite => in_turn(&mut p, rows, lived, events, messages),
            Backend::Postgres => one_statement(&mut p, rows, lived, events, messages),
        };
        let mut q = statement(sql, small);
        for t in rows {
            q = tasks::bind(q, t);
        }
        for t in lived {
            q = match self.backend {
                Backend::Sqlite => tasks::bind_life_id_last(q, t),
                Backend::Postgres => tasks::bind_life(q, t),
            };
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

    /// [`WriteTx::write`] a statement per table and chunk (per row for
    /// SQLite's lived rows).
    async fn write_each(
        &mut self,
        rows: &[&Task],
        lived: &[&Task],
        events: &[NewEvent],
        messages: &[NewMessage],
        now: i64,
    ) -> Result<Vec<Queued>, StoreError> {
        if !rows.is_empty() {
            self.write_tasks(rows).await?;
        }
        if !lived.is_empty() {
            self.update_lives(lived).await?;
        }
        if !events.is_empty() {
            self.insert_events(events, now).await?;
        }
        if messages.is_empty() {
            Ok(Vec::new())
        } else {
            self.insert_messages(messages, now).await
        }
    }
}

/// Most lived rows SQLite writes in one call: each is its own `UPDATE` in
/// the call's text, parsed anew unless the shape is cached; past this a
/// prepared statement per row costs less.
const SQLITE_ONE_CALL: usize = 64;

/// The write as one statement (PostgreSQL): the last non-empty part is the
/// main statement, the others `WITH` parts before it, numbered in binding
/// order (the update of lived rows reads its values from a `WITH` part of
/// its own).
fn one_statement(
    p: &mut Params,
    rows: &[&Task],
    lived: &[&Task],
    events: &[NewEvent],
    messages: &[NewMessage],
) -> String {
    // (alias, statement) of each non-empty part, in binding order.
    let mut with: Vec<String> = Vec::new();
    let mut parts: Vec<(&str, String)> = Vec::new();
    if !rows.is_empty() {
        let values = p.values(rows.len(), tasks::COLS);
        parts.push(("t", format!("{}{values}{}", tasks::INSERT, tasks::UPSERT)));
    }
    if !lived.is_empty() {
        let (values, update) = tasks::update_life_many(p, lived.len());
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
    if with.is_empty() {
        main
    } else {
        format!("WITH {} {main}", with.join(", "))
    }
}

/// The write as statements one after the other in one call (SQLite), each
/// binding the next values (`?` placeholders), a lived row's update each;
/// the messages' insert last (its `RETURNING` rows are the only rows).
fn in_turn(
    p: &mut Params,
    rows: &[&Task],
    lived: &[&Task],
    events: &[NewEvent],
    messages: &[NewMessage],
) -> String {
    let mut sql: Vec<String> = Vec::with_capacity(lived.len() + 3);
    if !rows.is_empty() {
        let values = p.values(rows.len(), tasks::COLS);
        sql.push(format!("{}{values}{}", tasks::INSERT, tasks::UPSERT));
    }
    sql.extend(lived.iter().map(|_| tasks::update_life_one().to_owned()));
    if !events.is_empty() {
        let values = p.values(events.len(), events::COLS);
        sql.push(format!("{}{values}", events::INSERT));
    }
    if !messages.is_empty() {
        let values = p.values(messages.len(), outbox::COLS);
        sql.push(format!("{}{values}{}", outbox::INSERT, outbox::RETURNING));
    }
    sql.join("; ")
}
