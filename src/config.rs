//! Configuration: one `Settings` tree, layered by the `config` crate.
//!
//! Order (later wins): `config/default.toml` (compiled into the binary, so the
//! defaults hold wherever the binary runs), the file named by `--config` or
//! `BORA_CONFIG`, then `BORA__SECTION__KEY` environment variables. Secrets (broker
//! URLs with passwords, API tokens) are wrapped so `Debug` never prints them,
//! and API tokens are compared here only ([`ApiSettings::accepts_token`]).
//! Otherwise this module knows nothing of how the settings are used.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

/// The fewest characters an API token may have (`api.tokens`).
pub const MIN_TOKEN_CHARS: usize = 16;

/// The checked-in defaults, embedded so a binary copied anywhere still has them.
const DEFAULTS: &str = include_str!("../config/default.toml");

/// A string that must not appear in logs: `Debug` and `Display` redact it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value` (a token, a password).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it (a connection, a comparison).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A URL whose password is hidden when printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps `value`, a URL that may carry a password.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The URL with its password, for the one place that connects with it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password replaced by `***`, for logs and errors.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) if u.password().is_some() => {
                // Cannot fail for a URL that already has a password (it has a host).
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            Ok(u) => u.to_string(),
            Err(_) => "<unparsable url>".to_owned(),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Every setting of every process, one field per section of
/// `config/default.toml`.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// `[api]`: the REST API.
    pub api: ApiSettings,
    /// `[store]`: the database.
    pub store: StoreSettings,
    /// `[amqp]`: the broker and its topology.
    pub amqp: AmqpSettings,
    /// `[dispatch]`: the dispatcher's limits and timings.
    pub dispatch: DispatchSettings,
    /// `[worker]`: the guest worker.
    pub worker: WorkerSettings,
    /// `[notifications]`: oslo notifications on task and workflow ends.
    pub notifications: NotificationSettings,
    /// `[rpc]`: the oslo RPC API.
    pub rpc: RpcSettings,
    /// `[log]`: format and level.
    pub log: LogSettings,
}

/// The oslo RPC API (`bora_api`).
#[derive(Debug, Clone, Deserialize)]
pub struct RpcSettings {
    /// Whether `bora serve` consumes and answers the RPC API at all.
    pub enabled: bool,
    /// Queues `<topic>` (shared by every dispatcher) and `<topic>.<server>`.
    pub topic: String,
    /// Empty: the hostname.
    pub server: String,
}

/// This machine's host name (for `bora.<host>` and `bora_api.<host>`), read
/// once per process (every notification names it).
pub fn hostname() -> String {
    static HOSTNAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOSTNAME
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".to_owned())
        })
        .clone()
}

/// oslo-style notifications on task and workflow ends.
#[derive(Debug, Clone, Deserialize)]
pub struct NotificationSettings {
    /// Whether task and workflow ends are published at all.
    pub enabled: bool,
    /// Routing keys are `<topic>.info` and `<topic>.error` on `amqp.exchange`.
    pub topic: String,
    /// Empty: `bora.<hostname>`.
    pub publisher_id: String,
}

/// The REST API.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    /// The address the API listens on.
    pub listen: SocketAddr,
    /// Accepted bearer tokens, trimmed, each at least [`MIN_TOKEN_CHARS`]
    /// characters. Empty: no authentication, and `listen` must be a loopback
    /// address.
    pub tokens: Vec<Secret>,
    /// A bearer token that `GET /metrics` accepts besides `tokens` (for a
    /// Prometheus scraper that should not hold an API token), at least
    /// [`MIN_TOKEN_CHARS`] characters. With it or `tokens` set, `/metrics`
    /// needs one of them.
    #[serde(default)]
    pub metrics_token: Option<Secret>,
    /// The largest request body accepted, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// The largest page a list request may ask for (at least 1).
    pub max_page_size: u32,
    /// The most event streams (`GET .../events`) open at once; one more is
    /// refused with 503 and `Retry-After` (each open stream reads the store
    /// after every commit).
    pub max_event_streams: u32,
    /// Seconds a client has to send a request's headers, from when its
    /// connection opens (or, kept alive, from the end of the previous
    /// response); the connection is closed after (1 to 3600).
    pub header_read_timeout_s: u64,
    /// The most connections served at once; more wait in the listen
    /// backlog until one closes (each open event stream holds one, so it
    /// must exceed `max_event_streams`).
    pub max_connections: u32,
}

