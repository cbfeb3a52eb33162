//! `wxtoken demo`: the whole product on one machine with no WeChat account. Starts the simulator
//! and wxtoken (SQLite and a generated master key in a demo directory, started afresh each run),
//! registers a component, authorizes a handful of simulated accounts through the real flow (the
//! simulator pushes signed, encrypted `authorized` events; wxtoken exchanges the codes), creates an
//! API key, prints what a new user needs, then prints refreshes as they happen until Ctrl-C.
//! Token lifetimes are one minute, so a refresh shows within about half a minute.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use wechat_sim::{AccountKind, AccountSpec, ComponentSpec, SimConfig, Simulator};

use crate::app::App;
use crate::config::{ComponentConfig, Config};
use crate::model::{AppidGrant, CredentialKind};
use crate::store;
use crate::vault::{MasterKey, Vault};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its SQLite file and master key (wiped at start).
    #[arg(long, value_name = "DIR", default_value = "demo-data")]
    pub dir: PathBuf,
    /// The public listener (pushes, /authorize); port 0 picks a free one.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub public_listen: SocketAddr,
    /// The internal listener (token API); port 0 picks a free one.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    pub internal_listen: SocketAddr,
    /// The WeChat API gateway's listener; port 0 picks a free one.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8082")]
    pub gateway_listen: SocketAddr,
    /// Simulated token lifetime (refreshes happen at about half of it).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub token_lifetime: Duration,
    /// How many simulated accounts to authorize at start.
    #[arg(long, default_value_t = 4)]
    pub accounts: usize,
    /// Stop after this long instead of waiting for Ctrl-C (for scripts and tests).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub run_for: Option<Duration>,
}

