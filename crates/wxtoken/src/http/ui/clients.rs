//! The dashboard's clients page: each client's key hint, grants, reads and state; add, rotate
//! and revoke (each a CSRF-checked POST; a new key is shown once, on the answer page only).

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{Markup, html};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::{Lang, Signed, check_csrf, page};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::manage;
use crate::model::{AppidGrant, Timestamp};

fn title(lang: Lang) -> &'static str {
    lang.t("客户端", "Clients")
}

/// An error page leading back to the clients.
fn error_page(s: &Signed, e: ApiError) -> Response {
    super::error_page(s, e, "/ui/clients")
}

/// The clients, their reads and the forms.
pub async fn list(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let s = signed_or_return!(&app, &headers);
    match list_body(&app, &s).await {
        Ok(body) => page(StatusCode::OK, s.lang, title(s.lang), Some(&s), body),
        Err(e) => error_page(&s, e),
    }
}

async fn list_body(app: &AppState, s: &Signed) -> Result<Markup, ApiError> {
    let lang = s.lang;
    let clients = app.0.store.clients().list_clients().await?;
    let mut reads: HashMap<i64, (u64, Option<Timestamp>)> = HashMap::new();
    for r in app.0.store.clients().read_counts(None).await? {
        let e = reads.entry(r.client_id).or_default();
        e.0 += r.count;
        e.1 = e.1.max(Some(r.last_read_at));
    }
    let now = Timestamp::now();
    Ok(html! {
        table id="clients" {
            thead { tr {
                th scope="col" { (lang.t("名称", "Name")) }
                th scope="col" { (lang.t("密钥", "Key")) }
                th scope="col" { (lang.t("可读 appid", "Appids")) }
                th scope="col" { (lang.t("管理员", "Admin")) }
                th scope="col" { (lang.t("读取", "Reads")) }
                th scope="col" { (lang.t("最近使用", "Last used")) }
                th scope="col" { (lang.t("状态", "State")) }
                th scope="col" { (lang.t("操作", "Actions")) }
            } }
            tbody {
                @for c in &clients {
                    @let (count, last) = reads.get(&c.id).copied().unwrap_or_default();
                    tr {
                        td { (c.name) }
                        td { code { (c.key_hint) "…" } }
                        td { code { (c.grant.to_stored()) } }
                        td { @if c.admin { (lang.t("是", "yes")) } @else { (lang.t("否", "no")) } }
                        td.num { (count) }
                        td { @match last { Some(t) => (t), None => "-" } }
                        td {
                            @if let Some(at) = c.revoked_at {
                                span.status-revoked { (lang.t("已吊销 ", "revoked ")) (at) }
                            } @else {
                                span.status-active { (lang.t("有效", "active")) }
                                @if let Some(p) = c.previous_key.as_ref().filter(|p| p.expires_at > now) {
                                    br;
                                    span.hint { (lang.t("旧密钥 ", "previous key ")) code { (p.key_hint) "…" } (lang.t(" 有效至 ", " works until ")) (p.expires_at) }
                                }
                            }
                        }
                        td {
                            @if c.revoked_at.is_none() {
                                form.inline method="post" action={ "/ui/clients/" (c.name) "/rotate" } {
                                    input type="hidden" name="csrf" value=(s.csrf);
                                    label for={ "grace-" (c.id) } { (lang.t("旧密钥保留", "Keep the old key")) }
                                    select id={ "grace-" (c.id) } name="grace_seconds" {
                                        option value="0" { (lang.t("不保留", "no")) }
                                        option value="3600" { "1 h" }
                                        option value="86400" { "24 h" }
                                    }
                                    button.secondary type="submit" { (lang.t("轮换", "Rotate")) }
                                }
                                a href={ "/ui/clients/" (c.name) "/revoke" } { (lang.t("吊销…", "Revoke…")) }
                            }
                        }
                    }
                }
            }
        }
        h2 { (lang.t("添加客户端", "Add a client")) }
        form.login id="add-client" method="post" action="/ui/clients" {
            input type="hidden" name="csrf" value=(s.csrf);
            label for="name" { (lang.t("名称（例如 order-service）", "Name (e.g. order-service)")) }
            input id="name" name="name" type="text" required maxlength="128";
            label for="appids" { (lang.t("可读的 appid（空格或逗号分隔；* 为全部）", "Appids it may read (space or comma separated; * for all)")) }
            input id="appids" name="appids" type="text" required;
            label { input name="admin" type="checkbox" value="true"; " " (lang.t("管理员（可用管理 API 与本面板）", "Admin (the admin API and this dashboard)")) }
            button type="submit" { (lang.t("添加", "Add")) }
        }
    })
}

