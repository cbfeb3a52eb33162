//! Directly managed accounts: cgi-bin/token, stable_token, getticket and getcallbackip.

use std::time::Duration;

use wechat::wire::TicketKind;

use crate::helpers::{TestSim, errcode};

#[tokio::test]
async fn every_cgi_bin_token_call_issues_a_new_token_and_retires_the_previous_after_the_overlap() {
    let t = TestSim::start().await;
    let a = t.oa();
    let first = t.wx.token(&a.appid, &a.appsecret).await.unwrap();
    assert_eq!(first.expires_in, 7200);
    let second = t.wx.token(&a.appid, &a.appsecret).await.unwrap();
    assert_ne!(first.access_token, second.access_token);
    t.wx.get_callback_ip(&first.access_token).await.unwrap();
    t.sim.control().advance_clock(Duration::from_secs(300));
    assert_eq!(
        errcode(t.wx.get_callback_ip(&first.access_token).await),
        40001
    );
    let v = t.sim.control().validate(&first.access_token);
    assert_eq!((v.reason.as_str(), v.errcode), ("superseded", 40001));
    t.wx.get_callback_ip(&second.access_token).await.unwrap();
}

#[tokio::test]
async fn cgi_bin_token_errors_match_wechat() {
    let t = TestSim::start().await;
    let a = t.oa();
    let c = t.component();
    let wx = &t.wx;
    assert_eq!(errcode(wx.token("", "x").await), 41002);
    assert_eq!(errcode(wx.token(&a.appid, "").await), 41004);
    assert_eq!(errcode(wx.token("wx00000000000000ff", "x").await), 40013);
    assert_eq!(errcode(wx.token(&a.appid, "wrong").await), 40125);
    assert_eq!(
        errcode(wx.token(&c.component_appid, &c.component_appsecret).await),
        61024
    );
    let r = t
        .get_json(&format!(
            "/cgi-bin/token?grant_type=password&appid={}&secret={}",
            a.appid, a.appsecret
        ))
        .await;
    assert_eq!(r["errcode"], 40002);
}

#[tokio::test]
async fn stable_token_returns_the_same_token_until_its_last_five_minutes_then_both_work() {
    let t = TestSim::start().await;
    let a = t.oa();
    let first =
        t.wx.stable_token(&a.appid, &a.appsecret, false)
            .await
            .unwrap();
    assert_eq!(first.expires_in, 7200);
    t.sim.control().advance_clock(Duration::from_secs(3600));
    let same =
        t.wx.stable_token(&a.appid, &a.appsecret, false)
            .await
            .unwrap();
    assert_eq!(same.access_token, first.access_token);
    assert!((3599..=3600).contains(&same.expires_in));
    t.sim
        .control()
        .advance_clock(Duration::from_secs(3600 - 299));
    let rolled =
        t.wx.stable_token(&a.appid, &a.appsecret, false)
            .await
            .unwrap();
    assert_ne!(rolled.access_token, first.access_token);
    assert!(rolled.expires_in >= 300);
    t.wx.get_callback_ip(&first.access_token).await.unwrap();
    t.wx.get_callback_ip(&rolled.access_token).await.unwrap();
    t.sim.control().advance_clock(Duration::from_secs(300));
    assert_eq!(
        errcode(t.wx.get_callback_ip(&first.access_token).await),
        42001
    );
    t.wx.get_callback_ip(&rolled.access_token).await.unwrap();
}

#[tokio::test]
async fn stable_token_force_refresh_is_limited_to_20_a_day_at_least_30_seconds_apart() {
    let t = TestSim::start().await;
    // An hour into a Beijing day, so the ten simulated minutes below never cross the midnight
    // at which the budget resets (run at 15:55 UTC, they did).
    let into_day = (t.sim.control().now() + 8 * 3600).rem_euclid(86_400);
    t.sim
        .control()
        .advance_clock(Duration::from_secs((86_400 - into_day + 3600) as u64));
    let a = t.oa();
    let mut current =
        t.wx.stable_token(&a.appid, &a.appsecret, false)
            .await
            .unwrap()
            .access_token;
    for i in 0..20 {
        let forced =
            t.wx.stable_token(&a.appid, &a.appsecret, true)
                .await
                .unwrap()
                .access_token;
        assert_ne!(forced, current, "force {i} refreshes");
        // Forced refresh retires the previous token at once.
        assert_eq!(errcode(t.wx.get_callback_ip(&current).await), 40001);
        // A second force within 30 s does not refresh.
        let again =
            t.wx.stable_token(&a.appid, &a.appsecret, true)
                .await
                .unwrap()
                .access_token;
        assert_eq!(again, forced);
        current = forced;
        t.sim.control().advance_clock(Duration::from_secs(30));
    }
    assert_eq!(
        errcode(t.wx.stable_token(&a.appid, &a.appsecret, true).await),
        45009
    );
    // Normal mode still works, and the budget is back the next day.
    t.wx.stable_token(&a.appid, &a.appsecret, false)
        .await
        .unwrap();
    t.sim.control().advance_clock(Duration::from_secs(86_400));
    t.wx.stable_token(&a.appid, &a.appsecret, true)
        .await
        .unwrap();
}

