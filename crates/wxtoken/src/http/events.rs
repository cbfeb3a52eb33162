//! `POST /wechat/events`: WeChat's pushes to the authorization-event URL (tickets and
//! authorization changes). Verify, decrypt, store, answer `success`; the slow follow-ups
//! (api_query_auth) run after, from the stored event, so the answer comes well within WeChat's 5 s
//! and a crash after it loses nothing.
//!
//! What is refused, and changes nothing: a body over the limit (413); a malformed body or missing
//! parameters (400); an envelope `AppId` this server does not serve (400); a `msg_signature` that
//! does not match (403); a signed push whose `timestamp` is outside `server.push_max_skew` — a
//! captured push replayed later (403). A push stored before (WeChat's own retries, or a replay
//! inside the window) is answered `success` and applied once. Rejections are logged with their
//! reason, never with the body.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::http::header::{CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use wechat::event::{Envelope, EventError, PushParams, open_push};

use super::AppState;
use super::error::ApiError;
use crate::model::{ComponentAppid, EventInsert, Timestamp};
use crate::telemetry;

/// The body WeChat expects once a push is taken care of.
const SUCCESS: &str = "success";

pub async fn receive(
    State(app): State<AppState>,
    params: Result<axum::extract::Query<PushParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match accept(&app, params, body).await {
        Ok(()) => ([(CONTENT_TYPE, "text/plain; charset=utf-8")], SUCCESS).into_response(),
        Err(Rejected { reason, error }) => {
            metrics::counter!(telemetry::PUSHES_REJECTED_TOTAL, "reason" => reason).increment(1);
            if error.status().is_client_error() {
                tracing::warn!(reason, error = %error, "push refused");
            }
            error.into_response()
        }
    }
}

struct Rejected {
    reason: &'static str,
    error: ApiError,
}

fn rejected(reason: &'static str, error: ApiError) -> Rejected {
    Rejected { reason, error }
}

