//! Several replicas on one PostgreSQL database (issue 7).
//!
//! - `three_replicas_under_kills_a_database_cut_and_upstream_faults_never_hand_out_a_stale_token`:
//!   the chaos test. Three real `wxtoken serve` processes, the simulator in this process with 20 s
//!   tokens, 500 imported authorizers, clients reading from random replicas and using each token
//!   at the simulator's `getcallbackip`, while a random replica is killed (SIGKILL) and restarted
//!   every few seconds, every database session is cut once, and 10% of the token calls fail (-1)
//!   and 10% time out. Bounded by `CHAOS_RUN` plus warm-up (about 2 minutes in all).
//! - `a_refresh_on_one_replica_reaches_every_other_replica_quickly`: propagation latency, printed
//!   (docs/BENCHMARKS.md, "Replica propagation").
//!
//! Both need `WXTOKEN_TEST_PG_URL`; without it they are skipped, except under `CI=true`, where they
//! fail. They run one at a time (they measure time).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::harness::cluster::{Cluster, Replica, ServeConfig, generate_key};
use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use wechat_sim::{ComponentSpec, FaultSet, SimConfig, SimHandle};
use wxtoken::app::{App, RunningApp};
use wxtoken::config::{ComponentConfig, Config, Sources};
use wxtoken::model::{Appid, ComponentAppid, Credential, SecretSlot};
use wxtoken::store::LeaseKey;
use wxtoken::vault::{MasterKey, Vault};

const COMPONENT: &str = "wxchaoscomponent01";
const COMPONENT_SECRET: &str = "chaos-component-secret";
const PUSH_TOKEN: &str = "chaostoken";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const AUTHORIZERS: usize = 500;
const REPLICAS: usize = 3;
/// How long the chaos lasts (kills, the cut, faults, clients).
const CHAOS_RUN: Duration = Duration::from_secs(75);
const KILL_EVERY: Duration = Duration::from_secs(5);
const CLIENTS: usize = 12;
/// Tokens a kill -9 may drop between WeChat's answer and their write: `refresh.concurrency`.
const KILL_LOSS: u64 = 16;

/// The two tests measure time: never both at once.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn sim_config() -> SimConfig {
    SimConfig {
        token_lifetime: Duration::from_secs(20),
        // A token WeChat issued to a call that timed out (the 1.3 s latency fault against a 1 s
        // client timeout) supersedes the served one, which then lives only `overlap`. With 20 %
        // faults, a few of 1,000 authorizers fail four refreshes in a row in a run, so a 5 s
        // overlap failed this test on main too (3 of 4 runs on a loaded 2-core machine); WeChat's
        // real overlap is 5 minutes, longer than any backoff. Here a superseded token lives to
        // its expiry, so what the test catches is wxtoken serving a token past it, or one it
        // should have known was replaced. Serving through supersession by a timed-out call is
        // a product gap, noted for its own issue.
        overlap: Duration::from_secs(20),
        ticket_interval: Duration::ZERO,
        seed: Some(7),
        ..SimConfig::default()
    }
}

