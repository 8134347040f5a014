//! The dispatcher's side of RabbitMQ: connections (a deadpool-lapin pool),
//! the topology of SPEC 5, a confirming publisher, and the reply consumer.
//!
//! All of the dispatcher's AMQP lives here; callers hand over bytes and
//! routing keys and get outcomes back. It knows nothing of tasks' states or
//! of the store. The topology is declared exactly as an oslo.messaging RPC
//! server with `amqp_durable_queues=true` (or `rabbit_quorum_queue=true`)
//! declares it, so either side may declare first (oslo-wire 8).

pub mod management;
pub mod probe;
pub mod reconnect;
pub mod rpc;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use deadpool_lapin::{Object, Pool, PoolConfig, Runtime, Timeouts};
use futures_util::StreamExt;
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, ConnectionProperties, Consumer, ExchangeKind};

use crate::config::{AmqpSettings, QueueType, SecretUrl};
use crate::protocol::{CONTENT_ENCODING, CONTENT_TYPE};

/// The most channels [`Publisher::ensure_servers_queues`] declares on at once.
pub const DECLARE_CHANNELS: usize = 32;

/// The longest the publisher waits for the confirms of one batch.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// A broker failure. The caller reconnects; nothing is lost because the
/// outbox keeps unconfirmed messages and unacked replies are redelivered.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The pool could not hand out a connection (the broker is down, or
    /// refused the login).
    #[error("broker connection: {0}")]
    Pool(String),
    /// A channel, declare, publish or consume failed.
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker did not answer (e.g. confirm a batch) in this long.
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
    /// A queue exists with another type or other arguments than this
    /// configuration declares: RabbitMQ refuses the declare (406) on every
    /// retry, so the message says what to change.
    #[error(
        "queue {queue:?} already exists with other arguments than amqp.queue_type = \"{queue_type}\" \
         and amqp.delivery_limit = {delivery_limit} declare, and RabbitMQ never changes a \
         queue's type or arguments ({broker}); either set amqp.queue_type and \
         amqp.delivery_limit to match the queue, or delete the queue (after draining it) so it \
         is declared again"
    )]
    Inequivalent {
        /// The queue whose declare was refused.
        queue: String,
        /// The type this configuration declares (`amqp.queue_type`).
        queue_type: QueueType,
        /// The limit this configuration declares (`amqp.delivery_limit`).
        delivery_limit: u32,
        /// The broker's own words, naming the argument that differs.
        broker: String,
    },
}

impl BrokerError {
    /// Turns the refusal of a declare of `queue` into [`BrokerError::Inequivalent`]
    /// when it is a 406 PRECONDITION_FAILED (the queue exists with other
    /// arguments), and keeps any other error as it is.
    pub fn from_declare(e: lapin::Error, queue: &str, amqp: &AmqpSettings) -> Self {
        match e.kind() {
            lapin::ErrorKind::ProtocolError(p) if p.get_id() == PRECONDITION_FAILED => {
                BrokerError::Inequivalent {
                    queue: queue.to_owned(),
                    queue_type: amqp.queue_type,
                    delivery_limit: amqp.delivery_limit,
                    broker: p.get_message().to_string(),
                }
            }
            _ => BrokerError::Amqp(e),
        }
    }
}

/// The AMQP reply code of a declare refused for inequivalent arguments.
const PRECONDITION_FAILED: u16 = 406;

/// Properties every bora message carries (oslo-wire 4.2): JSON, UTF-8, persistent.
pub fn message_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_content_encoding(CONTENT_ENCODING.into())
        .with_delivery_mode(2)
        .with_priority(0)
        .with_headers(FieldTable::default())
}

