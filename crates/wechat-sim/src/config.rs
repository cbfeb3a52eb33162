//! Simulator configuration: [`SimConfig`], read from TOML (`wxtoken sim --config FILE`) or built in
//! code by tests. Unknown keys are rejected so a typo fails loudly; every field has a default that
//! mirrors WeChat as far as the protocol notes know it, and every point where sources disagree
//! (protocol notes, section 11) is a setting here.
//!
//! Depends on nothing else in the crate. [`SimConfig::validate`] turns the durations into the
//! millisecond values the rules use and names the offending key on error.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::Api;
use crate::model::ComponentSpec;

/// Everything the simulator can be told at start. `SimConfig::default()` is WeChat as documented.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Address to bind (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Lifetime of every access token issued (component, authorizer, direct, stable): `expires_in`.
    #[serde(with = "humantime_serde")]
    pub token_lifetime: Duration,
    /// How long a replaced token keeps working after its replacement is issued.
    #[serde(with = "humantime_serde")]
    pub overlap: Duration,
    /// Interval between `component_verify_ticket` pushes; `0s` disables the timer (tickets are then
    /// issued only at component creation, by `POST /_sim/tickets/push` and `api_start_push_ticket`).
    #[serde(with = "humantime_serde")]
    pub ticket_interval: Duration,
    /// How long a ticket is accepted by `api_component_token` (`61005` afterwards).
    #[serde(with = "humantime_serde")]
    pub ticket_validity: Duration,
    /// Which tickets `api_component_token` accepts.
    pub ticket_policy: TicketPolicy,
    /// How many consecutive pushes carry the same ticket value (1 = a new value on every push).
    pub ticket_repeat: u32,
    /// Whether `api_component_token` issues a new token on every call or returns the current one.
    pub component_token_policy: ComponentTokenPolicy,
    /// Lifetime of a `pre_auth_code` (`expires_in` of `api_create_preauthcode`).
    #[serde(with = "humantime_serde")]
    pub pre_auth_code_lifetime: Duration,
    /// Lifetime of an authorization code (redirect `expires_in`, push `AuthorizationCodeExpiredTime`).
    #[serde(with = "humantime_serde")]
    pub auth_code_lifetime: Duration,
    /// Whether an authorization code can be exchanged only once (`61009` on the second use).
    pub auth_code_single_use: bool,
    /// What `api_authorizer_token` returns as `authorizer_refresh_token`.
    pub refresh_token_policy: RefreshTokenPolicy,
    /// Whether a re-authorization (updateauthorized) issues a new refresh token.
    pub reauthorize_refresh_token: ReauthorizePolicy,
    /// Whether component APIs accept `?access_token=` as well as `?component_access_token=`.
    pub accept_access_token_alias: bool,
    /// What `getticket` (jsapi / wx_card) answers while the account's ticket is still valid.
    pub js_ticket_policy: JsTicketPolicy,
    /// `cgi-bin/stable_token` rules.
    pub stable_token: StableTokenConfig,
    /// Daily quotas and `clear_quota`.
    pub quota: QuotaConfig,
    /// Delivery of pushes to `push_url`.
    pub push: PushConfig,
    /// Seed for fault-injection randomness (a fixed seed makes a fault run repeatable).
    pub seed: Option<u64>,
    /// A component created at start (optional).
    pub component: Option<ComponentSpec>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token_lifetime: Duration::from_secs(7200),
            overlap: Duration::from_secs(300),
            ticket_interval: Duration::from_secs(600),
            ticket_validity: Duration::from_secs(12 * 3600),
            ticket_policy: TicketPolicy::Latest,
            ticket_repeat: 1,
            component_token_policy: ComponentTokenPolicy::New,
            pre_auth_code_lifetime: Duration::from_secs(600),
            auth_code_lifetime: Duration::from_secs(600),
            auth_code_single_use: true,
            refresh_token_policy: RefreshTokenPolicy::Echo,
            reauthorize_refresh_token: ReauthorizePolicy::New,
            accept_access_token_alias: true,
            js_ticket_policy: JsTicketPolicy::SameWhileValid,
            stable_token: StableTokenConfig::default(),
            quota: QuotaConfig::default(),
            push: PushConfig::default(),
            seed: None,
            component: None,
        }
    }
}

/// Which `component_verify_ticket` values `api_component_token` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketPolicy {
    /// Only the most recently issued ticket (docs: 61006 for a "not latest" ticket). Default.
    Latest,
    /// Any ticket issued within `ticket_validity`.
    AnyValid,
}

