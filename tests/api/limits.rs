//! What a flood or a careless peer gets (issue #19): the workflow list's
//! state filter evaluated by the store.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

async fn post_task(app: &TestApp, wf: &str, task: &str, verb: &str) {
    let r = app
        .post(
            &format!("/v1/workflows/{wf}/tasks/{task}/{verb}"),
            json!({}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{verb} {task}: {}", r.1);
}

/// Every id `GET /v1/workflows?state=<state>` lists, page by page.
async fn listed(app: &TestApp, state: &str, limit: u32) -> Vec<String> {
    let mut ids = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let q = match &marker {
            Some(m) => format!("?state={state}&limit={limit}&marker={m}"),
            None => format!("?state={state}&limit={limit}"),
        };
        let page = app.workflows(&q).await;
        assert!(page.workflows.len() <= limit as usize, "{q}");
        for w in &page.workflows {
            assert_eq!(w.state, state, "{q}: {w:?}");
            ids.push(w.id());
        }
        match page.next_marker {
            Some(m) => marker = Some(m.to_string()),
            None => return ids,
        }
    }
}

#[tokio::test]
async fn the_state_filter_lists_what_each_workflow_says_it_is() {
    let app = spawn_app().await;
    let gate = |name: &str| json!({"name": name, "group": "bora.approval"});
    let mut ids = Vec::new();
    let mut create = async |name: &str, tasks: serde_json::Value| {
        let wf = app
            .create_workflow(json!({"name": name, "tasks": tasks}))
            .await;
        ids.push(wf.id());
        wf.id()
    };
    // empty
    create("empty", json!([])).await;
    // running: a gate waits for a person; also paused
    create("pending", json!([gate("g")])).await;
    let paused = create("paused", json!([gate("g")])).await;
    // succeeded
    let approved = create("approved", json!([gate("g")])).await;
    // failed: a rejected gate, its dependent skipped
    let rejected = create(
        "rejected",
        json!([gate("g"), {"name": "after", "group": "bora.approval",
            "depends_on": ["g"], "on_dependency_failure": "skip"}]),
    )
    .await;
    // cancelled through the API, with a task still pending, and with every
    // task succeeded
    let cancelled = create("cancelled", json!([gate("g")])).await;
    let cancelled_done = create("cancelled-done", json!([gate("g")])).await;
    // cancelled: only a single-task cancel kept it from succeeding
    let one_cancelled = create(
        "one-cancelled",
        json!([gate("g"), {"name": "t", "server_id": "nowhere"}]),
    )
    .await;

    for wf in [&approved, &cancelled_done, &one_cancelled] {
        app.wait_task_state(wf, "g", "running").await;
        post_task(&app, wf, "g", "approve").await;
    }
    app.wait_task_state(&rejected, "g", "running").await;
    post_task(&app, &rejected, "g", "reject").await;
    app.wait_workflow_state(&rejected, "failed").await;
    app.cancel_workflow(&cancelled).await;
    app.cancel_workflow(&cancelled_done).await;
    app.wait_task_state(&one_cancelled, "t", "queued").await;
    let (s, body) = app
        .delete(&format!("/v1/workflows/{one_cancelled}/tasks/t"))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let r = app
        .post(&format!("/v1/workflows/{paused}/pause"), json!({}))
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);

    // What each workflow says it is, one by one.
    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut views = BTreeMap::new();
    for id in &ids {
        let w = app.workflow(id).await;
        expected
            .entry(w.state.clone())
            .or_default()
            .insert(id.clone());
        views.insert(id.clone(), w);
    }
    for state in ["empty", "running", "succeeded", "failed", "cancelled"] {
        assert!(
            expected.contains_key(state),
            "no {state} workflow: {expected:?}"
        );
    }
    assert_eq!(expected["cancelled"].len(), 3, "{expected:?}");
    assert_eq!(expected["running"].len(), 2, "{expected:?}");
    for (state, want) in &expected {
        for limit in [1, 2, 100] {
            let got = listed(&app, state, limit).await;
            let set: BTreeSet<String> = got.iter().cloned().collect();
            assert_eq!(&set, want, "state={state} limit={limit}");
            assert_eq!(got.len(), set.len(), "a workflow listed twice: {got:?}");
            let mut sorted = got.clone();
            sorted.sort();
            assert_eq!(got, sorted, "not in creation order");
        }
    }
    // Unfiltered, each listed workflow is what its own GET says.
    let all = app.workflows("?limit=100").await;
    assert_eq!(all.workflows.len(), ids.len());
    for w in &all.workflows {
        let one = &views[&w.id()];
        assert_eq!(
            (&w.state, &w.task_counts, w.paused),
            (&one.state, &one.task_counts, one.paused),
            "{}",
            w.name
        );
    }
    app.stop().await;
}
