//! Typed configuration and its layered loader: built-in defaults, then a TOML file, then
//! `WXTOKEN_SECTION__KEY` environment variables, then a few command-line overrides.
//!
//! Invariants: unknown keys are rejected (every struct is `deny_unknown_fields`), every error names
//! the key that holds the bad value, secrets are `SecretString` (their `Debug` is redacted, the
//! storage URL included, since it may carry a password), and loading writes nothing.
//!
//! The layering is written by hand over `toml::Value` rather than with a configuration crate because
//! SPEC.md asks for array-indexed component overrides (`WXTOKEN_COMPONENTS__0__APPSECRET`) and the
//! single-component alias (`WXTOKEN_COMPONENT__APPSECRET`), which the general-purpose crates do not
//! express; `serde_path_to_error` supplies the key path of a bad value.
//!
//! Depends on nothing else in the crate.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use toml::Value;
use url::Url;

/// The commented example configuration, printed by `wxtoken serve --print-config`.
pub const EXAMPLE: &str = include_str!("../wxtoken.example.toml");

/// Environment prefix of configuration overrides.
const ENV_PREFIX: &str = "WXTOKEN_";
/// Separator between levels in an environment override.
const ENV_SEPARATOR: &str = "__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The OS error is the `source`, printed once by the error chain.
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML at line {line}, column {column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub components: Vec<ComponentConfig>,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub security: SecurityConfig,
    #[serde(default)]
    pub refresh: RefreshConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub gateway: GatewayConfig,
}

/// The WeChat API gateway (the third listener, `server.gateway_listen`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Largest request body forwarded (a media upload); larger ones get 413.
    pub max_body_bytes: usize,
    /// A request body up to this size is kept, so a call WeChat refuses for its token (40001,
    /// 42001, 40014) is sent again once with a new token; larger bodies are streamed and a
    /// refused call is answered as WeChat answered it.
    pub retry_body_max: usize,
    /// Bound on one forwarded call (an upload or download included).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 20 << 20,
            retry_body_max: 1 << 20,
            timeout: Duration::from_secs(60),
        }
    }
}

/// A listen address, or `off` (or an empty string) for none.
fn listen_or_off<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    match text.trim() {
        "" | "off" => Ok(None),
        addr => addr.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("`{addr}` is not an address:port or `off`"))
        }),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub public_listen: SocketAddr,
    pub internal_listen: SocketAddr,
    /// The WeChat API gateway's listener (internal network only), or `off`.
    #[serde(deserialize_with = "listen_or_off")]
    pub gateway_listen: Option<SocketAddr>,
    pub public_url: Option<Url>,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// The longest a `GET /v1/tokens/{appid}?after=GEN` long-poll waits before answering with the
    /// current token.
    #[serde(with = "humantime_serde")]
    pub long_poll_max: Duration,
    /// Pushes whose `timestamp` is further than this from now are refused (a captured push
    /// replayed later); `0s` turns the check off.
    #[serde(with = "humantime_serde")]
    pub push_max_skew: Duration,
    /// How long a client key is trusted from memory before it is checked against the store again
    /// (a revocation made by another process takes effect within it).
    #[serde(with = "humantime_serde")]
    pub key_cache_ttl: Duration,
    /// A connection that has not sent a whole request head within this time is closed: a new one,
    /// or a keep-alive connection idle after its last response.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Connections the public listener serves at once; more wait in the kernel's backlog, not
    /// accepted. Unset: 2,048, or less if the open-file limit leaves no room for it.
    pub public_max_connections: Option<usize>,
    /// The same for the internal listener (its own cap, so a flood on the public one never starves
    /// it). Unset: 8,192, or less if the open-file limit leaves no room for it.
    pub internal_max_connections: Option<usize>,
    /// Proxies (CIDRs) whose `X-Forwarded-For` / `X-Real-IP` name the client; from anyone else the
    /// headers are ignored and the connection's peer is the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `/authorize` and `/authorize/callback` requests (each a WeChat call) one client IP may make
    /// per minute (also its burst); more get 429.
    pub authorize_per_ip_per_minute: u32,
    /// The same for all clients together.
    pub authorize_total_per_minute: u32,
    /// Invalidation reports one client (API key) may make per second on this server; beyond it
    /// (and its burst) a report is answered 429 with `Retry-After`. The upstream calls reports
    /// cause are bounded separately, per credential across replicas (`refresh.min_force_interval`).
    pub report_rate: u32,
    /// Reports a client may make at once before `report_rate` applies.
    pub report_burst: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            public_listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            internal_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            gateway_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8082))),
            public_url: None,
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
            long_poll_max: Duration::from_secs(60),
            push_max_skew: Duration::from_secs(300),
            key_cache_ttl: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            public_max_connections: None,
            internal_max_connections: None,
            trusted_proxies: Vec::new(),
            authorize_per_ip_per_minute: 20,
            authorize_total_per_minute: 300,
            report_rate: 10,
            report_burst: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    pub appid: String,
    pub appsecret: SecretString,
    pub token: SecretString,
    pub encoding_aes_key: SecretString,
    #[serde(default)]
    pub previous_encoding_aes_key: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub url: SecretString,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// PostgreSQL: how long a replica's refresh lease lasts without renewal (renewed every third
    /// of it while the refresh is in flight). A dead replica's refreshes are taken over after at
    /// most this long. Unused on SQLite.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: SecretString::from("sqlite://wxtoken.db"),
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(15),
        }
    }
}

