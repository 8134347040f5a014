//! Recording what workers send back: heartbeats (`ending: false`), final
//! results, and idle heartbeats, a batch in one transaction. A reply
//! changes state at most once per (task, attempt): anything for an unknown
//! task, another attempt or an ended task is dropped with a reason the
//! consumer logs and counts. Who may send a reply is checked here too. A
//! reply too large to read ends the attempt it names in its
//! `correlation_id` (bora's worker sets it) `failed`, never a silent re-run.

use std::collections::{HashMap, HashSet};

use tracing::instrument;

use super::release::walk;
use super::secrets::seal_outputs;
use super::unit::UnitOfWork;
use super::{App, AppConfig, AppError, now_us};
use crate::domain::{Failure, ServerKind, Task, TaskId, TaskState, WorkflowId, is_broker_user_of};
use crate::protocol::{MsgTarget, OutputChunk, RpcReply, TaskResult, parse_msg_id};
use crate::store::{NewChunk, ServerRow, WriteTx};

/// A server's `last_seen` is written at most this often: it only says
/// whether a server is online (within `heartbeat_timeout_s`), and skipping
/// the write saves a statement in most reply batches.
const LAST_SEEN_RESOLUTION_US: i64 = 1_000_000;

/// One reply as it came off the reply queue.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The message body (an oslo envelope).
    pub body: Vec<u8>,
    /// The exchange it was published to: `""` (the default exchange, used by
    /// oslo servers) or the `reply_bora` exchange (bora's workers).
    pub exchange: String,
    /// The broker-validated `user_id` property, if set.
    pub user_id: Option<String>,
    /// The `correlation_id` property: bora's worker sets it to the reply's
    /// `_msg_id`, so a reply too large to read still names its attempt
    /// (oslo servers set none).
    pub correlation_id: Option<String>,
}

impl Incoming {
    /// Whether the body is over `dispatch.max_result_bytes` (left unread).
    fn oversized(&self, config: &AppConfig) -> bool {
        self.body.len() > config.max_result_bytes
    }

    /// The attempt an oversized reply names in its `correlation_id`.
    fn oversized_attempt(&self) -> Option<(TaskId, u32)> {
        match parse_msg_id(self.correlation_id.as_deref()?) {
            Ok(MsgTarget::Attempt { task, attempt }) => Some((task, attempt)),
            _ => None,
        }
    }
}

/// What became of one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A final result changed the task's state.
    Recorded,
    /// A heartbeat or started report.
    Heartbeat,
    /// Live output (also a heartbeat).
    Output,
    /// Ignored; the reason is a metric label.
    Dropped(&'static str),
}

