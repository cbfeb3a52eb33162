//! The dashboard's pages: the overview (authorizers by status, each component's ticket and token,
//! refreshes, failing credentials, recent alerts, the refresh timeline), the authorizers table and
//! one authorizer's details with its actions.

use std::collections::HashMap;

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::{CsrfForm, Lang, Signed, check_csrf, page, see_other};
use crate::http::AppState;
use crate::http::admin::{self, AuthorizerView, refresh_now};
use crate::http::error::ApiError;
use crate::model::{Appid, AuthorizerStatus, ComponentAppid, CredentialKind, Timestamp};

/// Rows per page of the authorizers table.
const PAGE: u32 = 50;
/// A component_verify_ticket is valid for 12 hours.
const TICKET_VALIDITY_SECS: i64 = 12 * 3600;
/// The timeline: this many buckets of this many minutes ahead.
const BUCKETS: usize = 24;
const BUCKET_MINUTES: i64 = 5;

/// An error page leading back to the overview.
fn error_page(signed: &Signed, e: ApiError) -> Response {
    super::error_page(signed, e, "/ui/")
}

/// "3m 12s" (or "-3m 12s" in the past), to the second.
fn span(seconds: i64) -> String {
    let sign = if seconds < 0 { "-" } else { "" };
    let d = std::time::Duration::from_secs(seconds.unsigned_abs());
    format!("{sign}{}", humantime::format_duration(d))
}

fn secs(t: Timestamp) -> i64 {
    t.as_millis().div_euclid(1000)
}

/// Authorizers by status, per component; each component's ticket and token; refreshes since
/// start; failing credentials; recent alerts; the refresh timeline.
pub async fn overview(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let s = signed_or_return!(&app, &headers);
    match overview_body(&app, s.lang).await {
        Ok(body) => page(
            StatusCode::OK,
            s.lang,
            s.lang.t("概览", "Overview"),
            Some(&s),
            body,
        ),
        Err(e) => error_page(&s, e),
    }
}

async fn overview_body(app: &AppState, lang: Lang) -> Result<Markup, ApiError> {
    let now = Timestamp::now();
    let engine = &app.0.engine;
    let mut components = Vec::new();
    for c in engine.components() {
        let counts = app.0.store.authorizers().count_authorizers(&c).await?;
        let ticket = app.0.store.components().latest_ticket(&c).await?;
        let token = engine.cache().component(&c).and_then(|slot| slot.current());
        components.push((
            c,
            counts,
            ticket.map(|t| secs(now) - secs(t.received_at)),
            token,
        ));
    }
    let stats = engine.stats();
    // One pass over the cache: failing credentials and the timeline.
    let mut failing: Vec<(String, String, String)> = Vec::new();
    let mut failing_total = 0usize;
    let mut overdue = 0u64;
    let mut expired = 0u64;
    let mut due = [0u64; BUCKETS];
    let mut held = 0u64;
    let now_s = secs(now);
    engine.cache().for_each(|slot| {
        let credential = slot.credential();
        if let Some(reason) = slot.failing() {
            failing_total += 1;
            if failing.len() < 20 {
                failing.push((
                    credential.kind.as_str().to_owned(),
                    credential.appid.to_string(),
                    reason,
                ));
            }
        }
        if let Some(t) = slot.current() {
            held += 1;
            let refresh_in = secs(t.refresh_at) - now_s;
            if secs(t.expires_at) <= now_s {
                expired += 1;
            } else if refresh_in <= 0 {
                overdue += 1;
            } else {
                let bucket = (refresh_in / (BUCKET_MINUTES * 60)) as usize;
                if bucket < BUCKETS {
                    due[bucket] += 1;
                }
            }
        }
    });
    failing.sort();
    let alerts = engine.recent_alerts();
    let rates = super::rate_minutes(&*app.0.store, now).await?;
    let mut tickets = 0u64;
    engine.cache().for_each(|slot| {
        if slot.credential().kind.is_ticket() && slot.current().is_some() {
            tickets += 1;
        }
    });
    let today = now.beijing_day();
    let mut gateway = app.0.store.ops().gateway_calls(&today, None).await?;
    gateway.sort_by_key(|c| std::cmp::Reverse(c.calls));
    gateway.truncate(10);
    let extra = Extra {
        rates,
        tickets,
        today,
        gateway,
    };
    Ok(html! {
        p.hint { (lang.t("每 10 秒自动更新", "Updates every 10 s")) " · " span id="live-stamp" aria-live="polite" {} }
        div id="live-region" { (overview_live(lang, &components, &stats, held, failing_total, expired, overdue, &due, &failing, &alerts, now_s)) (overview_extra(lang, &extra)) }
        script src="/ui/live.js" defer {}
    })
}

