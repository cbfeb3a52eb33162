//! The client API: read a token (optionally long-polling for a newer one), report one invalid,
//! read the component token. The read path takes no await and no database call once the appid is
//! in memory: authentication from the key index, the ACL from the caller, the token from the
//! engine's cache, the read count into an in-memory batch.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::{Authenticated, Caller};
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::tokens::cache::CachedToken;

/// A token as handed out. Borrowed from the cache: serialising it allocates only the body.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse<'a> {
    /// The authorizer's, direct account's or component's appid.
    pub appid: &'a str,
    /// The token to call WeChat with.
    pub access_token: &'a str,
    /// When WeChat says it expires (Unix seconds). Do not cache until then: WeChat retires a
    /// replaced token a few minutes after its replacement is issued.
    pub expires_at: i64,
    /// When wxtoken will replace it (Unix seconds): cache it until then, no longer.
    pub refresh_at: i64,
    /// Increases with every new token of this appid; `?after=` long-polls on it.
    pub generation: u64,
    /// How it was obtained: api_authorizer_token, api_query_auth, stable_token, token, or
    /// api_component_token.
    pub source: &'static str,
}

impl<'a> TokenResponse<'a> {
    fn new(appid: &'a str, token: &'a CachedToken) -> Self {
        Self {
            appid,
            access_token: token.access_token.expose_secret(),
            expires_at: token.expires_at.as_millis().div_euclid(1000),
            refresh_at: token.refresh_at.as_millis().div_euclid(1000),
            generation: token.generation,
            source: token.source.as_str(),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenQuery {
    /// The component (third-party platform appid), when the appid is authorized to several.
    pub component: Option<String>,
    /// Long-poll: answer once the token's generation is greater than this (or when `wait` runs
    /// out, with the current token).
    pub after: Option<u64>,
    /// Long-poll bound in seconds (default and maximum: `server.long_poll_max`).
    pub wait: Option<u64>,
}

/// Read the current token of an authorizer or direct account.
#[utoipa::path(
    get,
    path = "/v1/tokens/{appid}",
    tag = "tokens",
    params(("appid" = String, Path, description = "Authorizer or direct account appid"), TokenQuery),
    responses(
        (status = 200, description = "A token valid now; cache it until `refresh_at`", body = TokenResponse),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 403, description = "The key is not granted this appid", body = ErrorBody),
        (status = 404, description = "Unknown appid", body = ErrorBody),
        (status = 410, description = "Authorization lost and no token left", body = ErrorBody),
        (status = 503, description = "No valid token right now; the reason says why", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn get_token(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(appid): ApiPath<String>,
    ApiQuery(query): ApiQuery<TokenQuery>,
) -> Result<Response, ApiError> {
    caller.require_read(&appid)?;
    let slot = app
        .0
        .engine
        .lookup(query.component.as_deref(), &appid)
        .await?;
    let token = match query.after {
        // A read that must wait for a first refresh is bounded like any other request.
        None => {
            let limit = app.0.server.request_timeout;
            tokio::time::timeout(limit, app.0.engine.read_or_refresh(&slot))
                .await
                .map_err(|_| ApiError::Timeout(limit))??
        }
        Some(after) => {
            let max = app.0.server.long_poll_max;
            let wait = query.wait.map_or(max, |s| Duration::from_secs(s).min(max));
            app.0
                .engine
                .wait_newer(&slot, after, wait, &app.0.shutdown)
                .await?
        }
    };
    app.0.reads.record(caller.id, &slot);
    Ok(Json(TokenResponse::new(&appid, &token)).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct InvalidateRequest {
    /// The token WeChat refused (40001/42001).
    pub access_token: String,
}

/// Report a token WeChat refused. If it is still the current token, wxtoken refreshes (one upstream
/// call however many clients report it) and answers the new one; if a newer one exists already,
/// that one is the answer and WeChat is not called. A credential is force-refreshed at most once
/// per `refresh.min_force_interval` across replicas: a report inside it is answered with the
/// current token. A report of a token wxtoken obtained minutes ago is checked with WeChat first:
/// if WeChat accepts it, nothing is refreshed; if not, something outside wxtoken refreshed the
/// appid (alert `rogue_refresher`). A client over `server.report_rate` gets 429.
#[utoipa::path(
    post,
    path = "/v1/tokens/{appid}/invalidate",
    tag = "tokens",
    params(("appid" = String, Path, description = "Authorizer or direct account appid"), InvalidateQuery),
    request_body = InvalidateRequest,
    responses(
        (status = 200, description = "The token to use now", body = TokenResponse),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 403, description = "The key is not granted this appid", body = ErrorBody),
        (status = 404, description = "Unknown appid", body = ErrorBody),
        (status = 410, description = "Authorization lost", body = ErrorBody),
        (status = 429, description = "Over server.report_rate for this client; Retry-After says when to try again", body = ErrorBody),
        (status = 503, description = "The refresh failed; the reason says why", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn invalidate(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(appid): ApiPath<String>,
    ApiQuery(query): ApiQuery<InvalidateQuery>,
    ApiJson(body): ApiJson<InvalidateRequest>,
) -> Result<Response, ApiError> {
    caller.require_read(&appid)?;
    report_rate(&app, &caller)?;
    if body.access_token.is_empty() || body.access_token.len() > 2048 {
        return Err(ApiError::BadRequest(
            "access_token must be the token WeChat refused".into(),
        ));
    }
    let slot = app
        .0
        .engine
        .lookup(query.component.as_deref(), &appid)
        .await?;
    let token = app
        .0
        .engine
        .invalidate_for(&slot.credential(), &body.access_token, Some(&caller.name))
        .await?;
    let token = served(&app, &slot, token)?;
    Ok(Json(TokenResponse::new(&appid, &token)).into_response())
}

/// The caller's invalidation-report rate (`server.report_rate`, burst `server.report_burst`):
/// 429 with the wait past it. Shared by token and ticket reports.
pub(super) fn report_rate(app: &AppState, caller: &Caller) -> Result<(), ApiError> {
    app.0.reports.check(caller.id).map_err(|wait| {
        metrics::counter!(crate::telemetry::REPORTS_TOTAL, "outcome" => "limited").increment(1);
        ApiError::TooManyRequests {
            message: format!(
                "client {} made more than {} invalidation reports a second",
                caller.name, app.0.server.report_rate
            ),
            wait,
        }
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InvalidateQuery {
    /// The component, when the appid is authorized to several.
    pub component: Option<String>,
}

/// The token a refresh answered, unless it is not servable (a revoked authorizer's own token):
/// then the read's answer, which says why.
fn served(
    app: &AppState,
    slot: &crate::tokens::cache::Slot,
    token: Arc<CachedToken>,
) -> Result<Arc<CachedToken>, ApiError> {
    match app.0.engine.read(slot) {
        Ok(current) if current.generation >= token.generation => Ok(current),
        Ok(_) => Ok(token),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ComponentQuery {
    /// The component, when several are configured.
    pub component: Option<String>,
}

/// Read the component access token (for component APIs a service calls itself). The key must be
/// granted the component's appid, or `*`.
#[utoipa::path(
    get,
    path = "/v1/component/token",
    tag = "tokens",
    params(ComponentQuery),
    responses(
        (status = 200, description = "The component access token", body = TokenResponse),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 403, description = "The key is not granted the component", body = ErrorBody),
        (status = 404, description = "Unknown component", body = ErrorBody),
        (status = 503, description = "No valid token right now (no ticket yet, refresh failing)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn component_token(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(query): ApiQuery<ComponentQuery>,
) -> Result<Response, ApiError> {
    let component = app.0.component(query.component.as_deref())?;
    caller.require_read(component.as_str())?;
    let slot = app
        .0
        .engine
        .cache()
        .component(&component)
        .ok_or_else(|| ApiError::NotFound(format!("component {component} is not loaded")))?;
    // Never fetched yet (a ticket just arrived): one flight, shared by every caller.
    let token = app.0.engine.read_or_refresh(&slot).await?;
    app.0.reads.record(caller.id, &slot);
    Ok(Json(TokenResponse::new(component.as_str(), &token)).into_response())
}
