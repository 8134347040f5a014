//! The AMQP side of the oslo RPC API: the `bora_api` queues declared and
//! consumed as an oslo RPC server with durable queues would, and replies
//! published as oslo servers publish them (default exchange, routing key =
//! the caller's `_reply_q`, mandatory, with confirms). What the calls mean is
//! `rpc`'s business; this file only moves bytes.

use futures_util::StreamExt;
use futures_util::stream::SelectAll;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation, Consumer};

use super::{Broker, BrokerError, declare_bound_queue, message_properties};
use deadpool_lapin::Object;

/// One request taken off an API queue.
#[derive(Debug)]
pub struct RpcDelivery {
    /// The channel's tag for it, for [`RpcEndpoint::ack`] or
    /// [`RpcEndpoint::reject`].
    pub delivery_tag: u64,
    /// The request as it came; `protocol` decodes it.
    pub body: Vec<u8>,
}

/// Consumes `<topic>` and `<topic>.<server>` and answers on one channel.
pub struct RpcEndpoint {
    _conn: Object,
    channel: Channel,
    consumers: SelectAll<Consumer>,
}

impl Broker {
    /// Declares the API queues (`topic` shared by every dispatcher, and
    /// `topic.server` for this one) and consumes both.
    ///
    /// # Errors
    /// The broker is unreachable or refuses a declare.
    pub async fn rpc_endpoint(
        &self,
        topic: &str,
        server: &str,
    ) -> Result<RpcEndpoint, BrokerError> {
        self.declare_topology().await?;
        let conn = self.connection().await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channel.basic_qos(32, BasicQosOptions::default()).await?;
        let mut consumers = SelectAll::new();
        for (i, queue) in [topic.to_owned(), format!("{topic}.{server}")]
            .iter()
            .enumerate()
        {
            declare_bound_queue(&channel, &self.settings, queue).await?;
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    format!("bora-api-{i}").as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            consumers.push(consumer);
        }
        Ok(RpcEndpoint {
            _conn: conn,
            channel,
            consumers,
        })
    }
}

impl RpcEndpoint {
    /// The next request; `Ok(None)` once the broker cancelled the consumers.
    ///
    /// # Errors
    /// The channel or connection broke.
    pub async fn next(&mut self) -> Result<Option<RpcDelivery>, BrokerError> {
        match self.consumers.next().await {
            None => Ok(None),
            Some(d) => {
                let d = d?;
                Ok(Some(RpcDelivery {
                    delivery_tag: d.delivery_tag,
                    body: d.data,
                }))
            }
        }
    }

    /// Publishes a reply to the caller's reply queue through the default
    /// exchange and waits for the confirm. Returns false if the queue is gone.
    ///
    /// # Errors
    /// The channel broke.
    pub async fn reply(&self, reply_q: &str, body: &[u8]) -> Result<bool, BrokerError> {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                reply_q.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                message_properties(),
            )
            .await?
            .await?;
        Ok(matches!(confirm, Confirmation::Ack(None)))
    }

    /// # Errors
    /// The channel broke (the broker redelivers the request).
    pub async fn ack(&self, delivery_tag: u64) -> Result<(), BrokerError> {
        self.channel
            .basic_ack(delivery_tag, BasicAckOptions::default())
            .await?;
        Ok(())
    }

    /// Drops an undecodable request, as an oslo server does.
    ///
    /// # Errors
    /// The channel broke.
    pub async fn reject(&self, delivery_tag: u64) -> Result<(), BrokerError> {
        self.channel
            .basic_reject(delivery_tag, BasicRejectOptions { requeue: false })
            .await?;
        Ok(())
    }
}
