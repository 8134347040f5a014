//! The REST calls the bench makes to its dispatcher: create a
//! workflow with its tasks, poll a workflow until it ends, and read its
//! tasks' `finished_at` afterwards.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Deserialize;
use serde_json::{Value, json};

use super::POLL;

/// A workflow that made no progress for this long fails the bench.
const STALL: Duration = Duration::from_secs(120);

pub struct Client {
    http: reqwest::Client,
    base: String,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct WorkflowBody {
    state: String,
    task_counts: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct TaskList {
    tasks: Vec<TaskInfo>,
    next_marker: Option<String>,
}

/// What the bench reads back of a task.
#[derive(Debug, Deserialize)]
pub struct TaskInfo {
    pub name: String,
    pub state: String,
    /// When it started (a group: when it was opened).
    #[serde(default)]
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The result, for the outputs a chain with references passes on.
    #[serde(default)]
    pub result: Option<ResultInfo>,
}

/// What the bench reads of a result.
#[derive(Debug, Deserialize)]
pub struct ResultInfo {
    /// The outputs (a `std.echo` task's are its inputs).
    #[serde(default)]
    pub outputs: serde_json::Map<String, Value>,
}

impl TaskInfo {
    /// `finished_at` in microseconds since the epoch.
    ///
    /// # Errors
    /// The task has not finished, or the timestamp does not parse.
    pub fn finished_us(&self) -> anyhow::Result<i64> {
        micros(&self.name, "finished_at", self.finished_at.as_deref())
    }

    /// `started_at` in microseconds since the epoch.
    ///
    /// # Errors
    /// The task has not started, or the timestamp does not parse.
    pub fn started_us(&self) -> anyhow::Result<i64> {
        micros(&self.name, "started_at", self.started_at.as_deref())
    }
}

fn micros(task: &str, field: &str, at: Option<&str>) -> anyhow::Result<i64> {
    let at = at.with_context(|| format!("task {task} has no {field}"))?;
    Ok(chrono::DateTime::parse_from_rfc3339(at)
        .with_context(|| format!("{field} {at:?}"))?
        .timestamp_micros())
}

/// A `std.echo` task body whose input `v` is `input` and whose output `v`
/// (the echoed input) the next task may refer to.
pub fn echo(name: &str, server: &str, input: Value) -> Value {
    json!({"name": name, "server_id": server, "group": "std.echo",
           "inputs": {"v": input}, "outputs": ["v"]})
}

/// A `std.noop` task body.
pub fn noop(name: &str, server: &str, depends_on: &[String]) -> Value {
    if depends_on.is_empty() {
        json!({"name": name, "server_id": server, "group": "std.noop"})
    } else {
        json!({"name": name, "server_id": server, "group": "std.noop", "depends_on": depends_on})
    }
}

impl Client {
    /// A client of the API at `addr`, sending `token` as a bearer token.
    ///
    /// # Errors
    /// The token is not a valid header value, or the TLS backend fails to
    /// initialise.
    pub fn new(addr: SocketAddr, token: Option<&str>) -> anyhow::Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                .context("the bench's API token")?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        Ok(Self {
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()?,
            base: format!("http://{addr}"),
        })
    }

    /// Waits until `/readyz` answers 200 (store and broker reachable).
    ///
    /// # Errors
    /// Not ready within 30 s.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.http.get(format!("{}/readyz", self.base)).send().await;
            if r.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the dispatcher did not become ready within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `POST /v1/workflows` with `tasks`; returns the workflow id.
    ///
    /// # Errors
    /// The request fails or is refused.
    pub async fn create_workflow(&self, name: &str, tasks: Vec<Value>) -> anyhow::Result<String> {
        let r = self
            .http
            .post(format!("{}/v1/workflows", self.base))
            // Only the id is needed: not the views of every task.
            .header("prefer", "return=minimal")
            .json(&json!({"name": name, "tasks": tasks}))
            .send()
            .await
            .context("POST /v1/workflows")?;
        let status = r.status();
        let body = r.bytes().await?;
        anyhow::ensure!(
            status == reqwest::StatusCode::CREATED,
            "POST /v1/workflows: {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(500)])
        );
        let created: Created = serde_json::from_slice(&body)?;
        Ok(created.id)
    }

    /// A request with a JSON body that must succeed (registration, revocation).
    ///
    /// # Errors
    /// The request fails or is refused.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<()> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = r.status();
        if !status.is_success() {
            let body = r.text().await.unwrap_or_default();
            anyhow::bail!("{method} {path}: {status}: {body}");
        }
        Ok(())
    }

    /// Polls a workflow until it ended; it must have `succeeded`.
    ///
    /// # Errors
    /// Another end state, a request failure, or no progress for two minutes.
    pub async fn wait_succeeded(&self, id: &str) -> anyhow::Result<()> {
        let mut last = BTreeMap::new();
        let mut progress = Instant::now();
        loop {
            let w: WorkflowBody = self
                .http
                .get(format!("{}/v1/workflows/{id}", self.base))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            match w.state.as_str() {
                "succeeded" => return Ok(()),
                "running" | "empty" => {}
                other => anyhow::bail!("workflow {id} ended {other}: {:?}", w.task_counts),
            }
            if w.task_counts != last {
                last = w.task_counts;
                progress = Instant::now();
            }
            anyhow::ensure!(
                progress.elapsed() < STALL,
                "workflow {id} made no progress for {STALL:?}: {last:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Every task of a workflow, page after page.
    ///
    /// # Errors
    /// A request failure.
    pub async fn tasks(&self, id: &str) -> anyhow::Result<Vec<TaskInfo>> {
        let mut all = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            // A marker is a task id: nothing in it needs escaping.
            let after = marker.map(|m| format!("?marker={m}")).unwrap_or_default();
            let page: TaskList = self
                .http
                .get(format!("{}/v1/workflows/{id}/tasks{after}", self.base))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            all.extend(page.tasks);
            marker = page.next_marker;
            if marker.is_none() {
                return Ok(all);
            }
        }
    }
}
