//! The `store_meta` table: facts about the store itself, by name (the
//! check of the secret key it was first started with). Written once,
//! read at start.

use super::{Store, StoreError};

impl Store {
    /// The value of fact `name`, if it was written.
    ///
    /// # Errors
    /// A database failure.
    pub async fn meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM store_meta WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Writes fact `name` unless it was written already (by this process
    /// or another starting at the same time); returns the value it has.
    ///
    /// # Errors
    /// A database failure.
    pub async fn meta_or_insert(&self, name: &str, value: &str) -> Result<String, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO store_meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&mut *tx.tx)
        .await?;
        let kept: String = sqlx::query_scalar("SELECT value FROM store_meta WHERE name = $1")
            .bind(name)
            .fetch_one(&mut *tx.tx)
            .await?;
        tx.commit().await?;
        Ok(kept)
    }
}
