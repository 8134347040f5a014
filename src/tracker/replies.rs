//! Recording what workers send back: heartbeats (`ending: false`), final
//! results, and idle heartbeats. A reply changes state at most once per
//! (task, attempt): anything for an unknown task, another attempt or an ended
//! task is dropped with a reason the consumer logs and counts.

use std::collections::{HashMap, HashSet};

use crate::domain::{ServerKind, TaskId};
use crate::protocol::{MsgTarget, RpcReply, TaskResult, parse_msg_id};
use crate::store::{ServerRow, StoreError, TaskRow, WriteTx};

use super::TrackerConfig;
use super::release::{self, Changes};

/// One reply as it came off the reply queue.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub body: Vec<u8>,
    /// The exchange it was published to: `""` (the default exchange, used by
    /// oslo servers) or the `reply_bora` exchange (bora's workers).
    pub exchange: String,
    /// The broker-validated `user_id` property, if set.
    pub user_id: Option<String>,
}

/// What became of one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A final result changed the task's state.
    Recorded,
    /// A heartbeat or started report.
    Heartbeat,
    /// Ignored; the reason is a metric label.
    Dropped(&'static str),
}

/// Whether a reply about `server` may be believed, given how it arrived
/// (SPEC 5). `Err` carries the reason it may not.
fn authorize(
    config: &TrackerConfig,
    incoming: &Incoming,
    server_id: &str,
    server: Option<&ServerRow>,
) -> Result<(), &'static str> {
    let registered = server.filter(|s| s.registered);
    if incoming.exchange.is_empty() {
        // The default exchange: only trusted oslo servers can publish there
        // (a guest's broker user cannot), or anyone in quick-start mode.
        return match registered {
            Some(s) if s.kind == ServerKind::Oslo => Ok(()),
            _ if !config.require_registration => Ok(()),
            _ => Err("wrong_route"),
        };
    }
    if incoming.exchange != config.reply_exchange {
        return Err("wrong_route");
    }
    // The reply exchange: the broker validated `user_id` against the
    // connection's user, so it names the sender.
    let user = incoming.user_id.as_deref();
    if let Some(s) = registered
        && s.kind == ServerKind::Guest
        && user == Some(format!("bora-srv-{server_id}").as_str())
    {
        return Ok(());
    }
    if !config.require_registration && user == Some(config.dispatcher_user.as_str()) {
        return Ok(());
    }
    Err("wrong_user")
}

/// What the replies of one batch need from the store, read with a few
/// queries up front instead of a few per reply: their tasks, those tasks'
/// servers, and which of the tasks have dependents. Everything the batch
/// changes is kept in memory (the release walk too) and written at the end
/// with one statement per table; heartbeat times once per server.
pub(super) struct Batch {
    tasks: HashMap<TaskId, TaskRow>,
    servers: HashMap<String, ServerRow>,
    with_dependents: HashSet<TaskId>,
    /// Servers heard from, in order, written once at the end.
    touched: Vec<String>,
    touched_set: HashSet<String>,
    /// What the batch changed and has not written yet (see
    /// [`Batch::flush`], [`Batch::finish`]).
    changes: Changes,
    /// Tasks this batch ended that have dependents: the release walk
    /// starts from them.
    ended_with_dependents: Vec<TaskId>,
}

impl Batch {
    /// Reads what `batch` needs; returns the batch context and each reply
    /// decoded (`None`: oversized, left unread, or malformed).
    pub(super) async fn load(
        tx: &mut WriteTx,
        config: &TrackerConfig,
        batch: &[Incoming],
    ) -> Result<(Self, Vec<Option<RpcReply>>), StoreError> {
        let mut task_ids = HashSet::new();
        let mut server_ids = HashSet::new();
        let decoded: Vec<Option<RpcReply>> = batch
            .iter()
            .map(|i| {
                (i.body.len() <= config.max_result_bytes)
                    .then(|| RpcReply::decode(&i.body).ok())
                    .flatten()
            })
            .collect();
        for reply in decoded.iter().flatten() {
            match parse_msg_id(&reply.msg_id) {
                Ok(MsgTarget::Server(s)) => {
                    server_ids.insert(s.as_str().to_owned());
                }
                Ok(MsgTarget::Attempt { task, .. }) => {
                    task_ids.insert(task);
                }
                Err(_) => {}
            }
        }
        let task_ids: Vec<TaskId> = task_ids.into_iter().collect();
        tx.lock_workflows_of(&task_ids).await?;
        let mut with_dependents = HashSet::new();
        let mut servers = HashMap::new();
        let mut tasks = HashMap::with_capacity(task_ids.len());
        for (task, has_dependents, server) in tx.tasks_for_replies(&task_ids).await? {
            if has_dependents {
                with_dependents.insert(task.id);
            }
            if let Some(server) = server {
                servers.insert(server.server_id.clone(), server);
            }
            tasks.insert(task.id, task);
        }
        // Idle heartbeats name a server only.
        server_ids.retain(|s| !servers.contains_key(s));
        if !server_ids.is_empty() {
            let ids: Vec<&str> = server_ids.iter().map(String::as_str).collect();
            for server in tx.servers_by_ids(&ids).await? {
                servers.insert(server.server_id.clone(), server);
            }
        }
        let context = Self {
            tasks,
            servers,
            with_dependents,
            touched: Vec::new(),
            touched_set: HashSet::new(),
            changes: Changes::default(),
            ended_with_dependents: Vec::new(),
        };
        Ok((context, decoded))
    }

