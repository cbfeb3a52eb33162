//! JS-SDK tickets and signatures (SPEC.md rule 13): read a ticket (optionally long-polling for a
//! newer one), report one WeChat refused, and have wxtoken sign `wx.config` and `cardExt` itself so
//! most services never hold a ticket. Same keys and per-appid grants as the token API; every ticket
//! read is counted like a token read.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wechat::jssdk;

use super::AppState;
use super::auth::Authenticated;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::model::CredentialKind;
use crate::tokens::cache::{CachedToken, Slot};

/// Longest accepted page URL, card id, code, openid and balance (WeChat's own limits are far
/// lower; this only bounds what is hashed).
const MAX_URL: usize = 4096;
const MAX_FIELD: usize = 128;

/// A JS-SDK ticket as handed out.
#[derive(Debug, Serialize, ToSchema)]
pub struct TicketResponse<'a> {
    /// The authorizer's or direct account's appid.
    pub appid: &'a str,
    /// `jsapi` or `wx_card`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub ticket: &'a str,
    /// When it expires (Unix seconds).
    pub expires_at: i64,
    /// When wxtoken will replace it (Unix seconds): cache it until then, no longer.
    pub refresh_at: i64,
    /// Increases with every new ticket of this appid and type; `?after=` long-polls on it.
    pub generation: u64,
}

