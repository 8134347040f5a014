//! Secrets (SPEC 7.4) end to end, on the store this run selected: a real
//! `bora serve` and two real `bora worker` processes run a workflow whose
//! scripts echo their secrets; then every place bora writes to is searched
//! for the plain values. They may be only in what the child processes got
//! (which the scripts prove by printing the values' digests).

use std::process::Stdio;
use std::time::{Duration, Instant};

use bora::protocol::sha256_hex;
use futures_util::StreamExt;
use lapin::options::BasicGetOptions;
use serde_json::{Value, json};

use crate::helpers::TestStore;
use crate::helpers::mgmt::mgmt_get;
use crate::process::*;

/// A `bora worker` whose log (JSON lines, bora at debug) goes to a file.
struct LoggedWorker {
    _child: tokio::process::Child,
    log: std::path::PathBuf,
}

fn logged_worker(serve: &ServeProcess, server: &str, dir: &std::path::Path) -> LoggedWorker {
    let home = dir.join(server);
    std::fs::create_dir_all(&home).unwrap();
    let log = home.join("worker.log");
    let child = tokio::process::Command::new(BORA)
        .args(["worker", "--server-id", server, "--log-format", "json"])
        .env_remove("BORA_CONFIG")
        .env("BORA__AMQP__URL", serve.vhost.amqp_url())
        .env("BORA__WORKER__STATE_DIR", home.join("state"))
        .env("BORA__WORKER__HOOKS_DIR", home.join("hooks"))
        .env("BORA__WORKER__HEARTBEAT_S", "1")
        .env("RUST_LOG", "info,bora=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            std::fs::File::create(home.join("worker.out")).unwrap(),
        ))
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn bora worker");
    LoggedWorker { _child: child, log }
}

/// Every text one place holds, by where it came from.
#[derive(Default)]
struct Haystacks(Vec<(String, String)>);

impl Haystacks {
    fn add(&mut self, place: impl Into<String>, text: impl Into<String>) {
        self.0.push((place.into(), text.into()));
    }

    fn add_bytes(&mut self, place: impl Into<String>, bytes: &[u8]) {
        self.add(place, String::from_utf8_lossy(bytes).into_owned());
    }

    /// A control: the search does find what is there.
    #[track_caller]
    fn assert_somewhere(&self, needle: &str) {
        assert!(
            self.0.iter().any(|(_, text)| text.contains(needle)),
            "{needle} is nowhere"
        );
    }

    #[track_caller]
    fn assert_nowhere(&self, what: &str, needle: &str) {
        for (place, text) in &self.0 {
            assert!(
                !text.contains(needle),
                "the plain {what} is in {place}: …{}…",
                around(text, needle)
            );
        }
    }
}

fn around(text: &str, needle: &str) -> String {
    let i = text.find(needle).unwrap_or(0);
    let from = text[..i].char_indices().rev().nth(80).map_or(0, |(j, _)| j);
    text[from..].chars().take(200).collect()
}

async fn get(http: &reqwest::Client, base: &str, path: &str, seen: &mut Haystacks) -> Value {
    let r = http.get(format!("{base}{path}")).send().await.unwrap();
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    let text = r.text().await.unwrap();
    seen.add(format!("GET {path}"), text.clone());
    serde_json::from_str(&text).unwrap()
}

