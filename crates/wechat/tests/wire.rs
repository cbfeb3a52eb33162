//! wire: fixtures per endpoint (tests/fixtures/wire/<endpoint name>/{ok*,err_<code>*}.json),
//! section 0 parsing rules, request field names, and Debug redaction.

mod common;

use std::fmt::Debug;

use axum::extract::Query;
use axum::http::Uri;
use proptest::strategy::Strategy;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use wechat::wire::*;

use common::{fixture, fixtures_dir};

/// (case name, bytes) of every fixture of `endpoint`, sorted.
fn fixtures_of(endpoint: Endpoint) -> Vec<(String, Vec<u8>)> {
    let dir = fixtures_dir().join(endpoint.name());
    let mut cases: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    cases.sort();
    cases
}

fn ok<T: DeserializeOwned>(endpoint: Endpoint, case: &str) -> T {
    match parse_response::<T>(endpoint, &fixture(endpoint, case)) {
        Ok(value) => value,
        Err(e) => panic!("{endpoint}/{case}: {e}"),
    }
}

/// Parses, serializes and parses again: what the simulator sends is what the client reads.
fn round_trips<T: DeserializeOwned + Serialize + PartialEq + Debug>(
    endpoint: Endpoint,
    case: &str,
) {
    let first: T = ok(endpoint, case);
    let again: T = parse_response(endpoint, &serde_json::to_vec(&first).unwrap()).unwrap();
    assert_eq!(first, again, "{endpoint}/{case}");
}

