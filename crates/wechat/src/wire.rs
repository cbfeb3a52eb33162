//! The JSON wire format of every WeChat endpoint wxtoken calls or the simulator serves
//! (wechat-protocol.md sections 0 and 3–6): the [`Endpoint`] catalogue, typed request and response
//! bodies, and [`parse_response`], which applies section 0's error convention.
//!
//! Pure data: depends on serde and serde_json only, does no I/O. Invariants:
//! - Field names are exactly WeChat's (`component_secret` for api_start_push_ticket,
//!   `component_appsecret` for api_component_token, `MiniProgramInfo`, ...). This is the only module
//!   where they appear.
//! - Deserialization is tolerant: unknown fields are ignored everywhere (no `deny_unknown_fields`),
//!   optional fields really are `Option` or defaulted.
//! - Every type that holds a secret (appsecret, component secret, ticket, access or refresh token,
//!   pre-auth or authorization code) has a hand-written `Debug` that prints `<redacted N bytes>`
//!   instead of the value, so `{:?}` in a log line can never leak it.
//! - [`parse_response`] never echoes the body: its error detail names fields, never values.

use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Endpoints
// ---------------------------------------------------------------------------------------------

/// HTTP method of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HttpMethod {
    Get,
    Post,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
        }
    }
}

/// What authenticates a call to an endpoint, i.e. which credential an errcode about "the token" or
/// "the secret" refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointAuth {
    /// No token in the URL: appid + secret (and, for api_component_token, the verify ticket) in the
    /// query or body. 40001 here means a wrong secret.
    Secret,
    /// `?component_access_token=` in the query: 40001/42001/40014 refer to the component token.
    ComponentAccessToken,
    /// `?access_token=` in the query: an authorizer's, a direct account's or (for clear_quota and
    /// quota/get on the platform's own APIs) the component's token.
    AccessToken,
}

/// Every WeChat endpoint in wechat-protocol.md sections 3–6, plus `cgi-bin/getcallbackip`, the
/// token-checked business API the simulator serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// 3.1 `POST /cgi-bin/component/api_start_push_ticket`
    StartPushTicket,
    /// 3.2 `POST /cgi-bin/component/api_component_token`
    ComponentToken,
    /// 3.3 `POST /cgi-bin/component/api_create_preauthcode?component_access_token=`
    CreatePreauthcode,
    /// 4 `POST /cgi-bin/component/api_query_auth?component_access_token=`
    QueryAuth,
    /// 5.1 `POST /cgi-bin/component/api_authorizer_token?component_access_token=`
    AuthorizerToken,
    /// 5.2 `POST /cgi-bin/component/api_get_authorizer_list?component_access_token=`
    GetAuthorizerList,
    /// 5.3 `POST /cgi-bin/component/api_get_authorizer_info?component_access_token=`
    GetAuthorizerInfo,
    /// 6.1 `GET /cgi-bin/token?grant_type=client_credential&appid=&secret=`
    Token,
    /// 6.2 `POST /cgi-bin/stable_token`
    StableToken,
    /// 6.4 `GET /cgi-bin/ticket/getticket?access_token=&type=`
    GetTicket,
    /// 6.3 `POST /cgi-bin/clear_quota?access_token=`
    ClearQuota,
    /// 6.3 `POST /cgi-bin/clear_quota/v2` (appid + appsecret)
    ClearQuotaV2,
    /// 6.3 `POST /cgi-bin/component/clear_quota/v2` (component_appid + appsecret [+ appid])
    ComponentClearQuotaV2,
    /// 6.3 legacy `POST /cgi-bin/component/clear_quota?component_access_token=`
    ComponentClearQuota,
    /// 6.3 `POST /cgi-bin/openapi/quota/get?access_token=`
    QuotaGet,
    /// `GET /cgi-bin/getcallbackip?access_token=` → `{"ip_list":[...]}`
    GetCallbackIp,
}