async fn accept(
    app: &AppState,
    params: Result<axum::extract::Query<PushParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(), Rejected> {
    let body = body.map_err(|e| {
        let error = ApiError::from(e);
        let reason = if matches!(error, ApiError::PayloadTooLarge) {
            "too_large"
        } else {
            "malformed"
        };
        rejected(reason, error)
    })?;
    let axum::extract::Query(params) = params.map_err(|e| {
        rejected(
            "malformed",
            ApiError::BadRequest(format!(
                "push parameters: {} (expected signature, timestamp, nonce, msg_signature)",
                e.body_text()
            )),
        )
    })?;
    let envelope = Envelope::parse(&body).map_err(|e| match e {
        wechat::event::XmlError::TooLarge { .. } => {
            rejected("too_large", ApiError::PayloadTooLarge)
        }
        e => rejected("malformed", ApiError::BadRequest(format!("push body: {e}"))),
    })?;
    let crypt = envelope
        .app_id
        .as_deref()
        .and_then(|a| ComponentAppid::parse(a).ok())
        .and_then(|a| app.0.pushes.get_key_value(&a))
        .ok_or_else(|| {
            rejected(
                "appid",
                ApiError::BadRequest(
                    "the push's AppId is not a component this server serves".into(),
                ),
            )
        });
    let (component, crypt) = crypt?;
    let event = open_push(crypt, &params, &envelope).map_err(|e| match e {
        EventError::BadSignature => rejected(
            "signature",
            ApiError::Forbidden("msg_signature does not match".into()),
        ),
        EventError::TooLarge { .. } => rejected("too_large", ApiError::PayloadTooLarge),
        EventError::ComponentMismatch => rejected(
            "appid",
            ApiError::BadRequest("the push's AppId does not match its component".into()),
        ),
        // Signed correctly but not decryptable or not an event we can read.
        e => rejected("malformed", ApiError::BadRequest(format!("push: {e}"))),
    })?;
    check_timestamp(&params.timestamp, app.0.server.push_max_skew)?;
    let dedupe_key = dedupe_key(event.info_type(), &event.to_xml());
    match app
        .0
        .engine
        .ingest_push(component, &event, &dedupe_key)
        .await
    {
        Ok(EventInsert::Inserted) => {
            tracing::info!(component = %component, info_type = event.info_type(), "push stored");
            Ok(())
        }
        Ok(_) => {
            tracing::info!(component = %component, info_type = event.info_type(), "push already stored; applied once");
            Ok(())
        }
        Err(crate::refresh::EngineError::Invalid(detail)) => Err(rejected(
            "malformed",
            ApiError::BadRequest(format!("push: {detail}")),
        )),
        Err(e) => Err(rejected("storage", ApiError::internal(e))),
    }
}

/// A signed push outside the window is a replay (or a clock far off): refused.
fn check_timestamp(timestamp: &str, max_skew: std::time::Duration) -> Result<(), Rejected> {
    if max_skew.is_zero() {
        return Ok(());
    }
    let sent: i64 = timestamp.trim().parse().map_err(|_| {
        rejected(
            "malformed",
            ApiError::BadRequest("timestamp must be Unix seconds".into()),
        )
    })?;
    let now = Timestamp::now().as_millis().div_euclid(1000);
    let skew = (now - sent).unsigned_abs();
    if skew > max_skew.as_secs() {
        return Err(rejected(
            "stale",
            ApiError::Forbidden(format!(
                "the push's timestamp is {skew} s from now, outside the accepted {} s (a replay?)",
                max_skew.as_secs()
            )),
        ));
    }
    Ok(())
}

/// Identifies a push by its decrypted content: WeChat's retries of one push carry the same event
/// (possibly re-encrypted), so they share a key and are stored once.
fn dedupe_key(info_type: &str, plaintext: &str) -> String {
    let digest = Sha256::digest(plaintext.as_bytes());
    format!("{info_type}:{}", hex::encode(&digest[..16]))
}

#[derive(Debug, serde::Deserialize)]
pub struct Handshake {
    signature: String,
    timestamp: String,
    nonce: String,
    echostr: String,
}

/// `GET /wechat/events?signature=..&timestamp=..&nonce=..&echostr=..`: the URL check the console
/// runs when the event URL is saved: answers `echostr` if `signature` matches a configured
/// component's Token.
pub async fn handshake(
    State(app): State<AppState>,
    query: Result<axum::extract::Query<Handshake>, QueryRejection>,
) -> Response {
    let Ok(axum::extract::Query(q)) = query else {
        return ApiError::BadRequest("expected signature, timestamp, nonce and echostr".into())
            .into_response();
    };
    let known = app
        .0
        .pushes
        .values()
        .any(|crypt| crypt.verify_signature(&q.timestamp, &q.nonce, &q.signature));
    if known {
        // A signature seen once (in a log, a proxy) must not open the check forever.
        if let Err(Rejected { reason, error }) =
            check_timestamp(&q.timestamp, app.0.server.push_max_skew)
        {
            metrics::counter!(telemetry::PUSHES_REJECTED_TOTAL, "reason" => reason).increment(1);
            tracing::warn!(error = %error, "event URL check refused");
            return error.into_response();
        }
        let headers = [
            (CONTENT_TYPE, "text/plain; charset=utf-8"),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ];
        (headers, q.echostr).into_response()
    } else {
        metrics::counter!(telemetry::PUSHES_REJECTED_TOTAL, "reason" => "signature").increment(1);
        tracing::warn!("event URL check refused: signature does not match");
        ApiError::Forbidden("signature does not match".into()).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_outside_the_window_are_refused_and_zero_turns_the_check_off() {
        let now = Timestamp::now().as_millis() / 1000;
        let window = Duration::from_secs(300);
        assert!(check_timestamp(&now.to_string(), window).is_ok());
        assert!(check_timestamp(&(now - 299).to_string(), window).is_ok());
        let old = check_timestamp(&(now - 3600).to_string(), window).expect_err("stale");
        assert_eq!(old.reason, "stale");
        assert!(check_timestamp(&(now + 3600).to_string(), window).is_err());
        assert_eq!(
            check_timestamp("yesterday", window)
                .expect_err("bad")
                .reason,
            "malformed"
        );
        assert!(check_timestamp(&(now - 86_400).to_string(), Duration::ZERO).is_ok());
    }

    #[test]
    fn the_same_event_has_one_key_and_another_event_another() {
        let a = dedupe_key("authorized", "<xml><A>1</A></xml>");
        assert_eq!(a, dedupe_key("authorized", "<xml><A>1</A></xml>"));
        assert_ne!(a, dedupe_key("authorized", "<xml><A>2</A></xml>"));
        assert!(a.starts_with("authorized:"));
    }
}
