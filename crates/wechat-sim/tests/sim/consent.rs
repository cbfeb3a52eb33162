//! The consent page: GET the page, POST the approval, follow the 302 back with `auth_code`.

use wechat::authorize::{AuthType, AuthorizePages, AuthorizeParams};
use wechat::event::Event;
use wechat_sim::AccountKind;

use crate::helpers::{Receiver, TestSim};

struct Page {
    status: u16,
    html: String,
}

async fn get(t: &TestSim, url: &str) -> Page {
    let r = t.http.get(url).send().await.unwrap();
    Page {
        status: r.status().as_u16(),
        html: r.text().await.unwrap(),
    }
}

/// Submit the page's form with `extra` fields (the hidden fields are read back from the page).
async fn approve(
    t: &TestSim,
    page_url: &str,
    html: &str,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut form: Vec<(String, String)> = Vec::new();
    for part in html.split("<input type=\"hidden\" name=\"").skip(1) {
        let name = part.split('"').next().unwrap();
        let value = part
            .split("value=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let value = value
            .replace("&amp;", "&")
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&#39;", "'");
        form.push((name.to_string(), value));
    }
    for (k, v) in extra {
        form.push((k.to_string(), v.to_string()));
    }
    let action = page_url.split('?').next().unwrap();
    t.http.post(action).form(&form).send().await.unwrap()
}

fn pages(t: &TestSim) -> AuthorizePages {
    AuthorizePages::at(&url::Url::parse(t.sim.base_url()).unwrap())
}

#[tokio::test]
async fn approving_on_the_consent_page_redirects_with_auth_code_and_pushes_authorized() {
    let t = TestSim::start().await;
    let mut rx = Receiver::start().await;
    let c = t.component_pushing_to(&rx);
    let a = t.oa();
    let ct = t.component_token(&c).await;
    let pre =
        t.wx.create_preauthcode(&ct, &c.component_appid)
            .await
            .unwrap()
            .pre_auth_code;
    let redirect = "https://platform.example/authorize/callback?tenant=7&x=a%20b";
    let url = pages(&t).pc_url(&AuthorizeParams {
        component_appid: &c.component_appid,
        pre_auth_code: &pre,
        redirect_uri: redirect,
        auth_type: Some(AuthType::Both),
        biz_appid: None,
    });
    let page = get(&t, &url).await;
    assert_eq!(page.status, 200);
    assert!(page.html.contains(&a.appid), "the account is listed");
    let resp = approve(&t, &url, &page.html, &[("appid", &a.appid)]).await;
    assert_eq!(resp.status().as_u16(), 302);
    let location = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(location.host_str(), Some("platform.example"));
    assert_eq!(location.path(), "/authorize/callback");
    let q: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(q["tenant"], "7");
    assert_eq!(q["x"], "a b");
    assert_eq!(q["expires_in"], "600");
    let code = &q["auth_code"];
    assert!(code.starts_with("queryauthcode@@@"));

    let Event::Authorized(e) = rx.next_event(&c).await else {
        panic!("authorized expected")
    };
    assert_eq!(&e.authorization_code, code);
    assert_eq!(e.pre_auth_code.as_deref(), Some(pre.as_str()));
    let info =
        t.wx.query_auth(&ct, &c.component_appid, code)
            .await
            .unwrap()
            .authorization_info;
    assert_eq!(info.authorizer_appid, a.appid);

    // The pre-auth code was single use.
    let again = get(&t, &url).await;
    assert_eq!(again.status, 400);
    assert!(again.html.contains("pre_auth_code"));
}

#[tokio::test]
async fn the_mobile_page_filters_by_auth_type_and_biz_appid() {
    let t = TestSim::start().await;
    let c = t.component();
    let oa = t.oa();
    let mp = t.account(AccountKind::MiniProgram);
    let ct = t.component_token(&c).await;
    let pre =
        t.wx.create_preauthcode(&ct, &c.component_appid)
            .await
            .unwrap()
            .pre_auth_code;
    let params = |auth_type, biz_appid| AuthorizeParams {
        component_appid: &c.component_appid,
        pre_auth_code: &pre,
        redirect_uri: "https://platform.example/cb",
        auth_type,
        biz_appid,
    };
    let p = pages(&t);
    let only_mp = get(
        &t,
        &p.mobile_url(&params(Some(AuthType::MiniProgram), None)),
    )
    .await;
    assert!(only_mp.html.contains(&mp.appid) && !only_mp.html.contains(&oa.appid));
    let only_oa = get(
        &t,
        &p.mobile_url(&params(Some(AuthType::OfficialAccount), None)),
    )
    .await;
    assert!(only_oa.html.contains(&oa.appid) && !only_oa.html.contains(&mp.appid));
    let one = get(&t, &p.mobile_url(&params(None, Some(&mp.appid)))).await;
    assert!(one.html.contains(&mp.appid) && !one.html.contains(&oa.appid));
    // Approving an account the filter excludes is refused, and the code is still usable.
    let url = p.mobile_url(&params(Some(AuthType::MiniProgram), None));
    let refused = approve(&t, &url, &only_mp.html, &[("appid", &oa.appid)]).await;
    assert_eq!(refused.status().as_u16(), 400);
    let ok = approve(&t, &url, &only_mp.html, &[("appid", &mp.appid)]).await;
    assert_eq!(ok.status().as_u16(), 302);
}

#[tokio::test]
async fn a_new_account_can_be_created_and_authorized_from_the_page() {
    let t = TestSim::start().await;
    let c = t.component();
    let ct = t.component_token(&c).await;
    let pre =
        t.wx.create_preauthcode(&ct, &c.component_appid)
            .await
            .unwrap()
            .pre_auth_code;
    let url = pages(&t).pc_url(&AuthorizeParams {
        component_appid: &c.component_appid,
        pre_auth_code: &pre,
        redirect_uri: "https://platform.example/cb",
        auth_type: None,
        biz_appid: None,
    });
    let page = get(&t, &url).await;
    let resp = approve(&t, &url, &page.html, &[("new_kind", "mini_program")]).await;
    assert_eq!(resp.status().as_u16(), 302);
    let location = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "auth_code")
        .unwrap()
        .1
        .into_owned();
    let info =
        t.wx.query_auth(&ct, &c.component_appid, &code)
            .await
            .unwrap()
            .authorization_info;
    let acc = t.sim.control().account(&info.authorizer_appid).unwrap();
    assert_eq!(acc.kind, AccountKind::MiniProgram);
}

