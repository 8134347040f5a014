//! A task row's columns: their names (for `SELECT`s of this and other
//! tables' joins), the insert and upsert that write them, and the decoding
//! of a row into the domain's [`Task`] and back into bound parameters.

use std::str::FromStr;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::super::sql::{AnyQuery, Params};
use super::super::{StoreError, parse_id};
use crate::domain::Task;

/// The columns of a task row, in decoding order ([`decode`]).
macro_rules! task_columns {
    () => {
        "id, workflow_id, name, server_id, task_group, config, inputs, resolved_inputs, \
         outputs, options, on_dependency_failure, timeout_s, retries, retry_delay_s, delivery, state, attempt, \
         failures, redeliveries, result, created_at, queued_at, started_at, finished_at, \
         last_heartbeat_at, updated_at, retry_backoff, retry_max_delay_s, retry_exit_codes, \
         next_attempt_at, released, target, parent_id"
    };
    (t) => {
        "t.id, t.workflow_id, t.name, t.server_id, t.task_group, t.config, t.inputs, \
         t.resolved_inputs, t.outputs, t.options, t.on_dependency_failure, t.timeout_s, t.retries, t.retry_delay_s, \
         t.delivery, t.state, t.attempt, t.failures, t.redeliveries, t.result, t.created_at, \
         t.queued_at, t.started_at, t.finished_at, t.last_heartbeat_at, t.updated_at, \
         t.retry_backoff, t.retry_max_delay_s, t.retry_exit_codes, t.next_attempt_at, t.released, \
         t.target, t.parent_id"
    };
}
pub(in crate::store) use task_columns;

/// The columns of a task row, in binding order ([`bind`]).
pub(in crate::store) const INSERT: &str = "INSERT INTO tasks (id, workflow_id, name, server_id, task_group, \
     config, inputs, resolved_inputs, outputs, options, on_dependency_failure, timeout_s, retries, \
     retry_delay_s, \
     delivery, state, attempt, failures, redeliveries, result, created_at, queued_at, \
     started_at, finished_at, last_heartbeat_at, updated_at, retry_backoff, retry_max_delay_s, \
     retry_exit_codes, next_attempt_at, released, target, parent_id) VALUES ";
pub(in crate::store) const COLS: usize = 33;
/// Makes [`INSERT`] write every column of existing rows.
pub(in crate::store) const UPSERT: &str = " ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
     server_id = excluded.server_id, task_group = excluded.task_group, \
     config = excluded.config, inputs = excluded.inputs, \
     resolved_inputs = excluded.resolved_inputs, outputs = excluded.outputs, \
     options = excluded.options, on_dependency_failure = excluded.on_dependency_failure, \
     timeout_s = excluded.timeout_s, retries = excluded.retries, \
     retry_delay_s = excluded.retry_delay_s, delivery = excluded.delivery, \
     state = excluded.state, attempt = excluded.attempt, failures = excluded.failures, \
     redeliveries = excluded.redeliveries, result = excluded.result, \
     queued_at = excluded.queued_at, started_at = excluded.started_at, \
     finished_at = excluded.finished_at, last_heartbeat_at = excluded.last_heartbeat_at, \
     updated_at = excluded.updated_at, retry_backoff = excluded.retry_backoff, \
     retry_max_delay_s = excluded.retry_max_delay_s, \
     retry_exit_codes = excluded.retry_exit_codes, \
     next_attempt_at = excluded.next_attempt_at, released = excluded.released, \
     target = excluded.target";

/// The columns a task's life changes: everything a dispatch, a confirm, a
/// heartbeat, a result, a retry, a cancel, a pause or a rerun writes. The
/// rest (its name, spec and origin) only a create or a patch writes, so a
/// task that only lived is written with [`update_life_one`] (or
/// [`update_life_many`]): fewer values to
/// bind and no write to the indexes of columns it did not change.
const LIFE: [&str; LIFE_COLS] = [
    "state",
    "attempt",
    "failures",
    "redeliveries",
    "result",
    "queued_at",
    "started_at",
    "finished_at",
    "last_heartbeat_at",
    "updated_at",
    "next_attempt_at",
    "released",
    "resolved_inputs",
    "server_id",
    "target",
];
/// How many columns [`LIFE`] names ([`bind_life`] binds one more: the id).
pub(in crate::store) const LIFE_COLS: usize = 15;

/// `UPDATE tasks SET` the [`LIFE`] columns of one task `WHERE id =`, with
/// SQLite's anonymous placeholders in [`bind_life_id_last`]'s order (so
/// several can follow each other in one call, each binding the next
/// values). SQLite: a prepared statement per row costs less there than a
/// join.
pub(in crate::store) fn update_life_one() -> &'static str {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let sets: Vec<String> = LIFE.iter().map(|c| format!("{c} = ?")).collect();
        format!("UPDATE tasks SET {} WHERE id = ?", sets.join(", "))
    });
    &SQL
}

/// The parts of an `UPDATE` of the [`LIFE`] columns of `rows` tasks from a
/// `VALUES` list (PostgreSQL, one statement for them all): the `WITH` part
/// that names the values, and the update that reads them.
pub(in crate::store) fn update_life_many(p: &mut Params, rows: usize) -> (String, String) {
    let values = p.values(rows, LIFE_COLS + 1);
    let with = format!("life (id, {}) AS (VALUES {values})", LIFE.join(", "));
    let sets: Vec<String> = LIFE.iter().map(|c| format!("{c} = life.{c}")).collect();
    let update = format!(
        "UPDATE tasks SET {} FROM life WHERE tasks.id = life.id",
        sets.join(", ")
    );
    (with, update)
}

