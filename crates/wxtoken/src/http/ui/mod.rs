//! The operator dashboard, `/ui/` on the internal listener (never on the public one): sign-in with
//! an admin API key, then the fleet at a glance, the authorizers (searchable, paginated, with their
//! details, a refresh button and a re-bind link) and the refresh timeline.
//!
//! - **Sessions** are server-side: signing in with an admin key gives a random session id in a
//!   cookie (`HttpOnly`, `SameSite=Strict`, `Path=/ui`, `Secure` when the request came over HTTPS
//!   through a proxy saying `X-Forwarded-Proto: https`), idle for at most 30 minutes and alive for
//!   at most 8 hours. The process keeps only the id's SHA-256 and the key's hash, never the key:
//!   each request re-checks that hash against the key index, so revoking or rotating the key out
//!   ends its sessions. Sign-out deletes the session. Sessions live in this process's memory: behind
//!   a load balancer over several replicas, pin the dashboard to one (sticky sessions).
//! - **CSRF**: every state change is a POST carrying the session's random token, compared in
//!   constant time; the cookie is `SameSite=Strict` too, and a browser's `Origin` must be this
//!   host (`Referrer-Policy: same-origin`, so the browser sends it rather than `null`).
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

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_LANGUAGE, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, LOCATION,
    REFERRER_POLICY, SET_COOKIE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dashmap::DashMap;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::AppState;
use crate::model::ApiKeyHash;
use crate::vault::hash_api_key;

/// The session cookie's name.
const COOKIE_NAME: &str = "wxtoken_ui";
/// A session unused this long ends.
const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after sign-in, however used.
const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// At most this many sessions are kept; past it, expired ones are dropped and, if still full, the
/// sign-in is refused (a flood of sign-ins with a valid admin key cannot exhaust memory).
const MAX_SESSIONS: usize = 10_000;

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
        .route("/ui/clients", get(clients::list).post(clients::add))
        .route("/ui/clients/{name}/rotate", post(clients::rotate))
        .route(
            "/ui/clients/{name}/revoke",
            get(clients::confirm_revoke).post(clients::revoke),
        )
        .route("/ui/style.css", get(style))
        .route("/ui/live.js", get(live_js))
}

/// The signed-in sessions of this process, by the SHA-256 of their id.
#[derive(Default)]
pub struct Sessions {
    map: DashMap<[u8; 32], Session>,
    /// One-time sign-in links (`wxtoken demo`): the SHA-256 of the token → the key's hash, the
    /// client's name, and when the link was made.
    once: DashMap<[u8; 32], (ApiKeyHash, String, Instant)>,
}

/// How many minutes of refresh counts the overview charts (three hours).
const RATE_MINUTES: usize = 180;

/// Refreshes per minute over the last three hours, ok and failed, sampled once a minute from the
/// engine's counters (`app.rs`'s upkeep calls [`RefreshRates::sample`]).
#[derive(Default)]
pub struct RefreshRates {
    inner: parking_lot::Mutex<RateWindow>,
}

#[derive(Default)]
struct RateWindow {
    minutes: std::collections::VecDeque<(u64, u64)>,
    last: Option<(u64, u64)>,
}

impl RefreshRates {
    /// Records the minute since the last sample (the first sample only sets the baseline).
    pub fn sample(&self, stats: &crate::refresh::EngineStats) {
        let now = (stats.refreshed, stats.failed);
        let mut w = self.inner.lock();
        if let Some((ok, failed)) = w.last {
            if w.minutes.len() == RATE_MINUTES {
                w.minutes.pop_front();
            }
            w.minutes
                .push_back((now.0.saturating_sub(ok), now.1.saturating_sub(failed)));
        }
        w.last = Some(now);
    }

    /// The sampled minutes, oldest first: (refreshed, failed).
    pub fn minutes(&self) -> Vec<(u64, u64)> {
        self.inner.lock().minutes.iter().copied().collect()
    }
}

/// A one-time sign-in link works this long.
const ONCE: Duration = Duration::from_secs(10 * 60);

struct Session {
    key: ApiKeyHash,
    name: String,
    csrf: String,
    created: Instant,
    last: parking_lot::Mutex<Instant>,
}