impl Endpoint {
    pub const ALL: &'static [Endpoint] = &[
        Endpoint::StartPushTicket,
        Endpoint::ComponentToken,
        Endpoint::CreatePreauthcode,
        Endpoint::QueryAuth,
        Endpoint::AuthorizerToken,
        Endpoint::GetAuthorizerList,
        Endpoint::GetAuthorizerInfo,
        Endpoint::Token,
        Endpoint::StableToken,
        Endpoint::GetTicket,
        Endpoint::ClearQuota,
        Endpoint::ClearQuotaV2,
        Endpoint::ComponentClearQuotaV2,
        Endpoint::ComponentClearQuota,
        Endpoint::QuotaGet,
        Endpoint::GetCallbackIp,
    ];

    /// Path under the API host, e.g. `/cgi-bin/component/api_component_token`.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::StartPushTicket => "/cgi-bin/component/api_start_push_ticket",
            Endpoint::ComponentToken => "/cgi-bin/component/api_component_token",
            Endpoint::CreatePreauthcode => "/cgi-bin/component/api_create_preauthcode",
            Endpoint::QueryAuth => "/cgi-bin/component/api_query_auth",
            Endpoint::AuthorizerToken => "/cgi-bin/component/api_authorizer_token",
            Endpoint::GetAuthorizerList => "/cgi-bin/component/api_get_authorizer_list",
            Endpoint::GetAuthorizerInfo => "/cgi-bin/component/api_get_authorizer_info",
            Endpoint::Token => "/cgi-bin/token",
            Endpoint::StableToken => "/cgi-bin/stable_token",
            Endpoint::GetTicket => "/cgi-bin/ticket/getticket",
            Endpoint::ClearQuota => "/cgi-bin/clear_quota",
            Endpoint::ClearQuotaV2 => "/cgi-bin/clear_quota/v2",
            Endpoint::ComponentClearQuotaV2 => "/cgi-bin/component/clear_quota/v2",
            Endpoint::ComponentClearQuota => "/cgi-bin/component/clear_quota",
            Endpoint::QuotaGet => "/cgi-bin/openapi/quota/get",
            Endpoint::GetCallbackIp => "/cgi-bin/getcallbackip",
        }
    }

    pub fn method(self) -> HttpMethod {
        match self {
            Endpoint::Token | Endpoint::GetTicket | Endpoint::GetCallbackIp => HttpMethod::Get,
            _ => HttpMethod::Post,
        }
    }

    /// Stable snake_case label for metrics, logs and the simulator's fault/stats API. Never changes
    /// once released.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::StartPushTicket => "api_start_push_ticket",
            Endpoint::ComponentToken => "api_component_token",
            Endpoint::CreatePreauthcode => "api_create_preauthcode",
            Endpoint::QueryAuth => "api_query_auth",
            Endpoint::AuthorizerToken => "api_authorizer_token",
            Endpoint::GetAuthorizerList => "api_get_authorizer_list",
            Endpoint::GetAuthorizerInfo => "api_get_authorizer_info",
            Endpoint::Token => "token",
            Endpoint::StableToken => "stable_token",
            Endpoint::GetTicket => "getticket",
            Endpoint::ClearQuota => "clear_quota",
            Endpoint::ClearQuotaV2 => "clear_quota_v2",
            Endpoint::ComponentClearQuotaV2 => "component_clear_quota_v2",
            Endpoint::ComponentClearQuota => "component_clear_quota",
            Endpoint::QuotaGet => "quota_get",
            Endpoint::GetCallbackIp => "getcallbackip",
        }
    }

    /// Which credential authenticates the call (see [`EndpointAuth`]).
    pub fn auth(self) -> EndpointAuth {
        match self {
            Endpoint::StartPushTicket
            | Endpoint::ComponentToken
            | Endpoint::Token
            | Endpoint::StableToken
            | Endpoint::ClearQuotaV2
            | Endpoint::ComponentClearQuotaV2 => EndpointAuth::Secret,
            Endpoint::CreatePreauthcode
            | Endpoint::QueryAuth
            | Endpoint::AuthorizerToken
            | Endpoint::GetAuthorizerList
            | Endpoint::GetAuthorizerInfo
            | Endpoint::ComponentClearQuota => EndpointAuth::ComponentAccessToken,
            Endpoint::GetTicket
            | Endpoint::ClearQuota
            | Endpoint::QuotaGet
            | Endpoint::GetCallbackIp => EndpointAuth::AccessToken,
        }
    }

    /// True for the third-party-platform APIs under `/cgi-bin/component/`.
    pub fn is_component_api(self) -> bool {
        self.path().starts_with("/cgi-bin/component/")
    }

    /// Inverse of [`Endpoint::name`].
    pub fn from_name(name: &str) -> Option<Endpoint> {
        Endpoint::ALL.iter().copied().find(|e| e.name() == name)
    }

    /// Inverse of [`Endpoint::path`] (exact match, no trailing slash, no query).
    pub fn from_path(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.iter().copied().find(|e| e.path() == path)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error of [`Endpoint::from_str`]: the name is not one of [`Endpoint::name`]'s labels.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown WeChat endpoint name")]
pub struct UnknownEndpoint;

impl FromStr for Endpoint {
    type Err = UnknownEndpoint;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Endpoint::from_name(s).ok_or(UnknownEndpoint)
    }
}

