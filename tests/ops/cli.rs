//! Every client verb of the real binary against a running dispatcher.

use std::time::Duration;

use bora::protocol::TaskResult;
use serde_json::Value;

use crate::helpers::*;
use crate::process::*;

const WORKFLOW_YAML: &str = r#"
name: cli-flow
description: made from YAML
tasks:
  - name: app
    server_id: cli-app
    depends_on: [db]
  - name: db
    server_id: cli-db
    config: |
      #!/bin/sh
      echo db
"#;

#[tokio::test]
async fn workflow_verbs_create_list_show_graph_cancel_delete() {
    let app = spawn_app().await;
    let file = write_file(app.dir.path(), "wf.yaml", WORKFLOW_YAML);

    // create prints the id alone on stdout (for scripts), the tasks on stderr.
    let out = bora(&app, &["workflow", "create", "-f", &file]).await;
    let id = out.ok().trim().to_owned();
    assert_eq!(app.workflow(&id).await.name, "cli-flow");
    assert!(out.stderr.contains("cli-db"), "{}", out.stderr);

    // The same shape as JSON, through --json.
    let json_file = write_file(
        app.dir.path(),
        "wf.json",
        r#"{"name": "second", "tasks": [{"name": "x", "server_id": "cli-x"}]}"#,
    );
    let second = bora(&app, &["workflow", "create", "-f", &json_file, "--json"])
        .await
        .json();
    assert_eq!(second["name"], "second");
    assert_eq!(second["tasks"][0]["name"], "x");

    let listed = bora(&app, &["workflow", "list", "--json"]).await.json();
    let names: Vec<&str> = listed["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cli-flow", "second"]);
    let table = bora(&app, &["workflow", "list"]).await;
    assert!(table.ok().starts_with("ID  "), "{}", table.stdout);
    assert!(table.stdout.contains(&id));
    let limited = bora(&app, &["workflow", "list", "--limit", "1", "--json"])
        .await
        .json();
    assert_eq!(limited["workflows"].as_array().unwrap().len(), 1);

    let shown = bora(&app, &["workflow", "show", &id, "--json"])
        .await
        .json();
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["tasks"].as_array().unwrap().len(), 2);
    let human = bora(&app, &["workflow", "show", &id]).await;
    assert!(
        human.ok().contains("Name:        cli-flow"),
        "{}",
        human.stdout
    );
    assert!(human.stdout.contains("app   cli-app"), "{}", human.stdout);

    // The graph: nodes with name, server and state colour; an edge db -> app.
    let dot = bora(&app, &["workflow", "graph", &id]).await;
    let dot = dot.ok();
    assert!(dot.starts_with("digraph \"cli-flow\" {"), "{dot}");
    let node = |name: &str| {
        dot.lines()
            .find(|l| l.contains(&format!("label=\"{name}\\n")))
            .and_then(|l| l.trim().split(' ').next())
            .unwrap_or_else(|| panic!("no node {name}: {dot}"))
            .to_owned()
    };
    assert!(
        dot.contains(&format!("{} -> {};", node("db"), node("app"))),
        "{dot}"
    );
    assert!(dot.contains("app\\ncli-app\\nwaiting"), "{dot}");
    assert!(
        dot.contains("fillcolor=\"#e5e7eb\""),
        "waiting colour: {dot}"
    );
    let mermaid = bora(&app, &["workflow", "graph", &id, "--mermaid"]).await;
    assert!(
        mermaid.ok().starts_with("flowchart LR"),
        "{}",
        mermaid.stdout
    );
    assert!(mermaid.stdout.contains(" --> "), "{}", mermaid.stdout);
    assert!(mermaid.stdout.contains("class "), "{}", mermaid.stdout);

    let cancelled = bora(&app, &["workflow", "cancel", &id, "--json"])
        .await
        .json();
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(app.workflow(&id).await.state, "cancelled");

    let deleted = bora(&app, &["workflow", "delete", &id]).await;
    assert!(deleted.ok().contains("deleted"));
    let gone = bora(&app, &["workflow", "show", &id]).await;
    assert_eq!(gone.code, 1, "{gone:?}");
    assert!(
        gone.stderr.contains("not_found") && gone.stderr.contains(&id),
        "the server's error is printed: {}",
        gone.stderr
    );
    app.stop().await;
}

