//! The refresh engine against the real simulator over sockets and a real temp-file SQLite store.
//! Lifetimes are seconds; synchronisation is by awaiting results and watch channels, never sleeps
//! (readers pace themselves, which is load, not synchronisation).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::harness::engine::{Harness, WebhookReceiver, refresh_config};
use crate::harness::sim_config;
use tokio_util::sync::CancellationToken;
use wechat_sim::{
    Api, Fault, FaultRule, FaultSet, Latency, RefreshTokenPolicy, SimConfig, SimControl,
};
use wxtoken::model::{
    Appid, AuthorizerStatus, Credential, EventInsert, Expected, SecretSlot, Timestamp, TokenSource,
};
use wxtoken::refresh::{Engine, RefreshError};
use wxtoken::tokens::cache::ReadError;

/// Waits (on each credential's watch channel) until every appid holds a token newer than `after`.
async fn until_all_newer(engine: &Engine, appids: &[String], after: &[u64], within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    let never = CancellationToken::new();
    for (appid, after) in appids.iter().zip(after) {
        let slot = engine.slot(None, appid).expect("known appid");
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let token = engine.wait_newer(&slot, *after, left, &never).await;
        assert!(
            token.is_ok_and(|t| t.generation > *after),
            "every authorizer got a newer token in time"
        );
    }
}

fn generations(engine: &Engine, appids: &[String]) -> Vec<u64> {
    appids
        .iter()
        .map(|a| engine.token(None, a).map_or(0, |t| t.generation))
        .collect()
}

#[derive(Default)]
struct ReadTally {
    served: AtomicU64,
    invalid: AtomicU64,
    unavailable: AtomicU64,
}