/// Serialized as its [`Endpoint::name`] label.
impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Endpoint::from_name(&name).ok_or_else(|| {
            serde::de::Error::custom(format_args!("unknown WeChat endpoint name `{name}`"))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Redaction
// ---------------------------------------------------------------------------------------------

/// Stand-in printed by `Debug` in place of a secret value: `<redacted 137 bytes>`.
pub(crate) struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0)
    }
}

pub(crate) fn redact(secret: &str) -> Redacted {
    Redacted(secret.len())
}

pub(crate) fn redact_opt(secret: &Option<String>) -> Option<Redacted> {
    secret.as_deref().map(redact)
}

/// Writes a manual `Debug` impl: fields listed under `plain` print normally, fields under `secret`
/// (a `String`) or `secret_opt` (an `Option<String>`) print as `<redacted N bytes>`.
macro_rules! redacted_debug {
    ($ty:ident { plain: [$($plain:ident),*], secret: [$($secret:ident),*], secret_opt: [$($secret_opt:ident),*] }) => {
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($plain), &self.$plain))*
                    $(.field(stringify!($secret), &redact(&self.$secret)))*
                    $(.field(stringify!($secret_opt), &redact_opt(&self.$secret_opt)))*
                    .finish()
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// `grant_type` of cgi-bin/token and cgi-bin/stable_token.
pub const GRANT_TYPE_CLIENT_CREDENTIAL: &str = "client_credential";

/// Largest `count` api_get_authorizer_list accepts (section 8).
pub const AUTHORIZER_LIST_MAX_COUNT: u32 = 500;

/// Query of every component API after the token fetch: `?component_access_token=` (section 0: the
/// form every library and the older official pages use; newer pages write `access_token=`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentAccessTokenQuery {
    pub component_access_token: String,
}
redacted_debug!(ComponentAccessTokenQuery {
    plain: [],
    secret: [component_access_token],
    secret_opt: []
});

/// Query `?access_token=` of getcallbackip, clear_quota and openapi/quota/get.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenQuery {
    pub access_token: String,
}
redacted_debug!(AccessTokenQuery {
    plain: [],
    secret: [access_token],
    secret_opt: []
});

/// Body of api_start_push_ticket (3.1). Note `component_secret`, not `component_appsecret`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartPushTicketRequest {
    pub component_appid: String,
    pub component_secret: String,
}
redacted_debug!(StartPushTicketRequest {
    plain: [component_appid],
    secret: [component_secret],
    secret_opt: []
});

/// Body of api_component_token (3.2).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentTokenRequest {
    pub component_appid: String,
    pub component_appsecret: String,
    pub component_verify_ticket: String,
}
redacted_debug!(ComponentTokenRequest {
    plain: [component_appid],
    secret: [component_appsecret, component_verify_ticket],
    secret_opt: []
});

/// Body of api_create_preauthcode (3.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreAuthCodeRequest {
    pub component_appid: String,
}

/// Body of api_query_auth (4). `authorization_code` is the `queryauthcode@@@...` value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryAuthRequest {
    pub component_appid: String,
    pub authorization_code: String,
}
redacted_debug!(QueryAuthRequest {
    plain: [component_appid],
    secret: [authorization_code],
    secret_opt: []
});