impl StorageConfig {
    /// The backend named by the URL's scheme, for logs and errors (the URL itself may hold a password).
    pub fn backend(&self) -> &'static str {
        crate::store::Backend::from_url(self.url.expose_secret())
            .map_or("unsupported", crate::store::Backend::as_str)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// A file holding the master key (and, on further lines, older keys during a rotation).
    /// `WXTOKEN_MASTER_KEY` takes precedence; the key itself is never read from the TOML text, so a
    /// `master_key` key there is rejected. The vault reads both (`vault::Vault::from_env_or_file`).
    pub master_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshConfig {
    pub refresh_fraction: f64,
    pub jitter: f64,
    #[serde(with = "humantime_serde")]
    pub serve_margin: Duration,
    #[serde(with = "humantime_serde")]
    pub stable_token_lead: Duration,
    pub concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub ticket_silence_alert: Duration,
    /// Which API direct accounts (and authorizers' appsecret fallback) get their token from.
    pub direct_token_api: DirectTokenApi,
    /// An invalidation report forces an upstream refresh at most once per credential in this
    /// time, across every replica; a report inside it is answered with the current token. 30 s:
    /// WeChat's overlap keeps a replaced token valid for minutes, so a second forced refresh
    /// within seconds cannot help a client, while a buggy client reporting in a loop would burn
    /// the credential's daily quota (2,000 calls) in seconds.
    #[serde(with = "humantime_serde")]
    pub min_force_interval: Duration,
    /// A report of a token wxtoken obtained less than this long ago is checked with one cheap
    /// token-checked call (getcallbackip): if WeChat refuses it, something outside wxtoken
    /// refreshed the appid (alert `rogue_refresher`); if WeChat accepts it, the report was wrong
    /// and nothing is refreshed.
    #[serde(with = "humantime_serde")]
    pub rogue_window: Duration,
    /// A JS-SDK ticket (jsapi, wx_card) not read for this long is no longer refreshed; the next
    /// read fetches it again. Tickets are fetched on demand, so a platform whose JS-SDK pages use
    /// a few accounts spends getticket calls (a "very limited" quota) on those accounts only.
    #[serde(with = "humantime_serde")]
    pub ticket_idle: Duration,
    /// A ticket is served until this long before its expiry. Smaller than `serve_margin` by default: a
    /// ticket is consumed at once (wxtoken signs with it; the page's `wx.config` follows within
    /// seconds), and WeChat answers getticket with the same ticket until it expires, so the
    /// window in which no ticket can be served is this long.
    #[serde(with = "humantime_serde")]
    pub ticket_serve_margin: Duration,
}

/// `stable_token` (the default: independent of every other caller's tokens, 500,000 calls a day)
/// or `token` (`cgi-bin/token`: every call retires the previous token after 5 minutes, 2,000 calls
/// a day; for accounts where stable_token is not available).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectTokenApi {
    #[default]
    StableToken,
    Token,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            refresh_fraction: 0.5,
            jitter: 0.05,
            serve_margin: Duration::from_secs(60),
            stable_token_lead: Duration::from_secs(240),
            concurrency: 16,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            reconcile_interval: Duration::from_secs(6 * 3600),
            ticket_silence_alert: Duration::from_secs(20 * 60),
            direct_token_api: DirectTokenApi::StableToken,
            min_force_interval: Duration::from_secs(30),
            rogue_window: Duration::from_secs(120),
            ticket_idle: Duration::from_secs(24 * 3600),
            ticket_serve_margin: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub base_url: Url,
    /// Where the authorization (consent) pages are: `None` for WeChat's own
    /// (`mp.weixin.qq.com/cgi-bin/componentloginpage` and the mobile page); the simulator's base URL
    /// in tests and in `wxtoken demo`.
    pub authorize_url: Option<Url>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            // A literal that always parses: a documented startup invariant.
            base_url: Url::parse("https://api.weixin.qq.com").expect("static URL parses"),
            authorize_url: None,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

impl UpstreamConfig {
    /// The WeChat client this section describes, recording every call's latency and outcome
    /// (`telemetry::UPSTREAM_SECONDS`).
    pub fn client(&self) -> Result<wechat::client::WechatClient, wechat::client::WechatError> {
        let client = wechat::client::WechatClient::new(wechat::client::ClientConfig {
            base_url: self.base_url.clone(),
            timeout: self.timeout,
            connect_timeout: self.connect_timeout,
        })?;
        Ok(client.with_observer(std::sync::Arc::new(|call| {
            metrics::histogram!(
                crate::telemetry::UPSTREAM_SECONDS,
                "endpoint" => call.endpoint.name(),
                "outcome" => call.class.map_or("ok", |c| c.as_str()),
            )
            .record(call.elapsed.as_secs_f64());
        })))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    pub webhook_url: Option<Url>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    /// One info line per interval with the refreshes since the last one; zero turns it off.
    #[serde(with = "humantime_serde")]
    pub summary_interval: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
            summary_interval: Duration::from_secs(300),
        }
    }
}

