//! Daily quotas (45009), clear_quota in all its variants (10 a month, then 48006), quota/get.

use std::time::Duration;

use crate::helpers::{TestSim, errcode};

#[tokio::test]
async fn the_daily_quota_gives_45009_and_clear_quota_resets_it() {
    let t = TestSim::with(|c| {
        c.quota.daily.insert("token".into(), 3);
    })
    .await;
    let a = t.oa();
    for _ in 0..3 {
        t.wx.token(&a.appid, &a.appsecret).await.unwrap();
    }
    assert_eq!(errcode(t.wx.token(&a.appid, &a.appsecret).await), 45009);
    t.wx.clear_quota_v2(&a.appid, &a.appsecret).await.unwrap();
    let tok =
        t.wx.token(&a.appid, &a.appsecret)
            .await
            .unwrap()
            .access_token;
    let q = t.wx.quota_get(&tok, "/cgi-bin/token").await.unwrap();
    assert_eq!(
        (q.quota.daily_limit, q.quota.used, q.quota.remain),
        (3, 1, 2)
    );
    // clear_quota with the account's own token resets it too.
    t.wx.token(&a.appid, &a.appsecret).await.unwrap();
    t.wx.token(&a.appid, &a.appsecret).await.unwrap();
    assert_eq!(errcode(t.wx.token(&a.appid, &a.appsecret).await), 45009);
    t.wx.clear_quota(&tok, &a.appid).await.unwrap();
    t.wx.token(&a.appid, &a.appsecret).await.unwrap();
}

#[tokio::test]
async fn quotas_are_per_appid_and_reset_the_next_day() {
    let t = TestSim::with(|c| {
        c.quota.daily.insert("api_authorizer_token".into(), 2);
    })
    .await;
    let c = t.component();
    let (a, b) = (t.oa(), t.oa());
    let ct = t.component_token(&c).await;
    let (_, ra) = t.authorized(&c, &a, &ct).await;
    let (_, rb) = t.authorized(&c, &b, &ct).await;
    let cid = &c.component_appid;
    for _ in 0..2 {
        t.wx.authorizer_token(&ct, cid, &a.appid, &ra)
            .await
            .unwrap();
    }
    assert_eq!(
        errcode(t.wx.authorizer_token(&ct, cid, &a.appid, &ra).await),
        45009
    );
    t.wx.authorizer_token(&ct, cid, &b.appid, &rb)
        .await
        .unwrap();
    t.sim.control().advance_clock(Duration::from_secs(86_400));
    // A day later the ticket has expired too; take a fresh one.
    t.sim.control().push_ticket(Some(cid)).unwrap();
    let ct = t.component_token(&c).await;
    t.wx.authorizer_token(&ct, cid, &a.appid, &ra)
        .await
        .unwrap();
}

#[tokio::test]
async fn clear_quota_is_limited_per_month_then_gets_48006() {
    let t = TestSim::with(|c| c.quota.clear_per_month = 2).await;
    let a = t.oa();
    t.wx.clear_quota_v2(&a.appid, &a.appsecret).await.unwrap();
    t.wx.clear_quota_v2(&a.appid, &a.appsecret).await.unwrap();
    assert_eq!(
        errcode(t.wx.clear_quota_v2(&a.appid, &a.appsecret).await),
        48006
    );
    t.sim
        .control()
        .advance_clock(Duration::from_secs(32 * 86_400));
    t.wx.clear_quota_v2(&a.appid, &a.appsecret).await.unwrap();
}

