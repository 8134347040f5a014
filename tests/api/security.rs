//! Untrusted guests (SPEC 5): a hostile guest, holding the credentials bora
//! issued to it, tries everything it should not be able to do.

use std::time::Duration;

use bora::protocol::{RpcReply, TaskResult, task_msg_id};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

async fn register(app: &TestApp, server: &str, kind: &str) -> Value {
    let (s, reg) = app
        .post("/v1/servers", json!({"server_id": server, "kind": kind}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{reg}");
    reg
}

/// Revokes test servers even when an assertion failed (users are global).
struct Revoke<'a>(&'a TestApp, Vec<String>);

impl Revoke<'_> {
    async fn run(self) {
        for s in &self.1 {
            // With the bearer token of the app's that need one.
            let _ = self
                .0
                .http
                .delete(self.0.url(&format!("/v1/servers/{s}")))
                .bearer_auth(TOKEN)
                .send()
                .await;
        }
    }
}

fn refused(err: impl std::fmt::Display, code: &str) {
    let text = err.to_string();
    assert!(text.contains(code), "expected {code}, got: {text}");
}

async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap()
}

/// Publishes on a fresh confirming channel and returns the outcome.
async fn try_publish(
    conn: &Connection,
    exchange: &str,
    key: &str,
    props: BasicProperties,
) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = RpcReply::final_result("x.1", json!({"exit_code": 0})).encode();
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        &body,
        props,
    )
    .await?
    .await?;
    // A refused publish closes the channel; make sure we see it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    ch.basic_qos(1, Default::default()).await
}

