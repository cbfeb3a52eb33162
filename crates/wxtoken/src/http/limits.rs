//! Rate limits on the public routes where an anonymous visitor makes wxtoken call WeChat:
//! `/authorize` (`api_create_preauthcode`) and `/authorize/callback` (`api_query_auth`). Both count
//! against the component's daily quota, so they share one budget: per client IP
//! (`server.authorize_per_ip_per_minute`) and overall (`server.authorize_total_per_minute`).
//! Over either, the answer is a 429 page with `Retry-After`, and WeChat is not called.
//!
//! The client IP is the connection's peer. Only when the peer is a trusted proxy
//! (`server.trusted_proxies`) are its headers believed: the right-most `X-Forwarded-For` address
//! that is not itself a trusted proxy (the one the nearest trusted proxy saw), else `X-Real-IP`.
//!
//! A pre_auth_code is not cached and shared between visitors: WeChat retires it at its first use
//! (wechat-protocol.md, the lifetimes table), so a shared one would fail for all visitors but one.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

use super::AppState;
use crate::config::ServerConfig;

/// Remembered client IPs beyond which the idle ones are forgotten.
const KEEP_IPS: usize = 100_000;

pub struct AnonymousLimits {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    total: DefaultDirectRateLimiter,
    trusted: Vec<IpNet>,
}

impl AnonymousLimits {
    pub fn new(server: &ServerConfig) -> Self {
        let per_minute = |n: u32| Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        Self {
            per_ip: RateLimiter::keyed(per_minute(server.authorize_per_ip_per_minute)),
            total: RateLimiter::direct(per_minute(server.authorize_total_per_minute)),
            trusted: server.trusted_proxies.clone(),
        }
    }

    /// The client a request comes from (see the module doc).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let trusted = |ip: &IpAddr| self.trusted.iter().any(|net| net.contains(ip));
        if !trusted(&peer) {
            return peer;
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let forwarded = header("x-forwarded-for").and_then(|list| {
            list.rsplit(',')
                .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
                .find(|ip| !trusted(ip))
        });
        forwarded
            .or_else(|| header("x-real-ip").and_then(|v| v.trim().parse().ok()))
            .unwrap_or(peer)
    }

    /// `Err(wait)` if `ip` or everyone together is over the limit.
    fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = DefaultClock::default().now();
        if self.per_ip.len() > KEEP_IPS {
            self.per_ip.retain_recent();
        }
        self.per_ip
            .check_key(&ip)
            .and_then(|_| self.total.check())
            .map_err(|not_until| not_until.wait_time_from(now))
    }
}

/// Invalidation reports per client (API key id): `server.report_rate` per second, bursts of
/// `server.report_burst`. Kept by each server for itself: it bounds the work one client makes a
/// server do; the WeChat calls reports cause are bounded per credential across replicas by the
/// force budget (`refresh/reports.rs`), which is what protects the quota.
pub struct ReportLimits {
    per_client: DefaultKeyedRateLimiter<i64>,
}

/// Clients remembered beyond which the idle ones are forgotten.
const KEEP_CLIENTS: usize = 10_000;

impl ReportLimits {
    pub fn new(server: &ServerConfig) -> Self {
        let rate = NonZeroU32::new(server.report_rate).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(server.report_burst).unwrap_or(NonZeroU32::MIN);
        Self {
            per_client: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
        }
    }

    /// `Err(wait)` if `client` is over its report rate.
    pub fn check(&self, client: i64) -> Result<(), Duration> {
        let now = DefaultClock::default().now();
        if self.per_client.len() > KEEP_CLIENTS {
            self.per_client.retain_recent();
        }
        self.per_client
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(now))
    }
}

/// The middleware of the limited routes.
pub async fn limit(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let limits = &app.0.limits;
    let ip = limits.client_ip(peer, request.headers());
    match limits.check(ip) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            metrics::counter!(crate::telemetry::ANONYMOUS_LIMITED_TOTAL).increment(1);
            tracing::debug!(client = %ip, "anonymous request over the rate limit");
            super::authorize::too_many(wait)
        }
    }
}
