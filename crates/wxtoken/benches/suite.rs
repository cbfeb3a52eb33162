//! The benchmark suite (issue #8): `cargo bench -p wxtoken --bench suite`. Prints one table, each
//! figure beside its goal and, where GOALS.md names one, a reference measured in the same run.
//!
//! 1. Token reads: `wxtoken serve` (the real binary, a child process) answering
//!    `GET /v1/tokens/{appid}` with a valid key, 64 keep-alive connections, auth, ACL, read counting
//!    and metrics on; references: `redis-benchmark -t get -c 64` against the local Redis (value of
//!    the same size), and a bare axum handler returning a fixed body of the same size (this binary
//!    re-run as a child). Same load generator (`wechat_sim::loadgen`) for wxtoken and the bare
//!    handler.
//! 2. Refresh cost: CPU time of wxtoken's threads per refresh while 100,000 authorizers are
//!    refreshed against the simulator; the simulator runs in this process on its own runtime whose
//!    threads are named `wechat-sim` and are left out of the sum (read from /proc/self/task).
//! 3. Scale: a fresh child process cold-starts the engine on the database of step 2 (load +
//!    decrypt every token) and reports the time and its RSS; SQLite, then PostgreSQL.
//! 4. Upstream economy: 1,000 authorizers on 6 s tokens for 30 s with readers and invalidation
//!    storms; api_authorizer_token calls divided by the new tokens they had to produce.
//! 5. The gateway: `getcallbackip` through `/wx/{appid}/…` against straight to the simulator,
//!    same load generator, 64 connections (run with the token reads' server).
//! 6. The dashboard: the whole app on the SQLite database of step 2 (every authorizer with a
//!    token), signed in; each page requested 20 times in a row, p50 and slowest on loopback (an
//!    upper bound of the server time).
//!
//! 7. Scale: the figures that grow with N at 1k, 100k and 1M side by side (`suite/scale.rs`);
//!    only when `WXTOKEN_BENCH_ONLY` names `scale`.
//!
//! Settings (environment): `WXTOKEN_BENCH_AUTHORIZERS` (default 100000), `WXTOKEN_BENCH_SECS` per
//! read run (default 10), `WXTOKEN_BENCH_PG_URL` (default the local PostgreSQL; a fresh database is
//! created and dropped; `none` skips PostgreSQL), `WXTOKEN_BENCH_ONLY` (a comma-separated subset of
//! `reads,gateway,refresh,economy,dashboard,scale`; cold starts go with `refresh`; `dashboard` runs the
//! SQLite refresh step for its database), e.g. to profile one part.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wechat_sim::{
    AccountKind, Api, BulkAuthorizer, ComponentInfo, ComponentSpec, QuotaConfig, SimConfig,
    SimHandle, Simulator, loadgen,
};
use wxtoken::alerts::Alerts;
use wxtoken::config::{RefreshConfig, UpstreamConfig};
use wxtoken::model::{Appid, ComponentAppid, Credential};
use wxtoken::refresh::lease::LocalLease;
use wxtoken::refresh::{ComponentSecret, Engine, EngineDeps, SystemClock};
use wxtoken::store::{self, Store};
use wxtoken::vault::{MasterKey, Vault};

#[path = "suite/scale.rs"]
mod scale;

const ROLE_ENV: &str = "WXTOKEN_BENCH_ROLE";
const CONNS: u64 = 64;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A table row: measure, result, goal, verdict.
struct Row(String, String, String, String);

