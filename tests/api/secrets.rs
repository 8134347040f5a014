//! Secrets (SPEC 7.4) through the APIs, on the store this run selected:
//! only the task message carries the plain value (a stand-in worker reads
//! it off the queue), every REST and RPC view masks it, a secret output is
//! a secret input of its consumers, bad secrets are 422, a patch keeps
//! what it does not replace; and the store's key: the key file beside an
//! SQLite database, kept across a restart, PostgreSQL without a key, a
//! wrong key, a value that does not open.

use std::time::Duration;

use bora::protocol::TaskResult;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// Every text of a view, for a search of the plain value.
fn text(v: &Value) -> String {
    v.to_string()
}

/// A raw RPC call's result (the RPC API runs without tokens here).
async fn rpc(caller: &mut RpcCaller, method: &str, args: Value) -> Value {
    let req = caller.call(method, args, None);
    caller.publish(&req).await;
    let reply = caller
        .reply(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("no answer to {method}"));
    assert_eq!(reply.failure, None, "{method}");
    reply.result
}

#[tokio::test]
async fn only_the_task_message_carries_a_secret_and_every_view_masks_it() {
    let app = spawn_app().await;
    let (sa, sb) = (unique("sa"), unique("sb"));
    let mut wa = app.fake_worker(&sa).await;
    let mut wb = app.fake_worker(&sb).await;
    let pw = unique("pw");
    let token = unique("tok");
    let wf = app
        .create_workflow(json!({"name": "secrets", "tasks": [
            {"name": "db", "server_id": sa,
             "inputs": {"PW": {"secret": pw}, "USER": "app"},
             "outputs": [{"name": "token", "secret": true}, "url"]},
            {"name": "app", "server_id": sb,
             "inputs": {"TOKEN": {"get_output": ["db", "token"]},
                        "URL": {"get_output": ["db", "url"]}}}
        ]}))
        .await;
    let id = wf.id();

    // The message: the plain value, and its name among the secrets.
    let t = wa.next_task().await;
    assert_eq!(t.inputs["PW"], json!(pw));
    assert_eq!(t.inputs["USER"], json!("app"));
    assert_eq!(t.secrets, vec!["PW".to_owned()]);
    assert!(t.outputs.iter().any(|o| o.name == "token" && o.secret));
    wa.started(&t).await;
    let mut r = TaskResult::from_streams(t.attempt, 0, "done\n".into(), String::new());
    r.outputs.insert("token".into(), json!(token));
    r.outputs.insert("url".into(), json!("pg://db"));
    wa.finish_with(&t, r).await;

    // The consumer gets the producer's secret output, named a secret.
    let c = wb.next_task().await;
    assert_eq!(c.inputs["TOKEN"], json!(token));
    assert_eq!(c.inputs["URL"], json!("pg://db"));
    assert_eq!(c.secrets, vec!["TOKEN".to_owned()]);
    wb.finish(&c, 0).await;
    app.wait_workflow_state(&id, "succeeded").await;

    // REST.
    let mut views = Vec::new();
    for path in [
        format!("/v1/workflows/{id}/tasks/db"),
        format!("/v1/workflows/{id}/tasks/app"),
        format!("/v1/workflows/{id}/tasks"),
        format!("/v1/workflows/{id}/tasks/db/attempts"),
        format!("/v1/workflows/{id}/tasks/db?format=heat"),
    ] {
        let (s, v) = app.get(&path).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        views.push(v);
    }
    let (db, consumer) = (&views[0], &views[1]);
    assert_eq!(db["inputs"]["PW"], json!({"secret": "***"}));
    assert_eq!(db["inputs"]["USER"], "app");
    assert_eq!(db["result"]["outputs"]["token"], "***");
    assert_eq!(db["result"]["outputs"]["url"], "pg://db");
    assert_eq!(
        consumer["resolved_inputs"]["TOKEN"]["value"], "***",
        "{consumer}"
    );
    assert_eq!(consumer["resolved_inputs"]["TOKEN"]["secret"], true);
    assert_eq!(consumer["resolved_inputs"]["URL"]["value"], "pg://db");
    assert!(consumer["resolved_inputs"]["URL"].get("secret").is_none());
    assert_eq!(views[3]["attempts"][0]["result"]["outputs"]["token"], "***");
    assert_eq!(views[4]["token"], "***", "Heat's signal body");

    // The oslo RPC API answers with the same views.
    let mut caller = RpcCaller::connect(&app).await;
    caller.wait_ready(None).await;
    views.push(
        rpc(
            &mut caller,
            "get_task",
            json!({"workflow_id": id, "task": "db"}),
        )
        .await,
    );
    views.push(
        rpc(
            &mut caller,
            "get_task",
            json!({"workflow_id": id, "task": "app"}),
        )
        .await,
    );
    views.push(rpc(&mut caller, "list_tasks", json!({"workflow_id": id})).await);
    assert_eq!(views[5]["inputs"]["PW"], json!({"secret": "***"}));
    assert_eq!(views[6]["resolved_inputs"]["TOKEN"]["value"], "***");
    for v in &views {
        let t = text(v);
        assert!(!t.contains(&pw) && !t.contains(&token), "{t}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_secret_that_is_not_one_string_is_refused() {
    let app = spawn_app().await;
    for bad in [
        json!({"secret": 5}),
        json!({"secret": "pw", "other": 1}),
        // What bora keeps: a client may not hand it a sealed value.
        json!({"secret": {"$sealed": "v1:AAAA"}}),
    ] {
        let r = app
            .post(
                "/v1/workflows",
                json!({"name": "bad", "tasks": [
                    {"name": "t", "server_id": "s", "inputs": {"PW": bad}}
                ]}),
            )
            .await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert_eq!(r.1["error"]["details"][0]["field"], "tasks[0].inputs");
    }
    let r = app
        .post(
            "/v1/workflows",
            json!({"name": "bad", "tasks": [
                {"name": "t", "server_id": "s", "outputs": [{"name": "o", "secret": "yes"}]}
            ]}),
        )
        .await;
    assert_eq!(r.0, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.1);
    app.stop().await;
}

#[tokio::test]
async fn a_patch_keeps_a_secret_it_does_not_replace() {
    let app = spawn_app().await;
    let server = unique("s");
    let mut w = app.fake_worker(&server).await;
    let (old, new) = (unique("old"), unique("new"));
    let wf = app
        .create_workflow(json!({"name": "patched", "tasks": [
            {"name": "gate", "group": "bora.approval"},
            {"name": "t", "server_id": server, "depends_on": ["gate"],
             "inputs": {"PW": {"secret": old}}},
            {"name": "u", "server_id": server, "depends_on": ["gate"],
             "inputs": {"PW": {"secret": old}}}
        ]}))
        .await;
    let id = wf.id();
    // A change elsewhere keeps the sealed secret; new inputs are sealed anew.
    let t = app
        .patch_task(&id, "t", json!({"timeout_s": 60, "config": "echo"}))
        .await;
    assert_eq!(t.inputs["PW"], json!({"secret": "***"}));
    let u = app
        .patch_task(&id, "u", json!({"inputs": {"PW": {"secret": new}}}))
        .await;
    assert_eq!(u.inputs["PW"], json!({"secret": "***"}));
    let r = app
        .patch(
            &format!("/v1/workflows/{id}/tasks/u"),
            json!({"inputs": {"PW": {"secret": {"$sealed": "v1:AAAA"}}}}),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let (s, _) = app
        .post(&format!("/v1/workflows/{id}/tasks/gate/approve"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut got = std::collections::HashMap::new();
    for _ in 0..2 {
        let m = w.next_task().await;
        got.insert(m.name.clone(), m.inputs["PW"].clone());
        w.finish(&m, 0).await;
    }
    assert_eq!(got["t"], json!(old));
    assert_eq!(got["u"], json!(new));
    app.stop().await;
}

#[tokio::test]
async fn the_key_outlives_a_restart_and_a_secret_task_made_before_it_runs_after() {
    let mut app = spawn_app().await;
    let key_file = app
        .store
        .sqlite_path
        .as_ref()
        .map(|p| std::path::PathBuf::from(format!("{}.key", p.display())));
    let key_before = key_file.as_ref().map(|f| {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the key file is its owner's only");
        std::fs::read_to_string(f).unwrap()
    });
    let server = unique("s");
    let pw = unique("pw");
    let wf = app
        .create_workflow(json!({"name": "restart", "tasks": [
            {"name": "gate", "group": "bora.approval"},
            {"name": "t", "server_id": server, "depends_on": ["gate"],
             "inputs": {"PW": {"secret": pw}}}
        ]}))
        .await;
    let id = wf.id();
    let settings = app.settings.clone();
    app.restart_with(settings).await.unwrap();
    if let (Some(f), Some(before)) = (&key_file, &key_before) {
        assert_eq!(&std::fs::read_to_string(f).unwrap(), before, "reused");
    }
    let mut w = app.fake_worker(&server).await;
    let (s, body) = app
        .post(&format!("/v1/workflows/{id}/tasks/gate/approve"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let m = w.next_task().await;
    assert_eq!(m.inputs["PW"], json!(pw));
    w.finish(&m, 0).await;
    app.wait_workflow_state(&id, "succeeded").await;
    app.stop().await;
}

#[tokio::test]
async fn another_key_is_refused_at_start_and_a_bad_one_is_a_clear_error() {
    let mut app = spawn_app().await;
    // A secret in the store, sealed with the store's key.
    app.create_workflow(json!({"name": "k", "tasks": [
        {"name": "gate", "group": "bora.approval"},
        {"name": "t", "server_id": "s", "depends_on": ["gate"],
         "inputs": {"PW": {"secret": "pw"}}}
    ]}))
    .await;
    let other = bora::seal::SecretKey::generate().to_base64();
    let settings = app.settings_with(&[("BORA__STORE__SECRET_KEY", &other)]);
    let e = app.restart_with(settings).await.unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("is not the key this store's secrets are sealed with"),
        "{e}"
    );
    assert!(!e.contains(&other), "the key is never shown: {e}");
    // A key that is not 32 bytes of base64 stops bora at its settings.
    let refusal = |key: &str| {
        let mut env = app.store.env();
        env.retain(|(k, _)| k != "BORA__STORE__SECRET_KEY");
        env.push(("BORA__STORE__SECRET_KEY".into(), key.into()));
        bora::config::Settings::load_with_env(None, env)
            .unwrap_err()
            .to_string()
    };
    for (key, why) in [
        ("", "empty"),
        ("not base64!", "not base64"),
        ("AAAA", "3 bytes"),
    ] {
        let e = refusal(key);
        assert!(e.contains("store.secret_key") && e.contains(why), "{e}");
    }
    // The right key starts it again.
    let settings = app.settings_with(&[]);
    app.restart_with(settings).await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn postgres_without_a_key_refuses_to_start() {
    let store = TestStore::postgres().await;
    let settings = bora::config::Settings::load_with_env(
        None,
        vec![
            ("BORA__API__LISTEN".to_string(), "127.0.0.1:0".to_string()),
            ("BORA__STORE__URL".to_string(), store.url.clone()),
        ],
    )
    .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let e = match bora::serve::start(settings, shutdown.clone()).await {
        Ok(d) => {
            d.stop().await;
            panic!("started on PostgreSQL without a key")
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("store.secret_key is required with PostgreSQL")
            && e.contains("BORA__STORE__SECRET_KEY"),
        "{e}"
    );
}

#[tokio::test]
async fn a_corrupt_key_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bora.db");
    std::fs::write(dir.path().join("bora.db.key"), "not a key\n").unwrap();
    let settings = bora::config::Settings::load_with_env(
        None,
        vec![
            ("BORA__API__LISTEN".to_string(), "127.0.0.1:0".to_string()),
            (
                "BORA__STORE__URL".to_string(),
                format!("sqlite://{}", db.display()),
            ),
        ],
    )
    .unwrap();
    let e = match bora::serve::start(settings, Default::default()).await {
        Ok(d) => {
            d.stop().await;
            panic!("started with a corrupt key file")
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("bora.db.key") && e.contains("not base64"), "{e}");
}

/// Replaces the sealed value of a waiting task's secret input in the store
/// by one sealed with another key, as an altered row would be.
async fn alter_sealed_input(app: &TestApp, task: &str) {
    let other = bora::seal::Sealer::new(&bora::seal::SecretKey::generate());
    let forged = json!({"PW": {"secret": {"$sealed": other.seal(&json!("x")).unwrap()}}});
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&app.store.url)
        .await
        .unwrap();
    let done = sqlx::query("UPDATE tasks SET inputs = $1 WHERE name = $2")
        .bind(forged.to_string())
        .bind(task)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
}

#[tokio::test]
async fn a_secret_that_does_not_open_fails_its_task_with_a_clear_error() {
    let app = spawn_app().await;
    let server = unique("s");
    let mut w = app.fake_worker(&server).await;
    let wf = app
        .create_workflow(json!({"name": "altered", "tasks": [
            {"name": "gate", "group": "bora.approval"},
            {"name": "t", "server_id": server, "depends_on": ["gate"],
             "inputs": {"PW": {"secret": "pw"}}},
            {"name": "after", "server_id": server, "depends_on": ["t"]}
        ]}))
        .await;
    let id = wf.id();
    alter_sealed_input(&app, "t").await;
    let (s, _) = app
        .post(&format!("/v1/workflows/{id}/tasks/gate/approve"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let t = app.wait_task_state(&id, "t", "failed").await;
    let error = t.result().error.clone().unwrap_or_default();
    assert!(
        error.contains("secret input PW cannot be opened")
            && error.contains("not the key it was sealed with"),
        "{error}"
    );
    app.wait_task_state(&id, "after", "skipped").await;
    w.expect_nothing(Duration::from_millis(500)).await;
    app.stop().await;
}
