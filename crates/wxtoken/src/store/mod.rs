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
//! `postgres.rs`. Several replicas: refresh leases ([`Store::try_lease`]: one conditional upsert on
//! `refresh_leases`, shared SQL) and the change stream ([`Store::token_changes`]: PostgreSQL
//! LISTEN/NOTIFY fed by a trigger on `access_tokens`; `None` on SQLite).

mod postgres;
mod sql;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::model::{
    ApiKeyHash, Appid, AuthorizationWrite, AuthorizerCounts, AuthorizerRecord, ClientCreate,
    ClientRecord, ComponentAppid, Credential, CredentialKind, DirectAccountRecord,
    DirectAccountWrite, EventInsert, ForceBudgetRecord, KeyCheck, KeyId, NONCE_LEN, NewClient,
    NewEvent, ReadCount, RefreshResult, RefreshTokenHistoryEntry, SaveOutcome, Sealed, SecretSlot,
    StatusChange, StoredEvent, StoredTicket, TicketOutcome, Timestamp, TokenRecord, UpsertOutcome,
};

use postgres::PgStore;
pub use postgres::{TokenChange, TokenChanges};
use sqlite::SqliteStore;

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
        matches!(self, StoreError::Unavailable(_))
    }

    /// Whether the same call can pass later: the database away or busy, or a concurrent
    /// transaction in the way. The one answer to "can this store error pass?"; nothing outside
    /// `store/` looks at sqlx errors.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Contention { .. }
        )
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

/// The storage contract. Both backends pass the same conformance suite
/// (`crates/wxtoken/tests/store_conformance.rs`).
#[async_trait]
pub trait Store: Send + Sync {
    /// Which backend this is (logs, readiness).
    fn backend(&self) -> Backend;
    /// Whether the database answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
    /// Closes the pools; later calls fail with `Unavailable`.
    async fn close(&self);

    // --- components and tickets ---------------------------------------------------------------
    /// Registers a component (idempotent) with its component-token credential.
    async fn ensure_component(
        &self,
        component: &ComponentAppid,
        at: Timestamp,
    ) -> Result<(), StoreError>;
    /// Every registered component.
    async fn list_components(&self) -> Result<Vec<ComponentAppid>, StoreError>;
    /// Stores a pushed ticket as the latest one unless a later-received one is already stored.
    async fn record_ticket(
        &self,
        component: &ComponentAppid,
        ticket: &Sealed,
        received_at: Timestamp,
    ) -> Result<TicketOutcome, StoreError>;
    /// The latest ticket and when it arrived.
    async fn latest_ticket(
        &self,
        component: &ComponentAppid,
    ) -> Result<Option<StoredTicket>, StoreError>;

    // --- access tokens -----------------------------------------------------------------------
    /// One credential's generation and current token.
    async fn get_token(&self, credential: &Credential) -> Result<Option<TokenRecord>, StoreError>;
    /// Every credential of one component (or all), of one kind (or all), with or without a token
    /// yet. At cold start, authorizers' tokens come with [`Store::load_authorizers`]; load the
    /// component and direct-account credentials here.
    async fn load_tokens(
        &self,
        component: Option<&ComponentAppid>,
        kind: Option<CredentialKind>,
    ) -> Result<Vec<TokenRecord>, StoreError>;
    /// Writes refresh results, each fenced by its expected generation: access token, refresh token
    /// (authorizers), history row and generation bump in one transaction for the whole slice, one
    /// outcome per result in order. A stale result changes nothing but its refresh token's history.
    ///
    /// Rows are written (and locked) in (component, kind, appid) order whatever the slice's order,
    /// so concurrent batches never deadlock; the outcomes are still in the slice's order.
    /// A transient `Err` ([`StoreError::is_transient`]): the transaction rolled back and nothing
    /// was written; retry with the same sealed values (never re-seal or recompute a token that
    /// WeChat issued). If the connection broke during the commit itself, the retry reports
    /// `Stale` for writes that landed.
    async fn save_refresh_results(
        &self,
        results: &[RefreshResult],
    ) -> Result<Vec<SaveOutcome>, StoreError>;

