//! Running the real `bora` binary: client verbs against a test app, and
//! `bora serve` as its own process (for JSON logs and schemathesis).

#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{TestApp, TestStore, Vhost};

pub const BORA: &str = env!("CARGO_BIN_EXE_bora");

/// What a finished command left.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

/// A client command for `app` (no token, no config from the environment).
pub fn client(app: &TestApp, args: &[&str]) -> Command {
    let mut cmd = Command::new(BORA);
    cmd.args(args)
        .env("BORA_URL", &app.base)
        .env_remove("BORA_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs a client command to its end (at most 60 s).
pub async fn bora(app: &TestApp, args: &[&str]) -> Out {
    finish(client(app, args).spawn().expect("spawn bora")).await
}

pub async fn finish(child: Child) -> Out {
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("bora did not finish within 60 s")
        .expect("bora output");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `bora serve --log-format json` as its own process, on a port the OS
/// chose, with a fresh SQLite file and vhost.
pub struct ServeProcess {
    pub child: Child,
    pub base: String,
    /// Log lines read until it started (JSON objects).
    pub lines: Vec<Value>,
    /// Log lines read since (JSON objects), as they come.
    pub later: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    pub vhost: Vhost,
    /// Its database (an SQLite one is `bora.db` in `dir`).
    pub store: TestStore,
    pub dir: tempfile::TempDir,
}

impl ServeProcess {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts it with extra environment variables (they win).
    pub async fn start_with(extra: &[(&str, &str)]) -> Self {
        let vhost = Vhost::create().await;
        let dir = tempfile::tempdir().unwrap();
        let store = TestStore::create(dir.path()).await;
        let mut child = Command::new(BORA)
            .args(["serve", "--log-format", "json"])
            .env("BORA__API__LISTEN", "127.0.0.1:0")
            .envs(store.env())
            .env("BORA__AMQP__URL", vhost.amqp_url())
            .env("RUST_LOG", "info")
            .envs(extra.iter().copied())
            .env_remove("BORA_CONFIG")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn bora serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut reader = BufReader::new(stderr).lines();
        let mut lines = Vec::new();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = reader.next_line().await.expect("read log") {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
                let started = v["message"] == "bora serve started";
                let addr = v["addr"].as_str().map(str::to_owned);
                lines.push(v);
                if started {
                    return addr.expect("the start line names the address");
                }
            }
            panic!("bora serve exited before it started: {lines:?}");
        })
        .await
        .expect("bora serve did not start within 30 s");
        // Keep draining the pipe so the server never blocks on a full one,
        // and keep the lines for the tests that look at them.
        let later = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = later.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        let base = format!("http://{addr}");
        let http = reqwest::Client::new();
        for _ in 0..400 {
            if http
                .get(format!("{base}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            base,
            lines,
            later,
            vhost,
            store,
            dir,
        }
    }

    /// SIGTERM, then wait for a clean exit; the exit code, with the store
    /// and the directory kept for a look after the stop.
    pub async fn stop_keeping(self) -> (i32, TestStore, tempfile::TempDir) {
        let Self {
            child, store, dir, ..
        } = self;
        (stop_child(child).await, store, dir)
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn stop(self) -> i32 {
        stop_child(self.child).await
    }
}

/// SIGTERM to `bora serve`, then wait for a clean exit.
async fn stop_child(mut child: Child) -> i32 {
    if let Some(pid) = child.id() {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("bora serve did not stop within 30 s after SIGTERM")
        .expect("wait");
    status.code().unwrap_or(-1)
}

/// Writes `text` to a file in `dir` and returns its path as a string.
pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A real `bora worker` process for one server of a test app, killed when
/// dropped (for tests where a script must really run).
pub struct WorkerProcess {
    _child: Child,
    _dir: tempfile::TempDir,
}

impl WorkerProcess {
    pub fn start(app: &TestApp, server: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(BORA)
            .args(["worker", "--server-id", server])
            .env_remove("BORA_CONFIG")
            .env("BORA__AMQP__URL", app.vhost.amqp_url())
            .env("BORA__WORKER__STATE_DIR", dir.path().join("state"))
            .env("BORA__WORKER__HOOKS_DIR", dir.path().join("hooks"))
            .env("BORA__WORKER__HEARTBEAT_S", "1")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn bora worker");
        Self {
            _child: child,
            _dir: dir,
        }
    }
}
