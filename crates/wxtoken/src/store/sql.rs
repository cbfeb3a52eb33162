//! The SQL shared by both backends: private row structs (`FromRow`, generic over the backend),
//! their conversion into domain records, and [`impl_store!`], which expands to the one
//! `impl Store` body for a backend type.
//!
//! Depends on `model` and sqlx only. Every statement here must run unchanged on SQLite (≥ 3.35)
//! and PostgreSQL (≥ 13): `$n` parameters, `ON CONFLICT`, `RETURNING`, `CASE` instead of
//! `MAX`/`GREATEST`, `CAST(NULL AS …)` for typed nulls, `BIGINT` milliseconds for times.
//!
//! A backend type using the macro provides: `fn read_pool(&self) -> &Pool<DB>`, `fn write_pool(&self)
//! -> &Pool<DB>` for single-statement writes, `async fn begin_write(&self) ->
//! Result<sqlx::Transaction<'static, DB>, StoreError>` (SQLite takes the write lock at `BEGIN`),
//! `async fn close_pools(&self)` and `async fn listen_token_changes(&self) ->
//! Result<Option<TokenChanges>, StoreError>`.
//!
//! Fencing pattern: every fenced write is a conditional `UPDATE … WHERE generation = $expected`
//! as the transaction's first write; zero rows affected means someone else won, which is then
//! read back to report `Stale { current_generation }` or `Missing`.

use crate::model::{
    AppKind, Appid, AppidGrant, AuthorizerRecord, AuthorizerStatus, ClientRecord, ComponentAppid,
    Credential, CredentialKind, DirectAccountRecord, KeyCheck, KeyId, NONCE_LEN, NewAccessToken,
    ReadCount, RefreshTokenHistoryEntry, RefreshTokenSource, Sealed, StoredEvent, StoredTicket,
    Timestamp, TokenRecord, TokenSource,
};
use crate::store::{CellKey, SealedCell, StoreError};

// ---------------------------------------------------------------------------------------------
// Conversions

pub(super) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

