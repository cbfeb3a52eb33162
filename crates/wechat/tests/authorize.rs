//! authorize: PC and mobile authorization-page URLs (section 3.4) and the redirect back (3.5).

use std::collections::HashMap;

use url::Url;
use wechat::authorize::*;

fn params<'a>(redirect_uri: &'a str) -> AuthorizeParams<'a> {
    AuthorizeParams {
        component_appid: "wx1c2e3f4a5b6c7d8e",
        pre_auth_code: "preauthcode@@@abc-DEF_123",
        redirect_uri,
        auth_type: None,
        biz_appid: None,
    }
}

fn query_of(url: &str) -> (Url, Vec<(String, String)>) {
    let url = Url::parse(url).unwrap();
    let pairs = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    (url, pairs)
}

fn as_map(pairs: &[(String, String)]) -> HashMap<&str, &str> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[test]
fn pc_url_targets_componentloginpage_with_the_documented_parameters() {
    let url =
        AuthorizePages::default().pc_url(&params("https://saas.example.com/authorize/callback"));
    assert_eq!(
        url,
        "https://mp.weixin.qq.com/cgi-bin/componentloginpage?component_appid=wx1c2e3f4a5b6c7d8e\
         &pre_auth_code=preauthcode%40%40%40abc-DEF_123\
         &redirect_uri=https%3A%2F%2Fsaas.example.com%2Fauthorize%2Fcallback"
    );
}

#[test]
fn mobile_url_targets_bindcomponent_with_action_no_scan_and_wechat_redirect_fragment() {
    let url = AuthorizePages::default().mobile_url(&params("https://saas.example.com/cb"));
    assert!(
        url.starts_with(
            "https://open.weixin.qq.com/wxaopen/safe/bindcomponent?action=bindcomponent&no_scan=1&component_appid="
        ),
        "{url}"
    );
    assert!(url.ends_with("#wechat_redirect"), "{url}");
    let (parsed, pairs) = query_of(&url);
    assert_eq!(parsed.fragment(), Some("wechat_redirect"));
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "action",
            "no_scan",
            "component_appid",
            "pre_auth_code",
            "redirect_uri"
        ]
    );
}

#[test]
fn redirect_uri_with_its_own_query_round_trips_through_both_pages() {
    let redirect = "https://saas.example.com/cb?a=1&b=2&c=x y+z/é#frag";
    for url in [
        AuthorizePages::default().pc_url(&params(redirect)),
        AuthorizePages::default().mobile_url(&params(redirect)),
    ] {
        let (_, pairs) = query_of(&url);
        let map = as_map(&pairs);
        assert_eq!(map["redirect_uri"], redirect, "{url}");
        assert!(
            !map.contains_key("b"),
            "the redirect's own parameters stay inside it: {url}"
        );
        assert_eq!(map["pre_auth_code"], "preauthcode@@@abc-DEF_123");
        assert!(
            !url.contains('+'),
            "spaces are %20 and plus signs %2B, never a bare +: {url}"
        );
        assert!(
            url.contains("%20")
                && url.contains("%2B")
                && url.contains("%3F")
                && url.contains("%26")
        );
    }
}

#[test]
fn auth_type_is_sent_as_its_number() {
    for (auth_type, code) in [
        (AuthType::OfficialAccount, "1"),
        (AuthType::MiniProgram, "2"),
        (AuthType::Both, "3"),
    ] {
        let p = AuthorizeParams {
            auth_type: Some(auth_type),
            ..params("https://x.example/cb")
        };
        let (_, pairs) = query_of(&AuthorizePages::default().pc_url(&p));
        assert_eq!(as_map(&pairs)["auth_type"], code);
        assert_eq!(AuthType::from_code(auth_type.code()), Some(auth_type));
    }
    assert_eq!(AuthType::from_code(4), None);
}

