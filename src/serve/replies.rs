//! The result consumer: takes replies off `reply_bora` in batches, records a
//! batch in one transaction, and acks it only after the commit. A crash
//! between commit and ack redelivers the batch; recording is once per
//! (task, attempt), so the redelivery changes nothing and is counted.
//!
//! It also keeps [`Listening`], what the scanner needs before it may call
//! any silence a lost worker: since when the consumer has been taking
//! replies without a break, up to when it has heard everything sent (the
//! stamp of the newest recorded probe, see `broker::probe`), and when the
//! reply queue last refused a probe for being full.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::app::now_us;
use crate::app::{App, Incoming, Verdict};
use crate::broker::reconnect::Reconnect;
use crate::broker::{Broker, ReplyDelivery, probe};

/// What the result consumer has heard, for the scanner; cheap to clone.
/// Times are the dispatcher's clock (µs); 0 stands for unset.
#[derive(Clone, Default)]
pub struct Listening(Arc<Heard>);

#[derive(Default)]
struct Heard {
    /// Start of the current unbroken stretch of consuming. Heartbeats sent
    /// while nobody consumed wait in `reply_bora`: silence before this
    /// moment was not heard, so it proves nothing about a worker.
    since: AtomicI64,
    /// The stamp of the newest probe recorded: every reply sent before it
    /// has been recorded.
    until: AtomicI64,
    /// When the reply queue last refused a probe (full): replies sent then,
    /// heartbeats among them, may have been refused too.
    refused_at: AtomicI64,
}

fn get(a: &AtomicI64) -> Option<i64> {
    match a.load(Ordering::Acquire) {
        0 => None,
        t => Some(t),
    }
}

impl Listening {
    /// The start of the current unbroken stretch of consuming, if any.
    pub fn since(&self) -> Option<i64> {
        get(&self.0.since)
    }

    /// Up to when every reply sent has been recorded (the newest recorded
    /// probe's stamp); unset until the first probe comes back.
    pub fn heard_until(&self) -> Option<i64> {
        get(&self.0.until)
    }

    /// When the reply queue last refused a probe for being full.
    pub fn refused_at(&self) -> Option<i64> {
        get(&self.0.refused_at)
    }

    /// A probe stamped `sent_us` was refused: the reply queue is full.
    pub fn probe_refused(&self, at_us: i64) {
        self.0.refused_at.fetch_max(at_us.max(1), Ordering::AcqRel);
    }

    fn heard(&self, sent_us: i64) {
        self.0.until.fetch_max(sent_us.max(1), Ordering::AcqRel);
    }

    fn started(&self) {
        self.0.since.store(now_us().max(1), Ordering::Release);
    }

    fn stopped(&self) {
        self.0.since.store(0, Ordering::Release);
    }
}

/// The stamp of `d` if it is a probe from the dispatcher's own broker user
/// (`dispatcher_user`) through the reply exchange; anything else, however
/// it is labelled, is a reply like any other.
fn probe_stamp(d: &ReplyDelivery, dispatcher_user: &str, reply_exchange: &str) -> Option<i64> {
    if d.kind.as_deref() != Some(probe::PROBE_TYPE)
        || d.user_id.as_deref() != Some(dispatcher_user)
        || d.exchange != reply_exchange
    {
        return None;
    }
    probe::decode(&d.body)
}

/// Records `incoming` in one transaction; if the store refuses it for
/// what it holds (not for being down or busy), records its halves apart,
/// down to single replies, and drops a single reply the store refuses
/// (`unrecordable`): one bad reply must not stop every reply behind it
/// forever. Halves already committed are not undone; if a later half meets
/// a store outage the whole batch is recorded again, which changes nothing
/// for the replies already recorded (once per task and attempt).
///
/// # Errors
/// A transient store failure: the caller keeps the batch and tries again.
fn record_apart<'a>(
    app: &'a App,
    incoming: &'a [Incoming],
) -> futures_util::future::BoxFuture<'a, Result<Vec<Verdict>, crate::app::AppError>> {
    Box::pin(async move {
        match app.record_replies(incoming).await {
            Ok(verdicts) => Ok(verdicts),
            Err(e) if e.is_transient() => Err(e),
            Err(e) => match incoming {
                [] => Ok(Vec::new()),
                [one] => {
                    error!(
                        error = %e,
                        user_id = one.user_id.as_deref().unwrap_or(""),
                        exchange = %one.exchange,
                        "the store refuses this reply; dropping it"
                    );
                    Ok(vec![Verdict::Dropped("unrecordable")])
                }
                _ => {
                    let (a, b) = incoming.split_at(incoming.len() / 2);
                    let mut verdicts = record_apart(app, a).await?;
                    verdicts.extend(record_apart(app, b).await?);
                    Ok(verdicts)
                }
            },
        }
    })
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
            // Probes are taken out: they only say how far the consumer got.
            let config = app.config();
            let mut heard = None;
            let batch: Vec<ReplyDelivery> = batch
                .into_iter()
                .filter(|d| {
                    let stamp = probe_stamp(d, &config.dispatcher_user, &config.reply_exchange);
                    heard = heard.max(stamp);
                    stamp.is_none()
                })
                .collect();
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
            // repeats on the same reply is what the limit is for). A reply
            // the store refuses for what it holds is set apart and dropped,
            // so it cannot hold back every reply after it.
            let verdicts = loop {
                if incoming.is_empty() {
                    break Vec::new();
                }
                match record_apart(app, &incoming).await {
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
            // Everything before the probes in this batch is committed.
            if let Some(sent) = heard {
                listening.heard(sent);
            }
            if let Err(e) = consumer.ack_through(last).await {
                warn!(error = %e, "ack failed after commit; the broker will redeliver and the duplicates will be dropped");
                continue 'connect;
            }
        }
    }
}
