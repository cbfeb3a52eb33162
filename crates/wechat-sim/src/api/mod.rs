//! WeChat's side of the wire: every endpoint at its real path, answering with WeChat's JSON.
//! Successes carry no errcode (except the APIs that say `"errcode":0,"errmsg":"ok"`); errors are
//! HTTP 200 `{"errcode":N,"errmsg":"<message> rid: xxxxxxxx-xxxxxxxx-xxxxxxxx"}`. Input is parsed
//! leniently (a `serde_json::Value`), so bad input gets WeChat's own errcode (47001, 44002, 41001,
//! ...) and never a framework 400/422 or a panic.
//!
//! Flow of a call: fault decision (`faults`) → parse → rules (`state`, under its lock, no await)
//! → count (`stats`) → render; side effects (a ticket push) go to `push` after the lock is
//! released, so pushing never blocks a handler.

mod endpoints;
mod handlers;

use std::borrow::Cow;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Map, Value};

pub use endpoints::Api;
pub(crate) use endpoints::Owner;

use crate::faults::Action;
use crate::server::ConnCtl;
use crate::sim::Sim;
use crate::stats::CallOutcome;
use crate::wxerr::{WxErr, wx};

/// What a handler produced: the appid to count the call under, the answer, and an optional
/// follow-up for the pusher.
pub(crate) struct Handled {
    pub appid: Option<String>,
    pub result: Result<Vec<u8>, WxErr>,
    pub effect: Option<Effect>,
    /// The answer's content type when it is not JSON (a media download).
    pub content_type: Option<String>,
}

/// Work a handler leaves for after the state lock is released.
pub(crate) enum Effect {
    /// Push a ticket now (api_start_push_ticket restarted pushes).
    PushTicket { component: u32, ticket: String },
}

/// One parsed call.
pub(crate) struct Call<'a> {
    pub method: &'a Method,
    pub query: &'a str,
    pub body: &'a [u8],
    /// The `media` part of a multipart body (media/upload), parsed before the state lock.
    pub media: Option<&'a MediaPart>,
}

/// An uploaded file: its content type and bytes.
pub(crate) struct MediaPart {
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// The `media` part of a `multipart/form-data` body, as WeChat's media/upload takes it.
async fn media_part(content_type: &str, body: axum::body::Bytes) -> Option<MediaPart> {
    let boundary = multer::parse_boundary(content_type).ok()?;
    let stream = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut parts = multer::Multipart::new(stream, boundary);
    while let Ok(Some(field)) = parts.next_field().await {
        if field.name() == Some("media") {
            let content_type = field
                .content_type()
                .map_or("application/octet-stream".to_owned(), ToString::to_string);
            let bytes = field.bytes().await.ok()?.to_vec();
            return Some(MediaPart {
                content_type,
                bytes,
            });
        }
    }
    None
}

impl Call<'_> {
    /// A query parameter, percent-decoded; "" when absent.
    pub(crate) fn query(&self, key: &str) -> Cow<'_, str> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .unwrap_or(Cow::Borrowed(""))
    }

    /// The body as a JSON object: 44002 when empty, 47001 when not a JSON object.
    pub(crate) fn json(&self) -> Result<Map<String, Value>, WxErr> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Err(wx(44002));
        }
        match serde_json::from_slice::<Value>(self.body) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(wx(47001)),
        }
    }
}

/// A string field, leniently: strings as-is, numbers and booleans as text, absent/null as "".
pub(crate) fn field<'a>(m: &'a Map<String, Value>, key: &str) -> Cow<'a, str> {
    match m.get(key) {
        Some(Value::String(s)) => Cow::Borrowed(s.as_str()),
        Some(Value::Number(n)) => Cow::Owned(n.to_string()),
        Some(Value::Bool(b)) => Cow::Owned(b.to_string()),
        _ => Cow::Borrowed(""),
    }
}

/// The WeChat API routes, one per [`Api`].
pub(crate) fn router() -> Router<Arc<Sim>> {
    let mut r = Router::new();
    for api in Api::ALL {
        r = r.route(
            api.path(),
            any(move |State(sim): State<Arc<Sim>>, req: Request| serve(api, sim, req)),
        );
    }
    r
}

async fn serve(api: Api, sim: Arc<Sim>, req: Request) -> Response {
    let decision = sim.faults.decide(api);
    if let Some(delay) = decision.latency {
        tokio::time::sleep(delay).await;
    }
    if let Some(action) = decision.action {
        sim.stats
            .record(api, None, CallOutcome::Fault(action.kind()));
        let conn = req
            .extensions()
            .get::<axum::extract::ConnectInfo<ConnCtl>>()
            .map(|c| &c.0);
        return fault_response(action, conn);
    }
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, api.max_body()).await {
        Ok(b) => b,
        Err(_) => {
            sim.stats.record(api, None, CallOutcome::Errcode(47001));
            return errcode_response(&wx(47001));
        }
    };
    let media = if api == Api::MediaUpload {
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        media_part(content_type, body.clone()).await
    } else {
        None
    };
    let call = Call {
        method: &parts.method,
        query: parts.uri.query().unwrap_or(""),
        body: &body,
        media: media.as_ref(),
    };
    let handled = handlers::handle(api, &sim, &call);
    let outcome = match &handled.result {
        Ok(_) => CallOutcome::Ok,
        Err(e) => CallOutcome::Errcode(e.code),
    };
    sim.stats.record(api, handled.appid.as_deref(), outcome);
    if let Some(Effect::PushTicket { component, ticket }) = handled.effect {
        crate::push::enqueue_ticket(&sim, component, ticket);
    }
    // Issued, then held: a caller that gives up or dies meanwhile never learns what was issued.
    if let Some(hold) = decision.hold {
        let _held = sim.stats.hold_answer();
        tokio::time::sleep(hold).await;
    }
    match (handled.result, handled.content_type) {
        (Ok(bytes), None) => json_response(bytes),
        (Ok(bytes), Some(content_type)) => (
            [
                (header::CONTENT_TYPE, content_type),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"media\"".to_owned(),
                ),
            ],
            bytes,
        )
            .into_response(),
        (Err(e), _) => errcode_response(&e),
    }
}

fn json_response(bytes: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(bytes));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; encoding=utf-8"),
    );
    resp
}

/// `{"errcode":N,"errmsg":"<message> rid: …"}` with HTTP 200.
pub(crate) fn errcode_response(e: &WxErr) -> Response {
    json_response(errcode_body(e.code, &e.msg))
}

pub(crate) fn errcode_body(code: i64, msg: &str) -> Vec<u8> {
    let errmsg = wechat::wire::errmsg_with_rid(msg, &crate::mint::rid());
    serde_json::to_vec(&serde_json::json!({ "errcode": code, "errmsg": errmsg }))
        .unwrap_or_default()
}

fn fault_response(action: Action, conn: Option<&ConnCtl>) -> Response {
    match action {
        Action::HttpStatus(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            let body = format!("<html><body><h1>{status}</h1></body></html>");
            (status, [(header::CONTENT_TYPE, "text/html")], body).into_response()
        }
        Action::MalformedJson => {
            json_response(br#"{"errcode":0,"errmsg":"ok","access_tok"#.to_vec())
        }
        Action::Errcode(code, msg) => {
            let msg = msg.unwrap_or_else(|| crate::wxerr::message(code).to_string());
            json_response(errcode_body(code, &msg))
        }
        Action::Reset => {
            if let Some(conn) = conn {
                conn.reset();
            }
            // Never seen by the client: the connection is reset before it is written.
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