impl Sessions {
    fn digest(id: &str) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(id.as_bytes()).into()
    }

    /// A new session for the key `key` of client `name`; returns its id (for the cookie), or
    /// `None` when the table is full.
    fn create(&self, key: ApiKeyHash, name: String) -> Option<String> {
        if self.map.len() >= MAX_SESSIONS {
            let now = Instant::now();
            self.map.retain(|_, s| !s.expired(now));
            if self.map.len() >= MAX_SESSIONS {
                return None;
            }
        }
        let id = random_token();
        let now = Instant::now();
        self.map.insert(
            Self::digest(&id),
            Session {
                key,
                name,
                csrf: random_token(),
                created: now,
                last: parking_lot::Mutex::new(now),
            },
        );
        Some(id)
    }

    /// A one-time sign-in token for the admin key `key` of client `name` (`wxtoken demo` prints it
    /// as a link): exchanged once, within 10 minutes, for a session; the key never is in a URL.
    pub fn one_time_token(&self, key: ApiKeyHash, name: String) -> String {
        let now = Instant::now();
        self.once
            .retain(|_, (_, _, at)| now.duration_since(*at) < ONCE);
        let token = random_token();
        self.once.insert(Self::digest(&token), (key, name, now));
        token
    }

    fn remove(&self, id: &str) {
        self.map.remove(&Self::digest(id));
    }

    /// The live session `id` (its use recorded), or `None` (expired ones are removed).
    fn touch(&self, id: &str) -> Option<(ApiKeyHash, String, String)> {
        self.touch_at(id, Instant::now())
    }

    fn touch_at(&self, id: &str, now: Instant) -> Option<(ApiKeyHash, String, String)> {
        let digest = Self::digest(id);
        let live = {
            let s = self.map.get(&digest)?;
            if s.expired(now) {
                None
            } else {
                *s.last.lock() = now;
                Some((s.key, s.name.clone(), s.csrf.clone()))
            }
        };
        if live.is_none() {
            self.map.remove(&digest);
        }
        live
    }

    /// How many sessions are held (tests, metrics).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl Session {
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.created) >= LIFETIME
            || now.duration_since(*self.last.lock()) >= IDLE
    }
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
    let id = cookie_value(headers).ok_or_else(to_login)?;
    let (key, name, csrf) = app.0.ui.touch(&id).ok_or_else(to_login)?;
    match app.0.keys.authenticate_hash(key).await {
        Ok(caller) if caller.admin => Ok(Signed {
            name,
            csrf,
            lang: Lang::of(headers),
        }),
        _ => {
            app.0.ui.remove(&id);
            Err(to_login())
        }
    }
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
    let Some(id) = app.0.ui.create(hash_api_key(key), caller.name.clone()) else {
        return login_page(
            StatusCode::SERVICE_UNAVAILABLE,
            lang,
            Some(lang.t(
                "会话过多，请稍后再试。",
                "Too many sessions; try again later.",
            )),
        );
    };
    tracing::info!(client = %caller.name, "signed in to the dashboard");
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

/// Signs in with a session for `key` (a checked admin key's hash) and sends the browser to the
/// overview with its cookie.
fn start_session(
    app: &AppState,
    headers: &HeaderMap,
    key: ApiKeyHash,
    name: String,
) -> Option<Response> {
    let id = app.0.ui.create(key, name)?;
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
    Some(response)
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
    let entry = app.0.ui.once.remove(&Sessions::digest(&q.token));
    let Some((_, (key, name, at))) = entry.filter(|(_, (_, _, at))| at.elapsed() < ONCE) else {
        return login_page(
            StatusCode::UNAUTHORIZED,
            lang,
            Some(lang.t(
                "此登录链接已用过或已过期。",
                "This sign-in link was used or has expired.",
            )),
        );
    };
    let _ = at;
    match app.0.keys.authenticate_hash(key).await {
        Ok(caller) if caller.admin => {
            start_session(&app, &headers, key, name).unwrap_or_else(|| {
                login_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    lang,
                    Some(lang.t(
                        "会话过多，请稍后再试。",
                        "Too many sessions; try again later.",
                    )),
                )
            })
        }
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
    if let Some(id) = cookie_value(&headers) {
        app.0.ui.remove(&id);
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

    #[test]
    fn refresh_rates_count_each_minute_since_the_last_sample_and_keep_three_hours() {
        let rates = RefreshRates::default();
        let stats = |refreshed, failed| crate::refresh::EngineStats {
            refreshed,
            failed,
            ..Default::default()
        };
        rates.sample(&stats(10, 1));
        assert!(
            rates.minutes().is_empty(),
            "the first sample is the baseline"
        );
        rates.sample(&stats(15, 1));
        rates.sample(&stats(15, 4));
        assert_eq!(rates.minutes(), [(5, 0), (0, 3)]);
        for i in 0..RATE_MINUTES as u64 {
            rates.sample(&stats(15 + i, 4));
        }
        assert_eq!(rates.minutes().len(), RATE_MINUTES);
    }

    #[test]
    fn sessions_expire_when_idle_or_old_and_a_one_time_token_is_unknown_to_them() {
        let sessions = Sessions::default();
        let key = hash_api_key("wxt_test");
        let id = sessions.create(key, "ops".into()).expect("room");
        assert!(sessions.touch(&id).is_some());
        assert!(sessions.touch("not-a-session").is_none());
        // Used again within its idle limit it lives on; after it, it is gone, and removed.
        let later = Instant::now() + IDLE - Duration::from_secs(60);
        assert!(sessions.touch_at(&id, later).is_some());
        assert!(
            sessions
                .touch_at(&id, later + IDLE + Duration::from_secs(1))
                .is_none()
        );
        assert!(sessions.is_empty());
        // However used, it ends at its lifetime.
        let id = sessions.create(key, "ops".into()).expect("room");
        let mut at = Instant::now();
        while at < Instant::now() + LIFETIME - IDLE {
            at += IDLE - Duration::from_secs(1);
            assert!(sessions.touch_at(&id, at).is_some());
        }
        assert!(sessions.touch_at(&id, Instant::now() + LIFETIME).is_none());
        let once = sessions.one_time_token(key, "ops".into());
        assert!(
            sessions.touch(&once).is_none(),
            "a sign-in link is not a session"
        );
        sessions.remove(&once);
    }
}