impl<'a> TicketResponse<'a> {
    fn new(appid: &'a str, kind: CredentialKind, ticket: &'a CachedToken) -> Self {
        Self {
            appid,
            kind: kind.as_str(),
            ticket: ticket.access_token.expose_secret(),
            expires_at: ticket.expires_at.as_millis().div_euclid(1000),
            refresh_at: ticket.refresh_at.as_millis().div_euclid(1000),
            generation: ticket.generation,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TicketQuery {
    /// The component (third-party platform appid), when the appid is authorized to several.
    pub component: Option<String>,
    /// Long-poll: answer once the ticket's generation is greater than this (or when `wait` runs
    /// out, with the current ticket).
    pub after: Option<u64>,
    /// Long-poll bound in seconds (default and maximum: `server.long_poll_max`).
    pub wait: Option<u64>,
}

/// The account's slot after the grant check, and the ticket kind named in the path.
async fn account(
    app: &AppState,
    caller: &super::auth::Caller,
    appid: &str,
    kind: &str,
    component: Option<&str>,
) -> Result<(Arc<Slot>, CredentialKind), ApiError> {
    let kind =
        CredentialKind::parse_ticket(kind).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    caller.require_read(appid)?;
    Ok((app.0.engine.lookup(component, appid).await?, kind))
}

/// The ticket now: held, or fetched (one getticket call however many ask), bounded by the
/// request timeout; counted against the caller.
async fn read_ticket(
    app: &AppState,
    caller_id: i64,
    account: &Slot,
    kind: CredentialKind,
) -> Result<Arc<CachedToken>, ApiError> {
    let limit = app.0.server.request_timeout;
    let ticket = tokio::time::timeout(limit, app.0.engine.ticket(account, kind))
        .await
        .map_err(|_| ApiError::Timeout(limit))??;
    app.0
        .reads
        .record(caller_id, &app.0.engine.ticket_slot(account, kind)?);
    Ok(ticket)
}

/// Read the current JS-SDK ticket of an authorizer or direct account. A ticket is fetched at its
/// first read and kept fresh while it is read (`refresh.ticket_idle`).
#[utoipa::path(
    get,
    path = "/v1/tickets/{appid}/{type}",
    tag = "jssdk",
    params(
        ("appid" = String, Path, description = "Authorizer or direct account appid"),
        ("type" = String, Path, description = "`jsapi` (wx.config) or `wx_card` (cardExt)"),
        TicketQuery
    ),
    responses(
        (status = 200, description = "A ticket valid now; cache it until `refresh_at`", body = TicketResponse),
        (status = 400, description = "Bad input (an unknown type)", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 403, description = "The key is not granted this appid", body = ErrorBody),
        (status = 404, description = "Unknown appid", body = ErrorBody),
        (status = 410, description = "Authorization lost and no token left to fetch it with", body = ErrorBody),
        (status = 503, description = "No valid ticket right now; the reason says why", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn get_ticket(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath((appid, kind)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<TicketQuery>,
) -> Result<Response, ApiError> {
    let (account, kind) = account(&app, &caller, &appid, &kind, query.component.as_deref()).await?;
    let ticket = match query.after {
        None => read_ticket(&app, caller.id, &account, kind).await?,
        Some(after) => {
            let max = app.0.server.long_poll_max;
            let wait = query.wait.map_or(max, |s| Duration::from_secs(s).min(max));
            let slot = app.0.engine.ticket_slot(&account, kind)?;
            // A long-poll keeps the ticket read (and so refreshed) like any read.
            let ticket = match app.0.engine.ticket(&account, kind).await {
                Ok(current) if current.generation > after => current,
                _ => {
                    app.0
                        .engine
                        .wait_newer(&slot, after, wait, &app.0.shutdown)
                        .await?
                }
            };
            app.0.reads.record(caller.id, &slot);
            ticket
        }
    };
    Ok(Json(TicketResponse::new(&appid, kind, &ticket)).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TicketInvalidateRequest {
    /// The ticket WeChat refused (`invalid signature` with a signature made from it, say).
    pub ticket: String,
}

/// Report a ticket WeChat refused. If it is still the current ticket, wxtoken asks WeChat again
/// (one call however many report it, at most once per `refresh.min_force_interval` across
/// replicas) and answers what WeChat gives; if a newer one exists, that one, with no call. WeChat
/// answers getticket with the same ticket while it holds it valid: then that is the answer.
#[utoipa::path(
    post,
    path = "/v1/tickets/{appid}/{type}/invalidate",
    tag = "jssdk",
    params(
        ("appid" = String, Path, description = "Authorizer or direct account appid"),
        ("type" = String, Path, description = "`jsapi` or `wx_card`"),
        TicketQuery
    ),
    request_body = TicketInvalidateRequest,
    responses(
        (status = 200, description = "The ticket to use now", body = TicketResponse),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 403, description = "The key is not granted this appid", body = ErrorBody),
        (status = 404, description = "Unknown appid, or no ticket held for it", body = ErrorBody),
        (status = 429, description = "Over server.report_rate for this client", body = ErrorBody),
        (status = 503, description = "The refresh failed; the reason says why", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn invalidate(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath((appid, kind)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<TicketQuery>,
    ApiJson(body): ApiJson<TicketInvalidateRequest>,
) -> Result<Response, ApiError> {
    let (account, kind) = account(&app, &caller, &appid, &kind, query.component.as_deref()).await?;
    super::tokens::report_rate(&app, &caller)?;
    if body.ticket.is_empty() || body.ticket.len() > 2048 {
        return Err(ApiError::BadRequest(
            "ticket must be the ticket WeChat refused".into(),
        ));
    }
    let slot = app.0.engine.ticket_slot(&account, kind)?;
    let ticket = app
        .0
        .engine
        .invalidate_for(&slot.credential(), &body.ticket, Some(&caller.name))
        .await?;
    let ticket = match app.0.engine.read(&slot) {
        Ok(current) if current.generation >= ticket.generation => current,
        Ok(_) => ticket,
        Err(e) => return Err(e.into()),
    };
    Ok(Json(TicketResponse::new(&appid, kind, &ticket)).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct JssdkConfigRequest {
    /// The authorizer's or direct account's appid (the `appId` of `wx.config`).
    pub appid: String,
    /// The page's URL as the browser has it (`location.href`): absolute http(s); everything from
    /// `#` on is dropped, nothing is re-encoded.
    pub url: String,
    /// The component, when the appid is authorized to several.
    pub component: Option<String>,
}

/// What `wx.config` takes besides `jsApiList`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JssdkConfigResponse {
    pub app_id: String,
    /// Unix seconds.
    pub timestamp: i64,
    pub nonce_str: String,
    pub signature: String,
}

/// Sign `wx.config` for a page: `{appId, timestamp, nonceStr, signature}`, made with the account's
/// current jsapi_ticket (fetched if needed), ready to pass to `wx.config`.
#[utoipa::path(
    post,
    path = "/v1/jssdk/config",
    tag = "jssdk",
    request_body = JssdkConfigRequest,
    responses(
        (status = 200, description = "Pass these to wx.config", body = JssdkConfigResponse),
        (status = 400, description = "Bad input (a URL that is not absolute http(s))", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 403, description = "The key is not granted this appid", body = ErrorBody),
        (status = 404, description = "Unknown appid", body = ErrorBody),
        (status = 410, description = "Authorization lost", body = ErrorBody),
        (status = 503, description = "No valid ticket right now", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn jssdk_config(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<JssdkConfigRequest>,
) -> Result<Response, ApiError> {
    if body.url.len() > MAX_URL {
        return Err(ApiError::BadRequest(format!(
            "url is too long (at most {MAX_URL} bytes)"
        )));
    }
    jssdk::check_page_url(&body.url).map_err(|e| ApiError::BadRequest(format!("url {e}")))?;
    let kind = CredentialKind::Jsapi.as_str();
    let (account, kind) =
        account(&app, &caller, &body.appid, kind, body.component.as_deref()).await?;
    let ticket = read_ticket(&app, caller.id, &account, kind).await?;
    let timestamp = app.0.engine.now().as_millis().div_euclid(1000);
    let nonce_str = nonce();
    let signature = jssdk::config_signature(
        ticket.access_token.expose_secret(),
        &nonce_str,
        timestamp,
        &body.url,
    );
    Ok(Json(JssdkConfigResponse {
        app_id: body.appid,
        timestamp,
        nonce_str,
        signature,
    })
    .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CardExtRequest {
    /// The authorizer's or direct account's appid (whose wx_card api_ticket signs).
    pub appid: String,
    pub card_id: String,
    /// The card code, for cards with a code set by the merchant.
    pub code: Option<String>,
    /// The user the card may be received by.
    pub openid: Option<String>,
    /// The balance, for stored-value cards.
    pub balance: Option<String>,
    /// Not signed; passed through into `card_ext`.
    pub fixed_begintimestamp: Option<i64>,
    /// Not signed; passed through into `card_ext`.
    pub outer_str: Option<String>,
    /// The component, when the appid is authorized to several.
    pub component: Option<String>,
}

/// A signed `cardExt`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CardExtResponse {
    pub card_id: String,
    /// The JSON string `wx.addCard` takes as `cardExt`.
    pub card_ext: String,
    /// Unix seconds (as a string, as WeChat signs it).
    pub timestamp: String,
    pub nonce_str: String,
    pub signature: String,
}

/// Sign a `cardExt` for `wx.addCard` with the account's current wx_card api_ticket (fetched if
/// needed): the values of api_ticket, timestamp, card_id, nonce_str and the code, openid and
/// balance given, sorted and concatenated, SHA-1 (docs/JSSDK.md).
#[utoipa::path(
    post,
    path = "/v1/jssdk/card-ext",
    tag = "jssdk",
    request_body = CardExtRequest,
    responses(
        (status = 200, description = "Pass card_ext to wx.addCard", body = CardExtResponse),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 403, description = "The key is not granted this appid", body = ErrorBody),
        (status = 404, description = "Unknown appid", body = ErrorBody),
        (status = 410, description = "Authorization lost", body = ErrorBody),
        (status = 503, description = "No valid ticket right now", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn card_ext(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<CardExtRequest>,
) -> Result<Response, ApiError> {
    for (name, value) in [
        ("card_id", Some(&body.card_id)),
        ("code", body.code.as_ref()),
        ("openid", body.openid.as_ref()),
        ("balance", body.balance.as_ref()),
        ("outer_str", body.outer_str.as_ref()),
    ] {
        if value.is_some_and(|v| v.len() > MAX_FIELD) {
            return Err(ApiError::BadRequest(format!(
                "{name} is too long (at most {MAX_FIELD} bytes)"
            )));
        }
    }
    if body.card_id.is_empty() {
        return Err(ApiError::BadRequest("card_id is missing".into()));
    }
    let kind = CredentialKind::WxCard.as_str();
    let (account, kind) =
        account(&app, &caller, &body.appid, kind, body.component.as_deref()).await?;
    let ticket = read_ticket(&app, caller.id, &account, kind).await?;
    let timestamp = app.0.engine.now().as_millis().div_euclid(1000).to_string();
    let nonce_str = nonce();
    fn present(v: &Option<String>) -> Option<&str> {
        v.as_deref().filter(|s| !s.is_empty())
    }
    let signature = jssdk::card_ext_signature(&jssdk::CardExtFields {
        api_ticket: ticket.access_token.expose_secret(),
        timestamp: &timestamp,
        card_id: &body.card_id,
        nonce_str: &nonce_str,
        code: present(&body.code),
        openid: present(&body.openid),
        balance: present(&body.balance),
    });
    let mut ext = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        ext.insert(k.to_owned(), v);
    };
    put("code", body.code.clone().unwrap_or_default().into());
    put("openid", body.openid.clone().unwrap_or_default().into());
    if let Some(balance) = present(&body.balance) {
        put("balance", balance.into());
    }
    put("timestamp", timestamp.clone().into());
    put("nonce_str", nonce_str.clone().into());
    if let Some(begin) = body.fixed_begintimestamp {
        put("fixed_begintimestamp", begin.into());
    }
    if let Some(outer) = &body.outer_str {
        put("outer_str", outer.clone().into());
    }
    put("signature", signature.clone().into());
    Ok(Json(CardExtResponse {
        card_id: body.card_id,
        card_ext: serde_json::Value::Object(ext).to_string(),
        timestamp,
        nonce_str,
        signature,
    })
    .into_response())
}

/// 16 letters and digits from the thread's CSPRNG (ChaCha, seeded from the OS).
fn nonce() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(16)
        .map(char::from)
        .collect()
}
