//! Interop with the real oslo.messaging (18.3.1, from PyPI, installed into
//! `.ci/cache/venv` by `.ci/setup`): an oslo RPC server as a worker in a chain
//! with a bora worker, an oslo RPC client driving bora's RPC API, and an oslo
//! notification listener. The Python side is in `tests/oslo/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::*;

pub(crate) fn python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/cache/venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run .ci/setup (it installs oslo.messaging from PyPI)",
        venv.display()
    );
    venv
}

pub(crate) fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/oslo")
        .join(name)
}

/// The vhost's URL as oslo wants it: scheme rabbit, durable queues.
fn oslo_url(app: &TestApp) -> String {
    let amqp = app.vhost.amqp_url();
    format!(
        "{}?amqp_durable_queues=true",
        amqp.replacen("amqp://", "rabbit://", 1)
    )
}

/// Starts a Python script and waits until it prints a line containing `ready`.
pub(crate) async fn start_python(
    args: &[&str],
    ready: &str,
) -> (
    Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    let mut child = Command::new(python())
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("python side did not start within 60 s")
        .unwrap()
        .unwrap_or_default();
    assert!(line.contains(ready), "unexpected first line: {line}");
    (child, lines)
}

fn start_bora_worker(app: &TestApp, server: &str, dir: &tempfile::TempDir) -> Child {
    Command::new(env!("CARGO_BIN_EXE_bora"))
        .args(["worker", "--server-id", server])
        .env("BORA__AMQP__URL", app.vhost.amqp_url())
        .env("BORA__WORKER__STATE_DIR", dir.path().join("state"))
        .env("BORA__WORKER__HOOKS_DIR", dir.path().join("hooks"))
        .env("BORA__WORKER__HEARTBEAT_S", "1")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn an_oslo_rpc_server_works_as_a_worker_in_a_chain_with_a_bora_worker() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let url = oslo_url(&app);
    let (_oslo, _) = start_python(
        &[
            script("oslo_worker.py").to_str().unwrap(),
            "--url",
            &url,
            "--server",
            "oslo-1",
        ],
        "READY",
    )
    .await;
    let _bora = start_bora_worker(&app, "bora-1", &dir);
    let wf = app
        .create_workflow(json!({"name": "interop", "tasks": [
            {"name": "a", "server_id": "bora-1", "config": "echo a"},
            {"name": "b", "server_id": "oslo-1", "depends_on": ["a"], "inputs": {"MESSAGE": "hi"}, "outputs": ["echo"]},
            {"name": "c", "server_id": "bora-1", "depends_on": ["b"], "config": "echo c"},
            {"name": "boom", "server_id": "oslo-1", "config": "raise"}
        ]}))
        .await;
    let id = wf.id();
    let wf = app.wait_workflow_state(&id, "failed").await;
    assert_eq!(wf.task_counts.succeeded, 3, "{wf:?}");
    let b = app.task(&id, "b").await;
    assert_eq!(b.state, "succeeded");
    assert_eq!(b.result().stdout, "ran b on oslo-1\n");
    assert_eq!(b.result().outputs.get("echo"), Some(&json!("hi")));
    let c = app.task(&id, "c").await;
    assert!(b.started_at() >= app.task(&id, "a").await.finished_at());
    assert!(c.started_at() >= b.finished_at());
    // An exception in the oslo endpoint is a failed task naming it.
    let boom = app.task(&id, "boom").await;
    assert_eq!(boom.state, "failed");
    assert_eq!(
        boom.result().error.as_deref(),
        Some("ValueError: boom from oslo")
    );
    app.stop().await;
}

