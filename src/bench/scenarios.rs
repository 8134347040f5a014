//! The runs through bora: warm-up, throughput, chain and the large DAG. Each
//! submits through the REST API, waits for its workflows to succeed, and
//! measures with the `finished_at` timestamps the dispatcher recorded (so
//! the bench's own polling does not blur the figures).

use std::time::{Duration, Instant};

use serde_json::json;

use super::client::{Client, TaskInfo, echo, noop};
use super::env::Env;
use crate::app::now_us;

/// Result of the throughput run.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub tasks: usize,
    /// First request to the last `finished_at`.
    pub elapsed_us: i64,
    /// First request to the last response (submission alone).
    pub submit_us: i64,
}

impl Throughput {
    pub fn tps(&self) -> f64 {
        self.tasks as f64 / (self.elapsed_us.max(1) as f64 / 1e6)
    }
}

/// Result of the `--dag-tasks` run.
#[derive(Debug, Clone)]
pub struct Dag {
    pub tasks: usize,
    /// The create request, response included.
    pub create_us: i64,
    /// The end of the create request to the last `finished_at`.
    pub drain_us: i64,
    /// Start of the create request to the last `finished_at`.
    pub total_us: i64,
    /// The dispatcher process's RSS after the create (bytes).
    pub rss_after_create: Option<u64>,
    /// The dispatcher process's peak RSS once the workflow ended (bytes;
    /// over its whole life, the runs before included).
    pub peak_rss: Option<u64>,
    pub broker_mem_after_create: Option<u64>,
}

/// Result of the `--fanout` run.
#[derive(Debug, Clone)]
pub struct Fanout {
    pub servers: usize,
    /// Registering every server with a label, through the API.
    pub register_us: i64,
    /// The group's release (it went `running`) to its end.
    pub release_to_end_us: i64,
}

fn last_finished(tasks: &[TaskInfo]) -> anyhow::Result<i64> {
    let mut last = i64::MIN;
    for t in tasks {
        anyhow::ensure!(t.state == "succeeded", "task {} is {}", t.name, t.state);
        last = last.max(t.finished_us()?);
    }
    Ok(last)
}

/// One task per server: every worker is up and every queue declared before
/// anything is timed. Returns how long that took.
///
/// # Errors
/// A request failure, or a task that did not succeed.
pub async fn warm_up(client: &Client, servers: &[String]) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let tasks = servers
        .iter()
        .enumerate()
        .map(|(i, s)| noop(&format!("w{i}"), s, &[]))
        .collect();
    let id = client.create_workflow("bench-warm-up", tasks).await?;
    client.wait_succeeded(&id).await?;
    Ok(t0.elapsed())
}

/// `n` independent tasks round-robin over `servers`, `batch` per workflow:
/// `std.noop`, or with `print` a script that prints that many bytes (live
/// output, SPEC 7.5).
///
/// # Errors
/// A request failure, or a task that did not succeed.
pub async fn throughput(
    client: &Client,
    servers: &[String],
    n: usize,
    batch: usize,
    print: Option<usize>,
) -> anyhow::Result<Throughput> {
    let start = now_us();
    let mut ids = Vec::new();
    let mut next = 0;
    while next < n {
        let end = (next + batch).min(n);
        let tasks = (next..end)
            .map(|i| {
                let (name, server) = (format!("t{i}"), &servers[i % servers.len()]);
                match print {
                    None => noop(&name, server, &[]),
                    Some(bytes) => json!({"name": name, "server_id": server,
                        "config": format!("head -c {bytes} /dev/zero | tr '\\0' x")}),
                }
            })
            .collect();
        ids.push(
            client
                .create_workflow(&format!("bench-throughput-{}", ids.len()), tasks)
                .await?,
        );
        next = end;
    }
    let submit_us = now_us() - start;
    for id in &ids {
        client.wait_succeeded(id).await?;
    }
    let mut last = i64::MIN;
    for id in &ids {
        last = last.max(last_finished(&client.tasks(id).await?)?);
    }
    Ok(Throughput {
        tasks: n,
        elapsed_us: last - start,
        submit_us,
    })
}