fn assert_rid_shape(rid: &str) {
    let groups: Vec<&str> = rid.split('-').collect();
    assert_eq!(groups.len(), 3, "{rid}");
    for group in groups {
        assert_eq!(group.len(), 8, "{rid}");
        assert!(
            group
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
            "{rid}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Every endpoint, every fixture
// ---------------------------------------------------------------------------------------------

#[test]
fn every_endpoint_has_a_success_and_an_error_fixture() {
    for &endpoint in Endpoint::ALL {
        let cases = fixtures_of(endpoint);
        assert!(
            cases.iter().any(|(name, _)| name.starts_with("ok")),
            "{endpoint}: no ok fixture"
        );
        assert!(
            cases.iter().any(|(name, _)| name.starts_with("err_")),
            "{endpoint}: no err fixture"
        );
    }
}

#[test]
fn every_error_fixture_is_an_api_error_with_its_code_and_a_request_id() {
    for &endpoint in Endpoint::ALL {
        for (name, body) in fixtures_of(endpoint)
            .into_iter()
            .filter(|(n, _)| n.starts_with("err_"))
        {
            let expected: i64 = name["err_".len()..]
                .split('_')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            match parse_response::<serde_json::Value>(endpoint, &body) {
                Err(ResponseError::Api(api)) => {
                    assert_eq!(api.errcode, expected, "{endpoint}/{name}");
                    let rid = api
                        .rid()
                        .unwrap_or_else(|| panic!("{endpoint}/{name}: no rid in {}", api.errmsg));
                    if api.errmsg.contains(" rid: ") {
                        assert_rid_shape(rid);
                    }
                }
                other => panic!("{endpoint}/{name}: expected an ApiError, got {other:?}"),
            }
        }
    }
}

/// Parses every ok fixture of `endpoint` as its typed response and round-trips it.
fn parse_all_ok<T: DeserializeOwned + Serialize + PartialEq + Debug>(endpoint: Endpoint) {
    for (name, _) in fixtures_of(endpoint)
        .into_iter()
        .filter(|(n, _)| n.starts_with("ok"))
    {
        round_trips::<T>(endpoint, &name);
    }
}

#[test]
fn every_success_fixture_parses_as_its_typed_response_and_round_trips() {
    for &endpoint in Endpoint::ALL {
        match endpoint {
            Endpoint::StartPushTicket
            | Endpoint::ClearQuota
            | Endpoint::ClearQuotaV2
            | Endpoint::ComponentClearQuotaV2
            | Endpoint::ComponentClearQuota => parse_all_ok::<ErrcodeResponse>(endpoint),
            Endpoint::ComponentToken => parse_all_ok::<ComponentTokenResponse>(endpoint),
            Endpoint::CreatePreauthcode => parse_all_ok::<PreAuthCodeResponse>(endpoint),
            Endpoint::QueryAuth => parse_all_ok::<QueryAuthResponse>(endpoint),
            Endpoint::AuthorizerToken => parse_all_ok::<AuthorizerTokenResponse>(endpoint),
            Endpoint::GetAuthorizerList => parse_all_ok::<AuthorizerListResponse>(endpoint),
            Endpoint::GetAuthorizerInfo => parse_all_ok::<AuthorizerInfoResponse>(endpoint),
            Endpoint::Token | Endpoint::StableToken => {
                parse_all_ok::<AccessTokenResponse>(endpoint)
            }
            Endpoint::GetTicket => parse_all_ok::<TicketResponse>(endpoint),
            Endpoint::QuotaGet => parse_all_ok::<QuotaResponse>(endpoint),
            Endpoint::GetCallbackIp => parse_all_ok::<CallbackIpResponse>(endpoint),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One test per endpoint, on values
// ---------------------------------------------------------------------------------------------

#[test]
fn start_push_ticket_reports_ok_and_in_a_normal_state_as_success() {
    let started: ErrcodeResponse = ok(Endpoint::StartPushTicket, "ok");
    assert_eq!(started, ErrcodeResponse::ok());
    let running: ErrcodeResponse = ok(Endpoint::StartPushTicket, "ok_in_a_normal_state");
    assert_eq!(
        (running.errcode, running.errmsg.as_str()),
        (0, "in a normal state")
    );
}

#[test]
fn component_token_success_has_token_and_lifetime() {
    let r: ComponentTokenResponse = ok(Endpoint::ComponentToken, "ok");
    assert!(r.component_access_token.starts_with("69_"));
    assert!(r.component_access_token.len() > 100);
    assert_eq!(r.expires_in, 7200);
}

#[test]
fn create_preauthcode_success_has_code_and_lifetime() {
    let r: PreAuthCodeResponse = ok(Endpoint::CreatePreauthcode, "ok");
    assert!(r.pre_auth_code.starts_with("preauthcode@@@"));
    assert_eq!(r.expires_in, 600);
}

#[test]
fn query_auth_success_carries_tokens_and_granted_permission_sets() {
    let r: QueryAuthResponse = ok(Endpoint::QueryAuth, "ok");
    let info = &r.authorization_info;
    assert_eq!(info.authorizer_appid, "wxf8b4f85f3a794e77");
    assert!(
        info.authorizer_access_token
            .as_deref()
            .unwrap()
            .starts_with("69_")
    );
    assert_eq!(info.expires_in, Some(7200));
    assert!(
        info.non_empty_refresh_token()
            .unwrap()
            .starts_with("refreshtoken@@@")
    );
    assert_eq!(info.func_ids(), [1, 2, 3, 17, 18]);
    assert_eq!(info.func_info[4].confirm_info, Some(ConfirmInfo::default()));
}

#[test]
fn query_auth_without_api_permission_has_no_tokens() {
    let r: QueryAuthResponse = ok(Endpoint::QueryAuth, "ok_without_api_permission");
    let info = r.authorization_info;
    assert_eq!(info.authorizer_access_token, None);
    assert_eq!(info.expires_in, None);
    assert_eq!(info.non_empty_refresh_token(), None);
    assert_eq!(info.func_ids(), [1]);
}

#[test]
fn query_auth_survives_odd_func_info_entries_and_both_appid_spellings() {
    let body = json!({"authorization_info": {
        "authorizer_appid": "wxnew",
        "appid": "wxold",
        "authorizer_access_token": "69_a",
        "expires_in": 7200,
        "authorizer_refresh_token": "refreshtoken@@@r",
        "func_info": [{"funcscope_category": {"id": 1}}, {"funcscope_category": "weird"}, 7, {"other": {}}, {"funcscope_category": {"id": 18}}]
    }});
    let r: QueryAuthResponse =
        parse_response(Endpoint::QueryAuth, body.to_string().as_bytes()).unwrap();
    let info = r.authorization_info;
    assert_eq!(
        info.authorizer_appid, "wxnew",
        "authorizer_appid wins over appid"
    );
    assert_eq!(info.non_empty_refresh_token(), Some("refreshtoken@@@r"));
    assert_eq!(info.func_ids(), [1, 18], "unparseable entries are skipped");
    let serialized = serde_json::to_value(&info).unwrap();
    assert_eq!(serialized["authorizer_appid"], "wxnew");
    assert!(serialized.get("appid").is_none());
}

#[test]
fn query_auth_without_any_appid_is_malformed() {
    let body = json!({"authorization_info": {"authorizer_refresh_token": "refreshtoken@@@r"}});
    let err = parse_response::<QueryAuthResponse>(Endpoint::QueryAuth, body.to_string().as_bytes())
        .unwrap_err();
    let ResponseError::Malformed(detail) = err else {
        panic!("{err:?}")
    };
    assert!(detail.contains("authorizer_appid"), "{detail}");
    assert!(!detail.contains("refreshtoken@@@"), "{detail}");
}

#[test]
fn authorizer_token_success_echoes_the_refresh_token() {
    let r: AuthorizerTokenResponse = ok(Endpoint::AuthorizerToken, "ok");
    assert!(r.authorizer_access_token.starts_with("69_"));
    assert_eq!(r.expires_in, 7200);
    assert!(
        r.non_empty_refresh_token()
            .unwrap()
            .starts_with("refreshtoken@@@")
    );
}

#[test]
fn authorizer_token_with_empty_or_absent_refresh_token_yields_none() {
    for body in [
        json!({"authorizer_access_token": "69_x", "expires_in": 7200, "authorizer_refresh_token": ""}),
        json!({"authorizer_access_token": "69_x", "expires_in": 7200}),
    ] {
        let r: AuthorizerTokenResponse =
            parse_response(Endpoint::AuthorizerToken, body.to_string().as_bytes()).unwrap();
        assert_eq!(r.non_empty_refresh_token(), None);
    }
}

#[test]
fn authorizer_list_entry_without_refresh_token_parses() {
    let r: AuthorizerListResponse = ok(Endpoint::GetAuthorizerList, "ok");
    assert_eq!(r.total_count, 33);
    assert_eq!(r.list.len(), 3);
    assert_eq!(r.list[0].authorizer_appid, "wxf8b4f85f3a794e77");
    assert!(r.list[0].non_empty_refresh_token().is_some());
    assert_eq!(r.list[0].auth_time, 1558000607);
    assert_eq!(r.list[2].refresh_token, None);
    let empty: AuthorizerListResponse = ok(Endpoint::GetAuthorizerList, "ok_empty_page");
    assert!(empty.list.is_empty());
}

#[test]
fn authorizer_info_of_an_official_account_is_not_a_mini_program() {
    let r: AuthorizerInfoResponse = ok(Endpoint::GetAuthorizerInfo, "ok_official_account");
    assert!(!r.is_mini_program());
    assert_eq!(
        r.authorizer_info.user_name.as_deref(),
        Some("gh_eb5e3a772040")
    );
    assert_eq!(
        r.authorizer_info.service_type_info,
        Some(TypeInfo { id: 2 })
    );
    let auth = r.authorization_info.unwrap();
    assert_eq!(auth.authorizer_appid, "wxf8b4f85f3a794e77");
    assert!(auth.non_empty_refresh_token().is_some());
}

#[test]
fn authorizer_info_with_mini_program_info_is_a_mini_program() {
    let r: AuthorizerInfoResponse = ok(Endpoint::GetAuthorizerInfo, "ok_mini_program");
    assert!(r.is_mini_program());
    let mp = r.authorizer_info.mini_program_info.as_ref().unwrap();
    assert_eq!(mp.visit_status, Some(0));
    assert_eq!(mp.categories.len(), 1);
    assert_eq!(r.authorizer_info.register_type, Some(0));
}

#[test]
fn authorizer_info_accepts_the_older_shape() {
    let r: AuthorizerInfoResponse = ok(Endpoint::GetAuthorizerInfo, "ok_legacy_shape");
    assert!(!r.is_mini_program());
    assert_eq!(r.qrcode_url.as_deref(), Some("URL"));
    let auth = r.authorization_info.unwrap();
    assert_eq!(
        auth.authorizer_appid, "wxf8b4f85f3a794e77",
        "read from `appid`"
    );
    assert_eq!(auth.non_empty_refresh_token(), None);
    assert_eq!(auth.func_ids(), [1, 2]);
}

#[test]
fn token_and_stable_token_successes_have_token_and_lifetime() {
    let token: AccessTokenResponse = ok(Endpoint::Token, "ok");
    assert!(token.access_token.starts_with("69_"));
    assert_eq!(token.expires_in, 7200);
    let stable: AccessTokenResponse = ok(Endpoint::StableToken, "ok");
    assert_eq!(
        stable.expires_in, 6893,
        "stable_token returns the remaining lifetime"
    );
}

#[test]
fn token_error_with_the_older_hint_form_still_yields_a_request_id() {
    let Err(ResponseError::Api(api)) = parse_response::<AccessTokenResponse>(
        Endpoint::Token,
        &fixture(Endpoint::Token, "err_89503_legacy_hint"),
    ) else {
        panic!("expected an ApiError")
    };
    assert_eq!(api.rid(), Some("Vk2Cu0324e534"));
}

#[test]
fn getticket_success_keeps_errcode_zero_and_the_ticket() {
    let r: TicketResponse = ok(Endpoint::GetTicket, "ok");
    assert_eq!(
        (r.errcode, r.errmsg.as_str(), r.expires_in),
        (0, "ok", 7200)
    );
    assert!(!r.ticket.is_empty());
    assert_eq!(
        serde_json::to_value(TicketResponse::new("t", 7200)).unwrap(),
        json!({"errcode":0,"errmsg":"ok","ticket":"t","expires_in":7200})
    );
}

#[test]
fn clear_quota_variants_succeed_with_errcode_zero() {
    for endpoint in [
        Endpoint::ClearQuota,
        Endpoint::ClearQuotaV2,
        Endpoint::ComponentClearQuotaV2,
        Endpoint::ComponentClearQuota,
    ] {
        assert_eq!(
            ok::<ErrcodeResponse>(endpoint, "ok"),
            ErrcodeResponse::ok(),
            "{endpoint}"
        );
    }
}

#[test]
fn quota_get_reads_quota_and_optional_rate_limits() {
    let full: QuotaResponse = ok(Endpoint::QuotaGet, "ok");
    assert_eq!(
        full.quota,
        Quota {
            daily_limit: 10000,
            used: 3,
            remain: 9997
        }
    );
    assert_eq!(
        full.rate_limit,
        Some(RateLimit {
            call_count: 100,
            refresh_second: 60
        })
    );
    assert_eq!(
        full.component_rate_limit,
        Some(RateLimit {
            call_count: 10000,
            refresh_second: 86400
        })
    );
    let plain: QuotaResponse = ok(Endpoint::QuotaGet, "ok_quota_only");
    assert_eq!(plain.quota.remain, 1);
    assert_eq!(plain.rate_limit, None);
}

#[test]
fn getcallbackip_lists_addresses() {
    let r: CallbackIpResponse = ok(Endpoint::GetCallbackIp, "ok");
    assert_eq!(r.ip_list.len(), 5);
    assert_eq!(r.ip_list[0], "101.226.62.77");
}

// ---------------------------------------------------------------------------------------------
// Section 0 rules
// ---------------------------------------------------------------------------------------------

fn parse_json<T: DeserializeOwned>(body: &str) -> Result<T, ResponseError> {
    parse_response(Endpoint::Token, body.as_bytes())
}

#[test]
fn missing_or_null_errcode_means_success() {
    let a: AccessTokenResponse =
        parse_json(r#"{"access_token":"69_a","expires_in":7200}"#).unwrap();
    assert_eq!(a.access_token, "69_a");
    let b: AccessTokenResponse =
        parse_json(r#"{"errcode":null,"access_token":"69_b","expires_in":7200}"#).unwrap();
    assert_eq!(b.access_token, "69_b");
    let c: ErrcodeResponse = parse_json("{}").unwrap();
    assert_eq!(c, ErrcodeResponse::default());
    let d: ErrcodeResponse = parse_json(r#"{"errcode":null,"errmsg":null}"#).unwrap();
    assert_eq!(d, ErrcodeResponse::default());
}

#[test]
fn errcode_zero_with_ok_message_is_success() {
    let a: AccessTokenResponse =
        parse_json(r#"{"errcode":0,"errmsg":"ok","access_token":"69_a","expires_in":7200}"#)
            .unwrap();
    assert_eq!(a.expires_in, 7200);
    let b: ErrcodeResponse = parse_json(r#"{"errcode":"0","errmsg":"ok"}"#).unwrap();
    assert_eq!(b.errcode, 0);
}

#[test]
fn nonzero_errcode_is_an_error_even_beside_a_token() {
    let err = parse_json::<AccessTokenResponse>(
        r#"{"errcode":40001,"errmsg":"invalid credential rid: 61b2c8e7-5746986a-4c6edd06","access_token":"69_a","expires_in":7200}"#,
    )
    .unwrap_err();
    assert_eq!(
        err,
        ResponseError::Api(ApiError::new(
            40001,
            "invalid credential rid: 61b2c8e7-5746986a-4c6edd06"
        ))
    );
}

#[test]
fn errcode_is_read_from_a_numeric_string_and_errmsg_may_be_missing() {
    let err = parse_json::<ErrcodeResponse>(r#"{"errcode":"45009"}"#).unwrap_err();
    assert_eq!(err, ResponseError::Api(ApiError::new(45009, "")));
    let negative =
        parse_json::<ErrcodeResponse>(r#"{"errcode":-1,"errmsg":"system error"}"#).unwrap_err();
    assert_eq!(
        negative,
        ResponseError::Api(ApiError::new(-1, "system error"))
    );
}

#[test]
fn non_integer_errcode_is_malformed() {
    for body in [
        r#"{"errcode":"abc"}"#,
        r#"{"errcode":1.5}"#,
        r#"{"errcode":true}"#,
        r#"{"errcode":{}}"#,
    ] {
        assert!(
            matches!(
                parse_json::<ErrcodeResponse>(body),
                Err(ResponseError::Malformed(_))
            ),
            "{body}"
        );
    }
}

#[test]
fn garbage_truncated_empty_and_non_object_bodies_are_malformed() {
    for body in [
        "",
        "   ",
        "<html>502 Bad Gateway</html>",
        r#"{"access_token":"69_abc","expires_in":72"#,
        r#"{"access_token":"69_abc""#,
        "[1,2,3]",
        "\"ok\"",
        "null",
        "7200",
        "{\"a\":1}}",
    ] {
        match parse_json::<AccessTokenResponse>(body) {
            Err(ResponseError::Malformed(detail)) => assert!(!detail.is_empty()),
            other => panic!("{body:?}: {other:?}"),
        }
    }
}

#[test]
fn success_without_an_expected_field_is_malformed_and_names_the_field() {
    let err = parse_json::<AccessTokenResponse>(r#"{"expires_in":7200}"#).unwrap_err();
    let ResponseError::Malformed(detail) = err else {
        panic!("{err:?}")
    };
    assert!(detail.contains("access_token"), "{detail}");
    let no_ticket =
        parse_response::<TicketResponse>(Endpoint::GetTicket, br#"{"errcode":0,"errmsg":"ok"}"#);
    assert!(matches!(no_ticket, Err(ResponseError::Malformed(_))));
}

#[test]
fn malformed_detail_never_echoes_a_value_from_the_body() {
    let secret = "69_TOPSECRETTOKENVALUE";
    for body in [
        format!(r#"{{"access_token":"{secret}","expires_in":"{secret}"}}"#),
        format!(r#"{{"access_token":["{secret}"],"expires_in":7200}}"#),
        format!(r#"{{"access_token":"{secret}","expires_in":7200"#),
        format!(r#"{{"access_token":"{secret}" "expires_in":7200}}"#),
        secret.to_string(),
    ] {
        let err = parse_json::<AccessTokenResponse>(&body).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(matches!(err, ResponseError::Malformed(_)), "{body}");
        assert!(!text.contains("TOPSECRET"), "{text}");
    }
    let kind = parse_response::<GetTicketQuery>(
        Endpoint::GetTicket,
        format!(r#"{{"access_token":"x","type":"{secret}"}}"#).as_bytes(),
    )
    .unwrap_err();
    assert!(!kind.to_string().contains("TOPSECRET"), "{kind}");
}

#[test]
fn unknown_fields_are_ignored_everywhere() {
    let body = json!({
        "component_access_token": "69_a", "expires_in": 7200, "new_field": {"nested": [1, 2]},
    });
    let r: ComponentTokenResponse =
        parse_response(Endpoint::ComponentToken, body.to_string().as_bytes()).unwrap();
    assert_eq!(r.component_access_token, "69_a");
    let list = json!({"total_count": 1, "list": [{"authorizer_appid": "wx1", "refresh_token": "r", "auth_time": 1, "x": 2}], "y": 3});
    let r: AuthorizerListResponse =
        parse_response(Endpoint::GetAuthorizerList, list.to_string().as_bytes()).unwrap();
    assert_eq!(r.list[0].authorizer_appid, "wx1");
    let req: StableTokenRequest = serde_json::from_value(
        json!({"grant_type": "client_credential", "appid": "wx1", "secret": "s", "extra": 1}),
    )
    .unwrap();
    assert!(!req.force_refresh);
}

// ---------------------------------------------------------------------------------------------
// Requests: WeChat's field names
// ---------------------------------------------------------------------------------------------

fn to_json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap()
}

#[test]
fn start_push_ticket_request_uses_component_secret_not_component_appsecret() {
    let req = StartPushTicketRequest {
        component_appid: "wxc1".into(),
        component_secret: "sec".into(),
    };
    assert_eq!(
        to_json(&req),
        json!({"component_appid": "wxc1", "component_secret": "sec"})
    );
}

#[test]
fn component_and_authorizer_requests_use_documented_field_names() {
    assert_eq!(
        to_json(&ComponentTokenRequest {
            component_appid: "wxc1".into(),
            component_appsecret: "sec".into(),
            component_verify_ticket: "ticket@@@t".into(),
        }),
        json!({"component_appid": "wxc1", "component_appsecret": "sec", "component_verify_ticket": "ticket@@@t"})
    );
    assert_eq!(
        to_json(&PreAuthCodeRequest {
            component_appid: "wxc1".into()
        }),
        json!({"component_appid": "wxc1"})
    );
    assert_eq!(
        to_json(&QueryAuthRequest {
            component_appid: "wxc1".into(),
            authorization_code: "queryauthcode@@@q".into()
        }),
        json!({"component_appid": "wxc1", "authorization_code": "queryauthcode@@@q"})
    );
    assert_eq!(
        to_json(&AuthorizerTokenRequest {
            component_appid: "wxc1".into(),
            authorizer_appid: "wxa1".into(),
            authorizer_refresh_token: "refreshtoken@@@r".into(),
        }),
        json!({"component_appid": "wxc1", "authorizer_appid": "wxa1", "authorizer_refresh_token": "refreshtoken@@@r"})
    );
    assert_eq!(
        to_json(&AuthorizerListRequest {
            component_appid: "wxc1".into(),
            offset: 500,
            count: 500
        }),
        json!({"component_appid": "wxc1", "offset": 500, "count": 500})
    );
    assert_eq!(
        to_json(&AuthorizerInfoRequest {
            component_appid: "wxc1".into(),
            authorizer_appid: "wxa1".into()
        }),
        json!({"component_appid": "wxc1", "authorizer_appid": "wxa1"})
    );
}

#[test]
fn stable_token_request_sends_force_refresh_and_defaults_it_to_false() {
    assert_eq!(
        to_json(&StableTokenRequest::new("wx1", "sec", false)),
        json!({"grant_type": "client_credential", "appid": "wx1", "secret": "sec", "force_refresh": false})
    );
    let parsed: StableTokenRequest = serde_json::from_value(
        json!({"grant_type": "client_credential", "appid": "wx1", "secret": "sec"}),
    )
    .unwrap();
    assert!(!parsed.force_refresh);
}

#[test]
fn quota_requests_use_documented_field_names() {
    assert_eq!(
        to_json(&ClearQuotaRequest {
            appid: "wx1".into()
        }),
        json!({"appid": "wx1"})
    );
    assert_eq!(
        to_json(&ClearQuotaV2Request {
            appid: "wx1".into(),
            appsecret: "sec".into()
        }),
        json!({"appid": "wx1", "appsecret": "sec"})
    );
    assert_eq!(
        to_json(&ComponentClearQuotaV2Request {
            component_appid: "wxc1".into(),
            appsecret: "sec".into(),
            appid: None
        }),
        json!({"component_appid": "wxc1", "appsecret": "sec"}),
        "appid omitted when not given"
    );
    assert_eq!(
        to_json(&ComponentClearQuotaV2Request {
            component_appid: "wxc1".into(),
            appsecret: "sec".into(),
            appid: Some("wxa1".into()),
        }),
        json!({"component_appid": "wxc1", "appsecret": "sec", "appid": "wxa1"})
    );
    assert_eq!(
        to_json(&ComponentClearQuotaRequest {
            component_appid: "wxc1".into()
        }),
        json!({"component_appid": "wxc1"})
    );
    assert_eq!(
        to_json(&QuotaGetRequest {
            cgi_path: "/cgi-bin/component/api_component_token".into()
        }),
        json!({"cgi_path": "/cgi-bin/component/api_component_token"})
    );
}

#[test]
fn query_structs_parse_from_real_query_strings() {
    let uri: Uri = "/cgi-bin/token?grant_type=client_credential&appid=wx1&secret=s%2B1"
        .parse()
        .unwrap();
    let Query(token) = Query::<TokenQuery>::try_from_uri(&uri).unwrap();
    assert_eq!(
        (
            token.grant_type.as_str(),
            token.appid.as_str(),
            token.secret.as_str()
        ),
        ("client_credential", "wx1", "s+1")
    );

    let uri: Uri = "/cgi-bin/ticket/getticket?access_token=69_a&type=wx_card"
        .parse()
        .unwrap();
    let Query(ticket) = Query::<GetTicketQuery>::try_from_uri(&uri).unwrap();
    assert_eq!(
        (ticket.access_token.as_str(), ticket.kind),
        ("69_a", TicketKind::WxCard)
    );

    let uri: Uri = "/x?component_access_token=69_c".parse().unwrap();
    let Query(c) = Query::<ComponentAccessTokenQuery>::try_from_uri(&uri).unwrap();
    assert_eq!(c.component_access_token, "69_c");

    let uri: Uri = "/x?access_token=69_d".parse().unwrap();
    let Query(a) = Query::<AccessTokenQuery>::try_from_uri(&uri).unwrap();
    assert_eq!(a.access_token, "69_d");

    let uri: Uri = "/cgi-bin/clear_quota/v2?appid=wx1&appsecret=sec"
        .parse()
        .unwrap();
    let Query(v2) = Query::<ClearQuotaV2Request>::try_from_uri(&uri).unwrap();
    assert_eq!(v2.appsecret, "sec");
}

#[test]
fn ticket_kinds_use_wechat_type_names() {
    assert_eq!(TicketKind::Jsapi.as_str(), "jsapi");
    assert_eq!(TicketKind::WxCard.as_str(), "wx_card");
    assert_eq!(to_json(&TicketKind::WxCard), json!("wx_card"));
    assert_eq!(
        to_json(&GetTicketQuery {
            access_token: "69_a".into(),
            kind: TicketKind::Jsapi
        }),
        json!({"access_token": "69_a", "type": "jsapi"})
    );
}

#[test]
fn endpoints_have_documented_methods_and_paths() {
    let expect = [
        (
            Endpoint::StartPushTicket,
            "POST",
            "/cgi-bin/component/api_start_push_ticket",
            EndpointAuth::Secret,
        ),
        (
            Endpoint::ComponentToken,
            "POST",
            "/cgi-bin/component/api_component_token",
            EndpointAuth::Secret,
        ),
        (
            Endpoint::CreatePreauthcode,
            "POST",
            "/cgi-bin/component/api_create_preauthcode",
            EndpointAuth::ComponentAccessToken,
        ),
        (
            Endpoint::QueryAuth,
            "POST",
            "/cgi-bin/component/api_query_auth",
            EndpointAuth::ComponentAccessToken,
        ),
        (
            Endpoint::AuthorizerToken,
            "POST",
            "/cgi-bin/component/api_authorizer_token",
            EndpointAuth::ComponentAccessToken,
        ),
        (
            Endpoint::GetAuthorizerList,
            "POST",
            "/cgi-bin/component/api_get_authorizer_list",
            EndpointAuth::ComponentAccessToken,
        ),
        (
            Endpoint::GetAuthorizerInfo,
            "POST",
            "/cgi-bin/component/api_get_authorizer_info",
            EndpointAuth::ComponentAccessToken,
        ),
        (
            Endpoint::Token,
            "GET",
            "/cgi-bin/token",
            EndpointAuth::Secret,
        ),
        (
            Endpoint::StableToken,
            "POST",
            "/cgi-bin/stable_token",
            EndpointAuth::Secret,
        ),
        (
            Endpoint::GetTicket,
            "GET",
            "/cgi-bin/ticket/getticket",
            EndpointAuth::AccessToken,
        ),
        (
            Endpoint::ClearQuota,
            "POST",
            "/cgi-bin/clear_quota",
            EndpointAuth::AccessToken,
        ),
        (
            Endpoint::ClearQuotaV2,
            "POST",
            "/cgi-bin/clear_quota/v2",
            EndpointAuth::Secret,
        ),
        (
            Endpoint::ComponentClearQuotaV2,
            "POST",
            "/cgi-bin/component/clear_quota/v2",
            EndpointAuth::Secret,
        ),
        (
            Endpoint::ComponentClearQuota,
            "POST",
            "/cgi-bin/component/clear_quota",
            EndpointAuth::ComponentAccessToken,
        ),
        (
            Endpoint::QuotaGet,
            "POST",
            "/cgi-bin/openapi/quota/get",
            EndpointAuth::AccessToken,
        ),
        (
            Endpoint::GetCallbackIp,
            "GET",
            "/cgi-bin/getcallbackip",
            EndpointAuth::AccessToken,
        ),
    ];
    assert_eq!(expect.len(), Endpoint::ALL.len());
    for (endpoint, method, path, auth) in expect {
        assert_eq!(endpoint.method().as_str(), method, "{endpoint}");
        assert_eq!(endpoint.path(), path, "{endpoint}");
        assert_eq!(endpoint.auth(), auth, "{endpoint}");
        assert_eq!(
            endpoint.is_component_api(),
            path.starts_with("/cgi-bin/component/")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Redaction
// ---------------------------------------------------------------------------------------------

const SECRET: &str = "S3CRET-VALUE-0123456789";

fn assert_redacted(value: &dyn Debug) {
    for text in [format!("{value:?}"), format!("{value:#?}")] {
        assert!(!text.contains(SECRET), "leaked: {text}");
        assert!(text.contains("<redacted 23 bytes>"), "no marker: {text}");
    }
}

#[test]
fn debug_of_every_secret_bearing_type_redacts_the_secret() {
    let s = || SECRET.to_owned();
    assert_redacted(&ComponentAccessTokenQuery {
        component_access_token: s(),
    });
    assert_redacted(&AccessTokenQuery { access_token: s() });
    assert_redacted(&StartPushTicketRequest {
        component_appid: "wxc1".into(),
        component_secret: s(),
    });
    assert_redacted(&ComponentTokenRequest {
        component_appid: "wxc1".into(),
        component_appsecret: s(),
        component_verify_ticket: s(),
    });
    assert_redacted(&QueryAuthRequest {
        component_appid: "wxc1".into(),
        authorization_code: s(),
    });
    assert_redacted(&AuthorizerTokenRequest {
        component_appid: "wxc1".into(),
        authorizer_appid: "wxa1".into(),
        authorizer_refresh_token: s(),
    });
    assert_redacted(&TokenQuery::new("wx1", SECRET));
    assert_redacted(&StableTokenRequest::new("wx1", SECRET, true));
    assert_redacted(&GetTicketQuery {
        access_token: s(),
        kind: TicketKind::Jsapi,
    });
    assert_redacted(&ClearQuotaV2Request {
        appid: "wx1".into(),
        appsecret: s(),
    });
    assert_redacted(&ComponentClearQuotaV2Request {
        component_appid: "wxc1".into(),
        appsecret: s(),
        appid: None,
    });
    assert_redacted(&ComponentTokenResponse {
        component_access_token: s(),
        expires_in: 7200,
    });
    assert_redacted(&PreAuthCodeResponse {
        pre_auth_code: s(),
        expires_in: 600,
    });
    let info = AuthorizationInfo {
        authorizer_appid: "wxa1".into(),
        authorizer_access_token: Some(s()),
        expires_in: Some(7200),
        authorizer_refresh_token: Some(s()),
        func_info: vec![FuncInfo::new(1)],
    };
    assert_redacted(&info);
    assert_redacted(&QueryAuthResponse {
        authorization_info: info.clone(),
    });
    assert_redacted(&AuthorizerInfoResponse {
        authorization_info: Some(info),
        ..Default::default()
    });
    assert_redacted(&AuthorizerTokenResponse {
        authorizer_access_token: s(),
        expires_in: 7200,
        authorizer_refresh_token: Some(s()),
    });
    let item = AuthorizerListItem {
        authorizer_appid: "wxa1".into(),
        refresh_token: Some(s()),
        auth_time: 1,
    };
    assert_redacted(&item);
    assert_redacted(&AuthorizerListResponse {
        total_count: 1,
        list: vec![item],
    });
    assert_redacted(&AccessTokenResponse {
        access_token: s(),
        expires_in: 7200,
    });
    assert_redacted(&TicketResponse::new(SECRET, 7200));
}

#[test]
fn debug_keeps_non_secret_fields_readable() {
    let text = format!(
        "{:?}",
        AuthorizerTokenRequest {
            component_appid: "wxc1".into(),
            authorizer_appid: "wxa1".into(),
            authorizer_refresh_token: SECRET.into(),
        }
    );
    assert!(text.contains("wxc1") && text.contains("wxa1"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// errmsg and rid helpers
// ---------------------------------------------------------------------------------------------

#[test]
fn errmsg_with_rid_uses_wechats_current_form() {
    let rid = format_rid(0x61b2c8e7, 0x5746986a, 0x4c6edd06);
    assert_eq!(rid, "61b2c8e7-5746986a-4c6edd06");
    assert_eq!(format_rid(0, 1, 0xffff_ffff), "00000000-00000001-ffffffff");
    let msg = errmsg_with_rid("refresh_token is invalid", &rid);
    assert_eq!(
        msg,
        "refresh_token is invalid rid: 61b2c8e7-5746986a-4c6edd06"
    );
    let api = ApiError::new(61023, msg);
    assert_eq!(api.rid(), Some("61b2c8e7-5746986a-4c6edd06"));
    assert_eq!(
        serde_json::to_value(&api).unwrap(),
        json!({"errcode": 61023, "errmsg": "refresh_token is invalid rid: 61b2c8e7-5746986a-4c6edd06"})
    );
    assert_eq!(ApiError::new(-1, "system error").rid(), None);
    assert_eq!(
        ApiError::new(48001, "api unauthorized, rid: 0a0b0c0d-01020304-aabbccdd").rid(),
        Some("0a0b0c0d-01020304-aabbccdd")
    );
}

// ---------------------------------------------------------------------------------------------
// Robustness
// ---------------------------------------------------------------------------------------------

proptest::proptest! {
    #[test]
    fn parse_response_never_panics_on_arbitrary_bytes(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
        let _ = parse_response::<AuthorizerInfoResponse>(Endpoint::GetAuthorizerInfo, &body);
        let _ = parse_response::<ErrcodeResponse>(Endpoint::ClearQuota, &body);
    }

    #[test]
    fn any_nonzero_errcode_is_an_api_error(code in proptest::prelude::any::<i64>().prop_filter("non-zero", |c| *c != 0), msg in ".{0,40}") {
        let body = serde_json::to_vec(&json!({"errcode": code, "errmsg": msg, "access_token": "69_a", "expires_in": 1})).unwrap();
        let err = parse_response::<AccessTokenResponse>(Endpoint::Token, &body).unwrap_err();
        proptest::prop_assert_eq!(err, ResponseError::Api(ApiError::new(code, msg)));
    }
}
