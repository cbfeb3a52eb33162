//! The engine's store writes. A stale write rewrites over a token requested earlier and adopts one
//! requested later; a result the store always refuses is given up without holding back the others;
//! a new token is served while its write is blocked. A rotated refresh token survives every
//! failure the store can give its write (SPEC.md rule 2): transient ones are retried until the
//! write lands; ones that cannot pass leave the refresh token written alone, or, if the store
//! refuses that too, kept in memory and sent next.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use secrecy::ExposeSecret;
use wechat_sim::{Api, RefreshTokenPolicy, SimConfig};
use wxtoken::model::{
    Appid, AuthorizationWrite, AuthorizerStatus, Credential, Expected, NewAccessToken,
    RefreshTokenSource, SaveOutcome, Sealed, SecretSlot, Timestamp, TokenSource,
};
use wxtoken::store::{Store, StoreError};

use crate::harness::engine::{Harness, refresh_config};
use crate::harness::sim_config;

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

/// What another writer (an `updateauthorized` exchange, another replica) stores between a
/// refresh's generation read and its write.
struct Interloper {
    credential: Credential,
    access: Sealed,
    refresh_token: Sealed,
}

impl Interloper {
    fn new(h: &Harness, appid: &str, access: &str, refresh_token: &str) -> Self {
        let credential = h.credential(appid);
        let vault = h.vault();
        let access = vault
            .seal(
                SecretSlot::AccessToken {
                    credential: &credential,
                },
                access.as_bytes(),
            )
            .unwrap();
        let refresh_token = vault
            .seal(
                SecretSlot::RefreshToken {
                    component: &credential.component,
                    appid: &credential.appid,
                },
                refresh_token.as_bytes(),
            )
            .unwrap();
        Self {
            credential,
            access,
            refresh_token,
        }
    }

    /// Stores it, fenced on the current generation, with a token requested at `requested_at`
    /// (`None`: now, i.e. after the refresh in flight was sent).
    async fn land(self, store: Arc<dyn Store>, requested_at: Option<Timestamp>) {
        let c = &self.credential;
        let generation = store
            .tokens()
            .get_token(c)
            .await
            .unwrap()
            .unwrap()
            .generation;
        let issued_at = requested_at.unwrap_or_else(Timestamp::now);
        let outcome = store
            .authorizers()
            .save_authorization(&AuthorizationWrite {
                component: c.component.clone(),
                appid: c.appid.clone(),
                expected: Expected::Generation(generation),
                kind: None,
                status: AuthorizerStatus::Active,
                refresh_token: self.refresh_token,
                appsecret: None,
                access_token: Some(NewAccessToken {
                    sealed: self.access,
                    issued_at,
                    expires_at: issued_at.plus(Duration::from_secs(600)),
                    refresh_at: Some(issued_at.plus(Duration::from_secs(300))),
                    source: TokenSource::QueryAuth,
                }),
                source: RefreshTokenSource::QueryAuth,
                at: Timestamp::now(),
            })
            .await
            .unwrap();
        assert!(matches!(outcome, SaveOutcome::Saved { .. }), "{outcome:?}");
    }
}

fn history_values(
    h: &Harness,
    appid: &Appid,
    entries: &[wxtoken::model::RefreshTokenHistoryEntry],
) -> Vec<String> {
    let vault = h.vault();
    entries
        .iter()
        .map(|e| {
            vault
                .open_string(
                    SecretSlot::RefreshToken {
                        component: &h.comp,
                        appid,
                    },
                    &e.refresh_token,
                )
                .unwrap()
                .expose_secret()
                .to_owned()
        })
        .collect()
}

