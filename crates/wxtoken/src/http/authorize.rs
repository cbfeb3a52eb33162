//! The merchant-facing authorization pages on the public listener.
//!
//! - `GET /authorize`: a page on our own domain with the authorize button (WeChat refuses a bare
//!   302 into its consent page: the Referer must be the platform's configured domain). Each visit
//!   creates a fresh `pre_auth_code`; `auth_type` and `biz_appid` pass through; the PC (QR scan)
//!   or mobile page is chosen by `?mobile=` or, absent it, by the browser (WeChat's in-app browser
//!   and phones get the mobile page).
//! - `GET /authorize/callback`: WeChat's redirect with `auth_code`; exchanged at once
//!   (`api_query_auth`, stored like an `authorized` push, which carries the same code and is then
//!   a no-op), and a result page that names the account or says what went wrong.
//!
//! The pages never show the pre_auth_code or auth_code as text, and responses are `no-store`.

use axum::extract::State;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, USER_AGENT, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use wechat::authorize::{AuthType, AuthorizeParams, escape_html};

use super::AppState;
use super::error::{ApiError, ApiQuery};
use crate::refresh::RefreshError;

#[derive(Debug, Deserialize)]
pub struct StartQuery {
    /// The component, when several are configured.
    component: Option<String>,
    /// 1 official accounts, 2 mini programs, 3 both (WeChat's `auth_type`).
    auth_type: Option<u8>,
    /// Restrict the page to one account.
    biz_appid: Option<String>,
    /// Force the mobile (true) or PC (false) page.
    mobile: Option<bool>,
}

pub async fn start(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<ApiQuery<StartQuery>, ApiError>,
) -> Response {
    match start_page(&app, &headers, query).await {
        Ok(page) => page,
        Err((status, message)) => page(
            status,
            "无法发起授权 · Cannot start authorization",
            &message,
        ),
    }
}

async fn start_page(
    app: &AppState,
    headers: &HeaderMap,
    query: Result<ApiQuery<StartQuery>, ApiError>,
) -> Result<Response, (StatusCode, String)> {
    let ApiQuery(q) = query.map_err(as_page)?;
    let component = app.0.component(q.component.as_deref()).map_err(as_page)?;
    let auth_type = match q.auth_type {
        None => None,
        Some(code) => Some(AuthType::from_code(code).ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                "auth_type must be 1 (official accounts), 2 (mini programs) or 3 (both)".to_owned(),
            )
        })?),
    };
    if let Some(biz) = &q.biz_appid {
        crate::model::Appid::parse(biz)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("biz_appid: {e}")))?;
    }
    let public_url = app.0.server.public_url.as_ref().ok_or_else(|| {
        tracing::error!("GET /authorize needs server.public_url (the callback's address)");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "server.public_url is not configured".to_owned(),
        )
    })?;
    // Under public_url's path, whether or not it ends in a slash.
    let mut callback = public_url.clone();
    callback.set_query(None);
    callback.set_fragment(None);
    let path = format!(
        "{}/authorize/callback",
        callback.path().trim_end_matches('/')
    );
    callback.set_path(&path);
    callback
        .query_pairs_mut()
        .append_pair("component", component.as_str());

    let slot = app.0.engine.cache().component(&component).ok_or_else(|| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the component is not loaded".to_owned(),
        )
    })?;
    let token = app
        .0
        .engine
        .read_or_refresh(&slot)
        .await
        .map_err(|e| as_page(e.into()))?;
    let pre_auth = app
        .0
        .wechat
        .create_preauthcode(token.access_token.expose_secret(), component.as_str())
        .await
        .map_err(|e| {
            tracing::warn!(component = %component, error = %e, "api_create_preauthcode failed");
            as_page(RefreshError::from(e).into())
        })?;
    let params = AuthorizeParams {
        component_appid: component.as_str(),
        pre_auth_code: &pre_auth.pre_auth_code,
        redirect_uri: callback.as_str(),
        auth_type,
        biz_appid: q.biz_appid.as_deref(),
    };
    let mobile = q.mobile.unwrap_or_else(|| is_mobile(headers));
    let url = if mobile {
        app.0.pages.mobile_url(&params)
    } else {
        app.0.pages.pc_url(&params)
    };
    let body = format!(
        "<p>点击下方按钮，使用公众号或小程序管理员微信扫码授权。<br>\
         Press the button and approve with the administrator's WeChat.</p>\
         <p><a class=\"button\" id=\"authorize\" href=\"{}\">授权 · Authorize</a></p>",
        escape_html(&url)
    );
    let mut response = page(StatusCode::OK, "授权 · Authorize", &body);
    // WeChat's authorization page refuses a visitor that arrives without a Referer from the
    // platform's 授权发起页域名 ("授权入口页所在域名：空"); send the origin only, over HTTPS only.
    response
        .headers_mut()
        .insert(REFERRER_POLICY, HeaderValue::from_static("strict-origin"));
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    auth_code: String,
    #[allow(dead_code)]
    expires_in: Option<u64>,
    component: Option<String>,
}

