//! The operator dashboard (`/ui/` on the internal listener) over real HTTP: sign-in with an admin
//! key only (a session cookie, never the key in a URL), pages that match the server's state,
//! search, details, a CSRF-checked refresh that grows the generation, the re-bind link of an
//! authorizer that needs re-authorization, sign-out, and the headers every page carries.

use reqwest::StatusCode;
use reqwest::header::{LOCATION, SET_COOKIE};
use wechat_sim::AccountKind;
use wxtoken::model::{Appid, AuthorizerStatus, ComponentAppid, StatusChange, Timestamp};

use crate::harness::server::Server;

/// A browser without redirects or a cookie jar: each step's cookie and redirect are asserted.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The text of the element with `id` (its first text, tags stripped).
fn by_id(html: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\"");
    let at = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in {html}"));
    let open_end = at + html[at..].find('>').expect("tag end") + 1;
    let mut depth = 0usize;
    let mut out = String::new();
    let mut in_tag = false;
    for (i, c) in html[open_end..].char_indices() {
        match c {
            '<' => {
                in_tag = true;
                let rest = &html[open_end + i..];
                if rest.starts_with("</") {
                    if depth == 0 {
                        break;
                    }
                    depth -= 1;
                } else {
                    depth += 1;
                }
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.trim().to_owned()
}

/// The value of the hidden `csrf` input of a page.
fn csrf(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[at..at + html[at..].find('"').expect("end")].to_owned()
}

/// Three authorized accounts, the last marked as needing re-authorization (as after WeChat refused
/// its refresh token): the component, the two active appids, and that one.
async fn fleet(s: &Server) -> (ComponentAppid, Vec<String>, String) {
    let mut appids = Vec::new();
    for kind in [
        AccountKind::OfficialAccount,
        AccountKind::MiniProgram,
        AccountKind::OfficialAccount,
    ] {
        appids.push(s.authorize_account(kind).await);
    }
    let comp = ComponentAppid::parse(s.comp()).unwrap();
    // Their details (kind, nick name) now, not when the background ask lands: the same answer.
    for appid in &appids {
        s.app()
            .engine
            .describe(&comp, &Appid::parse(appid).unwrap())
            .await
            .unwrap();
    }
    let lost = appids.pop().unwrap();
    s.app()
        .store
        .authorizers()
        .set_authorizer_status(&StatusChange {
            component: comp.clone(),
            appid: Appid::parse(&lost).unwrap(),
            status: AuthorizerStatus::NeedsReauth,
            reason: Some("61023 (reauthorize)".into()),
            expected_generation: None,
            at: Timestamp::now(),
        })
        .await
        .unwrap();
    (comp, appids, lost)
}

/// The `name=value` of a response's session cookie.
fn session_of(r: &reqwest::Response) -> String {
    r.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

async fn sign_in(s: &Server, http: &reqwest::Client, key: &str) -> reqwest::Response {
    http.post(format!("{}/ui/login", s.internal))
        .form(&[("api_key", key)])
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_signs_in_sees_the_fleet_searches_refreshes_finds_the_rebind_link_and_signs_out() {
    let s = Server::start().await;
    let (comp, appids, lost) = fleet(&s).await;
    let http = browser();
    let ui = |p: &str| format!("{}{p}", s.internal);

    // Not signed in: every page leads to the sign-in form, which asks for the key in a form.
    let r = http.get(ui("/ui/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/ui/login");
    let form = http.get(ui("/ui/login")).send().await.unwrap();
    for (name, value) in [
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(form.headers()[name], value, "{name}");
    }
    let csp = form.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let html = form.text().await.unwrap();
    assert!(
        html.contains("type=\"password\"") && html.contains("lang=\"zh-CN\""),
        "{html}"
    );

    // A key that is not an admin key, and one that is not a key: refused, no cookie.
    let reader = s.client_key("reader", &[&appids[0]], false).await;
    for (key, status) in [
        (reader.as_str(), StatusCode::FORBIDDEN),
        ("wxt_nope", StatusCode::UNAUTHORIZED),
    ] {
        let r = sign_in(&s, &http, key).await;
        assert_eq!(r.status(), status);
        assert!(r.headers().get(SET_COOKIE).is_none());
    }

    // The admin key: a session cookie, HttpOnly, SameSite=Strict, for /ui only.
    let r = sign_in(&s, &http, &s.admin_key).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age="] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains(&s.admin_key), "the key is not the cookie");
    let session = cookie.split(';').next().unwrap().to_owned();
    let get = |p: &str| {
        http.get(ui(p))
            .header("cookie", &session)
            .header("accept-language", "en-US,en;q=0.9,zh;q=0.5")
            .send()
    };

    // A JS-SDK ticket and a call through the gateway, for the overview's lower half.
    let (status, _) = s
        .get(
            Some(&s.admin_key),
            &format!("/v1/tickets/{}/jsapi", appids[0]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let call = http
        .get(format!(
            "{}/wx/{}/cgi-bin/getcallbackip",
            s.gateway, appids[0]
        ))
        .bearer_auth(&s.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(call.status(), StatusCode::OK);
    s.app()
        .state
        .0
        .gateway_calls
        .flush(&*s.app().store)
        .await
        .unwrap();

    // The overview's counts are the store's.
    let page = get("/ui/").await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("lang=\"en\"") && html.contains("Overview"),
        "English on request"
    );
    let counts = s
        .app()
        .store
        .authorizers()
        .count_authorizers(&comp)
        .await
        .unwrap();
    assert_eq!((counts.active, counts.needs_reauth), (2, 1));
    assert_eq!(by_id(&html, &format!("count-active-{comp}")), "2");
    assert_eq!(by_id(&html, &format!("count-needs_reauth-{comp}")), "1");
    assert_eq!(by_id(&html, &format!("count-revoked-{comp}")), "0");
    assert!(html.contains("<svg"), "the timeline");
    assert_eq!(by_id(&html, "tickets-held"), "1");
    let calls = by_id(&html, "gateway-calls");
    assert!(
        calls.contains(&appids[0]) && calls.contains("cgi-bin/getcallbackip"),
        "{calls}"
    );
    assert_eq!(
        (counts.official_accounts, counts.mini_programs),
        (2, 1),
        "{counts:?}"
    );
    assert_eq!(by_id(&html, &format!("count-kinds-{comp}")), "2 / 1");

    // Search by appid prefix finds the one account, and only it.
    let prefix = &appids[1][..10];
    let html = get(&format!("/ui/authorizers?q={prefix}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let table = by_id(&html, "authorizers");
    assert!(table.contains(&appids[1]), "{table}");
    let others = appids.iter().filter(|a| !a.starts_with(prefix));
    for other in others {
        assert!(!table.contains(other.as_str()), "{other} in {table}");
    }

    // Search by a part of the nick name (the simulator's: "模拟小程序 <appid tail>") finds the
    // one Mini Program; LIKE's wildcards are matched literally.
    for (q, expected) in [
        ("模拟小程序", vec![appids[1].as_str()]),
        ("模拟公众号", vec![appids[0].as_str(), lost.as_str()]),
    ] {
        let html = get(&format!(
            "/ui/authorizers?q={}",
            url::form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        let table = by_id(&html, "authorizers");
        for appid in appids.iter().chain([&lost]) {
            assert_eq!(
                table.contains(appid.as_str()),
                expected.contains(&appid.as_str()),
                "{q}: {appid} in {table}"
            );
        }
    }
    let html = get("/ui/authorizers?q=%25")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("no-rows"), "'%' is not a wildcard");

    // Details, then a refresh: without the CSRF token, with a forged one, then for real.
    let detail = format!("/ui/authorizers/{}", appids[0]);
    let html = get(&detail).await.unwrap().text().await.unwrap();
    let before: u64 = by_id(&html, "generation").parse().unwrap();
    let token = csrf(&html);
    let refresh = ui(&format!("{detail}/refresh"));
    let calls = s
        .sim
        .control()
        .stats()
        .calls(wechat_sim::Api::AuthorizerToken);
    for forged in ["", "forged-token"] {
        let r = http
            .post(&refresh)
            .header("cookie", &session)
            .form(&[("csrf", forged)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "csrf {forged:?}");
    }
    let cross_site = http
        .post(&refresh)
        .header("cookie", &session)
        .header("origin", "https://evil.example")
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN, "another origin");
    assert_eq!(
        s.sim
            .control()
            .stats()
            .calls(wechat_sim::Api::AuthorizerToken),
        calls,
        "nothing refreshed by a refused form"
    );
    let r = http
        .post(&refresh)
        .header("cookie", &session)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let html = get(&detail).await.unwrap().text().await.unwrap();
    let after: u64 = by_id(&html, "generation").parse().unwrap();
    assert!(after > before, "generation {before} → {after}");

    // The refresh is counted in the overview's per-minute chart (written once a minute; here now).
    let app = s.app();
    app.state
        .0
        .refresh_rates
        .record(&*app.store, &app.engine.stats(), Timestamp::now())
        .await
        .unwrap();
    let html = get("/ui/").await.unwrap().text().await.unwrap();
    assert!(!html.contains("no-rates"), "the refreshes are charted");

    // The authorizer that needs re-authorization shows the link to send to its merchant, and the
    // link leads to the authorization page.
    let html = get(&format!("/ui/authorizers/{lost}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(by_id(&html, "status").starts_with("needs_reauth"));
    let link = by_id(&html, "rebind");
    assert_eq!(link, format!("{}/authorize?biz_appid={lost}", s.public));
    let authorize = http.get(&link).send().await.unwrap();
    assert!(
        authorize.status().is_success() || authorize.status().is_redirection(),
        "{}",
        authorize.status()
    );

    // Signing out ends the session on the server: the old cookie no longer works.
    let html = get("/ui/").await.unwrap().text().await.unwrap();
    let r = http
        .post(ui("/ui/logout"))
        .header("cookie", &session)
        .form(&[("csrf", csrf(&html).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let again = get("/ui/").await.unwrap();
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    assert_eq!(again.headers()[LOCATION], "/ui/login");
    assert_eq!(s.app().state.0.ui.count().await.unwrap(), 0);

    // Nothing of the dashboard answers on the public listener.
    let public = http
        .get(format!("{}/ui/login", s.public))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    s.shutdown().await;
}

/// Revoking the admin key ends its dashboard sessions at once on this server.
/// An operator revokes an authorizer after a confirmation page (CSRF-checked): its clients are
/// told it is revoked, nothing more is refreshed, and its refresh token is kept. The admin API
/// does the same; revoking twice changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_revokes_an_authorizer_after_confirming_and_its_clients_are_told_so() {
    let s = Server::start().await;
    let (comp, appids, _) = fleet(&s).await;
    let http = browser();
    let ui = |p: &str| format!("{}{p}", s.internal);
    let r = sign_in(&s, &http, &s.admin_key).await;
    let session = session_of(&r);
    let get = |p: &str| http.get(ui(p)).header("cookie", &session).send();
    let reader = s.client_key("reader", &[&appids[0]], false).await;
    let (status, _) = s
        .get(Some(&reader), &format!("/v1/tokens/{}", appids[0]))
        .await;
    assert_eq!(status, StatusCode::OK);

    let detail = format!("/ui/authorizers/{}", appids[0]);
    let html = get(&detail).await.unwrap().text().await.unwrap();
    let confirm = by_id_attr(&html, "revoke", "href");
    let html = get(&confirm).await.unwrap().text().await.unwrap();
    assert!(html.contains("confirm-revoke"), "{html}");
    let revoke = ui(&confirm);
    let refused = http
        .post(&revoke)
        .header("cookie", &session)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let record = |appid: &str| {
        let store = s.app().store.clone();
        let (comp, appid) = (comp.clone(), Appid::parse(appid).unwrap());
        async move {
            store
                .authorizers()
                .get_authorizer(&comp, &appid)
                .await
                .unwrap()
                .unwrap()
        }
    };
    assert_eq!(record(&appids[0]).await.status, AuthorizerStatus::Active);
    let r = http
        .post(&revoke)
        .header("cookie", &session)
        .form(&[("csrf", csrf(&html).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let html = get(&detail).await.unwrap().text().await.unwrap();
    assert!(by_id(&html, "status").starts_with("revoked"), "{html}");
    assert!(
        !html.contains("id=\"revoke\""),
        "no revoke button once revoked"
    );
    let revoked = record(&appids[0]).await;
    assert_eq!(revoked.status, AuthorizerStatus::Revoked);
    assert!(
        revoked
            .status_reason
            .as_deref()
            .unwrap_or("")
            .contains("operator"),
        "{:?}",
        revoked.status_reason
    );
    assert!(
        !revoked.refresh_token.ciphertext.is_empty(),
        "the refresh token is kept"
    );
    let (status, body) = s
        .get(Some(&reader), &format!("/v1/tokens/{}", appids[0]))
        .await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    let calls = s.calls("api_authorizer_token");
    assert!(
        s.app()
            .engine
            .refresh_now(&wxtoken::model::Credential::authorizer(
                &comp,
                &Appid::parse(&appids[0]).unwrap()
            ))
            .await
            .is_err(),
        "a revoked authorizer is not refreshed"
    );
    assert_eq!(s.calls("api_authorizer_token"), calls);

    // The admin API: revoked once, then unchanged; an unknown appid is 404; readers may not.
    let api = |appid: &str, key: &str| {
        http.post(ui(&format!("/v1/admin/authorizers/{appid}/revoke")))
            .bearer_auth(key)
            .send()
    };
    let r = api(&appids[1], &reader).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    for _ in 0..2 {
        let r = api(&appids[1], &s.admin_key).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let view: serde_json::Value = r.json().await.unwrap();
        assert_eq!(view["status"], "revoked", "{view}");
    }
    let r = api("wxnosuchauthorizer", &s.admin_key).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// The value of attribute `attr` of the element with `id`.
fn by_id_attr(html: &str, id: &str, attr: &str) -> String {
    let at = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {html}"));
    let start = html[..at].rfind('<').expect("tag start");
    let tag = &html[start..start + html[start..].find('>').expect("tag end")];
    let marker = format!("{attr}=\"");
    let from = tag
        .find(&marker)
        .unwrap_or_else(|| panic!("no {attr} in {tag}"))
        + marker.len();
    tag[from..from + tag[from..].find('"').expect("end")].replace("&amp;", "&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_admin_key_ends_its_dashboard_sessions() {
    let s = Server::start().await;
    let ops = s.client_key("ops", &["*"], true).await;
    let http = browser();
    let r = sign_in(&s, &http, &ops).await;
    let session = session_of(&r);
    let page = |h: &reqwest::Client| {
        h.get(format!("{}/ui/", s.internal))
            .header("cookie", &session)
            .send()
    };
    assert_eq!(page(&http).await.unwrap().status(), StatusCode::OK);
    let revoked = http
        .delete(format!("{}/v1/admin/clients/ops", s.internal))
        .bearer_auth(&s.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let after = page(&http).await.unwrap();
    assert_eq!(
        after.status(),
        StatusCode::SEE_OTHER,
        "signed out by the revocation"
    );
    s.shutdown().await;
}

/// The dashboard in headless Chromium (Debian's, driven by playwright-core over the DevTools
/// protocol): sign-in refused for a reader key, the overview's counts, a search, the details,
/// refresh now, a forged CSRF token refused, the re-bind link followed, sign-out. Screenshots of
/// each page go to `target/tmp/dashboard-screenshots/`. `WXTOKEN_TEST_BROWSER_NODE_PATH` names a
/// node_modules holding playwright-core (`.ci/run` installs it and Chromium); without it the test
/// is skipped with a notice, except under `CI=true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_headless_chromium() {
    let modules = std::env::var_os("WXTOKEN_TEST_BROWSER_NODE_PATH").filter(|p| !p.is_empty());
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let (Some(modules), Some(chromium)) = (modules, chromium) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "WXTOKEN_TEST_BROWSER_NODE_PATH (playwright-core) and Debian's chromium are needed when CI=true"
        );
        println!(
            "SKIPPED the_dashboard_works_in_headless_chromium: no playwright-core or chromium"
        );
        return;
    };
    // A browser takes both cores while it starts: never beside a load test.
    let _alone = crate::harness::alone().await;
    let s = Server::start().await;
    let (_, appids, lost) = fleet(&s).await;
    let reader = s.client_key("reader", &[&appids[0]], false).await;
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/dashboard.mjs");
    let envs = vec![
        ("NODE_PATH", modules.to_string_lossy().into_owned()),
        ("WXTOKEN_UI", s.internal.clone()),
        ("WXTOKEN_ADMIN_KEY", s.admin_key.clone()),
        ("WXTOKEN_READER_KEY", reader),
        ("WXTOKEN_COMPONENT", s.comp().to_owned()),
        ("WXTOKEN_APPIDS", appids.join(",")),
        ("WXTOKEN_LOST_APPID", lost),
        ("WXTOKEN_ACTIVE_COUNT", appids.len().to_string()),
        ("CHROMIUM", chromium.to_owned()),
        ("SCREENSHOTS", shots.to_string_lossy().into_owned()),
    ];
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(script)
            .envs(envs)
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .output()
    })
    .await
    .unwrap()
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("all steps passed"),
        "the browser run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for shot in [
        "1-sign-in",
        "2-overview",
        "3-authorizers",
        "4-authorizer",
        "5-needs-reauth",
    ] {
        let path = shots.join(format!("{shot}.png"));
        assert!(
            std::fs::metadata(&path).is_ok_and(|m| m.len() > 1000),
            "{}",
            path.display()
        );
    }
    s.shutdown().await;
}

/// The clients page adds a client (its key shown once and working), rotates its key and revokes
/// it after a confirmation page, each form CSRF-checked; a one-time sign-in link (what
/// `wxtoken demo` prints) works once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_added_rotated_and_revoked_from_the_dashboard_and_a_one_time_link_works_once() {
    let s = Server::start().await;
    let appid = s.authorize_account(AccountKind::OfficialAccount).await;
    let http = browser();
    let ui = |p: &str| format!("{}{p}", s.internal);

    // The one-time link: a session the first time, the sign-in form after.
    let key_hash = wxtoken::vault::hash_api_key(&s.admin_key);
    let token = s
        .app()
        .state
        .0
        .ui
        .one_time_token(key_hash, "admin".into())
        .await
        .unwrap()
        .expect("room");
    let link = ui(&format!("/ui/login/once?token={token}"));
    let r = http.get(&link).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let session = session_of(&r);
    assert_eq!(
        http.get(&link).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "used"
    );

    let get = |p: &str| http.get(ui(p)).header("cookie", &session).send();
    let post = |p: &str, form: Vec<(&'static str, String)>| {
        http.post(ui(p))
            .header("cookie", &session)
            .form(&form)
            .send()
    };
    let html = get("/ui/clients").await.unwrap().text().await.unwrap();
    let token = csrf(&html);
    assert!(by_id(&html, "clients").contains("admin"));

    let refused = post(
        "/ui/clients",
        vec![
            ("csrf", "forged".into()),
            ("name", "svc".into()),
            ("appids", appid.clone()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let added = post(
        "/ui/clients",
        vec![
            ("csrf", token.clone()),
            ("name", "svc".into()),
            ("appids", appid.clone()),
        ],
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let key = by_id(&added, "new-key");
    assert_eq!(
        s.get(Some(&key), &format!("/v1/tokens/{appid}")).await.0,
        StatusCode::OK
    );
    let list = get("/ui/clients").await.unwrap().text().await.unwrap();
    assert!(!list.contains(&key), "a key is shown only once");

    let rotated = post(
        "/ui/clients/svc/rotate",
        vec![("csrf", token.clone()), ("grace_seconds", "0".into())],
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let new_key = by_id(&rotated, "new-key");
    assert_eq!(
        s.get(Some(&key), &format!("/v1/tokens/{appid}")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        s.get(Some(&new_key), &format!("/v1/tokens/{appid}"))
            .await
            .0,
        StatusCode::OK
    );

    let confirm = get("/ui/clients/svc/revoke")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(confirm.contains("confirm-revoke"), "a confirmation first");
    assert_eq!(
        s.get(Some(&new_key), &format!("/v1/tokens/{appid}"))
            .await
            .0,
        StatusCode::OK,
        "not yet"
    );
    let revoked = post("/ui/clients/svc/revoke", vec![("csrf", token.clone())])
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        s.get(Some(&new_key), &format!("/v1/tokens/{appid}"))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    s.shutdown().await;
}
