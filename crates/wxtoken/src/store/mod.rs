//! The durable store: one storage contract ([`Store`], held as `Arc<dyn Store>`), two backends
//! (SQLite, the embedded default; PostgreSQL, for several replicas), chosen once by [`open`] from
//! the URL scheme, each with its own versioned migrations applied at open.
//!
//! Depends on `model`, sqlx and async-trait only; never on axum, the `wechat` crate or the vault.
//!
//! Invariants:
//! - The store sees secrets only as [`Sealed`] values (sealing and opening happen in `vault`).
//! - Methods speak the domain, not SQL; expected outcomes (not found, stale, duplicate) are on the
//!   `Ok` side ([`SaveOutcome`], [`EventInsert`], `Option`), failures in [`StoreError`].
//! - Every write of a refresh token lands in the same transaction as its access token, its history
//!   row and the generation bump, and only if the generation it was computed from is still current
//!   (fencing). The refresh-token history is append-only: no method deletes from it, and the schema
//!   refuses deletes with a trigger. A losing writer's refresh token is still appended to it.
//! - Everything is keyed by component appid (SPEC.md rule 9).
//! - A database whose schema is newer than this binary is refused, never migrated or guessed at.
//!
//! Both backends share their SQL (`sql.rs`): the statements use only syntax common to SQLite and
//! PostgreSQL (`$n` parameters, `ON CONFLICT`, `RETURNING`), times are `BIGINT` epoch milliseconds
//! and secrets are `(kid, nonce, ct)` column triples, so one body of queries serves both. What
//! differs (pools, `BEGIN IMMEDIATE`, PRAGMAs, schema inspection) lives in `sqlite.rs` and
//! `postgres.rs`. Several replicas: refresh leases ([`LeaseStore::try_lease`]: one conditional
//! upsert on
//! `refresh_leases`, shared SQL) and the change stream ([`TokenStore::token_changes`]: PostgreSQL
//! LISTEN/NOTIFY fed by a trigger on `access_tokens`; `None` on SQLite).

mod authorizers;
mod clients;
mod components;
mod direct;
mod events;
mod keys;
mod leases;
mod ops;
mod postgres;
mod sql;
mod sqlite;
mod tokens;

pub use authorizers::AuthorizerStore;
pub use clients::ClientStore;
pub use components::ComponentStore;
pub use direct::DirectStore;
pub use events::EventStore;
pub use keys::KeyStore;
pub use leases::LeaseStore;
pub use ops::{ChangeScope, OpsStore, RogueRecord, ServerRecord, StoreChange};
pub use tokens::TokenStore;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::model::{
    Appid, ComponentAppid, Credential, CredentialKind, NONCE_LEN, Sealed, SecretSlot,
};

use postgres::PgStore;
pub use postgres::{TokenChange, TokenChanges};
use sqlite::SqliteStore;
pub use sqlite::{ServeLock, database_file};

/// What a lease row (`refresh_leases`) is held on. Every piece of work that must happen once
/// across replicas takes one: a credential's refresh, the application of a stored push event, the
/// exchange of an authorization code.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LeaseKey {
    /// Refreshing a credential's token.
    Refresh(Credential),
    /// Applying a stored push event (by its dedupe key).
    Event {
        component: ComponentAppid,
        dedupe_key: String,
    },
    /// Exchanging an authorization code with `api_query_auth`, by the code's SHA-256 in hex (the
    /// code itself is a secret and never stored).
    Code {
        component: ComponentAppid,
        digest: String,
    },
    /// A credential's forced-refresh budget (SPEC.md rule 10): claimed for
    /// `refresh.min_force_interval` by the refresh an invalidation report forces, and never
    /// released, so its expiry is when the next forced refresh may happen on any replica.
    Force(Credential),
}

impl LeaseKey {
    pub fn refresh(credential: &Credential) -> Self {
        LeaseKey::Refresh(credential.clone())
    }

    /// The row's `(component_appid, kind, appid)`: a credential's own kind and appid, or `event` /
    /// `code` with the dedupe key / digest (never a credential kind, so the two never collide).
    pub fn row(&self) -> (&str, &str, &str) {
        match self {
            LeaseKey::Refresh(c) => (c.component.as_str(), c.kind.as_str(), c.appid.as_str()),
            LeaseKey::Event {
                component,
                dedupe_key,
            } => (component.as_str(), "event", dedupe_key),
            LeaseKey::Code { component, digest } => (component.as_str(), "code", digest),
            LeaseKey::Force(c) => {
                let kind = match c.kind {
                    CredentialKind::Component => "force_component",
                    CredentialKind::Authorizer => "force_authorizer",
                    CredentialKind::Direct => "force_direct",
                    CredentialKind::Jsapi => "force_jsapi",
                    CredentialKind::WxCard => "force_wx_card",
                };
                (c.component.as_str(), kind, c.appid.as_str())
            }
        }
    }
}

