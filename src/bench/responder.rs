//! In-process consumers that answer every message of a set of queues the way
//! bora's worker answers a `std.noop` task: publish one persistent reply with
//! `user_id` and `mandatory` to a direct exchange, wait for the broker's
//! confirm, then ack the delivery. Prefetch per queue as the worker's
//! concurrency. Used by the raw baseline (a fixed reply body) and, when
//! there are too many servers for a process each, as bora's workers
//! (a real result for the task's `_msg_id`).

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::task::JoinHandle;

use crate::protocol::{
    CONTENT_ENCODING, CONTENT_TYPE, RpcReply, RpcRequest, TaskMessage, TaskResult,
};

/// What a responder answers.
#[derive(Debug, Clone)]
pub enum ReplyMode {
    /// The same bytes every time (the raw baseline).
    Raw { body: Vec<u8> },
    /// A successful result for the task's `_msg_id`, as `std.noop` gives.
    Bora,
}

pub struct Responder {
    connections: Vec<Connection>,
    loops: Vec<JoinHandle<()>>,
}

/// The reply a `std.noop` or `std.echo` task gets: success, with the
/// task's inputs as its outputs (as `std.echo` answers; a `std.noop` task
/// of the bench has no inputs).
pub fn noop_reply(task: &TaskMessage) -> Vec<u8> {
    let mut result = TaskResult::from_streams(task.attempt, 0, String::new(), String::new());
    result.outputs = task.inputs.clone();
    RpcReply::final_result(
        crate::protocol::task_msg_id(task.id, task.attempt),
        serde_json::to_value(result).unwrap_or_default(),
    )
    .encode()
}

impl Responder {
    /// Consumes `queues` (declared durable with `queue_args` if missing),
    /// `per_conn` queues per connection, and answers to `reply_exchange`.
    ///
    /// # Errors
    /// The broker refuses a connection, a declare or a consume.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        url: &str,
        queues: Vec<String>,
        reply_exchange: &str,
        user_id: &str,
        mode: ReplyMode,
        prefetch: u16,
        per_conn: usize,
        queue_args: FieldTable,
    ) -> Result<Self, lapin::Error> {
        let mut connections = Vec::new();
        let mut loops = Vec::new();
        for chunk in queues.chunks(per_conn.max(1)) {
            let conn = Connection::connect(url, ConnectionProperties::default()).await?;
            let consume = conn.create_channel().await?;
            consume
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            let publish = conn.create_channel().await?;
            publish
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            for queue in chunk {
                consume
                    .queue_declare(
                        queue.as_str().into(),
                        QueueDeclareOptions {
                            durable: true,
                            ..QueueDeclareOptions::default()
                        },
                        queue_args.clone(),
                    )
                    .await?;
                let mut consumer = consume
                    .basic_consume(
                        queue.as_str().into(),
                        format!("bench-{queue}").as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                let (publish, mode) = (publish.clone(), mode.clone());
                let (exchange, user) = (reply_exchange.to_owned(), user_id.to_owned());
                loops.push(tokio::spawn(async move {
                    while let Some(Ok(d)) = consumer.next().await {
                        let (publish, mode) = (publish.clone(), mode.clone());
                        let (exchange, user) = (exchange.clone(), user.clone());
                        tokio::spawn(async move {
                            answer(&publish, &mode, &exchange, &user, d).await;
                        });
                    }
                }));
            }
            connections.push(conn);
        }
        Ok(Self { connections, loops })
    }

    pub async fn close(self) {
        // Connections first, with their channels open (a channel dropped by
        // an aborted loop while its connection closes makes lapin log an error).
        for c in self.connections {
            let _ = c.close(200, "bench done".into()).await;
        }
        for l in &self.loops {
            l.abort();
        }
    }
}

async fn answer(
    publish: &Channel,
    mode: &ReplyMode,
    exchange: &str,
    user: &str,
    d: lapin::message::Delivery,
) {
    let body = match mode {
        ReplyMode::Raw { body } => body.clone(),
        ReplyMode::Bora => match RpcRequest::decode(&d.data)
            .ok()
            .and_then(|r| TaskMessage::from_call(&r).ok())
        {
            Some(task) => noop_reply(&task),
            None => {
                let _ = d.ack(BasicAckOptions::default()).await;
                return;
            }
        },
    };
    let props = BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_content_encoding(CONTENT_ENCODING.into())
        .with_delivery_mode(2)
        .with_user_id(user.into());
    let confirmed = async {
        publish
            .basic_publish(
                exchange.into(),
                exchange.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &body,
                props,
            )
            .await?
            .await
    };
    if confirmed.await.is_ok_and(|c| c.is_ack()) {
        let _ = d.ack(BasicAckOptions::default()).await;
    }
}
