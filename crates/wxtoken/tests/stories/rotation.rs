//! A rotated refresh token is never lost when a process dies after WeChat rotated it (issue 20).
//!
//! The simulator rotates the refresh token on every `api_authorizer_token` call (the old one
//! works 5 s more), and holds many answers back 100–500 ms *after* issuing them, so a kill -9
//! lands between "WeChat rotated the refresh token" and "wxtoken stored it" again and again.
//! Authorizers arrive by real pushes (signed, encrypted `authorized` events and code exchanges).
//! Clients follow the README snippet: read, use at `getcallbackip`, and on 40001/42001 report
//! the token and retry once.
//!
//! - `rotated_refresh_tokens_survive_replica_kills_after_rotation_on_postgresql`: three `serve`
//!   replicas on one PostgreSQL database, `lease_ttl` 5 s, a kill and restart every few seconds,
//!   every database session cut once. Needs `WXTOKEN_TEST_PG_URL` (skipped without it, a failure
//!   under `CI=true`).
//! - `rotated_refresh_tokens_survive_kills_mid_refresh_on_sqlite`: one process on SQLite, killed
//!   and restarted the same way.
//!
//! Both check that every stored refresh token is the one the simulator accepts, no authorizer
//! was marked `needs_reauth`, no client call failed after the retry, `api_query_auth` ran once
//! per authorization code, and no alert was raised.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::harness::cluster::{Cluster, Replica, ServeConfig, generate_key};
use parking_lot::Mutex;
use secrecy::ExposeSecret;
use wechat_sim::{
    AccountKind, AccountSpec, ComponentSpec, FaultSet, RefreshTokenPolicy, SimConfig, SimHandle,
};
use wxtoken::model::{Appid, AuthorizerStatus, ComponentAppid, SecretSlot};
use wxtoken::vault::{MasterKey, Vault};

const COMPONENT: &str = "wxrotatecomponent1";
const COMPONENT_SECRET: &str = "rotate-component-secret";
const PUSH_TOKEN: &str = "rotatetoken";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const AUTHORIZERS: usize = 200;
const CLIENTS: usize = 8;
/// How long a client keeps asking while wxtoken answers 503 or cannot be reached (a restart)
/// before it counts the call as failed, beyond the time a killed process is kept down on
/// purpose (the test's own outage, which no retry can shorten).
const CLIENT_PATIENCE: Duration = Duration::from_secs(10);

/// Both tests run processes and measure what they saw: never both at once.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn sim_config() -> SimConfig {
    SimConfig {
        token_lifetime: Duration::from_secs(20),
        overlap: Duration::from_secs(5),
        refresh_token_policy: RefreshTokenPolicy::Rotate,
        ticket_interval: Duration::ZERO,
        seed: Some(20),
        ..SimConfig::default()
    }
}

fn config(db_url: &str, sim_url: &str) -> String {
    ServeConfig {
        component: COMPONENT,
        component_secret: COMPONENT_SECRET,
        push_token: PUSH_TOKEN,
        aes_key: AES_KEY,
        db_url,
        sim_url,
        lease_ttl: "5s",
        upstream_timeout: "2s",
    }
    .toml()
}

/// The faults of the run: 10 % errcode -1, 10 % latency, and most answers held
/// 100–500 ms after the token (and the new refresh token) was issued.
fn faults() -> FaultSet {
    serde_json::from_value(serde_json::json!({
        "seed": 20,
        "rules": [
            {"endpoint": "api_authorizer_token", "probability": 0.1,
             "fault": {"kind": "errcode", "errcode": -1}},
            {"endpoint": "api_authorizer_token", "probability": 0.1,
             "fault": {"kind": "latency",
                       "latency": {"distribution": "uniform", "min_ms": 100, "max_ms": 800}}},
            {"endpoint": "api_authorizer_token", "probability": 0.8,
             "fault": {"kind": "hold_answer",
                       "latency": {"distribution": "uniform", "min_ms": 100, "max_ms": 500}}},
        ]
    }))
    .expect("fault set")
}

