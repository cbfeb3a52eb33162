//! Measure 7, scale (issue #18): the figures that grow with the number of authorizers, at each
//! size of `WXTOKEN_BENCH_SCALES` (default `1000,100000,1000000`), printed side by side so growth
//! shows.
//!
//! For each size, on a fresh simulator and a fresh SQLite file (and a fresh PostgreSQL database
//! unless `WXTOKEN_BENCH_PG_URL=none`):
//! - the simulator holds N authorizers (`bulk_authorize`);
//! - `wxtoken authorizers import` (the real binary) stores their refresh tokens;
//! - in this process, the engine opens on it and refreshes a sample of them against the simulator
//!   (`WXTOKEN_BENCH_SCALE_SAMPLE`, default 20,000, spread over all N: CPU per refresh), then
//!   reconciles once (every page of `api_get_authorizer_list`);
//! - every other authorizer gets a token written straight to the store (setup, not measured:
//!   refreshing a million through the simulator would take the whole budget);
//! - a fresh child process cold-starts the engine on it (time, RSS and heap per credential);
//! - `wxtoken serve` starts on it: time to its first listener, token reads at 64 connections over
//!   all N appids, `/metrics` scraped, the admin list API's first and a middle page;
//! - `wxtoken authorizers export` writes every authorizer out.

use super::*;

/// Figures of one size.
struct Figures {
    n: usize,
    sim_secs: f64,
    /// Heap the simulator took per authorizer (the list it returned left out).
    sim_bytes: f64,
    import_secs: f64,
    refresh: RefreshCost,
    reconcile_secs: f64,
    reconcile_listed: usize,
    cold: ColdStart,
    pg: Option<(f64, ColdStart)>,
    serve_secs: f64,
    reads: loadgen::LoadReport,
    scrape: (Duration, Duration, usize),
    list: (Duration, Duration),
    export_secs: f64,
}

