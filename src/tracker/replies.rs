//! Recording what workers send back: heartbeats (`ending: false`), final
//! results, and idle heartbeats. A reply changes state at most once per
//! (task, attempt): anything for an unknown task, another attempt or an ended
//! task is dropped with a reason the consumer logs and counts.

use crate::protocol::{MsgTarget, RpcReply, TaskResult, parse_msg_id};
use crate::store::{StoreError, WriteTx};

use super::TrackerConfig;
use super::release;

/// One reply as it came off the reply queue.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub body: Vec<u8>,
    /// Published through the default exchange (oslo servers) rather than the
    /// `reply_bora` exchange (bora workers).
    pub via_default_exchange: bool,
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

pub(super) async fn record(
    tx: &mut WriteTx,
    _config: &TrackerConfig,
    incoming: Incoming,
    now: i64,
) -> Result<Verdict, StoreError> {
    let Ok(reply) = RpcReply::decode(&incoming.body) else {
        return Ok(Verdict::Dropped("malformed"));
    };
    let (task_id, attempt) = match parse_msg_id(&reply.msg_id) {
        Err(_) => return Ok(Verdict::Dropped("unknown_msg_id")),
        Ok(MsgTarget::Server(server)) => {
            tx.touch_server(server.as_str(), now).await?;
            return Ok(Verdict::Heartbeat);
        }
        Ok(MsgTarget::Attempt { task, attempt }) => (task, attempt),
    };
    let Some(mut task) = tx.task(task_id).await? else {
        return Ok(Verdict::Dropped("unknown_task"));
    };
    if task.attempt != i64::from(attempt) || attempt == 0 {
        return Ok(Verdict::Dropped("stale_attempt"));
    }
    if task.state.is_terminal() {
        return Ok(Verdict::Dropped("already_ended"));
    }
    tx.touch_server(&task.server_id, now).await?;
    if !reply.ending {
        release::mark_running(tx, &mut task, now).await?;
        return Ok(Verdict::Heartbeat);
    }
    let result = TaskResult::from_reply(attempt, reply.result, reply.failure.as_deref());
    release::finish(tx, &mut task, &result, now).await?;
    Ok(Verdict::Recorded)
}
