//! The bench's surroundings: a fresh vhost, a temporary directory (or, with
//! a `postgres://` `--store-url`, a fresh database on that server), the
//! dispatcher (a `bora serve` process of its own, so its memory and CPU are
//! its own) and the workers, and their teardown in reverse order (workers,
//! dispatcher, database, vhost). The vhost and the database are deleted
//! even when the bench fails, is interrupted, or panics (`Drop` fallbacks).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::client::Client;
use super::responder::{ReplyMode, Responder};
use super::{BenchArgs, WorkerMode};
use crate::broker::Broker;
use crate::broker::management::Management;
use crate::config::{SecretUrl, Settings};
use crate::domain::ServerId;
use crate::store::Backend;
use crate::store::scratch::BenchDatabase;

/// Largest request body of the bench's dispatcher: a `--dag-tasks` workflow
/// is created in one request.
const BENCH_MAX_BODY: usize = 512 * 1024 * 1024;

/// A vhost that lives as long as the bench.
struct Vhost {
    mgmt: Management,
    name: String,
    deleted: bool,
}

impl Vhost {
    async fn create(mgmt: Management, user: &str) -> anyhow::Result<Self> {
        let name = format!("bora-bench-{}", uuid::Uuid::new_v4().simple());
        mgmt.put_vhost(&name).await.context("creating the vhost")?;
        let vhost = Self {
            mgmt,
            name,
            deleted: false,
        };
        vhost
            .mgmt
            .set_permissions(&vhost.name, user, ".*", ".*", ".*")
            .await
            .context("granting the broker user the vhost")?;
        Ok(vhost)
    }

    async fn delete(&mut self) {
        if self.deleted {
            return;
        }
        // Deleting a vhost with thousands of queues can outlast the HTTP
        // timeout while the broker carries on; asking again answers 404 (done).
        for attempt in 1..=30 {
            match self.mgmt.delete_vhost(&self.name).await {
                Ok(()) => {
                    self.deleted = true;
                    return;
                }
                Err(e) if attempt == 30 => {
                    eprintln!("bench: could not delete vhost {}: {e}", self.name);
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
            }
        }
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        let (mgmt, name) = (self.mgmt.clone(), self.name.clone());
        super::clean_up_on_drop(async move {
            let _ = mgmt.delete_vhost(&name).await;
        });
    }
}

impl Drop for Env {
    /// The database goes also when the bench fails or is interrupted.
    fn drop(&mut self) {
        if let Some(drop) = self.database.as_ref().and_then(BenchDatabase::drop_later) {
            super::clean_up_on_drop(drop);
        }
    }
}

/// Everything the bench starts, filled in as it starts.
pub struct Env {
    vhost: Vhost,
    /// The fresh database of a `postgres://` `--store-url`, dropped after
    /// the dispatcher stopped.
    database: Option<BenchDatabase>,
    dir: tempfile::TempDir,
    /// The dispatcher's settings (vhost, store, address, token).
    settings: Settings,
    config_file: Option<PathBuf>,
    servers: Vec<String>,
    /// The `bora serve` process, once started.
    dispatcher: Option<Child>,
    processes: Vec<Child>,
    in_process: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    stop_workers: CancellationToken,
    stand_in: Option<Responder>,
    /// The broker's node processes, when they run on this machine.
    broker_pids: Vec<u32>,
}

/// CPU time (µs, user and system) of the processes a run involves, so far
/// or per task. `None`: not measurable here (workers inside the bench, a
/// broker or database on another machine).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    /// The `bora serve` process.
    pub dispatcher: Option<u64>,
    /// The worker processes together.
    pub workers: Option<u64>,
    /// The broker's node processes.
    pub broker: Option<u64>,
    /// PostgreSQL's server processes on this machine (a `postgres://`
    /// store only; SQLite works inside the dispatcher).
    pub database: Option<u64>,
}

impl Cpu {
    /// What was used from `before` to `self`, per each of `tasks`.
    pub fn per_task_since(&self, before: &Cpu, tasks: u64) -> Cpu {
        let per = |b: Option<u64>, a: Option<u64>| Some(a?.saturating_sub(b?) / tasks.max(1));
        Cpu {
            dispatcher: per(before.dispatcher, self.dispatcher),
            workers: per(before.workers, self.workers),
            broker: per(before.broker, self.broker),
            database: per(before.database, self.database),
        }
    }
}

