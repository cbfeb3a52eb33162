//! The PostgreSQL backend: shared by several replicas.
//!
//! Depends on `store` (trait, error, shared SQL) and sqlx's PostgreSQL driver.
//!
//! Invariants:
//! - Transactions run at READ COMMITTED. Fenced writes are single conditional `UPDATE`s on the
//!   credential's `access_tokens` row: a concurrent writer waits for the row lock and then
//!   re-evaluates `generation = $expected` against the committed row, so exactly one of two
//!   writers from the same generation lands, on any replica.
//! - Multi-replica features (row leases for `claim_due` with `FOR UPDATE SKIP LOCKED`,
//!   LISTEN/NOTIFY of token changes) belong here; see the HA issue.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{StoreError, StoreOptions, check_schema_version};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A PostgreSQL-backed [`super::Store`].
pub(crate) struct PgStore {
    pool: PgPool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `url` and migrates the database.
    pub(crate) async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url)?.application_name("wxtoken");
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        let (table,): (Option<String>,) =
            sqlx::query_as("SELECT CAST(to_regclass('_sqlx_migrations') AS TEXT)")
                .fetch_one(&pool)
                .await?;
        if table.is_some() {
            let (applied,): (Option<i64>,) =
                sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                    .fetch_one(&pool)
                    .await?;
            check_schema_version(&MIGRATOR, applied)?;
        }
        MIGRATOR.run(&pool).await.map_err(StoreError::Migration)?;
        Ok(Self { pool })
    }

    fn read_pool(&self) -> &PgPool {
        &self.pool
    }

    fn write_pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    async fn close_pools(&self) {
        self.pool.close().await;
    }
}

super::sql::impl_store!(PgStore, sqlx::Postgres, Backend::Postgres);
