//! Outputs of one task as inputs of another (SPEC 7.1): the reference
//! `{"get_output": [task, output]}`, its implied dependency, its checks at
//! creation and at PATCH, and its resolution when the consumer is released,
//! with fake workers choosing each result and real workers running scripts.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use bora::protocol::TaskResult;

/// A result of attempt `attempt` with these outputs.
fn with_outputs(attempt: u32, exit_code: i64, stdout: &str, outputs: Value) -> TaskResult {
    let mut r = TaskResult::from_streams(attempt, exit_code, stdout.into(), String::new());
    if let Value::Object(m) = outputs {
        r.outputs = m;
    }
    r
}

#[tokio::test]
async fn a_declared_output_reaches_the_consumer_with_where_it_came_from() {
    let app = spawn_app().await;
    let mut db = app.fake_worker("db-1").await;
    let mut web = app.fake_worker("web-1").await;
    let wf = app
        .create_workflow(json!({
            "name": "refs",
            "tasks": [
                {"name": "app", "server_id": "web-1",
                 "inputs": {"DB_URL": {"get_output": ["db", "url"]}, "MODE": "prod"}},
                {"name": "db", "server_id": "db-1", "outputs": ["url"]}
            ]
        }))
        .await;
    let id = wf.id();
    // The reference alone orders them.
    let app_task = app.task(&id, "app").await;
    assert_eq!(app_task.depends_on, vec!["db".to_owned()]);
    assert_eq!(app_task.state, "waiting");
    assert_eq!(app_task.blocked_by, vec!["db".to_owned()]);
    assert!(app_task.resolved_inputs.is_none(), "{app_task:?}");
    web.expect_nothing(Duration::from_millis(300)).await;

    let t = db.next_task().await;
    db.finish_with(
        &t,
        with_outputs(t.attempt, 0, "", json!({"url": "postgres://db-1/app"})),
    )
    .await;
    let m = web.next_task().await;
    assert_eq!(m.inputs["DB_URL"], json!("postgres://db-1/app"));
    assert_eq!(m.inputs["MODE"], json!("prod"));
    let shown = app.task(&id, "app").await;
    // Inputs as written, and what the reference resolved to.
    assert_eq!(shown.inputs["DB_URL"], json!({"get_output": ["db", "url"]}));
    let resolved = shown
        .resolved_inputs
        .expect("resolved_inputs once released");
    let db_task = app.task(&id, "db").await;
    assert_eq!(
        resolved["DB_URL"],
        json!({"value": "postgres://db-1/app",
               "from": {"task": "db", "task_id": db_task.id, "output": "url", "attempt": 1}})
    );
    assert_eq!(resolved.len(), 1, "only references are listed");
    web.finish(&m, 0).await;
    app.wait_workflow_state(&id, "succeeded").await;
}

#[tokio::test]
async fn a_chain_extends_a_value_and_heats_result_outputs_are_referable() {
    let app = spawn_app().await;
    let mut w = app.fake_worker("s").await;
    let wf = app
        .create_workflow(json!({
            "name": "chain",
            "tasks": [
                {"name": "one", "server_id": "s", "outputs": ["v"]},
                {"name": "two", "server_id": "s", "outputs": ["v"],
                 "inputs": {"IN": {"get_output": ["one", "v"]}}},
                {"name": "three", "server_id": "s",
                 "inputs": {"IN": {"get_output": ["two", "v"]},
                            "OUT": {"get_output": ["one", "deploy_stdout"]},
                            "CODE": {"get_output": ["two", "deploy_status_code"]}}}
            ]
        }))
        .await;
    let id = wf.id();
    let mut value = "a".to_owned();
    for step in ["one", "two"] {
        let t = w.next_task().await;
        assert_eq!(t.name, step);
        if step == "two" {
            assert_eq!(t.inputs["IN"], json!(value));
        }
        value.push('b');
        w.finish_with(
            &t,
            with_outputs(t.attempt, 0, &format!("{step} said\n"), json!({"v": value})),
        )
        .await;
    }
    let t = w.next_task().await;
    assert_eq!(t.name, "three");
    assert_eq!(t.inputs["IN"], json!("abb"));
    assert_eq!(t.inputs["OUT"], json!("one said\n"));
    assert_eq!(t.inputs["CODE"], json!(0));
    w.finish(&t, 0).await;
    app.wait_workflow_state(&id, "succeeded").await;
}

