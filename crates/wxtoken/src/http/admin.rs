//! The admin API (admin keys only): authorizers (list, show, refresh, import), direct accounts
//! (list, add, remove) and clients (list, add, revoke) — the CLI's operations, on a running
//! server. Views never carry a token, a refresh token or an appsecret; a new client's API key is
//! returned once, in the answer that creates it.

use std::io::Cursor;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Authenticated;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::manage::{self, ManageError};
use crate::model::{
    AppKind, Appid, AppidGrant, AuthorizerRecord, ClientRecord, ComponentAppid, Credential,
    DirectAccountRecord, Timestamp, UpsertOutcome,
};
use crate::transfer::{self, ImportOptions};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_authorizers))
        .routes(routes!(show_authorizer))
        .routes(routes!(refresh_authorizer))
        .routes(routes!(revoke_authorizer))
        .routes(routes!(import_authorizers))
        .routes(routes!(list_accounts, add_account))
        .routes(routes!(remove_account))
        .routes(routes!(list_clients, add_client))
        .routes(routes!(revoke_client))
        .routes(routes!(rotate_client))
        .routes(routes!(gateway_calls))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GatewayCallsQuery {
    /// The Beijing day (`YYYY-MM-DD`, UTC+8: WeChat's quota day); today by default.
    pub day: Option<String>,
    /// One appid only.
    pub appid: Option<String>,
}

