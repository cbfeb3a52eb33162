//! The WeChat endpoints the simulator serves: one enum value per API, with its real path, method,
//! stable name (used in stats, faults and quota settings) and default daily quota.

use serde::Serialize;

/// Every WeChat API the simulator answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "&'static str")]
pub enum Api {
    StartPushTicket,
    ComponentToken,
    CreatePreauthcode,
    QueryAuth,
    AuthorizerToken,
    GetAuthorizerList,
    GetAuthorizerInfo,
    Token,
    StableToken,
    GetTicket,
    ClearQuota,
    ClearQuotaV2,
    ComponentClearQuotaV2,
    ComponentClearQuota,
    QuotaGet,
    GetCallbackIp,
    CustomSend,
    MediaUpload,
    MediaGet,
}

/// Who owns an API's quota: the third-party platform, or an account (direct or authorizer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    Component,
    Account,
}

impl Api {
    pub const ALL: [Api; 19] = [
        Api::StartPushTicket,
        Api::ComponentToken,
        Api::CreatePreauthcode,
        Api::QueryAuth,
        Api::AuthorizerToken,
        Api::GetAuthorizerList,
        Api::GetAuthorizerInfo,
        Api::Token,
        Api::StableToken,
        Api::GetTicket,
        Api::ClearQuota,
        Api::ClearQuotaV2,
        Api::ComponentClearQuotaV2,
        Api::ComponentClearQuota,
        Api::QuotaGet,
        Api::GetCallbackIp,
        Api::CustomSend,
        Api::MediaUpload,
        Api::MediaGet,
    ];

    /// The path under the API host, exactly as WeChat serves it.
    pub const fn path(self) -> &'static str {
        match self {
            Api::StartPushTicket => "/cgi-bin/component/api_start_push_ticket",
            Api::ComponentToken => "/cgi-bin/component/api_component_token",
            Api::CreatePreauthcode => "/cgi-bin/component/api_create_preauthcode",
            Api::QueryAuth => "/cgi-bin/component/api_query_auth",
            Api::AuthorizerToken => "/cgi-bin/component/api_authorizer_token",
            Api::GetAuthorizerList => "/cgi-bin/component/api_get_authorizer_list",
            Api::GetAuthorizerInfo => "/cgi-bin/component/api_get_authorizer_info",
            Api::Token => "/cgi-bin/token",
            Api::StableToken => "/cgi-bin/stable_token",
            Api::GetTicket => "/cgi-bin/ticket/getticket",
            Api::ClearQuota => "/cgi-bin/clear_quota",
            Api::ClearQuotaV2 => "/cgi-bin/clear_quota/v2",
            Api::ComponentClearQuotaV2 => "/cgi-bin/component/clear_quota/v2",
            Api::ComponentClearQuota => "/cgi-bin/component/clear_quota",
            Api::QuotaGet => "/cgi-bin/openapi/quota/get",
            Api::GetCallbackIp => "/cgi-bin/getcallbackip",
            Api::CustomSend => "/cgi-bin/message/custom/send",
            Api::MediaUpload => "/cgi-bin/media/upload",
            Api::MediaGet => "/cgi-bin/media/get",
        }
    }

    /// The stable name used in `/_sim/stats`, `/_sim/faults` and `[quota.daily]`.
    pub const fn name(self) -> &'static str {
        match self {
            Api::StartPushTicket => "api_start_push_ticket",
            Api::ComponentToken => "api_component_token",
            Api::CreatePreauthcode => "api_create_preauthcode",
            Api::QueryAuth => "api_query_auth",
            Api::AuthorizerToken => "api_authorizer_token",
            Api::GetAuthorizerList => "api_get_authorizer_list",
            Api::GetAuthorizerInfo => "api_get_authorizer_info",
            Api::Token => "token",
            Api::StableToken => "stable_token",
            Api::GetTicket => "getticket",
            Api::ClearQuota => "clear_quota",
            Api::ClearQuotaV2 => "clear_quota_v2",
            Api::ComponentClearQuotaV2 => "component_clear_quota_v2",
            Api::ComponentClearQuota => "component_clear_quota",
            Api::QuotaGet => "quota_get",
            Api::GetCallbackIp => "getcallbackip",
            Api::CustomSend => "custom_send",
            Api::MediaUpload => "media_upload",
            Api::MediaGet => "media_get",
        }
    }

    /// `true` for GET APIs; every other API requires POST (43002 otherwise).
    pub const fn is_get(self) -> bool {
        matches!(
            self,
            Api::Token | Api::GetTicket | Api::GetCallbackIp | Api::MediaGet
        )
    }

    /// Daily limit per appid when the configuration does not override it; 0 = unlimited.
    /// Published or reported values where they exist (protocol notes, section 8).
    pub const fn default_daily_quota(self) -> u32 {
        match self {
            Api::Token => 2000,
            Api::StableToken => 500_000,
            Api::ComponentToken => 10_000,
            Api::AuthorizerToken => 2000,
            Api::GetTicket => 1000,
            _ => 0,
        }
    }

    /// Largest request body accepted: WeChat's temporary media may be up to 10 MB (video).
    pub(crate) const fn max_body(self) -> usize {
        match self {
            Api::MediaUpload => 20 << 20,
            _ => 1 << 20,
        }
    }

    /// Token-issuing APIs (see `quota.clear_resets_token_apis`).
    pub(crate) const fn issues_tokens(self) -> bool {
        matches!(
            self,
            Api::ComponentToken | Api::AuthorizerToken | Api::Token | Api::StableToken
        )
    }

    pub(crate) const fn owner(self) -> Owner {
        match self {
            Api::StartPushTicket
            | Api::ComponentToken
            | Api::CreatePreauthcode
            | Api::QueryAuth
            | Api::AuthorizerToken
            | Api::GetAuthorizerList
            | Api::GetAuthorizerInfo
            | Api::ComponentClearQuotaV2
            | Api::ComponentClearQuota => Owner::Component,
            _ => Owner::Account,
        }
    }

    /// Look an API up by its name or its path (with or without the leading `/`).
    pub fn from_name(s: &str) -> Option<Api> {
        Api::ALL
            .into_iter()
            .find(|a| a.name() == s || a.path() == s || a.path().strip_prefix('/') == Some(s))
    }
}

impl From<Api> for &'static str {
    fn from(a: Api) -> Self {
        a.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_unique_and_resolve() {
        for a in Api::ALL {
            assert_eq!(Api::from_name(a.name()), Some(a));
            assert_eq!(Api::from_name(a.path()), Some(a));
            assert_eq!(Api::ALL.iter().filter(|b| b.path() == a.path()).count(), 1);
        }
        assert_eq!(Api::ALL.len(), Api::MediaGet as usize + 1);
    }
}
