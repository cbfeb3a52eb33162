//! Guards against clients' mistakes (issue 13), end to end over real sockets: a reporting loop
//! cannot burn a credential's quota, a client over its report rate gets 429, and a refresh made
//! behind wxtoken's back is found, named and recovered from with one refresh.

use std::time::{Duration, Instant};

use crate::harness::engine::WebhookReceiver;
use crate::harness::server::{Server, sim_config};
use reqwest::StatusCode;
use wechat_sim::AccountKind;

/// `POST /v1/tokens/{appid}/invalidate` with `token`: (status, body, Retry-After).
async fn report(
    s: &Server,
    key: &str,
    appid: &str,
    token: &str,
) -> (StatusCode, serde_json::Value, Option<u64>) {
    let response = s
        .http
        .post(format!("{}/v1/tokens/{appid}/invalidate", s.internal))
        .bearer_auth(key)
        .json(&serde_json::json!({ "access_token": token }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body, retry_after)
}

/// The WeChat calls an invalidation report can cause (a refresh, a check of the token); a new
/// authorization's api_get_authorizer_info, asked in the background, is none of them.
pub(crate) fn report_calls(stats: &wechat_sim::StatsSnapshot) -> u64 {
    ["api_authorizer_token", "getcallbackip"]
        .iter()
        .map(|e| stats.endpoints.get(*e).map_or(0, |s| s.calls))
        .sum()
}

fn token_of(body: &serde_json::Value) -> String {
    body["access_token"].as_str().expect("a token").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reporting_loop_forces_at_most_one_refresh_per_min_force_interval() {
    let s = Server::start_with(sim_config(), |c| {
        c.refresh.min_force_interval = Duration::from_secs(1);
        // Every allowed force is a real refresh here (the rogue check is another story).
        c.refresh.rogue_window = Duration::ZERO;
        c.server.report_rate = 1_000_000;
        c.server.report_burst = 1_000_000;
    })
    .await;
    let appid = s.authorize_account(AccountKind::OfficialAccount).await;
    let key = s.client_key("looping-svc", &[&appid], false).await;
    let path = format!("/v1/tokens/{appid}");
    s.sim.control().reset_stats();
    let started = Instant::now();
    for _ in 0..2000 {
        let (status, body) = s.get(Some(&key), &path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, answer, _) = report(&s, &key, &appid, &token_of(&body)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert!(
            s.sim.control().validate(&token_of(&answer)).valid,
            "every answer is a valid token"
        );
    }
    let elapsed = started.elapsed();
    let stats = s.sim.control().stats_for(&appid);
    let calls = report_calls(&stats);
    let bound = elapsed.as_secs_f64().ceil() as u64 + 1;
    eprintln!(
        "2,000 report loops in {:.1}s: {calls} upstream calls for the appid (bound {bound})",
        elapsed.as_secs_f64()
    );
    assert!(
        calls <= bound,
        "{calls} upstream calls in {elapsed:?}: more than one per min_force_interval"
    );
    assert!(
        calls >= 1,
        "the first report of the current token refreshes"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_report_rate_gets_429_with_retry_after_and_others_are_not_limited() {
    let s = Server::start().await;
    let appid = s.authorize_account(AccountKind::OfficialAccount).await;
    let noisy = s.client_key("noisy-svc", &[&appid], false).await;
    let quiet = s.client_key("quiet-svc", &[&appid], false).await;
    let before = s.calls("api_authorizer_token") + s.calls("getcallbackip");
    let started = Instant::now();
    let (mut passed, mut limited) = (0u32, 0u32);
    for _ in 0..100 {
        // Not the current token: answered with the current one, no upstream call either way.
        let (status, body, retry_after) = report(&s, &noisy, &appid, "stale-token").await;
        match status {
            StatusCode::OK => passed += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
                assert!(retry_after.is_some_and(|s| s >= 1), "Retry-After is set");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The default rate: 10 a second after a burst of 20.
    assert!(passed >= 20, "the burst passes: {passed}");
    assert!(
        f64::from(passed) <= 20.0 + (10.0 * elapsed).ceil() + 1.0,
        "{passed} passed in {elapsed:.2}s"
    );
    assert!(limited > 0, "the rest are limited");
    let (status, body, _) = report(&s, &quiet, &appid, "stale-token").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "another client is not limited: {body}"
    );
    assert_eq!(
        s.calls("api_authorizer_token") + s.calls("getcallbackip"),
        before,
        "reports of a replaced token never call WeChat"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_behind_wxtokens_back_raises_one_rogue_refresher_alert_naming_the_client_and_one_refresh_recovers()
 {
    let webhook = WebhookReceiver::start().await;
    let url = webhook.url.clone();
    let s = Server::start_with(sim_config(), move |c| {
        c.alerts.webhook_url = Some(url);
    })
    .await;
    let appid = s.authorize_account(AccountKind::OfficialAccount).await;
    let other = s.authorize_account(AccountKind::MiniProgram).await;
    let key = s.client_key("billing-svc", &[&appid, &other], false).await;

    // A wrong report (the token is fine): checked with one cheap call, nothing refreshed.
    let (_, body) = s.get(Some(&key), &format!("/v1/tokens/{other}")).await;
    let fine = token_of(&body);
    s.sim.control().reset_stats();
    let (status, answer, _) = report(&s, &key, &other, &fine).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(token_of(&answer), fine, "a token WeChat accepts is kept");
    assert_eq!(s.calls("getcallbackip"), 1);
    assert_eq!(s.calls("api_authorizer_token"), 0);

    // Another service refreshes `appid` with its refresh token, as a forgotten refresher would.
    let (_, body) = s.get(Some(&key), &format!("/v1/tokens/{appid}")).await;
    let ours = token_of(&body);
    s.refresh_behind_wxtokens_back(&appid).await;
    // WeChat retires the replaced token once its overlap (30 s here) is over.
    s.sim.control().advance_clock(Duration::from_secs(31));
    assert!(!s.sim.control().validate(&ours).valid);

    s.sim.control().reset_stats();
    let (status, answer, _) = report(&s, &key, &appid, &ours).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let recovered = token_of(&answer);
    assert_ne!(recovered, ours);
    assert!(s.sim.control().validate(&recovered).valid);
    assert_eq!(
        s.calls("getcallbackip"),
        1,
        "one check of the reported token"
    );
    assert_eq!(s.calls("api_authorizer_token"), 1, "one refresh recovers");

    let alert = webhook.wait_for("rogue_refresher", &appid).await;
    let reason = alert["reason"].as_str().unwrap();
    assert!(
        reason.contains("billing-svc"),
        "the client is named: {reason}"
    );
    assert!(!reason.contains(&ours), "no token in the alert");

    // The same report again (a retry): the current token, no call, no second alert.
    let (status, answer, _) = report(&s, &key, &appid, &ours).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(token_of(&answer), recovered);
    assert_eq!(
        s.calls("api_authorizer_token") + s.calls("getcallbackip"),
        2
    );
    assert_eq!(webhook.count_kind("rogue_refresher"), 1);

    let (status, view) = s
        .get(
            Some(&s.admin_key),
            &format!("/v1/admin/authorizers/{appid}"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["rogue_refreshes"]["times"], 1, "{view}");
    assert_eq!(view["rogue_refreshes"]["last_client"], "billing-svc");
    s.shutdown().await;
}

/// Polls `check` every 20 ms for up to `limit`: how long it took to hold, or `None`. (A
/// measurement of propagation, not synchronisation: the test asserts the bound.)
async fn until<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return Some(started.elapsed());
        }
        if started.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "the command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_changes_reach_a_running_sqlite_server_within_two_seconds() {
    let s = Server::start().await;
    let admin = s.admin_key.clone();
    let limit = Duration::from_secs(2);

    // accounts add, then remove: the removed account answers 404, not its old token.
    let account = s.new_account(AccountKind::OfficialAccount);
    let path = format!("/v1/tokens/{}", account.appid);
    let out = s
        .cli(
            &[
                "accounts",
                "add",
                &account.appid,
                "--kind",
                "official_account",
            ],
            &[("WXTOKEN_APPSECRET", &account.appsecret)],
        )
        .await;
    assert!(ok(&out).contains("within 2 s"), "the CLI says how long");
    let added = until(limit, || async {
        s.get(Some(&admin), &path).await.0 == StatusCode::OK
    })
    .await
    .expect("an added account is served within 2 s");
    let out = s.cli(&["accounts", "remove", &account.appid], &[]).await;
    assert!(ok(&out).contains("within 2 s"));
    let removed = until(limit, || async {
        s.get(Some(&admin), &path).await.0 == StatusCode::NOT_FOUND
    })
    .await
    .expect("a removed account answers 404 within 2 s");

    // clients revoke: a key the server has checked (and cached) stops working.
    let key = s.client_key("short-lived", &["*"], false).await;
    assert_eq!(
        s.get(Some(&key), "/v1/component/token").await.0,
        StatusCode::OK
    );
    let out = s.cli(&["clients", "revoke", "short-lived"], &[]).await;
    assert!(ok(&out).contains("within 2 s"));
    let revoked = until(limit, || async {
        s.get(Some(&key), "/v1/component/token").await.0 == StatusCode::UNAUTHORIZED
    })
    .await
    .expect("a revoked key answers 401 within 2 s");

    // authorizers import: served (and refreshed) within 2 s.
    let imported = s
        .sim
        .control()
        .bulk_authorize(s.comp(), 1, AccountKind::MiniProgram)
        .unwrap()
        .remove(0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("authorizers.jsonl");
    std::fs::write(
        &file,
        serde_json::json!({
            "appid": imported.authorizer_appid,
            "refresh_token": imported.authorizer_refresh_token,
            "kind": "mini_program",
        })
        .to_string(),
    )
    .unwrap();
    let out = s
        .cli(&["authorizers", "import", file.to_str().unwrap()], &[])
        .await;
    assert!(ok(&out).contains("within 2 s"));
    let path = format!("/v1/tokens/{}", imported.authorizer_appid);
    let served = until(limit, || async {
        s.get(Some(&admin), &path).await.0 == StatusCode::OK
    })
    .await
    .expect("an imported authorizer is served within 2 s");
    eprintln!(
        "CLI change → running server: account added {added:?}, removed {removed:?}, client \
         revoked {revoked:?}, authorizer imported {served:?}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_refuses_a_key_a_live_server_lacks_and_a_server_missing_a_key_is_not_ready() {
    let webhook = WebhookReceiver::start().await;
    let url = webhook.url.clone();
    let s = Server::start_with(sim_config(), move |c| {
        c.alerts.webhook_url = Some(url);
    })
    .await;
    let appid = s.authorize_account(AccountKind::OfficialAccount).await;
    until(Duration::from_secs(10), || async {
        !s.store
            .ops()
            .live_servers(wxtoken::model::Timestamp::now().minus(Duration::from_secs(15)))
            .await
            .unwrap()
            .is_empty()
    })
    .await
    .expect("the server's heartbeat is in the store");
    let new_key = wxtoken::vault::MasterKey::generate();
    let new_id = new_key.id().to_string();
    let new_key = {
        use secrecy::ExposeSecret;
        new_key.to_base64().expose_secret().to_owned()
    };
    let old_key = s.master_key.clone();
    let env = [
        ("WXTOKEN_MASTER_KEY", new_key.as_str()),
        ("WXTOKEN_MASTER_KEY_OLD", old_key.as_str()),
    ];

    // The server was not given the new key: refused, naming it.
    let out = s.cli(&["keys", "rotate"], &env).await;
    assert!(!out.status.success(), "refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("pid {}", std::process::id())) && stderr.contains(&new_id),
        "names the server and the key: {stderr}"
    );
    let (status, ready) = s.get(None, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "nothing changed: {ready}");
    assert_eq!(
        s.get(Some(&s.admin_key), &format!("/v1/tokens/{appid}"))
            .await
            .0,
        StatusCode::OK
    );

    // Forced anyway: the server says it is not ready, why, and alerts.
    let out = s.cli(&["keys", "rotate", "--force"], &env).await;
    ok(&out);
    until(Duration::from_secs(2), || async {
        s.get(None, "/readyz").await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await
    .expect("not ready within 2 s of the rotation");
    let (_, ready) = s.get(None, "/readyz").await;
    let reason = ready["checks"]["master_keys"].as_str().unwrap_or_default();
    assert!(reason.contains(&new_id), "{ready}");
    let alert = webhook.wait_for_kind("configuration").await;
    assert!(
        alert["reason"].as_str().unwrap().contains(&new_id),
        "{alert}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_of_a_direct_accounts_appid_folds_it_into_the_authorizer_with_its_appsecret_as_fallback()
 {
    let s = Server::start().await;
    let admin = s.admin_key.clone();
    let account = s.new_account(AccountKind::OfficialAccount);
    let response = s
        .http
        .post(format!("{}/v1/admin/accounts", s.internal))
        .bearer_auth(&admin)
        .json(&serde_json::json!({
            "appid": account.appid,
            "kind": "official_account",
            "appsecret": account.appsecret,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let path = format!("/v1/tokens/{}", account.appid);
    let (status, direct) = s.get(Some(&admin), &path).await;
    assert_eq!(status, StatusCode::OK, "{direct}");
    assert_eq!(direct["source"], "stable_token");

    // The merchant now authorizes the platform for the same account.
    s.authorize_existing(&account.appid).await;

    let (status, token) = s.get(Some(&admin), &path).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "one credential, no ambiguity: {token}"
    );
    assert_eq!(
        token["source"], "api_query_auth",
        "served as the authorizer"
    );
    assert!(s.sim.control().validate(&token_of(&token)).valid);
    let (status, view) = s
        .get(
            Some(&admin),
            &format!("/v1/admin/authorizers/{}", account.appid),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(
        view["has_appsecret"], true,
        "the appsecret is the fallback now"
    );
    assert_eq!(view["kind"], "official_account");
    let (_, accounts) = s.get(Some(&admin), "/v1/admin/accounts").await;
    assert!(
        !accounts.to_string().contains(&account.appid),
        "the direct account is gone: {accounts}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorizer_details_are_fetched_on_authorization_and_by_reconciliation_and_shown() {
    let s = Server::start().await;
    let admin = s.admin_key.clone();
    let mini = s.authorize_account(AccountKind::MiniProgram).await;
    let view_of = |appid: String| {
        let s = &s;
        let admin = admin.clone();
        async move {
            s.get(Some(&admin), &format!("/v1/admin/authorizers/{appid}"))
                .await
                .1
        }
    };
    // Asked in the background once the authorization is stored.
    until(Duration::from_secs(5), || async {
        view_of(mini.clone()).await["nick_name"].is_string()
    })
    .await
    .expect("details within 5 s of the authorization");
    let view = view_of(mini.clone()).await;
    assert_eq!(view["kind"], "mini_program", "{view}");
    assert_eq!(view["principal_name"], "模拟主体有限公司");
    assert_eq!(view["service_type"], 0);

    // An imported authorizer has none until reconciliation asks.
    let imported = s
        .sim
        .control()
        .bulk_authorize(s.comp(), 1, AccountKind::OfficialAccount)
        .unwrap()
        .remove(0);
    let line = serde_json::json!({
        "appid": imported.authorizer_appid,
        "refresh_token": imported.authorizer_refresh_token,
    })
    .to_string();
    let response = s
        .http
        .post(format!("{}/v1/admin/authorizers/import", s.internal))
        .bearer_auth(&admin)
        .body(line)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let view = view_of(imported.authorizer_appid.clone()).await;
    assert!(
        view["kind"].is_null() && view["nick_name"].is_null(),
        "{view}"
    );
    let component = wxtoken::model::ComponentAppid::parse(s.comp()).unwrap();
    let report = s
        .app()
        .engine
        .reconcile_once(&component)
        .await
        .expect("reconciled");
    assert!(report.described >= 1, "{report:?}");
    let view = view_of(imported.authorizer_appid.clone()).await;
    assert_eq!(view["kind"], "official_account", "{view}");
    assert_eq!(view["service_type"], 2);

    // The CLI shows them; the export carries the kind.
    let out = s
        .cli(&["authorizers", "show", &imported.authorizer_appid], &[])
        .await;
    let shown = ok(&out);
    assert!(
        shown.contains("official_account") && shown.contains("模拟主体有限公司"),
        "{shown}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.csv");
    ok(&s
        .cli(
            &[
                "authorizers",
                "export",
                file.to_str().unwrap(),
                "--format",
                "csv",
            ],
            &[],
        )
        .await);
    let exported = std::fs::read_to_string(&file).unwrap();
    let row = exported
        .lines()
        .find(|l| l.starts_with(&mini))
        .expect("the mini program is exported");
    assert!(row.contains("mini_program"), "{row}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_appsecret_set_by_the_cli_serves_an_unbound_authorizer_from_its_fallback_within_two_seconds()
 {
    let s = Server::start().await;
    let admin = s.admin_key.clone();
    let account = s.new_account(AccountKind::OfficialAccount);
    s.authorize_existing(&account.appid).await;
    let path = format!("/v1/tokens/{}", account.appid);
    assert_eq!(s.get(Some(&admin), &path).await.0, StatusCode::OK);

    // The merchant unbinds the platform: no token any more.
    s.unauthorize_existing(&account.appid).await;
    assert_eq!(s.get(Some(&admin), &path).await.0, StatusCode::GONE);

    let out = s
        .cli(
            &["authorizers", "set-appsecret", &account.appid],
            &[("WXTOKEN_APPSECRET", &account.appsecret)],
        )
        .await;
    assert!(ok(&out).contains("within 2 s"));
    until(Duration::from_secs(2), || async {
        s.get(Some(&admin), &path).await.0 == StatusCode::OK
    })
    .await
    .expect("served from the fallback within 2 s");
    let (_, token) = s.get(Some(&admin), &path).await;
    assert_eq!(token["source"], "stable_token", "{token}");
    assert!(s.sim.control().validate(&token_of(&token)).valid);
    s.shutdown().await;
}
