//! Recording what workers send back: heartbeats (`ending: false`), final
//! results, and idle heartbeats. A reply changes state at most once per
//! (task, attempt): anything for an unknown task, another attempt or an ended
//! task is dropped with a reason the consumer logs and counts.

use crate::domain::ServerKind;
use crate::protocol::{MsgTarget, RpcReply, TaskResult, parse_msg_id};
use crate::store::{ServerRow, StoreError, WriteTx};

use super::TrackerConfig;
use super::release;

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

pub(super) async fn record(
    tx: &mut WriteTx,
    config: &TrackerConfig,
    incoming: Incoming,
    now: i64,
) -> Result<Verdict, StoreError> {
    if incoming.body.len() > config.max_result_bytes {
        return Ok(Verdict::Dropped("oversized"));
    }
    let Ok(reply) = RpcReply::decode(&incoming.body) else {
        return Ok(Verdict::Dropped("malformed"));
    };
    let (task_id, attempt) = match parse_msg_id(&reply.msg_id) {
        Err(_) => return Ok(Verdict::Dropped("unknown_msg_id")),
        Ok(MsgTarget::Server(server)) => {
            let row = tx.server(server.as_str()).await?;
            if let Err(reason) = authorize(config, &incoming, server.as_str(), row.as_ref()) {
                return Ok(Verdict::Dropped(reason));
            }
            tx.touch_server(server.as_str(), now).await?;
            return Ok(Verdict::Heartbeat);
        }
        Ok(MsgTarget::Attempt { task, attempt }) => (task, attempt),
    };
    let Some(mut task) = tx.task(task_id).await? else {
        return Ok(Verdict::Dropped("unknown_task"));
    };
    let row = tx.server(&task.server_id).await?;
    if let Err(reason) = authorize(config, &incoming, &task.server_id, row.as_ref()) {
        return Ok(Verdict::Dropped(reason));
    }
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
