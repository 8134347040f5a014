//! `bora bench`: an end-to-end benchmark against the configured broker.
//!
//! It makes a fresh vhost (deleted afterwards, also on error and Ctrl-C),
//! starts a dispatcher (`bora serve`, this executable, as a process of its
//! own on a free loopback port, with a token of the bench's own and a
//! temporary SQLite file, or `--store-url`: a `postgres://` server gets a
//! fresh database, dropped afterwards like the vhost), and workers for the servers:
//! real `bora worker` processes (the same executable) by default, bora's
//! worker code run in-process (`--workers in-process`, one instance and one
//! connection per server), or a stand-in that speaks the same wire format
//! when there are too many servers for one connection each. Then it
//! measures, in this order:
//!
//! 1. warm-up: one `std.noop` task per server (declares every queue, starts
//!    every worker); its duration is reported as the declare time;
//! 2. throughput: N independent `std.noop` tasks over S servers, submitted
//!    through the REST API in batches (one workflow per batch), timed from
//!    the first request to the last `finished_at` the API reports;
//! 3. chain: L strictly sequential tasks on two servers taking turns; a
//!    link's latency is the gap between consecutive `finished_at`s;
//! 4. optionally one large DAG (`--dag-tasks`): creation time, the
//!    dispatcher process's RSS, drain time;
//! 5. the raw baseline with lapin alone, same topology and message bodies:
//!    pipelined throughput, and one-at-a-time round trips.
//!
//! # Layout
//! - [`env`]: vhost, temporary directory, dispatcher process, workers, teardown.
//! - [`crate::store::scratch`] (in `store`, with all of bora's SQL): the
//!   fresh PostgreSQL database of a `postgres://` `--store-url`.
//! - [`client`]: the few REST calls the bench makes.
//! - [`scenarios`]: warm-up, throughput, chain and DAG through bora.
//! - [`listener`]: consumes the notifications, as a deployment's listener
//!   would, and counts the task ends (the bench fails if one is missing).
//! - [`raw`]: the baseline without bora in the path.
//! - [`responder`]: in-process consumers that answer tasks (raw, or bora's format).
//! - [`report`]: percentiles, the table and the JSON line.
//!
//! Nothing here is used by `serve` or `worker`; the bench only drives them.

mod client;
mod env;
mod listener;
mod raw;
mod report;
mod responder;
mod scenarios;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use env::Env;
use report::Report;

/// Runs `cleanup` to its end from a `Drop`, which cannot await: on a
/// thread of its own, with a runtime of its own (the vhost and the
/// database are removed also when the bench fails or is interrupted).
fn clean_up_on_drop(cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(cleanup);
        }
    })
    .join();
}

/// How the servers' workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkerMode {
    /// `processes` up to 256 servers, `stand-in` beyond.
    Auto,
    /// One real `bora worker` process per server.
    Processes,
    /// bora's worker code (`bora worker`'s, unchanged), one instance and
    /// one broker connection per server, inside the bench process: the
    /// same process layout as the raw baseline's consumers.
    InProcess,
    /// A minimal consumer that answers like `std.noop`, 100 queues per
    /// connection (for thousands of servers).
    StandIn,
}

/// Options of `bora bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Independent `std.noop` tasks in the throughput run.
    #[arg(long, default_value_t = 20_000)]
    pub tasks: usize,
    /// Servers the tasks are spread over (one queue and one worker each).
    #[arg(long, default_value_t = 100)]
    pub servers: usize,
    /// Length of the strictly sequential chain.
    #[arg(long, default_value_t = 2_000)]
    pub chain: usize,
    /// Also run one workflow of this many tasks (a lattice over the servers).
    #[arg(long)]
    pub dag_tasks: Option<usize>,
    /// Also register every server with a label (through the API, which
    /// creates their broker users) and run one task on all of them as a
    /// group (SPEC 7.2): the time from the group's release to its end.
    #[arg(long)]
    pub fanout: bool,
    /// Make the throughput run's tasks scripts that print this many bytes
    /// (live output) instead of `std.noop` (needs worker processes).
    #[arg(long)]
    pub print_bytes: Option<usize>,
    /// Tasks per POST /v1/workflows in the throughput run.
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// How workers run.
    #[arg(long, value_enum, default_value_t = WorkerMode::Auto)]
    pub workers: WorkerMode,
    /// Store of the embedded dispatcher (default: a temporary SQLite file).
    /// A `postgres://` URL names a server: the bench creates a fresh
    /// database `bora_bench_<random>` there (the URL's user needs
    /// `CREATEDB`) and drops it afterwards.
    #[arg(long)]
    pub store_url: Option<String>,
    /// Skip the raw lapin baseline.
    #[arg(long)]
    pub no_raw: bool,
    /// Print only the JSON line.
    #[arg(long)]
    pub json_only: bool,
}

impl BenchArgs {
    /// The mode `Auto` stands for at this size.
    fn worker_mode(&self) -> WorkerMode {
        match self.workers {
            WorkerMode::Auto if self.servers <= 256 => WorkerMode::Processes,
            WorkerMode::Auto => WorkerMode::StandIn,
            mode => mode,
        }
    }
}

