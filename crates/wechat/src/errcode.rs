//! WeChat errcodes as data (wechat-protocol.md section 7) and their classification into the
//! reactions wxtoken takes ([`ErrorClass`]).
//!
//! Depends only on [`crate::wire::Endpoint`]. Invariants: [`classify`] is total and never panics;
//! an unknown code is [`ErrorClass::Transient`] ([`UNKNOWN_CODE_CLASS`]), so a code WeChat invents
//! tomorrow is retried with capped backoff, the current token keeps being served, and no
//! authorizer is ever marked lost because of it.
//!
//! Per-endpoint decisions (the cases section 7 leaves open):
//! - **40001** on an endpoint authenticated by a secret ([`EndpointAuth::Secret`]: cgi-bin/token,
//!   stable_token, api_component_token, api_start_push_ticket, clear_quota/v2,
//!   component/clear_quota/v2) means the AppSecret is wrong: [`ErrorClass::Configuration`].
//!   Everywhere else it means the token in the URL is wrong or superseded: [`ErrorClass::StaleToken`].
//!   On the component APIs that token is the *component* access token, not the authorizer's
//!   ([`EndpointAuth::ComponentAccessToken`] tells which).
//! - **40014 / 42001 / 42006** are [`ErrorClass::StaleToken`] for the token in the URL; on a secret endpoint
//!   there is no token to refresh, so they are [`ErrorClass::Transient`] there (refreshing "the
//!   token" would just repeat the same call).
//! - **61009** `code is invalid` is [`ErrorClass::Configuration`] on every endpoint (the table's
//!   "C / A" resolved to C): retrying the same code cannot succeed, but the code may simply have
//!   been exchanged already — the redirect and the `authorized` push race (section 3.5) — or be a
//!   pre-auth code passed by mistake. Neither proves the authorization is lost, so it must not
//!   mark an authorizer; the caller checks whether it already holds a refresh token for the
//!   account, else asks the merchant to authorize again.
//! - **61010** `code is expired` is [`ErrorClass::Reauthorize`] (only the merchant can produce a new
//!   code, by updating the authorization, which sends `updateauthorized`). On api_query_auth this
//!   concerns the *pending* authorization, not an authorizer's stored refresh token: a caller must
//!   not revoke an authorizer whose refresh token still works (api_authorizer_token reports 61023
//!   itself if it does not).
//! - **50002 / 50004** (account limited / punished) are [`ErrorClass::Reauthorize`] on every
//!   endpoint, direct accounts included: the account cannot be used until its owner acts.
//! - **0** is success and is not in [`ERRCODES`]; [`crate::wire::parse_response`] never reports it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::wire::{Endpoint, EndpointAuth};

/// The reaction an error calls for (section 7's letters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// T: retry with capped exponential backoff and jitter; keep serving the current token while
    /// it is valid. Also network errors, timeouts, HTTP 5xx, malformed bodies and unknown codes.
    Transient,
    /// R: the token in the URL is stale or invalid: refresh that token (single flight, only if it
    /// is still the current one), then retry once.
    StaleToken,
    /// K: component_verify_ticket expired or invalid: use the newest ticket, wait for the next
    /// push, or call api_start_push_ticket.
    Ticket,
    /// A: the authorization is lost (or the account blocked): mark the authorizer, stop retrying,
    /// alert, fall back to an appsecret if one is on file.
    Reauthorize,
    /// C: configuration, credential or caller bug: do not retry automatically; alert.
    Configuration,
    /// Q: daily quota exhausted (45009) or quota resets used up (48006): back off until the next
    /// day, or clear_quota (10 per month).
    Quota,
    /// P: the account or the token type lacks permission for the API.
    Permission,
}

impl ErrorClass {
    pub const ALL: &'static [ErrorClass] = &[
        ErrorClass::Transient,
        ErrorClass::StaleToken,
        ErrorClass::Ticket,
        ErrorClass::Reauthorize,
        ErrorClass::Configuration,
        ErrorClass::Quota,
        ErrorClass::Permission,
    ];

    /// Stable snake_case label for metrics (same as the serde form).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::StaleToken => "stale_token",
            ErrorClass::Ticket => "ticket",
            ErrorClass::Reauthorize => "reauthorize",
            ErrorClass::Configuration => "configuration",
            ErrorClass::Quota => "quota",
            ErrorClass::Permission => "permission",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of section 7. `class` is the class on token-carrying endpoints; [`classify`] adjusts