/// Body of api_authorizer_token (5.1).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizerTokenRequest {
    pub component_appid: String,
    pub authorizer_appid: String,
    pub authorizer_refresh_token: String,
}
redacted_debug!(AuthorizerTokenRequest {
    plain: [component_appid, authorizer_appid],
    secret: [authorizer_refresh_token],
    secret_opt: []
});

/// Body of api_get_authorizer_list (5.2). `count` is at most [`AUTHORIZER_LIST_MAX_COUNT`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizerListRequest {
    pub component_appid: String,
    pub offset: u32,
    pub count: u32,
}

/// Body of api_get_authorizer_info (5.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizerInfoRequest {
    pub component_appid: String,
    pub authorizer_appid: String,
}

/// Query of `GET cgi-bin/token` (6.1).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenQuery {
    pub grant_type: String,
    pub appid: String,
    pub secret: String,
}
redacted_debug!(TokenQuery {
    plain: [grant_type, appid],
    secret: [secret],
    secret_opt: []
});

impl TokenQuery {
    pub fn new(appid: &str, secret: &str) -> Self {
        TokenQuery {
            grant_type: GRANT_TYPE_CLIENT_CREDENTIAL.to_owned(),
            appid: appid.to_owned(),
            secret: secret.to_owned(),
        }
    }
}

/// Body of `POST cgi-bin/stable_token` (6.2). `force_refresh` defaults to false when absent.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StableTokenRequest {
    pub grant_type: String,
    pub appid: String,
    pub secret: String,
    #[serde(default)]
    pub force_refresh: bool,
}
redacted_debug!(StableTokenRequest {
    plain: [grant_type, appid, force_refresh],
    secret: [secret],
    secret_opt: []
});

impl StableTokenRequest {
    pub fn new(appid: &str, secret: &str, force_refresh: bool) -> Self {
        StableTokenRequest {
            grant_type: GRANT_TYPE_CLIENT_CREDENTIAL.to_owned(),
            appid: appid.to_owned(),
            secret: secret.to_owned(),
            force_refresh,
        }
    }
}

/// `type=` of cgi-bin/ticket/getticket (6.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TicketKind {
    #[serde(rename = "jsapi")]
    Jsapi,
    #[serde(rename = "wx_card")]
    WxCard,
}

impl TicketKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketKind::Jsapi => "jsapi",
            TicketKind::WxCard => "wx_card",
        }
    }
}

/// Query of `GET cgi-bin/ticket/getticket` (6.4).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetTicketQuery {
    pub access_token: String,
    #[serde(rename = "type")]
    pub kind: TicketKind,
}
redacted_debug!(GetTicketQuery {
    plain: [kind],
    secret: [access_token],
    secret_opt: []
});

/// Body of `cgi-bin/clear_quota?access_token=` (6.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearQuotaRequest {
    pub appid: String,
}

/// Parameters of `cgi-bin/clear_quota/v2` (6.3). Where they go is disputed (query per WxJava,
/// silenceper and older pages; JSON body per newer pages, section 11): the client sends them in
/// both, and a server should accept either.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearQuotaV2Request {
    pub appid: String,
    pub appsecret: String,
}
redacted_debug!(ClearQuotaV2Request {
    plain: [appid],
    secret: [appsecret],
    secret_opt: []
});

/// Body of `cgi-bin/component/clear_quota/v2` (6.3): `appsecret` is the component secret; `appid`,
/// when present, names an authorized account whose counters are reset on its behalf.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentClearQuotaV2Request {
    pub component_appid: String,
    pub appsecret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appid: Option<String>,
}
redacted_debug!(ComponentClearQuotaV2Request {
    plain: [component_appid, appid],
    secret: [appsecret],
    secret_opt: []
});

/// Body of the legacy `cgi-bin/component/clear_quota?component_access_token=` (6.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentClearQuotaRequest {
    pub component_appid: String,
}

/// Body of `cgi-bin/openapi/quota/get?access_token=` (6.3), e.g.
/// `{"cgi_path":"/cgi-bin/component/api_component_token"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaGetRequest {
    pub cgi_path: String,
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// An errcode-only reply: `{"errcode":0,"errmsg":"ok"}` (api_start_push_ticket, clear_quota*).
/// Both fields default when absent. Through [`parse_response`] `errcode` is always 0; errors are
/// [`ApiError`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrcodeResponse {
    #[serde(default)]
    pub errcode: i64,
    #[serde(default)]
    pub errmsg: String,
}

