//! Push events in order and under failure: a failing event backs off instead of being retried on
//! every pass, an `authorized` waits for an earlier failing `unauthorized`, and pushes received in
//! the same millisecond are applied in arrival order.

use std::time::Duration;

use wechat_sim::{Api, Fault, FaultRule, FaultSet};
use wxtoken::model::{AuthorizerStatus, Timestamp};

use crate::harness::engine::{Harness, refresh_config};
use crate::harness::sim_config;

/// Events follow-up: an event that keeps failing transiently is retried with growing backoff,
/// not on every pass, and its appid's later events wait behind it; it applies once WeChat answers.
#[tokio::test]
async fn event_that_keeps_failing_is_retried_with_growing_backoff_not_on_every_pass() {
    let h = Harness::start(
        sim_config(Duration::from_secs(60), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
    )
    .await;
    let sim = h.sim.control().clone();
    let appid = sim
        .create_account(wechat_sim::AccountSpec {
            kind: wechat_sim::AccountKind::OfficialAccount,
            appid: None,
            appsecret: None,
        })
        .unwrap()
        .appid;
    sim.set_faults(FaultSet {
        seed: None,
        rules: vec![FaultRule {
            endpoint: "api_query_auth".into(),
            probability: 1.0,
            times: None,
            fault: Fault::HttpStatus { status: 502 },
        }],
    })
    .unwrap();
    let outcome = sim.authorize(&appid, &h.component.component_appid).unwrap();
    h.record_only(&h.authorization_event(&outcome), "auth:failing")
        .await;
    let key = "auth:failing";

    let before = tokio::time::Instant::now();
    assert_eq!(h.engine.process_events().await.unwrap(), 0);
    let first_retry = h.engine.event_retry_at(&h.comp, key).expect("backing off");
    let first_wait = first_retry - before;
    assert_eq!(sim.stats().calls(Api::QueryAuth), 1);
    // Passes before the backoff runs out (every push and the loop run one) leave it alone.
    for _ in 0..5 {
        assert_eq!(h.engine.process_events().await.unwrap(), 0);
    }
    assert_eq!(
        sim.stats().calls(Api::QueryAuth),
        1,
        "retried on every pass"
    );

    // Two more failures, each after its backoff: the wait grows (50–100 ms, then 200–400 ms).
    let mut retry_at = first_retry;
    let mut last_wait = Duration::ZERO;
    for calls in 2..=3 {
        tokio::time::sleep_until(retry_at).await; // the backoff itself, not synchronisation
        assert_eq!(h.engine.process_events().await.unwrap(), 0);
        let after = tokio::time::Instant::now();
        assert_eq!(sim.stats().calls(Api::QueryAuth), calls);
        retry_at = h.engine.event_retry_at(&h.comp, key).expect("backing off");
        last_wait = retry_at.saturating_duration_since(after);
    }
    assert!(
        last_wait > first_wait,
        "backoff grows: {first_wait:?} then {last_wait:?}"
    );

    // WeChat answers again: the first pass after the backoff applies it.
    sim.clear_faults();
    tokio::time::sleep_until(retry_at).await;
    assert_eq!(h.engine.process_events().await.unwrap(), 1);
    assert!(h.engine.event_retry_at(&h.comp, key).is_none());
    assert!(
        h.store
            .events()
            .unprocessed_events(None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let t = h.engine.token(None, &appid).expect("authorized");
    assert!(h.valid(&t.access_token));
    assert_eq!(sim.stats().calls(Api::QueryAuth), 4);
    h.stop().await;
}

/// The locked-database ordering story (dropped earlier as intermittently hanging): the revocation
/// fails while another process holds SQLite's write lock, the authorization behind it waits, and
/// once the lock is released both apply, in order, promptly.
#[tokio::test]
async fn authorized_after_a_failing_unauthorized_waits_for_it_so_a_reauthorized_account_stays_active()
 {
    use sqlx::Connection;
    let mut h = Harness::start(
        sim_config(Duration::from_secs(60), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
    )
    .await;
    h.restart_with_store(&wxtoken::store::StoreOptions {
        acquire_timeout: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let sim = h.sim.control().clone();
    let comp = h.component.component_appid.clone();
    let appid = h.import_authorizers(1).await.remove(0).authorizer_appid;
    // The merchant revokes, then authorizes again: both pushes stored, in that order.
    // (Received one millisecond apart: pushes stored in the same millisecond would be applied in
    // dedupe-key order, "auth" before "unauth" — the intermittent hang this test once had, as the
    // authorization then waited on a component-token write blocked by the lock below.)
    let received = Timestamp::now();
    sim.unauthorize(&appid, &comp).unwrap();
    h.record_at(&h.unauthorized_event(&appid), "unauth", received)
        .await;
    let outcome = sim.authorize(&appid, &comp).unwrap();
    let later = Timestamp::from_millis(received.as_millis() + 1);
    h.record_at(&h.authorization_event(&outcome), "auth", later)
        .await;

    // The revocation fails (another process holds SQLite's write lock).
    let mut blocker = sqlx::sqlite::SqliteConnection::connect(h.db_url())
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .unwrap();
    assert_eq!(h.engine.process_events().await.unwrap(), 0);
    assert_eq!(
        sim.stats().calls(Api::QueryAuth),
        0,
        "the authorization waits for the unauthorized event before it"
    );
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();

    let retry_at = h
        .engine
        .event_retry_at(&h.comp, "unauth")
        .expect("backing off");
    tokio::time::sleep_until(retry_at).await; // the backoff itself, not synchronisation
    let applied = tokio::time::timeout(Duration::from_secs(20), h.engine.process_events())
        .await
        .expect("applied within 20 s of the lock being released")
        .unwrap();
    assert_eq!(applied, 2, "both, in order");
    assert_eq!(h.status(&appid).await, AuthorizerStatus::Active);
    assert_eq!(
        h.stored_refresh_token(&appid).await,
        h.sim_refresh_token(&appid)
    );
    let t = h.engine.token(None, &appid).expect("served");
    assert!(h.valid(&t.access_token));
    h.stop().await;
}

/// Pushes stored in the same millisecond keep their arrival order: an `unauthorized` then an
/// `authorized` (whose dedupe key sorts first) leave the account active.
#[tokio::test]
async fn pushes_received_in_one_millisecond_are_applied_in_arrival_order() {
    let h = Harness::start(
        sim_config(Duration::from_secs(60), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
    )
    .await;
    let sim = h.sim.control().clone();
    let comp = h.component.component_appid.clone();
    let appid = h.import_authorizers(1).await.remove(0).authorizer_appid;
    sim.unauthorize(&appid, &comp).unwrap();
    let outcome = sim.authorize(&appid, &comp).unwrap();
    let (unauthorized, authorized) = (
        h.unauthorized_event(&appid),
        h.authorization_event(&outcome),
    );
    h.engine
        .ingest_push(&h.comp, &unauthorized, "z:unauthorized")
        .await
        .unwrap();
    h.engine
        .ingest_push(&h.comp, &authorized, "a:authorized")
        .await
        .unwrap();
    h.engine.process_events().await.unwrap();
    // Both applied (ingest's own passes may have applied them first).
    assert!(
        h.store
            .events()
            .unprocessed_events(None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(h.status(&appid).await, AuthorizerStatus::Active);
    assert_eq!(
        h.stored_refresh_token(&appid).await,
        h.sim_refresh_token(&appid)
    );
    h.stop().await;
}
