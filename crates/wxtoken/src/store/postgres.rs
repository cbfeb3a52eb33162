//! The PostgreSQL backend: shared by several replicas.
//!
//! Depends on `store` (trait, error, shared SQL) and sqlx's PostgreSQL driver.
//!
//! Invariants:
//! - Transactions run at READ COMMITTED. Fenced writes are single conditional `UPDATE`s on the
//!   credential's `access_tokens` row: a concurrent writer waits for the row lock and then
//!   re-evaluates `generation = $expected` against the committed row, so exactly one of two
//!   writers from the same generation lands, on any replica.
//! - Several replicas share the database. Refresh leases are rows of `refresh_leases` taken by one
//!   conditional upsert (shared SQL); every committed change of an `access_tokens` row's
//!   generation is announced by a trigger on channel [`CHANNEL`] as "component kind appid
//!   generation" (never a token), and [`TokenChanges`] hears them on a connection of its own (a
//!   pool of one beside the main pool, so listening never takes a connection from queries).

use std::str::FromStr;

use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};

use crate::model::{Appid, ComponentAppid, Credential, CredentialKind};

use super::{StoreError, StoreOptions, check_schema_version};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A PostgreSQL-backed [`super::Store`].
pub(crate) struct PgStore {
    pool: PgPool,
    /// How the listener connects (its own connection, outside `pool`).
    connect: PgConnectOptions,
    acquire_timeout: Duration,
}

/// The channel the `access_tokens_changed` trigger notifies (migration 4).
pub const CHANNEL: &str = "wxtoken_tokens";

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `url` and migrates the database.
    pub(crate) async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url)?.application_name("wxtoken");
        // One direct connection first: when the database cannot be reached, the pool says only
        // "pool timed out while waiting for an open connection", without host, port or cause.
        let target = format!(
            "PostgreSQL at {}:{} (database {})",
            connect.get_host(),
            connect.get_port(),
            connect.get_database().unwrap_or("named after the user")
        );
        match tokio::time::timeout(
            options.acquire_timeout,
            PgConnection::connect_with(&connect),
        )
        .await
        {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
            }
            Ok(Err(e)) => return Err(super::open_error(target, e)),
            Err(_) => {
                return Err(StoreError::Open {
                    target,
                    reason: format!(
                        "no answer within {} (storage.connect_timeout)",
                        humantime::format_duration(options.acquire_timeout)
                    ),
                    unavailable: true,
                });
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.clone())
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
        Ok(Self {
            pool,
            connect,
            acquire_timeout: options.acquire_timeout,
        })
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

    async fn listen_token_changes(&self) -> Result<Option<TokenChanges>, StoreError> {
        let mut changes = TokenChanges {
            pool: PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(self.acquire_timeout)
                .connect_lazy_with(self.connect.clone()),
            listener: None,
        };
        changes.connect().await?;
        Ok(Some(changes))
    }
}

/// What [`TokenChanges::next`] heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenChange {
    /// A write committed `generation` for `credential` (on any replica, this one included).
    Changed {
        credential: Credential,
        generation: u64,
    },
    /// Listening resumed after the connection was lost: changes made meanwhile were not heard,
    /// so whatever the caller keeps must be reloaded.
    Resumed,
}

/// Committed token changes, from every replica (LISTEN on its own connection).
pub struct TokenChanges {
    pool: PgPool,
    listener: Option<PgListener>,
}

impl std::fmt::Debug for TokenChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenChanges")
            .field("connected", &self.listener.is_some())
            .finish()
    }
}

impl TokenChanges {
    async fn connect(&mut self) -> Result<(), StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        // A lost connection is reported (`Ok(None)` from `try_recv`) and replaced here, by a
        // fresh listener, so the caller always learns of the gap.
        listener.eager_reconnect(false);
        listener.listen(CHANNEL).await?;
        self.listener = Some(listener);
        Ok(())
    }

    /// The next change. After the connection is lost this reconnects and answers
    /// [`TokenChange::Resumed`]; `Err(Unavailable)` while the database cannot be reached (call
    /// again after a pause). Cancel-safe between notifications.
    pub async fn next(&mut self) -> Result<TokenChange, StoreError> {
        loop {
            let Some(listener) = self.listener.as_mut() else {
                self.connect().await?;
                return Ok(TokenChange::Resumed);
            };
            match listener.try_recv().await {
                Ok(Some(n)) => match parse_change(n.payload()) {
                    Some(change) => return Ok(change),
                    None => tracing::warn!("ignoring a malformed token change notification"),
                },
                Ok(None) => self.listener = None,
                Err(e) => {
                    // E.g. the server ended the session (pg_terminate_backend): drop it whole.
                    self.listener = None;
                    return Err(StoreError::Unavailable(e));
                }
            }
        }
    }
}

/// "component kind appid generation" (see migration 4).
fn parse_change(payload: &str) -> Option<TokenChange> {
    let mut parts = payload.split(' ');
    let component = ComponentAppid::parse(parts.next()?).ok()?;
    let kind = parts.next()?;
    let appid = Appid::parse(parts.next()?).ok()?;
    let generation = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    let credential = match kind {
        "component" => Credential::component(&component),
        "authorizer" => Credential::authorizer(&component, &appid),
        "direct" => Credential::direct(&component, &appid),
        "jsapi" | "wx_card" => {
            Credential::direct(&component, &appid).ticket(CredentialKind::parse_ticket(kind).ok()?)
        }
        _ => return None,
    };
    Some(TokenChange::Changed {
        credential,
        generation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_notifications_parse_and_malformed_ones_are_refused() {
        let c = ComponentAppid::parse("wxcomponent0001").expect("component");
        let a = Appid::parse("wxauthorizer001").expect("appid");
        assert_eq!(
            parse_change("wxcomponent0001 authorizer wxauthorizer001 7"),
            Some(TokenChange::Changed {
                credential: Credential::authorizer(&c, &a),
                generation: 7
            })
        );
        assert!(parse_change("wxcomponent0001 authorizer wxauthorizer001").is_none());
        assert!(parse_change("wxcomponent0001 other wxauthorizer001 7").is_none());
        assert!(parse_change("wxcomponent0001 direct wxauthorizer001 x").is_none());
        assert!(parse_change("wxcomponent0001 direct wxauthorizer001 7 8").is_none());
    }
}

super::sql::impl_store!(PgStore, sqlx::Postgres, Backend::Postgres);