impl std::fmt::Display for LeaseKey {
    /// Names the work, never a secret (a code appears as its digest's first characters only).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseKey::Refresh(c) => write!(f, "refresh {} {}", c.kind.as_str(), c.appid),
            LeaseKey::Event { dedupe_key, .. } => {
                write!(f, "event {}", &dedupe_key[..dedupe_key.len().min(12)])
            }
            LeaseKey::Code { digest, .. } => {
                write!(f, "code {}", &digest[..digest.len().min(12)])
            }
            LeaseKey::Force(c) => write!(f, "forced refresh {} {}", c.kind.as_str(), c.appid),
        }
    }
}

/// Why a store operation failed. `Display` is safe to log; none of it is meant for API responses
/// (map to a generic 503/500 there), and the database's own text is only in the source chain.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached in time (connection, pool, timeout, busy). The engine
    /// keeps serving from memory and reports not ready.
    #[error("storage unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// A concurrent transaction got in the way (PostgreSQL serialization failure or deadlock):
    /// nothing was written, and the same statement retried passes.
    #[error("storage contention: {what}")]
    Contention {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// A constraint refused the write (unique, foreign key, not null, check): the input or a
    /// bug. Nothing was written, and retrying fails the same way.
    #[error("storage constraint: {what}")]
    Constraint {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// Any other database failure.
    #[error("storage backend error")]
    Backend(#[source] sqlx::Error),
    /// The database could not be opened at start. `target` names what was tried (file, or host,
    /// port and database — never a password) and `reason` the cause, each once. `unavailable`:
    /// it could not be reached (refused, timed out), which may pass later, as opposed to a
    /// refusal by the database itself (no such database, bad login) or a missing directory.
    #[error("cannot open {target}: {reason}")]
    Open {
        target: String,
        reason: String,
        unavailable: bool,
    },
    /// The database was migrated by a newer wxtoken.
    #[error(
        "database schema version {database} is newer than this wxtoken supports (latest known: \
         {binary}); run a newer wxtoken or point it at another database"
    )]
    SchemaTooNew { database: i64, binary: i64 },
    /// Applying the migrations failed.
    #[error("database schema migration failed")]
    Migration(#[source] sqlx::migrate::MigrateError),
    /// The URL names no supported backend (only its scheme is shown: it may hold a password).
    #[error("unsupported storage URL scheme {scheme:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl { scheme: String },
    /// A stored value could not be decoded (unknown enum name, bad nonce length, …).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The caller passed something the contract forbids (e.g. an empty refresh token).
    #[error("invalid store input: {0}")]
    InvalidInput(&'static str),
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_)
                | StoreError::Open {
                    unavailable: true,
                    ..
                }
        )
    }

    /// Whether the same call can pass later: the database away or busy, or a concurrent
    /// transaction in the way. The one answer to "can this store error pass?"; nothing outside
    /// `store/` looks at sqlx errors.
    pub fn is_transient(&self) -> bool {
        self.is_unavailable() || matches!(self, StoreError::Contention { .. })
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        classify(e)
    }
}

fn classify(e: sqlx::Error) -> StoreError {
    use sqlx::error::ErrorKind;
    match &e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e),
        sqlx::Error::Database(db) => {
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLITE_BUSY (5) and SQLITE_LOCKED (6), extended codes included: the busy
                // timeout ran out while another connection or process held the write lock.
                let primary = db
                    .code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .map(|c| c & 0xff);
                if matches!(primary, Some(5 | 6)) {
                    return StoreError::Unavailable(e);
                }
            }
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                let code = pg.code();
                if code.starts_with("08") || code.starts_with("53") || code.starts_with("57P") {
                    return StoreError::Unavailable(e);
                }
                if code == "40001" || code == "40P01" {
                    return StoreError::Contention {
                        what: "concurrent transaction",
                        source: e,
                    };
                }
            }
            let what = match db.kind() {
                ErrorKind::UniqueViolation => "already exists",
                ErrorKind::ForeignKeyViolation => {
                    "refers to an unknown component or client (ensure_component first)"
                }
                ErrorKind::NotNullViolation => "a required value is missing",
                ErrorKind::CheckViolation => "a value is out of range",
                _ => return StoreError::Backend(e),
            };
            StoreError::Constraint { what, source: e }
        }
        _ => StoreError::Backend(e),
    }
}