impl ApiSettings {
    /// `header_read_timeout_s` as a duration.
    pub fn header_read_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.header_read_timeout_s)
    }
}

/// Whether `presented` (trimmed, not empty) is one of `candidates`: their
/// SHA-256 digests compared in constant time, every candidate checked.
fn matches_any<'a>(candidates: impl Iterator<Item = &'a Secret>, presented: &str) -> bool {
    let presented = presented.trim();
    if presented.is_empty() {
        return false;
    }
    let digest = Sha256::digest(presented.as_bytes());
    let matched = candidates.fold(Choice::from(0), |acc, t| {
        acc | Sha256::digest(t.expose().trim().as_bytes()).ct_eq(&digest)
    });
    matched.into()
}

impl ApiSettings {
    /// Whether `presented` (trimmed) is one of `tokens`: the one comparison
    /// of the REST and the RPC API. SHA-256 digests are compared in constant
    /// time, and every token is checked, so the time taken says neither how
    /// long a token is, how much of one matched, nor which one did. An empty
    /// presented token never matches.
    pub fn accepts_token(&self, presented: &str) -> bool {
        matches_any(self.tokens.iter(), presented)
    }

    /// Whether `presented` may read `/metrics`: an API token, or the
    /// metrics token. Compared as [`ApiSettings::accepts_token`] does.
    pub fn accepts_metrics_token(&self, presented: &str) -> bool {
        matches_any(self.tokens.iter().chain(&self.metrics_token), presented)
    }

    /// Whether `/metrics` needs a token.
    pub fn metrics_closed(&self) -> bool {
        !self.tokens.is_empty() || self.metrics_token.is_some()
    }
}

/// The database.
#[derive(Debug, Clone, Deserialize)]
pub struct StoreSettings {
    /// `sqlite://PATH` (created if missing) or `postgres://...`.
    pub url: SecretUrl,
    /// The size of the connection pool.
    pub max_connections: u32,
    /// The key secrets are sealed with in the store (SPEC 7.4): 32 bytes in
    /// base64, from `BORA__STORE__SECRET_KEY` in production. Unset with
    /// SQLite: a key file beside the database (`<database>.key`, made at
    /// the first start); PostgreSQL requires it.
    #[serde(default)]
    pub secret_key: Option<Secret>,
}

/// The type of every queue bora declares (`amqp.queue_type`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    /// Classic durable queues (the default).
    Classic,
    /// Quorum queues: replicated, with a delivery limit.
    Quorum,
}

impl std::fmt::Display for QueueType {
    /// The configuration value: `classic` or `quorum`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        })
    }
}

/// The broker: where it is, and the names and types of the topology.
#[derive(Debug, Clone, Deserialize)]
pub struct AmqpSettings {
    /// The broker, with the vhost in the path (`%2f` is `/`).
    pub url: SecretUrl,
    /// RabbitMQ's management API: server registration, and the bench's
    /// vhosts.
    pub management_url: SecretUrl,
    /// The topic (oslo "control") exchange tasks, cancels and
    /// notifications are published to.
    pub exchange: String,
    /// The prefix of the per-server task queues: `<task_topic>.<server_id>`.
    pub task_topic: String,
    /// The queue (and direct exchange) results come back to.
    pub reply_queue: String,
    /// The type of every queue bora declares.
    pub queue_type: QueueType,
    /// Quorum queues only: how often a message may return to its queue
    /// unacked before RabbitMQ drops it (`x-delivery-limit`), so a message
    /// that kills its consumer cannot loop forever. 0 sets no limit
    /// (oslo.messaging's default).
    pub delivery_limit: u32,
    /// How many unacked replies the dispatcher takes at once (the most one
    /// recorded batch holds).
    pub reply_prefetch: u16,
    /// The most bytes of replies waiting in the reply queue: beyond it the
    /// broker refuses new replies (`reject-publish`; a worker keeps its
    /// result and sends it again), so a guest that floods the shared reply
    /// path cannot fill the broker's memory or disk. Set by the dispatcher
    /// as the policy `bora-reply-limit` on the reply queue; 0 sets no
    /// policy (for operators who manage the queue's policies themselves).
    pub reply_queue_max_bytes: u64,
}

