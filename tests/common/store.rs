//! Shared by every test suite: the store a test's dispatcher runs on. A
//! fresh SQLite file by default; with `BORA_TEST_STORE=postgres`, a fresh
//! PostgreSQL database on the server `BORA_TEST_PG` names (default: the
//! local one, trust auth), dropped when the test ends. CI runs the suites
//! once per store.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sqlx::Connection;

/// The PostgreSQL server tests make their databases on.
pub fn pg_admin_url() -> String {
    std::env::var("BORA_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Whether this run's tests use PostgreSQL.
pub fn postgres_selected() -> bool {
    std::env::var("BORA_TEST_STORE").is_ok_and(|s| s == "postgres")
}

/// One test's database; a PostgreSQL one is dropped on drop.
pub struct TestStore {
    pub url: String,
    /// The SQLite file, if it is one.
    pub sqlite_path: Option<PathBuf>,
    /// The secret key of a PostgreSQL database (which requires one); an
    /// SQLite store makes its key file beside the database.
    pub secret_key: Option<String>,
    pg_database: Option<String>,
}

impl TestStore {
    /// The store this run selected: an SQLite file `bora.db` in `dir`, or a
    /// fresh PostgreSQL database.
    pub async fn create(dir: &Path) -> Self {
        if postgres_selected() {
            Self::postgres().await
        } else {
            Self::sqlite(dir)
        }
    }

    pub fn sqlite(dir: &Path) -> Self {
        let path = dir.join("bora.db");
        Self {
            url: format!("sqlite://{}", path.display()),
            sqlite_path: Some(path),
            secret_key: None,
            pg_database: None,
        }
    }

    /// A fresh PostgreSQL database, whatever the run selected.
    pub async fn postgres() -> Self {
        let admin = pg_admin_url();
        let name = format!("bora_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {admin}: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&name);
        Self {
            url: url.to_string(),
            sqlite_path: None,
            secret_key: Some(bora::seal::SecretKey::generate().to_base64()),
            pg_database: Some(name),
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.pg_database.is_some()
    }

    /// The database's name, for a PostgreSQL store.
    pub fn pg_database(&self) -> Option<&str> {
        self.pg_database.as_deref()
    }

    /// The settings that name this store: `BORA__STORE__URL`, and the
    /// secret key of a PostgreSQL one.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![("BORA__STORE__URL".to_owned(), self.url.clone())];
        if let Some(key) = &self.secret_key {
            env.push(("BORA__STORE__SECRET_KEY".to_owned(), key.clone()));
        }
        env
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let Some(name) = self.pg_database.take() else {
            return;
        };
        // Drop cannot await: drop the database from a thread with its own
        // runtime. FORCE ends the connections a dispatcher left behind.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin_url()).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}
