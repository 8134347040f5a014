//! Real processes for fault tests: `bora serve` restarted on the same SQLite
//! file and port, `bora worker` processes, the management API to close
//! broker connections, and an HTTP client that tolerates a dispatcher that
//! is down (the tests poll straight through kills and restarts).

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::harness::{EventOut, MGMT, TaskListOut, TaskOut, TestStore, WorkflowOut, parse};

pub const BORA: &str = env!("CARGO_BIN_EXE_bora");

/// A port the OS chose, free again once this returns (bora binds it next;
/// its listener sets `SO_REUSEADDR`, so restarts get the same port back).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// Appends a process's stderr to `path`, so a failing test can be read.
fn log_to(path: &Path) -> Stdio {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log file");
    Stdio::from(file)
}

fn signal(child: &Child, sig: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: a signal to our own child process.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
}

/// `bora serve` as its own process; the same database file, port and
/// settings across restarts.
pub struct Serve {
    child: Option<Child>,
    pub port: u16,
    pub base: String,
    /// The database, shared by every dispatcher started on it.
    pub store: std::sync::Arc<TestStore>,
    pub log: PathBuf,
    dir: PathBuf,
    env: Vec<(String, String)>,
    /// How many times the process was started.
    pub starts: u32,
}

impl Serve {
    /// Starts `bora serve` with its database in `dir` and waits until ready.
    pub async fn start(dir: &Path, amqp_url: &str, extra: &[(&str, &str)]) -> Self {
        let serve = Self::start_alive(dir, amqp_url, extra).await;
        serve.wait_ready().await;
        serve
    }

    /// Starts `bora serve` and waits only until it answers `/healthz` (the
    /// broker may be unreachable).
    pub async fn start_alive(dir: &Path, amqp_url: &str, extra: &[(&str, &str)]) -> Self {
        let store = std::sync::Arc::new(TestStore::create(dir).await);
        Self::start_alive_on(dir, amqp_url, store, extra).await
    }

    /// Starts `bora serve` on an existing database (several dispatchers on
    /// one PostgreSQL) and waits until ready. Its log is `dir/serve.log`.
    pub async fn start_on(
        dir: &Path,
        amqp_url: &str,
        store: std::sync::Arc<TestStore>,
        extra: &[(&str, &str)],
    ) -> Self {
        let serve = Self::start_alive_on(dir, amqp_url, store, extra).await;
        serve.wait_ready().await;
        serve
    }

    async fn start_alive_on(
        dir: &Path,
        amqp_url: &str,
        store: std::sync::Arc<TestStore>,
        extra: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let mut env: Vec<(String, String)> = vec![
            ("BORA__API__LISTEN".into(), format!("127.0.0.1:{port}")),
            ("BORA__AMQP__URL".into(), amqp_url.into()),
            ("BORA__DISPATCH__RELAY_INTERVAL_MS".into(), "200".into()),
            ("BORA__WORKER__HEARTBEAT_S".into(), "1".into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        env.extend(store.env());
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut serve = Self {
            child: None,
            port,
            base: format!("http://127.0.0.1:{port}"),
            store,
            log: dir.join("serve.log"),
            dir: dir.to_owned(),
            env,
            starts: 0,
        };
        serve.spawn();
        let t0 = Instant::now();
        let http = reqwest::Client::new();
        while !http
            .get(format!("{}/healthz", serve.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "bora serve did not answer within 30 s (log: {})",
                serve.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        serve
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "bora serve is already running");
        let mut cmd = Command::new(BORA);
        cmd.arg("serve")
            .env_remove("BORA_CONFIG")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log_to(&self.log))
            .stderr(log_to(&self.log))
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn bora serve"));
        self.starts += 1;
    }

    /// Waits until `/readyz` says 200; returns how long that took.
    pub async fn wait_ready(&self) -> Duration {
        let t0 = Instant::now();
        let http = reqwest::Client::new();
        loop {
            let r = http.get(format!("{}/readyz", self.base)).send().await;
            if r.is_ok_and(|r| r.status().is_success()) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "bora serve not ready within 30 s (log: {})",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("bora serve is running")
    }

    /// Whether the process is still alive (has not exited).
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `kill -9`, and reap it.
    pub async fn kill9(&mut self) {
        let mut child = self.child.take().expect("bora serve is running");
        signal(&child, libc::SIGKILL);
        let _ = child.wait().await;
    }

    /// SIGTERM; returns the exit code and how long the exit took. Panics if
    /// it does not exit within 20 s (a hung shutdown).
    pub async fn sigterm(&mut self) -> (i32, Duration) {
        let mut child = self.child.take().expect("bora serve is running");
        let t0 = Instant::now();
        signal(&child, libc::SIGTERM);
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "bora serve still running 20 s after SIGTERM (log: {})",
                    self.log.display()
                )
            })
            .expect("wait for bora serve");
        (status.code().unwrap_or(-1), t0.elapsed())
    }