/// Whether a reply about `server_id` may be believed, given how it arrived
/// (SPEC 5). `Err` carries the reason it may not.
fn authorize(
    config: &AppConfig,
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
        && user.is_some_and(|u| is_broker_user_of(u, server_id))
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
/// servers, and which of the tasks have dependents.
struct Batch {
    tasks: HashMap<TaskId, Task>,
    /// Whether each of their workflows is paused.
    paused: HashMap<WorkflowId, bool>,
    servers: HashMap<String, ServerRow>,
    with_dependents: HashSet<TaskId>,
    /// Servers heard from, in order, written once at the end.
    touched: Vec<String>,
    touched_set: HashSet<String>,
    /// Tasks this batch ended that have dependents: the walk starts there.
    ended_with_dependents: Vec<TaskId>,
}

impl Batch {
    /// Ends `task`'s current attempt with `result` (see [`end_attempt`]),
    /// held while its workflow is paused; a task that ended with
    /// dependents, or a group's child (which moves its group on), is walked
    /// on from after the batch.
    fn end(
        &mut self,
        uow: &mut UnitOfWork,
        task: Task,
        result: &TaskResult,
        retry: Retry,
        now: i64,
    ) -> Result<Verdict, AppError> {
        let task_id = task.id;
        let paused = self.paused.get(&task.workflow_id).copied().unwrap_or(false);
        let walk_on = self.with_dependents.contains(&task_id) || task.parent_id.is_some();
        if end_attempt(uow, task, result, retry, paused, now)? && walk_on {
            self.ended_with_dependents.push(task_id);
        }
        Ok(Verdict::Recorded)
    }

    /// Reads what `batch` needs, given each reply `decoded` (see
    /// [`decode_all`]).
    async fn load(
        tx: &mut WriteTx,
        config: &AppConfig,
        batch: &[Incoming],
        decoded: &[Option<RpcReply>],
    ) -> Result<Self, AppError> {
        let mut task_ids = HashSet::new();
        let mut server_ids = HashSet::new();
        for i in batch.iter().filter(|i| i.oversized(config)) {
            if let Some((task, _)) = i.oversized_attempt() {
                task_ids.insert(task);
            }
        }
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
        let mut paused = HashMap::new();
        for found in tx.tasks_for_replies(&task_ids).await? {
            let task = found.task;
            if found.has_dependents {
                with_dependents.insert(task.id);
            }
            if let Some(server) = found.server {
                servers.insert(server.server_id.clone(), server);
            }
            paused.insert(task.workflow_id, found.paused);
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
            paused,
            servers,
            with_dependents,
            touched: Vec::new(),
            touched_set: HashSet::new(),
            ended_with_dependents: Vec::new(),
        };
        Ok(context)
    }

    fn touch(&mut self, server: &str) {
        if self.touched_set.insert(server.to_owned()) {
            self.touched.push(server.to_owned());
        }
    }
}

impl App {
    /// Records replies from workers in one transaction, returning a verdict
    /// per reply.
    ///
    /// # Errors
    /// A store failure: nothing was recorded, the caller must not ack.
    #[instrument(skip_all, fields(replies = batch.len()))]
    pub async fn record_replies(&self, batch: &[Incoming]) -> Result<Vec<Verdict>, AppError> {
        let decoded = decode_all(&self.config, batch).await;
        let now = now_us();
        let mut tx = self.begin().await?;
        let mut ctx = Batch::load(&mut tx, &self.config, batch, &decoded).await?;
        let mut uow = UnitOfWork::default();
        for (wf, paused) in &ctx.paused {
            uow.note_paused(*wf, *paused);
        }
        let mut verdicts = Vec::with_capacity(batch.len());
        for (incoming, reply) in batch.iter().zip(decoded) {
            verdicts.push(self.record(&mut ctx, &mut uow, incoming, reply, now)?);
        }
        let ended = std::mem::take(&mut ctx.ended_with_dependents);
        walk(&mut tx, &mut uow, &self.config, ended, now).await?;
        let due = self.due_last_seen(&ctx.touched, now);
        tx.touch_servers(&due, now).await?;
        self.commit(tx, uow, now).await?;
        Ok(verdicts)
    }

    /// The servers among `touched` whose `last_seen` this dispatcher has
    /// not written for [`LAST_SEEN_RESOLUTION_US`].
    fn due_last_seen<'a>(&self, touched: &'a [String], now: i64) -> Vec<&'a str> {
        let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        touched
            .iter()
            .map(String::as_str)
            .filter(|s| match heard.get_mut(*s) {
                // Known: no allocation on this path, once per reply batch.
                Some(last) if now.saturating_sub(*last) < LAST_SEEN_RESOLUTION_US => false,
                Some(last) => {
                    *last = now;
                    true
                }
                None => {
                    heard.insert((*s).to_owned(), now);
                    true
                }
            })
            .collect()
    }

    /// Decides what one reply means, in memory.
    fn record(
        &self,
        batch: &mut Batch,
        uow: &mut UnitOfWork,
        incoming: &Incoming,
        reply: Option<RpcReply>,
        now: i64,
    ) -> Result<Verdict, AppError> {
        if incoming.oversized(&self.config) {
            return self.oversized(batch, uow, incoming, now);
        }
        let Some(reply) = reply else {
            return Ok(Verdict::Dropped("malformed"));
        };
        let (task_id, attempt) = match parse_msg_id(&reply.msg_id) {
            Err(_) => return Ok(Verdict::Dropped("unknown_msg_id")),
            Ok(MsgTarget::Server(server)) => {
                let row = batch.servers.get(server.as_str());
                if let Err(reason) = authorize(&self.config, incoming, server.as_str(), row) {
                    return Ok(Verdict::Dropped(reason));
                }
                batch.touch(server.as_str());
                return Ok(Verdict::Heartbeat);
            }
            Ok(MsgTarget::Attempt { task, attempt }) => (task, attempt),
        };
        let Some(mut task) = uow
            .task(task_id)
            .cloned()
            .or_else(|| batch.tasks.get(&task_id).cloned())
        else {
            return Ok(Verdict::Dropped("unknown_task"));
        };
        if task.runs_nowhere() {
            // Only a person ends a gate, and a group ends with its children.
            return Ok(Verdict::Dropped("no_worker_task"));
        }
        let row = batch.servers.get(&task.server_id);
        if let Err(reason) = authorize(&self.config, incoming, &task.server_id, row) {
            return Ok(Verdict::Dropped(reason));
        }
        if task.attempt != i64::from(attempt) || attempt == 0 {
            return Ok(Verdict::Dropped("stale_attempt"));
        }
        if task.state().is_terminal() {
            return Ok(Verdict::Dropped("already_ended"));
        }
        batch.touch(&task.server_id);
        if !reply.ending {
            let moved = task.heartbeat(now)?;
            uow.keep(&task, moved);
            let Some(chunk) = reply.output_chunk() else {
                return Ok(Verdict::Heartbeat);
            };
            let stream = chunk.stream.as_str();
            return Ok(match kept(chunk, self.config.max_live_output_bytes) {
                Some((offset, data, truncated)) => {
                    uow.output(NewChunk {
                        task_id,
                        attempt: i64::from(attempt),
                        stream,
                        offset,
                        data,
                        truncated,
                    });
                    Verdict::Output
                }
                None => Verdict::Dropped("output_over_cap"),
            });
        }
        let mut result = TaskResult::from_reply(attempt, reply.result, reply.failure.as_deref());
        if declares_secrets(&task) {
            seal_outputs(&self.sealer, &mut result, &task.outputs()?)?;
        }
        batch.end(uow, task, &result, Retry::Policy, now)
    }
}

