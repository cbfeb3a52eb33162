//! SDK mode: an existing WeChat SDK (WxJava, EasyWeChat, wechatpy, Senparc, silenceper/wechat,
//! PowerWeChat …) runs unchanged except its API base URL, `http://gateway:8082/sdk/{api key}/`.
//! SDKs send no custom header, so the client's API key is the base URL's first segment; it is
//! never logged (only the WeChat path is), and it is the same key the client uses for the token
//! API, revoked the same way.
//!
//! - **Token endpoints are answered here, never forwarded**: `cgi-bin/component/api_component_token`,
//!   `…/api_authorizer_token`, `cgi-bin/token`, `cgi-bin/stable_token` and
//!   `cgi-bin/ticket/getticket` answer wxtoken's current token or ticket for the appid the request
//!   names (grants checked), in WeChat's JSON. The appsecret, ticket or refresh token the SDK sends
//!   is ignored, never checked and never forwarded; `api_authorizer_token` echoes the refresh token
//!   the SDK sent, and `api_query_auth` is performed by wxtoken's engine (which stores the real
//!   refresh token) and answered with a placeholder refresh token.
//! - **`expires_in`** is the token's remaining lifetime, but at least [`MIN_EXPIRES_IN`]: SDKs
//!   subtract an early-expiry margin before caching (WxJava 200 s, EasyWeChat 100–500 s,
//!   silenceper/wechat up to 1,500 s, Senparc up to 600 s; shared/peers.md), and a remaining
//!   lifetime below it would make them ask again before every call. What they cache cannot go
//!   stale here: every forwarded call's token is rewritten to the current one.
//! - **Every other call is forwarded with its token rewritten**: the `access_token` (or
//!   `component_access_token`) the SDK sends is looked up among the tokens this gateway handed out
//!   ([`TokenIndex`], by a keyed fingerprint, never the token), and replaced by the current token of
//!   the credential it belongs to; so an SDK holding a superseded token still calls with the current
//!   one, and no SDK can cause a 40001. A token the gateway did not hand out is refused with
//!   errcode 40001 (its SDK then asks its token endpoint, here): the gateway is never an open proxy.

use std::hash::BuildHasher;
use std::sync::Arc;

use axum::body::Body;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use serde_json::{Value, json};

use super::{GatewayError, GatewayState, check_path, grant, relay, token_now};
use crate::model::{ComponentAppid, Credential, CredentialKind, Timestamp};
use crate::tokens::cache::{CachedToken, Slot};

/// The least `expires_in` answered to an SDK (above every SDK's early-expiry margin).
pub(super) const MIN_EXPIRES_IN: i64 = 1800;
/// The refresh token `api_query_auth` answers an SDK: the real one stays in wxtoken.
const PLACEHOLDER_REFRESH_TOKEN: &str = "wxtoken-gateway-keeps-the-refresh-token";
/// Entries kept before expired ones are pruned.
const PRUNE_ABOVE: usize = 100_000;

/// The tokens this gateway handed to SDKs: fingerprint → (credential, expiry).
#[derive(Default)]
pub(super) struct TokenIndex {
    tokens: DashMap<u64, (Credential, Timestamp)>,
    hasher: std::collections::hash_map::RandomState,
}

impl TokenIndex {
    fn fingerprint(&self, token: &str) -> u64 {
        self.hasher.hash_one(token)
    }

    fn note(&self, credential: &Credential, token: &CachedToken, now: Timestamp) {
        if self.tokens.len() > PRUNE_ABOVE {
            self.tokens.retain(|_, (_, expires)| *expires > now);
        }
        let fingerprint = self.fingerprint(token.access_token.expose_secret());
        self.tokens
            .insert(fingerprint, (credential.clone(), token.expires_at));
    }

    fn owner(&self, token: &str) -> Option<Credential> {
        self.tokens
            .get(&self.fingerprint(token))
            .map(|e| e.value().0.clone())
    }
}

/// JSON answered with HTTP 200, as WeChat answers.
fn wechat_json(value: Value) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/json; encoding=utf-8",
        )],
        value.to_string(),
    )
        .into_response()
}

/// A WeChat-shaped refusal with HTTP 200 (SDKs read errcode from 200 answers and act on it).
fn refusal(errcode: i64, message: &str) -> Response {
    wechat_json(json!({"errcode": errcode, "errmsg": format!("wxtoken gateway: {message}")}))
}