/// Where the layers come from. `load` reads the process environment; tests pass their own.
#[derive(Debug, Default)]
pub struct Sources<'a> {
    pub file: Option<&'a Path>,
    pub env: Vec<(String, String)>,
    /// Command-line overrides as (dotted key, value), applied last.
    pub overrides: Vec<(String, Value)>,
}

impl Config {
    /// Loads from the optional file, the process environment and the given overrides.
    pub fn load(file: Option<&Path>, overrides: Vec<(String, Value)>) -> Result<Self, ConfigError> {
        Self::from_sources(Sources {
            file,
            env: std::env::vars().collect(),
            overrides,
        })
    }

    pub fn from_sources(sources: Sources<'_>) -> Result<Self, ConfigError> {
        let mut root = match sources.file {
            Some(path) => read_toml(path)?,
            None => Value::Table(Default::default()),
        };
        let mut from_env = BTreeSet::new();
        for (var, raw) in &sources.env {
            let Some(path) = env_key_path(var) else {
                continue;
            };
            let path = resolve_component_alias(&mut root, &path, var)?;
            set_path(&mut root, &path, scalar_from_env(raw)).map_err(|message| {
                ConfigError::Env {
                    var: var.clone(),
                    message,
                }
            })?;
            from_env.insert(path.join("."));
        }
        for (key, value) in sources.overrides {
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            set_path(&mut root, &path, value).map_err(|m| ConfigError::invalid(&key, m))?;
        }
        let config = deserialize_with_env_strings(root, &from_env)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot, naming the key of the first bad value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        // Port 0 asks the OS for a free port, so two such addresses are two listeners.
        if s.public_listen == s.internal_listen && s.public_listen.port() != 0 {
            return Err(ConfigError::invalid(
                "server.internal_listen",
                "must differ from server.public_listen: internal paths must never be reachable publicly",
            ));
        }
        if s.max_body_bytes < 1024 {
            return Err(ConfigError::invalid(
                "server.max_body_bytes",
                "must be at least 1024",
            ));
        }
        if s.long_poll_max.is_zero() {
            return Err(ConfigError::invalid(
                "server.long_poll_max",
                "must be more than 0s",
            ));
        }
        if s.header_read_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "server.header_read_timeout",
                "must be positive",
            ));
        }
        for (key, cap) in [
            ("server.public_max_connections", s.public_max_connections),
            (
                "server.internal_max_connections",
                s.internal_max_connections,
            ),
        ] {
            if cap == Some(0) {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        for (key, rate) in [
            (
                "server.authorize_per_ip_per_minute",
                s.authorize_per_ip_per_minute,
            ),
            (
                "server.authorize_total_per_minute",
                s.authorize_total_per_minute,
            ),
            ("server.report_rate", s.report_rate),
            ("server.report_burst", s.report_burst),
        ] {
            if rate == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if s.request_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "server.request_timeout",
                "must be positive",
            ));
        }
        if let Some(url) = &s.public_url
            && !matches!(url.scheme(), "http" | "https")
        {
            return Err(ConfigError::invalid(
                "server.public_url",
                "must be an http(s) URL",
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, c) in self.components.iter().enumerate() {
            let key = |field: &str| format!("components[{i}].{field}");
            // The one appid rule (model.rs), as the CLI and the HTTP API apply it.
            if let Err(e) = crate::model::ComponentAppid::parse(&c.appid) {
                return Err(ConfigError::invalid(key("appid"), e.reason));
            }
            if !seen.insert(c.appid.as_str()) {
                return Err(ConfigError::invalid(
                    key("appid"),
                    format!("{} is configured twice", c.appid),
                ));
            }
            if c.appsecret.expose_secret().is_empty() {
                return Err(ConfigError::invalid(key("appsecret"), "must not be empty"));
            }
            if c.token.expose_secret().is_empty() {
                return Err(ConfigError::invalid(key("token"), "must not be empty"));
            }
            check_aes_key(c.encoding_aes_key.expose_secret())
                .map_err(|m| ConfigError::invalid(key("encoding_aes_key"), m))?;
            if let Some(previous) = &c.previous_encoding_aes_key {
                check_aes_key(previous.expose_secret())
                    .map_err(|m| ConfigError::invalid(key("previous_encoding_aes_key"), m))?;
            }
        }
        let url = self.storage.url.expose_secret();
        if crate::store::Backend::from_url(url).is_none() {
            return Err(ConfigError::invalid(
                "storage.url",
                "must start with sqlite: or postgres:// (the URL itself is not shown: it may hold a password)",
            ));
        }
        if self.storage.max_connections == 0 {
            return Err(ConfigError::invalid(
                "storage.max_connections",
                "must be at least 1",
            ));
        }
        if self.storage.lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "storage.lease_ttl",
                "must be at least 1s",
            ));
        }
        let r = &self.refresh;
        if !(r.refresh_fraction > 0.0 && r.refresh_fraction < 1.0) {
            return Err(ConfigError::invalid(
                "refresh.refresh_fraction",
                "must be between 0 and 1 (exclusive)",
            ));
        }
        if !(0.0..0.5).contains(&r.jitter) || r.refresh_fraction + r.jitter >= 1.0 {
            return Err(ConfigError::invalid(
                "refresh.jitter",
                "must be in [0, 0.5) and keep refresh_fraction + jitter below 1",
            ));
        }
        if r.concurrency == 0 {
            return Err(ConfigError::invalid(
                "refresh.concurrency",
                "must be at least 1",
            ));
        }
        if r.min_force_interval < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "refresh.min_force_interval",
                "must be at least 1s: it is what keeps a reporting loop from burning the daily quota",
            ));
        }
        if r.ticket_idle < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "refresh.ticket_idle",
                "must be at least 1s",
            ));
        }
        if r.backoff_initial.is_zero() || r.backoff_initial > r.backoff_max {
            return Err(ConfigError::invalid(
                "refresh.backoff_initial",
                "must be positive and not above refresh.backoff_max",
            ));
        }
        if r.stable_token_lead >= Duration::from_secs(300) || r.stable_token_lead < r.serve_margin {
            return Err(ConfigError::invalid(
                "refresh.stable_token_lead",
                "must be under 5m (stable_token only rolls over in its last 5 minutes) and at least refresh.serve_margin",
            ));
        }
        if !matches!(self.upstream.base_url.scheme(), "http" | "https") {
            return Err(ConfigError::invalid(
                "upstream.base_url",
                "must be an http(s) URL",
            ));
        }
        if self.upstream.timeout.is_zero() {
            return Err(ConfigError::invalid("upstream.timeout", "must be positive"));
        }
        if let Some(url) = &self.alerts.webhook_url
            && !matches!(url.scheme(), "http" | "https")
        {
            return Err(ConfigError::invalid(
                "alerts.webhook_url",
                "must be an http(s) URL",
            ));
        }
        Ok(())
    }
}