#[tokio::test]
async fn stable_token_and_cgi_bin_token_do_not_invalidate_each_other() {
    let t = TestSim::start().await;
    let a = t.oa();
    let stable =
        t.wx.stable_token(&a.appid, &a.appsecret, false)
            .await
            .unwrap()
            .access_token;
    for _ in 0..3 {
        t.wx.token(&a.appid, &a.appsecret).await.unwrap();
    }
    t.sim.control().advance_clock(Duration::from_secs(301));
    t.wx.get_callback_ip(&stable).await.unwrap();
    let direct =
        t.wx.token(&a.appid, &a.appsecret)
            .await
            .unwrap()
            .access_token;
    t.wx.stable_token(&a.appid, &a.appsecret, true)
        .await
        .unwrap();
    t.wx.get_callback_ip(&direct).await.unwrap();
    assert_eq!(
        t.sim.control().validate(&stable).kind,
        Some(wechat_sim::TokenKind::Stable)
    );
    assert_eq!(
        t.sim.control().validate(&direct).kind,
        Some(wechat_sim::TokenKind::Direct)
    );
}

#[tokio::test]
async fn stable_token_validates_its_body() {
    let t = TestSim::start().await;
    let a = t.oa();
    let r = t
        .post_json(
            "/cgi-bin/stable_token",
            serde_json::json!({"grant_type": "x", "appid": a.appid, "secret": a.appsecret}),
        )
        .await;
    assert_eq!(r["errcode"], 40002);
    let r = t.post_raw("/cgi-bin/stable_token", "{not json").await;
    assert_eq!(r["errcode"], 47001);
    assert_eq!(
        errcode(t.wx.stable_token(&a.appid, "bad", false).await),
        40125
    );
}

#[tokio::test]
async fn getticket_returns_the_same_ticket_while_valid_with_a_full_expires_in() {
    let t = TestSim::start().await;
    let a = t.oa();
    let tok =
        t.wx.token(&a.appid, &a.appsecret)
            .await
            .unwrap()
            .access_token;
    let j1 = t.wx.get_ticket(&tok, TicketKind::Jsapi).await.unwrap();
    t.sim.control().advance_clock(Duration::from_secs(60));
    let j2 = t.wx.get_ticket(&tok, TicketKind::Jsapi).await.unwrap();
    assert_eq!(j1.ticket, j2.ticket);
    assert_eq!(
        (j2.errcode, j2.errmsg.as_str(), j2.expires_in),
        (0, "ok", 7200)
    );
    let card = t.wx.get_ticket(&tok, TicketKind::WxCard).await.unwrap();
    assert_ne!(card.ticket, j1.ticket);
    t.sim.control().advance_clock(Duration::from_secs(7200));
    let tok =
        t.wx.token(&a.appid, &a.appsecret)
            .await
            .unwrap()
            .access_token;
    assert_ne!(
        t.wx.get_ticket(&tok, TicketKind::Jsapi)
            .await
            .unwrap()
            .ticket,
        j1.ticket
    );
}

#[tokio::test]
async fn getticket_works_with_an_authorizer_token_too() {
    let t = TestSim::start().await;
    let c = t.component();
    let a = t.oa();
    let ct = t.component_token(&c).await;
    let (access, _) = t.authorized(&c, &a, &ct).await;
    t.wx.get_ticket(&access, TicketKind::Jsapi).await.unwrap();
}

#[tokio::test]
async fn business_apis_refuse_a_component_token_and_a_missing_token() {
    let t = TestSim::start().await;
    let c = t.component();
    let ct = t.component_token(&c).await;
    assert_eq!(errcode(t.wx.get_callback_ip(&ct).await), 61015);
    assert_eq!(t.get_json("/cgi-bin/getcallbackip").await["errcode"], 41001);
    let ok = {
        let a = t.oa();
        let tok =
            t.wx.token(&a.appid, &a.appsecret)
                .await
                .unwrap()
                .access_token;
        t.wx.get_callback_ip(&tok).await.unwrap()
    };
    assert!(!ok.ip_list.is_empty());
}