/// Readers that read tokens continuously and check each one with the simulator at the moment it
/// is handed out.
fn spawn_readers(
    engine: &Engine,
    sim: &SimControl,
    appids: &Arc<Vec<String>>,
    readers: usize,
    stop: &CancellationToken,
) -> (Arc<ReadTally>, Vec<tokio::task::JoinHandle<()>>) {
    let tally = Arc::new(ReadTally::default());
    let handles = (0..readers)
        .map(|r| {
            let (engine, sim, appids, stop, tally) = (
                engine.clone(),
                sim.clone(),
                appids.clone(),
                stop.clone(),
                tally.clone(),
            );
            tokio::spawn(async move {
                let mut i = r;
                let mut pace = tokio::time::interval(Duration::from_millis(1));
                while !stop.is_cancelled() {
                    pace.tick().await;
                    let appid = &appids[i % appids.len()];
                    i += readers;
                    match engine.token(None, appid) {
                        Ok(t) => {
                            tally.served.fetch_add(1, Ordering::Relaxed);
                            let v = sim.validate(t.access_token.expose_secret());
                            if !v.valid {
                                tally.invalid.fetch_add(1, Ordering::Relaxed);
                                eprintln!("dead token served for {appid}: {}", v.reason);
                            }
                        }
                        Err(_) => {
                            tally.unavailable.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    (tally, handles)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_handed_out_is_valid_and_each_authorizer_refreshes_once_per_period() {
    let _alone = crate::harness::alone().await;
    const N: usize = 1000;
    const LIFETIME: Duration = Duration::from_secs(6);
    const LIFETIMES: u32 = 10;
    let mut h = Harness::start(
        sim_config(LIFETIME, Duration::from_secs(3)),
        refresh_config(Duration::from_secs(1)),
    )
    .await;
    let bulk = h.import_authorizers(N).await;
    h.restart().await;
    h.spawn();
    let appids: Arc<Vec<String>> =
        Arc::new(bulk.iter().map(|b| b.authorizer_appid.clone()).collect());
    until_all_newer(&h.engine, &appids, &vec![0; N], Duration::from_secs(30)).await;

    let sim = h.sim.control().clone();
    let at_start = sim.stats();
    let started = Instant::now();
    let stop = CancellationToken::new();
    let (tally, readers) = spawn_readers(&h.engine, &sim, &appids, 4, &stop);
    tokio::time::sleep(LIFETIME * LIFETIMES).await; // the measured period, not synchronisation
    stop.cancel();
    for r in readers {
        r.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let at_end = sim.stats();
    // Stopping waits for every flight, so every upstream call has been counted on both sides.
    h.stop().await;
    let totals = sim.stats();
    let engine = h.engine.stats();
    let window = |api| at_end.calls(api) - at_start.calls(api);
    let authorizer_calls = window(Api::AuthorizerToken);
    // Each refresh period is between 0.5 and 0.6 of the lifetime (fraction 0.5, jitter 0.1).
    let min_period = LIFETIME.as_secs_f64() * 0.5;
    let max_period = LIFETIME.as_secs_f64() * 0.6;
    let per_authorizer_max = (elapsed / min_period).floor() as u64 + 2;
    let total_min = (N as f64 * (elapsed / max_period - 1.0)) as u64;
    eprintln!(
        "fleet: {N} authorizers, {elapsed:.1}s, served {} reads ({} unavailable), \
         {authorizer_calls} api_authorizer_token calls ({:.3} per authorizer per refresh period \
         of {:.1}s on average), {} api_component_token; engine flights {} ok / {} failed, \
         upstream calls since start {}",
        tally.served.load(Ordering::Relaxed),
        tally.unavailable.load(Ordering::Relaxed),
        authorizer_calls as f64 / N as f64 / (elapsed / (LIFETIME.as_secs_f64() * 0.55)),
        LIFETIME.as_secs_f64() * 0.55,
        window(Api::ComponentToken),
        engine.refreshed,
        engine.failed,
        totals.total_calls,
    );
    assert_eq!(
        tally.invalid.load(Ordering::Relaxed),
        0,
        "no dead token handed out"
    );
    assert_eq!(
        tally.unavailable.load(Ordering::Relaxed),
        0,
        "never without a token"
    );
    assert!(tally.served.load(Ordering::Relaxed) > 10_000);
    assert_eq!(engine.failed, 0);
    assert_eq!(
        totals.calls(Api::AuthorizerToken),
        engine.authorizer_refreshed,
        "one api_authorizer_token call per authorizer flight: nothing duplicated"
    );
    assert_eq!(
        totals.calls(Api::ComponentToken),
        engine.component_refreshed,
        "one api_component_token call per component flight"
    );
    for appid in appids.iter() {
        let calls = at_end.calls_for(appid, Api::AuthorizerToken)
            - at_start.calls_for(appid, Api::AuthorizerToken);
        assert!(
            calls <= per_authorizer_max,
            "{appid}: {calls} calls > {per_authorizer_max}"
        );
    }
    assert!(
        authorizer_calls >= total_min,
        "{authorizer_calls} < {total_min}: refreshes missed"
    );
}

// Multi-threaded, so a report can race the flight landing: it must still cause no second call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_invalidation_reports_of_one_token_cause_one_upstream_call() {
    let h = Harness::start(
        sim_config(Duration::from_secs(60), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
    )
    .await;
    let bulk = h.import_authorizers(1).await;
    let appid = &bulk[0].authorizer_appid;
    let cred = h.credential(appid);
    let first = h.engine.refresh_now(&cred).await.expect("first token");
    h.sim.control().reset_stats();
    let reported = first.access_token.expose_secret().to_owned();
    let mut reports = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (engine, cred, reported) = (h.engine.clone(), cred.clone(), reported.clone());
        reports.spawn(async move { engine.invalidate(&cred, &reported).await });
    }
    let mut generations = std::collections::HashSet::new();
    while let Some(r) = reports.join_next().await {
        let token = r.unwrap().expect("new token");
        assert!(!token.is(&reported));
        generations.insert(token.generation);
    }
    let stats = h.sim.control().stats();
    assert_eq!(stats.calls_for(appid, Api::AuthorizerToken), 1);
    assert_eq!(generations.len(), 1, "everyone got the same new token");
    // A late report of the old token: the newer one, no upstream call.
    let late = h.engine.invalidate(&cred, &reported).await.unwrap();
    assert!(h.valid(&late.access_token));
    assert_eq!(
        h.sim
            .control()
            .stats()
            .calls_for(appid, Api::AuthorizerToken),
        1
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_never_serve_a_dead_token_and_retries_stay_within_backoff() {
    const N: usize = 50;
    const LIFETIME: Duration = Duration::from_secs(3);
    let mut h = Harness::start_with(
        sim_config(LIFETIME, Duration::from_secs(2)),
        refresh_config(Duration::from_millis(500)),
        None,
        Duration::from_millis(300),
    )
    .await;
    let bulk = h.import_authorizers(N).await;
    h.restart().await;
    h.spawn();
    let appids: Arc<Vec<String>> =
        Arc::new(bulk.iter().map(|b| b.authorizer_appid.clone()).collect());
    until_all_newer(&h.engine, &appids, &vec![0; N], Duration::from_secs(10)).await;
    let sim = h.sim.control().clone();
    let rule = |fault| FaultRule {
        endpoint: "api_authorizer_token".into(),
        probability: 0.06,
        times: None,
        fault,
    };
    sim.set_faults(FaultSet {
        seed: Some(11),
        rules: vec![
            rule(Fault::Errcode {
                errcode: -1,
                errmsg: None,
            }),
            rule(Fault::HttpStatus { status: 500 }),
            rule(Fault::Latency {
                latency: Latency::Fixed { ms: 1000 },
            }),
            rule(Fault::Errcode {
                errcode: 45009,
                errmsg: None,
            }),
        ],
    })
    .unwrap();
    sim.reset_stats();
    let before = h.engine.stats();
    let started = Instant::now();
    let stop = CancellationToken::new();
    let (tally, readers) = spawn_readers(&h.engine, &sim, &appids, 2, &stop);
    tokio::time::sleep(LIFETIME * 4).await; // the measured period
    stop.cancel();
    for r in readers {
        r.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = sim.stats();
    let after = h.engine.stats();
    let calls = stats.calls(Api::AuthorizerToken);
    let flights = (after.refreshed - before.refreshed) + (after.failed - before.failed);
    let failed = after.failed - before.failed;
    let fault_free_max = N as u64 * ((elapsed / (LIFETIME.as_secs_f64() * 0.5)) as u64 + 1);
    eprintln!(
        "faults: {calls} api_authorizer_token calls in {elapsed:.1}s ({failed} failed), fault-free \
         bound {fault_free_max}, served {} ({} unavailable)",
        tally.served.load(Ordering::Relaxed),
        tally.unavailable.load(Ordering::Relaxed)
    );
    assert_eq!(
        tally.invalid.load(Ordering::Relaxed),
        0,
        "no dead token handed out"
    );
    assert!(failed > 0, "faults were injected");
    assert!(
        calls <= flights + stats.calls(Api::ComponentToken),
        "every upstream call belongs to one flight: {calls} > {flights}"
    );
    // Each failure costs one retry, after a backoff: about a fifth more calls, never a storm.
    assert!(
        calls <= fault_free_max * 3 / 2,
        "{calls} calls exceed 1.5 x the fault-free bound {fault_free_max}"
    );
    sim.clear_faults();
    let now = generations(&h.engine, &appids);
    until_all_newer(&h.engine, &appids, &now, LIFETIME * 3).await;
    for appid in appids.iter() {
        let t = h.engine.token(None, appid).expect("recovered");
        assert!(h.valid(&t.access_token));
    }
    h.stop().await;
}

#[tokio::test]
async fn refresh_token_rejected_with_61023_is_recovered_from_the_authorizer_list() {
    let h = Harness::start(
        sim_config(Duration::from_secs(60), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
    )
    .await;
    let bulk = h.import_authorizers(1).await;
    let appid = bulk[0].authorizer_appid.clone();
    // The store holds a wrong refresh token (an old backup restored, say).
    store_refresh_token(
        &h,
        &appid,
        "refreshtoken@@@bogus",
        wxtoken::model::RefreshTokenSource::Import,
    )
    .await;
    h.sim.control().reset_stats();
    let token = h
        .engine
        .refresh_now(&h.credential(&appid))
        .await
        .expect("recovered");
    assert!(h.valid(&token.access_token));
    assert_eq!(token.source, TokenSource::AuthorizerToken);
    assert_eq!(
        h.stored_refresh_token(&appid).await,
        h.sim_refresh_token(&appid)
    );
    assert_eq!(h.status(&appid).await, AuthorizerStatus::Active);
    let stats = h.sim.control().stats();
    assert_eq!(stats.calls(Api::GetAuthorizerList), 1);
    assert_eq!(stats.calls_for(&appid, Api::AuthorizerToken), 2);
    h.stop().await;
}

#[tokio::test]
async fn authorizer_that_lost_its_authorization_is_marked_alerted_and_served_by_its_appsecret() {
    let webhook = WebhookReceiver::start().await;
    let h = Harness::start_with(
        sim_config(Duration::from_secs(60), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
        Some(webhook.url.clone()),
        Duration::from_secs(5),
    )
    .await;
    let bulk = h.import_authorizers(2).await;
    let (with_secret, without) = (&bulk[0].authorizer_appid, &bulk[1].authorizer_appid);
    let a = Appid::parse(with_secret).unwrap();
    let appsecret = h.sim.control().account(with_secret).unwrap().appsecret;
    let sealed = h
        .vault()
        .seal(
            SecretSlot::AuthorizerAppsecret {
                component: &h.comp,
                appid: &a,
            },
            appsecret.as_bytes(),
        )
        .unwrap();
    assert!(
        h.store
            .authorizers()
            .set_authorizer_appsecret(&h.comp, &a, Some(&sealed), Timestamp::now())
            .await
            .unwrap()
    );
    // WeChat rejects the refresh token and still lists the same one: nothing to recover.
    h.sim
        .control()
        .set_faults(FaultSet {
            seed: None,
            rules: vec![FaultRule {
                endpoint: "api_authorizer_token".into(),
                probability: 1.0,
                times: None,
                fault: Fault::Errcode {
                    errcode: 61023,
                    errmsg: None,
                },
            }],
        })
        .unwrap();
    h.sim.control().reset_stats();

    let token = h
        .engine
        .refresh_now(&h.credential(with_secret))
        .await
        .expect("fallback token");
    assert_eq!(token.source, TokenSource::StableToken);
    assert!(h.valid(&token.access_token));
    assert_eq!(h.status(with_secret).await, AuthorizerStatus::NeedsReauth);
    let alert = webhook.wait_for("needs_reauth", with_secret).await;
    assert_eq!(
        alert["component_appid"],
        h.component.component_appid.as_str()
    );
    let served = h
        .engine
        .token(None, with_secret)
        .expect("served from the appsecret");
    assert_eq!(served.source, TokenSource::StableToken);

    let gone = h
        .engine
        .refresh_now(&h.credential(without))
        .await
        .unwrap_err();
    assert!(matches!(gone, RefreshError::Gone { .. }), "{gone:?}");
    assert!(matches!(
        h.engine.token(None, without),
        Err(ReadError::Gone { .. })
    ));
    webhook.wait_for("needs_reauth", without).await;

    // The circuit is open: more refreshes never call api_authorizer_token again.
    for _ in 0..3 {
        let _ = h.engine.refresh_now(&h.credential(with_secret)).await;
        let _ = h.engine.refresh_now(&h.credential(without)).await;
    }
    let stats = h.sim.control().stats();
    assert_eq!(
        stats.calls(Api::AuthorizerToken),
        2,
        "one call per authorizer"
    );
    h.stop().await;
}

#[tokio::test]
async fn authorization_events_applied_across_restarts_keep_every_refresh_token_equal_to_wechats() {
    let mut h = Harness::start(
        sim_config(Duration::from_secs(60), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
    )
    .await;
    let sim = h.sim.control().clone();
    let accounts: Vec<String> = (0..3)
        .map(|_| {
            sim.create_account(wechat_sim::AccountSpec {
                kind: wechat_sim::AccountKind::MiniProgram,
                appid: None,
                appsecret: None,
            })
            .unwrap()
            .appid
        })
        .collect();
    let comp = h.component.component_appid.clone();
    // authorized, pushed and applied.
    for (i, appid) in accounts.iter().enumerate() {
        let outcome = sim.authorize(appid, &comp).unwrap();
        let event = h.authorization_event(&outcome);
        assert_eq!(
            h.engine
                .ingest_push(&h.comp, &event, &format!("auth:{i}"))
                .await
                .unwrap(),
            EventInsert::Inserted
        );
        // WeChat repeats the push: stored once.
        assert_eq!(
            h.engine
                .ingest_push(&h.comp, &event, &format!("auth:{i}"))
                .await
                .unwrap(),
            EventInsert::Duplicate
        );
        h.engine.process_events().await.unwrap();
        // The same code again under another key (a re-sent push): 61009, not an error.
        h.engine
            .ingest_push(&h.comp, &event, &format!("auth:{i}:again"))
            .await
            .unwrap();
        h.engine.process_events().await.unwrap();
        let t = h
            .engine
            .token(None, appid)
            .expect("token from api_query_auth");
        assert!(h.valid(&t.access_token));
    }
    assert_eq!(
        sim.stats().calls(Api::AuthorizerToken),
        0,
        "api_query_auth gave the first token"
    );
    assert!(
        h.store
            .events()
            .unprocessed_events(None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Let the processing spawned by the pushes above finish, so it cannot apply what follows.
    h.restart().await;
    // updateauthorized with a new refresh token: stored, then the process dies before applying it.
    let outcome = sim.authorize(&accounts[0], &comp).unwrap();
    assert_eq!(outcome.info_type, "updateauthorized");
    h.record_only(&h.authorization_event(&outcome), "update:0")
        .await;
    // unauthorized: stored, then the process dies.
    sim.unauthorize(&accounts[1], &comp).unwrap();
    h.record_only(&h.unauthorized_event(&accounts[1]), "unauth:1")
        .await;
    h.restart().await;
    assert_eq!(h.engine.process_events().await.unwrap(), 2, "both replayed");

    assert_eq!(
        h.stored_refresh_token(&accounts[0]).await,
        h.sim_refresh_token(&accounts[0])
    );
    let t = h.engine.token(None, &accounts[0]).unwrap();
    assert!(h.valid(&t.access_token));
    assert_eq!(h.status(&accounts[1]).await, AuthorizerStatus::Revoked);
    assert!(matches!(
        h.engine.token(None, &accounts[1]),
        Err(ReadError::Gone { .. })
    ));
    // Revoked data is kept.
    assert!(!h.stored_refresh_token(&accounts[1]).await.is_empty());

    // Restart again: cold start serves the stored tokens with no upstream call.
    h.restart().await;
    sim.reset_stats();
    for appid in [&accounts[0], &accounts[2]] {
        let t = h.engine.token(None, appid).expect("served after restart");
        assert!(h.valid(&t.access_token));
        assert_eq!(
            h.stored_refresh_token(appid).await,
            h.sim_refresh_token(appid)
        );
    }
    assert_eq!(sim.stats().total_calls, 0);
    // And every active authorizer refreshes with the refresh token WeChat holds.
    for appid in [&accounts[0], &accounts[2]] {
        h.engine
            .refresh_now(&h.credential(appid))
            .await
            .expect("refresh");
        assert_eq!(
            h.stored_refresh_token(appid).await,
            h.sim_refresh_token(appid)
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn expired_ticket_asks_wechat_to_push_and_the_next_ticket_restores_the_component_token() {
    let mut h = Harness::start(
        wechat_sim::SimConfig {
            ticket_validity: Duration::from_secs(60),
            ..sim_config(Duration::from_secs(600), Duration::from_secs(10))
        },
        refresh_config(Duration::from_secs(5)),
    )
    .await;
    let component = Credential::component(&h.comp);
    h.engine
        .refresh_now(&component)
        .await
        .expect("component token");
    // Twelve hours pass (here: the ticket's validity) with no push.
    h.sim.control().advance_clock(Duration::from_secs(61));
    h.sim.control().reset_stats();
    let err = h.engine.refresh_now(&component).await.unwrap_err();
    assert!(
        matches!(
            err,
            RefreshError::Upstream {
                class: wechat::errcode::ErrorClass::Ticket,
                ..
            }
        ),
        "{err:?}"
    );
    // Throttled: a second failure does not ask again.
    let _ = h.engine.refresh_now(&component).await;
    assert_eq!(h.sim.control().stats().calls(Api::StartPushTicket), 1);
    // Restart in the middle: the ticket and the failing state are in the store, not memory.
    h.restart().await;
    // WeChat's next push.
    h.sim
        .control()
        .push_ticket(Some(&h.component.component_appid))
        .unwrap();
    h.feed_ticket().await;
    let token = h
        .engine
        .refresh_now(&component)
        .await
        .expect("new ticket works");
    assert!(h.valid(&token.access_token));
    assert!(h.engine.component_token(&h.comp).is_ok());
    h.stop().await;
}

#[tokio::test]
async fn a_ticket_landing_while_the_component_refresh_reads_the_store_is_followed_by_a_refresh_that_uses_it()
 {
    let h = Harness::start_without_ticket(
        sim_config(Duration::from_secs(600), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
        None,
        Duration::from_secs(5),
    )
    .await;
    let component = Credential::component(&h.comp);
    // The push lands just after the refresh found no ticket in the store.
    let engine = h.engine.clone();
    let comp = h.comp.clone();
    let event = wechat::event::Event::ComponentVerifyTicket(wechat::event::TicketEvent {
        app_id: h.component.component_appid.clone(),
        create_time: h.sim.control().now(),
        component_verify_ticket: h
            .sim
            .control()
            .latest_ticket(&h.component.component_appid)
            .expect("ticket"),
    });
    h.hooks.after_next_latest_ticket(move |_| {
        Box::pin(async move {
            engine
                .ingest_push(&comp, &event, "ticket:late")
                .await
                .expect("ticket stored");
            engine.process_events().await.expect("ticket applied");
        })
    });
    let err = h.engine.refresh_now(&component).await.unwrap_err();
    assert!(matches!(err, RefreshError::NoTicket), "{err:?}");
    // Not the failure's backoff: the next refresh is due now, and it finds the ticket.
    let due = h.engine.next_refresh(&component).expect("scheduled");
    assert!(
        due <= tokio::time::Instant::now(),
        "due in {:?}",
        due - tokio::time::Instant::now()
    );
    h.engine.run_once().await;
    let token = h.engine.component_token(&h.comp).expect("component token");
    assert!(h.valid(&token.access_token));
    assert_eq!(h.sim.control().stats().calls(Api::ComponentToken), 1);
    h.stop().await;
}

#[tokio::test]
async fn reconciliation_recovers_missing_and_different_refresh_tokens_and_revokes_unlisted_authorizers()
 {
    let h = Harness::start(
        sim_config(Duration::from_secs(60), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
    )
    .await;
    let imported = h.import_authorizers(3).await;
    let (kept, wrong, gone) = (
        &imported[0].authorizer_appid,
        &imported[1].authorizer_appid,
        &imported[2].authorizer_appid,
    );
    // One authorizer the store never heard of (its push was lost).
    let missing = h
        .sim
        .control()
        .bulk_authorize(
            &h.component.component_appid,
            1,
            wechat_sim::AccountKind::MiniProgram,
        )
        .unwrap()
        .remove(0)
        .authorizer_appid;
    // One whose stored refresh token is wrong.
    let a = Appid::parse(wrong).unwrap();
    let record = h
        .store
        .authorizers()
        .get_authorizer(&h.comp, &a)
        .await
        .unwrap()
        .unwrap();
    let bogus = h
        .vault()
        .seal(
            SecretSlot::RefreshToken {
                component: &h.comp,
                appid: &a,
            },
            b"refreshtoken@@@stale",
        )
        .unwrap();
    h.store
        .authorizers()
        .save_authorizations(&[wxtoken::model::AuthorizationWrite {
            component: h.comp.clone(),
            appid: a.clone(),
            expected: Expected::Generation(record.generation),
            kind: None,
            status: AuthorizerStatus::Active,
            refresh_token: bogus,
            appsecret: None,
            access_token: None,
            source: wxtoken::model::RefreshTokenSource::Import,
            at: Timestamp::now(),
        }])
        .await
        .unwrap();
    // One the merchant revoked while its push was lost.
    h.sim
        .control()
        .unauthorize(gone, &h.component.component_appid)
        .unwrap();

    let report = h.engine.reconcile_once(&h.comp).await.expect("reconciled");
    assert_eq!(report.listed, 3);
    assert_eq!(report.recovered, 2, "{report:?}");
    assert_eq!(report.revoked, 1, "{report:?}");
    for appid in [kept, wrong, &missing] {
        assert_eq!(
            h.stored_refresh_token(appid).await,
            h.sim_refresh_token(appid)
        );
        assert_eq!(h.status(appid).await, AuthorizerStatus::Active);
        let t = h
            .engine
            .refresh_now(&h.credential(appid))
            .await
            .expect("refreshes");
        assert!(h.valid(&t.access_token));
    }
    assert_eq!(h.status(gone).await, AuthorizerStatus::Revoked);
    // A second pass finds nothing to do.
    let again = h.engine.reconcile_once(&h.comp).await.unwrap();
    assert_eq!((again.recovered, again.revoked), (0, 0));
    h.stop().await;
}

#[tokio::test]
async fn direct_account_uses_stable_token_and_forces_only_on_an_invalidation_report() {
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
    assert_eq!(first.source, TokenSource::StableToken);
    assert!(h.valid(&first.access_token));
    // Normal mode returns the same token: a scheduled refresh would not replace it.
    let same = h.engine.refresh_now(&cred).await.unwrap();
    assert!(same.is(first.access_token.expose_secret()));
    // An invalidation report of the current token forces a new one.
    let forced = h
        .engine
        .invalidate(&cred, first.access_token.expose_secret())
        .await
        .unwrap();
    assert!(!forced.is(first.access_token.expose_secret()));
    assert!(h.valid(&forced.access_token));
    let served = h.engine.token(None, &account.appid).unwrap();
    assert!(served.is(forced.access_token.expose_secret()));
    h.stop().await;
}

#[tokio::test]
async fn direct_account_configured_for_cgi_bin_token_never_calls_stable_token() {
    let mut refresh = refresh_config(Duration::from_secs(5));
    refresh.direct_token_api = wxtoken::config::DirectTokenApi::Token;
    let mut h = Harness::start(
        sim_config(Duration::from_secs(600), Duration::from_secs(10)),
        refresh,
    )
    .await;
    let (account, appid) = h
        .add_direct_account(wechat_sim::AccountKind::MiniProgram)
        .await;
    let cred = Credential::direct(&h.comp, &appid);
    let first = h.engine.refresh_now(&cred).await.expect("cgi-bin/token");
    assert_eq!(first.source, TokenSource::Token);
    assert!(h.valid(&first.access_token));
    // A report of the current token replaces it at once: cgi-bin/token always issues a new one.
    let next = h
        .engine
        .invalidate(&cred, first.access_token.expose_secret())
        .await
        .unwrap();
    assert!(!next.is(first.access_token.expose_secret()));
    assert!(h.valid(&next.access_token));
    let stats = h.sim.control().stats();
    assert_eq!(stats.calls_for(&account.appid, Api::StableToken), 0);
    assert!(stats.calls_for(&account.appid, Api::Token) >= 2);
    h.stop().await;
}

#[tokio::test]
async fn authorization_event_whose_exchange_fails_stays_stored_and_is_applied_on_the_next_pass() {
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
            times: Some(1),
            fault: Fault::HttpStatus { status: 502 },
        }],
    })
    .unwrap();
    let outcome = sim.authorize(&appid, &h.component.component_appid).unwrap();
    h.engine
        .ingest_push(&h.comp, &h.authorization_event(&outcome), "auth:flaky")
        .await
        .unwrap();
    // Whichever pass meets the fault leaves the event stored (backing off); the first pass after
    // its backoff applies it.
    h.engine.process_events().await.unwrap();
    let retry_at = h
        .engine
        .event_retry_at(&h.comp, "auth:flaky")
        .expect("backing off");
    tokio::time::sleep_until(retry_at).await; // the backoff itself, not synchronisation
    h.engine.process_events().await.unwrap();
    assert!(
        h.store
            .events()
            .unprocessed_events(None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(sim.stats().calls(Api::QueryAuth), 2);
    let t = h.engine.token(None, &appid).expect("authorized");
    assert!(h.valid(&t.access_token));
    assert_eq!(
        h.stored_refresh_token(&appid).await,
        h.sim_refresh_token(&appid)
    );
    h.stop().await;
}

#[tokio::test]
async fn a_fresh_engine_waiting_for_its_first_ticket_neither_alerts_silence_nor_counts_a_failure() {
    let h = Harness::start_without_ticket(
        sim_config(Duration::from_secs(600), Duration::from_secs(10)),
        wxtoken::config::RefreshConfig {
            ticket_silence_alert: Duration::from_secs(600),
            ..refresh_config(Duration::from_secs(5))
        },
        None,
        Duration::from_secs(5),
    )
    .await;
    let err = h
        .engine
        .refresh_now(&Credential::component(&h.comp))
        .await
        .unwrap_err();
    assert!(matches!(err, RefreshError::NoTicket), "{err:?}");
    assert_eq!(
        h.engine.stats().failed,
        0,
        "waiting for a first ticket is no failure"
    );
    assert!(
        h.engine.check_ticket_silence().await.is_empty(),
        "silence counts from the engine's start"
    );
    h.stop().await;
}

#[tokio::test]
async fn ticket_silence_alerts_once_and_asks_wechat_to_push() {
    let webhook = WebhookReceiver::start().await;
    let h = Harness::start_with(
        sim_config(Duration::from_secs(600), Duration::from_secs(10)),
        wxtoken::config::RefreshConfig {
            ticket_silence_alert: Duration::from_secs(1),
            ..refresh_config(Duration::from_secs(5))
        },
        Some(webhook.url.clone()),
        Duration::from_secs(5),
    )
    .await;
    h.sim.control().reset_stats();
    h.spawn();
    // The ticket fed at start goes stale after one second; the check runs every second.
    let alert = webhook.wait_for_kind("ticket_silence").await;
    assert_eq!(
        alert["component_appid"],
        h.component.component_appid.as_str()
    );
    assert!(alert["appid"].is_null());
    // Several more silence periods (and checks) pass: still the one alert and the one request.
    tokio::time::sleep(Duration::from_millis(3500)).await; // the measured period
    h.stop().await;
    assert_eq!(
        webhook.count_kind("ticket_silence"),
        1,
        "alerted once per silence"
    );
    assert_eq!(h.sim.control().stats().calls(Api::StartPushTicket), 1);
}

#[tokio::test]
async fn one_step_refreshes_every_due_credential_once_and_plans_the_next_from_expires_in() {
    let mut h = Harness::start(
        sim_config(Duration::from_secs(600), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
    )
    .await;
    let bulk = h.import_authorizers(3).await;
    h.restart().await;
    h.sim.control().reset_stats();
    let mut creds: Vec<Credential> = bulk
        .iter()
        .map(|b| h.credential(&b.authorizer_appid))
        .collect();
    creds.push(Credential::component(&h.comp));
    // Cold start scheduled every token-less credential within its spread: wait for the deadlines.
    let last = creds
        .iter()
        .map(|c| h.engine.next_refresh(c).expect("scheduled at cold start"))
        .max()
        .unwrap();
    tokio::time::sleep_until(last).await;
    let step = h.engine.run_once().await;
    assert_eq!(step.refreshed, 4);
    assert_eq!(step.failed, 0);
    let stats = h.sim.control().stats();
    assert_eq!(
        stats.calls(Api::ComponentToken),
        1,
        "the authorizers shared its flight"
    );
    assert_eq!(stats.calls(Api::AuthorizerToken), 3);
    // Next due: half to 0.6 of the 600 s lifetime from now.
    let now = tokio::time::Instant::now();
    for c in &creds {
        let due = h.engine.next_refresh(c).unwrap() - now;
        assert!(
            due >= Duration::from_secs(295) && due <= Duration::from_secs(360),
            "{due:?}"
        );
    }
    assert_eq!(h.engine.run_once().await, Default::default(), "nothing due");
    h.stop().await;
}

#[tokio::test]
async fn failing_component_token_is_not_called_again_for_every_authorizer_while_it_backs_off() {
    let mut refresh = refresh_config(Duration::from_secs(5));
    refresh.backoff_initial = Duration::from_secs(30);
    refresh.backoff_max = Duration::from_secs(60);
    let h = Harness::start(
        sim_config(Duration::from_secs(600), Duration::from_secs(10)),
        refresh,
    )
    .await;
    let authorizers = h.import_authorizers(50).await;
    h.sim
        .control()
        .set_faults(FaultSet {
            seed: None,
            rules: vec![FaultRule {
                endpoint: "api_component_token".into(),
                probability: 1.0,
                times: None,
                fault: Fault::Errcode {
                    errcode: -1,
                    errmsg: None,
                },
            }],
        })
        .unwrap();
    h.sim.control().reset_stats();
    let credentials: Vec<_> = authorizers
        .iter()
        .map(|a| h.credential(&a.authorizer_appid))
        .collect();
    for _round in 0..3 {
        let refreshes = credentials.iter().map(|c| h.engine.refresh_now(c));
        for outcome in futures::future::join_all(refreshes).await {
            assert!(outcome.is_err(), "no component token, no authorizer token");
        }
    }
    let stats = h.sim.control().stats();
    assert_eq!(
        stats.calls(Api::ComponentToken),
        1,
        "150 asks while the component token backs off cause one call"
    );
    assert_eq!(stats.calls(Api::AuthorizerToken), 0);
    h.stop().await;
}

#[tokio::test]
async fn many_authorizers_rejected_with_61023_together_page_the_authorizer_list_once() {
    let h = Harness::start(
        sim_config(Duration::from_secs(600), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
    )
    .await;
    let authorizers = h.import_authorizers(20).await;
    let credentials: Vec<_> = authorizers
        .iter()
        .map(|a| h.credential(&a.authorizer_appid))
        .collect();
    h.engine
        .refresh_now(&credentials[0])
        .await
        .expect("component token and a first refresh");
    h.sim
        .control()
        .set_faults(FaultSet {
            seed: None,
            rules: vec![
                FaultRule {
                    endpoint: "api_authorizer_token".into(),
                    probability: 1.0,
                    times: None,
                    fault: Fault::Errcode {
                        errcode: 61023,
                        errmsg: None,
                    },
                },
                // A paging that takes a second, as a long list does: the twenty refusals, which
                // arrive within milliseconds of each other on loopback, all fall inside the
                // first one, however slow the machine is at issuing them.
                FaultRule {
                    endpoint: "api_get_authorizer_list".into(),
                    probability: 1.0,
                    times: None,
                    fault: Fault::Latency {
                        latency: Latency::Fixed { ms: 1000 },
                    },
                },
            ],
        })
        .unwrap();
    h.sim.control().reset_stats();
    let refreshes = credentials.iter().map(|c| h.engine.refresh_now(c));
    futures::future::join_all(refreshes).await;
    let stats = h.sim.control().stats();
    assert_eq!(
        stats.calls(Api::AuthorizerToken),
        20,
        "each authorizer tried once"
    );
    // A recovery only uses a paging that started after its refusal: the first refusal starts
    // one, the refusals that arrive while it runs share the next, never one each.
    let pagings = stats.calls(Api::GetAuthorizerList);
    assert!(
        (1..=3).contains(&pagings),
        "{pagings} pagings: a few shared pagings of the list for all twenty recoveries, not one each"
    );
    h.stop().await;
}

#[tokio::test]
async fn whitelist_error_on_a_direct_account_alerts_an_operator_once() {
    let webhook = WebhookReceiver::start().await;
    let mut h = Harness::start_with(
        sim_config(Duration::from_secs(600), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
        Some(webhook.url.clone()),
        Duration::from_secs(5),
    )
    .await;
    let (account, appid) = h
        .add_direct_account(wechat_sim::AccountKind::OfficialAccount)
        .await;
    h.sim
        .control()
        .set_faults(FaultSet {
            seed: None,
            rules: vec![FaultRule {
                endpoint: "stable_token".into(),
                probability: 1.0,
                times: None,
                fault: Fault::Errcode {
                    errcode: 40164,
                    errmsg: None,
                },
            }],
        })
        .unwrap();
    let cred = Credential::direct(&h.comp, &appid);
    assert!(h.engine.refresh_now(&cred).await.is_err());
    assert!(h.engine.refresh_now(&cred).await.is_err());
    let alert = webhook.wait_for_kind("configuration").await;
    assert_eq!(alert["appid"], account.appid.as_str());
    assert!(
        !alert.to_string().contains(&account.appsecret),
        "no secret in an alert"
    );
    h.stop().await;
    assert_eq!(
        webhook.count_kind("configuration"),
        1,
        "one alert per failure streak, not one per retry"
    );
}

/// Overwrites the stored refresh token of `appid` with one WeChat never issued.
async fn store_bogus_refresh_token(h: &Harness, appid: &str) {
    let a = Appid::parse(appid).unwrap();
    let record = h
        .store
        .authorizers()
        .get_authorizer(&h.comp, &a)
        .await
        .unwrap()
        .unwrap();
    let bogus = h
        .vault()
        .seal(
            SecretSlot::RefreshToken {
                component: &h.comp,
                appid: &a,
            },
            b"refreshtoken@@@bogus",
        )
        .unwrap();
    let outcome = h
        .store
        .authorizers()
        .save_authorizations(&[wxtoken::model::AuthorizationWrite {
            component: h.comp.clone(),
            appid: a,
            expected: Expected::Generation(record.generation),
            kind: None,
            status: AuthorizerStatus::Active,
            refresh_token: bogus,
            appsecret: None,
            access_token: None,
            source: wxtoken::model::RefreshTokenSource::Import,
            at: Timestamp::now(),
        }])
        .await
        .unwrap();
    assert!(matches!(
        outcome[0],
        wxtoken::model::SaveOutcome::Saved { .. }
    ));
}

/// Authorizes `appid` in the simulator and applies the pushed event.
async fn authorize_and_apply(h: &Harness, appid: &str, key: &str) {
    let outcome = h
        .sim
        .control()
        .authorize(appid, &h.component.component_appid)
        .unwrap();
    h.engine
        .ingest_push(&h.comp, &h.authorization_event(&outcome), key)
        .await
        .unwrap();
    h.engine.process_events().await.unwrap();
    assert!(
        h.store
            .events()
            .unprocessed_events(None, 10)
            .await
            .unwrap()
            .is_empty(),
        "{key} applied"
    );
}

#[tokio::test]
async fn reconciliation_leaves_what_events_stored_while_it_paged_the_authorizer_list() {
    let h = Harness::start(
        sim_config(Duration::from_secs(60), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
    )
    .await;
    let sim = h.sim.control().clone();
    let comp = h.component.component_appid.clone();
    let imported = h.import_authorizers(2).await;
    let (rotated, reauthorized) = (&imported[0].authorizer_appid, &imported[1].authorizer_appid);
    // `rotated`: its stored refresh token differs from the list (so reconciliation wants to write
    // the listed one), and a re-authorization stores a newer one while the list is in hand.
    store_bogus_refresh_token(&h, rotated).await;
    // `reauthorized`: revoked in WeChat (so not listed), re-authorized while the list is in hand.
    sim.unauthorize(reauthorized, &comp).unwrap();
    // `fresh`: authorized for the first time while the list is in hand (not listed).
    let fresh = sim
        .create_account(wechat_sim::AccountSpec {
            kind: wechat_sim::AccountKind::OfficialAccount,
            appid: None,
            appsecret: None,
        })
        .unwrap()
        .appid;

    let report = h
        .engine
        .reconcile_once_with(&h.comp, async {
            authorize_and_apply(&h, rotated, "auth:rotated").await;
            authorize_and_apply(&h, reauthorized, "auth:reauthorized").await;
            authorize_and_apply(&h, &fresh, "auth:fresh").await;
        })
        .await
        .expect("reconciled");
    assert_eq!(report.listed, 1, "{report:?}");
    assert_eq!((report.recovered, report.revoked), (0, 0), "{report:?}");
    for appid in [rotated, reauthorized, &fresh] {
        assert_eq!(h.status(appid).await, AuthorizerStatus::Active, "{appid}");
        assert_eq!(
            h.stored_refresh_token(appid).await,
            h.sim_refresh_token(appid),
            "{appid}"
        );
        let t = h
            .engine
            .refresh_now(&h.credential(appid))
            .await
            .expect("refreshes");
        assert!(h.valid(&t.access_token));
    }
    // The next pass (list and store agree now) has nothing to do.
    let again = h.engine.reconcile_once(&h.comp).await.unwrap();
    assert_eq!((again.listed, again.recovered, again.revoked), (3, 0, 0));
    h.stop().await;
}

#[tokio::test]
async fn authorization_code_answer_is_retried_past_a_locked_database_until_its_refresh_token_is_stored()
 {
    use sqlx::Connection;
    let mut h = Harness::start(
        sim_config(Duration::from_secs(60), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
    )
    .await;
    // A short busy timeout: each write attempt under the held lock fails `Unavailable` quickly.
    h.restart_with_store(&wxtoken::store::StoreOptions {
        acquire_timeout: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    h.engine
        .refresh_now(&Credential::component(&h.comp))
        .await
        .expect("component token");
    let sim = h.sim.control().clone();
    let appid = sim
        .create_account(wechat_sim::AccountSpec {
            kind: wechat_sim::AccountKind::OfficialAccount,
            appid: None,
            appsecret: None,
        })
        .unwrap()
        .appid;
    let outcome = sim.authorize(&appid, &h.component.component_appid).unwrap();
    h.record_only(&h.authorization_event(&outcome), "auth:locked")
        .await;

    // Another process holds SQLite's write lock.
    let mut blocker = sqlx::sqlite::SqliteConnection::connect(h.db_url())
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let engine = h.engine.clone();
    let mut pass = tokio::spawn(async move { engine.process_events().await });
    // Many busy timeouts later the pass is still retrying the write, not done with the event.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), &mut pass)
            .await
            .is_err(),
        "the pass gave up on the api_query_auth answer"
    );
    assert_eq!(sim.stats().calls(Api::QueryAuth), 1);
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    // Bounded: if the write never lands after the lock is gone, fail instead of hanging the suite.
    let applied = tokio::time::timeout(Duration::from_secs(120), pass)
        .await
        .expect("the write lands within 120 s of the lock being released");
    assert_eq!(
        applied.unwrap().unwrap(),
        1,
        "applied once the lock is gone"
    );
    assert_eq!(sim.stats().calls(Api::QueryAuth), 1, "asked WeChat once");
    assert_eq!(
        h.stored_refresh_token(&appid).await,
        h.sim_refresh_token(&appid)
    );
    let t = h
        .engine
        .token(None, &appid)
        .expect("token from api_query_auth");
    assert!(h.valid(&t.access_token));
    assert!(
        h.store
            .events()
            .unprocessed_events(None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    h.stop().await;
}

fn new_account(sim: &SimControl) -> String {
    sim.create_account(wechat_sim::AccountSpec {
        kind: wechat_sim::AccountKind::OfficialAccount,
        appid: None,
        appsecret: None,
    })
    .unwrap()
    .appid
}

#[tokio::test]
async fn authorization_events_whose_code_is_expired_or_spent_are_dropped_with_an_alert_and_never_retried()
 {
    let webhook = WebhookReceiver::start().await;
    let h = Harness::start_with(
        sim_config(Duration::from_secs(60), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
        Some(webhook.url.clone()),
        Duration::from_secs(5),
    )
    .await;
    let sim = h.sim.control().clone();
    let comp = h.component.component_appid.clone();
    let (expired, spent) = (new_account(&sim), new_account(&sim));
    // 61010 (code expired) for the first exchange, 61009 (code already used, and this store
    // never got its answer) for every later one.
    sim.set_faults(FaultSet {
        seed: None,
        rules: vec![
            FaultRule {
                endpoint: "api_query_auth".into(),
                probability: 1.0,
                times: Some(1),
                fault: Fault::Errcode {
                    errcode: 61010,
                    errmsg: None,
                },
            },
            FaultRule {
                endpoint: "api_query_auth".into(),
                probability: 1.0,
                times: None,
                fault: Fault::Errcode {
                    errcode: 61009,
                    errmsg: None,
                },
            },
        ],
    })
    .unwrap();
    for (appid, key) in [(&expired, "auth:expired"), (&spent, "auth:spent")] {
        let outcome = sim.authorize(appid, &comp).unwrap();
        h.record_only(&h.authorization_event(&outcome), key).await;
    }
    // A ticket pushed behind them.
    sim.push_ticket(Some(&comp)).unwrap();
    let ticket = wechat::event::Event::ComponentVerifyTicket(wechat::event::TicketEvent {
        app_id: comp.clone(),
        create_time: sim.now(),
        component_verify_ticket: sim.latest_ticket(&comp).unwrap(),
    });
    h.record_only(&ticket, "ticket:behind").await;
    let before = h
        .store
        .components()
        .latest_ticket(&h.comp)
        .await
        .unwrap()
        .unwrap();

    assert_eq!(h.engine.process_events().await.unwrap(), 1, "the ticket");
    let after = h
        .store
        .components()
        .latest_ticket(&h.comp)
        .await
        .unwrap()
        .unwrap();
    assert!(after.received_at > before.received_at, "the ticket applied");
    assert!(
        h.store
            .events()
            .unprocessed_events(None, 10)
            .await
            .unwrap()
            .is_empty(),
        "both poison events marked processed"
    );
    assert_eq!(sim.stats().calls(Api::QueryAuth), 2);
    for appid in [&expired, &spent] {
        webhook.wait_for("event_failed", appid).await;
        let a = Appid::parse(appid).unwrap();
        assert!(
            h.store
                .authorizers()
                .get_authorizer(&h.comp, &a)
                .await
                .unwrap()
                .is_none()
        );
    }
    // Later passes never ask WeChat about them again.
    assert_eq!(h.engine.process_events().await.unwrap(), 0);
    assert_eq!(sim.stats().calls(Api::QueryAuth), 2);
    h.stop().await;
}

#[tokio::test]
async fn unauthorized_push_older_than_an_applied_authorization_is_ignored() {
    let h = Harness::start(
        sim_config(Duration::from_secs(60), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
    )
    .await;
    let sim = h.sim.control().clone();
    let comp = h.component.component_appid.clone();
    let appid = h.import_authorizers(1).await.remove(0).authorizer_appid;
    sim.unauthorize(&appid, &comp).unwrap();
    let unauthorized = wechat::event::Event::Unauthorized(wechat::event::UnauthorizedEvent {
        app_id: comp.clone(),
        create_time: sim.now() - 10,
        authorizer_appid: appid.clone(),
    });
    let outcome = sim.authorize(&appid, &comp).unwrap();
    // The authorization push arrives first; WeChat's retry of the older revocation after it.
    h.record_only(&h.authorization_event(&outcome), "auth")
        .await;
    h.record_only(&unauthorized, "unauth:late").await;

    assert_eq!(h.engine.process_events().await.unwrap(), 1);
    assert!(
        h.store
            .events()
            .unprocessed_events(None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(h.status(&appid).await, AuthorizerStatus::Active);
    let t = h.engine.token(None, &appid).expect("served");
    assert!(h.valid(&t.access_token));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoed_refresh_token_adds_no_history_row_and_a_rotated_one_does() {
    for (policy, expected_rows) in [
        (wechat_sim::RefreshTokenPolicy::Echo, 1),
        (wechat_sim::RefreshTokenPolicy::Rotate, 4),
    ] {
        let h = Harness::start(
            wechat_sim::SimConfig {
                refresh_token_policy: policy,
                ..sim_config(Duration::from_secs(3600), Duration::from_secs(300))
            },
            refresh_config(Duration::from_secs(10)),
        )
        .await;
        h.feed_ticket().await;
        let imported = h.import_authorizers(1).await;
        let appid = &imported[0].authorizer_appid;
        let cred = h.credential(appid);
        for _ in 0..3 {
            h.engine.refresh_now(&cred).await.expect("refresh");
            h.engine.wait_stored(&cred).await;
        }
        let history = h
            .store
            .authorizers()
            .refresh_token_history(&h.comp, &cred.appid)
            .await
            .unwrap();
        assert_eq!(history.len(), expected_rows, "{policy:?}");
        assert_eq!(
            h.stored_refresh_token(appid).await,
            h.sim_refresh_token(appid)
        );
        h.stop().await;
    }
}

#[tokio::test]
async fn a_report_is_never_answered_with_the_reported_token_after_a_refresh_token_only_write() {
    let h = Harness::start(
        sim_config(Duration::from_secs(60), Duration::from_secs(10)),
        refresh_config(Duration::from_secs(5)),
    )
    .await;
    let bulk = h.import_authorizers(1).await;
    let appid = bulk[0].authorizer_appid.clone();
    let a = Appid::parse(&appid).unwrap();
    let cred = h.credential(&appid);
    let first = h.engine.refresh_now(&cred).await.expect("first token");
    h.engine.wait_stored(&cred).await;
    // Another replica's recovery stores only a refresh token (the same one here): the stored
    // generation moves on, the access token does not.
    let record = h
        .store
        .authorizers()
        .get_authorizer(&h.comp, &a)
        .await
        .unwrap()
        .unwrap();
    h.store
        .authorizers()
        .save_authorizations(&[wxtoken::model::AuthorizationWrite {
            component: h.comp.clone(),
            appid: a.clone(),
            expected: Expected::Generation(record.generation),
            kind: None,
            status: AuthorizerStatus::Active,
            refresh_token: record.refresh_token.clone(),
            appsecret: None,
            access_token: None,
            source: wxtoken::model::RefreshTokenSource::Reconcile,
            at: Timestamp::now(),
        }])
        .await
        .unwrap();
    h.engine.load(None, &a).await.expect("load");
    let held = h.engine.token(None, &appid).expect("held");
    assert!(held.is(first.access_token.expose_secret()));
    assert_eq!(
        held.generation, first.generation,
        "the same token does not look new"
    );
    h.sim.control().reset_stats();
    let answer = h
        .engine
        .invalidate(&cred, first.access_token.expose_secret())
        .await
        .expect("answered");
    assert!(
        !answer.is(first.access_token.expose_secret()),
        "a report is answered with another token"
    );
    assert!(h.valid(&answer.access_token));
    assert_eq!(h.sim.control().stats().calls(Api::AuthorizerToken), 1);
    h.stop().await;
}

/// Stores `refresh_token` for `appid` as if `source` wrote it (a history entry follows).
async fn store_refresh_token(
    h: &Harness,
    appid: &str,
    refresh_token: &str,
    source: wxtoken::model::RefreshTokenSource,
) {
    let a = Appid::parse(appid).unwrap();
    let record = h
        .store
        .authorizers()
        .get_authorizer(&h.comp, &a)
        .await
        .unwrap()
        .unwrap();
    let sealed = h
        .vault()
        .seal(
            SecretSlot::RefreshToken {
                component: &h.comp,
                appid: &a,
            },
            refresh_token.as_bytes(),
        )
        .unwrap();
    h.store
        .authorizers()
        .save_authorizations(&[wxtoken::model::AuthorizationWrite {
            component: h.comp.clone(),
            appid: a,
            expected: Expected::Generation(record.generation),
            kind: None,
            status: AuthorizerStatus::Active,
            refresh_token: sealed,
            appsecret: None,
            access_token: None,
            source,
            at: Timestamp::now(),
        }])
        .await
        .unwrap();
}

fn one_fault(endpoint: &str, times: Option<u64>, fault: Fault) -> FaultSet {
    FaultSet {
        seed: None,
        rules: vec![FaultRule {
            endpoint: endpoint.into(),
            probability: 1.0,
            times,
            fault,
        }],
    }
}

#[tokio::test]
async fn a_refusal_is_never_judged_by_a_listing_whose_paging_started_before_it() {
    let overlap = Duration::from_secs(5);
    let h = Harness::start(
        SimConfig {
            refresh_token_policy: RefreshTokenPolicy::Rotate,
            ..sim_config(Duration::from_secs(600), overlap)
        },
        refresh_config(Duration::from_secs(5)),
    )
    .await;
    let bulk = h.import_authorizers(2).await;
    let (p, q) = (&bulk[0].authorizer_appid, &bulk[1].authorizer_appid);
    h.engine
        .refresh_now(&h.credential(p))
        .await
        .expect("a component token and a first refresh");
    let p_stored = h.stored_refresh_token(p).await;
    // Q's stored refresh token is wrong: its recovery pages the list, and the answer is held
    // after WeChat read the list (it shows P's refresh token as it is now).
    store_refresh_token(
        &h,
        q,
        "refreshtoken@@@restored-from-an-old-backup",
        wxtoken::model::RefreshTokenSource::Import,
    )
    .await;
    h.sim
        .control()
        .set_faults(one_fault(
            "api_get_authorizer_list",
            Some(1),
            Fault::HoldAnswer {
                latency: Latency::Fixed { ms: 1500 },
            },
        ))
        .unwrap();
    h.sim.control().reset_stats();
    let q_refresh = {
        let (engine, credential) = (h.engine.clone(), h.credential(q));
        tokio::spawn(async move { engine.refresh_now(&credential).await })
    };
    h.sim.control().wait_answers_held(1).await;
    // Meanwhile another replica refreshed P, WeChat rotated P's refresh token, and that replica
    // died before storing it; the overlap runs out. P's stored refresh token is now refused, and
    // the held listing still shows it.
    let wx = wechat::client::WechatClient::new(wechat::client::ClientConfig::with_base_url(
        h.sim.base_url().parse().unwrap(),
    ))
    .unwrap();
    let ct = h.engine.component_token(&h.comp).expect("component token");
    wx.authorizer_token(
        ct.access_token.expose_secret(),
        &h.component.component_appid,
        p,
        &p_stored,
    )
    .await
    .expect("the lost rotation");
    h.sim
        .control()
        .advance_clock(overlap + Duration::from_secs(1));

    let token = h
        .engine
        .refresh_now(&h.credential(p))
        .await
        .expect("recovered from a listing fetched after the refusal");
    assert!(h.valid(&token.access_token));
    h.engine.wait_stored(&h.credential(p)).await;
    assert_eq!(h.status(p).await, AuthorizerStatus::Active);
    assert_eq!(h.stored_refresh_token(p).await, h.sim_refresh_token(p));
    q_refresh.await.unwrap().expect("Q recovered too");
    h.engine.wait_stored(&h.credential(q)).await;
    assert_eq!(h.stored_refresh_token(q).await, h.sim_refresh_token(q));
    let stats = h.sim.control().stats();
    assert_eq!(
        stats.calls(Api::GetAuthorizerList),
        2,
        "P waited out the paging under way and used the next one"
    );
    assert_eq!(stats.errors(Api::AuthorizerToken, 61023), 2);
    h.stop().await;
}

#[tokio::test]
async fn a_listing_showing_a_refresh_token_wechat_rotated_away_is_never_written_back() {
    let webhook = WebhookReceiver::start().await;
    let h = Harness::start_with(
        sim_config(Duration::from_secs(600), Duration::from_secs(5)),
        refresh_config(Duration::from_secs(5)),
        Some(webhook.url.clone()),
        Duration::from_secs(5),
    )
    .await;
    let bulk = h.import_authorizers(1).await;
    let appid = &bulk[0].authorizer_appid;
    let listed = h.sim_refresh_token(appid);
    // The history says WeChat rotated the listed token away (a refresh answered with a new
    // one), and WeChat now refuses that new one: a listing lagging behind the rotation.
    let rotated = "refreshtoken@@@issued-by-a-rotation";
    store_refresh_token(
        &h,
        appid,
        rotated,
        wxtoken::model::RefreshTokenSource::Refresh,
    )
    .await;
    h.sim.control().reset_stats();
    let err = h
        .engine
        .refresh_now(&h.credential(appid))
        .await
        .expect_err("no refresh token to use now");
    assert!(
        matches!(err, RefreshError::Upstream { .. }),
        "a transient failure, retried later: {err:?}"
    );
    assert_eq!(
        h.stored_refresh_token(appid).await,
        rotated,
        "the listed token WeChat replaced was not written back"
    );
    assert_ne!(rotated, listed);
    assert_eq!(h.status(appid).await, AuthorizerStatus::Active);
    assert_eq!(webhook.count_kind("needs_reauth"), 0);
    let stats = h.sim.control().stats();
    assert_eq!(stats.calls(Api::GetAuthorizerList), 1);
    assert_eq!(
        stats.calls_for(appid, Api::AuthorizerToken),
        1,
        "no retry with the listed token"
    );
    h.stop().await;
}

#[tokio::test]
async fn reports_of_a_credential_without_a_token_whose_refresh_fails_wait_for_its_backoff() {
    let h = Harness::start(
        sim_config(Duration::from_secs(600), Duration::from_secs(10)),
        wxtoken::config::RefreshConfig {
            backoff_initial: Duration::from_secs(30),
            backoff_max: Duration::from_secs(60),
            ..refresh_config(Duration::from_secs(5))
        },
    )
    .await;
    let authorizers = h.import_authorizers(1).await;
    let cred = h.credential(&authorizers[0].authorizer_appid);
    h.sim
        .control()
        .set_faults(FaultSet {
            seed: None,
            rules: vec![FaultRule {
                endpoint: "api_authorizer_token".into(),
                probability: 1.0,
                times: None,
                fault: Fault::Errcode {
                    errcode: 45009,
                    errmsg: None,
                },
            }],
        })
        .unwrap();
    h.engine
        .refresh_now(&cred)
        .await
        .expect_err("the daily quota is spent");
    h.sim.control().reset_stats();
    for _ in 0..20 {
        h.engine
            .invalidate(&cred, "a token this credential never had")
            .await
            .expect_err("no token, and the retry waits for its backoff");
    }
    assert_eq!(
        h.sim.control().stats().calls(Api::AuthorizerToken),
        0,
        "reports never bypass the backoff"
    );
    h.stop().await;
}
