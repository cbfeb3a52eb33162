//! The WeChat API gateway (SPEC.md "Gateway"): a third listener that speaks WeChat's own API and
//! forwards every call to `upstream.base_url` with the current token of the appid it names, so a
//! service calls WeChat without ever holding a token, and no service can retire another's.
//!
//! - `ANY /wx/{appid}/{wechat path}?{query}` with `Authorization: Bearer wxt_…`: forwarded to
//!   `{upstream}/{wechat path}?{query}&access_token={the appid's token}`;
//!   `ANY /wx/component/{component_appid}/{wechat path}` gets `component_access_token`. Any token
//!   the caller put in the query is dropped. The key's per-appid grants apply; calls are counted
//!   as token reads.
//! - **Transparent retry.** WeChat refusing the injected token (40001, 42001, 40014) reports it
//!   (one budgeted refresh, single flight, as `POST /v1/tokens/{appid}/invalidate`) and, when the
//!   request body was kept (at most `gateway.retry_body_max`), sends the call once more with the
//!   new token. WeChat does not execute a call whose token it refuses, so the retry cannot do
//!   anything twice. A streamed (larger) body is not retried: the caller gets WeChat's answer,
//!   and its next call the new token.
//! - **A real proxy.** Bodies stream both ways (multipart uploads, binary downloads) within
//!   `gateway.max_body_bytes`; JSON answers are read whole (to see their errcode), anything else
//!   streams. Upstream connections are pooled; redirects are never followed.
//! - **Never an open proxy.** The path is checked against WeChat's path alphabet (letters,
//!   digits, `_`, `-`, `.`; no empty, `.` or `..` segment; so no percent-escape, backslash or
//!   second host) and appended to the fixed upstream; absolute-form request targets are refused.
//!   Only a short list of request and answer headers crosses (no hop-by-hop header, never the
//!   caller's `Authorization`).
//! - **SDK mode** (`sdk.rs`): `/sdk/{api key}/{wechat path}` for SDKs that cannot send a header:
//!   their token endpoints are answered by wxtoken, and every other call's token is rewritten.
//! - Errors of the gateway itself are WeChat-shaped (`{"errcode", "errmsg"}`) with an HTTP status,
//!   so SDKs and logs read them like WeChat's: 401/41001 no key, 403/48001 appid not granted,
//!   404/40013 unknown appid, 400/40066 refused path, 413/45002 body too large, 410/61003
//!   authorization lost, 503 or 502/-1 no token now or upstream unreachable.

use std::collections::HashSet;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{Either, Full, Limited};
use parking_lot::RwLock;

mod sdk;
mod upstream;

use super::AppState;
use super::auth::{AuthError, Caller};
use crate::config::{GatewayConfig, UpstreamConfig};
use crate::model::{Appid, ComponentAppid};
use crate::telemetry;
use crate::tokens::cache::{CachedToken, ReadError, Slot};

/// The errcodes of a refused token: retried once with a new token.
const REFUSED_TOKEN: [i64; 3] = [40001, 42001, 40014];
/// Longest WeChat path forwarded.
const MAX_PATH: usize = 256;
/// Distinct path labels on the calls metric; more are counted as `other`.
const MAX_PATH_LABELS: usize = 256;
/// Request headers forwarded upstream; everything else (hop-by-hop headers, `Authorization`,
/// cookies, `Host`) stays here.
const REQUEST_HEADERS: [header::HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::ACCEPT,
    header::ACCEPT_LANGUAGE,
    header::USER_AGENT,
];
/// Answer headers passed back (the body's length is the gateway's own).
const ANSWER_HEADERS: [header::HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::CONTENT_DISPOSITION,
    header::CACHE_CONTROL,
    header::ETAG,
    header::LAST_MODIFIED,
    header::EXPIRES,
];

/// A cached calls-counter handle: (path label, outcome, client, handle).
type CounterEntry = (Arc<str>, Box<str>, Box<str>, metrics::Counter);

/// The gateway's upstream client and settings.
pub struct Gateway {
    upstream: upstream::Upstream,
    config: GatewayConfig,
    path_labels: RwLock<HashSet<Arc<str>>>,
    /// Handles of the calls counter by (path label, outcome, client).
    counters: RwLock<Vec<CounterEntry>>,
    /// The tokens handed to SDKs (SDK mode), to rewrite the ones they send.
    sdk_tokens: sdk::TokenIndex,
}

