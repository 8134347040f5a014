//! Use cases against a real (SQLite) store: reply batches whose release
//! walk runs in memory, and confirms that move only the attempts still
//! waiting for them.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::input::{NewTask, NewWorkflow};
use super::*;
use crate::domain::Task;
use crate::domain::{TaskId, TaskSpec, TaskState, WorkflowId};
use crate::protocol::{RpcReply, TaskResult, task_msg_id};
use crate::store::OutboxKind;

async fn tracker() -> (App, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = Store::open(&url, 4).await.unwrap();
    let config = AppConfig {
        require_registration: false,
        max_redeliveries: 3,
        dispatcher_user: "guest".into(),
        reply_exchange: "reply_bora".into(),
        max_result_bytes: 1 << 20,
        max_input_bytes: 1 << 20,
        max_tasks_per_workflow: 100,
        max_live_output_bytes: 1 << 20,
        notifications: true,
        outbox_lease_us: 5_000_000,
        online_window_us: 30_000_000,
    };
    let sealer = crate::seal::Sealer::new(&crate::seal::SecretKey::generate());
    (App::new(store, config, sealer), dir)
}

/// a and b, a join of both, and a task after the join.
async fn join_workflow(tracker: &App) -> WorkflowId {
    let tasks = specs(json!([
        {"name": "a", "server_id": "s"},
        {"name": "b", "server_id": "s"},
        {"name": "join", "server_id": "s", "depends_on": ["a", "b"]},
        {"name": "after", "server_id": "s", "depends_on": ["join"]}
    ]));
    let new = NewWorkflow {
        name: "join".into(),
        description: None,
        tasks: None,
    };
    tracker.create_workflow(new, tasks, false).await.unwrap().0
}

fn specs(tasks: Value) -> Vec<TaskSpec> {
    serde_json::from_value::<Vec<NewTask>>(tasks)
        .unwrap()
        .into_iter()
        .map(|t| t.validate("").unwrap())
        .collect()
}

/// The final result of attempt 1, as an oslo server sends it.
fn result(task: &Task, exit_code: i64) -> Incoming {
    let r = TaskResult::from_streams(1, exit_code, String::new(), String::new());
    Incoming {
        body: RpcReply::final_result(task_msg_id(task.id, 1), serde_json::to_value(r).unwrap())
            .encode(),
        exchange: String::new(),
        user_id: None,
        correlation_id: None,
    }
}

async fn by_name(tracker: &App, wf: WorkflowId) -> HashMap<String, Task> {
    let rows = tracker.store().tasks(wf, None, None).await.unwrap();
    rows.into_iter().map(|t| (t.name.clone(), t)).collect()
}

/// The outbox as (kind, task name or "") in insertion order.
async fn outbox(tracker: &App, wf: WorkflowId) -> Vec<(OutboxKind, String)> {
    let names: HashMap<TaskId, String> = by_name(tracker, wf)
        .await
        .into_values()
        .map(|t| (t.id, t.name))
        .collect();
    let mut items = tracker
        .store()
        .due_outbox(now_us() + 1_000_000, 1000, now_us() + 1_000_000)
        .await
        .unwrap();
    items.sort_by_key(|i| i.id);
    items
        .into_iter()
        .map(|i| {
            let name = i.task_id.and_then(|t| names.get(&t).cloned());
            (i.kind, name.unwrap_or_default())
        })
        .collect()
}