fn component_spec(push_url: Option<String>) -> ComponentSpec {
    ComponentSpec {
        component_appid: Some(COMPONENT.into()),
        component_appsecret: Some(COMPONENT_SECRET.into()),
        token: Some(PUSH_TOKEN.into()),
        encoding_aes_key: Some(AES_KEY.into()),
        push_url,
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// The replicas' config: the chaos component, `db_url`, the simulator at `sim_url`.
fn chaos_config(db_url: &str, sim_url: &str) -> String {
    ServeConfig {
        component: COMPONENT,
        component_secret: COMPONENT_SECRET,
        push_token: PUSH_TOKEN,
        aes_key: AES_KEY,
        db_url,
        sim_url,
        lease_ttl: "3s",
        upstream_timeout: "1s",
    }
    .toml()
}

/// One import row (JSON lines) for an authorizer the simulator authorized in bulk.
fn import_line(a: &wechat_sim::BulkAuthorizer) -> String {
    serde_json::json!({
        "appid": a.authorizer_appid,
        "refresh_token": a.authorizer_refresh_token,
        "kind": "official_account",
    })
    .to_string()
}

/// `WXTOKEN_TEST_PG_URL` and a fresh database, or `None` (skip; a failure under `CI=true`).
async fn database() -> Option<crate::harness::store::Harness> {
    crate::harness::store::Harness::postgres().await
}

// ---------------------------------------------------------------------------------------------
// The chaos test

#[derive(Default)]
struct ClientTally {
    reads_ok: AtomicU64,
    reads_unavailable: AtomicU64,
    reads_other: AtomicU64,
    unreachable: AtomicU64,
    uses_ok: AtomicU64,
    /// 40001/42001 from getcallbackip: a stale or invalid token was handed out.
    rejected: AtomicU64,
    uses_other: AtomicU64,
    rejections: Mutex<Vec<String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_under_kills_a_database_cut_and_upstream_faults_never_hand_out_a_stale_token()
 {
    let _alone = crate::harness::alone().await;
    let _serial = SERIAL.lock().await;
    let Some(h) = database().await else {
        eprintln!(
            "skipped: set {} to run the replica tests",
            crate::harness::store::PG_ENV
        );
        return;
    };
    let started = Instant::now();
    let sim = wechat_sim::Simulator::start(sim_config())
        .await
        .expect("simulator");
    let key = generate_key();
    let cluster = Cluster::new(key.clone());
    cluster.write_config(&chaos_config(&h.url, sim.base_url()));

    // 500 authorizers at the simulator, imported into the store, and a client key.
    sim.control()
        .create_component(component_spec(None))
        .expect("component");
    let authorizers = sim
        .control()
        .bulk_authorize(
            COMPONENT,
            AUTHORIZERS,
            wechat_sim::AccountKind::OfficialAccount,
        )
        .expect("bulk authorize");
    let appids: Vec<String> = authorizers
        .iter()
        .map(|a| a.authorizer_appid.clone())
        .collect();
    let import = cluster.dir.path().join("authorizers.jsonl");
    {
        let mut f = std::fs::File::create(&import).expect("create import file");
        for a in &authorizers {
            writeln!(f, "{}", import_line(a)).expect("write");
        }
    }
    cluster.run_ok(&["authorizers", "import", import.to_str().expect("path")]);
    let api_key = cluster
        .run_ok(&["clients", "add", "chaos", "--appid", "*"])
        .trim()
        .to_owned();

    // Three replicas; the simulator pushes its ticket to the first.
    let logs = Arc::new(Mutex::new(Vec::new()));
    let mut replicas: Vec<Replica> = (0..REPLICAS).map(|_| cluster.start(&logs)).collect();
    // Where clients read: a killed replica's entry points at a live one until it is back.
    let addrs: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(
        replicas.iter().map(|r| r.internal.clone()).collect(),
    ));
    let push_url = format!("http://{}/wechat/events", replicas[0].public);
    sim.control()
        .set_push_url(COMPONENT, Some(push_url))
        .expect("push url");
    sim.control().push_ticket(Some(COMPONENT)).expect("ticket");

    // Warm-up: every authorizer has a stored token.
    let pool = sqlx::PgPool::connect(&h.url).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM access_tokens WHERE kind = 'authorizer' AND token_ct IS NOT NULL",
        )
        .fetch_one(&pool)
        .await
        .expect("count");
        if n as usize == AUTHORIZERS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {AUTHORIZERS} authorizers got a token within 60 s; the replicas said:\n{}",
            logs.lock().concat()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let warm = started.elapsed();

    let generations = |pool: sqlx::PgPool| async move {
        let (g,): (i64,) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(generation), 0) AS BIGINT) FROM access_tokens \
             WHERE kind = 'authorizer'",
        )
        .fetch_one(&pool)
        .await
        .expect("generations");
        g
    };
    sim.control().reset_stats();
    let generations_before = generations(pool.clone()).await;
    let faults: FaultSet = serde_json::from_value(serde_json::json!({
        "seed": 7,
        "rules": [
            {"endpoint": "api_authorizer_token", "probability": 0.1,
             "fault": {"kind": "errcode", "errcode": -1}},
            {"endpoint": "api_authorizer_token", "probability": 0.1,
             "fault": {"kind": "latency", "latency": {"distribution": "fixed", "ms": 1300}}},
            {"endpoint": "api_component_token", "probability": 0.1,
             "fault": {"kind": "errcode", "errcode": -1}},
            {"endpoint": "api_component_token", "probability": 0.1,
             "fault": {"kind": "latency", "latency": {"distribution": "fixed", "ms": 1300}}},
        ]
    }))
    .expect("fault set");
    sim.control().set_faults(faults).expect("faults");

    // Clients: read from a random replica, use the token at once.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(ClientTally::default());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let mut clients = Vec::new();
    let t0 = Instant::now();
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
                let (addr, appid) = {
                    let r = addrs.lock();
                    (
                        r[rand::random_range(0..r.len())].clone(),
                        appids[rand::random_range(0..appids.len())].clone(),
                    )
                };
                let read = http
                    .get(format!("http://{addr}/v1/tokens/{appid}"))
                    .bearer_auth(&api_key)
                    .send()
                    .await;
                let read = match read {
                    Ok(r) => r,
                    Err(_) => {
                        // Killed a moment ago.
                        tally.unreachable.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                match read.status().as_u16() {
                    200 => {}
                    503 => {
                        tally.reads_unavailable.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    _ => {
                        tally.reads_other.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
                let Ok(body) = read.json::<serde_json::Value>().await else {
                    tally.unreachable.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                tally.reads_ok.fetch_add(1, Ordering::Relaxed);
                let token = body["access_token"].as_str().unwrap_or_default().to_owned();
                let used = http
                    .get(format!("{sim_url}/cgi-bin/getcallbackip"))
                    .query(&[("access_token", token.as_str())])
                    .send()
                    .await;
                let Ok(used) = used else {
                    tally.uses_other.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let answer: serde_json::Value = used.json().await.unwrap_or_default();
                match answer["errcode"].as_i64().unwrap_or(0) {
                    0 => {
                        tally.uses_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    code @ (40001 | 42001) => {
                        tally.rejected.fetch_add(1, Ordering::Relaxed);
                        // Why, as the simulator sees it (never the token itself).
                        let why: serde_json::Value = match http
                            .get(format!("{sim_url}/_sim/validate"))
                            .query(&[("access_token", token.as_str())])
                            .send()
                            .await
                        {
                            Ok(r) => r.json().await.unwrap_or_default(),
                            Err(_) => serde_json::Value::Null,
                        };
                        tally.rejections.lock().push(format!(
                            "t+{:.1}s {code} ({}) for {appid} from {addr}: generation {}, \
                             expires_at {}, refresh_at {}, now {}",
                            t0.elapsed().as_secs_f64(),
                            why["reason"],
                            body["generation"],
                            body["expires_at"],
                            body["refresh_at"],
                            wxtoken::model::Timestamp::now().as_millis() / 1000,
                        ));
                    }
                    _ => {
                        tally.uses_other.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    // Chaos: a kill -9 and restart every KILL_EVERY; every database session cut once, midway.
    let chaos_start = Instant::now();
    let mut kills = 0;
    let mut cut = false;
    while chaos_start.elapsed() < CHAOS_RUN {
        tokio::time::sleep(KILL_EVERY).await;
        if !cut && chaos_start.elapsed() >= CHAOS_RUN / 2 {
            let cut_sessions = h
                .exec(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                )
                .await
                .expect("cut the database sessions");
            eprintln!(
                "t+{:.1}s cut every database session ({cut_sessions} rows)",
                t0.elapsed().as_secs_f64()
            );
            cut = true;
            continue;
        }
        let victim = rand::random_range(0..REPLICAS);
        {
            let mut a = addrs.lock();
            a[victim] = a[(victim + 1) % REPLICAS].clone();
        }
        eprintln!(
            "t+{:.1}s kill -9 replica {victim}",
            t0.elapsed().as_secs_f64()
        );
        replicas[victim].kill();
        kills += 1;
        replicas[victim] = cluster.start(&logs);
        addrs.lock()[victim] = replicas[victim].internal.clone();
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }
    let fired: Vec<u64> = sim.control().faults().iter().map(|r| r.fired).collect();
    sim.control().clear_faults();
    let chaos = chaos_start.elapsed();

    // Let the last refreshes land, then stop the replicas gracefully.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = sim.control().stats();
    let generations_after = generations(pool.clone()).await;
    for r in &replicas {
        r.terminate();
    }
    for r in &mut replicas {
        r.wait();
    }

    // Every refresh token the simulator accepts is the one in the store.
    let vault = Vault::new(&MasterKey::parse(&key).expect("master key"), &[]);
    let store = &h.store;
    let component = ComponentAppid::parse(COMPONENT).expect("component");
    let mut mismatched = Vec::new();
    for appid in &appids {
        let held = sim
            .control()
            .authorizer(COMPONENT, appid)
            .expect("sim authorizer")
            .refresh_token;
        let a = Appid::parse(appid).expect("appid");
        let record = store
            .authorizers()
            .get_authorizer(&component, &a)
            .await
            .expect("store")
            .expect("stored authorizer");
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

    let endpoint = &calls.endpoints["api_authorizer_token"];
    let landed = u64::try_from(generations_after - generations_before).expect("generations grow");
    let ratio = endpoint.ok as f64 / landed as f64;
    let log_text = logs.lock().concat();
    // For a post-mortem: WXTOKEN_CHAOS_LOG=FILE keeps every replica's log lines.
    if let Ok(path) = std::env::var("WXTOKEN_CHAOS_LOG") {
        std::fs::write(path, &log_text).expect("write the replicas' log");
    }
    eprintln!(
        "chaos: warm-up {:.1}s, chaos {:.1}s, total {:.1}s; {kills} kills, 1 database cut\n\
         clients: {} reads ok, {} unavailable (503), {} other, {} unreachable; \
         {} uses ok, {} rejected (40001/42001), {} other\n\
         api_authorizer_token: {} calls answered, {} issued a token, {:?} errors, {:?} faults; \
         {landed} tokens landed in the store; issued/landed = {ratio:.4}\n\
         api_component_token: {} calls, {} ok\n\
         faults fired (authorizer -1, authorizer timeout, component -1, component timeout): \
         {fired:?}",
        warm.as_secs_f64(),
        chaos.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        tally.reads_ok.load(Ordering::Relaxed),
        tally.reads_unavailable.load(Ordering::Relaxed),
        tally.reads_other.load(Ordering::Relaxed),
        tally.unreachable.load(Ordering::Relaxed),
        tally.uses_ok.load(Ordering::Relaxed),
        tally.rejected.load(Ordering::Relaxed),
        tally.uses_other.load(Ordering::Relaxed),
        endpoint.calls,
        endpoint.ok,
        endpoint.errors,
        endpoint.faults,
        calls.endpoints["api_component_token"].calls,
        calls.endpoints["api_component_token"].ok,
    );
    let rejections = tally.rejections.lock().clone();
    assert!(
        rejections.is_empty(),
        "clients were handed stale or invalid tokens: {:#?}",
        &rejections[..rejections.len().min(30)]
    );
    assert!(
        tally.uses_ok.load(Ordering::Relaxed) > 1000,
        "the clients barely ran"
    );
    assert!(
        mismatched.is_empty(),
        "{} refresh tokens differ between the simulator and the store: {:?}",
        mismatched.len(),
        &mismatched[..mismatched.len().min(10)]
    );
    // Duplicate refreshes would show as tokens issued that never landed. So does a kill -9 between
    // WeChat's answer and the group commit that writes it: a kill drops what its replica had not
    // written yet (on a machine whose database commits take ~10 ms, about ten tokens per kill;
    // on a faster one, none). Allowed: 1% plus KILL_LOSS per kill; two replicas refreshing the
    // same credentials would be thousands over.
    let lost = endpoint.ok.saturating_sub(landed);
    let allowed = landed / 100 + kills * KILL_LOSS;
    assert!(
        lost <= allowed,
        "api_authorizer_token issued {lost} tokens more than landed ({ratio:.4} per token \
         landed; allowed: 1% and {KILL_LOSS} per kill = {allowed})"
    );
    assert!(
        !log_text.contains("access_token=") && !log_text.contains("refreshtoken@@@"),
        "a token reached a log line"
    );
}

// ---------------------------------------------------------------------------------------------
// Propagation

async fn start_app(
    h: &crate::harness::store::Harness,
    sim: &SimHandle,
    vault_key: &str,
) -> RunningApp {
    start_app_at(&h.url, sim, vault_key).await
}

async fn start_app_at(db_url: &str, sim: &SimHandle, vault_key: &str) -> RunningApp {
    start_app_with(db_url, sim, vault_key, |_| {}).await
}

async fn start_app_with(
    db_url: &str,
    sim: &SimHandle,
    vault_key: &str,
    adjust: impl FnOnce(&mut Config),
) -> RunningApp {
    crate::harness::init_logs();
    let mut config = Config::from_sources(Sources::default()).expect("defaults");
    config.storage.url = SecretString::from(db_url.to_owned());
    config.server.gateway_listen = None;
    config.storage.max_connections = 4;
    config.storage.connect_timeout = Duration::from_secs(1);
    config.storage.lease_ttl = Duration::from_secs(3);
    config.refresh.backoff_max = Duration::from_secs(1);
    config.upstream.base_url = sim.base_url().parse().expect("sim url");
    config.refresh.serve_margin = Duration::from_secs(10);
    config.components = vec![ComponentConfig {
        appid: COMPONENT.into(),
        appsecret: SecretString::from(COMPONENT_SECRET),
        token: SecretString::from(PUSH_TOKEN),
        encoding_aes_key: SecretString::from(AES_KEY),
        previous_encoding_aes_key: None,
    }];
    adjust(&mut config);
    let vault = Vault::new(&MasterKey::parse(vault_key).expect("key"), &[]);
    let public = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let internal = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    App::open_and_start(&config, vault, public, internal)
        .await
        .expect("start replica")
}

/// The simulator (2-hour tokens) with the component and `n` authorizers, a master key, and the
/// store holding the component, its ticket and the authorizers (no tokens yet).
async fn prepare(
    h: &crate::harness::store::Harness,
    n: usize,
) -> (SimHandle, String, Vec<Credential>) {
    let sim = SimConfig {
        token_lifetime: Duration::from_secs(7200),
        ..sim_config()
    };
    prepare_with(h, n, sim).await
}

/// [`prepare`] with the simulator configured as `sim` says.
async fn prepare_with(
    h: &crate::harness::store::Harness,
    n: usize,
    sim: SimConfig,
) -> (SimHandle, String, Vec<Credential>) {
    let sim = wechat_sim::Simulator::start(sim).await.expect("simulator");
    sim.control()
        .create_component(component_spec(None))
        .expect("component");
    let authorizers = sim
        .control()
        .bulk_authorize(COMPONENT, n, wechat_sim::AccountKind::OfficialAccount)
        .expect("bulk");
    let key = generate_key();
    let vault = Vault::new(&MasterKey::parse(&key).expect("key"), &[]);
    vault.verify(&*h.store).await.expect("vault");
    let component = ComponentAppid::parse(COMPONENT).expect("component");
    h.store
        .components()
        .ensure_component(&component, wxtoken::model::Timestamp::now())
        .await
        .expect("component");
    let ticket = sim.control().latest_ticket(COMPONENT).expect("ticket");
    h.store
        .components()
        .record_ticket(
            &component,
            &vault
                .seal(
                    SecretSlot::Ticket {
                        component: &component,
                    },
                    ticket.as_bytes(),
                )
                .expect("seal"),
            wxtoken::model::Timestamp::now(),
        )
        .await
        .expect("ticket");
    let rows: Vec<String> = authorizers.iter().map(import_line).collect();
    let mut input = std::io::Cursor::new(rows.join("\n").into_bytes());
    let report = wxtoken::transfer::import(
        &*h.store,
        &vault,
        &component,
        &mut input,
        &wxtoken::transfer::ImportOptions::default(),
        &mut |_| {},
    )
    .await
    .expect("import");
    assert!(report.errors.is_empty(), "import: {:?}", report.errors);

    let credentials = authorizers
        .iter()
        .map(|a| {
            Credential::authorizer(
                &component,
                &Appid::parse(&a.authorizer_appid).expect("appid"),
            )
        })
        .collect();
    (sim, key, credentials)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_on_one_replica_reaches_every_other_replica_quickly() {
    let _alone = crate::harness::alone().await;
    let _serial = SERIAL.lock().await;
    let Some(h) = database().await else {
        eprintln!(
            "skipped: set {} to run the replica tests",
            crate::harness::store::PG_ENV
        );
        return;
    };
    let (sim, key, credentials) = prepare(&h, 50).await;
    let apps = [
        start_app(&h, &sim, &key).await,
        start_app(&h, &sim, &key).await,
        start_app(&h, &sim, &key).await,
    ];
    // Every replica holds every authorizer's first token.
    for app in &apps {
        for c in &credentials {
            let slot = app.engine.cache().slot(c);
            let mut rx = slot.subscribe();
            tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|g| *g > 0))
                .await
                .expect("first token within 30 s")
                .expect("slot");
        }
    }

    let rounds = 200;
    let mut samples = Vec::with_capacity(rounds * 2);
    for round in 0..rounds {
        let c = &credentials[round % credentials.len()];
        let source = &apps[round % apps.len()];
        let others: Vec<_> = apps
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != round % apps.len())
            .map(|(_, a)| a.engine.cache().slot(c))
            .collect();
        let mut watches: Vec<_> = others.iter().map(|s| s.subscribe()).collect();
        let token = source.engine.refresh_now(c).await.expect("refresh");
        let published = Instant::now();
        let generation = token.generation;
        for rx in &mut watches {
            tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|g| *g >= generation))
                .await
                .expect("propagated within 10 s")
                .expect("slot");
            samples.push(published.elapsed());
        }
        source.engine.wait_stored(c).await;
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    eprintln!(
        "propagation over {} samples (refresh on one replica → new token in another's memory): \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        samples.len(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        samples.last().expect("samples").as_secs_f64() * 1e3,
    );
    for app in apps {
        app.shutdown().await.expect("shutdown");
    }
    assert!(
        pct(0.99) <= Duration::from_millis(100),
        "propagation p99 {:?} exceeds 100 ms",
        pct(0.99)
    );
}

/// The force budget is one per credential across replicas: a client reporting in a loop to
/// three replicas in turn gets no more forced refreshes than from one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reporting_loop_across_three_replicas_forces_at_most_one_refresh_per_min_force_interval()
{
    let _alone = crate::harness::alone().await;
    let _serial = SERIAL.lock().await;
    let Some(h) = database().await else {
        eprintln!(
            "skipped: set {} to run the replica tests",
            crate::harness::store::PG_ENV
        );
        return;
    };
    let (sim, key, credentials) = prepare(&h, 1).await;
    let appid = credentials[0].appid.to_string();
    let mut apps = Vec::new();
    for _ in 0..3 {
        apps.push(
            start_app_with(&h.url, &sim, &key, |c| {
                c.refresh.min_force_interval = Duration::from_secs(1);
                c.refresh.rogue_window = Duration::ZERO;
                c.server.report_rate = 1_000_000;
                c.server.report_burst = 1_000_000;
            })
            .await,
        );
    }
    let (_, client) = wxtoken::manage::create_client(
        &*h.store,
        "looping-svc",
        wxtoken::model::AppidGrant::Only(vec![credentials[0].appid.clone()]),
        false,
    )
    .await
    .expect("client");
    let api_key = client.key.expose_secret().to_owned();
    for app in &apps {
        let slot = app.engine.cache().slot(&credentials[0]);
        tokio::time::timeout(
            Duration::from_secs(30),
            slot.subscribe().wait_for(|g| *g > 0),
        )
        .await
        .expect("first token within 30 s")
        .expect("slot");
    }
    let http = reqwest::Client::new();
    sim.control().reset_stats();
    let started = Instant::now();
    for n in 0..2000 {
        let base = format!("http://{}", apps[n % apps.len()].internal_addr);
        let token: serde_json::Value = http
            .get(format!("{base}/v1/tokens/{appid}"))
            .bearer_auth(&api_key)
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("json");
        let answer = http
            .post(format!("{base}/v1/tokens/{appid}/invalidate"))
            .bearer_auth(&api_key)
            .json(&serde_json::json!({"access_token": token["access_token"]}))
            .send()
            .await
            .expect("report");
        assert_eq!(answer.status(), reqwest::StatusCode::OK);
    }
    let elapsed = started.elapsed();
    let stats = sim.control().stats_for(&appid);
    let calls = crate::guards::report_calls(&stats);
    let bound = elapsed.as_secs_f64().ceil() as u64 + 1;
    eprintln!(
        "2,000 report loops over 3 replicas in {:.1}s: {calls} upstream calls (bound {bound})",
        elapsed.as_secs_f64()
    );
    for app in apps {
        app.shutdown().await.expect("shutdown");
    }
    assert!(
        calls <= bound,
        "{calls} upstream calls in {elapsed:?}: the budget is not shared across replicas"
    );
    assert!(
        calls >= 1,
        "the first report of the current token refreshes"
    );
}

/// CLI changes reach every PostgreSQL replica within 2 s through the change feed (a revoked key
/// no longer waits out `server.key_cache_ttl`; a removed account answers 404 everywhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_changes_reach_every_postgresql_replica_within_two_seconds() {
    let _serial = SERIAL.lock().await;
    let Some(h) = database().await else {
        eprintln!(
            "skipped: set {} to run the replica tests",
            crate::harness::store::PG_ENV
        );
        return;
    };
    let (sim, key, _) = prepare(&h, 1).await;
    let apps = [
        start_app(&h, &sim, &key).await,
        start_app(&h, &sim, &key).await,
    ];
    let (_, client) = wxtoken::manage::create_client(
        &*h.store,
        "short-lived",
        wxtoken::model::AppidGrant::All,
        false,
    )
    .await
    .expect("client");
    let api_key = client.key.expose_secret().to_owned();
    let http = reqwest::Client::new();
    let status = |app: &RunningApp, path: String| {
        let request = http
            .get(format!("http://{}{path}", app.internal_addr))
            .bearer_auth(&api_key);
        async move { request.send().await.expect("answer").status() }
    };
    let cli = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wxtoken"));
        command
            .args(args)
            .args(["--storage-url", &h.url])
            .env("WXTOKEN_MASTER_KEY", &key)
            .env_remove("WXTOKEN_CONFIG")
            .env_remove("WXTOKEN_MASTER_KEY_OLD");
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().expect("the wxtoken binary runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Within 2 s on every replica, polled every 20 ms (a measurement, not synchronisation).
    async fn everywhere<F, Fut>(apps: &[RunningApp], check: F) -> Duration
    where
        F: Fn(&RunningApp) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let started = Instant::now();
        for app in apps {
            while !check(app).await {
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "not applied within 2 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        started.elapsed()
    }

    let account = sim
        .control()
        .create_account(wechat_sim::AccountSpec {
            kind: wechat_sim::AccountKind::OfficialAccount,
            appid: None,
            appsecret: None,
        })
        .expect("account");
    let path = format!("/v1/tokens/{}", account.appid);
    cli(
        &[
            "accounts",
            "add",
            &account.appid,
            "--kind",
            "official_account",
        ],
        &[("WXTOKEN_APPSECRET", &account.appsecret)],
    );
    let added = everywhere(&apps, |app| {
        let s = status(app, path.clone());
        async move { s.await == reqwest::StatusCode::OK }
    })
    .await;
    cli(&["accounts", "remove", &account.appid], &[]);
    let removed = everywhere(&apps, |app| {
        let s = status(app, path.clone());
        async move { s.await == reqwest::StatusCode::NOT_FOUND }
    })
    .await;
    cli(&["clients", "revoke", "short-lived"], &[]);
    let revoked = everywhere(&apps, |app| {
        let s = status(app, "/v1/component/token".into());
        async move { s.await == reqwest::StatusCode::UNAUTHORIZED }
    })
    .await;
    eprintln!(
        "CLI change → two PostgreSQL replicas: account added {added:?}, removed {removed:?}, \
         key revoked {revoked:?}"
    );
    for app in apps {
        app.shutdown().await.expect("shutdown");
    }
}

// ---------------------------------------------------------------------------------------------
// Events between replicas

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stored_authorization_event_is_applied_by_one_replica_and_its_code_exchanged_once_callbacks_included()
 {
    const MERCHANTS: usize = 30;
    let _serial = SERIAL.lock().await;
    let Some(h) = database().await else {
        eprintln!(
            "skipped: set {} to run the replica tests",
            crate::harness::store::PG_ENV
        );
        return;
    };
    let (sim, key, _) = prepare(&h, 0).await;
    let (a, b) = (
        start_app(&h, &sim, &key).await,
        start_app(&h, &sim, &key).await,
    );
    let component = ComponentAppid::parse(COMPONENT).expect("component");
    sim.control().reset_stats();
    // Each push reaches replica A (which stores it and starts a pass); replica B runs its own
    // passes over the stored events all the while, as its loop and its own pushes make it do.
    let done = Arc::new(AtomicBool::new(false));
    let b_passes = {
        let (engine, done) = (b.engine.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let mut passes = 0u32;
            while !done.load(Ordering::Relaxed) {
                engine.process_events().await.expect("replica B's pass");
                passes += 1;
                tokio::task::yield_now().await;
            }
            passes
        })
    };
    let (mut appids, mut codes) = (Vec::new(), Vec::new());
    for i in 0..MERCHANTS {
        let account = sim
            .control()
            .create_account(wechat_sim::AccountSpec {
                kind: wechat_sim::AccountKind::OfficialAccount,
                appid: None,
                appsecret: None,
            })
            .expect("account");
        let outcome = sim
            .control()
            .authorize(&account.appid, COMPONENT)
            .expect("authorize");
        let event = wechat::event::Event::Authorized(wechat::event::AuthorizationEvent {
            app_id: COMPONENT.into(),
            create_time: sim.control().now(),
            authorizer_appid: outcome.authorizer_appid.clone(),
            authorization_code: outcome.authorization_code.clone(),
            authorization_code_expired_time: outcome.authorization_code_expired_time,
            pre_auth_code: Some(outcome.pre_auth_code.clone()),
        });
        a.engine
            .ingest_push(&component, &event, &format!("push-{i}"))
            .await
            .expect("stored");
        codes.push(outcome.authorization_code.clone());
        appids.push(account.appid);
    }
    // Until every event is applied (a pass on A finishes what B left, and the other way round).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !h
        .store
        .events()
        .unprocessed_events(None, 100)
        .await
        .expect("events")
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "events still unapplied after 30 s"
        );
        a.engine.process_events().await.expect("replica A's pass");
    }
    done.store(true, Ordering::Relaxed);
    let passes = b_passes.await.expect("replica B");

    let stats = sim.control().stats();
    let query_auth = &stats.endpoints["api_query_auth"];
    assert_eq!(
        query_auth.calls, MERCHANTS as u64,
        "one api_query_auth per code ({passes} passes on replica B)"
    );
    assert!(
        query_auth.errors.is_empty(),
        "no code spent twice: {:?}",
        query_auth.errors
    );
    // The merchant's browser then reaches the page callback, on either replica: it learns the
    // account from the exchange already stored, without spending the code again.
    for (code, appid) in codes.iter().zip(&appids).take(5) {
        for replica in [&a, &b] {
            let got = replica
                .engine
                .authorize_code(&component, code)
                .await
                .expect("the callback after the push");
            assert_eq!(got.as_str(), appid);
        }
    }
    assert_eq!(
        sim.control().stats().endpoints["api_query_auth"].calls,
        MERCHANTS as u64,
        "no code exchanged again for its callback"
    );
    let vault = Vault::new(&MasterKey::parse(&key).expect("key"), &[]);
    for appid in &appids {
        let a = Appid::parse(appid).expect("appid");
        let record = h
            .store
            .authorizers()
            .get_authorizer(&component, &a)
            .await
            .expect("store")
            .expect("authorizer stored");
        let stored = vault
            .open_string(
                SecretSlot::RefreshToken {
                    component: &component,
                    appid: &a,
                },
                &record.refresh_token,
            )
            .expect("open");
        assert_eq!(
            stored.expose_secret(),
            sim.control()
                .authorizer(COMPONENT, appid)
                .expect("sim")
                .refresh_token
        );
    }
    a.shutdown().await.expect("shutdown");
    b.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_ready_only_once_it_holds_a_component_token_not_when_a_ticket_is_stored() {
    let _serial = SERIAL.lock().await;
    let Some(h) = database().await else {
        eprintln!(
            "skipped: set {} to run the replica tests",
            crate::harness::store::PG_ENV
        );
        return;
    };
    // Another replica stored the ticket; WeChat refuses this one every component token for now.
    let (sim, key, _) = prepare(&h, 0).await;
    sim.control()
        .set_faults(
            serde_json::from_value(serde_json::json!({
                "rules": [{"endpoint": "api_component_token",
                           "fault": {"kind": "errcode", "errcode": -1}}]
            }))
            .expect("faults"),
        )
        .expect("faults");
    let app = start_app(&h, &sim, &key).await;
    let http = reqwest::Client::new();
    let readiness = |app: &RunningApp| {
        let url = format!("http://{}/readyz", app.internal_addr);
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.expect("readyz");
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.expect("json"))
        }
    };
    let component = ComponentAppid::parse(COMPONENT).expect("component");
    let credential = Credential::component(&component);
    assert!(app.engine.refresh_now(&credential).await.is_err());
    let (status, body) = readiness(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"][format!("ticket:{COMPONENT}")], "ok");
    assert_ne!(body["checks"][format!("component_token:{COMPONENT}")], "ok");

    sim.control().clear_faults();
    app.engine
        .refresh_now(&credential)
        .await
        .expect("component token");
    let (status, body) = readiness(&app).await;
    assert_eq!(status, 200, "{body}");
    app.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// Losing the database

/// A TCP proxy in front of PostgreSQL that can be cut (every session dropped, new ones refused)
/// and restored.
struct Proxy {
    addr: std::net::SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let (up, _) = tokio::sync::watch::channel(true);
        let state = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut up = state.subscribe();
                if !*up.borrow() {
                    continue; // refused: dropped at once
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = up.wait_for(|u| !*u) => {}
                    }
                });
            }
        });
        Proxy { addr, up }
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

async fn ready(http: &reqwest::Client, app: &RunningApp) -> bool {
    http.get(format!("http://{}/readyz", app.internal_addr))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_loses_the_database_serves_what_it_holds_claims_nothing_and_recovers_by_itself()
 {
    let _serial = SERIAL.lock().await;
    let Some(h) = database().await else {
        eprintln!(
            "skipped: set {} to run the replica tests",
            crate::harness::store::PG_ENV
        );
        return;
    };
    let (sim, key, credentials) = prepare(&h, 5).await;
    let mut through_proxy = url::Url::parse(&h.url).expect("url");
    let target = format!(
        "{}:{}",
        through_proxy.host_str().expect("host"),
        through_proxy.port().unwrap_or(5432)
    );
    let proxy = Proxy::start(target).await;
    through_proxy
        .set_port(Some(proxy.addr.port()))
        .expect("port");
    let cut_off = start_app_at(through_proxy.as_str(), &sim, &key).await;
    let other = start_app(&h, &sim, &key).await;
    for app in [&cut_off, &other] {
        for c in &credentials {
            let mut rx = app.engine.cache().slot(c).subscribe();
            tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|g| *g > 0))
                .await
                .expect("first token within 30 s")
                .expect("slot");
        }
    }
    let http = reqwest::Client::new();
    assert!(ready(&http, &cut_off).await);
    let c = &credentials[0];
    let appid = c.appid.as_str();

    proxy.set_up(false);
    // Not ready (the probe's database check fails within connect_timeout), still serving.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready(&http, &cut_off).await {
        assert!(Instant::now() < deadline, "still ready 10 s after the cut");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = cut_off
        .engine
        .token(None, appid)
        .expect("served from memory");
    // Claims nothing: a refresh asked for now fails without calling WeChat.
    let calls = sim.control().stats().endpoints["api_authorizer_token"].calls;
    let refused = cut_off.engine.refresh_now(c).await;
    assert!(
        refused.is_err(),
        "no lease without the database: {refused:?}"
    );
    assert_eq!(
        sim.control().stats().endpoints["api_authorizer_token"].calls,
        calls,
        "no upstream call while the database is away"
    );
    assert_eq!(
        cut_off
            .engine
            .token(None, appid)
            .expect("still served")
            .generation,
        held.generation
    );
    // Meanwhile the other replica refreshes.
    let newer = other
        .engine
        .refresh_now(c)
        .await
        .expect("refresh elsewhere");
    other.engine.wait_stored(c).await;
    assert!(newer.generation > held.generation);

    // Back: the cut-off replica reloads what changed while it was away, and is ready again.
    proxy.set_up(true);
    let mut rx = cut_off.engine.cache().slot(c).subscribe();
    tokio::time::timeout(
        Duration::from_secs(15),
        rx.wait_for(|g| *g >= newer.generation),
    )
    .await
    .expect("caught up within 15 s of the database coming back")
    .expect("slot");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ready(&http, &cut_off).await {
        assert!(
            Instant::now() < deadline,
            "not ready 15 s after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And claims work again.
    let again = cut_off
        .engine
        .refresh_now(c)
        .await
        .expect("refresh after recovery");
    assert!(again.generation > newer.generation);
    cut_off.engine.wait_stored(c).await;
    for app in [cut_off, other] {
        app.shutdown().await.expect("shutdown");
    }
}

// ---------------------------------------------------------------------------------------------
// The lease between replicas

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_refused_the_lease_gets_the_holders_token_and_takes_over_once_a_dead_holders_lease_runs_out()
 {
    use wxtoken::model::{NewAccessToken, RefreshResult, SaveOutcome, Timestamp, TokenSource};
    let _serial = SERIAL.lock().await;
    let Some(h) = database().await else {
        eprintln!(
            "skipped: set {} to run the replica tests",
            crate::harness::store::PG_ENV
        );
        return;
    };
    let (sim, key, credentials) = prepare(&h, 2).await;
    let app = start_app(&h, &sim, &key).await;
    let c = &credentials[0];
    let mut rx = app.engine.cache().slot(c).subscribe();
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|g| *g > 0))
        .await
        .expect("first token within 30 s")
        .expect("slot");
    app.engine.wait_stored(c).await;
    let first = app.engine.token(None, c.appid.as_str()).expect("token");
    let calls = || sim.control().stats().endpoints["api_authorizer_token"].calls;

    // Another replica holds the lease and stores its token: the refused refresh answers with it,
    // without calling WeChat. (It takes the lease as if this replica's, which is released in the
    // background after its write, had run out.)
    let now = Timestamp::now();
    assert!(
        h.store
            .leases()
            .try_lease(
                &LeaseKey::refresh(c),
                "other-replica",
                now.plus(Duration::from_secs(120)),
                now.plus(Duration::from_secs(30))
            )
            .await
            .expect("lease")
    );
    let before = calls();
    let waiting = {
        let engine = app.engine.clone();
        let c = c.clone();
        tokio::spawn(async move { engine.refresh_now(&c).await })
    };
    let vault = Vault::new(&MasterKey::parse(&key).expect("key"), &[]);
    let rt = sim
        .control()
        .authorizer(COMPONENT, c.appid.as_str())
        .expect("sim authorizer")
        .refresh_token;
    let saved = h
        .store
        .tokens()
        .save_refresh_result(&RefreshResult {
            credential: c.clone(),
            expected_generation: first.generation,
            access_token: NewAccessToken {
                sealed: vault
                    .seal(
                        SecretSlot::AccessToken { credential: c },
                        b"token-of-the-other-replica",
                    )
                    .expect("seal"),
                issued_at: now,
                expires_at: now.plus(Duration::from_secs(7200)),
                refresh_at: Some(now.plus(Duration::from_secs(3600))),
                source: TokenSource::AuthorizerToken,
            },
            refresh_token: Some(
                vault
                    .seal(
                        SecretSlot::RefreshToken {
                            component: &c.component,
                            appid: &c.appid,
                        },
                        rt.as_bytes(),
                    )
                    .expect("seal"),
            ),
            at: now,
        })
        .await
        .expect("save");
    assert!(matches!(saved, SaveOutcome::Saved { .. }), "{saved:?}");
    let theirs = waiting.await.expect("task").expect("the holder's token");
    assert!(theirs.is("token-of-the-other-replica"));
    assert_eq!(
        calls(),
        before,
        "no upstream call for a refresh another replica made"
    );

    // The holder dies: its lease runs out and this replica takes over within the wait.
    h.store
        .leases()
        .release_lease(&LeaseKey::refresh(c), "other-replica")
        .await
        .expect("release");
    let now = Timestamp::now();
    assert!(
        h.store
            .leases()
            .try_lease(
                &LeaseKey::refresh(c),
                "dead-replica",
                now,
                now.plus(Duration::from_millis(1500))
            )
            .await
            .expect("lease")
    );
    let taken_over = app.engine.refresh_now(c).await.expect("taken over");
    assert!(taken_over.generation > theirs.generation);
    assert_eq!(calls(), before + 1, "one upstream call after the takeover");
    app.engine.wait_stored(c).await;
    app.shutdown().await.expect("shutdown");
}

/// JS-SDK tickets across replicas: three replicas reading one ticket all the time refresh it with
/// one getticket call per refresh between them (the lease, the fenced write and NOTIFY, as for
/// tokens), and every ticket any of them serves is valid at WeChat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_reading_one_ticket_make_one_getticket_call_per_refresh_between_them() {
    let _alone = crate::harness::alone().await;
    let _serial = SERIAL.lock().await;
    let Some(h) = database().await else {
        eprintln!(
            "skipped: set {} to run the replica tests",
            crate::harness::store::PG_ENV
        );
        return;
    };
    const LIFETIME: Duration = Duration::from_secs(8);
    let sim = SimConfig {
        token_lifetime: LIFETIME,
        overlap: Duration::from_secs(4),
        js_ticket_policy: wechat_sim::JsTicketPolicy::NewRetiringPrevious,
        ..sim_config()
    };
    let (sim, key, credentials) = prepare_with(&h, 1, sim).await;
    let short = |c: &mut Config| {
        c.refresh.serve_margin = Duration::from_secs(2);
        c.refresh.ticket_serve_margin = Duration::from_secs(1);
    };
    let apps = [
        start_app_with(&h.url, &sim, &key, short).await,
        start_app_with(&h.url, &sim, &key, short).await,
        start_app_with(&h.url, &sim, &key, short).await,
    ];
    let appid = credentials[0].appid.as_str();
    let run = LIFETIME * 3;
    let until = Instant::now() + run;
    let mut served = 0u32;
    let mut round = 0usize;
    while Instant::now() < until {
        let app = &apps[round % apps.len()];
        round += 1;
        let account = app.engine.lookup(None, appid).await.expect("account");
        let ticket = app
            .engine
            .ticket(&account, wxtoken::model::CredentialKind::Jsapi)
            .await;
        if let Ok(ticket) = ticket {
            let validation = sim
                .control()
                .validate_ticket(ticket.access_token.expose_secret());
            assert!(validation.valid, "served an invalid ticket: {validation:?}");
            served += 1;
        }
        // Readers pace themselves (load, not synchronisation).
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let calls = sim.control().stats().endpoints["getticket"].calls;
    let refreshed: u64 = apps.iter().map(|a| a.engine.stats().ticket_refreshed).sum();
    // One replica alone: the first fetch, then one refresh per half lifetime at most.
    let one_replica = 1 + (run.as_secs_f64() / (LIFETIME.as_secs_f64() * 0.5)).ceil() as u64;
    eprintln!(
        "tickets across 3 replicas: {served} served in {round} reads, {calls} getticket calls \
         ({refreshed} ticket flights landed; one replica alone would make at most {one_replica})"
    );
    for app in apps {
        app.shutdown().await.expect("shutdown");
    }
    assert!(served as usize > round * 9 / 10, "readers are served");
    assert!(calls >= 3, "the ticket is refreshed while read: {calls}");
    assert!(
        calls <= one_replica + 1,
        "{calls} getticket calls: replicas did not share the refreshes (one alone: {one_replica})"
    );
}

/// The dashboard behind a load balancer without sticky sessions: a browser signed in through one
/// replica is signed in on the other, signing out on either ends the session on both, and the
/// overview's refresh chart counts every replica's refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_session_works_on_every_replica_and_signing_out_on_one_ends_it_on_all() {
    let Some(h) = database().await else {
        eprintln!(
            "skipped: set {} to run the replica tests",
            crate::harness::store::PG_ENV
        );
        return;
    };
    let (sim, key, credentials) = prepare(&h, 4).await;
    let (_, admin) =
        wxtoken::manage::create_client(&*h.store, "ops", wxtoken::model::AppidGrant::All, true)
            .await
            .expect("admin client");
    let apps = [
        start_app(&h, &sim, &key).await,
        start_app(&h, &sim, &key).await,
    ];
    for c in &credentials {
        let mut rx = apps[0].engine.cache().slot(c).subscribe();
        tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|g| *g > 0))
            .await
            .expect("first token within 30 s")
            .expect("slot");
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let url = |app: &RunningApp, path: &str| format!("http://{}{path}", app.internal_addr);
    let signed_in = r#"action="/ui/logout""#;

    // Sign in on the first replica; the overview answers on the second with the same cookie.
    let r = http
        .post(url(&apps[0], "/ui/login"))
        .form(&[("api_key", admin.key.expose_secret())])
        .send()
        .await
        .expect("sign in");
    assert_eq!(r.status(), reqwest::StatusCode::SEE_OTHER);
    let cookie = r.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_owned();
    let overview = |app: &RunningApp| http.get(url(app, "/ui/")).header("cookie", &cookie).send();
    let page = overview(&apps[1]).await.expect("overview");
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    let html = page.text().await.expect("html");
    assert!(html.contains(signed_in), "signed in on the other replica");

    // Both replicas' refreshes are charted, wherever the page is read.
    for app in &apps {
        app.state
            .0
            .refresh_rates
            .record(
                &*app.store,
                &app.engine.stats(),
                wxtoken::model::Timestamp::now(),
            )
            .await
            .expect("record");
    }
    let charted: u64 = h
        .store
        .ops()
        .refresh_minutes(0)
        .await
        .expect("minutes")
        .iter()
        .map(|m| m.refreshed)
        .sum();
    let made: u64 = apps.iter().map(|a| a.engine.stats().refreshed).sum();
    assert_eq!(charted, made, "every replica's refreshes are stored");
    assert!(made >= credentials.len() as u64);
    let html = overview(&apps[0])
        .await
        .expect("overview")
        .text()
        .await
        .expect("html");
    assert!(!html.contains("no-rates"), "the chart shows the refreshes");

    // Sign out on the second replica: the first no longer knows the session.
    let at = html.find(r#"name="csrf" value=""#).expect("csrf field") + 19;
    let csrf = &html[at..at + html[at..].find('"').expect("end")];
    let r = http
        .post(url(&apps[1], "/ui/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf)])
        .send()
        .await
        .expect("sign out");
    assert_eq!(r.status(), reqwest::StatusCode::SEE_OTHER);
    let page = overview(&apps[0]).await.expect("overview");
    assert_eq!(page.status(), reqwest::StatusCode::SEE_OTHER);
    assert_eq!(page.headers()[reqwest::header::LOCATION], "/ui/login");
    for app in apps {
        app.shutdown().await.expect("shutdown");
    }
}
