//! The dispatcher's REST API and state tracking against the real broker and
//! a real SQLite file, with a scripted worker that answers in the real wire
//! format. (End-to-end runs with real `bora worker` processes are in
//! `tests/e2e`.)

mod e2e;
mod flood;
mod fuzz;
mod groups;
mod helpers;
mod labels;
mod limits;
mod live;
mod management;
mod operate;
mod oslo;
mod pages;
mod quorum;
mod refs;
mod scanner;
mod secrets;
mod security;

use std::time::Duration;

use bora::protocol::TaskResult;
use helpers::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn proposal_flow_releases_tasks_in_dependency_order() {
    let app = spawn_app().await;
    // A on X; B on Y after A; C on X after B; D on Y in parallel.
    let wf = app.create_workflow(json!({"name": "proposal"})).await;
    let id = wf.id();
    assert_eq!(wf.state, "empty");
    for body in [
        json!({"name": "A", "server_id": "server-x", "config": "echo a"}),
        json!({"name": "B", "server_id": "server-y", "depends_on": ["A"]}),
        json!({"name": "C", "server_id": "server-x", "depends_on": ["B"]}),
        json!({"name": "D", "server_id": "server-y"}),
    ] {
        app.add_task(&id, body).await;
    }
    let mut x = app.fake_worker("server-x").await;
    let mut y = app.fake_worker("server-y").await;

    // A and D go out at once; B and C wait.
    let a = x.next_task().await;
    assert_eq!(a.name, "A");
    assert_eq!(a.attempt, 1);
    assert_eq!(a.config, "echo a");
    let d = y.next_task().await;
    assert_eq!(d.name, "D");
    let b_view = app.task(&id, "B").await;
    assert_eq!(b_view.state, "waiting");
    assert_eq!(b_view.blocked_by, ["A"]);
    assert_eq!(b_view.depends_on, ["A"]);
    app.wait_task_state(&id, "A", "queued").await;

    x.started(&a).await;
    let a_view = app.wait_task_state(&id, "A", "running").await;
    assert!(a_view.started_at.is_some(), "{a_view:?}");
    assert!(a_view.server_online, "{a_view:?}");
    y.expect_nothing(Duration::from_millis(300)).await;
    x.finish(&a, 0).await;

    let b = y.next_task().await;
    assert_eq!(b.name, "B");
    let a_view = app.task(&id, "A").await;
    assert_eq!(a_view.state, "succeeded");
    assert_eq!(a_view.result().exit_code, 0);
    assert_eq!(a_view.result().stdout, "out\n");
    x.expect_nothing(Duration::from_millis(300)).await;
    y.finish(&d, 0).await;
    y.finish(&b, 0).await;

    let c = x.next_task().await;
    assert_eq!(c.name, "C");
    assert_eq!(app.workflow(&id).await.state, "running");
    x.finish(&c, 0).await;
    let wf = app.wait_workflow_state(&id, "succeeded").await;
    assert_eq!(wf.task_counts.succeeded, 4);
    assert_eq!(wf.task_counts.waiting, 0);
    app.stop().await;
}

#[tokio::test]
async fn batch_creation_accepts_forward_references() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(json!({
            "name": "batch",
            "description": "refs in any order",
            "tasks": [
                {"name": "last", "server_id": "s1", "depends_on": ["middle"]},
                {"name": "middle", "server_id": "s1", "depends_on": ["first"]},
                {"name": "first", "server_id": "s1"}
            ]
        }))
        .await;
    let id = wf.id();
    assert_eq!(wf.description.as_deref(), Some("refs in any order"));
    assert_eq!(wf.tasks.as_ref().map(Vec::len), Some(3), "{wf:?}");
    assert_eq!(wf.task_counts.waiting, 3);
    let mut w = app.fake_worker("s1").await;
    for expected in ["first", "middle", "last"] {
        let t = w.next_task().await;
        assert_eq!(t.name, expected);
        w.expect_nothing(Duration::from_millis(200)).await;
        w.finish(&t, 0).await;
    }
    app.wait_workflow_state(&id, "succeeded").await;
    app.stop().await;
}

