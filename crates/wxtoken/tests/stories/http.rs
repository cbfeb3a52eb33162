//! End-to-end tests over real sockets: the simulator pushes to wxtoken's public listener, clients
//! read from its internal listener, and every token handed out is checked at the simulator.

use std::time::Duration;

use crate::harness::server::{Server, now_secs};
use reqwest::StatusCode;
use wechat::event::{AuthorizationEvent, Event, MsgCrypt, TicketEvent};
use wechat_sim::AccountKind;
use wxtoken::model::ComponentAppid;

fn valid(s: &Server, token: &serde_json::Value) -> bool {
    s.sim
        .control()
        .validate(token["access_token"].as_str().expect("access_token"))
        .valid
}

/// The `href` of the authorize button on our page, unescaped.
fn button_href(html: &str) -> String {
    let start = html.find("id=\"authorize\" href=\"").expect("button") + 21;
    let end = start + html[start..].find('"').expect("end of href");
    html[start..end].replace("&amp;", "&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_through_the_consent_page_yields_a_token_that_validates_and_long_polls_wake()
{
    // The report below is of a fine token: without the rogue check it is taken at its word.
    let s = Server::start_with(crate::harness::server::sim_config(), |c| {
        c.refresh.rogue_window = Duration::ZERO;
    })
    .await;
    // The ticket push arrived: the component token is there and valid.
    let (status, component) = s.get(Some(&s.admin_key), "/v1/component/token").await;
    assert_eq!(status, StatusCode::OK, "{component}");
    assert!(valid(&s, &component));

    let account = s.new_account(AccountKind::OfficialAccount);
    // Our page, with a fresh pre_auth_code, links to the (simulated) consent page.
    let page = s
        .http
        .get(format!("{}/authorize?mobile=false", s.public))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["cache-control"], "no-store");
    let consent = url::Url::parse(&button_href(&page.text().await.unwrap())).unwrap();
    assert!(consent.as_str().starts_with(s.sim.base_url()));
    assert_eq!(consent.path(), wechat::authorize::PC_PATH);
    // The merchant approves: the simulator redirects to our callback with auth_code.
    let mut form: Vec<(String, String)> = consent.query_pairs().into_owned().collect();
    form.push(("appid".into(), account.appid.clone()));
    let approved = s
        .http
        .post(consent.as_str().split('?').next().unwrap())
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), StatusCode::FOUND);
    let callback = approved.headers()["location"].to_str().unwrap().to_owned();
    assert!(callback.starts_with(&format!("{}/authorize/callback?", s.public)));
    let result = s.http.get(&callback).send().await.unwrap();
    assert_eq!(result.status(), StatusCode::OK);
    let html = result.text().await.unwrap();
    assert!(html.contains(&account.appid), "{html}");

    // A client granted that appid reads a token that WeChat (the simulator) accepts.
    let key = s.client_key("orders", &[&account.appid], false).await;
    let path = format!("/v1/tokens/{}", account.appid);
    let (status, token) = s.get(Some(&key), &path).await;
    assert_eq!(status, StatusCode::OK, "{token}");
    assert!(valid(&s, &token));
    assert_eq!(token["appid"], account.appid.as_str());
    assert!(token["refresh_at"].as_i64() < token["expires_at"].as_i64());
    let generation = token["generation"].as_u64().unwrap();

    // A long-poll for a newer token wakes when an invalidation report replaces it.
    let poll = {
        let http = s.http.clone();
        let url = format!("{}{path}?after={generation}&wait=60", s.internal);
        let key = key.clone();
        tokio::spawn(async move {
            let r = http.get(url).bearer_auth(key).send().await.unwrap();
            (r.status(), r.json::<serde_json::Value>().await.unwrap())
        })
    };
    let reported = s
        .http
        .post(format!("{}{path}/invalidate", s.internal))
        .bearer_auth(&key)
        .json(&serde_json::json!({"access_token": token["access_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(reported.status(), StatusCode::OK);
    let fresh: serde_json::Value = reported.json().await.unwrap();
    assert!(fresh["generation"].as_u64().unwrap() > generation);
    assert!(valid(&s, &fresh));
    let (status, woke) = tokio::time::timeout(Duration::from_secs(30), poll)
        .await
        .expect("the long-poll wakes")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(woke["generation"], fresh["generation"]);
    assert_eq!(woke["access_token"], fresh["access_token"]);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_foreign_stale_malformed_and_oversized_pushes_are_refused_and_change_nothing() {
    let s = Server::start().await;
    let comp = ComponentAppid::parse(s.comp()).unwrap();
    let before = s.store.components().latest_ticket(&comp).await.unwrap();
    assert!(before.is_some());
    let ticket = |value: &str| {
        Event::ComponentVerifyTicket(TicketEvent {
            app_id: s.comp().to_owned(),
            create_time: now_secs(),
            component_verify_ticket: value.to_owned(),
        })
    };

    // Forged: signed with the wrong Token.
    let forger = MsgCrypt::new(
        "not-the-token",
        "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        s.comp(),
    )
    .unwrap();
    let (params, body) = wechat::event::seal_push(&forger, &ticket("forged"), now_secs(), "n");
    assert_eq!(s.push(&params, body).await.0, StatusCode::FORBIDDEN);
    // A correct push whose signature was tampered with.
    let (mut params, body) = s.seal(&ticket("tampered"), now_secs());
    params.msg_signature = "0".repeat(40);
    assert_eq!(s.push(&params, body).await.0, StatusCode::FORBIDDEN);
    // A component this server does not serve.
    let foreign = MsgCrypt::new(
        "e2etoken",
        "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        "wxnotourcomponent1",
    )
    .unwrap();
    let (params, body) = wechat::event::seal_push(&foreign, &ticket("foreign"), now_secs(), "n");
    assert_eq!(s.push(&params, body).await.0, StatusCode::BAD_REQUEST);
    // Correctly signed, but captured an hour ago (a replay).
    let (params, body) = s.seal(&ticket("stale"), now_secs() - 3600);
    let (status, text) = s.push(&params, body).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    // Malformed bodies and parameters.
    let (params, _) = s.seal(&ticket("x"), now_secs());
    assert_eq!(s.push(&params, "not xml").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        s.push(&params, "<xml><AppId>wx</AppId></xml>").await.0,
        StatusCode::BAD_REQUEST
    );
    let no_params = s
        .http
        .post(format!("{}/wechat/events", s.public))
        .body("<xml><Encrypt>abc</Encrypt></xml>")
        .send()
        .await
        .unwrap();
    assert_eq!(no_params.status(), StatusCode::BAD_REQUEST);
    // Oversized.
    let huge = format!("<xml><Encrypt>{}</Encrypt></xml>", "A".repeat(100 * 1024));
    assert_eq!(s.push(&params, huge).await.0, StatusCode::PAYLOAD_TOO_LARGE);

    // Nothing changed: the same ticket, no event waiting.
    assert_eq!(
        s.store.components().latest_ticket(&comp).await.unwrap(),
        before
    );
    assert!(
        s.store
            .events()
            .unprocessed_events(None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A genuine push still works.
    let (params, body) = s.seal(&ticket("genuine"), now_secs());
    assert_eq!(
        s.push(&params, body).await,
        (StatusCode::OK, "success".to_owned())
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_authorization_push_is_answered_success_and_applied_once() {
    let s = Server::start().await;
    // Deliver the push ourselves: the simulator only issues the code.
    s.sim.control().set_push_url(s.comp(), None).unwrap();
    let account = s.new_account(AccountKind::MiniProgram);
    let outcome = s.sim.control().authorize(&account.appid, s.comp()).unwrap();
    let event = Event::Authorized(AuthorizationEvent {
        app_id: s.comp().to_owned(),
        create_time: now_secs(),
        authorizer_appid: account.appid.clone(),
        authorization_code: outcome.authorization_code.clone(),
        authorization_code_expired_time: outcome.authorization_code_expired_time,
        pre_auth_code: None,
    });
    let (params, body) = s.seal(&event, now_secs());
    for _ in 0..3 {
        assert_eq!(
            s.push(&params, body.clone()).await,
            (StatusCode::OK, "success".to_owned())
        );
        s.app().engine.process_events().await.unwrap();
    }
    assert_eq!(s.calls("api_query_auth"), 1, "applied once");
    let (status, token) = s
        .get(Some(&s.admin_key), &format!("/v1/tokens/{}", account.appid))
        .await;
    assert_eq!(status, StatusCode::OK, "{token}");
    assert!(valid(&s, &token));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_checked_and_a_key_for_appid_a_reading_appid_b_gets_403() {
    let s = Server::start().await;
    let a = s.authorize_account(AccountKind::OfficialAccount).await;
    let b = s.authorize_account(AccountKind::MiniProgram).await;
    let key_a = s.client_key("svc-a", &[&a], false).await;

    for _ in 0..2 {
        assert_eq!(
            s.get(Some(&key_a), &format!("/v1/tokens/{a}")).await.0,
            StatusCode::OK
        );
    }
    // Every read is counted per client and appid (the refused ones below are not).
    s.app().state.0.reads.flush(&*s.store).await.unwrap();
    let counts = s.store.clients().read_counts(None).await.unwrap();
    let of_a: Vec<_> = counts.iter().filter(|c| c.appid.as_str() == a).collect();
    assert_eq!(of_a.len(), 1);
    assert_eq!(of_a[0].count, 2);
    let (status, body) = s.get(Some(&key_a), &format!("/v1/tokens/{b}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "forbidden");
    let invalidate_b = s
        .http
        .post(format!("{}/v1/tokens/{b}/invalidate", s.internal))
        .bearer_auth(&key_a)
        .json(&serde_json::json!({"access_token": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalidate_b.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        s.get(None, &format!("/v1/tokens/{a}")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let forged = format!("wxt_{}", "A".repeat(43));
    let (status, body) = s.get(Some(&forged), &format!("/v1/tokens/{a}")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    // Not an admin key; not granted the component.
    assert_eq!(
        s.get(Some(&key_a), "/v1/admin/clients").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.get(Some(&key_a), "/v1/component/token").await.0,
        StatusCode::FORBIDDEN
    );
    // Unknown appid, bad appid.
    let (status, body) = s
        .get(Some(&s.admin_key), "/v1/tokens/wxunknownappid0001")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    // Revoked through the admin API: refused at once.
    let revoked = s
        .http
        .delete(format!("{}/v1/admin/clients/svc-a", s.internal))
        .bearer_auth(&s.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        s.get(Some(&key_a), &format!("/v1/tokens/{a}")).await.0,
        StatusCode::UNAUTHORIZED
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_internal_path_answers_on_the_public_listener() {
    let s = Server::start().await;
    let (status, api) = s.get(None, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let mut paths: Vec<String> = api["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(|p| {
            p.replace("{appid}", "wxauthorizer00001")
                .replace("{name}", "x")
        })
        .collect();
    paths.push("/openapi.json".into());
    assert!(paths.len() >= 12, "{paths:?}");
    for path in paths {
        for method in [
            reqwest::Method::GET,
            reqwest::Method::POST,
            reqwest::Method::DELETE,
        ] {
            let response = s
                .http
                .request(method.clone(), format!("{}{path}", s.public))
                .bearer_auth(&s.admin_key)
                .send()
                .await
                .unwrap();
            assert!(
                matches!(
                    response.status(),
                    StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
                ),
                "{method} {path} answered {} on the public listener",
                response.status()
            );
        }
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_every_internal_endpoint() {
    let s = Server::start().await;
    let (_, api) = s.get(None, "/openapi.json").await;
    let paths = api["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/v1/tokens/{appid}", "get"),
        ("/v1/tokens/{appid}/invalidate", "post"),
        ("/v1/component/token", "get"),
        ("/v1/admin/authorizers", "get"),
        ("/v1/admin/authorizers/{appid}", "get"),
        ("/v1/admin/authorizers/{appid}/refresh", "post"),
        ("/v1/admin/authorizers/import", "post"),
        ("/v1/admin/accounts", "get"),
        ("/v1/admin/accounts", "post"),
        ("/v1/admin/accounts/{appid}", "delete"),
        ("/v1/admin/clients", "get"),
        ("/v1/admin/clients", "post"),
        ("/v1/admin/clients/{name}", "delete"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from /openapi.json"
        );
    }
    assert!(api["components"]["schemas"]["TokenResponse"].is_object());
    assert!(api["components"]["securitySchemes"]["api_key"].is_object());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_metrics_and_admin_views_show_state_without_secrets() {
    let s = Server::start().await;
    let appid = s.authorize_account(AccountKind::OfficialAccount).await;
    let (status, token) = s
        .get(Some(&s.admin_key), &format!("/v1/tokens/{appid}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let secret = token["access_token"].as_str().unwrap().to_owned();

    let (status, ready) = s.get(None, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["ready"], true);
    assert_eq!(s.get(None, "/healthz").await.0, StatusCode::OK);

    let metrics = s
        .http
        .get(format!("{}/metrics", s.internal))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "wxtoken_http_requests_total",
        "wxtoken_authorizers{status=\"active\"}",
        "wxtoken_token_time_to_expiry_seconds_bucket",
        "wxtoken_token_age_seconds_count",
        "wxtoken_ticket_age_seconds",
        "wxtoken_upstream_seconds_bucket",
        "wxtoken_refresh_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(!metrics.contains(&secret), "a token leaked into /metrics");
    assert!(!metrics.contains(&appid), "no appid label on metrics");

    let (status, view) = s
        .get(
            Some(&s.admin_key),
            &format!("/v1/admin/authorizers/{appid}"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["status"], "active");
    assert_eq!(view["refresh_token_history"], 1);
    let (status, page) = s.get(Some(&s.admin_key), "/v1/admin/authorizers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["authorizers"].as_array().unwrap().len(), 1);
    assert!(!page.to_string().contains(&secret));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_invalidation_reports_over_http_make_one_upstream_call() {
    // The token reported is fine: without the rogue check, each report is taken at its word.
    let s = Server::start_with(crate::harness::server::sim_config(), |c| {
        c.refresh.rogue_window = Duration::ZERO;
        c.server.report_burst = 100;
    })
    .await;
    let appid = s.authorize_account(AccountKind::OfficialAccount).await;
    let path = format!("/v1/tokens/{appid}");
    let (_, token) = s.get(Some(&s.admin_key), &path).await;
    let before = s.calls("api_authorizer_token");
    let reports = (0..50).map(|_| {
        s.http
            .post(format!("{}{path}/invalidate", s.internal))
            .bearer_auth(&s.admin_key)
            .json(&serde_json::json!({"access_token": token["access_token"]}))
            .send()
    });
    let answers = futures::future::join_all(reports).await;
    let mut generations = std::collections::HashSet::new();
    for answer in answers {
        let answer = answer.unwrap();
        let status = answer.status();
        assert_eq!(status, StatusCode::OK, "{}", answer.text().await.unwrap());
        let body: serde_json::Value = answer.json().await.unwrap();
        generations.insert(body["generation"].as_u64().unwrap());
        assert!(valid(&s, &body));
    }
    assert_eq!(s.calls("api_authorizer_token"), before + 1);
    assert_eq!(
        generations.len(),
        1,
        "every reporter got the same new token"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_account_added_through_the_admin_api_is_served_at_once() {
    let s = Server::start().await;
    let account = s.new_account(AccountKind::MiniProgram);
    let added = s
        .http
        .post(format!("{}/v1/admin/accounts", s.internal))
        .bearer_auth(&s.admin_key)
        .json(&serde_json::json!({
            "appid": account.appid, "kind": "mini_program", "appsecret": account.appsecret
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::CREATED);
    let listed = added.text().await.unwrap();
    assert!(
        !listed.contains(&account.appsecret),
        "the appsecret is never shown"
    );
    let (status, token) = s
        .get(Some(&s.admin_key), &format!("/v1/tokens/{}", account.appid))
        .await;
    assert_eq!(status, StatusCode::OK, "{token}");
    assert_eq!(token["source"], "stable_token");
    assert!(valid(&s, &token));
    // A malformed body is a 400 with the JSON error shape.
    let bad = s
        .http
        .post(format!("{}/v1/admin/accounts", s.internal))
        .bearer_auth(&s.admin_key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_waiting_long_polls_and_completes() {
    let s = Server::start().await;
    let appid = s.authorize_account(AccountKind::OfficialAccount).await;
    let (_, token) = s
        .get(Some(&s.admin_key), &format!("/v1/tokens/{appid}"))
        .await;
    let poll = {
        let url = format!(
            "{}/v1/tokens/{appid}?after={}&wait=60",
            s.internal, token["generation"]
        );
        let http = s.http.clone();
        let key = s.admin_key.clone();
        tokio::spawn(async move {
            http.get(url)
                .bearer_auth(key)
                .send()
                .await
                .map(|r| r.status())
        })
    };
    // Wait until the server holds the long-poll; shutting down must not wait out its 60 s.
    let slot = s.app().engine.slot(None, &appid).unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while slot.watchers() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the long-poll reaches the server");
    tokio::time::timeout(Duration::from_secs(20), s.shutdown())
        .await
        .expect("shutdown does not wait for long-polls");
    let status = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the long-poll ends")
        .unwrap();
    // Answered, with the current token, before the listener closed.
    assert_eq!(status.expect("answered"), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_authorizers_refresh_goes_through_the_running_server() {
    let s = Server::start().await;
    let appid = s.authorize_account(AccountKind::OfficialAccount).await;
    let (_, before) = s
        .get(Some(&s.admin_key), &format!("/v1/tokens/{appid}"))
        .await;
    let calls = s.calls("api_authorizer_token");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxtoken"))
        .args(["authorizers", "refresh", &appid, "--server", &s.internal])
        .env("WXTOKEN_API_KEY", &s.admin_key)
        .env_remove("WXTOKEN_CONFIG")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&appid));
    assert_eq!(s.calls("api_authorizer_token"), calls + 1);
    let (_, after) = s
        .get(Some(&s.admin_key), &format!("/v1/tokens/{appid}"))
        .await;
    assert!(after["generation"].as_u64() > before["generation"].as_u64());
    assert!(valid(&s, &after));
    // Without a key it refuses and says what to do.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxtoken"))
        .args(["authorizers", "refresh", &appid, "--server", &s.internal])
        .env_remove("WXTOKEN_API_KEY")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("WXTOKEN_API_KEY"));
    s.shutdown().await;
}

#[tokio::test]
async fn held_connections_on_the_public_listener_are_closed_after_the_header_timeout_and_never_starve_the_internal_api()
 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CAP: usize = 40;
    const HELD: usize = 100;
    let s = Server::start_with(crate::harness::server::sim_config(), |c| {
        c.server.public_max_connections = Some(CAP);
        c.server.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let fds_before = open_files();
    // Connections that start a request and never finish its head.
    let public = s.public.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..HELD {
        let mut socket = tokio::net::TcpStream::connect(&public)
            .await
            .expect("connect");
        socket
            .write_all(b"GET /authorize HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        held.push(socket);
    }
    // Meanwhile the internal listener answers, and the public one holds no more than its cap.
    let mut latencies = Vec::new();
    for _ in 0..20 {
        let started = std::time::Instant::now();
        assert_eq!(s.get(None, "/healthz").await.0, StatusCode::OK);
        latencies.push(started.elapsed());
        let (public_open, _) = s.app().open_connections();
        assert!(
            public_open <= CAP,
            "{public_open} connections accepted, cap {CAP}"
        );
    }
    let fds_held = open_files();
    // Every held connection is closed by the server: the first CAP after the header timeout, the
    // others once a closed one made room for them (the bound only keeps a failure from hanging).
    let closed = futures::future::join_all(held.into_iter().map(|mut socket| async move {
        let mut buf = [0u8; 512];
        let read_to_end = async {
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read_to_end)
            .await
            .is_ok()
    }))
    .await;
    assert!(closed.iter().all(|c| *c), "every held connection is closed");
    latencies.sort();
    println!(
        "internal /healthz while {HELD} connections were held on the public listener (cap {CAP}): \
         p50 {:?}, max {:?}; open files: {fds_before} before, {fds_held} while held (the test's \
         own {HELD} client sockets included)",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
    );
}

/// This process's open file descriptors.
fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[tokio::test]
async fn html_pages_send_security_headers_and_the_url_check_refuses_an_old_timestamp() {
    use sha2::Digest as _;
    let s = Server::start().await;
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let too_long = "a".repeat(7000);
    let pages = [
        ("/authorize".to_owned(), StatusCode::OK, "strict-origin"),
        (
            format!("/authorize/callback?auth_code={too_long}"),
            StatusCode::BAD_REQUEST,
            "no-referrer",
        ),
        (
            "/authorize/callback".to_owned(),
            StatusCode::BAD_REQUEST,
            "no-referrer",
        ),
    ];
    for (path, status, referrer) in pages {
        let r = s
            .http
            .get(format!("{}{path}", s.public))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path}");
        let csp = header(&r, "content-security-policy");
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(header(&r, "x-frame-options"), "DENY", "{path}");
        assert_eq!(header(&r, "x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header(&r, "referrer-policy"), referrer, "{path}");
        let html = r.text().await.unwrap();
        // The page's one style sheet is the one the policy allows.
        let style = html
            .split_once("<style>")
            .and_then(|(_, rest)| rest.split_once("</style>"))
            .expect("a style sheet")
            .0;
        use base64::Engine as _;
        let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(style));
        assert!(csp.contains(&format!("'sha256-{hash}'")), "{path}: {csp}");
        if path.contains(&too_long) {
            assert!(html.contains("too long"), "{html}");
        }
    }

    // The URL check: a valid signature with a current timestamp is answered, with nosniff; the same
    // kind of triple from long ago is not.
    let check = |timestamp: i64| {
        let timestamp = timestamp.to_string();
        let signature = s.crypt.signature(&timestamp, "nonce1");
        s.http
            .get(format!("{}/wechat/events", s.public))
            .query(&[
                ("signature", signature.as_str()),
                ("timestamp", timestamp.as_str()),
                ("nonce", "nonce1"),
                ("echostr", "hello-wechat"),
            ])
            .send()
    };
    let fresh = check(now_secs()).await.unwrap();
    assert_eq!(fresh.status(), StatusCode::OK);
    assert_eq!(header(&fresh, "x-content-type-options"), "nosniff");
    assert_eq!(fresh.text().await.unwrap(), "hello-wechat");
    let old = check(978_307_200).await.unwrap(); // 2001-01-01
    assert_eq!(old.status(), StatusCode::FORBIDDEN);
    s.shutdown().await;
}

#[tokio::test]
async fn anonymous_authorize_requests_are_limited_per_client_ip_and_overall_and_forwarded_ips_count_only_behind_a_trusted_proxy()
 {
    use wechat_sim::Api;
    let get = |s: &Server, path: &str, forwarded: &str| {
        s.http
            .get(format!("{}{path}", s.public))
            .header("x-forwarded-for", forwarded)
            .send()
    };
    // No trusted proxy: the header is ignored, every request comes from 127.0.0.1.
    let s = Server::start_with(crate::harness::server::sim_config(), |c| {
        c.server.authorize_per_ip_per_minute = 3;
        c.server.authorize_total_per_minute = 5;
    })
    .await;
    s.sim.control().reset_stats();
    let mut statuses = Vec::new();
    for i in 0..10 {
        let r = get(&s, "/authorize", &format!("203.0.113.{i}"))
            .await
            .unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers().contains_key("retry-after"));
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429, 429, 429, 429, 429]);
    // Forged callbacks share the budget: none reaches api_query_auth now.
    let forged = get(&s, "/authorize/callback?auth_code=forged", "203.0.113.99")
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::TOO_MANY_REQUESTS);
    let stats = s.sim.control().stats();
    assert_eq!(stats.calls(Api::CreatePreauthcode), 3);
    assert_eq!(stats.calls(Api::QueryAuth), 0);
    s.shutdown().await;

    // Behind a trusted proxy: per forwarded client, and at most the total for all of them.
    let s = Server::start_with(crate::harness::server::sim_config(), |c| {
        c.server.authorize_per_ip_per_minute = 2;
        c.server.authorize_total_per_minute = 5;
        c.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    s.sim.control().reset_stats();
    let mut statuses = Vec::new();
    for client in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        for _ in 0..3 {
            // A client-supplied hop before the proxy's own entry is not believed.
            let chain = format!("10.9.9.9, {client}");
            statuses.push(
                get(&s, "/authorize", &chain)
                    .await
                    .unwrap()
                    .status()
                    .as_u16(),
            );
        }
    }
    assert_eq!(statuses, [200, 200, 429, 200, 200, 429, 200, 429, 429]);
    assert_eq!(s.sim.control().stats().calls(Api::CreatePreauthcode), 5);
    s.shutdown().await;
}

/// The admin API rotates a client's key with a grace period (both keys read meanwhile; a second
/// rotation without grace ends the previous key at once), answers 409 `conflict` for a live
/// duplicate name and lets a revoked client's name be reused; a non-admin key may do none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keys_rotate_with_a_grace_and_a_revoked_name_is_reused_over_the_admin_api() {
    let s = Server::start().await;
    let appid = s.authorize_account(AccountKind::OfficialAccount).await;
    let first = s.client_key("billing", &[&appid], false).await;
    let path = format!("/v1/tokens/{appid}");
    let admin = |method: reqwest::Method, p: &str| {
        s.http
            .request(method, format!("{}{p}", s.internal))
            .bearer_auth(&s.admin_key)
    };

    let dup = admin(reqwest::Method::POST, "/v1/admin/clients")
        .json(&serde_json::json!({"name": "billing", "appids": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), StatusCode::CONFLICT);
    let body: serde_json::Value = dup.json().await.unwrap();
    assert_eq!(body["error"]["code"], "conflict", "{body}");

    let not_admin = s
        .http
        .post(format!("{}/v1/admin/clients/billing/rotate", s.internal))
        .bearer_auth(&first)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(not_admin.status(), StatusCode::FORBIDDEN);

    let rotate = |grace: u64| {
        admin(reqwest::Method::POST, "/v1/admin/clients/billing/rotate")
            .json(&serde_json::json!({"grace_seconds": grace}))
            .send()
    };
    let answer: serde_json::Value = rotate(3600).await.unwrap().json().await.unwrap();
    let second = answer["api_key"].as_str().expect("a new key").to_owned();
    assert_ne!(second, first);
    assert_eq!(answer["client"]["previous_key_hint"], &first[..8]);
    assert!(
        answer["client"]["previous_key_expires_at"]
            .as_i64()
            .is_some()
    );
    assert_eq!(
        s.get(Some(&first), &path).await.0,
        StatusCode::OK,
        "in its grace"
    );
    assert_eq!(s.get(Some(&second), &path).await.0, StatusCode::OK);

    let answer: serde_json::Value = rotate(0).await.unwrap().json().await.unwrap();
    let third = answer["api_key"].as_str().expect("a new key").to_owned();
    assert_eq!(
        answer["client"]["previous_key_hint"],
        serde_json::Value::Null
    );
    assert_eq!(
        s.get(Some(&second), &path).await.0,
        StatusCode::UNAUTHORIZED,
        "no grace"
    );
    assert_eq!(s.get(Some(&first), &path).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(s.get(Some(&third), &path).await.0, StatusCode::OK);
    let too_long = rotate(31 * 24 * 3600).await.unwrap();
    assert_eq!(too_long.status(), StatusCode::BAD_REQUEST);
    let nobody = admin(reqwest::Method::POST, "/v1/admin/clients/nobody/rotate")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(nobody.status(), StatusCode::NOT_FOUND);

    let revoked = admin(reqwest::Method::DELETE, "/v1/admin/clients/billing")
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    assert_eq!(s.get(Some(&third), &path).await.0, StatusCode::UNAUTHORIZED);
    let reused = s.client_key("billing", &[&appid], false).await;
    assert_eq!(s.get(Some(&reused), &path).await.0, StatusCode::OK);
    assert_eq!(
        s.get(Some(&third), &path).await.0,
        StatusCode::UNAUTHORIZED,
        "still revoked"
    );
    s.shutdown().await;
}

/// A merchant back from WeChat with a code WeChat refuses sees WeChat's error once, named by its
/// endpoint once (it once read "api_query_auth: api_query_auth: errcode …").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_authorization_code_shows_the_merchant_wechats_error_once() {
    let s = Server::start().await;
    let page = s
        .http
        .get(format!(
            "{}/authorize/callback?auth_code=queryauthcode@@@unknown",
            s.public
        ))
        .send()
        .await
        .unwrap();
    assert!(page.status().is_client_error() || page.status().is_server_error());
    let html = page.text().await.unwrap();
    let start = html.find("<p id=\"error\">").expect("an error paragraph") + 14;
    let message = &html[start..start + html[start..].find("</p>").expect("end")];
    assert_eq!(
        message.split(" rid: ").next(),
        Some("authorization lost: api_query_auth: errcode 61009 (configuration): code is invalid"),
        "{message}"
    );
    s.shutdown().await;
}
