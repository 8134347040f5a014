//! Replies to the dispatcher: started reports, heartbeats and final results,
//! published to the `reply_bora` direct exchange with the broker's confirm,
//! `mandatory`, persistent, with the AMQP `user_id` the broker validates and
//! the reply's `_msg_id` as `correlation_id`.
//!
//! The channel is swapped by the connection loop at each reconnect. A final
//! result that cannot be published is kept and re-published after the next
//! reconnect (results are idempotent per (task, attempt) on the dispatcher);
//! heartbeats are not kept. This module knows nothing of processes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};

use crate::protocol::{CONTENT_ENCODING, CONTENT_TYPE, RpcReply};

/// Cheap to clone; all clones share the channel and the kept results.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    /// The reply exchange (also the routing key): `amqp.reply_queue`.
    exchange: String,
    /// The broker user of the worker's URL, sent as `user_id`.
    user_id: String,
    /// The confirm channel of the current connection; `None` while disconnected.
    channel: Mutex<Option<Channel>>,
    /// Final results not yet confirmed, oldest first.
    kept: Mutex<VecDeque<RpcReply>>,
    /// Serialises re-publishing of kept results.
    flushing: tokio::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to the broker")]
    Disconnected,
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused the reply (nack)")]
    Nacked,
    #[error("the reply was unroutable: {0}")]
    Returned(String),
}

impl Publisher {
    pub fn new(exchange: String, user_id: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                exchange,
                user_id,
                channel: Mutex::new(None),
                kept: Mutex::new(VecDeque::new()),
                flushing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Installs (or, with `None`, removes) the channel of the current connection.
    pub fn set_channel(&self, channel: Option<Channel>) {
        *self.inner.channel.lock().unwrap_or_else(|e| e.into_inner()) = channel;
    }

    /// Publishes one reply and waits for the broker's confirm.
    ///
    /// # Errors
    /// No channel, a channel error, a nack, or a return (no queue bound).
    pub async fn publish(&self, reply: &RpcReply) -> Result<(), PublishError> {
        let channel = self
            .inner
            .channel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(PublishError::Disconnected)?;
        let props = BasicProperties::default()
            .with_content_type(CONTENT_TYPE.into())
            .with_content_encoding(CONTENT_ENCODING.into())
            .with_delivery_mode(2)
            .with_user_id(self.inner.user_id.as_str().into())
            // The attempt (or server) it is about, readable without the
            // body: a reply too large to be read still names its attempt.
            .with_correlation_id(reply.msg_id.as_str().into());
        let confirm = channel
            .basic_publish(
                self.inner.exchange.as_str().into(),
                self.inner.exchange.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &reply.encode(),
                props,
            )
            .await?
            .await?;
        if confirm.is_nack() {
            return Err(PublishError::Nacked);
        }
        if let Some(returned) = confirm.take_message() {
            return Err(PublishError::Returned(returned.reply_text.to_string()));
        }
        Ok(())
    }

    /// Publishes a final result; if that fails, keeps it for [`Publisher::flush`].
    /// Returns whether it was confirmed now.
    pub async fn publish_final(&self, reply: RpcReply) -> bool {
        // Kept results go first, so a task's replies stay in order.
        if self.flush().await.is_ok() {
            match self.publish(&reply).await {
                Ok(()) => return true,
                Err(e) => tracing::warn!(error = %e, "result not published; kept for a retry"),
            }
        }
        self.lock_kept().push_back(reply);
        false
    }

    /// Re-publishes kept results, oldest first, stopping at the first failure.
    ///
    /// # Errors
    /// The first failure; the unpublished results stay kept.
    pub async fn flush(&self) -> Result<(), PublishError> {
        let _one_at_a_time = self.inner.flushing.lock().await;
        loop {
            let Some(next) = self.lock_kept().front().cloned() else {
                return Ok(());
            };
            self.publish(&next).await?;
            self.lock_kept().pop_front();
            tracing::info!("kept result published");
        }
    }

    /// How many results wait to be published.
    pub fn kept(&self) -> usize {
        self.lock_kept().len()
    }

    fn lock_kept(&self) -> std::sync::MutexGuard<'_, VecDeque<RpcReply>> {
        self.inner.kept.lock().unwrap_or_else(|e| e.into_inner())
    }
}
