//! The control API under `/_sim/`: a stable, documented JSON contract (docs/SIMULATOR.md) over
//! [`SimControl`]. Errors are `{"error":{"code","message"}}` with 400 (`invalid_request`),
//! 404 (`not_found`) or 409 (`conflict`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::SimControl;
use crate::api::Api;
use crate::faults::FaultSet;
use crate::model::{AccountKind, AccountSpec, ComponentSpec, ControlError};
use crate::sim::Sim;

struct CtlError(ControlError);

impl From<ControlError> for CtlError {
    fn from(e: ControlError) -> Self {
        CtlError(e)
    }
}

impl IntoResponse for CtlError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
        };
        let message = match &self.0 {
            ControlError::NotFound(m) | ControlError::Conflict(m) | ControlError::Invalid(m) => m,
        };
        let body = serde_json::json!({ "error": { "code": self.0.code(), "message": message } });
        (status, Json(body)).into_response()
    }
}

type CtlResult<T> = Result<T, CtlError>;

/// Parse a JSON body; an empty body means `T::default()` when `optional`.
fn body<T: DeserializeOwned + Default>(bytes: &Bytes, optional: bool) -> CtlResult<T> {
    if optional && bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| CtlError(ControlError::Invalid(format!("body: {e}"))))
}

fn ctl(sim: &Arc<Sim>) -> SimControl {
    SimControl { sim: sim.clone() }
}

pub(crate) fn router() -> Router<Arc<Sim>> {
    Router::new()
        .route("/_sim", get(summary))
        .route(
            "/_sim/components",
            post(create_component).get(list_components),
        )
        .route(
            "/_sim/components/{appid}",
            get(get_component).patch(patch_component),
        )
        .route("/_sim/accounts", post(create_account).get(list_accounts))
        .route("/_sim/accounts/{appid}", get(get_account))
        .route("/_sim/accounts/{appid}/authorize", post(authorize))
        .route("/_sim/accounts/{appid}/unauthorize", post(unauthorize))
        .route("/_sim/accounts/{appid}/retire_tokens", post(retire_tokens))
        .route(
            "/_sim/authorizers/{component_appid}/{appid}",
            get(get_authorizer),
        )
        .route("/_sim/bulk/authorizers", post(bulk_authorizers))
        .route("/_sim/stats", get(stats))
        .route("/_sim/stats/reset", post(reset_stats))
        .route("/_sim/validate", get(validate))
        .route(
            "/_sim/faults",
            get(get_faults).put(put_faults).delete(delete_faults),
        )
        .route("/_sim/tickets/push", post(push_tickets))
        .route("/_sim/clock", get(clock))
        .route("/_sim/clock/advance", post(advance_clock))
}

async fn summary(State(sim): State<Arc<Sim>>) -> Json<serde_json::Value> {
    let endpoints: Vec<_> = Api::ALL
        .iter()
        .map(|a| serde_json::json!({ "name": a.name(), "path": a.path(), "method": if a.is_get() { "GET" } else { "POST" } }))
        .collect();
    Json(serde_json::json!({
        "simulator": "wechat-sim",
        "base_url": sim.base_url,
        "endpoints": endpoints,
        "consent_pages": crate::consent::PATHS,
        "control": crate::CONTROL_SUMMARY,
    }))
}

async fn retire_tokens(
    State(sim): State<Arc<Sim>>,
    Path(appid): Path<String>,
) -> CtlResult<Json<serde_json::Value>> {
    let retired = ctl(&sim).retire_tokens(&appid)?;
    Ok(Json(
        serde_json::json!({ "appid": appid, "retired_series": retired }),
    ))
}