impl App {
    /// A reply over `dispatch.max_result_bytes`, left unread. When its
    /// `correlation_id` names the current attempt of a task still running,
    /// and its sender may report on that task ([`authorize`]), the attempt
    /// ends `failed` with a `result_too_large` error (no retry: the same
    /// result would not fit again); anything else is dropped.
    fn oversized(
        &self,
        batch: &mut Batch,
        uow: &mut UnitOfWork,
        incoming: &Incoming,
        now: i64,
    ) -> Result<Verdict, AppError> {
        let dropped = Ok(Verdict::Dropped("oversized"));
        let Some((task_id, attempt)) = incoming.oversized_attempt() else {
            return dropped;
        };
        let Some(task) = uow
            .task(task_id)
            .cloned()
            .or_else(|| batch.tasks.get(&task_id).cloned())
        else {
            return dropped;
        };
        if task.runs_nowhere() {
            return dropped;
        }
        let row = batch.servers.get(&task.server_id);
        if let Err(reason) = authorize(&self.config, incoming, &task.server_id, row) {
            return Ok(Verdict::Dropped(reason));
        }
        if task.attempt != i64::from(attempt) || attempt == 0 || task.state().is_terminal() {
            return dropped;
        }
        batch.touch(&task.server_id);
        let result = TaskResult::error(
            attempt,
            format!(
                "result_too_large: the worker's reply was {} bytes, over the {} bytes of \
                 dispatch.max_result_bytes; it was not read",
                incoming.body.len(),
                self.config.max_result_bytes
            ),
        );
        tracing::warn!(
            task_id = %task.id,
            workflow_id = %task.workflow_id,
            server_id = %task.server_id,
            attempt,
            bytes = incoming.body.len(),
            limit = self.config.max_result_bytes,
            "result too large; the task fails"
        );
        batch.end(uow, task, &result, Retry::Never, now)
    }
}

/// Batches whose bodies exceed this many bytes in all are decoded on the
/// blocking pool.
const DECODE_INLINE_BYTES: usize = 1 << 20;

/// Each reply of `batch` decoded (`None`: oversized, left unread, or
/// malformed), before any transaction. A large batch (a flood of big
/// replies can bring hundreds of megabytes) is decoded on the blocking
/// pool, so parsing it neither holds the store's write lock nor stalls the
/// runtime's other tasks, the API's connections among them.
async fn decode_all(config: &AppConfig, batch: &[Incoming]) -> Vec<Option<RpcReply>> {
    let decode = |body: &[u8]| RpcReply::decode(body).ok();
    // Oversized bodies are never read (nor copied for the pool).
    let readable = batch
        .iter()
        .map(|i| (!i.oversized(config)).then_some(&i.body));
    let total: usize = batch.iter().map(|i| i.body.len()).sum();
    if total <= DECODE_INLINE_BYTES {
        return readable.map(|b| b.and_then(|b| decode(b))).collect();
    }
    let bodies: Vec<Option<Vec<u8>>> = readable.map(|b| b.cloned()).collect();
    let decoded = tokio::task::spawn_blocking(move || {
        bodies
            .iter()
            .map(|b| b.as_deref().and_then(decode))
            .collect::<Vec<_>>()
    })
    .await;
    match decoded {
        Ok(decoded) => decoded,
        // The blocking pool is gone (shutting down): decode here.
        Err(_) => batch
            .iter()
            .map(|i| (!i.oversized(config)).then(|| decode(&i.body)).flatten())
            .collect(),
    }
}