#[test]
fn biz_appid_wins_over_auth_type() {
    let p = AuthorizeParams {
        auth_type: Some(AuthType::MiniProgram),
        biz_appid: Some("wxa9b8c7d6e5f4a3b2"),
        ..params("https://x.example/cb")
    };
    for url in [
        AuthorizePages::default().pc_url(&p),
        AuthorizePages::default().mobile_url(&p),
    ] {
        let (_, pairs) = query_of(&url);
        let map = as_map(&pairs);
        assert_eq!(map.get("biz_appid"), Some(&"wxa9b8c7d6e5f4a3b2"), "{url}");
        assert!(!map.contains_key("auth_type"), "{url}");
    }
}

#[test]
fn empty_biz_appid_is_ignored_and_auth_type_applies() {
    let p = AuthorizeParams {
        auth_type: Some(AuthType::Both),
        biz_appid: Some(""),
        ..params("https://x.example/cb")
    };
    let (_, pairs) = query_of(&AuthorizePages::default().pc_url(&p));
    let map = as_map(&pairs);
    assert!(!map.contains_key("biz_appid"));
    assert_eq!(map["auth_type"], "3");
}

#[test]
fn neither_auth_type_nor_biz_appid_means_both_kinds_by_omission() {
    let (_, pairs) = query_of(&AuthorizePages::default().pc_url(&params("https://x.example/cb")));
    let map = as_map(&pairs);
    assert!(!map.contains_key("auth_type") && !map.contains_key("biz_appid"));
}

#[test]
fn pages_at_another_base_keep_the_paths_and_any_prefix() {
    let sim = AuthorizePages::at(&Url::parse("http://127.0.0.1:4010").unwrap());
    assert_eq!(
        sim.pc.as_str(),
        "http://127.0.0.1:4010/cgi-bin/componentloginpage"
    );
    assert_eq!(
        sim.mobile.as_str(),
        "http://127.0.0.1:4010/wxaopen/safe/bindcomponent"
    );
    let prefixed = AuthorizePages::at(&Url::parse("http://sim.local/wechat/?x=1#y").unwrap());
    assert_eq!(
        prefixed.pc.as_str(),
        "http://sim.local/wechat/cgi-bin/componentloginpage"
    );
    let url = prefixed.mobile_url(&params("https://x.example/cb"));
    assert!(url.starts_with(
        "http://sim.local/wechat/wxaopen/safe/bindcomponent?action=bindcomponent&no_scan=1&"
    ));
}

#[test]
fn default_pages_are_wechats() {
    let pages = AuthorizePages::default();
    assert_eq!(pages.pc.as_str(), DEFAULT_PC_URL);
    assert_eq!(pages.mobile.as_str(), DEFAULT_MOBILE_URL);
}

#[test]
fn redirect_back_appends_auth_code_and_expires_in_to_the_existing_query() {
    let url = redirect_back_url(
        "https://saas.example.com/cb?a=1&b=2",
        "queryauthcode@@@Q+1",
        600,
    )
    .unwrap();
    let (_, pairs) = query_of(url.as_str());
    let map = as_map(&pairs);
    assert_eq!((map["a"], map["b"]), ("1", "2"));
    assert_eq!(map["auth_code"], "queryauthcode@@@Q+1");
    assert_eq!(map["expires_in"], "600");
    let uri: axum::http::Uri = url.as_str().parse().unwrap();
    let axum::extract::Query(callback) =
        axum::extract::Query::<AuthorizeCallback>::try_from_uri(&uri).unwrap();
    assert_eq!(callback.auth_code, "queryauthcode@@@Q+1");
    assert_eq!(callback.expires_in, Some(600));
    assert!(redirect_back_url("not a url", "c", 1).is_err());
}

#[test]
fn debug_of_params_and_callback_redacts_the_codes() {
    let p = params("https://x.example/cb");
    let text = format!("{p:?}");
    assert!(!text.contains("preauthcode@@@"), "{text}");
    assert!(text.contains("wx1c2e3f4a5b6c7d8e"));
    let callback = AuthorizeCallback {
        auth_code: "queryauthcode@@@secret".into(),
        expires_in: Some(600),
    };
    assert!(!format!("{callback:?}").contains("queryauthcode@@@"));
}

#[test]
fn escape_html_makes_text_and_attributes_inert() {
    assert_eq!(
        wechat::authorize::escape_html(r#"<a href="x">&'"#),
        "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
    );
}
