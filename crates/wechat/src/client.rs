//! [`WechatClient`]: an async HTTP client (reqwest, rustls) for every endpoint in
//! [`crate::wire::Endpoint`], pointed at WeChat or at the simulator through
//! [`ClientConfig::base_url`].
//!
//! Depends on `wire` and `errcode`. Invariants:
//! - No token or secret ever reaches an error message or a log line. reqwest errors print the
//!   request URL, which carries `access_token=`/`secret=`: they are stripped with
//!   [`reqwest::Error::without_url`] and kept only as text; every text that ends up in a
//!   [`WechatError`] (transport message, errmsg, malformed detail) is also scrubbed of the exact
//!   secrets the call sent. Tracing spans carry the endpoint name only.
//! - Redirects are not followed (WeChat's API never redirects; following one would resend the
//!   token in the query to another URL): a 3xx is [`WechatError::HttpStatus`].
//! - Response bodies are capped at [`MAX_RESPONSE_BYTES`].
//! - No retries here: one method call is one HTTP request. Retrying by [`ErrorClass`] is the
//!   caller's policy.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;
use url::Url;

use crate::errcode::{ErrorClass, classify};
use crate::wire::{
    AccessTokenResponse, AuthorizerInfoRequest, AuthorizerInfoResponse, AuthorizerListRequest,
    AuthorizerListResponse, AuthorizerTokenRequest, AuthorizerTokenResponse, CallbackIpResponse,
    ClearQuotaRequest, ClearQuotaV2Request, ComponentClearQuotaRequest,
    ComponentClearQuotaV2Request, ComponentTokenRequest, ComponentTokenResponse, Endpoint,
    ErrcodeResponse, HttpMethod, PreAuthCodeRequest, PreAuthCodeResponse, QueryAuthRequest,
    QueryAuthResponse, QuotaGetRequest, QuotaResponse, ResponseError, StableTokenRequest,
    StartPushTicketRequest, TicketKind, TicketResponse, parse_response,
};

/// WeChat's API host, the default [`ClientConfig::base_url`].
pub const DEFAULT_BASE_URL: &str = "https://api.weixin.qq.com";

/// Largest response body accepted; WeChat's largest (a 500-entry authorizer list) is ~100 KiB.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Where and how patiently to call WeChat.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `https://api.weixin.qq.com` or the simulator's URL. A path prefix is kept
    /// (`http://sim/wx/` → `http://sim/wx/cgi-bin/token`); a query or fragment is ignored.
    pub base_url: Url,
    /// Whole-request deadline, connect + send + body.
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl ClientConfig {
    /// Default timeouts with another base URL (the simulator's).
    pub fn with_base_url(base_url: Url) -> Self {
        ClientConfig {
            base_url,
            ..ClientConfig::default()
        }
    }
}

