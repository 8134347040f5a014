//! The reply path's probe: a tiny message the dispatcher stamps with its own
//! clock and sends through the reply exchange, as a worker's reply goes. It
//! queues behind every reply sent before it, so when the result consumer
//! has recorded a probe, it has recorded everything sent before the probe's
//! stamp: the scanner judges a worker's silence up to that moment, never
//! up to "now" while the consumer is behind (a flood of replies, a slow
//! store). The stamp is the dispatcher's clock, never a guest's.
//!
//! Only a probe published by the dispatcher's own broker user counts: the
//! broker validates `user_id`, so a guest cannot forge one.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation};

use super::{Broker, BrokerError, Object, Published, message_properties};

/// The AMQP `type` of a probe.
pub const PROBE_TYPE: &str = "bora.probe";

/// A probe's body: its send time (µs since the epoch, dispatcher clock).
pub fn encode(sent_us: i64) -> Vec<u8> {
    serde_json::json!({ "bora_probe": sent_us })
        .to_string()
        .into_bytes()
}

/// The send time a probe's body carries, if it is one.
pub fn decode(body: &[u8]) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("bora_probe")?.as_i64()
}

/// Sends probes on its own confirming channel.
pub struct ProbeSender {
    _conn: Object,
    channel: Channel,
    exchange: String,
    routing_key: String,
    user_id: String,
}

impl Broker {
    /// A sender of probes as `user_id` (the dispatcher's broker user).
    ///
    /// # Errors
    /// The broker is unreachable.
    pub async fn probe_sender(&self, user_id: &str) -> Result<ProbeSender, BrokerError> {
        let conn = self.connection().await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(ProbeSender {
            _conn: conn,
            channel,
            exchange: self.settings.reply_queue.clone(),
            routing_key: self.settings.reply_queue.clone(),
            user_id: user_id.to_owned(),
        })
    }
}

impl ProbeSender {
    /// Publishes one probe stamped `sent_us` and waits for its confirm:
    /// [`Published::Nacked`] when the reply queue is full (its length limit
    /// rejects new messages).
    ///
    /// # Errors
    /// The channel broke or the broker did not confirm in time.
    pub async fn send(&self, sent_us: i64) -> Result<Published, BrokerError> {
        let props: BasicProperties = message_properties()
            .with_type(PROBE_TYPE.into())
            .with_user_id(self.user_id.as_str().into())
            .with_delivery_mode(1);
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                self.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &encode(sent_us),
                props,
            )
            .await?;
        let limit = std::time::Duration::from_secs(10);
        let outcome = tokio::time::timeout(limit, confirm)
            .await
            .map_err(|_| BrokerError::Timeout(limit))??;
        Ok(match outcome {
            Confirmation::Ack(None) | Confirmation::NotRequested => Published::Confirmed,
            Confirmation::Ack(Some(_)) => Published::Unroutable,
            Confirmation::Nack(_) => Published::Nacked,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_round_trips_and_a_reply_is_not_one() {
        assert_eq!(decode(&encode(1_234_567)), Some(1_234_567));
        assert_eq!(decode(br#"{"oslo.version":"2.0"}"#), None);
        assert_eq!(decode(b"not json"), None);
    }
}