/// What of a chunk of live output is kept under the per-stream `cap`:
/// (offset, text, marker); `None` when none of it is. A NUL is kept as
/// U+FFFD: PostgreSQL's text cannot hold it, and one such chunk would fail
/// its whole reply batch again at every try (offsets are keys, so the
/// longer text changes nothing else).
fn kept(chunk: OutputChunk, cap: u64) -> Option<(i64, String, bool)> {
    let clean = |data: String| {
        if data.contains('\0') {
            data.replace('\0', "\u{fffd}")
        } else {
            data
        }
    };
    if chunk.truncated {
        // The worker's marker where its stream stopped.
        return (chunk.offset <= cap).then(|| (chunk.offset as i64, clean(chunk.data), true));
    }
    if chunk.offset >= cap {
        return None;
    }
    let room = (cap - chunk.offset) as usize;
    let mut data = chunk.data;
    if data.len() > room {
        let mut end = room;
        while !data.is_char_boundary(end) {
            end -= 1;
        }
        data.truncate(end);
    }
    Some((chunk.offset as i64, clean(data), false))
}

/// Whether `task` may declare a secret output: a cheap test on the stored
/// text that spares the parse for the many tasks that declare none.
fn declares_secrets(task: &Task) -> bool {
    task.outputs.contains("\"secret\"")
}

/// Whether an attempt that ended unsuccessfully may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// As its retry policy says, given its result.
    Policy,
    /// As its retry policy says for a lost worker.
    Lost,
    /// Never (an `at_most_once` attempt that may have run).
    Never,
}

/// Ends the current attempt of `task` with `result`: a new attempt after
/// the retry policy's delay while `retry` and the policy allow (held for
/// the resume while the workflow is `paused`), else the end its result
/// says. The result it replaces is kept among the earlier attempts'.
/// Returns whether the task ended (its dependents are the caller's to
/// release).
pub(super) fn end_attempt(
    uow: &mut UnitOfWork,
    mut task: Task,
    result: &TaskResult,
    retry: Retry,
    paused: bool,
    now: i64,
) -> Result<bool, AppError> {
    let end = result.end(&task.outputs()?);
    uow.keep_result(&mut task, result, now)?;
    let failure = match (end, retry) {
        (TaskState::Succeeded, _) | (_, Retry::Never) => None,
        (_, Retry::Lost) => Some(Failure::Lost),
        (TaskState::TimedOut, Retry::Policy) => Some(Failure::TimedOut),
        (_, Retry::Policy) => Some(Failure::Exit(result.exit_code)),
    };
    let jitter = rand::random_range(-0.1..=0.1);
    if let Some(delay) = failure.and_then(|f| task.retry_delay_us(f, jitter)) {
        task.failures += 1;
        again(uow, task, now + delay, paused, now)?;
        return Ok(false);
    }
    task.finish(end, now)?;
    uow.keep(&task, true);
    Ok(true)
}

/// Sends `task`'s next attempt, due at `at`; while its workflow is
/// `paused`, holds it for the resume instead (which keeps `at`).
pub(super) fn again(
    uow: &mut UnitOfWork,
    mut task: Task,
    at: i64,
    paused: bool,
    now: i64,
) -> Result<(), AppError> {
    if paused {
        let moved = task.hold(now)?;
        task.next_attempt_at = (at > now).then_some(at);
        uow.keep(&task, moved);
        return Ok(());
    }
    let moved = task.dispatch_at(now, at)?;
    uow.keep(&task, moved);
    uow.publish(&task, at);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::kept;
    use crate::protocol::{OutputChunk, OutputStream};

    fn chunk(offset: u64, data: &str) -> OutputChunk {
        OutputChunk {
            stream: OutputStream::Stdout,
            offset,
            data: data.to_owned(),
            truncated: false,
        }
    }

    #[test]
    fn live_output_is_cut_at_the_cap_and_nul_is_kept_as_a_replacement() {
        assert_eq!(kept(chunk(0, "abcdef"), 4), Some((0, "abcd".into(), false)));
        assert_eq!(kept(chunk(4, "ef"), 4), None);
        assert_eq!(
            kept(chunk(2, "a\0b\0\0c"), 6),
            Some((2, "a\u{fffd}b\u{fffd}".into(), false))
        );
    }
}