#[tokio::test]
async fn task_verbs_add_list_show_cancel_and_errors() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(serde_json::json!({"name": "tasks"}))
        .await;
    let id = wf.id();

    let added = bora(
        &app,
        &[
            "task",
            "add",
            &id,
            "--server-id",
            "t-db",
            "--name",
            "db",
            "--group",
            "std.noop",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(added["name"], "db");
    assert_eq!(added["group"], "std.noop");
    let file = write_file(
        app.dir.path(),
        "task.yaml",
        "name: app\nserver_id: t-app\ndepends_on: [db]\ninputs:\n  PORT: 8080\n",
    );
    let out = bora(&app, &["task", "add", &id, "-f", &file]).await;
    let app_id = out.ok().trim().to_owned();
    let view = app.task(&id, "app").await;
    assert_eq!(view.id.to_string(), app_id);
    assert_eq!(view.inputs.get("PORT"), Some(&serde_json::json!(8080)));

    let listed = bora(&app, &["task", "list", &id, "--json"]).await.json();
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 2);
    let filtered = bora(
        &app,
        &["task", "list", &id, "--server-id", "t-app", "--json"],
    )
    .await
    .json();
    assert_eq!(filtered["tasks"][0]["name"], "app");
    assert_eq!(filtered["tasks"].as_array().unwrap().len(), 1);
    let table = bora(&app, &["task", "list", &id]).await;
    assert!(table.ok().starts_with("NAME"), "{}", table.stdout);

    // Why is it waiting? Its dependency (queued, no worker) and the server.
    app.wait_task_state(&id, "db", "queued").await;
    let why = bora(&app, &["task", "show", &id, "app"]).await;
    let why = why.ok();
    assert!(
        why.contains("waits for unfinished dependencies: db (queued)"),
        "{why}"
    );
    assert!(
        why.contains("server t-app: worker OFFLINE (no heartbeat ever received)"),
        "{why}"
    );
    let queued = bora(&app, &["task", "show", &id, "db"]).await;
    assert!(
        queued
            .ok()
            .contains("queue bora_tasks.t-db: 1 message(s) ready"),
        "{}",
        queued.stdout
    );
    let queued_json = bora(&app, &["task", "show", &id, "db", "--json"])
        .await
        .json();
    assert_eq!(queued_json["messages_ahead"], 1);
    assert_eq!(queued_json["server_last_seen"], Value::Null);

    let cancelled = bora(&app, &["task", "cancel", &id, "app"]).await;
    assert!(cancelled.ok().contains("cancelled"));
    // Never handed to the broker: cancelled and deleted.
    let (status, _) = app.get(&format!("/v1/workflows/{id}/tasks/app")).await;
    assert_eq!(status, 404);

    // Refusals: the server's code and message, exit 1.
    let dup = bora(
        &app,
        &["task", "add", &id, "--server-id", "t-db", "--name", "db"],
    )
    .await;
    assert_eq!(dup.code, 1, "{dup:?}");
    assert!(
        dup.stderr.contains("409") && dup.stderr.contains("duplicate_name"),
        "{}",
        dup.stderr
    );
    let bad = bora(&app, &["task", "add", &id, "--server-id", "bad id!"]).await;
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("validation_failed"), "{}", bad.stderr);
    let no_output = bora(&app, &["task", "output", &id, "db"]).await;
    assert_eq!(no_output.code, 1);
    assert!(
        no_output.stderr.contains("no result yet"),
        "{}",
        no_output.stderr
    );
    let usage = bora(&app, &["task", "add", &id]).await;
    assert_eq!(
        usage.code, 2,
        "missing --server-id is a usage error: {usage:?}"
    );
    let missing_file = bora(&app, &["workflow", "create", "-f", "/nonexistent.yaml"]).await;
    assert_eq!(missing_file.code, 1);
    let unreachable = {
        let mut cmd = client(&app, &["workflow", "list"]);
        cmd.env("BORA_URL", "http://127.0.0.1:9");
        finish(cmd.spawn().unwrap()).await
    };
    assert_eq!(unreachable.code, 1);
    assert!(
        unreachable.stderr.contains("cannot reach bora"),
        "{}",
        unreachable.stderr
    );
    app.stop().await;
}