impl Default for ClientConfig {
    /// `https://api.weixin.qq.com`, 10 s request timeout, 3 s connect timeout.
    fn default() -> Self {
        ClientConfig {
            // Invariant: a constant, valid URL (covered by a test).
            base_url: Url::parse(DEFAULT_BASE_URL).expect("DEFAULT_BASE_URL is a valid URL"),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

/// Why a call failed. The text of every variant is free of tokens and secrets.
#[derive(Debug, thiserror::Error)]
pub enum WechatError {
    /// Connection refused/reset, DNS, TLS, or the body stream broke.
    #[error("{endpoint}: network error: {message}")]
    Network { endpoint: Endpoint, message: String },
    /// [`ClientConfig::timeout`] or [`ClientConfig::connect_timeout`] elapsed.
    #[error("{endpoint}: timed out")]
    Timeout { endpoint: Endpoint },
    /// A non-2xx status. WeChat reports its errors with HTTP 200 + errcode, so this is a proxy,
    /// an outage, or a wrong base URL.
    #[error("{endpoint}: HTTP status {status}")]
    HttpStatus { endpoint: Endpoint, status: u16 },
    /// `errcode != 0`, classified for this endpoint by [`classify`].
    #[error("{endpoint}: errcode {errcode} ({class}): {errmsg}")]
    Api {
        endpoint: Endpoint,
        errcode: i64,
        errmsg: String,
        class: ErrorClass,
    },
    /// The body was not the JSON the endpoint promises (or exceeded [`MAX_RESPONSE_BYTES`]).
    #[error("{endpoint}: malformed response: {detail}")]
    Malformed { endpoint: Endpoint, detail: String },
    /// The client could not be built from its [`ClientConfig`].
    #[error("invalid WeChat client configuration: {0}")]
    Config(String),
}

impl WechatError {
    /// The reaction this failure calls for:
    /// - network errors, timeouts, malformed bodies, HTTP 5xx, 408 and 429: `Transient`;
    /// - other HTTP statuses (4xx, an unfollowed 3xx): `Configuration` — WeChat never answers an
    ///   API error with a 4xx, so one means a wrong base URL or a proxy in the way, which retrying
    ///   does not fix;
    /// - errcodes: their [`classify`] class; `Config`: `Configuration`.
    pub fn class(&self) -> ErrorClass {
        match self {
            WechatError::Network { .. }
            | WechatError::Timeout { .. }
            | WechatError::Malformed { .. } => ErrorClass::Transient,
            WechatError::HttpStatus { status, .. } => match *status {
                408 | 429 => ErrorClass::Transient,
                300..=499 => ErrorClass::Configuration,
                _ => ErrorClass::Transient,
            },
            WechatError::Api { class, .. } => *class,
            WechatError::Config(_) => ErrorClass::Configuration,
        }
    }

    /// The WeChat errcode, for [`WechatError::Api`].
    pub fn errcode(&self) -> Option<i64> {
        match self {
            WechatError::Api { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    /// The endpoint that failed (`None` for [`WechatError::Config`]).
    pub fn endpoint(&self) -> Option<Endpoint> {
        match self {
            WechatError::Network { endpoint, .. }
            | WechatError::Timeout { endpoint }
            | WechatError::HttpStatus { endpoint, .. }
            | WechatError::Api { endpoint, .. }
            | WechatError::Malformed { endpoint, .. } => Some(*endpoint),
            WechatError::Config(_) => None,
        }
    }
}

/// Async client for WeChat's token APIs. Cheap to clone (one `Arc`); share one per base URL.
#[derive(Clone)]
pub struct WechatClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: Url,
    observer: Option<Observer>,
}

/// What the client reports after every call (for metrics): which endpoint, how long it took, and
/// its error class (`None`: success). Carries nothing secret.
#[derive(Debug, Clone, Copy)]
pub struct CallRecord {
    pub endpoint: Endpoint,
    pub elapsed: std::time::Duration,
    pub class: Option<ErrorClass>,
}

/// A callback run after every call; it must be cheap (it runs on the caller's task).
pub type Observer = Arc<dyn Fn(&CallRecord) + Send + Sync>;

impl fmt::Debug for WechatClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WechatClient")
            .field("base_url", &self.inner.base_url.as_str())
            .finish()
    }
}

impl WechatClient {
    /// Builds the HTTP client. Fails if the base URL is not `http(s)://host[/prefix]` or the TLS
    /// backend cannot start.
    pub fn new(config: ClientConfig) -> Result<Self, WechatError> {
        let mut base_url = config.base_url;
        if !matches!(base_url.scheme(), "http" | "https")
            || base_url.cannot_be_a_base()
            || base_url.host().is_none()
        {
            return Err(WechatError::Config(
                "base_url must be an http(s) URL with a host".to_owned(),
            ));
        }
        base_url.set_query(None);
        base_url.set_fragment(None);
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("wxtoken-wechat/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                WechatError::Config(format!(
                    "cannot build HTTP client: {}",
                    error_chain(&e.without_url())
                ))
            })?;
        Ok(WechatClient {
            inner: Arc::new(Inner {
                http,
                base_url,
                observer: None,
            }),
        })
    }

