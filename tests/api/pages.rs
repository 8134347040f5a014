//! Paging a workflow's tasks: `GET /v1/workflows/{wf}/tasks?limit=&marker=`
//! (keyset pages in creation order, with the filters), its 422s, and the
//! RPC API's `list_tasks` with the same arguments.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// A workflow of `n` tasks (`t000`, `t001`, ...) on two servers, alternating;
/// returns its id and the task names in creation order.
async fn workflow_of(app: &TestApp, n: usize) -> (String, Vec<String>) {
    let names: Vec<String> = (0..n).map(|i| format!("t{i:03}")).collect();
    let tasks: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            // Waiting on an approval gate: nothing is published, states stay put.
            let server = if i % 2 == 0 { "page-a" } else { "page-b" };
            json!({"name": name, "server_id": server, "depends_on": ["gate"]})
        })
        .chain([json!({"name": "gate", "group": "bora.approval"})])
        .collect();
    let wf = app
        .create_workflow(json!({"name": "pages", "tasks": tasks}))
        .await;
    (wf.id().to_string(), names)
}

/// One page: the task names and the next marker.
async fn page(app: &TestApp, wf: &str, query: &str) -> (Vec<String>, Option<String>) {
    let (status, body) = app.get(&format!("/v1/workflows/{wf}/tasks?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    let names = body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    (names, body["next_marker"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn pages_follow_each_other_in_creation_order_and_the_last_has_no_marker() {
    let app = spawn_app().await;
    let (wf, names) = workflow_of(&app, 7).await;
    let mut all = Vec::new();
    let mut query = "limit=3".to_owned();
    let mut pages = 0;
    loop {
        let (got, next) = page(&app, &wf, &query).await;
        assert!(got.len() <= 3, "{got:?}");
        pages += 1;
        all.extend(got);
        match next {
            Some(m) => {
                // The marker is the id of the page's last task.
                let last = app.task(&wf, all.last().unwrap()).await;
                assert_eq!(m, last.id.to_string());
                query = format!("limit=3&marker={m}");
            }
            None => break,
        }
    }
    // 8 tasks (7 and the gate), 3 a page: 3, 3, 2.
    let mut expected = names.clone();
    expected.push("gate".into());
    assert_eq!(all, expected, "every task once, in creation order");
    assert_eq!(pages, 3);

    // A page that ends exactly at the last task says there is no more.
    let (got, next) = page(&app, &wf, "limit=8").await;
    assert_eq!(got.len(), 8);
    assert_eq!(next, None);
    // Without limit: the default page (100) holds them all.
    let (got, next) = page(&app, &wf, "").await;
    assert_eq!((got.len(), next), (8, None));
}

#[tokio::test]
async fn filters_apply_before_the_page_is_cut() {
    let app = spawn_app().await;
    let (wf, names) = workflow_of(&app, 6).await;
    let on_a: Vec<String> = names.iter().step_by(2).cloned().collect();
    let (first, next) = page(&app, &wf, "server_id=page-a&limit=2").await;
    assert_eq!(first, on_a[..2]);
    let m = next.expect("a second page");
    let (second, next) = page(&app, &wf, &format!("server_id=page-a&limit=2&marker={m}")).await;
    assert_eq!(second, on_a[2..]);
    assert_eq!(next, None);
    // State and limit together: the gate is the one running task.
    let (running, next) = page(&app, &wf, "state=running&limit=1").await;
    assert_eq!((running, next), (vec!["gate".to_owned()], None));
}

#[tokio::test]
async fn a_marker_past_the_end_gives_an_empty_page_and_bad_queries_are_422() {
    let app = spawn_app().await;
    let (wf, _) = workflow_of(&app, 3).await;
    let gate = app.task(&wf, "gate").await;
    // The last task's id: nothing after it.
    let (got, next) = page(&app, &wf, &format!("marker={}", gate.id)).await;
    assert_eq!((got, next), (vec![], None));
    // A task id from far in the future: nothing after it either.
    let (got, _) = page(&app, &wf, "marker=ffffffff-ffff-7fff-bfff-ffffffffffff").await;
    assert!(got.is_empty());

    let max = app.settings.api.max_page_size;
    for query in [
        "marker=not-a-task".to_owned(),
        "limit=0".to_owned(),
        format!("limit={}", max + 1),
        "limit=-1".to_owned(),
        "limit=ten".to_owned(),
    ] {
        let resp = app.get(&format!("/v1/workflows/{wf}/tasks?{query}")).await;
        assert_error(&resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_query");
    }
    let (status, _) = app
        .get(&format!("/v1/workflows/{wf}/tasks?limit={max}"))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_rpc_api_lists_every_task_or_one_page() {
    let app = spawn_app().await;
    let (wf, names) = workflow_of(&app, 4).await;
    let mut caller = RpcCaller::connect(&app).await;
    caller.wait_ready(None).await;
    let mut call = async |args: Value| {
        let req = caller.call("list_tasks", args, None);
        caller.publish(&req).await;
        caller
            .reply(Duration::from_secs(10))
            .await
            .expect("an answer to list_tasks")
    };
    let names_of = |v: &Value| -> Vec<String> {
        v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    };
    // No limit and no marker: every task, as before paging.
    let all = call(json!({"workflow_id": wf})).await;
    assert_eq!(all.failure, None);
    assert_eq!(names_of(&all.result).len(), 5);
    assert_eq!(all.result["next_marker"], Value::Null);
    // One page, then the rest.
    let first = call(json!({"workflow_id": wf, "limit": 3})).await;
    assert_eq!(names_of(&first.result), names[..3]);
    let m = first.result["next_marker"].as_str().unwrap().to_owned();
    let rest = call(json!({"workflow_id": wf, "limit": 3, "marker": m})).await;
    assert_eq!(
        names_of(&rest.result),
        vec!["t003".to_owned(), "gate".into()]
    );
    assert_eq!(rest.result["next_marker"], Value::Null);
    // A bad marker or limit is a ValidationError.
    for args in [
        json!({"workflow_id": wf, "marker": "nope"}),
        json!({"workflow_id": wf, "limit": 0}),
    ] {
        let r = call(args).await;
        let failure = r.failure.expect("a failure");
        assert!(failure.contains("ValidationError"), "{failure}");
    }
}

/// Runs the `bora` client against `app` and parses its `--json` output.
async fn cli_json(app: &TestApp, args: &[&str]) -> Value {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_bora"))
        .args(args)
        .arg("--json")
        .env("BORA_URL", &app.base)
        .env_remove("BORA_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "bora {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn the_cli_follows_the_pages_and_prints_every_task() {
    let app = spawn_app().await;
    // More than one default page (100).
    let (wf, names) = workflow_of(&app, 150).await;
    let listed = cli_json(&app, &["task", "list", &wf]).await;
    let got: Vec<&str> = listed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
    want.push("gate");
    assert_eq!(got, want, "every task once, in creation order");
    // With a filter: the pages of the filtered list.
    let on_a = cli_json(&app, &["task", "list", &wf, "--server-id", "page-a"]).await;
    assert_eq!(on_a["tasks"].as_array().unwrap().len(), 75);
    let shown = cli_json(&app, &["workflow", "show", &wf]).await;
    assert_eq!(shown["tasks"].as_array().unwrap().len(), 151);
}

/// `Prefer: return=minimal` (RFC 7240) leaves the created tasks out of a
/// create's answer (a large batch's views are most of its cost); the tasks
/// are created all the same, and without the preference they are listed.
#[tokio::test]
async fn a_create_that_prefers_minimal_answers_without_the_tasks() {
    let app = spawn_app().await;
    let body = json!({"name": "minimal", "tasks": [
        {"name": "a", "server_id": "s1", "group": "std.noop"},
        {"name": "b", "server_id": "s1", "group": "std.noop", "depends_on": ["a"]},
    ]});
    for (prefer, listed) in [
        (Some("return=minimal"), false),
        (Some("respond-async, RETURN=minimal; x=1"), false),
        (Some("return=representation"), true),
        (None, true),
    ] {
        let mut req = app.http.post(app.url("/v1/workflows")).json(&body);
        if let Some(p) = prefer {
            req = req.header("prefer", p);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{prefer:?}");
        let applied = r
            .headers()
            .get("preference-applied")
            .map(|v| v.to_str().unwrap().to_owned());
        let wf: Value = r.json().await.unwrap();
        assert_eq!(wf.get("tasks").is_some(), listed, "{prefer:?}: {wf}");
        assert_eq!(
            applied.as_deref(),
            (!listed).then_some("return=minimal"),
            "{prefer:?}"
        );
        let total: u64 = wf["task_counts"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(total, 2, "{wf}");
        let tasks = app
            .get(&format!(
                "/v1/workflows/{}/tasks",
                wf["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(tasks.1["tasks"].as_array().unwrap().len(), 2, "{prefer:?}");
    }
    app.stop().await;
}

/// A bulk create refreshes PostgreSQL's planner statistics of the task
/// tables (stale ones made the release walk of a 100,000-task workflow
/// hash-join whole tables).
#[tokio::test]
async fn a_bulk_create_refreshes_the_planner_statistics() {
    use sqlx::{Connection, Row};
    let app = spawn_app().await;
    let tasks: Vec<Value> = (0..1000)
        .map(|i| {
            let deps: Vec<String> = if i > 0 {
                vec![format!("t{}", i - 1)]
            } else {
                vec![]
            };
            json!({"name": format!("t{i}"), "server_id": "s1", "group": "std.noop",
                   "depends_on": deps})
        })
        .collect();
    let r = app
        .http
        .post(app.url("/v1/workflows"))
        .header("prefer", "return=minimal")
        .json(&json!({"name": "bulk", "tasks": tasks}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let wf: Value = r.json().await.unwrap();
    assert_eq!(
        wf["task_counts"]["waiting"].as_u64().unwrap()
            + wf["task_counts"]["queued"].as_u64().unwrap(),
        1000,
        "{wf}"
    );
    if app.store.is_postgres() {
        let mut c = sqlx::PgConnection::connect(&app.store.url).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let rows = sqlx::query(
                "SELECT relname, last_analyze IS NOT NULL AS analyzed \
                 FROM pg_stat_user_tables WHERE relname IN ('tasks', 'task_deps')",
            )
            .fetch_all(&mut c)
            .await
            .unwrap();
            let analyzed = rows.iter().filter(|r| r.get::<bool, _>("analyzed")).count();
            if analyzed == 2 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the task tables were not analyzed after a bulk create"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    app.stop().await;
}
