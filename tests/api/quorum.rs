//! `amqp.queue_type = "quorum"` on the real broker: the queues bora declares
//! really are quorum queues with the delivery limit, a real `bora worker`
//! runs a workflow on them, the limit stops a message requeued forever (into
//! a dead-letter queue set by policy, as the README shows), and
//! a queue of the other type is reported with its fix. Quorum queues work
//! on a single RabbitMQ node, so the test broker is enough.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::helpers::mgmt::mgmt_get;
use crate::helpers::*;

const QUORUM: [(&str, &str); 1] = [("BORA__AMQP__QUEUE_TYPE", "quorum")];

/// A `bora worker` process with its stderr piped, killed when dropped.
struct Worker {
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

fn start_worker(app: &TestApp, server: &str, extra: &[(&str, &str)]) -> Worker {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_bora"));
    cmd.args(["worker", "--server-id", server])
        .env("BORA__AMQP__URL", app.vhost.amqp_url())
        .env("BORA__WORKER__STATE_DIR", dir.path().join("state"))
        .env("BORA__WORKER__HOOKS_DIR", dir.path().join("hooks"))
        .env("BORA__WORKER__HEARTBEAT_S", "1")
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Worker {
        child: cmd.spawn().unwrap(),
        _dir: dir,
    }
}

impl Worker {
    /// Reads the worker's log until a line contains every one of `needles`;
    /// that line. Panics after `within`, with what was logged.
    async fn log_line_with(&mut self, needles: &[&str], within: Duration) -> String {
        let stderr = self.child.stderr.as_mut().unwrap();
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    if needles.iter().all(|n| line.contains(n)) {
                        return line;
                    }
                    seen.push(line);
                }
                Ok(_) => panic!("worker log ended without {needles:?}; it said:\n{seen:#?}"),
                Err(_) => panic!("no log line with {needles:?} within {within:?}; got:\n{seen:#?}"),
            }
        }
    }
}

/// The broker's own record of a queue: its type and declare arguments.
async fn queue_info(app: &TestApp, queue: &str) -> Value {
    mgmt_get(&format!("queues/{}/{queue}", app.vhost.name)).await
}

#[tokio::test]
async fn a_workflow_runs_end_to_end_on_quorum_queues() {
    let app = spawn_app_with(&QUORUM).await;
    let _w = start_worker(&app, "q-server", &QUORUM);
    let wf = app
        .create_workflow(json!({
            "name": "quorum",
            "tasks": [
                {"name": "first", "server_id": "q-server", "outputs": ["v"],
                 "config": "#!/bin/sh\nprintf 42 > \"$heat_outputs_path.v\"\n"},
                {"name": "second", "server_id": "q-server", "depends_on": ["first"],
                 "config": "echo second"}
            ]
        }))
        .await;
    let id = wf.id();
    let wf = app.wait_workflow_state(&id, "succeeded").await;
    assert_eq!(wf.task_counts.succeeded, 2);
    let first = app.task(&id, "first").await;
    let second = app.task(&id, "second").await;
    assert_eq!(first.result().outputs.get("v"), Some(&json!("42")));
    assert_eq!(second.result().stdout, "second\n");
    assert!(
        second.started_at() >= first.finished_at(),
        "the dependent ran before its dependency"
    );

    // The queues the run went through, as the broker has them.
    let amqp = &app.settings.amqp;
    for queue in [
        amqp.task_queue("q-server"),
        amqp.control_queue("q-server"),
        amqp.reply_queue.clone(),
    ] {
        let q = queue_info(&app, &queue).await;
        assert_eq!(q["type"], "quorum", "{queue}: {q}");
        assert_eq!(q["durable"], true, "{queue}: {q}");
        assert_eq!(q["arguments"]["x-queue-type"], "quorum", "{queue}: {q}");
        assert_eq!(q["arguments"]["x-delivery-limit"], 20, "{queue}: {q}");
    }
    // And every other queue bora declared in this vhost (the oslo API
    // queues, notifications): none was left classic.
    let all = mgmt_get(&format!("queues/{}", app.vhost.name)).await;
    let all = all.as_array().unwrap();
    assert!(all.len() >= 3, "{all:?}");
    for q in all {
        assert_eq!(q["type"], "quorum", "{}", q["name"]);
    }
    app.stop().await;
}

