//! Multi-row forms of the [`WriteTx`] primitives, for operations that touch
//! many tasks at once (a batch of new tasks, a relay round of confirms, a
//! batch of replies). With SQLite every statement is a round trip to the
//! connection's worker thread, so one statement per batch instead of one per
//! task is most of what a large batch costs.
//!
//! Placeholders: SQLite gets its anonymous `?`, bound in order: SQLite finds
//! a named `$N` by a linear walk, in its parser and again when sqlx binds it,
//! so a statement with many `$N` costs the square of its parameters
//! (measured: 25,000 took seconds), while `?` costs nothing. PostgreSQL only
//! knows `$N` (and looks it up directly). [`Params`] writes them all.

use std::collections::{BTreeMap, HashMap};

use sqlx::Row;
use sqlx::any::AnyArguments;
use sqlx::query::Query;

use super::rows::parse_id;
use super::{Backend, OutboxItem, OutboxKind, ServerRow, StoreError, TaskRow, WriteTx};
use crate::domain::{TaskId, TaskState, WorkflowId};

/// Most bound parameters per statement (SQLite allows 32766, PostgreSQL 65535).
const MAX_PARAMS: usize = 3_000;
/// Most values in one `IN (...)` list.
pub(super) const MAX_IN: usize = 500;

/// The placeholders of one statement, numbered in binding order.
pub(super) struct Params {
    backend: Backend,
    next: usize,
}

impl Params {
    pub(super) fn new(backend: Backend) -> Self {
        Self { backend, next: 0 }
    }

    /// The next placeholder.
    fn one(&mut self) -> String {
        self.next += 1;
        match self.backend {
            Backend::Sqlite => "?".to_owned(),
            Backend::Postgres => format!("${}", self.next),
        }
    }

    /// `?, ?, ?` (`$1, $2, $3`) for an `IN` list (or a row) of `n` values.
    pub(super) fn list(&mut self, n: usize) -> String {
        (0..n).map(|_| self.one()).collect::<Vec<_>>().join(", ")
    }

    /// `(?, ?), (?, ?)` for `rows` rows of `cols` columns.
    fn values(&mut self, rows: usize, cols: usize) -> String {
        (0..rows)
            .map(|_| format!("({})", self.list(cols)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Chunks this small are common (a reply batch of one in a chain) and few
/// in shape, so they are prepared once and cached like static SQL.
const SMALL: usize = 8;

/// A statement of dynamic shape. Full chunks (one shape per batch kind),
/// small ones and powers of two (every padded `IN` list, see [`InList`])
/// are prepared once and cached by the connection; parsing one again costs
/// as much as running it. Other sizes are not worth a slot.
pub(super) fn query<'q>(
    sql: String,
    full: bool,
    rows: usize,
) -> Query<'q, sqlx::Any, AnyArguments> {
    statement(sql, full || rows <= SMALL || rows.is_power_of_two())
}

/// A statement of dynamic shape, prepared once and cached if `cached`.
fn statement<'q>(sql: String, cached: bool) -> AnyQuery<'q> {
    // Built from fixed text and placeholders only: every value is bound.
    sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(cached)
}

/// The values of one `IN (...)` list, padded to a power of two (at most
/// [`MAX_IN`]) by repeating the last one: a statement with such a list
/// takes ten shapes at most, each prepared once (see [`query`]), where an
/// exact list took one per size and was parsed again each time (a reply
/// batch of 19 tasks: its read cost ~600 µs on SQLite, most of it parsing).
pub(super) struct InList<'a, T> {
    values: &'a [T],
    len: usize,
}

impl<'a, T> InList<'a, T> {
    pub(super) fn new(values: &'a [T]) -> Self {
        let len = values.len().next_power_of_two().min(MAX_IN);
        Self {
            values,
            len: len.max(values.len()),
        }
    }

