//! The bench's surroundings: a fresh vhost, a temporary directory (or, with
//! a `postgres://` `--store-url`, a fresh database on that server), the
//! embedded dispatcher and the workers, and their teardown in reverse order
//! (workers, dispatcher, database, vhost). The vhost and the database are
//! deleted even when the bench fails, is interrupted, or panics (`Drop`
//! fallbacks).

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
use crate::serve::Dispatcher;
use crate::store::Backend;
use crate::store::scratch::BenchDatabase;

/// Largest request body of the embedded dispatcher: a `--dag-tasks` workflow
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
    /// The dispatcher's settings (vhost, store, port 0).
    settings: Settings,
    config_file: Option<PathBuf>,
    servers: Vec<String>,
    dispatcher: Option<Dispatcher>,
    stop_dispatcher: CancellationToken,
    processes: Vec<Child>,
    in_process: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    stop_workers: CancellationToken,
    stand_in: Option<Responder>,
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
        s.api.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        s.api.tokens = Vec::new();
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
        Ok(Self {
            vhost,
            database,
            dir,
            settings: s,
            config_file,
            servers,
            dispatcher: None,
            stop_dispatcher: CancellationToken::new(),
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

    /// The embedded dispatcher's settings.
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
        let d = crate::serve::start(self.settings.clone(), self.stop_dispatcher.clone())
            .await
            .context("starting the embedded dispatcher")?;
        self.dispatcher = Some(d);
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
        self.client()?.wait_ready().await
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

    /// A client of the embedded dispatcher's API.
    ///
    /// # Errors
    /// The dispatcher is not started.
    pub fn client(&self) -> anyhow::Result<Client> {
        let d = self
            .dispatcher
            .as_ref()
            .context("the dispatcher is not started")?;
        Ok(Client::new(d.addr))
    }

    /// The broker's memory use (`mem_used` of `/api/nodes`).
    pub async fn broker_mem(&self) -> Option<u64> {
        self.vhost.mgmt.nodes_mem_used().await.ok()
    }

    /// Stops the workers, then the dispatcher, then drops the database (if
    /// the bench made one) and deletes the vhost.
    pub async fn teardown(mut self) {
        for child in &self.processes {
            if let Some(pid) = child.id() {
                // SIGTERM: the worker's own orderly shutdown.
                // SAFETY: kill(2) has no memory effects; `pid` is our own child.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        for child in &mut self.processes {
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        self.stop_workers.cancel();
        for worker in self.in_process.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), worker).await;
        }
        if let Some(r) = self.stand_in.take() {
            r.close().await;
        }
        if let Some(d) = self.dispatcher.take() {
            self.stop_dispatcher.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), d.wait()).await;
        }
        if let Some(db) = self.database.as_mut() {
            db.drop_now().await;
        }
        self.vhost.delete().await;
    }
}
