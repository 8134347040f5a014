//! Server registration (SPEC 2, 3, 5): each registered server gets its own
//! broker user `bora-srv-<server_id>` with a random password, the least
//! permissions its kind needs, a connection limit, and its queues. The
//! password is returned once and never stored by bora.
//!
//! Broker side through the management API and AMQP (`broker`), state through
//! the use cases of `app` (a server's row; cancelling a revoked server's
//! tasks). Nothing here touches SQL.

use rand::RngCore;

use crate::app::{App, AppError};
use crate::broker::management::{Management, ManagementError, regex_escape as re, vhost_of};
use crate::broker::{Broker, BrokerError};
use crate::config::Settings;
use crate::domain::broker_user;
use crate::domain::{Labels, ServerId, ServerKind};

/// A registration or revocation that did not complete; every step is
/// idempotent, so calling again is safe.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The management API refused a step or is unreachable (the user,
    /// permissions, limits, connections or queue deletion).
    #[error("{0}")]
    Management(#[from] ManagementError),
    /// The broker refused a queue declare or is unreachable.
    #[error("{0}")]
    Broker(#[from] BrokerError),
    /// The server's row, or the cancel of its tasks, failed in `app`.
    #[error(transparent)]
    App(#[from] AppError),
}

/// What a registration returns, once.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Registration {
    /// The server registered.
    #[schema(value_type = String)]
    pub server_id: ServerId,
    /// What consumes its queue.
    pub kind: ServerKind,
    /// The labels it carries now: those given, else (a re-registration)
    /// those it had.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub labels: Labels,
    /// Its broker user: `bora-srv-<server_id>`.
    pub username: String,
    /// Its broker password: random, shown this once, never stored by bora.
    pub password: String,
    /// Ready for `worker.amqp_url` (guest) or oslo's `transport_url` (with the `rabbit` scheme).
    pub amqp_url: String,
    /// Whether the server was registered already and its password replaced.
    pub rotated: bool,
    /// The queue its tasks arrive on: `<amqp.task_topic>.<server_id>`.
    pub task_queue: String,
    /// The queue its cancels arrive on: `bora_control.<server_id>`.
    pub control_queue: String,
}

/// `(configure, write, read)` permission regexes of a server's broker user.
pub fn permissions(
    settings: &Settings,
    server: &ServerId,
    kind: ServerKind,
) -> (String, String, String) {
    let a = &settings.amqp;
    let tasks = re(&a.task_queue(server.as_str()));
    match kind {
        // Configure nothing, publish only to the reply exchange, read only
        // its own task and control queues.
        ServerKind::Guest => (
            "^$".to_owned(),
            format!("^{}$", re(&a.reply_queue)),
            format!("^({tasks}|{})$", re(&a.control_queue(server.as_str()))),
        ),
        // What a stock oslo RPC server with Target(topic, server) needs
        // (oslo-wire 9, X8). Write on amq.default lets it publish into any
        // queue by name: such servers are trusted services.
        ServerKind::Oslo => {
            let topic = re(&a.task_topic);
            let exchange = re(&a.exchange);
            (
                format!("^({exchange}|{topic}|{tasks}|{topic}_fanout.*)$"),
                format!("^(amq\\.default|{topic}|{tasks}|{topic}_fanout.*)$"),
                format!("^({exchange}|{topic}|{tasks}|{topic}_fanout.*)$"),
            )
        }
    }
}

/// `(write, read)` topic permissions of an oslo server's broker user on the
/// task exchange: it publishes nothing there, and binds only with its own
/// routing keys (`<task_topic>` and `<task_topic>.<server_id>`, what a stock
/// oslo RPC server binds). Its plain permissions let it declare the
/// exchange (oslo does at start) and queues named `<task_topic>_fanout*`;
/// without these, it could bind such a queue to the task exchange with `#`
/// and read every server's tasks. A guest needs none: it may not bind at all.
pub fn oslo_topic_permissions(settings: &Settings, server: &ServerId) -> (String, String) {
    let a = &settings.amqp;
    (
        "^$".to_owned(),
        format!(
            "^({}|{})$",
            re(&a.task_topic),
            re(&a.task_queue(server.as_str()))
        ),
    )
}

/// Registers and revokes servers/// Registers and revokes servers: their broker users, permissions, limits
/// and queues, and their rows through `app`; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    management: Management,
    broker: Broker,
    app: App,
    settings: std::sync::Arc<Settings>,
    vhost: String,
}

impl Registry {
    /// # Errors
    /// An unparsable management URL.
    pub fn new(
        settings: std::sync::Arc<Settings>,
        broker: Broker,
        app: App,
    ) -> Result<Self, ManagementError> {
        Ok(Self {
            management: Management::new(&settings.amqp.management_url)?,
            vhost: vhost_of(settings.amqp.url.expose()),
            broker,
            app,
            settings,
        })
    }

