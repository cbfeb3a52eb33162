//! The operator dashboard, `/ui/` on the internal listener (never on the public one): sign-in with
//! an admin API key, then the fleet at a glance, the authorizers (searchable, paginated, with their
//! details, refresh and revoke actions and a re-bind link), the clients and the refresh timeline.
//!
//! - **Sessions** are server-side, in the store (`sessions.rs`), so every replica knows them:
//!   signing in with an admin key gives a random session id in a cookie (`HttpOnly`,
//!   `SameSite=Strict`, `Path=/ui`, `Secure` when the request came over HTTPS through a proxy
//!   saying `X-Forwarded-Proto: https`), idle for at most 30 minutes and alive for at most 8 hours.
//!   The store keeps only the id's SHA-256 and the key's hash, never the key: each request
//!   re-checks that hash against the key index, so revoking or rotating the key out ends its
//!   sessions. Sign-out deletes the session, on every replica.
//! - **CSRF**: every state change is a POST carrying the session's token (derived from its id),
//!   compared in constant time; the cookie is `SameSite=Strict` too, and a browser's `Origin` must
//!   be this host (`Referrer-Policy: same-origin`, so the browser sends it rather than `null`).
//! - **Pages** are server-rendered HTML (maud, escaped by default) with one stylesheet, no script
//!   and nothing from another origin, so they work offline; the response headers forbid framing,
//!   sniffing, referrers and caching. The language follows `Accept-Language` (Chinese by default,
//!   like the authorization pages; English when the browser prefers it).

/// The signed-in caller of a page handler, or `return` the response that replaces the page (the
/// sign-in form).
macro_rules! signed_or_return {
    ($app:expr, $headers:expr) => {
        match super::signed($app, $headers).await {
            Ok(s) => s,
            Err(response) => return response,
        }
    };
}

mod clients;
mod pages;
mod sessions;

use sessions::LIFETIME;
pub use sessions::Sessions;

use axum::Router;
use axum::extract::{Form, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_LANGUAGE, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, LOCATION,
    REFERRER_POLICY, SET_COOKIE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::AppState;
use crate::model::ApiKeyHash;
use crate::vault::hash_api_key;

/// The session cookie's name.
const COOKIE_NAME: &str = "wxtoken_ui";

/// The dashboard's routes, merged into the internal listener.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { see_other("/ui/") }))
        .route("/ui/", get(pages::overview))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/login/once", get(login_once))
        .route("/ui/logout", post(logout))
        .route("/ui/authorizers", get(pages::authorizers))
        .route("/ui/authorizers/{appid}", get(pages::authorizer))
        .route("/ui/authorizers/{appid}/refresh", post(pages::refresh))
        .route(
            "/ui/authorizers/{appid}/revoke",
            get(pages::confirm_revoke).post(pages::revoke),
        )
        .route("/ui/clients", get(clients::list).post(clients::add))
        .route("/ui/clients/{name}/rotate", post(clients::rotate))
        .route(
            "/ui/clients/{name}/revoke",
            get(clients::confirm_revoke).post(clients::revoke),
        )
        .route("/ui/style.css", get(style))
        .route("/ui/live.js", get(live_js))
}

/// How many minutes of refresh counts the overview charts (three hours).
pub(crate) const RATE_MINUTES: i64 = 180;

/// Refreshes per minute are kept this long (minutes).
const RATE_RETENTION: i64 = 24 * 60;

/// This process's refresh counts, written to the store once a minute (`refresh_minutes`) by
/// `app.rs`'s upkeep, so the overview's chart shows every replica and survives restarts.
pub struct RefreshRates {
    /// Random per process start, like the heartbeat's server id.
    server_id: String,
    /// The engine's counters when last written (zero at start: the engine counts from zero).
    /// Held across the write, so two writers never both add the same refreshes.
    last: tokio::sync::Mutex<(u64, u64)>,
}

impl Default for RefreshRates {
    fn default() -> Self {
        Self {
            server_id: format!("{:016x}", rand::random::<u64>()),
            last: tokio::sync::Mutex::new((0, 0)),
        }
    }
}

