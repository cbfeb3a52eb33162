//! The store conformance suite: the same stories against SQLite (always, a temp file) and
//! PostgreSQL (when `WXTOKEN_TEST_PG_URL` is set; each test gets a fresh database).
//! `conformance!` generates one `#[tokio::test]` per story per backend: `sqlite::<story>` and
//! `postgres::<story>`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::harness::store::{
    Harness, Kind, appid, at, authorization, component, open_rt, open_token, refresh, saved,
};
use wxtoken::model::{
    AppKind, AppidGrant, AuthorizerCounts, AuthorizerState, AuthorizerStatus, ClientCreate,
    Credential, CredentialKind, DirectAccountWrite, EventInsert, Expected, KeyRotation, NewClient,
    NewEvent, PreviousKey, ReadCount, RefreshResult, RefreshTokenSource, SaveOutcome, SecretSlot,
    StatusChange, TicketOutcome, TokenSource, UpsertOutcome,
};
use wxtoken::store::{SealedColumn, Store, StoreError};
use wxtoken::vault::{self, MasterKey, Vault, VaultError};

macro_rules! conformance {
    ($($story:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $story() {
                    let h = super::Harness::new(super::Kind::Sqlite).await.expect("sqlite");
                    super::$story(&h).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $story() {
                    let Some(h) = super::Harness::new(super::Kind::Postgres).await else {
                        eprintln!("skipped: set {} to run the PostgreSQL suite", crate::harness::store::PG_ENV);
                        return;
                    };
                    super::$story(&h).await;
                }
            )*
        }
    };
}

conformance!(
    ticket_is_kept_across_reopen_and_an_older_push_does_not_replace_it,
    authorization_creates_an_active_authorizer_with_token_and_history,
    stale_refresh_result_is_refused_and_its_refresh_token_still_kept,
    a_batch_of_refreshes_lands_each_fresh_one_and_keeps_every_refresh_token,
    two_replicas_writing_from_one_generation_land_exactly_once,
    many_concurrent_writers_from_one_generation_land_exactly_once,
    refresh_token_history_never_shrinks_and_refuses_deletes,
    reauthorization_replaces_the_refresh_token_and_reactivates,
    empty_refresh_token_is_refused,
    repeated_push_is_recorded_once_and_processed_from_the_store,
    same_authorizer_appid_under_two_components_does_not_collide,
    direct_account_lifecycle_with_fenced_token,
    component_token_is_fenced_like_any_credential,
    js_sdk_ticket_rows_are_created_once_fenced_and_loaded_by_kind,
    gateway_call_counts_add_up_per_day_appid_and_path_and_old_days_are_pruned,
    clients_are_found_by_key_hash_and_read_counts_accumulate,
    a_rotated_key_is_found_with_its_grace_and_a_revoked_name_is_reused,
    needs_reauth_mark_is_fenced_and_revocation_fences_an_inflight_refresh,
    bulk_load_returns_every_authorizer_and_token_per_component_or_all,
    the_cold_start_scan_gives_every_authorizer_the_state_the_full_load_gives,
    authorizer_pages_cover_every_authorizer_once,
    batched_authorizations_have_the_outcomes_of_one_by_one_writes,
    appsecret_fallback_is_stored_sealed_and_can_be_cleared,
    rotation_reseals_every_secret_and_retires_the_old_key,
    rotation_while_another_task_keeps_writing_loses_nothing,
    wrong_master_key_is_refused_at_open,
    old_key_removed_before_rotation_finished_is_refused,
    retired_key_is_refused_as_primary_and_is_retired_only_when_unused,
    newer_schema_is_refused_naming_both_versions,
    writes_for_an_unregistered_component_are_refused,
    readded_direct_account_continues_its_generation_so_a_stale_write_cannot_land,
    opposite_order_batches_written_concurrently_never_deadlock,
    force_refresh_budget_is_kept_across_reopen_and_replaced_in_place,
    refresh_lease_goes_to_one_replica_until_released_or_expired,
    every_replica_hears_each_committed_generation_and_a_resume_after_a_cut,
    an_exchanged_code_is_known_to_another_replica_until_forgotten,
    store_errors_are_transient_exactly_when_the_same_call_can_pass,
    authorizers_are_searched_by_name_literally_and_counted_by_kind,
    dashboard_sessions_are_taken_once_touched_and_pruned,
    refresh_minutes_add_up_across_servers_and_old_minutes_are_pruned,
);

/// The dashboard's name search: a part of the nick name or principal name, ASCII case ignored,
/// LIKE's wildcards matched literally, paged by appid; and the counts by kind.
async fn authorizers_are_searched_by_name_literally_and_counted_by_kind(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let c = component("wxcomp0001");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    let names = [
        (
            "wxa01",
            AppKind::OfficialAccount,
            Some("星巴克咖啡"),
            Some("Starbucks China Ltd"),
        ),
        (
            "wxa02",
            AppKind::MiniProgram,
            Some("Blue_Bottle 100%"),
            None,
        ),
        (
            "wxa03",
            AppKind::OfficialAccount,
            Some("Bluebottle"),
            Some("咖啡公司"),
        ),
        ("wxa04", AppKind::MiniProgram, None, None),
    ];
    let writes: Vec<_> = names
        .iter()
        .map(|(a, ..)| authorization(&v, &c, &appid(a), "rt", None, Expected::Absent, 0))
        .collect();
    s.authorizers().save_authorizations(&writes).await.unwrap();
    for (a, kind, nick, principal) in &names {
        s.authorizers()
            .set_authorizer_details(
                &c,
                &appid(a),
                *kind,
                &wxtoken::model::AuthorizerDetails {
                    nick_name: nick.map(str::to_owned),
                    principal_name: principal.map(str::to_owned),
                    service_type: None,
                    fetched_at: Some(at(1)),
                },
            )
            .await
            .unwrap();
    }
    let search = |text: &'static str, after: Option<&'static str>, limit| {
        let s = s.clone();
        let c = c.clone();
        async move {
            s.authorizers()
                .search_authorizers(&c, text, after.map(appid).as_ref(), limit)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.appid.as_str().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        search("咖啡", None, 10).await,
        ["wxa01", "wxa03"],
        "nick or principal"
    );
    assert_eq!(
        search("BLUE", None, 10).await,
        ["wxa02", "wxa03"],
        "any case"
    );
    assert_eq!(search("starbucks", None, 10).await, ["wxa01"]);
    assert_eq!(search("100%", None, 10).await, ["wxa02"]);
    assert_eq!(
        search("e_b", None, 10).await,
        ["wxa02"],
        "_ is not a wildcard"
    );
    assert_eq!(
        search("%", None, 10).await,
        ["wxa02"],
        "% only where it is written"
    );
    assert_eq!(search("blue", None, 1).await, ["wxa02"], "paged");
    assert_eq!(search("blue", Some("wxa02"), 1).await, ["wxa03"]);
    assert!(search("nobody", None, 10).await.is_empty());
    let counts = s.authorizers().count_authorizers(&c).await.unwrap();
    assert_eq!(
        (
            counts.active,
            counts.official_accounts,
            counts.mini_programs,
            counts.kind_unknown
        ),
        (4, 2, 2, 0)
    );
}

/// Dashboard sessions in the store: found by digest, a one-time link taken exactly once (two
/// takers race: one wins), touched forward only, pruned when old or idle.
async fn dashboard_sessions_are_taken_once_touched_and_pruned(h: &Harness) {
    use wxtoken::model::{ApiKeyHash, UiSessionKind, UiSessionRecord};
    let ops = h.store.ops();
    let session = |n: u8, kind, created: i64, seen: i64| UiSessionRecord {
        digest: [n; 32],
        kind,
        key_hash: ApiKeyHash([7; 32]),
        client_name: format!("ops{n}"),
        created_at: at(created),
        last_seen_at: at(seen),
    };
    ops.create_ui_session(&session(1, UiSessionKind::Session, 0, 0))
        .await
        .unwrap();
    ops.create_ui_session(&session(2, UiSessionKind::Once, 0, 0))
        .await
        .unwrap();
    ops.create_ui_session(&session(3, UiSessionKind::Session, 50, 100))
        .await
        .unwrap();
    assert!(
        ops.create_ui_session(&session(1, UiSessionKind::Session, 0, 0))
            .await
            .is_err(),
        "a digest is unique"
    );
    assert_eq!(
        ops.ui_session(&[1; 32]).await.unwrap(),
        Some(session(1, UiSessionKind::Session, 0, 0))
    );
    assert_eq!(ops.count_ui_sessions().await.unwrap(), 3);
    let (a, b) = tokio::join!(ops.take_ui_session(&[2; 32]), ops.take_ui_session(&[2; 32]));
    let taken: Vec<_> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    assert_eq!(taken, [session(2, UiSessionKind::Once, 0, 0)], "taken once");
    ops.touch_ui_session(&[1; 32], at(40)).await.unwrap();
    ops.touch_ui_session(&[1; 32], at(30)).await.unwrap();
    assert_eq!(
        ops.ui_session(&[1; 32])
            .await
            .unwrap()
            .unwrap()
            .last_seen_at,
        at(40),
        "never moved back"
    );
    // Created before 10 or unused since 45: the first goes, the third stays.
    assert_eq!(ops.prune_ui_sessions(at(10), at(45)).await.unwrap(), 1);
    assert!(ops.ui_session(&[1; 32]).await.unwrap().is_none());
    assert!(ops.ui_session(&[3; 32]).await.unwrap().is_some());
}

/// Refreshes per minute: each server's counts add up within a minute, every server's are summed
/// when read, and minutes before the cut are pruned.
async fn refresh_minutes_add_up_across_servers_and_old_minutes_are_pruned(h: &Harness) {
    use wxtoken::model::RefreshMinute;
    let ops = h.store.ops();
    let minute = |minute, refreshed, failed| RefreshMinute {
        minute,
        refreshed,
        failed,
    };
    ops.add_refresh_minute("a", &minute(100, 5, 1))
        .await
        .unwrap();
    ops.add_refresh_minute("a", &minute(100, 2, 0))
        .await
        .unwrap();
    ops.add_refresh_minute("b", &minute(100, 3, 2))
        .await
        .unwrap();
    ops.add_refresh_minute("b", &minute(102, 4, 0))
        .await
        .unwrap();
    ops.add_refresh_minute("a", &minute(90, 9, 9))
        .await
        .unwrap();
    assert_eq!(
        ops.refresh_minutes(100).await.unwrap(),
        [minute(100, 10, 3), minute(102, 4, 0)]
    );
    assert_eq!(ops.prune_refresh_minutes(100).await.unwrap(), 1);
    assert_eq!(ops.refresh_minutes(0).await.unwrap().len(), 2);
}

/// The one answer to "can this store error pass?" (`StoreError::is_transient`), against the
/// real databases: a writer holding the database is transient and the same call passes once it
/// is gone; a constraint is not.
async fn store_errors_are_transient_exactly_when_the_same_call_can_pass(h: &Harness) {
    let c = component("wxerrclass00000001");
    let v = verified_vault(h.store.as_ref()).await;
    h.store
        .components()
        .ensure_component(&c, at(0))
        .await
        .unwrap();
    let ticket = v.seal(SecretSlot::Ticket { component: &c }, b"t").unwrap();
    let short = wxtoken::store::open_with(
        &h.url,
        &wxtoken::store::StoreOptions {
            max_connections: 2,
            acquire_timeout: std::time::Duration::from_millis(200),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    match h.kind {
        Kind::Sqlite => {
            // Another process holds SQLite's write lock.
            use sqlx::Connection;
            let mut other = sqlx::SqliteConnection::connect(&h.url).await.unwrap();
            sqlx::query("BEGIN EXCLUSIVE")
                .execute(&mut other)
                .await
                .unwrap();
            let err = short
                .components()
                .record_ticket(&c, &ticket, at(1))
                .await
                .unwrap_err();
            assert!(err.is_transient(), "{err:?}");
            sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        }
        Kind::Postgres => {
            // Two serializable transactions that read what the other writes: one is refused
            // with a serialization failure (40001), which passes when tried again.
            let pool = sqlx::PgPool::connect(&h.url).await.unwrap();
            sqlx::query("CREATE TABLE contention (k INT PRIMARY KEY, v INT NOT NULL)")
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query("INSERT INTO contention VALUES (1, 0), (2, 0)")
                .execute(&pool)
                .await
                .unwrap();
            let (mut a, mut b) = (pool.begin().await.unwrap(), pool.begin().await.unwrap());
            for t in [&mut a, &mut b] {
                sqlx::query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                    .execute(&mut **t)
                    .await
                    .unwrap();
                sqlx::query("SELECT SUM(v) FROM contention")
                    .execute(&mut **t)
                    .await
                    .unwrap();
            }
            sqlx::query("UPDATE contention SET v = 1 WHERE k = 1")
                .execute(&mut *a)
                .await
                .unwrap();
            sqlx::query("UPDATE contention SET v = 1 WHERE k = 2")
                .execute(&mut *b)
                .await
                .unwrap();
            a.commit().await.unwrap();
            let err = StoreError::from(b.commit().await.unwrap_err());
            assert!(
                matches!(err, StoreError::Contention { .. }) && err.is_transient(),
                "{err:?}"
            );
            pool.close().await;
        }
    }
    short
        .components()
        .record_ticket(&c, &ticket, at(1))
        .await
        .expect("passes now");
    // A constraint: the same write fails the same way however often it is tried.
    let unknown = component("wxerrclass00000002");
    let a = appid("wxerrclassappid001");
    for _ in 0..2 {
        let err = h
            .store
            .authorizers()
            .save_authorization(&authorization(
                &v,
                &unknown,
                &a,
                "rt",
                None,
                Expected::Absent,
                0,
            ))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Constraint { .. }) && !err.is_transient(),
            "{err:?}"
        );
    }
}

async fn an_exchanged_code_is_known_to_another_replica_until_forgotten(h: &Harness) {
    let c = component("wxcodes00000000001");
    let other = component("wxcodes00000000002");
    let (a, b) = (appid("wxcodesappid000001"), appid("wxcodesappid000002"));
    let digest = "5f".repeat(32);
    let replica = h.reopen().await;
    assert_eq!(
        h.store
            .authorizers()
            .exchanged_code(&c, &digest)
            .await
            .unwrap(),
        None
    );
    h.store
        .authorizers()
        .record_exchanged_code(&c, &digest, &a, at(1_000), at(0))
        .await
        .unwrap();
    assert_eq!(
        replica
            .authorizers()
            .exchanged_code(&c, &digest)
            .await
            .unwrap(),
        Some(a.clone())
    );
    assert_eq!(
        replica
            .authorizers()
            .exchanged_code(&other, &digest)
            .await
            .unwrap(),
        None,
        "per component"
    );
    // Recording again is idempotent; an older row is forgotten when a newer one lands.
    h.store
        .authorizers()
        .record_exchanged_code(&c, &digest, &a, at(1_000), at(0))
        .await
        .unwrap();
    let later = "a0".repeat(32);
    replica
        .authorizers()
        .record_exchanged_code(&c, &later, &b, at(90_000), at(50_000))
        .await
        .unwrap();
    assert_eq!(
        h.store
            .authorizers()
            .exchanged_code(&c, &digest)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        h.store
            .authorizers()
            .exchanged_code(&c, &later)
            .await
            .unwrap(),
        Some(b)
    );
}

fn new_vault() -> Vault {
    Vault::new(&MasterKey::generate(), &[])
}

async fn verified_vault(store: &dyn Store) -> Vault {
    let v = new_vault();
    v.verify(store).await.expect("verify");
    v
}

// ---------------------------------------------------------------------------------------------

async fn ticket_is_kept_across_reopen_and_an_older_push_does_not_replace_it(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let c = component("wxcomp0001");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    s.components().ensure_component(&c, at(1)).await.unwrap(); // idempotent
    assert_eq!(
        s.components().list_components().await.unwrap(),
        vec![c.clone()]
    );
    assert!(s.components().latest_ticket(&c).await.unwrap().is_none());

    let slot = SecretSlot::Ticket { component: &c };
    let t2 = v.seal(slot, b"ticket@@@second").unwrap();
    let t1 = v.seal(slot, b"ticket@@@first").unwrap();
    assert_eq!(
        s.components()
            .record_ticket(&c, &t2, at(2000))
            .await
            .unwrap(),
        TicketOutcome::Stored
    );
    assert_eq!(
        s.components()
            .record_ticket(&c, &t1, at(1000))
            .await
            .unwrap(),
        TicketOutcome::Older
    );

    let reopened = h.reopen().await;
    let latest = reopened
        .components()
        .latest_ticket(&c)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.received_at, at(2000));
    assert_eq!(
        v.open(slot, &latest.sealed).unwrap().as_slice(),
        b"ticket@@@second"
    );
    reopened.close().await;
}