/// Binds `addr`, or a free port on the same interface if it is taken.
async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(_) if addr.port() != 0 => Ok(TcpListener::bind(SocketAddr::new(addr.ip(), 0)).await?),
        Err(e) => Err(e.into()),
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    // Errors only: the demo prints what happens itself (RUST_LOG=info shows everything).
    crate::telemetry::init(&crate::config::LogConfig {
        level: "error".to_owned(),
        ..Default::default()
    });
    if args.token_lifetime < Duration::from_secs(20) {
        bail!("--token-lifetime must be at least 20s");
    }
    prepare_dir(&args.dir)?;
    let master = MasterKey::generate();
    let key_file = args.dir.join("master.key");
    write_private(&key_file, master.to_base64().expose_secret())?;

    let sim = Simulator::start(SimConfig {
        token_lifetime: args.token_lifetime,
        overlap: Duration::from_secs(20).min(args.token_lifetime / 3),
        ticket_interval: Duration::from_secs(60),
        ..SimConfig::default()
    })
    .await
    .context("starting the WeChat simulator")?;
    let public = bind(args.public_listen).await?;
    let internal = bind(args.internal_listen).await?;
    let public_url = format!("http://{}", public.local_addr()?);
    // The component's credentials, as the Open Platform console would show them. It is created at
    // the simulator only once wxtoken listens, so the simulator's first ticket push lands.
    let component = ComponentSpec {
        component_appid: Some(format!("wx{}", random_hex(8))),
        component_appsecret: Some(random_hex(16)),
        token: Some(random_hex(16)),
        encoding_aes_key: Some(random_aes_key()),
        push_url: Some(format!("{public_url}/wechat/events")),
    };
    let component_appid = component.component_appid.clone().unwrap_or_default();

    let db = args.dir.join("wxtoken.db");
    // Built-in defaults only: the demo must not pick up a real deployment's WXTOKEN_ variables.
    let mut config = Config::from_sources(crate::config::Sources::default())?;
    config.storage.url = SecretString::from(format!("sqlite://{}", db.display()));
    config.security.master_key_file = Some(key_file.clone());
    config.server.public_url = Some(public_url.parse()?);
    config.server.gateway_listen = Some(args.gateway_listen);
    config.upstream.base_url = sim.base_url().parse()?;
    config.upstream.authorize_url = Some(sim.base_url().parse()?);
    config.refresh.serve_margin = Duration::from_secs(10);
    config.refresh.backoff_max = Duration::from_secs(10);
    config.components = vec![ComponentConfig {
        appid: component_appid.clone(),
        appsecret: SecretString::from(component.component_appsecret.clone().unwrap_or_default()),
        token: SecretString::from(component.token.clone().unwrap_or_default()),
        encoding_aes_key: SecretString::from(
            component.encoding_aes_key.clone().unwrap_or_default(),
        ),
        previous_encoding_aes_key: None,
    }];
    config.validate()?;

    let store = store::open(config.storage.url.expose_secret()).await?;
    let vault = Vault::new(&master, &[]);
    vault.verify(&*store).await?;
    let (_, key) = crate::manage::create_client(&*store, "demo", AppidGrant::All, true).await?;
    let running = App::start(&config, store.clone(), vault, public, internal).await?;

    // Registering the component makes the simulator push its first ticket (then one a minute).
    sim.control()
        .create_component(component)
        .map_err(|e| anyhow::anyhow!("creating the simulated component: {e}"))?;
    wait_for_ticket(&*store, &component_appid).await?;
    let mut authorized = Vec::new();
    for i in 0..args.accounts {
        let kind = if i % 2 == 0 {
            AccountKind::OfficialAccount
        } else {
            AccountKind::MiniProgram
        };
        let account = sim
            .control()
            .create_account(AccountSpec {
                kind,
                appid: None,
                appsecret: None,
            })
            .map_err(|e| anyhow::anyhow!("creating a simulated account: {e}"))?;
        sim.control()
            .authorize(&account.appid, &component_appid)
            .map_err(|e| anyhow::anyhow!("authorizing {}: {e}", account.appid))?;
        authorized.push((account.appid, kind));
    }
    // Two more the visitor can approve on the simulated consent page.
    for kind in [AccountKind::OfficialAccount, AccountKind::MiniProgram] {
        let _ = sim.control().create_account(AccountSpec {
            kind,
            appid: None,
            appsecret: None,
        });
    }
    wait_for_tokens(&running, &authorized).await?;

    let api_key = key.key.expose_secret().to_owned();
    let shown = show(&args, &running, &authorized, &api_key, &sim, &public_url).await;
    running.shutdown().await?;
    sim.shutdown().await;
    match shown {
        // The reader of the output went away (`wxtoken demo | head`): a normal end.
        Err(e) if super::is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// Prints what a new user needs, then each refresh as it happens until Ctrl-C or `--run-for`.
/// The commands it prints read the current token and generation first, so they keep working
/// after any number of refreshes.
async fn show(
    args: &DemoArgs,
    running: &crate::app::RunningApp,
    authorized: &[(String, AccountKind)],
    api_key: &str,
    sim: &wechat_sim::SimHandle,
    public_url: &str,
) -> anyhow::Result<()> {
    let internal_url = format!("http://{}", running.internal_addr);
    let first = &authorized[0].0;
    let sim_url = sim.base_url();
    outln!(
        "\nwxtoken demo is running: a WeChat simulator, wxtoken, and {} authorized accounts.\n",
        authorized.len()
    );
    outln!("  token API (internal)   {internal_url}   (OpenAPI: {internal_url}/openapi.json)");
    outln!("  API key (admin, *)     {api_key}");
    outln!("  accounts               {}", list_accounts(authorized));
    outln!();
    outln!("Try it in another shell (needs curl and sed):");
    outln!("  K={api_key} U={internal_url} S={sim_url} A={first}");
    outln!("  # read the current token: cache it until refresh_at");
    outln!("  curl -s -H \"Authorization: Bearer $K\" $U/v1/tokens/$A; echo");
    outln!("  # make WeChat refuse it, as when something else refreshed the account");
    outln!(
        "  T=$(curl -s -H \"Authorization: Bearer $K\" $U/v1/tokens/$A | sed -E 's/.*\"access_token\":\"([^\"]*)\".*/\\1/')"
    );
    outln!("  curl -s -X POST $S/_sim/accounts/$A/retire_tokens; echo");
    outln!("  curl -s \"$S/cgi-bin/getcallbackip?access_token=$T\"; echo");
    outln!(
        "  # report it, as a client does on 40001/42001: wxtoken checks, refreshes once, answers the new one"
    );
    outln!(
        "  curl -s -X POST -H \"Authorization: Bearer $K\" -H 'Content-Type: application/json' -d \"{{\\\"access_token\\\":\\\"$T\\\"}}\" $U/v1/tokens/$A/invalidate; echo"
    );
    outln!("  # wait for the next generation (long-poll; answers at the next refresh)");
    outln!(
        "  G=$(curl -s -H \"Authorization: Bearer $K\" $U/v1/tokens/$A | sed -E 's/.*\"generation\":([0-9]+).*/\\1/')"
    );
    outln!("  curl -s -H \"Authorization: Bearer $K\" \"$U/v1/tokens/$A?after=$G&wait=60\"; echo");
    outln!();
    outln!(
        "  authorization page         {public_url}/authorize   (wxtoken's; it leads to the simulator's consent page)"
    );
    // A one-time link, not the key in a URL: it signs the browser in once, within 10 minutes.
    let dashboard = match running
        .state
        .0
        .ui
        .one_time_token(crate::vault::hash_api_key(api_key), "demo".into())
        .await
    {
        Ok(Some(token)) => format!(
            "{internal_url}/ui/login/once?token={token}\n                             (a one-time sign-in link, 10 min; then sign in at {internal_url}/ui/ with the API key)"
        ),
        _ => format!("{internal_url}/ui/   (sign in with the API key)"),
    };
    outln!("  dashboard                  {dashboard}");
    outln!("  WeChat simulator           {sim_url}   (docs/SIMULATOR.md)");
    outln!("  metrics                    {internal_url}/metrics");
    outln!("  data                       {}", args.dir.display());
    outln!(
        "\nRefreshes as they happen (tokens live {}; Ctrl-C stops):",
        humantime::format_duration(args.token_lifetime)
    );

    let watch = print_refreshes(running);
    let printed = match args.run_for {
        Some(limit) => {
            tokio::select! {
                r = watch => r,
                () = tokio::time::sleep(limit) => Ok(()),
                () = crate::app::shutdown_signal() => Ok(()),
            }
        }
        None => {
            tokio::select! {
                r = watch => r,
                () = crate::app::shutdown_signal() => Ok(()),
            }
        }
    };
    printed?;
    outln!("\nstopping");
    Ok(())
}

fn list_accounts(accounts: &[(String, AccountKind)]) -> String {
    accounts
        .iter()
        .map(|(appid, kind)| {
            let kind = match kind {
                AccountKind::OfficialAccount => "official account",
                AccountKind::MiniProgram => "mini program",
            };
            format!("{appid} ({kind})")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Removes what an earlier demo left (its database and key belong to a simulator that is gone).
fn prepare_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for name in [
        "wxtoken.db",
        "wxtoken.db-wal",
        "wxtoken.db-shm",
        "master.key",
    ] {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(())
}

/// Writes a file only its owner can read.
fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{contents}")?;
    Ok(())
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// A 43-character EncodingAESKey, as the console generates.
fn random_aes_key() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..43)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// Waits until the simulator's first ticket push is stored.
async fn wait_for_ticket(store: &dyn crate::store::Store, component: &str) -> anyhow::Result<()> {
    let component = crate::model::ComponentAppid::parse(component)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while store
        .components()
        .latest_ticket(&component)
        .await?
        .is_none()
    {
        if tokio::time::Instant::now() > deadline {
            bail!("the simulator's ticket push did not arrive; run with RUST_LOG=info to see why");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits until every authorized account has a token (the pushes and query_auth take a moment).
async fn wait_for_tokens(
    running: &crate::app::RunningApp,
    accounts: &[(String, AccountKind)],
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let missing: Vec<&str> = accounts
            .iter()
            .filter(|(appid, _)| running.engine.token(None, appid).is_err())
            .map(|(appid, _)| appid.as_str())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "no token for {} after 30 s; run with RUST_LOG=info to see why",
                missing.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints each new token generation of every authorizer and direct account as it appears.
async fn print_refreshes(running: &crate::app::RunningApp) -> std::io::Result<()> {
    let mut seen: HashMap<String, u64> = HashMap::new();
    running.engine.cache().for_each(|slot| {
        if let Some(t) = slot.current() {
            seen.insert(slot.credential().appid.to_string(), t.generation);
        }
    });
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let mut fresh = Vec::new();
        running.engine.cache().for_each(|slot| {
            if slot.credential().kind == CredentialKind::Component {
                return;
            }
            if let Some(t) = slot.current() {
                let appid = slot.credential().appid.to_string();
                if seen.get(&appid) != Some(&t.generation) {
                    seen.insert(appid.clone(), t.generation);
                    fresh.push((appid, t));
                }
            }
        });
        for (appid, t) in fresh {
            let now = running.engine.now();
            let left = (t.expires_at.as_millis() - now.as_millis()).max(0) / 1000;
            let next = (t.refresh_at.as_millis() - now.as_millis()).max(0) / 1000;
            outln!(
                "  {} {appid} generation {} from {} — valid {left}s, next refresh in {next}s",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
                t.generation,
                t.source.as_str(),
            );
        }
    }
}