impl RefreshRates {
    /// Writes the refreshes since the last call to the current minute; on a store error they are
    /// kept for the next call. Prunes minutes older than a day.
    pub async fn record(
        &self,
        store: &dyn crate::store::Store,
        stats: &crate::refresh::EngineStats,
        now: crate::model::Timestamp,
    ) -> Result<(), crate::store::StoreError> {
        let counters = (stats.refreshed, stats.failed);
        let mut last = self.last.lock().await;
        let minute = now.as_millis().div_euclid(60_000);
        let delta = crate::model::RefreshMinute {
            minute,
            refreshed: counters.0.saturating_sub(last.0),
            failed: counters.1.saturating_sub(last.1),
        };
        if delta.refreshed > 0 || delta.failed > 0 {
            store
                .ops()
                .add_refresh_minute(&self.server_id, &delta)
                .await?;
        }
        *last = (last.0.max(counters.0), last.1.max(counters.1));
        drop(last);
        store
            .ops()
            .prune_refresh_minutes(minute - RATE_RETENTION)
            .await?;
        Ok(())
    }
}

/// The last [`RATE_MINUTES`] minutes up to `now`'s, oldest first, every replica's refreshes
/// together: (refreshed, failed), zero where none were recorded.
pub(crate) async fn rate_minutes(
    store: &dyn crate::store::Store,
    now: crate::model::Timestamp,
) -> Result<Vec<(u64, u64)>, crate::store::StoreError> {
    let current = now.as_millis().div_euclid(60_000);
    let first = current - RATE_MINUTES + 1;
    let mut minutes = vec![(0, 0); RATE_MINUTES as usize];
    for m in store.ops().refresh_minutes(first).await? {
        if let Some(slot) = usize::try_from(m.minute - first)
            .ok()
            .and_then(|i| minutes.get_mut(i))
        {
            *slot = (m.refreshed, m.failed);
        }
    }
    Ok(minutes)
}

/// 32 random bytes from the OS-seeded CSPRNG, base64url.
fn random_token() -> String {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The pages' language: English when the browser's first preference among Chinese and English
/// is English, Chinese otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    Zh,
    En,
}

impl Lang {
    fn of(headers: &HeaderMap) -> Self {
        let accept = headers
            .get(axum::http::header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // Tags in the order given, ignoring q (browsers list them by preference).
        for tag in accept.split(',') {
            let tag = tag
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if tag.starts_with("zh") {
                return Lang::Zh;
            }
            if tag.starts_with("en") {
                return Lang::En;
            }
        }
        Lang::Zh
    }

    fn code(self) -> &'static str {
        match self {
            Lang::Zh => "zh-CN",
            Lang::En => "en",
        }
    }

    /// The text in this language.
    pub(crate) fn t(self, zh: &'static str, en: &'static str) -> &'static str {
        match self {
            Lang::Zh => zh,
            Lang::En => en,
        }
    }
}

/// A signed-in request: the client's name, the session's CSRF token and the page language.
pub(crate) struct Signed {
    pub name: String,
    pub csrf: String,
    pub lang: Lang,
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE_NAME).then(|| value.to_owned())
        })
}

/// The signed-in caller of a dashboard request, or the response to send instead: to the sign-in
/// page when there is no live session, or when its key no longer works or is no longer admin.
pub(crate) async fn signed(app: &AppState, headers: &HeaderMap) -> Result<Signed, Response> {
    let to_login = || see_other("/ui/login");
    let lang = Lang::of(headers);
    let id = cookie_value(headers).ok_or_else(to_login)?;
    let live = app
        .0
        .ui
        .touch(&id)
        .await
        .map_err(|e| store_down(lang, &e))?
        .ok_or_else(to_login)?;
    match app.0.keys.authenticate_hash(live.key).await {
        Ok(caller) if caller.admin => Ok(Signed {
            name: live.name,
            csrf: live.csrf,
            lang,
        }),
        _ => {
            app.0
                .ui
                .remove(&id)
                .await
                .map_err(|e| store_down(lang, &e))?;
            Err(to_login())
        }
    }
}

/// The page for a request the store could not serve (sessions live in it).
fn store_down(lang: Lang, e: &crate::store::StoreError) -> Response {
    tracing::warn!(error = %e, "dashboard session not read or written");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        lang,
        lang.t("暂时无法服务", "Temporarily unavailable"),
        None,
        html! {
            p id="error" role="alert" {
                (lang.t("存储暂时不可用，请稍后重试。", "The store is unavailable; try again shortly."))
            }
        },
    )
}

/// A POST's CSRF check: the form's token must be the session's, and a browser's `Origin`, when
/// sent, this host.
// The error is the response to send, returned at once by the handler: boxing it buys nothing.
#[allow(clippy::result_large_err)]
pub(crate) fn check_csrf(
    signed: &Signed,
    headers: &HeaderMap,
    token: &str,
) -> Result<(), Response> {
    use subtle::ConstantTimeEq as _;
    let same_token: bool = signed.csrf.as_bytes().ct_eq(token.as_bytes()).into();
    if same_token && same_origin(headers) {
        Ok(())
    } else {
        Err(page(
            StatusCode::FORBIDDEN,
            signed.lang,
            signed.lang.t("请求被拒绝", "Request refused"),
            None,
            html! {
                p id="error" {
                    (signed.lang.t(
                        "表单已过期或来自其他网站，请返回页面重试。",
                        "The form expired or came from another site; go back and try again."
                    ))
                }
            },
        ))
    }
}

