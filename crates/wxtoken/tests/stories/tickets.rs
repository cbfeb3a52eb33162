//! JS-SDK tickets (SPEC.md rule 13), end to end over HTTP against the simulator: one getticket
//! call for any number of readers, refreshed ahead of expiry while read and never served invalid
//! under faults (whether WeChat answers the same ticket while it is valid or a new one each
//! time), let go when idle, recovered from a refused account token with one token refresh, kept
//! across a restart, and the wx.config and cardExt signatures made with them.

use std::time::Duration;

use reqwest::StatusCode;
use wechat_sim::{AccountKind, Fault, FaultRule, FaultSet, JsTicketPolicy};
use wxtoken::model::CredentialKind;

use crate::harness::engine::{Harness, refresh_config};
use crate::harness::server::Server;

fn ticket_of(body: &serde_json::Value) -> String {
    body["ticket"].as_str().expect("a ticket").to_owned()
}

/// The simulator of the lifecycle stories: `lifetime` tokens and tickets, `policy` for getticket.
fn short_lived(lifetime: Duration, policy: JsTicketPolicy) -> wechat_sim::SimConfig {
    wechat_sim::SimConfig {
        js_ticket_policy: policy,
        ..crate::harness::sim_config(lifetime, Duration::from_secs(2))
    }
}