fn states(rows: &HashMap<String, Task>) -> Vec<(String, TaskState, i64)> {
    let mut out: Vec<_> = rows
        .values()
        .map(|t| (t.name.clone(), t.state(), t.attempt))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn one_batch_ending_both_dependencies_of_a_join_releases_it_once() {
    let (tracker, _dir) = tracker().await;
    let wf = join_workflow(&tracker).await;
    let rows = by_name(&tracker, wf).await;
    let before = outbox(&tracker, wf).await;
    let verdicts = tracker
        .record_replies(&[result(&rows["a"], 0), result(&rows["b"], 0)])
        .await
        .unwrap();
    assert_eq!(verdicts, vec![Verdict::Recorded, Verdict::Recorded]);

    let rows = by_name(&tracker, wf).await;
    assert_eq!(
        states(&rows),
        vec![
            ("a".into(), TaskState::Succeeded, 1),
            ("after".into(), TaskState::Waiting, 0),
            ("b".into(), TaskState::Succeeded, 1),
            ("join".into(), TaskState::Waiting, 1),
        ]
    );
    // One message for the join (first attempt), and the two ends.
    let after: Vec<_> = outbox(&tracker, wf).await[before.len()..].to_vec();
    assert_eq!(
        after,
        vec![
            (OutboxKind::Task, "join".into()),
            (OutboxKind::TaskEnd, "a".into()),
            (OutboxKind::TaskEnd, "b".into()),
        ]
    );
    // Each task's end is in the log once; the join's dispatch is no event.
    let events = tracker.store().events_after(wf, 0, 100).await.unwrap();
    let ended: Vec<_> = events
        .iter()
        .filter(|e| e.state == "succeeded")
        .map(|e| e.task_name.clone())
        .collect();
    assert_eq!(ended, vec![Some("a".to_owned()), Some("b".to_owned())]);
}

#[tokio::test]
async fn one_batch_with_a_failure_skips_down_the_graph_and_ends_the_workflow() {
    let (tracker, _dir) = tracker().await;
    let wf = join_workflow(&tracker).await;
    let rows = by_name(&tracker, wf).await;
    let before = outbox(&tracker, wf).await;
    tracker
        .record_replies(&[result(&rows["a"], 0), result(&rows["b"], 2)])
        .await
        .unwrap();
    let rows = by_name(&tracker, wf).await;
    assert_eq!(
        states(&rows),
        vec![
            ("a".into(), TaskState::Succeeded, 1),
            ("after".into(), TaskState::Skipped, 0),
            ("b".into(), TaskState::Failed, 1),
            ("join".into(), TaskState::Skipped, 0),
        ]
    );
    let after: Vec<_> = outbox(&tracker, wf).await[before.len()..].to_vec();
    assert_eq!(
        after,
        vec![
            (OutboxKind::TaskEnd, "a".into()),
            (OutboxKind::TaskEnd, "b".into()),
            (OutboxKind::TaskEnd, "join".into()),
            (OutboxKind::TaskEnd, "after".into()),
            (OutboxKind::WorkflowEnd, String::new()),
        ]
    );
    let skipped = tracker
        .store()
        .events_after(wf, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.state == "skipped")
        .count();
    assert_eq!(skipped, 2);
}

#[tokio::test]
async fn a_confirm_moves_only_the_attempts_still_waiting_for_it() {
    let (tracker, _dir) = tracker().await;
    let wf = join_workflow(&tracker).await;
    let rows = by_name(&tracker, wf).await;
    let items = tracker
        .store()
        .due_outbox(now_us() + 1_000_000, 1000, now_us() + 1_000_000)
        .await
        .unwrap();
    let item = |name: &str| {
        items
            .iter()
            .find(|i| i.kind == OutboxKind::Task && i.task_id == Some(rows[name].id))
            .cloned()
            .unwrap()
    };
    // b's worker answered before the broker's confirm was recorded; the
    // confirm of an attempt a has not reached yet moves nothing either.
    tracker
        .record_replies(&[result(&rows["b"], 0)])
        .await
        .unwrap();
    let mut later = item("a");
    later.attempt = 2;
    tracker
        .confirm_published(&[item("b"), later])
        .await
        .unwrap();
    let queued = |events: &[crate::store::EventRow]| -> Vec<Option<String>> {
        events
            .iter()
            .filter(|e| e.state == "queued")
            .map(|e| e.task_name.clone())
            .collect()
    };
    let events = tracker.store().events_after(wf, 0, 100).await.unwrap();
    assert_eq!(queued(&events), Vec::<Option<String>>::new());
    let now = by_name(&tracker, wf).await;
    assert_eq!(now["a"].state(), TaskState::Waiting);
    assert_eq!(now["b"].state(), TaskState::Succeeded);

    tracker.confirm_published(&[item("a")]).await.unwrap();
    let events = tracker.store().events_after(wf, 0, 100).await.unwrap();
    assert_eq!(queued(&events), vec![Some("a".to_owned())]);
    let now = by_name(&tracker, wf).await;
    assert_eq!(now["a"].state(), TaskState::Queued);
    assert!(now["a"].queued_at.is_some());
}

async fn workflow_of(tracker: &App, tasks: Value) -> WorkflowId {
    let new = NewWorkflow {
        name: "w".into(),
        description: None,
        tasks: None,
    };
    tracker
        .create_workflow(new, specs(tasks), false)
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn a_retry_decided_while_paused_is_held_until_the_resume() {
    let (tracker, _dir) = tracker().await;
    let wf = workflow_of(
        &tracker,
        json!([{"name": "t", "server_id": "s", "retries": 1}]),
    )
    .await;
    let t = by_name(&tracker, wf).await.remove("t").unwrap();
    tracker.pause_workflow(wf).await.unwrap();
    tracker.record_replies(&[result(&t, 1)]).await.unwrap();
    let t = by_name(&tracker, wf).await.remove("t").unwrap();
    assert_eq!(
        (t.state(), t.attempt, t.failures),
        (TaskState::Waiting, 1, 1)
    );
    assert!(t.awaits_release(), "held, not dispatched");
    // Only the first attempt's message (never confirmed here): no second.
    assert_eq!(
        outbox(&tracker, wf).await,
        vec![(OutboxKind::Task, "t".into())]
    );
    tracker.resume_workflow(wf).await.unwrap();
    let t = by_name(&tracker, wf).await.remove("t").unwrap();
    assert_eq!((t.state(), t.attempt), (TaskState::Waiting, 2));
    assert!(!t.awaits_release());
    assert_eq!(
        outbox(&tracker, wf).await,
        vec![
            (OutboxKind::Task, "t".into()),
            (OutboxKind::Task, "t".into())
        ]
    );
}

#[tokio::test]
async fn a_rerun_resets_the_skipped_dependents_only() {
    let (tracker, _dir) = tracker().await;
    let wf = workflow_of(
        &tracker,
        json!([
            {"name": "a", "server_id": "s"},
            {"name": "b", "server_id": "s", "depends_on": ["a"]},
            {"name": "c", "server_id": "s", "depends_on": ["b"]},
            {"name": "d", "server_id": "s", "depends_on": ["a"], "on_dependency_failure": "run"}
        ]),
    )
    .await;
    let a = by_name(&tracker, wf).await.remove("a").unwrap();
    tracker.record_replies(&[result(&a, 1)]).await.unwrap();
    let rows = by_name(&tracker, wf).await;
    let d = rows["d"].clone();
    tracker.record_replies(&[result(&d, 1)]).await.unwrap();
    assert_eq!(
        states(&by_name(&tracker, wf).await),
        vec![
            ("a".into(), TaskState::Failed, 1),
            ("b".into(), TaskState::Skipped, 0),
            ("c".into(), TaskState::Skipped, 0),
            ("d".into(), TaskState::Failed, 1),
        ]
    );
    tracker.rerun_task(wf, "a").await.unwrap();
    // a runs again; b and c wait for it; d (failed on its own) is left.
    assert_eq!(
        states(&by_name(&tracker, wf).await),
        vec![
            ("a".into(), TaskState::Waiting, 2),
            ("b".into(), TaskState::Waiting, 0),
            ("c".into(), TaskState::Waiting, 0),
            ("d".into(), TaskState::Failed, 1),
        ]
    );
    let err = tracker.rerun_task(wf, "a").await.unwrap_err();
    assert!(
        matches!(
            err,
            AppError::Conflict {
                code: "task_not_ended",
                ..
            }
        ),
        "{err:?}"
    );
}
