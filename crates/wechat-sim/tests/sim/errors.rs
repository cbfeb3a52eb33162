//! Bad input gets WeChat's own errcode with HTTP 200 and a rid, never a framework error.

use wechat_sim::Api;

use crate::helpers::TestSim;

fn assert_errmsg_has_rid(v: &serde_json::Value) {
    let msg = v["errmsg"].as_str().unwrap();
    let rid = msg.rsplit(" rid: ").next().unwrap();
    let groups: Vec<_> = rid.split('-').collect();
    assert_eq!(groups.len(), 3, "{msg}");
    assert!(
        groups
            .iter()
            .all(|g| g.len() == 8 && g.chars().all(|c| c.is_ascii_hexdigit())),
        "{msg}"
    );
}

#[tokio::test]
async fn get_on_a_post_api_gets_43002() {
    let t = TestSim::start().await;
    for api in Api::ALL.into_iter().filter(|a| !a.is_get()) {
        let r = t.http.get(t.url(api.path())).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["errcode"], 43002, "{}", api.name());
        assert_errmsg_has_rid(&v);
    }
}

#[tokio::test]
async fn empty_and_malformed_bodies_get_44002_and_47001() {
    let t = TestSim::start().await;
    for path in [
        "/cgi-bin/component/api_component_token",
        "/cgi-bin/stable_token",
        "/cgi-bin/component/api_start_push_ticket",
    ] {
        assert_eq!(t.post_raw(path, "").await["errcode"], 44002, "{path}");
        assert_eq!(
            t.post_raw(path, "{\"component_appid\":").await["errcode"],
            47001,
            "{path}"
        );
        assert_eq!(t.post_raw(path, "[1,2]").await["errcode"], 47001, "{path}");
        assert_eq!(t.post_raw(path, "<xml/>").await["errcode"], 47001, "{path}");
    }
}

#[tokio::test]
async fn component_apis_without_a_token_get_41001() {
    let t = TestSim::start().await;
    let c = t.component();
    for api in Api::ALL.into_iter().filter(|a| {
        a.path().starts_with("/cgi-bin/component/")
            && !matches!(
                a,
                Api::ComponentToken | Api::StartPushTicket | Api::ComponentClearQuotaV2
            )
    }) {
        let v = t
            .post_json(
                api.path(),
                serde_json::json!({"component_appid": c.component_appid}),
            )
            .await;
        assert_eq!(v["errcode"], 41001, "{}", api.name());
    }
    for path in ["/cgi-bin/clear_quota", "/cgi-bin/openapi/quota/get"] {
        assert_eq!(
            t.post_json(path, serde_json::json!({})).await["errcode"],
            41001,
            "{path}"
        );
    }
    assert_eq!(
        t.get_json("/cgi-bin/ticket/getticket?type=jsapi").await["errcode"],
        41001
    );
}

#[tokio::test]
async fn missing_fields_get_their_specific_errcodes() {
    let t = TestSim::start().await;
    let c = t.component();
    let ct = t.component_token(&c).await;
    let q = |api: Api| format!("{}?component_access_token={ct}", api.path());
    let v = t
        .post_json(&q(Api::CreatePreauthcode), serde_json::json!({"x": 1}))
        .await;
    assert_eq!(v["errcode"], 41018);
    let v = t
        .post_json(
            &q(Api::QueryAuth),
            serde_json::json!({"component_appid": c.component_appid}),
        )
        .await;
    assert_eq!(v["errcode"], 61009);
    let v = t
        .post_json(
            &q(Api::GetAuthorizerInfo),
            serde_json::json!({"component_appid": c.component_appid}),
        )
        .await;
    assert_eq!(v["errcode"], 41002);
    let v = t
        .post_json(
            "/cgi-bin/component/api_component_token",
            serde_json::json!({"component_appid": c.component_appid}),
        )
        .await;
    assert_eq!(v["errcode"], 41004);
    let v = t
        .get_json("/cgi-bin/token?grant_type=client_credential")
        .await;
    assert_eq!(v["errcode"], 41002);
}

#[tokio::test]
async fn numbers_and_strings_are_accepted_leniently_where_wechat_does() {
    let t = TestSim::start().await;
    let c = t.component();
    let ct = t.component_token(&c).await;
    let path = format!("/cgi-bin/component/api_get_authorizer_list?component_access_token={ct}");
    let v = t
        .post_json(
            &path,
            serde_json::json!({"component_appid": c.component_appid, "offset": "0", "count": "10"}),
        )
        .await;
    assert_eq!(v["total_count"], 0);
    let v = t
        .post_json(
            &path,
            serde_json::json!({"component_appid": c.component_appid, "offset": 0, "count": "many"}),
        )
        .await;
    assert_eq!(v["errcode"], 40097);
}

#[tokio::test]
async fn arbitrary_bodies_never_crash_the_simulator() {
    let t = TestSim::start().await;
    let bodies: [&'static str; 8] = [
        "null",
        "0",
        "\"x\"",
        "{\"component_appid\":null}",
        "{\"component_appid\":[1]}",
        "{\"force_refresh\":{}}",
        "\u{0}\u{1}",
        "{\"count\":1e309}",
    ];
    for api in Api::ALL {
        for body in bodies {
            let r = t
                .http
                .post(t.url(&format!(
                    "{}?access_token=x&component_access_token=y",
                    api.path()
                )))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{} {body}", api.name());
            let v: serde_json::Value = r.json().await.unwrap();
            assert!(
                v["errcode"].as_i64().unwrap() != 0,
                "{} {body}: {v}",
                api.name()
            );
        }
    }
}