/// Margins that fit seconds-long tokens and tickets.
fn short_margins(c: &mut wxtoken::config::Config) {
    c.refresh.serve_margin = Duration::from_secs(1);
    c.refresh.ticket_serve_margin = Duration::from_secs(1);
    c.refresh.backoff_initial = Duration::from_millis(100);
    c.refresh.backoff_max = Duration::from_millis(500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_read_by_a_thousand_concurrent_readers_costs_one_getticket_call_and_validates() {
    let s = Server::start().await;
    let appid = s.authorize_account(AccountKind::OfficialAccount).await;
    let key = s.client_key("h5-pages", &[&appid], false).await;
    let _ = s.get(Some(&key), &format!("/v1/tokens/{appid}")).await;
    s.sim.control().reset_stats();

    let path = format!("/v1/tickets/{appid}/jsapi");
    let reads = futures::future::join_all((0..1000).map(|_| s.get(Some(&key), &path))).await;
    let first = ticket_of(&reads[0].1);
    for (status, body) in &reads {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(ticket_of(body), first, "every reader gets the same ticket");
        assert_eq!(body["type"], "jsapi");
        assert_eq!(body["appid"], appid.as_str());
    }
    assert_eq!(
        s.calls("getticket"),
        1,
        "one getticket call for 1,000 readers"
    );
    let validation = s.sim.control().validate_ticket(&first);
    assert!(validation.valid, "{validation:?}");
    assert_eq!(validation.ticket_type.as_deref(), Some("jsapi"));

    // The card ticket is another credential: its own single call.
    let (status, card) = s
        .get(Some(&key), &format!("/v1/tickets/{appid}/wx_card"))
        .await;
    assert_eq!(status, StatusCode::OK, "{card}");
    assert_ne!(ticket_of(&card), first);
    assert_eq!(s.calls("getticket"), 2);
    assert_eq!(
        s.sim
            .control()
            .validate_ticket(&ticket_of(&card))
            .ticket_type
            .as_deref(),
        Some("wx_card")
    );

    // Served again from memory; a long-poll on the current generation answers at once with it.
    let generation = reads[0].1["generation"].as_u64().unwrap();
    let (status, again) = s
        .get(
            Some(&key),
            &format!("{path}?after={}&wait=5", generation - 1),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ticket_of(&again), first);
    assert_eq!(s.calls("getticket"), 2);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wx_config_and_card_ext_are_signed_with_the_current_tickets_and_bad_urls_are_refused() {
    let s = Server::start().await;
    let appid = s.authorize_account(AccountKind::OfficialAccount).await;
    let key = s.client_key("h5-pages", &[&appid], false).await;
    let url = "https://shop.example.com/pay?order=42&x=%E4%B8%AD#/cart";
    let config = s
        .http
        .post(format!("{}/v1/jssdk/config", s.internal))
        .bearer_auth(&key)
        .json(&serde_json::json!({"appid": appid, "url": url}))
        .send()
        .await
        .unwrap();
    assert_eq!(config.status(), StatusCode::OK);
    let config: serde_json::Value = config.json().await.unwrap();
    let (_, ticket) = s
        .get(Some(&key), &format!("/v1/tickets/{appid}/jsapi"))
        .await;
    let nonce = config["nonceStr"].as_str().unwrap();
    assert_eq!(nonce.len(), 16);
    assert_eq!(config["appId"], appid.as_str());
    let timestamp = config["timestamp"].as_i64().unwrap();
    assert!((timestamp - crate::harness::server::now_secs()).abs() < 60);
    assert_eq!(
        config["signature"].as_str().unwrap(),
        wechat::jssdk::config_signature(&ticket_of(&ticket), nonce, timestamp, url),
        "signed over the URL before '#', with the ticket served"
    );
    assert!(
        s.sim.control().validate_ticket(&ticket_of(&ticket)).valid,
        "made with a ticket WeChat holds valid"
    );
    // Two signatures never share a nonce.
    let again: serde_json::Value = s
        .http
        .post(format!("{}/v1/jssdk/config", s.internal))
        .bearer_auth(&key)
        .json(&serde_json::json!({"appid": appid, "url": url}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(again["nonceStr"], config["nonceStr"]);
    assert_eq!(s.calls("getticket"), 1);

    for bad in [
        "/relative/page",
        "ftp://shop.example.com/",
        "https:///nohost",
        "javascript:alert(1)",
    ] {
        let response = s
            .http
            .post(format!("{}/v1/jssdk/config", s.internal))
            .bearer_auth(&key)
            .json(&serde_json::json!({"appid": appid, "url": bad}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("url "),
            "{body}"
        );
    }

    let ext = s
        .http
        .post(format!("{}/v1/jssdk/card-ext", s.internal))
        .bearer_auth(&key)
        .json(&serde_json::json!({"appid": appid, "card_id": "pFS7Fjg8kV1IdDz01r4SQwMkuCKc", "openid": "oUser1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ext.status(), StatusCode::OK);
    let ext: serde_json::Value = ext.json().await.unwrap();
    let (_, card) = s
        .get(Some(&key), &format!("/v1/tickets/{appid}/wx_card"))
        .await;
    let card_ticket = ticket_of(&card);
    let inner: serde_json::Value = serde_json::from_str(ext["card_ext"].as_str().unwrap()).unwrap();
    assert_eq!(inner["openid"], "oUser1");
    assert_eq!(inner["code"], "");
    assert_eq!(inner["signature"], ext["signature"]);
    assert_eq!(
        ext["signature"].as_str().unwrap(),
        wechat::jssdk::card_ext_signature(&wechat::jssdk::CardExtFields {
            api_ticket: &card_ticket,
            timestamp: inner["timestamp"].as_str().unwrap(),
            card_id: "pFS7Fjg8kV1IdDz01r4SQwMkuCKc",
            nonce_str: inner["nonce_str"].as_str().unwrap(),
            code: None,
            openid: Some("oUser1"),
            balance: None,
        })
    );
    assert_eq!(s.calls("getticket"), 2, "one jsapi, one wx_card");

    // The operator's view: `wxtoken ticket` prints the stored ticket, the jsapi one by default.
    let out = s.cli(&["ticket", &appid], &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        ticket_of(&ticket)
    );
    let out = s
        .cli(&["ticket", &appid, "--type", "wx_card", "--json"], &[])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["ticket"], card_ticket.as_str());
    assert_eq!(printed["type"], "wx_card");
    // An account whose ticket nobody read has none stored: said, nothing on standard output.
    let unread = s.authorize_account(AccountKind::MiniProgram).await;
    let out = s.cli(&["ticket", &unread], &[]).await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fetched at its first read"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_not_granted_the_appid_gets_403_for_its_tickets_and_signatures_and_no_call_is_made() {
    let s = Server::start().await;
    let appid = s.authorize_account(AccountKind::OfficialAccount).await;
    let other = s.authorize_account(AccountKind::MiniProgram).await;
    let key = s.client_key("other-svc", &[&other], false).await;
    s.sim.control().reset_stats();
    let (status, body) = s
        .get(Some(&key), &format!("/v1/tickets/{appid}/jsapi"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    for (path, body) in [
        (
            "/v1/jssdk/config",
            serde_json::json!({"appid": appid, "url": "https://a.example/"}),
        ),
        (
            "/v1/jssdk/card-ext",
            serde_json::json!({"appid": appid, "card_id": "c1"}),
        ),
        (
            &*format!("/v1/tickets/{appid}/jsapi/invalidate"),
            serde_json::json!({"ticket": "t"}),
        ),
    ] {
        let response = s
            .http
            .post(format!("{}{path}", s.internal))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
    }
    let (status, _) = s.get(None, &format!("/v1/tickets/{other}/jsapi")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = s
        .get(Some(&key), &format!("/v1/tickets/{other}/api_ticket"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = s
        .get(Some(&s.admin_key), "/v1/tickets/wxunknownappid0000/jsapi")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(s.calls("getticket"), 0, "nothing refused reached WeChat");
    s.shutdown().await;
}

/// Served tickets validate at the simulator at the moment they are served, through several
/// ticket lifetimes with 10 % of getticket and token calls failing, under each getticket policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_served_ticket_validates_while_tickets_are_refreshed_under_ten_percent_faults() {
    let _alone = crate::harness::alone().await;
    const LIFETIME: Duration = Duration::from_secs(6);
    for policy in [
        JsTicketPolicy::SameWhileValid,
        JsTicketPolicy::NewRetiringPrevious,
    ] {
        let s = Server::start_with(short_lived(LIFETIME, policy), short_margins).await;
        let appid = s.authorize_account(AccountKind::OfficialAccount).await;
        let key = s.client_key("h5-pages", &[&appid], false).await;
        let faults = ["getticket", "api_authorizer_token"].map(|endpoint| FaultRule {
            endpoint: endpoint.into(),
            probability: 0.1,
            times: None,
            fault: Fault::HttpStatus { status: 500 },
        });
        s.sim
            .control()
            .set_faults(FaultSet {
                seed: Some(3),
                rules: faults.to_vec(),
            })
            .unwrap();
        let path = format!("/v1/tickets/{appid}/jsapi");
        let until = tokio::time::Instant::now() + LIFETIME * 3;
        let (mut served, mut unavailable) = (0u32, 0u32);
        let mut distinct: Vec<(String, i64)> = Vec::new();
        let mut replaced_early = false;
        while tokio::time::Instant::now() < until {
            let (status, body) = s.get(Some(&key), &path).await;
            if status == StatusCode::SERVICE_UNAVAILABLE {
                unavailable += 1;
            } else {
                assert_eq!(status, StatusCode::OK, "{body}");
                let ticket = ticket_of(&body);
                let validation = s.sim.control().validate_ticket(&ticket);
                assert!(
                    validation.valid,
                    "{policy:?}: served an invalid ticket: {validation:?}"
                );
                served += 1;
                if distinct.last().is_none_or(|(t, _)| *t != ticket) {
                    let now = crate::harness::server::now_secs();
                    if let Some((_, expires_at)) = distinct.last() {
                        replaced_early |= now < *expires_at;
                    }
                    distinct.push((ticket, body["expires_at"].as_i64().unwrap()));
                }
            }
            // Readers pace themselves (load, not synchronisation).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let calls = s.calls("getticket");
        println!(
            "{policy:?}: {served} served, {unavailable} answered 503, {} distinct tickets, {calls} getticket calls",
            distinct.len()
        );
        assert!(
            distinct.len() >= 2,
            "{policy:?}: a new ticket every lifetime"
        );
        assert!(
            served > 10 * unavailable,
            "{policy:?}: readers are served almost always"
        );
        // About two calls per lifetime (ahead of expiry, and at expiry when WeChat answers the
        // same ticket until then), plus retries of the injected failures.
        assert!(
            calls <= 12,
            "{policy:?}: {calls} getticket calls in three lifetimes"
        );
        if policy == JsTicketPolicy::NewRetiringPrevious {
            assert!(
                replaced_early,
                "a new ticket is served before the old one expires"
            );
        }
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_ticket_is_no_longer_refreshed_and_its_next_read_fetches_it_again() {
    const LIFETIME: Duration = Duration::from_secs(4);
    let s = Server::start_with(short_lived(LIFETIME, JsTicketPolicy::SameWhileValid), |c| {
        short_margins(c);
        c.refresh.ticket_idle = Duration::from_secs(1);
    })
    .await;
    let appid = s.authorize_account(AccountKind::OfficialAccount).await;
    let key = s.client_key("h5-pages", &[&appid], false).await;
    let (status, body) = s
        .get(Some(&key), &format!("/v1/tickets/{appid}/jsapi"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let first = ticket_of(&body);
    let engine = &s.app().engine;
    let account = engine.slot(None, &appid).unwrap();
    let slot = engine.ticket_slot(&account, CredentialKind::Jsapi).unwrap();
    let generation = body["generation"].as_u64().unwrap();
    // Nobody reads it: past its refresh time and its expiry, no newer ticket ever lands.
    let waited = engine
        .wait_newer(
            &slot,
            generation,
            LIFETIME + Duration::from_secs(1),
            &tokio_util::sync::CancellationToken::new(),
        )
        .await;
    assert!(waited.is_err(), "expired, not replaced: {waited:?}");
    assert_eq!(s.calls("getticket"), 1, "an idle ticket is not refreshed");
    assert_eq!(
        engine.next_refresh(&slot.credential()),
        None,
        "off the schedule"
    );
    assert!(!s.sim.control().validate_ticket(&first).valid);

    // The next read fetches it (WeChat's expired, a new one) and puts it back on the schedule.
    let (status, body) = s
        .get(Some(&key), &format!("/v1/tickets/{appid}/jsapi"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ne!(ticket_of(&body), first);
    assert!(s.sim.control().validate_ticket(&ticket_of(&body)).valid);
    assert_eq!(s.calls("getticket"), 2);
    assert!(
        engine.next_refresh(&slot.credential()).is_some(),
        "read: scheduled again"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_account_token_on_getticket_recovers_with_one_token_refresh() {
    let s = Server::start().await;
    let appid = s.authorize_account(AccountKind::OfficialAccount).await;
    let key = s.client_key("h5-pages", &[&appid], false).await;
    let (_, body) = s.get(Some(&key), &format!("/v1/tokens/{appid}")).await;
    let ours = body["access_token"].as_str().unwrap().to_owned();
    // Something outside wxtoken refreshes the account; WeChat retires ours after the overlap.
    s.refresh_behind_wxtokens_back(&appid).await;
    s.sim.control().advance_clock(Duration::from_secs(31));
    assert!(!s.sim.control().validate(&ours).valid);

    s.sim.control().reset_stats();
    let (status, body) = s
        .get(Some(&key), &format!("/v1/tickets/{appid}/jsapi"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(s.sim.control().validate_ticket(&ticket_of(&body)).valid);
    assert_eq!(s.calls("getticket"), 2, "refused once, then fetched");
    assert_eq!(s.calls("api_authorizer_token"), 1, "one token refresh");
    let (_, token) = s.get(Some(&key), &format!("/v1/tokens/{appid}")).await;
    assert_ne!(token["access_token"].as_str().unwrap(), ours);
    s.shutdown().await;
}

#[tokio::test]
async fn a_stored_ticket_is_served_after_a_restart_without_a_getticket_call() {
    let mut h = Harness::start(
        crate::harness::sim_config(Duration::from_secs(600), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
    )
    .await;
    let bulk = h.import_authorizers(1).await;
    let appid = &bulk[0].authorizer_appid;
    let account = h.engine.lookup(None, appid).await.unwrap();
    let ticket = h
        .engine
        .ticket(&account, CredentialKind::WxCard)
        .await
        .expect("fetched");
    let credential = h.credential(appid).ticket(CredentialKind::WxCard);
    h.engine.wait_stored(&credential).await;
    let calls = h.sim.control().stats().endpoints["getticket"].calls;
    assert_eq!(calls, 1);

    h.restart().await;
    let account = h.engine.lookup(None, appid).await.unwrap();
    let again = h
        .engine
        .ticket(&account, CredentialKind::WxCard)
        .await
        .expect("served from the store");
    assert_eq!(
        again.access_token.expose_secret(),
        ticket.access_token.expose_secret()
    );
    assert_eq!(again.generation, ticket.generation);
    assert_eq!(h.sim.control().stats().endpoints["getticket"].calls, 1);
    h.stop().await;
}
