//! Test harness: the real dispatcher on a random port, a fresh SQLite file
//! and a fresh RabbitMQ vhost per test, plus a scripted stand-in worker that
//! speaks the real wire format (for tests that must control each result).

#![allow(dead_code)]

use std::time::{Duration, Instant};

use bora::config::Settings;
use bora::protocol::{RpcReply, RpcRequest, TaskMessage, TaskResult};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[path = "../common/mgmt.rs"]
pub mod mgmt;
pub use mgmt::{MGMT, mgmt_put};
#[path = "../common/store.rs"]
mod store;
pub use store::TestStore;
#[path = "../common/views.rs"]
pub mod views;
pub use views::*;

pub fn amqp_base() -> String {
    std::env::var("BORA_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into())
}

/// A vhost that exists for one test and is deleted when dropped.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    pub async fn create() -> Self {
        let name = format!("bora-test-{}", uuid::Uuid::new_v4().simple());
        mgmt_put(&format!("vhosts/{name}"), None).await;
        mgmt_put(
            &format!("permissions/{name}/guest"),
            Some(json!({"configure": ".*", "write": ".*", "read": ".*"})),
        )
        .await;
        Self { name }
    }

    pub fn amqp_url(&self) -> String {
        format!("{}/{}", amqp_base(), self.name)
    }

    /// Messages ready in a queue, straight from the broker (no stats lag).
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let conn = Connection::connect(&self.amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = conn.close(200, "bye".into()).await;
        q.message_count()
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await: delete from a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let _ = reqwest::Client::new()
                    .delete(format!("{MGMT}/api/vhosts/{name}"))
                    .basic_auth("guest", Some("guest"))
                    .send()
                    .await;
            });
        })
        .join();
    }
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    pub vhost: Vhost,
    pub settings: Settings,
    pub dir: tempfile::TempDir,
    pub store: TestStore,
    shutdown: CancellationToken,
    dispatcher: Option<bora::serve::Dispatcher>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts the dispatcher with extra `BORA__...` settings.
pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if std::env::var("TEST_LOG").is_ok() {
        bora::telemetry::init(bora::config::LogFormat::Human, "info,bora=debug");
    }
    let vhost = Vhost::create().await;
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::create(dir.path()).await;
    let mut env: Vec<(String, String)> = vec![
        ("BORA__API__LISTEN".into(), "127.0.0.1:0".into()),
        ("BORA__AMQP__URL".into(), vhost.amqp_url()),
        ("BORA__DISPATCH__RELAY_INTERVAL_MS".into(), "200".into()),
    ];
    env.extend(store.env());
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let settings = Settings::load_with_env(None, env).unwrap();
    let shutdown = CancellationToken::new();
    let dispatcher = bora::serve::start(settings.clone(), shutdown.clone())
        .await
        .unwrap();
    let addr = dispatcher.addr;
    let app = TestApp {
        addr,
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        vhost,
        settings,
        dir,
        store,
        shutdown,
        dispatcher: Some(dispatcher),
    };
    app.wait_ready().await;
    app
}

impl TestApp {
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.http.get(format!("{}/readyz", self.base)).send().await;
            if r.is_ok_and(|r| r.status() == StatusCode::OK) {
                return;
            }
            assert!(Instant::now() < deadline, "dispatcher never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the dispatcher and starts another with `settings` on the same
    /// store and vhost, as after a restart (the API gets a new port).
    ///
    /// # Errors
    /// The new dispatcher refused to start (its error).
    pub async fn restart_with(&mut self, settings: Settings) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(d) = self.dispatcher.take() {
            d.wait().await;
        }
        self.shutdown = CancellationToken::new();
        let d = bora::serve::start(settings.clone(), self.shutdown.clone()).await?;
        self.addr = d.addr;
        self.base = format!("http://{}", d.addr);
        self.dispatcher = Some(d);
        self.settings = settings;
        self.wait_ready().await;
        Ok(())
    }

