//! The baseline with no bora in the path: lapin alone, the same topology and
//! the same message bodies. A "dispatcher" connection publishes `run_task`
//! calls (persistent, mandatory, with confirms) to the task exchange, one
//! queue per server; [`Responder`]s consume them and reply to a reply queue
//! (confirm, then ack); the dispatcher side consumes the replies and acks
//! them in batches. Throughput is pipelined (a window of unconfirmed
//! publishes); round trips are strictly one at a time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};

use lapin::types::FieldTable;
use lapin::{
    Channel, Confirmation, Connection, ConnectionProperties, Consumer, ExchangeKind,
    PublisherConfirm,
};

use super::responder::{ReplyMode, Responder, noop_reply};
use crate::broker::{message_properties, queue_arguments};
use crate::config::Settings;
use crate::domain::{Delivery, ServerId, TaskId, WorkflowId};
use crate::protocol::TaskMessage;

/// Unconfirmed publishes in flight during the throughput run.
const WINDOW: usize = 1_000;
/// Publishes queued together before their writes are awaited.
const BURST: usize = 100;
/// Most replies taken (and acked with one `multiple` ack) at once.
const REPLY_PREFETCH: u16 = 512;
/// A reply that does not come within this long fails the bench.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Raw {
    conn: Connection,
    publish: Channel,
    reply_channel: Channel,
    replies: Consumer,
    responder: Responder,
    exchange: String,
    queues: Vec<String>,
    body: Vec<u8>,
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