impl ErrcodeResponse {
    /// `{"errcode":0,"errmsg":"ok"}`.
    pub fn ok() -> Self {
        ErrcodeResponse {
            errcode: 0,
            errmsg: "ok".to_owned(),
        }
    }
}

/// api_component_token success: `{"component_access_token":"...","expires_in":7200}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentTokenResponse {
    pub component_access_token: String,
    pub expires_in: u64,
}
redacted_debug!(ComponentTokenResponse {
    plain: [expires_in],
    secret: [component_access_token],
    secret_opt: []
});

/// api_create_preauthcode success: `{"pre_auth_code":"preauthcode@@@...","expires_in":600}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreAuthCodeResponse {
    pub pre_auth_code: String,
    pub expires_in: u64,
}
redacted_debug!(PreAuthCodeResponse {
    plain: [expires_in],
    secret: [pre_auth_code],
    secret_opt: []
});

/// `{"id": 18}` inside a func_info entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FuncscopeCategory {
    pub id: i64,
}

/// `confirm_info` of a func_info entry; can be ignored (staff), kept for the simulator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmInfo {
    #[serde(default)]
    pub need_confirm: i64,
    #[serde(default)]
    pub already_confirm: i64,
    #[serde(default)]
    pub can_confirm: i64,
}

/// One granted permission set: `{"funcscope_category":{"id":1}}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FuncInfo {
    pub funcscope_category: FuncscopeCategory,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_info: Option<ConfirmInfo>,
}

impl FuncInfo {
    pub fn new(id: i64) -> Self {
        FuncInfo {
            funcscope_category: FuncscopeCategory { id },
            confirm_info: None,
        }
    }

    pub fn id(&self) -> i64 {
        self.funcscope_category.id
    }
}

/// `authorization_info` of api_query_auth (4) and api_get_authorizer_info (5.3).
///
/// The token fields are present only when the account granted API permission. The older
/// api_get_authorizer_info shape spelled `authorizer_appid` as `appid`; either is accepted, and
/// `authorizer_appid` wins if both are present. This is the reply that carries a new refresh token,
/// so decoding is as forgiving as it can be: a `func_info` entry of an unexpected shape is skipped
/// rather than failing the whole reply.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AuthorizationInfoWire")]
pub struct AuthorizationInfo {
    pub authorizer_appid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorizer_access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorizer_refresh_token: Option<String>,
    #[serde(default)]
    pub func_info: Vec<FuncInfo>,
}
redacted_debug!(AuthorizationInfo {
    plain: [authorizer_appid, expires_in, func_info],
    secret: [],
    secret_opt: [authorizer_access_token, authorizer_refresh_token]
});

/// What [`AuthorizationInfo`] is decoded from: both appid spellings, func_info left untyped.
#[derive(Deserialize)]
struct AuthorizationInfoWire {
    #[serde(default)]
    authorizer_appid: Option<String>,
    #[serde(default)]
    appid: Option<String>,
    #[serde(default)]
    authorizer_access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    authorizer_refresh_token: Option<String>,
    #[serde(default)]
    func_info: Option<Vec<Value>>,
}

impl TryFrom<AuthorizationInfoWire> for AuthorizationInfo {
    type Error = &'static str;

    fn try_from(wire: AuthorizationInfoWire) -> Result<Self, Self::Error> {
        let authorizer_appid = wire
            .authorizer_appid
            .or(wire.appid)
            .ok_or("missing field `authorizer_appid`")?;
        let func_info = wire
            .func_info
            .unwrap_or_default()
            .into_iter()
            .filter_map(|entry| serde_json::from_value(entry).ok())
            .collect();
        Ok(AuthorizationInfo {
            authorizer_appid,
            authorizer_access_token: wire.authorizer_access_token,
            expires_in: wire.expires_in,
            authorizer_refresh_token: wire.authorizer_refresh_token,
            func_info,
        })
    }
}