    /// The same client, reporting every call to `observer` (this crate records no metrics itself).
    pub fn with_observer(self, observer: Observer) -> Self {
        WechatClient {
            inner: Arc::new(Inner {
                http: self.inner.http.clone(),
                base_url: self.inner.base_url.clone(),
                observer: Some(observer),
            }),
        }
    }

    pub fn base_url(&self) -> &Url {
        &self.inner.base_url
    }

    /// The full URL of `endpoint` with `query` appended (form-encoded).
    fn url(&self, endpoint: Endpoint, query: &[(&str, &str)]) -> Url {
        let mut url = self.inner.base_url.clone();
        let path = format!("{}{}", url.path().trim_end_matches('/'), endpoint.path());
        url.set_path(&path);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// One request: `query` in the URL, `body` as JSON for POST. `secrets` are the sensitive values
    /// this call sends; they are scrubbed from any error text.
    async fn call<T, B>(
        &self,
        endpoint: Endpoint,
        query: &[(&str, &str)],
        body: Option<&B>,
        secrets: &[&str],
    ) -> Result<T, WechatError>
    where
        T: DeserializeOwned,
        B: Serialize + ?Sized,
    {
        let url = self.url(endpoint, query);
        let mut request = match endpoint.method() {
            HttpMethod::Get => self.inner.http.get(url),
            HttpMethod::Post => self.inner.http.post(url),
        };
        if let Some(body) = body {
            request = request.json(body);
        }
        let span = tracing::debug_span!("wechat_call", endpoint = endpoint.name());
        let started = std::time::Instant::now();
        let result = async move {
            let response = request
                .send()
                .await
                .map_err(|e| transport_error(endpoint, e, secrets))?;
            let status = response.status();
            if !status.is_success() {
                tracing::debug!(status = status.as_u16(), "WeChat answered a non-2xx status");
                return Err(WechatError::HttpStatus {
                    endpoint,
                    status: status.as_u16(),
                });
            }
            let bytes = read_body(endpoint, response, secrets).await?;
            match parse_response::<T>(endpoint, &bytes) {
                Ok(value) => {
                    tracing::debug!("WeChat call succeeded");
                    Ok(value)
                }
                Err(ResponseError::Api(api)) => {
                    let class = classify(api.errcode, endpoint);
                    tracing::debug!(
                        errcode = api.errcode,
                        class = class.as_str(),
                        "WeChat returned an errcode"
                    );
                    Err(WechatError::Api {
                        endpoint,
                        errcode: api.errcode,
                        errmsg: scrub(&api.errmsg, secrets),
                        class,
                    })
                }
                Err(ResponseError::Malformed(detail)) => Err(WechatError::Malformed {
                    endpoint,
                    detail: scrub(&detail, secrets),
                }),
            }
        }
        .instrument(span)
        .await;
        if let Some(observe) = &self.inner.observer {
            observe(&CallRecord {
                endpoint,
                elapsed: started.elapsed(),
                class: result.as_ref().err().map(WechatError::class),
            });
        }
        result
    }

    async fn get<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        query: &[(&str, &str)],
        secrets: &[&str],
    ) -> Result<T, WechatError> {
        self.call::<T, ()>(endpoint, query, None, secrets).await
    }

    async fn post<T: DeserializeOwned, B: Serialize>(
        &self,
        endpoint: Endpoint,
        query: &[(&str, &str)],
        body: &B,
        secrets: &[&str],
    ) -> Result<T, WechatError> {
        self.call(endpoint, query, Some(body), secrets).await
    }

    /// 3.1 api_start_push_ticket: (re)start verify-ticket pushes. `errmsg` is `ok` or
    /// `in a normal state`.
    pub async fn start_push_ticket(
        &self,
        component_appid: &str,
        component_secret: &str,
    ) -> Result<ErrcodeResponse, WechatError> {
        let body = StartPushTicketRequest {
            component_appid: component_appid.to_owned(),
            component_secret: component_secret.to_owned(),
        };
        self.post(Endpoint::StartPushTicket, &[], &body, &[component_secret])
            .await
    }