/// Runs the benchmark and prints its report.
///
/// # Errors
/// A broker or management API that is unreachable, a dispatcher that cannot
/// start, a run that stalls, or an interrupt. The vhost is deleted in every case.
pub async fn run(
    settings: Settings,
    args: BenchArgs,
    config_file: Option<PathBuf>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(args.servers >= 2, "--servers must be at least 2");
    anyhow::ensure!(args.tasks >= 1, "--tasks must be at least 1");
    anyhow::ensure!(args.chain >= 2, "--chain must be at least 2");
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    let mut env = Env::new(&settings, &args, config_file)
        .await
        .context("preparing the bench vhost and store")?;
    let outcome = tokio::select! {
        r = measure(&mut env, &args) => r,
        _ = shutdown.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };
    env.teardown().await;
    let report = outcome?;
    report.print(args.json_only);
    Ok(())
}

async fn measure(env: &mut Env, args: &BenchArgs) -> anyhow::Result<Report> {
    let mut report = Report::new(args, env.workers_label(args), env.store_kind());
    if let Some(db) = env.store_database() {
        report.store_database = Some((db.name().to_owned(), db.label()));
    }
    env.start(args).await?;
    let listener = listener::Listener::start(env.settings())
        .await
        .context("starting the notification listener")?;
    let client = env.client()?;
    let servers = env.servers().to_vec();
    let say = |s: &str| {
        if !args.json_only {
            eprintln!("bench: {s}");
        }
    };

    say("warm-up: one task per server");
    report.declare = Some(scenarios::warm_up(&client, &servers).await?);

    say(&format!(
        "throughput: {} tasks over {} servers",
        args.tasks, args.servers
    ));
    let cpu_before = env.cpu_us();
    report.throughput = Some(
        scenarios::throughput(&client, &servers, args.tasks, args.batch, args.print_bytes).await?,
    );
    let cpu_after = env.cpu_us();
    report.cpu_per_task = cpu_after.per_task_since(&cpu_before, args.tasks as u64);
    report.dispatcher_rss = env.dispatcher_rss();
    report.broker_mem = env.broker_mem().await;

    say(&format!("chain: {} sequential tasks", args.chain));
    report.chain = scenarios::chain(&client, &servers[..2], args.chain, false).await?;
    say(&format!(
        "chain with references: {} tasks, each given the one before's output",
        args.chain
    ));
    report.chain_refs = scenarios::chain(&client, &servers[..2], args.chain, true).await?;

    if let Some(n) = args.dag_tasks {
        say(&format!("dag: one workflow of {n} tasks"));
        report.dag = Some(scenarios::dag(&client, &servers, n, env).await?);
    }

    if args.fanout {
        say(&format!(
            "fan-out: one task on {} labelled servers",
            servers.len()
        ));
        report.fanout = Some(scenarios::fanout(&client, &servers).await?);
    }

    if env.settings().notifications.enabled {
        // Every task end is announced, once the relay has sent it.
        let fanned = if args.fanout { servers.len() + 1 } else { 0 };
        let expected =
            (servers.len() + args.tasks + 2 * args.chain + args.dag_tasks.unwrap_or(0) + fanned)
                as u64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while listener.task_ends() < expected && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        anyhow::ensure!(
            listener.task_ends() >= expected,
            "{} task-end notifications for {expected} tasks",
            listener.task_ends()
        );
    }
    listener.close().await;

    if !args.no_raw {
        let mut raw = raw::Raw::start(env.amqp_url(), env.settings(), &servers, env.raw_per_conn())
            .await
            .context("starting the raw baseline")?;
        say(&format!(
            "raw throughput: {} messages over {} queues",
            args.tasks, args.servers
        ));
        let cpu_before = env.cpu_us();
        report.raw_throughput = Some(raw.throughput(args.tasks).await?);
        report.raw_broker_cpu_per_task = env
            .cpu_us()
            .per_task_since(&cpu_before, args.tasks as u64)
            .broker;
        say(&format!("raw round trips: {}", args.chain));
        report.raw_rtt = raw.round_trips(args.chain).await?;
        raw.close().await;
    }
    Ok(report)
}

/// Resident and peak resident memory (`VmRSS`, `VmHWM`) from a
/// `/proc/<pid>/status` file.
fn rss_bytes(status_file: &str) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(status_file).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// A process's command name (`/proc/<pid>/comm`), if it is visible here.
fn process_name(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end().to_owned())
}

/// The processes of this machine whose command name is `name`.
fn processes_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| process_name(*pid).is_some_and(|n| n == name))
        .collect()
}

/// CPU time (user and system, µs) a process has used, from
/// `/proc/<pid>/stat` (fields 14 and 15, in clock ticks).
fn cpu_us_of(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    ((utime + stime) * 1_000_000).checked_div(ticks)
}

/// Polling period while waiting for workflows to end (the measurement itself
/// uses the tasks' `finished_at`, so this only bounds the bench's overhead).
const POLL: Duration = Duration::from_millis(100);