async fn create_component(State(sim): State<Arc<Sim>>, raw: Bytes) -> CtlResult<Response> {
    let spec: ComponentSpec = body(&raw, true)?;
    let info = ctl(&sim).create_component(spec)?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn list_components(State(sim): State<Arc<Sim>>) -> Response {
    Json(ctl(&sim).components()).into_response()
}

async fn get_component(
    State(sim): State<Arc<Sim>>,
    Path(appid): Path<String>,
) -> CtlResult<Response> {
    Ok(Json(ctl(&sim).component(&appid)?).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ComponentPatch {
    #[serde(default)]
    push_url: Option<String>,
}

async fn patch_component(
    State(sim): State<Arc<Sim>>,
    Path(appid): Path<String>,
    raw: Bytes,
) -> CtlResult<Response> {
    let patch: ComponentPatch = body(&raw, false)?;
    Ok(Json(ctl(&sim).set_push_url(&appid, patch.push_url)?).into_response())
}

/// `AccountSpec` has no sensible default kind; an empty body is an error.
#[derive(Deserialize)]
#[serde(transparent)]
struct AccountBody(AccountSpec);

impl Default for AccountBody {
    fn default() -> Self {
        AccountBody(AccountSpec {
            kind: AccountKind::OfficialAccount,
            appid: None,
            appsecret: None,
        })
    }
}

async fn create_account(State(sim): State<Arc<Sim>>, raw: Bytes) -> CtlResult<Response> {
    let AccountBody(spec) = body(&raw, false)?;
    let info = ctl(&sim).create_account(spec)?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

#[derive(Deserialize)]
struct AccountsQuery {
    kind: Option<AccountKind>,
    limit: Option<usize>,
}

async fn list_accounts(State(sim): State<Arc<Sim>>, Query(q): Query<AccountsQuery>) -> Response {
    Json(ctl(&sim).accounts(q.kind, q.limit.unwrap_or(1000))).into_response()
}

async fn get_account(
    State(sim): State<Arc<Sim>>,
    Path(appid): Path<String>,
) -> CtlResult<Response> {
    Ok(Json(ctl(&sim).account(&appid)?).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ComponentRef {
    #[serde(default)]
    component_appid: String,
}

fn component_ref(raw: &Bytes) -> CtlResult<String> {
    let r: ComponentRef = body(raw, false)?;
    if r.component_appid.is_empty() {
        return Err(CtlError(ControlError::Invalid(
            "component_appid is required".into(),
        )));
    }
    Ok(r.component_appid)
}

async fn authorize(
    State(sim): State<Arc<Sim>>,
    Path(appid): Path<String>,
    raw: Bytes,
) -> CtlResult<Response> {
    let component = component_ref(&raw)?;
    Ok(Json(ctl(&sim).authorize(&appid, &component)?).into_response())
}

async fn unauthorize(
    State(sim): State<Arc<Sim>>,
    Path(appid): Path<String>,
    raw: Bytes,
) -> CtlResult<Response> {
    let component = component_ref(&raw)?;
    Ok(Json(ctl(&sim).unauthorize(&appid, &component)?).into_response())
}

async fn get_authorizer(
    State(sim): State<Arc<Sim>>,
    Path((component, appid)): Path<(String, String)>,
) -> CtlResult<Response> {
    Ok(Json(ctl(&sim).authorizer(&component, &appid)?).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BulkRequest {
    component_appid: String,
    count: usize,
    #[serde(default)]
    kind: Option<AccountKind>,
}

/// JSON lines: one `{"authorizer_appid","authorizer_refresh_token","kind"}` per authorizer.
async fn bulk_authorizers(State(sim): State<Arc<Sim>>, raw: Bytes) -> CtlResult<Response> {
    let req: BulkRequest = body(&raw, false)?;
    let kind = req.kind.unwrap_or(AccountKind::OfficialAccount);
    let created = ctl(&sim).bulk_authorize(&req.component_appid, req.count, kind)?;
    let mut out = Vec::with_capacity(created.len() * 120);
    for line in &created {
        if serde_json::to_writer(&mut out, line).is_ok() {
            out.push(b'\n');
        }
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response())
}

#[derive(Deserialize)]
struct StatsQuery {
    appid: Option<String>,
}

async fn stats(State(sim): State<Arc<Sim>>, Query(q): Query<StatsQuery>) -> Response {
    let c = ctl(&sim);
    let snap = match q.appid.as_deref() {
        Some(a) => c.stats_for(a),
        None => c.stats(),
    };
    Json(snap).into_response()
}

async fn reset_stats(State(sim): State<Arc<Sim>>) -> StatusCode {
    ctl(&sim).reset_stats();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct ValidateQuery {
    #[serde(default)]
    access_token: String,
    /// A jsapi / wx_card ticket instead of a token.
    #[serde(default)]
    ticket: Option<String>,
}

async fn validate(State(sim): State<Arc<Sim>>, Query(q): Query<ValidateQuery>) -> Response {
    match &q.ticket {
        Some(ticket) => Json(ctl(&sim).validate_ticket(ticket)).into_response(),
        None => Json(ctl(&sim).validate(&q.access_token)).into_response(),
    }
}

async fn get_faults(State(sim): State<Arc<Sim>>) -> Response {
    Json(serde_json::json!({ "rules": ctl(&sim).faults() })).into_response()
}

async fn put_faults(State(sim): State<Arc<Sim>>, raw: Bytes) -> CtlResult<Response> {
    let set: FaultSet = body(&raw, false)?;
    let c = ctl(&sim);
    c.set_faults(set)?;
    Ok(Json(serde_json::json!({ "rules": c.faults() })).into_response())
}

async fn delete_faults(State(sim): State<Arc<Sim>>) -> StatusCode {
    ctl(&sim).clear_faults();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PushRequest {
    #[serde(default)]
    component_appid: Option<String>,
}

#[derive(Serialize)]
struct PushedTicket {
    component_appid: String,
    ticket: String,
}

async fn push_tickets(State(sim): State<Arc<Sim>>, raw: Bytes) -> CtlResult<Response> {
    let req: PushRequest = body(&raw, true)?;
    let pushed = ctl(&sim).push_ticket(req.component_appid.as_deref())?;
    let tickets: Vec<PushedTicket> = pushed
        .into_iter()
        .map(|(component_appid, ticket)| PushedTicket {
            component_appid,
            ticket,
        })
        .collect();
    Ok(Json(serde_json::json!({ "tickets": tickets })).into_response())
}

fn clock_json(c: &SimControl) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "now": c.now(), "offset_seconds": c.clock_offset().as_secs() }))
}

async fn clock(State(sim): State<Arc<Sim>>) -> Json<serde_json::Value> {
    clock_json(&ctl(&sim))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Advance {
    seconds: u64,
}

async fn advance_clock(
    State(sim): State<Arc<Sim>>,
    raw: Bytes,
) -> CtlResult<Json<serde_json::Value>> {
    let req: Advance = body(&raw, false)?;
    if req.seconds > crate::clock::MAX_CLOCK_OFFSET.as_secs() {
        return Err(CtlError(ControlError::Invalid(format!(
            "seconds: at most {} (a hundred years)",
            crate::clock::MAX_CLOCK_OFFSET.as_secs()
        ))));
    }
    let c = ctl(&sim);
    c.advance_clock(Duration::from_secs(req.seconds));
    Ok(clock_json(&c))
}