    /// 3.2 api_component_token.
    pub async fn component_token(
        &self,
        component_appid: &str,
        component_appsecret: &str,
        ticket: &str,
    ) -> Result<ComponentTokenResponse, WechatError> {
        let body = ComponentTokenRequest {
            component_appid: component_appid.to_owned(),
            component_appsecret: component_appsecret.to_owned(),
            component_verify_ticket: ticket.to_owned(),
        };
        self.post(
            Endpoint::ComponentToken,
            &[],
            &body,
            &[component_appsecret, ticket],
        )
        .await
    }

    /// 3.3 api_create_preauthcode.
    pub async fn create_preauthcode(
        &self,
        component_access_token: &str,
        component_appid: &str,
    ) -> Result<PreAuthCodeResponse, WechatError> {
        let body = PreAuthCodeRequest {
            component_appid: component_appid.to_owned(),
        };
        self.post(
            Endpoint::CreatePreauthcode,
            &[("component_access_token", component_access_token)],
            &body,
            &[component_access_token],
        )
        .await
    }

    /// 4 api_query_auth: exchange an authorization code (`queryauthcode@@@...`).
    pub async fn query_auth(
        &self,
        component_access_token: &str,
        component_appid: &str,
        authorization_code: &str,
    ) -> Result<QueryAuthResponse, WechatError> {
        let body = QueryAuthRequest {
            component_appid: component_appid.to_owned(),
            authorization_code: authorization_code.to_owned(),
        };
        self.post(
            Endpoint::QueryAuth,
            &[("component_access_token", component_access_token)],
            &body,
            &[component_access_token, authorization_code],
        )
        .await
    }

    /// 5.1 api_authorizer_token.
    pub async fn authorizer_token(
        &self,
        component_access_token: &str,
        component_appid: &str,
        authorizer_appid: &str,
        refresh_token: &str,
    ) -> Result<AuthorizerTokenResponse, WechatError> {
        let body = AuthorizerTokenRequest {
            component_appid: component_appid.to_owned(),
            authorizer_appid: authorizer_appid.to_owned(),
            authorizer_refresh_token: refresh_token.to_owned(),
        };
        self.post(
            Endpoint::AuthorizerToken,
            &[("component_access_token", component_access_token)],
            &body,
            &[component_access_token, refresh_token],
        )
        .await
    }

    /// 5.2 api_get_authorizer_list. `count` is sent as given; WeChat accepts at most
    /// [`crate::wire::AUTHORIZER_LIST_MAX_COUNT`].
    pub async fn get_authorizer_list(
        &self,
        component_access_token: &str,
        component_appid: &str,
        offset: u32,
        count: u32,
    ) -> Result<AuthorizerListResponse, WechatError> {
        let body = AuthorizerListRequest {
            component_appid: component_appid.to_owned(),
            offset,
            count,
        };
        self.post(
            Endpoint::GetAuthorizerList,
            &[("component_access_token", component_access_token)],
            &body,
            &[component_access_token],
        )
        .await
    }

    /// 5.3 api_get_authorizer_info.
    pub async fn get_authorizer_info(
        &self,
        component_access_token: &str,
        component_appid: &str,
        authorizer_appid: &str,
    ) -> Result<AuthorizerInfoResponse, WechatError> {
        let body = AuthorizerInfoRequest {
            component_appid: component_appid.to_owned(),
            authorizer_appid: authorizer_appid.to_owned(),
        };
        self.post(
            Endpoint::GetAuthorizerInfo,
            &[("component_access_token", component_access_token)],
            &body,
            &[component_access_token],
        )
        .await
    }

    /// 6.1 `GET cgi-bin/token?grant_type=client_credential&appid=&secret=`. The secret travels in
    /// the query string, as WeChat requires; it never appears in an error.
    pub async fn token(
        &self,
        appid: &str,
        secret: &str,
    ) -> Result<AccessTokenResponse, WechatError> {
        self.get(
            Endpoint::Token,
            &[
                ("grant_type", crate::wire::GRANT_TYPE_CLIENT_CREDENTIAL),
                ("appid", appid),
                ("secret", secret),
            ],
            &[secret],
        )
        .await
    }

