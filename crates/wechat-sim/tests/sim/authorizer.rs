//! Authorization codes, authorizer tokens, refresh tokens (echo and rotate), re-authorization,
//! unauthorization, the authorizer list and info.

use std::time::Duration;

use wechat_sim::{AccountKind, ReauthorizePolicy, RefreshTokenPolicy};

use crate::helpers::{TestSim, errcode};

#[tokio::test]
async fn query_auth_returns_tokens_in_wechat_shape_and_the_code_is_single_use() {
    let t = TestSim::start().await;
    let c = t.component();
    let a = t.oa();
    let ct = t.component_token(&c).await;
    let out = t
        .sim
        .control()
        .authorize(&a.appid, &c.component_appid)
        .unwrap();
    assert!(out.authorization_code.starts_with("queryauthcode@@@"));
    assert_eq!(out.info_type, "authorized");
    let info =
        t.wx.query_auth(&ct, &c.component_appid, &out.authorization_code)
            .await
            .unwrap();
    let info = info.authorization_info;
    assert_eq!(info.authorizer_appid, a.appid);
    assert_eq!(info.expires_in, Some(7200));
    assert!(
        info.authorizer_refresh_token
            .as_deref()
            .unwrap()
            .starts_with("refreshtoken@@@")
    );
    assert!(!info.func_ids().is_empty());
    let again =
        t.wx.query_auth(&ct, &c.component_appid, &out.authorization_code)
            .await;
    assert_eq!(errcode(again), 61009);
    assert_eq!(
        errcode(
            t.wx.query_auth(&ct, &c.component_appid, "queryauthcode@@@nope")
                .await
        ),
        61009
    );
}

#[tokio::test]
async fn an_expired_authorization_code_gets_61010() {
    let t = TestSim::start().await;
    let c = t.component();
    let a = t.oa();
    let out = t
        .sim
        .control()
        .authorize(&a.appid, &c.component_appid)
        .unwrap();
    t.sim.control().advance_clock(Duration::from_secs(601));
    let ct = t.component_token(&c).await;
    assert_eq!(
        errcode(
            t.wx.query_auth(&ct, &c.component_appid, &out.authorization_code)
                .await
        ),
        61010
    );
}

#[tokio::test]
async fn authorization_codes_can_be_made_reusable() {
    let t = TestSim::with(|c| c.auth_code_single_use = false).await;
    let c = t.component();
    let a = t.oa();
    let ct = t.component_token(&c).await;
    let out = t
        .sim
        .control()
        .authorize(&a.appid, &c.component_appid)
        .unwrap();
    t.wx.query_auth(&ct, &c.component_appid, &out.authorization_code)
        .await
        .unwrap();
    t.wx.query_auth(&ct, &c.component_appid, &out.authorization_code)
        .await
        .unwrap();
}

#[tokio::test]
async fn authorizer_token_echoes_the_refresh_token_by_default() {
    let t = TestSim::start().await;
    let c = t.component();
    let a = t.oa();
    let ct = t.component_token(&c).await;
    let (first, refresh) = t.authorized(&c, &a, &ct).await;
    let r =
        t.wx.authorizer_token(&ct, &c.component_appid, &a.appid, &refresh)
            .await
            .unwrap();
    assert_eq!(
        r.authorizer_refresh_token.as_deref(),
        Some(refresh.as_str())
    );
    assert_ne!(r.authorizer_access_token, first);
    assert_eq!(
        t.sim
            .control()
            .authorizer(&c.component_appid, &a.appid)
            .unwrap()
            .refresh_token,
        refresh
    );
}

#[tokio::test]
async fn rotate_policy_issues_a_new_refresh_token_and_the_old_one_works_for_the_overlap() {
    let t = TestSim::with(|c| c.refresh_token_policy = RefreshTokenPolicy::Rotate).await;
    let c = t.component();
    let a = t.oa();
    let ct = t.component_token(&c).await;
    let (_, r1) = t.authorized(&c, &a, &ct).await;
    let r2 =
        t.wx.authorizer_token(&ct, &c.component_appid, &a.appid, &r1)
            .await
            .unwrap()
            .authorizer_refresh_token
            .unwrap();
    assert_ne!(r1, r2);
    assert_eq!(
        t.sim
            .control()
            .authorizer(&c.component_appid, &a.appid)
            .unwrap()
            .refresh_token,
        r2
    );
    t.wx.authorizer_token(&ct, &c.component_appid, &a.appid, &r1)
        .await
        .unwrap();
    t.sim.control().advance_clock(Duration::from_secs(301));
    let ct = t.component_token(&c).await;
    assert_eq!(
        errcode(
            t.wx.authorizer_token(&ct, &c.component_appid, &a.appid, &r1)
                .await
        ),
        61023
    );
}