/// False when the browser says the request comes from another origin than this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return true;
    };
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin = origin.to_str().unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    !host.is_empty() && origin_host == host
}

pub(crate) fn see_other(location: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(
            LOCATION,
            HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static("/ui/")),
        )],
    )
        .into_response()
}

/// An error shown as a page with a way back (the API's message: never a secret).
pub(crate) fn error_page(signed: &Signed, e: super::error::ApiError, back: &str) -> Response {
    let lang = signed.lang;
    page(
        e.status(),
        lang,
        lang.t("出错了", "Something went wrong"),
        Some(signed),
        html! {
            p id="error" role="alert" { (e.to_string()) }
            p { a href=(back) { (lang.t("返回", "Back")) } }
        },
    )
}

/// A dashboard page: the shared layout and the headers every page carries.
pub(crate) fn page(
    status: StatusCode,
    lang: Lang,
    title: &str,
    signed: Option<&Signed>,
    body: Markup,
) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · wxtoken" }
                link rel="stylesheet" href="/ui/style.css";
            }
            body {
                header {
                    span.brand { "wxtoken" }
                    @if let Some(s) = signed {
                        nav aria-label=(lang.t("主导航", "Main")) {
                            a href="/ui/" { (lang.t("概览", "Overview")) }
                            a href="/ui/authorizers" { (lang.t("授权方", "Authorizers")) }
                            a href="/ui/clients" { (lang.t("客户端", "Clients")) }
                        }
                        form.signout method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            span.who { (s.name) }
                            button type="submit" { (lang.t("退出", "Sign out")) }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    };
    let headers = [
        (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; \
                 img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        ),
        (X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        // Not no-referrer: under it a browser sends `Origin: null` with the dashboard's own forms,
        // which the origin check must refuse. Nothing is sent to other sites either way.
        (REFERRER_POLICY, HeaderValue::from_static("same-origin")),
        (CONTENT_LANGUAGE, HeaderValue::from_static(lang.code())),
    ];
    (status, headers, markup).into_response()
}

async fn login_form(headers: HeaderMap) -> Response {
    let lang = Lang::of(&headers);
    login_page(StatusCode::OK, lang, None)
}

fn login_page(status: StatusCode, lang: Lang, error: Option<&str>) -> Response {
    page(
        status,
        lang,
        lang.t("登录", "Sign in"),
        None,
        html! {
            @if let Some(e) = error { p id="error" role="alert" { (e) } }
            form.login method="post" action="/ui/login" {
                label for="api_key" { (lang.t("管理员 API 密钥", "Admin API key")) }
                input id="api_key" name="api_key" type="password" autocomplete="off" required autofocus;
                button type="submit" { (lang.t("登录", "Sign in")) }
            }
            p.hint {
                (lang.t(
                    "用 wxtoken clients add NAME --appid '*' --admin 创建的密钥。密钥只在此表单中发送，不会出现在网址里。",
                    "A key made with wxtoken clients add NAME --appid '*' --admin. It is sent only in this form, never in a URL."
                ))
            }
        },
    )
}

#[derive(Deserialize)]
struct LoginForm {
    api_key: String,
}

async fn login(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let lang = Lang::of(&headers);
    if !same_origin(&headers) {
        return login_page(
            StatusCode::FORBIDDEN,
            lang,
            Some(lang.t(
                "来自其他网站的登录被拒绝。",
                "A sign-in from another site is refused.",
            )),
        );
    }
    let key = form.api_key.trim();
    let caller = match app.0.keys.authenticate(key).await {
        Ok(caller) => caller,
        Err(_) => {
            return login_page(
                StatusCode::UNAUTHORIZED,
                lang,
                Some(lang.t("密钥无效。", "That key is not valid.")),
            );
        }
    };
    if !caller.admin {
        tracing::warn!(client = %caller.name, "dashboard sign-in with a key that is not an admin key refused");
        return login_page(
            StatusCode::FORBIDDEN,
            lang,
            Some(lang.t("此密钥不是管理员密钥。", "This key is not an admin key.")),
        );
    }
    tracing::info!(client = %caller.name, "signing in to the dashboard");
    start_session(&app, &headers, lang, hash_api_key(key), caller.name.clone()).await
}

/// Signs in with a session for `key` (a checked admin key's hash) and sends the browser to the
/// overview with its cookie.
async fn start_session(
    app: &AppState,
    headers: &HeaderMap,
    lang: Lang,
    key: ApiKeyHash,
    name: String,
) -> Response {
    let id = match app.0.ui.create(key, name).await {
        Ok(Some(id)) => id,
        Ok(None) => {
            return login_page(
                StatusCode::SERVICE_UNAVAILABLE,
                lang,
                Some(lang.t(
                    "会话过多，请稍后再试。",
                    "Too many sessions; try again later.",
                )),
            );
        }
        Err(e) => return store_down(lang, &e),
    };
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE_NAME}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
        LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    let mut response = see_other("/ui/");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(SET_COOKIE, v);
    }
    response
}