/// An EncodingAESKey is exactly 43 characters of `A-Z a-z 0-9` (wechat-protocol.md §2).
fn check_aes_key(key: &str) -> Result<(), String> {
    if key.len() != 43 {
        return Err(format!(
            "must be exactly 43 characters, got {}",
            key.chars().count()
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("must contain only A-Z, a-z and 0-9".to_owned());
    }
    Ok(())
}

/// The 1-based line and column (in characters) of byte `offset` in `text` (a parser's span start,
/// always on a character boundary; anything else counts as the end).
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn read_toml(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let (line, column) = line_column(&text, e.span().map_or(0, |s| s.start));
        ConfigError::Syntax {
            path: path.to_owned(),
            line,
            column,
            message: e.message().trim_end().to_owned(),
        }
    })?;
    Ok(Value::Table(table))
}

/// `WXTOKEN_REFRESH__SERVE_MARGIN` → `["refresh", "serve_margin"]`. Variables without a `__` are
/// not configuration overrides (`WXTOKEN_MASTER_KEY`, the test switches) and are left alone.
fn env_key_path(var: &str) -> Option<Vec<String>> {
    let rest = var.strip_prefix(ENV_PREFIX)?;
    if !rest.contains(ENV_SEPARATOR) {
        return None;
    }
    Some(
        rest.split(ENV_SEPARATOR)
            .map(|p| p.to_ascii_lowercase())
            .collect(),
    )
}