impl Gateway {
    pub fn new(upstream: &UpstreamConfig, config: &GatewayConfig) -> Result<Self, String> {
        Ok(Self {
            upstream: upstream::Upstream::new(&upstream.base_url, upstream.connect_timeout)?,
            config: config.clone(),
            path_labels: RwLock::default(),
            counters: RwLock::default(),
            sdk_tokens: sdk::TokenIndex::default(),
        })
    }

    /// The label a path is counted under: itself while fewer than [`MAX_PATH_LABELS`] are known,
    /// interned (a known path costs a read lock, no allocation).
    fn label(&self, path: &str) -> Arc<str> {
        if let Some(known) = self.path_labels.read().get(path) {
            return Arc::clone(known);
        }
        let mut labels = self.path_labels.write();
        if labels.len() >= MAX_PATH_LABELS {
            return Arc::from("other");
        }
        let label: Arc<str> = Arc::from(path);
        labels.insert(Arc::clone(&label));
        label
    }

    /// The calls counter of (path label, outcome, client), its handle cached: the recorder hashes
    /// a label set on every `counter!`, which a call per request cannot afford.
    fn counter(&self, label: &Arc<str>, outcome: &str, client: &str) -> metrics::Counter {
        let find = |list: &[CounterEntry]| {
            list.iter()
                .find(|(l, o, c, _)| Arc::ptr_eq(l, label) && **o == *outcome && **c == *client)
                .map(|(_, _, _, counter)| counter.clone())
        };
        if let Some(counter) = find(&self.counters.read()) {
            return counter;
        }
        let mut list = self.counters.write();
        if let Some(counter) = find(&list) {
            return counter;
        }
        let counter = metrics::counter!(
            telemetry::GATEWAY_CALLS_TOTAL,
            "path" => label.to_string(),
            "errcode" => outcome.to_owned(),
            "client" => client.to_owned(),
        );
        list.push((
            Arc::clone(label),
            outcome.into(),
            client.into(),
            counter.clone(),
        ));
        counter
    }
}

#[derive(Clone)]
struct GatewayState {
    app: AppState,
    gateway: Arc<Gateway>,
}

/// The gateway listener's routes.
pub fn router(app: AppState, gateway: Arc<Gateway>) -> Router {
    // One handler that reads the path itself (`parse_target`, `sdk::forward`): no route table
    // or path parameters to build per call.
    Router::new()
        .fallback(call)
        .with_state(GatewayState { app, gateway })
}

/// An error of the gateway itself, shaped like WeChat's.
#[derive(Debug)]
struct GatewayError {
    status: StatusCode,
    errcode: i64,
    message: String,
}

impl GatewayError {
    fn new(status: StatusCode, errcode: i64, message: impl Into<String>) -> Self {
        Self {
            status,
            errcode,
            message: message.into(),
        }
    }

    fn path(reason: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            40066,
            format!("path refused: {reason}"),
        )
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errcode": self.errcode,
            "errmsg": format!("wxtoken gateway: {}", self.message),
        });
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json; encoding=utf-8")],
            body.to_string(),
        )
            .into_response()
    }
}

impl From<ReadError> for GatewayError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Unknown => Self::new(StatusCode::NOT_FOUND, 40013, "unknown appid"),
            ReadError::Gone { .. } => Self::new(StatusCode::GONE, 61003, e.to_string()),
            ReadError::Ambiguous | ReadError::Invalid(_) => {
                Self::new(StatusCode::BAD_REQUEST, 40013, e.to_string())
            }
            ReadError::NoToken { .. } | ReadError::Storage(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, -1, e.to_string())
            }
        }
    }
}