#[derive(Deserialize)]
struct OnceQuery {
    token: String,
}

/// `GET /ui/login/once?token=…`: a one-time link (see [`Sessions::one_time_token`]) exchanged for
/// a session; used or expired, it leads to the sign-in form.
async fn login_once(
    State(app): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<OnceQuery>,
) -> Response {
    let lang = Lang::of(&headers);
    let (key, name) = match app.0.ui.take_once(&q.token).await {
        Ok(Some(taken)) => taken,
        Ok(None) => {
            return login_page(
                StatusCode::UNAUTHORIZED,
                lang,
                Some(lang.t(
                    "此登录链接已用过或已过期。",
                    "This sign-in link was used or has expired.",
                )),
            );
        }
        Err(e) => return store_down(lang, &e),
    };
    match app.0.keys.authenticate_hash(key).await {
        Ok(caller) if caller.admin => start_session(&app, &headers, lang, key, name).await,
        _ => login_page(
            StatusCode::UNAUTHORIZED,
            lang,
            Some(lang.t("密钥无效。", "That key is not valid.")),
        ),
    }
}

async fn live_js() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("live.js"))
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

async fn logout(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let signed = match signed(&app, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(r) = check_csrf(&signed, &headers, &form.csrf) {
        return r;
    }
    if let Some(id) = cookie_value(&headers)
        && let Err(e) = app.0.ui.remove(&id).await
    {
        return store_down(signed.lang, &e);
    }
    let mut response = see_other("/ui/login");
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static("wxtoken_ui=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("style.css"))
}

/// One of the dashboard's two files, built into the binary.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("max-age=300")),
            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_language_follows_the_browsers_first_choice_between_chinese_and_english() {
        let lang = |accept: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                axum::http::header::ACCEPT_LANGUAGE,
                HeaderValue::from_str(accept).unwrap(),
            );
            Lang::of(&headers)
        };
        assert_eq!(Lang::of(&HeaderMap::new()), Lang::Zh, "Chinese by default");
        assert_eq!(lang("en-US,en;q=0.9"), Lang::En);
        assert_eq!(lang("zh-CN,zh;q=0.9,en;q=0.8"), Lang::Zh);
        assert_eq!(lang("fr-FR,en;q=0.5,zh;q=0.3"), Lang::En);
        assert_eq!(lang("fr-FR"), Lang::Zh);
    }

    #[tokio::test]
    async fn refresh_counts_are_written_per_minute_and_read_back_as_three_hours_of_every_server() {
        let store = crate::store::open("sqlite::memory:").await.expect("store");
        let stats = |refreshed, failed| crate::refresh::EngineStats {
            refreshed,
            failed,
            ..Default::default()
        };
        let (a, b) = (RefreshRates::default(), RefreshRates::default());
        let now = crate::model::Timestamp::from_millis(1_800_000_000_000);
        let before = now.minus(std::time::Duration::from_secs(120));
        a.record(&*store, &stats(10, 1), before).await.unwrap();
        a.record(&*store, &stats(15, 1), now).await.unwrap();
        b.record(&*store, &stats(2, 3), now).await.unwrap();
        let minutes = rate_minutes(&*store, now).await.unwrap();
        assert_eq!(minutes.len(), RATE_MINUTES as usize);
        assert_eq!(
            minutes[RATE_MINUTES as usize - 1],
            (7, 3),
            "both servers' last minute"
        );
        assert_eq!(
            minutes[RATE_MINUTES as usize - 3],
            (10, 1),
            "counted from zero at start"
        );
        assert_eq!(minutes.iter().map(|m| m.0).sum::<u64>(), 17);
        // A day later the old minutes are pruned.
        let later = now.plus(std::time::Duration::from_secs(25 * 3600));
        a.record(&*store, &stats(15, 1), later).await.unwrap();
        assert!(store.ops().refresh_minutes(0).await.unwrap().is_empty());
    }
}