#[tokio::test]
async fn token_is_sent_from_flag_and_environment() {
    let app = spawn_app_with(&[("BORA__API__TOKENS", "s3cret-s3cret-s3cret")]).await;
    let denied = bora(&app, &["workflow", "list"]).await;
    assert_eq!(denied.code, 1);
    assert!(denied.stderr.contains("unauthorized"), "{}", denied.stderr);
    bora(
        &app,
        &["workflow", "list", "--token", "s3cret-s3cret-s3cret"],
    )
    .await
    .ok();
    let mut cmd = client(&app, &["workflow", "list"]);
    cmd.env("BORA_TOKEN", "s3cret-s3cret-s3cret");
    finish(cmd.spawn().unwrap()).await.ok();
    app.stop().await;
}

#[tokio::test]
async fn output_and_watch_of_a_workflow_that_succeeds() {
    let app = spawn_app().await;
    let file = write_file(app.dir.path(), "wf.yaml", WORKFLOW_YAML);
    let id = bora(&app, &["workflow", "create", "-f", &file])
        .await
        .ok()
        .trim()
        .to_owned();
    let watch = client(&app, &["workflow", "watch", &id, "--json"])
        .spawn()
        .unwrap();
    let mut db = app.fake_worker("cli-db").await;
    let mut web = app.fake_worker("cli-app").await;
    let t = db.next_task().await;
    // Each step waits for the confirm, so the order of events is fixed.
    app.wait_task_state(&id, "db", "queued").await;
    db.started(&t).await;
    db.finish_with(
        &t,
        TaskResult::from_streams(t.attempt, 0, "db out\n".into(), "db warn\n".into()),
    )
    .await;
    let t = web.next_task().await;
    app.wait_task_state(&id, "app", "queued").await;
    web.started(&t).await;
    web.finish(&t, 0).await;

    let out = finish(watch).await;
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (end, events) = lines.split_last().unwrap();
    assert_eq!(end["state"], "succeeded");
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids increase, none repeated: {ids:?}"
    );
    let states = |task: &str| -> Vec<&str> {
        events
            .iter()
            .filter(|e| e["task_name"] == task)
            .map(|e| e["state"].as_str().unwrap())
            .collect()
    };
    assert_eq!(states("db"), ["waiting", "queued", "running", "succeeded"]);
    assert_eq!(states("app"), ["waiting", "queued", "running", "succeeded"]);

    let human = bora(&app, &["workflow", "watch", &id]).await;
    assert!(
        human
            .ok()
            .contains("workflow cli-flow succeeded: succeeded=2"),
        "{}",
        human.stdout
    );

    let output = bora(&app, &["task", "output", &id, "db"]).await;
    assert_eq!(output.ok(), "db out\n");
    assert_eq!(output.stderr, "db warn\n");
    let as_json = bora(&app, &["task", "output", &id, "db", "--json"])
        .await
        .json();
    assert_eq!(as_json["exit_code"], 0);
    assert_eq!(as_json["stderr"], "db warn\n");
    let shown = bora(&app, &["task", "show", &id, "db"]).await;
    assert!(shown.ok().contains("exit code: 0"), "{}", shown.stdout);
    app.stop().await;
}

#[tokio::test]
async fn watch_exits_3_when_the_workflow_fails() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(serde_json::json!({"name": "doomed", "tasks": [
            {"name": "a", "server_id": "w-fail"},
            {"name": "b", "server_id": "w-fail", "depends_on": ["a"]},
        ]}))
        .await;
    let id = wf.id();
    let watch = client(&app, &["workflow", "watch", &id]).spawn().unwrap();
    let mut w = app.fake_worker("w-fail").await;
    let t = w.next_task().await;
    w.finish(&t, 1).await;
    let out = finish(watch).await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stdout
            .contains("workflow doomed failed: failed=1 skipped=1"),
        "{}",
        out.stdout
    );
    w.expect_nothing(Duration::from_millis(100)).await;
    app.stop().await;
}