#[tokio::test]
async fn a_refreshed_authorizer_token_retires_the_previous_one_after_the_overlap() {
    let t = TestSim::start().await;
    let c = t.component();
    let a = t.oa();
    let ct = t.component_token(&c).await;
    let (old, refresh) = t.authorized(&c, &a, &ct).await;
    let new =
        t.wx.authorizer_token(&ct, &c.component_appid, &a.appid, &refresh)
            .await
            .unwrap();
    t.wx.get_callback_ip(&old).await.unwrap();
    t.sim.control().advance_clock(Duration::from_secs(301));
    assert_eq!(errcode(t.wx.get_callback_ip(&old).await), 40001);
    t.wx.get_callback_ip(&new.authorizer_access_token)
        .await
        .unwrap();
    t.sim.control().advance_clock(Duration::from_secs(7200));
    assert_eq!(
        errcode(t.wx.get_callback_ip(&new.authorizer_access_token).await),
        42001
    );
}

#[tokio::test]
async fn reauthorizing_retires_the_old_refresh_token_and_access_tokens_at_once() {
    let t = TestSim::start().await;
    let c = t.component();
    let a = t.oa();
    let ct = t.component_token(&c).await;
    let (access, refresh) = t.authorized(&c, &a, &ct).await;
    let out = t
        .sim
        .control()
        .authorize(&a.appid, &c.component_appid)
        .unwrap();
    assert_eq!(out.info_type, "updateauthorized");
    assert_eq!(errcode(t.wx.get_callback_ip(&access).await), 40001);
    assert_eq!(
        errcode(
            t.wx.authorizer_token(&ct, &c.component_appid, &a.appid, &refresh)
                .await
        ),
        61023
    );
    let v = t.sim.control().validate(&access);
    assert_eq!((v.valid, v.reason.as_str()), (false, "retired"));
    let info =
        t.wx.query_auth(&ct, &c.component_appid, &out.authorization_code)
            .await
            .unwrap();
    let new_refresh = info.authorization_info.authorizer_refresh_token.unwrap();
    assert_ne!(new_refresh, refresh);
    t.wx.authorizer_token(&ct, &c.component_appid, &a.appid, &new_refresh)
        .await
        .unwrap();
}

#[tokio::test]
async fn keep_policy_keeps_the_refresh_token_across_a_reauthorization() {
    let t = TestSim::with(|c| c.reauthorize_refresh_token = ReauthorizePolicy::Keep).await;
    let c = t.component();
    let a = t.oa();
    let ct = t.component_token(&c).await;
    let (access, refresh) = t.authorized(&c, &a, &ct).await;
    t.sim
        .control()
        .authorize(&a.appid, &c.component_appid)
        .unwrap();
    assert_eq!(errcode(t.wx.get_callback_ip(&access).await), 40001);
    t.wx.authorizer_token(&ct, &c.component_appid, &a.appid, &refresh)
        .await
        .unwrap();
}

#[tokio::test]
async fn unauthorizing_fails_the_refresh_token_with_61023_and_the_appid_with_61003() {
    let t = TestSim::start().await;
    let c = t.component();
    let a = t.oa();
    let ct = t.component_token(&c).await;
    let (access, refresh) = t.authorized(&c, &a, &ct).await;
    t.sim
        .control()
        .unauthorize(&a.appid, &c.component_appid)
        .unwrap();
    assert_eq!(
        errcode(
            t.wx.authorizer_token(&ct, &c.component_appid, &a.appid, &refresh)
                .await
        ),
        61023
    );
    assert_eq!(
        errcode(
            t.wx.get_authorizer_info(&ct, &c.component_appid, &a.appid)
                .await
        ),
        61003
    );
    assert_eq!(errcode(t.wx.get_callback_ip(&access).await), 40001);
    let list =
        t.wx.get_authorizer_list(&ct, &c.component_appid, 0, 500)
            .await
            .unwrap();
    assert_eq!(list.total_count, 0);
    assert_eq!(
        t.sim
            .control()
            .authorizer(&c.component_appid, &a.appid)
            .unwrap()
            .status,
        "unauthorized"
    );
    // Authorizing again gives a new refresh token; the old one stays dead.
    let (_, again) = t.authorized(&c, &a, &ct).await;
    assert_ne!(again, refresh);
}