/// it per endpoint (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrcodeInfo {
    pub code: i64,
    /// errmsg prefix as WeChat sends it (before ` rid: ...`); empty when never captured.
    pub errmsg: &'static str,
    pub meaning: &'static str,
    pub class: ErrorClass,
}

/// Class of any code not in [`ERRCODES`].
pub const UNKNOWN_CODE_CLASS: ErrorClass = ErrorClass::Transient;

const fn row(
    code: i64,
    errmsg: &'static str,
    meaning: &'static str,
    class: ErrorClass,
) -> ErrcodeInfo {
    ErrcodeInfo {
        code,
        errmsg,
        meaning,
        class,
    }
}

use ErrorClass::{
    Configuration as C, Permission as P, Quota as Q, Reauthorize as A, StaleToken as R,
    Ticket as K, Transient as T,
};

/// Every code in section 7, including the "Other codes" note, plus 50004 from section 6.1 and
/// 42006 (`component_access_token expired`, from WxJava's WxOpenErrorMsgEnum only).
pub static ERRCODES: &[ErrcodeInfo] = &[
    row(-1, "system error", "system busy", T),
    row(
        40001,
        "invalid credential, access_token is invalid or not latest",
        "token wrong or superseded (someone else refreshed); on token-fetch APIs: wrong AppSecret",
        R,
    ),
    row(
        40002,
        "invalid grant_type",
        "grant_type is not client_credential",
        C,
    ),
    row(
        40013,
        "invalid appid",
        "malformed or unknown appid, or appid does not match the token",
        C,
    ),
    row(
        40014,
        "invalid access_token",
        "token malformed or not valid",
        R,
    ),
    row(40097, "invalid args", "invalid arguments", C),
    row(40125, "invalid appsecret", "wrong secret", C),
    row(
        40164,
        "invalid ip",
        "caller IP not in the account's API IP whitelist",
        C,
    ),
    row(40243, "", "AppSecret frozen by the owner", C),
    row(41001, "access_token missing", "no token in the URL", C),
    row(41002, "appid missing", "appid missing", C),
    row(41004, "appsecret missing", "appsecret missing", C),
    row(
        41018,
        "missing component_appid",
        "body lacks component_appid",
        C,
    ),
    row(42001, "access_token expired", "token past expiry", R),
    row(
        42002,
        "refresh_token timeout",
        "web OAuth refresh token expired",
        A,
    ),
    row(
        42006,
        "component_access_token expired",
        "component token past expiry (WxJava enum only)",
        R,
    ),
    row(
        42007,
        "access_token and refresh_token exception",
        "user changed password; web OAuth tokens invalidated",
        A,
    ),
    row(
        43002,
        "require POST method",
        "GET used where POST is required",
        C,
    ),
    row(44002, "empty post data", "empty request body", C),
    row(
        45009,
        "reach max api daily quota limit",
        "daily quota used up (old errmsg: api freq out of limit)",
        Q,
    ),
    row(
        45011,
        "api minute-quota reach limit must slower retry next minute",
        "per-minute limit; wait for the next minute",
        T,
    ),
    row(47001, "data format error", "bad JSON/XML in the request", C),
    row(
        48001,
        "api unauthorized",
        "account lacks the API, or wrong token type",
        P,
    ),
    row(
        48004,
        "api forbidden for irregularities",
        "API banned for the account",
        C,
    ),
    row(
        48006,
        "forbid to clear quota because of reaching the limit",
        "10 quota resets per month used",
        Q,
    ),
    row(50001, "user unauthorized", "user unauthorized", P),
    row(
        50002,
        "user limited",
        "account frozen, being cancelled or migrated",
        A,
    ),
    row(
        50004,
        "user not allow to use accesstoken, maybe for punishment",
        "account restricted from using access tokens",
        A,
    ),
    row(
        61003,
        "component is not authorized by this account",
        "appid not (or no longer) authorized to this platform, or appids swapped",
        A,
    ),
    row(
        61004,
        "access clientip is not registered",
        "caller IP not in the platform's whitelist",
        C,
    ),
    row(
        61005,
        "component ticket is expired",
        "component_verify_ticket older than 12 h",
        K,
    ),
    row(
        61006,
        "component ticket is invalid",
        "wrong, empty or not-latest ticket, or secret mismatch",
        K,
    ),
    row(
        61007,
        "api is unauthorized to component",
        "authorizer did not grant the permission set",
        P,
    ),
    row(61008, "component req key is duplicated", "duplicate key", C),
    row(
        61009,
        "code is invalid",
        "authorization code wrong, already used, or a pre-auth code",
        C,
    ),
    row(61010, "code is expired", "authorization code expired", A),
    row(
        61011,
        "invalid component",
        "appid is not a third-party platform",
        C,
    ),
    row(61012, "invalid option name", "invalid option name", C),
    row(61013, "invalid option value", "invalid option value", C),
    row(
        61014,
        "must use component token for component api",
        "component token required",
        C,
    ),
    row(
        61015,
        "must use biz account token for not component api",
        "authorizer token required",
        C,
    ),
    row(
        61023,
        "refresh_token is invalid",
        "refresh token empty, wrong or revoked",
        A,
    ),
    row(
        61024,
        "must use api(api_component_token) to get token for component acct",
        "cgi-bin/token called with a third-party platform appid",
        C,
    ),
    row(61025, "read-only option", "read-only option", C),
    row(61026, "register access deny", "register denied", C),
    row(61027, "register limit exceed", "register limit exceeded", C),
    row(
        61028,
        "component is unpublished",
        "third-party platform not published",
        C,
    ),
    row(
        61029,
        "component need republish with base category",
        "needs republish with base category",
        C,
    ),
    row(
        61030,
        "component cancel authorization not allowed",
        "component cannot cancel the authorization",
        C,
    ),
    row(
        76021,
        "cgi_path not found, please check",
        "quota query for an unknown cgi_path",
        C,
    ),
    row(
        76022,
        "could not use this cgi_path,no permission",
        "token type does not own that cgi_path (or /sns/ path)",
        C,
    ),
    row(89501, "", "risky-IP confirmation pending; retry later", T),
    row(
        89503,
        "",
        "admin confirmation of the caller IP required; message sent to admin",
        C,
    ),
    row(
        89506,
        "",
        "admin refused the IP twice in 24 h; retry after 24 h",
        C,
    ),
    row(89507, "", "admin refused the IP once; retry after 1 h", C),
];

