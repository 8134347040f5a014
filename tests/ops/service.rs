//! The service around the API: `/openapi.json` (checked here and driven by
//! schemathesis against a real `bora serve` process), `/metrics`, JSON logs,
//! and the compose file.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::process::*;

fn refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref"
                    && let Some(r) = x.as_str()
                {
                    out.insert(r.to_owned());
                }
                refs(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn openapi_documents_every_route_body_and_error() {
    let app = spawn_app().await;
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.insert(format!("{} {path}", method.to_uppercase()));
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path} has no success response"
            );
            for (code, r) in responses {
                let body_ref = r["content"]["application/json"]["schema"]["$ref"].as_str();
                if code.starts_with('4') || (code == "503" && path.starts_with("/v1")) {
                    assert_eq!(
                        body_ref,
                        Some("#/components/schemas/ErrorBody"),
                        "{method} {path} {code}"
                    );
                }
            }
        }
    }
    let expected: BTreeSet<String> = [
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /openapi.json",
        "GET /v1/workflows",
        "POST /v1/workflows",
        "GET /v1/workflows/{wf}",
        "PATCH /v1/workflows/{wf}",
        "DELETE /v1/workflows/{wf}",
        "POST /v1/workflows/{wf}/cancel",
        "POST /v1/workflows/{wf}/pause",
        "POST /v1/workflows/{wf}/resume",
        "POST /v1/workflows/{wf}/rerun",
        "POST /v1/workflows/{wf}/tasks/{task}/rerun",
        "POST /v1/workflows/{wf}/tasks/{task}/approve",
        "POST /v1/workflows/{wf}/tasks/{task}/reject",
        "GET /v1/workflows/{wf}/tasks/{task}/attempts",
        "GET /v1/workflows/{wf}/tasks/{task}/output",
        "GET /v1/workflows/{wf}/events",
        "GET /v1/workflows/{wf}/graph",
        "GET /v1/workflows/{wf}/tasks",
        "POST /v1/workflows/{wf}/tasks",
        "GET /v1/workflows/{wf}/tasks/{task}",
        "PATCH /v1/workflows/{wf}/tasks/{task}",
        "DELETE /v1/workflows/{wf}/tasks/{task}",
        "POST /v1/servers",
        "GET /v1/servers",
        "GET /v1/servers/{id}",
        "PATCH /v1/servers/{id}",
        "DELETE /v1/servers/{id}",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(ops, expected);
    // Request bodies have schemas, and every reference resolves.
    assert_eq!(
        doc["paths"]["/v1/workflows"]["post"]["requestBody"]["content"]["application/json"]["schema"]
            ["$ref"],
        "#/components/schemas/NewWorkflow"
    );
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut all = BTreeSet::new();
    refs(&doc, &mut all);
    for r in &all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(schemas.contains_key(name), "unresolved {r}");
    }
    for name in [
        "WorkflowView",
        "TaskView",
        "TaskResult",
        "NewTask",
        "TaskPatch",
        "WorkflowPatch",
        "EventView",
        "StreamEnd",
        "ServerView",
        "ServerPatch",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
    let sse = &doc["paths"]["/v1/workflows/{wf}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
        ["schema"];
    assert_eq!(sse["oneOf"].as_array().map(Vec::len), Some(2), "{sse}");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    app.stop().await;
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_schema_mismatch() {
    let st = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/cache/venv/bin/schemathesis");
    assert!(
        st.exists(),
        "{} is missing: run .ci/setup (it installs schemathesis)",
        st.display()
    );
    let serve = ServeProcess::start().await;
    // A finished workflow with a task, so the operations on one are reached
    // too (a finished one: its event stream ends instead of streaming on).
    let http = reqwest::Client::new();
    let wf: Value = http
        .post(format!("{}/v1/workflows", serve.base))
        .json(&json!({"name": "fuzzed", "tasks": [{"name": "t", "server_id": "st-1"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = wf["id"].as_str().expect("workflow created").to_owned();
    let r = http
        .post(format!("{}/v1/workflows/{id}/cancel", serve.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "schemathesis.toml",
        &format!("[parameters]\n\"path.wf\" = \"{id}\"\n\"path.task\" = \"t\"\n"),
    );
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(&st)
            .args(["--no-color", "--config-file", &config, "run"])
            .arg(format!("{}/openapi.json", serve.base))
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                "15",
                "--seed",
                "1",
                "--request-timeout",
                "10",
            ])
            .current_dir(dir.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("schemathesis finished within 300 s")
    .expect("schemathesis ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("passed"), "{stdout}");
    assert_eq!(serve.stop().await, 0, "bora serve exits 0 on SIGTERM");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let serve = ServeProcess::start().await;
    let start = serve
        .lines
        .iter()
        .find(|l| l["message"] == "bora serve started")
        .expect("start line");
    assert_eq!(start["level"], "INFO");
    assert_eq!(start["target"], "bora::serve");
    assert!(start["timestamp"].is_string(), "{start}");
    assert!(
        start["broker"].as_str().unwrap().contains("***"),
        "the broker password is redacted: {start}"
    );
    assert_eq!(serve.stop().await, 0);
}

#[tokio::test]
async fn a_dropped_reply_is_logged_with_who_sent_it_and_how() {
    let serve = ServeProcess::start().await;
    let conn = lapin::Connection::connect(&serve.vhost.amqp_url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let body =
        bora::protocol::RpcReply::final_result("not-a-task.1", json!({"secret": "x"})).encode();
    ch.basic_publish(
        "reply_bora".into(),
        "reply_bora".into(),
        Default::default(),
        &body,
        lapin::BasicProperties::default()
            .with_content_type("application/json".into())
            .with_user_id("guest".into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let mut found = None;
    for _ in 0..100 {
        found = serve
            .later
            .lock()
            .unwrap()
            .iter()
            .find(|l| l["message"] == "reply dropped")
            .cloned();
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = found.expect("a log line for the dropped reply");
    assert_eq!(line["reason"], "unknown_msg_id", "{line}");
    assert_eq!(line["user_id"], "guest", "{line}");
    assert_eq!(line["exchange"], "reply_bora", "{line}");
    assert!(!line.to_string().contains("secret"), "no payload: {line}");
    let _ = conn.close(200, "bye".into()).await;
    assert_eq!(serve.stop().await, 0);
}

#[tokio::test]
async fn without_tokens_the_start_warns_what_is_open() {
    // ServeProcess sets no api.tokens: the APIs are open on loopback.
    let serve = ServeProcess::start().await;
    let warning = serve
        .lines
        .iter()
        .find(|l| {
            l["level"] == "WARN" && l["message"].as_str().unwrap_or("").contains("api.tokens")
        })
        .unwrap_or_else(|| {
            panic!(
                "no warning about missing tokens before the start line: {:?}",
                serve.lines
            )
        });
    let text = warning["message"].as_str().unwrap();
    for open in ["REST API", "RPC API", "bora_api", "register_server"] {
        assert!(text.contains(open), "{open} not named: {text}");
    }
    assert_eq!(serve.stop().await, 0);
}

#[tokio::test]
async fn metrics_name_every_series() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(json!({"name": "m", "tasks": [{"name": "a", "server_id": "m-1"}]}))
        .await;
    let id = wf.id();
    let mut w = app.fake_worker("m-1").await;
    let t = w.next_task().await;
    w.started(&t).await;
    w.finish(&t, 0).await;
    app.wait_workflow_state(&id, "succeeded").await;
    w.send_raw(b"not json").await;
    // The dropped reply is counted once the consumer got to it.
    let mut text = String::new();
    for _ in 0..200 {
        let r = app.http.get(app.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        text = r.text().await.unwrap();
        if text.contains("bora_results_rejected_total{") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for name in [
        "bora_tasks{state=\"succeeded\"}",
        "bora_tasks{state=\"waiting\"}",
        "bora_servers_online ",
        "bora_task_transitions_total{state=\"succeeded\"}",
        "bora_task_transitions_total{state=\"queued\"}",
        "bora_publish_latency_seconds_bucket{le=",
        "bora_publish_latency_seconds_count",
        "bora_result_to_release_seconds_bucket{le=",
        "bora_results_rejected_total{reason=",
        "bora_broker_reconnects_total{component=\"relay\"}",
        "bora_broker_reconnects_total{component=\"replies\"}",
        "# HELP bora_tasks ",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    // The worker just sent a heartbeat: its server counts as online.
    let online = text
        .lines()
        .find_map(|l| l.strip_prefix("bora_servers_online "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap();
    assert!(online >= 1.0, "{text}");
    app.stop().await;
}

#[tokio::test]
async fn compose_file_is_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = tokio::process::Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config"])
        .current_dir(root)
        .output()
        .await
        .expect("docker-compose is installed (run .ci/setup)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: Value = yaml_serde::from_str(&stdout).expect("config prints YAML");
    let services = config["services"].as_object().unwrap();
    for s in [
        "rabbitmq",
        "bora",
        "worker-web-1",
        "worker-db-1",
        "postgres",
    ] {
        assert!(services.contains_key(s), "service {s} missing");
    }
    let bora = &services["bora"];
    assert_eq!(bora["command"], json!(["serve"]));
    let store = bora["environment"]["BORA__STORE__URL"].as_str().unwrap();
    assert!(store.starts_with("sqlite://"), "bora uses SQLite: {store}");
    assert!(
        !bora["environment"]["BORA__API__TOKENS"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "listening beyond loopback needs tokens"
    );
    assert_eq!(
        services["worker-web-1"]["command"],
        json!(["worker", "--server-id", "web-1"])
    );
    assert!(Path::new(root).join("Dockerfile").exists());
}
