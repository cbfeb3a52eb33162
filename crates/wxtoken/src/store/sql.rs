//! The SQL shared by both backends: private row structs (`FromRow`, generic over the backend),
//! their conversion into domain records, the helpers of fenced writes, and [`impl_store!`], which
//! expands, for a backend type, to its `impl Store` and (through each role file's macro, e.g.
//! `tokens_sql!` in `tokens.rs`) the impl of every role.
//!
//! Depends on `model` and sqlx only. Every statement here must run unchanged on SQLite (≥ 3.35)
//! and PostgreSQL (≥ 13): `$n` parameters, `ON CONFLICT`, `RETURNING`, `CASE` instead of
//! `MAX`/`GREATEST`, `CAST(NULL AS …)` for typed nulls, `BIGINT` milliseconds for times.
//!
//! A backend type using the macro provides: `fn read_pool(&self) -> &Pool<DB>`, `fn
//! write_pool(&self)
//! -> &Pool<DB>` for single-statement writes, `async fn begin_write(&self) ->
//! Result<sqlx::Transaction<'static, DB>, StoreError>` (SQLite takes the write lock at `BEGIN`),
//! `async fn close_pools(&self)` and `async fn listen_token_changes(&self) ->
//! Result<Option<TokenChanges>, StoreError>`.
//!
//! Fencing pattern: every fenced write is a conditional `UPDATE … WHERE generation = $expected`
//! as the transaction's first write; zero rows affected means someone else won, which is then
//! read back to report `Stale { current_generation }` or `Missing`.

use crate::model::{
    AppKind, Appid, AppidGrant, AuthorizerRecord, AuthorizerState, AuthorizerStatus, ClientRecord,
    ComponentAppid, Credential, CredentialKind, DirectAccountRecord, KeyCheck, KeyId, NONCE_LEN,
    NewAccessToken, PreviousKey, ReadCount, RefreshTokenHistoryEntry, RefreshTokenSource, Sealed,
    StoredEvent, StoredTicket, Timestamp, TokenRecord, TokenSource,
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
     a.secret_nonce, a.secret_ct, a.created_at, a.updated_at, a.nick_name, a.principal_name, \
     a.service_type, a.details_at, \
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
    pub nick_name: Option<String>,
    pub principal_name: Option<String>,
    pub service_type: Option<i64>,
    pub details_at: Option<i64>,
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
            details: crate::model::AuthorizerDetails {
                nick_name: self.nick_name,
                principal_name: self.principal_name,
                service_type: self.service_type,
                fetched_at: self.details_at.map(ts),
            },
            created_at: ts(self.created_at),
            updated_at: ts(self.updated_at),
        })
    }
}

/// The cold start's columns of every authorizer, in table order (no `ORDER BY`: a scan, not a
/// walk of the primary key).
pub(super) const AUTHORIZER_STATE_SELECT: &str = "SELECT a.component_appid, a.appid, a.status, \
     a.status_reason, a.rt_kid, a.rt_nonce, a.rt_ct, a.secret_kid, a.details_at, COALESCE(t.generation, CAST(0 AS BIGINT)) AS generation, \
     t.token_kid, t.token_nonce, t.token_ct, t.issued_at, t.expires_at, t.refresh_at, t.source \
     FROM authorizers a LEFT JOIN access_tokens t ON t.component_appid = a.component_appid \
     AND t.kind = 'authorizer' AND t.appid = a.appid";

#[derive(sqlx::FromRow)]
pub(super) struct AuthorizerStateRow {
    pub component_appid: String,
    pub appid: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub rt_kid: String,
    pub rt_nonce: Vec<u8>,
    pub rt_ct: Vec<u8>,
    pub secret_kid: Option<String>,
    pub details_at: Option<i64>,
    pub generation: i64,
    pub token_kid: Option<String>,
    pub token_nonce: Option<Vec<u8>>,
    pub token_ct: Option<Vec<u8>>,
    pub issued_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub refresh_at: Option<i64>,
    pub source: Option<String>,
}

