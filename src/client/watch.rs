//! `bora workflow watch`: live progress from the workflow's event stream.
//!
//! The stream is read from its start, so folding its events gives the state
//! of every task without another request. The id of the last event applied
//! is kept; after a dropped connection the client reconnects with
//! `Last-Event-ID` and skips any id it already applied, so no event is lost
//! or counted twice. On a terminal an indicatif bar shows the tasks ended
//! out of all, the counts per state and the tasks running with their
//! servers; elsewhere (or with `--json`) each event is one line.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use reqwest::header::ACCEPT;
use serde_json::Value;

use super::http::{Client, ClientError, segment};
use super::sse::{SseEvent, sse_events};
use super::{Outcome, render};

/// Consecutive failed connection attempts before giving up.
pub(super) const MAX_FAILURES: u32 = 30;

struct TaskLine {
    name: String,
    server: String,
    state: String,
}

/// What `watch` knows, folded from the events.
#[derive(Default)]
struct Progress {
    tasks: BTreeMap<String, TaskLine>,
    last_id: Option<i64>,
    /// The workflow is paused (its `paused` and `resumed` events).
    paused: bool,
}

impl Progress {
    /// Applies an event unless its id was applied already; returns whether it was new.
    fn apply(&mut self, id: i64, data: &Value) -> bool {
        if self.last_id.is_some_and(|last| id <= last) {
            return false;
        }
        self.last_id = Some(id);
        if data["kind"] == "task"
            && let Some(task) = data["task_id"].as_str()
        {
            let line = self
                .tasks
                .entry(task.to_owned())
                .or_insert_with(|| TaskLine {
                    name: String::new(),
                    server: String::new(),
                    state: String::new(),
                });
            line.name = data["task_name"].as_str().unwrap_or(task).to_owned();
            // No server: an approval gate.
            line.server = data["server_id"].as_str().unwrap_or("").to_owned();
            line.state = data["state"].as_str().unwrap_or("?").to_owned();
        }
        if data["kind"] == "workflow" {
            match data["state"].as_str() {
                Some("paused") => self.paused = true,
                Some("resumed" | "cancelled") => self.paused = false,
                _ => {}
            }
        }
        true
    }

    fn counts(&self) -> BTreeMap<&str, u64> {
        let mut c = BTreeMap::new();
        for t in self.tasks.values() {
            *c.entry(t.state.as_str()).or_default() += 1;
        }
        c
    }

    fn ended(&self) -> u64 {
        self.tasks
            .values()
            .filter(|t| {
                matches!(
                    t.state.as_str(),
                    "succeeded" | "failed" | "timed_out" | "cancelled" | "skipped"
                )
            })
            .count() as u64
    }

    /// The children of the task named `group` (named `group[server]`).
    fn children_of<'a>(&'a self, group: &'a str) -> impl Iterator<Item = &'a TaskLine> {
        self.tasks.values().filter(move |t| is_child(t, group))
    }

    /// Whether `t` is a child of some serverless task here (a group).
    fn is_a_child(&self, t: &TaskLine) -> bool {
        self.tasks
            .values()
            .any(|g| g.server.is_empty() && is_child(t, &g.name))
    }

    /// What runs (each group as one line of its children's progress),
    /// which approvals wait for a decision, and whether the workflow is
    /// paused.
    fn running(&self) -> String {
        let mut parts = Vec::new();
        if self.paused {
            parts.push("PAUSED (bora workflow resume)".to_owned());
        }
        let mut running = Vec::new();
        let mut gates = Vec::new();
        for t in self.tasks.values().filter(|t| t.state == "running") {
            if !t.server.is_empty() {
                if !self.is_a_child(t) {
                    running.push(format!("{} on {}", t.name, t.server));
                }
                continue;
            }
            let children: Vec<serde_json::Value> = self
                .children_of(&t.name)
                .map(|c| serde_json::json!({"state": c.state}))
                .collect();
            if children.is_empty() {
                gates.push(t.name.clone());
            } else {
                parts.push(format!(
                    "{} {}",
                    t.name,
                    super::graph::group_progress(&children)
                ));
            }
        }
        if !running.is_empty() {
            parts.insert(
                usize::from(self.paused),
                format!("running: {}", running.join(", ")),
            );
        }
        if !gates.is_empty() {
            parts.push(format!("awaiting approval: {}", gates.join(", ")));
        }
        parts.join("; ")
    }
}

