//! `bora worker` against a real RabbitMQ, with real processes: the test plays
//! the dispatcher (see `helpers.rs`). Each test has its own vhost and worker,
//! so they run in parallel.

mod helpers;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bora::domain::{Delivery, OutputSpec};
use bora::protocol::{RpcRequest, sha256_hex, task_msg_id};
use helpers::*;
use serde_json::{Value, json};

const SHORT: Duration = Duration::from_secs(15);

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn script_with_inputs_and_outputs_reports_started_heartbeats_then_result() {
    let mut app = spawn_app().await;
    app.start_worker(&[]).await;
    let stamp = app.path("started-at");
    let mut t = app.task(
        "script",
        &format!(
            "#!/bin/sh\ndate +%s.%N > {}\necho \"hello $name\"\necho \"n=$n obj=$obj\" >&2\n\
             printf '%s' \"$((n + 1))\" > \"$heat_outputs_path.sum\"\n\
             printf 'multi\\nline' > \"${{heat_outputs_path}}.text\"\nsleep 2.2\n",
            stamp.display()
        ),
    );
    t.inputs = inputs(json!({"name": "world", "n": 41, "obj": {"a": [1, 2]}}));
    t.outputs = outputs(&["sum", "text", "never_written"]);
    let published = now_s();
    let msg_id = app.publish(&t).await;

    let started = app.started(&msg_id, SHORT).await;
    assert_eq!(started.reply.result, Value::Null);
    let r = app.result(&msg_id, SHORT).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(r.error, None);
    assert_eq!(r.stdout, "hello world\n");
    assert_eq!(r.stderr, "n=41 obj={\"a\":[1,2]}\n");
    assert_eq!(r.stdout_bytes, 12);
    assert_eq!(r.stdout_sha256, sha256_hex(b"hello world\n"));
    assert_eq!(r.outputs["sum"], "42");
    assert_eq!(r.outputs["text"], "multi\nline");
    assert!(!r.outputs.contains_key("never_written"));
    assert_eq!(r.attempt, 1);
    assert!(!r.truncated);

    // started, then heartbeats (ending false, null result), then one final reply.
    let all = app.replies_for(&msg_id);
    let last = all.len() - 1;
    assert!(all[last].reply.ending);
    assert!(
        all[..last]
            .iter()
            .all(|r| !r.reply.ending && r.reply.result.is_null())
    );
    assert!(
        last >= 2,
        "started and at least one heartbeat in 2.2 s: {all:?}"
    );
    for r in &all {
        assert_eq!(r.user_id.as_deref(), Some("guest"));
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(r.delivery_mode, Some(2));
    }
    let start: f64 = std::fs::read_to_string(&stamp)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    println!(
        "MEASURE publish-to-script-start: {:.1} ms",
        (start - published) * 1000.0
    );
}

#[tokio::test]
async fn failing_script_reports_its_exit_code() {
    let mut app = spawn_app().await;
    app.start_worker(&[]).await;
    // No shebang: run with /bin/sh.
    let t = app.task("Heat::Ungrouped", "echo before\necho oops >&2\nexit 3\n");
    let msg_id = app.publish(&t).await;
    let r = app.result(&msg_id, SHORT).await;
    assert_eq!(r.exit_code, 3);
    assert_eq!(r.error, None, "a task's own failure is not an error");
    assert_eq!(r.stdout, "before\n");
    assert_eq!(r.stderr, "oops\n");

    // The handler's lines carry the task's span.
    let log = app.log();
    let finished = log
        .lines()
        .find(|l| l.contains("task finished"))
        .unwrap_or_else(|| panic!("no 'task finished' line:\n{log}"));
    for field in [
        format!("workflow_id={}", t.workflow_id),
        format!("task_id={}", t.id),
        "attempt=1".to_owned(),
        format!("server_id={}", t.server_id),
    ] {
        assert!(finished.contains(&field), "{field} not in {finished:?}");
    }
}