#[tokio::test]
async fn task_added_after_its_dependency_finished_runs_at_once() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(json!({"name": "late", "tasks": [{"name": "a", "server_id": "s"}]}))
        .await;
    let id = wf.id();
    let mut w = app.fake_worker("s").await;
    let a = w.next_task().await;
    w.finish(&a, 0).await;
    app.wait_workflow_state(&id, "succeeded").await;

    // Depend on it by id this time.
    let a_id = a.id.to_string();
    let b = app
        .add_task(
            &id,
            json!({"name": "b", "server_id": "s", "depends_on": [a_id]}),
        )
        .await;
    assert_eq!(b.depends_on, ["a"]);
    assert!(b.blocked_by.is_empty(), "{b:?}");
    let bt = w.next_task().await;
    assert_eq!(bt.name, "b");
    assert_eq!(app.workflow(&id).await.state, "running");
    w.finish(&bt, 0).await;
    app.wait_workflow_state(&id, "succeeded").await;
    app.stop().await;
}

#[tokio::test]
async fn failure_skips_dependents_down_the_chain_unless_they_run_anyway() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(json!({
            "name": "fail",
            "tasks": [
                {"name": "a", "server_id": "s"},
                {"name": "b", "server_id": "s", "depends_on": ["a"]},
                {"name": "c", "server_id": "s", "depends_on": ["b"]},
                {"name": "cleanup", "server_id": "s", "depends_on": ["c"], "on_dependency_failure": "run"},
                {"name": "after-cleanup", "server_id": "s", "depends_on": ["cleanup"]}
            ]
        }))
        .await;
    let id = wf.id();
    let mut w = app.fake_worker("s").await;
    let a = w.next_task().await;
    w.finish(&a, 3).await;
    let a_view = app.wait_task_state(&id, "a", "failed").await;
    assert_eq!(a_view.result().exit_code, 3);
    assert_eq!(app.task(&id, "b").await.state, "skipped");
    assert_eq!(app.task(&id, "c").await.state, "skipped");
    // cleanup runs although c was skipped.
    let cleanup = w.next_task().await;
    assert_eq!(cleanup.name, "cleanup");
    w.finish(&cleanup, 0).await;
    let last = w.next_task().await;
    assert_eq!(last.name, "after-cleanup");
    w.finish(&last, 0).await;
    let wf = app.wait_workflow_state(&id, "failed").await;
    let counts = &wf.task_counts;
    assert_eq!(counts.failed, 1);
    assert_eq!(counts.skipped, 2);
    assert_eq!(counts.succeeded, 2);

    // A task added later that depends on the failed task is skipped at once.
    let t = app
        .add_task(
            &id,
            json!({"name": "late", "server_id": "s", "depends_on": ["a"]}),
        )
        .await;
    assert_eq!(t.state, "skipped");
    app.stop().await;
}

#[tokio::test]
async fn error_outputs_errors_and_retries() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(json!({
            "name": "outcomes",
            "tasks": [
                {"name": "erroutput", "server_id": "s", "outputs": [{"name": "err", "error_output": true}, "out"]},
                {"name": "flaky", "server_id": "s", "retries": 1},
                {"name": "broken", "server_id": "s", "group": "nope"}
            ]
        }))
        .await;
    let id = wf.id();
    let mut w = app.fake_worker("s").await;
    for _ in 0..3 {
        let t = w.next_task().await;
        match t.name.as_str() {
            "erroutput" => {
                let mut r = TaskResult::from_streams(t.attempt, 0, String::new(), String::new());
                r.outputs.insert("err".into(), json!("disk full"));
                r.outputs.insert("out".into(), json!("42"));
                w.finish_with(&t, r).await;
            }
            "flaky" => {
                assert_eq!(t.attempt, 1);
                w.finish(&t, 1).await;
            }
            "broken" => {
                w.finish_with(&t, TaskResult::error(t.attempt, "no runner for group nope"))
                    .await;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // The retry is a new attempt.
    let retry = w.next_task().await;
    assert_eq!(retry.name, "flaky");
    assert_eq!(retry.attempt, 2);
    w.finish(&retry, 0).await;
    let t = app.wait_task_state(&id, "flaky", "succeeded").await;
    assert_eq!(t.attempt, 2);
    assert_eq!(t.result().attempt, 2);
    let t = app.wait_task_state(&id, "erroutput", "failed").await;
    assert_eq!(t.result().outputs.get("out"), Some(&json!("42")));
    let t = app.wait_task_state(&id, "broken", "failed").await;
    assert_eq!(
        t.result().error.as_deref(),
        Some("no runner for group nope")
    );
    assert_eq!(t.result().exit_code, -1);
    app.stop().await;
}

#[tokio::test]
async fn heat_format_and_lookup_by_id_or_name() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(json!({"name": "heat", "tasks": [{"name": "deploy", "server_id": "s", "outputs": ["result"]}]}))
        .await;
    let id = wf.id();
    let mut w = app.fake_worker("s").await;
    let t = w.next_task().await;
    let by_name = app.task(&id, "deploy").await;
    let by_id = app.task(&id, &t.id.to_string()).await;
    assert_eq!(by_name.id, by_id.id);
    let (s, body) = app
        .get(&format!("/v1/workflows/{id}/tasks/deploy?format=heat"))
        .await;
    assert_error(&(s, body), StatusCode::CONFLICT, "no_result");
    let mut r = TaskResult::from_streams(t.attempt, 0, "done\n".into(), "warn\n".into());
    r.outputs.insert("result".into(), json!("ok"));
    w.finish_with(&t, r).await;
    app.wait_task_state(&id, "deploy", "succeeded").await;
    let (s, heat) = app
        .get(&format!("/v1/workflows/{id}/tasks/deploy?format=heat"))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        heat,
        json!({"deploy_stdout": "done\n", "deploy_stderr": "warn\n", "deploy_status_code": 0, "result": "ok"})
    );
    let t = app.task(&id, "deploy").await;
    assert_eq!(t.result().stdout_bytes, 5);
    assert_eq!(
        t.result().stdout_sha256,
        bora::protocol::sha256_hex(b"done\n")
    );
    app.stop().await;
}

