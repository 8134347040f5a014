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
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backoff::Backoff;
use crate::broker::Broker;
use crate::store::now_us;
use crate::tracker::{Incoming, Tracker, Verdict};

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

pub async fn run(
    tracker: Tracker,
    broker: Broker,
    listening: Listening,
    shutdown: CancellationToken,
) {
    consume(&tracker, &broker, &listening, &shutdown).await;
    listening.stopped();
}

async fn consume(
    tracker: &Tracker,
    broker: &Broker,
    listening: &Listening,
    shutdown: &CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut connected_before = false;
    'connect: while !shutdown.is_cancelled() {
        let connected = super::connect_bounded(async {
            broker.declare_topology().await?;
            broker.reply_consumer().await
        });
        listening.stopped();
        // A broker that accepts the TCP connection and then says nothing
        // holds `connected` for the pool's create timeout: obey shutdown.
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = connected => c,
        };
        let mut consumer = match connected {
            Ok(c) => {
                info!("result consumer connected to the broker");
                listening.started();
                if std::mem::replace(&mut connected_before, true) {
                    metrics::counter!("bora_broker_reconnects_total", "component" => "replies")
                        .increment(1);
                }
                backoff.reset();
                c
            }
            Err(e) => {
                warn!(error = %e, "result consumer cannot reach the broker; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => continue 'connect,
                }
            }
        };
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
                match tracker.record_replies(&incoming).await {
                    Ok(verdicts) => break verdicts,
                    Err(e) => {
                        error!(error = %e, "cannot record replies; keeping them and retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => {
                                consumer.close().await;
                                return;
                            }
                            _ = tokio::time::sleep(backoff.next_delay()) => {}
                        }
                    }
                }
            };
            // From taking the result off the queue to the commit
            // that recorded it and released its dependents.
            let released = received.elapsed().as_secs_f64();
            for v in verdicts {
                match v {
                    Verdict::Recorded => {
                        metrics::counter!("bora_results_recorded_total").increment(1);
                        metrics::histogram!("bora_result_to_release_seconds").record(released);
                    }
                    Verdict::Heartbeat => metrics::counter!("bora_heartbeats_total").increment(1),
                    Verdict::Dropped(reason) => {
                        // Never the payload: it may carry credentials.
                        warn!(reason, "reply dropped");
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
