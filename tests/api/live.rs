//! Live output (SPEC 7.5) with real `bora worker` processes: a running
//! task's output arrives while it runs, in order, resumable without gaps
//! or repeats, capped; chunks are authorised like results.

use std::time::Duration;

use bora::protocol::{OutputChunk, OutputStream, RpcReply, sha256_hex, task_msg_id};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::e2e::start_worker;
use crate::helpers::*;

/// One server-sent event.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    id: Option<String>,
    data: Value,
}

/// Reads events off an SSE response until `end` (included) or until
/// `stop` says so after an event.
async fn read_events(resp: reqwest::Response, mut stop: impl FnMut(&Sse) -> bool) -> Vec<Sse> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut body = resp.bytes_stream();
    while let Some(Ok(bytes)) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut ev = Sse {
                event: "message".into(),
                id: None,
                data: Value::Null,
            };
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    ev.event = v.into();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    ev.id = Some(v.into());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            ev.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
            let end = ev.event == "end";
            let halt = stop(&ev);
            out.push(ev);
            if end || halt {
                return out;
            }
        }
    }
    out
}

fn text_of(events: &[Sse], stream: &str) -> String {
    events
        .iter()
        .filter(|e| e.event == stream && e.data["truncated"] != true)
        .map(|e| e.data["text"].as_str().unwrap_or_default())
        .collect()
}

