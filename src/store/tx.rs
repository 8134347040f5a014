//! The write transaction every state change happens in. It holds the
//! connection and the backend, nothing of its caller's: the tables' files
//! add its statements. Nothing is visible to anyone until
//! [`WriteTx::commit`]; dropping a `WriteTx` rolls it back.

use sqlx::{Any, Transaction};

use super::{Backend, StoreError};

/// One open write transaction.
pub struct WriteTx {
    pub(super) tx: Transaction<'static, Any>,
    pub(super) backend: Backend,
}

impl WriteTx {
    pub(super) fn new(tx: Transaction<'static, Any>, backend: Backend) -> Self {
        Self { tx, backend }
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
        self.tx.commit().await?;
        Ok(())
    }
}