#[tokio::test]
async fn builtin_echo_and_noop_and_unknown_groups() {
    let mut app = spawn_app().await;
    app.start_worker(&[]).await;
    let mut echo = app.task("std.echo", "");
    echo.inputs = inputs(json!({"a": 1, "b": "two"}));
    let noop = app.task("std.noop", "");
    let unknown = app.task("puppet", "class {}");
    let (e, n, u) = (
        app.publish(&echo).await,
        app.publish(&noop).await,
        app.publish(&unknown).await,
    );
    let r = app.result(&e, SHORT).await;
    assert_eq!((r.exit_code, r.error.as_deref()), (0, None));
    assert_eq!(Value::Object(r.outputs), json!({"a": 1, "b": "two"}));
    let r = app.result(&n, SHORT).await;
    assert_eq!((r.exit_code, r.error.as_deref()), (0, None));
    let r = app.result(&u, SHORT).await;
    let err = r.error.unwrap();
    assert!(err.contains("no runner for group \"puppet\""), "{err}");
    assert!(
        err.contains(&app.hooks_dir.join("puppet").display().to_string()),
        "{err}"
    );
    assert_eq!(r.exit_code, -1);
    // Instant runners send no started report: the final reply is the only one.
    for id in [&e, &n, &u] {
        assert_eq!(app.replies_for(id).len(), 1);
    }
    // All acked: nothing left in the queue.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.queue_state(&task_queue(&app.server_id)).await.0, 0);
}

#[tokio::test]
async fn a_hook_gets_the_heat_deployment_and_its_answer_is_mapped() {
    let mut app = spawn_app().await;
    let seen = app.path("hook-stdin.json");
    app.write_hook(
        "my-tool",
        &format!(
            "#!/usr/bin/env python3\nimport json, sys, os\nc = json.load(sys.stdin)\n\
             open({seen:?}, 'w').write(json.dumps(c))\n\
             sys.stderr.write('hook log with secrets\\n')\n\
             print(json.dumps({{'deploy_stdout': 'did ' + c['config'], 'deploy_stderr': 'warn',\n\
              'deploy_status_code': 0, 'result': os.getcwd()}}))\n",
            seen = seen.display().to_string()
        ),
    );
    app.write_hook(
        "noisy",
        "#!/bin/sh\necho 'not json at all'\necho err >&2\nexit 2\n",
    );
    app.start_worker(&[]).await;

    let mut t = app.task("my-tool", "the config");
    t.inputs = inputs(json!({"s": "v", "n": 3, "l": [1, 2]}));
    t.outputs = vec![OutputSpec {
        name: "result".into(),
        error_output: false,
        secret: false,
    }];
    t.options = inputs(json!({"opt": true}));
    let msg_id = app.publish(&t).await;
    let r = app.result(&msg_id, SHORT).await;
    assert_eq!((r.exit_code, r.error.as_deref()), (0, None), "{r:?}");
    assert_eq!(r.stdout, "did the config");
    assert_eq!(
        r.stderr, "warn",
        "the hook's own stderr is not the result's"
    );
    assert!(r.outputs["result"].as_str().unwrap().contains("task-"));

    let c: Value = serde_json::from_str(&std::fs::read_to_string(&seen).unwrap()).unwrap();
    assert_eq!(c["id"], t.id.to_string());
    assert_eq!(c["name"], "t");
    assert_eq!(c["group"], "my-tool");
    assert_eq!(c["config"], "the config");
    assert_eq!(c["options"], json!({"opt": true}));
    assert_eq!(
        c["outputs"],
        json!([{"name": "result", "error_output": false}])
    );
    let mut ins = c["inputs"].as_array().unwrap().clone();
    ins.sort_by_key(|i| i["name"].as_str().unwrap().to_owned());
    assert_eq!(
        Value::Array(ins),
        json!([
            {"name": "l", "value": [1, 2], "type": "Json"},
            {"name": "n", "value": "3", "type": "String"},
            {"name": "s", "value": "v", "type": "String"},
        ])
    );

    let bad = app.task("noisy", "");
    let msg_id = app.publish(&bad).await;
    let r = app.result(&msg_id, SHORT).await;
    let err = r.error.as_deref().unwrap();
    assert!(err.contains("printed no JSON object"), "{err}");
    assert_eq!(r.stdout, "not json at all\n");
    assert_eq!(r.exit_code, 2);
    assert_eq!(r.stderr, "err\n");
}

