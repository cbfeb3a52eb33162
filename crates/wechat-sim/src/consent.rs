//! The consent page, a stand-in for WeChat's `componentloginpage` (PC) and `bindcomponent` (H5)
//! at the same paths: it lists simulated accounts (filtered by `auth_type` / `biz_appid`), a person
//! picks one (or creates a new one) and approves with a form POST; the simulator then consumes the
//! single-use `pre_auth_code`, authorizes, pushes `authorized`/`updateauthorized` and redirects
//! (302) to `redirect_uri` with `auth_code` and `expires_in` appended, keeping any query the
//! redirect URI already has. Invalid input gets a clear HTML error page (400), never a redirect.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use wechat::authorize::escape_html;

use crate::SimControl;
use crate::model::{AccountKind, AccountSpec};
use crate::sim::Sim;

/// Accounts listed on the page at most (more can be typed in by appid).
const MAX_LISTED: usize = 200;

/// WeChat's PC page, its current H5 page, and the older H5 path.
pub(crate) const PATHS: [&str; 3] = [
    wechat::authorize::PC_PATH,
    wechat::authorize::MOBILE_PATH,
    "/safe/bindcomponent",
];

pub(crate) fn router() -> Router<Arc<Sim>> {
    let mut r = Router::new();
    for path in PATHS {
        r = r.route(path, get(page).post(approve));
    }
    r
}

/// The parameters both the page and the approval carry.
#[derive(Debug, Default)]
struct Params {
    component_appid: String,
    pre_auth_code: String,
    redirect_uri: String,
    auth_type: String,
    biz_appid: String,
    appid: String,
    new_kind: String,
}

impl Params {
    fn parse(raw: &[u8]) -> Self {
        let mut p = Params::default();
        for (k, v) in url::form_urlencoded::parse(raw) {
            let slot = match &*k {
                "component_appid" => &mut p.component_appid,
                "pre_auth_code" => &mut p.pre_auth_code,
                "redirect_uri" => &mut p.redirect_uri,
                "auth_type" => &mut p.auth_type,
                "biz_appid" => &mut p.biz_appid,
                "appid" => &mut p.appid,
                "new_kind" => &mut p.new_kind,
                _ => continue,
            };
            *slot = v.into_owned();
        }
        p
    }

    /// Which kinds the page may show: auth_type 1 = Official Accounts, 2 = Mini Programs,
    /// 3 or absent = both.
    fn kinds(&self) -> Result<Vec<AccountKind>, String> {
        match self.auth_type.as_str() {
            "" | "3" => Ok(vec![AccountKind::OfficialAccount, AccountKind::MiniProgram]),
            "1" => Ok(vec![AccountKind::OfficialAccount]),
            "2" => Ok(vec![AccountKind::MiniProgram]),
            other => Err(format!("auth_type {other:?} is not supported (1, 2 or 3)")),
        }
    }
}

fn error_page(message: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\"><title>授权失败</title></head>\
         <body><h1>授权失败 / Authorization failed</h1><p id=\"error\">{}</p>\
         <p>wechat-sim consent page</p></body></html>",
        escape_html(message)
    );
    (StatusCode::BAD_REQUEST, Html(body)).into_response()
}

/// Check everything but the account; `consume` spends the pre-auth code.
fn check(sim: &Arc<Sim>, p: &Params, consume: bool) -> Result<(), String> {
    if p.component_appid.is_empty() {
        return Err("component_appid is missing".into());
    }
    if p.pre_auth_code.is_empty() {
        return Err("pre_auth_code is missing".into());
    }
    match url::Url::parse(&p.redirect_uri) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
        _ => return Err("redirect_uri is missing or not an absolute http(s) URL".into()),
    }
    p.kinds()?;
    let now = sim.clock.now_ms();
    let mut st = sim.state.lock();
    let cid = st.component_id(&p.component_appid).ok_or_else(|| {
        format!(
            "component_appid {} is not a third-party platform",
            p.component_appid
        )
    })?;
    st.pre_auth_code(cid, &p.pre_auth_code, now, consume)
        .map_err(|e| match e {
            crate::model::ControlError::Invalid(m)
            | crate::model::ControlError::NotFound(m)
            | crate::model::ControlError::Conflict(m) => m,
        })
}