pub(crate) fn scale(
    sim_rt: &tokio::runtime::Runtime,
    rt: &tokio::runtime::Runtime,
    secs: u64,
    pg: &str,
) {
    let sizes: Vec<usize> = std::env::var("WXTOKEN_BENCH_SCALES")
        .unwrap_or_else(|_| "1000,100000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let sample = env_or("WXTOKEN_BENCH_SCALE_SAMPLE", 20_000) as usize;
    let mut all = Vec::new();
    let mut bare = None;
    for &n in &sizes {
        let started = Instant::now();
        let (figures, key, body_len) = one_size(sim_rt, rt, n, secs, sample, pg);
        println!(
            "[scale {n}] done in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        if bare.is_none() {
            bare = Some(bare_reference(
                rt,
                body_len,
                &format!("Authorization: Bearer {key}\r\n"),
                secs,
            ));
        }
        all.push(figures);
    }
    let Some(bare) = bare else { return };
    print_table(&all, &bare, sample);
}

/// splitmix64: the read load's appid order, spread over all N without a table.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes a two-hour token for each of `credentials` straight to the store, sealed as the engine
/// seals them (setup for the cold start and the reads, not a measure).
async fn write_tokens(store: &Arc<dyn Store>, master: &MasterKey, credentials: &[Credential]) {
    use futures::StreamExt;
    use wxtoken::model::{
        NewAccessToken, RefreshResult, SaveOutcome, SecretSlot, Timestamp, TokenSource,
    };
    let vault = Vault::new(master, &[]);
    let now = Timestamp::now();
    // Four batches at a time: on PostgreSQL each row is a round trip.
    futures::stream::iter(credentials.chunks(1000))
        .for_each_concurrent(4, |chunk| {
            let vault = &vault;
            async move {
                let results: Vec<RefreshResult> = chunk
                    .iter()
                    .map(|c| {
                        // The length of the simulator's tokens (and WeChat's: about 140
                        // characters).
                        let token = format!("{:0>139}", format!("SCALE{}", c.appid));
                        RefreshResult {
                            credential: c.clone(),
                            expected_generation: 1,
                            access_token: NewAccessToken {
                                sealed: vault
                                    .seal(
                                        SecretSlot::AccessToken { credential: c },
                                        token.as_bytes(),
                                    )
                                    .expect("seal"),
                                issued_at: now,
                                expires_at: now.plus(Duration::from_secs(7200)),
                                refresh_at: Some(now.plus(Duration::from_secs(3600))),
                                source: TokenSource::AuthorizerToken,
                            },
                            refresh_token: None,
                            at: now,
                        }
                    })
                    .collect();
                let outcomes = store
                    .tokens()
                    .save_refresh_results(&results)
                    .await
                    .expect("write tokens");
                assert!(
                    outcomes
                        .iter()
                        .all(|o| matches!(o, SaveOutcome::Saved { .. })),
                    "a token write lost its fence"
                );
            }
        })
        .await;
}

fn timed_get(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    path: &str,
    auth: &str,
) -> (Duration, usize) {
    let mut req = Vec::new();
    loadgen::get(path, auth, &mut req);
    let t = Instant::now();
    let (status, body) = rt.block_on(loadgen::call(addr, &req)).expect(path);
    let took = t.elapsed();
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    (took, body.len())
}

fn one_size(
    sim_rt: &tokio::runtime::Runtime,
    rt: &tokio::runtime::Runtime,
    n: usize,
    secs: u64,
    sample: usize,
    pg: &str,
) -> (Figures, String, usize) {
    let sim = sim_rt
        .block_on(Simulator::start(sim_config(Duration::from_secs(7200))))
        .expect("simulator");
    let component = sim
        .control()
        .create_component(component_spec(None))
        .expect("component");
    let comp = ComponentAppid::parse(&component.component_appid).expect("appid");

    // The simulator holds N.
    let heap0 = heap_bytes();
    let t = Instant::now();
    let authorizers = sim
        .control()
        .bulk_authorize(&component.component_appid, n, AccountKind::OfficialAccount)
        .expect("bulk");
    let sim_secs = t.elapsed().as_secs_f64();
    let listed: usize = authorizers.capacity() * std::mem::size_of::<BulkAuthorizer>()
        + authorizers
            .iter()
            .map(|a| a.authorizer_appid.capacity() + a.authorizer_refresh_token.capacity())
            .sum::<usize>();
    let sim_bytes = (heap_bytes().saturating_sub(heap0) as f64 - listed as f64) / n as f64;
    println!("[scale {n}] simulator: {n} authorizers in {sim_secs:.1} s, {sim_bytes:.0} B each");

    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("authorizers.csv");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&csv).expect("csv"));
        for a in &authorizers {
            writeln!(
                file,
                "{},{}",
                a.authorizer_appid, a.authorizer_refresh_token
            )
            .expect("write");
        }
        file.flush().expect("flush");
    }
    let credentials: Vec<Credential> = authorizers
        .iter()
        .map(|a| Credential::authorizer(&comp, &Appid::parse(&a.authorizer_appid).expect("appid")))
        .collect();
    drop(authorizers);

    // Import through the CLI.
    let master = MasterKey::generate();
    let url = format!("sqlite://{}", dir.path().join("scale.db").display());
    let env = serve_env(&sim, &url, &master, free_port());
    let import = |env: &[(String, String)]| {
        let t = Instant::now();
        let out = run_ok(
            &mut wxtoken(env, &["authorizers", "import", csv.to_str().unwrap()]),
            "import",
        );
        let secs = t.elapsed().as_secs_f64();
        println!(
            "[scale {n}] import: {secs:.1} s: {}",
            out.lines().last().unwrap_or("")
        );
        secs
    };
    let import_secs = import(&env);

    // The engine in this process: a sample refreshed, one reconciliation, then the other tokens.
    let stride = (n / sample.max(1)).max(1);
    let sampled: Vec<Credential> = credentials
        .iter()
        .step_by(stride)
        .take(sample)
        .cloned()
        .collect();
    let (refresh, reconcile_secs, reconcile_listed) = rt.block_on(async {
        let store = store::open(&url).await.expect("store");
        let tracker = TaskTracker::new();
        let engine = open_engine(
            &sim,
            &component,
            &store,
            &master,
            refresh_config(64),
            &tracker,
        )
        .await;
        feed_ticket(&engine, &sim, &component).await;
        let cost = refresh_all(&engine, &sim, &sampled).await;
        println!(
            "[scale {n}] {} refreshes: {:.0} µs of CPU each ({}), {:.1} s wall, {} failed",
            cost.n,
            cost.per_refresh_us(),
            cost.by_thread(),
            cost.wall.as_secs_f64(),
            cost.failed
        );
        let t = Instant::now();
        let report = engine.reconcile_once(&comp).await.expect("reconcile");
        let reconcile_secs = t.elapsed().as_secs_f64();
        println!("[scale {n}] reconciliation: {report:?} in {reconcile_secs:.1} s");
        drop(engine);
        tracker.close();
        tracker.wait().await;
        let t = Instant::now();
        let rest: Vec<Credential> = credentials
            .iter()
            .enumerate()
            .filter(|(i, _)| i % stride != 0 || i / stride >= sample)
            .map(|(_, c)| c.clone())
            .collect();
        write_tokens(&store, &master, &rest).await;
        println!(
            "[scale {n}] setup: {} tokens written in {:.1} s",
            rest.len(),
            t.elapsed().as_secs_f64()
        );
        store.close().await;
        (cost, reconcile_secs, report.listed)
    });

    let cold = measure_cold_start(&format!("scale {n} sqlite"), &url, &master);
    if std::env::var_os("WXTOKEN_BENCH_SCALE_KEEP").is_some() {
        // For profiling a cold start by hand: WXTOKEN_BENCH_ROLE=coldstart with these two.
        let kept = std::env::temp_dir().join(format!("wxtoken-scale-{n}.db"));
        std::fs::copy(dir.path().join("scale.db"), &kept).expect("copy");
        println!(
            "[scale {n}] kept: WXTOKEN_BENCH_URL=sqlite://{} WXTOKEN_BENCH_KEY={}",
            kept.display(),
            master.to_base64().expose_secret()
        );
    }

    // PostgreSQL: import and cold start.
    let pg_figures = (pg != "none").then(|| {
        let (pg_url, admin) = rt.block_on(fresh_pg_database(pg)).expect("PostgreSQL");
        let pg_env = serve_env(&sim, &pg_url, &master, free_port());
        let secs = import(&pg_env);
        rt.block_on(async {
            let store = store::open(&pg_url).await.expect("store");
            let t = Instant::now();
            write_tokens(&store, &master, &credentials).await;
            println!(
                "[scale {n}] setup (PostgreSQL): {} tokens written in {:.1} s",
                credentials.len(),
                t.elapsed().as_secs_f64()
            );
            store.close().await;
        });
        let cold = measure_cold_start(&format!("scale {n} postgres"), &pg_url, &master);
        rt.block_on(drop_pg_database(&admin, &pg_url));
        (secs, cold)
    });

    // The server on the SQLite file.
    let key = run_ok(
        &mut wxtoken(
            &env,
            &["clients", "add", "bench", "--appid", "*", "--admin"],
        ),
        "clients add",
    )
    .trim()
    .to_owned();
    let auth = format!("Authorization: Bearer {key}\r\n");
    let t = Instant::now();
    let (mut server, internal, _) = start_serve(&env);
    let serve_secs = t.elapsed().as_secs_f64();
    let appids: Arc<Vec<String>> =
        Arc::new(credentials.iter().map(|c| c.appid.to_string()).collect());
    let (_, body_len) = timed_get(rt, internal, &format!("/v1/tokens/{}", appids[0]), &auth);
    let make: loadgen::MakeRequest = {
        let (appids, auth) = (appids.clone(), auth.clone());
        Arc::new(move |c, i, out| {
            let appid = &appids[(mix((c << 40) | i) % appids.len() as u64) as usize];
            loadgen::get(&format!("/v1/tokens/{appid}"), &auth, out);
        })
    };
    let reads = rt.block_on(loadgen::drive(
        internal,
        CONNS,
        Duration::from_secs(secs),
        make,
        Arc::new(|status, _| status == 200),
    ));
    println!(
        "[scale {n}] reads: {:.0} req/s, p50 {:?}, p99 {:?}, {} errors",
        reads.rps(),
        reads.p50,
        reads.p99,
        reads.bad
    );
    let mut scrapes: Vec<(Duration, usize)> = (0..5)
        .map(|_| timed_get(rt, internal, "/metrics", ""))
        .collect();
    scrapes.sort();
    let scrape = (scrapes[2].0, scrapes[4].0, scrapes[4].1);
    let first = timed_get(rt, internal, "/v1/admin/authorizers?limit=100", &auth).0;
    let middle = timed_get(
        rt,
        internal,
        &format!("/v1/admin/authorizers?limit=100&after={}", appids[n / 2]),
        &auth,
    )
    .0;
    stop(&mut server);

    let out = dir.path().join("export.jsonl");
    let t = Instant::now();
    run_ok(
        &mut wxtoken(&env, &["authorizers", "export", out.to_str().unwrap()]),
        "export",
    );
    let export_secs = t.elapsed().as_secs_f64();
    sim_rt.block_on(sim.shutdown());
    (
        Figures {
            n,
            sim_secs,
            sim_bytes,
            import_secs,
            refresh,
            reconcile_secs,
            reconcile_listed,
            cold,
            pg: pg_figures,
            serve_secs,
            reads,
            scrape,
            list: (first, middle),
            export_secs,
        },
        key,
        body_len,
    )
}

