//! The dispatcher's own deadlines: lost workers and tasks with no result.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_silent_worker_loses_its_attempt_and_the_task_runs_again() {
    let app = spawn_app_with(&[
        ("BORA__DISPATCH__HEARTBEAT_TIMEOUT_S", "1"),
        ("BORA__DISPATCH__MAX_REDELIVERIES", "1"),
    ])
    .await;
    let wf = app
        .create_workflow(
            json!({"name": "lost", "tasks": [{"name": "t", "server_id": "s", "retries": 0}]}),
        )
        .await;
    let id = wf.id();
    let mut w = app.fake_worker("s").await;
    let first = w.next_task().await;
    w.started(&first).await;
    app.wait_task_state(&id, "t", "running").await;
    // The worker dies after acking: silence. A new attempt comes.
    let second = w.next_task().await;
    assert_eq!(second.id, first.id);
    assert_eq!(second.attempt, 2);
    // The lost attempt is cancelled in case its worker still lives.
    let cancel = app.next_cancel("s").await;
    assert_eq!(cancel.args["attempt"], 1);
    // A late result of the lost attempt changes nothing.
    w.finish(&first, 1).await;
    w.started(&second).await;
    // Silent again: redeliveries (1) are used up, so it fails.
    let t = app.wait_task_state(&id, "t", "failed").await;
    assert_eq!(t.attempt, 2);
    assert!(
        t.result()
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("worker lost")),
        "{t:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_at_most_once_task_is_never_sent_again_after_its_worker_is_lost() {
    let app = spawn_app_with(&[("BORA__DISPATCH__HEARTBEAT_TIMEOUT_S", "1")]).await;
    let wf = app
        .create_workflow(json!({"name": "amo", "tasks": [
            {"name": "t", "server_id": "s", "delivery": "at_most_once", "retries": 3}
        ]}))
        .await;
    let id = wf.id();
    let mut w = app.fake_worker("s").await;
    let first = w.next_task().await;
    w.started(&first).await;
    let t = app.wait_task_state(&id, "t", "failed").await;
    assert_eq!(t.attempt, 1);
    assert!(
        t.result()
            .error
            .as_deref()
            .is_some_and(|e| e.contains("worker lost")),
        "{t:?}"
    );
    w.expect_nothing(Duration::from_millis(500)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_task_with_no_result_within_its_timeout_ends_timed_out() {
    // Nobody serves "nobody": the task is published and never answered.
    let app = spawn_app_with(&[("BORA__DISPATCH__HEARTBEAT_TIMEOUT_S", "1")]).await;
    let wf = app
        .create_workflow(json!({"name": "deadline", "tasks": [
            {"name": "t", "server_id": "nobody", "timeout_s": 1},
            {"name": "next", "server_id": "nobody", "depends_on": ["t"]}
        ]}))
        .await;
    let id = wf.id();
    let t = app.wait_task_state(&id, "t", "timed_out").await;
    assert!(t.result().timed_out, "{t:?}");
    assert!(
        t.result()
            .error
            .as_deref()
            .is_some_and(|e| e.contains("no result within 1 s")),
        "{t:?}"
    );
    assert_eq!(app.task(&id, "next").await.state, "skipped");
    // The worker that boots late is told not to run it.
    let cancel = app.next_cancel("nobody").await;
    assert_eq!(cancel.method, "cancel_task");
    app.wait_workflow_state(&id, "failed").await;
    app.stop().await;
}

/// Makes the store refuse any task row whose result mentions `pill`, as a
/// database refuses a value it cannot hold (the reply is not at fault for
/// being late: the same write fails every time).
async fn refuse_results_with(app: &TestApp, pill: &str) {
    use sqlx::Connection;
    if app.store.is_postgres() {
        let mut c = sqlx::PgConnection::connect(&app.store.url).await.unwrap();
        let sql = format!(
            "CREATE FUNCTION refuse_pill() RETURNS trigger AS $$ BEGIN \
             IF NEW.result::text LIKE '%{pill}%' THEN RAISE EXCEPTION 'refused'; END IF; \
             RETURN NEW; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER refuse_pill BEFORE INSERT OR UPDATE ON tasks \
             FOR EACH ROW EXECUTE FUNCTION refuse_pill();"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut c)
            .await
            .unwrap();
    } else {
        let mut c = sqlx::SqliteConnection::connect(&app.store.url)
            .await
            .unwrap();
        for event in ["INSERT", "UPDATE"] {
            let sql = format!(
                "CREATE TRIGGER refuse_pill_{event} BEFORE {event} ON tasks \
                 WHEN NEW.result LIKE '%{pill}%' BEGIN SELECT RAISE(ABORT, 'refused'); END;"
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut c)
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn a_reply_the_store_refuses_is_set_apart_and_the_others_are_recorded() {
    let app = spawn_app().await;
    let wf = app
        .create_workflow(json!({"name": "poison", "tasks": [
            {"name": "bad", "server_id": "s"},
            {"name": "good", "server_id": "s"},
            {"name": "after", "server_id": "s", "depends_on": ["good"]}
        ]}))
        .await;
    let id = wf.id();
    refuse_results_with(&app, "poison-pill").await;
    let mut w = app.fake_worker("s").await;
    let (first, second) = (w.next_task().await, w.next_task().await);
    let (bad, good) = if first.name == "bad" {
        (first, second)
    } else {
        (second, first)
    };
    // Back to back, so they are likely one batch: the refused one must
    // not hold back the other, nor anything sent after it.
    w.finish_with(
        &bad,
        bora::protocol::TaskResult::from_streams(
            bad.attempt,
            0,
            "poison-pill\n".into(),
            String::new(),
        ),
    )
    .await;
    w.finish(&good, 0).await;
    app.wait_task_state(&id, "good", "succeeded").await;
    let after = w.next_task().await;
    assert_eq!(after.name, "after");
    w.finish(&after, 0).await;
    app.wait_task_state(&id, "after", "succeeded").await;
    // The refused result is dropped, counted, and its task not ended by it.
    let t = app.task(&id, "bad").await;
    assert!(!matches!(t.state.as_str(), "succeeded" | "failed"), "{t:?}");
    let metrics = app.get_text("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bora_results_rejected_total{reason=\"unrecordable\"}")),
        "{metrics}"
    );
    app.stop().await;
}
