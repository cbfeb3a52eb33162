//! Component credentials: tickets, component tokens and their overlap, pre-auth codes.

use std::time::Duration;

use wechat_sim::{ComponentTokenPolicy, TicketPolicy};

use crate::helpers::{Receiver, TestSim, errcode};

#[tokio::test]
async fn component_token_is_issued_for_the_latest_ticket_in_wechat_shape() {
    let t = TestSim::start().await;
    let c = t.component();
    let ticket = c.latest_ticket.clone().unwrap();
    assert!(ticket.starts_with("ticket@@@"));
    let r =
        t.wx.component_token(&c.component_appid, &c.component_appsecret, &ticket)
            .await
            .unwrap();
    assert_eq!(r.expires_in, 7200);
    let tok = &r.component_access_token;
    assert!(
        tok.len() > 120 && tok.as_bytes()[2] == b'_',
        "NN_… shape: {tok}"
    );
    // No errcode on a token success: the raw JSON has exactly the two fields.
    let raw = t
        .post_json(
            "/cgi-bin/component/api_component_token",
            serde_json::json!({"component_appid": c.component_appid, "component_appsecret": c.component_appsecret, "component_verify_ticket": ticket}),
        )
        .await;
    let keys: Vec<_> = raw.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["component_access_token", "expires_in"]);
}

#[tokio::test]
async fn a_ticket_older_than_its_validity_gets_61005() {
    let t = TestSim::start().await;
    let c = t.component();
    let ticket = c.latest_ticket.clone().unwrap();
    t.sim
        .control()
        .advance_clock(Duration::from_secs(12 * 3600 + 1));
    let r =
        t.wx.component_token(&c.component_appid, &c.component_appsecret, &ticket)
            .await;
    assert_eq!(errcode(r), 61005);
}