/// The table row for `code`, if section 7 lists it.
pub fn lookup(code: i64) -> Option<&'static ErrcodeInfo> {
    ERRCODES.iter().find(|info| info.code == code)
}

/// The reaction `code` calls for when `endpoint` returned it. Total: unknown codes (and 0) give
/// [`UNKNOWN_CODE_CLASS`]. See the module docs for the per-endpoint decisions.
pub fn classify(code: i64, endpoint: Endpoint) -> ErrorClass {
    let secret_auth = endpoint.auth() == EndpointAuth::Secret;
    match code {
        40001 if secret_auth => ErrorClass::Configuration,
        40014 | 42001 | 42006 if secret_auth => ErrorClass::Transient,
        _ => lookup(code).map_or(UNKNOWN_CODE_CLASS, |info| info.class),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Section 7 of wechat-protocol.md, one line per row (76021/76022 split), with its class
    /// letter on a token-carrying endpoint. Kept literal so a table edit shows up here.
    const SECTION_7: &[(i64, char)] = &[
        (-1, 'T'),
        (40001, 'R'),
        (40002, 'C'),
        (40013, 'C'),
        (40014, 'R'),
        (40125, 'C'),
        (40164, 'C'),
        (40243, 'C'),
        (41001, 'C'),
        (41002, 'C'),
        (41004, 'C'),
        (41018, 'C'),
        (42001, 'R'),
        (43002, 'C'),
        (44002, 'C'),
        (45009, 'Q'),
        (45011, 'T'),
        (47001, 'C'),
        (48001, 'P'),
        (48004, 'C'),
        (48006, 'Q'),
        (50001, 'P'),
        (50002, 'A'),
        (61003, 'A'),
        (61004, 'C'),
        (61005, 'K'),
        (61006, 'K'),
        (61007, 'P'),
        (61009, 'C'),
        (61010, 'A'),
        (61011, 'C'),
        (61023, 'A'),
        (61024, 'C'),
        (76021, 'C'),
        (76022, 'C'),
        (89501, 'T'),
        (89503, 'C'),
        (89506, 'C'),
        (89507, 'C'),
    ];

    /// The "Other codes" note of section 7.
    const OTHER_CODES: &[i64] = &[
        61008, 61012, 61013, 61014, 61015, 61025, 61026, 61027, 61028, 61029, 61030, 40097, 42002,
        42007,
    ];

    fn letter(class: ErrorClass) -> char {
        match class {
            ErrorClass::Transient => 'T',
            ErrorClass::StaleToken => 'R',
            ErrorClass::Ticket => 'K',
            ErrorClass::Reauthorize => 'A',
            ErrorClass::Configuration => 'C',
            ErrorClass::Quota => 'Q',
            ErrorClass::Permission => 'P',
        }
    }

    #[test]
    fn every_section_7_code_has_the_documented_class_on_a_token_endpoint() {
        for &(code, expected) in SECTION_7 {
            let info = lookup(code).unwrap_or_else(|| panic!("{code} missing from ERRCODES"));
            assert_eq!(letter(info.class), expected, "table class of {code}");
            assert_eq!(
                letter(classify(code, Endpoint::GetCallbackIp)),
                expected,
                "classify({code})"
            );
        }
    }

    #[test]
    fn every_other_code_from_the_note_is_in_the_table() {
        for &code in OTHER_CODES {
            assert!(lookup(code).is_some(), "{code} missing from ERRCODES");
        }
    }

    #[test]
    fn table_has_no_duplicates_and_no_success_row() {
        let mut seen = std::collections::HashSet::new();
        for info in ERRCODES {
            assert!(seen.insert(info.code), "duplicate row {}", info.code);
            assert!(!info.meaning.is_empty(), "{} has no meaning", info.code);
        }
        assert!(lookup(0).is_none());
        assert_eq!(
            ERRCODES.len(),
            SECTION_7.len() + OTHER_CODES.len() + 2,
            "50004 and 42006 are the extra rows"
        );
    }

    #[test]
    fn invalid_credential_is_a_wrong_secret_on_token_fetch_endpoints() {
        for endpoint in [
            Endpoint::Token,
            Endpoint::StableToken,
            Endpoint::ComponentToken,
            Endpoint::StartPushTicket,
            Endpoint::ClearQuotaV2,
            Endpoint::ComponentClearQuotaV2,
        ] {
            assert_eq!(
                classify(40001, endpoint),
                ErrorClass::Configuration,
                "{endpoint}"
            );
            assert_eq!(
                classify(42001, endpoint),
                ErrorClass::Transient,
                "{endpoint}"
            );
            assert_eq!(
                classify(40014, endpoint),
                ErrorClass::Transient,
                "{endpoint}"
            );
        }
    }

    #[test]
    fn invalid_credential_is_a_stale_token_on_component_and_business_endpoints() {
        for &endpoint in Endpoint::ALL {
            if endpoint.auth() == EndpointAuth::Secret {
                continue;
            }
            for code in [40001, 40014, 42001, 42006] {
                assert_eq!(
                    classify(code, endpoint),
                    ErrorClass::StaleToken,
                    "{code} on {endpoint}"
                );
            }
        }
        // On api_authorizer_token the stale token is the component token in the URL.
        assert_eq!(
            Endpoint::AuthorizerToken.auth(),
            EndpointAuth::ComponentAccessToken
        );
    }

    #[test]
    fn authorization_code_errors_are_decided_per_the_module_docs() {
        assert_eq!(
            classify(61009, Endpoint::QueryAuth),
            ErrorClass::Configuration
        );
        assert_eq!(
            classify(61010, Endpoint::QueryAuth),
            ErrorClass::Reauthorize
        );
        assert_eq!(
            classify(61023, Endpoint::AuthorizerToken),
            ErrorClass::Reauthorize
        );
        assert_eq!(
            classify(61006, Endpoint::ComponentToken),
            ErrorClass::Ticket
        );
        assert_eq!(
            classify(45009, Endpoint::AuthorizerToken),
            ErrorClass::Quota
        );
    }

    #[test]
    fn unknown_codes_are_transient_on_every_endpoint() {
        for &endpoint in Endpoint::ALL {
            for code in [0, 1, 12345, 99999, -2, i64::MIN, i64::MAX] {
                assert_eq!(classify(code, endpoint), UNKNOWN_CODE_CLASS);
            }
        }
        assert_eq!(UNKNOWN_CODE_CLASS, ErrorClass::Transient);
    }

    #[test]
    fn class_labels_are_stable_snake_case_and_match_serde() {
        let labels: Vec<&str> = ErrorClass::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            labels,
            [
                "transient",
                "stale_token",
                "ticket",
                "reauthorize",
                "configuration",
                "quota",
                "permission"
            ]
        );
        for &class in ErrorClass::ALL {
            assert_eq!(
                serde_json::to_string(&class).unwrap(),
                format!("\"{}\"", class.as_str())
            );
            assert_eq!(class.to_string(), class.as_str());
        }
    }

    proptest::proptest! {
        #[test]
        fn classify_never_panics(code in proptest::prelude::any::<i64>(), index in 0usize..16) {
            let _ = classify(code, Endpoint::ALL[index]);
        }
    }
}