fn parse<T: FromStr<Err = String>>(s: &str) -> Result<T, StoreError> {
    s.parse().map_err(StoreError::Corrupt)
}

/// A task from a row with [`task_columns`].
pub(in crate::store) fn decode(row: &AnyRow) -> Result<Task, StoreError> {
    let id: String = row.try_get("id")?;
    let workflow_id: String = row.try_get("workflow_id")?;
    let state: String = row.try_get("state")?;
    let mut t = Task::restored(parse_id(&id)?, parse_id(&workflow_id)?, parse(&state)?);
    let odf: String = row.try_get("on_dependency_failure")?;
    let delivery: String = row.try_get("delivery")?;
    t.name = row.try_get("name")?;
    t.server_id = row.try_get("server_id")?;
    t.group = row.try_get("task_group")?;
    t.config = row.try_get("config")?;
    t.inputs = row.try_get("inputs")?;
    t.resolved_inputs = row.try_get("resolved_inputs")?;
    t.outputs = row.try_get("outputs")?;
    t.options = row.try_get("options")?;
    t.on_dependency_failure = parse(&odf)?;
    t.timeout_s = row.try_get("timeout_s")?;
    t.retries = row.try_get("retries")?;
    t.retry_delay_s = row.try_get("retry_delay_s")?;
    t.delivery = parse(&delivery)?;
    t.attempt = row.try_get("attempt")?;
    t.failures = row.try_get("failures")?;
    t.redeliveries = row.try_get("redeliveries")?;
    t.result = row.try_get("result")?;
    t.created_at = row.try_get("created_at")?;
    t.queued_at = row.try_get("queued_at")?;
    t.started_at = row.try_get("started_at")?;
    t.finished_at = row.try_get("finished_at")?;
    t.last_heartbeat_at = row.try_get("last_heartbeat_at")?;
    t.updated_at = row.try_get("updated_at")?;
    t.retry_backoff = row.try_get("retry_backoff")?;
    t.retry_max_delay_s = row.try_get("retry_max_delay_s")?;
    let codes: Option<String> = row.try_get("retry_exit_codes")?;
    t.retry_exit_codes = codes
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("retry_exit_codes: {e}")))?;
    t.next_attempt_at = row.try_get("next_attempt_at")?;
    t.restore_released(row.try_get::<i64, _>("released")? != 0);
    let target: Option<String> = row.try_get("target")?;
    t.target = target
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("target: {e}")))?;
    let parent: Option<String> = row.try_get("parent_id")?;
    t.parent_id = parent.as_deref().map(parse_id).transpose()?;
    Ok(t)
}

/// Binds every column of `t`, in [`INSERT`]'s order.
pub(in crate::store) fn bind<'q>(q: AnyQuery<'q>, t: &'q Task) -> AnyQuery<'q> {
    q.bind(t.id.to_string())
        .bind(t.workflow_id.to_string())
        .bind(&t.name)
        .bind(&t.server_id)
        .bind(&t.group)
        .bind(&t.config)
        .bind(&t.inputs)
        .bind(&t.resolved_inputs)
        .bind(&t.outputs)
        .bind(&t.options)
        .bind(t.on_dependency_failure.as_str())
        .bind(t.timeout_s)
        .bind(t.retries)
        .bind(t.retry_delay_s)
        .bind(t.delivery.as_str())
        .bind(t.state().as_str())
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
        .bind(t.retry_backoff)
        .bind(t.retry_max_delay_s)
        .bind(
            t.retry_exit_codes
                .as_ref()
                .map(|c| serde_json::Value::from(c.clone()).to_string()),
        )
        .bind(t.next_attempt_at)
        .bind(i64::from(t.released()))
        .bind(target_text(t))
        .bind(t.parent_id.map(|p| p.to_string()))
}

/// Binds `t`'s id, then its [`LIFE`] columns in that order (a row of
/// [`update_life_many`]'s values).
pub(in crate::store) fn bind_life<'q>(q: AnyQuery<'q>, t: &'q Task) -> AnyQuery<'q> {
    bind_life_columns(q.bind(t.id.to_string()), t)
}

/// Binds `t`'s [`LIFE`] columns in that order, then its id (an
/// [`update_life_one`]).
pub(in crate::store) fn bind_life_id_last<'q>(q: AnyQuery<'q>, t: &'q Task) -> AnyQuery<'q> {
    bind_life_columns(q, t).bind(t.id.to_string())
}

fn bind_life_columns<'q>(q: AnyQuery<'q>, t: &'q Task) -> AnyQuery<'q> {
    q.bind(t.state().as_str())
        .bind(t.attempt)
        .bind(t.failures)
        .bind(t.redeliveries)
        .bind(&t.result)
        .bind(t.queued_at)
        .bind(t.started_at)
        .bind(t.finished_at)
        .bind(t.last_heartbeat_at)
        .bind(t.updated_at)
        .bind(t.next_attempt_at)
        .bind(i64::from(t.released()))
        .bind(&t.resolved_inputs)
        .bind(&t.server_id)
        .bind(target_text(t))
}

/// The `target` column's text of `t`.
fn target_text(t: &Task) -> Option<String> {
    t.target
        .as_ref()
        .and_then(|target| serde_json::to_string(target).ok())
}