#[tokio::test]
async fn clear_quota_v2_accepts_its_parameters_in_the_query_or_the_body() {
    let t = TestSim::start().await;
    let a = t.oa();
    let q = format!(
        "/cgi-bin/clear_quota/v2?appid={}&appsecret={}",
        a.appid, a.appsecret
    );
    let r: serde_json::Value = t
        .http
        .post(t.url(&q))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, serde_json::json!({"errcode": 0, "errmsg": "ok"}));
    let r = t
        .post_json(
            "/cgi-bin/clear_quota/v2",
            serde_json::json!({"appid": a.appid, "appsecret": a.appsecret}),
        )
        .await;
    assert_eq!(r["errcode"], 0);
    let r = t
        .post_json(
            "/cgi-bin/clear_quota/v2",
            serde_json::json!({"appid": a.appid}),
        )
        .await;
    assert_eq!(r["errcode"], 41004);
    let r = t
        .post_json(
            "/cgi-bin/clear_quota/v2",
            serde_json::json!({"appsecret": "x"}),
        )
        .await;
    assert_eq!(r["errcode"], 41002);
    assert_eq!(
        errcode(t.wx.clear_quota_v2("wx00000000000000ff", "x").await),
        40013
    );
    assert_eq!(errcode(t.wx.clear_quota_v2(&a.appid, "bad").await), 40125);
}

#[tokio::test]
async fn component_clear_quota_resets_the_platform_or_an_authorizer() {
    let t = TestSim::with(|c| {
        c.quota.daily.insert("api_component_token".into(), 2);
        c.quota.daily.insert("api_authorizer_token".into(), 1);
    })
    .await;
    let c = t.component();
    let a = t.oa();
    let ct = t.component_token(&c).await;
    let (_, refresh) = t.authorized(&c, &a, &ct).await;
    let cid = &c.component_appid;
    t.component_token(&c).await;
    let ticket = c.latest_ticket.clone().unwrap();
    assert_eq!(
        errcode(
            t.wx.component_token(cid, &c.component_appsecret, &ticket)
                .await
        ),
        45009
    );
    t.wx.component_clear_quota_v2(cid, &c.component_appsecret, None)
        .await
        .unwrap();
    t.wx.component_token(cid, &c.component_appsecret, &ticket)
        .await
        .unwrap();

    t.wx.authorizer_token(&ct, cid, &a.appid, &refresh)
        .await
        .unwrap();
    assert_eq!(
        errcode(t.wx.authorizer_token(&ct, cid, &a.appid, &refresh).await),
        45009
    );
    t.wx.component_clear_quota_v2(cid, &c.component_appsecret, Some(&a.appid))
        .await
        .unwrap();
    let ct = t.component_token(&c).await;
    t.wx.authorizer_token(&ct, cid, &a.appid, &refresh)
        .await
        .unwrap();

    // The legacy variant with the component token.
    t.wx.component_clear_quota(&ct, cid).await.unwrap();
    assert_eq!(
        errcode(t.wx.component_clear_quota_v2(cid, "bad", None).await),
        40125
    );
    let stranger = t.oa();
    let r =
        t.wx.component_clear_quota_v2(cid, &c.component_appsecret, Some(&stranger.appid))
            .await;
    assert_eq!(errcode(r), 61003);
}

#[tokio::test]
async fn clear_quota_requires_the_tokens_own_appid() {
    let t = TestSim::start().await;
    let (a, b) = (t.oa(), t.oa());
    let tok =
        t.wx.token(&a.appid, &a.appsecret)
            .await
            .unwrap()
            .access_token;
    assert_eq!(errcode(t.wx.clear_quota(&tok, &b.appid).await), 40013);
    let c = t.component();
    let ct = t.component_token(&c).await;
    t.wx.clear_quota(&ct, &c.component_appid).await.unwrap();
}

#[tokio::test]
async fn quota_get_reports_usage_and_refuses_unknown_or_foreign_paths() {
    let t = TestSim::start().await;
    let c = t.component();
    let ct = t.component_token(&c).await;
    let q =
        t.wx.quota_get(&ct, "/cgi-bin/component/api_component_token")
            .await
            .unwrap();
    assert_eq!(
        (q.errcode, q.quota.daily_limit, q.quota.used, q.quota.remain),
        (0, 10_000, 1, 9_999)
    );
    assert_eq!(errcode(t.wx.quota_get(&ct, "/cgi-bin/nope").await), 76021);
    assert_eq!(errcode(t.wx.quota_get(&ct, "/cgi-bin/token").await), 76022);
    assert_eq!(
        errcode(t.wx.quota_get(&ct, "/sns/oauth2/access_token").await),
        76022
    );
}