    /// 6.2 `POST cgi-bin/stable_token`. `force_refresh` is always sent explicitly.
    pub async fn stable_token(
        &self,
        appid: &str,
        secret: &str,
        force_refresh: bool,
    ) -> Result<AccessTokenResponse, WechatError> {
        let body = StableTokenRequest::new(appid, secret, force_refresh);
        self.post(Endpoint::StableToken, &[], &body, &[secret])
            .await
    }

    /// 6.4 `GET cgi-bin/ticket/getticket?access_token=&type=jsapi|wx_card`.
    pub async fn get_ticket(
        &self,
        access_token: &str,
        kind: TicketKind,
    ) -> Result<TicketResponse, WechatError> {
        self.get(
            Endpoint::GetTicket,
            &[("access_token", access_token), ("type", kind.as_str())],
            &[access_token],
        )
        .await
    }

    /// 6.3 `cgi-bin/clear_quota?access_token=` with `{"appid"}`; the token must belong to `appid`
    /// (its own, its authorizer token, or the component token for the component appid).
    pub async fn clear_quota(
        &self,
        access_token: &str,
        appid: &str,
    ) -> Result<ErrcodeResponse, WechatError> {
        let body = ClearQuotaRequest {
            appid: appid.to_owned(),
        };
        self.post(
            Endpoint::ClearQuota,
            &[("access_token", access_token)],
            &body,
            &[access_token],
        )
        .await
    }

    /// 6.3 `cgi-bin/clear_quota/v2`. Pages disagree on where `appid`/`appsecret` go (section 11);
    /// they are sent in both the query string and the JSON body, so either reading works.
    pub async fn clear_quota_v2(
        &self,
        appid: &str,
        appsecret: &str,
    ) -> Result<ErrcodeResponse, WechatError> {
        let body = ClearQuotaV2Request {
            appid: appid.to_owned(),
            appsecret: appsecret.to_owned(),
        };
        self.post(
            Endpoint::ClearQuotaV2,
            &[("appid", appid), ("appsecret", appsecret)],
            &body,
            &[appsecret],
        )
        .await
    }

    /// 6.3 `cgi-bin/component/clear_quota/v2`: `appsecret` is the component secret; `appid` names
    /// an authorized account to reset on its behalf (omitted: the platform's own counters).
    pub async fn component_clear_quota_v2(
        &self,
        component_appid: &str,
        appsecret: &str,
        appid: Option<&str>,
    ) -> Result<ErrcodeResponse, WechatError> {
        let body = ComponentClearQuotaV2Request {
            component_appid: component_appid.to_owned(),
            appsecret: appsecret.to_owned(),
            appid: appid.map(str::to_owned),
        };
        self.post(Endpoint::ComponentClearQuotaV2, &[], &body, &[appsecret])
            .await
    }

    /// 6.3 legacy `cgi-bin/component/clear_quota?component_access_token=`.
    pub async fn component_clear_quota(
        &self,
        component_access_token: &str,
        component_appid: &str,
    ) -> Result<ErrcodeResponse, WechatError> {
        let body = ComponentClearQuotaRequest {
            component_appid: component_appid.to_owned(),
        };
        self.post(
            Endpoint::ComponentClearQuota,
            &[("component_access_token", component_access_token)],
            &body,
            &[component_access_token],
        )
        .await
    }

    /// 6.3 `cgi-bin/openapi/quota/get?access_token=` for one `cgi_path`
    /// (e.g. `/cgi-bin/component/api_component_token`).
    pub async fn quota_get(
        &self,
        access_token: &str,
        cgi_path: &str,
    ) -> Result<QuotaResponse, WechatError> {
        let body = QuotaGetRequest {
            cgi_path: cgi_path.to_owned(),
        };
        self.post(
            Endpoint::QuotaGet,
            &[("access_token", access_token)],
            &body,
            &[access_token],
        )
        .await
    }