/// The page that shows a new key once.
fn key_page(s: &Signed, name: &str, key: &str, note: &str) -> Response {
    let lang = s.lang;
    page(
        StatusCode::OK,
        lang,
        title(lang),
        Some(s),
        html! {
            p { (note) }
            p { (lang.t("客户端 ", "Client ")) strong { (name) } (lang.t(" 的 API 密钥（只显示这一次）：", "'s API key (shown only this once):")) }
            p { code id="new-key" { (key) } }
            p { a href="/ui/clients" { (lang.t("返回客户端列表", "Back to the clients")) } }
        },
    )
}

#[derive(Deserialize)]
pub struct AddForm {
    #[serde(default)]
    csrf: String,
    name: String,
    appids: String,
    #[serde(default)]
    admin: Option<String>,
}

/// Add a client; its key is shown once.
pub async fn add(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<AddForm>,
) -> Response {
    let s = signed_or_return!(&app, &headers);
    if let Err(r) = check_csrf(&s, &headers, &form.csrf) {
        return r;
    }
    let appids: Vec<String> = form
        .appids
        .split([',', ' ', '\n', '\t'])
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    let result = async {
        let grant: AppidGrant = manage::parse_grant(&appids)?;
        let admin = form.admin.is_some();
        let (record, key) = manage::create_client(&*app.0.store, form.name.trim(), grant, admin).await?;
        tracing::info!(client = %record.name, admin, by = %s.name, "client created from the dashboard");
        Ok::<_, ApiError>((record.name, key.key.expose_secret().to_owned()))
    }
    .await;
    match result {
        Ok((name, key)) => key_page(&s, &name, &key, s.lang.t("已添加。", "Added.")),
        Err(e) => error_page(&s, e),
    }
}

#[derive(Deserialize)]
pub struct RotateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    grace_seconds: u64,
}

/// Rotate a client's key; the new one is shown once.
pub async fn rotate(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<RotateForm>,
) -> Response {
    let s = signed_or_return!(&app, &headers);
    if let Err(r) = check_csrf(&s, &headers, &form.csrf) {
        return r;
    }
    let grace = Duration::from_secs(form.grace_seconds);
    match manage::rotate_client(&*app.0.store, &name, grace).await {
        Ok((_, key)) => {
            app.0.keys.forget_all();
            tracing::info!(client = %name, by = %s.name, "client key rotated from the dashboard");
            key_page(
                &s,
                &name,
                key.key.expose_secret(),
                s.lang.t("已轮换。", "Rotated."),
            )
        }
        Err(e) => error_page(&s, e.into()),
    }
}

/// The confirmation before revoking.
pub async fn confirm_revoke(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let s = signed_or_return!(&app, &headers);
    let lang = s.lang;
    page(
        StatusCode::OK,
        lang,
        lang.t("吊销客户端", "Revoke a client"),
        Some(&s),
        html! {
            p { (lang.t("吊销 ", "Revoke ")) strong { (name) } (lang.t(" 的密钥？它的请求将立即被拒绝，此操作不能撤销。", "'s key? Its requests are refused at once; this cannot be undone.")) }
            form method="post" action={ "/ui/clients/" (name) "/revoke" } {
                input type="hidden" name="csrf" value=(s.csrf);
                button id="confirm-revoke" type="submit" { (lang.t("吊销", "Revoke")) }
                " "
                a href="/ui/clients" { (lang.t("取消", "Cancel")) }
            }
        },
    )
}

/// Revoke a client's key (after the confirmation page).
pub async fn revoke(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<super::CsrfForm>,
) -> Response {
    let s = signed_or_return!(&app, &headers);
    if let Err(r) = check_csrf(&s, &headers, &form.csrf) {
        return r;
    }
    match manage::revoke_client(&*app.0.store, &name).await {
        Ok(true) => {
            app.0.keys.forget_all();
            tracing::info!(client = %name, by = %s.name, "client revoked from the dashboard");
            super::see_other("/ui/clients")
        }
        Ok(false) => error_page(
            &s,
            ApiError::NotFound(format!("no active client named {name}")),
        ),
        Err(e) => error_page(&s, e.into()),
    }
}