/// The overview's lower half: refreshes per minute, JS-SDK tickets held, today's gateway calls.
struct Extra {
    rates: Vec<(u64, u64)>,
    tickets: u64,
    today: String,
    gateway: Vec<crate::model::GatewayCallCount>,
}

fn overview_extra(lang: Lang, x: &Extra) -> Markup {
    html! {
        h2 { (lang.t("每分钟刷新（最近三小时）", "Refreshes per minute (last three hours)")) }
        (rates_chart(lang, &x.rates))
        p.hint { (lang.t("持有的 JS-SDK 票据：", "JS-SDK tickets held: ")) span id="tickets-held" { (x.tickets) } }
        h2 { (lang.t("今日网关调用（北京时间 ", "Gateway calls today (Beijing time, ")) (x.today) ")" }
        @if x.gateway.is_empty() {
            p.hint id="no-gateway-calls" { (lang.t("今天还没有经过网关的调用。", "No call through the gateway today.")) }
        } @else {
            table id="gateway-calls" {
                thead { tr {
                    th scope="col" { "appid" }
                    th scope="col" { (lang.t("微信接口", "WeChat path")) }
                    th scope="col" { (lang.t("调用", "Calls")) }
                    th scope="col" { (lang.t("错误", "Errors")) }
                } }
                tbody {
                    @for c in &x.gateway {
                        tr {
                            td { code { (c.appid) } }
                            td { code { (c.path) } }
                            td.num { (c.calls) }
                            td.num .bad[c.errors > 0] { (c.errors) }
                        }
                    }
                }
            }
        }
    }
}

/// A bar per minute of the last three hours (every replica's), refreshes in blue with failures
/// stacked in red.
fn rates_chart(lang: Lang, minutes: &[(u64, u64)]) -> Markup {
    const W: u64 = 720;
    const H: u64 = 120;
    let max = minutes
        .iter()
        .map(|(ok, failed)| ok + failed)
        .max()
        .unwrap_or(0)
        .max(1);
    let height = |n: u64| (n * (H - 20)) / max;
    let offset = 180u64.saturating_sub(minutes.len() as u64);
    html! {
        @if minutes.iter().all(|m| *m == (0, 0)) {
            p.hint id="no-rates" { (lang.t("最近三小时没有刷新记录（每分钟记录一次）。", "No refresh recorded in the last three hours (recorded once a minute).")) }
        } @else {
            svg.timeline viewBox={ "0 0 " (W) " " (H) } role="img"
                aria-label=(lang.t("最近三小时每分钟的刷新（蓝）与失败（红）", "Refreshes (blue) and failures (red) per minute, last three hours")) {
                title { (lang.t("每分钟刷新", "Refreshes per minute")) }
                line x1="0" y1=(H - 10) x2=(W) y2=(H - 10) stroke="#4a5360" {}
                text x="2" y="10" font-size="10" fill="#4a5360" { (max) "/min" }
                @for (i, (ok, failed)) in minutes.iter().enumerate() {
                    @let x = (offset + i as u64) * 4;
                    rect x=(x) y=(H - 10 - height(*ok)) width="3" height=(height(*ok)) fill="#0b5cad" {}
                    @if *failed > 0 {
                        rect x=(x) y=(H - 10 - height(*ok) - height(*failed)) width="3" height=(height(*failed)) fill="#b42318" {}
                    }
                }
            }
        }
    }
}

/// A component's row of the overview: its counts, its ticket's age (s) and its token.
type ComponentRow = (
    ComponentAppid,
    crate::model::AuthorizerCounts,
    Option<i64>,
    Option<std::sync::Arc<crate::tokens::cache::CachedToken>>,
);