fn expires_in(token: &CachedToken, now: Timestamp) -> i64 {
    ((token.expires_at.as_millis() - now.as_millis()) / 1000).max(MIN_EXPIRES_IN)
}

pub(super) async fn forward(
    gw: &GatewayState,
    parts: Parts,
    body: Body,
) -> Result<Response, GatewayError> {
    let rest = parts.uri.path().trim_start_matches("/sdk/");
    let (key, path) = rest
        .split_once('/')
        .ok_or_else(|| GatewayError::path("no WeChat path after /sdk/{api key}"))?;
    check_path(path)?;
    let caller = gw.app.0.keys.authenticate(key).await.map_err(|_| {
        GatewayError::new(
            StatusCode::UNAUTHORIZED,
            41001,
            "the API key in the base URL (/sdk/{api key}/) is not valid",
        )
    })?;
    let engine = &gw.app.0.engine;
    let now = engine.now();
    let query = |name: &str| {
        url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    match path {
        "cgi-bin/component/api_component_token" => {
            let body = json_body(body).await?;
            let component = field(&body, "component_appid")?;
            grant(&caller, &component)?;
            let component = ComponentAppid::parse(&component)
                .map_err(|e| GatewayError::new(StatusCode::OK, 40013, e.to_string()))?;
            let slot = engine
                .cache()
                .component(&component)
                .ok_or_else(|| GatewayError::new(StatusCode::OK, 40013, "unknown component"))?;
            let token = handed_out(gw, &slot, now).await?;
            gw.app.0.reads.record(caller.id, &slot);
            Ok(wechat_json(json!({
                "component_access_token": token.access_token.expose_secret(),
                "expires_in": expires_in(&token, now),
            })))
        }
        "cgi-bin/component/api_authorizer_token" => {
            let body = json_body(body).await?;
            let component = field(&body, "component_appid")?;
            let appid = field(&body, "authorizer_appid")?;
            grant(&caller, &appid)?;
            let slot = engine.lookup(Some(component.as_str()), &appid).await?;
            let token = handed_out(gw, &slot, now).await?;
            gw.app.0.reads.record(caller.id, &slot);
            Ok(wechat_json(json!({
                "authorizer_access_token": token.access_token.expose_secret(),
                "expires_in": expires_in(&token, now),
                // What the SDK sent: the real refresh token never leaves wxtoken.
                "authorizer_refresh_token": body.get("authorizer_refresh_token").cloned().unwrap_or(Value::Null),
            })))
        }
        "cgi-bin/token" | "cgi-bin/stable_token" => {
            let appid = if path == "cgi-bin/token" {
                query("appid")
            } else {
                field(&json_body(body).await?, "appid")?
            };
            if appid.is_empty() {
                return Ok(refusal(41002, "appid missing"));
            }
            grant(&caller, &appid)?;
            let slot = engine.lookup(None, &appid).await?;
            let token = handed_out(gw, &slot, now).await?;
            gw.app.0.reads.record(caller.id, &slot);
            Ok(wechat_json(json!({
                "access_token": token.access_token.expose_secret(),
                "expires_in": expires_in(&token, now),
            })))
        }
        "cgi-bin/ticket/getticket" => {
            let Some(owner) = gw.gateway.sdk_tokens.owner(&query("access_token")) else {
                return Ok(foreign());
            };
            let kind = match &*query("type") {
                "" | "jsapi" => CredentialKind::Jsapi,
                "wx_card" => CredentialKind::WxCard,
                _ => {
                    return Ok(refusal(
                        40097,
                        "invalid args: type must be jsapi or wx_card",
                    ));
                }
            };
            grant(&caller, owner.appid.as_str())?;
            let account = engine
                .lookup(Some(owner.component.as_str()), owner.appid.as_str())
                .await?;
            let ticket = engine.ticket(&account, kind).await?;
            Ok(wechat_json(json!({
                "errcode": 0,
                "errmsg": "ok",
                "ticket": ticket.access_token.expose_secret(),
                "expires_in": expires_in(&ticket, now),
            })))
        }
        "cgi-bin/component/api_query_auth" => {
            let body = json_body(body).await?;
            let component = field(&body, "component_appid")?;
            let code = field(&body, "authorization_code")?;
            grant(&caller, &component)?;
            let component = ComponentAppid::parse(&component)
                .map_err(|e| GatewayError::new(StatusCode::OK, 40013, e.to_string()))?;
            let appid = match engine.authorize_code(&component, &code).await {
                Ok(appid) => appid,
                Err(e) => return Ok(refusal(61010, &format!("the code was not exchanged: {e}"))),
            };
            let slot = engine
                .lookup(Some(component.as_str()), appid.as_str())
                .await?;
            let token = handed_out(gw, &slot, now).await?;
            Ok(wechat_json(json!({"authorization_info": {
                "authorizer_appid": appid.as_str(),
                "authorizer_access_token": token.access_token.expose_secret(),
                "expires_in": expires_in(&token, now),
                "authorizer_refresh_token": PLACEHOLDER_REFRESH_TOKEN,
                "func_info": [],
            }})))
        }
        _ => {
            // Any other call: the token it carries names the credential; the current one goes.
            let (param, sent) = match (query("access_token"), query("component_access_token")) {
                (t, _) if !t.is_empty() => ("access_token", t),
                (_, t) if !t.is_empty() => ("component_access_token", t),
                _ => return Ok(refusal(41001, "access_token missing")),
            };
            let Some(owner) = gw.gateway.sdk_tokens.owner(&sent) else {
                return Ok(foreign());
            };
            grant(&caller, owner.appid.as_str())?;
            let slot = match owner.kind {
                CredentialKind::Component => engine
                    .cache()
                    .component(&owner.component)
                    .ok_or_else(|| GatewayError::new(StatusCode::OK, 40013, "unknown component"))?,
                _ => {
                    engine
                        .lookup(Some(owner.component.as_str()), owner.appid.as_str())
                        .await?
                }
            };
            relay(gw, &caller, &slot, param, path, &parts, body).await
        }
    }
}

/// A token the gateway did not hand out.
fn foreign() -> Response {
    refusal(
        40001,
        "invalid credential: this access_token was not issued by this gateway; ask the SDK's token \
         endpoint (through the gateway) for one",
    )
}

/// `slot`'s current token, remembered as handed out.
async fn handed_out(
    gw: &GatewayState,
    slot: &Arc<Slot>,
    now: Timestamp,
) -> Result<Arc<CachedToken>, GatewayError> {
    let token = token_now(gw, slot).await?;
    gw.gateway.sdk_tokens.note(&slot.credential(), &token, now);
    Ok(token)
}

async fn json_body(body: Body) -> Result<serde_json::Map<String, Value>, GatewayError> {
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map_err(|_| GatewayError::new(StatusCode::OK, 47001, "data format error"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(GatewayError::new(
            StatusCode::OK,
            47001,
            "data format error",
        )),
    }
}

fn field(body: &serde_json::Map<String, Value>, name: &str) -> Result<String, GatewayError> {
    match body.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(GatewayError::new(
            StatusCode::OK,
            41002,
            format!("{name} missing"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Appid;

    #[test]
    fn expires_in_is_the_remaining_lifetime_but_never_below_every_sdks_margin() {
        let token = |expires_ms| CachedToken {
            access_token: crate::tokens::cache::TokenText::from("t"),
            issued_at: Timestamp::from_millis(0),
            expires_at: Timestamp::from_millis(expires_ms),
            refresh_at: Timestamp::from_millis(0),
            generation: 1,
            source: crate::model::TokenSource::AuthorizerToken,
            stored: true,
        };
        let now = Timestamp::from_millis(1_000_000);
        assert_eq!(expires_in(&token(1_000_000 + 7_000_000), now), 7000);
        assert_eq!(expires_in(&token(1_000_000 + 60_000), now), MIN_EXPIRES_IN);
    }

    #[test]
    fn only_tokens_handed_out_are_known_and_by_fingerprint() {
        let index = TokenIndex::default();
        let credential = Credential::authorizer(
            &ComponentAppid::parse("wxc").unwrap(),
            &Appid::parse("wxa").unwrap(),
        );
        let token = CachedToken {
            access_token: crate::tokens::cache::TokenText::from("handed"),
            issued_at: Timestamp::from_millis(0),
            expires_at: Timestamp::from_millis(i64::MAX),
            refresh_at: Timestamp::from_millis(0),
            generation: 1,
            source: crate::model::TokenSource::AuthorizerToken,
            stored: true,
        };
        index.note(&credential, &token, Timestamp::from_millis(0));
        assert_eq!(index.owner("handed"), Some(credential));
        assert_eq!(index.owner("foreign"), None);
    }
}