#[tokio::test]
async fn heat_agents_script_hook_runs_unchanged() {
    let mut app = spawn_app().await;
    let hook = heat_script_hook();
    let body = std::fs::read_to_string(&hook).expect("hook-script.py readable");
    assert!(
        body.contains("HEAT_SCRIPT_OUTPUTS"),
        "not heat-agents' hook: {}",
        hook.display()
    );
    app.write_hook("script", &body);
    app.start_worker(&[]).await;

    let mut ok = app.task(
        "script",
        "#!/bin/sh\necho \"hi $who\"\necho -n \"$((n * 2))\" > $heat_outputs_path.double\n",
    );
    ok.inputs = inputs(json!({"who": "heat", "n": 21}));
    ok.outputs = outputs(&["double", "absent"]);
    let mut fail = app.task("script", "#!/bin/sh\necho partial\nexit 5\n");
    fail.inputs = inputs(json!({"deploy_password": "hunter2"}));
    let (a, b) = (app.publish(&ok).await, app.publish(&fail).await);

    let r = app.result(&a, SHORT).await;
    assert_eq!((r.exit_code, r.error.as_deref()), (0, None), "{r:?}");
    assert_eq!(r.stdout, "hi heat\n");
    assert_eq!(r.outputs["double"], "42");
    assert!(!r.outputs.contains_key("absent"));
    assert!(
        !app.replies_for(&a)[0].reply.ending,
        "a started report first"
    );

    let r = app.result(&b, SHORT).await;
    assert_eq!(r.exit_code, 5);
    assert_eq!(r.error, None);
    assert_eq!(r.stdout, "partial\n");
    // hook-script.py logs inputs to its own stderr; that never reaches results or logs.
    assert!(!r.stderr.contains("hunter2"));
    assert!(!app.log().contains("hunter2"));
}

#[tokio::test]
async fn cancel_kills_the_task_and_frees_its_slot_at_once() {
    let mut app = spawn_app().await;
    app.start_worker(&[("BORA__WORKER__CONCURRENCY", "1")])
        .await;
    let pidfile = app.path("long.pid");
    let long = app.task(
        "script",
        &format!("#!/bin/sh\necho $$ > {}\nsleep 30\n", pidfile.display()),
    );
    let quick = app.task("script", "#!/bin/sh\necho quick\n");
    let l = app.publish(&long).await;
    app.started(&l, SHORT).await;
    let pid = read_pid(&pidfile).await;
    let q = app.publish(&quick).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        app.replies_for(&q).is_empty(),
        "one slot: the quick task waits"
    );

    let cancelled_at = Instant::now();
    app.cancel(&long).await;
    let r = app.result(&l, SHORT).await;
    assert_eq!(r.error.as_deref(), Some("cancelled"));
    assert_eq!(r.exit_code, -1);
    let r = app.result(&q, SHORT).await;
    assert_eq!(r.stdout, "quick\n");
    println!(
        "MEASURE cancel-to-next-task-result: {} ms",
        cancelled_at.elapsed().as_millis()
    );
    assert!(process_gone(pid), "the cancelled script is dead");

    // A cancel that arrives before its task: the task is dropped unrun.
    let early = app.task(
        "script",
        &format!("#!/bin/sh\ntouch {}\n", app.path("early-ran").display()),
    );
    app.cancel(&early).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = app.publish(&early).await;
    let after = app.task("std.noop", "");
    let n = app.publish(&after).await;
    app.result(&n, SHORT).await;
    assert!(app.replies_for(&e).is_empty());
    assert!(!app.path("early-ran").exists());
    assert_eq!(app.queue_state(&task_queue(&app.server_id)).await.0, 0);
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let mut app = spawn_app().await;
    app.start_worker(&[]).await;
    let (leader, child) = (app.path("leader.pid"), app.path("child.pid"));
    let mut t = app.task(
        "script",
        &format!(
            "#!/bin/sh\necho $$ > {}\nsleep 30 &\necho $! > {}\necho waiting\nwait\n",
            leader.display(),
            child.display()
        ),
    );
    t.timeout_s = 1;
    let msg_id = app.publish(&t).await;
    let r = app.result(&msg_id, SHORT).await;
    assert!(r.timed_out, "{r:?}");
    assert_eq!(r.exit_code, -1);
    assert_eq!(r.error.as_deref(), Some("timed out after 1 s"));
    assert_eq!(r.stdout, "waiting\n");
    let (leader, child) = (read_pid(&leader).await, read_pid(&child).await);
    assert!(process_gone(leader));
    assert!(process_gone(child), "the grandchild sleep was killed too");
    // The group is gone: kill(-pgid, 0) finds nobody.
    let rc = unsafe { libc::kill(-leader, 0) };
    assert!(rc == -1 || process_gone(child));
}