/// Whose token a call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner<'a> {
    Account(&'a str),
    Component(&'a str),
}

/// `/wx/{appid}/{path}` or `/wx/component/{component}/{path}`, the raw (still percent-encoded)
/// path checked against WeChat's path alphabet.
fn parse_target(raw: &str) -> Result<(Owner<'_>, &str), GatewayError> {
    let rest = raw
        .strip_prefix("/wx/")
        .ok_or_else(|| GatewayError::path("not under /wx/"))?;
    let (first, rest) = rest
        .split_once('/')
        .ok_or_else(|| GatewayError::path("no WeChat path after the appid"))?;
    let (owner, path) = if first == "component" {
        let (component, path) = rest
            .split_once('/')
            .ok_or_else(|| GatewayError::path("no WeChat path after the component appid"))?;
        (Owner::Component(component), path)
    } else {
        (Owner::Account(first), rest)
    };
    check_path(path)?;
    Ok((owner, path))
}

fn check_path(path: &str) -> Result<(), GatewayError> {
    if path.is_empty() || path.len() > MAX_PATH {
        return Err(GatewayError::path("empty or longer than 256 bytes"));
    }
    for segment in path.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(GatewayError::path("empty, `.` or `..` segment"));
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(GatewayError::path(
                "only letters, digits, `_`, `-` and `.` (no percent-escape)",
            ));
        }
    }
    Ok(())
}

/// The caller's query without any token it carried, then `param=token`.
fn query_with_token(query: Option<&str>, param: &str, token: &str) -> String {
    let mut out = String::with_capacity(query.map_or(0, str::len) + token.len() + 24);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let is_token = url::form_urlencoded::parse(pair.as_bytes())
            .next()
            .is_some_and(|(k, _)| k == "access_token" || k == "component_access_token");
        if is_token {
            continue;
        }
        out.push_str(pair);
        out.push('&');
    }
    out.push_str(param);
    out.push('=');
    out.extend(url::form_urlencoded::byte_serialize(token.as_bytes()));
    out
}

async fn authenticate(app: &AppState, headers: &HeaderMap) -> Result<Arc<Caller>, GatewayError> {
    let missing = || {
        GatewayError::new(
            StatusCode::UNAUTHORIZED,
            41001,
            "no valid API key (Authorization: Bearer wxt_…)",
        )
    };
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .ok_or_else(missing)?;
    app.0
        .keys
        .authenticate(key.trim())
        .await
        .map_err(|e| match e {
            AuthError::Missing | AuthError::Invalid => missing(),
            AuthError::Unavailable(_) => GatewayError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                -1,
                "the key store is unavailable",
            ),
        })
}

/// The request body: kept whole (retryable) when small and of known length, else streamed
/// within `max_body_bytes`.
enum Outgoing {
    Kept(Bytes),
    Streamed(Option<Body>),
}

impl Outgoing {
    async fn from_request(
        headers: &HeaderMap,
        body: Body,
        config: &GatewayConfig,
    ) -> Result<Self, GatewayError> {
        let too_large = || {
            GatewayError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                45002,
                format!(
                    "body larger than gateway.max_body_bytes ({})",
                    config.max_body_bytes
                ),
            )
        };
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let chunked = headers.contains_key(header::TRANSFER_ENCODING);
        match length {
            Some(n) if n > config.max_body_bytes => Err(too_large()),
            Some(n) if n <= config.retry_body_max => axum::body::to_bytes(body, n)
                .await
                .map(Outgoing::Kept)
                .map_err(|_| GatewayError::new(StatusCode::BAD_REQUEST, 44002, "body cut short")),
            None if !chunked => Ok(Outgoing::Kept(Bytes::new())),
            _ => Ok(Outgoing::Streamed(Some(body))),
        }
    }

    fn retryable(&self) -> bool {
        matches!(self, Outgoing::Kept(_))
    }

    /// The body for one try (a streamed body can be sent once).
    fn take(&mut self, limit: usize) -> upstream::OutBody {
        match self {
            Outgoing::Kept(bytes) => Either::Left(Full::new(bytes.clone())),
            Outgoing::Streamed(body) => {
                Either::Right(Limited::new(body.take().unwrap_or_default(), limit))
            }
        }
    }
}