async fn authorization_creates_an_active_authorizer_with_token_and_history(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let c = component("wxcomp0001");
    let a = appid("wxauth0001");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    assert!(
        s.authorizers()
            .get_authorizer(&c, &a)
            .await
            .unwrap()
            .is_none()
    );

    let w = authorization(
        &v,
        &c,
        &a,
        "refreshtoken@@@one",
        Some("at-one"),
        Expected::Absent,
        10,
    );
    assert_eq!(
        s.authorizers().save_authorization(&w).await.unwrap(),
        SaveOutcome::Saved { generation: 1 }
    );
    // Doing it again expecting absence is stale: the authorizer exists now.
    assert_eq!(
        s.authorizers().save_authorization(&w).await.unwrap(),
        SaveOutcome::Stale {
            current_generation: 1
        }
    );

    let rec = s
        .authorizers()
        .get_authorizer(&c, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, AuthorizerStatus::Active);
    assert_eq!(rec.kind, Some(AppKind::OfficialAccount));
    assert_eq!(rec.generation, 1);
    assert_eq!(
        open_rt(&v, &c, &a, &rec.refresh_token),
        "refreshtoken@@@one"
    );

    let cred = Credential::authorizer(&c, &a);
    let tok = s.tokens().get_token(&cred).await.unwrap().unwrap();
    assert_eq!(tok.generation, 1);
    let t = tok.token.unwrap();
    assert_eq!(open_token(&v, &cred, &t.sealed), "at-one");
    assert_eq!(t.source, TokenSource::QueryAuth);
    assert_eq!(t.expires_at, at(10 + 7_200_000));
    assert_eq!(t.refresh_at, Some(at(10 + 3_600_000)));

    let hist = s.authorizers().refresh_token_history(&c, &a).await.unwrap();
    assert_eq!(hist.len(), 2, "the losing duplicate is kept too");
    assert!(hist[0].applied && !hist[1].applied);
    assert_eq!(hist[0].source, RefreshTokenSource::QueryAuth);
    assert_eq!(
        s.authorizers().count_authorizers(&c).await.unwrap(),
        AuthorizerCounts {
            active: 1,
            needs_reauth: 0,
            revoked: 0,
            official_accounts: 1,
            ..AuthorizerCounts::default()
        }
    );
}

/// `n` authorizers of `c` (`wxauth00000`, …), each authorized at generation 1 with "rt-0" and
/// "at-0".
async fn authorized(
    s: &dyn Store,
    v: &Vault,
    c: &wxtoken::model::ComponentAppid,
    n: usize,
) -> Vec<wxtoken::model::Appid> {
    let appids: Vec<_> = (0..n).map(|i| appid(&format!("wxauth{i:05}"))).collect();
    let creates: Vec<_> = appids
        .iter()
        .map(|a| authorization(v, c, a, "rt-0", Some("at-0"), Expected::Absent, 0))
        .collect();
    for o in s.authorizers().save_authorizations(&creates).await.unwrap() {
        assert_eq!(o, SaveOutcome::Saved { generation: 1 });
    }
    appids
}

async fn a_batch_of_refreshes_lands_each_fresh_one_and_keeps_every_refresh_token(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let c = component("wxcomp0001");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    // More than one statement's worth of rows, so the batch spans chunks.
    let n = 1_203;
    let appids = authorized(s.as_ref(), &v, &c, n).await;
    // Every third result expects a generation that is not current (another writer won).
    let stale = |i: usize| i % 3 == 1;
    let results: Vec<_> = appids
        .iter()
        .enumerate()
        .rev()
        .map(|(i, a)| {
            let expected = if stale(i) { 0 } else { 1 };
            refresh(
                &v,
                &c,
                a,
                expected,
                &format!("at-{i}"),
                &format!("rt-{i}"),
                10,
            )
        })
        .collect();
    let outcomes = s.tokens().save_refresh_results(&results).await.unwrap();
    assert_eq!(outcomes.len(), n);
    // In the caller's order (here: reversed).
    for (k, outcome) in outcomes.iter().enumerate() {
        let i = n - 1 - k;
        let want = if stale(i) {
            SaveOutcome::Stale {
                current_generation: 1,
            }
        } else {
            SaveOutcome::Saved { generation: 2 }
        };
        assert_eq!(*outcome, want, "result for {}", appids[i]);
    }
    for i in [0, 1, 2, 600, 601, n - 1] {
        let a = &appids[i];
        let cred = Credential::authorizer(&c, a);
        let token = s.tokens().get_token(&cred).await.unwrap().unwrap();
        let rec = s
            .authorizers()
            .get_authorizer(&c, a)
            .await
            .unwrap()
            .unwrap();
        let hist: Vec<(String, u64, bool)> = s
            .authorizers()
            .refresh_token_history(&c, a)
            .await
            .unwrap()
            .iter()
            .map(|e| {
                (
                    open_rt(&v, &c, a, &e.refresh_token),
                    e.generation,
                    e.applied,
                )
            })
            .collect();
        if stale(i) {
            assert_eq!(token.generation, 1);
            assert_eq!(open_token(&v, &cred, &token.token.unwrap().sealed), "at-0");
            assert_eq!(open_rt(&v, &c, a, &rec.refresh_token), "rt-0");
            assert_eq!(hist[1], (format!("rt-{i}"), 0, false), "kept, not applied");
        } else {
            assert_eq!(token.generation, 2);
            assert_eq!(
                open_token(&v, &cred, &token.token.unwrap().sealed),
                format!("at-{i}")
            );
            assert_eq!(open_rt(&v, &c, a, &rec.refresh_token), format!("rt-{i}"));
            assert_eq!(rec.generation, 2);
            assert_eq!(hist[1], (format!("rt-{i}"), 2, true));
        }
        assert_eq!(hist.len(), 2);
    }
}

