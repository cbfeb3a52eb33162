//! Pushes: encrypted and signed as WeChat does, opened with `wechat::event::open_push`; the ticket
//! timer follows the simulated clock; failed pushes are retried and recorded.

use std::time::Duration;

use wechat::event::Event;
use wechat_sim::Api;

use crate::helpers::{Receiver, TestSim};

#[tokio::test]
async fn ticket_pushes_are_encrypted_signed_and_open_with_the_component_keys() {
    let t = TestSim::start().await;
    let mut rx = Receiver::start().await;
    let c = t.component_pushing_to(&rx);
    let got = rx.next().await;
    assert_eq!(got.params.encrypt_type.as_deref(), Some("aes"));
    assert!(
        got.raw_query.starts_with("from=sim&"),
        "existing query kept: {}",
        got.raw_query
    );
    assert!(got.body.contains("<AppId><![CDATA[") && got.body.contains("<Encrypt>"));
    assert!(
        !got.body.contains("ticket@@@"),
        "the ticket travels encrypted"
    );
    match got.open(&c) {
        Event::ComponentVerifyTicket(e) => {
            assert_eq!(e.app_id, c.component_appid);
            assert_eq!(Some(e.component_verify_ticket), c.latest_ticket);
            assert!((e.create_time - t.sim.control().now()).abs() <= 2);
        }
        other => panic!("expected a ticket, got {other:?}"),
    }
    // The plain `signature` is the SHA-1 of the sorted token, timestamp and nonce.
    let sig = wechat::event::crypto::signature(&c.token, &got.params.timestamp, &got.params.nonce);
    assert_eq!(sig, got.params.signature);
}