    /// Registers a server, or rotates the password of a registered one;
    /// `labels` (validated by the caller) replace its labels when given.
    ///
    /// # Errors
    /// The broker or its management API refused or is unreachable; calling
    /// again is safe (every step is idempotent).
    pub async fn register(
        &self,
        server: &ServerId,
        kind: ServerKind,
        labels: Option<&Labels>,
    ) -> Result<Registration, RegistryError> {
        // Queues first, so the worker can consume as soon as it has its password.
        self.broker.declare_server_queues(server.as_str()).await?;
        let user = broker_user(server);
        let mut secret = [0u8; 24];
        rand::rng().fill_bytes(&mut secret);
        let password: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let created = self.management.put_user(&user, &password).await?;
        let (configure, write, read) = permissions(&self.settings, server, kind);
        self.management
            .set_permissions(&self.vhost, &user, &configure, &write, &read)
            .await?;
        if kind == ServerKind::Oslo {
            let (write, read) = oslo_topic_permissions(&self.settings, server);
            self.management
                .set_topic_permissions(
                    &self.vhost,
                    &user,
                    &self.settings.amqp.exchange,
                    &write,
                    &read,
                )
                .await?;
        }
        let limit = match kind {
            ServerKind::Guest => self.settings.dispatch.guest_max_connections,
            ServerKind::Oslo => self.settings.dispatch.oslo_max_connections,
        };
        self.management.set_connection_limit(&user, limit).await?;
        if !created {
            // A rotation: connections opened with the old password stay up
            // until closed (the broker checks a password only at connect).
            match self.management.close_connections_of(&user).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(server_id = %server, closed = n, "closed the connections of the replaced password")
                }
                Err(e) => {
                    tracing::warn!(server_id = %server, error = %e, "could not close the connections of the replaced password")
                }
            }
        }
        let was_registered = self
            .app
            .store()
            .server(server.as_str())
            .await
            .map_err(AppError::from)?
            .is_some_and(|s| s.registered);
        let labels = self.app.register_server(server, kind, labels).await?;
        Ok(Registration {
            server_id: server.clone(),
            kind,
            labels,
            amqp_url: self.url_for(&user, &password),
            username: user,
            password,
            rotated: !created || was_registered,
            task_queue: self.settings.amqp.task_queue(server.as_str()),
            control_queue: self.settings.amqp.control_queue(server.as_str()),
        })
    }

    /// Revokes a server: deletes its broker user and closes its connections,
    /// cancels its unfinished tasks, deletes its queues. Returns how many
    /// tasks were cancelled.
    ///
    /// # Errors
    /// The broker or its management API refused or is unreachable.
    pub async fn revoke(&self, server: &ServerId) -> Result<usize, RegistryError> {
        let user = broker_user(server);
        self.management.delete_user(&user).await?;
        // Deleting the user makes the broker close its connections; this
        // sweep only makes sure, so its failure does not fail the revoke.
        if let Err(e) = self.management.close_connections_of(&user).await {
            tracing::warn!(server_id = %server, error = %e, "could not list or close the revoked user's connections");
        }
        let cancelled = self.app.forget_server(server).await?;
        for q in [
            self.settings.amqp.task_queue(server.as_str()),
            self.settings.amqp.control_queue(server.as_str()),
        ] {
            self.management.delete_queue(&self.vhost, &q).await?;
        }
        Ok(cancelled)
    }

    /// The dispatcher's broker URL with a server's credentials in it.
    fn url_for(&self, user: &str, password: &str) -> String {
        match url::Url::parse(self.settings.amqp.url.expose()) {
            Ok(mut u) => {
                let _ = u.set_username(user);
                let _ = u.set_password(Some(password));
                u.to_string()
            }
            Err(_) => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_permissions_are_least_privilege() {
        let s = Settings::load_with_env(None, Vec::<(String, String)>::new()).unwrap();
        let id = ServerId::parse("web-1").unwrap();
        let (c, w, r) = permissions(&s, &id, ServerKind::Guest);
        assert_eq!(c, "^$");
        assert_eq!(w, "^reply_bora$");
        assert_eq!(r, r"^(bora_tasks\.web-1|bora_control\.web-1)$");
        let (c, w, _) = permissions(&s, &id, ServerKind::Oslo);
        assert!(c.contains(r"bora_tasks\.web-1"));
        assert!(w.starts_with(r"^(amq\.default|"));
        let (tw, tr) = oslo_topic_permissions(&s, &id);
        assert_eq!(tw, "^$");
        assert_eq!(tr, r"^(bora_tasks|bora_tasks\.web-1)$");
    }
}