#[tokio::test]
async fn bad_references_are_refused_at_creation_and_at_patch() {
    let app = spawn_app().await;
    let task = |inputs: Value| json!({"name": "t", "server_id": "s", "inputs": inputs});
    let cases = [
        (
            json!({"X": {"get_output": ["nope", "url"]}}),
            "invalid_reference",
        ),
        (
            json!({"X": {"get_output": ["db", "undeclared"]}}),
            "invalid_reference",
        ),
        (json!({"X": {"get_output": ["db"]}}), "invalid_reference"),
        (
            json!({"X": {"get_output": ["t", "deploy_stdout"]}}),
            "dependency_cycle",
        ),
    ];
    for (inputs, code) in cases {
        let r = app
            .post(
                "/v1/workflows",
                json!({"name": "w", "tasks": [
                    {"name": "db", "server_id": "s", "outputs": ["url"]},
                    task(inputs.clone())
                ]}),
            )
            .await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, code);
    }
    // A reference that closes a cycle through dependencies.
    let r = app
        .post(
            "/v1/workflows",
            json!({"name": "w", "tasks": [
                {"name": "a", "server_id": "s", "outputs": ["o"], "depends_on": ["b"]},
                {"name": "b", "server_id": "s", "inputs": {"X": {"get_output": ["a", "o"]}}}
            ]}),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "dependency_cycle");

    // PATCH re-validates: a waiting task may gain a reference only to a
    // task and output that exist, and the reference orders it.
    let wf = app
        .create_workflow(json!({"name": "p", "tasks": [
            {"name": "gate", "server_id": "s"},
            {"name": "db", "server_id": "s", "outputs": ["url"], "depends_on": ["gate"]},
            {"name": "app", "server_id": "s", "depends_on": ["gate"]}
        ]}))
        .await;
    let id = wf.id();
    let path = format!("/v1/workflows/{id}/tasks/app");
    let r = app
        .patch(
            &path,
            json!({"inputs": {"X": {"get_output": ["db", "port"]}}}),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_reference");
    let r = app
        .patch(
            &path,
            json!({"inputs": {"X": {"get_output": ["ghost", "url"]}}}),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_reference");
    let r = app
        .patch(
            &format!("/v1/workflows/{id}/tasks/db"),
            json!({"inputs": {"X": {"get_output": ["db", "url"]}}}),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "dependency_cycle");
    let patched = app
        .patch_task(
            &id,
            "app",
            json!({"inputs": {"X": {"get_output": ["db", "url"]}}}),
        )
        .await;
    let mut deps = patched.depends_on.clone();
    deps.sort();
    assert_eq!(deps, vec!["db".to_owned(), "gate".to_owned()]);
    // And a cycle through the implied dependency is refused.
    let r = app
        .patch(
            &format!("/v1/workflows/{id}/tasks/db"),
            json!({"depends_on": ["gate", "app"]}),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "dependency_cycle");
    // Nothing was left half-changed by the refusals.
    let app_task = app.task(&id, "app").await;
    assert_eq!(app_task.inputs["X"], json!({"get_output": ["db", "url"]}));
}

#[tokio::test]
async fn an_unresolvable_input_fails_the_consumer_without_publishing_it() {
    let app = spawn_app().await;
    let mut p = app.fake_worker("p").await;
    let mut c = app.fake_worker("c").await;
    let wf = app
        .create_workflow(json!({"name": "u", "tasks": [
            {"name": "failing", "server_id": "p", "outputs": ["url"]},
            {"name": "silent", "server_id": "p", "outputs": ["url"]},
            {"name": "after-failing", "server_id": "c", "on_dependency_failure": "run",
             "inputs": {"DB_URL": {"get_output": ["failing", "url"]}}},
            {"name": "after-silent", "server_id": "c",
             "inputs": {"DB_URL": {"get_output": ["silent", "url"]}}},
            {"name": "downstream", "server_id": "c", "depends_on": ["after-silent"]}
        ]}))
        .await;
    let id = wf.id();
    for _ in 0..2 {
        let t = p.next_task().await;
        match t.name.as_str() {
            // The producer fails: the consumer runs anyway by policy, but
            // its input has no value.
            "failing" => p.finish(&t, 1).await,
            // The producer succeeds without writing its declared output.
            _ => {
                p.finish_with(&t, with_outputs(t.attempt, 0, "", json!({})))
                    .await
            }
        }
    }
    let a = app.wait_task_state(&id, "after-failing", "failed").await;
    assert_eq!(
        a.result().error.as_deref(),
        Some("unresolved input DB_URL: failing.url")
    );
    assert_eq!(a.attempt, 0, "never handed to the broker");
    let b = app.wait_task_state(&id, "after-silent", "failed").await;
    assert_eq!(
        b.result().error.as_deref(),
        Some("unresolved input DB_URL: silent.url")
    );
    // Its dependents are released as after any failure.
    app.wait_task_state(&id, "downstream", "skipped").await;
    c.expect_nothing(Duration::from_millis(500)).await;
    app.wait_workflow_state(&id, "failed").await;
}

#[tokio::test]
async fn a_value_over_the_input_limit_fails_the_consumer() {
    let app = spawn_app_with(&[("BORA__DISPATCH__MAX_INPUT_BYTES", "64")]).await;
    let mut w = app.fake_worker("s").await;
    let wf = app
        .create_workflow(json!({"name": "big", "tasks": [
            {"name": "big", "server_id": "s", "outputs": ["blob"]},
            {"name": "small", "server_id": "s", "outputs": ["v"]},
            {"name": "eats-big", "server_id": "s", "inputs": {"B": {"get_output": ["big", "blob"]}}},
            {"name": "eats-small", "server_id": "s", "inputs": {"V": {"get_output": ["small", "v"]}}}
        ]}))
        .await;
    let id = wf.id();
    for _ in 0..2 {
        let t = w.next_task().await;
        let outputs = if t.name == "big" {
            json!({"blob": "x".repeat(100)})
        } else {
            json!({"v": "fits"})
        };
        let key = if t.name == "big" { "blob" } else { "v" };
        assert!(outputs.get(key).is_some());
        w.finish_with(&t, with_outputs(t.attempt, 0, "", outputs))
            .await;
    }
    let t = w.next_task().await;
    assert_eq!(t.name, "eats-small");
    assert_eq!(t.inputs["V"], json!("fits"));
    let failed = app.wait_task_state(&id, "eats-big", "failed").await;
    let error = failed.result().error.clone().unwrap_or_default();
    assert!(
        error.contains("big.blob") && error.contains("dispatch.max_input_bytes"),
        "{error}"
    );
}

#[tokio::test]
async fn a_task_added_after_its_producer_ended_resolves_at_once() {
    let app = spawn_app().await;
    let mut w = app.fake_worker("s").await;
    let wf = app
        .create_workflow(json!({"name": "later", "tasks": [
            {"name": "db", "server_id": "s", "outputs": ["url"]}
        ]}))
        .await;
    let id = wf.id();
    let t = w.next_task().await;
    w.finish_with(&t, with_outputs(t.attempt, 0, "", json!({"url": "pg://x"})))
        .await;
    app.wait_task_state(&id, "db", "succeeded").await;
    // Added after its producer ended: released at creation, resolved then.
    let added = app
        .add_task(
            &id,
            json!({"name": "app", "server_id": "s",
                   "inputs": {"DB_URL": {"get_output": ["db", "url"]}}}),
        )
        .await;
    assert_eq!(added.depends_on, vec!["db".to_owned()]);
    assert_eq!(
        added
            .resolved_inputs
            .as_ref()
            .map(|r| r["DB_URL"]["value"].clone()),
        Some(json!("pg://x"))
    );
    let m = w.next_task().await;
    assert_eq!(m.inputs["DB_URL"], json!("pg://x"));
}

#[tokio::test]
async fn real_workers_pass_a_database_url_between_servers() {
    let app = spawn_app().await;
    let _db = crate::e2e::start_worker(&app, "db-server", &[]).await;
    let _web = crate::e2e::start_worker(&app, "web-server", &[]).await;
    let wf = app
        .create_workflow(json!({"name": "deploy", "tasks": [
            {"name": "app", "server_id": "web-server", "outputs": ["seen"],
             "inputs": {"DB_URL": {"get_output": ["db", "url"]},
                        "DB_PASSWORD": {"get_output": ["db", "password"]}},
             "config": "#!/bin/sh\necho \"app got $DB_URL\"\nprintf '%s|%s' \"$DB_URL\" \"$DB_PASSWORD\" > \"$heat_outputs_path.seen\"\n"},
            {"name": "db", "server_id": "db-server", "outputs": ["url", "password"],
             "config": "#!/bin/sh\nprintf 'postgres://db-server:5432/app' > \"$heat_outputs_path.url\"\nprintf 's3cr3t-42' > \"$heat_outputs_path.password\"\n"}
        ]}))
        .await;
    let id = wf.id();
    app.wait_workflow_state(&id, "succeeded").await;
    let shown = app.task(&id, "app").await;
    assert_eq!(
        shown.result().outputs["seen"],
        json!("postgres://db-server:5432/app|s3cr3t-42")
    );
    assert_eq!(
        shown.result().stdout,
        "app got postgres://db-server:5432/app\n"
    );
}

#[tokio::test]
async fn real_workers_extend_a_value_down_a_chain_of_three() {
    let app = spawn_app().await;
    let _x = crate::e2e::start_worker(&app, "chain-x", &[]).await;
    let _y = crate::e2e::start_worker(&app, "chain-y", &[]).await;
    let step = |name: &str, server: &str, input: Value| {
        json!({"name": name, "server_id": server, "outputs": ["v"],
               "inputs": {"IN": input},
               "config": "#!/bin/sh\necho \"step got $IN\"\nprintf '%s+' \"$IN\" > \"$heat_outputs_path.v\"\n"})
    };
    let wf = app
        .create_workflow(json!({"name": "extend", "tasks": [
            step("one", "chain-x", json!("a")),
            step("two", "chain-y", json!({"get_output": ["one", "v"]})),
            step("three", "chain-x", json!({"get_output": ["two", "v"]})),
            {"name": "report", "server_id": "chain-y", "outputs": ["said", "code"],
             "inputs": {"SAID": {"get_output": ["three", "deploy_stdout"]},
                        "CODE": {"get_output": ["three", "deploy_status_code"]}},
             "config": "#!/bin/sh\nprintf '%s' \"$SAID\" > \"$heat_outputs_path.said\"\nprintf '%s' \"$CODE\" > \"$heat_outputs_path.code\"\n"}
        ]}))
        .await;
    let id = wf.id();
    app.wait_workflow_state(&id, "succeeded").await;
    let three = app.task(&id, "three").await;
    assert_eq!(three.result().outputs["v"], json!("a+++"));
    assert_eq!(three.result().stdout, "step got a++\n");
    let report = app.task(&id, "report").await;
    assert_eq!(report.result().outputs["said"], json!("step got a++\n"));
    assert_eq!(report.result().outputs["code"], json!("0"));
    let from = &report.resolved_inputs.expect("resolved")["CODE"]["from"];
    assert_eq!(from["task"], json!("three"));
    assert_eq!(from["output"], json!("deploy_status_code"));
}