#[tokio::test]
async fn the_ticket_timer_pushes_a_new_ticket_when_the_clock_passes_the_interval() {
    let t = TestSim::with(|c| c.ticket_interval = Duration::from_secs(600)).await;
    let mut rx = Receiver::start().await;
    let c = t.component_pushing_to(&rx);
    let first = rx.next().await.open(&c);
    t.sim.control().advance_clock(Duration::from_secs(600));
    let second = rx.next().await.open(&c);
    let (Event::ComponentVerifyTicket(a), Event::ComponentVerifyTicket(b)) = (first, second) else {
        panic!("expected two tickets");
    };
    assert_ne!(a.component_verify_ticket, b.component_verify_ticket);
    assert_eq!(
        t.sim.control().latest_ticket(&c.component_appid).unwrap(),
        b.component_verify_ticket
    );
    // The pushed ticket is the one api_component_token accepts.
    t.wx.component_token(
        &c.component_appid,
        &c.component_appsecret,
        &b.component_verify_ticket,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn authorization_changes_are_pushed_as_authorized_updateauthorized_and_unauthorized() {
    let t = TestSim::start().await;
    let mut rx = Receiver::start().await;
    let c = t.component_pushing_to(&rx);
    let a = t.oa();
    let first = t
        .sim
        .control()
        .authorize(&a.appid, &c.component_appid)
        .unwrap();
    let Event::Authorized(e) = rx.next_event(&c).await else {
        panic!("authorized expected")
    };
    assert_eq!(e.authorizer_appid, a.appid);
    assert_eq!(e.authorization_code, first.authorization_code);
    assert_eq!(
        e.authorization_code_expired_time,
        first.authorization_code_expired_time
    );
    assert!(
        e.authorization_code_expired_time > t.sim.control().now(),
        "an absolute time"
    );
    assert_eq!(
        e.pre_auth_code.as_deref(),
        Some(first.pre_auth_code.as_str())
    );

    let second = t
        .sim
        .control()
        .authorize(&a.appid, &c.component_appid)
        .unwrap();
    let Event::UpdateAuthorized(e) = rx.next_event(&c).await else {
        panic!("updateauthorized expected")
    };
    assert_eq!(e.authorization_code, second.authorization_code);

    t.sim
        .control()
        .unauthorize(&a.appid, &c.component_appid)
        .unwrap();
    let Event::Unauthorized(e) = rx.next_event(&c).await else {
        panic!("unauthorized expected")
    };
    assert_eq!(e.authorizer_appid, a.appid);

    // The code from the push exchanges like the one from the redirect.
    let t2 = t
        .sim
        .control()
        .authorize(&a.appid, &c.component_appid)
        .unwrap();
    let Event::Authorized(e) = rx.next_event(&c).await else {
        panic!("authorized expected")
    };
    let ct = t.component_token(&c).await;
    let r =
        t.wx.query_auth(&ct, &c.component_appid, &e.authorization_code)
            .await
            .unwrap();
    assert_eq!(r.authorization_info.authorizer_appid, t2.authorizer_appid);
}

#[tokio::test]
async fn a_push_not_answered_success_is_retried_and_every_attempt_is_recorded() {
    let t = TestSim::with(|c| c.push.attempts = 3).await;
    let mut rx = Receiver::start().await;
    rx.fail_next(2);
    let c = t.component_pushing_to(&rx);
    let a = rx.next().await;
    let b = rx.next().await;
    let d = rx.next().await;
    // Each attempt is signed afresh, and all carry the same ticket.
    assert_ne!(a.params.nonce, b.params.nonce);
    for r in [&a, &b, &d] {
        assert!(matches!(r.open(&c), Event::ComponentVerifyTicket(_)));
    }
    t.sim.control().wait_pushes_finished(1).await;
    let s = t.sim.control().stats();
    let rec = &s.recent_pushes[0];
    assert_eq!(rec.outcome, "delivered");
    assert_eq!(rec.attempts.len(), 3);
    assert_eq!(
        rec.attempts
            .iter()
            .map(|x| x.http_status)
            .collect::<Vec<_>>(),
        [Some(500), Some(500), Some(200)]
    );
    assert!(rec.attempts[2].success && !rec.attempts[0].success);
    assert_eq!((s.pushes.delivered, s.pushes.attempts), (1, 3));
}

#[tokio::test]
async fn a_push_failing_every_attempt_is_recorded_as_failed() {
    let t = TestSim::with(|c| c.push.attempts = 2).await;
    let mut rx = Receiver::start().await;
    rx.fail_next(2);
    let c = t.component_pushing_to(&rx);
    rx.next().await;
    rx.next().await;
    t.sim.control().wait_pushes_finished(1).await;
    let s = t.sim.control().stats();
    assert_eq!(s.pushes.failed, 1);
    assert_eq!(s.recent_pushes[0].outcome, "failed");
    assert_eq!(s.recent_pushes[0].component_appid, c.component_appid);
}

#[tokio::test]
async fn an_unreachable_push_url_is_a_recorded_transport_error_not_a_stuck_handler() {
    let t = TestSim::with(|c| c.push.attempts = 1).await;
    // Bind and drop: nothing listens there any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = t
        .sim
        .control()
        .create_component(wechat_sim::ComponentSpec {
            push_url: Some(format!("http://127.0.0.1:{port}/events")),
            ..Default::default()
        })
        .unwrap();
    // API calls proceed while the push fails.
    t.component_token(&c).await;
    t.sim.control().wait_pushes_finished(1).await;
    let s = t.sim.control().stats();
    assert!(s.recent_pushes[0].attempts[0].error.is_some());
    assert_eq!(s.calls(Api::ComponentToken), 1);
}

#[tokio::test]
async fn the_push_url_can_be_changed_at_run_time() {
    let t = TestSim::start().await;
    let c = t.component();
    let mut rx = Receiver::start().await;
    t.sim
        .control()
        .set_push_url(&c.component_appid, Some(rx.url.clone()))
        .unwrap();
    t.sim
        .control()
        .push_ticket(Some(&c.component_appid))
        .unwrap();
    assert!(matches!(
        rx.next().await.open(&c),
        Event::ComponentVerifyTicket(_)
    ));
}
