//! Operations endpoints on the internal listener: `/healthz` (the process answers), `/readyz` (the
//! store answers and every component has a ticket), `/metrics` (Prometheus text).
//!
//! `/metrics` renders the recorder's counters and histograms, then adds what is computed from the
//! in-memory cache: authorizers by status, and the distributions of token age and time to expiry
//! over every held token (a histogram per credential kind, no appid label), plus each component's
//! ticket age from the store. The cache pass is made at the scrape up to 50,000 credentials and
//! at most every 10 s off the scrape above that ([`CachePasses`]).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::model::{AuthorizerStatus, CredentialKind};
use crate::refresh::{CredentialCounts, Engine};
use crate::telemetry;

/// Readiness checks give up after this long (a hung database is "not ready", not a hung probe).
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bounds (seconds) of the token age and time-to-expiry buckets.
const TOKEN_BUCKETS: &[f64] = &[
    30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 5400.0, 7200.0,
];

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// Each check and its result: "ok", or why not.
    pub checks: std::collections::BTreeMap<String, String>,
}

/// Readiness: the store answers, and every configured component has a component_verify_ticket and
/// a servable component token.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready; `checks` says why", body = Readiness),
    ))]
pub async fn readyz(State(app): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let mut checks = std::collections::BTreeMap::new();
    let store = match tokio::time::timeout(READY_CHECK_TIMEOUT, app.0.store.ping()).await {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: storage unreachable");
            "unreachable".to_owned()
        }
        Err(_) => "timed out".to_owned(),
    };
    let store_ok = store == "ok";
    checks.insert("storage".to_owned(), store);
    for component in app.0.engine.components() {
        let result = if !store_ok {
            "unknown (storage unreachable)".to_owned()
        } else {
            match tokio::time::timeout(
                READY_CHECK_TIMEOUT,
                app.0.store.components().latest_ticket(&component),
            )
            .await
            {
                Ok(Ok(Some(_))) => "ok".to_owned(),
                Ok(Ok(None)) => "no component_verify_ticket received yet".to_owned(),
                Ok(Err(_)) | Err(_) => "unknown (storage unreachable)".to_owned(),
            }
        };
        // Servable means a component token in memory: a ticket stored by another replica is not
        // enough until this one has (or has heard of) the token made from it.
        if result == "ok" {
            let token = match app.0.engine.component_token(&component) {
                Ok(_) => "ok".to_owned(),
                Err(e) => format!("no component token yet: {e}"),
            };
            checks.insert(format!("component_token:{component}"), token);
        }
        checks.insert(format!("ticket:{component}"), result);
    }
    // A rotation onto a key this server was not given: every secret sealed under it is out of
    // reach, so tokens go down one by one.
    checks.insert(
        "master_keys".to_owned(),
        match app.0.vault.missing_key() {
            None => "ok".to_owned(),
            Some(key) => format!(
                "secrets are sealed under master key {key}, which this server does not hold"
            ),
        },
    );
    let ready = checks.values().all(|v| v == "ok");
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Readiness { ready, checks }))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String)))]
pub async fn metrics(State(app): State<AppState>) -> Response {
    let now = app.0.engine.now();
    for component in app.0.engine.components() {
        if let Ok(Ok(Some(ticket))) = tokio::time::timeout(
            READY_CHECK_TIMEOUT,
            app.0.store.components().latest_ticket(&component),
        )
        .await
        {
            let age = (now.as_millis() - ticket.received_at.as_millis()) as f64 / 1000.0;
            metrics::gauge!(telemetry::TICKET_AGE_SECONDS, "component" => component.to_string())
                .set(age.max(0.0));
        }
    }
    let pass = app.0.cache_pass.current(&app.0.engine).await;
    let counts = pass.counts;
    for (status, n) in [
        ("active", counts.active),
        ("needs_reauth", counts.needs_reauth),
        ("revoked", counts.revoked),
        ("direct", counts.direct),
    ] {
        metrics::gauge!(telemetry::AUTHORIZERS, "status" => status).set(n as f64);
    }
    for (ty, by_state) in ["jsapi", "wx_card"].into_iter().zip(pass.tickets) {
        for (state, n) in ["valid", "failing", "expired"].into_iter().zip(by_state) {
            metrics::gauge!(telemetry::JS_TICKETS, "type" => ty, "state" => state).set(n as f64);
        }
    }
    let (ttl, age) = (&pass.ttl, &pass.age);
    let mut text = app.0.metrics.render();
    write_histograms(
        &mut text,
        telemetry::TOKEN_TIME_TO_EXPIRY_SECONDS,
        "Seconds until each held token expires.",
        ttl,
    );
    write_histograms(
        &mut text,
        telemetry::TOKEN_AGE_SECONDS,
        "Seconds since each held token was obtained.",
        age,
    );
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

/// What `/metrics` reports from the token cache: one pass over every credential held.
pub(crate) struct CachePass {
    counts: CredentialCounts,
    ttl: [Histogram; KINDS.len()],
    age: [Histogram; KINDS.len()],
    /// JS-SDK tickets by type (jsapi, wx_card) and state (valid, failing, expired).
    tickets: [[u64; 3]; 2],
}

impl CachePass {
    fn over(engine: &Engine) -> Self {
        let now = engine.now();
        let mut pass = CachePass {
            counts: CredentialCounts::default(),
            ttl: Default::default(),
            age: Default::default(),
            tickets: [[0; 3]; 2],
        };
        engine.cache().for_each(|slot| {
            let kind = slot.credential().kind;
            match kind {
                CredentialKind::Authorizer => match slot.status() {
                    Some(AuthorizerStatus::NeedsReauth) => pass.counts.needs_reauth += 1,
                    Some(AuthorizerStatus::Revoked) => pass.counts.revoked += 1,
                    _ => pass.counts.active += 1,
                },
                CredentialKind::Direct => pass.counts.direct += 1,
                CredentialKind::Component | CredentialKind::Jsapi | CredentialKind::WxCard => {}
            }
            let read = engine.read_at(slot, now);
            if kind.is_ticket() {
                let state = match (&read, slot.failing()) {
                    (Ok(_), _) => 0,
                    (Err(_), Some(_)) => 1,
                    (Err(_), None) => 2,
                };
                pass.tickets[usize::from(kind == CredentialKind::WxCard)][state] += 1;
            }
            // Servable tokens only: a lost authorizer's expired token is not "about to expire".
            if let Ok(token) = read {
                let i = kind_index(kind);
                pass.ttl[i]
                    .observe((token.expires_at.as_millis() - now.as_millis()) as f64 / 1000.0);
                pass.age[i]
                    .observe((now.as_millis() - token.issued_at.as_millis()) as f64 / 1000.0);
            }
        });
        pass
    }
}

/// Credentials up to which `/metrics` makes its cache pass at the scrape (a pass over 100,000
/// takes a few tens of milliseconds).
const INLINE_PASS_MAX: usize = 50_000;
/// Above [`INLINE_PASS_MAX`], how old the pass a scrape answers with may be.
const PASS_MAX_AGE: Duration = Duration::from_secs(10);

/// The last cache pass. Up to [`INLINE_PASS_MAX`] credentials a scrape makes its own pass; above
/// it (a pass over a million takes about 0.4 s), a scrape answers with the last pass, at most
/// [`PASS_MAX_AGE`] old, and a stale one starts the next pass on a blocking thread, so no scrape
/// but the first waits for a pass and the passes run at most one at a time, at most every
/// [`PASS_MAX_AGE`] however often Prometheus scrapes.
#[derive(Clone, Default)]
pub struct CachePasses(Arc<PassState>);

#[derive(Default)]
struct PassState {
    last: parking_lot::Mutex<Option<(std::time::Instant, Arc<CachePass>)>>,
    running: AtomicBool,
}

impl CachePasses {
    pub(crate) async fn current(&self, engine: &Engine) -> Arc<CachePass> {
        if engine.cache().len() <= INLINE_PASS_MAX {
            return Arc::new(CachePass::over(engine));
        }
        let last = self.0.last.lock().clone();
        let stale = last
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= PASS_MAX_AGE);
        if stale && !self.0.running.swap(true, Ordering::AcqRel) {
            let (state, engine) = (Arc::clone(&self.0), engine.clone());
            let pass = tokio::task::spawn_blocking(move || {
                let pass = Arc::new(CachePass::over(&engine));
                *state.last.lock() = Some((std::time::Instant::now(), Arc::clone(&pass)));
                state.running.store(false, Ordering::Release);
                pass
            });
            if last.is_none()
                && let Ok(pass) = pass.await
            {
                return pass;
            }
        }
        match last {
            Some((_, pass)) => pass,
            // The first pass is running for another scrape: make one for this one.
            None => Arc::new(CachePass::over(engine)),
        }
    }
}