#[tokio::test]
async fn authorizer_token_errors_match_wechat() {
    let t = TestSim::start().await;
    let c = t.component();
    let a = t.oa();
    let stranger = t.oa();
    let ct = t.component_token(&c).await;
    let (_, refresh) = t.authorized(&c, &a, &ct).await;
    let wx = &t.wx;
    let cid = &c.component_appid;
    assert_eq!(
        errcode(
            wx.authorizer_token(&ct, cid, &stranger.appid, &refresh)
                .await
        ),
        61003
    );
    assert_eq!(
        errcode(wx.authorizer_token(&ct, cid, &a.appid, "").await),
        61023
    );
    assert_eq!(
        errcode(
            wx.authorizer_token(&ct, cid, &a.appid, "refreshtoken@@@x")
                .await
        ),
        61023
    );
    assert_eq!(
        errcode(
            wx.authorizer_token(&ct, cid, "wx00000000000000ff", &refresh)
                .await
        ),
        40013
    );
    assert_eq!(
        errcode(wx.authorizer_token(&ct, cid, "", &refresh).await),
        41002
    );
    // Another account's refresh token.
    let (_, other_refresh) = t.authorized(&c, &stranger, &ct).await;
    assert_eq!(
        errcode(
            wx.authorizer_token(&ct, cid, &a.appid, &other_refresh)
                .await
        ),
        61023
    );
}

#[tokio::test]
async fn the_authorizer_list_pages_by_at_most_500_and_omits_unexchanged_refresh_tokens() {
    let t = TestSim::start().await;
    let c = t.component();
    let bulk = t
        .sim
        .control()
        .bulk_authorize(&c.component_appid, 1203, AccountKind::MiniProgram)
        .unwrap();
    let a = t.oa();
    t.sim
        .control()
        .authorize(&a.appid, &c.component_appid)
        .unwrap();
    let ct = t.component_token(&c).await;
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let page =
            t.wx.get_authorizer_list(&ct, &c.component_appid, offset, 500)
                .await
                .unwrap();
        assert_eq!(page.total_count, 1204);
        if page.list.is_empty() {
            break;
        }
        assert!(page.list.len() <= 500);
        offset += page.list.len() as u32;
        seen.extend(page.list);
    }
    assert_eq!(seen.len(), 1204);
    for (item, b) in seen.iter().zip(&bulk) {
        assert_eq!(item.authorizer_appid, b.authorizer_appid);
        assert_eq!(
            item.refresh_token.as_deref(),
            Some(b.authorizer_refresh_token.as_str())
        );
        assert!(item.auth_time > 0);
    }
    assert_eq!(seen[1203].authorizer_appid, a.appid);
    assert_eq!(seen[1203].refresh_token, None, "code not exchanged yet");
    assert_eq!(
        errcode(
            t.wx.get_authorizer_list(&ct, &c.component_appid, 0, 501)
                .await
        ),
        40097
    );
}

#[tokio::test]
async fn authorizer_info_tells_mini_programs_from_official_accounts() {
    let t = TestSim::start().await;
    let c = t.component();
    let oa = t.oa();
    let mp = t.account(AccountKind::MiniProgram);
    let ct = t.component_token(&c).await;
    t.authorized(&c, &oa, &ct).await;
    t.authorized(&c, &mp, &ct).await;
    let i =
        t.wx.get_authorizer_info(&ct, &c.component_appid, &oa.appid)
            .await
            .unwrap();
    assert!(!i.is_mini_program());
    assert!(i.authorizer_info.user_name.unwrap().starts_with("gh_"));
    let auth = i.authorization_info.unwrap();
    assert_eq!(auth.authorizer_appid, oa.appid);
    assert!(
        auth.authorizer_refresh_token
            .unwrap()
            .starts_with("refreshtoken@@@")
    );
    let i =
        t.wx.get_authorizer_info(&ct, &c.component_appid, &mp.appid)
            .await
            .unwrap();
    assert!(i.is_mini_program());
}