/// Queue arguments for the configured queue type, for every queue bora
/// declares (the dispatcher, the worker and the benchmark alike, since
/// RabbitMQ refuses a redeclare with other arguments): none for classic
/// (what oslo declares with `amqp_durable_queues=true`); for quorum,
/// `x-queue-type: quorum` and, unless `delivery_limit` is 0,
/// `x-delivery-limit` (what oslo declares with `rabbit_quorum_queue=true`
/// and `rabbit_quorum_delivery_limit`).
pub fn queue_arguments(amqp: &AmqpSettings) -> FieldTable {
    let mut args = FieldTable::default();
    if amqp.queue_type == QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        if amqp.delivery_limit > 0 {
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(i64::from(amqp.delivery_limit)),
            );
        }
    }
    args
}

/// Declares `queue` durable with [`queue_arguments`].
///
/// # Errors
/// [`BrokerError::Inequivalent`] when the queue exists with another type or
/// other arguments; the broker's other refusals and a broken channel as
/// [`BrokerError::Amqp`]. Either way the broker closed the channel.
pub async fn declare_queue(
    ch: &Channel,
    amqp: &AmqpSettings,
    queue: &str,
) -> Result<(), BrokerError> {
    ch.queue_declare(queue.into(), durable_queue(), queue_arguments(amqp))
        .await
        .map_err(|e| BrokerError::from_declare(e, queue, amqp))?;
    Ok(())
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Connections to the broker, and the names of bora's objects on it.
#[derive(Clone)]
pub struct Broker {
    pool: Pool,
    settings: AmqpSettings,
}

impl Broker {
    /// Creates the pool; no connection is made until one is needed.
    ///
    /// # Errors
    /// An invalid URL.
    pub fn new(url: &SecretUrl, settings: &AmqpSettings, name: &str) -> Result<Self, BrokerError> {
        let url = url.expose().to_owned();
        url.parse::<lapin::uri::AMQPUri>()
            .map_err(|e| BrokerError::Pool(format!("invalid amqp url: {e}")))?;
        let conn_name = format!(
            "{name}:{}:{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        // Held for good: the relay's publisher, the result consumer, the
        // probe sender and the RPC API; the rest serve short asks
        // (registration's declares, a queue's depth).
        let mut pool_config = PoolConfig::new(6);
        pool_config.timeouts = Timeouts {
            wait: Some(Duration::from_secs(10)),
            create: Some(Duration::from_secs(10)),
            recycle: Some(Duration::from_secs(5)),
        };
        let config = deadpool_lapin::Config {
            url: Some(url),
            pool: Some(pool_config),
        };
        let pool = config
            .create_pool(
                move || {
                    ConnectionProperties::default().with_connection_name(conn_name.clone().into())
                },
                Runtime::Tokio1,
            )
            .map_err(|e| BrokerError::Pool(e.to_string()))?;
        Ok(Self {
            pool,
            settings: settings.clone(),
        })
    }

    /// The `[amqp]` settings this broker was built from.
    pub fn settings(&self) -> &AmqpSettings {
        &self.settings
    }

    async fn connection(&self) -> Result<Object, BrokerError> {
        self.pool
            .get()
            .await
            .map_err(|e| BrokerError::Pool(e.to_string()))
    }

    /// Whether a connection to the broker is up (for `/readyz`).
    pub async fn ping(&self) -> bool {
        let check = async {
            let conn = self.connection().await.ok()?;
            conn.status().connected().then_some(())
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(3), check).await,
            Ok(Some(()))
        )
    }

    /// Messages ready (not yet delivered to a consumer) in a server's task
    /// queue, by a passive declare: an upper bound of the messages ahead of a
    /// queued task (it counts the task itself and anything behind it).
    ///
    /// # Errors
    /// The broker is unreachable, or the queue does not exist (the passive
    /// declare is refused and closes its own channel only).
    pub async fn task_queue_ready(&self, server_id: &str) -> Result<u32, BrokerError> {
        let ask = async {
            let conn = self.connection().await?;
            let ch = conn.create_channel().await?;
            let queue = self.settings.task_queue(server_id);
            let q = ch
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let _ = ch.close(200, "asked".into()).await;
            Ok(q.message_count())
        };
        let limit = Duration::from_secs(3);
        tokio::time::timeout(limit, ask)
            .await
            .map_err(|_| BrokerError::Timeout(limit))?
    }

    /// Declares the dispatcher's fixed topology: the task exchange, the reply
    /// exchange and queue, and their binding.
    ///
    /// # Errors
    /// The broker is unreachable or refuses a declare (e.g. a non-durable
    /// exchange of the same name made by a default-config oslo peer).
    pub async fn declare_topology(&self) -> Result<(), BrokerError> {
        let conn = self.connection().await?;
        let ch = conn.create_channel().await?;
        let s = &self.settings;
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        ch.exchange_declare(
            s.exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            s.reply_queue.as_str().into(),
            ExchangeKind::Direct,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
        declare_queue(&ch, s, &s.reply_queue).await?;
        ch.queue_bind(
            s.reply_queue.as_str().into(),
            s.reply_queue.as_str().into(),
            s.reply_queue.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let _ = ch.close(200, "topology declared".into()).await;
        Ok(())
    }

    /// Declares and binds one server's task and control queues (for
    /// registration, so a worker can consume before any task exists).
    ///
    /// # Errors
    /// The broker is unreachable or refuses (a queue made with other flags).
    pub async fn declare_server_queues(&self, server_id: &str) -> Result<(), BrokerError> {
        // The exchange must exist to bind to; at start-up it may not yet.
        self.declare_topology().await?;
        let conn = self.connection().await?;
        let ch = conn.create_channel().await?;
        declare_server_queues(&ch, &self.settings, server_id).await?;
        let _ = ch.close(200, "declared".into()).await;
        Ok(())
    }

    /// Declares a notification queue as the relay does before its first
    /// notification to it (durable, bound by its own name), for a listener
    /// that starts first.
    ///
    /// # Errors
    /// The broker is unreachable or refuses (a queue made with other flags).
    pub async fn declare_notification_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.declare_topology().await?;
        let conn = self.connection().await?;
        let ch = conn.create_channel().await?;
        declare_bound_queue(&ch, &self.settings, queue).await?;
        let _ = ch.close(200, "declared".into()).await;
        Ok(())
    }

    /// A publisher on its own channel with publisher confirms.
    ///
    /// # Errors
    /// The broker is unreachable.
    pub async fn publisher(&self) -> Result<Publisher, BrokerError> {
        let conn = self.connection().await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let topology = conn.create_channel().await?;
        Ok(Publisher {
            _conn: conn,
            channel,
            topology,
            declared: HashSet::new(),
            settings: self.settings.clone(),
        })
    }

    /// A consumer of the reply queue with manual acks.
    ///
    /// # Errors
    /// The broker is unreachable or the reply queue does not exist.
    pub async fn reply_consumer(&self) -> Result<ReplyConsumer, BrokerError> {
        let conn = self.connection().await?;
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(self.settings.reply_prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                self.settings.reply_queue.as_str().into(),
                "bora-replies".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(ReplyConsumer {
            _conn: conn,
            channel,
            consumer,
            max_batch: usize::from(self.settings.reply_prefetch),
        })
    }
}

/// Declares a server's task and control queues, bound to the task exchange
/// with their own names, exactly as an oslo RPC server with durable (or
/// quorum) queues declares `bora_tasks.<server_id>`.
async fn declare_server_queues(
    ch: &Channel,
    settings: &AmqpSettings,
    server_id: &str,
) -> Result<(), BrokerError> {
    for queue in [
        settings.task_queue(server_id),
        settings.control_queue(server_id),
    ] {
        declare_bound_queue(ch, settings, &queue).await?;
    }
    Ok(())
}

/// Declares a durable (or quorum) queue bound to the task exchange with its
/// own name as the key: the shape of every queue oslo peers share with bora.
async fn declare_bound_queue(
    ch: &Channel,
    settings: &AmqpSettings,
    queue: &str,
) -> Result<(), BrokerError> {
    declare_queue(ch, settings, queue).await?;
    ch.queue_bind(
        queue.into(),
        settings.exchange.as_str().into(),
        queue.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// One message for the publisher.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The key it is published with to the configured exchange.
    pub routing_key: String,
    /// The encoded message, as `protocol` renders it.
    pub body: Vec<u8>,
    /// Returned when no queue takes it (tasks, cancels); notifications are
    /// not, as oslo's Notifier does.
    pub mandatory: bool,
}

/// What the broker said about one published message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Stored by the broker and routed to a queue.
    Confirmed,
    /// No queue is bound to the routing key (mandatory publish returned).
    Unroutable,
    /// The broker refused to take responsibility for it.
    Nacked,
}

/// Publishes with confirms; owns the server queues it declared.
pub struct Publisher {
    /// Kept so the pooled connection stays checked out while in use.
    _conn: Object,
    channel: Channel,
    /// Declares run on their own channel: a refused declare closes its channel.
    topology: Channel,
    /// Server ids whose queues this publisher declared.
    declared: HashSet<String>,
    settings: AmqpSettings,
}

impl Publisher {
    /// Whether the channels are still usable.
    pub fn is_open(&self) -> bool {
        self.channel.status().connected() && self.topology.status().connected()
    }

    /// Makes sure a server's task and control queues exist and are bound
    /// (durable, no expiry: tasks wait for a worker that boots late).
    ///
    /// # Errors
    /// A refused declare (a queue made with other flags) or a broken channel.
    async fn ensure_server_queues(&mut self, server_id: &str) -> Result<(), BrokerError> {
        if self.declared.contains(server_id) {
            return Ok(());
        }
        if !self.topology.status().connected() {
            self.topology = self._conn.create_channel().await?;
        }
        declare_server_queues(&self.topology, &self.settings, server_id).await?;
        self.declared.insert(server_id.to_owned());
        Ok(())
    }

    /// Makes sure the task and control queues of every server in `servers`
    /// exist and are bound, as [`Publisher::ensure_server_queues`] does for
    /// one, declaring the missing ones on up to [`DECLARE_CHANNELS`]
    /// channels at once: a declare is a round trip and a queue's creation
    /// is the broker's slowest step, so thousands of new servers (a
    /// fan-out, a first deployment) are declared side by side, not one
    /// after another. Returns the servers whose queues exist with other
    /// arguments (their declares are refused; everyone else's go on).
    ///
    /// # Errors
    /// A broken connection or any refusal other than inequivalent arguments.
    pub async fn ensure_servers_queues<'a>(
        &mut self,
        servers: impl IntoIterator<Item = &'a String>,
    ) -> Result<BTreeMap<String, BrokerError>, BrokerError> {
        let todo: Vec<&String> = servers
            .into_iter()
            .filter(|s| !self.declared.contains(s.as_str()))
            .collect();
        let mut refused = BTreeMap::new();
        if todo.len() <= 1 {
            for server in todo {
                match self.ensure_server_queues(server).await {
                    Ok(()) => {}
                    Err(e @ BrokerError::Inequivalent { .. }) => {
                        refused.insert(server.clone(), e);
                    }
                    Err(e) => return Err(e),
                }
            }
            return Ok(refused);
        }
        let lanes = todo.len().min(DECLARE_CHANNELS);
        let mut groups: Vec<Vec<&String>> = vec![Vec::new(); lanes];
        for (i, server) in todo.into_iter().enumerate() {
            groups[i % lanes].push(server);
        }
        let (conn, settings) = (&self._conn, &self.settings);
        let outcomes =
            futures_util::future::try_join_all(groups.into_iter().map(|group| async move {
                let mut ch = conn.create_channel().await?;
                let mut outcome = Vec::with_capacity(group.len());
                for server in group {
                    match declare_server_queues(&ch, settings, server).await {
                        Ok(()) => outcome.push((server, None)),
                        Err(e @ BrokerError::Inequivalent { .. }) => {
                            // The refusal closed the channel.
                            outcome.push((server, Some(e)));
                            ch = conn.create_channel().await?;
                        }
                        Err(e) => return Err(e),
                    }
                }
                let _ = ch.close(200, "declared".into()).await;
                Ok::<_, BrokerError>(outcome)
            }))
            .await?;
        for (server, refusal) in outcomes.into_iter().flatten() {
            match refusal {
                None => {
                    self.declared.insert(server.clone());
                }
                Some(e) => {
                    refused.insert(server.clone(), e);
                }
            }
        }
        Ok(refused)
    }

    /// Makes sure a notification queue exists, as oslo's Notifier declares it
    /// on send (durable, named and bound by its routing key), so notifications
    /// wait for a listener that starts later.
    ///
    /// # Errors
    /// A refused declare or a broken channel.
    pub async fn ensure_notification_queue(&mut self, name: &str) -> Result<(), BrokerError> {
        let key = format!("notify:{name}");
        if self.declared.contains(&key) {
            return Ok(());
        }
        if !self.topology.status().connected() {
            self.topology = self._conn.create_channel().await?;
        }
        declare_bound_queue(&self.topology, &self.settings, name).await?;
        self.declared.insert(key);
        Ok(())
    }

    /// Forgets that a server's queues exist (after an unroutable publish).
    pub fn forget_server(&mut self, server_id: &str) {
        self.declared.remove(server_id);
    }

    /// Publishes `batch` (persistent, each `mandatory` as it says) and
    /// returns once its frames are queued for the wire, without waiting for
    /// the broker's confirms: [`Confirms::outcomes`] waits for them, in the
    /// order of `batch`. The caller may publish more meanwhile.
    ///
    /// # Errors
    /// The channel or connection broke.
    pub async fn publish_batch(&mut self, batch: &[Outgoing]) -> Result<Confirms, BrokerError> {
        // lapin's `basic_publish` resolves once its frames are written:
        // awaited one by one, every message costs a wake-up of the
        // connection's I/O thread and a write of its own. Polled together,
        // all the frames are queued (in order: each future queues its frames
        // and takes its confirm tag at its first poll) before the I/O thread
        // writes them in as few writes as fit.
        let publishes = batch.iter().map(|msg| {
            self.channel.basic_publish(
                self.settings.exchange.as_str().into(),
                msg.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: msg.mandatory,
                    ..BasicPublishOptions::default()
                },
                &msg.body,
                message_properties(),
            )
        });
        Ok(Confirms(
            futures_util::future::try_join_all(publishes).await?,
        ))
    }
}

/// The broker's confirms of one [`Publisher::publish_batch`], still to come.
pub struct Confirms(Vec<lapin::PublisherConfirm>);

impl Confirms {
    /// What became of each message, in the order published.
    ///
    /// # Errors
    /// The channel or connection broke, or the broker kept the connection
    /// but confirmed nothing for [`CONFIRM_TIMEOUT`] (the caller reconnects
    /// and the unconfirmed messages are sent again).
    pub async fn outcomes(self) -> Result<Vec<Published>, BrokerError> {
        let confirms = async {
            let mut outcomes = Vec::with_capacity(self.0.len());
            for confirm in self.0 {
                outcomes.push(match confirm.await? {
                    Confirmation::Ack(None) | Confirmation::NotRequested => Published::Confirmed,
                    Confirmation::Ack(Some(_)) => Published::Unroutable,
                    Confirmation::Nack(_) => Published::Nacked,
                });
            }
            Ok::<_, BrokerError>(outcomes)
        };
        tokio::time::timeout(CONFIRM_TIMEOUT, confirms)
            .await
            .unwrap_or(Err(BrokerError::Timeout(CONFIRM_TIMEOUT)))
    }
}

/// One reply taken off the reply queue.
#[derive(Debug, Clone)]
pub struct ReplyDelivery {
    /// The channel's tag for it, for [`ReplyConsumer::ack_through`].
    pub delivery_tag: u64,
    /// The message body as it came; `protocol` decodes it.
    pub body: Vec<u8>,
    /// The exchange it was published to: `""` for the default exchange.
    pub exchange: String,
    /// The broker-validated `user_id` property.
    pub user_id: Option<String>,
    /// The AMQP `type` property (a dispatcher's probe says
    /// [`probe::PROBE_TYPE`]).
    pub kind: Option<String>,
    /// The `correlation_id` property (bora's worker: the reply's `_msg_id`).
    pub correlation_id: Option<String>,
}

/// Consumes the reply queue in batches; acks after the caller committed.
pub struct ReplyConsumer {
    _conn: Object,
    channel: Channel,
    consumer: Consumer,
    max_batch: usize,
}

impl ReplyConsumer {
    /// Waits for at least one reply and returns every reply already
    /// delivered, up to the prefetch. `Ok(None)` when the consumer ended.
    ///
    /// # Errors
    /// The channel or connection broke.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<ReplyDelivery>>, BrokerError> {
        let mut batch = Vec::new();
        let Some(first) = self.consumer.next().await else {
            return Ok(None);
        };
        batch.push(convert(first?));
        while batch.len() < self.max_batch {
            match futures_util::FutureExt::now_or_never(self.consumer.next()) {
                Some(Some(d)) => batch.push(convert(d?)),
                Some(None) | None => break,
            }
        }
        Ok(Some(batch))
    }

    /// Acks every delivery up to and including `delivery_tag`.
    ///
    /// # Errors
    /// The channel broke: the broker redelivers, and recording is idempotent.
    pub async fn ack_through(&self, delivery_tag: u64) -> Result<(), BrokerError> {
        self.channel
            .basic_ack(delivery_tag, BasicAckOptions { multiple: true })
            .await?;
        Ok(())
    }

    /// Closes the channel cleanly (unacked deliveries go back to the queue).
    pub async fn close(self) {
        let _ = self.channel.close(200, "shutting down".into()).await;
    }
}