struct Scenario {
    replicas: usize,
    chaos: Duration,
    kill_every: Duration,
    /// How long a killed process stays down. Longer than the simulator's 5 s overlap, the
    /// refresh token it sent is refused (61023) when the restarted process uses it.
    downtime: Duration,
    /// Cut every database session once, midway (PostgreSQL).
    cut: bool,
}

#[derive(Default)]
struct Tally {
    /// [`CLIENT_PATIENCE`] plus the scenario's downtime.
    patience: Duration,
    calls: AtomicU64,
    ok_first_time: AtomicU64,
    ok_after_report: AtomicU64,
    reads_unavailable: AtomicU64,
    unreachable: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// What a client's read of wxtoken came to.
enum Read {
    Token(String),
    Failed(String),
}

/// GET (or POST, to report `used`) until wxtoken answers with a token, moving to another
/// replica when one cannot be reached and backing off on 503, as the README says; gives up
/// after `tally.patience`. A 410 is a failure at once.
async fn read_token(
    http: &reqwest::Client,
    addrs: &Mutex<Vec<String>>,
    key: &str,
    appid: &str,
    used: Option<&str>,
    tally: &Tally,
) -> Read {
    let give_up = Instant::now() + tally.patience;
    let mut backoff = Duration::from_millis(50);
    loop {
        if Instant::now() > give_up {
            return Read::Failed(format!("no token within {:?}", tally.patience));
        }
        let addr = {
            let a = addrs.lock();
            a[rand::random_range(0..a.len())].clone()
        };
        let request = match used {
            None => http.get(format!("http://{addr}/v1/tokens/{appid}")),
            Some(token) => http
                .post(format!("http://{addr}/v1/tokens/{appid}/invalidate"))
                .json(&serde_json::json!({ "access_token": token })),
        };
        let answer = match request.bearer_auth(key).send().await {
            Ok(a) => a,
            Err(_) => {
                tally.unreachable.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let status = answer.status().as_u16();
        let Ok(body) = answer.json::<serde_json::Value>().await else {
            // Killed while answering.
            tally.unreachable.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match status {
            200 => return Read::Token(body["access_token"].as_str().unwrap_or("").to_owned()),
            503 => {
                tally.reads_unavailable.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            other => return Read::Failed(format!("{other} {}", body["error"]["code"])),
        }
    }
}

/// `getcallbackip` with `token`: WeChat's errcode (0 = accepted).
async fn use_token(http: &reqwest::Client, sim_url: &str, token: &str) -> i64 {
    match http
        .get(format!("{sim_url}/cgi-bin/getcallbackip"))
        .query(&[("access_token", token)])
        .send()
        .await
    {
        Ok(r) => r
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["errcode"].as_i64())
            .unwrap_or(0),
        Err(_) => -2,
    }
}

/// One client call, as the README snippet makes it.
async fn client_call(
    http: &reqwest::Client,
    addrs: &Mutex<Vec<String>>,
    key: &str,
    sim_url: &str,
    appid: &str,
    tally: &Tally,
    t0: Instant,
) {
    tally.calls.fetch_add(1, Ordering::Relaxed);
    let fail = |why: String| {
        tally.failures.lock().push(format!(
            "t+{:.1}s {appid}: {why}",
            t0.elapsed().as_secs_f64()
        ));
    };
    let token = match read_token(http, addrs, key, appid, None, tally).await {
        Read::Token(t) => t,
        Read::Failed(why) => return fail(format!("read: {why}")),
    };
    match use_token(http, sim_url, &token).await {
        0 => {
            tally.ok_first_time.fetch_add(1, Ordering::Relaxed);
            return;
        }
        40001 | 42001 => {}
        other => return fail(format!("first use: errcode {other}")),
    }
    let retry = match read_token(http, addrs, key, appid, Some(&token), tally).await {
        Read::Token(t) => t,
        Read::Failed(why) => return fail(format!("report: {why}")),
    };
    match use_token(http, sim_url, &retry).await {
        0 => {
            tally.ok_after_report.fetch_add(1, Ordering::Relaxed);
        }
        other => fail(format!(
            "the retry after the report: errcode {other} (same token: {})",
            retry == token
        )),
    }
}

async fn stored_tokens_match(
    sim: &SimHandle,
    store: &dyn wxtoken::store::Store,
    vault: &Vault,
    appids: &[String],
) -> Vec<String> {
    let component = ComponentAppid::parse(COMPONENT).expect("component");
    let mut mismatched = Vec::new();
    for appid in appids {
        let held = sim
            .control()
            .authorizer(COMPONENT, appid)
            .expect("sim authorizer")
            .refresh_token;
        let a = Appid::parse(appid).expect("appid");
        let Some(record) = store
            .authorizers()
            .get_authorizer(&component, &a)
            .await
            .expect("store")
        else {
            mismatched.push(format!("{appid} (not stored)"));
            continue;
        };
        let stored = vault
            .open_string(
                SecretSlot::RefreshToken {
                    component: &component,
                    appid: &a,
                },
                &record.refresh_token,
            )
            .expect("open refresh token");
        if stored.expose_secret() != held {
            mismatched.push(appid.clone());
        }
    }
    mismatched
}

async fn run(h: crate::harness::store::Harness, scenario: Scenario) {
    let started = Instant::now();
    let sim = wechat_sim::Simulator::start(sim_config())
        .await
        .expect("simulator");
    let key = generate_key();
    let cluster = Cluster::new(key.clone());
    cluster.write_config(&config(&h.url, sim.base_url()));
    sim.control()
        .create_component(ComponentSpec {
            component_appid: Some(COMPONENT.into()),
            component_appsecret: Some(COMPONENT_SECRET.into()),
            token: Some(PUSH_TOKEN.into()),
            encoding_aes_key: Some(AES_KEY.into()),
            push_url: None,
        })
        .expect("component");
    // The migrations run before any replica starts (as `serve` would on its own).
    let api_key = cluster
        .run_ok(&["clients", "add", "rotation", "--appid", "*"])
        .trim()
        .to_owned();

    let logs = Arc::new(Mutex::new(Vec::new()));
    let mut replicas: Vec<Replica> = (0..scenario.replicas)
        .map(|_| cluster.start(&logs))
        .collect();
    let addrs: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(
        replicas.iter().map(|r| r.internal.clone()).collect(),
    ));
    sim.control()
        .set_push_url(
            COMPONENT,
            Some(format!("http://{}/wechat/events", replicas[0].public)),
        )
        .expect("push url");
    sim.control().push_ticket(Some(COMPONENT)).expect("ticket");
    sim.control().set_faults(faults()).expect("faults");

    // 200 merchants approve the consent page: WeChat pushes `authorized` with a code to one
    // replica; the replicas exchange each code.
    let mut appids = Vec::with_capacity(AUTHORIZERS);
    for i in 0..AUTHORIZERS {
        let account = sim
            .control()
            .create_account(AccountSpec {
                kind: if i % 2 == 0 {
                    AccountKind::OfficialAccount
                } else {
                    AccountKind::MiniProgram
                },
                appid: None,
                appsecret: None,
            })
            .expect("account");
        sim.control()
            .authorize(&account.appid, COMPONENT)
            .expect("authorize");
        appids.push(account.appid);
    }
    sim.control()
        .wait_pushes_finished(1 + AUTHORIZERS as u64)
        .await;
    let component = ComponentAppid::parse(COMPONENT).expect("component");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut with_token = 0;
        for appid in &appids {
            let a = Appid::parse(appid).expect("appid");
            if let Some(r) = h
                .store
                .authorizers()
                .get_authorizer(&component, &a)
                .await
                .expect("store")
                && r.token.is_some()
            {
                with_token += 1;
            }
        }
        if with_token == AUTHORIZERS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {with_token} of {AUTHORIZERS} authorizers got a token within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let warm = started.elapsed();

    // Clients, while replicas are killed -9 and restarted.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally {
        patience: CLIENT_PATIENCE + scenario.downtime,
        ..Tally::default()
    });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(12))
        .build()
        .expect("http client");
    let t0 = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (stop, tally, http, addrs, appids, api_key, sim_url) = (
            Arc::clone(&stop),
            Arc::clone(&tally),
            http.clone(),
            Arc::clone(&addrs),
            appids.clone(),
            api_key.clone(),
            sim.base_url().to_owned(),
        );
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let appid = &appids[rand::random_range(0..appids.len())];
                client_call(&http, &addrs, &api_key, &sim_url, appid, &tally, t0).await;
            }
        }));
    }
    let mut kills = 0;
    let mut kills_while_held = 0;
    let mut cut = !scenario.cut;
    while t0.elapsed() < scenario.chaos {
        // A kill lands at a random moment, not in step with the refresh schedule.
        let jitter = rand::random_range(0..scenario.kill_every.as_millis() as u64 / 2);
        tokio::time::sleep(scenario.kill_every / 2 + Duration::from_millis(jitter)).await;
        if !cut && t0.elapsed() >= scenario.chaos / 2 {
            let n = h
                .exec(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                )
                .await
                .expect("cut the database sessions");
            eprintln!(
                "t+{:.1}s cut every database session ({n} rows)",
                t0.elapsed().as_secs_f64()
            );
            cut = true;
            continue;
        }
        // Kill while answers are held: WeChat has rotated those refresh tokens and the
        // replica holding the call has not learned the new one (with three replicas, two held
        // answers make it likely that one is the victim's).
        let held_before = tokio::time::timeout(
            scenario.kill_every,
            sim.control()
                .wait_answers_held(replicas.len().min(2) as u64),
        )
        .await
        .is_ok();
        kills_while_held += u32::from(held_before);
        let victim = rand::random_range(0..replicas.len());
        if replicas.len() > 1 {
            let mut a = addrs.lock();
            a[victim] = a[(victim + 1) % replicas.len()].clone();
        }
        eprintln!(
            "t+{:.1}s kill -9 replica {victim}",
            t0.elapsed().as_secs_f64()
        );
        replicas[victim].kill();
        kills += 1;
        tokio::time::sleep(scenario.downtime).await;
        replicas[victim] = cluster.start(&logs);
        addrs.lock()[victim] = replicas[victim].internal.clone();
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }
    let chaos = t0.elapsed();
    sim.control().clear_faults();

    // No more kills: every authorizer refreshes at least once more (a token lives 20 s), which
    // is when a refresh token lost to the last kills is recovered. Then a graceful stop.
    let vault = Vault::new(&MasterKey::parse(&key).expect("master key"), &[]);
    let settle = Instant::now() + Duration::from_secs(30);
    while !stored_tokens_match(&sim, &*h.store, &vault, &appids)
        .await
        .is_empty()
        && Instant::now() < settle
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for r in &replicas {
        r.terminate();
    }
    for r in &mut replicas {
        r.wait();
    }

    let mismatched = stored_tokens_match(&sim, &*h.store, &vault, &appids).await;
    let mut needs_reauth = Vec::new();
    for appid in &appids {
        let a = Appid::parse(appid).expect("appid");
        let r = h
            .store
            .authorizers()
            .get_authorizer(&component, &a)
            .await
            .expect("store")
            .expect("stored");
        if r.status != AuthorizerStatus::Active {
            needs_reauth.push(format!(
                "{appid}: {} {:?}",
                r.status.as_str(),
                r.status_reason
            ));
        }
    }
    let stats = sim.control().stats();
    let query_auth = &stats.endpoints["api_query_auth"];
    let refreshes = &stats.endpoints["api_authorizer_token"];
    let listings = &stats.endpoints["api_get_authorizer_list"];
    let log_text = logs.lock().concat();
    let alerts: Vec<&str> = log_text
        .lines()
        .filter(|l| l.contains("wxtoken::alerts: alert"))
        .collect();
    let recovered = log_text
        .matches("refresh token recovered from a fresh api_get_authorizer_list")
        .count();
    let refused = stats.errors(wechat_sim::Api::AuthorizerToken, 61023);
    let failures = tally.failures.lock().clone();
    eprintln!(
        "rotation ({} replica(s)): warm-up {:.1}s, chaos {:.1}s, total {:.1}s; {kills} kills, \
         {kills_while_held} while answers were held\n\
         clients: {} calls, {} ok at once, {} ok after a report, {} failed; \
         {} answers 503 and {} unreachable on the way (retried)\n\
         api_authorizer_token: {} calls, {} ok, errors {:?}; {refused} refused a stored \
         refresh token (61023), {recovered} recovered from a fresh listing; \
         api_get_authorizer_list: {} calls\n\
         api_query_auth: {} calls, errors {:?}, for {AUTHORIZERS} codes",
        scenario.replicas,
        warm.as_secs_f64(),
        chaos.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        tally.calls.load(Ordering::Relaxed),
        tally.ok_first_time.load(Ordering::Relaxed),
        tally.ok_after_report.load(Ordering::Relaxed),
        failures.len(),
        tally.reads_unavailable.load(Ordering::Relaxed),
        tally.unreachable.load(Ordering::Relaxed),
        refreshes.calls,
        refreshes.ok,
        refreshes.errors,
        listings.calls,
        query_auth.calls,
        query_auth.errors,
    );
    assert!(
        mismatched.is_empty(),
        "{} stored refresh tokens are not the one WeChat accepts: {:?}",
        mismatched.len(),
        &mismatched[..mismatched.len().min(10)]
    );
    assert!(
        needs_reauth.is_empty(),
        "authorizers marked though WeChat still had them: {needs_reauth:?}"
    );
    assert!(
        failures.is_empty(),
        "{} client calls failed after the documented retry: {:#?}",
        failures.len(),
        &failures[..failures.len().min(20)]
    );
    assert!(
        tally.ok_first_time.load(Ordering::Relaxed) > 1000,
        "the clients barely ran"
    );
    assert_eq!(
        query_auth.calls, AUTHORIZERS as u64,
        "api_query_auth calls for {AUTHORIZERS} authorization codes"
    );
    assert!(alerts.is_empty(), "alerts were raised: {alerts:#?}");
    assert!(
        refused + recovered as u64 > 0,
        "no kill landed between a rotation and its store write: the test proved nothing"
    );
    assert!(
        !log_text.contains("access_token=") && !log_text.contains("refreshtoken@@@"),
        "a token reached a log line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_refresh_tokens_survive_replica_kills_after_rotation_on_postgresql() {
    // Three (or one) real servers under kills: never beside the other load tests, or both
    // starve (a replica's unstored answers pile up, and each kill loses more of them).
    let _alone = crate::harness::alone().await;
    let _serial = SERIAL.lock().await;
    let Some(h) = crate::harness::store::Harness::postgres().await else {
        eprintln!(
            "skipped: set {} to run the replica tests",
            crate::harness::store::PG_ENV
        );
        return;
    };
    run(
        h,
        Scenario {
            replicas: 3,
            chaos: Duration::from_secs(75),
            kill_every: Duration::from_secs(8),
            downtime: Duration::ZERO,
            cut: true,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_refresh_tokens_survive_kills_mid_refresh_on_sqlite() {
    // Three (or one) real servers under kills: never beside the other load tests, or both
    // starve (a replica's unstored answers pile up, and each kill loses more of them).
    let _alone = crate::harness::alone().await;
    let _serial = SERIAL.lock().await;
    run(
        crate::harness::store::Harness::sqlite().await,
        Scenario {
            replicas: 1,
            chaos: Duration::from_secs(50),
            kill_every: Duration::from_secs(6),
            downtime: Duration::from_secs(6),
            cut: false,
        },
    )
    .await;
}