/// Whether `t` is named `<group>[<its server>]`.
fn is_child(t: &TaskLine, group: &str) -> bool {
    !t.server.is_empty()
        && t.name
            .strip_prefix(group)
            .and_then(|rest| rest.strip_prefix('['))
            .and_then(|rest| rest.strip_suffix(']'))
            == Some(t.server.as_str())
}

/// The bars, or nothing when stderr is not a terminal or `--json` was given.
struct Display {
    multi: MultiProgress,
    bar: ProgressBar,
    running: ProgressBar,
    json: bool,
}

impl Display {
    fn new(name: &str, json: bool) -> Self {
        let target = if json {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let multi = MultiProgress::with_draw_target(target);
        let bar = multi.add(ProgressBar::new(0));
        let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} ended  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(name.to_owned());
        let running = multi.add(ProgressBar::new(0));
        running.set_style(
            ProgressStyle::with_template("  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self {
            multi,
            bar,
            running,
            json,
        }
    }

    fn event(&self, p: &Progress, data: &Value) {
        if self.json {
            println!("{data}");
        } else {
            let line = match (data["kind"].as_str(), data["server_id"].as_str()) {
                (Some("task"), Some(server)) => format!(
                    "{}  task {} on {server}: {} (attempt {})",
                    data["at"].as_str().unwrap_or(""),
                    data["task_name"].as_str().unwrap_or("?"),
                    data["state"].as_str().unwrap_or("?"),
                    data["attempt"]
                ),
                (Some("task"), None) => format!(
                    "{}  approval {}: {}",
                    data["at"].as_str().unwrap_or(""),
                    data["task_name"].as_str().unwrap_or("?"),
                    match data["state"].as_str() {
                        Some("running") => "waits for a decision",
                        Some(other) => other,
                        None => "?",
                    }
                ),
                _ => format!(
                    "{}  workflow {}",
                    data["at"].as_str().unwrap_or(""),
                    data["state"].as_str().unwrap_or("?")
                ),
            };
            if self.multi.is_hidden() {
                println!("{line}");
            } else {
                let _ = self.multi.println(line);
            }
        }
        let counts: Vec<String> = p.counts().iter().map(|(k, n)| format!("{k}={n}")).collect();
        self.bar.set_length(p.tasks.len() as u64);
        self.bar.set_position(p.ended());
        self.bar.set_message(counts.join(" "));
        self.running.set_message(p.running());
    }

    fn finish(&self) {
        self.bar.finish();
        self.running.finish_and_clear();
    }
}

/// Follows a workflow until it ends.
///
/// # Errors
/// The workflow does not exist, or the server stayed unreachable.
pub async fn watch(client: &Client, wf: &str, json: bool) -> Result<Outcome, ClientError> {
    let path = format!("/v1/workflows/{}", segment(wf));
    let workflow = client.get(&path).await?;
    let name = workflow["name"].as_str().unwrap_or(wf).to_owned();
    let events_path = format!("{path}/events");
    let display = Display::new(&name, json);
    let mut progress = Progress {
        paused: workflow["paused"] == true,
        ..Progress::default()
    };
    let mut failures = 0u32;
    loop {
        let mut req = client
            .request(Method::GET, &events_path)
            .header(ACCEPT, "text/event-stream");
        if let Some(id) = progress.last_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = match client.send(req, &events_path).await {
            Ok(r) => r,
            Err(e @ ClientError::Transport { .. }) => {
                failures += 1;
                if failures >= MAX_FAILURES {
                    display.finish();
                    return Err(e);
                }
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
            Err(e)
                if e.status() == Some(reqwest::StatusCode::NOT_FOUND)
                    && progress.last_id.is_some() =>
            {
                display.finish();
                return Ok(finish(&display, &name, &progress, "deleted", None));
            }
            Err(e) => {
                display.finish();
                return Err(e);
            }
        };
        failures = 0;
        let mut events = std::pin::pin!(sse_events(resp.bytes_stream()));
        // Until the stream closes without an `end`, or breaks: then resume
        // after the last id.
        while let Some(Ok(ev)) = events.next().await {
            if let Some(outcome) = handle(&display, &name, &mut progress, ev) {
                return Ok(outcome);
            }
        }
        failures += 1;
        tokio::time::sleep(backoff(failures)).await;
    }
}

pub(super) fn backoff(failures: u32) -> Duration {
    Duration::from_millis((100u64 << failures.min(6)).min(5_000))
}

/// Applies one event; `Some` when the stream said the workflow ended.
fn handle(display: &Display, name: &str, p: &mut Progress, ev: SseEvent) -> Option<Outcome> {
    let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
    if ev.event == "end" {
        let state = data["state"].as_str().unwrap_or("unknown").to_owned();
        return Some(finish(display, name, p, &state, Some(&data)));
    }
    let id = ev.id.as_deref().and_then(|i| i.parse::<i64>().ok())?;
    if p.apply(id, &data) {
        display.event(p, &data);
    }
    None
}

fn finish(
    display: &Display,
    name: &str,
    p: &Progress,
    state: &str,
    end: Option<&Value>,
) -> Outcome {
    display.finish();
    if display.json {
        match end {
            Some(e) => println!("{e}"),
            None => println!("{}", serde_json::json!({"state": state})),
        }
    } else {
        let counts: serde_json::Map<String, Value> = p
            .counts()
            .into_iter()
            .map(|(k, n)| (k.to_owned(), Value::from(n)))
            .collect();
        println!(
            "workflow {name} {state}: {}",
            render::counts_line(&Value::Object(counts))
        );
    }
    if state == "succeeded" {
        Outcome::Success
    } else {
        Outcome::WorkflowUnsuccessful
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_apply_once_and_fold_into_counts() {
        let mut p = Progress::default();
        let ev = |state: &str| json!({"kind": "task", "task_id": "t1", "task_name": "a", "server_id": "s", "state": state});
        assert!(p.apply(1, &ev("waiting")));
        assert!(p.apply(2, &ev("running")));
        assert!(!p.apply(2, &ev("succeeded")), "a repeated id is skipped");
        assert!(!p.apply(1, &ev("failed")));
        assert_eq!(p.counts().get("running"), Some(&1));
        assert_eq!(p.running(), "running: a on s");
        assert!(p.apply(3, &ev("succeeded")));
        assert_eq!(p.ended(), 1);
    }

    #[test]
    fn a_pause_and_a_waiting_approval_are_said() {
        let mut p = Progress::default();
        let gate = json!({"kind": "task", "task_id": "g", "task_name": "go", "server_id": null, "state": "running"});
        p.apply(1, &gate);
        p.apply(2, &json!({"kind": "workflow", "state": "paused"}));
        assert_eq!(
            p.running(),
            "PAUSED (bora workflow resume); awaiting approval: go"
        );
        p.apply(3, &json!({"kind": "workflow", "state": "resumed"}));
        assert_eq!(p.running(), "awaiting approval: go");
    }

    #[test]
    fn a_group_is_one_line_of_its_childrens_progress() {
        let mut p = Progress::default();
        let task = |id: &str, name: &str, server: Value, state: &str| json!({"kind": "task", "task_id": id, "task_name": name, "server_id": server, "state": state});
        p.apply(1, &task("g", "web-rollout", Value::Null, "running"));
        for (i, (s, st)) in [
            ("a", "succeeded"),
            ("b", "succeeded"),
            ("c", "succeeded"),
            ("d", "running"),
            ("e", "waiting"),
        ]
        .iter()
        .enumerate()
        {
            p.apply(
                2 + i as i64,
                &task(s, &format!("web-rollout[{s}]"), json!(s), st),
            );
        }
        p.apply(9, &task("x", "other", json!("z"), "running"));
        assert_eq!(
            p.running(),
            "running: other on z; web-rollout 3/5 succeeded, 1 running, 1 waiting"
        );
    }
}
