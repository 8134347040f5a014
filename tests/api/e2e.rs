//! End to end: the dispatcher and real `bora worker` processes on the real
//! broker, with real scripts.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// A `bora worker` process, killed when dropped.
pub(crate) struct Worker {
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

pub(crate) async fn start_worker(app: &TestApp, server: &str, extra: &[(&str, &str)]) -> Worker {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_bora"));
    cmd.args(["worker", "--server-id", server])
        .env("BORA__AMQP__URL", app.vhost.amqp_url())
        .env("BORA__WORKER__STATE_DIR", dir.path().join("state"))
        .env("BORA__WORKER__HOOKS_DIR", dir.path().join("hooks"))
        .env("BORA__WORKER__HEARTBEAT_S", "1")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Worker {
        _child: cmd.spawn().unwrap(),
        _dir: dir,
    }
}

#[tokio::test]
async fn the_proposal_flow_runs_end_to_end_on_two_workers() {
    let app = spawn_app().await;
    let _x = start_worker(&app, "server-x", &[]).await;
    let _y = start_worker(&app, "server-y", &[]).await;
    // A on X; B on Y after A (using A's output); C on X after B; D on Y in parallel.
    let wf = app
        .create_workflow(json!({
            "name": "proposal",
            "tasks": [
                {"name": "A", "server_id": "server-x", "outputs": ["token"],
                 "config": "#!/bin/sh\necho A ran on $(hostname)\nprintf abc123 > \"$heat_outputs_path.token\"\n"},
                {"name": "B", "server_id": "server-y", "depends_on": ["A"],
                 "inputs": {"GREETING": "hello", "COUNT": 3},
                 "outputs": ["said"],
                 "config": "#!/bin/sh\nprintf \"$GREETING x$COUNT\" > \"$heat_outputs_path.said\"\n"},
                {"name": "C", "server_id": "server-x", "depends_on": ["B"], "config": "echo C"},
                {"name": "D", "server_id": "server-y", "config": "sleep 0.2; echo D"}
            ]
        }))
        .await;
    let id = wf.id();
    let wf = app.wait_workflow_state(&id, "succeeded").await;
    assert_eq!(wf.task_counts.succeeded, 4);
    let a = app.task(&id, "A").await;
    let b = app.task(&id, "B").await;
    let c = app.task(&id, "C").await;
    assert_eq!(a.result().outputs.get("token"), Some(&json!("abc123")));
    assert!(a.result().stdout.starts_with("A ran on"), "{a:?}");
    assert_eq!(b.result().outputs.get("said"), Some(&json!("hello x3")));
    assert_eq!(c.result().stdout, "C\n");
    // Order: each dependent started only after its dependency finished.
    assert!(b.started_at() >= a.finished_at());
    assert!(c.started_at() >= b.finished_at());
    // Workers heartbeat: the servers are online.
    assert!(c.server_online, "{c:?}");
    let (_, heat) = app
        .get(&format!("/v1/workflows/{id}/tasks/B?format=heat"))
        .await;
    assert_eq!(heat["deploy_status_code"], 0);
    assert_eq!(heat["said"], "hello x3");
    app.stop().await;
}

#[tokio::test]
async fn failures_timeouts_and_cancels_through_the_api() {
    let app = spawn_app().await;
    let _w = start_worker(&app, "s", &[("BORA__WORKER__CONCURRENCY", "1")]).await;
    let wf = app
        .create_workflow(json!({
            "name": "ends",
            "tasks": [
                {"name": "fails", "server_id": "s", "config": "echo oops >&2; exit 3"},
                {"name": "slow", "server_id": "s", "config": "sleep 30", "timeout_s": 1,
                 "depends_on": ["fails"], "on_dependency_failure": "run"},
                {"name": "long", "server_id": "s", "config": "sleep 30",
                 "depends_on": ["slow"], "on_dependency_failure": "run"},
                {"name": "after", "server_id": "s", "config": "echo after",
                 "depends_on": ["long"], "on_dependency_failure": "run"}
            ]
        }))
        .await;
    let id = wf.id();
    let fails = app.wait_task_state(&id, "fails", "failed").await;
    assert_eq!(fails.result().exit_code, 3);
    assert_eq!(fails.result().stderr, "oops\n");
    assert_eq!(fails.result().error, None);
    let slow = app.wait_task_state(&id, "slow", "timed_out").await;
    assert!(slow.result().timed_out, "{slow:?}");
    // Cancel the running `sleep 30`: the one slot frees at once for `after`.
    app.wait_task_state(&id, "long", "running").await;
    let (s, _) = app.delete(&format!("/v1/workflows/{id}/tasks/long")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let after = app.wait_task_state(&id, "after", "succeeded").await;
    let long = app.task(&id, "long").await;
    assert_eq!(long.state, "cancelled");
    let waited = after.finished_at() - long.finished_at();
    println!(
        "cancel to next task finished: {} ms",
        waited.num_milliseconds()
    );
    assert!(
        waited < chrono::Duration::seconds(20),
        "the cancelled sleep kept its slot"
    );
    let wf = app.wait_workflow_state(&id, "failed").await;
    assert_eq!(wf.task_counts.timed_out, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_registered_guest_worker_runs_with_its_own_credentials() {
    let app = spawn_app_with(&[("BORA__DISPATCH__REQUIRE_REGISTRATION", "true")]).await;
    let server = format!("guest-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (s, reg) = app.post("/v1/servers", json!({"server_id": server})).await;
    assert_eq!(s, StatusCode::CREATED, "{reg}");
    let url = reg["amqp_url"].as_str().unwrap().to_owned();
    let _w = start_worker(&app, &server, &[("BORA__WORKER__AMQP_URL", &url)]).await;
    let wf = app
        .create_workflow(json!({"name": "registered", "tasks": [
            {"name": "t", "server_id": server, "config": "echo from a least-privilege worker"}
        ]}))
        .await;
    let id = wf.id();
    let t = app.wait_task_state(&id, "t", "succeeded").await;
    assert_eq!(t.result().stdout, "from a least-privilege worker\n");
    // Its idle heartbeats count, so it shows online.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, one) = app.get(&format!("/v1/servers/{server}")).await;
    assert_eq!(one["online"], true, "{one}");
    let (s, body) = app.delete(&format!("/v1/servers/{server}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    app.stop().await;
}