impl AmqpSettings {
    /// The queue (and routing key) of one server's tasks: `bora_tasks.<server_id>`.
    pub fn task_queue(&self, server_id: &str) -> String {
        format!("{}.{}", self.task_topic, server_id)
    }

    /// The queue (and routing key) of one server's control messages (cancels):
    /// `bora_control.<server_id>`. Separate from the task queue so a cancel never
    /// waits behind tasks that fill the worker's prefetch window.
    pub fn control_queue(&self, server_id: &str) -> String {
        format!("{CONTROL_TOPIC}.{server_id}")
    }
}

/// The prefix of the per-server control queues: `bora_control.<server_id>`.
pub const CONTROL_TOPIC: &str = "bora_control";

/// The dispatcher's limits and timings.
#[derive(Debug, Clone, Deserialize)]
pub struct DispatchSettings {
    /// Refuse (422) tasks for servers not registered through
    /// `POST /v1/servers`.
    pub require_registration: bool,
    /// Replies larger than this many bytes are dropped unread (and counted).
    pub max_result_bytes: usize,
    /// The largest value an input reference may resolve to (bytes of its
    /// JSON); larger fails the consumer (SPEC 7.1).
    pub max_input_bytes: usize,
    /// The most tasks one workflow may hold (422 beyond).
    pub max_tasks_per_workflow: u64,
    /// The most live output kept per stream of one attempt (SPEC 7.5);
    /// 0 turns live output off.
    pub max_live_output_bytes: u64,
    /// Broker connections a registered guest server's user may hold at once.
    pub guest_max_connections: u32,
    /// Broker connections a registered oslo server's user may hold at once.
    pub oslo_max_connections: u32,
    /// Seconds of silence after which a running attempt counts as lost
    /// (1 to 86400).
    pub heartbeat_timeout_s: u64,
    /// New attempts after lost workers, beyond a task's own retries.
    pub max_redeliveries: u32,
    /// Milliseconds between the outbox relay's safety sweeps (every commit
    /// that queues a message also wakes it at once; 1 to 3600000, at least 10
    /// in effect).
    pub relay_interval_ms: u64,
    /// How long a relay's claim on outbox rows lasts (PostgreSQL): a message
    /// claimed by a dispatcher that died is sent by another after this (1 to
    /// 3600).
    pub outbox_lease_s: u64,
}

impl DispatchSettings {
    /// `outbox_lease_s` in microseconds (at least a second).
    pub fn outbox_lease_us(&self) -> i64 {
        secs_to_us(self.outbox_lease_s.max(1))
    }

    /// `heartbeat_timeout_s` in microseconds.
    pub fn heartbeat_timeout_us(&self) -> i64 {
        secs_to_us(self.heartbeat_timeout_s)
    }
}

/// Seconds as microseconds, saturating (the settings' checks keep every
/// configured value far below that).
pub(crate) fn secs_to_us(s: u64) -> i64 {
    i64::try_from(s)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000)
}

/// The guest worker (`bora worker`).
#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    /// The server this worker serves (`--server-id` wins); no default.
    pub server_id: Option<String>,
    /// The worker's own broker credentials; `amqp.url` when absent.
    pub amqp_url: Option<SecretUrl>,
    /// Executables named after a task's group; they win over the built-in
    /// runners.
    pub hooks_dir: PathBuf,
    /// Tasks run at once, and the prefetch of the task queue (at least 1).
    pub concurrency: u16,
    /// The cap for stdout and for stderr, in bytes (head and tail kept; at
    /// least 1024).
    pub max_output_bytes: usize,
    /// Seconds between heartbeats, while a task runs and when idle (1 to
    /// 3600).
    pub heartbeat_s: u64,
    /// Where the at-most-once ledger lives.
    pub state_dir: PathBuf,
    /// Seconds running tasks may go on after SIGTERM before they are killed
    /// (0 to 86400).
    pub shutdown_grace_s: u64,
}

