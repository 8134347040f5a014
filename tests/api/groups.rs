//! Groups of servers (SPEC 7.2) with real `bora worker` processes: a task
//! aimed at every server carrying some labels (a group task with one child
//! per server), rolling batches and their failure limit, a task for `any`
//! one of them, and what a label change or a lost worker does.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::e2e::{Worker, start_worker};
use crate::helpers::*;

/// Registered servers with labels, revoked at the end (broker users are
/// global, so ids and label values are unique per test).
struct Fleet {
    /// A label value no other test uses.
    pub tag: String,
    pub servers: Vec<String>,
    /// Each server's own broker URL, from its registration.
    pub urls: Vec<String>,
}

impl Fleet {
    async fn register(app: &TestApp, n: usize, role: &str) -> Self {
        let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let mut servers = Vec::new();
        let mut urls = Vec::new();
        for i in 0..n {
            let id = format!("g{tag}-{role}-{i}");
            let (s, body) = app
                .post(
                    "/v1/servers",
                    json!({"server_id": id, "labels": {"role": role, "fleet": tag}}),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{body}");
            servers.push(id);
            urls.push(body["amqp_url"].as_str().unwrap().to_owned());
        }
        Self { tag, servers, urls }
    }

    /// A worker per server; each script sees its server as `$WHO`.
    async fn workers(&self, app: &TestApp) -> Vec<Worker> {
        let mut w = Vec::new();
        for s in &self.servers {
            w.push(start_worker(app, s, &[("WHO", s)]).await);
        }
        w
    }

    fn labels(&self, role: &str) -> Value {
        json!({"role": role, "fleet": self.tag})
    }

    async fn revoke(&self, app: &TestApp) {
        for s in &self.servers {
            app.delete(&format!("/v1/servers/{s}")).await;
        }
    }
}

/// (started_at, finished_at) of each child, in µs since the epoch.
fn spans(children: &[TaskOut]) -> Vec<(i64, i64)> {
    children
        .iter()
        .map(|c| {
            (
                c.started_at().timestamp_micros(),
                c.finished_at().timestamp_micros(),
            )
        })
        .collect()
}

/// The most spans that overlap at any start.
fn most_at_once(spans: &[(i64, i64)]) -> usize {
    spans
        .iter()
        .map(|(s, _)| spans.iter().filter(|(a, b)| a <= s && s < b).count())
        .max()
        .unwrap_or(0)
}

async fn children(app: &TestApp, wf: &str, group: &TaskOut) -> Vec<TaskOut> {
    let mut out = Vec::new();
    for c in group.children.as_ref().expect("a group lists its children") {
        out.push(app.task(wf, &c.name).await);
    }
    out
}

#[tokio::test]
async fn a_group_runs_once_on_every_matching_server_and_gathers_outputs() {
    let app = spawn_app().await;
    let web = Fleet::register(&app, 3, "web").await;
    let db = Fleet::register(&app, 1, "db").await;
    let _w = web.workers(&app).await;
    let _d = db.workers(&app).await;
    let wf = app
        .create_workflow(json!({"name": "rollout", "tasks": [
            {"name": "deploy", "target": {"labels": web.labels("web")}, "outputs": ["host"],
             "config": "sleep 1; printf \"$WHO\" > \"$heat_outputs_path.host\""},
            {"name": "report", "server_id": db.servers[0], "depends_on": ["deploy"],
             "inputs": {"HOSTS": {"get_output": ["deploy", "host"]}},
             "config": "printf '%s' \"$HOSTS\""}
        ]}))
        .await;
    let id = wf.id();
    let wf = app.wait_workflow_state(&id, "succeeded").await;
    assert_eq!(
        wf.task_counts.succeeded, 5,
        "the group, its 3 children, report"
    );
    let group = app.task(&id, "deploy").await;
    assert_eq!(group.server_id, None);
    let target = group.target.clone().unwrap();
    assert_eq!(target["servers"], json!(web.servers), "the match, recorded");
    let listed: Vec<(&str, &str)> = group
        .children
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| (c.server_id.as_str(), c.state.as_str()))
        .collect();
    assert_eq!(
        listed,
        web.servers
            .iter()
            .map(|s| (s.as_str(), "succeeded"))
            .collect::<Vec<_>>()
    );
    let hosts: BTreeMap<String, String> =
        web.servers.iter().map(|s| (s.clone(), s.clone())).collect();
    assert_eq!(group.result().outputs["host"], json!(hosts));
    assert_eq!(
        group.result().servers,
        Some(
            web.servers
                .iter()
                .map(|s| (s.clone(), "succeeded".to_owned()))
                .collect()
        )
    );
    let kids = children(&app, &id, &group).await;
    for (k, s) in kids.iter().zip(&web.servers) {
        assert_eq!(k.name, format!("deploy[{s}]"));
        assert_eq!(k.server_id.as_deref(), Some(s.as_str()));
        assert_eq!(k.parent.as_deref(), Some("deploy"));
    }
    // Without a batch every child is released at once.
    let spans = spans(&kids);
    assert_eq!(most_at_once(&spans), 3, "{spans:?}");
    // A reference to a group's output is server -> value.
    let report = app.task(&id, "report").await;
    let seen: Value = serde_json::from_str(&report.result().stdout).unwrap();
    assert_eq!(seen, json!(hosts));
    assert!(
        report.started_at() >= group.finished_at(),
        "waits for the whole group"
    );
    web.revoke(&app).await;
    db.revoke(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn a_rolling_batch_never_runs_more_than_its_size() {
    let app = spawn_app().await;
    let web = Fleet::register(&app, 5, "web").await;
    let _w = web.workers(&app).await;
    let wf = app
        .create_workflow(json!({"name": "rolling", "tasks": [
            {"name": "upgrade", "config": "sleep 0.5",
             "target": {"labels": web.labels("web"), "batch": {"size": "40%"}}}
        ]}))
        .await;
    let id = wf.id();
    app.wait_workflow_state(&id, "succeeded").await;
    let group = app.task(&id, "upgrade").await;
    let kids = children(&app, &id, &group).await;
    assert_eq!(kids.len(), 5);
    let spans = spans(&kids);
    assert_eq!(most_at_once(&spans), 2, "40% of 5 is 2: {spans:?}");
    web.revoke(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn more_failures_than_allowed_skip_the_children_not_started() {
    let app = spawn_app().await;
    let web = Fleet::register(&app, 5, "web").await;
    let _w = web.workers(&app).await;
    let first = &web.servers[0];
    let wf = app
        .create_workflow(json!({"name": "halt", "tasks": [
            {"name": "upgrade", "config": format!("[ \"$WHO\" != {first} ]"),
             "target": {"labels": web.labels("web"),
                        "batch": {"size": 1, "max_failures": 0}}},
            {"name": "after", "server_id": web.servers[1], "depends_on": ["upgrade"]}
        ]}))
        .await;
    let id = wf.id();
    app.wait_workflow_state(&id, "failed").await;
    let group = app.task(&id, "upgrade").await;
    assert_eq!(group.state, "failed");
    let servers = group.result().servers.clone().unwrap();
    assert_eq!(servers[first], "failed");
    for s in &web.servers[1..] {
        assert_eq!(servers[s], "skipped", "{servers:?}");
    }
    assert!(
        group
            .result()
            .error
            .as_deref()
            .is_some_and(|e| e.contains("5 servers")),
        "{group:?}"
    );
    assert_eq!(app.task(&id, "after").await.state, "skipped");
    // Rerunning the group runs what did not succeed, on the same servers.
    let (s, body) = app
        .post(
            &format!("/v1/workflows/{id}/tasks/upgrade/rerun"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // The first server still fails: the group fails again, with one attempt more.
    app.wait_workflow_state(&id, "failed").await;
    let again = app.task(&id, &format!("upgrade[{first}]")).await;
    assert_eq!(again.attempt, 2);
    web.revoke(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn a_label_change_after_release_does_not_change_a_released_group() {
    let app = spawn_app().await;
    let web = Fleet::register(&app, 2, "web").await;
    let late = Fleet::register(&app, 1, "late").await;
    let _w = web.workers(&app).await;
    let _l = late.workers(&app).await;
    let wf = app
        .create_workflow(json!({"name": "fixed", "tasks": [
            {"name": "g", "config": "sleep 1",
             "target": {"labels": web.labels("web"), "batch": {"size": 1}}}
        ]}))
        .await;
    let id = wf.id();
    app.wait_task_state(&id, "g", "running").await;
    // Another server now carries the labels too: the group does not grow.
    let (s, body) = app
        .patch(
            &format!("/v1/servers/{}", late.servers[0]),
            json!({"labels": {"role": "web", "fleet": web.tag}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    app.wait_workflow_state(&id, "succeeded").await;
    let g = app.task(&id, "g").await;
    assert_eq!(g.children.as_ref().unwrap().len(), 2);
    assert_eq!(g.target.unwrap()["servers"], json!(web.servers));
    // A target nothing matches fails at its release.
    let wf = app
        .create_workflow(json!({"name": "nobody", "tasks": [
            {"name": "g", "target": {"labels": {"role": "none", "fleet": web.tag}}}
        ]}))
        .await;
    let g = app.wait_task_state(&wf.id(), "g", "failed").await;
    assert_eq!(
        g.result().error.as_deref(),
        Some("no server matches the target")
    );
    web.revoke(&app).await;
    late.revoke(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn any_picks_an_online_server_and_another_when_its_worker_dies() {
    let app = spawn_app_with(&[("BORA__DISPATCH__HEARTBEAT_TIMEOUT_S", "2")]).await;
    let fleet = Fleet::register(&app, 3, "db").await;
    // The first server has no worker: never chosen while others are online.
    let mut w1 = Some(start_worker(&app, &fleet.servers[1], &[("WHO", &fleet.servers[1])]).await);
    let mut w2 = Some(start_worker(&app, &fleet.servers[2], &[("WHO", &fleet.servers[2])]).await);
    // Wait until both report as online.
    for s in &fleet.servers[1..] {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, v) = app.get(&format!("/v1/servers/{s}")).await;
            if v["online"] == true {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{s} never online: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let wf = app
        .create_workflow(json!({"name": "any", "tasks": [
            {"name": "backup", "config": "sleep 4; echo \"$WHO\"",
             "target": {"labels": fleet.labels("db"), "mode": "any"}}
        ]}))
        .await;
    let id = wf.id();
    let t = app.wait_task_state(&id, "backup", "running").await;
    let first = t.server_id.clone().unwrap();
    assert_ne!(first, fleet.servers[0], "an offline server is not chosen");
    assert_eq!(t.target.unwrap()["servers"], json!([first]));
    // Its worker dies: the next attempt may go to another online server.
    if first == fleet.servers[1] {
        w1.take();
    } else {
        w2.take();
    }
    let t = app.wait_task_state(&id, "backup", "succeeded").await;
    assert_eq!(t.attempt, 2);
    let second = t.server_id.clone().unwrap();
    assert_ne!(second, first);
    assert_eq!(t.result().stdout, format!("{second}\n"));
    drop((w1, w2));
    fleet.revoke(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn children_count_against_the_workflow_limit() {
    let app = spawn_app_with(&[("BORA__DISPATCH__MAX_TASKS_PER_WORKFLOW", "3")]).await;
    let web = Fleet::register(&app, 3, "web").await;
    // Three children and the group would be four tasks.
    let wf = app
        .create_workflow(json!({"name": "too-big", "tasks": [
            {"name": "g", "target": {"labels": web.labels("web")}}
        ]}))
        .await;
    let g = app.wait_task_state(&wf.id(), "g", "failed").await;
    assert!(
        g.result()
            .error
            .as_deref()
            .is_some_and(|e| e.contains("max_tasks_per_workflow")),
        "{g:?}"
    );
    assert!(g.children.is_none_or(|c| c.is_empty()), "no child was made");
    web.revoke(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn cancelling_a_group_cancels_its_children_and_bad_targets_are_refused() {
    // No workers: the children wait in their queues.
    let app = spawn_app().await;
    let web = Fleet::register(&app, 3, "web").await;
    let wf = app
        .create_workflow(json!({"name": "cancelled", "tasks": [
            {"name": "g", "target": {"labels": web.labels("web")}}
        ]}))
        .await;
    let id = wf.id();
    let g = app.wait_task_state(&id, "g", "running").await;
    assert_eq!(g.children.as_ref().unwrap().len(), 3);
    for s in &web.servers {
        app.wait_task_state(&id, &format!("g[{s}]"), "queued").await;
    }
    let (s, body) = app.delete(&format!("/v1/workflows/{id}/tasks/g")).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    for s in &web.servers {
        let c = app.task(&id, &format!("g[{s}]")).await;
        assert_eq!(c.state, "cancelled");
    }
    let wf = app.workflow(&id).await;
    assert_eq!(wf.state, "cancelled", "{wf:?}");
    // Bad targets are refused with the field named.
    for (body, field) in [
        (
            json!({"name": "x", "server_id": "s", "target": {"labels": {"a": "b"}}}),
            "tasks[0].target",
        ),
        (
            json!({"name": "x", "target": {"labels": {"a": "b"}, "mode": "any", "batch": {"size": 1}}}),
            "tasks[0].target",
        ),
        (
            json!({"name": "x", "target": {"labels": {"a b": "c"}}}),
            "tasks[0].target.labels",
        ),
        (
            json!({"name": "x", "target": {"labels": {}}}),
            "tasks[0].target",
        ),
    ] {
        let (s, err) = app
            .post("/v1/workflows", json!({"name": "bad", "tasks": [body]}))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
    let (s, err) = app
        .post(
            "/v1/workflows",
            json!({"name": "bad", "tasks": [{"name": "x", "target": {"labels": {"a": "b"}, "batch": {"size": "0%"}}}]}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    web.revoke(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn a_guest_of_the_group_reads_only_its_own_child() {
    let app = spawn_app().await;
    let web = Fleet::register(&app, 2, "web").await;
    let (a, b) = (&web.servers[0], &web.servers[1]);
    let wf = app
        .create_workflow(json!({"name": "secret", "tasks": [
            {"name": "g", "config": "echo hi", "target": {"labels": web.labels("web")},
             "inputs": {"deploy_password": "s3cret"}}
        ]}))
        .await;
    let id = wf.id();
    for s in [a, b] {
        app.wait_task_state(&id, &format!("g[{s}]"), "queued").await;
    }
    let mine = app.task(&id, &format!("g[{a}]")).await;
    let conn = lapin::Connection::connect(&web.urls[0], Default::default())
        .await
        .unwrap();
    // The other server's queue: refused by the broker.
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .basic_get(
            format!("bora_tasks.{b}").as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ACCESS_REFUSED"), "{err}");
    // Its own queue holds its own child, and only that.
    let ch = conn.create_channel().await.unwrap();
    let got = ch
        .basic_get(
            format!("bora_tasks.{a}").as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("its child is in its queue");
    let req = bora::protocol::RpcRequest::decode(&got.delivery.data).unwrap();
    assert_eq!(
        req.args["task"]["id"],
        json!(mine.id.to_string()),
        "{:?}",
        req.args
    );
    let more = ch
        .basic_get(
            format!("bora_tasks.{a}").as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap();
    assert!(more.is_none(), "another task in its queue");
    let _ = conn.close(200, "bye".into()).await;
    web.revoke(&app).await;
    app.stop().await;
}

/// A group's secret outputs (SPEC 7.4): each child's sealed, the group's
/// server → value object masked, and a reference to it a secret input its
/// consumer's worker gets whole and scrubs.
#[tokio::test]
async fn a_groups_secret_output_is_a_secret_for_its_consumer() {
    let app = spawn_app().await;
    let web = Fleet::register(&app, 2, "web").await;
    let db = Fleet::register(&app, 1, "db").await;
    let _w = web.workers(&app).await;
    let _d = db.workers(&app).await;
    let pw = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let first = &web.servers[0];
    let wf = app
        .create_workflow(json!({"name": "keys", "tasks": [
            {"name": "mint", "target": {"labels": web.labels("web")},
             "inputs": {"PW": {"secret": pw}},
             "outputs": [{"name": "key", "secret": true}],
             "config": "echo \"minting with $PW\"; printf \"key-$WHO\" > \"$heat_outputs_path.key\""},
            {"name": "use", "server_id": db.servers[0],
             "inputs": {"KEYS": {"get_output": ["mint", "key"]}},
             "config": format!("case \"$KEYS\" in *\"key-{first}\"*) echo found;; esac; echo \"$KEYS\"")}
        ]}))
        .await;
    let id = wf.id();
    app.wait_workflow_state(&id, "succeeded").await;
    let group = app.task(&id, "mint").await;
    let masked: BTreeMap<String, String> = web
        .servers
        .iter()
        .map(|s| (s.clone(), "***".to_owned()))
        .collect();
    assert_eq!(group.result().outputs["key"], json!(masked));
    assert_eq!(group.inputs["PW"], json!({"secret": "***"}));
    for k in children(&app, &id, &group).await {
        assert_eq!(k.result().outputs["key"], "***");
        assert_eq!(k.result().stdout, "minting with ***\n");
    }
    let used = app.task(&id, "use").await;
    let resolved = &used.resolved_inputs.as_ref().unwrap()["KEYS"];
    assert_eq!(resolved["value"], json!(masked), "server -> ***");
    assert_eq!(resolved["secret"], true);
    // The worker got every server's key, and printed `***` for them.
    assert_eq!(used.result().stdout, "found\n***\n");
    let (_, list) = app.get(&format!("/v1/workflows/{id}/tasks")).await;
    // (The first server's key is in the consumer's script, the second's
    // nowhere.)
    let text = list.to_string();
    let second = format!("key-{}", web.servers[1]);
    assert!(!text.contains(&second) && !text.contains(&pw), "{text}");
    web.revoke(&app).await;
    db.revoke(&app).await;
    app.stop().await;
}
