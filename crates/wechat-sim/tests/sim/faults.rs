//! Fault injection over HTTP: every kind, probabilities with a seed, `times`, and clearing.

use std::time::{Duration, Instant};

use wechat::client::WechatError;
use wechat_sim::{Api, Fault, FaultRule, FaultSet, Latency};

use crate::helpers::TestSim;

fn only(endpoint: &str, fault: Fault) -> FaultSet {
    FaultSet {
        seed: None,
        rules: vec![FaultRule {
            endpoint: endpoint.into(),
            probability: 1.0,
            times: None,
            fault,
        }],
    }
}

#[tokio::test]
async fn latency_faults_delay_the_answer_which_is_then_normal() {
    let t = TestSim::start().await;
    let a = t.oa();
    t.sim
        .control()
        .set_faults(only(
            "token",
            Fault::Latency {
                latency: Latency::Fixed { ms: 150 },
            },
        ))
        .unwrap();
    let started = Instant::now();
    t.wx.token(&a.appid, &a.appsecret).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
    // Other endpoints are not delayed.
    let started = Instant::now();
    t.wx.stable_token(&a.appid, &a.appsecret, false)
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(150));
}

#[tokio::test]
async fn a_held_answer_is_issued_first_and_counted_as_held_until_it_is_sent() {
    let t = TestSim::start().await;
    let a = t.oa();
    t.sim
        .control()
        .set_faults(only(
            "token",
            Fault::HoldAnswer {
                latency: Latency::Fixed { ms: 300 },
            },
        ))
        .unwrap();
    assert_eq!(t.sim.control().answers_held(), 0);
    let call = {
        let (wx, appid, secret) = (t.wx.clone(), a.appid.clone(), a.appsecret.clone());
        tokio::spawn(async move { wx.token(&appid, &secret).await })
    };
    t.sim.control().wait_answers_held(1).await;
    // Issued while held: the call already counts as answered ok.
    assert_eq!(t.sim.control().answers_held(), 1);
    assert_eq!(t.sim.control().stats().endpoints["token"].ok, 1);
    call.await.unwrap().unwrap();
    assert_eq!(t.sim.control().answers_held(), 0);
}

