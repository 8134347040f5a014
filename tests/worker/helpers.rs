//! The test plays the dispatcher: a fresh RabbitMQ vhost per test, the
//! dispatcher's topology declared with a raw lapin client, task calls and
//! cancel casts published by hand, replies read from `reply_bora`, and the real
//! `bora worker` binary as a child process.
//!
//! The broker is taken from `BORA_TEST_AMQP_HOST` (default 127.0.0.1), with the
//! AMQP port 5672 and the management API on 15672 (guest/guest).

#[path = "../common/mgmt.rs"]
mod mgmt;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bora::domain::{Delivery, OutputSpec, ServerId, TaskId, WorkflowId};
use bora::protocol::{CancelMessage, RpcReply, TaskMessage, TaskResult, task_msg_id};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{Map, Value, json};
use tokio::process::Child;
use tokio::sync::Notify;

pub const EXCHANGE: &str = "bora";
pub const REPLY: &str = "reply_bora";

fn host() -> String {
    std::env::var("BORA_TEST_AMQP_HOST").unwrap_or_else(|_| "127.0.0.1".into())
}

fn mgmt(path: &str) -> String {
    format!("http://{}:15672/api{path}", host())
}

/// One reply as the test's reply consumer saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub reply: RpcReply,
    pub user_id: Option<String>,
    pub content_type: Option<String>,
    pub delivery_mode: Option<u8>,
    pub correlation_id: Option<String>,
    /// The size of the message body as published.
    pub bytes: usize,
}

/// A fresh vhost with the dispatcher's topology, and (once started) a worker.
pub struct TestApp {
    pub vhost: String,
    pub amqp_url: String,
    pub server_id: ServerId,
    pub channel: Channel,
    _conn: Connection,
    replies: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
    pub worker: Option<Child>,
    /// Holds state_dir, hooks_dir, scratch files of the test's scripts, the log.
    pub dir: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub hooks_dir: PathBuf,
    pub env: Vec<(String, String)>,
    /// Broker users made for this test, deleted with it.
    users: Vec<String>,
}

