//! The `servers` table: servers registered through the API (with their
//! kind and labels) or seen in a heartbeat, and when each was last heard
//! from. Labels are a JSON object in one text column, read whole.

use std::collections::HashMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::sql::{InList, MAX_IN, Params, query};
use super::{Backend, Store, StoreError, WriteTx};
use crate::domain::{Labels, ServerKind, carries_all};

macro_rules! server_columns {
    () => {
        "server_id, kind, registered, last_seen, created_at, labels"
    };
}

/// A server bora knows: registered through the API, or seen in a heartbeat.
#[derive(Debug, Clone)]
pub struct ServerRow {
    /// The server's id.
    pub server_id: String,
    /// What consumes its queue (`guest` for a server only seen).
    pub kind: ServerKind,
    /// Registered through the API (else only seen in heartbeats).
    pub registered: bool,
    /// Its worker's last heartbeat, in microseconds since the epoch.
    pub last_seen: Option<i64>,
    /// When bora first registered or heard from it, in microseconds since
    /// the epoch.
    pub created_at: i64,
    /// Its labels, set only through the API (empty until then).
    pub labels: Labels,
}

impl ServerRow {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let labels = decode_labels(row.try_get("labels")?)?;
        Self::from_columns(
            row,
            ["server_id", "kind", "registered", "last_seen", "created_at"],
            labels,
        )
    }

    /// The server columns of a join, aliased `s_<column>`; `None` when the
    /// join found no server row.
    pub(super) fn from_joined(row: &AnyRow) -> Result<Option<Self>, StoreError> {
        if row.try_get::<Option<String>, _>("s_server_id")?.is_none() {
            return Ok(None);
        }
        let labels = decode_labels(row.try_get::<String, _>("s_labels")?)?;
        Self::from_columns(
            row,
            [
                "s_server_id",
                "s_kind",
                "s_registered",
                "s_last_seen",
                "s_created_at",
            ],
            labels,
        )
        .map(Some)
    }

    fn from_columns(
        row: &AnyRow,
        [id, kind, registered, last_seen, created_at]: [&str; 5],
        labels: Labels,
    ) -> Result<Self, StoreError> {
        let kind: String = row.try_get(kind)?;
        Ok(Self {
            server_id: row.try_get(id)?,
            kind: kind.parse().map_err(StoreError::Corrupt)?,
            registered: row.try_get::<i64, _>(registered)? != 0,
            last_seen: row.try_get(last_seen)?,
            created_at: row.try_get(created_at)?,
            labels,
        })
    }
}

/// The `labels` column: a JSON object of strings.
fn decode_labels(text: String) -> Result<Labels, StoreError> {
    serde_json::from_str(&text).map_err(|e| {
        StoreError::Corrupt(format!("servers.labels is not an object of strings: {e}"))
    })
}

/// A label set as the `labels` column holds it.
fn encode_labels(labels: &Labels) -> String {
    // A map of strings always serialises.
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".to_owned())
}

impl Store {
    /// The last heartbeat of each of `servers` that sent one.
    ///
    /// # Errors
    /// A database failure.
    pub async fn last_seen_many(
        &self,
        servers: &[&str],
    ) -> Result<HashMap<String, i64>, StoreError> {
        let mut out = HashMap::new();
        for chunk in servers.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let sql = format!(
                "SELECT server_id, last_seen FROM servers WHERE last_seen IS NOT NULL \
                 AND server_id IN ({})",
                Params::new(self.backend).list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len());
            for s in list.values() {
                q = q.bind(*s);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.insert(r.try_get("server_id")?, r.try_get("last_seen")?);
            }
        }
        Ok(out)
    }

    /// The last heartbeat seen from each server that ever sent one.
    ///
    /// # Errors
    /// A database failure.
    pub async fn servers_last_seen(&self) -> Result<HashMap<String, i64>, StoreError> {
        let rows =
            sqlx::query("SELECT server_id, last_seen FROM servers WHERE last_seen IS NOT NULL")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("server_id")?, r.try_get("last_seen")?)))
            .collect()
    }

    /// Every server known, by id.
    ///
    /// # Errors
    /// A database failure.
    pub async fn servers(&self) -> Result<Vec<ServerRow>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            server_columns!(),
            " FROM servers ORDER BY server_id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(ServerRow::from_row).collect()
    }

    /// One server.
    ///
    /// # Errors
    /// A database failure.
    pub async fn server(&self, server: &str) -> Result<Option<ServerRow>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            server_columns!(),
            " FROM servers WHERE server_id = $1"
        ))
        .bind(server)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(ServerRow::from_row).transpose()
    }

    /// The last heartbeat of one server.
    ///
    /// # Errors
    /// A database failure.
    pub async fn server_last_seen(&self, server: &str) -> Result<Option<i64>, StoreError> {
        let v: Option<Option<i64>> =
            sqlx::query_scalar("SELECT last_seen FROM servers WHERE server_id = $1")
                .bind(server)
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.flatten())
    }
}

