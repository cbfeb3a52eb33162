//! The simulator's public data types: what the control API (`/_sim/…`, JSON) and [`crate::SimControl`]
//! accept and return. These shapes are a documented, stable contract (docs/SIMULATOR.md); add
//! fields, never rename them.

use serde::{Deserialize, Serialize};

/// A component (third-party platform) to create. Absent values are generated.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComponentSpec {
    pub component_appid: Option<String>,
    pub component_appsecret: Option<String>,
    /// The message-verification Token (消息校验Token).
    pub token: Option<String>,
    /// The 43-character EncodingAESKey.
    pub encoding_aes_key: Option<String>,
    /// Where ticket and authorization events are pushed (the 授权事件接收URL).
    pub push_url: Option<String>,
}

/// A component as the simulator knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ComponentInfo {
    pub component_appid: String,
    pub component_appsecret: String,
    pub token: String,
    pub encoding_aes_key: String,
    pub push_url: Option<String>,
    /// The most recently issued `component_verify_ticket`, and when (Unix seconds).
    pub latest_ticket: Option<String>,
    pub latest_ticket_issued_at: Option<i64>,
    /// Accounts currently authorized to this component.
    pub authorizer_count: usize,
}

/// Kind of simulated account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// 公众号.
    OfficialAccount,
    /// 小程序.
    MiniProgram,
}

/// An Official Account or Mini Program to create. Absent appid/appsecret are generated.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSpec {
    pub kind: AccountKind,
    #[serde(default)]
    pub appid: Option<String>,
    #[serde(default)]
    pub appsecret: Option<String>,
}

/// An account as the simulator knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccountInfo {
    pub appid: String,
    pub appsecret: String,
    pub kind: AccountKind,
    pub nick_name: String,
    /// The original id (`gh_…`).
    pub user_name: String,
}

/// What an authorization (consent page approval or `POST /_sim/accounts/{appid}/authorize`) produced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuthorizeOutcome {
    pub authorizer_appid: String,
    pub component_appid: String,
    /// The `queryauthcode@@@…` code for `api_query_auth`.
    pub authorization_code: String,
    /// Seconds the code is valid (the redirect's `expires_in`).
    pub expires_in: i64,
    /// Absolute expiry, Unix seconds (the push's `AuthorizationCodeExpiredTime`).
    pub authorization_code_expired_time: i64,
    /// `authorized` for a new authorization, `updateauthorized` for a re-authorization.
    pub info_type: String,
    pub pre_auth_code: String,
}

/// What `POST /_sim/accounts/{appid}/unauthorize` did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnauthorizeOutcome {
    pub authorizer_appid: String,
    pub component_appid: String,
    pub info_type: String,
}

/// An authorizer as the simulator knows it (`GET /_sim/authorizers/{component}/{appid}`), so tests
/// can assert that a store holds exactly what WeChat would accept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuthorizerView {
    pub component_appid: String,
    pub authorizer_appid: String,
    pub kind: AccountKind,
    /// `authorized` or `unauthorized`.
    pub status: String,
    /// The refresh token `api_authorizer_token` accepts now.
    pub refresh_token: String,
    /// Whether the current authorization code was exchanged (`api_get_authorizer_list` shows the
    /// refresh token only then).
    pub refresh_token_exchanged: bool,
    pub auth_time: i64,
    pub func_info: Vec<u32>,
    /// How many authorizer access tokens were issued in this series.
    pub access_token_generation: u32,
}

/// One line of `POST /_sim/bulk/authorizers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BulkAuthorizer {
    pub authorizer_appid: String,
    pub authorizer_refresh_token: String,
    pub kind: AccountKind,
}

/// Which token family a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// `component_access_token` (api_component_token).
    Component,
    /// `authorizer_access_token` (api_query_auth, api_authorizer_token).
    Authorizer,
    /// `access_token` from `cgi-bin/token`.
    Direct,
    /// `access_token` from `cgi-bin/stable_token`.
    Stable,
}

/// `GET /_sim/validate?access_token=T`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Validation {
    pub valid: bool,
    /// `ok`, `expired` (42001), `superseded` (40001: replaced and past the overlap), `retired`
    /// (40001: re-authorized or unauthorized) or `unknown` (40014).
    pub reason: String,
    /// The errcode a token-checked API would answer (0 when valid).
    pub errcode: i64,
    pub kind: Option<TokenKind>,
    /// The token owner's appid (the authorizer's for authorizer tokens).
    pub appid: Option<String>,
    /// The component, for component and authorizer tokens.
    pub component_appid: Option<String>,
    /// Seconds to expiry (negative once expired).
    pub expires_in: Option<i64>,
    /// `jsapi` or `wx_card` when a ticket was validated (`/_sim/validate?ticket=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_type: Option<String>,
}

/// A control request the simulator refuses.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl ControlError {
    /// The stable snake_case code used in `{"error":{"code","message"}}`.
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::NotFound(_) => "not_found",
            ControlError::Conflict(_) => "conflict",
            ControlError::Invalid(_) => "invalid_request",
        }
    }
}