async fn call(State(gw): State<GatewayState>, request: Request) -> Response {
    match forward(&gw, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn forward(gw: &GatewayState, request: Request) -> Result<Response, GatewayError> {
    let (parts, body) = request.into_parts();
    if parts.uri.authority().is_some() {
        return Err(GatewayError::path(
            "absolute-form request targets are refused",
        ));
    }
    if parts.uri.path().starts_with("/sdk/") {
        return sdk::forward(gw, parts, body).await;
    }
    if !parts.uri.path().starts_with("/wx/") {
        return Err(GatewayError::new(
            StatusCode::NOT_FOUND,
            40066,
            "the gateway serves /wx/{appid}/{wechat path}, /wx/component/{component_appid}/{wechat path} and /sdk/{api key}/{wechat path}",
        ));
    }
    let (owner, path) = parse_target(parts.uri.path())?;
    let caller = authenticate(&gw.app, &parts.headers).await?;
    let engine = &gw.app.0.engine;
    let (slot, param) = match owner {
        Owner::Account(appid) => {
            Appid::parse(appid)
                .map_err(|e| GatewayError::new(StatusCode::BAD_REQUEST, 40013, e.to_string()))?;
            grant(&caller, appid)?;
            (engine.lookup(None, appid).await?, "access_token")
        }
        Owner::Component(appid) => {
            let component = ComponentAppid::parse(appid)
                .map_err(|e| GatewayError::new(StatusCode::BAD_REQUEST, 40013, e.to_string()))?;
            grant(&caller, appid)?;
            let slot = engine.cache().component(&component).ok_or_else(|| {
                GatewayError::new(StatusCode::NOT_FOUND, 40013, "unknown component")
            })?;
            (slot, "component_access_token")
        }
    };
    relay(gw, &caller, &slot, param, path, &parts, body).await
}

/// Sends the call to WeChat with `slot`'s current token as `param`, once more after a refused
/// token when the body was kept, and answers what WeChat answered.
async fn relay(
    gw: &GatewayState,
    caller: &Caller,
    slot: &Arc<Slot>,
    param: &str,
    path: &str,
    parts: &axum::http::request::Parts,
    body: Body,
) -> Result<Response, GatewayError> {
    let engine = &gw.app.0.engine;
    let caller_name = caller.name.as_str();
    let mut outgoing = Outgoing::from_request(&parts.headers, body, &gw.gateway.config).await?;
    let label = gw.gateway.label(path);
    let mut token = token_now(gw, slot).await?;
    gw.app.0.reads.record(caller.id, slot);
    let mut retried = false;
    loop {
        let query = query_with_token(parts.uri.query(), param, token.access_token.expose_secret());
        let deadline = tokio::time::Instant::now() + gw.gateway.config.timeout;
        let called = gw
            .gateway
            .upstream
            .exchange(
                &parts.method,
                path,
                &query,
                upstream::pick(&parts.headers, &REQUEST_HEADERS),
                outgoing.take(gw.gateway.config.max_body_bytes),
                deadline,
                is_json,
                gw.gateway.config.max_body_bytes,
            )
            .await;
        let upstream::Answer {
            status,
            headers,
            body,
        } = match called {
            Ok(answer) => answer,
            Err(e) => return Err(unreached(gw, slot, &label, caller, path, &e)),
        };
        let bytes = match body {
            upstream::AnswerBody::Streamed(body) => {
                count(gw, slot, &label, &http_label(status), caller);
                return Ok(answered(status, &headers, body));
            }
            upstream::AnswerBody::Whole(Some(bytes)) => bytes,
            upstream::AnswerBody::Whole(None) => {
                return Err(GatewayError::new(
                    StatusCode::BAD_GATEWAY,
                    -1,
                    "WeChat's answer is larger than gateway.max_body_bytes",
                ));
            }
        };
        let errcode = errcode_of(&bytes);
        let outcome = errcode.map_or_else(|| http_label(status), |c| c.to_string());
        count(gw, slot, &label, &outcome, caller);
        if let Some(code) = errcode.filter(|c| *c != 0) {
            tracing::info!(
                path,
                errcode = code,
                rid = rid_of(&bytes).unwrap_or("-"),
                client = caller_name,
                "gateway: WeChat answered an error"
            );
        }
        if errcode.is_some_and(|c| REFUSED_TOKEN.contains(&c)) && !retried {
            // The injected token was refused: report it (budgeted, single flight). With the body
            // kept, try once more with the new token.
            let refused = token.access_token.expose_secret().to_owned();
            let fresh = engine
                .invalidate_for(&slot.credential(), &refused, Some(caller_name))
                .await;
            if let Ok(fresh) = fresh
                && !fresh.is(&refused)
                && outgoing.retryable()
            {
                token = fresh;
                retried = true;
                metrics::counter!(telemetry::GATEWAY_RETRIES_TOTAL).increment(1);
                continue;
            }
        }
        let mut response = answered(status, &headers, Body::from(bytes));
        response
            .headers_mut()
            .entry(header::CONTENT_TYPE)
            .or_insert(HeaderValue::from_static("application/json; encoding=utf-8"));
        return Ok(response);
    }
}

/// A call that got no answer: counted, logged (without its URL) and answered 504 or 502.
fn unreached(
    gw: &GatewayState,
    slot: &Arc<Slot>,
    label: &Arc<str>,
    caller: &Caller,
    path: &str,
    e: &upstream::CallError,
) -> GatewayError {
    let timeout = matches!(e, upstream::CallError::Timeout);
    count(
        gw,
        slot,
        label,
        if timeout { "timeout" } else { "unreachable" },
        caller,
    );
    tracing::warn!(path, error = %e, "gateway: upstream call failed");
    if timeout {
        GatewayError::new(
            StatusCode::GATEWAY_TIMEOUT,
            -1,
            "WeChat did not answer in time",
        )
    } else {
        GatewayError::new(StatusCode::BAD_GATEWAY, -1, "WeChat could not be reached")
    }
}

fn grant(caller: &Caller, appid: &str) -> Result<(), GatewayError> {
    if caller.may_read(appid) {
        Ok(())
    } else {
        Err(GatewayError::new(
            StatusCode::FORBIDDEN,
            48001,
            format!("this API key is not granted appid {appid}"),
        ))
    }
}

/// The token to inject now: the one held, or its first refresh, within the request timeout.
async fn token_now(gw: &GatewayState, slot: &Slot) -> Result<Arc<CachedToken>, GatewayError> {
    let limit = gw.app.0.server.request_timeout;
    tokio::time::timeout(limit, gw.app.0.engine.read_or_refresh(slot))
        .await
        .map_err(|_| GatewayError::new(StatusCode::SERVICE_UNAVAILABLE, -1, "no token in time"))?
        .map_err(GatewayError::from)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("application/json") || ct.starts_with("text/plain"))
}

/// A JSON answer's `errcode` (a missing one is success: 0), `None` when it is not a JSON object.
/// An object that does not contain the word is taken as one without it, unparsed (most answers:
/// the gateway reads every one).
fn errcode_of(bytes: &[u8]) -> Option<i64> {
    let text = bytes.trim_ascii();
    if text.starts_with(b"{")
        && text.ends_with(b"}")
        && memchr::memmem::find(text, b"errcode").is_none()
    {
        return Some(0);
    }
    #[derive(serde::Deserialize)]
    struct Errcode {
        #[serde(default)]
        errcode: i64,
    }
    serde_json::from_slice::<Errcode>(bytes)
        .ok()
        .map(|e| e.errcode)
}

/// The `rid: …` WeChat appends to an errmsg, for the log.
fn rid_of(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    let start = text.find("rid: ")? + 5;
    let rid = &text[start..];
    let end = rid
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .unwrap_or(rid.len());
    Some(&rid[..end])
}

fn http_label(status: StatusCode) -> String {
    if status.is_success() {
        "0".to_owned()
    } else {
        format!("http_{}", status.as_u16())
    }
}

/// Counts one forwarded call: the metric (by path label, outcome and client) and the appid's
/// daily count by path (`outcome` other than `0` is an error).
fn count(gw: &GatewayState, slot: &Arc<Slot>, label: &Arc<str>, outcome: &str, caller: &Caller) {
    gw.gateway
        .counter(label, outcome, &caller.name)
        .increment(1);
    gw.app.0.gateway_calls.record(slot, label, outcome != "0");
}

/// Each appid's gateway calls by Beijing day and WeChat path, kept in memory and added to the
/// store in batches (`gateway_calls`), like read counts. Keyed by the day number, the credential's
/// cache slot (held, so its address is not reused before a flush) and the interned path label:
/// counting a call allocates nothing once its key exists.
#[derive(Default)]
pub struct CallCounter {
    #[allow(clippy::type_complexity)]
    counts: dashmap::DashMap<(i64, usize, Arc<str>), (Arc<Slot>, u64, u64)>,
}

/// Days since 1970-01-01 in Beijing time (UTC+8).
fn beijing_day_number(now: crate::model::Timestamp) -> i64 {
    (now.as_millis() + 8 * 3_600_000).div_euclid(86_400_000)
}

impl CallCounter {
    pub fn record(&self, slot: &Arc<Slot>, path: &Arc<str>, error: bool) {
        let day = beijing_day_number(crate::model::Timestamp::now());
        let key = (day, Arc::as_ptr(slot) as usize, Arc::clone(path));
        let mut entry = self
            .counts
            .entry(key)
            .or_insert_with(|| (Arc::clone(slot), 0, 0));
        entry.1 += 1;
        entry.2 += u64::from(error);
    }

    /// Adds the counts gathered so far to the store; on failure they are put back.
    pub async fn flush(
        &self,
        store: &dyn crate::store::Store,
    ) -> Result<usize, crate::store::StoreError> {
        let keys: Vec<_> = self.counts.iter().map(|e| e.key().clone()).collect();
        let drained: Vec<_> = keys
            .into_iter()
            .filter_map(|k| self.counts.remove(&k))
            .collect();
        if drained.is_empty() {
            return Ok(0);
        }
        let batch: Vec<crate::model::GatewayCallCount> = drained
            .iter()
            .map(
                |((day, _, path), (slot, calls, errors))| crate::model::GatewayCallCount {
                    day: crate::model::Timestamp::from_millis(day * 86_400_000).beijing_day(),
                    appid: slot.credential().appid.to_string(),
                    path: path.to_string(),
                    calls: *calls,
                    errors: *errors,
                },
            )
            .collect();
        match store.ops().add_gateway_calls(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                for (key, (slot, calls, errors)) in drained {
                    let mut entry = self.counts.entry(key).or_insert_with(|| (slot, 0, 0));
                    entry.1 += calls;
                    entry.2 += errors;
                }
                Err(e)
            }
        }
    }
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for name in &ANSWER_HEADERS {
        if let Some(value) = from.get(name) {
            to.insert(name.clone(), value.clone());
        }
    }
}