    // --- authorizers -------------------------------------------------------------------------
    /// Creates authorizers or replaces their refresh tokens (api_query_auth results, import rows,
    /// reconciliation), each fenced, with history rows; one transaction for the slice.
    ///
    /// Written in (component, appid) order, outcomes in the slice's order, and
    /// a transient `Err` handled as for [`Store::save_refresh_results`]: nothing was
    /// written; retry with the same sealed values.
    async fn save_authorizations(
        &self,
        writes: &[AuthorizationWrite],
    ) -> Result<Vec<SaveOutcome>, StoreError>;
    /// One authorizer.
    async fn get_authorizer(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
    ) -> Result<Option<AuthorizerRecord>, StoreError>;
    /// A page of a component's authorizers ordered by appid, after `after`.
    async fn list_authorizers(
        &self,
        component: &ComponentAppid,
        after: Option<&Appid>,
        limit: u32,
    ) -> Result<Vec<AuthorizerRecord>, StoreError>;
    /// Every authorizer of one component (or all) with its current token, in one query: the cold
    /// start.
    async fn load_authorizers(
        &self,
        component: Option<&ComponentAppid>,
    ) -> Result<Vec<AuthorizerRecord>, StoreError>;
    /// How many authorizers a component has, by status.
    async fn count_authorizers(
        &self,
        component: &ComponentAppid,
    ) -> Result<AuthorizerCounts, StoreError>;
    /// Sets an authorizer's status (fenced when `expected_generation` is set). A change bumps the
    /// generation, so a refresh computed before a revocation cannot land after it. Setting the
    /// status it already has changes nothing.
    async fn set_authorizer_status(&self, change: &StatusChange)
    -> Result<SaveOutcome, StoreError>;
    /// Sets or clears the appsecret kept for an authorizer's fallback. False if no such authorizer.
    async fn set_authorizer_appsecret(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
        appsecret: Option<&Sealed>,
        at: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Every refresh token an authorizer ever had, oldest first.
    async fn refresh_token_history(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
    ) -> Result<Vec<RefreshTokenHistoryEntry>, StoreError>;
    /// How many history rows exist (one component or all).
    async fn count_refresh_token_history(
        &self,
        component: Option<&ComponentAppid>,
    ) -> Result<u64, StoreError>;

    // --- direct accounts ---------------------------------------------------------------------
    /// Adds a direct account (with its credential) or replaces its kind and appsecret.
    async fn upsert_direct_account(
        &self,
        account: &DirectAccountWrite,
    ) -> Result<UpsertOutcome, StoreError>;
    async fn get_direct_account(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
    ) -> Result<Option<DirectAccountRecord>, StoreError>;
    async fn list_direct_accounts(
        &self,
        component: Option<&ComponentAppid>,
    ) -> Result<Vec<DirectAccountRecord>, StoreError>;
    /// Removes a direct account and its token. False if there was none. Its generation is kept:
    /// adding it again continues from there, so a write fenced on a pre-removal generation is
    /// `Stale`, never applied to the new account.
    async fn remove_direct_account(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
    ) -> Result<bool, StoreError>;

    // --- stable_token force_refresh budgets ---------------------------------------------------
    /// Every stored budget (loaded at cold start).
    async fn load_force_budgets(&self) -> Result<Vec<ForceBudgetRecord>, StoreError>;
    /// Stores one credential's budget, replacing the previous one.
    async fn save_force_budget(&self, budget: &ForceBudgetRecord) -> Result<(), StoreError>;

    // --- push events -------------------------------------------------------------------------
    /// Stores a verified push once: `Duplicate` if its dedupe key is already stored.
    async fn record_event(&self, event: &NewEvent) -> Result<EventInsert, StoreError>;
    /// Stored events not yet processed, oldest first (to resume after a crash).
    async fn unprocessed_events(
        &self,
        component: Option<&ComponentAppid>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// Marks an event processed. False if unknown or already processed.
    async fn mark_event_processed(
        &self,
        component: &ComponentAppid,
        dedupe_key: &str,
        at: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Deletes processed events received before `before` (their dedupe window is long over).
    async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError>;

    // --- clients -----------------------------------------------------------------------------
    async fn create_client(&self, client: &NewClient) -> Result<ClientCreate, StoreError>;
    /// The client holding this API key hash (revoked ones too: the caller refuses them).
    async fn find_client_by_key(
        &self,
        hash: &ApiKeyHash,
    ) -> Result<Option<ClientRecord>, StoreError>;
    async fn list_clients(&self) -> Result<Vec<ClientRecord>, StoreError>;
    /// Revokes a client by name. False if unknown or already revoked.
    async fn revoke_client(&self, name: &str, at: Timestamp) -> Result<bool, StoreError>;
    /// Adds batched token-read counts (one transaction, written in (client, component, appid)
    /// order). A transient `Err`: nothing was added; retry with the same counts.
    async fn add_read_counts(&self, counts: &[ReadCount]) -> Result<(), StoreError>;
    /// Read counters, all clients or one.
    async fn read_counts(&self, client_id: Option<i64>) -> Result<Vec<ReadCount>, StoreError>;

    // --- master keys and rotation --------------------------------------------------------------
    /// The stored key-check values.
    async fn key_checks(&self) -> Result<Vec<KeyCheck>, StoreError>;
    /// Stores a key-check value unless one exists for that key id. True if inserted.
    async fn add_key_check(&self, check: &KeyCheck) -> Result<bool, StoreError>;
    /// Marks a key retired, atomically and only if no sealed value (any column) uses it any more.
    /// True if it changed; false if it is still in use, already retired, or unknown.
    async fn retire_key(&self, key_id: &KeyId, at: Timestamp) -> Result<bool, StoreError>;
    /// Up to `limit` values of one column not sealed under `not_under`.
    async fn sealed_cells(
        &self,
        column: SealedColumn,
        not_under: &KeyId,
        limit: u32,
    ) -> Result<Vec<SealedCell>, StoreError>;
    /// Conditional replacements (see [`Reseal`]), one transaction, written in table and row-key
    /// order. Returns how many landed. A transient `Err`: nothing was written; retry.
    async fn reseal(&self, updates: &[Reseal]) -> Result<u64, StoreError>;
    /// How many sealed values each key id holds, over every column.
    async fn count_sealed_by_key(&self) -> Result<Vec<(KeyId, u64)>, StoreError>;

    /// Whether the event is stored and not yet processed (checked again once an event's lease is
    /// held: another replica may have applied it since it was listed).
    async fn event_unprocessed(
        &self,
        component: &ComponentAppid,
        dedupe_key: &str,
    ) -> Result<bool, StoreError>;

    /// Remembers that the authorization code whose SHA-256 is `code_digest` (hex) was exchanged
    /// for `appid` at `at`, and forgets codes exchanged before `forget_before`. Idempotent.
    async fn record_exchanged_code(
        &self,
        component: &ComponentAppid,
        code_digest: &str,
        appid: &Appid,
        at: Timestamp,
        forget_before: Timestamp,
    ) -> Result<(), StoreError>;
    /// The authorizer a remembered code was exchanged for.
    async fn exchanged_code(
        &self,
        component: &ComponentAppid,
        code_digest: &str,
    ) -> Result<Option<Appid>, StoreError>;

    // --- several replicas ---------------------------------------------------------------------
    /// Takes (or renews) the lease on `key` for `holder` until `until`: granted if nobody holds
    /// it, if its holder's lease ran out before `now`, or if `holder` already holds it. One
    /// conditional statement, so two replicas never both get it. True if granted.
    async fn try_lease(
        &self,
        key: &LeaseKey,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Gives the lease back if `holder` holds it.
    async fn release_lease(&self, key: &LeaseKey, holder: &str) -> Result<(), StoreError>;
    /// The committed changes of every credential's row (new tokens, status changes), whoever
    /// wrote them: PostgreSQL's LISTEN/NOTIFY on a connection of its own. `None` on SQLite (one
    /// process owns the file; there is no one else to hear from).
    async fn token_changes(&self) -> Result<Option<TokenChanges>, StoreError>;

    /// [`Store::save_refresh_results`] for one result.
    async fn save_refresh_result(&self, result: &RefreshResult) -> Result<SaveOutcome, StoreError> {
        let mut out = self
            .save_refresh_results(std::slice::from_ref(result))
            .await?;
        out.pop()
            .ok_or(StoreError::InvalidInput("no outcome for the write"))
    }

    /// [`Store::save_authorizations`] for one write.
    async fn save_authorization(
        &self,
        write: &AuthorizationWrite,
    ) -> Result<SaveOutcome, StoreError> {
        let mut out = self
            .save_authorizations(std::slice::from_ref(write))
            .await?;
        out.pop()
            .ok_or(StoreError::InvalidInput("no outcome for the write"))
    }
}

/// Connection settings (`[storage]` in the configuration).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// PostgreSQL pool size; SQLite uses one writer and up to 8 readers.
    pub max_connections: u32,
    /// How long to wait for a connection (and, on SQLite, for the write lock) before
    /// `StoreError::Unavailable`.
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
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
