//! The HTTP surfaces. The public listener (WeChat's pushes, the authorization pages) and the
//! internal one (token API, admin API, metrics) are separate routers on separate sockets, so no
//! internal path can ever answer publicly. Handlers are thin: they call the engine and the store
//! and turn outcomes into `ApiError`s.
//!
//! May depend on every library module; nothing depends on it but `cli` and `app`.
//!
//! - [`public_router`]: `/wechat/events` ([`events`]), `/authorize` and `/authorize/callback`
//!   ([`authorize`]); everything else is 404.
//! - [`internal_router`]: `/v1/tokens/...` and `/v1/component/token` ([`tokens`]), `/v1/tickets/...`
//!   and `/v1/jssdk/...` ([`tickets`]), `/v1/admin/...`
//!   ([`admin`]), `/healthz`, `/readyz`, `/metrics`, `/openapi.json` ([`ops`]). The OpenAPI document
//!   is generated from the handlers' annotations (utoipa), so it cannot drift from the routes.
//! - Every route has a request timeout (503 past it) except the long-poll, which bounds itself by
//!   `server.long_poll_max`; bodies are capped at `server.max_body_bytes` (413); every answer is
//!   counted by route template and status; every 5xx is logged once with its cause.

pub mod admin;
pub mod auth;
pub mod authorize;
pub mod error;
pub mod events;
pub mod gateway;
pub mod limits;
pub mod ops;
pub mod serve;
pub mod tickets;
pub mod tokens;
pub mod ui;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use wechat::authorize::AuthorizePages;
use wechat::client::WechatClient;
use wechat::event::MsgCrypt;

use crate::config::ServerConfig;
use crate::model::ComponentAppid;
use crate::refresh::Engine;
use crate::store::Store;
use crate::telemetry;
use crate::vault::Vault;
use auth::{KeyIndex, ReadCounter};
use error::ApiError;

/// Everything a handler may use. Cloned per request (one `Arc`).
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

pub struct Shared {
    pub engine: Engine,
    pub store: Arc<dyn Store>,
    pub vault: Arc<Vault>,
    pub keys: Arc<KeyIndex>,
    pub reads: Arc<ReadCounter>,
    /// Calls through the gateway per appid, day and path (`gateway_calls`).
    pub gateway_calls: Arc<gateway::CallCounter>,
    /// Each configured component's push crypto (its previous EncodingAESKey included).
    pub pushes: HashMap<ComponentAppid, MsgCrypt>,
    pub wechat: WechatClient,
    pub pages: AuthorizePages,
    /// The rate limits of the anonymous routes that call WeChat.
    pub limits: limits::AnonymousLimits,
    /// Each client's invalidation-report rate.
    pub reports: limits::ReportLimits,
    pub server: ServerConfig,
    pub metrics: PrometheusHandle,
    /// Cancelled at shutdown: long-polls answer at once so the listeners can close.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The dashboard's signed-in sessions (in the store, shared by every replica).
    pub ui: ui::Sessions,
    /// This process's refreshes per minute, written for the dashboard's chart.
    pub refresh_rates: ui::RefreshRates,
    /// The last pass over the token cache for `/metrics`.
    pub cache_pass: ops::CachePasses,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: Engine,
        store: Arc<dyn Store>,
        vault: Arc<Vault>,
        pushes: HashMap<ComponentAppid, MsgCrypt>,
        wechat: WechatClient,
        pages: AuthorizePages,
        server: ServerConfig,
        metrics: PrometheusHandle,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Self {
        Self {
            keys: Arc::new(KeyIndex::new(store.clone(), server.key_cache_ttl)),
            ui: ui::Sessions::new(store.clone()),
            reads: Arc::new(ReadCounter::default()),
            gateway_calls: Arc::new(gateway::CallCounter::default()),
            limits: limits::AnonymousLimits::new(&server),
            reports: limits::ReportLimits::new(&server),
            engine,
            store,
            vault,
            pushes,
            wechat,
            pages,
            server,
            metrics,
            shutdown,
            refresh_rates: ui::RefreshRates::default(),
            cache_pass: ops::CachePasses::default(),
        }
    }

    /// The component a request is about: the one named, else the only one configured.
    pub fn component(&self, requested: Option<&str>) -> Result<ComponentAppid, ApiError> {
        match requested {
            Some(appid) => {
                let appid = ComponentAppid::parse(appid)
                    .map_err(|e| ApiError::BadRequest(format!("component: {e}")))?;
                if self.pushes.contains_key(&appid) {
                    Ok(appid)
                } else {
                    Err(ApiError::NotFound(format!(
                        "component {appid} is not configured"
                    )))
                }
            }
            None => {
                let mut configured = self.pushes.keys();
                match (configured.next(), configured.next()) {
                    (Some(only), None) => Ok(only.clone()),
                    (None, _) => Err(ApiError::NotFound("no component is configured".into())),
                    _ => Err(ApiError::BadRequest(
                        "several components are configured: pass ?component=APPID".into(),
                    )),
                }
            }
        }
    }
}

impl FromRef<AppState> for Arc<KeyIndex> {
    fn from_ref(state: &AppState) -> Self {
        Arc::clone(&state.0.keys)
    }
}