impl AuthorizationInfo {
    /// The refresh token, unless absent or empty. Never overwrite a stored refresh token with an
    /// empty value (section 5.1).
    pub fn non_empty_refresh_token(&self) -> Option<&str> {
        non_empty(&self.authorizer_refresh_token)
    }

    /// Granted permission-set ids, in WeChat's order.
    pub fn func_ids(&self) -> Vec<i64> {
        self.func_info.iter().map(FuncInfo::id).collect()
    }
}

/// api_query_auth success: `{"authorization_info":{...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryAuthResponse {
    pub authorization_info: AuthorizationInfo,
}

/// api_authorizer_token success:
/// `{"authorizer_access_token":"...","expires_in":7200,"authorizer_refresh_token":"..."}`.
/// The refresh token is normally echoed unchanged (5.1); it is optional here so a reply without it
/// still yields the access token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizerTokenResponse {
    pub authorizer_access_token: String,
    pub expires_in: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorizer_refresh_token: Option<String>,
}
redacted_debug!(AuthorizerTokenResponse {
    plain: [expires_in],
    secret: [authorizer_access_token],
    secret_opt: [authorizer_refresh_token]
});

impl AuthorizerTokenResponse {
    /// The returned refresh token, unless absent or empty.
    pub fn non_empty_refresh_token(&self) -> Option<&str> {
        non_empty(&self.authorizer_refresh_token)
    }
}

/// One entry of api_get_authorizer_list. `refresh_token` is missing for an account that authorized
/// but whose code was never exchanged (5.2).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizerListItem {
    pub authorizer_appid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Unix seconds; 0 when absent.
    #[serde(default)]
    pub auth_time: i64,
}
redacted_debug!(AuthorizerListItem {
    plain: [authorizer_appid, auth_time],
    secret: [],
    secret_opt: [refresh_token]
});

impl AuthorizerListItem {
    pub fn non_empty_refresh_token(&self) -> Option<&str> {
        non_empty(&self.refresh_token)
    }
}

/// api_get_authorizer_list success: `{"total_count":33,"list":[...]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizerListResponse {
    #[serde(default)]
    pub total_count: u64,
    #[serde(default)]
    pub list: Vec<AuthorizerListItem>,
}

/// `{"id": 2}` in `service_type_info` / `verify_type_info`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeInfo {
    #[serde(default)]
    pub id: i64,
}

/// `MiniProgramInfo` of api_get_authorizer_info; present only for Mini Programs. Its inner shapes
/// vary by account age, so they stay untyped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MiniProgramInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Value>,
    #[serde(default)]
    pub categories: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visit_status: Option<i64>,
}

/// `authorizer_info` of api_get_authorizer_info (5.3). Everything is optional: the shape differs
/// between Official Accounts, Mini Programs, newer account kinds and older API versions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AuthorizerInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nick_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_img: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_type_info: Option<TypeInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_type_info: Option<TypeInfo>,
    /// Original id, `gh_...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qrcode_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_info: Option<Value>,
    #[serde(
        rename = "MiniProgramInfo",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub mini_program_info: Option<MiniProgramInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register_type: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_status: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_config: Option<Value>,
}

/// api_get_authorizer_info success. Tolerant of the older shape (`authorization_info.appid`, a
/// top-level `qrcode_url`) and of unknown fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AuthorizerInfoResponse {
    #[serde(default)]
    pub authorizer_info: AuthorizerInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_info: Option<AuthorizationInfo>,
    /// Older shape only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qrcode_url: Option<String>,
}

impl AuthorizerInfoResponse {
    /// A Mini Program iff `MiniProgramInfo` is present (the official cloud tool's rule, 5.3);
    /// otherwise an Official Account.
    pub fn is_mini_program(&self) -> bool {
        self.authorizer_info.mini_program_info.is_some()
    }
}

/// cgi-bin/token and cgi-bin/stable_token success: `{"access_token":"...","expires_in":7200}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenResponse {
    pub access_token: String,
    pub expires_in: u64,
}
redacted_debug!(AccessTokenResponse {
    plain: [expires_in],
    secret: [access_token],
    secret_opt: []
});