/// Finding 6: on a `Stale` write the token requested later wins, and no refresh token is lost.
#[tokio::test]
async fn stale_write_rewrites_over_a_token_requested_earlier_and_adopts_one_requested_later() {
    let h = Harness::start(
        sim_config(Duration::from_secs(600), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
    )
    .await;
    let bulk = h.import_authorizers(2).await;
    let (earlier, later) = (&bulk[0].authorizer_appid, &bulk[1].authorizer_appid);

    // An exchange whose request went out a second before our refresh's lands first.
    let cred = h.credential(earlier);
    let first = h.engine.refresh_now(&cred).await.expect("first token");
    h.engine.wait_stored(&cred).await;
    let requested_before = Timestamp::from_millis(Timestamp::now().as_millis() - 1000);
    let interloper = Interloper::new(&h, earlier, "older-access", "refreshtoken@@@fromqueryauth");
    h.hooks
        .before_next_save(move |store| interloper.land(store, Some(requested_before)).boxed());
    let served = h.engine.refresh_now(&cred).await.expect("refreshed");
    h.engine.wait_stored(&cred).await;
    let ours = h.engine.token(None, earlier).expect("served");
    assert!(ours.is(served.access_token.expose_secret()));
    assert!(ours.stored);
    assert!(!ours.is("older-access"), "the older token was adopted");
    assert!(
        h.valid(&ours.access_token),
        "WeChat's newest token is served"
    );
    assert_eq!(
        ours.generation,
        first.generation + 2,
        "the interloper's write, then ours fenced again on it"
    );
    let stored = h.store.tokens().get_token(&cred).await.unwrap().unwrap();
    assert_eq!(stored.generation, ours.generation);
    let opened = h
        .vault()
        .open_string(
            SecretSlot::AccessToken { credential: &cred },
            &stored.token.unwrap().sealed,
        )
        .unwrap();
    assert!(ours.is(opened.expose_secret()), "the store holds ours too");
    // Ours only echoed the refresh token it sent, older than the exchange's: the exchange's stays
    // current, and both are in the history.
    assert_eq!(
        h.stored_refresh_token(earlier).await,
        "refreshtoken@@@fromqueryauth"
    );
    let appid = Appid::parse(earlier).unwrap();
    let history = h
        .store
        .authorizers()
        .refresh_token_history(&h.comp, &appid)
        .await
        .unwrap();
    let values = history_values(&h, &appid, &history);
    assert!(values.contains(&"refreshtoken@@@fromqueryauth".to_owned()));
    assert!(values.contains(&h.sim_refresh_token(earlier)));

    // A write whose token was requested after ours was sent: ours is dropped, theirs adopted.
    let cred = h.credential(later);
    let first = h.engine.refresh_now(&cred).await.expect("first token");
    h.engine.wait_stored(&cred).await;
    let interloper = Interloper::new(&h, later, "newer-access", &h.sim_refresh_token(later));
    h.hooks
        .before_next_save(move |store| interloper.land(store, None).boxed());
    let ours = h.engine.refresh_now(&cred).await.expect("refreshed");
    assert!(!ours.stored, "served before it is stored");
    h.engine.wait_stored(&cred).await;
    let adopted = h.engine.token(None, later).expect("served");
    assert!(adopted.stored);
    assert!(
        adopted.is("newer-access"),
        "the later token was not adopted"
    );
    assert_eq!(adopted.generation, first.generation + 1);
    assert!(h.engine.token(None, later).unwrap().is("newer-access"));
    h.stop().await;
}

/// Finding 10: one fate per write. A result the store refuses every time is given up with an
/// alert; the results written with it land, and the queue keeps moving.
#[tokio::test]
async fn result_the_store_always_refuses_is_given_up_with_an_alert_and_the_others_land() {
    use sqlx::Connection;
    let webhook = crate::harness::engine::WebhookReceiver::start().await;
    let h = Harness::start_with(
        sim_config(Duration::from_secs(600), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
        Some(webhook.url.clone()),
        Duration::from_secs(5),
    )
    .await;
    let bulk = h.import_authorizers(6).await;
    let bad = bulk[3].authorizer_appid.clone();
    // A row state that fails every write of one authorizer's token.
    let mut conn = sqlx::SqliteConnection::connect(h.db_url()).await.unwrap();
    sqlx::query(&format!(
        "CREATE TRIGGER refuse_one BEFORE UPDATE ON access_tokens \
         WHEN NEW.appid = '{bad}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let creds: Vec<_> = bulk
        .iter()
        .map(|b| h.credential(&b.authorizer_appid))
        .collect();
    let outcomes = futures::future::join_all(creds.iter().map(|c| h.engine.refresh_now(c))).await;
    for (b, (cred, outcome)) in bulk.iter().zip(creds.iter().zip(&outcomes)) {
        // Served at once either way (its write runs in the background).
        let token = outcome.as_ref().expect("served");
        assert!(h.valid(&token.access_token));
        h.engine.wait_stored(cred).await;
        let stored = h.store.tokens().get_token(cred).await.unwrap().unwrap();
        if b.authorizer_appid == bad {
            assert_eq!(stored.generation + 1, token.generation, "never stored");
            let served = h.engine.token(None, &bad).expect("still served");
            assert!(!served.stored && served.is(token.access_token.expose_secret()));
        } else {
            assert_eq!(
                stored.generation, token.generation,
                "stored, not only served"
            );
            assert!(h.engine.token(None, &b.authorizer_appid).unwrap().stored);
        }
    }
    let alert = webhook.wait_for("write_failed", &bad).await;
    assert_eq!(
        alert["component_appid"],
        h.component.component_appid.as_str()
    );
    assert_eq!(webhook.count_kind("write_failed"), 1);
    // Once the store takes it again, the next refresh lands.
    sqlx::query("DROP TRIGGER refuse_one")
        .execute(&mut conn)
        .await
        .unwrap();
    let cred = h.credential(&bad);
    let token = h.engine.refresh_now(&cred).await.expect("served");
    h.engine.wait_stored(&cred).await;
    let stored = h.store.tokens().get_token(&cred).await.unwrap().unwrap();
    assert_eq!(stored.generation, token.generation, "lands now");
    assert!(h.valid(&token.access_token));
    h.stop().await;
}

/// Finding 2: while the store cannot take a write, the token WeChat just issued is served at once
/// and invalidation reports are answered without waiting on the store; the write lands once the
/// store is back.
#[tokio::test]
async fn new_token_is_served_and_reports_answered_while_its_store_write_is_blocked() {
    use sqlx::Connection;
    let mut h = Harness::start(
        sim_config(Duration::from_secs(600), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
    )
    .await;
    h.restart_with_store(&wxtoken::store::StoreOptions {
        acquire_timeout: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let appid = h.import_authorizers(1).await.remove(0).authorizer_appid;
    let cred = h.credential(&appid);
    let first = h.engine.refresh_now(&cred).await.expect("first token");
    h.engine.wait_stored(&cred).await;
    let before = h.store.tokens().get_token(&cred).await.unwrap().unwrap();
    assert_eq!(before.generation, first.generation);

    // Another process holds SQLite's write lock: no write can land.
    let mut blocker = sqlx::sqlite::SqliteConnection::connect(h.db_url())
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut blocker)
        .await
        .unwrap();
    // A client reports the current token: it gets WeChat's new one (bounded: never waits on the
    // store).
    let new = tokio::time::timeout(
        Duration::from_secs(10),
        h.engine
            .invalidate(&cred, first.access_token.expose_secret()),
    )
    .await
    .expect("answered without waiting for the store")
    .expect("new token");
    assert!(!new.is(first.access_token.expose_secret()));
    assert!(!new.stored);
    assert!(new.generation > first.generation);
    assert!(h.valid(&new.access_token));
    // Readers get it, and a late report of the superseded token gets it with no upstream call.
    assert!(
        h.engine
            .token(None, &appid)
            .unwrap()
            .is(new.access_token.expose_secret())
    );
    let calls = h.sim.control().stats().calls(Api::AuthorizerToken);
    let late = tokio::time::timeout(
        Duration::from_secs(1),
        h.engine
            .invalidate(&cred, first.access_token.expose_secret()),
    )
    .await
    .expect("answered at once")
    .unwrap();
    assert!(late.is(new.access_token.expose_secret()));
    assert_eq!(h.sim.control().stats().calls(Api::AuthorizerToken), calls);
    // The store still holds the old token (reads are not blocked).
    assert_eq!(
        h.store
            .tokens()
            .get_token(&cred)
            .await
            .unwrap()
            .unwrap()
            .generation,
        before.generation
    );

    // The store is back: the write lands, at the generation served.
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), h.engine.wait_stored(&cred))
        .await
        .expect("stored within 20 s of the lock being released");
    let stored = h.store.tokens().get_token(&cred).await.unwrap().unwrap();
    assert_eq!(stored.generation, new.generation);
    let served = h.engine.token(None, &appid).unwrap();
    assert!(served.stored && served.is(new.access_token.expose_secret()));
    assert_eq!(
        h.stored_refresh_token(&appid).await,
        h.sim_refresh_token(&appid)
    );
    h.stop().await;
}