    fn task(&mut self, id: TaskId) -> Option<TaskRow> {
        if let Some(row) = self.changes.rows.get(&id) {
            return Some(row.clone());
        }
        self.tasks.remove(&id)
    }

    /// Writes the changes so far. Called before anything else writes task
    /// rows in the store.
    pub(super) async fn flush(&mut self, tx: &mut WriteTx, now: i64) -> Result<(), StoreError> {
        let changes = std::mem::take(&mut self.changes);
        if changes.rows.is_empty() {
            return Ok(());
        }
        let rows: Vec<&TaskRow> = changes.rows.values().collect();
        tx.update_tasks(&rows).await?;
        let events: Vec<&TaskRow> = changes.events.iter().collect();
        tx.task_events(&events, now).await
    }

    /// The end of the batch: the release walk from the tasks it ended.
    /// Returns what the batch changed, for the commit to write with the
    /// messages it causes.
    pub(super) async fn finish(
        &mut self,
        tx: &mut WriteTx,
        now: i64,
    ) -> Result<Changes, StoreError> {
        let ended = std::mem::take(&mut self.ended_with_dependents);
        release::walk(tx, ended, &mut self.changes, now).await?;
        Ok(std::mem::take(&mut self.changes))
    }

    fn touch(&mut self, server: &str) {
        if self.touched_set.insert(server.to_owned()) {
            self.touched.push(server.to_owned());
        }
    }

    /// Every server heard from, in order.
    pub(super) fn touched(&self) -> impl Iterator<Item = &str> {
        self.touched.iter().map(String::as_str)
    }
}

pub(super) async fn record(
    tx: &mut WriteTx,
    config: &TrackerConfig,
    batch: &mut Batch,
    incoming: &Incoming,
    reply: Option<RpcReply>,
    now: i64,
) -> Result<Verdict, StoreError> {
    if incoming.body.len() > config.max_result_bytes {
        return Ok(Verdict::Dropped("oversized"));
    }
    let Some(reply) = reply else {
        return Ok(Verdict::Dropped("malformed"));
    };
    let (task_id, attempt) = match parse_msg_id(&reply.msg_id) {
        Err(_) => return Ok(Verdict::Dropped("unknown_msg_id")),
        Ok(MsgTarget::Server(server)) => {
            let row = batch.servers.get(server.as_str());
            if let Err(reason) = authorize(config, incoming, server.as_str(), row) {
                return Ok(Verdict::Dropped(reason));
            }
            batch.touch(server.as_str());
            return Ok(Verdict::Heartbeat);
        }
        Ok(MsgTarget::Attempt { task, attempt }) => (task, attempt),
    };
    let Some(mut task) = batch.task(task_id) else {
        return Ok(Verdict::Dropped("unknown_task"));
    };
    let verdict = record_for(tx, config, batch, incoming, reply, &mut task, attempt, now).await;
    batch.tasks.insert(task.id, task);
    verdict
}

#[allow(clippy::too_many_arguments)]
async fn record_for(
    tx: &mut WriteTx,
    config: &TrackerConfig,
    batch: &mut Batch,
    incoming: &Incoming,
    reply: RpcReply,
    task: &mut TaskRow,
    attempt: u32,
    now: i64,
) -> Result<Verdict, StoreError> {
    let row = batch.servers.get(&task.server_id);
    if let Err(reason) = authorize(config, incoming, &task.server_id, row) {
        return Ok(Verdict::Dropped(reason));
    }
    if task.attempt != i64::from(attempt) || attempt == 0 {
        return Ok(Verdict::Dropped("stale_attempt"));
    }
    if task.state.is_terminal() {
        return Ok(Verdict::Dropped("already_ended"));
    }
    batch.touch(&task.server_id);
    if !reply.ending {
        let moved = release::mark_running_in_memory(task, now)?;
        batch.changes.keep(task, moved);
        return Ok(Verdict::Heartbeat);
    }
    let result = TaskResult::from_reply(attempt, reply.result, reply.failure.as_deref());
    match release::decide_end(task, &result, now, true)? {
        release::End::Final(end) => {
            release::end_in_memory(task, end, now)?;
            batch.changes.keep(task, true);
            if batch.with_dependents.contains(&task.id) {
                batch.ended_with_dependents.push(task.id);
            }
        }
        release::End::Retry(delay) => {
            // Rare: written at once (the message is due later, not handed off).
            batch.flush(tx, now).await?;
            release::dispatch(tx, task, now, delay).await?;
        }
    }
    Ok(Verdict::Recorded)
}