#[tokio::test]
async fn ten_megabytes_of_stdout_are_capped_with_whole_stream_count_and_digest() {
    let mut app = spawn_app().await;
    app.start_worker(&[]).await;
    let t = app.task(
        "script",
        "#!/bin/sh\nhead -c 10000000 /dev/zero | tr '\\0' 'a'\necho tail-marker\nseq 1 3 >&2\n",
    );
    let msg_id = app.publish(&t).await;
    let r = app.result(&msg_id, Duration::from_secs(30)).await;
    assert_eq!(r.exit_code, 0);
    let mut whole = vec![b'a'; 10_000_000];
    whole.extend_from_slice(b"tail-marker\n");
    assert_eq!(r.stdout_bytes, whole.len() as u64);
    assert_eq!(r.stdout_sha256, sha256_hex(&whole));
    assert!(r.truncated);
    let cap = 1_048_576;
    let omitted = whole.len() - cap;
    assert!(r.stdout.starts_with(&"a".repeat(cap / 2)));
    assert!(r.stdout.ends_with("aaatail-marker\n"));
    assert!(
        r.stdout
            .contains(&format!("\n...[{omitted} bytes omitted]...\n"))
    );
    assert_eq!(
        r.stdout.len(),
        cap + format!("\n...[{omitted} bytes omitted]...\n").len()
    );
    assert_eq!(r.stderr, "1\n2\n3\n");
    assert_eq!(r.stderr_bytes, 6);
}

#[tokio::test]
async fn at_most_once_attempt_is_never_started_twice_even_after_a_restart() {
    let mut app = spawn_app().await;
    app.start_worker(&[]).await;
    let marker = app.path("runs");
    let mut t = app.task(
        "script",
        &format!("#!/bin/sh\necho run >> {}\n", marker.display()),
    );
    t.delivery = Delivery::AtMostOnce;
    let msg_id = app.publish(&t).await;
    let r = app.result(&msg_id, SHORT).await;
    assert_eq!((r.exit_code, r.error.as_deref()), (0, None));
    assert!(app.stop_worker().await.success());

    app.start_worker(&[]).await;
    // The same attempt again (a re-send): refused with a clear error.
    app.publish(&t).await;
    app.wait_reply(&msg_id, SHORT, |r| r.ending && app_finals_error(r))
        .await;
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "run\n");
    // A new attempt is another pair and runs.
    t.attempt = 2;
    let msg2 = app.publish(&t).await;
    let r = app.result(&msg2, SHORT).await;
    assert_eq!((r.exit_code, r.attempt), (0, 2));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "run\nrun\n");
}

fn app_finals_error(r: &bora::protocol::RpcReply) -> bool {
    r.result["error"]
        .as_str()
        .is_some_and(|e| e.contains("at_most_once: attempt already started on this server"))
}

