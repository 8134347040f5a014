//! Groups of servers (SPEC 7.2), as the release rule uses them: a group
//! task (`target` with mode `all`) is opened when released — the servers
//! carrying its labels are matched and recorded, one child per server is
//! created (`<task>[<server>]`), and its first batch is released — and
//! makes progress whenever a child ends: the next children start (after
//! `pause_s`), the rest are skipped once more than `max_failures` failed,
//! and the group ends when every child has, with their outputs and states
//! as its result. A task with mode `any` gets one server chosen here.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::release::{Released, decide, fail};
use super::unit::UnitOfWork;
use super::{AppConfig, AppError};
use crate::domain::{Task, TaskId, TaskState, child_name};
use crate::protocol::TaskResult;
use crate::store::WriteTx;

/// The error of a target no registered server matches.
pub(crate) const NO_MATCH: &str = "no server matches the target";

/// Opens group task `group`, released now: matches its servers, creates
/// its children and releases the first batch. Fails it unpublished when no
/// server matches, when its children would exceed
/// `dispatch.max_tasks_per_workflow`, or when a child's name is taken.
pub(crate) async fn open(
    tx: &mut WriteTx,
    uow: &mut UnitOfWork,
    cfg: &AppConfig,
    mut group: Task,
    now: i64,
) -> Result<Released, AppError> {
    let Some(mut target) = group.target.clone() else {
        return fail(uow, group, "a group without a target".into(), now);
    };
    let servers: Vec<String> = tx
        .servers_matching(&target.labels)
        .await?
        .into_iter()
        .map(|s| s.server_id)
        .collect();
    if servers.is_empty() {
        return fail(uow, group, NO_MATCH.into(), now);
    }
    let held = tx.count_tasks(group.workflow_id).await? + uow.created_in(group.workflow_id);
    let limit = cfg.max_tasks_per_workflow;
    if held + servers.len() as u64 > limit {
        let error = format!(
            "its {} children would make the workflow hold more than dispatch.max_tasks_per_workflow ({limit}) tasks",
            servers.len()
        );
        return fail(uow, group, error, now);
    }
    let names: Vec<String> = servers.iter().map(|s| child_name(&group.name, s)).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let taken = tx.taken_names(group.workflow_id, &refs).await?;
    if !taken.is_empty() {
        let error = format!("the names of its children are taken: {taken:?}");
        return fail(uow, group, error, now);
    }
    target.servers = Some(servers.clone());
    group.target = Some(target);
    // A group runs nowhere itself: it is `running` while its children run.
    group.dispatch(now)?;
    group.heartbeat(now)?;
    uow.keep(&group, true);
    for server in &servers {
        uow.create(Task::child(&group, TaskId::new(), server, now));
    }
    progress(tx, uow, cfg, group.id, false, now).await?;
    Ok(Released::Dispatched)
}

/// Moves group `id` on after its children changed: skips the children not
/// started once more than `max_failures` ended unsuccessfully, releases
/// the next ones up to the batch size (`after_end`: `pause_s` after the
/// end that freed their place), and ends the group once every child has.
/// Returns whether the group ended (its dependents are the caller's).
pub(crate) async fn progress(
    tx: &mut WriteTx,
    uow: &mut UnitOfWork,
    cfg: &AppConfig,
    id: TaskId,
    after_end: bool,
    now: i64,
) -> Result<bool, AppError> {
    let group = match uow.task(id) {
        Some(g) => g.clone(),
        None => match tx.tasks_by_ids(&[id]).await?.pop() {
            Some(g) => g,
            None => return Ok(false),
        },
    };
    let Some(target) = group.target.clone() else {
        return Ok(false);
    };
    if group.state() != TaskState::Running {
        // Cancelled (its children with it), or not opened.
        return Ok(false);
    }
    // The children as this transaction has them.
    let mut children: Vec<Task> = tx
        .children_of(id)
        .await?
        .into_iter()
        .map(|c| uow.task(c.id).cloned().unwrap_or(c))
        .collect();
    for c in uow.children_of(id) {
        if !children.iter().any(|k| k.id == c.id) {
            children.push(c.clone());
        }
    }
    children.sort_by_key(|c| c.id);
    let unsuccessful = children
        .iter()
        .filter(|c| c.state().is_terminal() && c.state() != TaskState::Succeeded)
        .count();
    let too_many = target
        .batch
        .and_then(|b| b.max_failures)
        .is_some_and(|max| unsuccessful > max as usize);
    if too_many {
        for c in children.iter_mut().filter(|c| c.awaits_release()) {
            c.skip(now)?;
            uow.keep(c, true);
        }
    } else {
        let active = children
            .iter()
            .filter(|c| !c.awaits_release() && !c.state().is_terminal())
            .count();
        let mut free = target.batch_size(children.len()).saturating_sub(active);
        let pause_us = i64::from(target.batch.map_or(0, |b| b.pause_s)) * 1_000_000;
        for c in children.iter_mut().filter(|c| c.awaits_release()) {
            if free == 0 {
                break;
            }
            if after_end && pause_us > 0 {
                c.next_attempt_at = Some(now + pause_us);
            }
            // Boxed: releasing a child may open... nothing, but the release
            // rule and a group's progress call each other.
            match Box::pin(decide(tx, uow, cfg, c.clone(), &[], now)).await? {
                Released::Waiting => break, // the workflow is paused
                Released::Dispatched | Released::Ended => free -= 1,
            }
            if let Some(updated) = uow.task(c.id) {
                *c = updated.clone();
            }
        }
    }
    if !children.iter().all(|c| c.state().is_terminal()) {
        return Ok(false);
    }
    end(uow, group, &children, now)?;
    Ok(true)
}