#[tokio::test]
async fn tasks_wait_in_the_queue_of_a_server_without_worker() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(
            json!({"name": "late-worker", "tasks": [{"name": "t", "server_id": "sleepy"}]}),
        )
        .await;
    let id = wf.id();
    app.wait_task_state(&id, "t", "queued").await;
    let queue = app.settings.amqp.task_queue("sleepy");
    assert_eq!(app.vhost.queue_depth(&queue).await, 1);
    let t = app.task(&id, "t").await;
    assert!(!t.server_online, "{t:?}");
    // The message is a persistent oslo call with no expiration.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut w = app.fake_worker("sleepy").await;
    let task = w.next_task().await;
    assert_eq!(task.name, "t");
    w.finish(&task, 0).await;
    app.wait_workflow_state(&id, "succeeded").await;
    app.stop().await;
}

#[tokio::test]
async fn cancel_reaches_the_worker_and_ends_the_workflow() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(json!({
            "name": "cancel",
            "tasks": [
                {"name": "long", "server_id": "s"},
                {"name": "next", "server_id": "s", "depends_on": ["long"]}
            ]
        }))
        .await;
    let id = wf.id();
    let mut w = app.fake_worker("s").await;
    let long = w.next_task().await;
    w.started(&long).await;
    app.wait_task_state(&id, "long", "running").await;
    let wf = app.cancel_workflow(&id).await;
    assert_eq!(wf.state, "cancelled");
    assert_eq!(wf.task_counts.cancelled, 2);
    // The cancel travels on the server's control queue.
    let req = app.next_cancel("s").await;
    assert_eq!(req.method, "cancel_task");
    assert_eq!(req.args["task_id"], long.id.to_string());
    assert_eq!(req.args["attempt"], 1);
    // A late result for the cancelled attempt changes nothing.
    w.finish(&long, 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.task(&id, "long").await.state, "cancelled");
    // A cancelled workflow takes no new tasks.
    let r = app
        .post(
            &format!("/v1/workflows/{id}/tasks"),
            json!({"server_id": "s"}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "workflow_cancelled");
    app.stop().await;
}