/// A client verb of the real binary against `serve`.
async fn cli(serve: &ServeProcess, args: &[&str], seen: &mut Haystacks) -> String {
    let child = tokio::process::Command::new(BORA)
        .args(args)
        .env("BORA_URL", &serve.base)
        .env_remove("BORA_TOKEN")
        .env_remove("BORA_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = finish(child).await;
    seen.add(
        format!("bora {} (stderr)", args.join(" ")),
        out.stderr.clone(),
    );
    seen.add(format!("bora {}", args.join(" ")), out.ok().to_owned());
    out.stdout
}

/// Every message left in every queue of the vhost, taken off.
async fn drain_queues(serve: &ServeProcess, seen: &mut Haystacks) -> usize {
    let vhost = &serve.vhost.name;
    let queues = mgmt_get(&format!("queues/{vhost}")).await;
    let conn = lapin::Connection::connect(&serve.vhost.amqp_url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut notifications = 0;
    for q in queues.as_array().unwrap() {
        let name = q["name"].as_str().unwrap().to_owned();
        while let Some(m) = ch
            .basic_get(name.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            if name.starts_with("notifications.") {
                notifications += 1;
            }
            seen.add_bytes(format!("a message left in queue {name}"), &m.delivery.data);
        }
    }
    let _ = conn.close(200, "bye".into()).await;
    notifications
}

/// The events of a workflow that ended, read to the stream's `end`.
async fn events(http: &reqwest::Client, base: &str, wf: &str, seen: &mut Haystacks) {
    let r = http
        .get(format!("{base}/v1/workflows/{wf}/events"))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let mut text = String::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if text.contains("event: end") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the event stream did not end: {text}");
    assert!(text.contains("succeeded"), "{text}");
    seen.add("the event stream", text);
}

/// The files of the store: an SQLite database with its WAL, or a
/// `pg_dump` of the PostgreSQL database.
fn store_contents(store: &TestStore, when: &str, seen: &mut Haystacks) {
    if let Some(path) = &store.sqlite_path {
        for suffix in ["", "-wal", "-shm"] {
            let file = format!("{}{suffix}", path.display());
            if let Ok(bytes) = std::fs::read(&file) {
                seen.add_bytes(format!("{file} ({when})"), &bytes);
            }
        }
        // What is searched is the store: it holds the tasks, and their
        // secrets sealed.
        let db = std::fs::read(path).unwrap();
        let wal = std::fs::read(format!("{}-wal", path.display())).unwrap_or_default();
        let all = [db, wal].concat();
        let text = String::from_utf8_lossy(&all);
        assert!(
            text.contains("sec-a") && text.contains("$sealed"),
            "not the store?"
        );
    } else {
        let out = std::process::Command::new("pg_dump")
            .args(["--dbname", &store.url])
            .output()
            .expect("pg_dump");
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("sec-a") && text.contains("$sealed"),
            "not the store?"
        );
        seen.add_bytes(format!("pg_dump ({when})"), &out.stdout);
    }
}

#[tokio::test]
async fn a_secret_is_nowhere_but_in_what_the_child_process_got() {
    let secret = format!("s1-{}", uuid::Uuid::new_v4().simple());
    // The producer writes a second secret, the first in upper case, to a
    // secret output; the consumer gets it through get_output.
    let derived = secret.to_uppercase();
    let serve = ServeProcess::start_with(&[("RUST_LOG", "info,bora=debug")]).await;
    let dir = tempfile::tempdir().unwrap();
    let workers = [
        logged_worker(&serve, "sec-a", dir.path()),
        logged_worker(&serve, "sec-b", dir.path()),
    ];
    let http = reqwest::Client::new();
    let mut seen = Haystacks::default();
    let producer = r#"#!/bin/sh
echo "pw is $PW"
echo "on stderr: $PW" >&2
printf '%s' "$PW" | sha256sum
printf '%s' "$PW" | tr a-z A-Z > "$heat_outputs_path.token"
printf 'plain %s' "$PW" > "$heat_outputs_path.note"
"#;
    let consumer = r#"#!/bin/sh
echo "token $TOKEN"
printf '%s' "$TOKEN" | sha256sum
printf '%s' "$TOKEN" > "$heat_outputs_path.echoed"
"#;
    let r = http
        .post(format!("{}/v1/workflows", serve.base))
        .json(&json!({
            "name": "secrets",
            "tasks": [
                {"name": "A", "server_id": "sec-a", "config": producer,
                 "inputs": {"PW": {"secret": secret}, "PLAIN": "visible"},
                 "outputs": [{"name": "token", "secret": true}, "note"]},
                {"name": "B", "server_id": "sec-b", "config": consumer,
                 "inputs": {"TOKEN": {"get_output": ["A", "token"]}},
                 "outputs": ["echoed"]},
                {"name": "E", "server_id": "sec-a", "group": "std.echo",
                 "inputs": {"PW": {"secret": secret}, "X": "plain"}}
            ]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    seen.add("POST /v1/workflows", created.to_string());
    let wf = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created["tasks"][0]["inputs"]["PW"],
        json!({"secret": "***"})
    );
    assert_eq!(created["tasks"][0]["inputs"]["PLAIN"], "visible");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let w = get(
            &http,
            &serve.base,
            &format!("/v1/workflows/{wf}"),
            &mut seen,
        )
        .await;
        if w["state"] == "succeeded" {
            break;
        }
        assert!(w["state"] == "running", "{w}");
        assert!(Instant::now() < deadline, "never succeeded: {w}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every view the REST API has.
    get(&http, &serve.base, "/v1/workflows", &mut seen).await;
    let list = get(
        &http,
        &serve.base,
        &format!("/v1/workflows/{wf}/tasks"),
        &mut seen,
    )
    .await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 3);
    let mut tasks = std::collections::HashMap::new();
    for name in ["A", "B", "E"] {
        let base = format!("/v1/workflows/{wf}/tasks/{name}");
        tasks.insert(name, get(&http, &serve.base, &base, &mut seen).await);
        get(
            &http,
            &serve.base,
            &format!("{base}?format=heat"),
            &mut seen,
        )
        .await;
        get(&http, &serve.base, &format!("{base}/attempts"), &mut seen).await;
    }
    events(&http, &serve.base, &wf, &mut seen).await;
    let (a, b, e) = (&tasks["A"], &tasks["B"], &tasks["E"]);

    // What the scripts saw: the real values (their digests), and what
    // they printed of them: `***`.
    let ra = &a["result"];
    assert!(
        ra["stdout"]
            .as_str()
            .unwrap()
            .contains(&sha256_hex(secret.as_bytes())),
        "the producer got the secret: {ra}"
    );
    assert!(
        ra["stdout"].as_str().unwrap().starts_with("pw is ***\n"),
        "{ra}"
    );
    assert_eq!(ra["stderr"], "on stderr: ***\n");
    assert_eq!(ra["outputs"]["token"], "***", "a secret output is masked");
    assert_eq!(ra["outputs"]["note"], "plain ***", "the worker scrubbed it");
    assert_eq!(a["inputs"]["PW"], json!({"secret": "***"}));
    assert_eq!(
        a["outputs"][0],
        json!({"name": "token", "error_output": false, "secret": true})
    );
    let rb = &b["result"];
    assert!(
        rb["stdout"]
            .as_str()
            .unwrap()
            .contains(&sha256_hex(derived.as_bytes())),
        "the consumer got the producer's secret output: {rb}"
    );
    assert!(
        rb["stdout"].as_str().unwrap().starts_with("token ***\n"),
        "{rb}"
    );
    assert_eq!(rb["outputs"]["echoed"], "***");
    let resolved = &b["resolved_inputs"]["TOKEN"];
    assert_eq!(resolved["value"], "***", "{resolved}");
    assert_eq!(resolved["secret"], true);
    assert_eq!(resolved["from"]["output"], "token");
    assert_eq!(e["result"]["outputs"]["PW"], "***");
    assert_eq!(e["result"]["outputs"]["X"], "plain");

    // The CLI.
    for name in ["A", "B", "E"] {
        let shown = cli(&serve, &["task", "show", &wf, name, "--json"], &mut seen).await;
        assert!(shown.contains("***"), "{shown}");
        cli(&serve, &["task", "show", &wf, name], &mut seen).await;
        cli(&serve, &["task", "output", &wf, name], &mut seen).await;
        cli(&serve, &["task", "output", &wf, name, "--json"], &mut seen).await;
        cli(
            &serve,
            &["task", "attempts", &wf, name, "--json"],
            &mut seen,
        )
        .await;
    }
    let human = cli(&serve, &["task", "show", &wf, "B"], &mut seen).await;
    assert!(human.contains("TOKEN = \"***\""), "{human}");
    cli(&serve, &["workflow", "show", &wf, "--json"], &mut seen).await;

    // The broker: notifications (there are some: three task ends and the
    // workflow's) and anything else left in any queue.
    let notifications = drain_queues(&serve, &mut seen).await;
    assert!(notifications >= 4, "{notifications} notifications");

    // The store, while the dispatcher runs and after it stopped.
    store_contents(&serve.store, "running", &mut seen);
    let later = serve.later.clone();
    let lines = serve.lines.clone();
    let (code, store, _dir) = serve.stop_keeping().await;
    assert_eq!(code, 0);
    store_contents(&store, "stopped", &mut seen);
    for line in lines.iter().chain(later.lock().unwrap().iter()) {
        seen.add("the dispatcher's log", line.to_string());
    }
    let logs: Vec<_> = workers.iter().map(|w| w.log.clone()).collect();
    drop(workers);
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("task finished"), "{}: {text}", log.display());
        seen.add(format!("the worker's log {}", log.display()), text);
    }
    seen.assert_somewhere(&sha256_hex(secret.as_bytes()));
    seen.assert_somewhere("visible");
    seen.assert_nowhere("secret input", &secret);
    seen.assert_nowhere("secret output", &derived);
}