#[tokio::test]
async fn latency_distributions_are_accepted_over_the_control_api() {
    let t = TestSim::start().await;
    for latency in [
        serde_json::json!({"distribution": "uniform", "min_ms": 1, "max_ms": 3}),
        serde_json::json!({"distribution": "exponential", "mean_ms": 1}),
        serde_json::json!({"distribution": "normal", "mean_ms": 2, "stddev_ms": 1}),
    ] {
        let body = serde_json::json!({"rules": [{"endpoint": "*", "fault": {"kind": "latency", "latency": latency}}]});
        let r = t
            .http
            .put(t.url("/_sim/faults"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let a = t.oa();
        t.wx.token(&a.appid, &a.appsecret).await.unwrap();
    }
}

#[tokio::test]
async fn an_http_status_fault_answers_that_status() {
    let t = TestSim::start().await;
    let a = t.oa();
    t.sim
        .control()
        .set_faults(only("token", Fault::HttpStatus { status: 503 }))
        .unwrap();
    match t.wx.token(&a.appid, &a.appsecret).await {
        Err(WechatError::HttpStatus { status: 503, .. }) => {}
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    let s = t.sim.control().stats();
    assert_eq!(s.endpoints["token"].faults["http_status"], 1);
}

#[tokio::test]
async fn a_reset_fault_resets_the_connection_without_an_answer() {
    let t = TestSim::start().await;
    let a = t.oa();
    t.sim
        .control()
        .set_faults(only("token", Fault::Reset))
        .unwrap();
    match t.wx.token(&a.appid, &a.appsecret).await {
        Err(WechatError::Network { .. }) => {}
        other => panic!("expected a network error, got {other:?}"),
    }
    let raw = t.http.get(t.url("/cgi-bin/token")).send().await;
    let err = raw.unwrap_err();
    let chain = format!("{:?}", err);
    assert!(
        chain.contains("reset") || chain.contains("closed") || chain.contains("Incomplete"),
        "{chain}"
    );
    // Nothing was issued: the rules did not run.
    assert_eq!(t.sim.control().stats().endpoints["token"].ok, 0);
}

#[tokio::test]
async fn a_malformed_json_fault_sends_a_truncated_body() {
    let t = TestSim::start().await;
    let a = t.oa();
    t.sim
        .control()
        .set_faults(only("token", Fault::MalformedJson))
        .unwrap();
    match t.wx.token(&a.appid, &a.appsecret).await {
        Err(WechatError::Malformed { .. }) => {}
        other => panic!("expected a malformed body, got {other:?}"),
    }
}

#[tokio::test]
async fn an_errcode_fault_answers_that_errcode_in_wechat_form() {
    let t = TestSim::start().await;
    let c = t.component();
    let ct = t.component_token(&c).await;
    t.sim
        .control()
        .set_faults(only(
            "api_create_preauthcode",
            Fault::Errcode {
                errcode: -1,
                errmsg: None,
            },
        ))
        .unwrap();
    let path = format!("/cgi-bin/component/api_create_preauthcode?component_access_token={ct}");
    let r = t
        .post_json(
            &path,
            serde_json::json!({"component_appid": c.component_appid}),
        )
        .await;
    assert_eq!(r["errcode"], -1);
    let msg = r["errmsg"].as_str().unwrap();
    assert!(
        msg.starts_with("system error rid: ") && msg.len() == "system error rid: ".len() + 26,
        "{msg}"
    );
    t.sim
        .control()
        .set_faults(only(
            "*",
            Fault::Errcode {
                errcode: 61004,
                errmsg: Some("custom".into()),
            },
        ))
        .unwrap();
    let a = t.oa();
    match t.wx.token(&a.appid, &a.appsecret).await {
        Err(WechatError::Api {
            errcode: 61004,
            errmsg,
            ..
        }) => assert!(errmsg.starts_with("custom")),
        other => panic!("expected 61004, got {other:?}"),
    }
}

async fn pattern(seed: u64) -> Vec<bool> {
    let t = TestSim::start().await;
    let a = t.oa();
    let body = serde_json::json!({"seed": seed, "rules": [
        {"endpoint": "stable_token", "probability": 0.5, "fault": {"kind": "errcode", "errcode": 45011}}
    ]});
    assert_eq!(
        t.http
            .put(t.url("/_sim/faults"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let mut out = Vec::new();
    for _ in 0..40 {
        out.push(
            t.wx.stable_token(&a.appid, &a.appsecret, false)
                .await
                .is_err(),
        );
    }
    out
}

#[tokio::test]
async fn faults_with_a_probability_are_deterministic_for_a_seed() {
    let a = pattern(7).await;
    assert_eq!(a, pattern(7).await);
    let hits = a.iter().filter(|x| **x).count();
    assert!((5..35).contains(&hits), "{hits} of 40");
}

#[tokio::test]
async fn times_limits_a_fault_and_delete_clears_all_faults() {
    let t = TestSim::start().await;
    let a = t.oa();
    let mut set = only("token", Fault::HttpStatus { status: 502 });
    set.rules[0].times = Some(1);
    t.sim.control().set_faults(set).unwrap();
    assert!(t.wx.token(&a.appid, &a.appsecret).await.is_err());
    t.wx.token(&a.appid, &a.appsecret).await.unwrap();
    let listed = t.get_json("/_sim/faults").await;
    assert_eq!(listed["rules"][0]["fired"], 1);

    t.sim
        .control()
        .set_faults(only("*", Fault::HttpStatus { status: 500 }))
        .unwrap();
    assert!(t.wx.token(&a.appid, &a.appsecret).await.is_err());
    let r = t.http.delete(t.url("/_sim/faults")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    t.wx.token(&a.appid, &a.appsecret).await.unwrap();
    assert_eq!(t.sim.control().stats().calls(Api::Token), 4);
}

#[tokio::test]
async fn invalid_fault_rules_are_refused_with_a_json_error() {
    let t = TestSim::start().await;
    let body = serde_json::json!({"rules": [{"endpoint": "api_nope", "fault": {"kind": "reset"}}]});
    let r = t
        .http
        .put(t.url("/_sim/faults"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "invalid_request");
    let body = serde_json::json!({"rules": [{"endpoint": "*", "fault": {"kind": "teleport"}}]});
    assert_eq!(
        t.http
            .put(t.url("/_sim/faults"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
}