impl Env {
    /// Creates the vhost and the temporary directory; starts nothing yet.
    ///
    /// # Errors
    /// The management API is unreachable or refuses, or, with a
    /// `postgres://` `--store-url`, the database cannot be created.
    pub async fn new(
        settings: &Settings,
        args: &BenchArgs,
        config_file: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let mgmt = Management::new(&settings.amqp.management_url)?;
        let user = crate::broker::management::user_of(settings.amqp.url.expose());
        let vhost = Vhost::create(mgmt, &user).await?;
        let dir = tempfile::Builder::new().prefix("bora-bench-").tempdir()?;
        let mut url = url::Url::parse(settings.amqp.url.expose()).context("amqp.url")?;
        url.set_path(&format!("/{}", vhost.name));
        let mut s = settings.clone();
        s.amqp.url = SecretUrl::new(url.as_str());
        s.worker.amqp_url = None;
        s.api.listen = free_loopback_port()?;
        // A token of the bench's own, whatever the configuration says.
        s.api.tokens = vec![crate::config::Secret::new(
            uuid::Uuid::new_v4().simple().to_string(),
        )];
        s.api.max_body_bytes = s.api.max_body_bytes.max(BENCH_MAX_BODY);
        let biggest = args.dag_tasks.unwrap_or(0).max(args.chain).max(args.batch) as u64;
        s.dispatch.max_tasks_per_workflow = s.dispatch.max_tasks_per_workflow.max(biggest);
        s.dispatch.require_registration = false;
        // A PostgreSQL server gets a fresh database, like the broker a
        // fresh vhost; an SQLite URL is used as given.
        let database = match &args.store_url {
            Some(u) if Backend::of_url(u) == Some(Backend::Postgres) => Some(
                BenchDatabase::create(u)
                    .await
                    .context("preparing the bench database")?,
            ),
            _ => None,
        };
        s.store.url = SecretUrl::new(match (&database, &args.store_url) {
            (Some(db), _) => db.url().to_owned(),
            (None, Some(u)) => u.clone(),
            (None, None) => format!("sqlite://{}", dir.path().join("bench.db").display()),
        });
        if database.is_some() && s.store.secret_key.is_none() {
            // The fresh database's own key, gone with it (PostgreSQL needs
            // one; an SQLite file gets its key file beside it).
            let key = crate::seal::SecretKey::generate().to_base64();
            s.store.secret_key = Some(crate::config::Secret::new(key));
        }
        let servers = (0..args.servers).map(|i| format!("bench-{i:05}")).collect();
        // Only a broker on this machine: a pid the API reports for a node
        // elsewhere may be any process here.
        let broker_pids = match vhost.mgmt.nodes().await {
            Ok(nodes) => nodes
                .iter()
                .filter_map(|n| n.os_pid)
                .filter(|pid| super::process_name(*pid).is_some_and(|n| n.starts_with("beam")))
                .collect(),
            Err(_) => Vec::new(),
        };
        Ok(Self {
            broker_pids,
            vhost,
            database,
            dir,
            settings: s,
            config_file,
            servers,
            dispatcher: None,
            processes: Vec::new(),
            in_process: Vec::new(),
            stop_workers: CancellationToken::new(),
            stand_in: None,
        })
    }

