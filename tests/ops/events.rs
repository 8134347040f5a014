//! `GET /v1/workflows/{wf}/events`: one event per state change, resumable
//! with Last-Event-ID without loss or repetition, and an `end` event.

use std::time::Duration;

use std::pin::Pin;

use bora::client::{SseError, SseEvent, sse_events};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::helpers::*;

/// An open event stream.
struct Stream {
    events: Pin<Box<dyn futures_util::Stream<Item = Result<SseEvent, SseError>> + Send>>,
}

impl Stream {
    async fn open(app: &TestApp, wf: &str, last_id: Option<&str>) -> Self {
        let mut req = app
            .http
            .get(app.url(&format!("/v1/workflows/{wf}/events")))
            .header("accept", "text/event-stream");
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            events: Box::pin(sse_events(resp.bytes_stream())),
        }
    }

    /// The next event; `None` when the stream closed.
    async fn next(&mut self) -> Option<SseEvent> {
        tokio::time::timeout(Duration::from_secs(20), self.events.next())
            .await
            .expect("no event within 20 s")
            .map(|e| e.unwrap())
    }

    /// Every event up to and including `end`, then asserts the stream closed.
    async fn until_end(mut self) -> Vec<SseEvent> {
        let mut all = Vec::new();
        while let Some(e) = self.next().await {
            let end = e.event == "end";
            all.push(e);
            if end {
                assert!(self.next().await.is_none(), "the stream closes after end");
                return all;
            }
        }
        panic!("stream closed without an end event: {all:?}");
    }
}

fn data(e: &SseEvent) -> Value {
    serde_json::from_str(&e.data).unwrap()
}

#[tokio::test]
async fn events_stream_live_and_resume_without_loss_or_repetition() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(json!({"name": "sse", "tasks": [
            {"name": "a", "server_id": "sse-x"},
            {"name": "b", "server_id": "sse-x", "depends_on": ["a"]},
        ]}))
        .await;
    let id = wf.id();
    let mut live = Stream::open(&app, &id, None).await;
    let first = live.next().await.unwrap();
    assert_eq!(first.event, "task");
    let d = data(&first);
    assert_eq!(d["task_name"], "a");
    assert_eq!(d["state"], "waiting");
    assert_eq!(d["workflow_id"], id.as_str());
    assert_eq!(first.id.as_deref(), Some(d["id"].to_string().as_str()));

    // The live stream sees changes made after it opened.
    let mut w = app.fake_worker("sse-x").await;
    let a = w.next_task().await;
    // Each step waits for the confirm, so the order of events is fixed.
    app.wait_task_state(&id, "a", "queued").await;
    w.started(&a).await;
    loop {
        let e = live.next().await.unwrap();
        let d = data(&e);
        if d["task_name"] == "a" && d["state"] == "running" {
            break;
        }
    }
    w.finish(&a, 0).await;
    let b = w.next_task().await;
    app.wait_task_state(&id, "b", "queued").await;
    w.finish(&b, 0).await;
    let mut rest = vec![first.clone()];
    rest.extend(
        Stream::open(&app, &id, first.id.as_deref())
            .await
            .until_end()
            .await,
    );

    // The whole stream from the start, once the workflow ended.
    let all = Stream::open(&app, &id, None).await.until_end().await;
    let (end, events) = all.split_last().unwrap();
    assert_eq!(end.event, "end");
    assert_eq!(
        end.id, None,
        "end carries no id, so a resume never skips it"
    );
    assert_eq!(data(end), json!({"workflow_id": id, "state": "succeeded"}));
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            let d = data(e);
            (
                d["task_name"].as_str().unwrap().to_owned(),
                d["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expect = [
        ("a", "waiting"),
        ("b", "waiting"),
        ("a", "queued"),
        ("a", "running"),
        ("a", "succeeded"),
        ("b", "queued"),
        ("b", "succeeded"),
    ];
    assert_eq!(
        summary,
        expect
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );
    let ids: Vec<i64> = events
        .iter()
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // Resuming from each point gives exactly the events after it.
    assert_eq!(
        rest, all,
        "first event + resume after it == the whole stream"
    );
    for (i, e) in events.iter().enumerate() {
        let resumed = Stream::open(&app, &id, e.id.as_deref())
            .await
            .until_end()
            .await;
        assert_eq!(resumed, all[i + 1..].to_vec(), "resume after event {i}");
    }
    app.stop().await;
}

#[tokio::test]
async fn cancel_ends_the_stream_and_bad_requests_are_json_errors() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(json!({"name": "c", "tasks": [{"name": "a", "server_id": "sse-c"}]}))
        .await;
    let id = wf.id();
    let mut s = Stream::open(&app, &id, None).await;
    assert_eq!(data(&s.next().await.unwrap())["state"], "waiting");
    let (status, _) = app
        .post(&format!("/v1/workflows/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200);
    let mut seen = Vec::new();
    while let Some(e) = s.next().await {
        seen.push((
            e.event.clone(),
            data(&e)["state"].as_str().unwrap().to_owned(),
        ));
    }
    assert!(
        seen.contains(&("workflow".into(), "cancelled".into())),
        "{seen:?}"
    );
    assert_eq!(
        seen.last().unwrap(),
        &("end".to_owned(), "cancelled".to_owned())
    );

    let unknown = app
        .get("/v1/workflows/01940000-0000-7000-8000-000000000000/events")
        .await;
    assert_error(&unknown, reqwest::StatusCode::NOT_FOUND, "not_found");
    let r = app
        .http
        .get(app.url(&format!("/v1/workflows/{id}/events")))
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_last_event_id");
    app.stop().await;
}

#[tokio::test]
async fn open_streams_do_not_hold_up_shutdown() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(json!({"name": "open", "tasks": [{"name": "a", "server_id": "sse-o"}]}))
        .await;
    let id = wf.id();
    let mut s = Stream::open(&app, &id, None).await;
    assert!(s.next().await.is_some());
    tokio::time::timeout(Duration::from_secs(20), app.stop())
        .await
        .expect("shutdown finished with a stream open");
}
