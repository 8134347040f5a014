//! Operating a run (SPEC 7.3) with real `bora worker` processes: the retry
//! policy (backoff, exit codes), rerun of what failed, pause and resume,
//! approval gates, every attempt's result, and the 409s of actions that do
//! not fit the state.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::e2e::start_worker;
use crate::helpers::*;

/// The attempts of a task, oldest first.
async fn attempts(app: &TestApp, wf: &str, task: &str) -> AttemptsOut {
    expect_body(
        app.get(&format!("/v1/workflows/{wf}/tasks/{task}/attempts"))
            .await,
        StatusCode::OK,
        "attempts",
    )
}

async fn post_task(app: &TestApp, wf: &str, task: &str, verb: &str, body: Value) -> TaskOut {
    expect_body(
        app.post(&format!("/v1/workflows/{wf}/tasks/{task}/{verb}"), body)
            .await,
        StatusCode::OK,
        verb,
    )
}

async fn post_workflow(app: &TestApp, wf: &str, verb: &str) -> WorkflowOut {
    expect_body(
        app.post(&format!("/v1/workflows/{wf}/{verb}"), json!({}))
            .await,
        StatusCode::OK,
        verb,
    )
}

#[tokio::test]
async fn retries_wait_longer_each_time_with_a_backoff() {
    let app = spawn_app().await;
    let _w = start_worker(&app, "s", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // Fails until its third attempt; notes when each attempt started.
    let script = format!(
        "date +%s.%N >> {d}/starts\nn=$(wc -l < {d}/starts)\necho attempt $n\n[ $n -ge 3 ]\n"
    );
    let wf = app
        .create_workflow(json!({"name": "backoff", "tasks": [{
            "name": "flaky", "server_id": "s", "config": script,
            "retries": 2, "retry_delay_s": 1, "retry_backoff": 2.0
        }]}))
        .await;
    let id = wf.id();
    // While a retry waits for its delay, the task says when it is due.
    let deadline = Instant::now() + Duration::from_secs(30);
    let waiting = loop {
        let t = app.task(&id, "flaky").await;
        if t.state == "waiting" && t.next_attempt_at.is_some() {
            break t;
        }
        assert!(
            Instant::now() < deadline && t.state != "succeeded",
            "never saw a retry waiting for its delay: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        waiting
            .blocked_by
            .iter()
            .any(|b| b.starts_with("retry at ")),
        "{waiting:?}"
    );
    let t = app.wait_task_state(&id, "flaky", "succeeded").await;
    assert_eq!(t.attempt, 3);
    assert_eq!(t.next_attempt_at, None);
    let starts: Vec<f64> = std::fs::read_to_string(dir.path().join("starts"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(starts.len(), 3, "{starts:?}");
    let (first_gap, second_gap) = (starts[1] - starts[0], starts[2] - starts[1]);
    assert!(
        first_gap > 0.8 && second_gap > first_gap,
        "the second delay (×2) is longer than the first: {first_gap:.2} s, {second_gap:.2} s"
    );
    // Every attempt's result stays readable, in order.
    let a = attempts(&app, &id, "flaky").await;
    assert_eq!(a.current_attempt, 3);
    let seen: Vec<(i64, &str, &str)> = a
        .attempts
        .iter()
        .map(|a| (a.attempt, a.state.as_str(), a.result.stdout.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (1, "failed", "attempt 1\n"),
            (2, "failed", "attempt 2\n"),
            (3, "succeeded", "attempt 3\n")
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn only_the_listed_exit_codes_are_retried() {
    let app = spawn_app().await;
    let _w = start_worker(&app, "s", &[]).await;
    let wf = app
        .create_workflow(json!({"name": "codes", "tasks": [
            {"name": "fatal", "server_id": "s", "config": "exit 3",
             "retries": 2, "retry_exit_codes": [75]},
            {"name": "transient", "server_id": "s", "config": "exit 75",
             "retries": 1, "retry_exit_codes": [75]}
        ]}))
        .await;
    let id = wf.id();
    app.wait_workflow_state(&id, "failed").await;
    let fatal = app.task(&id, "fatal").await;
    assert_eq!((fatal.attempt, fatal.result().exit_code), (1, 3));
    assert_eq!(fatal.retry_exit_codes, Some(vec![75]));
    let transient = app.task(&id, "transient").await;
    assert_eq!(
        (transient.attempt, transient.result().exit_code),
        (2, 75),
        "a listed code is retried"
    );
    assert_eq!(attempts(&app, &id, "fatal").await.attempts.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_failed_chain_runs_again_once_its_cause_is_fixed() {
    let app = spawn_app().await;
    let _w = start_worker(&app, "s", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let fixed = dir.path().join("fixed");
    let wf = app
        .create_workflow(json!({"name": "mirror", "tasks": [
            {"name": "fetch", "server_id": "s", "config": "echo fetched"},
            {"name": "install", "server_id": "s", "depends_on": ["fetch"],
             "config": format!("test -f {}", fixed.display())},
            {"name": "configure", "server_id": "s", "depends_on": ["install"], "config": "echo ok"}
        ]}))
        .await;
    let id = wf.id();
    app.wait_workflow_state(&id, "failed").await;
    assert_eq!(app.task(&id, "configure").await.state, "skipped");
    // Rerun before the fix: the task fails again, its dependent is skipped again.
    let t = post_task(&app, &id, "install", "rerun", json!({})).await;
    assert!(
        matches!(
            t.state.as_str(),
            "waiting" | "queued" | "running" | "failed"
        ),
        "{t:?}"
    );
    let wf = app.wait_workflow_state(&id, "failed").await;
    assert_eq!(wf.task_counts.skipped, 1);
    assert_eq!(app.task(&id, "install").await.attempt, 2);
    // Fixed: the whole workflow reruns what did not succeed.
    std::fs::write(&fixed, "").unwrap();
    let wf = post_workflow(&app, &id, "rerun").await;
    assert_eq!(wf.state, "running");
    let wf = app.wait_workflow_state(&id, "succeeded").await;
    assert_eq!(wf.task_counts.succeeded, 3);
    assert_eq!(
        app.task(&id, "fetch").await.attempt,
        1,
        "what succeeded stays"
    );
    let a = attempts(&app, &id, "install").await;
    let states: Vec<(i64, &str)> = a
        .attempts
        .iter()
        .map(|a| (a.attempt, a.state.as_str()))
        .collect();
    assert_eq!(states, [(1, "failed"), (2, "failed"), (3, "succeeded")]);
    assert_eq!(app.task(&id, "configure").await.result().stdout, "ok\n");
    // The event log records each rerun.
    // (The workflow has ended: its stream sends everything, then `end`.)
    let stream = app.get_text(&format!("/v1/workflows/{id}/events")).await;
    let events: Vec<Value> = stream
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    let reruns = events
        .iter()
        .filter(|e| e["kind"] == "workflow" && e["state"] == "rerun")
        .count();
    assert_eq!(reruns, 2, "{stream}");
    let install_states: Vec<&str> = events
        .iter()
        .filter(|e| e["task_name"] == "install")
        .filter_map(|e| e["state"].as_str())
        .collect();
    assert_eq!(
        install_states.iter().filter(|s| **s == "failed").count(),
        2,
        "{install_states:?}"
    );
    // Nothing is left to rerun.
    assert_error(
        &app.post(&format!("/v1/workflows/{id}/rerun"), json!({}))
            .await,
        StatusCode::CONFLICT,
        "nothing_to_rerun",
    );
    assert_error(
        &app.post(
            &format!("/v1/workflows/{id}/tasks/install/rerun"),
            json!({}),
        )
        .await,
        StatusCode::CONFLICT,
        "task_succeeded",
    );
    app.stop().await;
}

#[tokio::test]
async fn a_paused_workflow_publishes_nothing_until_resumed() {
    let app = spawn_app().await;
    let _w = start_worker(&app, "s", &[]).await;
    let wf = app
        .create_workflow(json!({"name": "paused", "tasks": [
            {"name": "a", "server_id": "s", "config": "sleep 1"},
            {"name": "b", "server_id": "s", "depends_on": ["a"], "config": "echo b"},
            {"name": "c", "server_id": "s", "depends_on": ["b"], "config": "echo c"}
        ]}))
        .await;
    let id = wf.id();
    app.wait_task_state(&id, "a", "running").await;
    let wf = post_workflow(&app, &id, "pause").await;
    assert!(wf.paused);
    assert_error(
        &app.post(&format!("/v1/workflows/{id}/pause"), json!({}))
            .await,
        StatusCode::CONFLICT,
        "workflow_paused",
    );
    // What was running goes on; what becomes ready waits, saying why.
    app.wait_task_state(&id, "a", "succeeded").await;
    let queue = app.settings.amqp.task_queue("s");
    for _ in 0..20 {
        let b = app.task(&id, "b").await;
        assert_eq!((b.state.as_str(), b.attempt), ("waiting", 0), "{b:?}");
        assert!(
            b.blocked_by.contains(&"workflow paused".to_owned()),
            "{b:?}"
        );
        assert_eq!(app.vhost.queue_depth(&queue).await, 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wf = app.workflow(&id).await;
    assert_eq!((wf.state.as_str(), wf.paused), ("running", true));
    let wf = post_workflow(&app, &id, "resume").await;
    assert!(!wf.paused);
    let wf = app.wait_workflow_state(&id, "succeeded").await;
    assert_eq!(wf.task_counts.succeeded, 3);
    assert_error(
        &app.post(&format!("/v1/workflows/{id}/resume"), json!({}))
            .await,
        StatusCode::CONFLICT,
        "workflow_not_paused",
    );
    app.stop().await;
}

#[tokio::test]
async fn a_retry_due_while_paused_waits_for_the_resume() {
    let app = spawn_app().await;
    let _w = start_worker(&app, "s", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let wf = app
        .create_workflow(json!({"name": "held", "tasks": [{
            "name": "t", "server_id": "s", "retries": 1, "retry_delay_s": 1,
            "config": format!("echo x >> {d}/runs\n[ $(wc -l < {d}/runs) -ge 2 ]")
        }]}))
        .await;
    let id = wf.id();
    // The first attempt failed; its retry waits for its delay. Pausing
    // takes the retry back.
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.task(&id, "t").await.next_attempt_at.is_none() {
        assert!(Instant::now() < deadline, "no retry was scheduled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    post_workflow(&app, &id, "pause").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let t = app.task(&id, "t").await;
    assert_eq!((t.state.as_str(), t.attempt), ("waiting", 1), "{t:?}");
    assert!(
        t.blocked_by.contains(&"workflow paused".to_owned()),
        "{t:?}"
    );
    let runs = std::fs::read_to_string(dir.path().join("runs")).unwrap();
    assert_eq!(
        runs.lines().count(),
        1,
        "the retry did not run while paused"
    );
    post_workflow(&app, &id, "resume").await;
    let t = app.wait_task_state(&id, "t", "succeeded").await;
    assert_eq!(t.attempt, 2);
    app.stop().await;
}

#[tokio::test]
async fn an_approval_gate_waits_for_a_person() {
    let app = spawn_app().await;
    let _w = start_worker(&app, "s", &[]).await;
    let tasks = json!([
        {"name": "stage", "server_id": "s", "config": "echo staged"},
        {"name": "go-live", "group": "bora.approval", "depends_on": ["stage"]},
        {"name": "switch", "server_id": "s", "depends_on": ["go-live"], "config": "echo switched"}
    ]);
    let wf = app
        .create_workflow(json!({"name": "approved", "tasks": tasks}))
        .await;
    let id = wf.id();
    let gate = app.wait_task_state(&id, "go-live", "running").await;
    assert_eq!(gate.server_id, None);
    // Approving too early, or something that is no gate, is refused.
    assert_error(
        &app.post(
            &format!("/v1/workflows/{id}/tasks/stage/approve"),
            json!({}),
        )
        .await,
        StatusCode::CONFLICT,
        "not_an_approval",
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = app.task(&id, "switch").await;
    assert_eq!(after.state, "waiting");
    assert_eq!(after.blocked_by, ["go-live"]);
    let gate = post_task(
        &app,
        &id,
        "go-live",
        "approve",
        json!({"comment": "change 42 approved"}),
    )
    .await;
    assert_eq!(gate.state, "succeeded");
    let decision = gate.result().decision.clone().unwrap();
    assert_eq!(decision.decision, "approved");
    assert_eq!(decision.comment.as_deref(), Some("change 42 approved"));
    app.wait_workflow_state(&id, "succeeded").await;
    assert_error(
        &app.post(
            &format!("/v1/workflows/{id}/tasks/go-live/approve"),
            json!({}),
        )
        .await,
        StatusCode::CONFLICT,
        "approval_not_pending",
    );

    // A rejection fails the gate and skips what comes after.
    let wf = app
        .create_workflow(json!({"name": "rejected", "tasks": tasks}))
        .await;
    let id = wf.id();
    app.wait_task_state(&id, "go-live", "running").await;
    // No body at all is fine.
    let (status, body) = app
        .post_raw(
            &format!("/v1/workflows/{id}/tasks/go-live/reject"),
            Vec::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let wf = app.wait_workflow_state(&id, "failed").await;
    assert_eq!(wf.task_counts.skipped, 1);
    let gate = app.task(&id, "go-live").await;
    assert_eq!(gate.state, "failed");
    assert_eq!(gate.result().error.as_deref(), Some("rejected"));
    assert_eq!(
        gate.result().decision.as_ref().map(|d| d.decision.as_str()),
        Some("rejected")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_gate_without_a_decision_times_out_and_can_be_asked_again() {
    let app = spawn_app_with(&[("BORA__DISPATCH__HEARTBEAT_TIMEOUT_S", "1")]).await;
    let wf = app
        .create_workflow(json!({"name": "timeout", "tasks": [
            {"name": "gate", "group": "bora.approval", "timeout_s": 1}
        ]}))
        .await;
    let id = wf.id();
    let gate = app.wait_task_state(&id, "gate", "timed_out").await;
    assert!(
        gate.result()
            .error
            .as_deref()
            .is_some_and(|e| e.contains("no decision")),
        "{gate:?}"
    );
    // No worker holds a gate: nothing was ever sent for it.
    let t = post_task(&app, &id, "gate", "rerun", json!({})).await;
    assert_eq!((t.state.as_str(), t.attempt), ("running", 2));
    let t = post_task(&app, &id, "gate", "approve", json!({})).await;
    assert_eq!(t.state, "succeeded");
    let a = attempts(&app, &id, "gate").await;
    let states: Vec<&str> = a.attempts.iter().map(|a| a.state.as_str()).collect();
    assert_eq!(states, ["timed_out", "succeeded"]);
    app.stop().await;
}

#[tokio::test]
async fn actions_that_do_not_fit_the_state_are_refused() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(json!({"name": "refusals", "tasks": [
            {"name": "a", "server_id": "nobody-home"},
            {"name": "gate", "group": "bora.approval", "depends_on": ["a"]}
        ]}))
        .await;
    let id = wf.id();
    let conflict =
        |r: (StatusCode, Value), code: &str| assert_error(&r, StatusCode::CONFLICT, code);
    conflict(
        app.post(&format!("/v1/workflows/{id}/tasks/a/rerun"), json!({}))
            .await,
        "task_not_ended",
    );
    conflict(
        app.post(&format!("/v1/workflows/{id}/tasks/gate/approve"), json!({}))
            .await,
        "approval_not_pending",
    );
    conflict(
        app.post(&format!("/v1/workflows/{id}/rerun"), json!({}))
            .await,
        "nothing_to_rerun",
    );
    conflict(
        app.post(&format!("/v1/workflows/{id}/resume"), json!({}))
            .await,
        "workflow_not_paused",
    );
    assert_error(
        &app.post(
            &format!("/v1/workflows/{id}/tasks/gate/approve"),
            json!({"comment": "nul\u{0}"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_comment",
    );
    assert_error(
        &app.post(&format!("/v1/workflows/{id}/tasks/nope/rerun"), json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    app.cancel_workflow(&id).await;
    for path in [
        "rerun",
        "pause",
        "resume",
        "tasks/a/rerun",
        "tasks/gate/reject",
    ] {
        conflict(
            app.post(&format!("/v1/workflows/{id}/{path}"), json!({}))
                .await,
            "workflow_cancelled",
        );
    }
    // Bad retry policies and gates are refused with every field named.
    let (status, body) = app
        .post(
            "/v1/workflows",
            json!({"name": "bad", "tasks": [
                {"name": "g", "group": "bora.approval", "server_id": "s", "retries": 1},
                {"name": "n"},
                {"name": "r", "server_id": "s", "retry_backoff": 0.5, "retry_max_delay_s": -1}
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["field"].as_str())
        .collect();
    for f in [
        "tasks[0].server_id",
        "tasks[0].retries",
        "tasks[1].server_id",
        "tasks[2].retry_backoff",
        "tasks[2].retry_max_delay_s",
    ] {
        assert!(fields.contains(&f), "{f} missing from {body}");
    }
    app.stop().await;
}
