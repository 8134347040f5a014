//! `bora task output --follow`: a running task's live output (SPEC 7.5) as
//! it is printed, stdout to stdout and stderr to stderr, from the output's
//! event stream. After a dropped connection it resumes with
//! `Last-Event-ID`, so nothing is printed twice or missed; it ends with the
//! attempt.

use std::io::Write;

use futures_util::StreamExt;
use reqwest::Method;
use reqwest::header::ACCEPT;
use serde_json::Value;

use super::Outcome;
use super::http::{Client, ClientError, segment};
use super::sse::sse_events;
use super::watch::{MAX_FAILURES, backoff};

/// Prints `task`'s live output until its attempt ends; `Success` when the
/// task succeeded.
///
/// # Errors
/// The task does not exist, or the server stayed unreachable.
pub async fn follow(client: &Client, wf: &str, task: &str) -> Result<Outcome, ClientError> {
    let path = format!(
        "/v1/workflows/{}/tasks/{}/output?follow=true",
        segment(wf),
        segment(task)
    );
    let mut last_id: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let mut req = client
            .request(Method::GET, &path)
            .header(ACCEPT, "text/event-stream");
        if let Some(id) = &last_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = match client.send(req, &path).await {
            Ok(r) => r,
            Err(e @ ClientError::Transport { .. }) => {
                failures += 1;
                if failures >= MAX_FAILURES {
                    return Err(e);
                }
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        failures = 0;
        let mut events = std::pin::pin!(sse_events(resp.bytes_stream()));
        while let Some(Ok(ev)) = events.next().await {
            let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
            let text = data["text"].as_str().unwrap_or_default();
            // Output that cannot be printed (a closed pipe) ends nothing:
            // the stream is still followed to its end.
            match ev.event.as_str() {
                "stdout" => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
                }
                "stderr" => {
                    let _ = std::io::stderr().lock().write_all(text.as_bytes());
                }
                "end" => {
                    return Ok(if data["state"] == "succeeded" {
                        Outcome::Success
                    } else {
                        Outcome::WorkflowUnsuccessful
                    });
                }
                _ => {}
            }
            if ev.id.is_some() {
                last_id = ev.id;
            }
        }
        failures += 1;
        tokio::time::sleep(backoff(failures)).await;
    }
}
