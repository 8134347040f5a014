//! The write transaction every state change happens in. It holds the
//! connection and the backend, nothing of its caller's: the tables' files
//! add its statements. Nothing is visible to anyone until
//! [`WriteTx::commit`]; dropping a `WriteTx` rolls it back.
//!
//! On PostgreSQL it runs on a connection of the pool. On SQLite it runs on
//! the one writer connection, [`SqliteWriter`], which is kept outside
//! sqlx's pool: the pool pings a connection each time it is taken and each
//! time it is given back (sqlx 0.9), two hand-offs to SQLite's worker
//! thread per transaction, and with one connection the next transaction
//! waited for the last one's ping.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use sqlx::{Any, AnyConnection, Connection, Executor, Transaction};
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

use super::{Backend, StoreError};

/// How long a transaction waits for SQLite's writer before it fails with a
/// transient error (its caller retries).
const WRITER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// SQLite's one writer connection, shared by every write transaction of
/// the store, one at a time (waiters are served in order).
#[derive(Clone)]
pub(super) struct SqliteWriter(Arc<Mutex<Option<WriterConn>>>);

/// The writer connection and whether a transaction may be open on it.
pub(super) struct WriterConn {
    conn: AnyConnection,
    /// A transaction was begun and not yet committed or rolled back: its
    /// `WriteTx` was dropped (a use case failed half-way). The next begin
    /// rolls it back first if the drop's own rollback has not yet.
    open: bool,
}

impl SqliteWriter {
    pub(super) fn new(conn: AnyConnection) -> Self {
        Self(Arc::new(Mutex::new(Some(WriterConn { conn, open: false }))))
    }

    /// Waits for the writer (at most [`WRITER_WAIT`], as a pool's acquire
    /// would), then begins `BEGIN IMMEDIATE` on it (the write lock is taken
    /// now, so a transaction that reads and then writes never fails
    /// half-way on a lock upgrade).
    async fn begin(&self) -> Result<WriterTx, StoreError> {
        let slot = tokio::time::timeout(WRITER_WAIT, self.0.clone().lock_owned())
            .await
            .map_err(|_| StoreError::Db(sqlx::Error::PoolTimedOut))?;
        let Ok(mut guard) = OwnedMutexGuard::try_map(slot, Option::as_mut) else {
            return Err(StoreError::Db(sqlx::Error::PoolClosed));
        };
        guard.roll_back_abandoned().await;
        // Open until committed: if BEGIN itself fails, the next begin rolls
        // back whatever it left (a "no transaction" error is ignored).
        guard.open = true;
        guard.conn.execute("BEGIN IMMEDIATE").await?;
        Ok(WriterTx {
            guard,
            writer: self.clone(),
        })
    }

    /// Rolls back a transaction left open by a dropped `WriteTx`, if the
    /// next begin has not already.
    async fn roll_back_abandoned(&self) {
        if let Some(w) = self.0.lock().await.as_mut() {
            w.roll_back_abandoned().await;
        }
    }

    /// Closes the connection; later begins fail.
    pub(super) async fn close(&self) {
        if let Some(w) = self.0.lock().await.take() {
            let _ = w.conn.close().await;
        }
    }
}

impl WriterConn {
    async fn roll_back_abandoned(&mut self) {
        if self.open {
            // An error here means there was nothing to roll back.
            let _ = self.conn.execute("ROLLBACK").await;
            self.open = false;
        }
    }
}

/// A transaction open on the SQLite writer, holding it.
pub(super) struct WriterTx {
    guard: OwnedMappedMutexGuard<Option<WriterConn>, WriterConn>,
    writer: SqliteWriter,
}

impl Drop for WriterTx {
    fn drop(&mut self) {
        if !self.guard.open {
            return;
        }
        // Dropped uncommitted: roll back as soon as the writer is free
        // (this guard goes first). Without a runtime, the next begin does.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let writer = self.writer.clone();
            runtime.spawn(async move { writer.roll_back_abandoned().await });
        }
    }
}

/// The connection a [`WriteTx`] runs on.
pub(super) enum Conn {
    /// PostgreSQL: a transaction on a pooled connection.
    Pooled(Transaction<'static, Any>),
    /// SQLite: the writer, held until the transaction ends.
    Writer(WriterTx),
}

impl Deref for Conn {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match self {
            Conn::Pooled(tx) => tx,
            Conn::Writer(w) => &w.guard.conn,
        }
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Conn::Pooled(tx) => &mut *tx,
            Conn::Writer(w) => &mut w.guard.conn,
        }
    }
}

/// One open write transaction.
pub struct WriteTx {
    pub(super) tx: Conn,
    pub(super) backend: Backend,
}

impl WriteTx {
    /// Begins on a pooled connection (PostgreSQL).
    pub(super) async fn pooled(pool: &sqlx::AnyPool, backend: Backend) -> Result<Self, StoreError> {
        Ok(Self {
            tx: Conn::Pooled(pool.begin().await?),
            backend,
        })
    }

    /// Begins on the SQLite writer.
    pub(super) async fn on_writer(writer: &SqliteWriter) -> Result<Self, StoreError> {
        Ok(Self {
            tx: Conn::Writer(writer.begin().await?),
            backend: Backend::Sqlite,
        })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Commits.
    ///
    /// # Errors
    /// The commit failed (nothing was written).
    pub async fn commit(self) -> Result<(), StoreError> {
        match self.tx {
            Conn::Pooled(tx) => tx.commit().await?,
            Conn::Writer(mut w) => {
                w.guard.conn.execute("COMMIT").await?;
                w.guard.open = false;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::Row;

    use super::super::Store;

    async fn count(store: &Store) -> i64 {
        sqlx::query("SELECT COUNT(*) AS n FROM probe")
            .fetch_one(&store.pool)
            .await
            .unwrap()
            .try_get("n")
            .unwrap()
    }

    #[tokio::test]
    async fn a_dropped_sqlite_transaction_is_rolled_back_and_the_writer_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url, 2).await.unwrap();
        let mut tx = store.begin().await.unwrap();
        sqlx::query("CREATE TABLE probe (x INTEGER)")
            .execute(&mut *tx.tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();

        let mut dropped = store.begin().await.unwrap();
        sqlx::query("INSERT INTO probe (x) VALUES (1)")
            .execute(&mut *dropped.tx)
            .await
            .unwrap();
        drop(dropped);

        // The next transaction gets the writer, on a clean slate.
        let mut tx = tokio::time::timeout(Duration::from_secs(5), store.begin())
            .await
            .expect("the writer is free again")
            .unwrap();
        let seen: i64 = sqlx::query("SELECT COUNT(*) AS n FROM probe")
            .fetch_one(&mut *tx.tx)
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
        assert_eq!(seen, 0, "the dropped insert was rolled back");
        sqlx::query("INSERT INTO probe (x) VALUES (2)")
            .execute(&mut *tx.tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(count(&store).await, 1);

        // A failed commit leaves the writer usable.
        let mut tx = store.begin().await.unwrap();
        sqlx::query("INSERT INTO probe (x) VALUES (3)")
            .execute(&mut *tx.tx)
            .await
            .unwrap();
        sqlx::query("ROLLBACK").execute(&mut *tx.tx).await.unwrap();
        tx.commit().await.unwrap_err();
        let tx = store.begin().await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(count(&store).await, 1);

        store.close().await;
        assert!(
            store.begin().await.is_err(),
            "a closed writer begins nothing"
        );
    }
}
