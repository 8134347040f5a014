//! Fault tests: bora's "nothing lost" promise (SPEC 6) against real
//! processes — `bora serve` killed with SIGKILL and restarted, every broker
//! connection closed under load, a worker killed mid-task, poison on the
//! reply queue, and a graceful SIGTERM with results arriving while the
//! dispatcher is down. The scale-out tests run several `bora serve`
//! processes on one PostgreSQL database (whatever `BORA_TEST_STORE` says):
//! three dispatchers and a workflow of 1,000 tasks with one dispatcher
//! killed mid-run, and a fan-in whose results reach two dispatchers at once.
//!
//! Each test prints its figures (counts, durations, restarts) so a run's
//! output doubles as a measurement; run with `--nocapture` to see them.
//! The assertions are about outcomes (nothing lost, nothing recorded twice,
//! order kept), never about timing.

#[path = "../api/helpers.rs"]
mod harness;
mod procs;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use harness::{EventOut, TaskOut, TestStore, Vhost, WorkflowOut};
use procs::*;

const CHAINS: usize = 40;
const LENGTH: usize = 10;
const SERVERS: usize = 4;

/// What a run of the chains workload measured.
#[derive(Debug, Default)]
struct Outcome {
    succeeded: u64,
    /// Tasks whose last attempt is above 1 (the dispatcher published again).
    reattempted: usize,
    /// (chain, step) pairs whose script ran more than once.
    reexecuted: usize,
    /// Executions in all (lines in the run files).
    executions: usize,
    events: usize,
}

/// Checks the chains workload after it ended: all succeeded, order kept in
/// every chain (from the API's timestamps and from the run files), each
/// task's terminal state in the event log exactly once.
async fn check_chains(api: &Api, wf: &str, runs: &Path, workflow: &WorkflowOut) -> Outcome {
    let total = (CHAINS * LENGTH) as u64;
    assert_eq!(workflow.state, "succeeded", "{workflow:?}");
    assert_eq!(workflow.task_counts.succeeded, total, "{workflow:?}");

    let tasks = by_name(api.tasks(wf).await);
    assert_eq!(tasks.len() as u64, total);
    let mut reattempted = 0;
    for c in 0..CHAINS {
        for k in 0..LENGTH {
            let t = &tasks[&format!("c{c}-{k}")];
            assert_eq!(t.state, "succeeded", "{t:?}");
            if t.attempt > 1 {
                reattempted += 1;
            }
            if k > 0 {
                let prev = &tasks[&format!("c{c}-{}", k - 1)];
                assert!(
                    t.started_at() >= prev.finished_at(),
                    "chain {c}: step {k} started before step {} finished\n{prev:?}\n{t:?}",
                    k - 1
                );
            }
        }
    }

    let events = api.events(wf).await;
    let mut terminal: HashMap<String, Vec<String>> = HashMap::new();
    for e in &events {
        let state = e.state.as_str();
        if matches!(
            state,
            "succeeded" | "failed" | "timed_out" | "cancelled" | "skipped"
        ) {
            terminal
                .entry(e.task().to_owned())
                .or_default()
                .push(state.to_owned());
        }
    }
    for name in tasks.keys() {
        assert_eq!(
            terminal.get(name).map(Vec::as_slice),
            Some(&["succeeded".to_owned()][..]),
            "task {name}: its terminal state must be in the event log exactly once"
        );
    }

    let runs = Executions::read(runs, CHAINS);
    assert!(
        runs.out_of_order.is_empty(),
        "steps executed out of order in chains {:?}",
        runs.out_of_order
    );
    for c in 0..CHAINS {
        for k in 0..LENGTH {
            assert!(
                runs.counts.get(&(c, k)).is_some_and(|&n| n >= 1),
                "chain {c} step {k} never executed"
            );
        }
    }
    Outcome {
        succeeded: total,
        reattempted,
        reexecuted: runs.repeated(),
        executions: runs.counts.values().sum(),
        events: events.len(),
    }
}

/// A workflow's tasks by name.
fn by_name(tasks: Vec<TaskOut>) -> HashMap<String, TaskOut> {
    tasks.into_iter().map(|t| (t.name.clone(), t)).collect()
}

fn start_workers(dir: &Path, vhost: &Vhost, extra: &[(&str, &str)]) -> Vec<WorkerProc> {
    (0..SERVERS)
        .map(|s| WorkerProc::start(dir, &vhost.amqp_url(), &format!("s{s}"), extra))
        .collect()
}

/// Adds the counters of one dispatcher process's life (its last scrape) to
/// the totals: counters start at zero in each process.
fn add_counters(totals: &mut HashMap<String, f64>, last: &HashMap<String, f64>) {
    for (k, v) in last {
        if k.starts_with("bora_results_rejected_total") || k.starts_with("bora_broker_reconnects") {
            *totals.entry(k.clone()).or_default() += v;
        }
    }
}

fn rejected_summary(m: &HashMap<String, f64>) -> String {
    let mut parts: Vec<String> = m
        .iter()
        .filter(|(k, v)| k.starts_with("bora_results_rejected_total") && **v > 0.0)
        .map(|(k, v)| {
            let reason = k
                .split("reason=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?");
            format!("{reason}={v}")
        })
        .collect();
    parts.sort();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" ")
    }
}

#[tokio::test]
async fn the_dispatcher_killed_five_times_loses_nothing() {
    let vhost = Vhost::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(
        dir.path(),
        &vhost.amqp_url(),
        &[("BORA__DISPATCH__HEARTBEAT_TIMEOUT_S", "5")],
    )
    .await;
    let api = Api::new(&serve.base);
    let _workers = start_workers(dir.path(), &vhost, &[]);
    let runs = dir.path().join("runs");
    let t0 = Instant::now();
    let wf = api
        .create_workflow(chains_workflow(&runs, CHAINS, LENGTH, SERVERS, 0.25))
        .await;
    let wf = wf.id();

    let mut totals = HashMap::new();
    let mut downtimes = Vec::new();
    let mut done_at_kill = Vec::new();
    for (i, gap_ms) in [900u64, 1300, 1000, 1500, 800].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
        let done = succeeded(&api.workflow(&wf).await);
        done_at_kill.push(done);
        if let Some(m) = api.metrics().await {
            add_counters(&mut totals, &m);
        }
        let down = Instant::now();
        serve.kill9().await;
        let ready = serve.restart().await;
        downtimes.push(down.elapsed());
        println!(
            "kill {}: {done} of 400 succeeded before it; back and ready after {:?} (readiness {:?})",
            i + 1,
            down.elapsed(),
            ready
        );
    }
    // Otherwise the kills did not happen during the workflow.
    assert!(
        done_at_kill[4] < 400,
        "the workflow ended before the last kill"
    );
    let w = api.wait_workflow_end(&wf, Duration::from_secs(120)).await;
    let elapsed = t0.elapsed();
    if let Some(m) = api.metrics().await {
        add_counters(&mut totals, &m);
    }
    let o = check_chains(&api, &wf, &runs, &w).await;
    println!(
        "dispatcher kill -9 x5: {} tasks succeeded in {elapsed:?}; {} restarts; downtime per kill {:?}; \
         {} executions ({} steps ran more than once, {} tasks needed a new attempt); \
         {} events; replies dropped as duplicates or stale (lower bound, counters die with the process): {}",
        o.succeeded,
        serve.starts - 1,
        downtimes,
        o.executions,
        o.reexecuted,
        o.reattempted,
        o.events,
        rejected_summary(&totals),
    );
    let (code, took) = serve.sigterm().await;
    println!("final SIGTERM: exit {code} after {took:?}");
    assert_eq!(code, 0);
}