pub struct Options {
    /// Declare the task and control queues (false: the worker must).
    pub declare_queues: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            declare_queues: true,
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(opts: Options) -> TestApp {
    let vhost = format!("bora-test-{}", uuid::Uuid::new_v4());
    let enc: String = url::form_urlencoded::byte_serialize(vhost.as_bytes()).collect();
    mgmt::mgmt_put(&format!("vhosts/{enc}"), None).await;
    mgmt::mgmt_put(
        &format!("permissions/{enc}/guest"),
        Some(json!({"configure": ".*", "write": ".*", "read": ".*"})),
    )
    .await;
    let amqp_url = format!("amqp://guest:guest@{}:5672/{enc}", host());
    let conn = Connection::connect(&amqp_url, ConnectionProperties::default())
        .await
        .expect("broker reachable");
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let durable = || QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let xdurable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            xdurable,
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .exchange_declare(
            REPLY.into(),
            ExchangeKind::Direct,
            xdurable,
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(REPLY.into(), durable(), FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            REPLY.into(),
            REPLY.into(),
            REPLY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let server_id = ServerId::parse(&format!(
        "srv-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ))
    .unwrap();
    if opts.declare_queues {
        for q in [task_queue(&server_id), control_queue(&server_id)] {
            channel
                .queue_declare(q.as_str().into(), durable(), FieldTable::default())
                .await
                .unwrap();
            channel
                .queue_bind(
                    q.as_str().into(),
                    EXCHANGE.into(),
                    q.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
    }

    // The test's reply consumer: auto-ack, everything recorded.
    let replies = Arc::new(Mutex::new(Vec::new()));
    let arrived = Arc::new(Notify::new());
    let rch = conn.create_channel().await.unwrap();
    let mut consumer = rch
        .basic_consume(
            REPLY.into(),
            "test-replies".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    {
        let replies = replies.clone();
        let arrived = arrived.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let reply = RpcReply::decode(&d.data).expect("worker replies decode");
                let p = &d.properties;
                replies.lock().unwrap().push(Received {
                    reply,
                    user_id: p.user_id().as_ref().map(|s| s.to_string()),
                    content_type: p.content_type().as_ref().map(|s| s.to_string()),
                    delivery_mode: *p.delivery_mode(),
                    correlation_id: p.correlation_id().as_ref().map(|s| s.to_string()),
                    bytes: d.data.len(),
                });
                arrived.notify_waiters();
            }
            let _ = rch;
        });
    }

    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let hooks_dir = dir.path().join("hooks");
    std::fs::create_dir_all(&hooks_dir).unwrap();
    TestApp {
        vhost,
        amqp_url,
        server_id,
        channel,
        _conn: conn,
        replies,
        arrived,
        worker: None,
        state_dir,
        hooks_dir,
        dir,
        env: Vec::new(),
        users: Vec::new(),
    }
}

pub fn task_queue(server: &ServerId) -> String {
    format!("bora_tasks.{server}")
}

pub fn control_queue(server: &ServerId) -> String {
    format!("bora_control.{server}")
}

impl TestApp {
    /// A path in the test's own directory (for markers scripts write).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("worker.log")
    }

    /// Starts `bora worker` with heartbeat 1 s and the given extra settings,
    /// and waits until it consumes its task queue.
    pub async fn start_worker(&mut self, extra: &[(&str, &str)]) {
        self.spawn_worker(extra);
        self.wait_consuming().await;
    }

    pub async fn wait_consuming(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.consumers(&task_queue(&self.server_id)).await < 1 {
            assert!(
                Instant::now() < deadline,
                "worker did not start:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts `bora worker` without waiting for it.
    pub fn spawn_worker(&mut self, extra: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_bora"));
        cmd.args(["worker", "--server-id", self.server_id.as_str()])
            .env("BORA__AMQP__URL", &self.amqp_url)
            .env("BORA__WORKER__STATE_DIR", &self.state_dir)
            .env("BORA__WORKER__HOOKS_DIR", &self.hooks_dir)
            .env("BORA__WORKER__HEARTBEAT_S", "1")
            .env("RUST_LOG", "bora=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.worker = Some(cmd.spawn().expect("bora binary runs"));
    }

    pub fn worker_pid(&self) -> i32 {
        self.worker
            .as_ref()
            .and_then(|c| c.id())
            .expect("worker running") as i32
    }

    /// SIGTERM, then the exit status.
    pub async fn stop_worker(&mut self) -> std::process::ExitStatus {
        let pid = self.worker_pid();
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let mut child = self.worker.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("worker exits after SIGTERM")
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// (ready messages, consumers) of a queue, from a passive declare (live, no stats lag).
    pub async fn queue_state(&self, queue: &str) -> (u32, u32) {
        let ch = self._conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = ch.close(200, "ok".into()).await;
        (q.message_count(), q.consumer_count())
    }

    /// Creates a broker user with a guest worker's rights (SPEC 5) on this
    /// vhost and returns the worker URL for it; deleted with the app.
    pub async fn restricted_user(&mut self) -> String {
        let user = format!("bora-srv-{}", self.server_id);
        let http = reqwest::Client::new();
        let enc: String = url::form_urlencoded::byte_serialize(self.vhost.as_bytes()).collect();
        http.put(mgmt(&format!("/users/{user}")))
            .basic_auth("guest", Some("guest"))
            .json(&json!({"password": "pw", "tags": ""}))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        let id = self.server_id.as_str();
        http.put(mgmt(&format!("/permissions/{enc}/{user}")))
            .basic_auth("guest", Some("guest"))
            .json(&json!({
                "configure": "^$",
                "write": "^reply_bora$",
                "read": format!("^bora_tasks\\.{id}$|^bora_control\\.{id}$"),
            }))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        self.users.push(user.clone());
        format!("amqp://{user}:pw@{}:5672/{enc}", host())
    }

    /// Declares and binds the server's task and control queues, as the dispatcher does.
    pub async fn declare_server_queues(&self) {
        for q in [task_queue(&self.server_id), control_queue(&self.server_id)] {
            self.channel
                .queue_declare(
                    q.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            self.channel
                .queue_bind(
                    q.as_str().into(),
                    EXCHANGE.into(),
                    q.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
    }

    async fn consumers(&self, queue: &str) -> u32 {
        let ch = self._conn.create_channel().await.unwrap();
        let r = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = ch.close(200, "ok".into()).await;
        r.map(|q| q.consumer_count()).unwrap_or(0)
    }

    pub fn task(&self, group: &str, config: &str) -> TaskMessage {
        TaskMessage {
            id: TaskId::new(),
            workflow_id: WorkflowId::new(),
            name: "t".into(),
            server_id: self.server_id.clone(),
            group: group.into(),
            config: config.into(),
            inputs: Map::new(),
            outputs: Vec::new(),
            options: Map::new(),
            timeout_s: 60,
            attempt: 1,
            delivery: Delivery::AtLeastOnce,
            live_output_bytes: None,
            max_result_bytes: None,
            secrets: Vec::new(),
        }
    }

    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(2);
        let confirm = self
            .channel
            .basic_publish(
                EXCHANGE.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
        assert!(confirm.take_message().is_none(), "unroutable publish");
    }

    /// Publishes a task call; returns its `_msg_id`.
    pub async fn publish(&self, task: &TaskMessage) -> String {
        let body = task.to_call(REPLY, 1).encode();
        self.publish_raw(&task_queue(&self.server_id), &body).await;
        task_msg_id(task.id, task.attempt)
    }

    pub async fn cancel(&self, task: &TaskMessage) {
        let body = CancelMessage {
            task_id: task.id,
            attempt: task.attempt,
        }
        .to_cast()
        .encode();
        self.publish_raw(&control_queue(&self.server_id), &body)
            .await;
    }

    /// Every reply received so far for `msg_id`.
    pub fn replies_for(&self, msg_id: &str) -> Vec<Received> {
        self.replies
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.reply.msg_id == msg_id)
            .cloned()
            .collect()
    }

    /// Waits until a reply for `msg_id` satisfies `pred`.
    pub async fn wait_reply(
        &self,
        msg_id: &str,
        within: Duration,
        pred: impl Fn(&RpcReply) -> bool,
    ) -> Received {
        let deadline = Instant::now() + within;
        loop {
            let notified = self.arrived.notified();
            if let Some(r) = self
                .replies_for(msg_id)
                .into_iter()
                .find(|r| pred(&r.reply))
            {
                return r;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no matching reply for {msg_id} within {within:?}; got {:?}\nworker log:\n{}",
                    self.replies_for(msg_id),
                    self.log()
                );
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }

    /// The first `ending: true` reply for `msg_id`, as a result.
    pub async fn result(&self, msg_id: &str, within: Duration) -> TaskResult {
        let r = self.wait_reply(msg_id, within, |r| r.ending).await;
        assert!(
            r.reply.failure.is_none(),
            "bora's worker sends results, not failures"
        );
        serde_json::from_value(r.reply.result).expect("a result object")
    }

    pub async fn started(&self, msg_id: &str, within: Duration) -> Received {
        self.wait_reply(msg_id, within, |r| !r.ending).await
    }

    /// Final replies seen for `msg_id`.
    pub fn finals(&self, msg_id: &str) -> usize {
        self.replies_for(msg_id)
            .iter()
            .filter(|r| r.reply.ending)
            .count()
    }

    pub fn write_hook(&self, name: &str, body: &str) -> PathBuf {
        let path = self.hooks_dir.join(name);
        write_executable(&path, body);
        path
    }

    /// Closes the worker's broker connection(s) from the broker side.
    pub async fn kill_worker_connections(&self) -> usize {
        let http = reqwest::Client::new();
        let enc: String = url::form_urlencoded::byte_serialize(self.vhost.as_bytes()).collect();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let conns: Vec<Value> = http
                .get(mgmt(&format!("/vhosts/{enc}/connections")))
                .basic_auth("guest", Some("guest"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let names: Vec<String> = conns
                .iter()
                .filter(|c| {
                    c["client_properties"]["connection_name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("bora-worker"))
                })
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect();
            if !names.is_empty() {
                for name in &names {
                    let enc: String =
                        url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
                    http.delete(mgmt(&format!("/connections/{}", enc.replace('+', "%20"))))
                        .basic_auth("guest", Some("guest"))
                        .send()
                        .await
                        .unwrap()
                        .error_for_status()
                        .unwrap();
                }
                return names.len();
            }
            assert!(Instant::now() < deadline, "worker connection not listed");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- worker log ({}) ----\n{}", self.server_id, self.log());
        }
        // Synchronous clean-up: curl is enough and needs no runtime.
        for user in &self.users {
            let _ = std::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-u", "guest:guest", "-X", "DELETE"])
                .arg(mgmt(&format!("/users/{user}")))
                .status();
        }
        let enc: String = url::form_urlencoded::byte_serialize(self.vhost.as_bytes()).collect();
        let _ = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-u", "guest:guest", "-X", "DELETE"])
            .arg(mgmt(&format!("/vhosts/{enc}")))
            .status();
    }
}

pub fn write_executable(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

pub fn outputs(names: &[&str]) -> Vec<OutputSpec> {
    names
        .iter()
        .map(|n| OutputSpec {
            name: (*n).into(),
            error_output: false,
            secret: false,
        })
        .collect()
}

pub fn inputs(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

/// Whether a process is gone (or only a zombie waiting for its reaper).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Err(_) => true,
        Ok(s) => s
            .lines()
            .find(|l| l.starts_with("State:"))
            .is_some_and(|l| l.contains('Z')),
    }
}

/// Reads a pid a script wrote.
pub async fn read_pid(path: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && let Ok(pid) = s.trim().parse()
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The path of heat-agents' hook-script.py: `BORA_HEAT_SCRIPT_HOOK`, else
/// whatever `.ci/fetch-heat-agents` prints (it downloads and caches it).
pub fn heat_script_hook() -> PathBuf {
    if let Ok(p) = std::env::var("BORA_HEAT_SCRIPT_HOOK") {
        return PathBuf::from(p);
    }
    static FETCHED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FETCHED
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/fetch-heat-agents");
            let out = std::process::Command::new(script)
                .output()
                .expect(".ci/fetch-heat-agents runs");
            assert!(
                out.status.success(),
                ".ci/fetch-heat-agents failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        })
        .clone()
}

/// Shortens RabbitMQ's global `consumer_timeout` for channels opened until
/// [`ShortConsumerTimeout::close_window`] (a channel reads it when it opens),
/// and the channel tick that enforces it (60 s by default; re-read at every
/// tick) until drop. Restores 1800000 / 60000. One at a time across processes
/// (a file lock).
pub struct ShortConsumerTimeout {
    _lock: std::fs::File,
}

impl ShortConsumerTimeout {
    pub async fn set(ms: u32) -> Self {
        let lock = tokio::task::spawn_blocking(|| {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::create("/tmp/bora-test-consumer-timeout.lock").unwrap();
            assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
            f
        })
        .await
        .unwrap();
        rabbit_eval(&format!(
            "application:set_env(rabbit, consumer_timeout, {ms}), \
             application:set_env(rabbit, channel_tick_interval, 1000)."
        ));
        Self { _lock: lock }
    }

    /// Channels opened from now on get the default timeout again.
    pub fn close_window(&self) {
        rabbit_eval("application:set_env(rabbit, consumer_timeout, 1800000).");
    }
}

impl Drop for ShortConsumerTimeout {
    fn drop(&mut self) {
        rabbit_eval(
            "application:set_env(rabbit, consumer_timeout, 1800000), \
             application:set_env(rabbit, channel_tick_interval, 60000).",
        );
    }
}

fn rabbit_eval(expr: &str) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["eval", expr])
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestApp {
    /// A channel of a new connection, holding one delivery unacked (on a
    /// queue of its own).
    pub async fn unacked_probe(&self) -> (Connection, Channel) {
        let conn = Connection::connect(&self.amqp_url, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.queue_declare(
            "probe".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        self.channel
            .basic_publish(
                "".into(),
                "probe".into(),
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        let mut c = ch
            .basic_consume(
                "probe".into(),
                "probe".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let d = c.next().await.unwrap().unwrap();
        std::mem::forget(d);
        tokio::spawn(async move { while c.next().await.is_some() {} });
        (conn, ch)
    }
}