    /// The settings of this app with `extra` `BORA__...` variables on top.
    pub fn settings_with(&self, extra: &[(&str, &str)]) -> Settings {
        let mut env: Vec<(String, String)> = vec![
            ("BORA__API__LISTEN".into(), "127.0.0.1:0".into()),
            ("BORA__AMQP__URL".into(), self.vhost.amqp_url()),
            ("BORA__DISPATCH__RELAY_INTERVAL_MS".into(), "200".into()),
        ];
        env.extend(self.store.env());
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Settings::load_with_env(None, env).unwrap()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(d) = self.dispatcher.take() {
            d.wait().await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        split(r).await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        split(r).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .patch(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        split(r).await
    }

    /// A GET's body as text, whatever it is (a whole event stream, metrics).
    pub async fn get_text(&self, path: &str) -> String {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        split(r).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let r = self.http.delete(self.url(path)).send().await.unwrap();
        split(r).await
    }

    /// Creates a workflow (asserting 201).
    pub async fn create_workflow(&self, body: Value) -> WorkflowOut {
        expect_body(
            self.post("/v1/workflows", body).await,
            StatusCode::CREATED,
            "created workflow",
        )
    }

    /// Adds a task to a workflow (asserting 201).
    pub async fn add_task(&self, wf: &str, body: Value) -> TaskOut {
        expect_body(
            self.post(&format!("/v1/workflows/{wf}/tasks"), body).await,
            StatusCode::CREATED,
            "added task",
        )
    }

    /// A task by name or id (asserting 200).
    pub async fn task(&self, wf: &str, task: &str) -> TaskOut {
        expect_body(
            self.get(&format!("/v1/workflows/{wf}/tasks/{task}")).await,
            StatusCode::OK,
            "task",
        )
    }

    /// Every task of a workflow, page after page; `query` is empty or
    /// starts with `?`.
    pub async fn tasks(&self, wf: &str, query: &str) -> Vec<TaskOut> {
        let mut all = Vec::new();
        let mut path = format!("/v1/workflows/{wf}/tasks{query}");
        loop {
            let list: TaskListOut = expect_body(self.get(&path).await, StatusCode::OK, "task list");
            all.extend(list.tasks);
            let Some(m) = list.next_marker else {
                return all;
            };
            let sep = if query.is_empty() { '?' } else { '&' };
            path = format!("/v1/workflows/{wf}/tasks{query}{sep}marker={m}");
        }
    }

    /// PATCHes a task (asserting 200).
    pub async fn patch_task(&self, wf: &str, task: &str, body: Value) -> TaskOut {
        expect_body(
            self.patch(&format!("/v1/workflows/{wf}/tasks/{task}"), body)
                .await,
            StatusCode::OK,
            "patched task",
        )
    }

    /// A workflow (asserting 200).
    pub async fn workflow(&self, wf: &str) -> WorkflowOut {
        expect_body(
            self.get(&format!("/v1/workflows/{wf}")).await,
            StatusCode::OK,
            "workflow",
        )
    }

    /// One page of workflows; `query` is empty or starts with `?`.
    pub async fn workflows(&self, query: &str) -> WorkflowListOut {
        expect_body(
            self.get(&format!("/v1/workflows{query}")).await,
            StatusCode::OK,
            "workflow list",
        )
    }

    /// PATCHes a workflow (asserting 200).
    pub async fn patch_workflow(&self, wf: &str, body: Value) -> WorkflowOut {
        expect_body(
            self.patch(&format!("/v1/workflows/{wf}"), body).await,
            StatusCode::OK,
            "patched workflow",
        )
    }

    /// Cancels a workflow (asserting 200).
    pub async fn cancel_workflow(&self, wf: &str) -> WorkflowOut {
        expect_body(
            self.post(&format!("/v1/workflows/{wf}/cancel"), json!({}))
                .await,
            StatusCode::OK,
            "cancelled workflow",
        )
    }

    /// Polls until the task reaches `state`, returning it.
    pub async fn wait_task_state(&self, wf: &str, task: &str, state: &str) -> TaskOut {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let t = self.task(wf, task).await;
            if t.state == state {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "task {task} never reached {state}: {t:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls until the workflow reaches `state`, returning it.
    pub async fn wait_workflow_state(&self, wf: &str, state: &str) -> WorkflowOut {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let w = self.workflow(wf).await;
            if w.state == state {
                return w;
            }
            assert!(
                Instant::now() < deadline,
                "workflow never reached {state}: {w:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The next cancel cast on a server's control queue (taken off it).
    pub async fn next_cancel(&self, server: &str) -> RpcRequest {
        let conn = lapin::Connection::connect(&self.vhost.amqp_url(), Default::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let control = self.settings.amqp.control_queue(server);
        for _ in 0..200 {
            if let Some(m) = ch
                .basic_get(
                    control.as_str().into(),
                    lapin::options::BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap()
            {
                return RpcRequest::decode(&m.delivery.data).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no cancel on {control}");
    }

    /// A scripted worker for one server on this app's vhost.
    /// Registers `server` as a guest and returns the broker URL issued to it.
    pub async fn register_guest(&self, server: &str) -> String {
        let (s, reg) = self
            .post("/v1/servers", json!({"server_id": server, "kind": "guest"}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{reg}");
        reg["amqp_url"].as_str().unwrap().to_owned()
    }

    pub async fn fake_worker(&self, server: &str) -> FakeWorker {
        FakeWorker::connect(&self.vhost.amqp_url(), &self.settings, server).await
    }
}

/// A response's status and JSON body (null when empty, a string when not JSON).
pub async fn split(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = r.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// Asserts a response's status and reads its body as `T`.
pub fn expect_body<T: serde::de::DeserializeOwned>(
    resp: (StatusCode, Value),
    status: StatusCode,
    what: &str,
) -> T {
    let (got, body) = resp;
    assert_eq!(got, status, "{what}: {body}");
    parse(what, body)
}

/// Asserts an error response: status and the JSON error body's code.
pub fn assert_error(resp: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(resp.0, status, "{}", resp.1);
    assert_eq!(resp.1["error"]["code"], code, "{}", resp.1);
    assert!(
        resp.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error without message: {}",
        resp.1
    );
}

/// Stands in for `bora worker` in tests that must choose each result: it
/// consumes the server's queue and answers with the real reply format
/// through the `reply_bora` exchange.
pub struct FakeWorker {
    conn: Connection,
    channel: Channel,
    consumer: Consumer,
    exchange: String,
    /// The broker user, sent as `user_id` (the broker checks it).
    user: String,
}

impl FakeWorker {
    pub async fn connect(url: &str, settings: &Settings, server: &str) -> Self {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        channel
            .basic_qos(100, BasicQosOptions::default())
            .await
            .unwrap();
        let queue = settings.amqp.task_queue(server);
        // The dispatcher declares the queue when it first publishes to it;
        // declaring it here too (same flags) lets a worker start first. A
        // registered server's user may not declare: its queue exists already.
        if url.contains("guest:guest@") {
            channel
                .queue_declare(
                    queue.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                format!("fake-{server}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            conn,
            channel,
            consumer,
            exchange: settings.amqp.reply_queue.clone(),
            user: bora::broker::management::user_of(url),
        }
    }

    /// The next task delivered (acked at once).
    pub async fn next_task(&mut self) -> TaskMessage {
        let d = tokio::time::timeout(Duration::from_secs(20), self.consumer.next())
            .await
            .expect("no task arrived within 20 s")
            .unwrap()
            .unwrap();
        d.ack(BasicAckOptions::default()).await.unwrap();
        let req = RpcRequest::decode(&d.data).unwrap();
        TaskMessage::from_call(&req).unwrap()
    }

    /// Asserts that no task arrives within `wait`.
    pub async fn expect_nothing(&mut self, wait: Duration) {
        if let Ok(Some(Ok(d))) = tokio::time::timeout(wait, self.consumer.next()).await {
            let req = RpcRequest::decode(&d.data).unwrap();
            panic!("unexpected task: {:?}", req.args["task"]["name"]);
        }
    }

    async fn send(&self, reply: RpcReply) {
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                self.exchange.as_str().into(),
                BasicPublishOptions::default(),
                &reply.encode(),
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_user_id(self.user.as_str().into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    pub async fn started(&self, task: &TaskMessage) {
        self.send(RpcReply::heartbeat(bora::protocol::task_msg_id(
            task.id,
            task.attempt,
        )))
        .await;
    }

    pub async fn finish(&self, task: &TaskMessage, exit_code: i64) {
        self.finish_with(
            task,
            TaskResult::from_streams(task.attempt, exit_code, "out\n".into(), String::new()),
        )
        .await;
    }

    pub async fn finish_with(&self, task: &TaskMessage, result: TaskResult) {
        self.send(RpcReply::final_result(
            bora::protocol::task_msg_id(task.id, task.attempt),
            serde_json::to_value(result).unwrap(),
        ))
        .await;
    }

    /// Sends raw bytes to the reply queue (for poison-message tests).
    pub async fn send_raw(&self, body: &[u8]) {
        self.send_raw_props(body, BasicProperties::default()).await;
    }

    /// Sends raw bytes with a `correlation_id`, as bora's worker sets it.
    pub async fn send_raw_correlated(&self, body: &[u8], correlation_id: &str) {
        let props = BasicProperties::default().with_correlation_id(correlation_id.into());
        self.send_raw_props(body, props).await;
    }

    async fn send_raw_props(&self, body: &[u8], props: BasicProperties) {
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                self.exchange.as_str().into(),
                BasicPublishOptions::default(),
                body,
                props
                    .with_content_type("application/json".into())
                    .with_user_id(self.user.as_str().into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "bye".into()).await;
    }
}

/// A token long enough for `api.tokens` (16 characters at least).
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A raw oslo RPC client of the app's `bora_api`, with its own reply queue.
pub struct RpcCaller {
    _conn: Connection,
    pub channel: lapin::Channel,
    pub exchange: String,
    pub topic: String,
    /// Its own reply queue, `reply_<random>` as oslo names them.
    pub reply_q: String,
    replies: lapin::Consumer,
}

impl RpcCaller {
    pub async fn connect(app: &TestApp) -> Self {
        let conn = Connection::connect(&app.vhost.amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        // The RPC API declares its exchange and queue in the background; a
        // publish to a missing exchange would close the channel.
        let topic = app.settings.rpc.topic.as_str();
        let mut declared = false;
        for _ in 0..400 {
            let probe = conn.create_channel().await.unwrap();
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            if probe
                .queue_declare(topic.into(), passive, FieldTable::default())
                .await
                .is_ok()
            {
                declared = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(declared, "the RPC API never declared {topic}");
        let channel = conn.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let reply_q = format!("reply_{}", uuid::Uuid::new_v4().simple());
        channel
            .queue_declare(
                reply_q.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let replies = channel
            .basic_consume(
                reply_q.as_str().into(),
                "caller".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            _conn: conn,
            channel,
            exchange: app.settings.amqp.exchange.clone(),
            topic: app.settings.rpc.topic.clone(),
            reply_q,
            replies,
        }
    }

    /// A call of `method` with `args`, the token (if any) in its context, and
    /// replies asked for on `reply_q` under `msg_id`.
    pub fn request(
        method: &str,
        args: Value,
        token: Option<&str>,
        msg_id: &str,
        reply_q: &str,
    ) -> RpcRequest {
        let mut req: RpcRequest = serde_json::from_value(json!({
            "method": method,
            "args": args,
            "_msg_id": msg_id,
            "_reply_q": reply_q,
            "_unique_id": uuid::Uuid::new_v4().simple().to_string(),
        }))
        .unwrap();
        if let Some(t) = token {
            req.context
                .insert("_context_auth_token".into(), Value::String(t.into()));
        }
        req
    }

    /// A call answered to this caller's reply queue.
    pub fn call(&self, method: &str, args: Value, token: Option<&str>) -> RpcRequest {
        let msg_id = uuid::Uuid::new_v4().simple().to_string();
        Self::request(method, args, token, &msg_id, &self.reply_q)
    }

    pub async fn publish(&self, req: &RpcRequest) {
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                self.topic.as_str().into(),
                BasicPublishOptions::default(),
                &req.encode(),
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// The next reply on this caller's queue within `wait`.
    pub async fn reply(&mut self, wait: Duration) -> Option<RpcReply> {
        match tokio::time::timeout(wait, self.replies.next()).await {
            Ok(Some(Ok(d))) => Some(RpcReply::decode(&d.data).unwrap()),
            _ => None,
        }
    }

    /// Waits until the RPC API answers a call (its queue exists only once the
    /// dispatcher consumes it), so a silence afterwards means a refusal.
    pub async fn wait_ready(&mut self, token: Option<&str>) {
        for _ in 0..40 {
            let req = self.call("get_workflow", json!({"workflow_id": "nope"}), token);
            self.publish(&req).await;
            if let Some(r) = self.reply(Duration::from_millis(500)).await {
                assert_eq!(r.msg_id, req.msg_id.unwrap());
                let failure = r.failure.expect("a failure for a missing workflow");
                assert!(failure.contains("NotFound"), "{failure}");
                return;
            }
        }
        panic!("the RPC API never answered");
    }

    /// Asserts that no reply arrives within a second.
    pub async fn expect_silence(&mut self, what: &str) {
        if let Some(r) = self.reply(Duration::from_secs(1)).await {
            panic!("{what} was answered: {r:?}");
        }
    }
}

/// `prefix` and ten random hex digits: a name no other test uses (broker
/// users are global, not per vhost).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}
