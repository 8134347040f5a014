//! The dispatcher process (`bora serve`): wires the store, the use cases, the
//! broker, the REST API, the outbox relay, the result consumer, its probe and the scanner together,
//! and shuts them down in order.
//!
//! Start-up refuses settings out of range (an empty or short API token among
//! them), an unsafe API address (non-loopback without tokens), a store it
//! cannot open, and a secret key that is missing (PostgreSQL) or not the
//! one the store's secrets are sealed with; a broker that is down is not fatal: the relay and the
//! consumer retry in the background and `/readyz` says 503 meanwhile.

mod http;
mod probe;
mod relay;
mod replies;
mod scanner;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{self, AppState};
use crate::app::{App, AppConfig};
use crate::broker::Broker;
use crate::config::Settings;
use crate::seal::{KEY_CHECK, KeySource, Sealer};
use crate::store::Store;

/// A running dispatcher.
pub struct Dispatcher {
    /// The address the API listens on (the real port when configured as 0).
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    store: Store,
}

/// Starts every component and returns once the API listens.
///
/// # Errors
/// Unsafe API address, unusable store, invalid broker URL, or a port in use.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<Dispatcher> {
    // `load` checked them already; settings built in code are checked here.
    settings.check()?;
    let settings = Arc::new(settings);
    crate::telemetry::metrics_handle();
    if !settings.api.listen.ip().is_loopback() && settings.api.tokens.is_empty() {
        anyhow::bail!(
            "refusing to listen on {} without API tokens: set api.tokens (BORA__API__TOKENS) or listen on loopback",
            settings.api.listen
        );
    }
    if settings.api.tokens.is_empty() {
        warn_open(&settings);
    }
    let (sealer, key_source) = crate::seal::sealer_for(&settings.store)?;
    let store = Store::open(settings.store.url.expose(), settings.store.max_connections)
        .await
        .with_context(|| format!("opening the store {}", settings.store.url))?;
    check_secret_key(&store, &sealer, &key_source).await?;
    let broker = Broker::new(&settings.amqp.url, &settings.amqp, "bora-serve")
        .context("configuring the broker connection")?;
    let app = App::new(
        store.clone(),
        AppConfig {
            require_registration: settings.dispatch.require_registration,
            max_redeliveries: settings.dispatch.max_redeliveries,
            dispatcher_user: crate::broker::management::user_of(settings.amqp.url.expose()),
            reply_exchange: settings.amqp.reply_queue.clone(),
            max_result_bytes: settings.dispatch.max_result_bytes,
            max_input_bytes: settings.dispatch.max_input_bytes,
            max_live_output_bytes: settings.dispatch.max_live_output_bytes,
            max_tasks_per_workflow: settings.dispatch.max_tasks_per_workflow,
            notifications: settings.notifications.enabled,
            outbox_lease_us: settings.dispatch.outbox_lease_us(),
            online_window_us: settings.dispatch.heartbeat_timeout_us(),
        },
        sealer,
    );
    let listener = tokio::net::TcpListener::bind(settings.api.listen)
        .await
        .with_context(|| format!("binding {}", settings.api.listen))?;
    let addr = listener.local_addr()?;

    let listening = replies::Listening::default();
    let mut tasks = vec![
        tokio::spawn(relay::run(
            app.clone(),
            broker.clone(),
            settings.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(scanner::run(
            app.clone(),
            settings.clone(),
            listening.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(probe::run(
            broker.clone(),
            settings.clone(),
            listening.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(replies::run(
            app.clone(),
            broker.clone(),
            listening,
            shutdown.clone(),
        )),
    ];
    let registry =
        crate::registration::Registry::new(settings.clone(), broker.clone(), app.clone())
            .context("configuring the management API client")?;
    if settings.rpc.enabled {
        let rpc = crate::rpc::RpcState {
            app: app.clone(),
            registry: registry.clone(),
            broker: broker.clone(),
            settings: settings.clone(),
        };
        tasks.push(tokio::spawn(crate::rpc::run(rpc, shutdown.clone())));
    }
    let state = AppState {
        registry,
        app,
        broker,
        settings: settings.clone(),
        shutdown: shutdown.clone(),
        gauges_at: Arc::default(),
        streams: Arc::new(tokio::sync::Semaphore::new(
            settings.api.max_event_streams as usize,
        )),
    };
    let limits = http::Limits {
        header_read_timeout: settings.api.header_read_timeout(),
        max_connections: settings.api.max_connections as usize,
    };
    tasks.push(tokio::spawn(http::serve(
        listener,
        api::router(state),
        limits,
        shutdown.clone(),
    )));
    info!(%addr, store = %settings.store.url, broker = %settings.amqp.url, "bora serve started");
    Ok(Dispatcher {
        addr,
        shutdown,
        tasks,
        store,
    })
}

/// Checks that `sealer`'s key is the one the store's secrets are sealed
/// with: the store keeps a known text sealed with the key it first ran
/// with (written now, on a store that has none). Says where the key came
/// from, and loudly when this start made the key file.
///
/// # Errors
/// Another key: refused, rather than failing every secret task later. A
/// key file this start made for the wrong key is removed again.
async fn check_secret_key(
    store: &Store,
    sealer: &Sealer,
    source: &KeySource,
) -> anyhow::Result<()> {
    let token = match store.meta(KEY_CHECK).await? {
        Some(token) => token,
        None => {
            let token = sealer.check_token()?;
            store.meta_or_insert(KEY_CHECK, &token).await?
        }
    };
    if let Err(e) = sealer.verify_check(&token) {
        let which = match source {
            KeySource::Configured => "store.secret_key (BORA__STORE__SECRET_KEY)".to_owned(),
            KeySource::KeyFile {
                path,
                created: true,
            } => {
                let _ = std::fs::remove_file(path);
                format!(
                    "a new key file ({} was missing: it is removed again; put the store's own key file back)",
                    path.display()
                )
            }
            KeySource::KeyFile { path, .. } => format!("the key file {}", path.display()),
        };
        anyhow::bail!(
            "the secret key from {which} is not the key this store's secrets are sealed with, so \
             they cannot be opened; start with the store's own key ({e})"
        );
    }
    match source {
        KeySource::Configured => info!("secrets in the store are sealed with store.secret_key"),
        KeySource::KeyFile {
            path,
            created: true,
        } => warn!(
            key_file = %path.display(),
            "created the store's secret key file (mode 0600): secrets in the store are sealed with \
             it and cannot be read without it; back it up with the database, or set \
             store.secret_key (BORA__STORE__SECRET_KEY) instead"
        ),
        KeySource::KeyFile { path, .. } => info!(
            key_file = %path.display(),
            "secrets in the store are sealed with the key in the key file"
        ),
    }
    Ok(())
}

/// Says loudly, at every start without `api.tokens`, what anyone who can
/// reach the APIs may do.
fn warn_open(settings: &Settings) {
    let rpc = if settings.rpc.enabled {
        format!(
            " and the RPC API (topic {} on exchange {}: anyone who may publish there)",
            settings.rpc.topic, settings.amqp.exchange
        )
    } else {
        String::new()
    };
    warn!(
        "no API tokens (api.tokens is empty): the REST API on {}{rpc} accept every call \
         without authentication: creating, reading and cancelling any workflow, and over REST \
         registering, labelling and revoking servers; register_server and label_server over \
         RPC are refused until tokens are set. Set api.tokens (BORA__API__TOKENS) to require one",
        settings.api.listen
    );
}

impl Dispatcher {
    /// Waits until shutdown is requested and every component stopped.
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        self.store.close().await;
        info!("bora serve stopped");
    }

    /// Requests shutdown and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

/// `bora serve`: runs until `shutdown` fires.
///
/// # Errors
/// See [`start`].
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(settings, shutdown).await?.wait().await;
    Ok(())
}