#[tokio::test]
async fn the_delivery_limit_stops_a_message_requeued_forever() {
    let mut settings = QUORUM.to_vec();
    settings.extend([
        ("BORA__AMQP__DELIVERY_LIMIT", "3"),
        ("BORA__DISPATCH__HEARTBEAT_TIMEOUT_S", "1"),
    ]);
    let app = spawn_app_with(&settings).await;
    // The README's recipe for keeping what the limit drops: a dead-letter
    // exchange and queue, and a policy (so no declare argument changes).
    let vhost = &app.vhost.name;
    mgmt_put(
        &format!("exchanges/{vhost}/bora.dlx"),
        Some(json!({"type": "fanout", "durable": true})),
    )
    .await;
    mgmt_put(
        &format!("queues/{vhost}/bora_dead"),
        Some(json!({"durable": true})),
    )
    .await;
    let bound = reqwest::Client::new()
        .post(format!(
            "{MGMT}/api/bindings/{vhost}/e/bora.dlx/q/bora_dead"
        ))
        .basic_auth("guest", Some("guest"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(bound.status().is_success(), "{}", bound.status());
    mgmt_put(
        &format!("policies/{vhost}/bora-dead-letter"),
        Some(json!({
            "pattern": "^(bora_tasks\\.|bora_control\\.|reply_bora$)",
            "definition": {"dead-letter-exchange": "bora.dlx"},
            "apply-to": "queues"
        })),
    )
    .await;
    let wf = app
        .create_workflow(json!({"name": "poison", "tasks": [
            {"name": "p", "server_id": "poisoned", "timeout_s": 1}
        ]}))
        .await;
    let id = wf.id();
    app.wait_task_state(&id, "p", "queued").await;
    let queue = app.settings.amqp.task_queue("poisoned");
    assert_eq!(
        queue_info(&app, &queue).await["arguments"]["x-delivery-limit"],
        3
    );

    // A consumer that can never handle the task: it nacks with requeue,
    // again and again, as a worker crashing before its ack would return it.
    let conn = lapin::Connection::connect(&app.vhost.amqp_url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "poison-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut deliveries = 0;
    let mut last_count = None;
    // Stop when nothing more comes for 2 s (or after far too many).
    while deliveries < 50 {
        let next = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await;
        let Ok(Some(Ok(d))) = next else { break };
        deliveries += 1;
        last_count = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count").cloned());
        d.nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        })
        .await
        .unwrap();
    }
    // The first delivery and three redeliveries; then RabbitMQ drops it,
    // here to the dead-letter exchange of the policy.
    assert_eq!(deliveries, 4, "deliveries of the poison message");
    assert!(
        matches!(
            last_count,
            Some(AMQPValue::LongLongInt(3) | AMQPValue::LongInt(3))
        ),
        "x-delivery-count of the last delivery: {last_count:?}"
    );
    let _ = conn.close(200, "done".into()).await;
    assert_eq!(app.vhost.queue_depth(&queue).await, 0);
    let mut dead = 0;
    for _ in 0..50 {
        dead = app.vhost.queue_depth("bora_dead").await;
        if dead > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead, 1, "the dropped task in bora_dead");

    // The dispatcher never hears of it again: its deadline ends the attempt.
    let t = app.wait_task_state(&id, "p", "timed_out").await;
    assert_eq!(t.attempt, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_worker_reports_a_queue_of_the_other_type_and_still_runs_tasks() {
    // The dispatcher declares classic queues; the worker is told quorum.
    let app = spawn_app().await;
    let wf = app
        .create_workflow(json!({"name": "mismatch", "tasks": [
            {"name": "t", "server_id": "mixed", "config": "echo ran"}
        ]}))
        .await;
    let id = wf.id();
    app.wait_task_state(&id, "t", "queued").await;
    let queue = app.settings.amqp.task_queue("mixed");
    assert_eq!(queue_info(&app, &queue).await["type"], "classic");

    let mut w = start_worker(&app, "mixed", &QUORUM);
    let line = w
        .log_line_with(&["queue type mismatch", &queue], Duration::from_secs(20))
        .await;
    // The error says which setting and what to do.
    for needle in [
        "ERROR",
        "amqp.queue_type = \"quorum\"",
        "x-queue-type",
        "delete the queue",
    ] {
        assert!(line.contains(needle), "{needle:?} not in {line}");
    }
    // A stale setting never stops work: the existing queue is consumed.
    let t = app.wait_task_state(&id, "t", "succeeded").await;
    assert_eq!(t.result().stdout, "ran\n");
    app.stop().await;
}

/// Settings for a dispatcher on `vhost` with extra `BORA__...` values.
fn settings_on(vhost: &Vhost, pairs: &[(&str, &str)]) -> bora::config::Settings {
    let mut env = vec![("BORA__AMQP__URL".to_owned(), vhost.amqp_url())];
    env.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    bora::config::Settings::load_with_env(None, env).unwrap()
}

fn broker_with(settings: &bora::config::Settings) -> bora::broker::Broker {
    bora::broker::Broker::new(&settings.amqp.url, &settings.amqp, "test").unwrap()
}

#[tokio::test]
async fn the_dispatcher_names_a_queue_of_the_other_type_and_the_fix() {
    let vhost = Vhost::create().await;
    // An earlier classic deployment made the queues ...
    let classic = settings_on(&vhost, &[]);
    broker_with(&classic)
        .declare_server_queues("old")
        .await
        .unwrap();
    // ... and the dispatcher is now configured for quorum queues.
    let quorum = settings_on(&vhost, &QUORUM);
    let broker = broker_with(&quorum);
    let err = broker.declare_topology().await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, bora::broker::BrokerError::Inequivalent { queue, .. } if queue == "reply_bora"),
        "{msg}"
    );
    for needle in [
        "\"reply_bora\"",
        "amqp.queue_type = \"quorum\"",
        "amqp.delivery_limit = 20",
        "inequivalent arg 'x-queue-type'",
        "delete the queue",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
    // With the reply queue gone (deleted as the message says), the next
    // queue of the old type is named the same way.
    let r = reqwest::Client::new()
        .delete(format!("{MGMT}/api/queues/{}/reply_bora", vhost.name))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let err = broker.declare_server_queues("old").await.unwrap_err();
    assert!(err.to_string().contains("\"bora_tasks.old\""), "{err}");

    // The same type with another delivery limit is just as inequivalent.
    let fresh = Vhost::create().await;
    broker_with(&settings_on(&fresh, &QUORUM))
        .declare_topology()
        .await
        .unwrap();
    let mut other_limit = QUORUM.to_vec();
    other_limit.push(("BORA__AMQP__DELIVERY_LIMIT", "5"));
    let err = broker_with(&settings_on(&fresh, &other_limit))
        .declare_topology()
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("x-delivery-limit"), "{msg}");
    assert!(msg.contains("amqp.delivery_limit = 5"), "{msg}");
}

#[tokio::test]
async fn a_queue_of_the_other_type_holds_back_only_its_own_server() {
    let app = spawn_app_with(&QUORUM).await;
    // A server whose task queue an earlier classic deployment made.
    let conn = lapin::Connection::connect(&app.vhost.amqp_url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        app.settings.amqp.task_queue("old").as_str().into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let _ = conn.close(200, "bye".into()).await;
    let wf = app
        .create_workflow(json!({"name": "mixed", "tasks": [
            {"name": "on-old", "server_id": "old", "config": "echo old"},
            {"name": "on-new", "server_id": "new", "config": "echo new"}
        ]}))
        .await;
    let id = wf.id();
    let _w = start_worker(&app, "new", &QUORUM);
    // The refused queue does not stop the relay: the other server's task runs.
    let t = app.wait_task_state(&id, "on-new", "succeeded").await;
    assert_eq!(t.result().stdout, "new\n");
    let old = app.task(&id, "on-old").await;
    assert_eq!(old.state, "waiting", "{old:?}");
    assert_eq!(
        app.vhost
            .queue_depth(&app.settings.amqp.task_queue("old"))
            .await,
        0,
        "nothing was published to the queue of the other type"
    );
    app.stop().await;
}