    /// Starts it again (same file, same port) and waits until ready;
    /// returns how long readiness took.
    pub async fn restart(&mut self) -> Duration {
        self.spawn();
        self.wait_ready().await
    }
}

/// A `bora worker` process.
pub struct WorkerProc {
    child: Child,
    pub server: String,
    pub log: PathBuf,
}

impl WorkerProc {
    /// Starts a worker for `server`, its state and logs under `dir`.
    pub fn start(dir: &Path, amqp_url: &str, server: &str, extra: &[(&str, &str)]) -> Self {
        let home = dir.join(format!("worker-{server}"));
        std::fs::create_dir_all(&home).expect("worker dir");
        let log = home.join("worker.log");
        let mut cmd = Command::new(BORA);
        cmd.args(["worker", "--server-id", server])
            .env_remove("BORA_CONFIG")
            .env("BORA__AMQP__URL", amqp_url)
            .env("BORA__WORKER__STATE_DIR", home.join("state"))
            .env("BORA__WORKER__HOOKS_DIR", home.join("hooks"))
            .env("BORA__WORKER__HEARTBEAT_S", "1")
            .env("RUST_LOG", "info")
            .current_dir(&home)
            .stdin(Stdio::null())
            .stdout(log_to(&log))
            .stderr(log_to(&log))
            .kill_on_drop(true);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().expect("spawn bora worker"),
            server: server.to_owned(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("worker is running")
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub async fn kill9(&mut self) {
        signal(&self.child, libc::SIGKILL);
        let _ = self.child.wait().await;
    }
}

/// The REST API of a dispatcher that may be down at any moment: every call
/// returns `None` instead of failing when it cannot get an answer.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
        }
    }

    pub async fn get(&self, path: &str) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// A workflow, or `None` while the dispatcher does not answer.
    pub async fn workflow(&self, wf: &str) -> Option<WorkflowOut> {
        let v = self.get(&format!("/v1/workflows/{wf}")).await?;
        Some(parse("workflow", v))
    }

    /// A task, or `None` while the dispatcher does not answer.
    pub async fn task(&self, wf: &str, task: &str) -> Option<TaskOut> {
        let v = self
            .get(&format!("/v1/workflows/{wf}/tasks/{task}"))
            .await?;
        Some(parse("task", v))
    }

    /// Creates a workflow (only called while the dispatcher is up).
    pub async fn create_workflow(&self, body: Value) -> WorkflowOut {
        parse("created workflow", self.post("/v1/workflows", body).await)
    }

    /// POSTs and asserts success (only called while the dispatcher is up).
    pub async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("POST reaches the dispatcher");
        let status = r.status();
        let v: Value = r.json().await.expect("JSON body");
        assert!(status.is_success(), "POST {path}: {status} {v}");
        v
    }

    /// DELETEs, ignoring the answer (cleanup).
    pub async fn delete(&self, path: &str) {
        let _ = self
            .http
            .delete(format!("{}{path}", self.base))
            .send()
            .await;
    }

    /// Polls until the workflow ends (or `limit` passes, which fails the
    /// test), through dispatcher outages.
    pub async fn wait_workflow_end(&self, wf: &str, limit: Duration) -> WorkflowOut {
        let t0 = Instant::now();
        let mut last = None;
        loop {
            if let Some(w) = self.workflow(wf).await {
                if w.is_ended() {
                    return w;
                }
                last = Some(w);
            }
            assert!(
                t0.elapsed() < limit,
                "workflow {wf} did not end within {limit:?}: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls until a task is in `state`.
    pub async fn wait_task_state(&self, wf: &str, task: &str, state: &str) -> TaskOut {
        let t0 = Instant::now();
        let mut last = None;
        loop {
            if let Some(t) = self.task(wf, task).await {
                if t.state == state {
                    return t;
                }
                last = Some(t);
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "task {task} never reached {state}: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every task of a workflow, page after page.
    pub async fn tasks(&self, wf: &str) -> Vec<TaskOut> {
        let mut all = Vec::new();
        let mut path = format!("/v1/workflows/{wf}/tasks");
        loop {
            let v = self.get(&path).await.expect("task list");
            let page = parse::<TaskListOut>("task list", v);
            all.extend(page.tasks);
            let Some(m) = page.next_marker else {
                return all;
            };
            path = format!("/v1/workflows/{wf}/tasks?marker={m}");
        }
    }

    /// The whole event stream of an ended workflow (it closes after `end`).
    pub async fn events(&self, wf: &str) -> Vec<EventOut> {
        let text = self
            .http
            .get(format!("{}/v1/workflows/{wf}/events", self.base))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("event stream")
            .text()
            .await
            .expect("the stream of an ended workflow closes");
        parse_sse(&text)
    }

    /// The Prometheus exposition as `series -> value` (e.g.
    /// `bora_results_rejected_total{reason="malformed"}`).
    pub async fn metrics(&self) -> Option<HashMap<String, f64>> {
        let r = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .ok()?;
        let text = r.text().await.ok()?;
        Some(parse_metrics(&text))
    }

    pub async fn ready(&self) -> Option<u16> {
        self.http
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }
}

/// `task`/`workflow` events of an SSE body (the closing `end` event is left out).
pub fn parse_sse(text: &str) -> Vec<EventOut> {
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let mut kind = "";
        let mut data = String::new();
        for line in block.lines() {
            if let Some(k) = line.strip_prefix("event:") {
                kind = k.trim();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.trim_start());
            }
        }
        if (kind == "task" || kind == "workflow") && !data.is_empty() {
            let data: Value = serde_json::from_str(&data).expect("event data is JSON");
            events.push(parse("event data", data));
        }
    }
    events
}

pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of every series of `name` whose labels contain `filter`.
pub fn metric_sum(m: &HashMap<String, f64>, name: &str, filter: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            (k.as_str() == name || k.starts_with(&format!("{name}{{"))) && k.contains(filter)
        })
        .map(|(_, v)| v)
        .sum()
}

fn mgmt_path(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Names of the client connections open in a vhost.
pub async fn connections(vhost: &str) -> Vec<String> {
    connections_by_client(vhost)
        .await
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// The client connections open in a vhost: (name, the client's own name for it).
pub async fn connections_by_client(vhost: &str) -> Vec<(String, String)> {
    let list: Vec<Value> = reqwest::Client::new()
        .get(format!(
            "{MGMT}/api/vhosts/{}/connections",
            mgmt_path(vhost)
        ))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("management API")
        .json()
        .await
        .expect("connection list");
    list.iter()
        .filter_map(|c| {
            let name = c["name"].as_str()?.to_owned();
            let client = c["client_properties"]["connection_name"]
                .as_str()
                .unwrap_or("?")
                .to_owned();
            Some((name, client))
        })
        .collect()
}

/// Closes every connection of a vhost (as a broker restart or a network cut
/// would) that was not closed before: waits until at least `expect` new
/// ones are listed (the management API lists a connection a moment after it
/// opened) or 10 s passed. Returns how many were closed and the wait.
pub async fn close_all_connections(
    vhost: &str,
    closed_before: &mut HashSet<String>,
    expect: usize,
) -> (usize, Duration) {
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    let fresh = loop {
        let fresh: Vec<String> = connections(vhost)
            .await
            .into_iter()
            .filter(|n| !closed_before.contains(n))
            .collect();
        if fresh.len() >= expect || t0.elapsed() > Duration::from_secs(10) {
            break fresh;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let waited = t0.elapsed();
    let mut closed = 0;
    for name in fresh {
        let r = http
            .delete(format!("{MGMT}/api/connections/{}", mgmt_path(&name)))
            .basic_auth("guest", Some("guest"))
            .header("X-Reason", "fault test: connection closed")
            .send()
            .await
            .expect("management API");
        // 404: it went away between the list and the delete.
        if r.status().is_success() {
            closed += 1;
        }
        closed_before.insert(name);
    }
    (closed, waited)
}

/// Publishes raw bytes to the reply exchange as a worker would (poison tests).
pub async fn publish_reply(amqp_url: &str, body: &[u8]) {
    use lapin::options::BasicPublishOptions;
    let conn = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(Default::default())
        .await
        .expect("confirms");
    let confirm = ch
        .basic_publish(
            "reply_bora".into(),
            "reply_bora".into(),
            BasicPublishOptions::default(),
            body,
            lapin::BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_user_id("guest".into()),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "the broker refused the poison message");
    let _ = conn.close(200, "bye".into()).await;
}

/// A workflow of `chains` chains of `length` script tasks, chain `c`'s task
/// `k` named `c{c}-{k}`, on server `s{(c + k) % servers}`, each appending
/// its step to `runs/c{c}.log` and sleeping `sleep_s`: the files count and
/// order *executions*, which the API cannot see.
pub fn chains_workflow(
    runs: &Path,
    chains: usize,
    length: usize,
    servers: usize,
    sleep_s: f64,
) -> Value {
    std::fs::create_dir_all(runs).expect("runs dir");
    let mut tasks = Vec::new();
    for c in 0..chains {
        let file = runs.join(format!("c{c}.log"));
        for k in 0..length {
            let mut t = json!({
                "name": format!("c{c}-{k}"),
                "server_id": format!("s{}", (c + k) % servers),
                "config": format!("#!/bin/sh\necho {k} >> {}\nsleep {sleep_s}\n", file.display()),
            });
            if k > 0 {
                t["depends_on"] = json!([format!("c{c}-{}", k - 1)]);
            }
            tasks.push(t);
        }
    }
    json!({"name": "faults", "tasks": tasks})
}

/// What the run files say: executions per (chain, step), and the chains
/// whose steps ran out of order.
pub struct Executions {
    pub counts: HashMap<(usize, usize), usize>,
    pub out_of_order: Vec<usize>,
}

impl Executions {
    pub fn read(runs: &Path, chains: usize) -> Self {
        let mut counts = HashMap::new();
        let mut out_of_order = Vec::new();
        for c in 0..chains {
            let text = std::fs::read_to_string(runs.join(format!("c{c}.log"))).unwrap_or_default();
            let steps: Vec<usize> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
            // A step never starts again once a later one has started.
            if steps.windows(2).any(|w| w[1] < w[0]) {
                out_of_order.push(c);
            }
            for s in steps {
                *counts.entry((c, s)).or_insert(0) += 1;
            }
        }
        Self {
            counts,
            out_of_order,
        }
    }

    /// Steps that ran more than once.
    pub fn repeated(&self) -> usize {
        self.counts.values().filter(|&&n| n > 1).count()
    }
}

/// A script that appends `start NAME` to `log` as it begins and `end NAME`
/// as it ends, with `body` between. Every task of a test shares one log:
/// lines appended by concurrent processes (`O_APPEND`, one short write each)
/// never interleave, so the file's order is the order in which things ran.
pub fn logged_script(log: &Path, name: &str, body: &str) -> String {
    format!(
        "#!/bin/sh\necho \"start {name}\" >> {log}\n{body}\necho \"end {name}\" >> {log}\n",
        log = log.display()
    )
}

/// What a shared run log (see [`logged_script`]) says: where each task's
/// `start` and `end` lines are.
pub struct RunLog {
    pub starts: HashMap<String, Vec<usize>>,
    pub ends: HashMap<String, Vec<usize>>,
    pub lines: usize,
}

impl RunLog {
    pub fn read(log: &Path) -> Self {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let mut starts: HashMap<String, Vec<usize>> = HashMap::new();
        let mut ends: HashMap<String, Vec<usize>> = HashMap::new();
        let mut lines = 0;
        for (i, line) in text.lines().enumerate() {
            lines += 1;
            if let Some(name) = line.strip_prefix("start ") {
                starts.entry(name.to_owned()).or_default().push(i);
            } else if let Some(name) = line.strip_prefix("end ") {
                ends.entry(name.to_owned()).or_default().push(i);
            } else {
                panic!("line {i} of {} is torn: {line:?}", log.display());
            }
        }
        Self {
            starts,
            ends,
            lines,
        }
    }

    /// How many times `name`'s script started.
    pub fn runs(&self, name: &str) -> usize {
        self.starts.get(name).map_or(0, Vec::len)
    }

    /// `(task, dependency)` pairs where the task's script started before
    /// the dependency's script ended (`deps`: task -> its dependencies).
    pub fn out_of_order(&self, deps: &HashMap<String, Vec<String>>) -> Vec<(String, String)> {
        let mut bad = Vec::new();
        for (task, ds) in deps {
            let Some(&start) = self.starts.get(task).and_then(|s| s.first()) else {
                continue;
            };
            for d in ds {
                let ended = self.ends.get(d).and_then(|e| e.first()).copied();
                if ended.is_none_or(|e| e > start) {
                    bad.push((task.clone(), d.clone()));
                }
            }
        }
        bad.sort();
        bad
    }
}

/// What a workflow's event log says about each task.
pub struct EventLog {
    /// Terminal states each task entered, in log order.
    pub terminal: HashMap<String, Vec<String>>,
    /// `(task, dependency)` pairs where the task left `waiting` (its first
    /// `queued` or `running` event) before the dependency's `succeeded`.
    pub out_of_order: Vec<(String, String)>,
    /// Every event's state per task, in log order.
    pub states: HashMap<String, Vec<String>>,
    /// Event ids strictly increase (the stream's order is the log's).
    pub ids_increase: bool,
}

impl EventLog {
    pub fn new(events: &[EventOut], deps: &HashMap<String, Vec<String>>) -> Self {
        let mut terminal: HashMap<String, Vec<String>> = HashMap::new();
        let mut states: HashMap<String, Vec<String>> = HashMap::new();
        let mut left_waiting: HashMap<String, usize> = HashMap::new();
        let mut succeeded: HashMap<String, usize> = HashMap::new();
        for (i, e) in events.iter().enumerate() {
            let name = e.task().to_owned();
            let state = e.state.clone();
            match state.as_str() {
                "queued" | "running" => {
                    left_waiting.entry(name.clone()).or_insert(i);
                }
                "succeeded" => {
                    succeeded.entry(name.clone()).or_insert(i);
                }
                _ => {}
            }
            if matches!(
                state.as_str(),
                "succeeded" | "failed" | "timed_out" | "cancelled" | "skipped"
            ) {
                terminal
                    .entry(name.clone())
                    .or_default()
                    .push(state.clone());
            }
            states.entry(name).or_default().push(state);
        }
        let mut out_of_order = Vec::new();
        for (task, ds) in deps {
            let Some(&left) = left_waiting.get(task) else {
                continue;
            };
            for d in ds {
                if succeeded.get(d).is_none_or(|&s| s > left) {
                    out_of_order.push((task.clone(), d.clone()));
                }
            }
        }
        out_of_order.sort();
        Self {
            terminal,
            out_of_order,
            states,
            ids_increase: events.windows(2).all(|w| w[0].id < w[1].id),
        }
    }
}

/// The counter `name` of a dispatcher (0 if it does not answer).
pub async fn counter(api: &Api, name: &str) -> f64 {
    api.metrics()
        .await
        .map_or(0.0, |m| metric_sum(&m, name, ""))
}

/// How many times a worker's log says it dropped a duplicate delivery.
pub fn duplicates_dropped(worker: &WorkerProc) -> usize {
    std::fs::read_to_string(&worker.log)
        .unwrap_or_default()
        .matches("duplicate delivery dropped")
        .count()
}