#[tokio::test]
async fn patch_and_delete_of_tasks_and_workflows() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(json!({
            "name": "edit",
            "tasks": [
                {"name": "a", "server_id": "s"},
                {"name": "b", "server_id": "s", "depends_on": ["a"]},
                {"name": "c", "server_id": "s", "depends_on": ["a"]}
            ]
        }))
        .await;
    let id = wf.id();
    // PATCH of a waiting task.
    let b = app
        .patch_task(&id, "b", json!({"config": "echo patched", "timeout_s": 60}))
        .await;
    assert_eq!(b.config, "echo patched");
    assert_eq!(b.timeout_s, 60);
    // a was published: no longer patchable.
    app.wait_task_state(&id, "a", "queued").await;
    let r = app
        .patch(
            &format!("/v1/workflows/{id}/tasks/a"),
            json!({"config": "x"}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "task_not_waiting");
    // A cycle through PATCH is refused.
    app.patch_task(&id, "b", json!({"depends_on": ["c"]})).await;
    let r = app
        .patch(
            &format!("/v1/workflows/{id}/tasks/c"),
            json!({"depends_on": ["b"]}),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "dependency_cycle");
    // DELETE of a never-published task removes it; b, which depended on it, is skipped.
    let (s, _) = app.delete(&format!("/v1/workflows/{id}/tasks/c")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.get(&format!("/v1/workflows/{id}/tasks/c")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(app.task(&id, "b").await.state, "skipped");
    // DELETE of a published task cancels it and keeps the record.
    let (s, _) = app.delete(&format!("/v1/workflows/{id}/tasks/a")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(app.task(&id, "a").await.state, "cancelled");
    let r = app.delete(&format!("/v1/workflows/{id}/tasks/a")).await;
    assert_error(&r, StatusCode::CONFLICT, "task_finished");
    // PATCH of the workflow.
    let w = app
        .patch_workflow(&id, json!({"name": "renamed", "description": "d"}))
        .await;
    assert_eq!(w.name, "renamed");
    assert_eq!(w.description.as_deref(), Some("d"));
    // DELETE of the workflow.
    let (s, _) = app.delete(&format!("/v1/workflows/{id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let r = app.get(&format!("/v1/workflows/{id}")).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    app.stop().await;
}

#[tokio::test]
async fn listing_filters_and_pages() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let wf = app.create_workflow(json!({"name": format!("wf{i}")})).await;
        ids.push(wf.id());
    }
    let wf = app
        .create_workflow(json!({"name": "busy", "tasks": [
            {"name": "x", "server_id": "s1"}, {"name": "y", "server_id": "s2"}
        ]}))
        .await;
    let busy = wf.id();
    let page1 = app.workflows("?limit=2").await;
    assert_eq!(page1.names(), ["wf0", "wf1"]);
    let marker = page1.next_marker.expect("a next page");
    let page2 = app.workflows(&format!("?limit=2&marker={marker}")).await;
    assert_eq!(page2.workflows[0].name, "wf2");
    let all = app.workflows("?limit=100").await;
    assert_eq!(all.workflows.len(), 6);
    assert_eq!(all.next_marker, None);
    let running = app.workflows("?state=running").await;
    assert_eq!(running.workflows.len(), 1);
    assert_eq!(running.workflows[0].id(), busy);
    let empty = app.workflows("?state=empty&limit=3").await;
    assert_eq!(empty.workflows.len(), 3);
    assert!(empty.next_marker.is_some());

    let tasks = app.tasks(&busy, "?server_id=s2").await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].name, "y");
    app.wait_task_state(&busy, "x", "queued").await;
    assert_eq!(app.tasks(&busy, "?state=queued").await.len(), 2);
    assert_eq!(app.tasks(&busy, "?state=running").await.len(), 0);
    app.stop().await;
}

#[tokio::test]
async fn every_client_error_has_its_status_and_json_body() {
    let app = spawn_app_with(&[("BORA__API__MAX_BODY_BYTES", "4096")]).await;
    let wf = app
        .create_workflow(json!({"name": "errors", "tasks": [{"name": "a", "server_id": "s"}]}))
        .await;
    let id = wf.id();
    let tasks = format!("/v1/workflows/{id}/tasks");

    // 400: not JSON.
    let r = app.post_raw("/v1/workflows", b"{\"name\": ".to_vec()).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "malformed_json");
    // 404: unknown workflow, malformed id, unknown task, unknown route.
    let r = app
        .get("/v1/workflows/6b3a3c9e-0000-7000-8000-000000000000")
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = app.get("/v1/workflows/not-a-uuid").await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = app.get(&format!("{tasks}/nope")).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = app.get("/v1/nothing-here").await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = app
        .post(
            "/v1/workflows/6b3a3c9e-0000-7000-8000-000000000000/tasks",
            json!({"server_id": "s"}),
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    // 405.
    let r = app.patch("/v1/workflows", json!({})).await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    // 409: duplicate names, in the workflow and within one request.
    let r = app
        .post(&tasks, json!({"name": "a", "server_id": "s"}))
        .await;
    assert_error(&r, StatusCode::CONFLICT, "duplicate_name");
    let r = app
        .post(
            "/v1/workflows",
            json!({"name": "dup", "tasks": [
            {"name": "x", "server_id": "s"}, {"name": "x", "server_id": "s"}]}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "duplicate_name");
    // 413: body over the limit.
    let big = json!({"name": "big", "description": "x".repeat(8192)});
    let r = app.post("/v1/workflows", big).await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    // 422: wrong shape, unknown field.
    let r = app.post("/v1/workflows", json!({"name": 5})).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    let r = app
        .post(&tasks, json!({"server_id": "s", "timeout": 5}))
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    assert!(
        r.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timeout")
    );
    // 422: names and ranges, every field reported.
    let r = app.post("/v1/workflows", json!({"name": ""})).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let r = app
        .post(
            &tasks,
            json!({"server_id": "bad id!", "timeout_s": 0, "retries": 101, "retry_delay_s": 3601}),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let fields: Vec<&str> = r.1["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    for f in ["server_id", "timeout_s", "retries", "retry_delay_s"] {
        assert!(
            fields.iter().any(|x| x.ends_with(f)),
            "{f} not in {fields:?}"
        );
    }
    let r = app
        .post(&tasks, json!({"server_id": "s", "timeout_s": 86401}))
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let r = app.post(&tasks, json!({"server_id": "x".repeat(65)})).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    // 422: unknown dependency, self-dependency, cycles.
    let r = app
        .post(&tasks, json!({"server_id": "s", "depends_on": ["ghost"]}))
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "unknown_dependency");
    let r = app
        .post(
            &tasks,
            json!({"name": "me", "server_id": "s", "depends_on": ["me"]}),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "dependency_cycle");
    let r = app
        .post(
            "/v1/workflows",
            json!({"name": "cyclic", "tasks": [
            {"name": "p", "server_id": "s", "depends_on": ["r"]},
            {"name": "q", "server_id": "s", "depends_on": ["p"]},
            {"name": "r", "server_id": "s", "depends_on": ["q"]}]}),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "dependency_cycle");
    // Nothing of a refused batch was created.
    assert_eq!(app.workflows("?limit=100").await.workflows.len(), 1);
    // 422: bad query parameters.
    let r = app.get("/v1/workflows?limit=0").await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_query");
    let r = app.get("/v1/workflows?state=done").await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_query");
    let r = app.get("/v1/workflows?marker=zzz").await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_query");
    let r = app.get(&format!("{tasks}?state=bogus")).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_query");
    let r = app.get(&format!("{tasks}/a?format=xml")).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_query");
    app.stop().await;
}

#[tokio::test]
async fn unregistered_servers_are_refused_when_registration_is_required() {
    let app = spawn_app_with(&[("BORA__DISPATCH__REQUIRE_REGISTRATION", "true")]).await;
    let r = app
        .post(
            "/v1/workflows",
            json!({"name": "r", "tasks": [{"server_id": "stranger"}]}),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "unregistered_server");
    app.stop().await;
}

#[tokio::test]
async fn bad_replies_are_dropped_and_counted_and_the_next_result_is_fine() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(json!({"name": "poison", "tasks": [{"name": "t", "server_id": "s"}]}))
        .await;
    let id = wf.id();
    let mut w = app.fake_worker("s").await;
    let t = w.next_task().await;
    w.send_raw(b"not json at all").await;
    w.send_raw(br#"{"oslo.version": "2.0", "oslo.message": "{\"result\": null, \"failure\": null, \"ending\": true, \"_msg_id\": \"unknown\"}"}"#).await;
    let ghost = bora::domain::TaskId::new();
    w.send_raw(
        &bora::protocol::RpcReply::final_result(
            bora::protocol::task_msg_id(ghost, 1),
            json!({"exit_code": 0}),
        )
        .encode(),
    )
    .await;
    // Same task, wrong attempt.
    w.send_raw(
        &bora::protocol::RpcReply::final_result(
            bora::protocol::task_msg_id(t.id, 7),
            json!({"exit_code": 0}),
        )
        .encode(),
    )
    .await;
    w.finish(&t, 0).await;
    app.wait_task_state(&id, "t", "succeeded").await;
    // The duplicate of a recorded result is dropped too.
    w.finish(&t, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.task(&id, "t").await.state, "succeeded");
    let (_, metrics) = app.get("/metrics").await;
    let text = metrics.as_str().unwrap_or_default().to_owned();
    for reason in [
        "malformed",
        "unknown_msg_id",
        "unknown_task",
        "stale_attempt",
        "already_ended",
    ] {
        assert!(
            text.contains(&format!(
                "bora_results_rejected_total{{reason=\"{reason}\"}}"
            )),
            "{reason} not counted in:\n{text}"
        );
    }
    assert_eq!(
        app.vhost.queue_depth(&app.settings.amqp.reply_queue).await,
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let (s, body) = app.get("/healthz").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    let (s, body) = app.get("/readyz").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok", "store": "ok", "broker": "ok"}));
    app.stop().await;
}

#[tokio::test]
async fn readyz_is_503_when_the_broker_is_unreachable() {
    let app_dir = tempfile::tempdir().unwrap();
    let settings = bora::config::Settings::load_with_env(
        None,
        vec![
            ("BORA__API__LISTEN".to_string(), "127.0.0.1:0".to_string()),
            (
                "BORA__STORE__URL".to_string(),
                format!("sqlite://{}", app_dir.path().join("b.db").display()),
            ),
            // Nothing listens on port 1.
            (
                "BORA__AMQP__URL".to_string(),
                "amqp://guest:guest@127.0.0.1:1/%2f".to_string(),
            ),
        ],
    )
    .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let d = bora::serve::start(settings, shutdown.clone())
        .await
        .unwrap();
    let r = reqwest::get(format!("http://{}/readyz", d.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["broker"], "unreachable");
    assert_eq!(body["store"], "ok");
    // The API still answers (and accepts work, which waits in the outbox).
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/workflows", d.addr))
        .json(&json!({"name": "offline", "tasks": [{"server_id": "s"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    d.stop().await;
}

#[tokio::test]
async fn non_loopback_without_tokens_refuses_to_start() {
    let settings = bora::config::Settings::load_with_env(
        None,
        vec![("BORA__API__LISTEN".to_string(), "0.0.0.0:0".to_string())],
    )
    .unwrap();
    let err = bora::serve::start(settings, tokio_util::sync::CancellationToken::new())
        .await
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("without API tokens"), "{err}");
}

#[tokio::test]
async fn configured_tokens_are_required_on_v1() {
    let app = spawn_app_with(&[(
        "BORA__API__TOKENS",
        "s3cret-s3cret-s3cret,other-other-other-1",
    )])
    .await;
    let r = app.get("/v1/workflows").await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    let r = app
        .http
        .get(app.url("/v1/workflows"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    for token in ["s3cret-s3cret-s3cret", "other-other-other-1"] {
        let r = app
            .http
            .post(app.url("/v1/workflows"))
            .bearer_auth(token)
            .json(&json!({"name": "authorized"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    // Probes stay open for load balancers and orchestrators.
    assert_eq!(app.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(app.get("/readyz").await.0, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn task_and_workflow_ends_are_announced_as_oslo_notifications() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(json!({"name": "notify", "tasks": [
            {"name": "ok", "server_id": "s"},
            {"name": "bad", "server_id": "s", "depends_on": ["ok"]}
        ]}))
        .await;
    let id = wf.id();
    let mut w = app.fake_worker("s").await;
    let ok = w.next_task().await;
    w.finish(&ok, 0).await;
    let bad = w.next_task().await;
    w.finish(&bad, 2).await;
    app.wait_workflow_state(&id, "failed").await;
    // The notifier declares notifications.<priority> as oslo's does, so they wait for a listener.
    let conn = lapin::Connection::connect(&app.vhost.amqp_url(), Default::default())
        .await
        .unwrap();
    let mut ch = conn.create_channel().await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..100 {
        for queue in ["notifications.info", "notifications.error"] {
            // A get from a queue the relay has not declared yet closes the
            // channel: open another and try again.
            if !ch.status().connected() {
                ch = conn.create_channel().await.unwrap();
            }
            if let Ok(Some(m)) = ch
                .basic_get(
                    queue.into(),
                    lapin::options::BasicGetOptions { no_ack: true },
                )
                .await
            {
                let n: bora::protocol::Notification = serde_json::from_value(Value::Object(
                    bora::protocol::decode_envelope(&m.delivery.data).unwrap(),
                ))
                .unwrap();
                assert_eq!(m.delivery.routing_key.as_str(), queue);
                seen.push((n.event_type, n.priority, n.payload));
            }
        }
        if seen.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    let find = |e: &str, name: Option<&str>| {
        seen.iter()
            .find(|(ev, _, p)| ev == e && name.is_none_or(|n| p["name"] == n))
            .cloned()
            .unwrap_or_else(|| panic!("{e} {name:?} missing from {seen:?}"))
    };
    let (_, prio, payload) = find("bora.task.end", Some("ok"));
    assert_eq!(prio, "INFO");
    assert_eq!(payload["state"], "succeeded");
    assert_eq!(payload["result"]["stdout"], "", "streams are left out");
    assert_eq!(payload["result"]["stdout_bytes"], 4);
    let (_, prio, payload) = find("bora.task.end", Some("bad"));
    assert_eq!(prio, "ERROR");
    assert_eq!(payload["result"]["exit_code"], 2);
    let (_, prio, payload) = find("bora.workflow.end", None);
    assert_eq!(prio, "ERROR");
    assert_eq!(payload["id"], id.as_str());
    assert_eq!(payload["state"], "failed");
    app.stop().await;
}

#[tokio::test]
async fn notifications_carry_no_inputs_config_or_streams() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(json!({"name": "quiet", "tasks": [
            {"name": "deploy", "server_id": "s",
             "inputs": {"deploy_password": "pw-in-input-7731"},
             "config": "#!/bin/sh\n# token config-secret-5520\n"}
        ]}))
        .await;
    let id = wf.id();
    let mut w = app.fake_worker("s").await;
    let t = w.next_task().await;
    // The worker gets what it needs.
    assert_eq!(t.inputs["deploy_password"], "pw-in-input-7731");
    w.finish_with(
        &t,
        TaskResult::from_streams(
            t.attempt,
            0,
            "stream-secret-9912\n".into(),
            "err-secret-4471\n".into(),
        ),
    )
    .await;
    app.wait_workflow_state(&id, "succeeded").await;
    let conn = lapin::Connection::connect(&app.vhost.amqp_url(), Default::default())
        .await
        .unwrap();
    let mut ch = conn.create_channel().await.unwrap();
    let mut bodies = Vec::new();
    for _ in 0..100 {
        // A get from a queue the relay has not declared yet closes the
        // channel: open another and try again.
        if !ch.status().connected() {
            ch = conn.create_channel().await.unwrap();
        }
        if let Ok(Some(m)) = ch
            .basic_get(
                "notifications.info".into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
        {
            bodies.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
        }
        if bodies.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        bodies.len(),
        2,
        "the task's and the workflow's ends: {bodies:?}"
    );
    for body in &bodies {
        for secret in [
            "pw-in-input-7731",
            "config-secret-5520",
            "stream-secret-9912",
            "err-secret-4471",
        ] {
            assert!(!body.contains(secret), "{secret} in a notification: {body}");
        }
    }
    let task_end = bodies
        .iter()
        .map(|b| {
            serde_json::from_value::<bora::protocol::Notification>(Value::Object(
                bora::protocol::decode_envelope(b.as_bytes()).unwrap(),
            ))
            .unwrap()
        })
        .find(|n| n.event_type == "bora.task.end")
        .expect("the task's end");
    assert_eq!(task_end.payload["name"], "deploy");
    assert!(
        task_end.payload.get("inputs").is_none(),
        "{}",
        task_end.payload
    );
    assert!(
        task_end.payload.get("config").is_none(),
        "{}",
        task_end.payload
    );
    assert_eq!(task_end.payload["result"]["stdout_bytes"], 19);
    app.stop().await;
}

#[tokio::test]
async fn one_task_named_twice_is_one_dependency_and_nul_is_refused() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(json!({"name": "twice", "tasks": [{"name": "db", "server_id": "s"}]}))
        .await;
    let id = wf.id();
    let db = app.task(&id, "db").await.id.to_string();
    // By id and by name, then two spellings of its id: one dependency each
    // time, never a 5xx.
    for (name, refs) in [
        ("by-both", json!([db, "db"])),
        ("two-spellings", json!([db, db.to_uppercase()])),
    ] {
        let r = app
            .post(
                &format!("/v1/workflows/{id}/tasks"),
                json!({"name": name, "server_id": "s", "depends_on": refs}),
            )
            .await;
        assert_eq!(r.0, StatusCode::CREATED, "{name}: {}", r.1);
        assert_eq!(r.1["depends_on"], json!(["db"]), "{name}: {}", r.1);
    }
    // PATCH the same way.
    let later = app
        .create_workflow(json!({"name": "p", "tasks": [
            {"name": "gate", "server_id": "s", "depends_on": []},
            {"name": "t", "server_id": "s", "depends_on": ["gate"]}
        ]}))
        .await;
    let lid = later.id();
    let gate = app.task(&lid, "gate").await.id.to_string();
    let r = app
        .patch(
            &format!("/v1/workflows/{lid}/tasks/t"),
            json!({"depends_on": [gate, "gate"]}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    assert_eq!(r.1["depends_on"], json!(["gate"]), "{}", r.1);
    // NUL cannot be stored (PostgreSQL's text refuses it): a field error.
    let r = app
        .post(
            "/v1/workflows",
            json!({"name": "n", "tasks": [{"server_id": "s", "config": "echo a\u{0}b"}]}),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(
        r.1["error"]["details"][0]["field"], "tasks[0].config",
        "{}",
        r.1
    );
    let r = app
        .post(
            "/v1/workflows",
            json!({"name": "n", "description": "a\u{0}b"}),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let r = app
        .patch(
            &format!("/v1/workflows/{id}"),
            json!({"description": "x\u{0}"}),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let r = app
        .patch(
            &format!("/v1/workflows/{lid}/tasks/t"),
            json!({"config": "\u{0}"}),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
}

#[tokio::test]
async fn rotating_a_servers_password_closes_its_open_connections() {
    let app = spawn_app().await;
    let id = format!("rot-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let (s, reg) = app
        .post("/v1/servers", json!({"server_id": id, "kind": "guest"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{reg}");
    let old = lapin::Connection::connect(reg["amqp_url"].as_str().unwrap(), Default::default())
        .await
        .unwrap();
    let (s, again) = app
        .post("/v1/servers", json!({"server_id": id, "kind": "guest"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["rotated"], true);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while old.status().connected() {
        assert!(
            std::time::Instant::now() < deadline,
            "the connection of the replaced password stayed open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new = lapin::Connection::connect(again["amqp_url"].as_str().unwrap(), Default::default())
        .await
        .unwrap();
    assert!(new.status().connected());
    let _ = new.close(200, "bye".into()).await;
    let _ = app.delete(&format!("/v1/servers/{id}")).await;
}

#[tokio::test]
async fn metrics_need_a_token_once_tokens_are_set() {
    const API: &str = "api-token-api-token-1";
    const SCRAPE: &str = "scrape-token-scrape-1";
    let app = spawn_app_with(&[
        ("BORA__API__TOKENS", API),
        ("BORA__API__METRICS_TOKEN", SCRAPE),
    ])
    .await;
    let get = |path: &'static str, token: Option<&'static str>| {
        let mut r = app.http.get(app.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let r = get("/metrics", None).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        get("/metrics", Some("wrong-wrong-wrong-wrong"))
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    for token in [API, SCRAPE] {
        let r = get("/metrics", Some(token)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{token}");
        assert!(r.text().await.unwrap().contains("# HELP bora_tasks "));
    }
    // The scrape token opens /metrics only.
    let r = get("/v1/workflows", Some(SCRAPE)).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn open_event_streams_are_capped_and_a_closed_one_frees_its_place() {
    let app = spawn_app_with(&[("BORA__API__MAX_EVENT_STREAMS", "2")]).await;
    let wf = app
        .create_workflow(json!({"name": "watched", "tasks": [{"name": "t", "server_id": "s"}]}))
        .await;
    let path = format!("/v1/workflows/{}/events", wf.id());
    let open = || app.http.get(app.url(&path)).send();
    let first = open().await.unwrap();
    let second = open().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
    let third = open().await.unwrap();
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(third.headers()["retry-after"], "5");
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams", "{body}");
    // A client that goes frees its place.
    drop(first);
    let mut again = None;
    for _ in 0..100 {
        let r = open().await.unwrap();
        if r.status() == StatusCode::OK {
            again = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "the closed stream's place was not freed");
    drop(second);
    app.stop().await;
}