/// `component.KEY` addresses the only configured component (SPEC.md's `WXTOKEN_COMPONENT__APPSECRET`);
/// with none configured yet it starts one, so a single component can be configured from the
/// environment alone.
fn resolve_component_alias(
    root: &mut Value,
    path: &[String],
    var: &str,
) -> Result<Vec<String>, ConfigError> {
    if path.first().map(String::as_str) != Some("component") {
        return Ok(path.to_vec());
    }
    let count = root
        .get("components")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if count > 1 {
        return Err(ConfigError::Env {
            var: var.to_owned(),
            message: format!(
                "{count} components are configured; use WXTOKEN_COMPONENTS__<index>__<KEY> to say which"
            ),
        });
    }
    let mut resolved = vec!["components".to_owned(), "0".to_owned()];
    resolved.extend_from_slice(&path[1..]);
    Ok(resolved)
}

/// Environment values are strings; numbers and booleans are recognised so `WXTOKEN_REFRESH__CONCURRENCY=8`
/// works. A key whose target is a string gets the raw text back (see `deserialize_with_env_strings`).
fn scalar_from_env(raw: &str) -> Value {
    if let Ok(i) = raw.parse::<i64>() {
        return Value::Integer(i);
    }
    if let Ok(f) = raw.parse::<f64>()
        && raw.contains('.')
    {
        return Value::Float(f);
    }
    match raw {
        "true" => Value::Boolean(true),
        "false" => Value::Boolean(false),
        _ => Value::String(raw.to_owned()),
    }
}