/// Ends a group whose children all ended: `succeeded` iff each did; its
/// result's `outputs` are output → server → value (from the children that
/// succeeded), `servers` server → the child's state.
fn end(uow: &mut UnitOfWork, mut group: Task, children: &[Task], now: i64) -> Result<(), AppError> {
    let mut outputs: BTreeMap<String, Map<String, Value>> = group
        .outputs()?
        .into_iter()
        .map(|o| (o.name, Map::new()))
        .collect();
    let mut servers = BTreeMap::new();
    let mut failed = 0;
    for c in children {
        servers.insert(c.server_id.clone(), c.state().as_str().to_owned());
        if c.state() != TaskState::Succeeded {
            failed += 1;
            continue;
        }
        if let Some(result) = TaskResult::of_task(c)? {
            for (name, values) in &mut outputs {
                if let Some(v) = result.outputs.get(name) {
                    values.insert(c.server_id.clone(), v.clone());
                }
            }
        }
    }
    let ok = failed == 0;
    let mut result = TaskResult::from_streams(
        group.attempt as u32,
        i64::from(!ok),
        String::new(),
        String::new(),
    );
    result.outputs = outputs
        .into_iter()
        .map(|(k, v)| (k, Value::Object(v)))
        .collect();
    result.servers = Some(servers);
    if !ok {
        result.error = Some(format!(
            "{failed} of {} servers did not succeed",
            children.len()
        ));
    }
    uow.keep_result(&mut group, &result, now)?;
    group.finish(
        if ok {
            TaskState::Succeeded
        } else {
            TaskState::Failed
        },
        now,
    )?;
    uow.keep(&group, true);
    Ok(())
}

/// The server a task with mode `any` runs on: among the registered servers
/// carrying `labels` (but `not`), an online one with the fewest unfinished
/// tasks (ties: the first id); with none online, the least loaded of all
/// (its task waits in the queue for its worker). `None`: no match.
pub(crate) async fn choose_any(
    tx: &mut WriteTx,
    cfg: &AppConfig,
    labels: &BTreeMap<String, String>,
    not: Option<&str>,
    now: i64,
) -> Result<Option<String>, AppError> {
    let matched: Vec<_> = tx
        .servers_matching(labels)
        .await?
        .into_iter()
        .filter(|s| Some(s.server_id.as_str()) != not)
        .collect();
    let online: Vec<&str> = matched
        .iter()
        .filter(|s| s.last_seen.is_some_and(|t| now - t <= cfg.online_window_us))
        .map(|s| s.server_id.as_str())
        .collect();
    let pool: Vec<&str> = if online.is_empty() {
        matched.iter().map(|s| s.server_id.as_str()).collect()
    } else {
        online
    };
    let load = tx.unfinished_per_server(&pool).await?;
    Ok(pool
        .into_iter()
        .min_by_key(|s| (load.get(*s).copied().unwrap_or(0), *s))
        .map(str::to_owned))
}