/// What `getticket` does while an account's jsapi / wx_card ticket is still valid. WeChat does not
/// document whether a new ticket retires the previous one; users report the same ticket until it
/// expires. The other two cover what a client must survive if that changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JsTicketPolicy {
    /// The same ticket until it expires, `expires_in` always the full lifetime. Default.
    SameWhileValid,
    /// A new ticket on every call; the previous one keeps working for `overlap`.
    NewRetiringPrevious,
    /// A new ticket on every call; every previous one keeps working until its own expiry.
    NewKeepingPrevious,
}

/// What `api_component_token` does while a component token is still valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentTokenPolicy {
    /// Every call issues a new token; the previous one works for `overlap`. Default.
    New,
    /// Return the current token until it is within `overlap` of expiry.
    Reuse,
}

/// What `api_authorizer_token` returns as `authorizer_refresh_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshTokenPolicy {
    /// The refresh token sent is returned unchanged (WeChat today). Default.
    Echo,
    /// A new refresh token each time; the previous one works for `overlap`.
    Rotate,
}

/// Whether re-authorizing an already authorized account changes its refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReauthorizePolicy {
    /// A new refresh token; the old one fails at once with 61023. Default.
    New,
    /// The refresh token is kept (access tokens are still retired).
    Keep,
}

/// `cgi-bin/stable_token` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StableTokenConfig {
    /// Normal mode rolls the token over when less than this remains (old and new both valid).
    #[serde(with = "humantime_serde")]
    pub rollover_window: Duration,
    /// `force_refresh=true` calls allowed per account per day (`45009` beyond).
    pub force_per_day: u32,
    /// Minimum gap between two effective forced refreshes; a closer call returns the current token.
    #[serde(with = "humantime_serde")]
    pub force_min_interval: Duration,
    /// How long the token replaced by a forced refresh keeps working (docs say "immediately").
    #[serde(with = "humantime_serde")]
    pub force_overlap: Duration,
}

impl Default for StableTokenConfig {
    fn default() -> Self {
        Self {
            rollover_window: Duration::from_secs(300),
            force_per_day: 20,
            force_min_interval: Duration::from_secs(30),
            force_overlap: Duration::ZERO,
        }
    }
}

/// Daily quotas per API per appid, and the monthly `clear_quota` budget.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    /// Overrides of the daily limit by API name (`api_authorizer_token = 50`); 0 = unlimited.
    /// APIs not named keep their default (see [`Api::default_daily_quota`]).
    pub daily: BTreeMap<String, u32>,
    /// `clear_quota` calls (all variants together) allowed per appid per calendar month.
    pub clear_per_month: u32,
    /// Whether a clear also resets the token APIs' counters (staff answers disagree).
    pub clear_resets_token_apis: bool,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            daily: BTreeMap::new(),
            clear_per_month: 10,
            clear_resets_token_apis: true,
        }
    }
}

/// Delivery of pushes to a component's `push_url`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Attempts per push (1 = no retry); an attempt fails unless the reply body is `success`.
    pub attempts: u32,
    /// Wait between attempts (doubled after each failed attempt).
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// Time allowed for the receiver to answer (WeChat: 5 s).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        }
    }
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid simulator configuration: {0}")]
    Invalid(String),
    #[error("cannot parse simulator configuration: {0}")]
    Parse(#[from] toml::de::Error),
}

/// The validated rule values, in milliseconds, read by `state` on every request.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub token_lifetime_ms: i64,
    pub overlap_ms: i64,
    pub ticket_interval_ms: i64,
    pub ticket_validity_ms: i64,
    pub ticket_policy: TicketPolicy,
    pub ticket_repeat: u32,
    pub component_token_policy: ComponentTokenPolicy,
    pub pre_auth_ms: i64,
    pub auth_code_ms: i64,
    pub auth_code_single_use: bool,
    pub refresh_policy: RefreshTokenPolicy,
    pub reauthorize: ReauthorizePolicy,
    pub access_token_alias: bool,
    pub js_ticket_policy: JsTicketPolicy,
    pub stable_window_ms: i64,
    pub stable_force_per_day: u32,
    pub stable_force_gap_ms: i64,
    pub stable_force_overlap_ms: i64,
    /// Daily limit per API, indexed by `Api as usize`; 0 = unlimited.
    pub daily_quota: Vec<u32>,
    pub clear_per_month: u32,
    pub clear_resets_token_apis: bool,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