#[tokio::test]
async fn a_ticket_that_is_not_the_latest_gets_61006_under_the_default_policy() {
    let t = TestSim::start().await;
    let c = t.component();
    let old = c.latest_ticket.clone().unwrap();
    let new = t
        .sim
        .control()
        .push_ticket(Some(&c.component_appid))
        .unwrap()[0]
        .1
        .clone();
    assert_ne!(old, new);
    // Once the new ticket's push is done (here: nowhere to push), the old one is stale.
    t.sim.control().wait_pushes_finished(2).await;
    let r =
        t.wx.component_token(&c.component_appid, &c.component_appsecret, &old)
            .await;
    assert_eq!(errcode(r), 61006);
    let r =
        t.wx.component_token(
            &c.component_appid,
            &c.component_appsecret,
            "ticket@@@forged",
        )
        .await;
    assert_eq!(errcode(r), 61006);
    t.wx.component_token(&c.component_appid, &c.component_appsecret, &new)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_older_ticket_works_until_the_newer_ticket_push_is_acknowledged() {
    let t = TestSim::with(|c| c.push.attempts = 1).await;
    let mut rx = Receiver::start().await;
    let c = t.component_pushing_to(&rx);
    rx.next().await;
    t.sim.control().wait_pushes_finished(1).await;
    let old = c.latest_ticket.clone().unwrap();
    // The next push fails: the receiver never stored the new ticket, so the old one still works.
    rx.fail_next(1);
    t.sim
        .control()
        .push_ticket(Some(&c.component_appid))
        .unwrap();
    rx.next().await;
    t.sim.control().wait_pushes_finished(2).await;
    t.wx.component_token(&c.component_appid, &c.component_appsecret, &old)
        .await
        .unwrap();
    // Once a push is answered `success`, older tickets are stale.
    t.sim
        .control()
        .push_ticket(Some(&c.component_appid))
        .unwrap();
    rx.next().await;
    t.sim.control().wait_pushes_finished(3).await;
    let r =
        t.wx.component_token(&c.component_appid, &c.component_appsecret, &old)
            .await;
    assert_eq!(errcode(r), 61006);
}

#[tokio::test]
async fn any_valid_policy_accepts_an_older_ticket_within_its_validity() {
    let t = TestSim::with(|c| c.ticket_policy = TicketPolicy::AnyValid).await;
    let c = t.component();
    let old = c.latest_ticket.clone().unwrap();
    t.sim
        .control()
        .push_ticket(Some(&c.component_appid))
        .unwrap();
    t.wx.component_token(&c.component_appid, &c.component_appsecret, &old)
        .await
        .unwrap();
}

#[tokio::test]
async fn ticket_repeat_pushes_the_same_value_several_times() {
    let t = TestSim::with(|c| c.ticket_repeat = 2).await;
    let c = t.component();
    let first = c.latest_ticket.clone().unwrap();
    let again = t
        .sim
        .control()
        .push_ticket(Some(&c.component_appid))
        .unwrap()[0]
        .1
        .clone();
    let next = t
        .sim
        .control()
        .push_ticket(Some(&c.component_appid))
        .unwrap()[0]
        .1
        .clone();
    assert_eq!(first, again);
    assert_ne!(again, next);
}

#[tokio::test]
async fn a_replaced_component_token_works_for_the_overlap_then_gets_40001() {
    let t = TestSim::start().await;
    let c = t.component();
    let old = t.component_token(&c).await;
    let new = t.component_token(&c).await;
    assert_ne!(old, new);
    t.wx.create_preauthcode(&old, &c.component_appid)
        .await
        .unwrap();
    t.sim.control().advance_clock(Duration::from_secs(290));
    t.wx.create_preauthcode(&old, &c.component_appid)
        .await
        .unwrap();
    t.sim.control().advance_clock(Duration::from_secs(11));
    assert_eq!(
        errcode(t.wx.create_preauthcode(&old, &c.component_appid).await),
        40001
    );
    t.wx.create_preauthcode(&new, &c.component_appid)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_expired_component_token_gets_42001_and_garbage_gets_40014() {
    let t = TestSim::with(|c| c.token_lifetime = Duration::from_secs(20)).await;
    let c = t.component();
    let tok = t.component_token(&c).await;
    t.sim.control().advance_clock(Duration::from_secs(21));
    assert_eq!(
        errcode(t.wx.create_preauthcode(&tok, &c.component_appid).await),
        42001
    );
    assert_eq!(
        errcode(
            t.wx.create_preauthcode("86_garbage", &c.component_appid)
                .await
        ),
        40014
    );
}

#[tokio::test]
async fn token_lifetime_is_configurable_and_reported_in_expires_in() {
    let t = TestSim::with(|c| c.token_lifetime = Duration::from_secs(20)).await;
    let c = t.component();
    let ticket = c.latest_ticket.clone().unwrap();
    let r =
        t.wx.component_token(&c.component_appid, &c.component_appsecret, &ticket)
            .await
            .unwrap();
    assert_eq!(r.expires_in, 20);
}

#[tokio::test]
async fn reuse_policy_returns_the_current_component_token_until_its_last_minutes() {
    let t = TestSim::with(|c| c.component_token_policy = ComponentTokenPolicy::Reuse).await;
    let c = t.component();
    let a = t.component_token(&c).await;
    assert_eq!(a, t.component_token(&c).await);
    t.sim
        .control()
        .advance_clock(Duration::from_secs(7200 - 299));
    assert_ne!(a, t.component_token(&c).await);
}

#[tokio::test]
async fn component_apis_accept_access_token_as_an_alias_unless_disabled() {
    let t = TestSim::start().await;
    let c = t.component();
    let tok = t.component_token(&c).await;
    let path = format!("/cgi-bin/component/api_create_preauthcode?access_token={tok}");
    let r = t
        .post_json(
            &path,
            serde_json::json!({"component_appid": c.component_appid}),
        )
        .await;
    assert!(
        r["pre_auth_code"]
            .as_str()
            .unwrap()
            .starts_with("preauthcode@@@")
    );

    let t = TestSim::with(|c| c.accept_access_token_alias = false).await;
    let c = t.component();
    let tok = t.component_token(&c).await;
    let path = format!("/cgi-bin/component/api_create_preauthcode?access_token={tok}");
    let r = t
        .post_json(
            &path,
            serde_json::json!({"component_appid": c.component_appid}),
        )
        .await;
    assert_eq!(r["errcode"], 41001);
}

#[tokio::test]
async fn pre_auth_codes_have_wechat_shape_and_lifetime() {
    let t = TestSim::start().await;
    let c = t.component();
    let tok = t.component_token(&c).await;
    let r =
        t.wx.create_preauthcode(&tok, &c.component_appid)
            .await
            .unwrap();
    assert!(r.pre_auth_code.starts_with("preauthcode@@@"));
    assert_eq!(r.expires_in, 600);
}

#[tokio::test]
async fn component_credential_errors_match_wechat() {
    let t = TestSim::start().await;
    let c = t.component();
    let oa = t.oa();
    let ticket = c.latest_ticket.clone().unwrap();
    let wx = &t.wx;
    assert_eq!(
        errcode(wx.component_token("wx00000000000000ff", "s", &ticket).await),
        40013
    );
    assert_eq!(
        errcode(wx.component_token(&oa.appid, &oa.appsecret, &ticket).await),
        61011
    );
    assert_eq!(
        errcode(
            wx.component_token(&c.component_appid, "wrong", &ticket)
                .await
        ),
        40125
    );
    assert_eq!(
        errcode(wx.component_token(&c.component_appid, "", &ticket).await),
        41004
    );
    assert_eq!(errcode(wx.component_token("", "x", &ticket).await), 41018);
    let tok = t.component_token(&c).await;
    let other = t.component();
    assert_eq!(
        errcode(wx.create_preauthcode(&tok, &other.component_appid).await),
        40013
    );
    assert_eq!(errcode(wx.create_preauthcode(&tok, "").await), 41018);
    // A business token on a component API.
    let direct = wx
        .token(&oa.appid, &oa.appsecret)
        .await
        .unwrap()
        .access_token;
    assert_eq!(
        errcode(wx.create_preauthcode(&direct, &c.component_appid).await),
        61014
    );
}

#[tokio::test]
async fn start_push_ticket_restarts_pushes_only_when_they_failed() {
    let t = TestSim::with(|c| c.push.attempts = 1).await;
    let mut rx = Receiver::start().await;
    rx.fail_next(1);
    let c = t.component_pushing_to(&rx);
    let first = rx.next().await.open(&c);
    t.sim.control().wait_pushes_finished(1).await;
    let r =
        t.wx.start_push_ticket(&c.component_appid, &c.component_appsecret)
            .await
            .unwrap();
    assert_eq!(r.errmsg, "ok");
    // The restart pushes a new ticket at once.
    let again = rx.next().await.open(&c);
    assert_ne!(first, again);
    t.sim.control().wait_pushes_finished(2).await;
    let r =
        t.wx.start_push_ticket(&c.component_appid, &c.component_appsecret)
            .await
            .unwrap();
    assert_eq!(r.errmsg, "in a normal state");
    assert_eq!(
        errcode(t.wx.start_push_ticket(&c.component_appid, "bad").await),
        40125
    );
    assert_eq!(
        errcode(t.wx.start_push_ticket("wx00000000000000ff", "x").await),
        40013
    );
}
