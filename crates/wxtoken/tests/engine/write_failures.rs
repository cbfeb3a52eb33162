//! A rotated refresh token survives every failure the store can give its write (SPEC.md rule 2):
//! transient ones are retried until the write lands; ones that cannot pass leave the refresh
//! token written alone, or, if the store refuses that too, kept in memory and sent next.

use std::time::Duration;

use wechat_sim::{Api, RefreshTokenPolicy, SimConfig};
use wxtoken::model::AuthorizerStatus;
use wxtoken::store::StoreError;

use crate::helpers::{Harness, refresh_config, sim_config};

/// WeChat keeps a replaced refresh token working this long (then refuses it).
const OVERLAP: Duration = Duration::from_secs(5);

/// A failure case: its name, the error as the store gives it, and whether it can pass.
type Failure = (&'static str, fn() -> StoreError, bool);

/// Each error a store write can end in.
const FAILURES: [Failure; 6] = [
    (
        "unavailable",
        || StoreError::Unavailable(sqlx::Error::PoolTimedOut),
        true,
    ),
    (
        "contention",
        || StoreError::Contention {
            what: "serialization failure",
            source: sqlx::Error::Protocol("could not serialize access".into()),
        },
        true,
    ),
    (
        "constraint",
        || StoreError::Constraint {
            what: "check",
            source: sqlx::Error::Protocol("CHECK constraint failed".into()),
        },
        false,
    ),
    (
        "backend",
        || StoreError::Backend(sqlx::Error::Protocol("disk I/O error".into())),
        false,
    ),
    (
        "corrupt",
        || StoreError::Corrupt("bad nonce length".into()),
        false,
    ),
    (
        "invalid input",
        || StoreError::InvalidInput("empty refresh token"),
        false,
    ),
];

async fn rotating_harness() -> Harness {
    Harness::start(
        SimConfig {
            refresh_token_policy: RefreshTokenPolicy::Rotate,
            ..sim_config(Duration::from_secs(600), OVERLAP)
        },
        refresh_config(Duration::from_secs(5)),
    )
    .await
}

/// Refreshes `appid` once more after WeChat stopped taking the refresh token it replaced, and
/// checks that the refresh token wxtoken sent was the current one (no recovery, no listing) and
/// that the store holds WeChat's newest.
async fn next_refresh_sends_the_rotated_token(h: &Harness, appid: &str, case: &str) {
    h.sim
        .control()
        .advance_clock(OVERLAP + Duration::from_secs(1));
    let before = h.sim.control().stats().calls(Api::GetAuthorizerList);
    let credential = h.credential(appid);
    h.engine
        .refresh_now(&credential)
        .await
        .unwrap_or_else(|e| panic!("{case}: the next refresh: {e}"));
    h.engine.wait_stored(&credential).await;
    assert_eq!(
        h.sim.control().stats().calls(Api::GetAuthorizerList),
        before,
        "{case}: the refresh token sent was refused (a recovery paged the list)"
    );
    assert_eq!(
        h.stored_refresh_token(appid).await,
        h.sim_refresh_token(appid),
        "{case}: the store holds WeChat's newest refresh token"
    );
    assert_eq!(h.status(appid).await, AuthorizerStatus::Active, "{case}");
}

#[tokio::test]
async fn a_rotated_refresh_token_survives_each_failure_of_its_refresh_results_write() {
    let h = rotating_harness().await;
    let bulk = h.import_authorizers(FAILURES.len()).await;
    for ((case, error, transient), authorizer) in FAILURES.into_iter().zip(&bulk) {
        let appid = authorizer.authorizer_appid.as_str();
        let credential = h.credential(appid);
        // Transient failures end (the write lands on a later try); the others never do.
        h.hooks
            .fail_refresh_results(if transient { 5 } else { u32::MAX }, error);
        let served = h
            .engine
            .refresh_now(&credential)
            .await
            .unwrap_or_else(|e| panic!("{case}: WeChat's answer is served: {e}"));
        assert!(h.valid(&served.access_token), "{case}");
        h.engine.wait_stored(&credential).await;
        h.hooks.fail_refresh_results(0, error);
        assert_eq!(
            h.stored_refresh_token(appid).await,
            h.sim_refresh_token(appid),
            "{case}: the rotated refresh token is stored (with its result, or alone)"
        );
        next_refresh_sends_the_rotated_token(&h, appid, case).await;
    }
}

#[tokio::test]
async fn a_rotated_refresh_token_the_store_refuses_even_alone_is_kept_in_memory_and_sent_next() {
    let h = rotating_harness().await;
    let bulk = h.import_authorizers(4).await;
    for ((case, error, _), authorizer) in FAILURES
        .into_iter()
        .filter(|(_, _, transient)| !transient)
        .zip(&bulk)
    {
        let appid = authorizer.authorizer_appid.as_str();
        let credential = h.credential(appid);
        let stored_before = h.stored_refresh_token(appid).await;
        h.hooks.fail_refresh_results(u32::MAX, error);
        h.hooks.fail_authorizations(u32::MAX, error);
        h.engine
            .refresh_now(&credential)
            .await
            .unwrap_or_else(|e| panic!("{case}: WeChat's answer is served: {e}"));
        h.engine.wait_stored(&credential).await;
        assert_eq!(
            h.stored_refresh_token(appid).await,
            stored_before,
            "{case}: the store took nothing"
        );
        assert_ne!(
            stored_before,
            h.sim_refresh_token(appid),
            "{case}: WeChat rotated"
        );
        // The store takes writes again; the refresh token WeChat rotated lives only in memory.
        h.hooks.fail_refresh_results(0, error);
        h.hooks.fail_authorizations(0, error);
        next_refresh_sends_the_rotated_token(&h, appid, case).await;
    }
}