async fn follow(app: &TestApp, wf: &str, task: &str, last_id: Option<&str>) -> reqwest::Response {
    let mut req = app.http.get(app.url(&format!(
        "/v1/workflows/{wf}/tasks/{task}/output?follow=true"
    )));
    if let Some(id) = last_id {
        req = req.header("Last-Event-ID", id);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp
}

#[tokio::test]
async fn output_arrives_while_the_task_runs_and_adds_up_to_its_result() {
    let app = spawn_app().await;
    let _w = start_worker(&app, "s", &[]).await;
    let script = "for i in $(seq 1 30); do echo \"line $i\"; sleep 0.1; done; echo done >&2";
    let wf = app
        .create_workflow(
            json!({"name": "live", "tasks": [{"name": "t", "server_id": "s", "config": script}]}),
        )
        .await;
    let id = wf.id();
    app.wait_task_state(&id, "t", "running").await;
    let resp = follow(&app, &id, "t", None).await;
    let mut first_at = None;
    let events = read_events(resp, |e| {
        if e.event == "stdout" && first_at.is_none() {
            first_at = Some(chrono::Utc::now());
        }
        false
    })
    .await;
    let end = events.last().unwrap();
    assert_eq!(end.event, "end", "{events:?}");
    assert_eq!(end.data["state"], "succeeded");
    let chunks = events.iter().filter(|e| e.event == "stdout").count();
    assert!(
        chunks >= 8,
        "{chunks} stdout chunks: the output came as it was printed"
    );
    let t = app.task(&id, "t").await;
    assert!(
        first_at.unwrap() < t.finished_at(),
        "the first chunk came while the task ran"
    );
    let stdout = text_of(&events, "stdout");
    assert_eq!(stdout, t.result().stdout);
    assert_eq!(sha256_hex(stdout.as_bytes()), t.result().stdout_sha256);
    assert_eq!(text_of(&events, "stderr"), "done\n");
    // Offsets run on without gaps: each chunk starts where the last ended.
    let mut at = 0;
    for e in events.iter().filter(|e| e.event == "stdout") {
        assert_eq!(e.data["offset"], at, "{e:?}");
        assert_eq!(e.id.as_deref(), Some(format!("1:stdout:{at}").as_str()));
        at += e.data["text"].as_str().unwrap().len();
    }
    // Without follow: the text kept.
    let (s, kept) = app.get(&format!("/v1/workflows/{id}/tasks/t/output")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(kept["stdout"], json!(t.result().stdout));
    assert_eq!(kept["ended"], true);
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_goes_and_comes_back_misses_nothing_and_sees_nothing_twice() {
    let app = spawn_app().await;
    let _w = start_worker(&app, "s", &[]).await;
    let script = "for i in $(seq 1 25); do echo \"out $i\"; echo \"err $i\" >&2; sleep 0.1; done";
    let wf = app
        .create_workflow(
            json!({"name": "resume", "tasks": [{"name": "t", "server_id": "s", "config": script}]}),
        )
        .await;
    let id = wf.id();
    app.wait_task_state(&id, "t", "running").await;
    // Goes after a few events.
    let mut n = 0;
    let first = read_events(follow(&app, &id, "t", None).await, |_| {
        n += 1;
        n >= 4
    })
    .await;
    let last = first.last().unwrap().id.clone().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let rest = read_events(follow(&app, &id, "t", Some(&last)).await, |_| false).await;
    assert_eq!(rest.last().unwrap().event, "end");
    let all: Vec<Sse> = first.into_iter().chain(rest).collect();
    let ids: Vec<&str> = all.iter().filter_map(|e| e.id.as_deref()).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "an event came twice: {ids:?}");
    let t = app.task(&id, "t").await;
    assert_eq!(text_of(&all, "stdout"), t.result().stdout);
    assert_eq!(text_of(&all, "stderr"), t.result().stderr);
    // A Last-Event-ID that names nothing of this task: 400.
    let r = app
        .http
        .get(app.url(&format!("/v1/workflows/{id}/tasks/t/output?follow=true")))
        .header("Last-Event-ID", "nonsense")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    app.stop().await;
}

#[tokio::test]
async fn output_over_the_cap_ends_with_a_marker_and_the_result_keeps_head_and_tail() {
    let app = spawn_app_with(&[("BORA__DISPATCH__MAX_LIVE_OUTPUT_BYTES", "1000")]).await;
    let _w = start_worker(&app, "s", &[]).await;
    let script = "for i in $(seq 1 400); do echo \"0123456789 $i\"; done";
    let wf = app
        .create_workflow(
            json!({"name": "cap", "tasks": [{"name": "t", "server_id": "s", "config": script}]}),
        )
        .await;
    let id = wf.id();
    app.wait_task_state(&id, "t", "succeeded").await;
    let events = read_events(follow(&app, &id, "t", None).await, |_| false).await;
    let kept = text_of(&events, "stdout");
    let t = app.task(&id, "t").await;
    assert_eq!(kept.len(), 1000, "exactly the cap is kept");
    assert!(
        t.result().stdout.starts_with(&kept),
        "the head is the stream's own"
    );
    let marker = events
        .iter()
        .find(|e| e.data["truncated"] == true)
        .expect("a marker where the stream stops");
    assert_eq!(marker.data["offset"], 1000);
    assert!(
        t.result().stdout.ends_with("0123456789 400\n"),
        "the result keeps the tail"
    );
    app.stop().await;
}

#[tokio::test]
async fn chunks_are_authorised_like_results() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(json!({"name": "forged", "tasks": [{"name": "t", "server_id": "s"}]}))
        .await;
    let id = wf.id();
    let mut w = app.fake_worker("s").await;
    let task = w.next_task().await;
    w.started(&task).await;
    let chunk = |offset: u64, data: &str| OutputChunk {
        stream: OutputStream::Stdout,
        offset,
        data: data.into(),
        truncated: false,
    };
    // The current attempt's chunk is kept; one of another attempt is not.
    let reply = RpcReply::output(task_msg_id(task.id, 1), &chunk(0, "real\n"));
    w.send_raw(&reply.encode()).await;
    let stale = RpcReply::output(task_msg_id(task.id, 7), &chunk(5, "stale\n"));
    w.send_raw(&stale.encode()).await;
    // Sent twice (a worker after a reconnect): kept once.
    w.send_raw(&reply.encode()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, kept) = app.get(&format!("/v1/workflows/{id}/tasks/t/output")).await;
        if kept["stdout"] == "real\n" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{kept}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, kept) = app.get(&format!("/v1/workflows/{id}/tasks/t/output")).await;
    assert_eq!(kept["stdout"], "real\n", "{kept}");
    app.stop().await;
}

