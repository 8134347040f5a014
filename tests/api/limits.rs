//! What a flood or a careless peer gets (issue #19): the workflow list's
//! state filter evaluated by the store, the API's header-read timeout and
//! connection limit, and results too large to record.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bora::protocol::{RpcReply, TaskResult};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

async fn post_task(app: &TestApp, wf: &str, task: &str, verb: &str) {
    let r = app
        .post(
            &format!("/v1/workflows/{wf}/tasks/{task}/{verb}"),
            json!({}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{verb} {task}: {}", r.1);
}

/// Every id `GET /v1/workflows?state=<state>` lists, page by page.
async fn listed(app: &TestApp, state: &str, limit: u32) -> Vec<String> {
    let mut ids = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let q = match &marker {
            Some(m) => format!("?state={state}&limit={limit}&marker={m}"),
            None => format!("?state={state}&limit={limit}"),
        };
        let page = app.workflows(&q).await;
        assert!(page.workflows.len() <= limit as usize, "{q}");
        for w in &page.workflows {
            assert_eq!(w.state, state, "{q}: {w:?}");
            ids.push(w.id());
        }
        match page.next_marker {
            Some(m) => marker = Some(m.to_string()),
            None => return ids,
        }
    }
}

#[tokio::test]
async fn the_state_filter_lists_what_each_workflow_says_it_is() {
    let app = spawn_app().await;
    let gate = |name: &str| json!({"name": name, "group": "bora.approval"});
    let mut ids = Vec::new();
    let mut create = async |name: &str, tasks: serde_json::Value| {
        let wf = app
            .create_workflow(json!({"name": name, "tasks": tasks}))
            .await;
        ids.push(wf.id());
        wf.id()
    };
    // empty
    create("empty", json!([])).await;
    // running: a gate waits for a person; also paused
    create("pending", json!([gate("g")])).await;
    let paused = create("paused", json!([gate("g")])).await;
    // succeeded
    let approved = create("approved", json!([gate("g")])).await;
    // failed: a rejected gate, its dependent skipped
    let rejected = create(
        "rejected",
        json!([gate("g"), {"name": "after", "group": "bora.approval",
            "depends_on": ["g"], "on_dependency_failure": "skip"}]),
    )
    .await;
    // cancelled through the API, with a task still pending, and with every
    // task succeeded
    let cancelled = create("cancelled", json!([gate("g")])).await;
    let cancelled_done = create("cancelled-done", json!([gate("g")])).await;
    // cancelled: only a single-task cancel kept it from succeeding
    let one_cancelled = create(
        "one-cancelled",
        json!([gate("g"), {"name": "t", "server_id": "nowhere"}]),
    )
    .await;

    for wf in [&approved, &cancelled_done, &one_cancelled] {
        app.wait_task_state(wf, "g", "running").await;
        post_task(&app, wf, "g", "approve").await;
    }
    app.wait_task_state(&rejected, "g", "running").await;
    post_task(&app, &rejected, "g", "reject").await;
    app.wait_workflow_state(&rejected, "failed").await;
    app.cancel_workflow(&cancelled).await;
    app.cancel_workflow(&cancelled_done).await;
    app.wait_task_state(&one_cancelled, "t", "queued").await;
    let (s, body) = app
        .delete(&format!("/v1/workflows/{one_cancelled}/tasks/t"))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let r = app
        .post(&format!("/v1/workflows/{paused}/pause"), json!({}))
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);

    // What each workflow says it is, one by one.
    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut views = BTreeMap::new();
    for id in &ids {
        let w = app.workflow(id).await;
        expected
            .entry(w.state.clone())
            .or_default()
            .insert(id.clone());
        views.insert(id.clone(), w);
    }
    for state in ["empty", "running", "succeeded", "failed", "cancelled"] {
        assert!(
            expected.contains_key(state),
            "no {state} workflow: {expected:?}"
        );
    }
    assert_eq!(expected["cancelled"].len(), 3, "{expected:?}");
    assert_eq!(expected["running"].len(), 2, "{expected:?}");
    for (state, want) in &expected {
        for limit in [1, 2, 100] {
            let got = listed(&app, state, limit).await;
            let set: BTreeSet<String> = got.iter().cloned().collect();
            assert_eq!(&set, want, "state={state} limit={limit}");
            assert_eq!(got.len(), set.len(), "a workflow listed twice: {got:?}");
            let mut sorted = got.clone();
            sorted.sort();
            assert_eq!(got, sorted, "not in creation order");
        }
    }
    // Unfiltered, each listed workflow is what its own GET says.
    let all = app.workflows("?limit=100").await;
    assert_eq!(all.workflows.len(), ids.len());
    for w in &all.workflows {
        let one = &views[&w.id()];
        assert_eq!(
            (&w.state, &w.task_counts, w.paused),
            (&one.state, &one.task_counts, one.paused),
            "{}",
            w.name
        );
    }
    app.stop().await;
}

