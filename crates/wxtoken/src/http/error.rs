//! `ApiError`: the one place where outcomes become HTTP statuses and the JSON error body
//! `{"error": {"code": "...", "message": "..."}}` of SPEC.md (400, 401, 403, 404, 410, 413, 503).
//!
//! Codes are stable snake_case constants clients may match on. 5xx messages are generic: the
//! source error travels in the response extensions and `log_server_error` logs it once, with its
//! chain, so database text or a token can never reach a response body.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::refresh::RefreshError;
use crate::store::StoreError;
use crate::tokens::cache::ReadError;

pub const BAD_REQUEST: &str = "bad_request";
pub const UNAUTHORIZED: &str = "unauthorized";
pub const FORBIDDEN: &str = "forbidden";
pub const NOT_FOUND: &str = "not_found";
pub const CONFLICT: &str = "conflict";
pub const AUTHORIZATION_LOST: &str = "authorization_lost";
pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
pub const TOO_MANY_REQUESTS: &str = "too_many_requests";
pub const NO_VALID_TOKEN: &str = "no_valid_token";
pub const UNAVAILABLE: &str = "unavailable";
pub const TIMEOUT: &str = "timeout";
pub const INTERNAL: &str = "internal_error";

/// The error body every non-2xx JSON answer has (for the OpenAPI document).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable code: bad_request, unauthorized, forbidden, not_found, authorization_lost,
    /// conflict, payload_too_large, too_many_requests, no_valid_token, timeout, unavailable,
    /// internal_error.
    pub code: String,
    /// What went wrong, for people; never a secret.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed; the message says what is wrong with it.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no API key, or one that is not valid.
    #[error("a valid API key is required (Authorization: Bearer <key>)")]
    Unauthorized,
    /// 403: the key is valid but not allowed this appid or this API.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such appid (or resource).
    #[error("{0}")]
    NotFound(String),
    /// 409: the request conflicts with what exists (a live client has that name).
    #[error("{0}")]
    Conflict(String),
    /// 410: the authorizer's authorization is lost and it has no token left.
    #[error("{0}")]
    Gone(String),
    /// 413: the body is larger than the configured limit.
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// 429: the client is over a rate (`Retry-After` says when to try again).
    #[error("{message}; retry after {}s", retry_after_secs(*.wait))]
    TooManyRequests {
        message: String,
        wait: std::time::Duration,
    },
    /// 503 with a reason the caller can act on: no valid token right now.
    #[error("{0}")]
    NoValidToken(String),
    /// 503: the request ran past `server.request_timeout`.
    #[error("the request took longer than {}", humantime::format_duration(*.0))]
    Timeout(std::time::Duration),
    /// 503: a dependency (the database) is unavailable; the detail is logged, not returned.
    #[error("the service is temporarily unavailable")]
    Unavailable(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// 500: a bug or an unexpected failure; the detail is logged, not returned.
    #[error("internal error")]
    Internal(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NoValidToken(_) | ApiError::Timeout(_) | ApiError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => BAD_REQUEST,
            ApiError::Unauthorized => UNAUTHORIZED,
            ApiError::Forbidden(_) => FORBIDDEN,
            ApiError::NotFound(_) => NOT_FOUND,
            ApiError::Conflict(_) => CONFLICT,
            ApiError::Gone(_) => AUTHORIZATION_LOST,
            ApiError::PayloadTooLarge => PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests { .. } => TOO_MANY_REQUESTS,
            ApiError::NoValidToken(_) => NO_VALID_TOKEN,
            ApiError::Timeout(_) => TIMEOUT,
            ApiError::Unavailable(_) => UNAVAILABLE,
            ApiError::Internal(_) => INTERNAL,
        }
    }

    pub fn internal(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Internal(Arc::new(err))
    }
}

/// Whole seconds to wait, at least 1 (what `Retry-After` carries).
fn retry_after_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) => ApiError::Unavailable(Arc::new(err)),
            other => ApiError::Internal(Arc::new(other)),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Unknown => ApiError::NotFound("unknown appid".into()),
            ReadError::Ambiguous => ApiError::BadRequest(
                "the appid is authorized to several components: pass ?component=APPID".into(),
            ),
            e @ ReadError::NoToken { .. } => ApiError::NoValidToken(e.to_string()),
            e @ ReadError::Gone { .. } => ApiError::Gone(e.to_string()),
            ReadError::Invalid(reason) => ApiError::BadRequest(reason),
            e @ ReadError::Storage(_) => ApiError::internal(e),
        }
    }
}