/// Which backend a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a storage URL names by its scheme: `sqlite:` (`sqlite://PATH`, `sqlite:PATH`,
    /// `sqlite::memory:`), `postgres://` or `postgresql://`. The one place this is decided.
    pub fn from_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Every place a sealed value is kept, for rotation and for counting values per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SealedColumn {
    Ticket,
    AccessToken,
    RefreshToken,
    AuthorizerAppsecret,
    DirectAppsecret,
    RefreshTokenHistory,
    EventPayload,
}

impl SealedColumn {
    pub const ALL: [SealedColumn; 7] = [
        SealedColumn::Ticket,
        SealedColumn::AccessToken,
        SealedColumn::RefreshToken,
        SealedColumn::AuthorizerAppsecret,
        SealedColumn::DirectAppsecret,
        SealedColumn::RefreshTokenHistory,
        SealedColumn::EventPayload,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SealedColumn::Ticket => "ticket",
            SealedColumn::AccessToken => "access_token",
            SealedColumn::RefreshToken => "refresh_token",
            SealedColumn::AuthorizerAppsecret => "authorizer_appsecret",
            SealedColumn::DirectAppsecret => "direct_appsecret",
            SealedColumn::RefreshTokenHistory => "refresh_token_history",
            SealedColumn::EventPayload => "event_payload",
        }
    }
}

/// The row a sealed value lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CellKey {
    Ticket {
        component: ComponentAppid,
    },
    AccessToken {
        credential: Credential,
    },
    RefreshToken {
        component: ComponentAppid,
        appid: Appid,
    },
    AuthorizerAppsecret {
        component: ComponentAppid,
        appid: Appid,
    },
    DirectAppsecret {
        component: ComponentAppid,
        appid: Appid,
    },
    RefreshTokenHistory {
        id: i64,
        component: ComponentAppid,
        appid: Appid,
    },
    EventPayload {
        component: ComponentAppid,
        dedupe_key: String,
    },
}

impl CellKey {
    /// The slot the value was sealed for (history rows share the refresh-token slot).
    pub fn slot(&self) -> SecretSlot<'_> {
        match self {
            CellKey::Ticket { component } => SecretSlot::Ticket { component },
            CellKey::AccessToken { credential } => SecretSlot::AccessToken { credential },
            CellKey::RefreshToken { component, appid }
            | CellKey::RefreshTokenHistory {
                component, appid, ..
            } => SecretSlot::RefreshToken { component, appid },
            CellKey::AuthorizerAppsecret { component, appid } => {
                SecretSlot::AuthorizerAppsecret { component, appid }
            }
            CellKey::DirectAppsecret { component, appid } => {
                SecretSlot::DirectAppsecret { component, appid }
            }
            CellKey::EventPayload {
                component,
                dedupe_key,
            } => SecretSlot::EventPayload {
                component,
                dedupe_key,
            },
        }
    }

    pub fn column(&self) -> SealedColumn {
        match self {
            CellKey::Ticket { .. } => SealedColumn::Ticket,
            CellKey::AccessToken { .. } => SealedColumn::AccessToken,
            CellKey::RefreshToken { .. } => SealedColumn::RefreshToken,
            CellKey::AuthorizerAppsecret { .. } => SealedColumn::AuthorizerAppsecret,
            CellKey::DirectAppsecret { .. } => SealedColumn::DirectAppsecret,
            CellKey::RefreshTokenHistory { .. } => SealedColumn::RefreshTokenHistory,
            CellKey::EventPayload { .. } => SealedColumn::EventPayload,
        }
    }
}

/// A sealed value and where it lives.
#[derive(Debug, Clone)]
pub struct SealedCell {
    pub key: CellKey,
    pub sealed: Sealed,
}

/// Replace the value at `key` with `new`, only if it still has `old_nonce`.
#[derive(Debug, Clone)]
pub struct Reseal {
    pub key: CellKey,
    pub old_nonce: [u8; NONCE_LEN],
    pub new: Sealed,
}

