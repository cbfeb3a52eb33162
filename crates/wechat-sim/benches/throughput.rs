//! Simulator throughput and memory: `cargo bench -p wechat-sim --bench throughput`.
//!
//! The binary runs the simulator in a child process (itself, with `SIM_BENCH_CHILD=1`; quotas
//! off, so the rules never refuse a call), creates 100,000 authorized accounts through the control
//! API (`POST /_sim/bulk/authorizers`), reads the child's RSS from `/proc/<pid>/status`, then drives
//! token requests over keep-alive loopback connections with a minimal HTTP/1.1 client (so the load
//! generator costs little next to the server) and prints requests per second per endpoint.
//!
//! Settings (environment): `SIM_BENCH_SECS` per phase (default 5), `SIM_BENCH_CONNS` connections
//! (default 64), `SIM_BENCH_AUTHORIZERS` (default 100000), `SIM_BENCH_LOAD_THREADS` (default 1).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wechat_sim::{Api, BulkAuthorizer, QuotaConfig, SimConfig, Simulator, loadgen};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident set size of a process, in MiB (Linux).
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The child: serve until stdin closes.
fn child() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config = SimConfig {
        quota: QuotaConfig {
            daily: Api::ALL.iter().map(|a| (a.name().to_string(), 0)).collect(),
            ..QuotaConfig::default()
        },
        ..SimConfig::default()
    };
    let sim = rt
        .block_on(Simulator::start(config))
        .expect("simulator starts");
    println!("LISTEN {}", sim.local_addr());
    // Block until the parent closes our stdin (or exits).
    let mut line = String::new();
    while std::io::stdin()
        .read_line(&mut line)
        .map(|n| n > 0)
        .unwrap_or(false)
    {
        line.clear();
    }
    rt.block_on(sim.shutdown());
}

fn post(path: &str, body: &str, out: &mut Vec<u8>) {
    loadgen::post(path, "", body, out);
}

fn get(path: &str, out: &mut Vec<u8>) {
    loadgen::get(path, "", out);
}

/// One request on a fresh connection, returning the body.
async fn call(addr: SocketAddr, req: Vec<u8>) -> Vec<u8> {
    let (status, body) = loadgen::call(addr, &req).await.expect("request");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    body
}

/// HTTP 200 without a non-zero errcode.
fn wechat_ok(status: u16, body: &[u8]) -> bool {
    status == 200
        && (!body.windows(9).any(|w| w == b"\"errcode\"")
            || body.windows(11).any(|w| w == b"\"errcode\":0"))
}

/// Drive `conns` keep-alive connections for `secs`: (req/s, ok, errors).
fn load(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    conns: u64,
    secs: u64,
    make: loadgen::MakeRequest,
) -> (f64, u64, u64) {
    let report = rt.block_on(loadgen::drive(
        addr,
        conns,
        Duration::from_secs(secs),
        make,
        Arc::new(wechat_ok),
    ));
    (report.rps(), report.ok, report.bad)
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).expect("JSON body")
}