#[allow(clippy::too_many_arguments)]
fn overview_live(
    lang: Lang,
    components: &[ComponentRow],
    stats: &crate::refresh::EngineStats,
    held: u64,
    failing_total: usize,
    expired: u64,
    overdue: u64,
    due: &[u64; BUCKETS],
    failing: &[(String, String, String)],
    alerts: &[crate::alerts::Alert],
    now_s: i64,
) -> Markup {
    html! {
        h2 { (lang.t("授权方", "Authorizers")) }
        table {
            thead { tr {
                th scope="col" { (lang.t("第三方平台", "Component")) }
                th scope="col" { (lang.t("正常", "Active")) }
                th scope="col" { (lang.t("需重新授权", "Needs re-authorization")) }
                th scope="col" { (lang.t("已取消授权", "Revoked")) }
                th scope="col" { (lang.t("公众号 / 小程序", "Official accounts / Mini programs")) }
                th scope="col" { "component_verify_ticket" }
                th scope="col" { "component_access_token" }
            } }
            tbody {
                @for (c, counts, ticket_age, token) in components {
                    tr {
                        td { code { (c) } }
                        td.num id={ "count-active-" (c) } { (counts.active) }
                        td.num id={ "count-needs_reauth-" (c) } {
                            @if counts.needs_reauth > 0 {
                                a.bad href={ "/ui/authorizers?component=" (c) "&status=needs_reauth" } { (counts.needs_reauth) }
                            } @else { "0" }
                        }
                        td.num id={ "count-revoked-" (c) } { (counts.revoked) }
                        td.num id={ "count-kinds-" (c) } {
                            (counts.official_accounts) " / " (counts.mini_programs)
                            @if counts.kind_unknown > 0 {
                                " " span.hint { "(" (counts.kind_unknown) (lang.t(" 类型未知", " unknown")) ")" }
                            }
                        }
                        td {
                            @match ticket_age {
                                Some(age) if *age < TICKET_VALIDITY_SECS => span.ok {
                                    (lang.t("收到于 ", "received ")) (span(*age)) (lang.t(" 前（12 小时有效）", " ago (valid 12 h)"))
                                },
                                Some(age) => span.bad {
                                    (lang.t("已过期：收到于 ", "expired: received ")) (span(*age)) (lang.t(" 前", " ago"))
                                },
                                None => span.bad { (lang.t("尚未收到", "none received yet")) },
                            }
                        }
                        td {
                            @match token {
                                Some(t) => span.ok { (lang.t("剩余 ", "expires in ")) (span(secs(t.expires_at) - now_s)) },
                                None => span.bad { (lang.t("无", "none")) },
                            }
                        }
                    }
                }
            }
        }
        div.cards {
            div.card {
                div { (lang.t("持有的令牌", "Tokens held")) }
                div.big id="tokens-held" { (held) }
            }
            div.card {
                div { (lang.t("启动以来刷新", "Refreshes since start")) }
                div.big id="refreshed" { (stats.refreshed) }
                div.hint { (lang.t("失败 ", "failed ")) span id="failed" { (stats.failed) } }
            }
            div.card {
                div { (lang.t("刷新失败中的凭据", "Credentials failing")) }
                div.big id="failing" .bad[failing_total > 0] { (failing_total) }
            }
            div.card {
                div { (lang.t("已过期 / 逾期未刷新", "Expired / overdue")) }
                div.big id="expired-overdue" .bad[expired + overdue > 0] { (expired) " / " (overdue) }
            }
        }
        h2 { (lang.t("未来两小时的刷新", "Refreshes due in the next two hours")) }
        (timeline(lang, due, overdue + expired))
        @if !failing.is_empty() {
            h2 { (lang.t("刷新失败", "Failing")) }
            table {
                thead { tr {
                    th scope="col" { (lang.t("类型", "Kind")) }
                    th scope="col" { "appid" }
                    th scope="col" { (lang.t("原因", "Reason")) }
                } }
                tbody {
                    @for (kind, appid, reason) in failing {
                        tr { td { (kind) } td { code { (appid) } } td { (reason) } }
                    }
                }
            }
        }
        h2 { (lang.t("最近的告警", "Recent alerts")) }
        @if alerts.is_empty() {
            p.hint id="no-alerts" { (lang.t("本进程启动以来没有告警。", "No alert since this process started.")) }
        } @else {
            table id="alerts" {
                thead { tr {
                    th scope="col" { (lang.t("时间", "At")) }
                    th scope="col" { (lang.t("类型", "Kind")) }
                    th scope="col" { "appid" }
                    th scope="col" { (lang.t("原因", "Reason")) }
                } }
                tbody {
                    @for a in alerts.iter().take(20) {
                        tr {
                            td { (a.at) }
                            td { (a.kind.as_str()) }
                            td { code { (a.appid.as_deref().unwrap_or("-")) } }
                            td { (a.reason) }
                        }
                    }
                }
            }
        }
    }
}