    /// `GET cgi-bin/getcallbackip?access_token=`: the cheapest token-checked call, useful to probe
    /// whether a token is accepted.
    pub async fn get_callback_ip(
        &self,
        access_token: &str,
    ) -> Result<CallbackIpResponse, WechatError> {
        self.get(
            Endpoint::GetCallbackIp,
            &[("access_token", access_token)],
            &[access_token],
        )
        .await
    }
}

/// Maps a reqwest failure without its URL; the remaining text is scrubbed anyway.
fn transport_error(endpoint: Endpoint, error: reqwest::Error, secrets: &[&str]) -> WechatError {
    let error = error.without_url();
    if error.is_timeout() {
        tracing::debug!("WeChat call timed out");
        return WechatError::Timeout { endpoint };
    }
    let message = scrub(&error_chain(&error), secrets);
    tracing::debug!(error = %message, "WeChat call failed");
    WechatError::Network { endpoint, message }
}

/// `error: source: source ...`, skipping a source whose text its parent already shows.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

async fn read_body(
    endpoint: Endpoint,
    mut response: reqwest::Response,
    secrets: &[&str],
) -> Result<Vec<u8>, WechatError> {
    let too_large = || WechatError::Malformed {
        endpoint,
        detail: format!("response body larger than {MAX_RESPONSE_BYTES} bytes"),
    };
    if response
        .content_length()
        .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(endpoint, e, secrets))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Replaces every occurrence of each secret (raw and form-urlencoded) by `***`.
fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if text.contains(secret) {
            text = text.replace(secret, "***");
        }
        let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        if encoded != *secret && text.contains(&encoded) {
            text = text.replace(&encoded, "***");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_points_at_wechat_with_documented_timeouts() {
        let config = ClientConfig::default();
        assert_eq!(config.base_url.as_str(), "https://api.weixin.qq.com/");
        assert_eq!(config.timeout, Duration::from_secs(10));
        assert_eq!(config.connect_timeout, Duration::from_secs(3));
    }

    #[test]
    fn urls_keep_a_base_path_prefix_and_drop_base_query() {
        let base = Url::parse("http://127.0.0.1:9/wx/?x=1#f").unwrap();
        let client = WechatClient::new(ClientConfig::with_base_url(base)).unwrap();
        let url = client.url(Endpoint::Token, &[("appid", "wx1"), ("secret", "a b+c")]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9/wx/cgi-bin/token?appid=wx1&secret=a+b%2Bc"
        );
        let plain = WechatClient::new(ClientConfig::default()).unwrap();
        assert_eq!(
            plain.url(Endpoint::ComponentToken, &[]).as_str(),
            "https://api.weixin.qq.com/cgi-bin/component/api_component_token"
        );
    }

    #[test]
    fn non_http_base_urls_are_rejected() {
        for bad in ["ftp://example.com/", "mailto:a@b.c", "file:///tmp/x"] {
            let err = WechatClient::new(ClientConfig::with_base_url(Url::parse(bad).unwrap()))
                .unwrap_err();
            assert!(matches!(err, WechatError::Config(_)), "{bad}");
            assert_eq!(err.class(), ErrorClass::Configuration);
        }
    }

    #[test]
    fn scrub_removes_raw_and_encoded_secrets() {
        assert_eq!(
            scrub("bad a+b/c and a%2Bb%2Fc", &["a+b/c"]),
            "bad *** and ***"
        );
        assert_eq!(scrub("nothing", &["", "x1"]), "nothing");
    }

    #[test]
    fn http_status_classes() {
        let class = |status| {
            WechatError::HttpStatus {
                endpoint: Endpoint::Token,
                status,
            }
            .class()
        };
        assert_eq!(class(500), ErrorClass::Transient);
        assert_eq!(class(503), ErrorClass::Transient);
        assert_eq!(class(429), ErrorClass::Transient);
        assert_eq!(class(408), ErrorClass::Transient);
        assert_eq!(class(404), ErrorClass::Configuration);
        assert_eq!(class(403), ErrorClass::Configuration);
        assert_eq!(class(302), ErrorClass::Configuration);
    }
}
