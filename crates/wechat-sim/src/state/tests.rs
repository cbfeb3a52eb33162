//! Unit tests of the rules, driving `State` directly with explicit clock readings.

use super::*;
use crate::config::{RefreshTokenPolicy, SimConfig};
use crate::model::{AccountKind, AccountSpec, ComponentSpec};

const T0: Millis = 1_700_000_000_000;
const MIN: Millis = 60_000;

fn state_with(f: impl FnOnce(&mut SimConfig)) -> State {
    let mut c = SimConfig::default();
    f(&mut c);
    State::new(c.validate().unwrap())
}

fn setup(st: &mut State) -> (u32, u32) {
    let cid = st.create_component(ComponentSpec::default(), T0).unwrap();
    let acc = st
        .create_account(AccountSpec {
            kind: AccountKind::OfficialAccount,
            appid: None,
            appsecret: None,
        })
        .unwrap();
    (cid, acc)
}

#[test]
fn replaced_direct_token_works_for_the_overlap_then_fails_with_40001() {
    let mut st = state_with(|_| {});
    let (_, acc) = setup(&mut st);
    let a = st.direct_token(acc, T0).unwrap();
    let b = st.direct_token(acc, T0 + MIN).unwrap();
    assert_ne!(a.token, b.token);
    assert!(matches!(
        st.check(&a.token, T0 + 5 * MIN),
        TokenCheck::Valid(_)
    ));
    assert_eq!(
        st.check(&a.token, T0 + 6 * MIN).valid().unwrap_err().code,
        40001
    );
    assert!(matches!(
        st.check(&b.token, T0 + 6 * MIN),
        TokenCheck::Valid(_)
    ));
    assert_eq!(
        st.check(&b.token, T0 + MIN + 7_200_000)
            .valid()
            .unwrap_err()
            .code,
        42001
    );
    assert_eq!(st.check("86_nope", T0).valid().unwrap_err().code, 40014);
}

#[test]
fn superseded_generations_are_pruned_after_their_overlap() {
    let mut st = state_with(|_| {});
    let (_, acc) = setup(&mut st);
    for i in 0..10 {
        st.direct_token(acc, T0 + i).unwrap();
    }
    let sid = st.accounts[acc as usize].direct_series.unwrap();
    assert_eq!(st.series[sid as usize].recent.len(), 9);
    st.direct_token(acc, T0 + 10 * MIN).unwrap();
    assert!(st.series[sid as usize].recent.len() <= 1);
}

#[test]
fn latest_ticket_policy_rejects_older_tickets_and_expired_ones() {
    let mut st = state_with(|c| c.ticket_repeat = 1);
    let (cid, _) = setup(&mut st);
    let first = st.component_info(cid).latest_ticket.unwrap();
    let second = st.issue_ticket(cid, T0 + 10 * MIN);
    // Until the newer ticket's push is acknowledged, the older one still works.
    assert!(st.component_token(cid, &first, T0 + 11 * MIN).is_ok());
    st.ack_ticket(cid, &second);
    assert_eq!(
        st.component_token(cid, &first, T0 + 11 * MIN)
            .unwrap_err()
            .code,
        61006
    );
    assert!(st.component_token(cid, &second, T0 + 11 * MIN).is_ok());
    assert_eq!(
        st.component_token(cid, &second, T0 + 10 * MIN + 12 * 60 * MIN)
            .unwrap_err()
            .code,
        61005
    );
    assert_eq!(st.component_token(cid, "", T0).unwrap_err().code, 61006);
}

#[test]
fn any_valid_ticket_policy_accepts_older_tickets_within_validity() {
    let mut st = state_with(|c| c.ticket_policy = crate::config::TicketPolicy::AnyValid);
    let (cid, _) = setup(&mut st);
    let first = st.component_info(cid).latest_ticket.unwrap();
    st.issue_ticket(cid, T0 + 10 * MIN);
    assert!(st.component_token(cid, &first, T0 + 11 * MIN).is_ok());
    assert_eq!(
        st.component_token(cid, &first, T0 + 12 * 60 * MIN)
            .unwrap_err()
            .code,
        61005
    );
}

#[test]
fn refresh_token_is_echoed_by_default_and_rotated_on_request() {
    for policy in [RefreshTokenPolicy::Echo, RefreshTokenPolicy::Rotate] {
        let mut st = state_with(|c| c.refresh_token_policy = policy);
        let (cid, acc) = setup(&mut st);
        let out = st.authorize(acc, cid, None, T0);
        let q = st.query_auth(cid, &out.authorization_code, T0).unwrap();
        let appid = out.authorizer_appid.clone();
        let (_, r2) = st
            .authorizer_token(cid, &appid, &q.refresh_token, T0 + MIN)
            .unwrap();
        match policy {
            RefreshTokenPolicy::Echo => assert_eq!(r2, q.refresh_token),
            RefreshTokenPolicy::Rotate => {
                assert_ne!(r2, q.refresh_token);
                // The old one still works within the overlap, then fails.
                assert!(
                    st.authorizer_token(cid, &appid, &q.refresh_token, T0 + 2 * MIN)
                        .is_ok()
                );
                let late = st.authorizer_token(cid, &appid, &q.refresh_token, T0 + 20 * MIN);
                assert_eq!(late.unwrap_err().code, 61023);
            }
        }
    }
}

#[test]
fn authorization_codes_are_single_use_and_expire() {
    let mut st = state_with(|_| {});
    let (cid, acc) = setup(&mut st);
    let out = st.authorize(acc, cid, None, T0);
    assert!(st.query_auth(cid, &out.authorization_code, T0).is_ok());
    assert_eq!(
        st.query_auth(cid, &out.authorization_code, T0)
            .unwrap_err()
            .code,
        61009
    );
    let out = st.authorize(acc, cid, None, T0);
    assert_eq!(
        st.query_auth(cid, &out.authorization_code, T0 + 11 * MIN)
            .unwrap_err()
            .code,
        61010
    );
}

#[test]
fn bulk_authorizers_cost_a_few_hundred_bytes_each() {
    let mut st = state_with(|_| {});
    let (cid, _) = setup(&mut st);
    let made = st.bulk_authorize(cid, 1000, AccountKind::MiniProgram, T0);
    assert_eq!(made.len(), 1000);
    let page = st.authorizer_list(cid, 500, 500);
    assert_eq!(page.total_count, 1000);
    assert_eq!(page.list.len(), 500);
    assert_eq!(
        page.list[0].1.as_deref(),
        Some(made[500].authorizer_refresh_token.as_str())
    );
    assert!(std::mem::size_of::<Series>() <= 64);
    assert!(std::mem::size_of::<Account>() <= 80);
}