fn main() {
    if std::env::var_os("SIM_BENCH_CHILD").is_some() {
        return child();
    }
    let secs = env_or("SIM_BENCH_SECS", 5);
    let conns = env_or("SIM_BENCH_CONNS", 64);
    let n = env_or("SIM_BENCH_AUTHORIZERS", 100_000);
    let load_threads = env_or("SIM_BENCH_LOAD_THREADS", 1) as usize;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "wechat-sim throughput: {cores} cores, simulator in a child process, {conns} keep-alive connections, {secs} s per phase"
    );

    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .env("SIM_BENCH_CHILD", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("child starts");
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().expect("child stdout")).lines();
    let first = lines
        .next()
        .expect("child prints its address")
        .expect("utf-8");
    let addr: SocketAddr = first
        .strip_prefix("LISTEN ")
        .expect("LISTEN line")
        .parse()
        .expect("address");
    let rss_idle = rss_mib(pid);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(load_threads)
        .enable_all()
        .build()
        .expect("load runtime");
    let mut req = Vec::new();

    post("/_sim/components", "{}", &mut req);
    let c = json(&rt.block_on(call(addr, req.clone())));
    let component_appid = c["component_appid"].as_str().expect("appid").to_string();
    let t = Instant::now();
    post(
        "/_sim/bulk/authorizers",
        &format!(r#"{{"component_appid":"{component_appid}","count":{n}}}"#),
        &mut req,
    );
    let lines_json = rt.block_on(call(addr, req.clone()));
    let authorizers: Vec<BulkAuthorizer> = lines_json
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("JSON line"))
        .collect();
    assert_eq!(authorizers.len() as u64, n);
    let bulk_secs = t.elapsed().as_secs_f64();
    let rss_bulk = rss_mib(pid);
    println!(
        "simulator RSS: {rss_idle:.1} MiB idle, {rss_bulk:.1} MiB with {n} authorizers ({:.0} bytes each; created and exported in {bulk_secs:.2} s)",
        (rss_bulk - rss_idle) * 1024.0 * 1024.0 / n as f64
    );

    post(
        "/cgi-bin/component/api_component_token",
        &format!(
            r#"{{"component_appid":"{component_appid}","component_appsecret":"{}","component_verify_ticket":"{}"}}"#,
            c["component_appsecret"].as_str().expect("secret"),
            c["latest_ticket"].as_str().expect("ticket")
        ),
        &mut req,
    );
    let ct = json(&rt.block_on(call(addr, req.clone())))["component_access_token"]
        .as_str()
        .expect("component token")
        .to_string();

    // Phase 1: api_authorizer_token across every authorizer.
    let path = format!("/cgi-bin/component/api_authorizer_token?component_access_token={ct}");
    let auths = Arc::new(authorizers);
    let make = {
        let (auths, component_appid) = (auths.clone(), component_appid.clone());
        Arc::new(move |c: u64, i: u64, out: &mut Vec<u8>| {
            let a = &auths[((c * 7919 + i * 64 + c) % n) as usize];
            let body = format!(
                r#"{{"component_appid":"{component_appid}","authorizer_appid":"{}","authorizer_refresh_token":"{}"}}"#,
                a.authorizer_appid, a.authorizer_refresh_token
            );
            post(&path, &body, out);
        })
    };
    let (rps, ok, bad) = load(&rt, addr, conns, secs, make);
    println!(
        "api_authorizer_token  {rps:>9.0} req/s  ({ok} ok, {bad} errors); simulator RSS {:.1} MiB",
        rss_mib(pid)
    );

    // Phase 2: cgi-bin/token (GET, query string): a new token on every call.
    post("/_sim/accounts", r#"{"kind":"official_account"}"#, &mut req);
    let acc = json(&rt.block_on(call(addr, req.clone())));
    let (appid, secret) = (
        acc["appid"].as_str().expect("appid").to_string(),
        acc["appsecret"].as_str().expect("secret").to_string(),
    );
    let token_path =
        format!("/cgi-bin/token?grant_type=client_credential&appid={appid}&secret={secret}");
    let (rps, ok, bad) = load(
        &rt,
        addr,
        conns,
        secs,
        Arc::new(move |_, _, out: &mut Vec<u8>| get(&token_path, out)),
    );
    println!(
        "cgi-bin/token         {rps:>9.0} req/s  ({ok} ok, {bad} errors); simulator RSS {:.1} MiB",
        rss_mib(pid)
    );

    // Phase 3: stable_token (POST JSON): the same token while valid.
    let stable_body = format!(
        r#"{{"grant_type":"client_credential","appid":"{appid}","secret":"{secret}","force_refresh":false}}"#
    );
    let body = stable_body.clone();
    let (rps, ok, bad) = load(
        &rt,
        addr,
        conns,
        secs,
        Arc::new(move |_, _, out: &mut Vec<u8>| post("/cgi-bin/stable_token", &body, out)),
    );
    println!("cgi-bin/stable_token  {rps:>9.0} req/s  ({ok} ok, {bad} errors)");

    // Phase 4: a token-checked business call.
    post("/cgi-bin/stable_token", &stable_body, &mut req);
    let token = json(&rt.block_on(call(addr, req.clone())))["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let ip_path = format!("/cgi-bin/getcallbackip?access_token={token}");
    let (rps, ok, bad) = load(
        &rt,
        addr,
        conns,
        secs,
        Arc::new(move |_, _, out: &mut Vec<u8>| get(&ip_path, out)),
    );
    println!("cgi-bin/getcallbackip {rps:>9.0} req/s  ({ok} ok, {bad} errors)");

    get("/_sim/stats?appid=none", &mut req);
    let stats = json(&rt.block_on(call(addr, req.clone())));
    println!(
        "after the run: simulator RSS {:.1} MiB, {} calls served",
        rss_mib(pid),
        stats["total_calls"]
    );
    drop(child.stdin.take());
    let _ = child.wait();
}