/// The internal API's OpenAPI document: metadata and the bearer scheme; the paths come from the
/// handlers' `#[utoipa::path]` annotations as they are routed.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "wxtoken internal API",
        description = "Token reads, invalidation reports, the admin API and operations endpoints \
                       of wxtoken, the WeChat Open Platform token central-control server. \
                       Authenticate with `Authorization: Bearer <api key>`."
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "tokens", description = "Reading tokens and reporting invalid ones"),
        (name = "jssdk", description = "JS-SDK tickets (jsapi, wx_card) and the wx.config and cardExt signatures"),
        (name = "admin", description = "Authorizers, accounts and clients (admin keys only)"),
        (name = "operations", description = "Health, readiness, metrics")
    )
)]
struct ApiDoc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The internal listener's routes and their OpenAPI document.
fn internal_api(timeout: Duration) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    // The long-poll bounds its own wait; every other route gets the request timeout.
    let long_poll = OpenApiRouter::new()
        .routes(utoipa_axum::routes!(tokens::get_token))
        .routes(utoipa_axum::routes!(tickets::get_ticket));
    let bounded = OpenApiRouter::new()
        .routes(utoipa_axum::routes!(tokens::invalidate))
        .routes(utoipa_axum::routes!(tickets::invalidate))
        .routes(utoipa_axum::routes!(tickets::jssdk_config))
        .routes(utoipa_axum::routes!(tickets::card_ext))
        .routes(utoipa_axum::routes!(tokens::component_token))
        .merge(admin::routes())
        .merge(ops::routes())
        .route_layer(middleware::from_fn_with_state(timeout, request_timeout));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(long_poll)
        .merge(bounded)
        .split_for_parts()
}

/// The OpenAPI document of the internal API (also served at `/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    internal_api(Duration::from_secs(10)).1
}

/// The internal listener: token API, admin API, operations.
pub fn internal_router(state: AppState) -> Router {
    let (router, api) = internal_api(state.0.server.request_timeout);
    let api = Arc::new(api);
    router
        .merge(ui::routes().route_layer(middleware::from_fn_with_state(
            state.0.server.request_timeout,
            request_timeout,
        )))
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let api = Arc::clone(&api);
                async move { axum::Json(api.as_ref().clone()) }
            }),
        )
        .route_layer(middleware::from_fn_with_state("internal", observe))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.0.server.max_body_bytes))
        .with_state(state)
}

/// The public listener: WeChat's pushes and the authorization pages, nothing else.
pub fn public_router(state: AppState) -> Router {
    let timeout = state.0.server.request_timeout;
    let authorize = Router::new()
        .route("/authorize", axum::routing::get(authorize::start))
        .route(
            "/authorize/callback",
            axum::routing::get(authorize::callback),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), limits::limit));
    Router::new()
        .route(
            "/wechat/events",
            axum::routing::post(events::receive).get(events::handshake),
        )
        .merge(authorize)
        .route_layer(middleware::from_fn_with_state(timeout, request_timeout))
        .route_layer(middleware::from_fn_with_state("public", observe))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(
            state
                .0
                .server
                .max_body_bytes
                .min(wechat::event::MAX_PUSH_BYTES),
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

/// Answers 503 when a request runs past `server.request_timeout` (dropping the handler's future;
/// refreshes run on the engine's tracker, so a dropped request never cancels one).
async fn request_timeout(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(limit).into_response(),
    }
}

/// The one observing middleware: counts every answer by listener, route template and status, and
/// logs each 5xx's cause once. The counter handles are cached per (listener, route, status), so
/// the hot path does one short scan and an atomic add, not a label set built and hashed by the
/// recorder on every request.
async fn observe(State(listener): State<&'static str>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("", MatchedPath::as_str);
    request_counter(listener, route, response.status().as_u16()).increment(1);
    if response.status().is_server_error() {
        error::log_server_error(route, &response);
    }
    response
}

fn request_counter(listener: &'static str, route: &str, status: u16) -> metrics::Counter {
    type Counters = parking_lot::RwLock<Vec<(&'static str, Box<str>, u16, metrics::Counter)>>;
    static COUNTERS: std::sync::OnceLock<Counters> = std::sync::OnceLock::new();
    let counters = COUNTERS.get_or_init(Counters::default);
    // Routes are a handful of templates and statuses a handful of codes: a short list scanned
    // under a read lock beats hashing a key per request.
    let find = |list: &[(&'static str, Box<str>, u16, metrics::Counter)]| {
        list.iter()
            .find(|(l, r, s, _)| *s == status && *l == listener && **r == *route)
            .map(|(_, _, _, c)| c.clone())
    };
    if let Some(counter) = find(&counters.read()) {
        return counter;
    }
    let mut list = counters.write();
    if let Some(counter) = find(&list) {
        return counter;
    }
    let counter = metrics::counter!(
        telemetry::HTTP_REQUESTS_TOTAL,
        "listener" => listener,
        "route" => route.to_owned(),
        "status" => status.to_string(),
    );
    list.push((listener, route.into(), status, counter.clone()));
    counter
}
