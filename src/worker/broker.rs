//! The worker's broker connection: connect, check (or, for a quick start,
//! create) its two queues, consume them, and reconnect with exponential backoff
//! and jitter after any loss, rebuilding connection and channels.
//!
//! One channel per role: publishing replies (with confirms, handed to the
//! [`Publisher`](super::publisher::Publisher)), consuming cancels from
//! `bora_control.<id>` (acked at once, so a cancel never waits behind tasks),
//! and consuming tasks from `bora_tasks.<id>` with prefetch = concurrency. It
//! declares nothing it does not need: passive declares first; a missing queue
//! is declared only if the broker user may, else the worker waits for the
//! dispatcher. This module knows nothing of processes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::{Worker, handler};
use crate::broker::{BrokerError, declare_queue};
use crate::config::SecretUrl;
use crate::protocol::{CancelMessage, RpcRequest};

const TASK_CONSUMER: &str = "bora-worker-tasks";
const CONTROL_CONSUMER: &str = "bora-worker-control";
/// How often a live session checks its channels and re-publishes kept results.
const CHECK_PERIOD: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// One broker connection, as the task handlers see it.
#[derive(Clone)]
pub struct SessionCtx {
    /// Tells deliveries of one connection from those of the next.
    pub id: u64,
    /// Fired when this connection is gone: its unacked deliveries are void.
    pub lost: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Declare(#[from] BrokerError),
    #[error("waiting for the dispatcher: {0}")]
    Waiting(String),
    #[error("{0}")]
    Lost(&'static str),
}

/// The broker user of the URL, sent as `user_id` on every reply (the broker
/// checks it against the authenticated user).
///
/// # Errors
/// A URL that is not an AMQP URL.
pub(super) fn broker_user(url: &SecretUrl) -> anyhow::Result<String> {
    let uri: lapin::uri::AMQPUri = url
        .expose()
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid broker URL {url}: {e}"))?;
    Ok(uri.authority.userinfo.username)
}

/// Keeps the worker connected until `stop` fires.
pub async fn supervise(worker: Arc<Worker>, stop: CancellationToken) {
    let mut delay = BACKOFF_MIN;
    let mut session_id = 0;
    while !stop.is_cancelled() {
        session_id += 1;
        let ctx = SessionCtx {
            id: session_id,
            lost: CancellationToken::new(),
        };
        let result = session(&worker, &ctx, &stop, &mut delay).await;
        ctx.lost.cancel();
        worker.publisher.set_channel(None);
        worker.registry.forget_session(ctx.id);
        match result {
            Ok(()) => break,
            Err(SessionError::Waiting(why)) => {
                tracing::warn!(why, "waiting for the dispatcher to create it; retrying");
            }
            Err(e) => tracing::warn!(error = %e, "broker connection lost; reconnecting"),
        }
        // Full jitter over [delay/2, delay].
        let jittered = delay.mul_f64(rand::rng().random_range(0.5..=1.0));
        tokio::select! {
            () = tokio::time::sleep(jittered) => {},
            () = stop.cancelled() => break,
        }
        delay = (delay * 2).min(BACKOFF_MAX);
    }
}

async fn session(
    worker: &Arc<Worker>,
    ctx: &SessionCtx,
    stop: &CancellationToken,
    delay: &mut Duration,
) -> Result<(), SessionError> {
    let url = worker.amqp_url.expose();
    let props = ConnectionProperties::default().with_connection_name(
        format!(
            "bora-worker {} pid {}",
            worker.server_id,
            std::process::id()
        )
        .into(),
    );
    let conn = Connection::connect(url, props).await?;
    let result = connected(worker, ctx, stop, &conn, delay).await;
    // Best effort: the broker requeues whatever is still unacked.
    let _ = conn.close(200, "bora worker closing".into()).await;
    result
}

async fn connected(
    worker: &Arc<Worker>,
    ctx: &SessionCtx,
    stop: &CancellationToken,
    conn: &Connection,
    delay: &mut Duration,
) -> Result<(), SessionError> {
    let task_queue = worker.amqp.task_queue(worker.server_id.as_str());
    let control_queue = worker.amqp.control_queue(worker.server_id.as_str());
    ensure_exchange(conn, &worker.amqp.reply_queue, "the reply exchange").await?;
    ensure_queue(conn, worker, &task_queue).await?;
    ensure_queue(conn, worker, &control_queue).await?;

    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    worker.publisher.set_channel(Some(publish.clone()));
    *delay = BACKOFF_MIN;
    tracing::info!(queue = %task_queue, "connected to the broker");
    if let Err(e) = worker.publisher.flush().await {
        tracing::warn!(error = %e, "kept results not yet published");
    }

    // Cancels first: a task delivered after its cancel is then dropped.
    let control = conn.create_channel().await?;
    drain_control(worker, &control, &control_queue).await?;
    control.basic_qos(64, BasicQosOptions::default()).await?;
    let mut control_consumer = control
        .basic_consume(
            control_queue.as_str().into(),
            CONTROL_CONSUMER.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let tasks = conn.create_channel().await?;
    let mut task_consumer = None;
    if !worker.shutdown.is_cancelled() {
        tasks
            .basic_qos(worker.concurrency, BasicQosOptions::default())
            .await?;
        task_consumer = Some(
            tasks
                .basic_consume(
                    task_queue.as_str().into(),
                    TASK_CONSUMER.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?,
        );
    }

    let mut check = tokio::time::interval(CHECK_PERIOD);
    loop {
        let taking = task_consumer.is_some();
        let next_task = async {
            match task_consumer.as_mut() {
                Some(c) => c.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = stop.cancelled() => {
                // Closed while its channels are open: the broker closes them
                // with it (closing them first, by dropping them, made lapin
                // log an error per channel).
                let _ = conn.close(200, "bora worker closing".into()).await;
                return Ok(());
            }
            () = worker.shutdown.cancelled(), if taking => {
                // Stop taking tasks; prefetched ones are requeued by their handlers.
                task_consumer = None;
                tasks
                    .basic_cancel(TASK_CONSUMER.into(), BasicCancelOptions::default())
                    .await?;
                tracing::info!("no longer taking tasks");
            }
            msg = control_consumer.next() => match msg {
                Some(Ok(d)) => {
                    on_control(worker, &d.data);
                    d.ack(BasicAckOptions::default()).await?;
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Err(SessionError::Lost("control consumer ended")),
            },
            msg = next_task => match msg {
                Some(Ok(d)) => {
                    worker.tasks.spawn(handler::handle(worker.clone(), d, ctx.clone()));
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Err(SessionError::Lost("task consumer ended")),
            },
            _ = check.tick() => {
                if !conn.status().connected()
                    || !publish.status().connected()
                    || !control.status().connected()
                    || !tasks.status().connected()
                {
                    return Err(SessionError::Lost("a channel closed"));
                }
                if worker.publisher.kept() > 0 {
                    let _ = worker.publisher.flush().await;
                }
            }
        }
    }
}

/// Takes every cancel already waiting, before any task is consumed.
async fn drain_control(
    worker: &Worker,
    channel: &Channel,
    queue: &str,
) -> Result<(), SessionError> {
    while let Some(msg) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await?
    {
        on_control(worker, &msg.delivery.data);
        msg.delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

fn on_control(worker: &Worker, body: &[u8]) {
    let cancel = RpcRequest::decode(body)
        .map_err(|e| e.to_string())
        .and_then(|req| CancelMessage::from_cast(&req).map_err(|e| e.to_string()));
    match cancel {
        Ok(c) => {
            let held = worker.registry.cancel((c.task_id, c.attempt));
            tracing::info!(
                task_id = %c.task_id,
                attempt = c.attempt,
                server_id = %worker.server_id,
                held,
                "cancel received"
            );
        }
        Err(error) => {
            let n = worker
                .bad_messages
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            tracing::warn!(error, bad_messages = n, "bad message on the control queue");
        }
    }
}

/// The broker's reply code of an AMQP error (404, 403, ...).
fn amqp_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}

async fn ensure_exchange(conn: &Connection, name: &str, what: &str) -> Result<(), SessionError> {
    let ch = conn.create_channel().await?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    match ch
        .exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            passive,
            FieldTable::default(),
        )
        .await
    {
        Ok(()) => {
            let _ = ch.close(200, "ok".into()).await;
            Ok(())
        }
        Err(e) if amqp_code(&e) == Some(404) => Err(SessionError::Waiting(format!(
            "{what} {name:?} does not exist yet"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Checks that `queue` exists; if not, declares and binds it exactly as the
/// dispatcher would, when this broker user may.
///
/// # Errors
/// [`SessionError::Waiting`] while the queue is missing and this user may not
/// make it; a broken connection.
async fn ensure_queue(conn: &Connection, worker: &Worker, queue: &str) -> Result<(), SessionError> {
    let ch = conn.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match ch
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        Ok(_) => {
            let _ = ch.close(200, "ok".into()).await;
            return check_queue_arguments(conn, worker, queue).await;
        }
        Err(e) if amqp_code(&e) == Some(404) => {}
        Err(e) => return Err(e.into()),
    }
    // The channel is closed by the 404. Declare the queue only if it can be
    // bound at once, so a half-made queue never passes the check above.
    let exchange = &worker.amqp.exchange;
    ensure_exchange(conn, exchange, "the task exchange").await?;
    let ch = conn.create_channel().await?;
    let refused = |what: &str| {
        SessionError::Waiting(format!(
            "queue {queue:?} does not exist and this broker user may not {what} it"
        ))
    };
    match declare_queue(&ch, &worker.amqp, queue).await {
        Ok(()) => {}
        Err(BrokerError::Amqp(e)) if amqp_code(&e) == Some(403) => {
            return Err(refused("declare"));
        }
        Err(e) => return Err(e.into()),
    }
    match ch
        .queue_bind(
            queue.into(),
            exchange.as_str().into(),
            queue.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
    {
        Ok(()) => {}
        Err(e) if amqp_code(&e) == Some(403) => return Err(refused("bind")),
        Err(e) => return Err(e.into()),
    }
    tracing::info!(queue, exchange = %exchange, "declared the missing queue");
    let _ = ch.close(200, "ok".into()).await;
    Ok(())
}

/// Redeclares an existing queue with this worker's arguments, which changes
/// nothing when they match, and reports a queue of another type (or with
/// another delivery limit) than `amqp.queue_type` says: an error in the log
/// that names the queue and the fix, once per connection. The worker still
/// consumes the queue as it is (its type is the dispatcher's choice and
/// changes nothing here), so a stale setting never stops tasks. A registered
/// guest user may configure nothing (403): its queues are the dispatcher's
/// to declare, and there is nothing to check: it is not asked (see
/// `Worker::check_queues`).
async fn check_queue_arguments(
    conn: &Connection,
    worker: &Worker,
    queue: &str,
) -> Result<(), SessionError> {
    if !worker.check_queues.load(Ordering::Relaxed) {
        return Ok(());
    }
    let ch = conn.create_channel().await?;
    match declare_queue(&ch, &worker.amqp, queue).await {
        Ok(()) => {
            let _ = ch.close(200, "ok".into()).await;
            Ok(())
        }
        Err(BrokerError::Amqp(e)) if amqp_code(&e) == Some(403) => {
            worker.check_queues.store(false, Ordering::Relaxed);
            Ok(())
        }
        Err(e @ BrokerError::Inequivalent { .. }) => {
            tracing::error!(
                queue,
                error = %e,
                "queue type mismatch: consuming the existing queue as it is"
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
