//! The notification listener of the bench: what a Heat, Mistral or
//! Ceilometer listener is to a real deployment. It consumes the
//! dispatcher's `<topic>.info` and `<topic>.error` queues (declared as the
//! dispatcher declares them), acks in batches, and counts the `bora.task.end`
//! notifications, so the bench can check that every task it ran was
//! announced. Without it the notifications would pile up in the vhost, which
//! no deployment leaves them to do for long.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::config::Settings;

/// Unacked notifications a queue may hand out at once (acked with one
/// `multiple` ack whenever the stream has nothing ready).
const PREFETCH: u16 = 1_000;

pub struct Listener {
    conn: Connection,
    loops: Vec<JoinHandle<()>>,
    task_ends: Arc<AtomicU64>,
}

impl Listener {
    /// Declares the notification queues and starts consuming them.
    ///
    /// # Errors
    /// The broker refuses the connection, a declare or a consume.
    pub async fn start(settings: &Settings) -> anyhow::Result<Self> {
        let amqp = &settings.amqp;
        let broker = Broker::new(&amqp.url, amqp, "bora-bench-listener")?;
        let conn = Connection::connect(
            amqp.url.expose(),
            ConnectionProperties::default().with_connection_name("bora-bench-listener".into()),
        )
        .await?;
        let task_ends = Arc::new(AtomicU64::new(0));
        let mut loops = Vec::new();
        for priority in ["info", "error"] {
            let queue = format!("{}.{priority}", settings.notifications.topic);
            broker.declare_notification_queue(&queue).await?;
            let ch = conn.create_channel().await?;
            ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
            let mut consumer = ch
                .basic_consume(
                    queue.as_str().into(),
                    format!("bench-listener-{priority}").as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let task_ends = task_ends.clone();
            loops.push(tokio::spawn(async move {
                while let Some(Ok(first)) = consumer.next().await {
                    let mut last = first.delivery_tag;
                    let mut ends = u64::from(is_task_end(&first.data));
                    while let Some(Some(Ok(d))) =
                        futures_util::FutureExt::now_or_never(consumer.next())
                    {
                        last = d.delivery_tag;
                        ends += u64::from(is_task_end(&d.data));
                    }
                    task_ends.fetch_add(ends, Ordering::Relaxed);
                    if ch
                        .basic_ack(last, BasicAckOptions { multiple: true })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }));
        }
        Ok(Self {
            conn,
            loops,
            task_ends,
        })
    }

    /// `bora.task.end` notifications taken so far.
    pub fn task_ends(&self) -> u64 {
        self.task_ends.load(Ordering::Relaxed)
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "bench done".into()).await;
        for l in self.loops {
            l.abort();
        }
    }
}

/// Whether an oslo notification envelope announces a task's end.
fn is_task_end(body: &[u8]) -> bool {
    crate::protocol::decode_envelope(body).is_ok_and(|m| {
        m.get("event_type").and_then(serde_json::Value::as_str) == Some("bora.task.end")
    })
}