impl SimConfig {
    /// Parse a TOML document (unknown keys are errors).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Check the values and derive the rule table.
    pub(crate) fn validate(&self) -> Result<Rules, ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError::Invalid(format!("{key}: {why}")));
        if self.token_lifetime < Duration::from_secs(1) {
            return bad("token_lifetime", "must be at least 1s");
        }
        if self.ticket_validity < Duration::from_secs(1) {
            return bad("ticket_validity", "must be at least 1s");
        }
        if self.ticket_repeat == 0 {
            return bad("ticket_repeat", "must be at least 1");
        }
        if self.push.attempts == 0 {
            return bad("push.attempts", "must be at least 1");
        }
        if self.pre_auth_code_lifetime < Duration::from_secs(1) {
            return bad("pre_auth_code_lifetime", "must be at least 1s");
        }
        if self.auth_code_lifetime < Duration::from_secs(1) {
            return bad("auth_code_lifetime", "must be at least 1s");
        }
        let mut daily_quota: Vec<u32> = Api::ALL.iter().map(|a| a.default_daily_quota()).collect();
        for (name, limit) in &self.quota.daily {
            match Api::from_name(name) {
                Some(api) => daily_quota[api as usize] = *limit,
                None => return bad(&format!("quota.daily.{name}"), "unknown API name"),
            }
        }
        if let Some(seed) = &self.component {
            if let Some(key) = &seed.encoding_aes_key
                && !valid_aes_key(key)
            {
                return bad(
                    "component.encoding_aes_key",
                    "must be 43 characters A-Z a-z 0-9",
                );
            }
            if let Some(url) = &seed.push_url
                && url::Url::parse(url).is_err()
            {
                return bad("component.push_url", "not a URL");
            }
        }
        Ok(Rules {
            token_lifetime_ms: ms(self.token_lifetime),
            overlap_ms: ms(self.overlap),
            ticket_interval_ms: ms(self.ticket_interval),
            ticket_validity_ms: ms(self.ticket_validity),
            ticket_policy: self.ticket_policy,
            ticket_repeat: self.ticket_repeat,
            component_token_policy: self.component_token_policy,
            pre_auth_ms: ms(self.pre_auth_code_lifetime),
            auth_code_ms: ms(self.auth_code_lifetime),
            auth_code_single_use: self.auth_code_single_use,
            refresh_policy: self.refresh_token_policy,
            reauthorize: self.reauthorize_refresh_token,
            access_token_alias: self.accept_access_token_alias,
            js_ticket_policy: self.js_ticket_policy,
            stable_window_ms: ms(self.stable_token.rollover_window),
            stable_force_per_day: self.stable_token.force_per_day,
            stable_force_gap_ms: ms(self.stable_token.force_min_interval),
            stable_force_overlap_ms: ms(self.stable_token.force_overlap),
            daily_quota,
            clear_per_month: self.quota.clear_per_month,
            clear_resets_token_apis: self.quota.clear_resets_token_apis,
        })
    }
}

/// An EncodingAESKey is exactly 43 characters from `A-Z a-z 0-9`.
pub(crate) fn valid_aes_key(key: &str) -> bool {
    key.len() == 43 && key.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_toml_is_the_default() {
        let c = SimConfig::from_toml("").unwrap();
        assert_eq!(c.token_lifetime, Duration::from_secs(7200));
        assert_eq!(c.overlap, Duration::from_secs(300));
        assert_eq!(c.ticket_policy, TicketPolicy::Latest);
        c.validate().unwrap();
    }

    #[test]
    fn toml_with_every_section_parses() {
        let c = SimConfig::from_toml(
            r#"
            listen = "127.0.0.1:8090"
            token_lifetime = "20s"
            overlap = "5s"
            ticket_interval = "0s"
            ticket_validity = "12h"
            ticket_policy = "any_valid"
            refresh_token_policy = "rotate"
            seed = 7
            [stable_token]
            force_per_day = 3
            [quota]
            clear_per_month = 2
            daily = { api_authorizer_token = 5 }
            [push]
            attempts = 2
            backoff = "10ms"
            [component]
            component_appid = "wx0000000000000001"
            push_url = "http://127.0.0.1:9/events"
            "#,
        )
        .unwrap();
        let rules = c.validate().unwrap();
        assert_eq!(rules.token_lifetime_ms, 20_000);
        assert_eq!(rules.daily_quota[Api::AuthorizerToken as usize], 5);
        assert_eq!(c.refresh_token_policy, RefreshTokenPolicy::Rotate);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(SimConfig::from_toml("token_lifetme = \"1s\"").is_err());
        assert!(SimConfig::from_toml("[push]\nretries = 1").is_err());
    }

    #[test]
    fn unknown_quota_api_names_the_key() {
        let c = SimConfig::from_toml("[quota]\ndaily = { api_nope = 1 }").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("quota.daily.api_nope"), "{err}");
    }
}