#[tokio::test]
async fn at_most_once_fails_clearly_when_the_state_dir_is_unwritable_but_others_run() {
    let mut app = spawn_app().await;
    app.start_worker(&[("BORA__WORKER__STATE_DIR", "/proc/bora-no-such-dir")])
        .await;
    let mut amo = app.task("script", "#!/bin/sh\necho hi\n");
    amo.delivery = Delivery::AtMostOnce;
    let alo = app.task("script", "#!/bin/sh\necho hi\n");
    let (a, b) = (app.publish(&amo).await, app.publish(&alo).await);
    let r = app.result(&a, SHORT).await;
    assert!(r.error.unwrap().contains("at_most_once"));
    let r = app.result(&b, SHORT).await;
    assert_eq!((r.exit_code, r.stdout.as_str()), (0, "hi\n"));
}

#[tokio::test]
async fn sigterm_lets_running_tasks_finish_kills_stragglers_and_exits_zero() {
    let mut app = spawn_app().await;
    app.start_worker(&[
        ("BORA__WORKER__CONCURRENCY", "2"),
        ("BORA__WORKER__SHUTDOWN_GRACE_S", "3"),
    ])
    .await;
    let short = app.task("script", "#!/bin/sh\nsleep 1\necho finished\n");
    let long = app.task("script", "#!/bin/sh\nsleep 30\n");
    let queued = app.task("script", "#!/bin/sh\necho should-not-run-here\n");
    let s = app.publish(&short).await;
    let l = app.publish(&long).await;
    app.started(&s, SHORT).await;
    app.started(&l, SHORT).await;
    let q = app.publish(&queued).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let status = app.stop_worker().await;
    assert!(status.success(), "exit status {status:?}");
    let r = app.result(&s, SHORT).await;
    assert_eq!((r.exit_code, r.stdout.as_str()), (0, "finished\n"));
    let r = app.result(&l, SHORT).await;
    assert_eq!(r.error.as_deref(), Some("worker shutting down"));
    // The prefetched task was requeued, not run.
    assert!(app.replies_for(&q).is_empty());
    assert_eq!(app.queue_state(&task_queue(&app.server_id)).await, (1, 0));
}

