//! The result consumer: takes replies off `reply_bora` in batches, records a
//! batch in one transaction, and acks it only after the commit. A crash
//! between commit and ack redelivers the batch; recording is once per
//! (task, attempt), so the redelivery changes nothing and is counted.
//!
//! It also keeps [`Listening`]: since when the consumer has been taking
//! replies without a break, which the scanner needs before it may call any
//! silence a lost worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::app::now_us;
use crate::app::{App, Incoming, Verdict};
use crate::broker::Broker;
use crate::broker::reconnect::Reconnect;

/// Since when (store clock, µs) the result consumer has been consuming
/// without a break; unset while it is not. Heartbeats sent while nobody
/// consumed wait in `reply_bora`: silence before this moment was not heard,
/// so it proves nothing about a worker. Cheap to clone.
#[derive(Clone, Default)]
pub struct Listening(Arc<AtomicI64>);

impl Listening {
    /// The start of the current unbroken stretch of consuming, if any.
    pub fn since(&self) -> Option<i64> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            t => Some(t),
        }
    }

    fn started(&self) {
        self.0.store(now_us().max(1), Ordering::Release);
    }

    fn stopped(&self) {
        self.0.store(0, Ordering::Release);
    }
}

pub async fn run(app: App, broker: Broker, listening: Listening, shutdown: CancellationToken) {
    consume(&app, &broker, &listening, &shutdown).await;
    listening.stopped();
}

async fn consume(app: &App, broker: &Broker, listening: &Listening, shutdown: &CancellationToken) {
    let mut link = Reconnect::new("replies");
    'connect: loop {
        listening.stopped();
        let connected = link
            .connect(shutdown, || async {
                broker.declare_topology().await?;
                broker.reply_consumer().await
            })
            .await;
        let Some(mut consumer) = connected else {
            return;
        };
        listening.started();
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => {
                    consumer.close().await;
                    return;
                }
                b = consumer.next_batch() => b,
            };
            let batch = match batch {
                Ok(Some(b)) if !b.is_empty() => b,
                Ok(_) => {
                    warn!("the broker cancelled the result consumer; reconnecting");
                    continue 'connect;
                }
                Err(e) => {
                    warn!(error = %e, "result consumer lost the broker; reconnecting");
                    continue 'connect;
                }
            };
            let received = std::time::Instant::now();
            let last = batch.iter().map(|d| d.delivery_tag).max().unwrap_or(0);
            let incoming: Vec<Incoming> = batch
                .into_iter()
                .map(|d| Incoming {
                    exchange: d.exchange,
                    user_id: d.user_id,
                    correlation_id: d.correlation_id,
                    body: d.body,
                })
                .collect();
            // Until the store takes the batch, its deliveries stay here,
            // unacked. Returned to the queue, each would count a delivery,
            // and a quorum queue drops a message after `amqp.delivery_limit`
            // of them: a store outage would lose results. Held, they go back
            // only when the dispatcher dies or loses the broker (a crash that
            // repeats on the same reply is what the limit is for).
            let verdicts = loop {
                match app.record_replies(&incoming).await {
                    Ok(verdicts) => break verdicts,
                    Err(e) => {
                        error!(error = %e, "cannot record replies; keeping them and retrying");
                        if !link.pause(shutdown).await {
                            consumer.close().await;
                            return;
                        }
                    }
                }
            };
            // From taking the result off the queue to the commit
            // that recorded it and released its dependents.
            let released = received.elapsed().as_secs_f64();
            for (v, reply) in verdicts.into_iter().zip(&incoming) {
                match v {
                    Verdict::Recorded => {
                        metrics::counter!("bora_results_recorded_total").increment(1);
                        metrics::histogram!("bora_result_to_release_seconds").record(released);
                    }
                    Verdict::Heartbeat => metrics::counter!("bora_heartbeats_total").increment(1),
                    Verdict::Output => {
                        metrics::counter!("bora_live_output_chunks_total").increment(1);
                    }
                    Verdict::Dropped(reason) => {
                        // Who sent it and how, so a forging guest can be
                        // found; never the payload (it may carry credentials).
                        warn!(
                            reason,
                            user_id = reply.user_id.as_deref().unwrap_or(""),
                            exchange = %reply.exchange,
                            "reply dropped"
                        );
                        metrics::counter!("bora_results_rejected_total", "reason" => reason)
                            .increment(1);
                    }
                }
            }
            if let Err(e) = consumer.ack_through(last).await {
                warn!(error = %e, "ack failed after commit; the broker will redeliver and the duplicates will be dropped");
                continue 'connect;
            }
        }
    }
}
