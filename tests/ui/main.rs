//! The web console (`/ui/`) in a real browser: headless Chromium over
//! WebDriver against the real dispatcher (the harness of `tests/api`) and
//! real `bora worker` processes. Each test reads the browser's console log
//! at the end and fails on any error; screenshots go to
//! `<target>/ui-screenshots/`.

#[path = "../api/helpers.rs"]
mod helpers;
#[path = "../ops/process.rs"]
mod process;

mod browser;

use std::time::{Duration, Instant};

use browser::Browser;
use helpers::*;
use process::WorkerProcess;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// The state of every node of the drawn graph, by its id (a task's id).
const NODE_STATES: &str = "return Object.fromEntries([...document.querySelectorAll('#graph .node')]\
     .map(n => [n.dataset.id, n.dataset.state]));";

#[tokio::test]
async fn the_workflows_page_lists_a_new_workflow_and_the_servers_page_its_servers() {
    let app = spawn_app().await;
    let server = unique("ui-srv");
    let (status, body) = app
        .post(
            "/v1/servers",
            json!({"server_id": server, "kind": "guest", "labels": {"role": "web"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let b = Browser::start().await;
    b.goto(&app.url("/ui/")).await;
    b.wait_js(
        "the workflows table",
        "return document.querySelector('main').dataset.ready === '1' && !!document.getElementById('workflows');",
        vec![],
    )
    .await;
    // Created after the page was drawn: it appears without a reload.
    b.js("window.__kept = 'same page';", vec![]).await;
    let name = unique("ui-new");
    let wf = app
        .create_workflow(json!({"name": name, "tasks": [
            {"name": "a", "server_id": server, "config": "true"},
            {"name": "b", "server_id": server, "depends_on": ["a"]},
        ]}))
        .await;
    let row = b
        .wait_js(
            "the new workflow's row",
            "const r = document.querySelector(`#workflows tr[data-id='${arguments[0]}']`); \
             return r && r.textContent;",
            vec![json!(wf.id().to_string())],
        )
        .await;
    let row = row.as_str().unwrap();
    assert!(row.contains(&name), "{row}");
    assert!(row.contains('2'), "the task count: {row}");
    assert_eq!(b.js("return window.__kept;", vec![]).await, "same page");
    b.screenshot("workflows").await;

    b.goto(&app.url("/ui/#/servers")).await;
    let row = b
        .wait_js(
            "the server's row",
            "const r = document.querySelector(`#servers tr[data-id='${arguments[0]}']`); \
             return r && [...r.cells].map(c => c.textContent);",
            vec![json!(server)],
        )
        .await;
    let cells: Vec<String> = serde_json::from_value(row).unwrap();
    assert_eq!(cells[0], server);
    assert_eq!(cells[2], "role=web");
    assert_eq!(cells[3], "offline", "no worker runs for it");
    // `a` is queued, `b` waits: two unfinished tasks.
    assert_eq!(cells[5], "2");
    b.screenshot("servers").await;
    b.finish().await;
}

/// A dozen tasks: a fan-out and fan-in, a short chain, and an approval gate
/// that holds the end back until the test approves it.
fn dozen(a: &str, b: &str) -> Value {
    json!({"name": "dozen", "tasks": [
        {"name": "prep", "server_id": a, "config": "echo prep"},
        {"name": "web1", "server_id": a, "config": "echo web1", "depends_on": ["prep"]},
        {"name": "web2", "server_id": b, "config": "echo web2", "depends_on": ["prep"]},
        {"name": "web3", "server_id": a, "config": "echo web3", "depends_on": ["prep"]},
        {"name": "db", "server_id": b, "config": "echo db", "depends_on": ["prep"]},
        {"name": "app1", "server_id": a, "config": "echo app1", "depends_on": ["web1", "web2", "web3", "db"]},
        {"name": "app2", "server_id": b, "config": "echo app2", "depends_on": ["web1", "web2", "web3", "db"]},
        {"name": "gate", "group": "bora.approval"},
        {"name": "final", "server_id": a, "config": "echo final", "depends_on": ["gate", "app1", "app2"]},
        {"name": "notify", "server_id": b, "config": "echo notify", "depends_on": ["final"]},
        {"name": "lint", "server_id": b, "config": "echo lint"},
        {"name": "report", "server_id": a, "config": "echo report", "depends_on": ["lint"]},
    ]})
}

#[tokio::test]
async fn a_workflow_is_drawn_with_its_nodes_edges_and_states_and_follows_them_live() {
    let app = spawn_app().await;
    let (a, b_srv) = (unique("ui-a"), unique("ui-b"));
    let _wa = WorkerProcess::start(&app, &a);
    let _wb = WorkerProcess::start(&app, &b_srv);
    let wf = app.create_workflow(dozen(&a, &b_srv)).await;
    let id = wf.id().to_string();
    // Everything but the gate's end of the graph runs.
    for t in [
        "prep", "web1", "web2", "web3", "db", "app1", "app2", "lint", "report",
    ] {
        app.wait_task_state(&id, t, "succeeded").await;
    }
    let tasks = app.tasks(&id, "").await;
    assert_eq!(tasks.len(), 12);

    let br = Browser::start().await;
    br.goto(&app.url(&format!("/ui/#/workflows/{id}"))).await;
    br.wait_js(
        "the graph",
        "return document.getElementById('graph')?.dataset.ready === '1';",
        vec![],
    )
    .await;
    let count = br
        .js(
            "return document.querySelectorAll('#graph .node').length;",
            vec![],
        )
        .await;
    assert_eq!(count, 12, "one node per task: nothing of a dozen is folded");
    let edges = br
        .js(
            "return [...document.querySelectorAll('#graph .edge')].map(e => [e.dataset.from, e.dataset.to]);",
            vec![],
        )
        .await;
    let edges: Vec<(String, String)> = serde_json::from_value(edges).unwrap();
    let mut want = Vec::new();
    for t in &tasks {
        let full = app.task(&id, &t.id.to_string()).await;
        for dep in &full.depends_on {
            let d = tasks.iter().find(|x| &x.name == dep).unwrap();
            want.push((d.id.to_string(), t.id.to_string()));
        }
    }
    let (mut got, mut want) = (edges, want);
    got.sort();
    want.sort();
    assert_eq!(got, want, "one edge per dependency");
    assert_eq!(got.len(), 17);
    // Every node's state is the API's.
    let states = br.js(NODE_STATES, vec![]).await;
    for t in app.tasks(&id, "").await {
        assert_eq!(states[t.id.to_string()], t.state, "task {}", t.name);
    }
    let notify = tasks
        .iter()
        .find(|t| t.name == "notify")
        .unwrap()
        .id
        .to_string();
    assert_eq!(states[&notify], "waiting");
    br.screenshot("workflow-waiting").await;

    // The test approves the gate; `final` and `notify` run on the workers,
    // and the page, not reloaded, turns `notify` succeeded.
    br.js("window.__kept = 'same page';", vec![]).await;
    let (status, body) = app
        .post(&format!("/v1/workflows/{id}/tasks/gate/approve"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    br.wait_js(
        "notify succeeded",
        "return document.querySelector(`#graph .node[data-id='${arguments[0]}']`)?.dataset.state === 'succeeded';",
        vec![json!(notify)],
    )
    .await;
    assert_eq!(br.js("return window.__kept;", vec![]).await, "same page");
    assert_eq!(app.task(&id, "notify").await.state, "succeeded");
    // The list beside the graph says so too, and the header's state.
    br.wait_js(
        "the workflow succeeded",
        "return document.getElementById('wf-head')?.dataset.state === 'succeeded';",
        vec![],
    )
    .await;
    let listed = br
        .js(
            "return document.querySelector(`#task-list tr[data-id='${arguments[0]}'] .badge`).dataset.state;",
            vec![json!(notify)],
        )
        .await;
    assert_eq!(listed, "succeeded");
    br.screenshot("workflow-graph").await;

    // A node opens its task's page: attempts, result and output.
    br.click(&format!("#graph .node[data-id='{notify}']")).await;
    br.wait_js(
        "notify's page",
        "return document.getElementById('task-head')?.dataset.state === 'succeeded' \
         && document.querySelector('#attempts tr[data-attempt]') \
         && document.getElementById('stdout').textContent.includes('notify');",
        vec![],
    )
    .await;
    br.screenshot("task").await;
    br.finish().await;
}

#[tokio::test]
async fn cancel_rerun_and_approve_from_the_page_change_the_task() {
    let app = spawn_app().await;
    let server = unique("ui-c");
    let _w = WorkerProcess::start(&app, &server);
    let wf = app
        .create_workflow(json!({"name": "operate", "tasks": [
            {"name": "slow", "server_id": server, "config": "echo started; sleep 300"},
            {"name": "gate", "group": "bora.approval"},
        ]}))
        .await;
    let id = wf.id().to_string();
    app.wait_task_state(&id, "slow", "running").await;

    let b = Browser::start().await;
    b.goto(&app.url(&format!("/ui/#/workflows/{id}/tasks/slow")))
        .await;
    b.wait_js(
        "the running task",
        "return document.getElementById('task-head')?.dataset.state === 'running' \
         && document.getElementById('stdout').textContent.includes('started');",
        vec![],
    )
    .await;
    b.click("button[data-action='cancel']").await;
    let cancelled = app.wait_task_state(&id, "slow", "cancelled").await;
    b.wait_js(
        "the cancelled task",
        "return document.getElementById('task-head')?.dataset.state === 'cancelled' \
         && !!document.querySelector(\"button[data-action='rerun']\");",
        vec![],
    )
    .await;
    b.click("button[data-action='rerun']").await;
    // The API confirms: a new attempt runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    let rerun = loop {
        let t = app.task(&id, "slow").await;
        if t.attempt > cancelled.attempt && t.state == "running" {
            break t;
        }
        assert!(Instant::now() < deadline, "no rerun: {t:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(rerun.attempt > cancelled.attempt);
    b.wait_js(
        "the rerun task",
        "return document.getElementById('task-head')?.dataset.state === 'running';",
        vec![],
    )
    .await;

    b.goto(&app.url(&format!("/ui/#/workflows/{id}/tasks/gate")))
        .await;
    b.wait_js(
        "the gate",
        "return document.getElementById('task-head')?.dataset.state === 'running' \
         && !!document.getElementById('comment');",
        vec![],
    )
    .await;
    b.client
        .find(fantoccini::Locator::Id("comment"))
        .await
        .unwrap()
        .send_keys("looks good")
        .await
        .unwrap();
    b.click("button[data-action='approve']").await;
    let gate = app.wait_task_state(&id, "gate", "succeeded").await;
    let result = format!("{:?}", gate.result);
    assert!(result.contains("looks good"), "{result}");
    b.wait_js(
        "the approved gate",
        "return document.getElementById('task-head')?.dataset.state === 'succeeded';",
        vec![],
    )
    .await;
    let (status, _) = app.delete(&format!("/v1/workflows/{id}/tasks/slow")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    b.finish().await;
}

#[tokio::test]
async fn with_tokens_the_page_asks_for_one_and_works_once_given() {
    let app = spawn_app_with(&[("BORA__API__TOKENS", TOKEN)]).await;
    let name = unique("ui-tok");
    let r = app
        .http
        .post(app.url("/v1/workflows"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": name}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // The page itself needs no token.
    let page = app.http.get(app.url("/ui/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);

    let b = Browser::start().await;
    b.goto(&app.url("/ui/")).await;
    b.wait_js(
        "the token dialog",
        "return document.getElementById('token-dialog').open;",
        vec![],
    )
    .await;
    b.screenshot("token").await;
    let give = async |token: &str| {
        b.client
            .find(fantoccini::Locator::Id("token-input"))
            .await
            .unwrap()
            .send_keys(token)
            .await
            .unwrap();
        b.click("#token-submit").await;
    };
    // A refused token: asked for again, saying so.
    give("not-the-right-token-at-all").await;
    b.wait_js(
        "the dialog again, with the refusal",
        "return document.getElementById('token-dialog').open \
         && !document.getElementById('token-error').hidden;",
        vec![],
    )
    .await;
    give(TOKEN).await;
    let listed = b
        .wait_js(
            "the workflow listed",
            "return document.querySelector('main').dataset.ready === '1' \
             && document.getElementById('workflows').textContent;",
            vec![],
        )
        .await;
    assert!(listed.as_str().unwrap().contains(&name), "{listed}");
    // Kept for the tab, and never in a URL the page asked for.
    assert_eq!(
        b.js("return sessionStorage.getItem('bora.token');", vec![])
            .await,
        TOKEN
    );
    let urls = b
        .js(
            "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href]);",
            vec![],
        )
        .await;
    assert!(!urls.to_string().contains(TOKEN), "{urls}");
    // The refused token's 401 is the one error the console shows.
    b.finish_allowing(&["status of 401"]).await;
}

#[tokio::test]
async fn a_100000_task_workflow_opens_folded_and_its_time_is_reported() {
    const N: usize = 100_000;
    let app = spawn_app_with(&[("BORA__API__MAX_BODY_BYTES", "67108864")]).await;
    // A root, 1,000 chains of 60 tasks after it, 39,998 tasks fanned out
    // from it, and one task after all of them: for servers without workers.
    let mut tasks = vec![json!({"name": "root", "server_id": "ui-big-0", "config": "true"})];
    let mut ends = Vec::new();
    for c in 0..1_000 {
        for i in 0..60 {
            let dep = if i == 0 {
                "root".to_owned()
            } else {
                format!("c{c}-{}", i - 1)
            };
            tasks.push(json!({"name": format!("c{c}-{i}"), "server_id": format!("ui-big-{}", c % 50), "depends_on": [dep]}));
        }
        ends.push(format!("c{c}-59"));
    }
    while tasks.len() < N - 1 {
        let name = format!("f{}", tasks.len());
        tasks.push(json!({"name": name, "server_id": "ui-big-1", "depends_on": ["root"]}));
        ends.push(name);
    }
    tasks.push(json!({"name": "last", "server_id": "ui-big-2", "depends_on": ends}));
    assert_eq!(tasks.len(), N);
    let t0 = Instant::now();
    let (status, body) = app
        .post("/v1/workflows", json!({"name": "big", "tasks": tasks}))
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        &body.to_string()[..300.min(body.to_string().len())]
    );
    let id = body["id"].as_str().unwrap().to_owned();
    eprintln!("created {N} tasks in {:?}", t0.elapsed());

    let t0 = Instant::now();
    let (status, graph) = app.get(&format!("/v1/workflows/{id}/graph")).await;
    let graph_api = t0.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(graph["tasks"], N);
    let nodes = graph["nodes"].as_array().unwrap();
    assert_eq!(
        nodes.len(),
        3,
        "root, one set of chains and tasks, last: {graph}"
    );

    let b = Browser::start().await;
    let t0 = Instant::now();
    b.goto(&app.url(&format!("/ui/#/workflows/{id}"))).await;
    b.wait_js(
        "the big workflow's page",
        "return document.querySelector('main').dataset.ready === '1' \
         && document.querySelectorAll('#graph .node').length === 3 \
         && document.querySelectorAll('#task-list tbody tr').length === 100 \
         && !document.querySelector('#task-list .more').hidden;",
        vec![],
    )
    .await;
    let usable = t0.elapsed();
    // Measured and reported (README, The web console), not asserted.
    eprintln!(
        "100,000-task workflow: GET .../graph {graph_api:?}; page usable (graph drawn, first \
         100 tasks listed) {usable:?}"
    );
    let set = b
        .js(
            "return document.querySelector(\"#graph .node[data-kind='set']\").textContent;",
            vec![],
        )
        .await;
    assert!(set.as_str().unwrap().contains("99,998"), "{set}");
    // The next page of the list comes on demand.
    b.click("#more-tasks").await;
    b.wait_js(
        "a second page of tasks",
        "return document.querySelectorAll('#task-list tbody tr').length === 200;",
        vec![],
    )
    .await;
    b.screenshot("workflow-100k").await;
    b.finish().await;
}

#[tokio::test]
async fn the_console_is_served_from_the_binary_with_its_headers_and_needs_no_token() {
    let app = spawn_app_with(&[("BORA__API__TOKENS", TOKEN)]).await;
    let get = |path: &str| app.http.get(app.url(path)).send();
    let page = get("/ui/").await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let h = page.headers().clone();
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert_eq!(h["cache-control"], "no-cache");
    let html = page.text().await.unwrap();
    // Nothing from another origin.
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    // Unchanged: 304 on revalidation.
    let etag = h["etag"].to_str().unwrap().to_owned();
    let again = app
        .http
        .get(app.url("/ui/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    // Every file of ui/ is served as what it is, byte for byte, and names
    // no other origin (the SVG namespace is a name, not a load).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
    let mut served = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().path();
        let name = file.file_name().unwrap().to_str().unwrap().to_owned();
        let ty = match file.extension().and_then(|e| e.to_str()) {
            Some("js") => "text/javascript",
            Some("css") => "text/css",
            Some("svg") => "image/svg+xml",
            Some("html") => "text/html",
            other => panic!("an unexpected kind of console file: {other:?}"),
        };
        let r = get(&format!("/ui/{name}")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{name}");
        let got = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(got.starts_with(ty), "{name}: {got}");
        let text = r.text().await.unwrap();
        assert_eq!(text, std::fs::read_to_string(&file).unwrap(), "{name}");
        let origins = text.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !origins.contains("http://") && !origins.contains("https://"),
            "{name} names another origin"
        );
        served += 1;
    }
    assert!(served >= 6, "{served}");
    let (status, config) = split(get("/ui/config.json").await.unwrap()).await;
    assert_eq!((status, config), (StatusCode::OK, json!({"auth": true})));
    let missing = split(get("/ui/nope.js").await.unwrap()).await;
    assert_error(&missing, StatusCode::NOT_FOUND, "not_found");
    // The API itself still wants the token; the console is not in OpenAPI.
    let (status, _) = split(get("/v1/workflows").await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, doc) = split(get("/openapi.json").await.unwrap()).await;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.keys().all(|p| !p.starts_with("/ui")));
    assert!(paths.contains_key("/v1/workflows/{wf}/graph"));
}

#[tokio::test]
async fn a_failed_workflow_rerun_from_its_page_is_followed_to_its_new_end() {
    let app = spawn_app().await;
    let server = unique("ui-r");
    let _w = WorkerProcess::start(&app, &server);
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("second-time");
    // Fails the first time, succeeds the next.
    let script = format!(
        "test -f {0} && echo fixed && exit 0; touch {0}; echo broken >&2; exit 1",
        flag.display()
    );
    let wf = app
        .create_workflow(json!({"name": "flaky", "tasks": [
            {"name": "flaky", "server_id": server, "config": script},
            {"name": "after", "server_id": server, "config": "echo after", "depends_on": ["flaky"]},
        ]}))
        .await;
    let id = wf.id().to_string();
    app.wait_workflow_state(&id, "failed").await;
    let flaky = app.task(&id, "flaky").await.id.to_string();

    let b = Browser::start().await;
    b.goto(&app.url(&format!("/ui/#/workflows/{id}"))).await;
    b.wait_js(
        "the failed workflow",
        "return document.getElementById('wf-head')?.dataset.state === 'failed' \
         && document.querySelector(`#graph .node[data-id='${arguments[0]}']`)?.dataset.state === 'failed';",
        vec![json!(flaky)],
    )
    .await;
    b.js("window.__kept = 'same page';", vec![]).await;
    b.click("#wf-head button[data-action='rerun']").await;
    // The stream had ended with the workflow; the page follows the rerun.
    b.wait_js(
        "the rerun's end",
        "return document.getElementById('wf-head')?.dataset.state === 'succeeded' \
         && [...document.querySelectorAll('#graph .node')].every(n => n.dataset.state === 'succeeded');",
        vec![],
    )
    .await;
    assert_eq!(b.js("return window.__kept;", vec![]).await, "same page");
    let t = app.task(&id, "flaky").await;
    assert_eq!((t.state.as_str(), t.attempt), ("succeeded", 2));
    b.finish().await;
}

#[tokio::test]
async fn a_group_task_is_one_node_counting_its_children() {
    let app = spawn_app().await;
    let role = unique("role");
    let mut servers = Vec::new();
    for _ in 0..3 {
        let s = unique("ui-g");
        let (status, body) = app
            .post(
                "/v1/servers",
                json!({"server_id": s, "kind": "guest", "labels": {"role": role}}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        servers.push(s);
    }
    // No worker runs for these servers: the children stay queued.
    let wf = app
        .create_workflow(json!({"name": "group", "tasks": [
            {"name": "deploy", "target": {"labels": {"role": role}}, "config": "true"},
            {"name": "check", "group": "bora.approval", "depends_on": ["deploy"]},
        ]}))
        .await;
    let id = wf.id().to_string();
    let deploy = app.task(&id, "deploy").await;
    assert_eq!(deploy.children.as_ref().map(Vec::len), Some(3));
    for s in &servers {
        app.wait_task_state(&id, &format!("deploy[{s}]"), "queued")
            .await;
    }

    let b = Browser::start().await;
    b.goto(&app.url(&format!("/ui/#/workflows/{id}"))).await;
    let node = b
        .wait_js(
            "the group's node",
            "const n = document.querySelector(`#graph .node[data-id='${arguments[0]}']`); \
             return n && [n.dataset.kind, n.dataset.state, n.textContent];",
            vec![json!(deploy.id.to_string())],
        )
        .await;
    assert_eq!(node[0], "group");
    assert_eq!(node[1], "queued");
    assert!(node[2].as_str().unwrap().contains("3 tasks"), "{node}");
    // Two nodes (the group and the gate after it) and one edge.
    assert_eq!(
        b.js(
            "return document.querySelectorAll('#graph .node').length;",
            vec![]
        )
        .await,
        2
    );
    assert_eq!(
        b.js(
            "return document.querySelectorAll('#graph .edge').length;",
            vec![]
        )
        .await,
        1
    );
    // The group's page lists its children on their servers.
    b.click(&format!("#graph .node[data-id='{}']", deploy.id))
        .await;
    let text = b
        .wait_js(
            "the group's children",
            "return document.querySelector('main').dataset.ready === '1' \
             && document.querySelector('main').textContent.includes('Children (3)') \
             && document.querySelector('main').textContent;",
            vec![],
        )
        .await;
    for s in &servers {
        assert!(text.as_str().unwrap().contains(s.as_str()), "{s}");
    }
    b.finish().await;
}