/// Calls of one appid (or all) through the gateway on one day, by WeChat path.
#[derive(Debug, Serialize, ToSchema)]
pub struct GatewayCallsView {
    pub day: String,
    /// Most calls first. (Counts are written every few seconds.)
    pub calls: Vec<GatewayCallView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GatewayCallView {
    pub appid: String,
    pub path: String,
    pub calls: u64,
    /// Answered with a WeChat errcode, an HTTP error or not at all.
    pub errors: u64,
}

/// Gateway calls per appid and WeChat path on one Beijing day, so a daily quota (45009) is seen
/// coming; `cgi-bin/openapi/quota/get` through the gateway says the quota itself.
#[utoipa::path(get, path = "/v1/admin/gateway/calls", tag = "admin", params(GatewayCallsQuery),
    responses((status = 200, body = GatewayCallsView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn gateway_calls(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(q): ApiQuery<GatewayCallsQuery>,
) -> Result<Json<GatewayCallsView>, ApiError> {
    caller.require_admin()?;
    let day = match q.day {
        Some(day) => crate::manage::check_day(&day).map_err(ApiError::BadRequest)?,
        None => crate::model::Timestamp::now().beijing_day(),
    };
    // What this server counted but has not written yet counts too.
    app.0.gateway_calls.flush(&*app.0.store).await?;
    let counts = app
        .0
        .store
        .ops()
        .gateway_calls(&day, q.appid.as_deref())
        .await?;
    Ok(Json(GatewayCallsView {
        day,
        calls: counts
            .into_iter()
            .map(|c| GatewayCallView {
                appid: c.appid,
                path: c.path,
                calls: c.calls,
                errors: c.errors,
            })
            .collect(),
    }))
}

impl From<ManageError> for ApiError {
    fn from(e: ManageError) -> Self {
        match e {
            ManageError::Invalid(m) => ApiError::BadRequest(m),
            e @ ManageError::NameTaken(_) => ApiError::Conflict(e.to_string()),
            e @ ManageError::IsAuthorizer { .. } => ApiError::BadRequest(e.to_string()),
            e @ ManageError::NoSuchClient(_) => ApiError::NotFound(e.to_string()),
            ManageError::Store(e) => e.into(),
            ManageError::Vault(e) => ApiError::internal(e),
        }
    }
}

fn seconds(t: Timestamp) -> i64 {
    t.as_millis().div_euclid(1000)
}

fn parse_appid(appid: &str) -> Result<Appid, ApiError> {
    Appid::parse(appid).map_err(|e| ApiError::BadRequest(e.to_string()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ComponentParam {
    /// The component, when several are configured.
    pub component: Option<String>,
}

// --- authorizers ------------------------------------------------------------------------------

/// An authorizer as the admin API shows it (no secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthorizerView {
    pub component: String,
    pub appid: String,
    /// official_account or mini_program, when known.
    pub kind: Option<String>,
    /// From api_get_authorizer_info, once asked.
    pub nick_name: Option<String>,
    pub principal_name: Option<String>,
    /// `service_type_info.id` (Official Accounts: 0 subscription, 1 upgraded, 2 service).
    pub service_type: Option<i64>,
    /// active, needs_reauth or revoked.
    pub status: String,
    pub status_reason: Option<String>,
    pub generation: u64,
    /// Whether an appsecret is on file (the fallback when the authorization is lost).
    pub has_appsecret: bool,
    /// The current token's expiry and planned refresh (Unix seconds), if it has one.
    pub token_expires_at: Option<i64>,
    pub token_refresh_at: Option<i64>,
    pub token_source: Option<String>,
    pub updated_at: i64,
    /// Refresh tokens ever stored for it (shown by `show` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token_history: Option<usize>,
    /// Refreshes of it that wxtoken did not make, as WeChat showed them (shown by `show` only,
    /// when any was ever found).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rogue_refreshes: Option<RogueView>,
}

/// Rogue refreshes of one credential (SPEC.md rule 11).
#[derive(Debug, Serialize, ToSchema)]
pub struct RogueView {
    pub times: u64,
    /// Unix seconds.
    pub first_at: i64,
    pub last_at: i64,
    /// The client whose invalidation report revealed the last one.
    pub last_client: String,
}

impl AuthorizerView {
    pub(crate) fn new(app: &AppState, r: &AuthorizerRecord) -> Self {
        // Memory is newer than the store for tokens refreshed since the record was read.
        let held = app
            .0
            .engine
            .cache()
            .get(&Credential::authorizer(&r.component, &r.appid))
            .and_then(|slot| slot.current());
        let (expires, refresh, source) = match (&held, &r.token) {
            (Some(t), _) => (
                Some(seconds(t.expires_at)),
                Some(seconds(t.refresh_at)),
                Some(t.source.as_str()),
            ),
            (None, Some(t)) => (
                Some(seconds(t.expires_at)),
                t.refresh_at.map(seconds),
                Some(t.source.as_str()),
            ),
            (None, None) => (None, None, None),
        };
        Self {
            component: r.component.to_string(),
            appid: r.appid.to_string(),
            kind: r.kind.map(|k| k.as_str().to_owned()),
            nick_name: r.details.nick_name.clone(),
            principal_name: r.details.principal_name.clone(),
            service_type: r.details.service_type,
            status: r.status.as_str().to_owned(),
            status_reason: r.status_reason.clone().filter(|s| !s.is_empty()),
            generation: held
                .as_ref()
                .map_or(r.generation, |t| t.generation.max(r.generation)),
            has_appsecret: r.appsecret.is_some(),
            token_expires_at: expires,
            token_refresh_at: refresh,
            token_source: source.map(str::to_owned),
            updated_at: seconds(r.updated_at),
            refresh_token_history: None,
            rogue_refreshes: None,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The component, when several are configured.
    pub component: Option<String>,
    /// Page after this appid (the last one of the previous page).
    pub after: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuthorizerPage {
    pub authorizers: Vec<AuthorizerView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

/// List authorizers, by appid, a page at a time.
#[utoipa::path(get, path = "/v1/admin/authorizers", tag = "admin", params(ListQuery),
    responses((status = 200, body = AuthorizerPage), (status = 403, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn list_authorizers(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<AuthorizerPage>, ApiError> {
    caller.require_admin()?;
    let component = app.0.component(q.component.as_deref())?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let after = q.after.as_deref().map(parse_appid).transpose()?;
    let records = app
        .0
        .store
        .authorizers()
        .list_authorizers(&component, after.as_ref(), limit)
        .await?;
    let next = (records.len() == limit as usize)
        .then(|| records.last().map(|r| r.appid.to_string()))
        .flatten();
    Ok(Json(AuthorizerPage {
        authorizers: records
            .iter()
            .map(|r| AuthorizerView::new(&app, r))
            .collect(),
        next,
    }))
}

pub(crate) async fn authorizer(
    app: &AppState,
    component: &ComponentAppid,
    appid: &Appid,
) -> Result<AuthorizerRecord, ApiError> {
    app.0
        .store
        .authorizers()
        .get_authorizer(component, appid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no authorizer {appid} under {component}")))
}

/// Show one authorizer.
#[utoipa::path(get, path = "/v1/admin/authorizers/{appid}", tag = "admin",
    params(("appid" = String, Path), ComponentParam),
    responses((status = 200, body = AuthorizerView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn show_authorizer(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(appid): ApiPath<String>,
    ApiQuery(q): ApiQuery<ComponentParam>,
) -> Result<Json<AuthorizerView>, ApiError> {
    caller.require_admin()?;
    let component = app.0.component(q.component.as_deref())?;
    let appid = parse_appid(&appid)?;
    let record = authorizer(&app, &component, &appid).await?;
    let history = app
        .0
        .store
        .authorizers()
        .refresh_token_history(&component, &appid)
        .await?;
    let rogue = app
        .0
        .store
        .ops()
        .rogue_refresh(&Credential::authorizer(&component, &appid))
        .await?;
    let mut view = AuthorizerView::new(&app, &record);
    view.refresh_token_history = Some(history.len());
    view.rogue_refreshes = rogue.map(|r| RogueView {
        times: r.times,
        first_at: seconds(r.first_at),
        last_at: seconds(r.last_at),
        last_client: r.last_client,
    });
    Ok(Json(view))
}

/// Refresh an authorizer's token now (single flight with any refresh already running). Answers the
/// authorizer's view, not the token.
#[utoipa::path(post, path = "/v1/admin/authorizers/{appid}/refresh", tag = "admin",
    params(("appid" = String, Path), ComponentParam),
    responses((status = 200, body = AuthorizerView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 410, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn refresh_authorizer(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(appid): ApiPath<String>,
    ApiQuery(q): ApiQuery<ComponentParam>,
) -> Result<Json<AuthorizerView>, ApiError> {
    caller.require_admin()?;
    let component = app.0.component(q.component.as_deref())?;
    let appid = parse_appid(&appid)?;
    Ok(Json(refresh_now(&app, &component, &appid).await?))
}

/// Revoke an authorizer, as WeChat's `unauthorized` push does: no more refreshes, clients are told
/// `revoked` (410), every stored secret is kept, and the merchant authorizing again brings it
/// back. For an account that left the platform before WeChat said so. Answers the authorizer's
/// view; revoking a revoked authorizer changes nothing.
#[utoipa::path(post, path = "/v1/admin/authorizers/{appid}/revoke", tag = "admin",
    params(("appid" = String, Path), ComponentParam),
    responses((status = 200, body = AuthorizerView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn revoke_authorizer(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(appid): ApiPath<String>,
    ApiQuery(q): ApiQuery<ComponentParam>,
) -> Result<Json<AuthorizerView>, ApiError> {
    caller.require_admin()?;
    let component = app.0.component(q.component.as_deref())?;
    let appid = parse_appid(&appid)?;
    Ok(Json(
        revoke_now(&app, &component, &appid, &caller.name).await?,
    ))
}

/// Revokes an authorizer for operator `by` (the admin API and the dashboard), tells the other
/// replicas, and returns its view.
pub(crate) async fn revoke_now(
    app: &AppState,
    component: &ComponentAppid,
    appid: &Appid,
    by: &str,
) -> Result<AuthorizerView, ApiError> {
    authorizer(app, component, appid).await?;
    let reason = format!("revoked by operator {by}");
    if app
        .0
        .engine
        .revoke_authorizer(component, appid, &reason)
        .await?
    {
        tracing::warn!(appid = %appid, by = %by, "authorizer revoked by an operator");
        manage::announce(
            &*app.0.store,
            crate::store::ChangeScope::Authorizer,
            Some(component),
            Some(appid.as_str()),
        )
        .await;
    }
    let record = authorizer(app, component, appid).await?;
    Ok(AuthorizerView::new(app, &record))
}

/// Refreshes an authorizer's token now (sharing a refresh already running) and returns its view
/// once the new token is stored (the admin API and the dashboard).
pub(crate) async fn refresh_now(
    app: &AppState,
    component: &ComponentAppid,
    appid: &Appid,
) -> Result<AuthorizerView, ApiError> {
    authorizer(app, component, appid).await?;
    app.0
        .engine
        .load(Some(component), appid)
        .await
        .map_err(ApiError::internal)?;
    let credential = Credential::authorizer(component, appid);
    app.0.engine.refresh_now(&credential).await?;
    // The new token is served before it is stored; the view is read from the store.
    app.0.engine.wait_stored(&credential).await;
    let record = authorizer(app, component, appid).await?;
    Ok(AuthorizerView::new(app, &record))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportResult {
    pub lines: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub failed: u64,
    /// The rows not imported: line number and reason (no secret).
    pub errors: Vec<ImportRowError>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportRowError {
    pub line: u64,
    pub reason: String,
}

/// Import authorizers: the body is CSV (`appid,refresh_token[,kind[,appsecret]]`) or JSON lines,
/// as `wxtoken authorizers import` takes. Idempotent. For files larger than
/// `server.max_body_bytes`, use the CLI.
#[utoipa::path(post, path = "/v1/admin/authorizers/import", tag = "admin",
    params(ComponentParam),
    request_body(content = String, content_type = "text/plain", description = "CSV or JSON lines"),
    responses((status = 200, body = ImportResult), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn import_authorizers(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(q): ApiQuery<ComponentParam>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ImportResult>, ApiError> {
    caller.require_admin()?;
    let component = app.0.component(q.component.as_deref())?;
    let body = body?;
    let mut input = Cursor::new(body.as_ref());
    let report = transfer::import(
        &*app.0.store,
        &app.0.vault,
        &component,
        &mut input,
        &ImportOptions::default(),
        &mut |_| {},
    )
    .await
    .map_err(|e| match e {
        transfer::TransferError::Store(e) => ApiError::from(e),
        transfer::TransferError::Vault(e) => ApiError::internal(e),
        e => ApiError::BadRequest(e.to_string()),
    })?;
    app.0
        .engine
        .load_all(&component)
        .await
        .map_err(ApiError::internal)?;
    let p = report.progress;
    if p.created + p.updated > 0 {
        // For the other replicas.
        manage::announce(
            &*app.0.store,
            crate::store::ChangeScope::Authorizer,
            Some(&component),
            None,
        )
        .await;
    }
    Ok(Json(ImportResult {
        lines: p.lines,
        created: p.created,
        updated: p.updated,
        unchanged: p.unchanged,
        failed: p.failed,
        errors: report
            .errors
            .into_iter()
            .map(|e| ImportRowError {
                line: e.line,
                reason: e.reason,
            })
            .collect(),
    }))
}

// --- direct accounts --------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountView {
    pub component: String,
    pub appid: String,
    pub kind: String,
    pub generation: u64,
    pub updated_at: i64,
}

impl From<&DirectAccountRecord> for AccountView {
    fn from(a: &DirectAccountRecord) -> Self {
        Self {
            component: a.component.to_string(),
            appid: a.appid.to_string(),
            kind: a.kind.as_str().to_owned(),
            generation: a.generation,
            updated_at: seconds(a.updated_at),
        }
    }
}

/// List direct accounts.
#[utoipa::path(get, path = "/v1/admin/accounts", tag = "admin", params(ComponentParam),
    responses((status = 200, body = Vec<AccountView>), (status = 403, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn list_accounts(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(q): ApiQuery<ComponentParam>,
) -> Result<Json<Vec<AccountView>>, ApiError> {
    caller.require_admin()?;
    let component = app.0.component(q.component.as_deref())?;
    let accounts = app
        .0
        .store
        .direct()
        .list_direct_accounts(Some(&component))
        .await?;
    Ok(Json(accounts.iter().map(AccountView::from).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewAccount {
    pub appid: String,
    /// official_account or mini_program.
    pub kind: String,
    /// Sealed before it is stored; never shown again.
    pub appsecret: String,
    /// The component, when several are configured.
    pub component: Option<String>,
}

/// Add a direct account (or replace its appsecret). Its token is fetched at once.
#[utoipa::path(post, path = "/v1/admin/accounts", tag = "admin", request_body = NewAccount,
    responses((status = 201, description = "Created", body = AccountView), (status = 200, description = "Appsecret replaced", body = AccountView),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn add_account(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<NewAccount>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    caller.require_admin()?;
    let component = app.0.component(body.component.as_deref())?;
    let appid = parse_appid(&body.appid)?;
    let kind = AppKind::parse(&body.kind).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let secret = SecretString::from(body.appsecret);
    let outcome = manage::add_direct_account(
        &*app.0.store,
        &app.0.vault,
        &component,
        &appid,
        kind,
        &secret,
    )
    .await?;
    // A replaced appsecret invalidates nothing WeChat issued; a new account needs its first token.
    app.0
        .engine
        .load(Some(&component), &appid)
        .await
        .map_err(ApiError::internal)?;
    let record = app
        .0
        .store
        .direct()
        .get_direct_account(&component, &appid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("direct account {appid} vanished")))?;
    let status = match outcome {
        UpsertOutcome::Created => StatusCode::CREATED,
        UpsertOutcome::Updated => StatusCode::OK,
    };
    Ok((status, Json(AccountView::from(&record))))
}

/// Remove a direct account; its token is no longer served or refreshed.
#[utoipa::path(delete, path = "/v1/admin/accounts/{appid}", tag = "admin",
    params(("appid" = String, Path), ComponentParam),
    responses((status = 204, description = "Removed"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn remove_account(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(appid): ApiPath<String>,
    ApiQuery(q): ApiQuery<ComponentParam>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let component = app.0.component(q.component.as_deref())?;
    let appid = parse_appid(&appid)?;
    if !manage::remove_direct_account(&*app.0.store, &component, &appid).await? {
        return Err(ApiError::NotFound(format!(
            "no direct account {appid} under {component}"
        )));
    }
    app.0.engine.unload(&Credential::direct(&component, &appid));
    Ok(StatusCode::NO_CONTENT)
}

// --- clients ----------------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct ClientView {
    pub name: String,
    /// The key's first characters, to recognise it.
    pub key_hint: String,
    /// The appids granted, or ["*"].
    pub appids: Vec<String>,
    pub admin: bool,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    /// After a rotation with a grace period: the previous key's hint, while it still works.
    pub previous_key_hint: Option<String>,
    /// When the previous key stops working (Unix seconds).
    pub previous_key_expires_at: Option<i64>,
}

impl From<&ClientRecord> for ClientView {
    fn from(c: &ClientRecord) -> Self {
        Self {
            name: c.name.clone(),
            key_hint: c.key_hint.clone(),
            appids: match &c.grant {
                AppidGrant::All => vec!["*".to_owned()],
                AppidGrant::Only(list) => list.iter().map(ToString::to_string).collect(),
            },
            admin: c.admin,
            created_at: seconds(c.created_at),
            revoked_at: c.revoked_at.map(seconds),
            previous_key_hint: c.previous_key.as_ref().map(|p| p.key_hint.clone()),
            previous_key_expires_at: c.previous_key.as_ref().map(|p| seconds(p.expires_at)),
        }
    }
}

/// List clients (never their keys).
#[utoipa::path(get, path = "/v1/admin/clients", tag = "admin",
    responses((status = 200, body = Vec<ClientView>), (status = 403, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn list_clients(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Vec<ClientView>>, ApiError> {
    caller.require_admin()?;
    let clients = app.0.store.clients().list_clients().await?;
    Ok(Json(clients.iter().map(ClientView::from).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewClientRequest {
    /// A unique name for the service, e.g. `order-service`.
    pub name: String,
    /// Appids it may read, or ["*"].
    pub appids: Vec<String>,
    /// Also allow the admin API.
    #[serde(default)]
    pub admin: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedClient {
    pub client: ClientView,
    /// The API key, shown only in this answer.
    pub api_key: String,
}

/// Create a client; the answer carries its API key, once.
#[utoipa::path(post, path = "/v1/admin/clients", tag = "admin", request_body = NewClientRequest,
    responses((status = 201, body = CreatedClient), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn add_client(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<NewClientRequest>,
) -> Result<(StatusCode, Json<CreatedClient>), ApiError> {
    caller.require_admin()?;
    let grant = manage::parse_grant(&body.appids)?;
    let (record, key) = manage::create_client(&*app.0.store, &body.name, grant, body.admin).await?;
    tracing::info!(client = %record.name, admin = record.admin, by = %caller.name, "client created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedClient {
            client: ClientView::from(&record),
            api_key: key.key.expose_secret().to_owned(),
        }),
    ))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct RotateRequest {
    /// How long the previous key keeps working, in seconds (0, the default: it stops at once;
    /// at most 30 days).
    #[serde(default)]
    pub grace_seconds: u64,
}

/// Give a client a new key; the answer carries it, once. The previous key keeps working for
/// `grace_seconds` (replacing an earlier rotation's grace), so services can move to the new key.
#[utoipa::path(post, path = "/v1/admin/clients/{name}/rotate", tag = "admin",
    params(("name" = String, Path)), request_body = RotateRequest,
    responses((status = 200, body = CreatedClient), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn rotate_client(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<RotateRequest>,
) -> Result<Json<CreatedClient>, ApiError> {
    caller.require_admin()?;
    let grace = std::time::Duration::from_secs(body.grace_seconds);
    let (record, key) = manage::rotate_client(&*app.0.store, &name, grace).await?;
    app.0.keys.forget_all();
    tracing::info!(client = %name, grace = %humantime::format_duration(grace), by = %caller.name, "client key rotated");
    Ok(Json(CreatedClient {
        client: ClientView::from(&record),
        api_key: key.key.expose_secret().to_owned(),
    }))
}

/// Revoke a client's key; its requests are refused at once on this server (within
/// `server.key_cache_ttl` on other replicas).
#[utoipa::path(delete, path = "/v1/admin/clients/{name}", tag = "admin",
    params(("name" = String, Path)),
    responses((status = 204, description = "Revoked"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn revoke_client(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    if !manage::revoke_client(&*app.0.store, &name).await? {
        return Err(ApiError::NotFound(format!("no active client named {name}")));
    }
    app.0.keys.forget_all();
    tracing::info!(client = %name, by = %caller.name, "client revoked");
    Ok(StatusCode::NO_CONTENT)
}