fn convert(d: lapin::message::Delivery) -> ReplyDelivery {
    ReplyDelivery {
        delivery_tag: d.delivery_tag,
        exchange: d.exchange.to_string(),
        user_id: d.properties.user_id().as_ref().map(ShortString::to_string),
        kind: d.properties.kind().as_ref().map(ShortString::to_string),
        correlation_id: d
            .properties
            .correlation_id()
            .as_ref()
            .map(ShortString::to_string),
        body: d.data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn amqp(pairs: &[(&str, &str)]) -> AmqpSettings {
        let env = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Settings::load_with_env(None, env).unwrap().amqp
    }

    #[test]
    fn classic_queues_have_no_arguments() {
        // The delivery limit is a quorum feature: a classic queue declared
        // with it would no longer match what oslo peers declare.
        let args = queue_arguments(&amqp(&[("BORA__AMQP__DELIVERY_LIMIT", "5")]));
        assert!(args.inner().is_empty(), "{args:?}");
    }

    #[test]
    fn quorum_queues_have_their_type_and_the_delivery_limit() {
        let args = queue_arguments(&amqp(&[("BORA__AMQP__QUEUE_TYPE", "quorum")]));
        let args = args.inner();
        assert_eq!(args.len(), 2, "{args:?}");
        assert_eq!(
            args.get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        // The default limit.
        assert_eq!(
            args.get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(20))
        );
    }

    #[test]
    fn a_zero_delivery_limit_sets_none() {
        let args = queue_arguments(&amqp(&[
            ("BORA__AMQP__QUEUE_TYPE", "quorum"),
            ("BORA__AMQP__DELIVERY_LIMIT", "0"),
        ]));
        let args = args.inner();
        assert_eq!(args.len(), 1, "{args:?}");
        assert!(args.contains_key("x-queue-type"));
    }
}