/// Sets `path` in the tree, creating tables (and array slots for numeric segments) on the way.
fn set_path(node: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Some((head, rest)) = path.split_first() else {
        *node = value;
        return Ok(());
    };
    if let Ok(index) = head.parse::<usize>() {
        let Value::Array(items) = node else {
            return Err(format!("`{head}` indexes something that is not a list"));
        };
        if index > items.len() {
            return Err(format!(
                "index {index} skips entries: the list has {}",
                items.len()
            ));
        }
        if index == items.len() {
            items.push(Value::Table(Default::default()));
        }
        return set_path(&mut items[index], rest, value);
    }
    let Value::Table(table) = node else {
        return Err(format!("`{head}` is below a value that is not a table"));
    };
    let next_is_index = rest.first().is_some_and(|s| s.parse::<usize>().is_ok());
    let child = table.entry(head.clone()).or_insert_with(|| {
        if next_is_index {
            Value::Array(Vec::new())
        } else {
            Value::Table(Default::default())
        }
    });
    set_path(child, rest, value)
}

/// Deserializes the merged tree. If a value that came from the environment was read as a number or
/// boolean but its key wants a string (a numeric-looking secret, say), it is turned back into its
/// text and deserialization is tried again.
fn deserialize_with_env_strings(
    mut root: Value,
    from_env: &BTreeSet<String>,
) -> Result<Config, ConfigError> {
    for _ in 0..=from_env.len() {
        match serde_path_to_error::deserialize::<_, Config>(root.clone()) {
            Ok(config) => return Ok(config),
            Err(err) => {
                let key = normalise_path(&err.path().to_string());
                if from_env.contains(&key) && stringify_at(&mut root, &key) {
                    continue;
                }
                return Err(ConfigError::invalid(
                    display_key(&key),
                    err.into_inner().message().to_owned(),
                ));
            }
        }
    }
    Err(ConfigError::invalid(
        "?",
        "could not reconcile environment overrides",
    ))
}

/// serde_path_to_error prints `components[0].token`; overrides are recorded as `components.0.token`.
fn normalise_path(path: &str) -> String {
    path.replace('[', ".").replace(']', "")
}