pub async fn callback(
    State(app): State<AppState>,
    query: Result<ApiQuery<CallbackQuery>, ApiError>,
) -> Response {
    let result = async {
        let ApiQuery(q) = query.map_err(as_page)?;
        let component = app.0.component(q.component.as_deref()).map_err(as_page)?;
        if q.auth_code.is_empty() {
            return Err((StatusCode::BAD_REQUEST, "auth_code is missing".to_owned()));
        }
        if q.auth_code.len() > MAX_AUTH_CODE {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("auth_code is too long (over {MAX_AUTH_CODE} characters)"),
            ));
        }
        let appid = app
            .0
            .engine
            .authorize_code(&component, &q.auth_code)
            .await
            .map_err(|e| {
                tracing::warn!(component = %component, error = %e, "authorization callback failed");
                as_page(e.into())
            })?;
        tracing::info!(component = %component, appid = %appid, "authorized through the authorization page");
        Ok(appid)
    }
    .await;
    match result {
        Ok(appid) => page(
            StatusCode::OK,
            "授权成功 · Authorized",
            &format!(
                "<p>已授权 · Authorized: <strong id=\"appid\">{}</strong></p>\
                 <p>可以关闭此页面。You can close this page.</p>",
                escape_html(appid.as_str())
            ),
        ),
        Err((status, message)) => page(
            status,
            "授权未完成 · Authorization not completed",
            &format!("<p id=\"error\">{}</p>", escape_html(&message)),
        ),
    }
}

fn as_page(e: ApiError) -> (StatusCode, String) {
    (e.status(), e.to_string())
}

/// WeChat's in-app browser and phones get the mobile page.
fn is_mobile(headers: &HeaderMap) -> bool {
    headers
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.contains("MicroMessenger") || ua.contains("Mobile"))
}

/// The 429 page of a visitor over the rate limit (`super::limits`).
pub(super) fn too_many(wait: std::time::Duration) -> Response {
    let seconds = wait.as_secs().max(1);
    let mut response = page(
        StatusCode::TOO_MANY_REQUESTS,
        "请稍后再试 · Too many requests",
        &format!("<p>请 {seconds} 秒后重试。<br>Please try again in {seconds} seconds.</p>"),
    );
    response
        .headers_mut()
        .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// The pages' one style sheet, allowed by its hash in [`CONTENT_SECURITY_POLICY`].
const STYLE: &str = "body{font-family:sans-serif;max-width:32em;margin:3em auto;padding:0 1em}\
    .button{display:inline-block;padding:.8em 2em;background:#07c160;color:#fff;\
    border-radius:4px;text-decoration:none}";

/// A real authorization code is a few hundred characters at most.
const MAX_AUTH_CODE: usize = 512;

/// Nothing but the inline style sheet loads; no script, no frame may embed the page (against
/// clickjacking the authorize button), no form posts anywhere.
fn content_security_policy() -> &'static HeaderValue {
    static CSP: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| {
        use base64::Engine as _;
        use sha2::Digest as _;
        let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(STYLE));
        HeaderValue::from_str(&format!(
            "default-src 'none'; style-src 'sha256-{hash}'; frame-ancestors 'none'; \
             base-uri 'none'; form-action 'none'"
        ))
        .expect("a valid header value")
    });
    &CSP
}

/// An HTML page with its security headers: the CSP, `X-Frame-Options: DENY` for browsers without
/// `frame-ancestors`, `nosniff`, `no-store` (the callback's URL carries the code) and
/// `Referrer-Policy: no-referrer` (the start page relaxes it to the origin).
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style></head><body><h1>{title}</h1>{body}</body></html>",
        title = escape_html(title),
    );
    let headers = [
        (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (CONTENT_SECURITY_POLICY, content_security_policy().clone()),
        (X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ];
    (status, headers, Html(html)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_and_the_wechat_browser_get_the_mobile_page() {
        let mut headers = HeaderMap::new();
        assert!(!is_mobile(&headers));
        headers.insert(
            USER_AGENT,
            "Mozilla/5.0 (iPhone) Mobile MicroMessenger/8.0"
                .parse()
                .unwrap(),
        );
        assert!(is_mobile(&headers));
    }
}