#[tokio::test]
async fn a_served_ticket_validates_until_it_expires_and_unknown_tickets_never_do() {
    let t = TestSim::start().await;
    let a = t.oa();
    let tok =
        t.wx.token(&a.appid, &a.appsecret)
            .await
            .unwrap()
            .access_token;
    let ticket =
        t.wx.get_ticket(&tok, TicketKind::Jsapi)
            .await
            .unwrap()
            .ticket;
    let v = t.sim.control().validate_ticket(&ticket);
    assert!(v.valid, "{v:?}");
    assert_eq!(v.ticket_type.as_deref(), Some("jsapi"));
    assert_eq!(v.appid.as_deref(), Some(a.appid.as_str()));
    // The same over the control API.
    let over_http = t.get_json(&format!("/_sim/validate?ticket={ticket}")).await;
    assert_eq!(over_http["valid"], true, "{over_http}");
    assert_eq!(over_http["ticket_type"], "jsapi");
    assert_eq!(
        t.get_json("/_sim/validate?ticket=not-a-ticket").await["reason"],
        "unknown"
    );
    t.sim.control().advance_clock(Duration::from_secs(7200));
    let v = t.sim.control().validate_ticket(&ticket);
    assert_eq!(
        (v.valid, v.reason.as_str(), v.errcode),
        (false, "expired", 42001)
    );
}

#[tokio::test]
async fn a_new_ticket_retires_the_previous_after_the_overlap_or_keeps_it_as_configured() {
    for (policy, previous_valid_after_overlap) in [
        (wechat_sim::JsTicketPolicy::NewRetiringPrevious, false),
        (wechat_sim::JsTicketPolicy::NewKeepingPrevious, true),
    ] {
        let t = TestSim::with(|c| {
            c.js_ticket_policy = policy;
            c.overlap = Duration::from_secs(300);
        })
        .await;
        let a = t.oa();
        let tok =
            t.wx.token(&a.appid, &a.appsecret)
                .await
                .unwrap()
                .access_token;
        let first =
            t.wx.get_ticket(&tok, TicketKind::WxCard)
                .await
                .unwrap()
                .ticket;
        let second =
            t.wx.get_ticket(&tok, TicketKind::WxCard)
                .await
                .unwrap()
                .ticket;
        assert_ne!(first, second, "{policy:?}: a new ticket on every call");
        assert!(
            t.sim.control().validate_ticket(&first).valid,
            "within the overlap"
        );
        t.sim.control().advance_clock(Duration::from_secs(301));
        let v = t.sim.control().validate_ticket(&first);
        assert_eq!(v.valid, previous_valid_after_overlap, "{policy:?}: {v:?}");
        if !previous_valid_after_overlap {
            assert_eq!((v.reason.as_str(), v.errcode), ("superseded", 40001));
        }
        assert!(t.sim.control().validate_ticket(&second).valid);
    }
}

#[tokio::test]
async fn business_endpoints_check_their_input_and_retired_tokens_answer_40001() {
    let t = TestSim::start().await;
    let a = t.oa();
    let tok =
        t.wx.token(&a.appid, &a.appsecret)
            .await
            .unwrap()
            .access_token;
    let sim = &t;
    let path = format!("/cgi-bin/message/custom/send?access_token={tok}");
    let path = &path;
    let send = |body: serde_json::Value| async move { sim.post_json(path, body).await };
    assert_eq!(
        send(serde_json::json!({"msgtype": "text"})).await["errcode"],
        40003
    );
    assert_eq!(
        send(serde_json::json!({"touser": "o1"})).await["errcode"],
        40008
    );
    assert_eq!(
        send(serde_json::json!({"touser": "o1", "msgtype": "text"})).await["errcode"],
        0
    );
    let media = t
        .get_json(&format!(
            "/cgi-bin/media/get?access_token={tok}&media_id=nope"
        ))
        .await;
    assert_eq!(media["errcode"], 40007);
    // Without a multipart `media` part, and with an unknown type.
    let upload = t
        .post_raw(
            &format!("/cgi-bin/media/upload?access_token={tok}&type=image"),
            "x",
        )
        .await;
    assert_eq!(upload["errcode"], 41005);
    let upload = t
        .post_raw(
            &format!("/cgi-bin/media/upload?access_token={tok}&type=pdf"),
            "x",
        )
        .await;
    assert_eq!(upload["errcode"], 40004);

    // Retired over the control API: the next call is refused with 40001, a new token works.
    let retired = t
        .post_json(
            &format!("/_sim/accounts/{}/retire_tokens", a.appid),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(retired["retired_series"], 1, "{retired}");
    assert_eq!(
        send(serde_json::json!({"touser": "o1", "msgtype": "text"})).await["errcode"],
        40001
    );
    let fresh =
        t.wx.token(&a.appid, &a.appsecret)
            .await
            .unwrap()
            .access_token;
    assert!(t.wx.get_callback_ip(&fresh).await.is_ok());
}