async fn stale_refresh_result_is_refused_and_its_refresh_token_still_kept(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let c = component("wxcomp0001");
    let a = appid("wxauth0001");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    let g = saved(
        s.authorizers()
            .save_authorization(&authorization(
                &v,
                &c,
                &a,
                "rt-0",
                Some("at-0"),
                Expected::Absent,
                0,
            ))
            .await
            .unwrap(),
    );

    // Two refreshers both read generation g; the first lands, the second is stale.
    let first = refresh(&v, &c, &a, g, "at-A", "rt-A", 100);
    let second = refresh(&v, &c, &a, g, "at-B", "rt-B", 200);
    assert_eq!(
        s.tokens().save_refresh_result(&first).await.unwrap(),
        SaveOutcome::Saved { generation: g + 1 }
    );
    assert_eq!(
        s.tokens().save_refresh_result(&second).await.unwrap(),
        SaveOutcome::Stale {
            current_generation: g + 1
        }
    );

    let cred = Credential::authorizer(&c, &a);
    let tok = s.tokens().get_token(&cred).await.unwrap().unwrap();
    assert_eq!(open_token(&v, &cred, &tok.token.unwrap().sealed), "at-A");
    let rec = s
        .authorizers()
        .get_authorizer(&c, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(open_rt(&v, &c, &a, &rec.refresh_token), "rt-A");

    let hist = s.authorizers().refresh_token_history(&c, &a).await.unwrap();
    let texts: Vec<(String, bool)> = hist
        .iter()
        .map(|e| (open_rt(&v, &c, &a, &e.refresh_token), e.applied))
        .collect();
    assert_eq!(
        texts,
        vec![
            ("rt-0".to_owned(), true),
            ("rt-A".to_owned(), true),
            ("rt-B".to_owned(), false)
        ]
    );
}

async fn two_replicas_writing_from_one_generation_land_exactly_once(h: &Harness) {
    let s1 = h.store.clone();
    let s2 = h.reopen().await;
    let v = Arc::new(verified_vault(s1.as_ref()).await);
    let c = component("wxcomp0001");
    let a = appid("wxauth0001");
    s1.components().ensure_component(&c, at(0)).await.unwrap();
    let g = saved(
        s1.authorizers()
            .save_authorization(&authorization(
                &v,
                &c,
                &a,
                "rt-0",
                None,
                Expected::Absent,
                0,
            ))
            .await
            .unwrap(),
    );
    for round in 0..20u64 {
        let g = g + round;
        let r1 = refresh(
            &v,
            &c,
            &a,
            g,
            &format!("at-1-{round}"),
            &format!("rt-1-{round}"),
            1,
        );
        let r2 = refresh(
            &v,
            &c,
            &a,
            g,
            &format!("at-2-{round}"),
            &format!("rt-2-{round}"),
            2,
        );
        let (o1, o2) = tokio::join!(
            {
                let s1 = s1.clone();
                async move { s1.tokens().save_refresh_result(&r1).await }
            },
            {
                let s2 = s2.clone();
                async move { s2.tokens().save_refresh_result(&r2).await }
            }
        );
        let outcomes = [o1.unwrap(), o2.unwrap()];
        let wins = outcomes
            .iter()
            .filter(|o| matches!(o, SaveOutcome::Saved { .. }))
            .count();
        assert_eq!(wins, 1, "round {round}: {outcomes:?}");
        assert!(outcomes.contains(&SaveOutcome::Stale {
            current_generation: g + 1
        }));
    }
    assert_eq!(
        s1.authorizers()
            .get_authorizer(&c, &a)
            .await
            .unwrap()
            .unwrap()
            .generation,
        g + 20
    );
    // 1 authorization + 2 per round, every one kept.
    assert_eq!(
        s2.authorizers()
            .refresh_token_history(&c, &a)
            .await
            .unwrap()
            .len(),
        41
    );
    s2.close().await;
}

async fn many_concurrent_writers_from_one_generation_land_exactly_once(h: &Harness) {
    let s = h.store.clone();
    let v = Arc::new(verified_vault(s.as_ref()).await);
    let c = component("wxcomp0001");
    let a = appid("wxauth0001");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    let g = saved(
        s.authorizers()
            .save_authorization(&authorization(
                &v,
                &c,
                &a,
                "rt-0",
                None,
                Expected::Absent,
                0,
            ))
            .await
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (s, v, c, a) = (s.clone(), v.clone(), c.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            let r = refresh(&v, &c, &a, g, &format!("at-{i}"), &format!("rt-{i}"), i);
            s.tokens().save_refresh_result(&r).await.unwrap()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            SaveOutcome::Saved { generation } => {
                assert_eq!(generation, g + 1);
                wins += 1;
            }
            SaveOutcome::Stale { current_generation } => assert_eq!(current_generation, g + 1),
            SaveOutcome::Missing => panic!("missing"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(
        s.authorizers()
            .refresh_token_history(&c, &a)
            .await
            .unwrap()
            .len(),
        17
    );
}

async fn refresh_token_history_never_shrinks_and_refuses_deletes(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let c = component("wxcomp0001");
    let a = appid("wxauth0001");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    let mut g = saved(
        s.authorizers()
            .save_authorization(&authorization(
                &v,
                &c,
                &a,
                "rt-0",
                None,
                Expected::Absent,
                0,
            ))
            .await
            .unwrap(),
    );
    let mut expected = vec!["rt-0".to_owned()];
    let mut last = 1;
    for i in 1..=10 {
        let rt = format!("rt-{i}");
        g = saved(
            s.tokens()
                .save_refresh_result(&refresh(&v, &c, &a, g, &format!("at-{i}"), &rt, i))
                .await
                .unwrap(),
        );
        expected.push(rt);
        if i % 3 == 0 {
            // A revocation and a re-authorization in between.
            s.authorizers()
                .set_authorizer_status(&StatusChange {
                    component: c.clone(),
                    appid: a.clone(),
                    status: AuthorizerStatus::Revoked,
                    reason: Some("unauthorized event".into()),
                    expected_generation: None,
                    at: at(i),
                })
                .await
                .unwrap();
            let cur = s
                .authorizers()
                .get_authorizer(&c, &a)
                .await
                .unwrap()
                .unwrap()
                .generation;
            let rt = format!("rt-reauth-{i}");
            g = saved(
                s.authorizers()
                    .save_authorization(&authorization(
                        &v,
                        &c,
                        &a,
                        &rt,
                        None,
                        Expected::Generation(cur),
                        i,
                    ))
                    .await
                    .unwrap(),
            );
            expected.push(rt);
        }
        let n = s
            .authorizers()
            .refresh_token_history(&c, &a)
            .await
            .unwrap()
            .len();
        assert!(n > last, "history shrank or stood still: {last} -> {n}");
        last = n;
    }
    let hist: Vec<String> = s
        .authorizers()
        .refresh_token_history(&c, &a)
        .await
        .unwrap()
        .iter()
        .map(|e| open_rt(&v, &c, &a, &e.refresh_token))
        .collect();
    assert_eq!(hist, expected);

    assert!(h.exec("DELETE FROM refresh_token_history").await.is_err());
    assert!(
        h.exec("UPDATE refresh_token_history SET appid = 'wxother'")
            .await
            .is_err()
    );
    if h.kind == Kind::Postgres {
        assert!(h.exec("TRUNCATE refresh_token_history").await.is_err());
    }
    assert_eq!(
        s.authorizers()
            .count_refresh_token_history(Some(&c))
            .await
            .unwrap(),
        expected.len() as u64
    );
}

async fn reauthorization_replaces_the_refresh_token_and_reactivates(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let c = component("wxcomp0001");
    let a = appid("wxauth0001");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    saved(
        s.authorizers()
            .save_authorization(&authorization(
                &v,
                &c,
                &a,
                "rt-old",
                Some("at-old"),
                Expected::Absent,
                0,
            ))
            .await
            .unwrap(),
    );
    let g = saved(
        s.authorizers()
            .set_authorizer_status(&StatusChange {
                component: c.clone(),
                appid: a.clone(),
                status: AuthorizerStatus::NeedsReauth,
                reason: Some("61023 refresh token invalid".into()),
                expected_generation: Some(1),
                at: at(5),
            })
            .await
            .unwrap(),
    );
    assert_eq!(g, 2);
    let rec = s
        .authorizers()
        .get_authorizer(&c, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, AuthorizerStatus::NeedsReauth);
    assert_eq!(
        rec.status_reason.as_deref(),
        Some("61023 refresh token invalid")
    );
    assert_eq!(rec.status_changed_at, at(5));

    let w = authorization(
        &v,
        &c,
        &a,
        "rt-new",
        Some("at-new"),
        Expected::Generation(g),
        10,
    );
    assert_eq!(
        s.authorizers().save_authorization(&w).await.unwrap(),
        SaveOutcome::Saved { generation: 3 }
    );
    let rec = s
        .authorizers()
        .get_authorizer(&c, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, AuthorizerStatus::Active);
    assert_eq!(rec.status_reason, None);
    assert_eq!(rec.status_changed_at, at(10));
    assert_eq!(open_rt(&v, &c, &a, &rec.refresh_token), "rt-new");
    let cred = Credential::authorizer(&c, &a);
    let tok = s.tokens().get_token(&cred).await.unwrap().unwrap();
    assert_eq!(open_token(&v, &cred, &tok.token.unwrap().sealed), "at-new");
    let hist = s.authorizers().refresh_token_history(&c, &a).await.unwrap();
    assert_eq!(hist.len(), 2);
    assert_eq!(hist[1].generation, 3);
}

async fn empty_refresh_token_is_refused(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let c = component("wxcomp0001");
    let a = appid("wxauth0001");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    let w = authorization(&v, &c, &a, "", None, Expected::Absent, 0);
    assert!(matches!(
        s.authorizers().save_authorization(&w).await,
        Err(StoreError::InvalidInput(_))
    ));
    saved(
        s.authorizers()
            .save_authorization(&authorization(
                &v,
                &c,
                &a,
                "rt-0",
                None,
                Expected::Absent,
                0,
            ))
            .await
            .unwrap(),
    );
    let r = refresh(&v, &c, &a, 1, "at-1", "", 1);
    assert!(matches!(
        s.tokens().save_refresh_result(&r).await,
        Err(StoreError::InvalidInput(_))
    ));
    let rec = s
        .authorizers()
        .get_authorizer(&c, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(open_rt(&v, &c, &a, &rec.refresh_token), "rt-0");
    assert_eq!(rec.generation, 1);
}

async fn repeated_push_is_recorded_once_and_processed_from_the_store(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let c = component("wxcomp0001");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    let key = "authorized:1700000000:wxauth0001";
    let payload = b"<xml><AuthorizationCode>queryauthcode@@@secret</AuthorizationCode></xml>";
    let event = |t: i64| NewEvent {
        component: c.clone(),
        dedupe_key: key.to_owned(),
        info_type: "authorized".into(),
        appid: Some(appid("wxauth0001")),
        payload: v
            .seal(
                SecretSlot::EventPayload {
                    component: &c,
                    dedupe_key: key,
                },
                payload,
            )
            .unwrap(),
        received_at: at(t),
    };
    assert_eq!(
        s.events().record_event(&event(1)).await.unwrap(),
        EventInsert::Inserted
    );
    assert_eq!(
        s.events().record_event(&event(2)).await.unwrap(),
        EventInsert::Duplicate
    );

    // After a "crash", processing resumes from the stored event.
    let reopened = h.reopen().await;
    let pending = reopened
        .events()
        .unprocessed_events(Some(&c), 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    let e = &pending[0];
    assert_eq!(e.info_type, "authorized");
    assert_eq!(e.received_at, at(1));
    let opened = v
        .open(
            SecretSlot::EventPayload {
                component: &c,
                dedupe_key: &e.dedupe_key,
            },
            &e.payload,
        )
        .unwrap();
    assert_eq!(opened.as_slice(), payload);
    assert!(
        reopened
            .events()
            .mark_event_processed(&c, key, at(3))
            .await
            .unwrap()
    );
    assert!(
        !reopened
            .events()
            .mark_event_processed(&c, key, at(4))
            .await
            .unwrap()
    );
    assert!(
        reopened
            .events()
            .unprocessed_events(None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Still a duplicate after processing.
    assert_eq!(
        s.events().record_event(&event(5)).await.unwrap(),
        EventInsert::Duplicate
    );
    assert_eq!(reopened.events().prune_events(at(2)).await.unwrap(), 1);
    reopened.close().await;
}

async fn same_authorizer_appid_under_two_components_does_not_collide(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let prod = component("wxprod");
    let staging = component("wxstaging");
    let a = appid("wxshared");
    for c in [&prod, &staging] {
        s.components().ensure_component(c, at(0)).await.unwrap();
        let t = v
            .seal(
                SecretSlot::Ticket { component: c },
                format!("ticket-{c}").as_bytes(),
            )
            .unwrap();
        s.components().record_ticket(c, &t, at(1)).await.unwrap();
        let rt = format!("rt-{c}");
        let tok = format!("at-{c}");
        saved(
            s.authorizers()
                .save_authorization(&authorization(
                    &v,
                    c,
                    &a,
                    &rt,
                    Some(&tok),
                    Expected::Absent,
                    0,
                ))
                .await
                .unwrap(),
        );
        let key = "same-dedupe-key";
        let ev = NewEvent {
            component: c.clone(),
            dedupe_key: key.into(),
            info_type: "authorized".into(),
            appid: Some(a.clone()),
            payload: v
                .seal(
                    SecretSlot::EventPayload {
                        component: c,
                        dedupe_key: key,
                    },
                    b"x",
                )
                .unwrap(),
            received_at: at(1),
        };
        assert_eq!(
            s.events().record_event(&ev).await.unwrap(),
            EventInsert::Inserted
        );
        let secret = v
            .seal(
                SecretSlot::DirectAppsecret {
                    component: c,
                    appid: &a,
                },
                b"s",
            )
            .unwrap();
        let direct = DirectAccountWrite {
            component: c.clone(),
            appid: a.clone(),
            kind: AppKind::MiniProgram,
            appsecret: secret,
            at: at(0),
        };
        assert_eq!(
            s.direct().upsert_direct_account(&direct).await.unwrap(),
            UpsertOutcome::Created
        );
    }
    // Refreshing one leaves the other alone.
    saved(
        s.tokens()
            .save_refresh_result(&refresh(&v, &prod, &a, 1, "at-prod-2", "rt-prod-2", 5))
            .await
            .unwrap(),
    );
    for (c, rt, tok, g) in [
        (&prod, "rt-prod-2", "at-prod-2", 2),
        (&staging, "rt-wxstaging", "at-wxstaging", 1),
    ] {
        let rec = s
            .authorizers()
            .get_authorizer(c, &a)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(open_rt(&v, c, &a, &rec.refresh_token), rt);
        assert_eq!(rec.generation, g);
        let cred = Credential::authorizer(c, &a);
        let t = s.tokens().get_token(&cred).await.unwrap().unwrap();
        assert_eq!(open_token(&v, &cred, &t.token.unwrap().sealed), tok);
        let ticket = s.components().latest_ticket(c).await.unwrap().unwrap();
        assert_eq!(
            v.open(SecretSlot::Ticket { component: c }, &ticket.sealed)
                .unwrap()
                .as_slice(),
            format!("ticket-{c}").as_bytes()
        );
        assert_eq!(
            s.events()
                .unprocessed_events(Some(c), 10)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            s.authorizers()
                .load_authorizers(Some(c))
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            s.authorizers()
                .refresh_token_history(c, &a)
                .await
                .unwrap()
                .len(),
            g as usize
        );
    }
    // A sealed value moved to the other component's row does not open.
    let prod_rt = s
        .authorizers()
        .get_authorizer(&prod, &a)
        .await
        .unwrap()
        .unwrap()
        .refresh_token;
    assert!(matches!(
        v.open(
            SecretSlot::RefreshToken {
                component: &staging,
                appid: &a
            },
            &prod_rt
        ),
        Err(VaultError::Open)
    ));
    // The direct account and the authorizer with the same appid are separate credentials.
    let direct = s
        .tokens()
        .get_token(&Credential::direct(&prod, &a))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(direct.generation, 0);
    assert!(direct.token.is_none());
}

async fn direct_account_lifecycle_with_fenced_token(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let c = component("wxcomp0001");
    let a = appid("wxdirect01");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    let write = |secret: &[u8], kind| DirectAccountWrite {
        component: c.clone(),
        appid: a.clone(),
        kind,
        appsecret: v
            .seal(
                SecretSlot::DirectAppsecret {
                    component: &c,
                    appid: &a,
                },
                secret,
            )
            .unwrap(),
        at: at(0),
    };
    assert_eq!(
        s.direct()
            .upsert_direct_account(&write(b"secret-1", AppKind::OfficialAccount))
            .await
            .unwrap(),
        UpsertOutcome::Created
    );
    assert_eq!(
        s.direct()
            .upsert_direct_account(&write(b"secret-2", AppKind::MiniProgram))
            .await
            .unwrap(),
        UpsertOutcome::Updated
    );
    let rec = s
        .direct()
        .get_direct_account(&c, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.kind, AppKind::MiniProgram);
    let slot = SecretSlot::DirectAppsecret {
        component: &c,
        appid: &a,
    };
    assert_eq!(
        v.open(slot, &rec.appsecret).unwrap().as_slice(),
        b"secret-2"
    );

    let cred = Credential::direct(&c, &a);
    let result = |g, tok: &str| {
        let mut t = crate::harness::store::access_token(&v, &cred, tok, 0);
        t.source = TokenSource::StableToken;
        t.refresh_at = None;
        RefreshResult {
            credential: cred.clone(),
            expected_generation: g,
            access_token: t,
            refresh_token: None,
            at: at(0),
        }
    };
    assert_eq!(
        s.tokens()
            .save_refresh_result(&result(0, "direct-at-1"))
            .await
            .unwrap(),
        SaveOutcome::Saved { generation: 1 }
    );
    assert_eq!(
        s.tokens()
            .save_refresh_result(&result(0, "direct-at-x"))
            .await
            .unwrap(),
        SaveOutcome::Stale {
            current_generation: 1
        }
    );
    let tok = s.tokens().get_token(&cred).await.unwrap().unwrap();
    let t = tok.token.unwrap();
    assert_eq!(t.refresh_at, None);
    assert_eq!(t.source, TokenSource::StableToken);
    assert_eq!(open_token(&v, &cred, &t.sealed), "direct-at-1");
    // A refresh token for a direct account is a caller bug.
    let mut bad = result(1, "direct-at-2");
    bad.refresh_token = Some(
        v.seal(
            SecretSlot::RefreshToken {
                component: &c,
                appid: &a,
            },
            b"rt",
        )
        .unwrap(),
    );
    assert!(matches!(
        s.tokens().save_refresh_result(&bad).await,
        Err(StoreError::InvalidInput(_))
    ));

    assert_eq!(
        s.direct()
            .list_direct_accounts(Some(&c))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(s.direct().remove_direct_account(&c, &a).await.unwrap());
    assert!(!s.direct().remove_direct_account(&c, &a).await.unwrap());
    assert!(s.tokens().get_token(&cred).await.unwrap().is_none());
    assert_eq!(
        s.tokens()
            .save_refresh_result(&result(1, "late"))
            .await
            .unwrap(),
        SaveOutcome::Missing
    );
}

async fn component_token_is_fenced_like_any_credential(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let c = component("wxcomp0001");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    let cred = Credential::component(&c);
    let rec = s.tokens().get_token(&cred).await.unwrap().unwrap();
    assert_eq!(rec.generation, 0);
    assert!(rec.token.is_none());
    let mk = |g, tok: &str| {
        let mut t = crate::harness::store::access_token(&v, &cred, tok, 0);
        t.source = TokenSource::ComponentToken;
        RefreshResult {
            credential: cred.clone(),
            expected_generation: g,
            access_token: t,
            refresh_token: None,
            at: at(0),
        }
    };
    let outcomes = s
        .tokens()
        .save_refresh_results(&[mk(0, "cat-1"), mk(0, "cat-2"), mk(1, "cat-3")])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            SaveOutcome::Saved { generation: 1 },
            SaveOutcome::Stale {
                current_generation: 1
            },
            SaveOutcome::Saved { generation: 2 },
        ]
    );
    let t = s
        .tokens()
        .get_token(&cred)
        .await
        .unwrap()
        .unwrap()
        .token
        .unwrap();
    assert_eq!(open_token(&v, &cred, &t.sealed), "cat-3");
    assert_eq!(cred.kind, CredentialKind::Component);
}

async fn js_sdk_ticket_rows_are_created_once_fenced_and_loaded_by_kind(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let c = component("wxcomp0001");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    let account = Credential::authorizer(&c, &appid("wxauth0001"));
    let jsapi = account.ticket(CredentialKind::Jsapi);
    let card = account.ticket(CredentialKind::WxCard);
    assert_eq!(s.tokens().ensure_ticket(&jsapi, at(0)).await.unwrap(), 0);
    let mk = |g, value: &str| {
        let mut t = crate::harness::store::access_token(&v, &jsapi, value, 0);
        t.source = TokenSource::GetTicket;
        RefreshResult {
            credential: jsapi.clone(),
            expected_generation: g,
            access_token: t,
            refresh_token: None,
            at: at(0),
        }
    };
    let outcomes = s
        .tokens()
        .save_refresh_results(&[mk(0, "ticket-1"), mk(0, "ticket-2")])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            SaveOutcome::Saved { generation: 1 },
            SaveOutcome::Stale {
                current_generation: 1
            },
        ]
    );
    // Created once: asking again keeps the row and its generation.
    assert_eq!(s.tokens().ensure_ticket(&jsapi, at(1)).await.unwrap(), 1);
    assert_eq!(s.tokens().ensure_ticket(&card, at(1)).await.unwrap(), 0);
    let stored = s.tokens().get_token(&jsapi).await.unwrap().unwrap();
    let t = stored.token.unwrap();
    assert_eq!(open_token(&v, &jsapi, &t.sealed), "ticket-1");
    assert_eq!(t.source, TokenSource::GetTicket);
    // Sealed for its own slot: the same bytes do not open as the account's access token.
    assert!(
        v.open_string(
            SecretSlot::AccessToken {
                credential: &account
            },
            &t.sealed
        )
        .is_err()
    );
    let loaded = s
        .tokens()
        .load_tokens(None, Some(CredentialKind::Jsapi))
        .await
        .unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].credential, jsapi);
    // Only ticket credentials get a row this way.
    assert!(matches!(
        s.tokens().ensure_ticket(&account, at(0)).await,
        Err(StoreError::InvalidInput(_))
    ));
}

async fn gateway_call_counts_add_up_per_day_appid_and_path_and_old_days_are_pruned(h: &Harness) {
    let s = &h.store;
    let count =
        |day: &str, appid: &str, path: &str, calls, errors| wxtoken::model::GatewayCallCount {
            day: day.into(),
            appid: appid.into(),
            path: path.into(),
            calls,
            errors,
        };
    let send = "cgi-bin/message/custom/send";
    s.ops()
        .add_gateway_calls(&[
            count("2026-12-06", "wxa", send, 5, 1),
            count("2026-12-07", "wxa", send, 2, 0),
            count("2026-12-07", "wxb", "cgi-bin/getcallbackip", 9, 0),
        ])
        .await
        .unwrap();
    // A second server adds to the same rows.
    s.ops()
        .add_gateway_calls(&[count("2026-12-07", "wxa", send, 3, 2)])
        .await
        .unwrap();
    let today = s.ops().gateway_calls("2026-12-07", None).await.unwrap();
    assert_eq!(
        today,
        vec![
            count("2026-12-07", "wxb", "cgi-bin/getcallbackip", 9, 0),
            count("2026-12-07", "wxa", send, 5, 2),
        ],
        "most calls first"
    );
    assert_eq!(
        s.ops()
            .gateway_calls("2026-12-07", Some("wxa"))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(s.ops().prune_gateway_calls("2026-12-07").await.unwrap(), 1);
    assert!(
        s.ops()
            .gateway_calls("2026-12-06", None)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn clients_are_found_by_key_hash_and_read_counts_accumulate(h: &Harness) {
    let s = &h.store;
    let key = vault::generate_api_key();
    let new = NewClient {
        name: "billing".into(),
        key_hash: key.hash,
        key_hint: key.hint.clone(),
        grant: AppidGrant::Only(vec![appid("wxa"), appid("wxb")]),
        admin: false,
        created_at: at(0),
    };
    let created = match s.clients().create_client(&new).await.unwrap() {
        ClientCreate::Created(c) => c,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        s.clients().create_client(&new).await.unwrap(),
        ClientCreate::NameTaken
    );
    let admin_key = vault::generate_api_key();
    let admin = NewClient {
        name: "ops".into(),
        key_hash: admin_key.hash,
        key_hint: admin_key.hint,
        grant: AppidGrant::All,
        admin: true,
        created_at: at(1),
    };
    assert!(matches!(
        s.clients().create_client(&admin).await.unwrap(),
        ClientCreate::Created(_)
    ));

    use secrecy::ExposeSecret;
    let found = s
        .clients()
        .find_client_by_key(&vault::hash_api_key(key.key.expose_secret()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found, created);
    assert!(found.grant.allows(&appid("wxa")) && !found.grant.allows(&appid("wxc")));
    assert!(
        s.clients()
            .find_client_by_key(&vault::hash_api_key("wxt_wrong"))
            .await
            .unwrap()
            .is_none()
    );
    let list = s.clients().list_clients().await.unwrap();
    assert_eq!(list.len(), 2);
    assert!(list[1].admin && list[1].grant == AppidGrant::All);

    assert!(s.clients().revoke_client("billing", at(9)).await.unwrap());
    assert!(!s.clients().revoke_client("billing", at(10)).await.unwrap());
    assert_eq!(
        s.clients()
            .find_client_by_key(&key.hash)
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(at(9))
    );

    let c = component("wxcomp0001");
    let batch = |n, t| {
        vec![
            ReadCount {
                client_id: created.id,
                component: c.clone(),
                appid: appid("wxa"),
                count: n,
                last_read_at: at(t),
            },
            ReadCount {
                client_id: created.id,
                component: c.clone(),
                appid: appid("wxb"),
                count: 1,
                last_read_at: at(t),
            },
        ]
    };
    s.clients().add_read_counts(&batch(5, 100)).await.unwrap();
    s.clients().add_read_counts(&batch(7, 50)).await.unwrap();
    s.clients().add_read_counts(&[]).await.unwrap();
    let counts = s.clients().read_counts(Some(created.id)).await.unwrap();
    assert_eq!(counts.len(), 2);
    assert_eq!(counts[0].appid, appid("wxa"));
    assert_eq!(counts[0].count, 12);
    assert_eq!(counts[0].last_read_at, at(100), "the latest read wins");
    assert_eq!(counts[1].count, 2);

    // One slice may name an appid twice (its slot replaced between two flushes): both add up.
    let mut twice = batch(1, 200);
    twice.extend(batch(2, 150));
    s.clients().add_read_counts(&twice).await.unwrap();
    // And more counts than one statement carries (500 rows) land in one call.
    let many: Vec<ReadCount> = (0..1203)
        .map(|i| ReadCount {
            client_id: created.id,
            component: c.clone(),
            appid: appid(&format!("wxmany{i:05}")),
            count: 1,
            last_read_at: at(300),
        })
        .collect();
    s.clients().add_read_counts(&many).await.unwrap();
    let counts = s.clients().read_counts(Some(created.id)).await.unwrap();
    assert_eq!(counts.len(), 2 + 1203);
    assert_eq!(counts[0].appid, appid("wxa"));
    assert_eq!(counts[0].count, 15);
    assert_eq!(counts[0].last_read_at, at(200));
    assert_eq!(counts[1].count, 4);
    assert!(counts[2..].iter().all(|c| c.count == 1));
}

async fn a_rotated_key_is_found_with_its_grace_and_a_revoked_name_is_reused(h: &Harness) {
    use secrecy::ExposeSecret;
    let s = &h.store;
    let first = vault::generate_api_key();
    let new = |key: &wxtoken::vault::NewApiKey, t| NewClient {
        name: "billing".into(),
        key_hash: key.hash,
        key_hint: key.hint.clone(),
        grant: AppidGrant::All,
        admin: false,
        created_at: at(t),
    };
    let created = match s.clients().create_client(&new(&first, 0)).await.unwrap() {
        ClientCreate::Created(c) => c,
        other => panic!("{other:?}"),
    };
    let c = component("wxcomp0001");
    s.clients()
        .add_read_counts(&[ReadCount {
            client_id: created.id,
            component: c.clone(),
            appid: appid("wxa"),
            count: 3,
            last_read_at: at(1),
        }])
        .await
        .unwrap();

    // Rotation with a grace: the new key is the client's, the old one found with its end.
    let second = vault::generate_api_key();
    let rotated = s
        .clients()
        .rotate_client_key(
            "billing",
            &KeyRotation {
                key_hash: second.hash,
                key_hint: second.hint.clone(),
                previous_until: Some(at(3600)),
                at: at(2),
            },
        )
        .await
        .unwrap()
        .expect("a live client");
    assert_eq!(rotated.id, created.id);
    assert_eq!(rotated.key_hint, second.hint);
    assert_eq!(
        rotated.previous_key,
        Some(PreviousKey {
            key_hint: first.hint.clone(),
            expires_at: at(3600)
        })
    );
    let by_new = s
        .clients()
        .find_client_by_key(&second.hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((by_new.id, by_new.key_expires_at), (created.id, None));
    let by_old = s
        .clients()
        .find_client_by_key(&vault::hash_api_key(first.key.expose_secret()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (by_old.id, by_old.key_expires_at),
        (created.id, Some(at(3600)))
    );

    // Without a grace the previous key is gone at once (and the one before it too).
    let third = vault::generate_api_key();
    let rotation = KeyRotation {
        key_hash: third.hash,
        key_hint: third.hint.clone(),
        previous_until: None,
        at: at(3),
    };
    let rotated = s
        .clients()
        .rotate_client_key("billing", &rotation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rotated.previous_key, None);
    for gone in [&first.hash, &second.hash] {
        assert!(
            s.clients()
                .find_client_by_key(gone)
                .await
                .unwrap()
                .is_none()
        );
    }
    assert!(
        s.clients()
            .rotate_client_key("nobody", &rotation)
            .await
            .unwrap()
            .is_none(),
        "an unknown name"
    );

    // A live name is taken; once revoked it can be given to a new client, whose key is its own.
    let fourth = vault::generate_api_key();
    assert_eq!(
        s.clients().create_client(&new(&fourth, 4)).await.unwrap(),
        ClientCreate::NameTaken
    );
    assert!(s.clients().revoke_client("billing", at(5)).await.unwrap());
    assert!(
        s.clients()
            .rotate_client_key("billing", &rotation)
            .await
            .unwrap()
            .is_none(),
        "a revoked client is not rotated"
    );
    let reused = match s.clients().create_client(&new(&fourth, 6)).await.unwrap() {
        ClientCreate::Created(c) => c,
        other => panic!("{other:?}"),
    };
    assert_ne!(reused.id, created.id);
    let list = s.clients().list_clients().await.unwrap();
    let billing: Vec<_> = list.iter().filter(|c| c.name == "billing").collect();
    assert_eq!(billing.len(), 2, "{list:?}");
    assert_eq!(billing.iter().filter(|c| c.revoked_at.is_none()).count(), 1);
    let revoked = s
        .clients()
        .find_client_by_key(&third.hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((revoked.id, revoked.revoked_at), (created.id, Some(at(5))));
    // The revoked client's read counts stayed with it.
    let counts = s.clients().read_counts(Some(created.id)).await.unwrap();
    assert_eq!(counts.len(), 1);
    assert_eq!(counts[0].count, 3);
}

async fn needs_reauth_mark_is_fenced_and_revocation_fences_an_inflight_refresh(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let c = component("wxcomp0001");
    let a = appid("wxauth0001");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    saved(
        s.authorizers()
            .save_authorization(&authorization(
                &v,
                &c,
                &a,
                "rt-0",
                None,
                Expected::Absent,
                0,
            ))
            .await
            .unwrap(),
    );
    // A refresh failure computed from generation 1 arrives after a re-authorization (gen 2).
    saved(
        s.authorizers()
            .save_authorization(&authorization(
                &v,
                &c,
                &a,
                "rt-1",
                None,
                Expected::Generation(1),
                1,
            ))
            .await
            .unwrap(),
    );
    let mark = StatusChange {
        component: c.clone(),
        appid: a.clone(),
        status: AuthorizerStatus::NeedsReauth,
        reason: Some("61023".into()),
        expected_generation: Some(1),
        at: at(2),
    };
    assert_eq!(
        s.authorizers().set_authorizer_status(&mark).await.unwrap(),
        SaveOutcome::Stale {
            current_generation: 2
        }
    );
    assert_eq!(
        s.authorizers()
            .get_authorizer(&c, &a)
            .await
            .unwrap()
            .unwrap()
            .status,
        AuthorizerStatus::Active
    );

    // An unconditional revocation bumps the generation: a refresh computed before it loses.
    let inflight = refresh(&v, &c, &a, 2, "at-late", "rt-late", 3);
    let revoke = StatusChange {
        component: c.clone(),
        appid: a.clone(),
        status: AuthorizerStatus::Revoked,
        reason: Some("unauthorized event".into()),
        expected_generation: None,
        at: at(3),
    };
    assert_eq!(
        s.authorizers()
            .set_authorizer_status(&revoke)
            .await
            .unwrap(),
        SaveOutcome::Saved { generation: 3 }
    );
    // Revoking again changes nothing.
    assert_eq!(
        s.authorizers()
            .set_authorizer_status(&revoke)
            .await
            .unwrap(),
        SaveOutcome::Saved { generation: 3 }
    );
    assert_eq!(
        s.tokens().save_refresh_result(&inflight).await.unwrap(),
        SaveOutcome::Stale {
            current_generation: 3
        }
    );
    let rec = s
        .authorizers()
        .get_authorizer(&c, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, AuthorizerStatus::Revoked);
    assert_eq!(
        open_rt(&v, &c, &a, &rec.refresh_token),
        "rt-1",
        "data is kept"
    );
    assert_eq!(
        s.authorizers().count_authorizers(&c).await.unwrap(),
        AuthorizerCounts {
            active: 0,
            needs_reauth: 0,
            revoked: 1,
            official_accounts: 1,
            ..AuthorizerCounts::default()
        }
    );
    let unknown = StatusChange {
        appid: appid("wxnobody"),
        ..revoke.clone()
    };
    assert_eq!(
        s.authorizers()
            .set_authorizer_status(&unknown)
            .await
            .unwrap(),
        SaveOutcome::Missing
    );
}

/// Authorizers `wxauth0000`… under two components, 30 and 20, each created with refresh token
/// `rt-{component}-{i}` and, for even `i`, the access token "tok".
async fn save_thirty_and_twenty(
    s: &dyn Store,
    v: &Vault,
    c1: &wxtoken::model::ComponentAppid,
    c2: &wxtoken::model::ComponentAppid,
) {
    for (c, n) in [(c1, 30), (c2, 20)] {
        s.components().ensure_component(c, at(0)).await.unwrap();
        let writes: Vec<_> = (0..n)
            .map(|i| {
                let a = appid(&format!("wxauth{i:04}"));
                authorization(
                    v,
                    c,
                    &a,
                    &format!("rt-{c}-{i}"),
                    (i % 2 == 0).then_some("tok"),
                    Expected::Absent,
                    i,
                )
            })
            .collect();
        let outcomes = s.authorizers().save_authorizations(&writes).await.unwrap();
        assert!(
            outcomes
                .iter()
                .all(|o| *o == SaveOutcome::Saved { generation: 1 })
        );
    }
}

async fn bulk_load_returns_every_authorizer_and_token_per_component_or_all(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let c1 = component("wxcomp0001");
    let c2 = component("wxcomp0002");
    save_thirty_and_twenty(s.as_ref(), &v, &c1, &c2).await;
    let all = s.authorizers().load_authorizers(None).await.unwrap();
    assert_eq!(all.len(), 50);
    for rec in &all {
        let i: usize = rec.appid.as_str()[6..].parse().unwrap();
        assert_eq!(
            open_rt(&v, &rec.component, &rec.appid, &rec.refresh_token),
            format!("rt-{}-{i}", rec.component)
        );
    }
    assert_eq!(
        s.authorizers()
            .load_authorizers(Some(&c2))
            .await
            .unwrap()
            .len(),
        20
    );
    // Authorizers come with their tokens: half of them have one.
    let c1_auth = s.authorizers().load_authorizers(Some(&c1)).await.unwrap();
    assert_eq!(c1_auth.iter().filter(|a| a.token.is_some()).count(), 15);
    for a in c1_auth.iter().filter(|a| a.token.is_some()) {
        let cred = Credential::authorizer(&c1, &a.appid);
        let t = a.token.as_ref().unwrap();
        assert_eq!(open_token(&v, &cred, &t.sealed), "tok");
        assert_eq!(
            s.tokens()
                .get_token(&cred)
                .await
                .unwrap()
                .unwrap()
                .token
                .as_ref(),
            Some(t)
        );
    }
    let tokens = s.tokens().load_tokens(Some(&c1), None).await.unwrap();
    // 30 authorizers + the component credential; half the authorizers have a token.
    assert_eq!(tokens.len(), 31);
    assert_eq!(tokens.iter().filter(|t| t.token.is_some()).count(), 15);
    assert_eq!(s.tokens().load_tokens(None, None).await.unwrap().len(), 52);
    let components = s
        .tokens()
        .load_tokens(None, Some(CredentialKind::Component))
        .await
        .unwrap();
    assert_eq!(components.len(), 2);
    assert!(
        components
            .iter()
            .all(|t| t.credential.kind == CredentialKind::Component)
    );
}

async fn the_cold_start_scan_gives_every_authorizer_the_state_the_full_load_gives(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let c1 = component("wxcomp0001");
    let c2 = component("wxcomp0002");
    save_thirty_and_twenty(s.as_ref(), &v, &c1, &c2).await;
    // One revoked with a reason, one with an appsecret on file for its fallback.
    let revoked = appid("wxauth0003");
    s.authorizers()
        .set_authorizer_status(&StatusChange {
            component: c1.clone(),
            appid: revoked.clone(),
            status: AuthorizerStatus::Revoked,
            reason: Some("unauthorized event".into()),
            expected_generation: None,
            at: at(5),
        })
        .await
        .unwrap();
    let with_secret = appid("wxauth0004");
    let secret = v
        .seal(
            SecretSlot::AuthorizerAppsecret {
                component: &c2,
                appid: &with_secret,
            },
            b"appsecret",
        )
        .unwrap();
    assert!(
        s.authorizers()
            .set_authorizer_appsecret(&c2, &with_secret, Some(&secret), at(6))
            .await
            .unwrap()
    );

    let mut scanned = Vec::new();
    s.authorizers()
        .scan_authorizer_states(&mut |state| scanned.push(state))
        .await
        .unwrap();
    let key = |a: &AuthorizerState| (a.component.to_string(), a.appid.to_string());
    scanned.sort_by_key(key);
    let mut loaded: Vec<AuthorizerState> = s
        .authorizers()
        .load_authorizers(None)
        .await
        .unwrap()
        .iter()
        .map(AuthorizerState::of)
        .collect();
    loaded.sort_by_key(key);
    assert_eq!(scanned.len(), 50);
    assert_eq!(scanned, loaded);
    let find = |c: &wxtoken::model::ComponentAppid, a: &wxtoken::model::Appid| {
        scanned
            .iter()
            .find(|s| &s.component == c && &s.appid == a)
            .unwrap()
    };
    let r = find(&c1, &revoked);
    assert_eq!(r.status, AuthorizerStatus::Revoked);
    assert_eq!(r.status_reason.as_deref(), Some("unauthorized event"));
    assert!(find(&c2, &with_secret).has_appsecret);
    assert_eq!(scanned.iter().filter(|a| a.has_appsecret).count(), 1);
    assert_eq!(scanned.iter().filter(|a| a.token.is_some()).count(), 25);
    let t = find(&c1, &appid("wxauth0002")).token.as_ref().unwrap();
    assert_eq!(
        open_token(
            &v,
            &Credential::authorizer(&c1, &appid("wxauth0002")),
            &t.sealed
        ),
        "tok"
    );
}

async fn authorizer_pages_cover_every_authorizer_once(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let c = component("wxcomp0001");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    let writes: Vec<_> = (0..25)
        .map(|i| {
            authorization(
                &v,
                &c,
                &appid(&format!("wxa{i:03}")),
                "rt",
                None,
                Expected::Absent,
                0,
            )
        })
        .collect();
    s.authorizers().save_authorizations(&writes).await.unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .authorizers()
            .list_authorizers(&c, after.as_ref(), 10)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|r| r.appid.clone());
        seen.extend(page.into_iter().map(|r| r.appid));
    }
    let expected: Vec<_> = (0..25).map(|i| appid(&format!("wxa{i:03}"))).collect();
    assert_eq!(seen, expected);
}

async fn batched_authorizations_have_the_outcomes_of_one_by_one_writes(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let c = component("wxcomp0001");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    let (a, b, x, y) = (appid("wxa"), appid("wxb"), appid("wxx"), appid("wxy"));
    saved(
        s.authorizers()
            .save_authorization(&authorization(
                &v,
                &c,
                &b,
                "rt-b0",
                None,
                Expected::Absent,
                0,
            ))
            .await
            .unwrap(),
    );
    let w = |appid, rt: &str, expected| authorization(&v, &c, appid, rt, Some("tok"), expected, 1);
    let batch = vec![
        w(&a, "rt-a1", Expected::Absent),        // created
        w(&b, "rt-b1", Expected::Absent),        // exists: stale
        w(&x, "rt-x1", Expected::Absent),        // created
        w(&a, "rt-a2", Expected::Absent),        // same appid again: stale
        w(&a, "rt-a3", Expected::Generation(1)), // fenced on the first: lands
        w(&y, "rt-y1", Expected::Generation(0)), // never existed: missing
        w(&y, "rt-y2", Expected::Absent),        // created
    ];
    let outcomes = s.authorizers().save_authorizations(&batch).await.unwrap();
    assert_eq!(
        outcomes,
        vec![
            SaveOutcome::Saved { generation: 1 },
            SaveOutcome::Stale {
                current_generation: 1
            },
            SaveOutcome::Saved { generation: 1 },
            SaveOutcome::Stale {
                current_generation: 1
            },
            SaveOutcome::Saved { generation: 2 },
            SaveOutcome::Missing,
            SaveOutcome::Saved { generation: 1 },
        ]
    );
    for (appid, rt, g) in [
        (&a, "rt-a3", 2),
        (&b, "rt-b0", 1),
        (&x, "rt-x1", 1),
        (&y, "rt-y2", 1),
    ] {
        let rec = s
            .authorizers()
            .get_authorizer(&c, appid)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                open_rt(&v, &c, appid, &rec.refresh_token).as_str(),
                rec.generation
            ),
            (rt, g)
        );
        let cred = Credential::authorizer(&c, appid);
        let tok = s.tokens().get_token(&cred).await.unwrap().unwrap();
        assert_eq!(tok.generation, g);
        assert_eq!(
            tok.token.is_some(),
            appid != &b,
            "b kept its state: no token"
        );
    }
    // Every refresh token of the batch is in the history, landed or not.
    let hist = |appid| {
        let s = s.clone();
        let v = &v;
        let c = c.clone();
        async move {
            s.authorizers()
                .refresh_token_history(&c, appid)
                .await
                .unwrap()
                .iter()
                .map(|e| (open_rt(v, &c, appid, &e.refresh_token), e.applied))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        hist(&a).await,
        vec![
            ("rt-a1".into(), true),
            ("rt-a2".into(), false),
            ("rt-a3".into(), true)
        ]
    );
    assert_eq!(
        hist(&b).await,
        vec![("rt-b0".into(), true), ("rt-b1".into(), false)]
    );
    assert_eq!(
        hist(&y).await,
        vec![("rt-y1".into(), false), ("rt-y2".into(), true)]
    );
}

async fn appsecret_fallback_is_stored_sealed_and_can_be_cleared(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let c = component("wxcomp0001");
    let a = appid("wxauth0001");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    let slot = SecretSlot::AuthorizerAppsecret {
        component: &c,
        appid: &a,
    };
    let mut w = authorization(&v, &c, &a, "rt-0", None, Expected::Absent, 0);
    w.appsecret = Some(v.seal(slot, b"appsecret-1").unwrap());
    saved(s.authorizers().save_authorization(&w).await.unwrap());
    // A re-authorization without an appsecret keeps the stored one.
    saved(
        s.authorizers()
            .save_authorization(&authorization(
                &v,
                &c,
                &a,
                "rt-1",
                None,
                Expected::Generation(1),
                1,
            ))
            .await
            .unwrap(),
    );
    let rec = s
        .authorizers()
        .get_authorizer(&c, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        v.open(slot, rec.appsecret.as_ref().unwrap())
            .unwrap()
            .as_slice(),
        b"appsecret-1"
    );

    // The fallback token (stable_token with the appsecret) carries no refresh token.
    let cred = Credential::authorizer(&c, &a);
    let mut t = crate::harness::store::access_token(&v, &cred, "fallback-at", 2);
    t.source = TokenSource::StableToken;
    let r = RefreshResult {
        credential: cred.clone(),
        expected_generation: 2,
        access_token: t,
        refresh_token: None,
        at: at(2),
    };
    assert_eq!(
        s.tokens().save_refresh_result(&r).await.unwrap(),
        SaveOutcome::Saved { generation: 3 }
    );
    assert_eq!(
        s.authorizers()
            .refresh_token_history(&c, &a)
            .await
            .unwrap()
            .len(),
        2
    );

    assert!(
        s.authorizers()
            .set_authorizer_appsecret(&c, &a, None, at(3))
            .await
            .unwrap()
    );
    assert!(
        s.authorizers()
            .get_authorizer(&c, &a)
            .await
            .unwrap()
            .unwrap()
            .appsecret
            .is_none()
    );
    assert!(
        !s.authorizers()
            .set_authorizer_appsecret(&c, &appid("wxnobody"), None, at(3))
            .await
            .unwrap()
    );
}

/// Puts one value in every sealed column, under `v`.
async fn fill_every_column(s: &dyn Store, v: &Vault, n: usize) {
    let c = component("wxcomp0001");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    let t = v
        .seal(SecretSlot::Ticket { component: &c }, b"ticket@@@x")
        .unwrap();
    s.components().record_ticket(&c, &t, at(1)).await.unwrap();
    let cred = Credential::component(&c);
    let mut tok = crate::harness::store::access_token(v, &cred, "component-at", 0);
    tok.source = TokenSource::ComponentToken;
    saved(
        s.tokens()
            .save_refresh_result(&RefreshResult {
                credential: cred,
                expected_generation: 0,
                access_token: tok,
                refresh_token: None,
                at: at(0),
            })
            .await
            .unwrap(),
    );
    for i in 0..n {
        let a = appid(&format!("wxauth{i:04}"));
        let mut w = authorization(
            v,
            &c,
            &a,
            &format!("rt-{i}"),
            Some(&format!("at-{i}")),
            Expected::Absent,
            0,
        );
        w.appsecret = Some(
            v.seal(
                SecretSlot::AuthorizerAppsecret {
                    component: &c,
                    appid: &a,
                },
                format!("as-{i}").as_bytes(),
            )
            .unwrap(),
        );
        saved(s.authorizers().save_authorization(&w).await.unwrap());
        saved(
            s.tokens()
                .save_refresh_result(&refresh(
                    v,
                    &c,
                    &a,
                    1,
                    &format!("at2-{i}"),
                    &format!("rt2-{i}"),
                    1,
                ))
                .await
                .unwrap(),
        );
    }
    let d = appid("wxdirect01");
    s.direct()
        .upsert_direct_account(&DirectAccountWrite {
            component: c.clone(),
            appid: d.clone(),
            kind: AppKind::OfficialAccount,
            appsecret: v
                .seal(
                    SecretSlot::DirectAppsecret {
                        component: &c,
                        appid: &d,
                    },
                    b"direct-secret",
                )
                .unwrap(),
            at: at(0),
        })
        .await
        .unwrap();
    let key = "ev-1";
    s.events()
        .record_event(&NewEvent {
            component: c.clone(),
            dedupe_key: key.into(),
            info_type: "authorized".into(),
            appid: None,
            payload: v
                .seal(
                    SecretSlot::EventPayload {
                        component: &c,
                        dedupe_key: key,
                    },
                    b"payload",
                )
                .unwrap(),
            received_at: at(0),
        })
        .await
        .unwrap();
}

/// Opens every sealed value in the store with `v` (fails if any does not open).
async fn open_everything(s: &dyn Store, v: &Vault) -> usize {
    let mut n = 0;
    let never = wxtoken::model::KeyId::parse("none").unwrap();
    for column in SealedColumn::ALL {
        for cell in s
            .keys()
            .sealed_cells(column, &never, 1_000_000)
            .await
            .unwrap()
        {
            v.open(cell.key.slot(), &cell.sealed)
                .unwrap_or_else(|e| panic!("{column:?} {:?}: {e}", cell.key));
            n += 1;
        }
    }
    n
}

async fn rotation_reseals_every_secret_and_retires_the_old_key(h: &Harness) {
    let s = &h.store;
    let old = MasterKey::generate();
    let new = MasterKey::generate();
    let v_old = Vault::new(&old, &[]);
    v_old.verify(s.as_ref()).await.unwrap();
    fill_every_column(s.as_ref(), &v_old, 12).await;
    let before = open_everything(s.as_ref(), &v_old).await;
    // ticket + component token + 12 × (rt, at, appsecret, 2 history) + direct + event
    assert_eq!(before, 2 + 12 * 5 + 2);

    let v_both = Vault::new(&new, std::slice::from_ref(&old));
    let mut reports = Vec::new();
    let report = vault::rotate(s.as_ref(), &v_both, 5, &mut |p| reports.push(p))
        .await
        .unwrap();
    assert_eq!(report.resealed, before as u64);
    assert_eq!(report.retired, vec![old.id().clone()]);
    assert_eq!(report.remaining, vec![(new.id().clone(), before as u64)]);
    assert!(!reports.is_empty());
    assert!(
        reports
            .iter()
            .any(|p| p.column == SealedColumn::RefreshTokenHistory)
    );

    // Every value now opens with the new key alone, and the old key may be dropped.
    let v_new = Vault::new(&new, &[]);
    v_new.verify(s.as_ref()).await.unwrap();
    assert_eq!(open_everything(s.as_ref(), &v_new).await, before);
    let c = component("wxcomp0001");
    let a = appid("wxauth0003");
    let rec = s
        .authorizers()
        .get_authorizer(&c, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(open_rt(&v_new, &c, &a, &rec.refresh_token), "rt2-3");
    // Running it again is a no-op.
    let again = vault::rotate(s.as_ref(), &v_new, 5, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(again.resealed, 0);
    assert!(again.retired.is_empty());
}

async fn rotation_while_another_task_keeps_writing_loses_nothing(h: &Harness) {
    let s = h.store.clone();
    let old = MasterKey::generate();
    let new = MasterKey::generate();
    let v_old = Vault::new(&old, &[]);
    v_old.verify(s.as_ref()).await.unwrap();
    fill_every_column(s.as_ref(), &v_old, 40).await;

    // Servers are restarted with new primary + old first, then rotation runs while they write.
    let v_both = Arc::new(Vault::new(&new, std::slice::from_ref(&old)));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (s, v, stop) = (s.clone(), v_both.clone(), stop.clone());
        tokio::spawn(async move {
            let c = component("wxcomp0001");
            let mut writes = 0u64;
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) || writes < 20 {
                let a = appid(&format!("wxauth{:04}", i % 40));
                let g = s
                    .authorizers()
                    .get_authorizer(&c, &a)
                    .await
                    .unwrap()
                    .unwrap()
                    .generation;
                let r = refresh(
                    &v,
                    &c,
                    &a,
                    g,
                    &format!("at-w{writes}"),
                    &format!("rt-w{writes}"),
                    10,
                );
                saved(s.tokens().save_refresh_result(&r).await.unwrap());
                writes += 1;
                i += 7;
            }
            writes
        })
    };
    let report = vault::rotate(s.as_ref(), &v_both, 7, &mut |_| {})
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let writes = writer.await.unwrap();
    assert!(writes >= 20);
    assert_eq!(report.retired, vec![old.id().clone()]);

    let v_new = Vault::new(&new, &[]);
    v_new.verify(s.as_ref()).await.unwrap();
    let total = open_everything(s.as_ref(), &v_new).await;
    // Every value is under the new key; nothing was lost (each write added one history row).
    let counts = s.keys().count_sealed_by_key().await.unwrap();
    assert_eq!(counts, vec![(new.id().clone(), total as u64)]);
    assert_eq!(
        s.authorizers()
            .count_refresh_token_history(None)
            .await
            .unwrap(),
        40 * 2 + writes
    );
    // The last write to each authorizer is its current refresh token.
    let c = component("wxcomp0001");
    for rec in s.authorizers().load_authorizers(Some(&c)).await.unwrap() {
        let hist = s
            .authorizers()
            .refresh_token_history(&c, &rec.appid)
            .await
            .unwrap();
        let last = hist.last().unwrap();
        assert_eq!(
            open_rt(&v_new, &c, &rec.appid, &rec.refresh_token),
            open_rt(&v_new, &c, &rec.appid, &last.refresh_token)
        );
    }
}

async fn wrong_master_key_is_refused_at_open(h: &Harness) {
    let right = MasterKey::generate();
    Vault::new(&right, &[])
        .verify(h.store.as_ref())
        .await
        .unwrap();
    fill_every_column(h.store.as_ref(), &Vault::new(&right, &[]), 2).await;
    h.store.close().await;

    let reopened = h.reopen().await;
    let wrong = MasterKey::generate();
    let err = Vault::new(&wrong, &[])
        .verify(reopened.as_ref())
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::WrongKey { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(wrong.id().as_str()) && msg.contains(right.id().as_str()),
        "{msg}"
    );
    // Nothing was recorded for the wrong key: the right key still verifies alone.
    Vault::new(&right, &[])
        .verify(reopened.as_ref())
        .await
        .unwrap();
    assert_eq!(reopened.keys().key_checks().await.unwrap().len(), 1);
    reopened.close().await;
}

async fn old_key_removed_before_rotation_finished_is_refused(h: &Harness) {
    let s = &h.store;
    let old = MasterKey::generate();
    let new = MasterKey::generate();
    let v_old = Vault::new(&old, &[]);
    v_old.verify(s.as_ref()).await.unwrap();
    fill_every_column(s.as_ref(), &v_old, 2).await;
    Vault::new(&new, std::slice::from_ref(&old))
        .verify(s.as_ref())
        .await
        .unwrap();
    let err = Vault::new(&new, &[]).verify(s.as_ref()).await.unwrap_err();
    match err {
        VaultError::MissingKey { key_id } => assert_eq!(&key_id, old.id()),
        other => panic!("{other}"),
    }
}

async fn retired_key_is_refused_as_primary_and_is_retired_only_when_unused(h: &Harness) {
    let s = &h.store;
    let old = MasterKey::generate();
    let new = MasterKey::generate();
    let v_old = Vault::new(&old, &[]);
    v_old.verify(s.as_ref()).await.unwrap();
    fill_every_column(s.as_ref(), &v_old, 2).await;
    // Values are still sealed under the old key: the store refuses to retire it.
    assert!(!s.keys().retire_key(old.id(), at(0)).await.unwrap());
    assert!(
        s.keys()
            .key_checks()
            .await
            .unwrap()
            .iter()
            .all(|c| c.retired_at.is_none())
    );

    let v_both = Vault::new(&new, std::slice::from_ref(&old));
    let report = vault::rotate(s.as_ref(), &v_both, 100, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(report.retired, vec![old.id().clone()]);

    // A server restarted with the retired key as primary (with or without the new one) is refused
    // before it can seal anything under it.
    for v in [
        Vault::new(&old, std::slice::from_ref(&new)),
        Vault::new(&old, &[]),
    ] {
        match v.verify(s.as_ref()).await.unwrap_err() {
            VaultError::RetiredPrimary { key_id } => assert_eq!(&key_id, old.id()),
            other => panic!("{other}"),
        }
    }
    let msg = Vault::new(&old, &[])
        .verify(s.as_ref())
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("keys rotate"), "{msg}");
    // The way out the message names: rotate onto a fresh key.
    let fresh = MasterKey::generate();
    let v_fresh = Vault::new(&fresh, &[new.clone(), old.clone()]);
    let report = vault::rotate(s.as_ref(), &v_fresh, 100, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(report.retired, vec![new.id().clone()]);
    Vault::new(&fresh, &[]).verify(s.as_ref()).await.unwrap();
}

async fn newer_schema_is_refused_naming_both_versions(h: &Harness) {
    h.store.close().await;
    h.fake_future_migration(29_991_231_000_000).await;
    let err = match wxtoken::store::open(&h.url).await {
        Ok(_) => panic!("a newer schema was accepted"),
        Err(e) => e,
    };
    match &err {
        StoreError::SchemaTooNew { database, binary } => {
            assert_eq!(*database, 29_991_231_000_000);
            assert!(*binary < *database);
            let msg = err.to_string();
            assert!(
                msg.contains(&database.to_string()) && msg.contains(&binary.to_string()),
                "{msg}"
            );
        }
        other => panic!("{other}"),
    }
}

async fn writes_for_an_unregistered_component_are_refused(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let c = component("wxnotregistered");
    let a = appid("wxauth0001");
    let t = v.seal(SecretSlot::Ticket { component: &c }, b"t").unwrap();
    assert!(matches!(
        s.components().record_ticket(&c, &t, at(0)).await,
        Err(StoreError::InvalidInput(_))
    ));
    let err = s
        .authorizers()
        .save_authorization(&authorization(&v, &c, &a, "rt", None, Expected::Absent, 0))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Constraint { .. }), "{err:?}");
    assert!(
        !err.is_transient(),
        "a constraint does not pass by retrying"
    );
    assert!(
        s.authorizers()
            .get_authorizer(&c, &a)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn in_memory_sqlite_keeps_its_data_across_pooled_calls() {
    let s = wxtoken::store::open("sqlite::memory:").await.unwrap();
    let v = verified_vault(s.as_ref()).await;
    let c = component("wxcomp0001");
    let a = appid("wxauth0001");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    saved(
        s.authorizers()
            .save_authorization(&authorization(
                &v,
                &c,
                &a,
                "rt-1",
                None,
                Expected::Absent,
                0,
            ))
            .await
            .unwrap(),
    );
    let rec = s
        .authorizers()
        .get_authorizer(&c, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(open_rt(&v, &c, &a, &rec.refresh_token), "rt-1");
    assert_eq!(s.backend(), wxtoken::store::Backend::Sqlite);
    s.ping().await.unwrap();
}

#[tokio::test]
async fn unknown_url_scheme_is_refused_without_echoing_the_url() {
    let err = match wxtoken::store::open("mysql://user:hunter2@db/x").await {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    };
    assert!(matches!(err, StoreError::UnsupportedUrl { .. }));
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[tokio::test]
async fn unreachable_database_is_reported_unavailable() {
    // Port 1 on localhost: connection refused.
    let options = wxtoken::store::StoreOptions {
        max_connections: 1,
        acquire_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let err = match wxtoken::store::open_with("postgres://postgres@127.0.0.1:1/x", &options).await {
        Ok(_) => panic!("connected"),
        Err(e) => e,
    };
    assert!(err.is_unavailable() && err.is_transient(), "{err:?}");
    assert_eq!(
        err.to_string(),
        "cannot open PostgreSQL at 127.0.0.1:1 (database x): Connection refused (os error 111)"
    );
}

async fn opposite_order_batches_written_concurrently_never_deadlock(h: &Harness) {
    let s = h.store.clone();
    let s2 = h.reopen().await;
    let v = verified_vault(s.as_ref()).await;
    let c = component("wxcomp0001");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    let n = 16;
    let appids = authorized(s.as_ref(), &v, &c, n).await;
    let mut generation = 1u64;
    for round in 0..30i64 {
        let batch = |tag: &str| -> Vec<RefreshResult> {
            appids
                .iter()
                .map(|a| {
                    refresh(
                        &v,
                        &c,
                        a,
                        generation,
                        &format!("at-{tag}-{round}"),
                        &format!("rt-{tag}-{round}"),
                        round,
                    )
                })
                .collect()
        };
        let forward = batch("f");
        let mut backward = batch("b");
        backward.reverse();
        let t1 = {
            let s = s.clone();
            tokio::spawn(async move { s.tokens().save_refresh_results(&forward).await })
        };
        let t2 = {
            let s = s2.clone();
            tokio::spawn(async move { s.tokens().save_refresh_results(&backward).await })
        };
        let o1 = t1.await.unwrap().expect("forward batch");
        let o2 = t2.await.unwrap().expect("backward batch");
        assert_eq!((o1.len(), o2.len()), (n, n));
        let next = generation + 1;
        for (i, a) in appids.iter().enumerate() {
            // Outcomes come back in each caller's order: position i of the forward batch and
            // position n-1-i of the backward one are both this appid.
            let winner = match (o1[i], o2[n - 1 - i]) {
                (
                    SaveOutcome::Saved { generation: g },
                    SaveOutcome::Stale { current_generation },
                ) if g == next && current_generation == next => "f",
                (
                    SaveOutcome::Stale { current_generation },
                    SaveOutcome::Saved { generation: g },
                ) if g == next && current_generation == next => "b",
                other => panic!("round {round}, {a}: {other:?}"),
            };
            let rec = s
                .authorizers()
                .get_authorizer(&c, a)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(rec.generation, next);
            let cred = Credential::authorizer(&c, a);
            assert_eq!(
                open_token(&v, &cred, &rec.token.unwrap().sealed),
                format!("at-{winner}-{round}")
            );
        }
        generation = next;
    }
    s2.close().await;
}

async fn readded_direct_account_continues_its_generation_so_a_stale_write_cannot_land(h: &Harness) {
    let s = &h.store;
    let v = verified_vault(s.as_ref()).await;
    let c = component("wxcomp0001");
    let a = appid("wxdirect01");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    let account = DirectAccountWrite {
        component: c.clone(),
        appid: a.clone(),
        kind: AppKind::OfficialAccount,
        appsecret: v
            .seal(
                SecretSlot::DirectAppsecret {
                    component: &c,
                    appid: &a,
                },
                b"secret",
            )
            .unwrap(),
        at: at(0),
    };
    let cred = Credential::direct(&c, &a);
    let result = |g: u64, tok: &str| {
        let mut t = crate::harness::store::access_token(&v, &cred, tok, 0);
        t.source = TokenSource::StableToken;
        RefreshResult {
            credential: cred.clone(),
            expected_generation: g,
            access_token: t,
            refresh_token: None,
            at: at(0),
        }
    };
    assert_eq!(
        s.direct().upsert_direct_account(&account).await.unwrap(),
        UpsertOutcome::Created
    );
    assert_eq!(
        saved(
            s.tokens()
                .save_refresh_result(&result(0, "at-1"))
                .await
                .unwrap()
        ),
        1
    );
    assert_eq!(
        saved(
            s.tokens()
                .save_refresh_result(&result(1, "at-2"))
                .await
                .unwrap()
        ),
        2
    );
    // A refresh computed from generation 2 is still in flight when the account is removed and
    // added again.
    for _ in 0..2 {
        assert!(s.direct().remove_direct_account(&c, &a).await.unwrap());
        assert_eq!(
            s.direct().upsert_direct_account(&account).await.unwrap(),
            UpsertOutcome::Created
        );
    }
    let rec = s
        .direct()
        .get_direct_account(&c, &a)
        .await
        .unwrap()
        .unwrap();
    assert!(
        rec.generation > 2,
        "generation restarted: {}",
        rec.generation
    );
    for stale in [0, 1, 2] {
        assert_eq!(
            s.tokens()
                .save_refresh_result(&result(stale, "late"))
                .await
                .unwrap(),
            SaveOutcome::Stale {
                current_generation: rec.generation
            }
        );
    }
    assert!(
        s.tokens()
            .get_token(&cred)
            .await
            .unwrap()
            .unwrap()
            .token
            .is_none()
    );
    assert_eq!(
        saved(
            s.tokens()
                .save_refresh_result(&result(rec.generation, "fresh"))
                .await
                .unwrap()
        ),
        rec.generation + 1
    );
}

async fn force_refresh_budget_is_kept_across_reopen_and_replaced_in_place(h: &Harness) {
    use wxtoken::model::ForceBudgetRecord;
    let s = &h.store;
    let c = component("wxcomp0001");
    s.components().ensure_component(&c, at(0)).await.unwrap();
    assert!(s.direct().load_force_budgets().await.unwrap().is_empty());
    let direct = Credential::direct(&c, &appid("wxdirect0001"));
    let other = Credential::direct(&c, &appid("wxdirect0002"));
    let first = ForceBudgetRecord {
        credential: direct.clone(),
        day_start: at(1000),
        used: 1,
        last: Some(at(1000)),
    };
    s.direct().save_force_budget(&first).await.unwrap();
    let fresh = ForceBudgetRecord {
        credential: other.clone(),
        day_start: at(500),
        used: 0,
        last: None,
    };
    s.direct().save_force_budget(&fresh).await.unwrap();
    let second = ForceBudgetRecord {
        used: 2,
        last: Some(at(40_000)),
        ..first.clone()
    };
    s.direct().save_force_budget(&second).await.unwrap();

    let reopened = h.reopen().await;
    let budgets = reopened.direct().load_force_budgets().await.unwrap();
    assert_eq!(budgets, vec![second, fresh]);
    reopened.close().await;
}

async fn refresh_lease_goes_to_one_replica_until_released_or_expired(h: &Harness) {
    let s1 = h.store.clone();
    let s2 = h.reopen().await;
    let c = component("wxcomp0001");
    s1.components().ensure_component(&c, at(0)).await.unwrap();
    let cred = wxtoken::store::LeaseKey::refresh(&Credential::authorizer(&c, &appid("wxauth0001")));
    let (t0, t10, t20) = (at(0), at(10_000), at(20_000));
    // Many replicas racing for one free lease: exactly one wins.
    let mut racers = Vec::new();
    for i in 0..8 {
        let store = if i % 2 == 0 { s1.clone() } else { s2.clone() };
        let cred = cred.clone();
        racers.push(tokio::spawn(async move {
            store
                .leases()
                .try_lease(&cred, &format!("r{i}"), t0, t10)
                .await
                .unwrap()
        }));
    }
    let mut won = 0;
    for r in racers {
        won += usize::from(r.await.unwrap());
    }
    assert_eq!(won, 1, "exactly one replica gets a free lease");
    // Renewal by its holder; refused to others while live; taken over once it ran out.
    for i in 0..8 {
        s1.leases()
            .release_lease(&cred, &format!("r{i}"))
            .await
            .unwrap();
    }
    assert!(s1.leases().try_lease(&cred, "a", t0, t10).await.unwrap());
    assert!(
        s1.leases().try_lease(&cred, "a", t0, t10).await.unwrap(),
        "renewal"
    );
    assert!(!s2.leases().try_lease(&cred, "b", t0, t10).await.unwrap());
    s2.leases().release_lease(&cred, "b").await.unwrap();
    assert!(
        !s2.leases().try_lease(&cred, "b", t0, t10).await.unwrap(),
        "others cannot release it"
    );
    assert!(
        s2.leases().try_lease(&cred, "b", t20, t20).await.unwrap(),
        "expired: taken over"
    );
    s2.leases().release_lease(&cred, "b").await.unwrap();
    assert!(
        s1.leases().try_lease(&cred, "a", t0, t10).await.unwrap(),
        "released: free again"
    );
}

async fn every_replica_hears_each_committed_generation_and_a_resume_after_a_cut(h: &Harness) {
    use wxtoken::store::TokenChange;
    let Some(mut changes) = h.reopen().await.tokens().token_changes().await.unwrap() else {
        assert_eq!(h.kind, Kind::Sqlite, "PostgreSQL streams changes");
        return;
    };
    let v = Arc::new(verified_vault(h.store.as_ref()).await);
    let c = component("wxcomp0001");
    let a = appid("wxauth0001");
    h.store
        .components()
        .ensure_component(&c, at(0))
        .await
        .unwrap();
    let g = saved(
        h.store
            .authorizers()
            .save_authorization(&authorization(
                &v,
                &c,
                &a,
                "rt-0",
                None,
                Expected::Absent,
                0,
            ))
            .await
            .unwrap(),
    );
    let g2 = saved(
        h.store
            .tokens()
            .save_refresh_result(&refresh(&v, &c, &a, g, "at-1", "rt-1", 1))
            .await
            .unwrap(),
    );
    let cred = Credential::authorizer(&c, &a);
    let mut heard = Vec::new();
    while heard.last() != Some(&g2) {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), changes.next())
            .await
            .expect("a change within 10 s")
            .unwrap();
        match next {
            TokenChange::Changed {
                credential,
                generation,
            } if credential == cred => heard.push(generation),
            TokenChange::Changed { .. } => {}
            TokenChange::Resumed => panic!("no interruption yet"),
        }
    }
    assert!(
        heard.contains(&g),
        "the authorization's generation was heard: {heard:?}"
    );
    // Cutting every other session (the listener's included) is reported as a resume.
    h.exec(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .await
    .unwrap();
    let resumed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match changes.next().await {
                Ok(TokenChange::Resumed) => return,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    assert!(resumed.is_ok(), "the stream resumes after the cut");
    let g3 = saved(
        h.store
            .tokens()
            .save_refresh_result(&refresh(&v, &c, &a, g2, "at-2", "rt-2", 2))
            .await
            .unwrap(),
    );
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), changes.next())
            .await
            .expect("a change within 10 s after the resume");
        if let Ok(TokenChange::Changed { generation, .. }) = next
            && generation == g3
        {
            break;
        }
    }
}