/// getticket success: `{"errcode":0,"errmsg":"ok","ticket":"...","expires_in":7200}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketResponse {
    #[serde(default)]
    pub errcode: i64,
    #[serde(default)]
    pub errmsg: String,
    pub ticket: String,
    pub expires_in: u64,
}
redacted_debug!(TicketResponse {
    plain: [errcode, errmsg, expires_in],
    secret: [ticket],
    secret_opt: []
});

impl TicketResponse {
    /// The success shape, with `"errcode":0,"errmsg":"ok"`.
    pub fn new(ticket: impl Into<String>, expires_in: u64) -> Self {
        TicketResponse {
            errcode: 0,
            errmsg: "ok".to_owned(),
            ticket: ticket.into(),
            expires_in,
        }
    }
}

/// `quota` of openapi/quota/get.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    #[serde(default)]
    pub daily_limit: u64,
    #[serde(default)]
    pub used: u64,
    #[serde(default)]
    pub remain: u64,
}

/// `rate_limit` / `component_rate_limit` of openapi/quota/get (newer pages).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    #[serde(default)]
    pub call_count: u64,
    #[serde(default)]
    pub refresh_second: u64,
}

/// openapi/quota/get success:
/// `{"errcode":0,"errmsg":"ok","quota":{"daily_limit":..,"used":..,"remain":..}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaResponse {
    #[serde(default)]
    pub errcode: i64,
    #[serde(default)]
    pub errmsg: String,
    pub quota: Quota,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_rate_limit: Option<RateLimit>,
}

/// getcallbackip success: `{"ip_list":["101.226.62.77", ...]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackIpResponse {
    #[serde(default)]
    pub ip_list: Vec<String>,
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|s| !s.is_empty())
}

// ---------------------------------------------------------------------------------------------
// Errors and parsing
// ---------------------------------------------------------------------------------------------

/// A WeChat error reply, `{"errcode":61023,"errmsg":"refresh_token is invalid rid: ..."}`.
/// Serializes to exactly that JSON, so the simulator can answer with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("errcode {errcode}: {errmsg}")]
pub struct ApiError {
    pub errcode: i64,
    pub errmsg: String,
}

impl ApiError {
    pub fn new(errcode: i64, errmsg: impl Into<String>) -> Self {
        ApiError {
            errcode,
            errmsg: errmsg.into(),
        }
    }

    /// The request id WeChat appended to errmsg: the current ` rid: 61b2c8e7-5746986a-4c6edd06`
    /// form, or the older ` hint: [xxxxxxxx]` form (brackets stripped). `None` if neither is there.
    pub fn rid(&self) -> Option<&str> {
        if let Some(pos) = self.errmsg.rfind("rid: ") {
            let rest = self.errmsg[pos + "rid: ".len()..].trim();
            return rest.split_whitespace().next();
        }
        if let Some(pos) = self.errmsg.rfind("hint: [") {
            let rest = &self.errmsg[pos + "hint: [".len()..];
            return rest.split(']').next().filter(|s| !s.is_empty());
        }
        None
    }
}

/// Why [`parse_response`] did not return the success type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// `errcode` present and non-zero.
    #[error("{0}")]
    Api(ApiError),
    /// Not JSON, not an object, a non-integer errcode, or a success body without the expected
    /// fields. The detail names the problem and the field, never a value from the body.
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// `"<message> rid: <rid>"`, the errmsg form WeChat uses today (section 0).
pub fn errmsg_with_rid(message: &str, rid: &str) -> String {
    format!("{message} rid: {rid}")
}

/// A request id in WeChat's shape: three groups of 8 lowercase hex digits, `61b2c8e7-5746986a-4c6edd06`.
pub fn format_rid(a: u32, b: u32, c: u32) -> String {
    format!("{a:08x}-{b:08x}-{c:08x}")
}

