//! The at-most-once ledger: the (task, attempt) pairs this server ever started
//! for `at_most_once` tasks, one `<task_id>.<attempt>` line each, in
//! `<state_dir>/started-<server_id>`, fsynced before the task starts.
//!
//! It survives worker crashes and restarts, so a redelivered or re-sent attempt
//! is refused instead of run twice. `at_least_once` tasks never touch it. If the
//! file cannot be opened or written, the ledger reports why and `at_most_once`
//! tasks fail with that reason. This module knows nothing of AMQP or processes.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::domain::ServerId;

/// Cheap to clone; all clones share one file.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    path: PathBuf,
    /// `None` until the file was opened and read (retried on each use).
    open: Option<Open>,
}

struct Open {
    file: File,
    started: HashSet<String>,
}

/// Why the ledger cannot answer.
#[derive(Debug, thiserror::Error)]
#[error("at-most-once ledger {path} unavailable: {source}")]
pub struct LedgerError {
    path: String,
    source: std::io::Error,
}

impl Ledger {
    pub fn new(state_dir: PathBuf, server: &ServerId) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                path: state_dir.join(format!("started-{server}")),
                open: None,
            })),
        }
    }

    /// Opens the file now, so a start-up log can say whether it works.
    ///
    /// # Errors
    /// The state directory or the file cannot be created or read.
    pub async fn open(&self) -> Result<(), LedgerError> {
        self.with(|_| Ok(())).await
    }

    /// Whether `key` (`<task_id>.<attempt>`) was started before.
    ///
    /// # Errors
    /// See [`Ledger::open`].
    pub async fn contains(&self, key: String) -> Result<bool, LedgerError> {
        self.with(move |open| Ok(open.started.contains(&key))).await
    }

    /// Records `key` as started, durably (fsync) before returning.
    ///
    /// # Errors
    /// See [`Ledger::open`]; also a failed write or fsync.
    pub async fn record(&self, key: String) -> Result<(), LedgerError> {
        self.with(move |open| {
            open.file.write_all(format!("{key}\n").as_bytes())?;
            open.file.sync_data()?;
            open.started.insert(key);
            Ok(())
        })
        .await
    }

    /// Runs `f` on the open ledger in the blocking pool (file I/O and fsync).
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Open) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = inner.lock().unwrap_or_else(|e| e.into_inner());
            let path = guard.path.display().to_string();
            guard
                .open_mut()
                .and_then(f)
                .map_err(|source| LedgerError { path, source })
        })
        .await
        .map_err(|e| LedgerError {
            path: String::new(),
            source: std::io::Error::other(e),
        })?
    }
}

impl Inner {
    fn open_mut(&mut self) -> std::io::Result<&mut Open> {
        if self.open.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(&self.path)?;
            let mut started = HashSet::new();
            for line in BufReader::new(File::open(&self.path)?).lines() {
                let line = line?;
                let line = line.trim();
                if !line.is_empty() {
                    started.insert(line.to_owned());
                }
            }
            self.open = Some(Open { file, started });
        }
        self.open
            .as_mut()
            .ok_or_else(|| std::io::Error::other("ledger not open"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerId::parse("s1").unwrap();
        let l = Ledger::new(dir.path().join("state"), &server);
        assert!(!l.contains("a.1".into()).await.unwrap());
        l.record("a.1".into()).await.unwrap();
        assert!(l.contains("a.1".into()).await.unwrap());
        let again = Ledger::new(dir.path().join("state"), &server);
        assert!(again.contains("a.1".into()).await.unwrap());
        assert!(!again.contains("a.2".into()).await.unwrap());
    }

    #[tokio::test]
    async fn unwritable_dir_is_an_error_not_a_panic() {
        let server = ServerId::parse("s1").unwrap();
        let l = Ledger::new("/proc/bora-cannot-exist".into(), &server);
        let e = l.contains("a.1".into()).await.unwrap_err();
        assert!(e.to_string().contains("unavailable"), "{e}");
    }
}