fn print_table(all: &[Figures], bare: &loadgen::LoadReport, sample: usize) {
    let header: Vec<String> = all.iter().map(|f| format!("{}", f.n)).collect();
    println!("\n| measure | {} | goal |", header.join(" | "));
    println!("|---|{}---|", "---|".repeat(all.len()));
    let row = |measure: &str, cell: &dyn Fn(&Figures) -> String, goal: &str| {
        let cells: Vec<String> = all.iter().map(cell).collect();
        println!("| {measure} | {} | {goal} |", cells.join(" | "));
    };
    row(
        "Simulator: N authorizers created (heap each)",
        &|f| format!("{:.1} s ({:.0} B)", f.sim_secs, f.sim_bytes),
        "—",
    );
    row(
        "Import, `wxtoken authorizers import`, SQLite",
        &|f| format!("{:.1} s", f.import_secs),
        "≤ 60 s at 1M",
    );
    row(
        "Import, PostgreSQL",
        &|f| {
            f.pg.as_ref()
                .map_or("—".into(), |(s, _)| format!("{s:.1} s"))
        },
        "≤ 60 s at 1M",
    );
    row(
        &format!("CPU per refresh, SQLite (sample of ≤ {sample})"),
        &|f| format!("{:.0} µs", f.refresh.per_refresh_us()),
        "≤ 50 µs",
    );
    row(
        "Reconciliation, every page of the list",
        &|f| {
            format!(
                "{:.1} s ({} pages)",
                f.reconcile_secs,
                f.reconcile_listed.div_ceil(500)
            )
        },
        "—",
    );
    row(
        "Cold start, SQLite (load + decrypt)",
        &|f| format!("{:.2} s", f.cold.secs),
        "≤ 8 s at 1M",
    );
    row(
        "Memory per credential, SQLite: RSS (heap)",
        &|f| {
            format!(
                "{:.0} B ({:.0} B)",
                f.cold.rss_per_credential(),
                f.cold.heap_per_credential()
            )
        },
        "≤ 400 B",
    );
    row(
        "RSS after cold start, SQLite",
        &|f| format!("{:.0} MB", f.cold.rss_kb / 1024.0),
        "—",
    );
    row(
        "Cold start, PostgreSQL",
        &|f| {
            f.pg.as_ref()
                .map_or("—".into(), |(_, c)| format!("{:.2} s", c.secs))
        },
        "≤ 8 s at 1M",
    );
    row(
        "Memory per credential, PostgreSQL: RSS (heap)",
        &|f| {
            f.pg.as_ref().map_or("—".into(), |(_, c)| {
                format!(
                    "{:.0} B ({:.0} B)",
                    c.rss_per_credential(),
                    c.heap_per_credential()
                )
            })
        },
        "≤ 400 B",
    );
    row(
        "`wxtoken serve`: start to listening, SQLite",
        &|f| format!("{:.2} s", f.serve_secs),
        "—",
    );
    row(
        &format!("Token reads, {CONNS} connections, every appid"),
        &|f| {
            format!(
                "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                f.reads.rps(),
                ms(f.reads.p50),
                ms(f.reads.p99),
                f.reads.bad
            )
        },
        "p99 ≤ 1 ms, flat",
    );
    row(
        "  wxtoken / bare axum handler",
        &|f| format!("{:.2}", f.reads.rps() / bare.rps()),
        "≥ 0.9",
    );
    row(
        "`/metrics` scrape: p50 (slowest of 5, size)",
        &|f| {
            format!(
                "{:.1} ms ({:.1} ms, {} kB)",
                ms(f.scrape.0),
                ms(f.scrape.1),
                f.scrape.2 / 1024
            )
        },
        "≤ 50 ms",
    );
    row(
        "Admin list API, 100 a page: first / middle page",
        &|f| format!("{:.1} / {:.1} ms", ms(f.list.0), ms(f.list.1)),
        "—",
    );
    row(
        "Export, `wxtoken authorizers export`, SQLite",
        &|f| format!("{:.1} s", f.export_secs),
        "—",
    );
    println!(
        "\nreference: bare axum handler {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
        bare.rps(),
        ms(bare.p50),
        ms(bare.p99)
    );
}