/// The storage contract, one role per concern, each with its contract and its SQL in the file
/// named after it. Both backends pass the same conformance suite
/// (`crates/wxtoken/tests/store/conformance.rs`). A test double that intercepts one role wraps
/// that role only and hands out the real store's other roles.
#[async_trait]
pub trait Store: Send + Sync {
    /// Which backend this is (logs, readiness).
    fn backend(&self) -> Backend;
    /// Whether the database answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
    /// Closes the pools; later calls fail with `Unavailable`.
    async fn close(&self);
    /// Components and their pushed `component_verify_ticket`s.
    fn components(&self) -> &dyn ComponentStore;
    /// Every credential's generation and access token, their fenced refresh writes, and the change
    /// stream of those rows.
    fn tokens(&self) -> &dyn TokenStore;
    /// Authorizers: their refresh tokens (fenced, with the append-only history), status, fallback
    /// appsecret, and the authorization codes already exchanged.
    fn authorizers(&self) -> &dyn AuthorizerStore;
    /// Direct accounts (an account's own appid + appsecret) and their `stable_token` force-refresh
    /// budgets.
    fn direct(&self) -> &dyn DirectStore;
    /// Verified push events, stored once by dedupe key, until processed and pruned.
    fn events(&self) -> &dyn EventStore;
    /// API clients (by key hash) and their batched read counters.
    fn clients(&self) -> &dyn ClientStore;
    /// Master-key checks and re-sealing every sealed value under a new key.
    fn keys(&self) -> &dyn KeyStore;
    /// Leases on work that must happen once across replicas (`refresh_leases`).
    fn leases(&self) -> &dyn LeaseStore;
    /// What running servers and operators' tools tell each other (`servers`, `store_changes`),
    /// and what the guards found (`rogue_refreshes`).
    fn ops(&self) -> &dyn OpsStore;
}

/// Connection settings (`[storage]` in the configuration).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// PostgreSQL pool size; SQLite uses one writer and up to 8 readers.
    pub max_connections: u32,
    /// How long to wait for a connection (and, on SQLite, for the write lock) before
    /// `StoreError::Unavailable`.
    pub acquire_timeout: Duration,
    /// A bulk load (`wxtoken authorizers import`): on SQLite the writer keeps up to 256 MB of
    /// pages in its cache and checkpoints the WAL every 20,000 pages, not 1,000. Rows arriving in
    /// random appid order dirty a random index page each; at a million rows the defaults re-read
    /// and re-wrote every page for every batch (import 118 s; the settings and 5,000-row batches
    /// halve it). Ignored on PostgreSQL.
    pub bulk: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            bulk: false,
        }
    }
}

/// Opens the store named by `url` with default options; see [`open_with`].
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, &StoreOptions::default()).await
}

/// Opens the store named by `url` and brings its schema up to date.
///
/// `sqlite://PATH` (or `sqlite:PATH`; created if missing; `sqlite::memory:` for a throwaway one)
/// or `postgres://…` / `postgresql://…`. Refuses a database whose schema is newer than this binary.
/// Call `vault::Vault::verify` next, before anything reads or writes a secret.
pub async fn open_with(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    match Backend::from_url(url) {
        Some(Backend::Sqlite) => Ok(Arc::new(SqliteStore::open(url, options).await?)),
        Some(Backend::Postgres) => Ok(Arc::new(PgStore::open(url, options).await?)),
        None => Err(StoreError::UnsupportedUrl {
            scheme: shown_scheme(url),
        }),
    }
}

/// The scheme of `url` to show in an error: only a short `letters://` scheme, else
/// `(unrecognised)`, so a URL without one (`user:password@host`) never shows its user name.
fn shown_scheme(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, _))
            if (1..=16).contains(&scheme.len())
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
        {
            scheme.to_owned()
        }
        _ => "(unrecognised)".to_owned(),
    }
}

/// [`StoreError::Open`] for `target` from the driver's error, worded once: the OS error of a
/// refused or failed connection, the server's message for a refused login or missing database.
fn open_error(target: String, err: sqlx::Error) -> StoreError {
    let unavailable = matches!(
        err,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
    );
    let reason = match &err {
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::Tls(tls) => format!("TLS: {tls}"),
        other => other.to_string(),
    };
    StoreError::Open {
        target,
        reason,
        unavailable,
    }
}

/// The newest migration version this binary knows, and the check that refuses a newer database.
fn check_schema_version(
    migrator: &sqlx::migrate::Migrator,
    applied: Option<i64>,
) -> Result<(), StoreError> {
    let binary = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    match applied {
        Some(database) if database > binary => Err(StoreError::SchemaTooNew { database, binary }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unsupported_url_names_only_a_plain_scheme_never_a_user_name() {
        for (url, shown) in [
            ("mysql://admin:hunter2@db/wxtoken", "mysql"),
            ("admin:hunter2@db/wxtoken", "(unrecognised)"),
            ("admin@db:5432", "(unrecognised)"),
            ("admin:pw@db://x", "(unrecognised)"),
            ("://db", "(unrecognised)"),
            ("averyveryverylongschemename://db", "(unrecognised)"),
            ("", "(unrecognised)"),
        ] {
            let err = match open(url).await {
                Ok(_) => panic!("{url} accepted"),
                Err(e) => e,
            };
            match &err {
                StoreError::UnsupportedUrl { scheme } => assert_eq!(scheme, shown, "{url}"),
                other => panic!("{url}: {other}"),
            }
            let msg = err.to_string();
            assert!(!msg.contains("admin") && !msg.contains("hunter2"), "{msg}");
        }
    }
}