/// Reads from `stream` until the server closes it (`true`), or gives up
/// after `bound` (`false`). A reset counts as closed.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, bound: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(bound, read_to_end).await.is_ok()
}

/// Sends `GET path` on `stream` (kept alive) and returns the status line
/// once the whole answer is in.
async fn raw_get(stream: &mut tokio::net::TcpStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: bora\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .expect("a content-length");
            if got.len() >= end + 4 + length {
                return text.lines().next().unwrap_or_default().to_owned();
            }
        }
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_closed() {
    let app = spawn_app_with(&[("BORA__API__HEADER_READ_TIMEOUT_S", "1")]).await;
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"GET /v1/workflows HT").await.unwrap();
    assert!(
        closed_by_server(&mut slow, Duration::from_secs(30)).await,
        "a half-sent request line kept its connection open"
    );
    // So is one that never sends a byte.
    let mut silent = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    assert!(
        closed_by_server(&mut silent, Duration::from_secs(30)).await,
        "a silent connection stayed open"
    );
    // An idle connection, after an answered request, goes the same way.
    let mut idle = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    assert_eq!(raw_get(&mut idle, "/healthz").await, "HTTP/1.1 200 OK");
    assert!(
        closed_by_server(&mut idle, Duration::from_secs(30)).await,
        "an idle kept-alive connection stayed open"
    );
    // Everyone else is served.
    assert_eq!(app.get("/v1/workflows").await.0, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_one() {
    let mut app = spawn_app_with(&[
        ("BORA__API__MAX_CONNECTIONS", "2"),
        ("BORA__API__MAX_EVENT_STREAMS", "1"),
        ("BORA__API__HEADER_READ_TIMEOUT_S", "600"),
    ])
    .await;
    // The client that waited for readiness keeps a connection open: close it.
    app.http = reqwest::Client::new();
    // Two connections, each answered once and then held open, idle.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        assert_eq!(raw_get(&mut s, "/healthz").await, "HTTP/1.1 200 OK");
        held.push(s);
    }
    // A third client is not served while they are open.
    let fresh = reqwest::Client::new();
    let url = app.url("/v1/workflows");
    let third = tokio::spawn(async move { fresh.get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!third.is_finished(), "a third connection was served");
    // One closes: the third is served, and the API answers again.
    drop(held.pop());
    let status = tokio::time::timeout(Duration::from_secs(20), third)
        .await
        .expect("the waiting client was never served")
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    drop(held);
    assert_eq!(app.get("/v1/workflows").await.0, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn a_result_too_large_to_read_fails_its_attempt_and_is_not_run_again() {
    let app = spawn_app_with(&[
        ("BORA__DISPATCH__REQUIRE_REGISTRATION", "true"),
        ("BORA__DISPATCH__MAX_RESULT_BYTES", "65536"),
    ])
    .await;
    let server = format!("big-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let url = app.register_guest(&server).await;
    let wf = app
        .create_workflow(json!({"name": "big", "tasks": [
            {"name": "t", "server_id": server, "retries": 2},
            {"name": "after", "server_id": server, "depends_on": ["t"]}
        ]}))
        .await;
    let id = wf.id();
    let mut worker = FakeWorker::connect(&url, &app.settings, &server).await;
    let msg = worker.next_task().await;
    assert_eq!(
        msg.max_result_bytes,
        Some(65_536),
        "the limit travels with the task"
    );
    worker.started(&msg).await;
    app.wait_task_state(&id, "t", "running").await;
    let msg_id = bora::protocol::task_msg_id(msg.id, msg.attempt);
    let body = |nuls: usize| {
        let r = TaskResult::from_streams(msg.attempt, 0, "\0".repeat(nuls), String::new());
        RpcReply::final_result(&msg_id, serde_json::to_value(r).unwrap()).encode()
    };
    // An oversized reply that names the attempt from someone who may not
    // report on it (the dispatcher's user, with registration required) is
    // dropped; one without a correlation_id (an oslo peer's) too.
    let other = app.fake_worker("unrelated").await;
    other.send_raw_correlated(&body(30_000), &msg_id).await;
    worker.send_raw(&body(40_000)).await;
    // The server's own: the attempt fails, with the sizes.
    let own = body(20_000);
    assert!(own.len() > 65_536);
    worker.send_raw_correlated(&own, &msg_id).await;
    let t = app.wait_task_state(&id, "t", "failed").await;
    assert_eq!(t.attempt, 1, "{t:?}");
    let error = t.result().error.clone().unwrap_or_default();
    assert!(
        error.starts_with("result_too_large")
            && error.contains(&own.len().to_string())
            && error.contains("65536"),
        "{error}"
    );
    let (s, attempts) = app
        .get(&format!("/v1/workflows/{id}/tasks/t/attempts"))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        attempts["attempts"].as_array().map(Vec::len),
        Some(1),
        "{attempts}"
    );
    // Its dependent goes the way of any failure; nothing is sent again.
    let wf = app.wait_workflow_state(&id, "failed").await;
    assert_eq!(wf.task_counts.skipped, 1, "{wf:?}");
    worker.expect_nothing(Duration::from_secs(2)).await;
    // A late, fitting result for the ended attempt changes nothing.
    worker.finish(&msg, 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.task(&id, "t").await.state, "failed");
    other.close().await;
    worker.close().await;
    let _ = app
        .http
        .delete(app.url(&format!("/v1/servers/{server}")))
        .send()
        .await;
    app.stop().await;
}

#[tokio::test]
async fn an_honest_large_result_is_cut_to_fit_and_recorded_once() {
    let app = spawn_app().await;
    let _worker = crate::e2e::start_worker(&app, "large", &[]).await;
    let wf = app
        .create_workflow(json!({"name": "large", "tasks": [{
            "name": "t", "server_id": "large", "outputs": ["big"],
            "config": "#!/bin/sh\nhead -c 1048576 /dev/zero\nhead -c 1048576 /dev/zero >&2\n\
                       head -c 1048576 /dev/zero | tr '\\0' 'x' > \"$heat_outputs_path.big\"\n"
        }]}))
        .await;
    let id = wf.id();
    let t = app.wait_task_state(&id, "t", "succeeded").await;
    assert_eq!(t.attempt, 1, "{:?}", t.state);
    let (_, full) = app.get(&format!("/v1/workflows/{id}/tasks/t")).await;
    let result = &full["result"];
    assert_eq!(
        result["trimmed"],
        json!(["stdout", "stderr"]),
        "{:.300}",
        result
    );
    assert_eq!(result["stdout_bytes"], 1_048_576);
    assert_eq!(
        result["outputs"]["big"].as_str().map(str::len),
        Some(1_048_576)
    );
    let (s, attempts) = app
        .get(&format!("/v1/workflows/{id}/tasks/t/attempts"))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(attempts["attempts"].as_array().map(Vec::len), Some(1));
    app.stop().await;
}