/// `len` tasks, each depending on the one before, on two servers taking
/// turns. With `refs`, each task's input is a reference to the output of
/// the one before (SPEC 7.1; the reference alone orders them), and the
/// value the first one got must reach the last. Returns each link's
/// latency: the dependency's `finished_at` to the dependent's.
///
/// # Errors
/// A request failure, a task that did not succeed, or (with `refs`) a
/// value that did not arrive.
pub async fn chain(
    client: &Client,
    two: &[String],
    len: usize,
    refs: bool,
) -> anyhow::Result<Vec<i64>> {
    const VALUE: &str = "carried through the chain";
    let tasks = (0..len)
        .map(|i| {
            let name = format!("c{i}");
            let server = &two[i % 2];
            match (refs, i) {
                (false, 0) => noop(&name, server, &[]),
                (false, _) => noop(&name, server, &[format!("c{}", i - 1)]),
                (true, 0) => echo(&name, server, json!(VALUE)),
                (true, _) => echo(
                    &name,
                    server,
                    json!({"get_output": [format!("c{}", i - 1), "v"]}),
                ),
            }
        })
        .collect();
    let label = if refs {
        "bench-chain-refs"
    } else {
        "bench-chain"
    };
    let id = client.create_workflow(label, tasks).await?;
    client.wait_succeeded(&id).await?;
    let mut finished = vec![0i64; len];
    for t in client.tasks(&id).await? {
        let i: usize = t
            .name
            .strip_prefix('c')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("unexpected task {}", t.name))?;
        anyhow::ensure!(t.state == "succeeded", "task {} is {}", t.name, t.state);
        if refs && i == len - 1 {
            let got = t.result.as_ref().and_then(|r| r.outputs.get("v"));
            anyhow::ensure!(
                got == Some(&json!(VALUE)),
                "the last task of the chain got {got:?}, not the first one's value"
            );
        }
        finished[i] = t.finished_us()?;
    }
    Ok(finished.windows(2).map(|w| w[1] - w[0]).collect())
}

/// One workflow of `n` tasks: a lattice as wide as there are servers, where
/// each task depends on the task below it and the one below-right.
///
/// # Errors
/// A request failure, or a task that did not succeed.
pub async fn dag(client: &Client, servers: &[String], n: usize, env: &Env) -> anyhow::Result<Dag> {
    let w = servers.len();
    let tasks = (0..n)
        .map(|i| {
            let mut deps = Vec::new();
            if i >= w {
                deps.push(format!("d{}", i - w));
                if i % w != w - 1 {
                    deps.push(format!("d{}", i - w + 1));
                }
            }
            noop(&format!("d{i}"), &servers[i % w], &deps)
        })
        .collect();
    let start = now_us();
    let id = client.create_workflow("bench-dag", tasks).await?;
    let created = now_us();
    let rss_after_create = env.dispatcher_rss().map(|(rss, _)| rss);
    let broker_mem_after_create = env.broker_mem().await;
    client.wait_succeeded(&id).await?;
    let peak_rss = env.dispatcher_rss().map(|(_, peak)| peak);
    let last = last_finished(&client.tasks(&id).await?)?;
    Ok(Dag {
        tasks: n,
        create_us: created - start,
        drain_us: last - created,
        total_us: last - start,
        rss_after_create,
        peak_rss,
        broker_mem_after_create,
    })
}

/// The label value of the fan-out run's servers.
const FANOUT_LABEL: &str = "fanout";

/// Registers every server with the label `bench=fanout` (their broker
/// users are created), then runs one `std.noop` task on all of them as a
/// group. The servers are revoked afterwards.
///
/// # Errors
/// A request failure, or a task that did not succeed.
pub async fn fanout(client: &Client, servers: &[String]) -> anyhow::Result<Fanout> {
    use futures_util::{StreamExt, TryStreamExt};
    let t0 = now_us();
    futures_util::stream::iter(servers)
        .map(|s| {
            client.send(
                reqwest::Method::POST,
                "/v1/servers",
                Some(json!({"server_id": s, "labels": {"bench": FANOUT_LABEL}})),
            )
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    let register_us = now_us() - t0;
    let run = async {
        let task = json!({"name": "fan", "group": "std.noop",
                          "target": {"labels": {"bench": FANOUT_LABEL}}});
        let id = client.create_workflow("bench-fanout", vec![task]).await?;
        client.wait_succeeded(&id).await?;
        let tasks = client.tasks(&id).await?;
        let group = tasks
            .iter()
            .find(|t| t.name == "fan")
            .ok_or_else(|| anyhow::anyhow!("the group task is missing"))?;
        anyhow::ensure!(
            tasks.len() == servers.len() + 1,
            "{} tasks for {} servers",
            tasks.len(),
            servers.len()
        );
        Ok(group.finished_us()? - group.started_us()?)
    };
    let result: anyhow::Result<i64> = run.await;
    // Revoked whatever happened: broker users outlive the bench's vhost.
    let revoked = futures_util::stream::iter(servers)
        .map(|s| async move {
            let path = format!("/v1/servers/{s}");
            client.send(reqwest::Method::DELETE, &path, None).await
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await;
    let release_to_end_us = result?;
    revoked?;
    Ok(Fanout {
        servers: servers.len(),
        register_us,
        release_to_end_us,
    })
}