pub(super) fn component(s: String) -> Result<ComponentAppid, StoreError> {
    ComponentAppid::parse(&s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn appid(s: String) -> Result<Appid, StoreError> {
    Appid::parse(&s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn key_id(s: String) -> Result<KeyId, StoreError> {
    KeyId::parse(&s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn generation(g: i64) -> Result<u64, StoreError> {
    u64::try_from(g).map_err(|_| corrupt("negative generation"))
}

pub(super) fn db_generation(g: u64) -> Result<i64, StoreError> {
    i64::try_from(g).map_err(|_| StoreError::InvalidInput("generation out of range"))
}

pub(super) fn db_count(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::InvalidInput("count out of range"))
}

pub(super) fn sealed(kid: String, nonce: Vec<u8>, ct: Vec<u8>) -> Result<Sealed, StoreError> {
    let nonce: [u8; NONCE_LEN] = nonce
        .try_into()
        .map_err(|_| corrupt("sealed value with a nonce of the wrong length"))?;
    Ok(Sealed {
        key_id: key_id(kid)?,
        nonce,
        ciphertext: ct,
    })
}

pub(super) fn opt_sealed(
    kid: Option<String>,
    nonce: Option<Vec<u8>>,
    ct: Option<Vec<u8>>,
) -> Result<Option<Sealed>, StoreError> {
    match (kid, nonce, ct) {
        (Some(k), Some(n), Some(c)) => sealed(k, n, c).map(Some),
        (None, None, None) => Ok(None),
        _ => Err(corrupt("partially stored sealed value")),
    }
}

pub(super) fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn invalid(e: crate::model::InvalidValue) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Rows

#[derive(sqlx::FromRow)]
pub(super) struct TicketRow {
    pub ticket_kid: Option<String>,
    pub ticket_nonce: Option<Vec<u8>>,
    pub ticket_ct: Option<Vec<u8>>,
    pub ticket_received_at: Option<i64>,
}

impl TicketRow {
    pub fn into_ticket(self) -> Result<Option<StoredTicket>, StoreError> {
        let sealed = opt_sealed(self.ticket_kid, self.ticket_nonce, self.ticket_ct)?;
        Ok(match (sealed, self.ticket_received_at) {
            (Some(sealed), Some(at)) => Some(StoredTicket {
                sealed,
                received_at: ts(at),
            }),
            _ => None,
        })
    }
}

pub(super) const TOKEN_COLUMNS: &str = "component_appid, kind, appid, generation, token_kid, \
     token_nonce, token_ct, issued_at, expires_at, refresh_at, source, updated_at";

#[derive(sqlx::FromRow)]
pub(super) struct TokenRow {
    pub component_appid: String,
    pub kind: String,
    pub appid: String,
    pub generation: i64,
    pub token_kid: Option<String>,
    pub token_nonce: Option<Vec<u8>>,
    pub token_ct: Option<Vec<u8>>,
    pub issued_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub refresh_at: Option<i64>,
    pub source: Option<String>,
    pub updated_at: i64,
}

impl TokenRow {
    pub fn into_record(self) -> Result<TokenRecord, StoreError> {
        let credential = Credential {
            component: component(self.component_appid)?,
            kind: CredentialKind::parse(&self.kind).map_err(invalid)?,
            appid: appid(self.appid)?,
        };
        let token = token_columns(
            opt_sealed(self.token_kid, self.token_nonce, self.token_ct)?,
            self.issued_at,
            self.expires_at,
            self.refresh_at,
            self.source.as_deref(),
        )?;
        Ok(TokenRecord {
            credential,
            generation: generation(self.generation)?,
            token,
            updated_at: ts(self.updated_at),
        })
    }
}

/// The token columns of a credential row, as a token (all set) or none (no token yet).
fn token_columns(
    sealed: Option<Sealed>,
    issued_at: Option<i64>,
    expires_at: Option<i64>,
    refresh_at: Option<i64>,
    source: Option<&str>,
) -> Result<Option<NewAccessToken>, StoreError> {
    let Some(sealed) = sealed else {
        return Ok(None);
    };
    Ok(Some(NewAccessToken {
        sealed,
        issued_at: ts(issued_at.ok_or_else(|| corrupt("token without issued_at"))?),
        expires_at: ts(expires_at.ok_or_else(|| corrupt("token without expires_at"))?),
        refresh_at: refresh_at.map(ts),
        source: TokenSource::parse(source.ok_or_else(|| corrupt("token without source"))?)
            .map_err(invalid)?,
    }))
}

pub(super) const AUTHORIZER_SELECT: &str = "SELECT a.component_appid, a.appid, a.kind, a.status, \
     a.status_reason, a.status_changed_at, a.rt_kid, a.rt_nonce, a.rt_ct, a.secret_kid, \
     a.secret_nonce, a.secret_ct, a.created_at, a.updated_at, \
     COALESCE(t.generation, CAST(0 AS BIGINT)) AS generation, t.token_kid, t.token_nonce, \
     t.token_ct, t.issued_at, t.expires_at, t.refresh_at, t.source \
     FROM authorizers a LEFT JOIN access_tokens t ON t.component_appid = a.component_appid \
     AND t.kind = 'authorizer' AND t.appid = a.appid";

#[derive(sqlx::FromRow)]
pub(super) struct AuthorizerRow {
    pub component_appid: String,
    pub appid: String,
    pub kind: Option<String>,
    pub status: String,
    pub status_reason: Option<String>,
    pub status_changed_at: i64,
    pub rt_kid: String,
    pub rt_nonce: Vec<u8>,
    pub rt_ct: Vec<u8>,
    pub secret_kid: Option<String>,
    pub secret_nonce: Option<Vec<u8>>,
    pub secret_ct: Option<Vec<u8>>,
    pub created_at: i64,
    pub updated_at: i64,
    pub generation: i64,
    pub token_kid: Option<String>,
    pub token_nonce: Option<Vec<u8>>,
    pub token_ct: Option<Vec<u8>>,
    pub issued_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub refresh_at: Option<i64>,
    pub source: Option<String>,
}

impl AuthorizerRow {
    pub fn into_record(self) -> Result<AuthorizerRecord, StoreError> {
        Ok(AuthorizerRecord {
            component: component(self.component_appid)?,
            appid: appid(self.appid)?,
            kind: self
                .kind
                .as_deref()
                .map(AppKind::parse)
                .transpose()
                .map_err(invalid)?,
            status: AuthorizerStatus::parse(&self.status).map_err(invalid)?,
            status_reason: self.status_reason,
            status_changed_at: ts(self.status_changed_at),
            refresh_token: sealed(self.rt_kid, self.rt_nonce, self.rt_ct)?,
            appsecret: opt_sealed(self.secret_kid, self.secret_nonce, self.secret_ct)?,
            generation: generation(self.generation)?,
            token: token_columns(
                opt_sealed(self.token_kid, self.token_nonce, self.token_ct)?,
                self.issued_at,
                self.expires_at,
                self.refresh_at,
                self.source.as_deref(),
            )?,
            created_at: ts(self.created_at),
            updated_at: ts(self.updated_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct HistoryRow {
    pub id: i64,
    pub component_appid: String,
    pub appid: String,
    pub rt_kid: String,
    pub rt_nonce: Vec<u8>,
    pub rt_ct: Vec<u8>,
    pub source: String,
    pub generation: i64,
    pub applied: bool,
    pub received_at: i64,
}

impl HistoryRow {
    pub fn into_entry(self) -> Result<RefreshTokenHistoryEntry, StoreError> {
        Ok(RefreshTokenHistoryEntry {
            id: self.id,
            component: component(self.component_appid)?,
            appid: appid(self.appid)?,
            refresh_token: sealed(self.rt_kid, self.rt_nonce, self.rt_ct)?,
            source: RefreshTokenSource::parse(&self.source).map_err(invalid)?,
            generation: generation(self.generation)?,
            applied: self.applied,
            received_at: ts(self.received_at),
        })
    }
}

pub(super) const DIRECT_SELECT: &str = "SELECT d.component_appid, d.appid, d.kind, d.secret_kid, \
     d.secret_nonce, d.secret_ct, d.created_at, d.updated_at, \
     COALESCE(t.generation, CAST(0 AS BIGINT)) AS generation \
     FROM direct_accounts d LEFT JOIN access_tokens t ON t.component_appid = d.component_appid \
     AND t.kind = 'direct' AND t.appid = d.appid";

#[derive(sqlx::FromRow)]
pub(super) struct DirectRow {
    pub component_appid: String,
    pub appid: String,
    pub kind: String,
    pub secret_kid: String,
    pub secret_nonce: Vec<u8>,
    pub secret_ct: Vec<u8>,
    pub created_at: i64,
    pub updated_at: i64,
    pub generation: i64,
}

impl DirectRow {
    pub fn into_record(self) -> Result<DirectAccountRecord, StoreError> {
        Ok(DirectAccountRecord {
            component: component(self.component_appid)?,
            appid: appid(self.appid)?,
            kind: AppKind::parse(&self.kind).map_err(invalid)?,
            appsecret: sealed(self.secret_kid, self.secret_nonce, self.secret_ct)?,
            generation: generation(self.generation)?,
            created_at: ts(self.created_at),
            updated_at: ts(self.updated_at),
        })
    }
}

pub(super) const EVENT_COLUMNS: &str = "component_appid, dedupe_key, info_type, appid, \
     payload_kid, payload_nonce, payload_ct, received_at, processed_at";

#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    pub component_appid: String,
    pub dedupe_key: String,
    pub info_type: String,
    pub appid: Option<String>,
    pub payload_kid: String,
    pub payload_nonce: Vec<u8>,
    pub payload_ct: Vec<u8>,
    pub received_at: i64,
    pub processed_at: Option<i64>,
}

impl EventRow {
    pub fn into_event(self) -> Result<StoredEvent, StoreError> {
        Ok(StoredEvent {
            component: component(self.component_appid)?,
            dedupe_key: self.dedupe_key,
            info_type: self.info_type,
            appid: self.appid.map(appid).transpose()?,
            payload: sealed(self.payload_kid, self.payload_nonce, self.payload_ct)?,
            received_at: ts(self.received_at),
            processed_at: self.processed_at.map(ts),
        })
    }
}

pub(super) const CLIENT_COLUMNS: &str =
    "id, name, key_hint, grant_appids, admin, created_at, revoked_at";

#[derive(sqlx::FromRow)]
pub(super) struct ClientRow {
    pub id: i64,
    pub name: String,
    pub key_hint: String,
    pub grant_appids: String,
    pub admin: bool,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl ClientRow {
    pub fn into_record(self) -> Result<ClientRecord, StoreError> {
        Ok(ClientRecord {
            id: self.id,
            name: self.name,
            key_hint: self.key_hint,
            grant: AppidGrant::from_stored(&self.grant_appids).map_err(invalid)?,
            admin: self.admin,
            created_at: ts(self.created_at),
            revoked_at: self.revoked_at.map(ts),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct ReadRow {
    pub client_id: i64,
    pub component_appid: String,
    pub appid: String,
    pub reads: i64,
    pub last_read_at: i64,
}

impl ReadRow {
    pub fn into_count(self) -> Result<ReadCount, StoreError> {
        Ok(ReadCount {
            client_id: self.client_id,
            component: component(self.component_appid)?,
            appid: appid(self.appid)?,
            count: u64::try_from(self.reads).map_err(|_| corrupt("negative read count"))?,
            last_read_at: ts(self.last_read_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct KeyCheckRow {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ct: Vec<u8>,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

impl KeyCheckRow {
    pub fn into_check(self) -> Result<KeyCheck, StoreError> {
        Ok(KeyCheck {
            sealed: sealed(self.key_id.clone(), self.nonce, self.ct)?,
            key_id: key_id(self.key_id)?,
            created_at: ts(self.created_at),
            retired_at: self.retired_at.map(ts),
        })
    }
}

/// One sealed value with the columns that locate it; which of `sub`, `sub2` and `row_id` are set
/// depends on the column (see `CELL_QUERIES`).
#[derive(sqlx::FromRow)]
pub(super) struct CellRow {
    pub component_appid: String,
    pub sub: Option<String>,
    pub sub2: Option<String>,
    pub row_id: Option<i64>,
    pub kid: String,
    pub nonce: Vec<u8>,
    pub ct: Vec<u8>,
}

impl CellRow {
    pub fn into_cell(self, column: crate::store::SealedColumn) -> Result<SealedCell, StoreError> {
        use crate::store::SealedColumn as C;
        let c = component(self.component_appid)?;
        let sub = || self.sub.clone().ok_or_else(|| corrupt("cell without key"));
        let key = match column {
            C::Ticket => CellKey::Ticket { component: c },
            C::AccessToken => CellKey::AccessToken {
                credential: Credential {
                    component: c,
                    kind: CredentialKind::parse(&sub()?).map_err(invalid)?,
                    appid: appid(
                        self.sub2
                            .clone()
                            .ok_or_else(|| corrupt("cell without appid"))?,
                    )?,
                },
            },
            C::RefreshToken => CellKey::RefreshToken {
                component: c,
                appid: appid(sub()?)?,
            },
            C::AuthorizerAppsecret => CellKey::AuthorizerAppsecret {
                component: c,
                appid: appid(sub()?)?,
            },
            C::DirectAppsecret => CellKey::DirectAppsecret {
                component: c,
                appid: appid(sub()?)?,
            },
            C::RefreshTokenHistory => CellKey::RefreshTokenHistory {
                id: self
                    .row_id
                    .ok_or_else(|| corrupt("history cell without id"))?,
                component: c,
                appid: appid(sub()?)?,
            },
            C::EventPayload => CellKey::EventPayload {
                component: c,
                dedupe_key: sub()?,
            },
        };
        Ok(SealedCell {
            key,
            sealed: sealed(self.kid, self.nonce, self.ct)?,
        })
    }
}

/// `$1` = the key id to skip, `$2` = limit.
pub(super) fn cell_query(column: crate::store::SealedColumn) -> &'static str {
    use crate::store::SealedColumn as C;
    match column {
        C::Ticket => {
            "SELECT component_appid, CAST(NULL AS TEXT) AS sub, CAST(NULL AS TEXT) AS sub2, \
             CAST(NULL AS BIGINT) AS row_id, ticket_kid AS kid, ticket_nonce AS nonce, \
             ticket_ct AS ct FROM components WHERE ticket_kid IS NOT NULL AND ticket_kid <> $1 \
             LIMIT $2"
        }
        C::AccessToken => {
            "SELECT component_appid, kind AS sub, appid AS sub2, CAST(NULL AS BIGINT) AS row_id, \
             token_kid AS kid, token_nonce AS nonce, token_ct AS ct FROM access_tokens \
             WHERE token_kid IS NOT NULL AND token_kid <> $1 LIMIT $2"
        }
        C::RefreshToken => {
            "SELECT component_appid, appid AS sub, CAST(NULL AS TEXT) AS sub2, \
             CAST(NULL AS BIGINT) AS row_id, rt_kid AS kid, rt_nonce AS nonce, rt_ct AS ct \
             FROM authorizers WHERE rt_kid <> $1 LIMIT $2"
        }
        C::AuthorizerAppsecret => {
            "SELECT component_appid, appid AS sub, CAST(NULL AS TEXT) AS sub2, \
             CAST(NULL AS BIGINT) AS row_id, secret_kid AS kid, secret_nonce AS nonce, \
             secret_ct AS ct FROM authorizers WHERE secret_kid IS NOT NULL AND secret_kid <> $1 \
             LIMIT $2"
        }
        C::DirectAppsecret => {
            "SELECT component_appid, appid AS sub, CAST(NULL AS TEXT) AS sub2, \
             CAST(NULL AS BIGINT) AS row_id, secret_kid AS kid, secret_nonce AS nonce, \
             secret_ct AS ct FROM direct_accounts WHERE secret_kid <> $1 LIMIT $2"
        }
        C::RefreshTokenHistory => {
            "SELECT component_appid, appid AS sub, CAST(NULL AS TEXT) AS sub2, id AS row_id, \
             rt_kid AS kid, rt_nonce AS nonce, rt_ct AS ct FROM refresh_token_history \
             WHERE rt_kid <> $1 ORDER BY id LIMIT $2"
        }
        C::EventPayload => {
            "SELECT component_appid, dedupe_key AS sub, CAST(NULL AS TEXT) AS sub2, \
             CAST(NULL AS BIGINT) AS row_id, payload_kid AS kid, payload_nonce AS nonce, \
             payload_ct AS ct FROM events WHERE payload_kid <> $1 LIMIT $2"
        }
    }
}

pub(super) const COUNT_SEALED_BY_KEY: &str = "SELECT kid, COUNT(*) AS n FROM ( \
     SELECT ticket_kid AS kid FROM components WHERE ticket_kid IS NOT NULL \
     UNION ALL SELECT token_kid FROM access_tokens WHERE token_kid IS NOT NULL \
     UNION ALL SELECT rt_kid FROM authorizers \
     UNION ALL SELECT secret_kid FROM authorizers WHERE secret_kid IS NOT NULL \
     UNION ALL SELECT secret_kid FROM direct_accounts \
     UNION ALL SELECT rt_kid FROM refresh_token_history \
     UNION ALL SELECT payload_kid FROM events \
     ) AS cells GROUP BY kid ORDER BY kid";

/// The order in which a batch's rows are written: the positions of `items` sorted (stably, so
/// writes to one row keep their order) by `key`. Every batched write locks rows in this order, by
/// (component, kind, appid) or the like, whatever order the caller passed, so two concurrent
/// batches on PostgreSQL wait for each other instead of deadlocking (40P01).
pub(super) fn lock_order<'a, T, K: Ord>(items: &'a [T], key: impl Fn(&'a T) -> K) -> Vec<usize> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| key(&items[i]));
    order
}

/// Puts outcomes computed in `order` back in the caller's order.
pub(super) fn in_caller_order<O>(order: &[usize], outcomes: Vec<O>) -> Result<Vec<O>, StoreError> {
    let mut out: Vec<Option<O>> = (0..order.len()).map(|_| None).collect();
    for (&pos, outcome) in order.iter().zip(outcomes) {
        out[pos] = Some(outcome);
    }
    out.into_iter()
        .map(|o| o.ok_or(StoreError::InvalidInput("no outcome for the write")))
        .collect()
}

/// The lock-order key of a conditional re-sealing: table, then the row's key.
pub(super) fn reseal_order_key(u: &crate::store::Reseal) -> (u8, &str, &str, &str, i64) {
    match &u.key {
        CellKey::Ticket { component } => (0, component.as_str(), "", "", 0),
        CellKey::AccessToken { credential } => (
            1,
            credential.component.as_str(),
            credential.kind.as_str(),
            credential.appid.as_str(),
            0,
        ),
        CellKey::RefreshToken { component, appid }
        | CellKey::AuthorizerAppsecret { component, appid } => {
            (2, component.as_str(), appid.as_str(), "", 0)
        }
        CellKey::DirectAppsecret { component, appid } => {
            (3, component.as_str(), appid.as_str(), "", 0)
        }
        CellKey::RefreshTokenHistory { id, .. } => (4, "", "", "", *id),
        CellKey::EventPayload {
            component,
            dedupe_key,
        } => (5, component.as_str(), dedupe_key.as_str(), "", 0),
    }
}

/// Inserts a refresh-token history row. Binds: component, appid, kid, nonce, ct, source,
/// generation, applied, received_at.
pub(super) const INSERT_HISTORY: &str = "INSERT INTO refresh_token_history (component_appid, \
     appid, rt_kid, rt_nonce, rt_ct, source, generation, applied, received_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// The one `impl Store` body, shared by both backends (see the module doc).
macro_rules! impl_store {
    ($store:ident, $db:ty, $backend:expr) => {
        mod shared_impl {
            use super::$store;
            use crate::model::{
                ApiKeyHash, Appid, AuthorizationWrite, AuthorizerCounts, AuthorizerRecord,
                AuthorizerStatus, ClientCreate, ClientRecord, ComponentAppid, Credential,
                CredentialKind, DirectAccountRecord, DirectAccountWrite, EventInsert, Expected,
                ForceBudgetRecord, KeyCheck, KeyId, NewAccessToken, NewClient, NewEvent, ReadCount, RefreshResult,
                RefreshTokenHistoryEntry, RefreshTokenSource, SaveOutcome, Sealed, StatusChange,
                StoredEvent, StoredTicket, TicketOutcome, Timestamp, TokenRecord, UpsertOutcome,
            };
            use crate::store::sql::{
                db_count, db_generation, generation, in_caller_order, key_id, lock_order,
                reseal_order_key, AuthorizerRow, CellRow, ClientRow,
                DirectRow, EventRow, HistoryRow, KeyCheckRow, ReadRow, TicketRow, TokenRow,
                AUTHORIZER_SELECT, CLIENT_COLUMNS, COUNT_SEALED_BY_KEY, DIRECT_SELECT,
                EVENT_COLUMNS, INSERT_HISTORY, TOKEN_COLUMNS,
            };
            use crate::store::{Backend, CellKey, Reseal, SealedCell, SealedColumn, Store, StoreError};

            /// Reads the generation of a credential inside a transaction (after a fenced write
            /// affected nothing), to tell `Stale` from `Missing`.
            async fn current_generation(
                tx: &mut sqlx::Transaction<'static, $db>,
                credential: &Credential,
            ) -> Result<Option<u64>, StoreError> {
                let g: Option<(i64,)> = sqlx::query_as(
                    "SELECT generation FROM access_tokens \
                     WHERE component_appid = $1 AND kind = $2 AND appid = $3",
                )
                .bind(credential.component.as_str())
                .bind(credential.kind.as_str())
                .bind(credential.appid.as_str())
                .fetch_optional(&mut **tx)
                .await?;
                g.map(|(g,)| generation(g)).transpose()
            }

            #[allow(clippy::too_many_arguments)] // one bind per column of the history row
            async fn insert_history(
                tx: &mut sqlx::Transaction<'static, $db>,
                component: &ComponentAppid,
                appid: &Appid,
                rt: &Sealed,
                source: RefreshTokenSource,
                generation: u64,
                applied: bool,
                at: Timestamp,
            ) -> Result<(), StoreError> {
                sqlx::query(INSERT_HISTORY)
                    .bind(component.as_str())
                    .bind(appid.as_str())
                    .bind(rt.key_id.as_str())
                    .bind(&rt.nonce[..])
                    .bind(&rt.ciphertext[..])
                    .bind(source.as_str())
                    .bind(db_generation(generation)?)
                    .bind(applied)
                    .bind(at.as_millis())
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            /// Writes the token columns of a credential row, fenced on `expected`. True if it landed.
            async fn fenced_token_write(
                tx: &mut sqlx::Transaction<'static, $db>,
                credential: &Credential,
                expected: u64,
                token: Option<&NewAccessToken>,
                at: Timestamp,
            ) -> Result<bool, StoreError> {
                let next = db_generation(expected.saturating_add(1))?;
                let expected = db_generation(expected)?;
                let done = match token {
                    Some(t) => sqlx::query(
                        "UPDATE access_tokens SET generation = $4, token_kid = $5, \
                         token_nonce = $6, token_ct = $7, issued_at = $8, expires_at = $9, \
                         refresh_at = $10, source = $11, updated_at = $12 \
                         WHERE component_appid = $1 AND kind = $2 AND appid = $3 \
                         AND generation = $13",
                    )
                    .bind(credential.component.as_str())
                    .bind(credential.kind.as_str())
                    .bind(credential.appid.as_str())
                    .bind(next)
                    .bind(t.sealed.key_id.as_str())
                    .bind(&t.sealed.nonce[..])
                    .bind(&t.sealed.ciphertext[..])
                    .bind(t.issued_at.as_millis())
                    .bind(t.expires_at.as_millis())
                    .bind(t.refresh_at.map(Timestamp::as_millis))
                    .bind(t.source.as_str())
                    .bind(at.as_millis())
                    .bind(expected)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected(),
                    None => sqlx::query(
                        "UPDATE access_tokens SET generation = $4, updated_at = $5 \
                         WHERE component_appid = $1 AND kind = $2 AND appid = $3 \
                         AND generation = $6",
                    )
                    .bind(credential.component.as_str())
                    .bind(credential.kind.as_str())
                    .bind(credential.appid.as_str())
                    .bind(next)
                    .bind(at.as_millis())
                    .bind(expected)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected(),
                };
                Ok(done == 1)
            }

            async fn lost(
                tx: &mut sqlx::Transaction<'static, $db>,
                credential: &Credential,
            ) -> Result<SaveOutcome, StoreError> {
                Ok(match current_generation(tx, credential).await? {
                    Some(current_generation) => SaveOutcome::Stale { current_generation },
                    None => SaveOutcome::Missing,
                })
            }

            /// One authorization write, fenced (see `Store::save_authorizations`).
            async fn save_one_authorization(
                tx: &mut sqlx::Transaction<'static, $db>,
                w: &AuthorizationWrite,
            ) -> Result<SaveOutcome, StoreError> {
                let credential = Credential::authorizer(&w.component, &w.appid);
                let rt = &w.refresh_token;
                let secret = w.appsecret.as_ref();
                let outcome = match w.expected {
                    Expected::Absent => {
                        let n = sqlx::query(
                            "INSERT INTO authorizers (component_appid, appid, kind, \
                             status, status_reason, status_changed_at, rt_kid, rt_nonce, \
                             rt_ct, secret_kid, secret_nonce, secret_ct, created_at, \
                             updated_at) VALUES ($1, $2, $3, $4, NULL, $5, $6, $7, $8, \
                             $9, $10, $11, $5, $5) \
                             ON CONFLICT (component_appid, appid) DO NOTHING",
                        )
                        .bind(w.component.as_str())
                        .bind(w.appid.as_str())
                        .bind(w.kind.map(|k| k.as_str()))
                        .bind(w.status.as_str())
                        .bind(w.at.as_millis())
                        .bind(rt.key_id.as_str())
                        .bind(&rt.nonce[..])
                        .bind(&rt.ciphertext[..])
                        .bind(secret.map(|s| s.key_id.as_str()))
                        .bind(secret.map(|s| &s.nonce[..]))
                        .bind(secret.map(|s| &s.ciphertext[..]))
                        .execute(&mut **tx)
                        .await?
                        .rows_affected();
                        if n == 1 {
                            let t = w.access_token.as_ref();
                            sqlx::query(
                                "INSERT INTO access_tokens (component_appid, kind, \
                                 appid, generation, token_kid, token_nonce, token_ct, \
                                 issued_at, expires_at, refresh_at, source, updated_at) \
                                 VALUES ($1, 'authorizer', $2, 1, $3, $4, $5, $6, $7, \
                                 $8, $9, $10)",
                            )
                            .bind(w.component.as_str())
                            .bind(w.appid.as_str())
                            .bind(t.map(|t| t.sealed.key_id.as_str()))
                            .bind(t.map(|t| &t.sealed.nonce[..]))
                            .bind(t.map(|t| &t.sealed.ciphertext[..]))
                            .bind(t.map(|t| t.issued_at.as_millis()))
                            .bind(t.map(|t| t.expires_at.as_millis()))
                            .bind(t.and_then(|t| t.refresh_at.map(Timestamp::as_millis)))
                            .bind(t.map(|t| t.source.as_str()))
                            .bind(w.at.as_millis())
                            .execute(&mut **tx)
                            .await?;
                            SaveOutcome::Saved { generation: 1 }
                        } else {
                            SaveOutcome::Stale {
                                current_generation: current_generation(
                                    tx,
                                    &credential,
                                )
                                .await?
                                .unwrap_or(0),
                            }
                        }
                    }
                    Expected::Generation(expected) => {
                        let landed = fenced_token_write(
                            tx,
                            &credential,
                            expected,
                            w.access_token.as_ref(),
                            w.at,
                        )
                        .await?;
                        if landed {
                            sqlx::query(
                                "UPDATE authorizers SET kind = COALESCE($3, kind), \
                                 status_changed_at = CASE WHEN status <> $4 THEN $5 \
                                 ELSE status_changed_at END, status = $4, \
                                 status_reason = NULL, rt_kid = $6, rt_nonce = $7, \
                                 rt_ct = $8, secret_kid = COALESCE($9, secret_kid), \
                                 secret_nonce = COALESCE($10, secret_nonce), \
                                 secret_ct = COALESCE($11, secret_ct), updated_at = $5 \
                                 WHERE component_appid = $1 AND appid = $2",
                            )
                            .bind(w.component.as_str())
                            .bind(w.appid.as_str())
                            .bind(w.kind.map(|k| k.as_str()))
                            .bind(w.status.as_str())
                            .bind(w.at.as_millis())
                            .bind(rt.key_id.as_str())
                            .bind(&rt.nonce[..])
                            .bind(&rt.ciphertext[..])
                            .bind(secret.map(|s| s.key_id.as_str()))
                            .bind(secret.map(|s| &s.nonce[..]))
                            .bind(secret.map(|s| &s.ciphertext[..]))
                            .execute(&mut **tx)
                            .await?;
                            SaveOutcome::Saved {
                                generation: expected.saturating_add(1),
                            }
                        } else {
                            lost(tx, &credential).await?
                        }
                    }
                };
                let (g, applied) = match (outcome, w.expected) {
                    (SaveOutcome::Saved { generation }, _) => (generation, true),
                    (_, Expected::Generation(g)) => (g, false),
                    (_, Expected::Absent) => (0, false),
                };
                insert_history(
                    tx,
                    &w.component,
                    &w.appid,
                    rt,
                    w.source,
                    g,
                    applied,
                    w.at,
                )
                .await?;
                Ok(outcome)
            }

            /// A run of authorizer creations (expected absent, distinct appids): three multi-row
            /// statements instead of three per row, with the same outcomes as one by one.
            async fn create_authorizers(
                tx: &mut sqlx::Transaction<'static, $db>,
                run: &[&AuthorizationWrite],
            ) -> Result<Vec<SaveOutcome>, StoreError> {
                let mut outcomes = Vec::with_capacity(run.len());
                // At most 14 binds per row: far below both backends' parameter limits.
                for chunk in run.chunks(500) {
                    let mut qb: sqlx::QueryBuilder<'_, $db> = sqlx::QueryBuilder::new(
                        "INSERT INTO authorizers (component_appid, appid, kind, status, \
                         status_reason, status_changed_at, rt_kid, rt_nonce, rt_ct, secret_kid, \
                         secret_nonce, secret_ct, created_at, updated_at) ",
                    );
                    qb.push_values(chunk, |mut b, w| {
                        let secret = w.appsecret.as_ref();
                        b.push_bind(w.component.as_str())
                            .push_bind(w.appid.as_str())
                            .push_bind(w.kind.map(|k| k.as_str()))
                            .push_bind(w.status.as_str())
                            .push_bind(None::<&str>)
                            .push_bind(w.at.as_millis())
                            .push_bind(w.refresh_token.key_id.as_str())
                            .push_bind(&w.refresh_token.nonce[..])
                            .push_bind(&w.refresh_token.ciphertext[..])
                            .push_bind(secret.map(|s| s.key_id.as_str()))
                            .push_bind(secret.map(|s| &s.nonce[..]))
                            .push_bind(secret.map(|s| &s.ciphertext[..]))
                            .push_bind(w.at.as_millis())
                            .push_bind(w.at.as_millis());
                    });
                    qb.push(
                        " ON CONFLICT (component_appid, appid) DO NOTHING \
                         RETURNING component_appid, appid",
                    );
                    let inserted: std::collections::HashSet<(String, String)> = qb
                        .build_query_as::<(String, String)>()
                        .fetch_all(&mut **tx)
                        .await?
                        .into_iter()
                        .collect();
                    let landed: Vec<bool> = chunk
                        .iter()
                        .map(|w| {
                            inserted.contains(&(
                                w.component.as_str().to_owned(),
                                w.appid.as_str().to_owned(),
                            ))
                        })
                        .collect();
                    let created: Vec<&AuthorizationWrite> = chunk
                        .iter()
                        .zip(&landed)
                        .filter(|(_, l)| **l)
                        .map(|(w, _)| *w)
                        .collect();
                    if !created.is_empty() {
                        let mut qb: sqlx::QueryBuilder<'_, $db> = sqlx::QueryBuilder::new(
                            "INSERT INTO access_tokens (component_appid, kind, appid, \
                             generation, token_kid, token_nonce, token_ct, issued_at, \
                             expires_at, refresh_at, source, updated_at) ",
                        );
                        qb.push_values(&created, |mut b, w| {
                            let t = w.access_token.as_ref();
                            b.push_bind(w.component.as_str())
                                .push_bind("authorizer")
                                .push_bind(w.appid.as_str())
                                .push_bind(1_i64)
                                .push_bind(t.map(|t| t.sealed.key_id.as_str()))
                                .push_bind(t.map(|t| &t.sealed.nonce[..]))
                                .push_bind(t.map(|t| &t.sealed.ciphertext[..]))
                                .push_bind(t.map(|t| t.issued_at.as_millis()))
                                .push_bind(t.map(|t| t.expires_at.as_millis()))
                                .push_bind(t.and_then(|t| t.refresh_at.map(Timestamp::as_millis)))
                                .push_bind(t.map(|t| t.source.as_str()))
                                .push_bind(w.at.as_millis());
                        });
                        qb.build().execute(&mut **tx).await?;
                    }
                    let mut qb: sqlx::QueryBuilder<'_, $db> = sqlx::QueryBuilder::new(
                        "INSERT INTO refresh_token_history (component_appid, appid, rt_kid, \
                         rt_nonce, rt_ct, source, generation, applied, received_at) ",
                    );
                    qb.push_values(chunk.iter().zip(&landed), |mut b, (w, landed)| {
                        b.push_bind(w.component.as_str())
                            .push_bind(w.appid.as_str())
                            .push_bind(w.refresh_token.key_id.as_str())
                            .push_bind(&w.refresh_token.nonce[..])
                            .push_bind(&w.refresh_token.ciphertext[..])
                            .push_bind(w.source.as_str())
                            .push_bind(i64::from(*landed))
                            .push_bind(*landed)
                            .push_bind(w.at.as_millis());
                    });
                    qb.build().execute(&mut **tx).await?;
                    for (w, landed) in chunk.iter().zip(landed) {
                        outcomes.push(if landed {
                            SaveOutcome::Saved { generation: 1 }
                        } else {
                            let credential = Credential::authorizer(&w.component, &w.appid);
                            SaveOutcome::Stale {
                                current_generation: current_generation(tx, &credential)
                                    .await?
                                    .unwrap_or(0),
                            }
                        });
                    }
                }
                Ok(outcomes)
            }

            #[async_trait::async_trait]
            impl Store for $store {
                fn backend(&self) -> Backend {
                    $backend
                }

                async fn ping(&self) -> Result<(), StoreError> {
                    sqlx::query("SELECT 1").execute(self.read_pool()).await?;
                    Ok(())
                }

                async fn close(&self) {
                    self.close_pools().await
                }

                async fn ensure_component(
                    &self,
                    component: &ComponentAppid,
                    at: Timestamp,
                ) -> Result<(), StoreError> {
                    let mut tx = self.begin_write().await?;
                    sqlx::query(
                        "INSERT INTO components (component_appid, created_at) VALUES ($1, $2) \
                         ON CONFLICT (component_appid) DO NOTHING",
                    )
                    .bind(component.as_str())
                    .bind(at.as_millis())
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO access_tokens (component_appid, kind, appid, generation, \
                         updated_at) VALUES ($1, 'component', $1, 0, $2) \
                         ON CONFLICT (component_appid, kind, appid) DO NOTHING",
                    )
                    .bind(component.as_str())
                    .bind(at.as_millis())
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn list_components(&self) -> Result<Vec<ComponentAppid>, StoreError> {
                    let rows: Vec<(String,)> = sqlx::query_as(
                        "SELECT component_appid FROM components ORDER BY component_appid",
                    )
                    .fetch_all(self.read_pool())
                    .await?;
                    rows.into_iter()
                        .map(|(c,)| crate::store::sql::component(c))
                        .collect()
                }

                async fn record_ticket(
                    &self,
                    component: &ComponentAppid,
                    ticket: &Sealed,
                    received_at: Timestamp,
                ) -> Result<TicketOutcome, StoreError> {
                    let mut tx = self.begin_write().await?;
                    let n = sqlx::query(
                        "UPDATE components SET ticket_kid = $2, ticket_nonce = $3, \
                         ticket_ct = $4, ticket_received_at = $5 WHERE component_appid = $1 \
                         AND (ticket_received_at IS NULL OR ticket_received_at <= $5)",
                    )
                    .bind(component.as_str())
                    .bind(ticket.key_id.as_str())
                    .bind(&ticket.nonce[..])
                    .bind(&ticket.ciphertext[..])
                    .bind(received_at.as_millis())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n == 1 {
                        tx.commit().await?;
                        return Ok(TicketOutcome::Stored);
                    }
                    let exists: Option<(String,)> = sqlx::query_as(
                        "SELECT component_appid FROM components WHERE component_appid = $1",
                    )
                    .bind(component.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                    tx.rollback().await?;
                    match exists {
                        Some(_) => Ok(TicketOutcome::Older),
                        None => Err(StoreError::InvalidInput(
                            "unknown component (ensure_component first)",
                        )),
                    }
                }

                async fn latest_ticket(
                    &self,
                    component: &ComponentAppid,
                ) -> Result<Option<StoredTicket>, StoreError> {
                    let row: Option<TicketRow> = sqlx::query_as(
                        "SELECT ticket_kid, ticket_nonce, ticket_ct, ticket_received_at \
                         FROM components WHERE component_appid = $1",
                    )
                    .bind(component.as_str())
                    .fetch_optional(self.read_pool())
                    .await?;
                    match row {
                        Some(r) => r.into_ticket(),
                        None => Ok(None),
                    }
                }

                async fn get_token(
                    &self,
                    credential: &Credential,
                ) -> Result<Option<TokenRecord>, StoreError> {
                    let sql = format!(
                        "SELECT {TOKEN_COLUMNS} FROM access_tokens \
                         WHERE component_appid = $1 AND kind = $2 AND appid = $3"
                    );
                    let row: Option<TokenRow> = sqlx::query_as(&sql)
                        .bind(credential.component.as_str())
                        .bind(credential.kind.as_str())
                        .bind(credential.appid.as_str())
                        .fetch_optional(self.read_pool())
                        .await?;
                    row.map(TokenRow::into_record).transpose()
                }

                async fn load_tokens(
                    &self,
                    component: Option<&ComponentAppid>,
                    kind: Option<CredentialKind>,
                ) -> Result<Vec<TokenRecord>, StoreError> {
                    let sql = format!(
                        "SELECT {TOKEN_COLUMNS} FROM access_tokens \
                         WHERE ($1 IS NULL OR component_appid = $1) AND ($2 IS NULL OR kind = $2) \
                         ORDER BY component_appid, kind, appid"
                    );
                    let rows: Vec<TokenRow> = sqlx::query_as(&sql)
                        .bind(component.map(ComponentAppid::as_str))
                        .bind(kind.map(CredentialKind::as_str))
                        .fetch_all(self.read_pool())
                        .await?;
                    rows.into_iter().map(TokenRow::into_record).collect()
                }

                async fn save_refresh_results(
                    &self,
                    results: &[RefreshResult],
                ) -> Result<Vec<SaveOutcome>, StoreError> {
                    for r in results {
                        if r.access_token.sealed.is_empty_plaintext() {
                            return Err(StoreError::InvalidInput("empty access token"));
                        }
                        if let Some(rt) = &r.refresh_token {
                            if r.credential.kind != CredentialKind::Authorizer {
                                return Err(StoreError::InvalidInput(
                                    "only authorizers have refresh tokens",
                                ));
                            }
                            if rt.is_empty_plaintext() {
                                return Err(StoreError::InvalidInput("empty refresh token"));
                            }
                        }
                    }
                    let order = lock_order(results, |r| {
                        (
                            r.credential.component.as_str(),
                            r.credential.kind.as_str(),
                            r.credential.appid.as_str(),
                        )
                    });
                    let mut tx = self.begin_write().await?;
                    let mut outcomes = Vec::with_capacity(results.len());
                    for r in order.iter().map(|&i| &results[i]) {
                        let c = &r.credential;
                        let landed = fenced_token_write(
                            &mut tx,
                            c,
                            r.expected_generation,
                            Some(&r.access_token),
                            r.at,
                        )
                        .await?;
                        let outcome = if landed {
                            SaveOutcome::Saved {
                                generation: r.expected_generation.saturating_add(1),
                            }
                        } else {
                            lost(&mut tx, c).await?
                        };
                        if let Some(rt) = &r.refresh_token {
                            if landed {
                                sqlx::query(
                                    "UPDATE authorizers SET rt_kid = $3, rt_nonce = $4, \
                                     rt_ct = $5, status_changed_at = CASE WHEN status <> \
                                     'active' THEN $6 ELSE status_changed_at END, \
                                     status = 'active', status_reason = NULL, updated_at = $6 \
                                     WHERE component_appid = $1 AND appid = $2",
                                )
                                .bind(c.component.as_str())
                                .bind(c.appid.as_str())
                                .bind(rt.key_id.as_str())
                                .bind(&rt.nonce[..])
                                .bind(&rt.ciphertext[..])
                                .bind(r.at.as_millis())
                                .execute(&mut *tx)
                                .await?;
                            }
                            // Kept even when the write lost: never lose a refresh token.
                            let g = match outcome {
                                SaveOutcome::Saved { generation } => generation,
                                _ => r.expected_generation,
                            };
                            insert_history(
                                &mut tx,
                                &c.component,
                                &c.appid,
                                rt,
                                RefreshTokenSource::Refresh,
                                g,
                                landed,
                                r.at,
                            )
                            .await?;
                        }
                        outcomes.push(outcome);
                    }
                    tx.commit().await?;
                    in_caller_order(&order, outcomes)
                }

                async fn save_authorizations(
                    &self,
                    writes: &[AuthorizationWrite],
                ) -> Result<Vec<SaveOutcome>, StoreError> {
                    for w in writes {
                        if w.refresh_token.is_empty_plaintext() {
                            return Err(StoreError::InvalidInput("empty refresh token"));
                        }
                        if w.access_token.as_ref().is_some_and(|t| t.sealed.is_empty_plaintext())
                        {
                            return Err(StoreError::InvalidInput("empty access token"));
                        }
                    }
                    let order = lock_order(writes, |w| {
                        (w.component.as_str(), "authorizer", w.appid.as_str())
                    });
                    let sorted: Vec<&AuthorizationWrite> =
                        order.iter().map(|&i| &writes[i]).collect();
                    let mut tx = self.begin_write().await?;
                    let mut outcomes = Vec::with_capacity(writes.len());
                    let mut i = 0;
                    while i < sorted.len() {
                        // Consecutive creations of distinct authorizers do not depend on each
                        // other, so they are written together; anything else goes in order.
                        let mut seen = std::collections::HashSet::new();
                        let run = sorted[i..]
                            .iter()
                            .take_while(|w| {
                                w.expected == Expected::Absent
                                    && seen.insert((&w.component, &w.appid))
                            })
                            .count();
                        if run >= 2 {
                            outcomes
                                .extend(create_authorizers(&mut tx, &sorted[i..i + run]).await?);
                            i += run;
                        } else {
                            outcomes.push(save_one_authorization(&mut tx, sorted[i]).await?);
                            i += 1;
                        }
                    }
                    tx.commit().await?;
                    in_caller_order(&order, outcomes)
                }

                async fn get_authorizer(
                    &self,
                    component: &ComponentAppid,
                    appid: &Appid,
                ) -> Result<Option<AuthorizerRecord>, StoreError> {
                    let sql = format!(
                        "{AUTHORIZER_SELECT} WHERE a.component_appid = $1 AND a.appid = $2"
                    );
                    let row: Option<AuthorizerRow> = sqlx::query_as(&sql)
                        .bind(component.as_str())
                        .bind(appid.as_str())
                        .fetch_optional(self.read_pool())
                        .await?;
                    row.map(AuthorizerRow::into_record).transpose()
                }

                async fn list_authorizers(
                    &self,
                    component: &ComponentAppid,
                    after: Option<&Appid>,
                    limit: u32,
                ) -> Result<Vec<AuthorizerRecord>, StoreError> {
                    let sql = format!(
                        "{AUTHORIZER_SELECT} WHERE a.component_appid = $1 \
                         AND ($2 IS NULL OR a.appid > $2) ORDER BY a.appid LIMIT $3"
                    );
                    let rows: Vec<AuthorizerRow> = sqlx::query_as(&sql)
                        .bind(component.as_str())
                        .bind(after.map(Appid::as_str))
                        .bind(i64::from(limit))
                        .fetch_all(self.read_pool())
                        .await?;
                    rows.into_iter().map(AuthorizerRow::into_record).collect()
                }

                async fn load_authorizers(
                    &self,
                    component: Option<&ComponentAppid>,
                ) -> Result<Vec<AuthorizerRecord>, StoreError> {
                    let sql = format!(
                        "{AUTHORIZER_SELECT} WHERE ($1 IS NULL OR a.component_appid = $1) \
                         ORDER BY a.component_appid, a.appid"
                    );
                    let rows: Vec<AuthorizerRow> = sqlx::query_as(&sql)
                        .bind(component.map(ComponentAppid::as_str))
                        .fetch_all(self.read_pool())
                        .await?;
                    rows.into_iter().map(AuthorizerRow::into_record).collect()
                }

                async fn count_authorizers(
                    &self,
                    component: &ComponentAppid,
                ) -> Result<AuthorizerCounts, StoreError> {
                    let rows: Vec<(String, i64)> = sqlx::query_as(
                        "SELECT status, COUNT(*) FROM authorizers WHERE component_appid = $1 \
                         GROUP BY status",
                    )
                    .bind(component.as_str())
                    .fetch_all(self.read_pool())
                    .await?;
                    let mut counts = AuthorizerCounts::default();
                    for (status, n) in rows {
                        let n = u64::try_from(n).unwrap_or(0);
                        match AuthorizerStatus::parse(&status)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?
                        {
                            AuthorizerStatus::Active => counts.active = n,
                            AuthorizerStatus::NeedsReauth => counts.needs_reauth = n,
                            AuthorizerStatus::Revoked => counts.revoked = n,
                        }
                    }
                    Ok(counts)
                }

                async fn set_authorizer_status(
                    &self,
                    change: &StatusChange,
                ) -> Result<SaveOutcome, StoreError> {
                    let mut tx = self.begin_write().await?;
                    // Bump the credential's generation (the fence and the row lock) only if the
                    // status actually changes, then change the status.
                    let bumped: Option<(i64,)> = sqlx::query_as(
                        "UPDATE access_tokens SET generation = generation + 1, updated_at = $4 \
                         WHERE component_appid = $1 AND kind = 'authorizer' AND appid = $2 \
                         AND ($5 IS NULL OR generation = $5) \
                         AND EXISTS (SELECT 1 FROM authorizers a \
                           WHERE a.component_appid = $1 AND a.appid = $2 AND a.status <> $3) \
                         RETURNING generation",
                    )
                    .bind(change.component.as_str())
                    .bind(change.appid.as_str())
                    .bind(change.status.as_str())
                    .bind(change.at.as_millis())
                    .bind(change.expected_generation.map(db_generation).transpose()?)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some((g,)) = bumped {
                        sqlx::query(
                            "UPDATE authorizers SET status = $3, status_reason = $4, \
                             status_changed_at = $5, updated_at = $5 \
                             WHERE component_appid = $1 AND appid = $2",
                        )
                        .bind(change.component.as_str())
                        .bind(change.appid.as_str())
                        .bind(change.status.as_str())
                        .bind(change.reason.as_deref())
                        .bind(change.at.as_millis())
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await?;
                        return Ok(SaveOutcome::Saved {
                            generation: generation(g)?,
                        });
                    }
                    let credential = Credential::authorizer(&change.component, &change.appid);
                    let current = current_generation(&mut tx, &credential).await?;
                    tx.rollback().await?;
                    Ok(match (current, change.expected_generation) {
                        (None, _) => SaveOutcome::Missing,
                        (Some(current_generation), Some(expected))
                            if current_generation != expected =>
                        {
                            SaveOutcome::Stale { current_generation }
                        }
                        // Already in that status: nothing to do.
                        (Some(generation), _) => SaveOutcome::Saved { generation },
                    })
                }

                async fn set_authorizer_appsecret(
                    &self,
                    component: &ComponentAppid,
                    appid: &Appid,
                    appsecret: Option<&Sealed>,
                    at: Timestamp,
                ) -> Result<bool, StoreError> {
                    let n = sqlx::query(
                        "UPDATE authorizers SET secret_kid = $3, secret_nonce = $4, \
                         secret_ct = $5, updated_at = $6 WHERE component_appid = $1 AND appid = $2",
                    )
                    .bind(component.as_str())
                    .bind(appid.as_str())
                    .bind(appsecret.map(|s| s.key_id.as_str()))
                    .bind(appsecret.map(|s| &s.nonce[..]))
                    .bind(appsecret.map(|s| &s.ciphertext[..]))
                    .bind(at.as_millis())
                    .execute(self.write_pool())
                    .await?
                    .rows_affected();
                    Ok(n == 1)
                }

                async fn refresh_token_history(
                    &self,
                    component: &ComponentAppid,
                    appid: &Appid,
                ) -> Result<Vec<RefreshTokenHistoryEntry>, StoreError> {
                    let rows: Vec<HistoryRow> = sqlx::query_as(
                        "SELECT id, component_appid, appid, rt_kid, rt_nonce, rt_ct, source, \
                         generation, applied, received_at FROM refresh_token_history \
                         WHERE component_appid = $1 AND appid = $2 ORDER BY id",
                    )
                    .bind(component.as_str())
                    .bind(appid.as_str())
                    .fetch_all(self.read_pool())
                    .await?;
                    rows.into_iter().map(HistoryRow::into_entry).collect()
                }

                async fn count_refresh_token_history(
                    &self,
                    component: Option<&ComponentAppid>,
                ) -> Result<u64, StoreError> {
                    let (n,): (i64,) = sqlx::query_as(
                        "SELECT COUNT(*) FROM refresh_token_history \
                         WHERE ($1 IS NULL OR component_appid = $1)",
                    )
                    .bind(component.map(ComponentAppid::as_str))
                    .fetch_one(self.read_pool())
                    .await?;
                    Ok(u64::try_from(n).unwrap_or(0))
                }

                async fn upsert_direct_account(
                    &self,
                    account: &DirectAccountWrite,
                ) -> Result<UpsertOutcome, StoreError> {
                    let s = &account.appsecret;
                    let mut tx = self.begin_write().await?;
                    let n = sqlx::query(
                        "INSERT INTO direct_accounts (component_appid, appid, kind, secret_kid, \
                         secret_nonce, secret_ct, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
                         ON CONFLICT (component_appid, appid) DO NOTHING",
                    )
                    .bind(account.component.as_str())
                    .bind(account.appid.as_str())
                    .bind(account.kind.as_str())
                    .bind(s.key_id.as_str())
                    .bind(&s.nonce[..])
                    .bind(&s.ciphertext[..])
                    .bind(account.at.as_millis())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    let outcome = if n == 1 {
                        // An account removed before continues after its old generation.
                        sqlx::query(
                            "INSERT INTO access_tokens (component_appid, kind, appid, \
                             generation, updated_at) VALUES ($1, 'direct', $2, \
                             COALESCE((SELECT generation + 1 FROM credential_tombstones \
                             WHERE component_appid = $1 AND kind = 'direct' AND appid = $2), \
                             CAST(0 AS BIGINT)), $3) \
                             ON CONFLICT (component_appid, kind, appid) DO NOTHING",
                        )
                        .bind(account.component.as_str())
                        .bind(account.appid.as_str())
                        .bind(account.at.as_millis())
                        .execute(&mut *tx)
                        .await?;
                        UpsertOutcome::Created
                    } else {
                        sqlx::query(
                            "UPDATE direct_accounts SET kind = $3, secret_kid = $4, \
                             secret_nonce = $5, secret_ct = $6, updated_at = $7 \
                             WHERE component_appid = $1 AND appid = $2",
                        )
                        .bind(account.component.as_str())
                        .bind(account.appid.as_str())
                        .bind(account.kind.as_str())
                        .bind(s.key_id.as_str())
                        .bind(&s.nonce[..])
                        .bind(&s.ciphertext[..])
                        .bind(account.at.as_millis())
                        .execute(&mut *tx)
                        .await?;
                        UpsertOutcome::Updated
                    };
                    tx.commit().await?;
                    Ok(outcome)
                }

                async fn get_direct_account(
                    &self,
                    component: &ComponentAppid,
                    appid: &Appid,
                ) -> Result<Option<DirectAccountRecord>, StoreError> {
                    let sql =
                        format!("{DIRECT_SELECT} WHERE d.component_appid = $1 AND d.appid = $2");
                    let row: Option<DirectRow> = sqlx::query_as(&sql)
                        .bind(component.as_str())
                        .bind(appid.as_str())
                        .fetch_optional(self.read_pool())
                        .await?;
                    row.map(DirectRow::into_record).transpose()
                }

                async fn list_direct_accounts(
                    &self,
                    component: Option<&ComponentAppid>,
                ) -> Result<Vec<DirectAccountRecord>, StoreError> {
                    let sql = format!(
                        "{DIRECT_SELECT} WHERE ($1 IS NULL OR d.component_appid = $1) \
                         ORDER BY d.component_appid, d.appid"
                    );
                    let rows: Vec<DirectRow> = sqlx::query_as(&sql)
                        .bind(component.map(ComponentAppid::as_str))
                        .fetch_all(self.read_pool())
                        .await?;
                    rows.into_iter().map(DirectRow::into_record).collect()
                }

                async fn remove_direct_account(
                    &self,
                    component: &ComponentAppid,
                    appid: &Appid,
                ) -> Result<bool, StoreError> {
                    let mut tx = self.begin_write().await?;
                    // Keep the generation (see credential_tombstones), so generations never
                    // repeat across a removal and re-adding.
                    sqlx::query(
                        "INSERT INTO credential_tombstones (component_appid, kind, appid, \
                         generation) SELECT component_appid, kind, appid, generation \
                         FROM access_tokens WHERE component_appid = $1 AND kind = 'direct' \
                         AND appid = $2 \
                         ON CONFLICT (component_appid, kind, appid) \
                         DO UPDATE SET generation = excluded.generation",
                    )
                    .bind(component.as_str())
                    .bind(appid.as_str())
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "DELETE FROM access_tokens WHERE component_appid = $1 \
                         AND kind = 'direct' AND appid = $2",
                    )
                    .bind(component.as_str())
                    .bind(appid.as_str())
                    .execute(&mut *tx)
                    .await?;
                    let n = sqlx::query(
                        "DELETE FROM direct_accounts WHERE component_appid = $1 AND appid = $2",
                    )
                    .bind(component.as_str())
                    .bind(appid.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    tx.commit().await?;
                    Ok(n == 1)
                }

                async fn record_event(&self, event: &NewEvent) -> Result<EventInsert, StoreError> {
                    let p = &event.payload;
                    let n = sqlx::query(
                        "INSERT INTO events (component_appid, dedupe_key, info_type, appid, \
                         payload_kid, payload_nonce, payload_ct, received_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                         ON CONFLICT (component_appid, dedupe_key) DO NOTHING",
                    )
                    .bind(event.component.as_str())
                    .bind(event.dedupe_key.as_str())
                    .bind(event.info_type.as_str())
                    .bind(event.appid.as_ref().map(Appid::as_str))
                    .bind(p.key_id.as_str())
                    .bind(&p.nonce[..])
                    .bind(&p.ciphertext[..])
                    .bind(event.received_at.as_millis())
                    .execute(self.write_pool())
                    .await?
                    .rows_affected();
                    Ok(if n == 1 {
                        EventInsert::Inserted
                    } else {
                        EventInsert::Duplicate
                    })
                }

                async fn unprocessed_events(
                    &self,
                    component: Option<&ComponentAppid>,
                    limit: u32,
                ) -> Result<Vec<StoredEvent>, StoreError> {
                    let sql = format!(
                        "SELECT {EVENT_COLUMNS} FROM events WHERE processed_at IS NULL \
                         AND ($1 IS NULL OR component_appid = $1) \
                         ORDER BY received_at, component_appid, dedupe_key LIMIT $2"
                    );
                    let rows: Vec<EventRow> = sqlx::query_as(&sql)
                        .bind(component.map(ComponentAppid::as_str))
                        .bind(i64::from(limit))
                        .fetch_all(self.read_pool())
                        .await?;
                    rows.into_iter().map(EventRow::into_event).collect()
                }

                async fn mark_event_processed(
                    &self,
                    component: &ComponentAppid,
                    dedupe_key: &str,
                    at: Timestamp,
                ) -> Result<bool, StoreError> {
                    let n = sqlx::query(
                        "UPDATE events SET processed_at = $3 WHERE component_appid = $1 \
                         AND dedupe_key = $2 AND processed_at IS NULL",
                    )
                    .bind(component.as_str())
                    .bind(dedupe_key)
                    .bind(at.as_millis())
                    .execute(self.write_pool())
                    .await?
                    .rows_affected();
                    Ok(n == 1)
                }

                async fn event_unprocessed(
                    &self,
                    component: &ComponentAppid,
                    dedupe_key: &str,
                ) -> Result<bool, StoreError> {
                    let row: Option<(i64,)> = sqlx::query_as(
                        "SELECT CAST(1 AS BIGINT) FROM events WHERE component_appid = $1 AND dedupe_key = $2 \
                         AND processed_at IS NULL",
                    )
                    .bind(component.as_str())
                    .bind(dedupe_key)
                    .fetch_optional(self.write_pool())
                    .await?;
                    Ok(row.is_some())
                }

                async fn record_exchanged_code(
                    &self,
                    component: &ComponentAppid,
                    code_digest: &str,
                    appid: &Appid,
                    at: Timestamp,
                    forget_before: Timestamp,
                ) -> Result<(), StoreError> {
                    sqlx::query("DELETE FROM exchanged_codes WHERE exchanged_at < $1")
                        .bind(forget_before.as_millis())
                        .execute(self.write_pool())
                        .await?;
                    sqlx::query(
                        "INSERT INTO exchanged_codes (component_appid, code_digest, appid, exchanged_at) \
                         VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (component_appid, code_digest) DO UPDATE SET \
                         appid = excluded.appid, exchanged_at = excluded.exchanged_at",
                    )
                    .bind(component.as_str())
                    .bind(code_digest)
                    .bind(appid.as_str())
                    .bind(at.as_millis())
                    .execute(self.write_pool())
                    .await?;
                    Ok(())
                }

                async fn exchanged_code(
                    &self,
                    component: &ComponentAppid,
                    code_digest: &str,
                ) -> Result<Option<Appid>, StoreError> {
                    let row: Option<(String,)> = sqlx::query_as(
                        "SELECT appid FROM exchanged_codes WHERE component_appid = $1 AND code_digest = $2",
                    )
                    .bind(component.as_str())
                    .bind(code_digest)
                    .fetch_optional(self.write_pool())
                    .await?;
                    row.map(|(a,)| crate::store::sql::appid(a)).transpose()
                }

                async fn load_force_budgets(&self) -> Result<Vec<ForceBudgetRecord>, StoreError> {
                    let rows: Vec<(String, String, String, i64, i64, Option<i64>)> =
                        sqlx::query_as(
                            "SELECT component_appid, kind, appid, day_start, used, last_at \
                             FROM force_refresh_budgets \
                             ORDER BY component_appid, kind, appid",
                        )
                        .fetch_all(self.read_pool())
                        .await?;
                    rows.into_iter()
                        .map(|(c, kind, a, day_start, used, last)| {
                            Ok(ForceBudgetRecord {
                                credential: Credential {
                                    component: crate::store::sql::component(c)?,
                                    kind: CredentialKind::parse(&kind).map_err(|e| {
                                        StoreError::Corrupt(e.to_string())
                                    })?,
                                    appid: crate::store::sql::appid(a)?,
                                },
                                day_start: Timestamp::from_millis(day_start),
                                used: u32::try_from(used).map_err(|_| {
                                    crate::store::sql::corrupt("force budget count out of range")
                                })?,
                                last: last.map(Timestamp::from_millis),
                            })
                        })
                        .collect()
                }

                async fn save_force_budget(
                    &self,
                    budget: &ForceBudgetRecord,
                ) -> Result<(), StoreError> {
                    let c = &budget.credential;
                    sqlx::query(
                        "INSERT INTO force_refresh_budgets (component_appid, kind, appid, \
                         day_start, used, last_at) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (component_appid, kind, appid) DO UPDATE SET \
                         day_start = $4, used = $5, last_at = $6",
                    )
                    .bind(c.component.as_str())
                    .bind(c.kind.as_str())
                    .bind(c.appid.as_str())
                    .bind(budget.day_start.as_millis())
                    .bind(i64::from(budget.used))
                    .bind(budget.last.map(Timestamp::as_millis))
                    .execute(self.write_pool())
                    .await?;
                    Ok(())
                }

                async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError> {
                    Ok(sqlx::query(
                        "DELETE FROM events WHERE processed_at IS NOT NULL AND received_at < $1",
                    )
                    .bind(before.as_millis())
                    .execute(self.write_pool())
                    .await?
                    .rows_affected())
                }

                async fn create_client(
                    &self,
                    client: &NewClient,
                ) -> Result<ClientCreate, StoreError> {
                    let id: Option<(i64,)> = sqlx::query_as(
                        "INSERT INTO clients (name, key_hash, key_hint, grant_appids, admin, \
                         created_at) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (name) DO NOTHING RETURNING id",
                    )
                    .bind(client.name.as_str())
                    .bind(&client.key_hash.0[..])
                    .bind(client.key_hint.as_str())
                    .bind(client.grant.to_stored())
                    .bind(client.admin)
                    .bind(client.created_at.as_millis())
                    .fetch_optional(self.write_pool())
                    .await?;
                    Ok(match id {
                        Some((id,)) => ClientCreate::Created(ClientRecord {
                            id,
                            name: client.name.clone(),
                            key_hint: client.key_hint.clone(),
                            grant: client.grant.clone(),
                            admin: client.admin,
                            created_at: client.created_at,
                            revoked_at: None,
                        }),
                        None => ClientCreate::NameTaken,
                    })
                }

                async fn find_client_by_key(
                    &self,
                    hash: &ApiKeyHash,
                ) -> Result<Option<ClientRecord>, StoreError> {
                    let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE key_hash = $1");
                    let row: Option<ClientRow> = sqlx::query_as(&sql)
                        .bind(&hash.0[..])
                        .fetch_optional(self.read_pool())
                        .await?;
                    row.map(ClientRow::into_record).transpose()
                }

                async fn list_clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
                    let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients ORDER BY name");
                    let rows: Vec<ClientRow> = sqlx::query_as(&sql).fetch_all(self.read_pool()).await?;
                    rows.into_iter().map(ClientRow::into_record).collect()
                }

                async fn revoke_client(&self, name: &str, at: Timestamp) -> Result<bool, StoreError> {
                    let n = sqlx::query(
                        "UPDATE clients SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL",
                    )
                    .bind(name)
                    .bind(at.as_millis())
                    .execute(self.write_pool())
                    .await?
                    .rows_affected();
                    Ok(n == 1)
                }

                async fn add_read_counts(&self, counts: &[ReadCount]) -> Result<(), StoreError> {
                    if counts.is_empty() {
                        return Ok(());
                    }
                    let order = lock_order(counts, |c| {
                        (c.client_id, c.component.as_str(), c.appid.as_str())
                    });
                    let mut tx = self.begin_write().await?;
                    for c in order.iter().map(|&i| &counts[i]) {
                        sqlx::query(
                            "INSERT INTO client_reads (client_id, component_appid, appid, reads, \
                             last_read_at) VALUES ($1, $2, $3, $4, $5) \
                             ON CONFLICT (client_id, component_appid, appid) DO UPDATE SET \
                             reads = client_reads.reads + excluded.reads, \
                             last_read_at = CASE WHEN excluded.last_read_at > \
                             client_reads.last_read_at THEN excluded.last_read_at \
                             ELSE client_reads.last_read_at END",
                        )
                        .bind(c.client_id)
                        .bind(c.component.as_str())
                        .bind(c.appid.as_str())
                        .bind(db_count(c.count)?)
                        .bind(c.last_read_at.as_millis())
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(())
                }

                async fn read_counts(
                    &self,
                    client_id: Option<i64>,
                ) -> Result<Vec<ReadCount>, StoreError> {
                    let rows: Vec<ReadRow> = sqlx::query_as(
                        "SELECT client_id, component_appid, appid, reads, last_read_at \
                         FROM client_reads WHERE ($1 IS NULL OR client_id = $1) \
                         ORDER BY client_id, component_appid, appid",
                    )
                    .bind(client_id)
                    .fetch_all(self.read_pool())
                    .await?;
                    rows.into_iter().map(ReadRow::into_count).collect()
                }

                async fn key_checks(&self) -> Result<Vec<KeyCheck>, StoreError> {
                    let rows: Vec<KeyCheckRow> = sqlx::query_as(
                        "SELECT key_id, nonce, ct, created_at, retired_at FROM key_checks \
                         ORDER BY created_at, key_id",
                    )
                    .fetch_all(self.read_pool())
                    .await?;
                    rows.into_iter().map(KeyCheckRow::into_check).collect()
                }

                async fn add_key_check(&self, check: &KeyCheck) -> Result<bool, StoreError> {
                    let n = sqlx::query(
                        "INSERT INTO key_checks (key_id, nonce, ct, created_at, retired_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key_id) DO NOTHING",
                    )
                    .bind(check.key_id.as_str())
                    .bind(&check.sealed.nonce[..])
                    .bind(&check.sealed.ciphertext[..])
                    .bind(check.created_at.as_millis())
                    .bind(check.retired_at.map(Timestamp::as_millis))
                    .execute(self.write_pool())
                    .await?
                    .rows_affected();
                    Ok(n == 1)
                }

                async fn retire_key(&self, key_id: &KeyId, at: Timestamp) -> Result<bool, StoreError> {
                    // One statement, so nothing can be sealed under the key between the check
                    // and the update.
                    let n = sqlx::query(
                        "UPDATE key_checks SET retired_at = $2 WHERE key_id = $1 \
                         AND retired_at IS NULL \
                         AND NOT EXISTS (SELECT 1 FROM components WHERE ticket_kid = $1) \
                         AND NOT EXISTS (SELECT 1 FROM access_tokens WHERE token_kid = $1) \
                         AND NOT EXISTS (SELECT 1 FROM authorizers \
                           WHERE rt_kid = $1 OR secret_kid = $1) \
                         AND NOT EXISTS (SELECT 1 FROM direct_accounts WHERE secret_kid = $1) \
                         AND NOT EXISTS (SELECT 1 FROM refresh_token_history WHERE rt_kid = $1) \
                         AND NOT EXISTS (SELECT 1 FROM events WHERE payload_kid = $1)",
                    )
                    .bind(key_id.as_str())
                    .bind(at.as_millis())
                    .execute(self.write_pool())
                    .await?
                    .rows_affected();
                    Ok(n == 1)
                }

                async fn sealed_cells(
                    &self,
                    column: SealedColumn,
                    not_under: &KeyId,
                    limit: u32,
                ) -> Result<Vec<SealedCell>, StoreError> {
                    let rows: Vec<CellRow> =
                        sqlx::query_as(crate::store::sql::cell_query(column))
                            .bind(not_under.as_str())
                            .bind(i64::from(limit))
                            .fetch_all(self.read_pool())
                            .await?;
                    rows.into_iter().map(|r| r.into_cell(column)).collect()
                }

                async fn reseal(&self, updates: &[Reseal]) -> Result<u64, StoreError> {
                    if updates.is_empty() {
                        return Ok(0);
                    }
                    let order = lock_order(updates, reseal_order_key);
                    let mut tx = self.begin_write().await?;
                    let mut total = 0;
                    for u in order.iter().map(|&i| &updates[i]) {
                        let new = &u.new;
                        let q = match &u.key {
                            CellKey::Ticket { component } => sqlx::query(
                                "UPDATE components SET ticket_kid = $1, ticket_nonce = $2, \
                                 ticket_ct = $3 WHERE ticket_nonce = $4 AND component_appid = $5",
                            )
                            .bind(new.key_id.as_str())
                            .bind(&new.nonce[..])
                            .bind(&new.ciphertext[..])
                            .bind(&u.old_nonce[..])
                            .bind(component.as_str()),
                            CellKey::AccessToken { credential } => sqlx::query(
                                "UPDATE access_tokens SET token_kid = $1, token_nonce = $2, \
                                 token_ct = $3 WHERE token_nonce = $4 AND component_appid = $5 \
                                 AND kind = $6 AND appid = $7",
                            )
                            .bind(new.key_id.as_str())
                            .bind(&new.nonce[..])
                            .bind(&new.ciphertext[..])
                            .bind(&u.old_nonce[..])
                            .bind(credential.component.as_str())
                            .bind(credential.kind.as_str())
                            .bind(credential.appid.as_str()),
                            CellKey::RefreshToken { component, appid } => sqlx::query(
                                "UPDATE authorizers SET rt_kid = $1, rt_nonce = $2, rt_ct = $3 \
                                 WHERE rt_nonce = $4 AND component_appid = $5 AND appid = $6",
                            )
                            .bind(new.key_id.as_str())
                            .bind(&new.nonce[..])
                            .bind(&new.ciphertext[..])
                            .bind(&u.old_nonce[..])
                            .bind(component.as_str())
                            .bind(appid.as_str()),
                            CellKey::AuthorizerAppsecret { component, appid } => sqlx::query(
                                "UPDATE authorizers SET secret_kid = $1, secret_nonce = $2, \
                                 secret_ct = $3 WHERE secret_nonce = $4 AND component_appid = $5 \
                                 AND appid = $6",
                            )
                            .bind(new.key_id.as_str())
                            .bind(&new.nonce[..])
                            .bind(&new.ciphertext[..])
                            .bind(&u.old_nonce[..])
                            .bind(component.as_str())
                            .bind(appid.as_str()),
                            CellKey::DirectAppsecret { component, appid } => sqlx::query(
                                "UPDATE direct_accounts SET secret_kid = $1, secret_nonce = $2, \
                                 secret_ct = $3 WHERE secret_nonce = $4 AND component_appid = $5 \
                                 AND appid = $6",
                            )
                            .bind(new.key_id.as_str())
                            .bind(&new.nonce[..])
                            .bind(&new.ciphertext[..])
                            .bind(&u.old_nonce[..])
                            .bind(component.as_str())
                            .bind(appid.as_str()),
                            CellKey::RefreshTokenHistory { id, .. } => sqlx::query(
                                "UPDATE refresh_token_history SET rt_kid = $1, rt_nonce = $2, \
                                 rt_ct = $3 WHERE rt_nonce = $4 AND id = $5",
                            )
                            .bind(new.key_id.as_str())
                            .bind(&new.nonce[..])
                            .bind(&new.ciphertext[..])
                            .bind(&u.old_nonce[..])
                            .bind(*id),
                            CellKey::EventPayload {
                                component,
                                dedupe_key,
                            } => sqlx::query(
                                "UPDATE events SET payload_kid = $1, payload_nonce = $2, \
                                 payload_ct = $3 WHERE payload_nonce = $4 \
                                 AND component_appid = $5 AND dedupe_key = $6",
                            )
                            .bind(new.key_id.as_str())
                            .bind(&new.nonce[..])
                            .bind(&new.ciphertext[..])
                            .bind(&u.old_nonce[..])
                            .bind(component.as_str())
                            .bind(dedupe_key.as_str()),
                        };
                        total += q.execute(&mut *tx).await?.rows_affected();
                    }
                    tx.commit().await?;
                    Ok(total)
                }

                async fn try_lease(
                    &self,
                    key: &crate::store::LeaseKey,
                    holder: &str,
                    now: Timestamp,
                    until: Timestamp,
                ) -> Result<bool, StoreError> {
                    let (component, kind, name) = key.row();
                    // Insert, or take over a row whose lease ran out (or that we hold): the
                    // conditional upsert is atomic on both backends, so one caller wins.
                    let won: Option<(String,)> = sqlx::query_as(
                        "INSERT INTO refresh_leases (component_appid, kind, appid, holder, \
                         expires_at) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (component_appid, kind, appid) DO UPDATE SET \
                         holder = excluded.holder, expires_at = excluded.expires_at \
                         WHERE refresh_leases.expires_at < $6 OR refresh_leases.holder = $4 \
                         RETURNING holder",
                    )
                    .bind(component)
                    .bind(kind)
                    .bind(name)
                    .bind(holder)
                    .bind(until.as_millis())
                    .bind(now.as_millis())
                    .fetch_optional(self.write_pool())
                    .await?;
                    Ok(won.is_some())
                }

                async fn release_lease(
                    &self,
                    key: &crate::store::LeaseKey,
                    holder: &str,
                ) -> Result<(), StoreError> {
                    let (component, kind, name) = key.row();
                    sqlx::query(
                        "DELETE FROM refresh_leases WHERE component_appid = $1 AND kind = $2 \
                         AND appid = $3 AND holder = $4",
                    )
                    .bind(component)
                    .bind(kind)
                    .bind(name)
                    .bind(holder)
                    .execute(self.write_pool())
                    .await?;
                    Ok(())
                }

                async fn token_changes(
                    &self,
                ) -> Result<Option<crate::store::TokenChanges>, StoreError> {
                    self.listen_token_changes().await
                }

                async fn count_sealed_by_key(&self) -> Result<Vec<(KeyId, u64)>, StoreError> {
                    let rows: Vec<(String, i64)> = sqlx::query_as(COUNT_SEALED_BY_KEY)
                        .fetch_all(self.read_pool())
                        .await?;
                    rows.into_iter()
                        .map(|(k, n)| Ok((key_id(k)?, u64::try_from(n).unwrap_or(0))))
                        .collect()
                }
            }
        }
    };
}

pub(super) use impl_store;