/// Applies section 0 to a response body and decodes the success type.
///
/// - The body must be a JSON object.
/// - A missing (or `null`) `errcode` means 0. An integer errcode, or a string of decimal digits,
///   is accepted; anything else is [`ResponseError::Malformed`].
/// - `errcode != 0` is [`ResponseError::Api`] whatever else the body holds (a token beside a
///   non-zero errcode is not a success).
/// - Otherwise the whole object is decoded as `T` (with `errcode` normalised to the integer 0 and a
///   `null` errmsg dropped); unknown fields are ignored.
///
/// The endpoint is only used for diagnostics; the rules are the same for every endpoint.
pub fn parse_response<T: DeserializeOwned>(
    endpoint: Endpoint,
    body: &[u8],
) -> Result<T, ResponseError> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| malformed(endpoint, &e))?;
    let Value::Object(map) = &mut value else {
        tracing::debug!(
            endpoint = endpoint.name(),
            "response body is not a JSON object"
        );
        return Err(ResponseError::Malformed(format!(
            "expected a JSON object, got {}",
            json_kind(&value)
        )));
    };
    match map.get("errcode") {
        None | Some(Value::Null) => {}
        Some(raw) => {
            let errcode = errcode_of(raw).ok_or_else(|| {
                ResponseError::Malformed(format!(
                    "errcode is not an integer but {}",
                    json_kind(raw)
                ))
            })?;
            if errcode != 0 {
                let errmsg = match map.get("errmsg") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                };
                return Err(ResponseError::Api(ApiError { errcode, errmsg }));
            }
        }
    }
    // Success: normalise the envelope so typed `errcode: i64` / `errmsg: String` fields accept a
    // `"0"` or `null` errcode and a `null` errmsg.
    if map.contains_key("errcode") {
        map.insert("errcode".to_owned(), Value::from(0));
    }
    if map.get("errmsg").is_some_and(Value::is_null) {
        map.remove("errmsg");
    }
    serde_json::from_value(value).map_err(|e| malformed(endpoint, &e))
}

fn errcode_of(raw: &Value) -> Option<i64> {
    match raw {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn malformed(endpoint: Endpoint, error: &serde_json::Error) -> ResponseError {
    let detail = sanitize_serde_error(error);
    tracing::debug!(endpoint = endpoint.name(), detail = %detail, "malformed response");
    ResponseError::Malformed(detail)
}

/// serde_json's syntax errors are fixed texts plus a position; its data errors can quote values
/// (`invalid type: string "69_abc...", expected u64`). Keep field names (`missing field
/// \`access_token\``), blank every quoted value.
fn sanitize_serde_error(error: &serde_json::Error) -> String {
    let message = error.to_string();
    if error.classify() != serde_json::error::Category::Data
        || message.starts_with("missing field")
        || message.starts_with("duplicate field")
    {
        return message;
    }
    redact_quoted(&message)
}

/// Replaces the contents of every `"..."` (with `\` escapes) and `` `...` `` span by `***`; an
/// unterminated span is blanked to the end.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        if c != '"' && c != '`' {
            out.push(c);
            continue;
        }
        out.push(c);
        out.push_str("***");
        let mut escaped = false;
        for inner in chars.by_ref() {
            if escaped {
                escaped = false;
            } else if inner == '\\' && c == '"' {
                escaped = true;
            } else if inner == c {
                out.push(c);
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names_and_paths_are_unique_and_round_trip() {
        let mut names = std::collections::HashSet::new();
        let mut paths = std::collections::HashSet::new();
        for &e in Endpoint::ALL {
            assert!(names.insert(e.name()), "duplicate name {}", e.name());
            assert!(paths.insert(e.path()), "duplicate path {}", e.path());
            assert_eq!(Endpoint::from_name(e.name()), Some(e));
            assert_eq!(Endpoint::from_path(e.path()), Some(e));
            assert_eq!(e.name().parse::<Endpoint>(), Ok(e));
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<Endpoint>(&json).unwrap(), e);
        }
        assert_eq!(Endpoint::ALL.len(), 16);
    }

    #[test]
    fn redact_quoted_blanks_values_but_keeps_structure() {
        assert_eq!(
            redact_quoted(r#"invalid type: string "69_se\"cret", expected u64"#),
            r#"invalid type: string "***", expected u64"#
        );
        assert_eq!(
            redact_quoted("unknown variant `abc`, expected `x`"),
            "unknown variant `***`, expected `***`"
        );
        assert_eq!(redact_quoted("unterminated \"secret"), "unterminated \"***");
    }
}
