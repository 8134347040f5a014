//! A PostgreSQL database that lives as long as the bench: with
//! `--store-url postgres://...` the bench connects to that server, creates
//! `bora_bench_<random>`, runs the dispatcher on it, and drops it afterwards
//! (also on error, Ctrl-C or a panic, through the bench's `Drop` fallback,
//! [`BenchDatabase::drop_later`]), as it does with its vhost, so a bench
//! neither depends on nor leaves behind data.
//!
//! Administration of a scratch database, not state; it lives in `store`
//! because all of bora's SQL does. Knows nothing of the broker or the
//! dispatcher.

use std::time::Duration;

use anyhow::Context;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// How long a connection to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh database on the server of a `postgres://` URL.
pub struct BenchDatabase {
    /// The URL given, used to connect for `CREATE` and `DROP` (its own
    /// database must exist; `postgres` or any other).
    admin_url: String,
    /// The URL of the fresh database, for the dispatcher.
    url: String,
    name: String,
    dropped: bool,
}

impl BenchDatabase {
    /// Creates `bora_bench_<random>` on the server `admin_url` names.
    ///
    /// # Errors
    /// The URL does not parse, the server is unreachable, or it refuses the
    /// `CREATE DATABASE` (the user needs `CREATEDB`).
    pub async fn create(admin_url: &str) -> anyhow::Result<Self> {
        let mut url = url::Url::parse(admin_url).context("--store-url is not a URL")?;
        let name = format!("bora_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = connect(admin_url).await?;
        // The name is ours (letters, digits, underscores): safe to quote.
        let created = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
        created.with_context(|| format!("creating database {name}"))?;
        url.set_path(&format!("/{name}"));
        Ok(Self {
            admin_url: admin_url.to_owned(),
            url: url.to_string(),
            name,
            dropped: false,
        })
    }

    /// The fresh database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The fresh database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it is, for the report: `postgres://HOST:PORT/NAME`, without
    /// the user or password of the URL.
    pub fn label(&self) -> String {
        let host = url::Url::parse(&self.admin_url)
            .ok()
            .map(|u| {
                let host = u.host_str().unwrap_or("localhost").to_owned();
                match u.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                }
            })
            .unwrap_or_default();
        format!("postgres://{host}/{}", self.name)
    }

    /// The drop as a future that owns what it needs (for a `Drop`, which
    /// cannot await, to run on a runtime of its own); `None` once dropped.
    pub fn drop_later(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        if self.dropped {
            return None;
        }
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        Some(async move {
            let _ = drop_database(&admin_url, &name).await;
        })
    }

    /// Drops the database; the dispatcher must be stopped (its leftover
    /// connections are ended by `FORCE`). Reports, never fails: the bench's
    /// outcome does not depend on it.
    pub async fn drop_now(&mut self) {
        if self.dropped {
            return;
        }
        match drop_database(&self.admin_url, &self.name).await {
            Ok(()) => self.dropped = true,
            Err(e) => eprintln!("bench: could not drop database {}: {e:#}", self.name),
        }
    }
}

async fn connect(url: &str) -> anyhow::Result<PgConnection> {
    tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url))
        .await
        .context("connecting to PostgreSQL timed out")?
        .context("connecting to PostgreSQL")
}

async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = connect(admin_url).await?;
    // FORCE (PostgreSQL 13+) ends connections a stopped dispatcher left
    // behind; older servers get the plain form.
    let mut dropped = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await;
    if dropped.is_err() {
        dropped = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\""
        )))
        .execute(&mut conn)
        .await;
    }
    let _ = conn.close().await;
    dropped.with_context(|| format!("dropping database {name}"))?;
    Ok(())
}