#[tokio::test]
async fn task_is_acked_at_start_so_a_lost_connection_neither_redelivers_nor_loses_it() {
    let mut app = spawn_app().await;
    app.start_worker(&[]).await;
    let runs = app.path("runs");
    let t = app.task(
        "script",
        &format!(
            "#!/bin/sh\necho run >> {}\nsleep 3\necho done\n",
            runs.display()
        ),
    );
    let msg_id = app.publish(&t).await;
    app.started(&msg_id, SHORT).await;
    // The broker drops the worker's connection while the task runs. Had the
    // delivery still been unacked it would be requeued (ready again) now.
    assert!(app.kill_worker_connections().await >= 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.queue_state(&task_queue(&app.server_id)).await.0, 0);

    // The worker reconnects and reports the result once.
    let r = app.result(&msg_id, Duration::from_secs(30)).await;
    assert_eq!((r.exit_code, r.stdout.as_str()), (0, "done\n"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.finals(&msg_id), 1);
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n");
    assert!(app.log().contains("broker connection lost; reconnecting"));
    // And takes new tasks on the new connection.
    let n = app.publish(&app.task("std.noop", "")).await;
    app.result(&n, SHORT).await;
}

#[tokio::test]
async fn bad_messages_are_dropped_answered_when_possible_and_counted() {
    let mut app = spawn_app().await;
    app.start_worker(&[]).await;
    let q = task_queue(&app.server_id);
    app.publish_raw(&q, b"not json").await;

    // An unknown method that still names an attempt gets an error result.
    let t = app.task("std.noop", "");
    let mut call = t.to_call(REPLY, 1);
    call.method = "drop_tables".into();
    app.publish_raw(&q, &call.encode()).await;
    let r = app.result(&task_msg_id(t.id, 1), SHORT).await;
    assert!(r.error.unwrap().contains("unknown method"));

    // A task for another server.
    let mut other = app.task("std.noop", "");
    other.server_id = bora::domain::ServerId::parse("someone-else").unwrap();
    let body = other.to_call(REPLY, 1).encode();
    app.publish_raw(&q, &body).await;
    let r = app.result(&task_msg_id(other.id, 1), SHORT).await;
    assert!(r.error.unwrap().contains("task for server someone-else"));

    // Still alive, and the queue is empty.
    let ok = app.publish(&app.task("std.noop", "")).await;
    app.result(&ok, SHORT).await;
    assert_eq!(app.queue_state(&q).await.0, 0);
    assert!(app.log().contains("bad_messages=3"), "{}", app.log());
    // Even an undecodable message is handled inside a span naming the server.
    let in_span = format!("task{{server_id={}}}", app.server_id);
    assert!(
        app.log()
            .lines()
            .any(|l| l.contains("bad message on the task queue") && l.contains(&in_span)),
        "{}",
        app.log()
    );
    let _ = RpcRequest::decode(&body).unwrap();
}

#[tokio::test]
async fn idle_heartbeats_and_idle_memory() {
    let mut app = spawn_app().await;
    app.start_worker(&[]).await;
    let msg_id = format!("server.{}", app.server_id);
    app.wait_reply(&msg_id, SHORT, |r| !r.ending).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(app.replies_for(&msg_id).len() >= 2);
    let status = std::fs::read_to_string(format!("/proc/{}/status", app.worker_pid())).unwrap();
    let rss = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    println!("MEASURE idle worker {rss}");
}

#[tokio::test]
async fn worker_declares_missing_queues_for_a_quick_start() {
    let mut app = spawn_app_with(Options {
        declare_queues: false,
    })
    .await;
    app.start_worker(&[]).await;
    let (_, consumers) = app.queue_state(&control_queue(&app.server_id)).await;
    assert_eq!(consumers, 1);
    let t = app.publish(&app.task("std.echo", "")).await;
    app.result(&t, SHORT).await;
}

#[tokio::test]
async fn a_task_longer_than_the_consumer_timeout_runs_once() {
    let mut app = spawn_app().await;
    // RabbitMQ reads consumer_timeout when a channel opens: shorten it only
    // while the worker and a probe open theirs (and tick every second meanwhile).
    let short = ShortConsumerTimeout::set(4000).await;
    app.start_worker(&[]).await;
    let (_probe_conn, probe) = app.unacked_probe().await;
    short.close_window();
    let runs = app.path("runs");
    let t = app.task(
        "script",
        &format!(
            "#!/bin/sh\necho run >> {}\nsleep 7\necho done\n",
            runs.display()
        ),
    );
    let msg_id = app.publish(&t).await;
    let r = app.result(&msg_id, Duration::from_secs(30)).await;
    assert_eq!((r.exit_code, r.stdout.as_str()), (0, "done\n"));
    // The probe, which held a delivery unacked, was closed by the broker: the
    // short timeout was in force; the worker's task outlived it and ran once.
    assert!(
        !probe.status().connected(),
        "the consumer timeout did not apply"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.finals(&msg_id), 1);
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n");
    assert!(!app.log().contains("reconnecting"), "{}", app.log());
    drop(short);
}

#[tokio::test]
async fn a_least_privilege_worker_waits_for_its_queues_then_works() {
    let mut app = spawn_app_with(Options {
        declare_queues: false,
    })
    .await;
    let url = app.restricted_user().await;
    app.spawn_worker(&[("BORA__AMQP__URL", url.as_str())]);
    // It may not declare its queues (configure ^$): it waits, it does not crash.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !app.log().contains("waiting for the dispatcher") {
        assert!(Instant::now() < deadline, "{}", app.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(app.worker.as_mut().unwrap().try_wait().unwrap().is_none());

    app.declare_server_queues().await;
    app.wait_consuming().await;
    let msg_id = app
        .publish(&app.task("script", "#!/bin/sh\necho least privilege\n"))
        .await;
    let r = app.result(&msg_id, SHORT).await;
    assert_eq!(r.stdout, "least privilege\n");
    let user = format!("bora-srv-{}", app.server_id);
    for reply in app.replies_for(&msg_id) {
        assert_eq!(reply.user_id.as_deref(), Some(user.as_str()));
    }
}

#[tokio::test]
async fn output_files_that_are_not_regular_files_are_not_read() {
    let mut app = spawn_app().await;
    app.start_worker(&[]).await;
    // A symlink to an endless device and a FIFO with no writer: read whole
    // and on the runtime, the first exhausts memory and the second blocks.
    let t_cfg = "#!/bin/sh\nln -s /dev/zero \"$heat_outputs_path.endless\"\n\
                 mkfifo \"$heat_outputs_path.pipe\"\n\
                 ln -s /etc/hostname \"$heat_outputs_path.linked\"\n\
                 printf ok > \"$heat_outputs_path.plain\"\n";
    let mut t = app.task("script", t_cfg);
    t.outputs = outputs(&["endless", "pipe", "linked", "plain"]);
    let msg_id = app.publish(&t).await;
    let r = app.result(&msg_id, SHORT).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(r.outputs["plain"], "ok");
    for absent in ["endless", "pipe", "linked"] {
        assert!(!r.outputs.contains_key(absent), "{absent}: {r:?}");
    }
    // The worker goes on: the next task runs.
    let next = app.task("script", "echo still here\n");
    let msg_id = app.publish(&next).await;
    assert_eq!(app.result(&msg_id, SHORT).await.stdout, "still here\n");
}

#[tokio::test]
async fn a_result_over_the_reply_limit_is_cut_to_fit_and_marked() {
    let mut app = spawn_app().await;
    app.start_worker(&[]).await;
    let runs = app.path("runs");
    // 1 MiB of NULs on each stream (within the worker's cap, but seven
    // bytes each once encoded twice), and a 1 MiB output.
    let mut t = app.task(
        "script",
        &format!(
            "#!/bin/sh\necho run >> {}\nhead -c 1048576 /dev/zero\nhead -c 1048576 /dev/zero >&2\n\
             head -c 1048576 /dev/zero | tr '\\0' 'x' > \"$heat_outputs_path.big\"\n\
             printf small > \"$heat_outputs_path.small\"\n",
            runs.display()
        ),
    );
    t.outputs = outputs(&["big", "small"]);
    let limit = 8 * 1024 * 1024;
    t.max_result_bytes = Some(limit as u64);
    let msg_id = app.publish(&t).await;
    let r = app.result(&msg_id, Duration::from_secs(60)).await;
    assert_eq!((r.exit_code, &r.error), (0, &None), "{:.300?}", r.error);
    let last = app.wait_reply(&msg_id, SHORT, |r| r.ending).await;
    assert!(last.bytes <= limit, "a reply of {} bytes", last.bytes);
    assert!(
        last.bytes > limit / 2,
        "cut far more than needed: {}",
        last.bytes
    );
    assert_eq!(last.correlation_id.as_deref(), Some(msg_id.as_str()));
    assert_eq!(app.finals(&msg_id), 1);
    // Marked: what was cut, and where.
    assert_eq!(r.trimmed, ["stdout", "stderr"]);
    assert!(r.truncated);
    for s in [&r.stdout, &r.stderr] {
        assert!(s.starts_with('\0') && s.ends_with('\0'));
        assert!(s.contains("bytes cut by bora to fit dispatch.max_result_bytes]"));
    }
    // Counts and digests describe the whole streams.
    assert_eq!(r.stdout_bytes, 1_048_576);
    assert_eq!(r.stderr_sha256, sha256_hex(&vec![0u8; 1_048_576]));
    // The streams gave enough room: the outputs are whole.
    assert_eq!(r.outputs["big"], "x".repeat(1_048_576));
    assert_eq!(r.outputs["small"], "small");
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n");
}
