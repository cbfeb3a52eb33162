//! The SQLite backend: the embedded default, one database file, nothing to install.
//!
//! Depends on `store` (trait, error, shared SQL) and sqlx's SQLite driver.
//!
//! Invariants:
//! - WAL journal (readers never block the writer), `synchronous = FULL` (a committed refresh token
//!   survives a power cut, not only a process kill), a busy timeout, foreign keys on.
//! - One writer connection: writes in this process queue in the pool instead of failing busy, and
//!   every write transaction starts with `BEGIN IMMEDIATE`, taking the file's write lock up front,
//!   so a read-then-write transaction can never fail to upgrade when another process (a CLI
//!   command next to the server) wrote in between. Reads use a separate pool.
//! - This backend behaves as the only replica: a future `claim_due` lease simply always succeeds.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{StoreError, StoreOptions, check_schema_version};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A SQLite-backed [`super::Store`].
pub(crate) struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` and migrates it.
    pub(crate) async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let memory = url.contains(":memory:") || url.contains("mode=memory");
        let connect = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(options.acquire_timeout)
            .foreign_keys(true);
        let mut write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout);
        if memory {
            // Each connection to :memory: is its own database: keep exactly one, forever.
            write = write
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let write = write.connect_with(connect.clone()).await?;
        let read = if memory {
            write.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(options.max_connections.clamp(1, 8))
                .acquire_timeout(options.acquire_timeout)
                .idle_timeout(Some(Duration::from_secs(600)))
                .connect_with(connect)
                .await?
        };
        let has_table: Option<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&write)
        .await?;
        if has_table.is_some() {
            let (applied,): (Option<i64>,) =
                sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                    .fetch_one(&write)
                    .await?;
            check_schema_version(&MIGRATOR, applied)?;
        }
        MIGRATOR.run(&write).await.map_err(StoreError::Migration)?;
        Ok(Self { read, write })
    }

    fn read_pool(&self) -> &SqlitePool {
        &self.read
    }

    fn write_pool(&self) -> &SqlitePool {
        &self.write
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.write.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn close_pools(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

super::sql::impl_store!(SqliteStore, sqlx::Sqlite, Backend::Sqlite);