fn main() {
    match std::env::var(ROLE_ENV).as_deref() {
        Ok("bare") => return bare_server(),
        Ok("coldstart") => return cold_start_child(),
        _ => {}
    }
    let n = env_or("WXTOKEN_BENCH_AUTHORIZERS", 100_000) as usize;
    let secs = env_or("WXTOKEN_BENCH_SECS", 10);
    let pg = std::env::var("WXTOKEN_BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("wxtoken bench suite: {cores} cores, {n} authorizers, {secs} s per read run");
    let started = Instant::now();
    let mut rows = Vec::new();

    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("wechat-sim")
        .enable_all()
        .build()
        .expect("simulator runtime");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let only = std::env::var("WXTOKEN_BENCH_ONLY").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only.split(',').any(|p| p.trim() == name);
    if part("reads") || part("gateway") {
        let parts = ReadParts {
            reads: part("reads"),
            gateway: part("gateway"),
        };
        reads(&sim_rt, &rt, secs, parts, &mut rows);
    }
    let sqlite_dir = tempfile::tempdir().expect("tempdir");
    let sqlite_url = format!("sqlite://{}", sqlite_dir.path().join("bench.db").display());
    let master = MasterKey::generate();
    if part("refresh") || part("dashboard") {
        refresh_cost(&sim_rt, &rt, "sqlite", &sqlite_url, &master, n, &mut rows);
    }
    if part("refresh") {
        cold_start("sqlite", &sqlite_url, &master, &mut rows);
    }
    if part("dashboard") {
        dashboard(&sim_rt, &rt, &sqlite_url, &master, n, &mut rows);
    }
    if part("refresh") && pg != "none" {
        match rt.block_on(fresh_pg_database(&pg)) {
            Ok((url, admin)) => {
                refresh_cost(&sim_rt, &rt, "postgres", &url, &master, n, &mut rows);
                cold_start("postgres", &url, &master, &mut rows);
                rt.block_on(drop_pg_database(&admin, &url));
            }
            Err(e) => println!("PostgreSQL skipped: {e}"),
        }
    }
    if part("economy") {
        economy(&sim_rt, &rt, &mut rows);
    }
    // Only when asked for by name: at a million it takes minutes.
    if only.split(',').any(|p| p.trim() == "scale") {
        scale::scale(&sim_rt, &rt, secs, &pg);
    }

    if !rows.is_empty() {
        println!("\n| measure | result | goal | |\n|---|---|---|---|");
    }
    for Row(measure, result, goal, verdict) in &rows {
        println!("| {measure} | {result} | {goal} | {verdict} |");
    }
    println!("\n(suite ran in {:.0} s)", started.elapsed().as_secs_f64());
}

fn verdict(ok: bool) -> String {
    if ok { "met" } else { "missed" }.to_owned()
}

// --- 1. token reads ---------------------------------------------------------------------------

fn sim_config(lifetime: Duration) -> SimConfig {
    SimConfig {
        token_lifetime: lifetime,
        overlap: Duration::from_secs(300).min(lifetime / 2),
        ticket_interval: Duration::ZERO,
        quota: QuotaConfig {
            daily: Api::ALL.iter().map(|a| (a.name().to_string(), 0)).collect(),
            ..QuotaConfig::default()
        },
        ..SimConfig::default()
    }
}

fn component_spec(push_url: Option<String>) -> ComponentSpec {
    ComponentSpec {
        component_appid: Some("wxbenchcomponent01".into()),
        component_appsecret: Some("bench-component-secret".into()),
        token: Some("benchtoken".into()),
        encoding_aes_key: Some("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG".into()),
        push_url,
    }
}

/// A `wxtoken` command with the configuration of the read benchmark in its environment.
fn wxtoken(env: &[(String, String)], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wxtoken"));
    cmd.args(args);
    with_env(cmd, env)
}

fn with_env(mut cmd: Command, env: &[(String, String)]) -> Command {
    cmd.env_remove("WXTOKEN_CONFIG").env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// The environment of a `wxtoken serve` (and its CLI commands) on `url`, with the bench's
/// component, upstream `sim`, the public listener on `public_port` and the others on ports from
/// the OS.
fn serve_env(
    sim: &SimHandle,
    url: &str,
    master: &MasterKey,
    public_port: u16,
) -> Vec<(String, String)> {
    let spec = component_spec(None);
    [
        ("WXTOKEN_STORAGE__URL", url.to_owned()),
        (
            "WXTOKEN_MASTER_KEY",
            master.to_base64().expose_secret().to_owned(),
        ),
        (
            "WXTOKEN_COMPONENTS__0__APPID",
            spec.component_appid.clone().unwrap(),
        ),
        (
            "WXTOKEN_COMPONENTS__0__APPSECRET",
            spec.component_appsecret.clone().unwrap(),
        ),
        ("WXTOKEN_COMPONENTS__0__TOKEN", spec.token.clone().unwrap()),
        (
            "WXTOKEN_COMPONENTS__0__ENCODING_AES_KEY",
            spec.encoding_aes_key.clone().unwrap(),
        ),
        ("WXTOKEN_UPSTREAM__BASE_URL", sim.base_url().to_owned()),
        (
            "WXTOKEN_SERVER__PUBLIC_LISTEN",
            format!("127.0.0.1:{public_port}"),
        ),
        ("WXTOKEN_SERVER__INTERNAL_LISTEN", "127.0.0.1:0".to_owned()),
        ("WXTOKEN_SERVER__GATEWAY_LISTEN", "127.0.0.1:0".to_owned()),
        ("WXTOKEN_REFRESH__CONCURRENCY", "64".to_owned()),
        ("WXTOKEN_LOG__LEVEL", "info".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Which measures of [`reads`] run: the token reads (with their references), the gateway.
struct ReadParts {
    reads: bool,
    gateway: bool,
}

fn reads(
    sim_rt: &tokio::runtime::Runtime,
    rt: &tokio::runtime::Runtime,
    secs: u64,
    parts: ReadParts,
    rows: &mut Vec<Row>,
) {
    const READ_AUTHORIZERS: usize = 1000;
    let sim = sim_rt
        .block_on(Simulator::start(sim_config(Duration::from_secs(7200))))
        .expect("simulator");
    let public_port = free_port();
    let spec = component_spec(Some(format!(
        "http://127.0.0.1:{public_port}/wechat/events"
    )));
    let dir = tempfile::tempdir().expect("tempdir");
    let master = MasterKey::generate();
    let url = format!("sqlite://{}", dir.path().join("reads.db").display());
    let env = serve_env(&sim, &url, &master, public_port);
    let comp = spec.component_appid.clone().unwrap();
    sim.control()
        .create_component(component_spec(None))
        .expect("component");
    let authorizers = sim
        .control()
        .bulk_authorize(&comp, READ_AUTHORIZERS, AccountKind::OfficialAccount)
        .expect("bulk");
    let csv = dir.path().join("authorizers.csv");
    let mut file = std::fs::File::create(&csv).expect("csv");
    for a in &authorizers {
        writeln!(
            file,
            "{},{}",
            a.authorizer_appid, a.authorizer_refresh_token
        )
        .expect("write");
    }
    drop(file);
    let out = wxtoken(&env, &["authorizers", "import", csv.to_str().unwrap()])
        .output()
        .expect("import");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = wxtoken(&env, &["clients", "add", "bench", "--appid", "*"])
        .output()
        .expect("clients add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();

    let (mut server, internal, gateway_addr) = start_serve(&env);
    sim.control()
        .set_push_url(
            &comp,
            Some(format!("http://127.0.0.1:{public_port}/wechat/events")),
        )
        .expect("push url");
    sim.control().push_ticket(Some(&comp)).expect("ticket");
    let auth = format!("Authorization: Bearer {key}\r\n");
    // Every token fetched once (the first read of each refreshes it), then the timed runs.
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        for a in &authorizers {
            let mut req = Vec::new();
            loadgen::get(
                &format!("/v1/tokens/{}", a.authorizer_appid),
                &auth,
                &mut req,
            );
            loop {
                let (status, body) = loadgen::call(internal, &req).await.expect("read");
                if status == 200 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "no token: {}",
                    String::from_utf8_lossy(&body)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let appids: Arc<Vec<String>> = Arc::new(
        authorizers
            .iter()
            .map(|a| a.authorizer_appid.clone())
            .collect(),
    );
    let mut sample = Vec::new();
    loadgen::get(&format!("/v1/tokens/{}", appids[0]), &auth, &mut sample);
    let (_, body) = rt
        .block_on(loadgen::call(internal, &sample))
        .expect("sample");
    let body_len = body.len();

    let make: loadgen::MakeRequest = {
        let (appids, auth) = (appids.clone(), auth.clone());
        Arc::new(move |c, i, out| {
            let appid = &appids[((c * 7919 + i * 31) % appids.len() as u64) as usize];
            loadgen::get(&format!("/v1/tokens/{appid}"), &auth, out);
        })
    };
    let ok_200: loadgen::Check = Arc::new(|status, _| status == 200);
    let wx = if parts.reads {
        rt.block_on(loadgen::drive(
            internal,
            CONNS,
            Duration::from_secs(secs),
            make,
            ok_200,
        ))
    } else {
        loadgen::LoadReport::default()
    };
    let server_rss = rss_kb(server.id());
    if parts.gateway {
        let gateway_addr = gateway_addr.expect("the gateway is on");
        let addrs = (internal, gateway_addr);
        let server = (&mut server, env.as_slice());
        gateway_bench(rt, &sim, addrs, server, &key, &appids, secs, rows);
    }
    if !parts.reads {
        stop(&mut server);
        sim_rt.block_on(sim.shutdown());
        return;
    }
    stop(&mut server);
    sim_rt.block_on(sim.shutdown());

    let bare_report = bare_reference(rt, body_len, &auth, secs);

    let redis = redis_get(body_len, secs);
    println!(
        "token reads: wxtoken {:.0} req/s p50 {:?} p99 {:?} ({} errors, body {body_len} B, server RSS {} kB); bare axum {:.0} req/s p50 {:?} p99 {:?}",
        wx.rps(),
        wx.p50,
        wx.p99,
        wx.bad,
        server_rss,
        bare_report.rps(),
        bare_report.p50,
        bare_report.p99
    );
    rows.push(Row(
        format!("Token reads, `GET /v1/tokens/{{appid}}`, {CONNS} connections"),
        format!(
            "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
            wx.rps(),
            ms(wx.p50),
            ms(wx.p99),
            wx.bad
        ),
        "p99 ≤ 1 ms".into(),
        verdict(wx.p99 <= Duration::from_millis(1) && wx.bad == 0),
    ));
    rows.push(Row(
        "  reference: bare axum handler, same body size".into(),
        format!(
            "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms; wxtoken/bare = {:.2}",
            bare_report.rps(),
            ms(bare_report.p50),
            ms(bare_report.p99),
            wx.rps() / bare_report.rps()
        ),
        "≥ 0.9× bare".into(),
        verdict(wx.rps() >= 0.9 * bare_report.rps()),
    ));
    match redis {
        Some((rps, p50, p99)) => rows.push(Row(
            format!("  reference: `redis-benchmark -t get -c {CONNS} -d {body_len}`"),
            format!(
                "{rps:.0} req/s, p50 {p50:.2} ms, p99 {p99:.2} ms; wxtoken/Redis = {:.2}",
                wx.rps() / rps
            ),
            "≥ 1.1× Redis".into(),
            verdict(wx.rps() >= 1.1 * rps),
        )),
        None => rows.push(Row(
            "  reference: Redis GET".into(),
            "redis-benchmark or Redis unavailable".into(),
            "≥ 1.1× Redis".into(),
            "not measured".into(),
        )),
    }
}

/// The bare handler (this binary re-run as a child): the same framework and body size, nothing
/// else, driven like wxtoken's reads.
fn bare_reference(
    rt: &tokio::runtime::Runtime,
    body_len: usize,
    auth: &str,
    secs: u64,
) -> loadgen::LoadReport {
    let exe = std::env::current_exe().expect("own path");
    let mut bare = Command::new(exe)
        .env(ROLE_ENV, "bare")
        .env("WXTOKEN_BENCH_BODY", body_len.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("bare server");
    let mut line = String::new();
    BufReader::new(bare.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address");
    let bare_addr: SocketAddr = line.trim().parse().expect("address");
    let bare_make: loadgen::MakeRequest = {
        let auth = auth.to_owned();
        Arc::new(move |_, _, out| loadgen::get("/v1/tokens/wxbare", &auth, out))
    };
    let ok_200: loadgen::Check = Arc::new(|status, _| status == 200);
    let report = rt.block_on(loadgen::drive(
        bare_addr,
        CONNS,
        Duration::from_secs(secs),
        bare_make,
        ok_200,
    ));
    drop(bare.stdin.take());
    let _ = bare.wait();
    report
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Starts `wxtoken serve` and reads its internal address, and the gateway's if it is on, from its
/// log.
fn start_serve(env: &[(String, String)]) -> (Child, SocketAddr, Option<SocketAddr>) {
    start_serve_on(env, None)
}

/// [`start_serve`], on the given cores only (`taskset -c`) when `cores` is set: then its runtime
/// has as many workers as those cores.
fn start_serve_on(
    env: &[(String, String)],
    cores: Option<&str>,
) -> (Child, SocketAddr, Option<SocketAddr>) {
    let mut cmd = match cores {
        None => wxtoken(env, &["serve"]),
        Some(cores) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", cores, env!("CARGO_BIN_EXE_wxtoken"), "serve"]);
            with_env(cmd, env)
        }
    };
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let internal = loop {
        let line = lines
            .next()
            .expect("serve exited before serving")
            .expect("utf-8");
        let field = |name: &str| {
            let at = line.find(name)? + name.len();
            let addr: String = line[at..]
                .chars()
                .take_while(|c| !c.is_whitespace())
                .collect();
            addr.parse::<SocketAddr>().ok()
        };
        if let Some(internal) = field("internal=") {
            break (internal, field("gateway="));
        }
    };
    let (internal, gateway) = internal;
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, internal, gateway)
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// `redis-benchmark -t get` at the same connection count and value size: (req/s, p50 ms, p99 ms).
fn redis_get(size: usize, secs: u64) -> Option<(f64, f64, f64)> {
    let value = "x".repeat(size);
    let set = Command::new("redis-cli")
        .args(["SET", "key:__rand_int__", &value])
        .output()
        .ok()?;
    if !set.status.success() {
        return None;
    }
    // About `secs` seconds at ~100k req/s.
    let requests = (secs * 100_000).to_string();
    let out = Command::new("redis-benchmark")
        .args([
            "-t",
            "get",
            "-c",
            &CONNS.to_string(),
            "-n",
            &requests,
            "-d",
            &size.to_string(),
            "--csv",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "GET","rps","avg","min","p50","p95","p99","max"
    let line = text.lines().find(|l| l.starts_with("\"GET\""))?;
    let fields: Vec<f64> = line
        .split(',')
        .skip(1)
        .filter_map(|f| f.trim_matches('"').parse().ok())
        .collect();
    Some((*fields.first()?, *fields.get(3)?, *fields.get(5)?))
}

/// The bare reference server: axum, one route, a fixed JSON body of the requested size.
fn bare_server() {
    let size = env_or("WXTOKEN_BENCH_BODY", 256) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let body: &'static str = Box::leak(
            format!("{{\"x\":\"{}\"}}", "x".repeat(size.saturating_sub(8))).into_boxed_str(),
        );
        let app = axum::Router::new().route(
            "/v1/tokens/{appid}",
            axum::routing::get(move || async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body,
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("{}", listener.local_addr().expect("addr"));
        std::io::stdout().flush().ok();
        let stop = async {
            let _ = tokio::task::spawn_blocking(|| {
                let mut s = String::new();
                let _ = std::io::stdin().read_line(&mut s);
            })
            .await;
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
            .expect("serve");
    });
}

/// The gateway (measure 5): `GET cgi-bin/getcallbackip` on 64 connections, straight to the
/// simulator with each appid's token, then through the gateway (`/wx/{appid}/…`, key, grant,
/// token injected, call counted) to the same simulator; the same load generator and appids.
#[allow(clippy::too_many_arguments)]
fn gateway_bench(
    rt: &tokio::runtime::Runtime,
    sim: &SimHandle,
    (internal, gateway): (SocketAddr, SocketAddr),
    (server, env): (&mut Child, &[(String, String)]),
    key: &str,
    appids: &Arc<Vec<String>>,
    secs: u64,
    rows: &mut Vec<Row>,
) {
    const APPIDS: usize = 100;
    let auth = format!("Authorization: Bearer {key}\r\n");
    let server_pid = server.id();
    let appids: Arc<Vec<String>> = Arc::new(appids.iter().take(APPIDS).cloned().collect());
    // Each appid's token from the token API, and as an SDK gets it: from the gateway's
    // `cgi-bin/token` in SDK mode (the same token, remembered there as handed out).
    let fetch = |target: SocketAddr, path: &dyn Fn(&str) -> String, headers: &str| {
        rt.block_on(async {
            let mut tokens = Vec::new();
            for appid in appids.iter() {
                let mut req = Vec::new();
                loadgen::get(&path(appid), headers, &mut req);
                let (_, body) = loadgen::call(target, &req).await.expect("token");
                let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
                tokens.push(body["access_token"].as_str().expect("token").to_owned());
            }
            Arc::new(tokens)
        })
    };
    let tokens = fetch(internal, &|appid| format!("/v1/tokens/{appid}"), &auth);
    let sdk_tokens = fetch(
        gateway,
        &|appid| {
            format!("/sdk/{key}/cgi-bin/token?grant_type=client_credential&appid={appid}&secret=-")
        },
        "",
    );
    assert_eq!(tokens, sdk_tokens, "SDK mode hands out the current tokens");
    let sim_addr: SocketAddr = sim
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .expect("simulator address");
    let ok: loadgen::Check =
        Arc::new(|status, body| status == 200 && body.windows(7).any(|w| w == b"ip_list"));
    let direct_make: loadgen::MakeRequest = {
        let tokens = tokens.clone();
        Arc::new(move |c, i, out| {
            let token = &tokens[((c * 7919 + i * 31) % tokens.len() as u64) as usize];
            loadgen::get(
                &format!("/cgi-bin/getcallbackip?access_token={token}"),
                "",
                out,
            );
        })
    };
    let gateway_make: loadgen::MakeRequest = {
        let (appids, auth) = (appids.clone(), auth.clone());
        Arc::new(move |c, i, out| {
            let appid = &appids[((c * 7919 + i * 31) % appids.len() as u64) as usize];
            loadgen::get(&format!("/wx/{appid}/cgi-bin/getcallbackip"), &auth, out);
        })
    };
    let sdk_make: loadgen::MakeRequest = {
        let (tokens, key) = (sdk_tokens.clone(), key.to_owned());
        Arc::new(move |c, i, out| {
            let token = &tokens[((c * 7919 + i * 31) % tokens.len() as u64) as usize];
            loadgen::get(
                &format!("/sdk/{key}/cgi-bin/getcallbackip?access_token={token}"),
                "",
                out,
            );
        })
    };
    let run = Duration::from_secs(secs);
    // CPU seconds of (the simulator, the load generator, wxtoken) over each run: what a call
    // costs each of them, apart from how the two cores were shared.
    let cpu = || {
        let sim = thread_cpu(|name| name.starts_with("wechat-sim"));
        let generator = thread_cpu(|name| !name.starts_with("wechat-sim"));
        (sim, generator, process_cpu(server_pid))
    };
    // As many calls as answers come, for `time`.
    let saturated = |addr: SocketAddr, make: &loadgen::MakeRequest, time: Duration| {
        rt.block_on(loadgen::drive(addr, CONNS, time, make.clone(), ok.clone()))
    };
    let before = cpu();
    let direct = saturated(sim_addr, &direct_make, run);
    let between = cpu();
    let through = saturated(gateway, &gateway_make, run);
    let after = cpu();
    let sdk = saturated(gateway, &sdk_make, run);
    let after_sdk = cpu();
    // The same calls at a steady rate that saturates neither side: the latency the gateway adds
    // to a call when it is not queued behind the others (a saturated run's p50 is its queue).
    const ROUNDS: usize = 3;
    let short = run / 2;
    let rate: f64 = std::env::var("WXTOKEN_BENCH_GATEWAY_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000.0);
    let paced = |addr: SocketAddr, make: &loadgen::MakeRequest| {
        rt.block_on(loadgen::drive_paced(
            addr,
            CONNS,
            rate,
            short,
            make.clone(),
            ok.clone(),
        ))
    };
    // This machine's noise moves single runs by a third: three rounds, each reference beside
    // its gateway run, and the median round's figure.
    let paced_rounds: Vec<_> = (0..ROUNDS)
        .map(|_| {
            let direct = paced(sim_addr, &direct_make);
            let through = paced(gateway, &gateway_make);
            let sdk = paced(gateway, &sdk_make);
            (direct, through, sdk)
        })
        .collect();
    // Saturated again, with wxtoken on a core of its own: wxtoken restarted on core 1 (so its
    // runtime has one worker, as on a one-core container), this process (the load generator and
    // the simulator) on core 0 for both runs. Whether the gateway keeps up with a client and an
    // upstream that have the same one core each time.
    let pinned_runs = (pin_cores(std::process::id(), 0b01)).then(|| {
        stop(server);
        let (child, _, pinned_gateway) = start_serve_on(env, Some("1"));
        *server = child;
        let pinned_gateway = pinned_gateway.expect("the gateway is on");
        (0..ROUNDS)
            .map(|_| {
                let direct = saturated(sim_addr, &direct_make, short);
                let through = saturated(pinned_gateway, &gateway_make, short);
                (direct, through)
            })
            .collect::<Vec<_>>()
    });
    let all = (1u64 << std::thread::available_parallelism().map_or(1, |n| n.get())) - 1;
    pin_cores(std::process::id(), all);
    // µs of CPU per call.
    let per_call = |a: f64, b: f64, report: &loadgen::LoadReport| {
        (b - a) * 1e6 / (report.ok + report.bad).max(1) as f64
    };
    let direct_cost = (
        per_call(before.0, between.0, &direct),
        per_call(before.1, between.1, &direct),
    );
    let through_cost = (
        per_call(between.0, after.0, &through),
        per_call(between.1, after.1, &through),
        per_call(between.2, after.2, &through),
    );
    let sdk_cost = per_call(after.2, after_sdk.2, &sdk);
    println!(
        "gateway: CPU per call, direct: simulator {:.1} µs, load generator {:.1} µs; through the gateway: simulator {:.1} µs, load generator {:.1} µs, wxtoken {:.1} µs",
        direct_cost.0, direct_cost.1, through_cost.0, through_cost.1, through_cost.2
    );
    println!(
        "gateway: direct {:.0} req/s p50 {:?} p99 {:?} ({} errors); through the gateway {:.0} req/s p50 {:?} p99 {:?} ({} errors)",
        direct.rps(),
        direct.p50,
        direct.p99,
        direct.bad,
        through.rps(),
        through.p50,
        through.p99,
        through.bad
    );
    let ratio = through.rps() / direct.rps();
    let added_p50 = ms(through.p50) - ms(direct.p50);
    rows.push(Row(
        format!("Gateway, `GET /wx/{{appid}}/cgi-bin/getcallbackip`, {CONNS} connections"),
        format!(
            "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors; gateway/direct = {ratio:.2}, added p50 {added_p50:.2} ms, p99 {:.2} ms",
            through.rps(),
            ms(through.p50),
            ms(through.p99),
            through.bad,
            ms(through.p99) - ms(direct.p99),
        ),
        "≥ 0.8× direct, ≤ 0.3 ms added p50".into(),
        verdict(ratio >= 0.8 && added_p50 <= 0.3 && through.bad == 0),
    ));
    rows.push(Row(
        format!("Gateway, SDK mode: `GET /sdk/{{key}}/cgi-bin/getcallbackip?access_token=…`, {CONNS} connections"),
        format!(
            "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors; gateway/direct = {:.2}, added p50 {:.2} ms, p99 {:.2} ms; wxtoken CPU {sdk_cost:.1} µs per call",
            sdk.rps(),
            ms(sdk.p50),
            ms(sdk.p99),
            sdk.bad,
            sdk.rps() / direct.rps(),
            ms(sdk.p50) - ms(direct.p50),
            ms(sdk.p99) - ms(direct.p99),
        ),
        "≥ 0.8× direct, ≤ 0.3 ms added p50".into(),
        verdict(
            sdk.rps() / direct.rps() >= 0.8
                && ms(sdk.p50) - ms(direct.p50) <= 0.3
                && sdk.bad == 0,
        ),
    ));
    rows.push(Row(
        "  reference: straight to the simulator, same load generator".into(),
        format!(
            "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
            direct.rps(),
            ms(direct.p50),
            ms(direct.p99),
            direct.bad
        ),
        "—".into(),
        String::new(),
    ));
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let added = |r: &loadgen::LoadReport, base: &loadgen::LoadReport| ms(r.p50) - ms(base.p50);
    let added_wx: Vec<f64> = paced_rounds.iter().map(|(d, t, _)| added(t, d)).collect();
    let added_sdk: Vec<f64> = paced_rounds.iter().map(|(d, _, k)| added(k, d)).collect();
    let paced_bad: u64 = paced_rounds
        .iter()
        .map(|(d, t, k)| d.bad + t.bad + k.bad)
        .sum();
    for (i, (d, t, k)) in paced_rounds.iter().enumerate() {
        println!(
            "gateway at {rate} req/s, round {}: direct p50 {:?} p99 {:?}; /wx p50 {:?} p99 {:?}; SDK p50 {:?} p99 {:?}",
            i + 1,
            d.p50,
            d.p99,
            t.p50,
            t.p99,
            k.p50,
            k.p99
        );
    }
    let (wx_p50, sdk_p50) = (median(added_wx.clone()), median(added_sdk.clone()));
    rows.push(Row(
        format!(
            "Gateway at a steady {rate:.0} req/s (neither side saturated), {CONNS} connections, {ROUNDS} rounds"
        ),
        format!(
            "added p50, median round: `/wx` {wx_p50:.2} ms, SDK mode {sdk_p50:.2} ms (rounds: {} and {} ms; direct p50s {} ms); {paced_bad} errors",
            list(&added_wx),
            list(&added_sdk),
            list(&paced_rounds.iter().map(|(d, _, _)| ms(d.p50)).collect::<Vec<_>>()),
        ),
        "≤ 0.3 ms added p50".into(),
        verdict(wx_p50 <= 0.3 && sdk_p50 <= 0.3 && paced_bad == 0),
    ));
    if let Some(rounds) = &pinned_runs {
        let ratios: Vec<f64> = rounds.iter().map(|(d, t)| t.rps() / d.rps()).collect();
        let bad: u64 = rounds.iter().map(|(d, t)| d.bad + t.bad).sum();
        for (i, (d, t)) in rounds.iter().enumerate() {
            println!(
                "gateway pinned, round {}: direct {:.0} req/s p50 {:?}; through {:.0} req/s p50 {:?}",
                i + 1,
                d.rps(),
                d.p50,
                t.rps(),
                t.p50
            );
        }
        let ratio = median(ratios.clone());
        rows.push(Row(
            format!(
                "Gateway, saturated, wxtoken alone on core 1 (restarted there: one worker), load generator + simulator on core 0 in both runs, {ROUNDS} rounds"
            ),
            format!(
                "gateway/direct, median round: {ratio:.2}× (rounds: {}; req/s through/direct: {}); {bad} errors",
                list(&ratios),
                rounds
                    .iter()
                    .map(|(d, t)| format!("{:.0}/{:.0}", t.rps(), d.rps()))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            "≥ 0.8× direct".into(),
            verdict(ratio >= 0.8 && bad == 0),
        ));
    }
    rows.push(Row(
        "  CPU per call: wxtoken (gateway) / simulator / load generator".into(),
        format!(
            "{:.1} µs / {:.1} µs / {:.1} µs (direct: simulator {:.1} µs, load generator {:.1} µs)",
            through_cost.2, through_cost.0, through_cost.1, direct_cost.0, direct_cost.1
        ),
        "—".into(),
        String::new(),
    ));
}

// --- 2. refresh cost ---------------------------------------------------------------------------

/// CPU seconds of this process's threads, excluding the simulator's (named `wechat-sim`).
fn cpu_excluding_sim() -> f64 {
    cpu_by_thread().values().sum()
}

/// Binds every thread of process `pid` to the cores in `mask` (`taskset -a -p`); false when it
/// could not.
fn pin_cores(pid: u32, mask: u64) -> bool {
    Command::new("taskset")
        .args(["-a", "-p", &format!("{mask:x}"), &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// CPU seconds of this process's threads whose name passes `keep`.
fn thread_cpu(keep: impl Fn(&str) -> bool) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| parse_stat(&stat))
        .filter(|(comm, _)| keep(comm))
        .map(|(_, secs)| secs)
        .sum()
}

/// CPU seconds of a whole process (all its threads, live and ended).
fn process_cpu(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| parse_stat(&stat))
        .map_or(0.0, |(_, secs)| secs)
}

/// A `/proc/…/stat` line's name and its user + system CPU seconds: `pid (comm) state …`, utime
/// and stime are fields 14 and 15, counted after the `)`.
fn parse_stat(stat: &str) -> Option<(String, f64)> {
    let ticks = 100.0; // USER_HZ on Linux
    let close = stat.rfind(')')?;
    let comm = &stat[stat.find('(').map_or(0, |i| i + 1)..close];
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm.to_owned(), (utime + stime) as f64 / ticks))
}

/// CPU seconds by thread name (numbers stripped), excluding the simulator's threads.
fn cpu_by_thread() -> HashMap<String, f64> {
    let mut by: HashMap<String, f64> = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by;
    };
    for task in tasks.flatten() {
        let Some((comm, secs)) = std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| parse_stat(&stat))
        else {
            continue;
        };
        if comm.starts_with("wechat-sim") {
            continue;
        }
        let name = comm.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
        *by.entry(name.to_owned()).or_default() += secs;
    }
    by
}

fn refresh_config(concurrency: usize) -> RefreshConfig {
    RefreshConfig {
        concurrency,
        serve_margin: Duration::from_secs(1),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        // The storms below stand for tokens WeChat really refused: each is taken at its word
        // (no force budget, no rogue check), as before those guards.
        min_force_interval: Duration::ZERO,
        rogue_window: Duration::ZERO,
        ..RefreshConfig::default()
    }
}

async fn open_engine(
    sim: &SimHandle,
    component: &ComponentInfo,
    store: &Arc<dyn Store>,
    master: &MasterKey,
    refresh: RefreshConfig,
    tracker: &TaskTracker,
) -> Engine {
    let upstream = UpstreamConfig {
        base_url: sim.base_url().parse().expect("url"),
        ..UpstreamConfig::default()
    };
    Engine::open(EngineDeps {
        store: Arc::clone(store),
        vault: Arc::new(Vault::new(master, &[])),
        client: upstream.client().expect("client"),
        config: refresh,
        components: vec![ComponentSecret {
            appid: ComponentAppid::parse(&component.component_appid).expect("appid"),
            appsecret: SecretString::from(component.component_appsecret.clone()),
        }],
        alerts: Alerts::log_only(),
        lease: Arc::new(LocalLease::new()),
        clock: Arc::new(SystemClock),
        tracker: tracker.clone(),
    })
    .await
    .expect("engine")
}

/// Creates the component at the simulator, imports `authorizers` and feeds the engine a ticket.
async fn seed(
    sim: &SimHandle,
    store: &Arc<dyn Store>,
    master: &MasterKey,
    n: usize,
) -> (ComponentInfo, Vec<BulkAuthorizer>) {
    let component = sim
        .control()
        .create_component(component_spec(None))
        .expect("component");
    let authorizers = sim
        .control()
        .bulk_authorize(&component.component_appid, n, AccountKind::OfficialAccount)
        .expect("bulk");
    let mut csv = Vec::new();
    for a in &authorizers {
        writeln!(csv, "{},{}", a.authorizer_appid, a.authorizer_refresh_token).expect("csv");
    }
    let comp = ComponentAppid::parse(&component.component_appid).expect("appid");
    let vault = Vault::new(master, &[]);
    vault.verify(&**store).await.expect("vault");
    wxtoken::transfer::import(
        &**store,
        &vault,
        &comp,
        &mut std::io::Cursor::new(csv),
        &wxtoken::transfer::ImportOptions::default(),
        &mut |_| {},
    )
    .await
    .expect("import");
    (component, authorizers)
}

async fn feed_ticket(engine: &Engine, sim: &SimHandle, component: &ComponentInfo) {
    let ticket = sim
        .control()
        .latest_ticket(&component.component_appid)
        .expect("ticket");
    let event = wechat::event::Event::ComponentVerifyTicket(wechat::event::TicketEvent {
        app_id: component.component_appid.clone(),
        create_time: sim.control().now(),
        component_verify_ticket: ticket,
    });
    let comp = ComponentAppid::parse(&component.component_appid).expect("appid");
    engine
        .ingest_push(
            &comp,
            &event,
            &format!("bench-ticket-{}", sim.control().now()),
        )
        .await
        .expect("ticket");
    engine.process_events().await.expect("events");
    engine
        .refresh_now(&Credential::component(&comp))
        .await
        .expect("component token");
}

/// The cost of refreshing a set of credentials once each.
struct RefreshCost {
    n: usize,
    wall: Duration,
    /// CPU seconds of wxtoken's threads (the simulator's left out).
    cpu: f64,
    /// CPU µs per refresh by thread name, largest first.
    split: Vec<(String, f64)>,
    calls: u64,
    failed: u64,
}

impl RefreshCost {
    fn per_refresh_us(&self) -> f64 {
        self.cpu / self.n.max(1) as f64 * 1e6
    }

    fn by_thread(&self) -> String {
        self.split
            .iter()
            .map(|(k, v)| format!("{k} {v:.0} µs"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Refreshes every credential once, as the scheduler does (a task per due credential, 256 in
/// flight at a time), until every write has landed; CPU read per thread.
async fn refresh_all(engine: &Engine, sim: &SimHandle, credentials: &[Credential]) -> RefreshCost {
    let n = credentials.len();
    let before_calls = sim.control().stats().endpoints["api_authorizer_token"].calls;
    let cpu0 = cpu_excluding_sim();
    let by0 = cpu_by_thread();
    let t0 = Instant::now();
    let mut failed = 0;
    for chunk in credentials.chunks(256) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|c| {
                let (engine, c) = (engine.clone(), c.clone());
                tokio::spawn(async move { engine.refresh_now(&c).await.is_ok() })
            })
            .collect();
        for task in tasks {
            if !task.await.unwrap_or(false) {
                failed += 1;
            }
        }
    }
    for c in credentials {
        engine.wait_stored(c).await;
    }
    let wall = t0.elapsed();
    let cpu = cpu_excluding_sim() - cpu0;
    let calls = sim.control().stats().endpoints["api_authorizer_token"].calls - before_calls;
    let mut split: Vec<(String, f64)> = cpu_by_thread()
        .into_iter()
        .map(|(k, v)| {
            let d = v - by0.get(&k).copied().unwrap_or(0.0);
            (k, d / n.max(1) as f64 * 1e6)
        })
        .filter(|(_, d)| *d >= 1.0)
        .collect();
    split.sort_by(|a, b| b.1.total_cmp(&a.1));
    RefreshCost {
        n,
        wall,
        cpu,
        split,
        calls,
        failed,
    }
}

#[allow(clippy::too_many_arguments)]
fn refresh_cost(
    sim_rt: &tokio::runtime::Runtime,
    rt: &tokio::runtime::Runtime,
    backend: &str,
    url: &str,
    master: &MasterKey,
    n: usize,
    rows: &mut Vec<Row>,
) {
    let sim = sim_rt
        .block_on(Simulator::start(sim_config(Duration::from_secs(7200))))
        .expect("simulator");
    rt.block_on(async {
        let store = store::open(url).await.expect("store");
        let (component, authorizers) = seed(&sim, &store, master, n).await;
        let tracker = TaskTracker::new();
        // The loop is not started: the bench drives every refresh itself.
        let engine = open_engine(&sim, &component, &store, master, refresh_config(64), &tracker).await;
        feed_ticket(&engine, &sim, &component).await;
        let comp = ComponentAppid::parse(&component.component_appid).expect("appid");
        let credentials: Vec<Credential> = authorizers
            .iter()
            .map(|a| Credential::authorizer(&comp, &Appid::parse(&a.authorizer_appid).expect("appid")))
            .collect();
        let cost = refresh_all(&engine, &sim, &credentials).await;
        println!(
            "[{backend}] CPU per refresh by thread: {}",
            cost.by_thread()
        );
        println!(
            "[{backend}] {n} refreshes in {:.1} s wall, {:.1} s CPU of wxtoken's threads: {:.0} µs per refresh ({} upstream calls, {} failed)",
            cost.wall.as_secs_f64(),
            cost.cpu,
            cost.per_refresh_us(),
            cost.calls,
            cost.failed
        );
        let (per, wall) = (cost.per_refresh_us(), cost.wall);
        rows.push(Row(
            format!("CPU per refresh, {backend} ({n} authorizers)"),
            format!("{per:.0} µs ({:.0} refreshes/s wall)", n as f64 / wall.as_secs_f64()),
            "≤ 50 µs".into(),
            verdict(per <= 50.0),
        ));
        tracker.close();
        tracker.wait().await;
        store.close().await;
    });
    sim_rt.block_on(sim.shutdown());
}

// --- 6. the dashboard ---------------------------------------------------------------------------

/// The app on the refreshed SQLite database (`url`), an admin signed in to the dashboard, each
/// page timed.
fn dashboard(
    sim_rt: &tokio::runtime::Runtime,
    rt: &tokio::runtime::Runtime,
    url: &str,
    master: &MasterKey,
    n: usize,
    rows: &mut Vec<Row>,
) {
    use wxtoken::config::{ComponentConfig, Config, Sources};
    // An upstream for anything the app asks (every token is valid for two hours: nothing is).
    let sim = sim_rt
        .block_on(Simulator::start(sim_config(Duration::from_secs(7200))))
        .expect("simulator");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("master.key");
        std::fs::write(&key_file, master.to_base64().expose_secret()).expect("key file");
        let spec = component_spec(None);
        let mut config = Config::from_sources(Sources::default()).expect("config");
        config.storage.url = SecretString::from(url.to_owned());
        config.security.master_key_file = Some(key_file);
        config.server.public_url = Some("http://127.0.0.1:8080".parse().expect("url"));
        config.server.gateway_listen = None;
        config.upstream.base_url = sim.base_url().parse().expect("url");
        config.components = vec![ComponentConfig {
            appid: spec.component_appid.clone().expect("appid"),
            appsecret: SecretString::from(spec.component_appsecret.clone().expect("secret")),
            token: SecretString::from(spec.token.clone().expect("token")),
            encoding_aes_key: SecretString::from(spec.encoding_aes_key.clone().expect("key")),
            previous_encoding_aes_key: None,
        }];
        let store = store::open(url).await.expect("store");
        let comp = ComponentAppid::parse(&config.components[0].appid).expect("appid");
        let mut appids: Vec<String> = store
            .authorizers()
            .load_authorizers(Some(&comp))
            .await
            .expect("authorizers")
            .into_iter()
            .map(|r| r.appid.to_string())
            .collect();
        appids.sort();
        let vault = Vault::new(master, &[]);
        let (_, key) = wxtoken::manage::create_client(
            &*store,
            "bench-ops",
            wxtoken::model::AppidGrant::All,
            true,
        )
        .await
        .expect("admin key");
        let public = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let internal = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let running = wxtoken::app::App::start(&config, store, vault, public, internal)
            .await
            .expect("app");
        let base = format!("http://{}", running.internal_addr);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let signed = http
            .post(format!("{base}/ui/login"))
            .form(&[("api_key", key.key.expose_secret())])
            .send()
            .await
            .expect("sign in");
        let cookie = signed.headers()["set-cookie"]
            .to_str()
            .expect("cookie")
            .split(';')
            .next()
            .expect("cookie")
            .to_owned();
        let mid = &appids[appids.len() / 2];
        let pages = [
            ("overview", "/ui/".to_owned()),
            ("authorizers, first page", "/ui/authorizers".to_owned()),
            (
                "authorizers, a middle page",
                format!("/ui/authorizers?after={mid}"),
            ),
            (
                "search by appid prefix",
                format!("/ui/authorizers?q={}", &mid[..8]),
            ),
            (
                // Imported authorizers have no nick name: the scan finds nothing, its worst case.
                "search by name (a scan)",
                "/ui/authorizers?q=%E5%92%96%E5%95%A1".to_owned(),
            ),
            ("one authorizer", format!("/ui/authorizers/{mid}")),
            ("clients", "/ui/clients".to_owned()),
        ];
        for (name, path) in pages {
            let mut times = Vec::new();
            for i in 0..22 {
                let t0 = Instant::now();
                let r = http
                    .get(format!("{base}{path}"))
                    .header("cookie", &cookie)
                    .send()
                    .await
                    .expect("page");
                assert!(r.status().is_success(), "{path}: {}", r.status());
                let body = r.bytes().await.expect("body");
                if i >= 2 {
                    times.push(t0.elapsed().as_secs_f64() * 1e3);
                }
                if i == 0 {
                    println!("[dashboard] {path}: {} bytes", body.len());
                }
            }
            times.sort_by(f64::total_cmp);
            let (p50, max) = (times[times.len() / 2], times[times.len() - 1]);
            rows.push(Row(
                format!("Dashboard page, {n} authorizers (sqlite): {name}"),
                format!("p50 {p50:.1} ms, slowest {max:.1} ms (20 requests)"),
                "≤ 300 ms".into(),
                verdict(max <= 300.0),
            ));
        }
        running.shutdown().await.expect("shutdown");
    });
    sim_rt.block_on(sim.shutdown());
}

// --- 3. scale ----------------------------------------------------------------------------------

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// What a cold start in a fresh process reported.
struct ColdStart {
    secs: f64,
    rss_kb: f64,
    held: f64,
    /// Heap in use the engine's opening added, in bytes.
    heap: f64,
    /// RSS before the engine opened (runtime, store, simulator).
    base_kb: f64,
}

impl ColdStart {
    /// RSS the engine added, per credential held.
    fn rss_per_credential(&self) -> f64 {
        (self.rss_kb - self.base_kb) * 1024.0 / self.held.max(1.0)
    }

    fn heap_per_credential(&self) -> f64 {
        self.heap / self.held.max(1.0)
    }
}

/// Runs the cold start of the engine on `url` in a fresh child process (`cold_start_child`).
fn measure_cold_start(backend: &str, url: &str, master: &MasterKey) -> ColdStart {
    let exe = std::env::current_exe().expect("own path");
    let out = Command::new(exe)
        .env(ROLE_ENV, "coldstart")
        .env("WXTOKEN_BENCH_URL", url)
        .env("WXTOKEN_BENCH_KEY", master.to_base64().expose_secret())
        .output()
        .expect("cold start child");
    let text = String::from_utf8_lossy(&out.stdout);
    for l in text.lines().filter(|l| l.starts_with("NOTE ")) {
        println!("[{backend}] {}", &l[5..]);
    }
    let line = text
        .lines()
        .find(|l| l.starts_with("COLD "))
        .unwrap_or("COLD 0 0 0");
    let v: Vec<f64> = line[5..]
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let cold = ColdStart {
        secs: v[0],
        rss_kb: v[1],
        held: v[2],
        heap: v.get(3).copied().unwrap_or(0.0),
        base_kb: v.get(4).copied().unwrap_or(0.0),
    };
    println!(
        "[{backend}] cold start: {:.3} s, RSS {:.0} kB, {:.0} credentials held",
        cold.secs, cold.rss_kb, cold.held
    );
    cold
}

fn cold_start(backend: &str, url: &str, master: &MasterKey, rows: &mut Vec<Row>) {
    let cold = measure_cold_start(backend, url, master);
    let per_credential = cold.rss_per_credential();
    rows.push(Row(
        format!("Memory per credential, {backend} (RSS beyond the baseline; heap in use)"),
        format!(
            "{per_credential:.0} B ({:.0} B of heap)",
            cold.heap_per_credential()
        ),
        "≤ 400 B".into(),
        verdict(per_credential <= 400.0),
    ));
    rows.push(Row(
        format!(
            "Cold start, {backend} ({:.0} credentials, load + decrypt)",
            cold.held
        ),
        format!("{:.2} s", cold.secs),
        "≤ 2 s".into(),
        verdict(cold.secs <= 2.0),
    ));
    rows.push(Row(
        format!("RSS after cold start, {backend}"),
        format!("{:.0} MB", cold.rss_kb / 1024.0),
        "≤ 100 MB".into(),
        verdict(cold.rss_kb / 1024.0 <= 100.0),
    ));
}

/// The binary's allocator (mimalloc), counting the bytes in use so the cold start can say how
/// much heap a credential takes (two relaxed atomic adds per allocation).
struct Counting;

static IN_USE: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed to mimalloc unchanged; only a counter is kept beside it.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        IN_USE.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        IN_USE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        IN_USE.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        IN_USE.fetch_add(new_size as u64, Ordering::Relaxed);
        IN_USE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes of heap in use: requested and not yet freed (the allocator's own rounding and slack
/// show in the RSS figure, not here).
fn heap_bytes() -> u64 {
    IN_USE.load(Ordering::Relaxed)
}

/// In a fresh process: open the store and the engine (the real cold start), report time and RSS.
fn cold_start_child() {
    let url = std::env::var("WXTOKEN_BENCH_URL").expect("url");
    let master = MasterKey::parse(&std::env::var("WXTOKEN_BENCH_KEY").expect("key")).expect("key");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sim = Simulator::start(sim_config(Duration::from_secs(7200)))
            .await
            .expect("sim");
        let component = sim
            .control()
            .create_component(component_spec(None))
            .expect("component");
        let t0 = Instant::now();
        let store = store::open(&url).await.expect("store");
        Vault::new(&master, &[])
            .verify(&*store)
            .await
            .expect("vault");
        let tracker = TaskTracker::new();
        let base = rss_kb(std::process::id());
        let heap_base = heap_bytes();
        let engine = open_engine(
            &sim,
            &component,
            &store,
            &master,
            refresh_config(16),
            &tracker,
        )
        .await;
        let secs = t0.elapsed().as_secs_f64();
        println!("NOTE RSS {base} kB before the engine opened (runtime, store, simulator)");
        let held = engine.cache().len();
        let rss = rss_kb(std::process::id());
        let heap = heap_bytes().saturating_sub(heap_base);
        println!(
            "NOTE per credential: {:.0} B of heap in use, {:.0} B of RSS (beyond the {base} kB before the engine opened)",
            heap as f64 / held.max(1) as f64,
            rss.saturating_sub(base) as f64 * 1024.0 / held.max(1) as f64
        );
        // Where the bytes go: the token cache alone (slots and tokens as served) for as many
        // credentials, with tokens of the length the engine holds; the rest is the schedule,
        // the engine's books and the allocator's slack.
        let token_len = {
            let mut len = 0;
            engine.cache().for_each(|slot| {
                if len == 0 && let Some(t) = slot.current() {
                    len = t.access_token.expose_secret().len();
                }
            });
            len
        };
        let cache_base = heap_bytes();
        let cache = wxtoken::tokens::cache::TokenCache::new();
        let component = ComponentAppid::parse("wxbenchcomponent0").expect("component");
        let now = wxtoken::model::Timestamp::now();
        for i in 0..held {
            let appid = Appid::parse(&format!("wx{i:016x}")).expect("appid");
            cache
                .slot(&Credential::authorizer(&component, &appid))
                .publish(wxtoken::tokens::cache::CachedToken {
                    access_token: wxtoken::tokens::cache::TokenText::from("t".repeat(token_len)),
                    issued_at: now,
                    expires_at: now,
                    refresh_at: now,
                    generation: 1,
                    source: wxtoken::model::TokenSource::AuthorizerToken,
                    stored: true,
                });
        }
        let in_cache = heap_bytes().saturating_sub(cache_base);
        println!(
            "NOTE of which the token cache: {:.0} B per credential (token {token_len} B); the rest (schedule, the engine's books, slack): {:.0} B",
            in_cache as f64 / held.max(1) as f64,
            heap.saturating_sub(in_cache) as f64 / held.max(1) as f64
        );
        drop(cache);
        println!("COLD {secs} {rss} {held} {heap} {base}");
        drop(engine);
        store.close().await;
    });
}

async fn fresh_pg_database(url: &str) -> Result<(String, String), String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let name = format!("wxtoken_bench_{}", std::process::id());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    Ok((format!("{base}/{name}"), url.to_owned()))
}

async fn drop_pg_database(admin: &str, url: &str) {
    use sqlx::Connection;
    let Some((_, name)) = url.rsplit_once('/') else {
        return;
    };
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
}

// --- 4. upstream economy -----------------------------------------------------------------------

fn economy(sim_rt: &tokio::runtime::Runtime, rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) {
    const N: usize = 1000;
    const RUN: Duration = Duration::from_secs(30);
    let lifetime = Duration::from_secs(6);
    let sim = sim_rt
        .block_on(Simulator::start(sim_config(lifetime)))
        .expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("economy.db").display());
    let master = MasterKey::generate();
    rt.block_on(async {
        let store = store::open(&url).await.expect("store");
        let (component, authorizers) = seed(&sim, &store, &master, N).await;
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let engine = open_engine(&sim, &component, &store, &master, refresh_config(64), &tracker).await;
        feed_ticket(&engine, &sim, &component).await;
        engine.spawn(cancel.clone());
        let comp = ComponentAppid::parse(&component.component_appid).expect("appid");
        let appids: Arc<Vec<String>> =
            Arc::new(authorizers.iter().map(|a| a.authorizer_appid.clone()).collect());
        // Every authorizer gets its first token, then the counting starts.
        let credentials: Vec<Credential> = appids
            .iter()
            .map(|a| Credential::authorizer(&comp, &Appid::parse(a).unwrap()))
            .collect();
        for chunk in credentials.chunks(256) {
            futures::future::join_all(chunk.iter().map(|c| engine.refresh_now(c))).await;
        }
        let start_gen: HashMap<String, u64> = appids
            .iter()
            .map(|a| (a.clone(), held_generation(&engine, a)))
            .collect();
        let calls0 = sim.control().stats().endpoints["api_authorizer_token"].calls;
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let storms = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for r in 0..8u64 {
            let (engine, appids, stop, reads) = (engine.clone(), appids.clone(), stop.clone(), reads.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = r;
                while !stop.load(Ordering::Relaxed) {
                    let _ = engine.token(None, &appids[(i % appids.len() as u64) as usize]);
                    reads.fetch_add(1, Ordering::Relaxed);
                    i += 7;
                    if i % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        {
            let (engine, appids, stop, storms, comp) =
                (engine.clone(), appids.clone(), stop.clone(), storms.clone(), comp.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let appid = &appids[(i * 37) % appids.len()];
                    if let Ok(token) = engine.token(None, appid) {
                        let credential = Credential::authorizer(&comp, &Appid::parse(appid).unwrap());
                        let reported = token.access_token.expose_secret().to_owned();
                        // 100 clients report the same token at once.
                        futures::future::join_all(
                            (0..100).map(|_| engine.invalidate(&credential, &reported)),
                        )
                        .await;
                        storms.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }));
        }
        tokio::time::sleep(RUN).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
        let calls = sim.control().stats().endpoints["api_authorizer_token"].calls - calls0;
        let produced: u64 = appids
            .iter()
            .map(|a| held_generation(&engine, a).saturating_sub(start_gen[a]))
            .sum();
        let storms = storms.load(Ordering::Relaxed);
        let ratio = calls as f64 / produced.max(1) as f64;
        let period = lifetime.as_secs_f64() * 0.5;
        let scheduled = (produced.saturating_sub(storms)) as f64 / (N as f64 * RUN.as_secs_f64() / period);
        println!(
            "economy: {calls} api_authorizer_token calls for {produced} new tokens ({storms} invalidation storms of 100 reports, {} reads); scheduled refreshes per authorizer per period {scheduled:.3}",
            reads.load(Ordering::Relaxed)
        );
        rows.push(Row(
            format!("Upstream calls / minimum ({N} authorizers, 6 s tokens, 30 s, readers + {storms} storms of 100 reports)"),
            format!("{ratio:.3} ({calls} calls / {produced} new tokens; {scheduled:.2} scheduled refreshes per authorizer per period)"),
            "1.00".into(),
            verdict(ratio <= 1.005),
        ));
        store.close().await;
    });
    sim_rt.block_on(sim.shutdown());
}

fn held_generation(engine: &Engine, appid: &str) -> u64 {
    engine
        .slot(None, appid)
        .ok()
        .and_then(|s| s.current())
        .map_or(0, |t| t.generation)
}