#[tokio::test]
async fn server_verbs_register_list_show_delete() {
    let app = spawn_app().await;
    let id = format!(
        "cli-srv-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    // register prints the ready URL alone on stdout, the note on stderr.
    let out = bora(&app, &["server", "register", &id]).await;
    let url = out.ok().trim().to_owned();
    assert!(url.starts_with("amqp://bora-srv-"), "{url}");
    assert!(out.stderr.contains("shown only now"), "{}", out.stderr);
    let conn = lapin::Connection::connect(&url, Default::default()).await;
    assert!(conn.is_ok(), "the issued URL does not connect");
    // A second registration rotates (JSON says so).
    let again = bora(&app, &["server", "register", &id, "--json"])
        .await
        .json();
    assert_eq!(again["rotated"], true);
    let listed = bora(&app, &["server", "list", "--json"]).await.json();
    assert!(
        listed["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["server_id"] == id.as_str() && s["registered"] == true)
    );
    let table = bora(&app, &["server", "list"]).await;
    assert!(table.ok().starts_with("SERVER"), "{}", table.stdout);
    assert!(table.stdout.contains(&id));
    let shown = bora(&app, &["server", "show", &id, "--json"]).await.json();
    assert_eq!(shown["kind"], "guest");
    bora(&app, &["server", "delete", &id]).await.ok();
    let gone = bora(&app, &["server", "show", &id]).await;
    assert_eq!(gone.code, 1, "{}", gone.stderr);
    assert!(gone.stderr.contains("not_found"), "{}", gone.stderr);
    let bad = bora(&app, &["server", "register", "bad id!"]).await;
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("validation_failed"), "{}", bad.stderr);
    app.stop().await;
}

#[tokio::test]
async fn server_labels_are_set_at_register_changed_by_label_and_filter_the_list() {
    let app = spawn_app().await;
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (web, db) = (format!("cli-web-{suffix}"), format!("cli-db-{suffix}"));
    let reg = bora(
        &app,
        &[
            "server", "register", &web, "--label", "role=web", "--label", "old=1", "--json",
        ],
    )
    .await
    .json();
    assert_eq!(
        reg["labels"],
        serde_json::json!({"old": "1", "role": "web"})
    );
    // The note on stderr names the labels too.
    let out = bora(&app, &["server", "register", &db, "--label", "role=db"]).await;
    out.ok();
    assert!(out.stderr.contains("labels role=db"), "{}", out.stderr);

    // KEY=VALUE sets, KEY- removes, the rest stays; the table shows LABELS.
    let out = bora(&app, &["server", "label", &web, "zone=a", "old-"]).await;
    let table = out.ok();
    assert!(table.starts_with("SERVER"), "{table}");
    assert!(table.lines().next().unwrap().contains("LABELS"), "{table}");
    assert!(table.contains("role=web,zone=a"), "{table}");
    assert!(!table.contains("old="), "{table}");
    let shown = bora(&app, &["server", "show", &web, "--json"]).await.json();
    assert_eq!(
        shown["labels"],
        serde_json::json!({"role": "web", "zone": "a"})
    );

    // A rotation without --label keeps them.
    let again = bora(&app, &["server", "register", &web, "--json"])
        .await
        .json();
    assert_eq!(again["rotated"], true);
    assert_eq!(
        again["labels"],
        serde_json::json!({"role": "web", "zone": "a"})
    );

    // The list: one label, two (both must match), none matching.
    let ids = |out: Value| -> Vec<String> {
        out["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["server_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let role = |r: &str| format!("role={r}");
    let listed = bora(&app, &["server", "list", "--label", &role("web"), "--json"])
        .await
        .json();
    assert_eq!(ids(listed), [web.as_str()]);
    let listed = bora(
        &app,
        &[
            "server", "list", "--label", "role=web", "--label", "zone=a", "--json",
        ],
    )
    .await
    .json();
    assert_eq!(ids(listed), [web.as_str()]);
    let listed = bora(
        &app,
        &[
            "server", "list", "--label", "role=db", "--label", "zone=a", "--json",
        ],
    )
    .await
    .json();
    assert!(ids(listed).is_empty());
    let table = bora(&app, &["server", "list", "--label", "role=db"]).await;
    let table = table.ok();
    assert!(table.contains(&db) && !table.contains(&web), "{table}");
    assert!(table.contains("role=db"), "{table}");

    // Bad labels are usage errors before any request (exit 2); an unknown
    // server is the API's 404 (exit 1).
    for args in [
        vec!["server", "label", web.as_str(), "novalue"],
        vec!["server", "label", web.as_str(), "bad key=v"],
        vec!["server", "list", "--label", "novalue"],
        vec!["server", "register", web.as_str(), "--label", "zone=a/b"],
    ] {
        let out = bora(&app, &args).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("label"), "{args:?}: {}", out.stderr);
    }
    let missing = bora(&app, &["server", "label", web.as_str()]).await;
    assert_eq!(missing.code, 2, "a change is required: {}", missing.stderr);
    let unknown = bora(&app, &["server", "label", "never-registered", "role=web"]).await;
    assert_eq!(unknown.code, 1, "{}", unknown.stderr);
    assert!(unknown.stderr.contains("not_found"), "{}", unknown.stderr);
    let shown = bora(&app, &["server", "show", &web, "--json"]).await.json();
    assert_eq!(
        shown["labels"],
        serde_json::json!({"role": "web", "zone": "a"})
    );

    bora(&app, &["server", "delete", &web]).await.ok();
    bora(&app, &["server", "delete", &db]).await.ok();
    app.stop().await;
}

#[tokio::test]
async fn the_shipped_example_passes_data_between_tasks_and_task_show_says_from_where() {
    let app = spawn_app().await;
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/database-and-app.yaml"
    );
    let id = bora(&app, &["workflow", "create", "-f", file])
        .await
        .ok()
        .trim()
        .to_owned();
    let mut db = app.fake_worker("db-1").await;
    let mut web = app.fake_worker("web-1").await;
    let t = db.next_task().await;
    assert_eq!(t.name, "db");
    let mut result = TaskResult::from_streams(t.attempt, 0, String::new(), String::new());
    result
        .outputs
        .insert("url".into(), "postgresql://app@db-1:5432/app".into());
    result.outputs.insert("password".into(), "pw-123".into());
    db.finish_with(&t, result).await;
    let t = web.next_task().await;
    assert_eq!(t.name, "app");
    assert_eq!(t.inputs["DB_URL"], "postgresql://app@db-1:5432/app");
    assert_eq!(t.inputs["DB_PASSWORD"], "pw-123");
    // The password is a secret output: the worker gets it, views do not.
    assert_eq!(t.secrets, ["DB_PASSWORD"]);
    let shown = bora(&app, &["task", "show", &id, "app"]).await;
    let text = shown.ok();
    assert!(
        text.contains("DB_URL = \"postgresql://app@db-1:5432/app\"  (from db.url, attempt 1)"),
        "{text}"
    );
    assert!(
        text.contains("DB_PASSWORD = \"***\"  (from db.password, attempt 1)"),
        "{text}"
    );
    let json = bora(&app, &["task", "show", &id, "db", "--json"]).await;
    assert_eq!(json.json()["result"]["outputs"]["password"], "***");
    assert!(!json.stdout.contains("pw-123") && !text.contains("pw-123"));
    web.finish(&t, 0).await;
    app.wait_workflow_state(&id, "succeeded").await;
}

/// A run operated from the CLI (SPEC 7.3), with a real worker: `build`
/// fails with a retryable exit code once and is retried, the gate waits for
/// `bora task approve`, the workflow is paused and resumed around it,
/// `deploy` fails with an exit code not to retry and is rerun. Every verb
/// prints what happened; a refusal exits 1 with the server's code.
#[tokio::test]
async fn operating_a_run_pause_resume_approve_attempts_rerun() {
    let app = spawn_app().await;
    let marks = app.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    // Each script fails on its first run (the mark file does not exist
    // yet) and succeeds on the next.
    let yaml = format!(
        r#"
name: cli-operate
tasks:
  - name: build
    server_id: cli-op
    retries: 2
    retry_delay_s: 1
    retry_backoff: 2.5
    retry_max_delay_s: 30
    retry_exit_codes: [75]
    inputs:
      MARK: {marks}/build
    config: |
      #!/bin/sh
      if [ ! -e "$MARK" ]; then touch "$MARK"; echo "try again later" >&2; exit 75; fi
      echo built
  - name: gate
    group: bora.approval
    depends_on: [build]
  - name: deploy
    server_id: cli-op
    depends_on: [gate]
    retries: 1
    retry_exit_codes: [75]
    inputs:
      MARK: {marks}/deploy
    config: |
      #!/bin/sh
      if [ ! -e "$MARK" ]; then touch "$MARK"; echo "bad config" >&2; exit 3; fi
      echo deployed
"#,
        marks = marks.display()
    );
    let file = write_file(app.dir.path(), "operate.yaml", &yaml);
    let id = bora(&app, &["workflow", "create", "-f", &file])
        .await
        .ok()
        .trim()
        .to_owned();
    // The retry policy came through the YAML file.
    let build = bora(&app, &["task", "show", &id, "build", "--json"])
        .await
        .json();
    assert_eq!(build["retries"], 2, "{build}");
    assert_eq!(build["retry_backoff"], 2.5, "{build}");
    assert_eq!(build["retry_max_delay_s"], 30, "{build}");
    assert_eq!(
        build["retry_exit_codes"],
        serde_json::json!([75]),
        "{build}"
    );
    let gate = app.task(&id, "gate").await;
    assert_eq!(gate.server_id, None, "{gate:?}");

    let watch = client(&app, &["workflow", "watch", &id]).spawn().unwrap();
    let worker = WorkerProcess::start(&app, "cli-op");

    // build: exit 75 is retryable; the second attempt succeeds and the
    // gate opens.
    let gate = app.wait_task_state(&id, "gate", "running").await;
    assert!(gate.result.is_none(), "{gate:?}");
    let build = app.task(&id, "build").await;
    assert_eq!((build.state.as_str(), build.attempt), ("succeeded", 2));
    let shown = bora(&app, &["task", "show", &id, "gate"]).await;
    assert!(
        shown
            .ok()
            .contains("an approval gate: waits for `bora task approve` or `bora task reject`"),
        "{}",
        shown.stdout
    );

    let paused = bora(&app, &["workflow", "pause", &id]).await;
    assert!(
        paused
            .ok()
            .starts_with(&format!("workflow {id} running (paused): ")),
        "{}",
        paused.stdout
    );
    let again = bora(&app, &["workflow", "pause", &id]).await;
    assert_eq!(again.code, 1, "{again:?}");
    assert!(
        again.stderr.contains("409") && again.stderr.contains("workflow_paused"),
        "{}",
        again.stderr
    );

    // Approved while paused: deploy becomes ready and waits for the resume.
    let comment = "CHG-7 approved by ops";
    let approved = bora(
        &app,
        &["task", "approve", &id, "gate", "--comment", comment],
    )
    .await;
    assert_eq!(approved.ok(), "task gate succeeded (attempt 1)\n");
    let deploy = app.task(&id, "deploy").await;
    assert_eq!(deploy.state, "waiting", "{deploy:?}");
    assert_eq!(deploy.blocked_by, ["workflow paused"], "{deploy:?}");
    let why = bora(&app, &["task", "show", &id, "deploy"]).await;
    let why = why.ok();
    assert!(
        why.contains("the workflow is paused: `bora workflow resume` releases it"),
        "{why}"
    );
    assert!(!why.contains("waits for unfinished dependencies"), "{why}");
    let shown = bora(&app, &["workflow", "show", &id]).await;
    assert!(
        shown.ok().contains(
            "State:       running (paused: nothing more is published until `bora workflow resume`)"
        ),
        "{}",
        shown.stdout
    );
    let not_pending = bora(&app, &["task", "approve", &id, "gate"]).await;
    assert_eq!(not_pending.code, 1, "{not_pending:?}");
    assert!(
        not_pending.stderr.contains("409") && not_pending.stderr.contains("approval_not_pending"),
        "{}",
        not_pending.stderr
    );
    let succeeded = bora(&app, &["task", "rerun", &id, "build"]).await;
    assert_eq!(succeeded.code, 1, "{succeeded:?}");
    assert!(
        succeeded.stderr.contains("409") && succeeded.stderr.contains("task_succeeded"),
        "{}",
        succeeded.stderr
    );
    // Still held: nothing was published for deploy meanwhile.
    let deploy = app.task(&id, "deploy").await;
    assert_eq!((deploy.state.as_str(), deploy.attempt), ("waiting", 0));

    let resumed = bora(&app, &["workflow", "resume", &id]).await;
    let resumed = resumed.ok();
    assert!(
        resumed.starts_with(&format!("workflow {id} running: ")),
        "{resumed}"
    );
    assert!(!resumed.contains("paused"), "{resumed}");

    // deploy: exit 3 is not in retry_exit_codes, so its retry is not used.
    let failed = app.wait_workflow_state(&id, "failed").await;
    assert!(!failed.paused, "{failed:?}");
    let deploy = app.task(&id, "deploy").await;
    assert_eq!((deploy.state.as_str(), deploy.attempt), ("failed", 1));
    assert_eq!(deploy.result().exit_code, 3, "{deploy:?}");

    let watched = finish(watch).await;
    assert_eq!(watched.code, 3, "{watched:?}");
    for line in [
        "  workflow paused\n",
        "  approval gate: waits for a decision\n",
        "  approval gate: succeeded\n",
        "  workflow resumed\n",
        "  task deploy on cli-op: failed (attempt 1)\n",
        "workflow cli-operate failed: ",
    ] {
        assert!(
            watched.stdout.contains(line),
            "{line:?} in\n{}",
            watched.stdout
        );
    }
    // deploy left `waiting` only after the resume.
    let lines: Vec<&str> = watched.stdout.lines().collect();
    let at = |pred: &dyn Fn(&str) -> bool| {
        lines
            .iter()
            .position(|l| pred(l))
            .unwrap_or_else(|| panic!("no such line in\n{}", watched.stdout))
    };
    let paused_at = at(&|l| l.ends_with("  workflow paused"));
    let resumed_at = at(&|l| l.ends_with("  workflow resumed"));
    let deploy_out = at(&|l| l.contains("  task deploy on cli-op: ") && !l.contains(": waiting"));
    assert!(
        paused_at < resumed_at && resumed_at < deploy_out,
        "{}",
        watched.stdout
    );

    let not_paused = bora(&app, &["workflow", "resume", &id]).await;
    assert_eq!(not_paused.code, 1, "{not_paused:?}");
    assert!(
        not_paused.stderr.contains("409") && not_paused.stderr.contains("workflow_not_paused"),
        "{}",
        not_paused.stderr
    );
    assert_eq!(not_paused.stdout, "");

    // Every attempt of build: the retried failure, then the success.
    let attempts = bora(&app, &["task", "attempts", &id, "build", "--json"])
        .await
        .json();
    assert_eq!(attempts["current_attempt"], 2, "{attempts}");
    let summary: Vec<(i64, &str, i64)> = attempts["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt"].as_i64().unwrap(),
                a["state"].as_str().unwrap(),
                a["result"]["exit_code"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(summary, [(1, "failed", 75), (2, "succeeded", 0)]);
    let table = bora(&app, &["task", "attempts", &id, "build"]).await;
    let rows: Vec<Vec<&str>> = table
        .ok()
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["ATTEMPT", "ENDED", "EXIT", "ERROR", "/", "DECISION"]
    );
    assert_eq!(rows[1][..3], ["1", "failed", "75"], "{}", table.stdout);
    assert_eq!(rows[2][..3], ["2", "succeeded", "0"], "{}", table.stdout);
    assert_eq!(rows.len(), 3, "{}", table.stdout);
    let gate_attempts = bora(&app, &["task", "attempts", &id, "gate"]).await;
    let text = gate_attempts.ok();
    assert!(text.contains("approved at "), "{text}");
    assert!(text.ends_with(&format!(": {comment}\n")), "{text}");

    // Rerun the failed task: a new attempt, and the workflow succeeds.
    let rerun = bora(&app, &["task", "rerun", &id, "deploy", "--json"])
        .await
        .json();
    assert_eq!(rerun["attempt"], 2, "{rerun}");
    assert_ne!(rerun["state"], "failed", "{rerun}");
    let done = app.wait_workflow_state(&id, "succeeded").await;
    assert_eq!(done.task_counts.succeeded, 3, "{done:?}");
    let attempts = bora(&app, &["task", "attempts", &id, "deploy"]).await;
    let rows: Vec<Vec<&str>> = attempts
        .ok()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{}", attempts.stdout);
    assert_eq!(rows[0][..3], ["1", "failed", "3"], "{}", attempts.stdout);
    assert_eq!(rows[1][..3], ["2", "succeeded", "0"], "{}", attempts.stdout);
    let nothing = bora(&app, &["workflow", "rerun", &id]).await;
    assert_eq!(nothing.code, 1, "{nothing:?}");
    assert!(
        nothing.stderr.contains("409") && nothing.stderr.contains("nothing_to_rerun"),
        "{}",
        nothing.stderr
    );
    drop(worker);
    app.stop().await;
}

/// The shipped rolling-upgrade example through the CLI (SPEC 7.2): servers
/// labelled at registration, a group released one child at a time, its
/// outputs gathered per server for the task after it, which runs on any one
/// of them; `task show` and `workflow graph` show the group.
#[tokio::test]
async fn the_shipped_rollout_example_runs_on_every_labelled_server() {
    let app = spawn_app().await;
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let servers = [format!("cli-w1-{suffix}"), format!("cli-w2-{suffix}")];
    for s in &servers {
        bora(&app, &["server", "register", s, "--label", "role=web"])
            .await
            .ok();
    }
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/web-rollout.yaml");
    let id = bora(&app, &["workflow", "create", "-f", file])
        .await
        .ok()
        .trim()
        .to_owned();
    let mut workers = Vec::new();
    for s in &servers {
        workers.push(app.fake_worker(s).await);
    }
    // One child at a time, in server order.
    for w in &mut workers {
        let t = w.next_task().await;
        assert!(t.name.starts_with("rollout["), "{}", t.name);
        let mut result = TaskResult::from_streams(t.attempt, 0, String::new(), String::new());
        result.outputs.insert("version".into(), "2.1".into());
        w.finish_with(&t, result).await;
    }
    let smoke = app.wait_task_state(&id, "smoke", "queued").await;
    let on = smoke.server_id.clone().expect("any: a server was chosen");
    let w = servers
        .iter()
        .position(|s| *s == on)
        .expect("a labelled server");
    let t = workers[w].next_task().await;
    assert_eq!(t.name, "smoke");
    assert_eq!(
        t.inputs["VERSIONS"],
        serde_json::json!({&servers[0]: "2.1", &servers[1]: "2.1"})
    );
    workers[w].finish(&t, 0).await;
    app.wait_workflow_state(&id, "succeeded").await;

    let shown = bora(&app, &["task", "show", &id, "rollout"]).await;
    let text = shown.ok();
    for line in [
        "Target:      role=web (all, batch 1, at most 0 failures)".to_owned(),
        format!("Matched:     {}, {}", servers[0], servers[1]),
        "Children:    2/2 succeeded".to_owned(),
    ] {
        assert!(text.contains(&line), "{line:?} in {text}");
    }
    let child_out = bora(
        &app,
        &["task", "show", &id, &format!("rollout[{}]", servers[0])],
    )
    .await;
    let child = child_out.ok();
    assert!(child.contains("Group task:  rollout"), "{child}");
    let graph = bora(&app, &["workflow", "graph", &id]).await;
    let dot = graph.ok();
    assert!(dot.contains("group: 2/2 succeeded"), "{dot}");
    assert!(!dot.contains("rollout["), "children are not drawn: {dot}");
    for s in &servers {
        bora(&app, &["server", "delete", s]).await.ok();
    }
}

/// `bora task output --follow` (SPEC 7.5) with a real worker: lines are
/// printed as the task prints them (the first while it still runs), stdout
/// to stdout and stderr to stderr, all of them once; it exits 0 when the
/// task succeeded and 3 when it did not.
#[tokio::test]
async fn task_output_follow_prints_live_and_ends_with_the_task() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let app = spawn_app().await;
    let server = format!(
        "cli-live-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let _worker = WorkerProcess::start(&app, &server);
    let script = "for i in $(seq 1 12); do echo \"line $i\"; sleep 0.2; done; echo bye >&2";
    let wf = app
        .create_workflow(serde_json::json!({"name": "follow", "tasks": [
            {"name": "t", "server_id": server, "config": script},
            {"name": "bad", "server_id": server, "depends_on": ["t"], "config": "echo no; exit 2"}
        ]}))
        .await;
    let id = wf.id();
    app.wait_task_state(&id, "t", "running").await;
    let mut child = client(&app, &["task", "output", &id, "t", "--follow"])
        .spawn()
        .expect("spawn bora");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("a line while the task runs")
        .unwrap();
    assert_eq!(first.as_deref(), Some("line 1"));
    assert_eq!(app.task(&id, "t").await.state, "running", "printed live");
    let mut rest = Vec::new();
    while let Some(l) = lines.next_line().await.unwrap() {
        rest.push(l);
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0));
    let expected: Vec<String> = (2..=12).map(|i| format!("line {i}")).collect();
    assert_eq!(rest, expected, "every line once, in order");
    assert_eq!(stderr, "bye\n");
    // A task that fails: its output, then exit 3.
    app.wait_task_state(&id, "bad", "failed").await;
    let out = bora(&app, &["task", "output", &id, "bad", "--follow"]).await;
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.stdout, "no\n");
}