#[tokio::test]
async fn the_consent_page_refuses_bad_input_with_a_clear_error_page() {
    let t = TestSim::start().await;
    let c = t.component();
    let ct = t.component_token(&c).await;
    let pre =
        t.wx.create_preauthcode(&ct, &c.component_appid)
            .await
            .unwrap()
            .pre_auth_code;
    let base = t.url("/cgi-bin/componentloginpage");
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let cases = [
        (
            format!(
                "{base}?pre_auth_code={}&redirect_uri={}",
                enc(&pre),
                enc("https://x/cb")
            ),
            "component_appid",
        ),
        (
            format!(
                "{base}?component_appid=wx00000000000000ff&pre_auth_code={}&redirect_uri={}",
                enc(&pre),
                enc("https://x/cb")
            ),
            "not a third-party platform",
        ),
        (
            format!(
                "{base}?component_appid={}&pre_auth_code=preauthcode%40%40%40nope&redirect_uri={}",
                c.component_appid,
                enc("https://x/cb")
            ),
            "pre_auth_code",
        ),
        (
            format!(
                "{base}?component_appid={}&pre_auth_code={}",
                c.component_appid,
                enc(&pre)
            ),
            "redirect_uri",
        ),
        (
            format!(
                "{base}?component_appid={}&pre_auth_code={}&redirect_uri={}&auth_type=9",
                c.component_appid,
                enc(&pre),
                enc("https://x/cb")
            ),
            "auth_type",
        ),
    ];
    for (url, needle) in cases {
        let page = get(&t, &url).await;
        assert_eq!(page.status, 400, "{url}");
        assert!(page.html.contains(needle), "{needle} in {}", page.html);
    }
    // An expired pre-auth code.
    t.sim
        .control()
        .advance_clock(std::time::Duration::from_secs(601));
    let url = format!(
        "{base}?component_appid={}&pre_auth_code={}&redirect_uri={}",
        c.component_appid,
        enc(&pre),
        enc("https://x/cb")
    );
    let page = get(&t, &url).await;
    assert!(page.html.contains("expired"));
}