fn display_key(key: &str) -> String {
    let mut out = String::new();
    for part in key.split('.') {
        if part.parse::<usize>().is_ok() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

fn stringify_at(root: &mut Value, key: &str) -> bool {
    let mut node = root;
    for part in key.split('.') {
        let next = match node {
            Value::Table(t) => t.get_mut(part),
            Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return false,
        }
    }
    let text = match node {
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Boolean(b) => b.to_string(),
        _ => return false,
    };
    *node = Value::String(text);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn from_toml(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wxtoken.toml");
        std::fs::write(&path, text).expect("write");
        Config::from_sources(Sources {
            file: Some(&path),
            env: env(vars),
            overrides: vec![],
        })
    }

    fn invalid_key(err: ConfigError) -> String {
        match err {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("expected an invalid-key error, got {other}"),
        }
    }

    #[test]
    fn storage_lease_ttl_is_read_from_toml_and_env_and_a_too_short_one_is_refused_by_name() {
        let config = from_toml("[storage]\nlease_ttl = \"4s\"\n", &[]).expect("valid");
        assert_eq!(config.storage.lease_ttl, Duration::from_secs(4));
        let config =
            from_toml("", &[("WXTOKEN_STORAGE__LEASE_TTL", "20s")]).expect("valid from env");
        assert_eq!(config.storage.lease_ttl, Duration::from_secs(20));
        let err = from_toml("[storage]\nlease_ttl = \"500ms\"\n", &[]).unwrap_err();
        assert_eq!(invalid_key(err), "storage.lease_ttl");
        assert!(from_toml("[storage]\nlease_tll = \"4s\"\n", &[]).is_err());
    }

    #[test]
    fn example_config_parses_and_validates() {
        let config = from_toml(EXAMPLE, &[]).expect("the printed example must load");
        assert_eq!(config.components.len(), 1);
        assert_eq!(config.refresh.refresh_fraction, 0.5);
        assert_eq!(config.refresh.serve_margin, Duration::from_secs(60));
        assert_eq!(config.storage.backend(), "sqlite");
    }

    #[test]
    fn defaults_apply_without_a_file() {
        let config = Config::from_sources(Sources::default()).expect("defaults are valid");
        assert_eq!(config.server.internal_listen.to_string(), "127.0.0.1:8081");
        assert_eq!(config.refresh.concurrency, 16);
        assert!(config.components.is_empty());
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let err = from_toml("[refresh]\nrefresh_fracton = 0.4\n", &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("refresh_fracton"), "{text}");
    }

    #[test]
    fn unknown_section_is_rejected() {
        let err = from_toml("[refersh]\nconcurrency = 4\n", &[]).unwrap_err();
        assert!(err.to_string().contains("refersh"), "{err}");
    }

    #[test]
    fn bad_value_names_its_key() {
        let err = from_toml("[refresh]\nserve_margin = \"soon\"\n", &[]).unwrap_err();
        assert_eq!(invalid_key(err), "refresh.serve_margin");
        let err = from_toml("[refresh]\nrefresh_fraction = 1.5\n", &[]).unwrap_err();
        assert_eq!(invalid_key(err), "refresh.refresh_fraction");
    }

    #[test]
    fn env_overrides_file_and_file_overrides_defaults() {
        let config = from_toml(
            "[refresh]\nconcurrency = 4\nserve_margin = \"90s\"\n",
            &[("WXTOKEN_REFRESH__CONCURRENCY", "8")],
        )
        .expect("loads");
        assert_eq!(config.refresh.concurrency, 8);
        assert_eq!(config.refresh.serve_margin, Duration::from_secs(90));
        assert_eq!(config.refresh.backoff_max, Duration::from_secs(300));
    }

    #[test]
    fn overrides_beat_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "").expect("write");
        let config = Config::from_sources(Sources {
            file: Some(&path),
            env: env(&[("WXTOKEN_SERVER__INTERNAL_LISTEN", "127.0.0.1:9000")]),
            overrides: vec![(
                "server.internal_listen".into(),
                Value::String("127.0.0.1:9001".into()),
            )],
        })
        .expect("loads");
        assert_eq!(config.server.internal_listen.to_string(), "127.0.0.1:9001");
    }

    #[test]
    fn env_override_with_unknown_key_is_rejected() {
        let err = from_toml("", &[("WXTOKEN_REFRESH__NOT_A_KEY", "1")]).unwrap_err();
        assert!(err.to_string().contains("not_a_key"), "{err}");
    }

    #[test]
    fn env_vars_without_separator_are_not_config() {
        let config = from_toml(
            "",
            &[
                ("WXTOKEN_TEST_PG_URL", "postgres://x"),
                ("WXTOKEN_MASTER_KEY", "k"),
            ],
        )
        .expect("loads");
        assert!(config.security.master_key_file.is_none());
    }

    #[test]
    fn numeric_looking_secret_from_env_stays_a_string() {
        let config =
            from_toml(EXAMPLE, &[("WXTOKEN_COMPONENTS__0__TOKEN", "123456")]).expect("loads");
        assert_eq!(config.components[0].token.expose_secret(), "123456");
    }

    #[test]
    fn single_component_alias_configures_from_env_alone() {
        let config = from_toml(
            "",
            &[
                ("WXTOKEN_COMPONENT__APPID", "wxcomponent000001"),
                ("WXTOKEN_COMPONENT__APPSECRET", "s3cret"),
                ("WXTOKEN_COMPONENT__TOKEN", "tok"),
                (
                    "WXTOKEN_COMPONENT__ENCODING_AES_KEY",
                    "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
                ),
            ],
        )
        .expect("loads");
        assert_eq!(config.components.len(), 1);
        assert_eq!(config.components[0].appid, "wxcomponent000001");
    }

    #[test]
    fn component_alias_is_ambiguous_with_two_components() {
        let two = format!(
            "{EXAMPLE}\n[[components]]\nappid = \"wx2\"\nappsecret = \"a\"\ntoken = \"b\"\nencoding_aes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\"\n"
        );
        let err = from_toml(&two, &[("WXTOKEN_COMPONENT__APPSECRET", "x")]).unwrap_err();
        assert!(matches!(err, ConfigError::Env { .. }), "{err}");
    }

    #[test]
    fn bad_aes_key_is_named_by_component_index() {
        let text = EXAMPLE.replace(
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEF!",
        );
        let err = from_toml(&text, &[]).unwrap_err();
        assert_eq!(invalid_key(err), "components[0].encoding_aes_key");
    }

    #[test]
    fn a_component_appid_follows_the_one_appid_rule_of_the_cli_and_the_api() {
        let with = |appid: &str| {
            format!(
                "{EXAMPLE}\n[[components]]\nappid = \"{appid}\"\nappsecret = \"a\"\ntoken = \"b\"\nencoding_aes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\"\n"
            )
        };
        for good in ["wx-component_0001", "wx2"] {
            from_toml(&with(good), &[]).unwrap_or_else(|e| panic!("{good}: {e}"));
            crate::model::ComponentAppid::parse(good).expect("the model agrees");
        }
        for bad in ["", "wx component", "wx/component", &"w".repeat(65)] {
            let err = from_toml(&with(bad), &[]).unwrap_err();
            assert_eq!(invalid_key(err), "components[1].appid", "{bad:?}");
            assert!(
                crate::model::ComponentAppid::parse(bad).is_err(),
                "the model agrees"
            );
        }
    }

    #[test]
    fn a_storage_url_names_its_backend_in_one_place() {
        use crate::store::Backend;
        for (url, backend) in [
            ("sqlite://wxtoken.db", Some(Backend::Sqlite)),
            ("sqlite::memory:", Some(Backend::Sqlite)),
            ("postgres://u@h/db", Some(Backend::Postgres)),
            ("postgresql://u@h/db", Some(Backend::Postgres)),
            ("mysql://u@h/db", None),
        ] {
            assert_eq!(Backend::from_url(url), backend, "{url}");
        }
        let err = from_toml("[storage]\nurl = \"mysql://u:pw@h/db\"\n", &[]).unwrap_err();
        assert_eq!(invalid_key(err), "storage.url");
    }

    #[test]
    fn duplicate_component_is_rejected() {
        let text = format!(
            "{EXAMPLE}\n[[components]]\nappid = \"wx0000000000000000\"\nappsecret = \"a\"\ntoken = \"b\"\nencoding_aes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\"\n"
        );
        let err = from_toml(&text, &[]).unwrap_err();
        assert_eq!(invalid_key(err), "components[1].appid");
    }

    #[test]
    fn master_key_in_toml_is_rejected() {
        let err = from_toml("[security]\nmaster_key = \"abc\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("master_key"), "{err}");
    }

    #[test]
    fn same_listen_address_for_both_listeners_is_rejected() {
        let err = from_toml(
            "[server]\npublic_listen = \"127.0.0.1:8081\"\ninternal_listen = \"127.0.0.1:8081\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(invalid_key(err), "server.internal_listen");
    }

    #[test]
    fn storage_url_never_appears_in_errors_or_debug() {
        let err = from_toml("[storage]\nurl = \"mysql://user:hunter2@db/x\"\n", &[]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        let config =
            from_toml("[storage]\nurl = \"postgres://user:hunter2@db/x\"\n", &[]).expect("loads");
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(config.storage.backend(), "postgres");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let config = from_toml(EXAMPLE, &[]).expect("loads");
        let debug = format!("{config:?}");
        assert!(!debug.contains("replace-with-the-component-appsecret"));
        assert!(!debug.contains("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"));
    }

    #[test]
    fn upstream_section_builds_a_client_for_its_base_url() {
        let config = from_toml(
            "[upstream]\nbase_url = \"http://127.0.0.1:9\"\ntimeout = \"2s\"\n",
            &[],
        )
        .expect("loads");
        let client = config.upstream.client().expect("client builds");
        assert_eq!(client.base_url().as_str(), "http://127.0.0.1:9/");
    }

    #[test]
    fn direct_token_api_accepts_token_and_rejects_other_values() {
        let config = from_toml("[refresh]\ndirect_token_api = \"token\"\n", &[]).expect("loads");
        assert_eq!(config.refresh.direct_token_api, DirectTokenApi::Token);
        let err = from_toml("[refresh]\ndirect_token_api = \"sometimes\"\n", &[]).unwrap_err();
        assert_eq!(invalid_key(err), "refresh.direct_token_api");
    }

    #[test]
    fn toml_syntax_error_names_the_file() {
        let err = from_toml("[refresh\n", &[]).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { line: 1, .. }), "{err}");
    }
}