/// A bar per five minutes of how many tokens come due; what is already overdue or expired is the
/// red bar at the left, so a stuck refresher shows as a wall of red.
fn timeline(lang: Lang, due: &[u64; BUCKETS], late: u64) -> Markup {
    const W: u64 = 600;
    const H: u64 = 160;
    const LEFT: u64 = 40;
    let max = due.iter().copied().chain([late]).max().unwrap_or(0).max(1);
    let bar_w = (W - LEFT) / (BUCKETS as u64 + 1);
    let height = |n: u64| (n * (H - 30)) / max;
    html! {
        svg.timeline viewBox={ "0 0 " (W) " " (H) } role="img"
            aria-label=(lang.t("未来两小时内每 5 分钟到期刷新的令牌数", "Tokens due for refresh per 5 minutes over the next two hours")) {
            title { (lang.t("刷新时间线", "Refresh timeline")) }
            line x1=(LEFT) y1=(H - 20) x2=(W) y2=(H - 20) stroke="#4a5360" {}
            text x="0" y="12" font-size="10" fill="#4a5360" { (max) }
            rect id="late" x=(LEFT) y=(H - 20 - height(late)) width=(bar_w - 2) height=(height(late)) fill="#b42318" {}
            @for (i, n) in due.iter().enumerate() {
                rect x=(LEFT + (i as u64 + 1) * bar_w) y=(H - 20 - height(*n)) width=(bar_w - 2) height=(height(*n)) fill="#0b5cad" {}
            }
            text x=(LEFT) y=(H - 5) font-size="10" fill="#4a5360" { (lang.t("逾期", "late")) }
            text x=(LEFT + bar_w) y=(H - 5) font-size="10" fill="#4a5360" { (lang.t("现在", "now")) }
            text x=(LEFT + 12 * bar_w) y=(H - 5) font-size="10" fill="#4a5360" { "+1h" }
            text x=(W - 30) y=(H - 5) font-size="10" fill="#4a5360" { "+2h" }
        }
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    component: Option<String>,
    /// An appid, or the start of one; else a part of a nick name or principal name.
    q: Option<String>,
    after: Option<String>,
    /// Only this status (on the page shown).
    status: Option<String>,
}

/// The authorizers of a component, by appid, a page at a time, searchable by appid prefix or by
/// (a part of) the nick name or principal name.
pub async fn authorizers(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let s = signed_or_return!(&app, &headers);
    match authorizers_body(&app, s.lang, &q).await {
        Ok(body) => page(
            StatusCode::OK,
            s.lang,
            s.lang.t("授权方", "Authorizers"),
            Some(&s),
            body,
        ),
        Err(e) => error_page(&s, e),
    }
}

async fn authorizers_body(app: &AppState, lang: Lang, q: &ListQuery) -> Result<Markup, ApiError> {
    let component = app.0.component(q.component.as_deref())?;
    let search = q.q.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(
            AuthorizerStatus::parse(s).map_err(|e| ApiError::BadRequest(format!("status: {e}")))?,
        ),
        None => None,
    };
    let after = match q.after.as_deref().filter(|a| !a.is_empty()) {
        Some(a) => Some(Appid::parse(a).map_err(|e| ApiError::BadRequest(format!("after: {e}")))?),
        None => None,
    };
    let store = app.0.store.authorizers();
    let mut records = Vec::new();
    let mut next = None;
    match search {
        // An appid prefix: the exact appid first, then every appid after it that starts with it;
        // a name when nothing (or no appid) matches.
        Some(prefix) => {
            let appid_like = prefix.starts_with("wx");
            if appid_like && let Ok(start) = Appid::parse(prefix) {
                if after.is_none()
                    && let Some(r) = store.get_authorizer(&component, &start).await?
                {
                    records.push(r);
                }
                let from = after.clone().unwrap_or(start);
                let page = store
                    .list_authorizers(&component, Some(&from), PAGE)
                    .await?;
                let full = page.len() == PAGE as usize;
                let matching: Vec<_> = page
                    .into_iter()
                    .take_while(|r| r.appid.as_str().starts_with(prefix))
                    .collect();
                if full && matching.len() == PAGE as usize {
                    next = matching.last().map(|r| r.appid.to_string());
                }
                records.extend(matching);
            }
            if records.is_empty() && (!appid_like || after.is_none()) {
                let page = store
                    .search_authorizers(&component, prefix, after.as_ref(), PAGE)
                    .await?;
                if page.len() == PAGE as usize {
                    next = page.last().map(|r| r.appid.to_string());
                }
                records = page;
            }
        }
        None => {
            let page = store
                .list_authorizers(&component, after.as_ref(), PAGE)
                .await?;
            if page.len() == PAGE as usize {
                next = page.last().map(|r| r.appid.to_string());
            }
            records = page;
        }
    }
    if let Some(status) = status {
        records.retain(|r| r.status == status);
    }
    let views: Vec<(AuthorizerView, Option<String>, Option<i64>)> = records
        .iter()
        .map(|r| {
            let credential = crate::model::Credential::authorizer(&r.component, &r.appid);
            let failing = app
                .0
                .engine
                .cache()
                .get(&credential)
                .and_then(|s| s.failing());
            let next_in = app.0.engine.next_refresh(&credential).map(|at| {
                at.saturating_duration_since(tokio::time::Instant::now())
                    .as_secs() as i64
            });
            (AuthorizerView::new(app, r), failing, next_in)
        })
        .collect();
    let now = secs(Timestamp::now());
    let base = {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("component", component.as_str());
        query.append_pair("q", search.unwrap_or(""));
        query.append_pair("status", q.status.as_deref().unwrap_or(""));
        format!("/ui/authorizers?{}", query.finish())
    };
    Ok(html! {
        form.search method="get" action="/ui/authorizers" role="search" {
            input type="hidden" name="component" value=(component);
            label for="q" { (lang.t("按 appid 或名称查找", "Find by appid or name")) }
            input id="q" name="q" type="search" value=(search.unwrap_or("")) placeholder="wx…";
            button type="submit" { (lang.t("查找", "Find")) }
        }
        @if views.is_empty() {
            p.hint id="no-rows" { (lang.t("没有匹配的授权方。", "No authorizer matches.")) }
        } @else {
            table id="authorizers" {
                thead { tr {
                    th scope="col" { "appid" }
                    th scope="col" { (lang.t("名称", "Name")) }
                    th scope="col" { (lang.t("类型", "Kind")) }
                    th scope="col" { (lang.t("状态", "Status")) }
                    th scope="col" { (lang.t("代数", "Generation")) }
                    th scope="col" { (lang.t("令牌过期", "Token expires")) }
                    th scope="col" { (lang.t("下次刷新", "Next refresh")) }
                    th scope="col" { (lang.t("最近失败", "Last failure")) }
                } }
                tbody {
                    @for (v, failing, next_in) in &views {
                        tr {
                            td { a href={ "/ui/authorizers/" (v.appid) "?component=" (v.component) } { code { (v.appid) } } }
                            td { (v.nick_name.as_deref().unwrap_or("-")) }
                            td { (v.kind.as_deref().unwrap_or("-")) }
                            td class={ "status-" (v.status) } { (v.status) }
                            td.num { (v.generation) }
                            td { @match v.token_expires_at { Some(t) => (span(t - now)), None => "-" } }
                            td { @match next_in { Some(n) => (span(*n)), None => "-" } }
                            td.bad { (failing.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &next {
            p { a id="next" href={ (base) "&after=" (next) } { (lang.t("下一页 →", "Next page →")) } }
        }
    })
}

#[derive(Deserialize)]
pub struct ComponentQuery {
    component: Option<String>,
}

/// One authorizer: its details, refresh history, reads per client, a refresh button and, when it
/// needs re-authorization, the link to send to the merchant.
pub async fn authorizer(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(appid): Path<String>,
    Query(q): Query<ComponentQuery>,
) -> Response {
    let s = signed_or_return!(&app, &headers);
    match detail_body(&app, &s, &appid, q.component.as_deref()).await {
        Ok(body) => page(StatusCode::OK, s.lang, &appid, Some(&s), body),
        Err(e) => error_page(&s, e),
    }
}

async fn detail_body(
    app: &AppState,
    s: &Signed,
    appid: &str,
    component: Option<&str>,
) -> Result<Markup, ApiError> {
    let lang = s.lang;
    let component: ComponentAppid = app.0.component(component)?;
    let appid = Appid::parse(appid).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let record = admin::authorizer(app, &component, &appid).await?;
    let view = AuthorizerView::new(app, &record);
    let history = app
        .0
        .store
        .authorizers()
        .refresh_token_history(&component, &appid)
        .await?;
    let clients: HashMap<i64, String> = app
        .0
        .store
        .clients()
        .list_clients()
        .await?
        .into_iter()
        .map(|c| (c.id, c.name))
        .collect();
    let reads: Vec<_> = app
        .0
        .store
        .clients()
        .read_counts(None)
        .await?
        .into_iter()
        .filter(|r| r.appid == appid && r.component == component)
        .collect();
    let rebind = (record.status != AuthorizerStatus::Active)
        .then(|| app.0.server.public_url.as_ref())
        .flatten()
        .map(|base| {
            format!(
                "{}/authorize?biz_appid={appid}",
                base.as_str().trim_end_matches('/')
            )
        });
    let now = secs(Timestamp::now());
    let slot = app
        .0
        .engine
        .cache()
        .get(&crate::model::Credential::authorizer(&component, &appid));
    let failing = slot.as_ref().and_then(|s| s.failing());
    let fallback = slot.as_ref().map(|s| s.credential().kind) == Some(CredentialKind::Direct);
    Ok(html! {
        table.details {
            tbody {
                tr { th scope="row" { (lang.t("第三方平台", "Component")) } td { code { (view.component) } } }
                tr { th scope="row" { (lang.t("名称", "Name")) } td { (view.nick_name.as_deref().unwrap_or("-")) } }
                tr { th scope="row" { (lang.t("主体", "Principal")) } td { (view.principal_name.as_deref().unwrap_or("-")) } }
                tr { th scope="row" { (lang.t("类型", "Kind")) } td { (view.kind.as_deref().unwrap_or("-")) } }
                tr {
                    th scope="row" { (lang.t("状态", "Status")) }
                    td id="status" class={ "status-" (view.status) } {
                        (view.status)
                        @if let Some(reason) = &view.status_reason { " — " (reason) }
                    }
                }
                tr { th scope="row" { (lang.t("代数", "Generation")) } td.num id="generation" { (view.generation) } }
                tr {
                    th scope="row" { (lang.t("令牌", "Token")) }
                    td {
                        @match (view.token_expires_at, &view.token_source) {
                            (Some(t), Some(source)) => {
                                (lang.t("来自 ", "from ")) code { (source) }
                                (lang.t("，剩余 ", ", expires in ")) (span(t - now))
                            }
                            _ => span.bad { (lang.t("无", "none")) },
                        }
                        @if fallback { " (appsecret)" }
                    }
                }
                tr { th scope="row" { (lang.t("备用 appsecret", "Fallback appsecret")) } td { @if view.has_appsecret { (lang.t("有", "on file")) } @else { (lang.t("无", "none")) } } }
                @if let Some(reason) = &failing {
                    tr { th scope="row" { (lang.t("最近失败", "Last failure")) } td.bad { (reason) } }
                }
            }
        }
        @if let Some(link) = &rebind {
            h2 { (lang.t("重新授权链接", "Re-authorization link")) }
            p { (lang.t("把此链接发给商户，用其管理员微信扫码重新授权：", "Send this link to the merchant, to authorize again with their admin's WeChat:")) }
            p.rebind { a id="rebind" href=(link) { (link) } }
        }
        div.actions {
            form id="refresh-form" method="post" action={ "/ui/authorizers/" (appid) "/refresh?component=" (component) } {
                input type="hidden" name="csrf" value=(s.csrf);
                button id="refresh" type="submit" { (lang.t("立即刷新", "Refresh now")) }
            }
            @if record.status != AuthorizerStatus::Revoked {
                a.danger id="revoke" href={ "/ui/authorizers/" (appid) "/revoke?component=" (component) } { (lang.t("取消授权…", "Revoke…")) }
            }
        }
        h2 { (lang.t("刷新令牌历史", "Refresh-token history")) }
        p.hint { (lang.t("值从不显示。", "Values are never shown.")) }
        table id="history" {
            thead { tr {
                th scope="col" { (lang.t("收到", "Received")) }
                th scope="col" { (lang.t("来源", "Source")) }
                th scope="col" { (lang.t("代数", "Generation")) }
                th scope="col" { (lang.t("写入", "Applied")) }
            } }
            tbody {
                @for h in history.iter().rev().take(50) {
                    tr {
                        td { (h.received_at) }
                        td { (h.source.as_str()) }
                        td.num { (h.generation) }
                        td { @if h.applied { "✓" } @else { "—" } }
                    }
                }
            }
        }
        h2 { (lang.t("各客户端的读取", "Reads per client")) }
        @if reads.is_empty() {
            p.hint { (lang.t("尚无读取。", "No read yet.")) }
        } @else {
            table id="reads" {
                thead { tr {
                    th scope="col" { (lang.t("客户端", "Client")) }
                    th scope="col" { (lang.t("读取次数", "Reads")) }
                    th scope="col" { (lang.t("最近读取", "Last read")) }
                } }
                tbody {
                    @for r in &reads {
                        tr {
                            td { (clients.get(&r.client_id).map_or("?", String::as_str)) }
                            td.num { (r.count) }
                            td { (r.last_read_at) }
                        }
                    }
                }
            }
        }
    })
}

/// What the details page's buttons do.
#[derive(Clone, Copy)]
enum Action {
    Refresh,
    Revoke,
}

/// A button of the details page (CSRF-checked), then back to the details.
async fn act(
    app: AppState,
    headers: HeaderMap,
    appid: String,
    q: ComponentQuery,
    form: CsrfForm,
    action: Action,
) -> Response {
    let s = signed_or_return!(&app, &headers);
    if let Err(r) = check_csrf(&s, &headers, &form.csrf) {
        return r;
    }
    let result = async {
        let component = app.0.component(q.component.as_deref())?;
        let appid = Appid::parse(&appid).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        match action {
            Action::Refresh => {
                refresh_now(&app, &component, &appid).await?;
                tracing::info!(appid = %appid, by = %s.name, "refreshed from the dashboard");
            }
            Action::Revoke => {
                admin::revoke_now(&app, &component, &appid, &s.name).await?;
            }
        }
        Ok::<_, ApiError>(format!("/ui/authorizers/{appid}?component={component}"))
    }
    .await;
    match result {
        Ok(location) => see_other(&location),
        Err(e) => error_page(&s, e),
    }
}

/// Refresh now, then back to the details.
pub async fn refresh(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(appid): Path<String>,
    Query(q): Query<ComponentQuery>,
    Form(form): Form<CsrfForm>,
) -> Response {
    act(app, headers, appid, q, form, Action::Refresh).await
}

/// The confirmation before revoking an authorizer.
pub async fn confirm_revoke(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(appid): Path<String>,
    Query(q): Query<ComponentQuery>,
) -> Response {
    let s = signed_or_return!(&app, &headers);
    let lang = s.lang;
    let target = async {
        let component = app.0.component(q.component.as_deref())?;
        let appid = Appid::parse(&appid).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let record = admin::authorizer(&app, &component, &appid).await?;
        Ok::<_, ApiError>((component, record))
    }
    .await;
    let (component, record) = match target {
        Ok(t) => t,
        Err(e) => return error_page(&s, e),
    };
    let appid = &record.appid;
    page(
        StatusCode::OK,
        lang,
        lang.t("取消授权方", "Revoke an authorizer"),
        Some(&s),
        html! {
            p {
                (lang.t("在 wxtoken 中取消 ", "Revoke "))
                strong { code { (appid) } }
                @if let Some(name) = &record.details.nick_name { " (" (name) ")" }
                (lang.t(
                    "？wxtoken 将停止刷新它的令牌，客户端会收到 revoked。已保存的刷新令牌会保留：商户重新授权即可恢复。这不会在微信侧解除授权。",
                    "? wxtoken stops refreshing its tokens and clients are told it is revoked. Its stored refresh token is kept: the merchant authorizing again restores it. This does not end the authorization at WeChat."
                ))
            }
            form method="post" action={ "/ui/authorizers/" (appid) "/revoke?component=" (component) } {
                input type="hidden" name="csrf" value=(s.csrf);
                button.danger id="confirm-revoke" type="submit" { (lang.t("取消授权", "Revoke")) }
                " "
                a href={ "/ui/authorizers/" (appid) "?component=" (component) } { (lang.t("取消", "Cancel")) }
            }
        },
    )
}

/// Revoke an authorizer (after the confirmation page), then back to its details.
pub async fn revoke(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(appid): Path<String>,
    Query(q): Query<ComponentQuery>,
    Form(form): Form<CsrfForm>,
) -> Response {
    act(app, headers, appid, q, form, Action::Revoke).await
}