#[tokio::test]
async fn every_broker_connection_closed_eight_times_loses_nothing() {
    let vhost = Vhost::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(
        dir.path(),
        &vhost.amqp_url(),
        &[("BORA__DISPATCH__HEARTBEAT_TIMEOUT_S", "5")],
    )
    .await;
    let api = Api::new(&serve.base);
    // The management API lists a new connection only some 4.5 s after it
    // opened (longer on a loaded machine), so each round takes that long:
    // 2 slots per worker and 1.2 s scripts (400 x 1.2 s / 8 slots = 60 s of
    // work) keep the same 400 tasks running through all 8 rounds.
    let mut workers = start_workers(dir.path(), &vhost, &[("BORA__WORKER__CONCURRENCY", "2")]);
    let serve_pid = serve.pid();
    let worker_pids: Vec<u32> = workers.iter().map(WorkerProc::pid).collect();
    let runs = dir.path().join("runs");
    let t0 = Instant::now();
    let wf = api
        .create_workflow(chains_workflow(&runs, CHAINS, LENGTH, SERVERS, 1.2))
        .await;
    let wf = wf.id();

    let mut closed = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut not_ready = 0;
    let mut done_at_close = 0;
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        done_at_close = succeeded(&api.workflow(&wf).await);
        // The dispatcher's relay, result consumer and RPC API, and 4 workers.
        let (n, waited) = close_all_connections(&vhost.name, &mut seen, 7).await;
        closed.push(n);
        if n < 7 {
            println!(
                "connected now: {:?}",
                connections_by_client(&vhost.name).await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if api.ready().await != Some(200) {
            not_ready += 1;
        }
        println!(
            "close {}: {n} connections closed (listed after {waited:?}), {done_at_close} of 400 succeeded before it",
            i + 1
        );
        assert!(n > 0, "no connection to close: nobody reconnected");
    }
    assert!(
        done_at_close < 400,
        "the workflow ended before the last close"
    );
    let w = api.wait_workflow_end(&wf, Duration::from_secs(120)).await;
    let elapsed = t0.elapsed();
    let o = check_chains(&api, &wf, &runs, &w).await;

    // No process was restarted, and the dispatcher is ready again.
    assert!(serve.alive(), "bora serve exited");
    assert_eq!(serve.pid(), serve_pid);
    for (w, pid) in workers.iter_mut().zip(&worker_pids) {
        assert!(w.alive(), "worker {} exited", w.server);
        assert_eq!(w.pid(), *pid);
    }
    let ready_again = Instant::now();
    while api.ready().await != Some(200) {
        assert!(
            ready_again.elapsed() < Duration::from_secs(30),
            "/readyz never went back to 200"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = api.metrics().await.expect("metrics");
    let relay = metric_sum(&m, "bora_broker_reconnects_total", "relay");
    let replies = metric_sum(&m, "bora_broker_reconnects_total", "replies");
    assert!(
        relay >= 1.0 && replies >= 1.0,
        "relay {relay}, replies {replies}"
    );
    // The dispatcher still takes RPC and REST work after the closes.
    let after = api
        .create_workflow(
            json!({"name": "after", "tasks": [{"name": "t", "server_id": "s0", "group": "std.echo"}]}),
        )
        .await;
    let after = api
        .wait_workflow_end(&after.id(), Duration::from_secs(30))
        .await;
    assert_eq!(after.state, "succeeded", "{after:?}");
    println!(
        "connections closed x8 ({closed:?} per round): {} tasks succeeded in {elapsed:?}; 0 restarts \
         (pids unchanged); reconnects relay={relay} replies={replies}; /readyz not 200 just after \
         {not_ready} of 8 closes; {} executions ({} steps ran more than once, {} tasks needed a new attempt); \
         replies dropped: {}",
        o.succeeded,
        o.executions,
        o.reexecuted,
        o.reattempted,
        rejected_summary(&m),
    );
    let (code, took) = serve.sigterm().await;
    println!("final SIGTERM: exit {code} after {took:?}");
    assert_eq!(code, 0);
}

#[tokio::test]
async fn a_worker_killed_mid_task_gets_its_task_run_again() {
    let vhost = Vhost::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(
        dir.path(),
        &vhost.amqp_url(),
        &[("BORA__DISPATCH__HEARTBEAT_TIMEOUT_S", "2")],
    )
    .await;
    let api = Api::new(&serve.base);
    let mut first = WorkerProc::start(dir.path(), &vhost.amqp_url(), "s", &[]);
    let runs = dir.path().join("runs.log");
    let script = format!(
        "#!/bin/sh\necho start >> {0}\nsleep 3\necho end >> {0}\n",
        runs.display()
    );
    let wf = api
        .create_workflow(json!({"name": "lost-worker", "tasks": [
            {"name": "slow", "server_id": "s", "config": script},
            {"name": "next", "server_id": "s", "depends_on": ["slow"], "group": "std.echo"}
        ]}))
        .await;
    let wf = wf.id();
    api.wait_task_state(&wf, "slow", "running").await;
    // `running` is recorded from the worker's started report, which comes
    // before the script is spawned: wait until the script really runs.
    let t0 = Instant::now();
    while !std::fs::read_to_string(&runs).is_ok_and(|t| t.contains("start")) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the script never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = Instant::now();
    first.kill9().await;
    // A new worker process for the same server (the guest rebooted).
    let _second = WorkerProc::start(dir.path(), &vhost.amqp_url(), "s", &[]);
    let rerun = loop {
        let t = api.wait_task_state(&wf, "slow", "running").await;
        if t.attempt == 2 {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let detected = killed.elapsed();
    let w = api.wait_workflow_end(&wf, Duration::from_secs(60)).await;
    assert_eq!(w.state, "succeeded", "{w:?}");
    let slow = api.task(&wf, "slow").await.unwrap();
    assert_eq!(slow.attempt, 2, "{slow:?}");
    assert_eq!(slow.result().attempt, 2, "{slow:?}");
    assert_eq!(slow.state, "succeeded");
    let events = api.events(&wf).await;
    let running: Vec<i64> = events
        .iter()
        .filter(|e| e.task() == "slow" && e.state == "running")
        .filter_map(|e| e.attempt)
        .collect();
    assert_eq!(running, vec![1, 2], "{events:?}");
    let text = std::fs::read_to_string(&runs).unwrap_or_default();
    let starts = text.lines().filter(|l| *l == "start").count();
    assert_eq!(starts, 2, "the script ran {starts} times:\n{text}");
    // Give the first attempt's orphaned script time to finish if it survived
    // its worker (it runs in its own process group).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let text = std::fs::read_to_string(&runs).unwrap_or_default();
    let ends = text.lines().filter(|l| *l == "end").count();
    println!(
        "worker kill -9 mid-task: new attempt running {detected:?} after the kill \
         (heartbeat_timeout_s = 2, worker heartbeat 1 s); attempt {} succeeded; \
         script started {starts} times, finished {ends} times (an orphan of the killed worker \
         finishing counts here); rerun started_at {:?}",
        slow.attempt, rerun.started_at,
    );
    assert_eq!(
        ends, 1,
        "the killed worker's task went on running without its worker"
    );
    let (code, _) = serve.sigterm().await;
    assert_eq!(code, 0);
}

#[tokio::test]
async fn poison_on_the_reply_queue_is_dropped_and_counted() {
    let vhost = Vhost::create().await;
    let dir = tempfile::tempdir().unwrap();
    let max = 65_536;
    let mut serve = Serve::start(
        dir.path(),
        &vhost.amqp_url(),
        &[("BORA__DISPATCH__MAX_RESULT_BYTES", "65536")],
    )
    .await;
    let api = Api::new(&serve.base);
    let _worker = WorkerProc::start(dir.path(), &vhost.amqp_url(), "s", &[]);
    let wf = api
        .create_workflow(json!({"name": "poison", "tasks": [
            {"name": "a", "server_id": "s", "config": "sleep 1; echo a"},
            {"name": "b", "server_id": "s", "config": "echo b", "depends_on": ["a"]},
            {"name": "c", "server_id": "s", "group": "std.echo", "inputs": {"x": 1},
             "depends_on": ["b"]}
        ]}))
        .await;
    let wf = wf.id();
    api.wait_task_state(&wf, "a", "running").await;
    let before = api.metrics().await.expect("metrics");
    let url = vhost.amqp_url();
    let ok = |id: &str| {
        bora::protocol::RpcReply::final_result(id, json!({"exit_code": 0, "stdout": "forged"}))
            .encode()
    };
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("malformed", b"\x00\xffnot json at all{".to_vec()),
        (
            "malformed",
            br#"{"oslo.version": "2.0", "oslo.message": "{]"}"#.to_vec(),
        ),
        ("unknown_msg_id", ok("no-such-message-id")),
        ("unknown_task", ok(&format!("{}.1", uuid::Uuid::now_v7()))),
        ("oversized", {
            let mut big = ok(&"x".repeat(16));
            big.extend(std::iter::repeat_n(b' ', max + 1));
            big
        }),
    ];
    for (_, body) in &poison {
        publish_reply(&url, body).await;
    }
    let w = api.wait_workflow_end(&wf, Duration::from_secs(60)).await;
    assert_eq!(w.state, "succeeded", "{w:?}");
    let c = api.task(&wf, "c").await.unwrap();
    assert_eq!(c.result().outputs.get("x"), Some(&json!(1)), "{c:?}");
    let after = api.metrics().await.expect("metrics");
    let mut expected: HashMap<&str, f64> = HashMap::new();
    for (reason, _) in &poison {
        *expected.entry(reason).or_default() += 1.0;
    }
    let mut figures = Vec::new();
    for (reason, n) in &expected {
        let filter = format!("reason=\"{reason}\"");
        let got = metric_sum(&after, "bora_results_rejected_total", &filter)
            - metric_sum(&before, "bora_results_rejected_total", &filter);
        figures.push(format!("{reason}={got}"));
        assert_eq!(got, *n, "reason {reason}");
    }
    // Nothing stuck or requeued forever: the reply queue is empty.
    let depth = vhost.queue_depth("reply_bora").await;
    assert_eq!(depth, 0);
    println!(
        "poison on reply_bora: {} messages dropped and counted ({}); the workflow went on (3 of 3 succeeded); reply queue depth {depth}",
        poison.len(),
        figures.join(" ")
    );
    assert!(serve.alive());
    let (code, _) = serve.sigterm().await;
    assert_eq!(code, 0);
}

#[tokio::test]
async fn sigterm_stops_serve_cleanly_and_results_sent_meanwhile_are_recorded() {
    let vhost = Vhost::create().await;
    let dir = tempfile::tempdir().unwrap();
    let timeout_s = 2;
    let mut serve = Serve::start(
        dir.path(),
        &vhost.amqp_url(),
        &[("BORA__DISPATCH__HEARTBEAT_TIMEOUT_S", "2")],
    )
    .await;
    let api = Api::new(&serve.base);
    let _worker = WorkerProc::start(dir.path(), &vhost.amqp_url(), "s", &[]);
    let runs = dir.path().join("runs.log");
    let wf = api
        .create_workflow(json!({"name": "sigterm", "tasks": [
            {"name": "long", "server_id": "s",
             "config": format!("#!/bin/sh\necho long >> {}\nsleep 4\n", runs.display())},
            {"name": "quick", "server_id": "s", "group": "std.echo", "inputs": {"n": 1}},
            {"name": "after", "server_id": "s", "config": "echo after",
             "depends_on": ["long", "quick"]}
        ]}))
        .await;
    let wf = wf.id();
    api.wait_task_state(&wf, "long", "running").await;
    // An open event stream must not hold the shutdown open.
    let stream = tokio::spawn({
        let url = format!("{}/v1/workflows/{wf}/events", serve.base);
        async move {
            let r = reqwest::get(url).await.ok()?;
            r.text().await.ok()
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (code, took) = serve.sigterm().await;
    assert_eq!(
        code,
        0,
        "exit code after SIGTERM (log: {})",
        serve.log.display()
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(5), stream)
            .await
            .is_ok(),
        "the event stream stayed open after the dispatcher exited"
    );
    // The store was closed: SQLite removes the WAL when its last connection
    // closes. (PostgreSQL: the server outlives the dispatcher either way.)
    let wal_left = serve.store.sqlite_path.as_ref().map(|db| {
        let wal = db.with_extension("db-wal");
        std::fs::metadata(&wal).map(|m| m.len()).ok()
    });
    if let Some(wal_left) = wal_left {
        assert!(
            matches!(wal_left, None | Some(0)),
            "the store was not closed"
        );
    }
    assert_eq!(api.ready().await, None, "the API still answers after exit");
    let log = std::fs::read_to_string(&serve.log).unwrap_or_default();
    assert!(log.contains("bora serve stopped"), "{log}");

    // Down for longer than heartbeat_timeout_s: the task finishes meanwhile
    // and its heartbeats and result wait in reply_bora.
    let down = Instant::now();
    let mut waited = 0;
    while vhost.queue_depth("reply_bora").await == 0 || down.elapsed() < Duration::from_secs(5) {
        assert!(
            down.elapsed() < Duration::from_secs(30),
            "no reply arrived while down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        waited += 1;
    }
    let backlog = vhost.queue_depth("reply_bora").await;
    let ready = serve.restart().await;
    let w = api.wait_workflow_end(&wf, Duration::from_secs(60)).await;
    assert_eq!(w.state, "succeeded", "{w:?}");
    let long = api.task(&wf, "long").await.unwrap();
    // Its heartbeats were in the queue: a dispatcher that was away must not
    // call the worker lost for the silence it did not hear.
    assert_eq!(long.attempt, 1, "{long:?}");
    let text = std::fs::read_to_string(&runs).unwrap_or_default();
    assert_eq!(text.lines().count(), 1, "the long task ran again:\n{text}");
    println!(
        "SIGTERM: exit {code} after {took:?}; WAL left after exit: {wal_left:?} bytes; down \
         {:?} (> heartbeat_timeout_s = {timeout_s}) with {backlog} replies waiting; ready again \
         after {ready:?}; long task recorded at attempt {} (not re-run); polls {waited}",
        down.elapsed(),
        long.attempt,
    );
    let (code, _) = serve.sigterm().await;
    assert_eq!(code, 0);
}

#[tokio::test]
async fn sigterm_while_the_broker_hangs_still_stops_serve() {
    // A "broker" that accepts TCP connections and never answers: every
    // connect hangs until the pool's own timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            sockets.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let mut serve = Serve::start_alive(dir.path(), &url, &[]).await;
    let api = Api::new(&serve.base);
    assert_eq!(
        api.ready().await,
        Some(503),
        "ready with a broker that never answers"
    );
    // The relay, the result consumer and the RPC API are all stuck connecting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, took) = serve.sigterm().await;
    println!("SIGTERM while every broker connect hangs: exit {code} after {took:?}");
    assert_eq!(code, 0);
    // A shutdown that waits out the pool's 10 s connect timeout is a hang.
    assert!(
        took < Duration::from_secs(5),
        "shutdown waited {took:?} for a connect"
    );
    held.abort();
}

/// The scale-out workload: `GROUPS` groups, each `PARALLEL` chains of
/// `LINKS` tasks that join into one fan-in task; a group's chains start
/// after the previous group's fan-in. Chain tasks hop across the servers.
const GROUPS: usize = 25;
const PARALLEL: usize = 13;
const LINKS: usize = 3;
const SCALE_TASKS: usize = GROUPS * (PARALLEL * LINKS + 1);

/// The workflow body, and each task's dependencies by name.
fn groups_workflow(log: &Path, servers: usize) -> (Value, HashMap<String, Vec<String>>) {
    let mut tasks = Vec::new();
    let mut deps: HashMap<String, Vec<String>> = HashMap::new();
    for g in 0..GROUPS {
        let join = format!("g{g}-join");
        let mut tails = Vec::new();
        for c in 0..PARALLEL {
            for k in 0..LINKS {
                let name = format!("g{g}-c{c}-{k}");
                let d = match (g, k) {
                    (0, 0) => vec![],
                    (_, 0) => vec![format!("g{}-join", g - 1)],
                    _ => vec![format!("g{g}-c{c}-{}", k - 1)],
                };
                tasks.push(json!({
                    "name": name,
                    "server_id": format!("s{}", (g + c + k) % servers),
                    "config": logged_script(log, &name, ""),
                    "depends_on": d,
                }));
                deps.insert(name.clone(), d);
                if k == LINKS - 1 {
                    tails.push(name);
                }
            }
        }
        tasks.push(json!({
            "name": join,
            "server_id": format!("s{}", g % servers),
            "config": logged_script(log, &join, ""),
            "depends_on": tails,
        }));
        deps.insert(join, tails);
    }
    assert_eq!(tasks.len(), SCALE_TASKS);
    (json!({"name": "scale-out", "tasks": tasks}), deps)
}

/// Tasks succeeded so far; 0 while the dispatcher does not answer.
fn succeeded(w: &Option<WorkflowOut>) -> u64 {
    w.as_ref().map_or(0, |w| w.task_counts.succeeded)
}

#[tokio::test]
async fn three_dispatchers_on_postgres_one_killed_mid_run_lose_nothing() {
    let vhost = Vhost::create().await;
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(TestStore::postgres().await);
    let mut serves = Vec::new();
    for i in 0..3 {
        let home = dir.path().join(format!("serve-{i}"));
        std::fs::create_dir_all(&home).unwrap();
        serves.push(Serve::start_on(&home, &vhost.amqp_url(), store.clone(), &[]).await);
    }
    let apis: Vec<Api> = serves.iter().map(|s| Api::new(&s.base)).collect();
    let workers = start_workers(dir.path(), &vhost, &[("BORA__WORKER__CONCURRENCY", "8")]);
    let log = dir.path().join("runs.log");
    let (body, deps) = groups_workflow(&log, SERVERS);
    let t0 = Instant::now();
    let wf = apis[0].create_workflow(body).await;
    let wf = wf.id();
    let submitted = t0.elapsed();

    // Kill the busiest dispatcher once about a third of the tasks succeeded.
    let third = SCALE_TASKS as u64 / 3;
    while succeeded(&apis[0].workflow(&wf).await) < third {
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "a third of the tasks never succeeded: {:?}",
            apis[0].workflow(&wf).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut busy = Vec::new();
    for api in &apis {
        busy.push(
            counter(api, "bora_results_recorded_total").await
                + counter(api, "bora_messages_published_total").await,
        );
    }
    let victim = (0..3)
        .max_by(|&a, &b| busy[a].total_cmp(&busy[b]))
        .unwrap_or(2);
    let done_at_kill = succeeded(&apis[victim].workflow(&wf).await);
    let kill_wall = chrono::Utc::now();
    let killed = Instant::now();
    serves[victim].kill9().await;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    let api = &apis[survivors[0]];
    println!(
        "scale-out: {SCALE_TASKS} tasks submitted in {submitted:?}; dispatcher #{victim} \
         (results recorded + messages published per dispatcher: {busy:?}) killed after {:?} \
         with {done_at_kill} succeeded",
        t0.elapsed()
    );
    assert!(
        (done_at_kill as usize) < SCALE_TASKS,
        "the workflow ended before the kill"
    );

    // Progress after the kill, to see the stall and its end.
    let mut timeline = vec![(Duration::ZERO, done_at_kill)];
    let w = loop {
        let w = api.workflow(&wf).await;
        let n = succeeded(&w);
        if timeline.last().is_none_or(|&(_, last)| last != n) {
            timeline.push((killed.elapsed(), n));
        }
        if let Some(w) = w
            && w.is_ended()
        {
            break w;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "workflow {wf} did not end within 300 s: {} of {SCALE_TASKS} succeeded",
            timeline.last().map_or(0, |t| t.1)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = t0.elapsed();
    assert_eq!(w.state, "succeeded", "{w:?}");
    assert_eq!(w.task_counts.succeeded, SCALE_TASKS as u64, "{w:?}");

    // Both survivors answer the same.
    let other = &apis[survivors[1]];
    let w2 = other
        .workflow(&wf)
        .await
        .expect("the other survivor answers");
    assert_eq!(w2.state, w.state, "{w2:?} vs {w:?}");
    assert_eq!(w2.task_counts, w.task_counts, "{w2:?} vs {w:?}");

    // Every task succeeded, once, at attempt 1, after its dependencies.
    let tasks = by_name(api.tasks(&wf).await);
    assert_eq!(tasks.len(), SCALE_TASKS);
    let mut reattempted = Vec::new();
    for (name, t) in &tasks {
        assert_eq!(t.state, "succeeded", "{t:?}");
        if t.attempt != 1 {
            reattempted.push(name.clone());
        }
        for d in &deps[name] {
            let dep = &tasks[d];
            assert!(
                t.started_at() >= dep.finished_at(),
                "{name} started before its dependency {d} finished\n{dep:?}\n{t:?}"
            );
        }
    }

    // Stalled work: tasks whose dependencies had all ended before the kill
    // but that were only queued after it (claimed by the killed relay and
    // left to its lease, or released by one of its results in flight).
    let kill_us = kill_wall.timestamp_micros();
    let mut stalled: Vec<(i64, String)> = tasks
        .iter()
        .filter_map(|(name, t)| {
            let ready = deps[name]
                .iter()
                .map(|d| tasks[d].finished_at().timestamp_micros())
                .max()
                .unwrap_or_else(|| t.created_at.timestamp_micros());
            let queued = t.queued_at().timestamp_micros();
            (ready < kill_us && queued > kill_us + 500_000)
                .then(|| (queued - kill_us, name.clone()))
        })
        .collect();
    stalled.sort();
    // The longest pause in progress after the kill.
    let longest_pause = timeline
        .windows(2)
        .map(|w| (w[1].0 - w[0].0, w[0].0))
        .max()
        .unwrap_or_default();

    // The event log: each terminal state once, dependencies first; the
    // same log from both survivors.
    let events = api.events(&wf).await;
    let elog = EventLog::new(&events, &deps);
    assert!(elog.ids_increase, "event ids do not increase");
    for name in tasks.keys() {
        assert_eq!(
            elog.terminal.get(name).map(Vec::as_slice),
            Some(&["succeeded".to_owned()][..]),
            "task {name}: its terminal state must be in the event log exactly once"
        );
    }
    assert!(
        elog.out_of_order.is_empty(),
        "tasks queued before a dependency succeeded (task, dependency): {:?}",
        elog.out_of_order
    );
    let events2 = other.events(&wf).await;
    assert_eq!(
        events.len(),
        events2.len(),
        "the survivors serve different event logs"
    );
    assert!(
        events == events2,
        "the survivors serve different event logs"
    );

    // The scripts: each ran exactly once, after its dependencies ended.
    let runs = RunLog::read(&log);
    let twice: Vec<&String> = tasks.keys().filter(|n| runs.runs(n) > 1).collect();
    let never: Vec<&String> = tasks.keys().filter(|n| runs.runs(n) == 0).collect();
    assert!(never.is_empty(), "scripts that never ran: {never:?}");
    let order = runs.out_of_order(&deps);
    assert!(
        order.is_empty(),
        "scripts started before a dependency's ended (task, dependency): {order:?}"
    );
    let dropped: usize = workers.iter().map(duplicates_dropped).sum();
    let mut recorded = Vec::new();
    for &i in &survivors {
        recorded.push((i, counter(&apis[i], "bora_results_recorded_total").await));
    }
    println!(
        "scale-out: {SCALE_TASKS} tasks ({GROUPS} groups of {PARALLEL} chains of {LINKS} and a \
         fan-in) on 3 dispatchers, 4 workers: all succeeded in {elapsed:?} ({:?} after the kill); \
         {} tasks ready before the kill were queued only after it, the last {:?} after the kill \
         ({:?}); longest pause in progress after the kill {:?} (starting {:?} after it); \
         progress after the kill (time, succeeded): {:?}; {} executions for {} tasks, {} scripts \
         ran twice, {} tasks needed a new attempt, {} duplicate deliveries dropped by workers; \
         results recorded by the survivors (#, count): {recorded:?}; {} events, the same from \
         both survivors",
        killed.elapsed(),
        stalled.len(),
        stalled.last().map(|s| Duration::from_micros(s.0 as u64)),
        stalled.last().map(|s| &s.1),
        longest_pause.0,
        longest_pause.1,
        timeline
            .iter()
            .map(|(t, n)| (format!("{:.1}s", t.as_secs_f64()), *n))
            .collect::<Vec<_>>(),
        runs.lines / 2,
        SCALE_TASKS,
        twice.len(),
        reattempted.len(),
        dropped,
        events.len(),
    );
    assert!(
        twice.is_empty(),
        "scripts that ran more than once: {twice:?}"
    );
    assert!(
        reattempted.is_empty(),
        "tasks that needed a new attempt: {reattempted:?}"
    );
    for &i in &survivors {
        let (code, _) = serves[i].sigterm().await;
        assert_eq!(code, 0, "dispatcher #{i} exit code");
    }
}

#[tokio::test]
async fn a_fan_in_whose_results_reach_two_dispatchers_at_once_is_released_once() {
    const WIDTH: usize = 50;
    const ROUNDS: usize = 3;
    const SMALL: usize = 10;
    const FANIN_SERVERS: usize = 5;
    let vhost = Vhost::create().await;
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(TestStore::postgres().await);
    // One reply per transaction: the results of a round are recorded by
    // many small transactions of both dispatchers, interleaved.
    let extra = [("BORA__AMQP__REPLY_PREFETCH", "1")];
    let mut serves = Vec::new();
    for i in 0..2 {
        let home = dir.path().join(format!("serve-{i}"));
        std::fs::create_dir_all(&home).unwrap();
        serves.push(Serve::start_on(&home, &vhost.amqp_url(), store.clone(), &extra).await);
    }
    let apis: Vec<Api> = serves.iter().map(|s| Api::new(&s.base)).collect();
    let workers: Vec<WorkerProc> = (0..FANIN_SERVERS)
        .map(|s| {
            WorkerProc::start(
                dir.path(),
                &vhost.amqp_url(),
                &format!("s{s}"),
                &[("BORA__WORKER__CONCURRENCY", "10")],
            )
        })
        .collect();
    let log = dir.path().join("runs.log");
    let mut tasks = Vec::new();
    let mut deps: HashMap<String, Vec<String>> = HashMap::new();
    for r in 0..ROUNDS {
        // Every task of the round waits for the round's go file.
        let go = dir.path().join(format!("go{r}"));
        let wait = format!("while [ ! -e {} ]; do sleep 0.05; done", go.display());
        let mut round = Vec::new();
        for i in 0..WIDTH {
            let name = format!("r{r}-p{i}");
            let d: Vec<String> = if r == 0 {
                vec![]
            } else {
                vec![format!("join{}", r - 1)]
            };
            tasks.push(json!({
                "name": name, "server_id": format!("s{}", i % FANIN_SERVERS),
                "config": logged_script(&log, &name, &wait), "depends_on": d,
            }));
            deps.insert(name.clone(), d);
            round.push(name);
        }
        // Small fan-ins of the same results race too, each on its own.
        for j in 0..SMALL {
            let join = format!("join{r}-{j}");
            let d: Vec<String> = round.iter().skip(j).step_by(SMALL).cloned().collect();
            tasks.push(json!({
                "name": join, "server_id": format!("s{}", j % FANIN_SERVERS),
                "config": logged_script(&log, &join, ""), "depends_on": d,
            }));
            deps.insert(join, d);
        }
        let join = format!("join{r}");
        tasks.push(json!({
            "name": join, "server_id": format!("s{}", r % FANIN_SERVERS),
            "config": logged_script(&log, &join, ""), "depends_on": round,
        }));
        deps.insert(join, round);
    }
    let joins: Vec<String> = deps
        .keys()
        .filter(|n| n.starts_with("join"))
        .cloned()
        .collect();
    let wf = apis[0]
        .create_workflow(json!({"name": "fan-in", "tasks": tasks}))
        .await;
    let wf = wf.id();
    let mut released = Vec::new();
    for r in 0..ROUNDS {
        // All of the round running, then every script let go at once.
        let t0 = Instant::now();
        loop {
            let w = apis[1].workflow(&wf).await;
            let running = w.as_ref().map_or(0, |w| w.task_counts.running);
            if running == WIDTH as u64 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "round {r}: the fan-in's tasks never all ran: {w:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let go = Instant::now();
        std::fs::write(dir.path().join(format!("go{r}")), "").unwrap();
        // Every fan-in of the round released (a lost release leaves one
        // waiting forever) and ended before the next round is let go.
        for join in joins.iter().filter(|j| {
            j.strip_prefix(&format!("join{r}"))
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
        }) {
            let t = apis[1].wait_task_state(&wf, join, "succeeded").await;
            assert_eq!(t.attempt, 1, "{t:?}");
        }
        released.push(go.elapsed());
    }
    let w = apis[0]
        .wait_workflow_end(&wf, Duration::from_secs(60))
        .await;
    assert_eq!(w.state, "succeeded", "{w:?}");
    let w1 = apis[1]
        .workflow(&wf)
        .await
        .expect("the other dispatcher answers");
    assert_eq!(w1.task_counts, w.task_counts);

    let events = apis[0].events(&wf).await;
    let elog = EventLog::new(&events, &deps);
    // A release leaves no event of its own (the task stays `waiting` until
    // the broker confirms; a fast worker's `running` may come first, and
    // with two consumers a result may be recorded before its `started`
    // report, which is then dropped), so a second release shows as a second
    // `queued` or `running`, a later attempt, or a duplicate delivery.
    for join in &joins {
        let states = &elog.states[join];
        let ends: Vec<&str> = states
            .iter()
            .map(String::as_str)
            .filter(|s| !matches!(*s, "queued" | "running"))
            .collect();
        assert_eq!(ends, ["waiting", "succeeded"], "{join}: {states:?}");
        for once in ["queued", "running"] {
            assert!(
                states.iter().filter(|s| *s == once).count() <= 1,
                "{join}: {states:?}"
            );
        }
        let attempts: Vec<i64> = events
            .iter()
            .filter(|e| e.task() == join.as_str() && e.state != "waiting")
            .filter_map(|e| e.attempt)
            .collect();
        assert!(attempts.iter().all(|&a| a == 1), "{join}: {attempts:?}");
    }
    for (name, states) in &elog.terminal {
        assert_eq!(states, &["succeeded".to_owned()], "{name}");
    }
    assert!(elog.out_of_order.is_empty(), "{:?}", elog.out_of_order);
    let runs = RunLog::read(&log);
    for name in deps.keys() {
        assert_eq!(runs.runs(name), 1, "{name} ran {} times", runs.runs(name));
    }
    assert!(runs.out_of_order(&deps).is_empty());
    // Nothing was killed: a duplicate delivery would be a second publish.
    let dropped: usize = workers.iter().map(duplicates_dropped).sum();
    assert_eq!(
        dropped, 0,
        "duplicate deliveries: a task was published twice"
    );
    // Both dispatchers took part in recording the results.
    let mut recorded = Vec::new();
    for api in &apis {
        recorded.push(counter(api, "bora_results_recorded_total").await);
    }
    println!(
        "fan-in of {WIDTH} (and {SMALL} of {} each over the same results) on 2 dispatchers \
         (reply prefetch 1), {ROUNDS} rounds: each of {} joins released once and succeeded at \
         attempt 1; from go to every join of the round succeeded {released:?}; results recorded \
         per dispatcher {recorded:?}",
        WIDTH / SMALL,
        joins.len()
    );
    assert!(
        recorded.iter().all(|&n| n > 0.0),
        "one dispatcher recorded no result, so no race was run: {recorded:?}"
    );
    for s in &mut serves {
        let (code, _) = s.sigterm().await;
        assert_eq!(code, 0);
    }
}

/// SPEC 7.1 under a crash: the dispatcher is killed (SIGKILL) after the
/// producer's result was recorded and before the consumer ran (its server's
/// worker starts only after the restart). The value the consumer's input
/// resolved to is in the store with the release that dispatched it, so the
/// restarted dispatcher shows it and the consumer still receives it.
#[tokio::test]
async fn a_resolved_input_survives_a_killed_dispatcher() {
    let vhost = Vhost::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(dir.path(), &vhost.amqp_url(), &[]).await;
    let api = Api::new(&serve.base);
    let _db = WorkerProc::start(dir.path(), &vhost.amqp_url(), "ref-db", &[]);
    let wf = api
        .create_workflow(json!({"name": "refs-kill", "tasks": [
            {"name": "db", "server_id": "ref-db", "outputs": ["url"],
             "config": "#!/bin/sh\nprintf 'postgres://ref-db/app' > \"$heat_outputs_path.url\"\n"},
            {"name": "app", "server_id": "ref-web", "outputs": ["seen"],
             "inputs": {"DB_URL": {"get_output": ["db", "url"]}},
             "config": "#!/bin/sh\nprintf '%s' \"$DB_URL\" > \"$heat_outputs_path.seen\"\n"}
        ]}))
        .await;
    let wf = wf.id();
    api.wait_task_state(&wf, "db", "succeeded").await;
    serve.kill9().await;
    let ready = serve.restart().await;
    println!("dispatcher killed after the producer ended; ready again after {ready:?}");
    let app = api
        .task(&wf, "app")
        .await
        .expect("the restarted dispatcher answers");
    assert_ne!(
        app.state, "succeeded",
        "the consumer ran before the restart"
    );
    let resolved = app.resolved_inputs.expect("resolved with its release");
    assert_eq!(resolved["DB_URL"]["value"], json!("postgres://ref-db/app"));
    let _web = WorkerProc::start(dir.path(), &vhost.amqp_url(), "ref-web", &[]);
    let w = api.wait_workflow_end(&wf, Duration::from_secs(60)).await;
    assert_eq!(w.state, "succeeded", "{w:?}");
    let app = api.task(&wf, "app").await.expect("a task view");
    assert_eq!(app.result().outputs["seen"], json!("postgres://ref-db/app"));
}

/// Polls until `log` says `name`'s script started (a task's `running`
/// comes from the worker's report, before the script is spawned).
async fn wait_script_started(log: &Path, name: &str) {
    let t0 = Instant::now();
    while RunLog::read(log).runs(name) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the script of {name} never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The workflow's own events (pause, resume, rerun, cancel), by event id.
fn workflow_events(events: &[EventOut]) -> Vec<(i64, String)> {
    events
        .iter()
        .filter(|e| e.kind == "workflow")
        .map(|e| (e.id, e.state.clone()))
        .collect()
}

/// SPEC 7.3 under a crash: a pause is state in the store like any other.
/// The workflow is paused while `a` runs and the dispatcher is killed
/// (SIGKILL) and restarted; only then does `a`'s script end (it waits for a
/// go file, some 2 s in all), so its result is recorded by the new process
/// and must not release `b`, which waits for the resume with the pause
/// named in its `blocked_by`. The resume releases it and the workflow
/// succeeds.
#[tokio::test]
async fn a_pause_survives_a_killed_dispatcher_and_the_resume_releases_what_became_ready() {
    let vhost = Vhost::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(dir.path(), &vhost.amqp_url(), &[]).await;
    let api = Api::new(&serve.base);
    let _worker = WorkerProc::start(dir.path(), &vhost.amqp_url(), "s", &[]);
    let log = dir.path().join("runs.log");
    let go = dir.path().join("go");
    let wait = format!("while [ ! -e {} ]; do sleep 0.05; done", go.display());
    let wf = api
        .create_workflow(json!({"name": "pause-kill", "tasks": [
            {"name": "a", "server_id": "s", "config": logged_script(&log, "a", &wait)},
            {"name": "b", "server_id": "s", "depends_on": ["a"],
             "config": logged_script(&log, "b", "")}
        ]}))
        .await;
    let wf = wf.id();
    api.wait_task_state(&wf, "a", "running").await;
    wait_script_started(&log, "a").await;
    let started = Instant::now();

    let paused: WorkflowOut = harness::parse(
        "paused workflow",
        api.post(&format!("/v1/workflows/{wf}/pause"), json!({}))
            .await,
    );
    assert!(paused.paused, "{paused:?}");
    assert_eq!(paused.state, "running", "{paused:?}");
    serve.kill9().await;
    let ready = serve.restart().await;
    let a = api.task(&wf, "a").await.expect("the dispatcher answers");
    assert_eq!(a.state, "running", "{a:?}");
    // The script ends some 2 s after it started.
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(started.elapsed())).await;
    std::fs::write(&go, "").unwrap();
    let a = api.wait_task_state(&wf, "a", "succeeded").await;
    assert_eq!(a.attempt, 1, "{a:?}");

    // Held for as long as the pause lasts: watched for 3 s after a ended.
    let t0 = Instant::now();
    let mut polls = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        let w = api.workflow(&wf).await.expect("the dispatcher answers");
        assert!(w.paused, "the pause was lost: {w:?}");
        assert_eq!(w.state, "running", "{w:?}");
        let b = api.task(&wf, "b").await.expect("a task view");
        assert_eq!(b.state, "waiting", "released while paused: {b:?}");
        assert_eq!(b.blocked_by, ["workflow paused"], "{b:?}");
        assert_eq!(b.attempt, 0, "an attempt went out while paused: {b:?}");
        polls += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        RunLog::read(&log).runs("b"),
        0,
        "b's script ran while the workflow was paused"
    );

    let resumed: WorkflowOut = harness::parse(
        "resumed workflow",
        api.post(&format!("/v1/workflows/{wf}/resume"), json!({}))
            .await,
    );
    assert!(!resumed.paused, "{resumed:?}");
    let w = api.wait_workflow_end(&wf, Duration::from_secs(60)).await;
    assert_eq!(w.state, "succeeded", "{w:?}");
    assert!(!w.paused, "{w:?}");
    let b = api.task(&wf, "b").await.expect("a task view");
    assert_eq!(b.attempt, 1, "{b:?}");

    let runs = RunLog::read(&log);
    assert_eq!((runs.runs("a"), runs.runs("b")), (1, 1));
    let deps = HashMap::from([("b".to_owned(), vec!["a".to_owned()])]);
    assert!(runs.out_of_order(&deps).is_empty());
    // The log: paused, then resumed, and b left `waiting` only after the
    // resume; every task ended once.
    let events = api.events(&wf).await;
    let elog = EventLog::new(&events, &deps);
    for name in ["a", "b"] {
        assert_eq!(elog.terminal[name], ["succeeded"], "{name}: {events:?}");
    }
    let own = workflow_events(&events);
    let states: Vec<&str> = own.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(states, ["paused", "resumed"], "{events:?}");
    let resumed_id = own[1].0;
    let b_left = events
        .iter()
        .find(|e| e.task() == "b" && e.state != "waiting")
        .expect("b left waiting");
    assert!(
        b_left.id > resumed_id,
        "b left waiting before the resume: {events:?}"
    );
    println!(
        "pause + kill -9 while a ran: ready again after {ready:?}; b held through {polls} \
         polls over 3 s after a ended; resumed, b ran once at attempt 1"
    );
    let (code, _) = serve.sigterm().await;
    assert_eq!(code, 0);
}

/// SPEC 7.3 under a crash: an approval gate waits in `running` with no
/// worker and no heartbeat. The dispatcher is killed (SIGKILL) while the
/// gate waits and restarted with a 2 s heartbeat timeout: the gate must
/// still wait (not be taken for a lost worker, nor timed out), and the task
/// after it too. An approval then releases the rest, and the gate's result
/// keeps the decision and its comment.
#[tokio::test]
async fn an_approval_gate_waits_through_a_killed_dispatcher_and_its_approval_releases_the_rest() {
    let vhost = Vhost::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(
        dir.path(),
        &vhost.amqp_url(),
        &[("BORA__DISPATCH__HEARTBEAT_TIMEOUT_S", "2")],
    )
    .await;
    let api = Api::new(&serve.base);
    let _worker = WorkerProc::start(dir.path(), &vhost.amqp_url(), "s", &[]);
    let log = dir.path().join("runs.log");
    let wf = api
        .create_workflow(json!({"name": "gate-kill", "tasks": [
            {"name": "before", "server_id": "s", "config": logged_script(&log, "before", "")},
            {"name": "gate", "group": "bora.approval", "depends_on": ["before"]},
            {"name": "after", "server_id": "s", "depends_on": ["gate"],
             "config": logged_script(&log, "after", "")}
        ]}))
        .await;
    let wf = wf.id();
    let gate = api.wait_task_state(&wf, "gate", "running").await;
    assert_eq!(gate.server_id, None, "{gate:?}");
    assert!(gate.result.is_none(), "{gate:?}");

    serve.kill9().await;
    let ready = serve.restart().await;
    // Watched for 5 s: past two heartbeat timeouts of the new process.
    let t0 = Instant::now();
    let mut polls = 0;
    while t0.elapsed() < Duration::from_secs(5) {
        let g = api.task(&wf, "gate").await.expect("the dispatcher answers");
        assert_eq!(g.state, "running", "the gate stopped waiting: {g:?}");
        assert_eq!(g.attempt, 1, "{g:?}");
        assert!(g.result.is_none(), "{g:?}");
        let after = api.task(&wf, "after").await.expect("a task view");
        assert_eq!(after.state, "waiting", "{after:?}");
        assert_eq!(after.blocked_by, ["gate"], "{after:?}");
        let w = api.workflow(&wf).await.expect("a workflow view");
        assert_eq!(w.state, "running", "{w:?}");
        polls += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(RunLog::read(&log).runs("after"), 0);

    let comment = "change CHG-42 approved by ops";
    let approved: TaskOut = harness::parse(
        "approved gate",
        api.post(
            &format!("/v1/workflows/{wf}/tasks/gate/approve"),
            json!({"comment": comment}),
        )
        .await,
    );
    assert_eq!(approved.state, "succeeded", "{approved:?}");
    let w = api.wait_workflow_end(&wf, Duration::from_secs(60)).await;
    assert_eq!(w.state, "succeeded", "{w:?}");

    let gate = api.task(&wf, "gate").await.expect("a task view");
    let result = gate.result();
    assert_eq!(result.exit_code, 0, "{gate:?}");
    assert_eq!(result.error, None, "{gate:?}");
    let decision = result.decision.as_ref().expect("the decision is kept");
    assert_eq!(decision.decision, "approved");
    assert_eq!(decision.comment.as_deref(), Some(comment));
    assert!(decision.at >= gate.started_at(), "{gate:?}");
    let after = api.task(&wf, "after").await.expect("a task view");
    assert_eq!(after.attempt, 1, "{after:?}");
    assert!(
        after.started_at() >= gate.finished_at(),
        "{after:?} {gate:?}"
    );
    let runs = RunLog::read(&log);
    assert_eq!((runs.runs("before"), runs.runs("after")), (1, 1));

    let deps = HashMap::from([
        ("gate".to_owned(), vec!["before".to_owned()]),
        ("after".to_owned(), vec!["gate".to_owned()]),
    ]);
    let events = api.events(&wf).await;
    let elog = EventLog::new(&events, &deps);
    for name in ["before", "gate", "after"] {
        assert_eq!(elog.terminal[name], ["succeeded"], "{name}: {events:?}");
    }
    assert!(elog.out_of_order.is_empty(), "{:?}", elog.out_of_order);
    println!(
        "approval gate + kill -9: ready again after {ready:?}; the gate kept waiting through \
         {polls} polls over 5 s (heartbeat timeout 2 s); approved, after ran once"
    );
    let (code, _) = serve.sigterm().await;
    assert_eq!(code, 0);
}

#[tokio::test]
async fn a_rolling_group_goes_on_through_a_killed_dispatcher() {
    let vhost = Vhost::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(dir.path(), &vhost.amqp_url(), &[]).await;
    let api = Api::new(&serve.base);
    // Broker users are global: ids and the label value are this test's own.
    let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let servers: Vec<String> = (0..3).map(|i| format!("f{tag}-{i}")).collect();
    let mut workers = Vec::new();
    for s in &servers {
        api.post(
            "/v1/servers",
            json!({"server_id": s, "labels": {"fleet": tag}}),
        )
        .await;
        workers.push(WorkerProc::start(
            dir.path(),
            &vhost.amqp_url(),
            s,
            &[("WHO", s.as_str())],
        ));
    }
    let log = dir.path().join("runs.log");
    let script = format!(
        "#!/bin/sh\necho \"start $WHO\" >> {log}\nsleep 1\necho \"end $WHO\" >> {log}\n",
        log = log.display()
    );
    let wf = api
        .create_workflow(json!({"name": "group-kill", "tasks": [
            {"name": "roll", "config": script,
             "target": {"labels": {"fleet": tag}, "batch": {"size": 1}}}
        ]}))
        .await;
    let wf = wf.id();
    // Killed while the first child runs, with the others not started.
    let first = format!("roll[{}]", servers[0]);
    api.wait_task_state(&wf, &first, "running").await;
    serve.kill9().await;
    serve.restart().await;
    let w = api.wait_workflow_end(&wf, Duration::from_secs(90)).await;
    assert_eq!(w.state, "succeeded", "{w:?}");
    let roll = api.task(&wf, "roll").await.expect("a task view");
    assert_eq!(roll.target.as_ref().unwrap()["servers"], json!(servers));
    // Each child ran once, one after the other.
    let runs = RunLog::read(&log);
    for s in &servers {
        assert_eq!(runs.runs(s), 1, "{s}");
    }
    for pair in servers.windows(2) {
        assert!(
            runs.ends[&pair[0]][0] < runs.starts[&pair[1]][0],
            "{} started before {} ended",
            pair[1],
            pair[0]
        );
    }
    for s in &servers {
        api.delete(&format!("/v1/servers/{s}")).await;
    }
    let (code, _) = serve.sigterm().await;
    assert_eq!(code, 0);
}
