//! The control API over HTTP: its JSON contract, stats, validation, clock, bulk creation, errors;
//! and the check that every endpoint of `wechat::wire` is served.

use wechat::wire::Endpoint;
use wechat_sim::{Api, BulkAuthorizer, StatsSnapshot, Validation};

use crate::helpers::TestSim;

#[tokio::test]
async fn every_wire_endpoint_is_served_at_its_path_with_its_method_and_name() {
    for e in Endpoint::ALL {
        let api = Api::from_name(e.path()).unwrap_or_else(|| panic!("{} not served", e.path()));
        assert_eq!(api.name(), e.name());
        assert_eq!(
            api.is_get(),
            matches!(e.method(), wechat::wire::HttpMethod::Get),
            "{}",
            e.name()
        );
    }
    // Beyond wxtoken's own endpoints, business APIs the gateway forwards (token-checked).
    let business = [Api::CustomSend, Api::MediaUpload, Api::MediaGet];
    for api in business {
        assert!(Endpoint::ALL.iter().all(|e| e.path() != api.path()));
    }
    assert_eq!(Endpoint::ALL.len() + business.len(), Api::ALL.len());
}

#[tokio::test]
async fn components_and_accounts_are_created_with_generated_or_given_values() {
    let t = TestSim::start().await;
    let r = t.http.post(t.url("/_sim/components")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let c: serde_json::Value = r.json().await.unwrap();
    assert!(c["component_appid"].as_str().unwrap().starts_with("wx"));
    assert_eq!(c["encoding_aes_key"].as_str().unwrap().len(), 43);
    assert!(
        c["latest_ticket"]
            .as_str()
            .unwrap()
            .starts_with("ticket@@@")
    );

    let given = serde_json::json!({"component_appid": "wxcomponent000001", "component_appsecret": "s3cret", "token": "tok", "encoding_aes_key": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"});
    let c = t.post_json("/_sim/components", given.clone()).await;
    assert_eq!(c["component_appsecret"], "s3cret");
    let r = t
        .http
        .post(t.url("/_sim/components"))
        .json(&given)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "conflict");
    let bad = serde_json::json!({"encoding_aes_key": "short"});
    assert_eq!(
        t.http
            .post(t.url("/_sim/components"))
            .json(&bad)
            .send()
            .await
            .unwrap()
            .status(),
        400
    );

    let a = t.post_json("/_sim/accounts", serde_json::json!({"kind": "mini_program", "appid": "wxminiprogram0001", "appsecret": "mp"})).await;
    assert_eq!(
        (
            a["appid"].as_str(),
            a["appsecret"].as_str(),
            a["kind"].as_str()
        ),
        (Some("wxminiprogram0001"), Some("mp"), Some("mini_program"))
    );
    assert!(a["user_name"].as_str().unwrap().starts_with("gh_"));
    let r = t
        .http
        .post(t.url("/_sim/accounts"))
        .json(&serde_json::json!({"kind": "robot"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let got = t.get_json("/_sim/accounts/wxminiprogram0001").await;
    assert_eq!(got, a);
    assert_eq!(
        t.http
            .get(t.url("/_sim/accounts/wxnope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let listed = t.get_json("/_sim/accounts?kind=mini_program").await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn authorize_and_unauthorize_over_http_and_the_authorizer_view_matches() {
    let t = TestSim::start().await;
    let c = t.component();
    let a = t.oa();
    let out = t
        .post_json(
            &format!("/_sim/accounts/{}/authorize", a.appid),
            serde_json::json!({"component_appid": c.component_appid}),
        )
        .await;
    assert_eq!(out["info_type"], "authorized");
    let ct = t.component_token(&c).await;
    let code = out["authorization_code"].as_str().unwrap();
    let info =
        t.wx.query_auth(&ct, &c.component_appid, code)
            .await
            .unwrap()
            .authorization_info;
    let view = t
        .get_json(&format!(
            "/_sim/authorizers/{}/{}",
            c.component_appid, a.appid
        ))
        .await;
    assert_eq!(
        view["refresh_token"].as_str(),
        info.authorizer_refresh_token.as_deref()
    );
    assert_eq!(view["status"], "authorized");
    assert_eq!(view["refresh_token_exchanged"], true);
    assert_eq!(view["access_token_generation"], 1);

    let out = t
        .post_json(
            &format!("/_sim/accounts/{}/unauthorize", a.appid),
            serde_json::json!({"component_appid": c.component_appid}),
        )
        .await;
    assert_eq!(out["info_type"], "unauthorized");
    let r = t
        .http
        .post(t.url(&format!("/_sim/accounts/{}/unauthorize", a.appid)))
        .json(&serde_json::json!({"component_appid": c.component_appid}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = t
        .http
        .post(t.url(&format!("/_sim/accounts/{}/authorize", a.appid)))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = t
        .http
        .post(t.url("/_sim/accounts/wxnope/authorize"))
        .json(&serde_json::json!({"component_appid": c.component_appid}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn stats_count_calls_per_endpoint_and_appid_and_errors_and_reset() {
    let t = TestSim::start().await;
    let a = t.oa();
    t.wx.token(&a.appid, &a.appsecret).await.unwrap();
    t.wx.token(&a.appid, &a.appsecret).await.unwrap();
    let _ = t.wx.token(&a.appid, "bad").await;
    let s: StatsSnapshot = t
        .http
        .get(t.url("/_sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s.calls(Api::Token), 3);
    assert_eq!(s.endpoints["token"].ok, 2);
    assert_eq!(s.errors(Api::Token, 40125), 1);
    assert_eq!(s.calls_for(&a.appid, Api::Token), 3);
    assert_eq!(s.total_calls, 3);
    let filtered: StatsSnapshot = t
        .http
        .get(t.url(&format!("/_sim/stats?appid={}", a.appid)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(filtered.appids.len(), 1);
    assert_eq!(
        t.http
            .post(t.url("/_sim/stats/reset"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let s = t.sim.control().stats();
    assert_eq!(s.total_calls, 0);
    assert!(s.appids.is_empty());
}

#[tokio::test]
async fn validate_reports_validity_reason_kind_and_owner_for_every_token_kind() {
    let t = TestSim::start().await;
    let c = t.component();
    let a = t.oa();
    let ct = t.component_token(&c).await;
    let (at, _) = t.authorized(&c, &a, &ct).await;
    let direct =
        t.wx.token(&a.appid, &a.appsecret)
            .await
            .unwrap()
            .access_token;
    let stable =
        t.wx.stable_token(&a.appid, &a.appsecret, false)
            .await
            .unwrap()
            .access_token;
    let check = |tok: &str| {
        let url = t.url(&format!(
            "/_sim/validate?access_token={}",
            url::form_urlencoded::byte_serialize(tok.as_bytes()).collect::<String>()
        ));
        let http = t.http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<Validation>()
                .await
                .unwrap()
        }
    };
    let v = check(&ct).await;
    assert!(v.valid);
    assert_eq!(
        (v.kind, v.appid.as_deref(), v.component_appid.as_deref()),
        (
            Some(wechat_sim::TokenKind::Component),
            Some(c.component_appid.as_str()),
            Some(c.component_appid.as_str())
        )
    );
    let v = check(&at).await;
    assert_eq!(
        (v.kind, v.appid.as_deref(), v.component_appid.as_deref()),
        (
            Some(wechat_sim::TokenKind::Authorizer),
            Some(a.appid.as_str()),
            Some(c.component_appid.as_str())
        )
    );
    assert!(
        matches!(v.expires_in, Some(7199..=7200)),
        "{:?}",
        v.expires_in
    );
    assert_eq!(
        check(&direct).await.kind,
        Some(wechat_sim::TokenKind::Direct)
    );
    assert_eq!(
        check(&stable).await.kind,
        Some(wechat_sim::TokenKind::Stable)
    );
    let v = check("garbage").await;
    assert_eq!(
        (v.valid, v.reason.as_str(), v.errcode, v.kind),
        (false, "unknown", 40014, None)
    );
    t.sim
        .control()
        .advance_clock(std::time::Duration::from_secs(7201));
    let v = check(&direct).await;
    assert_eq!(
        (v.valid, v.reason.as_str(), v.errcode),
        (false, "expired", 42001)
    );
}

#[tokio::test]
async fn the_clock_advances_over_http() {
    let t = TestSim::start().await;
    let before = t.get_json("/_sim/clock").await["now"].as_i64().unwrap();
    let after = t
        .post_json("/_sim/clock/advance", serde_json::json!({"seconds": 3600}))
        .await;
    assert!(after["now"].as_i64().unwrap() >= before + 3600);
    assert_eq!(after["offset_seconds"], 3600);
}

#[tokio::test]
async fn an_absurd_clock_advance_is_refused_and_the_simulator_keeps_answering() {
    let t = TestSim::start().await;
    let refused = t
        .post_json(
            "/_sim/clock/advance",
            serde_json::json!({"seconds": 9_200_000_000_000_000u64}),
        )
        .await;
    assert_eq!(refused["error"]["code"], "invalid_request", "{refused}");
    assert_eq!(t.get_json("/_sim/clock").await["offset_seconds"], 0);
    let c = t.component();
    let token =
        t.wx.component_token(
            &c.component_appid,
            &c.component_appsecret,
            c.latest_ticket
                .as_deref()
                .expect("a new component has a ticket"),
        )
        .await;
    assert!(token.is_ok(), "{token:?}");
}

#[tokio::test]
async fn tickets_can_be_pushed_on_demand_for_one_or_all_components() {
    let t = TestSim::start().await;
    let c1 = t.component();
    let c2 = t.component();
    let r = t
        .post_json(
            "/_sim/tickets/push",
            serde_json::json!({"component_appid": c1.component_appid}),
        )
        .await;
    let ticket = r["tickets"][0]["ticket"].as_str().unwrap();
    assert_eq!(
        t.sim.control().latest_ticket(&c1.component_appid).unwrap(),
        ticket
    );
    let r = t
        .http
        .post(t.url("/_sim/tickets/push"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(r["tickets"].as_array().unwrap().len(), 2);
    assert_ne!(
        t.sim.control().latest_ticket(&c2.component_appid).unwrap(),
        c2.latest_ticket.unwrap()
    );
}

#[tokio::test]
async fn bulk_authorizers_come_back_as_json_lines_of_working_refresh_tokens() {
    let t = TestSim::start().await;
    let c = t.component();
    let r = t.http.post(t.url("/_sim/bulk/authorizers")).json(&serde_json::json!({"component_appid": c.component_appid, "count": 50, "kind": "mini_program"})).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    let lines: Vec<BulkAuthorizer> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 50);
    let ct = t.component_token(&c).await;
    for b in &lines[..3] {
        t.wx.authorizer_token(
            &ct,
            &c.component_appid,
            &b.authorizer_appid,
            &b.authorizer_refresh_token,
        )
        .await
        .unwrap();
    }
    assert_eq!(
        t.sim
            .control()
            .component(&c.component_appid)
            .unwrap()
            .authorizer_count,
        50
    );
}

#[tokio::test]
async fn the_summary_lists_endpoints_and_control_routes() {
    let t = TestSim::start().await;
    let s = t.get_json("/_sim").await;
    assert_eq!(s["endpoints"].as_array().unwrap().len(), Api::ALL.len());
    assert!(s["control"].as_str().unwrap().contains("/_sim/faults"));
}

#[tokio::test]
async fn an_initial_component_from_the_config_exists_at_start() {
    let t = TestSim::with(|c| {
        c.component = Some(wechat_sim::ComponentSpec {
            component_appid: Some("wxinitialcomponent".into()),
            ..Default::default()
        })
    })
    .await;
    assert_eq!(
        t.sim.initial_component().unwrap().component_appid,
        "wxinitialcomponent"
    );
    t.sim.control().component("wxinitialcomponent").unwrap();
}

#[tokio::test]
async fn shutdown_stops_the_server_and_the_push_tasks() {
    let t = TestSim::start().await;
    let c = t.component();
    let url = t.url("/_sim");
    let http = t.http.clone();
    let _ = c;
    t.sim.shutdown().await;
    assert!(http.get(url).send().await.is_err());
}