impl WriteTx {
    /// The servers among `ids` that bora knows.
    ///
    /// # Errors
    /// A database failure.
    pub async fn servers_by_ids(&mut self, ids: &[&str]) -> Result<Vec<ServerRow>, StoreError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(MAX_IN) {
            let list = InList::new(chunk);
            let sql = format!(
                concat!(
                    "SELECT ",
                    server_columns!(),
                    " FROM servers WHERE server_id IN ({})"
                ),
                Params::new(self.backend).list(list.len())
            );
            let mut q = query(sql, list.len() == MAX_IN, list.len());
            for id in list.values() {
                q = q.bind(*id);
            }
            for row in q.fetch_all(&mut *self.tx).await? {
                out.push(ServerRow::from_row(&row)?);
            }
        }
        Ok(out)
    }

    /// Records a heartbeat of each of `servers` at `now`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn touch_servers(&mut self, servers: &[&str], now: i64) -> Result<(), StoreError> {
        // In one order for everyone: two dispatchers upserting the same rows
        // in different orders would deadlock.
        let mut servers = servers.to_vec();
        servers.sort_unstable();
        servers.dedup();
        for chunk in servers.chunks(MAX_IN) {
            let sql = format!(
                "INSERT INTO servers (server_id, last_seen, created_at) VALUES {} \
                 ON CONFLICT (server_id) DO UPDATE SET last_seen = excluded.last_seen",
                Params::new(self.backend).values(chunk.len(), 3)
            );
            let mut q = query(sql, chunk.len() == MAX_IN, chunk.len());
            for s in chunk {
                q = q.bind(*s).bind(now).bind(now);
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// The registered servers that carry every label of `wanted` (all of
    /// them for an empty set), in `server_id` order.
    ///
    /// # Errors
    /// A database failure, or a stored label set that does not parse.
    pub async fn servers_matching(
        &mut self,
        wanted: &Labels,
    ) -> Result<Vec<ServerRow>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            server_columns!(),
            " FROM servers WHERE registered = 1 ORDER BY server_id"
        ))
        .fetch_all(&mut *self.tx)
        .await?;
        let mut out = Vec::new();
        for row in &rows {
            let server = ServerRow::from_row(row)?;
            if carries_all(&server.labels, wanted) {
                out.push(server);
            }
        }
        Ok(out)
    }

    /// One server, locked until this transaction ends (on PostgreSQL;
    /// SQLite's transactions hold the whole database): read it first when
    /// its labels are changed from what they are.
    ///
    /// # Errors
    /// A database failure.
    pub async fn server_for_update(
        &mut self,
        server: &str,
    ) -> Result<Option<ServerRow>, StoreError> {
        let sql = match self.backend {
            Backend::Sqlite => concat!(
                "SELECT ",
                server_columns!(),
                " FROM servers WHERE server_id = $1"
            ),
            Backend::Postgres => concat!(
                "SELECT ",
                server_columns!(),
                " FROM servers WHERE server_id = $1 FOR UPDATE"
            ),
        };
        let row = sqlx::query(sql)
            .bind(server)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref().map(ServerRow::from_row).transpose()
    }

    /// Marks a server registered, with its kind, and replaces its labels
    /// with `labels` when given (else a registered server keeps its own,
    /// and a new row has none).
    ///
    /// # Errors
    /// A database failure.
    pub async fn register_server(
        &mut self,
        server: &str,
        kind: ServerKind,
        labels: Option<&Labels>,
        now: i64,
    ) -> Result<(), StoreError> {
        let sql = if labels.is_some() {
            "INSERT INTO servers (server_id, kind, registered, created_at, labels) \
             VALUES ($1, $2, 1, $3, $4) ON CONFLICT (server_id) DO UPDATE \
             SET kind = excluded.kind, registered = 1, labels = excluded.labels"
        } else {
            "INSERT INTO servers (server_id, kind, registered, created_at, labels) \
             VALUES ($1, $2, 1, $3, $4) ON CONFLICT (server_id) DO UPDATE \
             SET kind = excluded.kind, registered = 1"
        };
        sqlx::query(sql)
            .bind(server)
            .bind(kind.as_str())
            .bind(now)
            .bind(encode_labels(labels.unwrap_or(&Labels::new())))
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Replaces a server's labels.
    ///
    /// # Errors
    /// A database failure.
    pub async fn set_server_labels(
        &mut self,
        server: &str,
        labels: &Labels,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE servers SET labels = $1 WHERE server_id = $2")
            .bind(encode_labels(labels))
            .bind(server)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Forgets a server.
    ///
    /// # Errors
    /// A database failure.
    pub async fn delete_server(&mut self, server: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM servers WHERE server_id = $1")
            .bind(server)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Whether `server` was registered through the API.
    ///
    /// # Errors
    /// A database failure.
    pub async fn is_registered(&mut self, server: &str) -> Result<bool, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT registered FROM servers WHERE server_id = $1")
                .bind(server)
                .fetch_optional(&mut *self.tx)
                .await?;
        Ok(v.unwrap_or(0) != 0)
    }
}
