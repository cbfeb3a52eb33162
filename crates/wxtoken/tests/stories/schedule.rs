//! When refreshes happen: a token's lifetime counts from when its request was sent, the cold start
//! keeps valid tokens on their time and starts overdue ones in waves, and the `stable_token`
//! force-refresh budget survives a restart.

use std::time::Duration;

use wechat_sim::{Api, Fault, FaultRule, FaultSet, Latency};
use wxtoken::model::{Credential, Timestamp};

use crate::harness::engine::{Harness, refresh_config};
use crate::harness::sim_config;

/// Finding 16: a token's lifetime counts from when its request was sent, not from the answer.
#[tokio::test]
async fn expiry_counts_from_when_the_request_was_sent_not_when_the_answer_arrived() {
    const LIFETIME: Duration = Duration::from_secs(600);
    let h = Harness::start(
        sim_config(LIFETIME, Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
    )
    .await;
    let bulk = h.import_authorizers(1).await;
    let appid = &bulk[0].authorizer_appid;
    let cred = h.credential(appid);
    h.sim
        .control()
        .set_faults(FaultSet {
            seed: Some(1),
            rules: vec![FaultRule {
                endpoint: "api_authorizer_token".into(),
                probability: 1.0,
                times: None,
                fault: Fault::Latency {
                    latency: Latency::Fixed { ms: 1500 },
                },
            }],
        })
        .unwrap();
    let before = Timestamp::now();
    let token = h.engine.refresh_now(&cred).await.expect("token");
    let after = Timestamp::now();
    h.engine.wait_stored(&cred).await;
    assert!(
        after.as_millis() - before.as_millis() >= 1500,
        "the latency was injected"
    );
    let lifetime = LIFETIME.as_millis() as i64;
    let counted_from = token.expires_at.as_millis() - lifetime;
    assert!(
        counted_from >= before.as_millis() && counted_from < before.as_millis() + 1000,
        "expires_at counts from the request ({} ms after the call started, answer after {} ms)",
        counted_from - before.as_millis(),
        after.as_millis() - before.as_millis()
    );
    let stored = h
        .store
        .tokens()
        .get_token(&cred)
        .await
        .unwrap()
        .unwrap()
        .token
        .unwrap();
    assert_eq!(stored.expires_at, token.expires_at);
    assert_eq!(stored.issued_at.as_millis(), counted_from);
    assert_eq!(h.sim.control().stats().calls(Api::AuthorizerToken), 1);
    h.stop().await;
}

/// Finding 13: at cold start, tokens still valid keep their refresh time (and are served), and
/// overdue ones start in waves of `refresh.concurrency`, not all at once.
#[tokio::test]
async fn cold_start_keeps_valid_tokens_on_their_time_and_starts_overdue_ones_in_waves() {
    let mut h = Harness::start(
        sim_config(Duration::from_secs(600), Duration::from_secs(10)),
        wxtoken::config::RefreshConfig {
            concurrency: 4,
            ..refresh_config(Duration::from_secs(5))
        },
    )
    .await;
    let bulk = h.import_authorizers(12).await;
    let (valid, tokenless) = bulk.split_at(2);
    for b in valid {
        h.engine
            .refresh_now(&h.credential(&b.authorizer_appid))
            .await
            .expect("token");
    }
    h.restart().await;
    h.sim.control().reset_stats();
    let opened = tokio::time::Instant::now();
    for b in valid {
        let token = h.engine.token(None, &b.authorizer_appid).expect("served");
        assert!(h.valid(&token.access_token));
        let due = h
            .engine
            .next_refresh(&h.credential(&b.authorizer_appid))
            .expect("scheduled");
        // Refreshed at half its 600 s lifetime or later, never at the cold start.
        assert!(
            due > opened + Duration::from_secs(250),
            "{:?}",
            due - opened
        );
    }
    let mut due: Vec<Duration> = tokenless
        .iter()
        .map(|b| {
            h.engine
                .next_refresh(&h.credential(&b.authorizer_appid))
                .expect("scheduled")
                .saturating_duration_since(opened)
        })
        .collect();
    due.sort();
    // 10 overdue, 4 at a time, one wave per 200 ms: 4 now, 4 at 200 ms, 2 at 400 ms.
    let first = due[0];
    let waves: Vec<u128> = due
        .iter()
        .map(|d| (d.saturating_sub(first).as_millis() + 50) / 200)
        .collect();
    assert_eq!(waves, vec![0, 0, 0, 0, 1, 1, 1, 1, 2, 2], "{due:?}");
    assert_eq!(h.sim.control().stats().calls(Api::AuthorizerToken), 0);
    h.stop().await;
}

/// Finding 17: the stable_token force_refresh budget is stored, so a restart does not reset it
/// (here: the 30 s gap after a forced refresh still holds after a restart).
#[tokio::test]
async fn force_refresh_budget_survives_a_restart_over_the_same_database() {
    let mut h = Harness::start(
        sim_config(Duration::from_secs(600), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
    )
    .await;
    let (account, appid) = h
        .add_direct_account(wechat_sim::AccountKind::OfficialAccount)
        .await;
    let cred = Credential::direct(&h.comp, &appid);
    let first = h.engine.refresh_now(&cred).await.expect("stable token");
    let forced = h
        .engine
        .invalidate(&cred, first.access_token.expose_secret())
        .await
        .expect("forced");
    assert!(
        !forced.is(first.access_token.expose_secret()),
        "forced a new one"
    );
    let budgets = h.store.direct().load_force_budgets().await.unwrap();
    assert_eq!(budgets.len(), 1);
    assert_eq!(
        (budgets[0].credential.clone(), budgets[0].used),
        (cred.clone(), 1)
    );

    h.restart().await;
    h.sim.control().reset_stats();
    // Reported again within 30 s of the forced one, after the restart: no force this time, a
    // normal stable_token call (which returns the same token).
    let again = h
        .engine
        .invalidate(&cred, forced.access_token.expose_secret())
        .await
        .expect("normal stable_token");
    assert!(again.is(forced.access_token.expose_secret()));
    assert!(h.valid(&again.access_token));
    assert_eq!(h.sim.control().stats().calls(Api::StableToken), 1);
    assert_eq!(
        h.store.direct().load_force_budgets().await.unwrap()[0].used,
        1
    );
    assert!(
        h.engine
            .token(None, &account.appid)
            .unwrap()
            .is(forced.access_token.expose_secret())
    );
    h.stop().await;
}
