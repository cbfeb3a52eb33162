//! Logging and metrics: the tracing subscriber, the Prometheus recorder, and every metric name as a
//! constant in one place. No high-volume series carries an appid label.
//!
//! Invariant: nothing here ever formats a token, a secret or decrypted XML; callers log appids,
//! endpoint names and error classes only.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogConfig, LogFormat};

/// Installs the global tracing subscriber, writing to stderr. `RUST_LOG`, when set, overrides the
/// configured level. Safe to call more than once (later calls do nothing), so tests and commands
/// can share it.
pub fn init(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE)
        // Colours only on a terminal: piped logs (journald, files, tests) stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true);
    let _ = match log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Refreshes attempted, labelled `kind` (component, authorizer, direct) and `outcome` (ok or the
/// error class).
pub const REFRESH_TOTAL: &str = "wxtoken_refresh_total";
/// Counter: getticket calls (JS-SDK tickets), by `type` (jsapi, wx_card) and `outcome` (ok, or the
/// error class).
pub const GETTICKET_TOTAL: &str = "wxtoken_getticket_total";
/// Counter: calls through the WeChat API gateway, by `path` (the WeChat path; `other` past 256
/// distinct ones), `errcode` (WeChat's, `0` for success, `http_<status>`, `timeout`,
/// `unreachable`) and `client`.
pub const GATEWAY_CALLS_TOTAL: &str = "wxtoken_gateway_calls_total";
/// Counter: gateway calls sent again after WeChat refused the injected token.
pub const GATEWAY_RETRIES_TOTAL: &str = "wxtoken_gateway_retries_total";
/// Gauge (scraped): JS-SDK tickets held, by `type` and `state` (valid, failing, expired).
pub const JS_TICKETS: &str = "wxtoken_js_tickets";
/// Alerts raised, labelled `kind` (needs_reauth, revoked, ticket_silence, quota, configuration,
/// event_failed, write_failed).
pub const ALERTS_TOTAL: &str = "wxtoken_alerts_total";
/// Webhook deliveries that failed after their retries, or were dropped because the queue was full.
pub const ALERT_WEBHOOK_FAILURES_TOTAL: &str = "wxtoken_alert_webhook_failures_total";
/// Anonymous `/authorize` and `/authorize/callback` requests answered 429 (over the per-IP or the
/// overall rate limit; WeChat was not called).
pub const ANONYMOUS_LIMITED_TOTAL: &str = "wxtoken_anonymous_limited_total";
/// Invalidation reports answered, labelled `outcome`: `refreshed` (an upstream refresh),
/// `not_current` (a newer token existed), `budgeted` (the credential was force-refreshed within
/// `refresh.min_force_interval`: the current token, no upstream call), `valid` (WeChat accepted
/// the reported token: nothing refreshed), `limited` (the client was over `server.report_rate`).
pub const REPORTS_TOTAL: &str = "wxtoken_reports_total";
/// Rogue refreshes confirmed (SPEC.md rule 11), labelled `kind`: a token wxtoken obtained minutes
/// ago that WeChat refused, because something else refreshed the appid.
pub const ROGUE_REFRESHES_TOTAL: &str = "wxtoken_rogue_refreshes_total";
/// Push events stored, labelled `info_type`.
pub const EVENTS_TOTAL: &str = "wxtoken_events_total";
/// API requests answered, labelled `listener` (public, internal), `route` (the route template,
/// never the path) and `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "wxtoken_http_requests_total";
/// Upstream (WeChat) call latency in seconds, labelled `endpoint` and `outcome` (ok or the class).
pub const UPSTREAM_SECONDS: &str = "wxtoken_upstream_seconds";
/// Pushes refused or not stored, labelled `reason` (signature, appid, malformed, stale, too_large,
/// storage).
pub const PUSHES_REJECTED_TOTAL: &str = "wxtoken_pushes_rejected_total";
/// Computed at scrape time from the in-memory cache (see `http::ops`):
/// seconds until each held token expires, as a histogram over all credentials, labelled `kind`.
pub const TOKEN_TIME_TO_EXPIRY_SECONDS: &str = "wxtoken_token_time_to_expiry_seconds";
/// Seconds since each held token was issued, as a histogram over all credentials, labelled `kind`.
pub const TOKEN_AGE_SECONDS: &str = "wxtoken_token_age_seconds";
/// Authorizers held, labelled `status` (active, needs_reauth, revoked); direct accounts as
/// `status="direct"`.
pub const AUTHORIZERS: &str = "wxtoken_authorizers";
/// Seconds since the newest component_verify_ticket was received, labelled `component` (a handful).
pub const TICKET_AGE_SECONDS: &str = "wxtoken_ticket_age_seconds";

/// Upstream latency buckets (seconds): WeChat answers in tens of milliseconds; timeouts are 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide Prometheus recorder once and returns its handle (later calls, e.g. a
/// second server in one test process, share it).
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(UPSTREAM_SECONDS.to_owned()), LATENCY_BUCKETS)
                .expect("static, non-empty buckets");
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (an embedding program's): render our own anyway.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}
