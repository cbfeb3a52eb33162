//! Engine behaviour fixed after review: stale writes compare request times, lifetimes count from
//! the request, one write batch never blocks the queue, the cold start spreads overdue refreshes,
//! the force_refresh budget survives a restart, failing events back off.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use secrecy::ExposeSecret;
use wechat_sim::{Api, Fault, FaultRule, FaultSet, Latency};
use wxtoken::model::{
    Appid, AuthorizationWrite, AuthorizerStatus, Credential, Expected, NewAccessToken,
    RefreshTokenSource, SaveOutcome, Sealed, SecretSlot, Timestamp, TokenSource,
};
use wxtoken::store::Store;

use crate::helpers::{Harness, refresh_config, sim_config};

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

/// Finding 10: one fate per write. A result the store refuses every time is given up with an
/// alert; the results written with it land, and the queue keeps moving.
#[tokio::test]
async fn result_the_store_always_refuses_is_given_up_with_an_alert_and_the_others_land() {
    use sqlx::Connection;
    let webhook = crate::helpers::WebhookReceiver::start().await;
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
    crate::record_only(&h, &h.authorization_event(&outcome), "auth:failing").await;
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
    crate::record_at(&h, &h.unauthorized_event(&appid), "unauth", received).await;
    let outcome = sim.authorize(&appid, &comp).unwrap();
    let later = Timestamp::from_millis(received.as_millis() + 1);
    crate::record_at(&h, &h.authorization_event(&outcome), "auth", later).await;

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