async fn page(State(sim): State<Arc<Sim>>, RawQuery(q): RawQuery) -> Response {
    let p = Params::parse(q.unwrap_or_default().as_bytes());
    if let Err(m) = check(&sim, &p, false) {
        return error_page(&m);
    }
    let kinds = p.kinds().unwrap_or_default();
    let ctl = SimControl { sim: sim.clone() };
    let accounts: Vec<_> = if p.biz_appid.is_empty() {
        // Filter before building each account's view: there may be 100,000 of them.
        let only = if kinds.len() == 1 {
            kinds.first().copied()
        } else {
            None
        };
        ctl.accounts(only, MAX_LISTED)
    } else {
        ctl.account(&p.biz_appid)
            .into_iter()
            .filter(|a| kinds.contains(&a.kind))
            .collect()
    };
    let hidden = |name: &str, value: &str| {
        format!(
            "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
            escape_html(value)
        )
    };
    let mut html = String::from(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>授权 / Authorize</title></head><body>",
    );
    html.push_str(&format!(
        "<h1>授权给第三方平台 {}</h1><p>wechat-sim: pick the account that authorizes this platform.</p>",
        escape_html(&p.component_appid)
    ));
    html.push_str("<form method=\"post\">");
    for (k, v) in [
        ("component_appid", &p.component_appid),
        ("pre_auth_code", &p.pre_auth_code),
        ("redirect_uri", &p.redirect_uri),
        ("auth_type", &p.auth_type),
        ("biz_appid", &p.biz_appid),
    ] {
        html.push_str(&hidden(k, v));
    }
    html.push_str("<ul>");
    for (i, a) in accounts.iter().enumerate() {
        html.push_str(&format!(
            "<li><label><input type=\"radio\" name=\"appid\" value=\"{appid}\"{checked}> {nick} ({appid}, {kind})</label></li>",
            appid = escape_html(&a.appid),
            nick = escape_html(&a.nick_name),
            kind = match a.kind {
                AccountKind::OfficialAccount => "公众号",
                AccountKind::MiniProgram => "小程序",
            },
            checked = if i == 0 { " checked" } else { "" },
        ));
    }
    html.push_str("</ul>");
    if p.biz_appid.is_empty() {
        html.push_str("<p><label>或新建账号 / or create a new account: <select name=\"new_kind\"><option value=\"\">—</option>");
        for k in &kinds {
            let (v, label) = match k {
                AccountKind::OfficialAccount => ("official_account", "公众号 Official Account"),
                AccountKind::MiniProgram => ("mini_program", "小程序 Mini Program"),
            };
            html.push_str(&format!("<option value=\"{v}\">{label}</option>"));
        }
        html.push_str("</select></label></p>");
    }
    html.push_str(
        "<p><button type=\"submit\">确认授权 / Approve</button></p></form></body></html>",
    );
    Html(html).into_response()
}

async fn approve(State(sim): State<Arc<Sim>>, raw: Bytes) -> Response {
    let p = Params::parse(&raw);
    let kinds = match p.kinds() {
        Ok(k) => k,
        Err(m) => return error_page(&m),
    };
    let ctl = SimControl { sim: sim.clone() };
    // Resolve the account before spending the pre-auth code, so a bad choice can be retried.
    let appid = if !p.new_kind.is_empty() && p.biz_appid.is_empty() {
        let kind = match p.new_kind.as_str() {
            "official_account" => AccountKind::OfficialAccount,
            "mini_program" => AccountKind::MiniProgram,
            other => return error_page(&format!("new_kind {other:?} is not an account kind")),
        };
        if !kinds.contains(&kind) {
            return error_page("auth_type does not allow this kind of account");
        }
        if let Err(m) = check(&sim, &p, false) {
            return error_page(&m);
        }
        match ctl.create_account(AccountSpec {
            kind,
            appid: None,
            appsecret: None,
        }) {
            Ok(a) => a.appid,
            Err(e) => return error_page(&e.to_string()),
        }
    } else {
        let appid = if p.biz_appid.is_empty() {
            p.appid.clone()
        } else {
            p.biz_appid.clone()
        };
        if appid.is_empty() {
            return error_page("no account was chosen");
        }
        match ctl.account(&appid) {
            Ok(a) if kinds.contains(&a.kind) => appid,
            Ok(_) => return error_page("auth_type does not allow this kind of account"),
            Err(e) => return error_page(&e.to_string()),
        }
    };
    if let Err(m) = check(&sim, &p, true) {
        return error_page(&m);
    }
    let outcome =
        match ctl.authorize_with(&appid, &p.component_appid, Some(p.pre_auth_code.clone())) {
            Ok(o) => o,
            Err(e) => return error_page(&e.to_string()),
        };
    let expires_in = u64::try_from(outcome.expires_in).unwrap_or(0);
    match wechat::authorize::redirect_back_url(
        &p.redirect_uri,
        &outcome.authorization_code,
        expires_in,
    ) {
        Ok(target) => (StatusCode::FOUND, [(header::LOCATION, target.to_string())]).into_response(),
        Err(_) => error_page("redirect_uri is not a URL"),
    }
}