#[tokio::test]
async fn an_oslo_rpc_client_drives_bora_through_bora_api() {
    let app = spawn_app_with(&[("BORA__RPC__SERVER", "dispatcher-1")]).await;
    let dir = tempfile::tempdir().unwrap();
    let _bora = start_bora_worker(&app, "oslo-client-x", &dir);
    let url = oslo_url(&app);
    for server in [None, Some("dispatcher-1")] {
        let mut args = vec![
            script("oslo_client.py").to_str().unwrap().to_owned(),
            "--url".into(),
            url.clone(),
        ];
        if let Some(s) = server {
            args.extend(["--server".into(), s.into()]);
        }
        let out = Command::new(python()).args(&args).output().await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "oslo client failed (server {server:?}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        // The messages travel intact.
        assert!(summary["not_found"].as_str().unwrap().contains("not found"));
        assert!(summary["invalid"].as_str().unwrap().contains("server_id"));
        let wf = app.workflow(summary["workflow"].as_str().unwrap()).await;
        assert_eq!(wf.state, "succeeded");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_oslo_notification_listener_follows_task_and_workflow_ends() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let wf = app
        .create_workflow(json!({"name": "listened", "tasks": [
            {"name": "one", "server_id": "n-1", "config": "echo one"},
            {"name": "two", "server_id": "n-1", "config": "exit 4", "depends_on": ["one"]}
        ]}))
        .await;
    let id = wf.id();
    let url = oslo_url(&app);
    let (mut listener, mut lines) = start_python(
        &[
            script("oslo_listener.py").to_str().unwrap(),
            "--url",
            &url,
            "--workflow",
            &id,
        ],
        "ready",
    )
    .await;
    let _bora = start_bora_worker(&app, "n-1", &dir);
    let mut events = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("listener went quiet")
    {
        events.push(
            serde_json::from_str::<Value>(&line)
                .unwrap_or_else(|e| panic!("listener printed {line:?}: {e}")),
        );
    }
    assert!(
        listener.wait().await.unwrap().success(),
        "listener timed out: {events:?}"
    );
    let find = |event: &str, name: &str| {
        events
            .iter()
            .find(|e| e["event_type"] == event && (name.is_empty() || e["payload"]["name"] == name))
            .unwrap_or_else(|| panic!("{event} {name} not received: {events:?}"))
    };
    let one = find("bora.task.end", "one");
    assert_eq!(one["priority"], "info");
    assert_eq!(one["payload"]["state"], "succeeded");
    assert!(one["publisher_id"].as_str().unwrap().starts_with("bora."));
    let two = find("bora.task.end", "two");
    assert_eq!(two["priority"], "error");
    assert_eq!(two["payload"]["result"]["exit_code"], 4);
    let end = find("bora.workflow.end", "");
    assert_eq!(end["priority"], "error");
    assert_eq!(end["payload"]["state"], "failed");
    app.stop().await;
}

/// Operating a run (SPEC 7.3) through the real oslo.messaging client:
/// `pause_workflow` and `resume_workflow` around an approval gate approved
/// with `approve_task` while paused, `reject_task`, `list_attempts`, and
/// each 409 as a `RemoteError` of class `Conflict` with the message (the
/// Python side asserts each call; this checks its summary and the store).
#[tokio::test]
async fn an_oslo_rpc_client_pauses_resumes_and_approves() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let _bora = start_bora_worker(&app, "oslo-operate", &dir);
    let out = Command::new(python())
        .args([
            script("oslo_client.py").to_str().unwrap(),
            "--url",
            &oslo_url(&app),
            "--operate",
            "oslo-operate",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "oslo client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["paused"], true, "{summary}");
    assert_eq!(summary["resumed"], false, "{summary}");
    assert_eq!(summary["held"]["state"], "waiting", "{summary}");
    assert_eq!(
        summary["held"]["blocked_by"],
        json!(["workflow paused"]),
        "{summary}"
    );
    let conflicts = &summary["conflicts"];
    let id = summary["workflow"].as_str().unwrap();
    assert_eq!(
        conflicts["paused_twice"],
        format!("workflow {id} is paused already")
    );
    assert_eq!(
        conflicts["not_paused"],
        format!("workflow {id} is not paused")
    );
    assert!(
        conflicts["not_pending"]
            .as_str()
            .unwrap()
            .contains("does not wait for a decision"),
        "{summary}"
    );

    // What the calls did, as REST sees it.
    let wf = app.workflow(id).await;
    assert_eq!(wf.state, "succeeded", "{wf:?}");
    assert!(!wf.paused, "{wf:?}");
    let gate = app.task(id, "gate").await;
    let decision = gate.result().decision.clone().expect("a decision");
    assert_eq!(decision.decision, "approved");
    assert_eq!(decision.comment.as_deref(), Some("approved from heat"));
    assert!(app.task(id, "after").await.started_at() >= gate.finished_at());
    let (status, events) = app.get(&format!("/v1/workflows/{id}/events")).await;
    assert_eq!(status, 200);
    let events = events.as_str().unwrap_or_default();
    let paused = events.find("\"state\":\"paused\"").expect("a paused event");
    let resumed = events
        .find("\"state\":\"resumed\"")
        .expect("a resumed event");
    assert!(paused < resumed, "{events}");
    let rejected = app
        .workflow(summary["rejected_workflow"].as_str().unwrap())
        .await;
    assert_eq!(rejected.state, "failed", "{rejected:?}");
    let (status, attempts) = app
        .get(&format!(
            "/v1/workflows/{}/tasks/gate/attempts",
            summary["rejected_workflow"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200);
    let attempts: AttemptsOut = parse("attempts", attempts);
    assert_eq!(attempts.attempts.len(), 1, "{attempts:?}");
    let reject = attempts.attempts[0]
        .result
        .decision
        .clone()
        .expect("a decision");
    assert_eq!(
        (reject.decision.as_str(), reject.comment.as_deref()),
        ("rejected", Some("not today"))
    );
    app.stop().await;
}