impl AuthorizerStateRow {
    pub fn into_state(self) -> Result<AuthorizerState, StoreError> {
        Ok(AuthorizerState {
            component: component(self.component_appid)?,
            appid: appid(self.appid)?,
            status: AuthorizerStatus::parse(&self.status).map_err(invalid)?,
            status_reason: self.status_reason,
            refresh_token: sealed(self.rt_kid, self.rt_nonce, self.rt_ct)?,
            has_appsecret: self.secret_kid.is_some(),
            described: self.details_at.is_some(),
            generation: generation(self.generation)?,
            token: token_columns(
                opt_sealed(self.token_kid, self.token_nonce, self.token_ct)?,
                self.issued_at,
                self.expires_at,
                self.refresh_at,
                self.source.as_deref(),
            )?,
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

pub(super) const CLIENT_COLUMNS: &str = "id, name, key_hint, grant_appids, admin, created_at, \
     revoked_at, previous_key_hint, previous_key_expires_at";

#[derive(sqlx::FromRow)]
pub(super) struct ClientRow {
    pub id: i64,
    pub name: String,
    pub key_hint: String,
    pub grant_appids: String,
    pub admin: bool,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub previous_key_hint: Option<String>,
    pub previous_key_expires_at: Option<i64>,
    /// Only in a lookup by key: the expiry of the previous key when that is what matched.
    #[sqlx(default)]
    pub key_expires_at: Option<i64>,
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
            previous_key: match (self.previous_key_hint, self.previous_key_expires_at) {
                (Some(key_hint), Some(expires_at)) => Some(PreviousKey {
                    key_hint,
                    expires_at: ts(expires_at),
                }),
                _ => None,
            },
            key_expires_at: self.key_expires_at.map(ts),
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

/// Every store trait's impl for a backend type, shared by both backends (see the module doc).
macro_rules! impl_store {
    ($store:ident, $db:ty, $backend:expr) => {
        mod shared_impl {
            use super::$store;
            use crate::model::{
                ApiKeyHash, Appid, AuthorizationWrite, AuthorizerCounts, AuthorizerRecord,
                AuthorizerState, AuthorizerStatus, ClientCreate, ClientRecord, ComponentAppid,
                Credential, CredentialKind, DirectAccountRecord, DirectAccountWrite, EventInsert,
                Expected, ForceBudgetRecord, KeyCheck, KeyId, KeyRotation, NewAccessToken,
                NewClient, NewEvent, ReadCount, RefreshResult, RefreshTokenHistoryEntry,
                RefreshTokenSource, SaveOutcome, Sealed, StatusChange, StoredEvent, StoredTicket,
                TicketOutcome, Timestamp, TokenRecord, UpsertOutcome,
            };
            use crate::store::sql::{
                AUTHORIZER_SELECT, AUTHORIZER_STATE_SELECT, AuthorizerRow, AuthorizerStateRow,
                CLIENT_COLUMNS, COUNT_SEALED_BY_KEY, CellRow, ClientRow, DIRECT_SELECT, DirectRow,
                EVENT_COLUMNS, EventRow, HistoryRow, INSERT_HISTORY, KeyCheckRow, ReadRow,
                TOKEN_COLUMNS, TicketRow, TokenRow, db_count, db_generation, generation,
                in_caller_order, key_id, lock_order, reseal_order_key,
            };
            use crate::store::{
                Backend, CellKey, Reseal, SealedCell, SealedColumn, Store, StoreError,
            };

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

            /// Writes the token columns of a credential row, fenced on `expected`. True if it
            /// landed.
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

                fn components(&self) -> &dyn crate::store::ComponentStore {
                    self
                }

                fn tokens(&self) -> &dyn crate::store::TokenStore {
                    self
                }

                fn authorizers(&self) -> &dyn crate::store::AuthorizerStore {
                    self
                }

                fn direct(&self) -> &dyn crate::store::DirectStore {
                    self
                }

                fn events(&self) -> &dyn crate::store::EventStore {
                    self
                }

                fn clients(&self) -> &dyn crate::store::ClientStore {
                    self
                }

                fn keys(&self) -> &dyn crate::store::KeyStore {
                    self
                }

                fn leases(&self) -> &dyn crate::store::LeaseStore {
                    self
                }

                fn ops(&self) -> &dyn crate::store::OpsStore {
                    self
                }
            }

            crate::store::components::components_sql!($store, $db);
            crate::store::tokens::tokens_sql!($store, $db);
            crate::store::authorizers::authorizers_sql!($store, $db);
            crate::store::direct::direct_sql!($store, $db);
            crate::store::events::events_sql!($store, $db);
            crate::store::clients::clients_sql!($store, $db);
            crate::store::keys::keys_sql!($store, $db);
            crate::store::leases::leases_sql!($store, $db);
            crate::store::ops::ops_sql!($store, $db);
        }
    };
}

pub(super) use impl_store;