    pub fn workers_label(&self, args: &BenchArgs) -> &'static str {
        match args.worker_mode() {
            WorkerMode::Processes | WorkerMode::Auto => "processes",
            WorkerMode::InProcess => "in-process",
            WorkerMode::StandIn => "stand-in",
        }
    }

    /// The store's kind: `sqlite` or `postgres`.
    pub fn store_kind(&self) -> String {
        let url = self.settings.store.url.expose();
        url.split("://").next().unwrap_or("?").to_owned()
    }

    /// The bench's own database, if it made one (`postgres://` store).
    pub fn store_database(&self) -> Option<&BenchDatabase> {
        self.database.as_ref()
    }

    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    pub fn amqp_url(&self) -> &str {
        self.settings.amqp.url.expose()
    }

    /// The dispatcher's settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Queues per connection of in-process consumers: one connection per
    /// server, like real workers, unless there are very many servers.
    pub fn raw_per_conn(&self) -> usize {
        if self.servers.len() <= 256 { 1 } else { 100 }
    }

    /// Starts the dispatcher and the workers, and waits until the API answers.
    ///
    /// # Errors
    /// The dispatcher cannot start or a worker cannot be spawned.
    pub async fn start(&mut self, args: &BenchArgs) -> anyhow::Result<()> {
        self.spawn_dispatcher()?;
        match args.worker_mode() {
            WorkerMode::Processes | WorkerMode::Auto => {
                self.declare_server_queues().await?;
                self.spawn_processes()?;
            }
            WorkerMode::InProcess => {
                self.declare_server_queues().await?;
                self.start_in_process()?;
            }
            WorkerMode::StandIn => {
                let queues = self
                    .servers
                    .iter()
                    .map(|s| self.settings.amqp.task_queue(s))
                    .collect();
                let r = Responder::start(
                    self.amqp_url(),
                    queues,
                    &self.settings.amqp.reply_queue,
                    &crate::broker::management::user_of(self.amqp_url()),
                    ReplyMode::Bora,
                    self.settings.worker.concurrency,
                    self.raw_per_conn(),
                    crate::broker::queue_arguments(&self.settings.amqp),
                )
                .await
                .context("starting the stand-in workers")?;
                self.stand_in = Some(r);
            }
        }
        let ready = self.client()?.wait_ready().await;
        ready.map_err(|e| {
            let log = std::fs::read_to_string(self.dispatcher_log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            e.context(format!("the dispatcher's log ends:\n{}", tail.join("\n")))
        })
    }

    fn dispatcher_log(&self) -> PathBuf {
        self.dir.path().join("dispatcher.log")
    }

    /// Starts `bora serve` (this executable) with the bench's settings: the
    /// configuration file given to the bench, then these in the
    /// environment, which override it.
    fn spawn_dispatcher(&mut self) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("finding the bora executable")?;
        let s = &self.settings;
        let log = std::fs::File::create(self.dispatcher_log())
            .context("creating the dispatcher's log file")?;
        let mut cmd = Command::new(&exe);
        if let Some(c) = &self.config_file {
            cmd.arg("--config").arg(c);
        }
        let tokens: Vec<&str> = s.api.tokens.iter().map(|t| t.expose()).collect();
        cmd.arg("serve")
            .env("BORA__AMQP__URL", s.amqp.url.expose())
            .env_remove("BORA__WORKER__AMQP_URL")
            .env("BORA__STORE__URL", s.store.url.expose())
            .env("BORA__API__LISTEN", s.api.listen.to_string())
            .env("BORA__API__TOKENS", tokens.join(","))
            .env(
                "BORA__API__MAX_BODY_BYTES",
                s.api.max_body_bytes.to_string(),
            )
            .env(
                "BORA__DISPATCH__MAX_TASKS_PER_WORKFLOW",
                s.dispatch.max_tasks_per_workflow.to_string(),
            )
            .env("BORA__DISPATCH__REQUIRE_REGISTRATION", "false")
            .env("BORA__LOG__LEVEL", "warn")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if let Some(key) = &s.store.secret_key {
            cmd.env("BORA__STORE__SECRET_KEY", key.expose());
        }
        self.dispatcher = Some(cmd.spawn().context("spawning the dispatcher")?);
        Ok(())
    }

    /// CPU time used so far by the processes of the run (see [`Cpu`]).
    pub fn cpu_us(&self) -> Cpu {
        let of = |c: &Child| c.id().and_then(super::cpu_us_of);
        let sum = |pids: &[u32]| -> Option<u64> {
            if pids.is_empty() {
                None
            } else {
                pids.iter().map(|p| super::cpu_us_of(*p)).sum()
            }
        };
        let workers = if self.processes.is_empty() {
            None
        } else {
            self.processes.iter().map(of).sum()
        };
        let database = if self.database.is_some() {
            sum(&super::processes_named("postgres"))
        } else {
            None
        };
        Cpu {
            dispatcher: self.dispatcher.as_ref().and_then(of),
            workers,
            broker: sum(&self.broker_pids),
            database,
        }
    }

    /// The dispatcher process's resident and peak resident memory.
    pub fn dispatcher_rss(&self) -> Option<(u64, u64)> {
        let pid = self.dispatcher.as_ref()?.id()?;
        super::rss_bytes(&format!("/proc/{pid}/status"))
    }

    /// Declares every server's queues, as registration would, so the
    /// workers find them at start (the relay declares them again on first
    /// publish, which the warm-up times).
    async fn declare_server_queues(&self) -> anyhow::Result<()> {
        let broker = Broker::new(&self.settings.amqp.url, &self.settings.amqp, "bora-bench")?;
        broker.declare_topology().await?;
        for chunk in self.servers.chunks(16) {
            let declared = futures_util::future::join_all(
                chunk.iter().map(|s| broker.declare_server_queues(s)),
            )
            .await;
            for r in declared {
                r.context("declaring a server's queues")?;
            }
        }
        Ok(())
    }

    /// The workers' settings: the bench vhost, and their state under the
    /// temporary directory.
    fn worker_settings(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("worker"),
            self.dir.path().join("hooks"),
        )
    }

    /// bora's worker, one instance per server, on this process's runtime.
    fn start_in_process(&mut self) -> anyhow::Result<()> {
        let (state, hooks) = self.worker_settings();
        std::fs::create_dir_all(&state)?;
        let mut s = self.settings.clone();
        s.worker.amqp_url = Some(self.settings.amqp.url.clone());
        s.worker.state_dir = state;
        s.worker.hooks_dir = hooks;
        s.worker.shutdown_grace_s = 1;
        for server in &self.servers {
            let id = ServerId::parse(server)
                .map_err(|e| anyhow::anyhow!("server id {server:?}: {e}"))?;
            self.in_process.push(tokio::spawn(crate::worker::run(
                s.clone(),
                id,
                self.stop_workers.clone(),
            )));
        }
        Ok(())
    }

    fn spawn_processes(&mut self) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("finding the bora executable")?;
        let (state, hooks) = self.worker_settings();
        std::fs::create_dir_all(&state)?;
        for server in &self.servers {
            let mut cmd = Command::new(&exe);
            if let Some(c) = &self.config_file {
                cmd.arg("--config").arg(c);
            }
            cmd.arg("worker")
                .arg("--server-id")
                .arg(server)
                .env("BORA__AMQP__URL", self.settings.amqp.url.expose())
                .env("BORA__WORKER__AMQP_URL", self.settings.amqp.url.expose())
                .env("BORA__WORKER__STATE_DIR", &state)
                .env("BORA__WORKER__HOOKS_DIR", &hooks)
                .env("BORA__WORKER__SHUTDOWN_GRACE_S", "1")
                .env("BORA__LOG__LEVEL", "warn")
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .kill_on_drop(true);
            let child = cmd
                .spawn()
                .with_context(|| format!("spawning the worker of {server}"))?;
            self.processes.push(child);
        }
        Ok(())
    }

    /// A client of the dispatcher's API.
    ///
    /// # Errors
    /// The dispatcher is not started.
    pub fn client(&self) -> anyhow::Result<Client> {
        anyhow::ensure!(self.dispatcher.is_some(), "the dispatcher is not started");
        let token = self.settings.api.tokens.first().map(|t| t.expose());
        Client::new(self.settings.api.listen, token)
    }

    /// The broker's memory use (`mem_used` of `/api/nodes`).
    pub async fn broker_mem(&self) -> Option<u64> {
        let nodes = self.vhost.mgmt.nodes().await.ok()?;
        Some(nodes.iter().map(|n| n.mem_used).sum())
    }

    /// Stops the workers, then the dispatcher, then drops the database (if
    /// the bench made one) and deletes the vhost.
    pub async fn teardown(mut self) {
        for child in &self.processes {
            terminate(child);
        }
        for child in &mut self.processes {
            stop(child, Duration::from_secs(5)).await;
        }
        self.stop_workers.cancel();
        for worker in self.in_process.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), worker).await;
        }
        if let Some(r) = self.stand_in.take() {
            r.close().await;
        }
        if let Some(mut d) = self.dispatcher.take() {
            stop(&mut d, Duration::from_secs(10)).await;
        }
        if let Some(db) = self.database.as_mut() {
            db.drop_now().await;
        }
        self.vhost.delete().await;
    }
}

/// Sends SIGTERM: a bora process's own orderly shutdown.
fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) has no memory effects; `pid` is our own child.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
}

/// SIGTERM, then SIGKILL if the process has not ended within `grace`.
async fn stop(child: &mut Child, grace: Duration) {
    terminate(child);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// A loopback address with a port free now (the dispatcher binds it a
/// moment later; a port taken meanwhile fails the start, clearly).
fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(l.local_addr()?)
}