impl Raw {
    /// Declares `bench_raw.<server>` queues on the task exchange and a
    /// `bench_raw_reply` exchange and queue, and starts the responders.
    ///
    /// # Errors
    /// The broker refuses a connection or a declare.
    pub async fn start(
        url: &str,
        settings: &Settings,
        servers: &[String],
        per_conn: usize,
    ) -> anyhow::Result<Self> {
        let amqp = &settings.amqp;
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        ch.exchange_declare(
            amqp.exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
        let reply = "bench_raw_reply";
        ch.exchange_declare(
            reply.into(),
            ExchangeKind::Direct,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
        ch.queue_declare(reply.into(), durable(), queue_arguments(amqp))
            .await?;
        ch.queue_bind(
            reply.into(),
            reply.into(),
            reply.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let mut queues = Vec::with_capacity(servers.len());
        for s in servers {
            let q = format!("bench_raw.{s}");
            ch.queue_declare(q.as_str().into(), durable(), queue_arguments(amqp))
                .await?;
            ch.queue_bind(
                q.as_str().into(),
                amqp.exchange.as_str().into(),
                q.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
            queues.push(q);
        }
        let _ = ch.close(200, "declared".into()).await;

        let task = TaskMessage {
            id: TaskId::new(),
            workflow_id: WorkflowId::new(),
            name: "t0".to_owned(),
            server_id: ServerId::parse(&servers[0]).map_err(anyhow::Error::msg)?,
            group: "std.noop".to_owned(),
            config: String::new(),
            inputs: Default::default(),
            outputs: Vec::new(),
            options: Default::default(),
            timeout_s: 3600,
            attempt: 1,
            delivery: Delivery::AtLeastOnce,
            // As bora's own messages carry it.
            live_output_bytes: Some(settings.dispatch.max_live_output_bytes),
            max_result_bytes: Some(settings.dispatch.max_result_bytes as u64),
            secrets: Vec::new(),
        };
        let body = task
            .to_call(&amqp.reply_queue, settings.worker.heartbeat_s)
            .encode();
        let user = crate::broker::management::user_of(url);
        let responder = Responder::start(
            url,
            queues.clone(),
            reply,
            &user,
            ReplyMode::Raw {
                body: noop_reply(&task),
            },
            settings.worker.concurrency,
            per_conn,
            queue_arguments(amqp),
        )
        .await?;

        let publish = conn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let reply_channel = conn.create_channel().await?;
        reply_channel
            .basic_qos(REPLY_PREFETCH, BasicQosOptions::default())
            .await?;
        let replies = reply_channel
            .basic_consume(
                reply.into(),
                "bench-raw-replies".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            conn,
            publish,
            reply_channel,
            replies,
            responder,
            exchange: amqp.exchange.clone(),
            queues,
            body,
        })
    }

    /// `n` messages round-robin over the queues, pipelined; returns the
    /// microseconds from the first publish to the last reply.
    ///
    /// # Errors
    /// A broker failure, a refused publish, or a missing reply.
    pub async fn throughput(&mut self, n: usize) -> anyhow::Result<i64> {
        let (channel, exchange, queues, body) =
            (&self.publish, &self.exchange, &self.queues, &self.body);
        let (replies, reply_channel) = (&mut self.replies, &self.reply_channel);
        let t0 = Instant::now();
        let publisher = async {
            let mut pending = VecDeque::with_capacity(WINDOW);
            let mut next = 0;
            while next < n {
                // Polled together, a burst's frames go out in as few writes
                // as fit (as bora's relay publishes a batch).
                let burst = BURST.min(n - next);
                let published = futures_util::future::try_join_all(
                    (next..next + burst)
                        .map(|i| publish(channel, exchange, &queues[i % queues.len()], body)),
                )
                .await?;
                next += burst;
                pending.extend(published);
                while pending.len() >= WINDOW
                    && let Some(c) = pending.pop_front()
                {
                    confirmed(c.await?)?;
                }
            }
            while let Some(c) = pending.pop_front() {
                confirmed(c.await?)?;
            }
            anyhow::Ok(())
        };
        let consumer = async {
            let mut got = 0;
            while got < n {
                let first = tokio::time::timeout(REPLY_TIMEOUT, replies.next())
                    .await
                    .map_err(|_| anyhow::anyhow!("no raw reply within {REPLY_TIMEOUT:?}"))?
                    .ok_or_else(|| anyhow::anyhow!("raw reply consumer ended"))??;
                let mut last = first.delivery_tag;
                got += 1;
                while got < n {
                    match futures_util::FutureExt::now_or_never(replies.next()) {
                        Some(Some(d)) => {
                            last = d?.delivery_tag;
                            got += 1;
                        }
                        _ => break,
                    }
                }
                reply_channel
                    .basic_ack(last, BasicAckOptions { multiple: true })
                    .await?;
            }
            anyhow::Ok(())
        };
        let (p, c) = tokio::join!(publisher, consumer);
        p?;
        c?;
        Ok(t0.elapsed().as_micros() as i64)
    }

    /// `n` round trips one at a time (publish, consume, reply, consume the
    /// reply), alternating between the first two queues; each in microseconds.
    ///
    /// # Errors
    /// A broker failure, a refused publish, or a missing reply.
    pub async fn round_trips(&mut self, n: usize) -> anyhow::Result<Vec<i64>> {
        let mut rtts = Vec::with_capacity(n);
        for i in 0..n {
            let t0 = Instant::now();
            let queue = &self.queues[i % 2];
            let confirm = publish(&self.publish, &self.exchange, queue, &self.body).await?;
            let (c, d) = tokio::join!(
                confirm,
                tokio::time::timeout(REPLY_TIMEOUT, self.replies.next())
            );
            confirmed(c?)?;
            let d = d
                .map_err(|_| anyhow::anyhow!("no raw reply within {REPLY_TIMEOUT:?}"))?
                .ok_or_else(|| anyhow::anyhow!("raw reply consumer ended"))??;
            rtts.push(t0.elapsed().as_micros() as i64);
            d.ack(BasicAckOptions::default()).await?;
        }
        Ok(rtts)
    }

    pub async fn close(self) {
        self.responder.close().await;
        let _ = self.conn.close(200, "bench done".into()).await;
    }
}

async fn publish(
    channel: &Channel,
    exchange: &str,
    queue: &str,
    body: &[u8],
) -> anyhow::Result<PublisherConfirm> {
    Ok(channel
        .basic_publish(
            exchange.into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            message_properties(),
        )
        .await?)
}

fn confirmed(c: Confirmation) -> anyhow::Result<()> {
    match c {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => anyhow::bail!("raw publish returned unroutable"),
        Confirmation::Nack(_) => anyhow::bail!("raw publish nacked"),
    }
}