/// A server registered for one test (broker users are global), revoked at
/// the end.
async fn register(app: &TestApp, prefix: &str) -> (String, String) {
    let id = format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let (s, reg) = app.post("/v1/servers", json!({"server_id": id})).await;
    assert_eq!(s, StatusCode::CREATED, "{reg}");
    (id, reg["amqp_url"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_worker_cut_off_mid_run_resends_its_output_without_a_gap() {
    let app = spawn_app().await;
    let (server, url) = register(&app, "live-cut").await;
    let _w = start_worker(&app, &server, &[("BORA__WORKER__AMQP_URL", &url)]).await;
    let script = "for i in $(seq 1 40); do echo \"tick $i\"; sleep 0.1; done";
    let wf = app
        .create_workflow(
            json!({"name": "cut", "tasks": [{"name": "t", "server_id": server, "config": script}]}),
        )
        .await;
    let id = wf.id();
    app.wait_task_state(&id, "t", "running").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The worker's broker connections are closed under it, twice.
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let r = http
            .delete(format!("{MGMT}/api/connections/username/bora-srv-{server}"))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    let t = app.wait_task_state(&id, "t", "succeeded").await;
    let (_, kept) = app.get(&format!("/v1/workflows/{id}/tasks/t/output")).await;
    assert_eq!(
        kept["stdout"],
        json!(t.result().stdout),
        "no gap, no repeat"
    );
    assert_eq!(t.result().stdout.lines().count(), 40);
    app.delete(&format!("/v1/servers/{server}")).await;
    app.stop().await;
}

#[tokio::test]
async fn a_guest_cannot_add_output_to_another_servers_task() {
    let app = spawn_app().await;
    let (a, url_a) = register(&app, "live-evil").await;
    let (b, _) = register(&app, "live-victim").await;
    let wf = app
        .create_workflow(json!({"name": "victim", "tasks": [{"name": "t", "server_id": b}]}))
        .await;
    let id = wf.id();
    let task = app.wait_task_state(&id, "t", "queued").await;
    // A's own credentials, A's own user_id: the broker lets it publish, bora
    // drops the chunk (not B's user).
    let before = wrong_user_drops(&app).await;
    let forger = FakeWorker::connect(&url_a, &app.settings, &a).await;
    let chunk = OutputChunk {
        stream: OutputStream::Stdout,
        offset: 0,
        data: "forged\n".into(),
        truncated: false,
    };
    forger
        .send_raw(&RpcReply::output(task_msg_id(task.id, 1), &chunk).encode())
        .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, kept) = app.get(&format!("/v1/workflows/{id}/tasks/t/output")).await;
    assert_eq!(kept["stdout"], "", "{kept}");
    assert!(
        wrong_user_drops(&app).await > before,
        "the dropped chunk is counted"
    );
    assert_eq!(
        app.task(&id, "t").await.state,
        "queued",
        "nor is it a heartbeat"
    );
    for s in [a, b] {
        app.delete(&format!("/v1/servers/{s}")).await;
    }
    app.stop().await;
}

/// `bora_results_rejected_total{reason="wrong_user"}` now (the recorder is
/// the process's: compare before and after).
async fn wrong_user_drops(app: &TestApp) -> f64 {
    app.get_text("/metrics")
        .await
        .lines()
        .filter(|l| l.starts_with("bora_results_rejected_total") && l.contains("wrong_user"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn live_output_is_scrubbed_of_secrets_like_the_result() {
    let app = spawn_app().await;
    let _w = start_worker(&app, "s", &[]).await;
    let secret = "hunter2-live-7f3a";
    let script = "for i in 1 2 3 4 5; do echo \"pw=$PW\"; sleep 0.2; done";
    let wf = app
        .create_workflow(json!({"name": "secret-live", "tasks": [
            {"name": "t", "server_id": "s", "config": script, "inputs": {"PW": {"secret": secret}}}
        ]}))
        .await;
    let id = wf.id();
    app.wait_task_state(&id, "t", "running").await;
    let events = read_events(follow(&app, &id, "t", None).await, |_| false).await;
    let stdout = text_of(&events, "stdout");
    assert_eq!(stdout, "pw=***\n".repeat(5), "{events:?}");
    let t = app.task(&id, "t").await;
    assert_eq!(t.result().stdout, stdout);
    let (_, kept) = app.get(&format!("/v1/workflows/{id}/tasks/t/output")).await;
    assert!(!kept.to_string().contains(secret), "{kept}");
    app.stop().await;
}