const KINDS: [CredentialKind; 5] = [
    CredentialKind::Component,
    CredentialKind::Authorizer,
    CredentialKind::Direct,
    CredentialKind::Jsapi,
    CredentialKind::WxCard,
];

fn kind_index(kind: CredentialKind) -> usize {
    KINDS.iter().position(|k| *k == kind).unwrap_or(0)
}

#[derive(Default)]
struct Histogram {
    buckets: [u64; TOKEN_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        for (bound, n) in TOKEN_BUCKETS.iter().zip(self.buckets.iter_mut()) {
            if value <= *bound {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum += value;
    }
}

/// Appends one histogram family in the Prometheus text format (the recorder only knows
/// observations as they happen; these are a snapshot of the cache).
fn write_histograms(out: &mut String, name: &str, help: &str, by_kind: &[Histogram; KINDS.len()]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (kind, h) in KINDS.iter().zip(by_kind) {
        let kind = kind.as_str();
        for (bound, n) in TOKEN_BUCKETS.iter().zip(h.buckets) {
            let _ = writeln!(out, "{name}_bucket{{kind=\"{kind}\",le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(out, "{name}_sum{{kind=\"{kind}\"}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{kind=\"{kind}\"}} {}", h.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_text_is_cumulative_with_an_inf_bucket() {
        let mut h: [Histogram; KINDS.len()] = Default::default();
        h[1].observe(45.0);
        h[1].observe(4000.0);
        let mut out = String::new();
        write_histograms(&mut out, "x_seconds", "help", &h);
        assert!(out.contains("# TYPE x_seconds histogram"));
        assert!(out.contains("x_seconds_bucket{kind=\"authorizer\",le=\"30\"} 0"));
        assert!(out.contains("x_seconds_bucket{kind=\"authorizer\",le=\"60\"} 1"));
        assert!(out.contains("x_seconds_bucket{kind=\"authorizer\",le=\"7200\"} 2"));
        assert!(out.contains("x_seconds_bucket{kind=\"authorizer\",le=\"+Inf\"} 2"));
        assert!(out.contains("x_seconds_count{kind=\"component\"} 0"));
    }
}