/// WeChat's answer passed back: its status, the headers that may cross, and `body`.
fn answered(status: StatusCode, headers: &HeaderMap, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    copy_headers(headers, response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wechat_shaped_paths_are_forwarded() {
        assert_eq!(
            parse_target("/wx/wxappid0001/cgi-bin/message/custom/send").unwrap(),
            (Owner::Account("wxappid0001"), "cgi-bin/message/custom/send")
        );
        assert_eq!(
            parse_target("/wx/component/wxcomp/cgi-bin/component/api_get_authorizer_list").unwrap(),
            (
                Owner::Component("wxcomp"),
                "cgi-bin/component/api_get_authorizer_list"
            )
        );
        for bad in [
            "/wx/wxa/../_sim/stats",
            "/wx/wxa/cgi-bin/../../etc",
            "/wx/wxa//evil.example/x",
            "/wx/wxa/cgi-bin/%2e%2e/x",
            "/wx/wxa/cgi-bin%2Fx",
            "/wx/wxa/cgi-bin\\x",
            "/wx/wxa/cgi-bin/./x",
            "/wx/wxa/",
            "/wx/wxa",
            "/wx/component/wxc/",
            "/wx/wxa/cgi-bin/x@evil.example",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        assert!(parse_target(&format!("/wx/wxa/{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn the_callers_tokens_are_dropped_and_ours_appended() {
        assert_eq!(
            query_with_token(
                Some("type=image&access_token=theirs&x=%20y"),
                "access_token",
                "T+1"
            ),
            "type=image&x=%20y&access_token=T%2B1"
        );
        assert_eq!(
            query_with_token(
                Some("access%5Ftoken=theirs&component_access_token=c"),
                "access_token",
                "T"
            ),
            "access_token=T"
        );
        assert_eq!(
            query_with_token(None, "component_access_token", "C"),
            "component_access_token=C"
        );
    }

    #[test]
    fn errcode_and_rid_are_read_from_wechats_answers() {
        assert_eq!(
            errcode_of(br#"{"errcode":40001,"errmsg":"invalid credential rid: 6571-ab12"}"#),
            Some(40001)
        );
        assert_eq!(errcode_of(br#"{"ip_list":[]}"#), Some(0));
        assert_eq!(errcode_of(b"\x89PNG"), None);
        assert_eq!(
            rid_of(br#"{"errmsg":"x rid: 6571a-bc12 more"}"#),
            Some("6571a-bc12")
        );
    }
}