#[tokio::test]
async fn registration_issues_least_privilege_credentials_once() {
    let app = spawn_app().await;
    let id = unique("reg");
    let guard = Revoke(&app, vec![id.clone()]);
    let reg = register(&app, &id, "guest").await;
    assert_eq!(reg["username"], format!("bora-srv-{id}"));
    assert_eq!(reg["kind"], "guest");
    assert_eq!(reg["rotated"], false);
    let password = reg["password"].as_str().unwrap().to_owned();
    assert!(password.len() >= 32, "at least 128 bits");
    let url = reg["amqp_url"].as_str().unwrap().to_owned();
    assert!(url.contains(&password));
    assert!(url.ends_with(&app.vhost.name));
    // The queues exist before any task: a worker may start first.
    assert_eq!(app.vhost.queue_depth(&format!("bora_tasks.{id}")).await, 0);
    assert_eq!(
        app.vhost.queue_depth(&format!("bora_control.{id}")).await,
        0
    );
    let conn = connect(&url).await;
    // Listed with its kind; not online before a heartbeat.
    let (_, list) = app.get("/v1/servers").await;
    let me = list["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["server_id"] == id.as_str())
        .cloned()
        .expect("listed");
    assert_eq!(me["registered"], true);
    assert_eq!(me["online"], false);
    let (s, one) = app.get(&format!("/v1/servers/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(one["kind"], "guest");
    assert!(
        one.get("password").is_none(),
        "the password is never shown again"
    );
    // A second registration rotates the password and says so.
    let (s, again) = app
        .post("/v1/servers", json!({"server_id": id, "kind": "guest"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["rotated"], true);
    assert_ne!(again["password"], password.as_str());
    assert!(
        Connection::connect(&url, ConnectionProperties::default())
            .await
            .is_err(),
        "the old password no longer works"
    );
    connect(again["amqp_url"].as_str().unwrap()).await;
    // Bad input.
    let r = app.post("/v1/servers", json!({"server_id": "a b"})).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let r = app
        .post("/v1/servers", json!({"server_id": "x", "kind": "root"}))
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    let r = app.delete("/v1/servers/never-registered").await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    drop(conn);
    guard.run().await;
    app.stop().await;
}

#[tokio::test]
async fn a_hostile_guest_cannot_read_write_or_configure_beyond_its_own_queue() {
    let app = spawn_app().await;
    let (a, b) = (unique("evil"), unique("victim"));
    let guard = Revoke(&app, vec![a.clone(), b.clone()]);
    let reg_a = register(&app, &a, "guest").await;
    register(&app, &b, "guest").await;
    let url_a = reg_a["amqp_url"].as_str().unwrap().to_owned();
    let conn = connect(&url_a).await;
    let user_a = format!("bora-srv-{a}");

    // Its own queues: fine.
    let ch = conn.create_channel().await.unwrap();
    ch.basic_consume(
        format!("bora_tasks.{a}").as_str().into(),
        "mine".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Another server's queue: refused.
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .basic_consume(
            format!("bora_tasks.{b}").as_str().into(),
            "theirs".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    refused(err, "ACCESS_REFUSED");
    // Declare, bind, delete: refused.
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .queue_declare(
            "evil".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    refused(err, "ACCESS_REFUSED");
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .exchange_declare(
            "evil".into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    refused(err, "ACCESS_REFUSED");
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .queue_bind(
            format!("bora_tasks.{a}").as_str().into(),
            "bora".into(),
            format!("bora_tasks.{b}").as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    refused(err, "ACCESS_REFUSED");
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .queue_delete(
            format!("bora_tasks.{a}").as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap_err();
    refused(err, "ACCESS_REFUSED");
    // Publish to the task exchange (inject a task) or the default exchange: refused.
    let err = try_publish(
        &conn,
        "bora",
        &format!("bora_tasks.{b}"),
        BasicProperties::default(),
    )
    .await
    .unwrap_err();
    refused(err, "ACCESS_REFUSED");
    let err = try_publish(&conn, "", "reply_bora", BasicProperties::default())
        .await
        .unwrap_err();
    refused(err, "ACCESS_REFUSED");
    // Spoof another user in user_id: the broker refuses.
    let err = try_publish(
        &conn,
        "reply_bora",
        "reply_bora",
        BasicProperties::default().with_user_id(format!("bora-srv-{b}").as_str().into()),
    )
    .await
    .unwrap_err();
    refused(err, "PRECONDITION_FAILED");
    // Its own identity through the reply exchange: allowed by the broker.
    try_publish(
        &conn,
        "reply_bora",
        "reply_bora",
        BasicProperties::default().with_user_id(user_a.as_str().into()),
    )
    .await
    .unwrap();
    drop(conn);
    guard.run().await;
    app.stop().await;
}

#[tokio::test]
async fn a_forged_result_is_ignored_until_the_real_worker_reports() {
    let app = spawn_app().await;
    let (a, b) = (unique("forger"), unique("target"));
    let guard = Revoke(&app, vec![a.clone(), b.clone()]);
    let reg_a = register(&app, &a, "guest").await;
    let reg_b = register(&app, &b, "guest").await;
    let wf = app
        .create_workflow(json!({"name": "forge", "tasks": [{"name": "t", "server_id": b}]}))
        .await;
    let wf_id = wf.id();
    app.wait_task_state(&wf_id, "t", "queued").await;
    let task_id = app.task(&wf_id, "t").await.id;

    // A forges a success for B's task under its own (valid) identity.
    let forger = FakeWorker::connect(reg_a["amqp_url"].as_str().unwrap(), &app.settings, &a).await;
    forger
        .send_raw(
            &RpcReply::final_result(
                task_msg_id(task_id, 1),
                serde_json::to_value(TaskResult::from_streams(
                    1,
                    0,
                    "pwned".into(),
                    String::new(),
                ))
                .unwrap(),
            )
            .encode(),
        )
        .await;
    // Heartbeats pretending to be B change nothing either.
    forger
        .send_raw(&RpcReply::heartbeat(task_msg_id(task_id, 1)).encode())
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = app.task(&wf_id, "t").await;
    assert_eq!(t.state, "queued", "{t:?}");
    assert!(t.result.is_none(), "{t:?}");
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics
            .as_str()
            .unwrap_or_default()
            .contains("bora_results_rejected_total{reason=\"wrong_user\"}"),
        "forgery not counted"
    );

    // The real worker completes it.
    let mut real =
        FakeWorker::connect(reg_b["amqp_url"].as_str().unwrap(), &app.settings, &b).await;
    let msg = real.next_task().await;
    real.finish(&msg, 0).await;
    let t = app.wait_task_state(&wf_id, "t", "succeeded").await;
    assert_eq!(t.result().stdout, "out\n");
    forger.close().await;
    real.close().await;
    guard.run().await;
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_server_cannot_reconnect_and_its_tasks_are_cancelled() {
    let app = spawn_app().await;
    let (gone, other) = (unique("revoked"), unique("other"));
    let guard = Revoke(&app, vec![gone.clone(), other.clone()]);
    let reg = register(&app, &gone, "guest").await;
    let url = reg["amqp_url"].as_str().unwrap().to_owned();
    let wf = app
        .create_workflow(json!({"name": "revoke", "tasks": [
            {"name": "t", "server_id": gone},
            {"name": "after", "server_id": other, "depends_on": ["t"]},
            {"name": "cleanup", "server_id": other, "depends_on": ["t"], "on_dependency_failure": "run"}
        ]}))
        .await;
    let wf_id = wf.id();
    app.wait_task_state(&wf_id, "t", "queued").await;
    let conn = connect(&url).await;
    assert!(conn.status().connected());

    let (s, body) = app.delete(&format!("/v1/servers/{gone}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    // Its live connection is dropped, and it cannot come back.
    let mut closed = false;
    // (A deadline, generous for a loaded machine: the close goes through
    // the management API and the broker.)
    for _ in 0..200 {
        if !conn.status().connected() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "the revoked server's connection stayed open");
    let again = Connection::connect(&url, ConnectionProperties::default()).await;
    assert!(again.is_err(), "a revoked server reconnected");
    // Its tasks are cancelled; dependents are skipped or released.
    assert_eq!(app.task(&wf_id, "t").await.state, "cancelled");
    assert_eq!(app.task(&wf_id, "after").await.state, "skipped");
    let cleanup = app.wait_task_state(&wf_id, "cleanup", "queued").await;
    assert_eq!(cleanup.server(), other);
    let r = app.get(&format!("/v1/servers/{gone}")).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    guard.run().await;
    app.stop().await;
}

#[tokio::test]
async fn with_registration_required_only_the_servers_own_user_counts() {
    let app = spawn_app_with(&[
        ("BORA__DISPATCH__REQUIRE_REGISTRATION", "true"),
        ("BORA__DISPATCH__MAX_RESULT_BYTES", "4096"),
        ("BORA__DISPATCH__MAX_TASKS_PER_WORKFLOW", "3"),
    ])
    .await;
    let s = unique("strict");
    let guard = Revoke(&app, vec![s.clone()]);
    let reg = register(&app, &s, "guest").await;
    let wf = app
        .create_workflow(json!({"name": "strict", "tasks": [{"name": "t", "server_id": s}]}))
        .await;
    let wf_id = wf.id();
    app.wait_task_state(&wf_id, "t", "queued").await;
    let task_id = app.task(&wf_id, "t").await.id;
    // The dispatcher's own user is no longer accepted for a registered server.
    let admin = app.fake_worker("unrelated").await;
    admin
        .send_raw(
            &RpcReply::final_result(task_msg_id(task_id, 1), json!({"exit_code": 0})).encode(),
        )
        .await;
    // Nor is the default exchange for a guest server.
    let conn = connect(&app.vhost.amqp_url()).await;
    try_publish(&conn, "", "reply_bora", BasicProperties::default())
        .await
        .unwrap();
    // An oversized reply from the right user is dropped unread.
    let mut real = FakeWorker::connect(reg["amqp_url"].as_str().unwrap(), &app.settings, &s).await;
    let msg = real.next_task().await;
    real.finish_with(
        &msg,
        TaskResult::from_streams(1, 0, "x".repeat(8192), String::new()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.task(&wf_id, "t").await.state, "queued");
    let (_, metrics) = app.get("/metrics").await;
    let text = metrics.as_str().unwrap_or_default().to_owned();
    for reason in ["wrong_user", "oversized"] {
        assert!(
            text.contains(&format!("reason=\"{reason}\"")),
            "{reason} not counted"
        );
    }
    real.finish(&msg, 0).await;
    app.wait_task_state(&wf_id, "t", "succeeded").await;
    // Tasks per workflow are limited.
    let r = app
        .post(
            &format!("/v1/workflows/{wf_id}/tasks"),
            json!({"server_id": s}),
        )
        .await;
    assert_eq!(r.0, StatusCode::CREATED);
    let r = app
        .post(
            "/v1/workflows",
            json!({"name": "big", "tasks": [
            {"server_id": s}, {"server_id": s}, {"server_id": s}, {"server_id": s}]}),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "too_many_tasks");
    admin.close().await;
    real.close().await;
    guard.run().await;
    app.stop().await;
}

#[tokio::test]
async fn an_empty_or_short_token_never_reaches_a_running_dispatcher() {
    // Through the environment: refused while loading.
    for value in ["", "a-long-enough-token-1,", "short"] {
        let err = bora::config::Settings::load_with_env(
            None,
            vec![("BORA__API__TOKENS".to_owned(), value.to_owned())],
        )
        .err()
        .unwrap_or_else(|| panic!("{value:?} accepted"));
        assert!(err.to_string().contains("api.tokens"), "{err}");
    }
    // Settings built in code are checked again at start: an empty token would
    // lift the loopback guard and match an empty presented token.
    let mut settings = bora::config::Settings::load_with_env(
        None,
        vec![("BORA__API__LISTEN".to_owned(), "0.0.0.0:0".to_owned())],
    )
    .unwrap();
    settings.api.tokens = vec![bora::config::Secret::new("")];
    let err = bora::serve::start(settings, tokio_util::sync::CancellationToken::new())
        .await
        .err()
        .expect("an empty token must refuse to start");
    assert!(err.to_string().contains("api.tokens"), "{err}");
}

async fn get_with_auth(app: &TestApp, authorization: &str) -> StatusCode {
    app.http
        .get(app.url("/v1/workflows"))
        .header("authorization", authorization)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_only_the_whole_token_matches() {
    let app = spawn_app_with(&[("BORA__API__TOKENS", TOKEN)]).await;
    // RFC 7235: the scheme is case-insensitive.
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let status = get_with_auth(&app, &format!("{scheme} {TOKEN}")).await;
        assert_eq!(status, StatusCode::OK, "{scheme}");
    }
    assert_eq!(
        get_with_auth(&app, &format!("Bearer   {TOKEN}  ")).await,
        StatusCode::OK
    );
    // A prefix, an extension, another scheme, nothing: refused.
    for refused in [
        format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
        format!("Bearer {TOKEN}x"),
        format!("Basic {TOKEN}"),
        format!("Bearer{TOKEN}"),
        TOKEN.to_owned(),
        "Bearer ".to_owned(),
        "Bearer".to_owned(),
    ] {
        assert_eq!(
            get_with_auth(&app, &refused).await,
            StatusCode::UNAUTHORIZED,
            "{refused:?}"
        );
    }
    app.stop().await;
}

/// `/metrics`, with the API token (needed once tokens are set, ignored
/// while none is).
async fn metrics_text(app: &TestApp) -> String {
    app.http
        .get(app.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn without_tokens_register_server_over_rpc_is_refused_unanswered() {
    let app = spawn_app().await;
    let server = unique("rpc-open");
    let guard = Revoke(&app, vec![server.clone()]);
    let mut caller = RpcCaller::connect(&app).await;
    // With no tokens the rest of the RPC API is open (and the start says so).
    caller.wait_ready(None).await;
    for token in [None, Some(TOKEN)] {
        let req = caller.call(
            "register_server",
            json!({"server_id": server, "kind": "oslo"}),
            token,
        );
        caller.publish(&req).await;
        caller
            .expect_silence("register_server without tokens")
            .await;
    }
    let r = app.get(&format!("/v1/servers/{server}")).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    assert!(
        metrics_text(&app)
            .await
            .contains("bora_rpc_rejected_total{reason=\"unauthorized\"}"),
        "the refusal is not counted"
    );
    guard.run().await;
    app.stop().await;
}

#[tokio::test]
async fn with_tokens_only_a_valid_one_is_answered_over_rpc() {
    let app = spawn_app_with(&[("BORA__API__TOKENS", TOKEN)]).await;
    let server = unique("rpc-auth");
    let guard = Revoke(&app, vec![server.clone()]);
    let mut caller = RpcCaller::connect(&app).await;
    caller.wait_ready(Some(TOKEN)).await;
    // No, an empty, a wrong, a truncated token: no answer at all.
    let short = &TOKEN[..TOKEN.len() - 1];
    for token in [None, Some(""), Some("wrong"), Some(short)] {
        for (method, args) in [
            ("get_workflow", json!({"workflow_id": "nope"})),
            (
                "register_server",
                json!({"server_id": server, "kind": "oslo"}),
            ),
        ] {
            let req = caller.call(method, args, token);
            caller.publish(&req).await;
            caller
                .expect_silence(&format!("{method} with token {token:?}"))
                .await;
        }
    }
    let r = app
        .http
        .get(app.url(&format!("/v1/servers/{server}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(
        metrics_text(&app)
            .await
            .contains("bora_rpc_rejected_total{reason=\"unauthorized\"}")
    );
    // A valid token registers.
    let req = caller.call(
        "register_server",
        json!({"server_id": server, "kind": "guest"}),
        Some(TOKEN),
    );
    caller.publish(&req).await;
    let reply = caller
        .reply(Duration::from_secs(10))
        .await
        .expect("registration answered");
    assert!(reply.failure.is_none(), "{reply:?}");
    assert_eq!(reply.result["username"], format!("bora-srv-{server}"));
    guard.run().await;
    app.stop().await;
}

#[tokio::test]
async fn no_call_makes_the_dispatcher_answer_into_its_own_queues() {
    let app = spawn_app_with(&[("BORA__API__TOKENS", TOKEN)]).await;
    let victim = unique("victim");
    let created = app
        .http
        .post(app.url("/v1/workflows"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "own-queues", "tasks": [{"name": "t", "server_id": victim}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let wf: Value = created.json().await.unwrap();
    let wf_id = wf["id"].as_str().unwrap().to_owned();
    let task_id: bora::domain::TaskId = wf["tasks"][0]["id"].as_str().unwrap().parse().unwrap();
    let task_state = || async {
        let r = app
            .http
            .get(app.url(&format!("/v1/workflows/{wf_id}/tasks/t")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let t: Value = r.json().await.unwrap();
        t["state"].as_str().unwrap().to_owned()
    };
    for _ in 0..200 {
        if task_state().await == "queued" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(task_state().await, "queued");
    let mut caller = RpcCaller::connect(&app).await;
    caller.wait_ready(Some(TOKEN)).await;
    let s = &app.settings;
    // A failure under the task's msg_id, published by the dispatcher's own
    // user into reply_bora, would end the task (quick-start mode trusts it).
    let msg_id = task_msg_id(task_id, 1);
    let failing = json!({"workflow_id": "nope"});
    let own = [
        s.amqp.reply_queue.clone(),
        s.amqp.task_queue(&victim),
        s.amqp.control_queue(&victim),
        s.rpc.topic.clone(),
        format!("{}.{}", s.rpc.topic, s.rpc_server_name()),
    ];
    for reply_q in &own {
        // Unauthorized (answered with Unauthorized before) and authorized.
        for token in [Some("wrong-token-0123456789"), Some(TOKEN)] {
            let req = RpcCaller::request("get_workflow", failing.clone(), token, &msg_id, reply_q);
            caller.publish(&req).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        task_state().await,
        "queued",
        "a forged failure ended the task"
    );
    assert_eq!(app.vhost.queue_depth(&s.amqp.task_queue(&victim)).await, 1);
    assert_eq!(
        app.vhost.queue_depth(&s.amqp.control_queue(&victim)).await,
        0
    );
    let text = metrics_text(&app).await;
    for reason in ["unauthorized", "reply_to_own_queue"] {
        assert!(
            text.contains(&format!("bora_rpc_rejected_total{{reason=\"{reason}\"}}")),
            "{reason} not counted"
        );
    }
    // The API still answers its callers, and the real worker ends the task.
    caller.wait_ready(Some(TOKEN)).await;
    let mut worker = app.fake_worker(&victim).await;
    let msg = worker.next_task().await;
    assert_eq!(msg.id, task_id);
    worker.finish(&msg, 0).await;
    for _ in 0..400 {
        if task_state().await == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(task_state().await, "succeeded");
    worker.close().await;
    app.stop().await;
}

/// Binds `queue` (declared first, as its user may) to the task exchange
/// with `key`; the broker's answer.
async fn try_bind(conn: &Connection, queue: &str, key: &str) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        queue.into(),
        "bora".into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

#[tokio::test]
async fn an_oslo_servers_credentials_serve_its_own_tasks_and_bind_no_one_elses() {
    let app = spawn_app().await;
    let (oslo, victim) = (unique("oslo"), unique("victim"));
    let guard = Revoke(&app, vec![oslo.clone(), victim.clone()]);
    let reg = register(&app, &oslo, "oslo").await;
    register(&app, &victim, "guest").await;
    let url = reg["amqp_url"].as_str().unwrap().to_owned();
    // A stock oslo.messaging RPC server on exactly the issued credentials
    // starts (declares the exchange, its queues, its bindings) and serves.
    let oslo_url = format!(
        "{}?amqp_durable_queues=true",
        url.replacen("amqp://", "rabbit://", 1)
    );
    let (_server, _) = crate::oslo::start_python(
        &[
            crate::oslo::script("oslo_worker.py").to_str().unwrap(),
            "--url",
            &oslo_url,
            "--server",
            &oslo,
        ],
        "READY",
    )
    .await;
    let wf = app
        .create_workflow(json!({"name": "trusted", "tasks": [
            {"name": "mine", "server_id": oslo, "config": "x"},
            {"name": "theirs", "server_id": victim, "config": "echo secret"}
        ]}))
        .await;
    let mine = app.wait_task_state(&wf.id(), "mine", "succeeded").await;
    assert_eq!(mine.result().stdout, format!("ran mine on {oslo}\n"));

    // The same credentials try to read other servers' tasks: a queue of the
    // fanout name its user may declare, bound to the task exchange with `#`
    // or with another server's key; the broker refuses both bindings.
    let conn = connect(&url).await;
    for key in [
        "#".to_owned(),
        format!("bora_tasks.{victim}"),
        "bora_tasks.*".into(),
    ] {
        let err = try_bind(&conn, &format!("bora_tasks_fanout_{}", unique("spy")), &key)
            .await
            .expect_err("an oslo server's user bound a queue to another server's tasks");
        refused(err, "ACCESS_REFUSED");
    }
    // An exchange-to-exchange binding is checked the same way.
    let ch = conn.create_channel().await.unwrap();
    let spy = format!("bora_tasks_fanout_{}", unique("x"));
    ch.exchange_declare(
        spy.as_str().into(),
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let err = ch
        .exchange_bind(
            spy.as_str().into(),
            "bora".into(),
            "#".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("an oslo server's user bound an exchange to every task");
    refused(err, "ACCESS_REFUSED");
    // Its own key still binds (what the oslo server itself did).
    try_bind(
        &conn,
        &format!("bora_tasks_fanout_{}", unique("own")),
        &format!("bora_tasks.{oslo}"),
    )
    .await
    .expect("its own routing key");
    // The other server's task is where it was, unread.
    let theirs = app.task(&wf.id(), "theirs").await;
    assert_eq!(theirs.state, "queued");
    assert_eq!(
        app.vhost.queue_depth(&format!("bora_tasks.{victim}")).await,
        1
    );
    guard.run().await;
    app.stop().await;
}