/// How log lines are written (`log.format`, `--log-format`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Lines for people at a terminal.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// Human lines or JSON.
    pub format: LogFormat,
    /// The `tracing` filter (e.g. `info`, `bora=debug`); `RUST_LOG` wins.
    pub level: String,
}

/// Why the settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file is missing or does not parse.
    #[error("configuration file {path}: {source}")]
    File {
        /// The file named.
        path: PathBuf,
        /// What was wrong with it.
        source: config::ConfigError,
    },
    /// A value of the wrong type, or a missing key.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] config::ConfigError),
    /// A value out of range (e.g. `worker.concurrency = 0`).
    #[error("invalid configuration: {0}")]
    Check(String),
}

/// `key`'s `value` is in `min..=max`, or an error naming both.
fn within(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::Check(format!(
            "{key} must be between {min} and {max} (got {value})"
        )))
    }
}

impl Settings {
    /// Loads the layered settings. `file` is `--config` (or `BORA_CONFIG`).
    ///
    /// # Errors
    /// A missing or unparsable file, a value of the wrong type, or a value out of range.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given explicitly (for tests).
    ///
    /// # Errors
    /// As [`Settings::load`].
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::File {
                    path: path.to_owned(),
                    source: config::ConfigError::Message("no such file".into()),
                });
            }
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let vars: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("BORA__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("BORA")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("api.tokens")
                .try_parsing(true)
                .source(Some(vars)),
        );
        let mut settings: Settings =
            builder
                .build()
                .and_then(|c| c.try_deserialize())
                .map_err(|e| match file {
                    Some(path) if matches!(e, config::ConfigError::FileParse { .. }) => {
                        ConfigError::File {
                            path: path.to_owned(),
                            source: e,
                        }
                    }
                    _ => ConfigError::Invalid(e),
                })?;
        // `BORA__API__TOKENS=" t1, t2"`: the spaces are not part of a token.
        for t in &mut settings.api.tokens {
            let trimmed = t.expose().trim();
            if trimmed.len() != t.expose().len() {
                *t = Secret::new(trimmed);
            }
        }
        settings.check()?;
        Ok(settings)
    }

    /// Checks values the types alone do not bound. [`Settings::load`] calls
    /// it; so does `bora serve` at start, for settings built in code.
    ///
    /// # Errors
    /// The first value out of range, naming its key.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Check(m.to_owned()));
        self.check_tokens()?;
        if self.worker.concurrency == 0 {
            return bad("worker.concurrency must be at least 1");
        }
        // Values scaled at run time (`* 1_000_000` into i64 microseconds,
        // `2 *` for oslo's `_timeout`, added to an Instant) stay far from
        // overflow, and within what makes sense.
        let d = &self.dispatch;
        let w = &self.worker;
        within(
            "dispatch.heartbeat_timeout_s",
            d.heartbeat_timeout_s,
            1,
            86_400,
        )?;
        within("dispatch.outbox_lease_s", d.outbox_lease_s, 1, 3_600)?;
        // Below a few KiB every result would be cut to its markers or fail
        // with result_too_large; above RabbitMQ's largest message no reply
        // could reach it anyway.
        within(
            "dispatch.max_result_bytes",
            d.max_result_bytes as u64,
            4_096,
            512 * 1024 * 1024,
        )?;
        within(
            "dispatch.max_live_output_bytes",
            d.max_live_output_bytes,
            0,
            64 * 1024 * 1024,
        )?;
        within(
            "dispatch.relay_interval_ms",
            d.relay_interval_ms,
            1,
            3_600_000,
        )?;
        within("worker.heartbeat_s", w.heartbeat_s, 1, 3_600)?;
        within("worker.shutdown_grace_s", w.shutdown_grace_s, 0, 86_400)?;
        if self.api.max_page_size == 0 {
            return bad("api.max_page_size must be at least 1");
        }
        within(
            "api.max_event_streams",
            u64::from(self.api.max_event_streams),
            1,
            1_000_000,
        )?;
        within(
            "api.header_read_timeout_s",
            self.api.header_read_timeout_s,
            1,
            3_600,
        )?;
        within(
            "api.max_connections",
            u64::from(self.api.max_connections),
            2,
            1_000_000,
        )?;
        if self.api.max_event_streams >= self.api.max_connections {
            return Err(ConfigError::Check(format!(
                "api.max_event_streams ({}) must be below api.max_connections ({}): each open \
                 event stream holds a connection, and the API must still answer when they are \
                 all open",
                self.api.max_event_streams, self.api.max_connections
            )));
        }
        if self.amqp.reply_prefetch == 0 {
            return bad("amqp.reply_prefetch must be at least 1");
        }
        if self.worker.max_output_bytes < 1024 {
            return bad("worker.max_output_bytes must be at least 1024");
        }
        if let Some(key) = &self.store.secret_key
            && let Err(e) = crate::seal::SecretKey::from_base64(key.expose())
        {
            let why = match e {
                crate::seal::SealError::Key(why) => why,
                other => other.to_string(),
            };
            return Err(ConfigError::Check(format!(
                "store.secret_key {why}; it must be 32 random bytes in base64 \
                 (e.g. `openssl rand -base64 32`)"
            )));
        }
        Ok(())
    }

    /// Every API token is at least [`MIN_TOKEN_CHARS`] characters once
    /// trimmed: an empty one (`BORA__API__TOKENS=`, a trailing comma) would
    /// lift the loopback guard and match an empty presented token. The error
    /// never shows a token.
    fn check_tokens(&self) -> Result<(), ConfigError> {
        let n = self.api.tokens.len();
        for (i, t) in self.api.tokens.iter().enumerate() {
            let t = t.expose().trim();
            let what = if t.is_empty() {
                "is empty (a trailing comma in BORA__API__TOKENS?)"
            } else if t.chars().count() < MIN_TOKEN_CHARS {
                "is too short"
            } else {
                continue;
            };
            return Err(ConfigError::Check(format!(
                "api.tokens: token {} of {n} {what}; every token must have at least \
                 {MIN_TOKEN_CHARS} characters (e.g. `openssl rand -hex 32`), or set none \
                 to run without authentication on loopback",
                i + 1
            )));
        }
        if let Some(m) = &self.api.metrics_token
            && m.expose().trim().chars().count() < MIN_TOKEN_CHARS
        {
            return Err(ConfigError::Check(format!(
                "api.metrics_token must have at least {MIN_TOKEN_CHARS} characters"
            )));
        }
        Ok(())
    }

    /// Whether `name` is one of bora's own queues: the reply queue
    /// (`amqp.reply_queue`), and for each of the task topic, the control
    /// topic, the RPC API's topic and the notifications' topic, the topic
    /// itself, `<topic>.<anything>` and oslo's `<topic>_fanout_<anything>`.
    /// The RPC API never answers into one: a caller's `_reply_q` naming
    /// `reply_bora` would have the dispatcher's own user publish a result.
    pub fn is_own_queue(&self, name: &str) -> bool {
        if name == self.amqp.reply_queue {
            return true;
        }
        [
            self.amqp.task_topic.as_str(),
            CONTROL_TOPIC,
            self.rpc.topic.as_str(),
            self.notifications.topic.as_str(),
        ]
        .into_iter()
        .any(|topic| {
            name.strip_prefix(topic).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('.') || rest.starts_with("_fanout_")
            })
        })
    }

    /// The RPC API's server name: `rpc.server`, else the hostname.
    pub fn rpc_server_name(&self) -> String {
        if self.rpc.server.is_empty() {
            hostname()
        } else {
            self.rpc.server.clone()
        }
    }

    /// The notifications' publisher id: `notifications.publisher_id`, else `bora.<hostname>`.
    pub fn publisher_id(&self) -> String {
        if self.notifications.publisher_id.is_empty() {
            format!("bora.{}", hostname())
        } else {
            self.notifications.publisher_id.clone()
        }
    }

    /// The worker's broker URL: `worker.amqp_url`, else `amqp.url`.
    pub fn worker_amqp_url(&self) -> &SecretUrl {
        self.worker.amqp_url.as_ref().unwrap_or(&self.amqp.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_with_no_file_and_no_env() {
        let s = Settings::load_with_env(None, env(&[])).unwrap();
        assert_eq!(s.api.listen.to_string(), "127.0.0.1:8080");
        assert!(s.api.tokens.is_empty());
        assert_eq!(s.store.url.expose(), "sqlite://bora.db");
        assert_eq!(s.amqp.exchange, "bora");
        assert_eq!(s.amqp.queue_type, QueueType::Classic);
        assert!(!s.dispatch.require_registration);
        assert_eq!(s.dispatch.heartbeat_timeout_s, 30);
        assert_eq!(s.dispatch.max_redeliveries, 3);
        assert_eq!(s.worker.concurrency, 4);
        assert_eq!(s.worker.max_output_bytes, 1_048_576);
        assert_eq!(s.worker.heartbeat_s, 10);
        assert!(s.worker.server_id.is_none());
        assert_eq!(s.worker_amqp_url(), &s.amqp.url);
    }

    #[test]
    fn environment_overrides_and_token_lists() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("BORA__API__LISTEN", "0.0.0.0:9000"),
                ("BORA__API__TOKENS", &format!("{T1},{T2}")),
                ("BORA__AMQP__QUEUE_TYPE", "quorum"),
                ("BORA__WORKER__CONCURRENCY", "7"),
                ("BORA__DISPATCH__REQUIRE_REGISTRATION", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(s.api.listen.port(), 9000);
        let tokens: Vec<&str> = s.api.tokens.iter().map(Secret::expose).collect();
        assert_eq!(tokens, [T1, T2]);
        assert_eq!(s.amqp.queue_type, QueueType::Quorum);
        assert_eq!(s.worker.concurrency, 7);
        assert!(s.dispatch.require_registration);
    }

    #[test]
    fn file_layer_sits_between_defaults_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bora.toml");
        std::fs::write(
            &path,
            "[worker]\nserver_id = \"from-file\"\nconcurrency = 2\n[api]\nlisten = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let s = Settings::load_with_env(Some(&path), env(&[("BORA__API__LISTEN", "127.0.0.1:2")]))
            .unwrap();
        assert_eq!(s.worker.server_id.as_deref(), Some("from-file"));
        assert_eq!(s.worker.concurrency, 2);
        assert_eq!(s.api.listen.port(), 2);
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let err =
            Settings::load_with_env(None, env(&[("BORA__WORKER__CONCURRENCY", "0")])).unwrap_err();
        assert!(err.to_string().contains("worker.concurrency"), "{err}");
        let err = Settings::load_with_env(None, env(&[("BORA__AMQP__QUEUE_TYPE", "stream")]))
            .unwrap_err();
        assert!(err.to_string().contains("invalid configuration"), "{err}");
        let err = Settings::load_with_env(Some(Path::new("/nonexistent/bora.toml")), env(&[]))
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/bora.toml"), "{err}");
    }

    #[test]
    fn the_result_limit_is_checked() {
        for bad in ["0", "4095", "536870913"] {
            let err =
                Settings::load_with_env(None, env(&[("BORA__DISPATCH__MAX_RESULT_BYTES", bad)]))
                    .unwrap_err();
            assert!(
                err.to_string().contains("dispatch.max_result_bytes"),
                "{bad}: {err}"
            );
        }
        let s = Settings::load_with_env(None, env(&[])).unwrap();
        assert_eq!(s.dispatch.max_result_bytes, 8 * 1024 * 1024);
    }

    #[test]
    fn the_api_connection_limits_are_checked() {
        let s = Settings::load_with_env(None, env(&[])).unwrap();
        assert_eq!(s.api.header_read_timeout_s, 10);
        assert_eq!(s.api.max_connections, 2048);
        for (key, value, named) in [
            (
                "BORA__API__HEADER_READ_TIMEOUT_S",
                "0",
                "api.header_read_timeout_s",
            ),
            ("BORA__API__MAX_CONNECTIONS", "1", "api.max_connections"),
            // The default 1024 event streams would hold every connection.
            (
                "BORA__API__MAX_CONNECTIONS",
                "1024",
                "api.max_event_streams",
            ),
        ] {
            let err = Settings::load_with_env(None, env(&[(key, value)])).unwrap_err();
            assert!(err.to_string().contains(named), "{key}={value}: {err}");
        }
        let s = Settings::load_with_env(
            None,
            env(&[
                ("BORA__API__MAX_CONNECTIONS", "2"),
                ("BORA__API__MAX_EVENT_STREAMS", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(s.api.max_connections, 2);
    }

    const T1: &str = "token-one-0123456789";
    const T2: &str = "token-two-0123456789";

    #[test]
    fn a_short_metrics_token_is_refused() {
        let err = Settings::load_with_env(
            None,
            vec![("BORA__API__METRICS_TOKEN".to_owned(), "short".to_owned())],
        )
        .unwrap_err();
        assert!(err.to_string().contains("api.metrics_token"), "{err}");
        let ok = Settings::load_with_env(
            None,
            vec![(
                "BORA__API__METRICS_TOKEN".to_owned(),
                "long-enough-metrics-token".to_owned(),
            )],
        )
        .unwrap();
        assert!(ok.api.metrics_closed());
        assert!(ok.api.accepts_metrics_token("long-enough-metrics-token"));
        assert!(!ok.api.accepts_metrics_token(""));
        assert!(!ok.api.accepts_token("long-enough-metrics-token"));
    }

    #[test]
    fn tokens_are_trimmed() {
        let s = Settings::load_with_env(
            None,
            env(&[("BORA__API__TOKENS", &format!(" {T1} ,\t{T2}\n"))]),
        )
        .unwrap();
        let tokens: Vec<&str> = s.api.tokens.iter().map(Secret::expose).collect();
        assert_eq!(tokens, [T1, T2]);
    }

    #[test]
    fn empty_blank_or_short_tokens_are_refused() {
        // `BORA__API__TOKENS=` and a trailing comma used to yield "", which
        // lifted the loopback guard and matched an empty presented token.
        for value in [
            "".to_owned(),
            format!("{T1},"),
            format!("{T1}, ,{T2}"),
            "   ".to_owned(),
            "s3cret".to_owned(),
            format!("{T1},fifteen-chars-x"),
        ] {
            let err = Settings::load_with_env(None, env(&[("BORA__API__TOKENS", &value)]))
                .err()
                .unwrap_or_else(|| panic!("{value:?} was accepted"));
            let text = err.to_string();
            assert!(text.contains("api.tokens"), "{value:?}: {text}");
            assert!(text.contains("16"), "{value:?}: {text}");
            assert!(!text.contains("s3cret") && !text.contains(T1), "{text}");
        }
        // Exactly 16 characters is enough; so is a file's list.
        Settings::load_with_env(None, env(&[("BORA__API__TOKENS", "sixteen-chars-xx")])).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bora.toml");
        std::fs::write(&path, "[api]\ntokens = [\"\"]\n").unwrap();
        let err = Settings::load_with_env(Some(&path), env(&[])).unwrap_err();
        assert!(err.to_string().contains("api.tokens"), "{err}");
    }

    #[test]
    fn a_token_matches_whole_and_trimmed_only() {
        let s = Settings::load_with_env(None, env(&[("BORA__API__TOKENS", &format!("{T1},{T2}"))]))
            .unwrap();
        assert!(s.api.accepts_token(T1));
        assert!(s.api.accepts_token(&format!(" {T2} ")));
        for no in [
            "",
            " ",
            &T1[..T1.len() - 1],
            &format!("{T1}x"),
            &T1.to_uppercase(),
        ] {
            assert!(!s.api.accepts_token(no), "{no:?}");
        }
    }

    #[test]
    fn own_queues_are_the_topology_and_nothing_else() {
        let s = Settings::load_with_env(None, env(&[])).unwrap();
        for own in [
            "reply_bora",
            "bora_tasks",
            "bora_tasks.web-1",
            "bora_tasks_fanout_0123abcd",
            "bora_control.web-1",
            "bora_api",
            "bora_api.host-1",
            "bora_api_fanout_0123abcd",
            "notifications.info",
            "notifications.error",
        ] {
            assert!(s.is_own_queue(own), "{own}");
        }
        for theirs in [
            "reply_0123456789abcdef0123456789abcdef",
            "reply_bora2",
            "bora_tasksx",
            "heat-engine",
            "",
        ] {
            assert!(!s.is_own_queue(theirs), "{theirs}");
        }
    }

    #[test]
    fn values_scaled_at_run_time_are_bounded() {
        // Each would overflow (`* 1_000_000` as i64, `2 *`, an Instant plus
        // a Duration) or mean nothing; refused with the key and its range.
        let max = u64::MAX.to_string();
        for (var, key, value, range) in [
            (
                "BORA__DISPATCH__HEARTBEAT_TIMEOUT_S",
                "dispatch.heartbeat_timeout_s",
                max.as_str(),
                "between 1 and 86400",
            ),
            (
                "BORA__DISPATCH__HEARTBEAT_TIMEOUT_S",
                "dispatch.heartbeat_timeout_s",
                "86401",
                "between 1 and 86400",
            ),
            (
                "BORA__DISPATCH__HEARTBEAT_TIMEOUT_S",
                "dispatch.heartbeat_timeout_s",
                "0",
                "between 1 and 86400",
            ),
            (
                "BORA__WORKER__HEARTBEAT_S",
                "worker.heartbeat_s",
                max.as_str(),
                "between 1 and 3600",
            ),
            (
                "BORA__WORKER__HEARTBEAT_S",
                "worker.heartbeat_s",
                "0",
                "between 1 and 3600",
            ),
            (
                "BORA__DISPATCH__OUTBOX_LEASE_S",
                "dispatch.outbox_lease_s",
                max.as_str(),
                "between 1 and 3600",
            ),
            (
                "BORA__DISPATCH__OUTBOX_LEASE_S",
                "dispatch.outbox_lease_s",
                "0",
                "between 1 and 3600",
            ),
            (
                "BORA__DISPATCH__RELAY_INTERVAL_MS",
                "dispatch.relay_interval_ms",
                max.as_str(),
                "between 1 and 3600000",
            ),
            (
                "BORA__WORKER__SHUTDOWN_GRACE_S",
                "worker.shutdown_grace_s",
                max.as_str(),
                "between 0 and 86400",
            ),
        ] {
            let err = Settings::load_with_env(None, env(&[(var, value)]))
                .err()
                .unwrap_or_else(|| panic!("{key} = {value} accepted"));
            let text = err.to_string();
            assert!(
                text.contains(key) && text.contains(range),
                "{key} = {value}: {text}"
            );
        }
        // The ends of each range load.
        Settings::load_with_env(
            None,
            env(&[
                ("BORA__DISPATCH__HEARTBEAT_TIMEOUT_S", "86400"),
                ("BORA__WORKER__HEARTBEAT_S", "3600"),
                ("BORA__DISPATCH__OUTBOX_LEASE_S", "1"),
                ("BORA__DISPATCH__RELAY_INTERVAL_MS", "3600000"),
                ("BORA__WORKER__SHUTDOWN_GRACE_S", "0"),
            ]),
        )
        .unwrap();
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Settings::load_with_env(
            None,
            env(&[("BORA__API__TOKENS", "hunter2-hunter2-hunter2")]),
        )
        .unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains("guest:guest"), "{dbg}");
        assert!(dbg.contains("guest:***"), "{dbg}");
    }
}