impl From<RefreshError> for ApiError {
    fn from(err: RefreshError) -> Self {
        match err {
            RefreshError::Unknown => ApiError::NotFound("unknown appid".into()),
            e @ RefreshError::Gone { .. } => ApiError::Gone(e.to_string()),
            e => ApiError::NoValidToken(format!("no valid token right now: {e}")),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    }
}

/// `axum::Json` whose rejections are `ApiError`s (400 with the reason, 413), in the SPEC's body.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `axum::extract::Query` whose rejections are `ApiError`s.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `axum::extract::Path` whose rejections are `ApiError`s.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// The source of a 5xx, carried to `log_server_error` in the response extensions.
#[derive(Clone)]
pub struct ErrorSource(pub Arc<dyn std::error::Error + Send + Sync>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        }));
        let mut response = (self.status(), body).into_response();
        if let ApiError::TooManyRequests { wait, .. } = &self {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(retry_after_secs(*wait).max(1)),
            );
        }
        if let ApiError::Unavailable(source) | ApiError::Internal(source) = self {
            response.extensions_mut().insert(ErrorSource(source));
        }
        response
    }
}

/// Logs the source chain of a 5xx once, at error level, with the route template (called by the
/// routers' one observing middleware, `http::observe`).
pub fn log_server_error(route: &str, response: &Response) {
    if let Some(ErrorSource(source)) = response.extensions().get::<ErrorSource>() {
        let mut chain = source.to_string();
        let mut next_source = source.source();
        while let Some(cause) = next_source {
            chain.push_str(": ");
            chain.push_str(&cause.to_string());
            next_source = cause.source();
        }
        tracing::error!(route, status = response.status().as_u16(), error = %chain, "request failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    async fn body(err: ApiError) -> (StatusCode, serde_json::Value, bool) {
        let response = err.into_response();
        let status = response.status();
        let has_source = response.extensions().get::<ErrorSource>().is_some();
        let bytes = to_bytes(response.into_body(), 1 << 16).await.expect("body");
        (
            status,
            serde_json::from_slice(&bytes).expect("json"),
            has_source,
        )
    }

    #[tokio::test]
    async fn every_error_has_the_spec_status_code_and_json_shape() {
        let cases = [
            (
                ApiError::BadRequest("after must be a number".into()),
                400,
                BAD_REQUEST,
            ),
            (ApiError::Unauthorized, 401, UNAUTHORIZED),
            (ApiError::Forbidden("not granted".into()), 403, FORBIDDEN),
            (ApiError::NotFound("unknown appid".into()), 404, NOT_FOUND),
            (
                ApiError::Gone("revoked by the merchant".into()),
                410,
                AUTHORIZATION_LOST,
            ),
            (ApiError::PayloadTooLarge, 413, PAYLOAD_TOO_LARGE),
            (
                ApiError::TooManyRequests {
                    message: "too many invalidation reports".into(),
                    wait: std::time::Duration::from_millis(1500),
                },
                429,
                TOO_MANY_REQUESTS,
            ),
            (
                ApiError::NoValidToken("refresh failing: quota".into()),
                503,
                NO_VALID_TOKEN,
            ),
        ];
        for (err, status, code) in cases {
            let message = err.to_string();
            let (got, json, has_source) = body(err).await;
            assert_eq!(got.as_u16(), status);
            assert_eq!(json["error"]["code"], code);
            assert_eq!(json["error"]["message"], message);
            assert!(!has_source);
        }
    }

    #[tokio::test]
    async fn server_errors_hide_their_source_from_the_body() {
        let secret_detail =
            std::io::Error::other("password authentication failed for user wx: s3cret");
        let (status, json, has_source) = body(ApiError::internal(secret_detail)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(json["error"]["code"], INTERNAL);
        assert!(!json.to_string().contains("s3cret"));
        assert!(has_source, "the source goes to the logging middleware");
    }
}