    /// The placeholders the list needs.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The values to bind, padding included.
    pub(super) fn values(&self) -> impl Iterator<Item = &'a T> + use<'a, T> {
        let pad = self.len - self.values.len();
        self.values
            .iter()
            .chain(self.values.last().into_iter().cycle().take(pad))
    }
}

/// The columns of a task row, in binding order ([`bind_task`]).
const TASK_INSERT: &str = "INSERT INTO tasks (id, workflow_id, name, server_id, task_group, \
     config, inputs, outputs, options, on_dependency_failure, timeout_s, retries, retry_delay_s, \
     delivery, state, attempt, failures, redeliveries, result, created_at, queued_at, \
     started_at, finished_at, last_heartbeat_at, updated_at) VALUES ";
const TASK_COLS: usize = 25;
/// Makes [`TASK_INSERT`] write every column of existing rows.
const TASK_UPSERT: &str = " ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
     server_id = excluded.server_id, task_group = excluded.task_group, \
     config = excluded.config, inputs = excluded.inputs, outputs = excluded.outputs, \
     options = excluded.options, on_dependency_failure = excluded.on_dependency_failure, \
     timeout_s = excluded.timeout_s, retries = excluded.retries, \
     retry_delay_s = excluded.retry_delay_s, delivery = excluded.delivery, \
     state = excluded.state, attempt = excluded.attempt, failures = excluded.failures, \
     redeliveries = excluded.redeliveries, result = excluded.result, \
     queued_at = excluded.queued_at, started_at = excluded.started_at, \
     finished_at = excluded.finished_at, last_heartbeat_at = excluded.last_heartbeat_at, \
     updated_at = excluded.updated_at";
const EVENT_INSERT: &str = "INSERT INTO events (workflow_id, task_id, task_name, server_id, state, attempt, at, kind) VALUES ";
const EVENT_COLS: usize = 7;
const OUTBOX_INSERT: &str = "INSERT INTO outbox (kind, task_id, workflow_id, attempt, server_id, \
     not_before, created_at, lease_until) VALUES ";
const OUTBOX_COLS: usize = 8;
const OUTBOX_RETURNING: &str = " RETURNING id, kind, task_id";

type AnyQuery<'q> = Query<'q, sqlx::Any, AnyArguments>;

/// `(?, ..., 'task'), ...`: the values of `n` task events.
fn event_values(p: &mut Params, n: usize) -> String {
    (0..n)
        .map(|_| format!("({}, 'task')", p.list(EVENT_COLS)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn bind_task<'q>(q: AnyQuery<'q>, t: &'q TaskRow) -> AnyQuery<'q> {
    q.bind(t.id.to_string())
        .bind(t.workflow_id.to_string())
        .bind(&t.name)
        .bind(&t.server_id)
        .bind(&t.group)
        .bind(&t.config)
        .bind(&t.inputs)
        .bind(&t.outputs)
        .bind(&t.options)
        .bind(t.on_dependency_failure.as_str())
        .bind(t.timeout_s)
        .bind(t.retries)
        .bind(t.retry_delay_s)
        .bind(t.delivery.as_str())
        .bind(t.state.as_str())
        .bind(t.attempt)
        .bind(t.failures)
        .bind(t.redeliveries)
        .bind(&t.result)
        .bind(t.created_at)
        .bind(t.queued_at)
        .bind(t.started_at)
        .bind(t.finished_at)
        .bind(t.last_heartbeat_at)
        .bind(t.updated_at)
}

fn bind_event<'q>(q: AnyQuery<'q>, t: &'q TaskRow, now: i64) -> AnyQuery<'q> {
    q.bind(t.workflow_id.to_string())
        .bind(t.id.to_string())
        .bind(&t.name)
        .bind(&t.server_id)
        .bind(t.state.as_str())
        .bind(t.attempt)
        .bind(now)
}

/// The times of a batch of outbox messages.
#[derive(Clone, Copy)]
struct Due {
    not_before: i64,
    now: i64,
    lease: i64,
}

fn bind_message<'q>(q: AnyQuery<'q>, kind: OutboxKind, t: &'q TaskRow, due: Due) -> AnyQuery<'q> {
    q.bind(kind.as_str())
        .bind(t.id.to_string())
        .bind(t.workflow_id.to_string())
        .bind(t.attempt)
        .bind(&t.server_id)
        .bind(due.not_before)
        .bind(due.now)
        .bind(due.lease)
}

impl WriteTx {
    /// Inserts new task rows as they are (state, attempt and all).
    ///
    /// # Errors
    /// A database failure, or a duplicate name (see [`StoreError::is_unique_violation`]).
    pub async fn insert_tasks(&mut self, tasks: &[TaskRow]) -> Result<(), StoreError> {
        let tasks: Vec<&TaskRow> = tasks.iter().collect();
        self.write_tasks(&tasks, "").await
    }

    /// Writes every column of existing task rows (the multi-row form of
    /// [`WriteTx::update_task`]), as an upsert on the id.
    ///
    /// # Errors
    /// A database failure.
    pub async fn update_tasks(&mut self, tasks: &[&TaskRow]) -> Result<(), StoreError> {
        self.write_tasks(tasks, TASK_UPSERT).await
    }

    async fn write_tasks(
        &mut self,
        tasks: &[&TaskRow],
        on_conflict: &str,
    ) -> Result<(), StoreError> {
        let size = MAX_PARAMS / TASK_COLS;
        for chunk in tasks.chunks(size) {
            let sql = format!(
                "{TASK_INSERT}{}{on_conflict}",
                Params::new(self.backend).values(chunk.len(), TASK_COLS)
            );
            let mut q = query(sql, chunk.len() == size, chunk.len());
            for t in chunk {
                q = bind_task(q, t);
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Appends one event per task (its current state and attempt), in order.
    ///
    /// # Errors
    /// A database failure.
    pub async fn task_events(&mut self, tasks: &[&TaskRow], now: i64) -> Result<(), StoreError> {
        self.note_events(tasks);
        self.insert_events(tasks, now).await
    }

    /// Remembers the events of `tasks` for what the tracker does after
    /// commit (see [`WriteTx::take_ended`]), without writing them: for
    /// [`WriteTx::write_noted`].
    pub fn note_events(&mut self, tasks: &[&TaskRow]) {
        for t in tasks {
            self.note_event(t);
        }
    }

    async fn insert_events(&mut self, tasks: &[&TaskRow], now: i64) -> Result<(), StoreError> {
        let size = MAX_PARAMS / EVENT_COLS;
        for chunk in tasks.chunks(size) {
            let sql = format!(
                "{EVENT_INSERT}{}",
                event_values(&mut Params::new(self.backend), chunk.len())
            );
            let mut q = query(sql, chunk.len() == size, chunk.len());
            for t in chunk {
                q = bind_event(q, t, now);
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Queues one message of `kind` per task (its current attempt), all due
    /// at `not_before`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn enqueue_many(
        &mut self,
        kind: OutboxKind,
        tasks: &[&TaskRow],
        not_before: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let items: Vec<(OutboxKind, &TaskRow)> = tasks.iter().map(|t| (kind, *t)).collect();
        self.enqueue_mixed(&items, not_before, now).await
    }

    /// Queues messages of several kinds about tasks (each about its current
    /// attempt), all due at `not_before`, with one statement per chunk.
    ///
    /// # Errors
    /// A database failure.
    pub async fn enqueue_mixed(
        &mut self,
        items: &[(OutboxKind, &TaskRow)],
        not_before: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let size = MAX_PARAMS / OUTBOX_COLS;
        let due = Due {
            not_before,
            now,
            lease: self.lease_for(not_before, now),
        };
        for chunk in items.chunks(size) {
            let sql = format!(
                "{OUTBOX_INSERT}{}{OUTBOX_RETURNING}",
                Params::new(self.backend).values(chunk.len(), OUTBOX_COLS)
            );
            let mut q = query(sql, chunk.len() == size, chunk.len());
            for (kind, t) in chunk {
                q = bind_message(q, *kind, t, due);
            }
            let rows = q.fetch_all(&mut *self.tx).await?;
            self.queued(chunk, &rows, due)?;
        }
        Ok(())
    }

    /// What follows the insert of `items` (whose `RETURNING id, kind,
    /// task_id` rows are `returned`): the claimed ones are handed to the
    /// relay, and workflows that got a task message are remembered.
    fn queued(
        &mut self,
        items: &[(OutboxKind, &TaskRow)],
        returned: &[sqlx::any::AnyRow],
        due: Due,
    ) -> Result<(), StoreError> {
        if due.lease > 0 {
            let by_task: HashMap<(&str, TaskId), (OutboxKind, &TaskRow)> = items
                .iter()
                .map(|(kind, t)| ((kind.as_str(), t.id), (*kind, *t)))
                .collect();
            for row in returned {
                let id: i64 = row.try_get("id")?;
                let kind: String = row.try_get("kind")?;
                let task_id: String = row.try_get("task_id")?;
                let Some((kind, t)) = by_task.get(&(kind.as_str(), parse_id(&task_id)?)) else {
                    return Err(StoreError::Corrupt(format!(
                        "outbox row {kind} for task {task_id}"
                    )));
                };
                self.handed.push(OutboxItem::of_task(id, *kind, t, due.now));
            }
        }
        self.dispatched_in.extend(
            items
                .iter()
                .filter(|(kind, _)| *kind == OutboxKind::Task)
                .map(|(_, t)| t.workflow_id),
        );
        Ok(())
    }

    /// The end of a state change in one go: task rows written whole,
    /// events already noted (see [`WriteTx::note_events`]), and messages
    /// about tasks due at once. On PostgreSQL, when they fit, one statement
    /// (the rows and events as data-modifying `WITH` parts of the outbox
    /// insert): each statement there is a round trip to the server, and this
    /// is the tail of every reply batch (a chain link). Elsewhere, or
    /// larger, one statement per table.
    ///
    /// # Errors
    /// A database failure.
    pub async fn write_noted(
        &mut self,
        rows: &[&TaskRow],
        events: &[&TaskRow],
        messages: &[(OutboxKind, &TaskRow)],
        now: i64,
    ) -> Result<(), StoreError> {
        let fits = rows.len() <= MAX_PARAMS / TASK_COLS
            && events.len() <= MAX_PARAMS / EVENT_COLS
            && messages.len() <= MAX_PARAMS / OUTBOX_COLS;
        if self.backend == Backend::Sqlite || messages.is_empty() || !fits {
            if !rows.is_empty() {
                self.update_tasks(rows).await?;
            }
            self.insert_events(events, now).await?;
            return self.enqueue_mixed(messages, now, now).await;
        }
        let mut p = Params::new(self.backend);
        let mut parts = Vec::new();
        if !rows.is_empty() {
            let values = p.values(rows.len(), TASK_COLS);
            parts.push(format!("t AS ({TASK_INSERT}{values}{TASK_UPSERT})"));
        }
        if !events.is_empty() {
            let values = event_values(&mut p, events.len());
            parts.push(format!("e AS ({EVENT_INSERT}{values})"));
        }
        let with = if parts.is_empty() {
            String::new()
        } else {
            format!("WITH {} ", parts.join(", "))
        };
        let sql = format!(
            "{with}{OUTBOX_INSERT}{}{OUTBOX_RETURNING}",
            p.values(messages.len(), OUTBOX_COLS)
        );
        // A chain link's shape (two rows, an event, two messages) and other
        // small ones are prepared once.
        let small = rows.len() <= SMALL && events.len() <= SMALL && messages.len() <= SMALL;
        let mut q = statement(sql, small);
        for t in rows {
            q = bind_task(q, t);
        }
        for t in events {
            q = bind_event(q, t, now);
        }
        let due = Due {
            not_before: now,
            now,
            lease: self.lease_for(now, now),
        };
        for (kind, t) in messages {
            q = bind_message(q, *kind, t, due);
        }
        let returned = q.fetch_all(&mut *self.tx).await?;
        self.queued(messages, &returned, due)
    }

    /// Inserts dependency edges `(task, dependency)`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn add_dependencies(&mut self, edges: &[(TaskId, TaskId)]) -> Result<(), StoreError> {
        let size = MAX_PARAMS / 2;
        for chunk in edges.chunks(size) {
            let sql = format!(
                "INSERT INTO task_deps (task_id, dep_id) VALUES {}",
                Params::new(self.backend).values(chunk.len(), 2)
            );
            let mut q = query(sql, chunk.len() == size, chunk.len());
            for (t, d) in chunk {
                q = q.bind(t.to_string()).bind(d.to_string());
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// The tasks a batch of replies is about, each with whether any task
    /// depends on it and its server's row (`None`: not known): one query
    /// per chunk of ids.
    ///
    /// # Errors
    /// A database failure.
    pub async fn tasks_for_replies(
        &mut self,
        ids: &[TaskId],
    ) -> Result<Vec<(TaskRow, bool, Option<ServerRow>)>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let sql = format!(
                concat!(
                    "SELECT ",
                    task_columns!(t),
                    ", CAST(CASE WHEN EXISTS (SELECT 1 FROM task_deps d WHERE d.dep_id = t.id) ",
                    "THEN 1 ELSE 0 END AS BIGINT) AS has_dependents, ",
                    "s.server_id AS s_server_id, s.kind AS s_kind, s.registered AS s_registered, ",
                    "s.last_seen AS s_last_seen, s.created_at AS s_created_at ",
                    "FROM tasks t LEFT JOIN servers s ON s.server_id = t.server_id ",
                    "WHERE t.id IN ({})"
                ),
                Params::new(self.backend).list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len());
            for id in list.values() {
                q = q.bind(id.to_string());
            }
            for row in q.fetch_all(&mut *self.tx).await? {
                let flag: i64 = row.try_get("has_dependents")?;
                out.push((
                    TaskRow::from_row(&row)?,
                    flag != 0,
                    ServerRow::from_joined(&row)?,
                ));
            }
        }
        Ok(out)
    }

    /// Which of `names` a workflow's tasks already have.
    ///
    /// # Errors
    /// A database failure.
    pub async fn taken_names(
        &mut self,
        workflow: WorkflowId,
        names: &[&str],
    ) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for chunk in names.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let mut p = Params::new(self.backend);
            let sql = format!(
                "SELECT name FROM tasks WHERE workflow_id = {} AND name IN ({})",
                p.one(),
                p.list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len()).bind(workflow.to_string());
            for n in list.values() {
                q = q.bind(*n);
            }
            for row in q.fetch_all(&mut *self.tx).await? {
                out.push(row.try_get("name")?);
            }
        }
        Ok(out)
    }

    /// Removes outbox messages (confirmed, or moot).
    ///
    /// # Errors
    /// A database failure.
    pub async fn delete_outbox_many(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        for chunk in ids.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let sql = format!(
                "DELETE FROM outbox WHERE id IN ({})",
                Params::new(self.backend).list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len());
            for id in list.values() {
                q = q.bind(*id);
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Moves the published attempts among `published` (task, attempt)
    /// that are still `waiting` to `queued`, with their events. Done in the store (an event insert from the rows,
    /// then the update) rather than by reading the rows back: a fast worker's
    /// result, or a newer attempt, may have overtaken the confirm, and the
    /// `state` and `attempt` conditions leave those rows alone.
    ///
    /// # Errors
    /// A database failure.
    pub async fn queue_published(
        &mut self,
        published: &[(TaskId, i64)],
        now: i64,
    ) -> Result<(), StoreError> {
        let mut by_attempt: BTreeMap<i64, Vec<TaskId>> = BTreeMap::new();
        for (task, attempt) in published {
            by_attempt.entry(*attempt).or_default().push(*task);
        }
        for (attempt, ids) in by_attempt {
            for chunk in ids.chunks(MAX_IN) {
                let list = InList::new(chunk);
                let mut p = Params::new(self.backend);
                let sql = format!(
                    "INSERT INTO events (workflow_id, task_id, task_name, server_id, state, \
                     attempt, at, kind) SELECT workflow_id, id, name, server_id, 'queued', \
                     attempt, {}, 'task' FROM tasks \
                     WHERE state = 'waiting' AND attempt = {} AND id IN ({}) ORDER BY id",
                    p.one(),
                    p.one(),
                    p.list(list.len())
                );
                let mut q = query(sql, list.len() == MAX_IN, list.len())
                    .bind(now)
                    .bind(attempt);
                for id in list.values() {
                    q = q.bind(id.to_string());
                }
                q.execute(&mut *self.tx).await?;

                let mut p = Params::new(self.backend);
                let sql = format!(
                    "UPDATE tasks SET state = 'queued', queued_at = {}, updated_at = {} \
                     WHERE state = 'waiting' AND attempt = {} AND id IN ({})",
                    p.one(),
                    p.one(),
                    p.one(),
                    p.list(list.len())
                );
                let mut q = query(sql, list.len() == MAX_IN, list.len())
                    .bind(now)
                    .bind(now)
                    .bind(attempt);
                for id in list.values() {
                    q = q.bind(id.to_string());
                }
                let n = q.execute(&mut *self.tx).await?.rows_affected() as usize;
                self.note_entered(TaskState::Queued, n);
            }
        }
        Ok(())
    }

    /// Locks, until this transaction ends, the workflows of `tasks` (see
    /// [`WriteTx::workflow`]); call it before reading any of their rows.
    /// The locks are taken in id order, the same for every transaction, so
    /// two transactions locking overlapping sets cannot deadlock. A no-op on
    /// SQLite, whose write transactions hold the whole database.
    ///
    /// # Errors
    /// A database failure.
    pub async fn lock_workflows_of(&mut self, tasks: &[TaskId]) -> Result<(), StoreError> {
        if self.backend == Backend::Sqlite || tasks.is_empty() {
            return Ok(());
        }
        // The rows are locked as the sorted scan returns them, in id order.
        if tasks.len() <= MAX_IN {
            // One statement (a reply batch, a relay round).
            let list = InList::new(tasks);
            let sql = format!(
                "SELECT id FROM workflows WHERE id IN \
                 (SELECT workflow_id FROM tasks WHERE id IN ({})) ORDER BY id FOR UPDATE",
                Params::new(self.backend).list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len());
            for id in list.values() {
                q = q.bind(id.to_string());
            }
            q.fetch_all(&mut *self.tx).await?;
            return Ok(());
        }
        // More: find the workflows first (a task never changes workflow, so
        // nothing read here goes stale), then lock them all in one order.
        let mut workflows = Vec::new();
        for chunk in tasks.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let sql = format!(
                "SELECT DISTINCT workflow_id FROM tasks WHERE id IN ({})",
                Params::new(self.backend).list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len());
            for id in list.values() {
                q = q.bind(id.to_string());
            }
            for row in q.fetch_all(&mut *self.tx).await? {
                workflows.push(row.try_get::<String, _>("workflow_id")?);
            }
        }
        workflows.sort_unstable();
        workflows.dedup();
        for chunk in workflows.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let sql = format!(
                "SELECT id FROM workflows WHERE id IN ({}) ORDER BY id FOR UPDATE",
                Params::new(self.backend).list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len());
            for id in list.values() {
                q = q.bind(id.as_str());
            }
            q.fetch_all(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Postpones outbox messages to `not_before` (or gives claimed ones back).
    ///
    /// # Errors
    /// A database failure.
    pub async fn postpone_outbox_many(
        &mut self,
        ids: &[i64],
        not_before: i64,
    ) -> Result<(), StoreError> {
        if !ids.is_empty() {
            self.queued_messages = true;
        }
        for chunk in ids.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let mut p = Params::new(self.backend);
            let sql = format!(
                "UPDATE outbox SET not_before = {}, lease_until = 0 WHERE id IN ({})",
                p.one(),
                p.list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len()).bind(not_before);
            for id in list.values() {
                q = q.bind(*id);
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// The servers among `ids` that bora knows.
    ///
    /// # Errors
    /// A database failure.
    pub async fn servers_by_ids(&mut self, ids: &[&str]) -> Result<Vec<ServerRow>, StoreError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let sql = format!(
                "SELECT server_id, kind, registered, last_seen, created_at FROM servers \
                 WHERE server_id IN ({})",
                Params::new(self.backend).list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len());
            for id in list.values() {
                q = q.bind(*id);
            }
            for row in q.fetch_all(&mut *self.tx).await? {
                out.push(ServerRow::from_row(&row)?);
            }
        }
        Ok(out)
    }

    /// Records a heartbeat of each of `servers` at `now`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn touch_servers(&mut self, servers: &[&str], now: i64) -> Result<(), StoreError> {
        // In one order for everyone: two dispatchers upserting the same rows
        // in different orders would deadlock.
        let mut servers = servers.to_vec();
        servers.sort_unstable();
        servers.dedup();
        for chunk in servers.chunks(MAX_IN) {
            let sql = format!(
                "INSERT INTO servers (server_id, last_seen, created_at) VALUES {} \
                 ON CONFLICT (server_id) DO UPDATE SET last_seen = excluded.last_seen",
                Params::new(self.backend).values(chunk.len(), 3)
            );
            let mut q = query(sql, chunk.len() == MAX_IN, chunk.len());
            for s in chunk {
                q = q.bind(*s).bind(now).bind(now);
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Backend, InList, MAX_IN, Params};

    #[test]
    fn in_lists_are_padded_to_a_power_of_two_with_the_last_value() {
        let v = [1, 2, 3];
        let list = InList::new(&v);
        assert_eq!(list.len(), 4);
        assert_eq!(list.values().copied().collect::<Vec<_>>(), vec![1, 2, 3, 3]);
        let one = InList::new(&v[..1]);
        assert_eq!(one.values().copied().collect::<Vec<_>>(), vec![1]);
        let many: Vec<usize> = (0..300).collect();
        let list = InList::new(&many);
        assert_eq!(list.len(), MAX_IN);
        assert_eq!(list.values().count(), MAX_IN);
        assert_eq!(list.values().last(), Some(&299));
    }

    #[test]
    fn placeholders() {
        assert_eq!(Params::new(Backend::Sqlite).values(2, 2), "(?, ?), (?, ?)");
        assert_eq!(Params::new(Backend::Sqlite).list(3), "?, ?, ?");
        let mut pg = Params::new(Backend::Postgres);
        assert_eq!(pg.one(), "$1");
        assert_eq!(pg.values(2, 2), "($2, $3), ($4, $5)");
        assert_eq!(pg.list(2), "$6, $7");
    }
}
