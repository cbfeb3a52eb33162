//! Logging and (with the HTTP issue) metrics: the tracing subscriber and, later, the Prometheus
//! recorder and every metric name as a constant in one place.
//!
//! Invariant: nothing here ever formats a token, a secret or decrypted XML; callers log appids,
//! endpoint names and error classes only.

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
        .with_target(true);
    let _ = match log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Refreshes attempted, labelled `kind` (component, authorizer, direct) and `outcome` (ok or the
/// error class).
pub const REFRESH_TOTAL: &str = "wxtoken_refresh_total";
/// Alerts raised, labelled `kind` (needs_reauth, revoked, ticket_silence, quota).
pub const ALERTS_TOTAL: &str = "wxtoken_alerts_total";
/// Webhook deliveries that failed after their retries, or were dropped because the queue was full.
pub const ALERT_WEBHOOK_FAILURES_TOTAL: &str = "wxtoken_alert_webhook_failures_total";
/// Push events stored, labelled `info_type`.
pub const EVENTS_TOTAL: &str = "wxtoken_events_total";
