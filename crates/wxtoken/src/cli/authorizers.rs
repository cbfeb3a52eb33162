//! `wxtoken authorizers list|show|refresh|set-appsecret|import|export`: operate on the authorizers in the store.
//! `refresh` asks the running server (its admin API) rather than calling WeChat itself: wxtoken is
//! the one process that refreshes, so a second refresher can never retire its token.
//! No token or refresh token is ever printed, except into an `export` file (mode 0600), whose
//! purpose is a backup or a move between backends.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::ExposeSecret;

use super::context::StoreArgs;
use crate::model::{Appid, AuthorizerRecord, AuthorizerStatus, Timestamp};
use crate::transfer::{self, ExportOptions, Format, ImportOptions};

/// How many bad rows `import` prints before summarising the rest.
const MAX_ROW_ERRORS_SHOWN: usize = 50;
const PAGE: u32 = 1000;

#[derive(Debug, clap::Subcommand)]
pub enum AuthorizersCommand {
    /// List authorizers: appid, kind, status, generation and token expiry (never the tokens).
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Only this status: active, needs_reauth or revoked.
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one authorizer, with its status history and how many refresh tokens it has had.
    Show {
        #[command(flatten)]
        store: StoreArgs,
        appid: String,
    },
    /// Refresh an authorizer's token now, through the running server's admin API (one refresh
    /// however many ask). Needs an admin key in WXTOKEN_API_KEY.
    Refresh {
        #[command(flatten)]
        store: StoreArgs,
        appid: String,
        /// The server's internal listener [default: http://<server.internal_listen>].
        #[arg(long, value_name = "URL")]
        server: Option<url::Url>,
    },
    /// Set the appsecret kept as an authorizer's fallback (used when its authorization is lost),
    /// read from WXTOKEN_APPSECRET or standard input; `--clear` removes it. A running server
    /// applies it within 2 s.
    SetAppsecret {
        #[command(flatten)]
        store: StoreArgs,
        appid: String,
        /// Remove the appsecret instead.
        #[arg(long)]
        clear: bool,
    },
    /// Import authorizers from CSV or JSON lines (appid, refresh_token, optional kind and appsecret).
    /// Idempotent: rows already stored unchanged are left alone; bad rows are reported by line.
    Import {
        #[command(flatten)]
        store: StoreArgs,
        file: PathBuf,
        /// csv or jsonl [default: from the file's extension or first line].
        #[arg(long, value_parser = parse_format)]
        format: Option<Format>,
    },
    /// Export authorizers, decrypted, to a new file created with mode 0600 (a backup, or a move to
    /// another backend: export from one, import into the other).
    Export {
        #[command(flatten)]
        store: StoreArgs,
        file: PathBuf,
        /// csv or jsonl [default: from the file's extension, else jsonl].
        #[arg(long, value_parser = parse_format)]
        format: Option<Format>,
        /// Replace the file if it exists.
        #[arg(long)]
        overwrite: bool,
    },
}

fn parse_format(s: &str) -> Result<Format, String> {
    match s {
        "csv" => Ok(Format::Csv),
        "jsonl" | "json" | "ndjson" => Ok(Format::JsonLines),
        other => Err(format!("unknown format {other:?}: use csv or jsonl")),
    }
}

pub async fn run(command: AuthorizersCommand) -> anyhow::Result<()> {
    match command {
        AuthorizersCommand::List { store, status } => list(store, status).await,
        AuthorizersCommand::Show { store, appid } => show(store, appid).await,
        AuthorizersCommand::Import {
            store,
            file,
            format,
        } => import(store, file, format).await,
        AuthorizersCommand::Export {
            store,
            file,
            format,
            overwrite,
        } => export(store, file, format, overwrite).await,
        AuthorizersCommand::Refresh {
            store,
            appid,
            server,
        } => refresh(store, appid, server).await,
        AuthorizersCommand::SetAppsecret {
            store,
            appid,
            clear,
        } => set_appsecret(store, appid, clear).await,
    }
}

async fn set_appsecret(args: StoreArgs, appid: String, clear: bool) -> anyhow::Result<()> {
    let appid = Appid::parse(&appid).with_context(|| format!("appid {appid}"))?;
    let secret = if clear {
        None
    } else {
        let secret = super::accounts::read_appsecret()?;
        if secret.expose_secret().is_empty() {
            bail!(
                "the appsecret is empty: set {} or pass it on standard input (or --clear)",
                super::accounts::APPSECRET_ENV
            );
        }
        Some(secret)
    };
    let ctx = args.open().await?;
    let component = ctx.component(args.component.as_deref()).await?;
    if !crate::manage::set_authorizer_appsecret(
        &*ctx.store,
        &ctx.vault,
        &component,
        &appid,
        secret.as_ref(),
    )
    .await?
    {
        bail!("no authorizer {appid} under component {component}");
    }
    outln!(
        "{} the fallback appsecret of authorizer {appid}; a running server applies it within {}",
        if clear { "cleared" } else { "set" },
        crate::manage::PROPAGATION
    );
    Ok(())
}

/// The variable `authorizers refresh` reads the admin API key from.
pub const API_KEY_ENV: &str = "WXTOKEN_API_KEY";

async fn refresh(args: StoreArgs, appid: String, server: Option<url::Url>) -> anyhow::Result<()> {
    let appid = Appid::parse(&appid).with_context(|| format!("appid {appid}"))?;
    let key = std::env::var(API_KEY_ENV)
        .ok()
        .filter(|k| !k.trim().is_empty())
        .with_context(|| format!("set {API_KEY_ENV} to an admin API key (wxtoken clients add NAME --appid '*' --admin)"))?;
    let config = crate::config::Config::load(args.config.as_deref(), Vec::new())?;
    let base = match server {
        Some(url) => url,
        None => {
            let mut addr = config.server.internal_listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            url::Url::parse(&format!("http://{addr}"))?
        }
    };
    let mut url = base.join(&format!("v1/admin/authorizers/{appid}/refresh"))?;
    if let Some(component) = &args.component {
        url.query_pairs_mut().append_pair("component", component);
    }
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth(key.trim())
        .timeout(std::time::Duration::from_secs(60))
        .send()
        .await
        .with_context(|| format!("reaching the server at {base} (is `wxtoken serve` running?)"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "the server answered {status}: {}",
            body["error"]["message"].as_str().unwrap_or("no details")
        );
    }
    outln!(
        "refreshed {appid}: generation {}, expires {}",
        body["generation"],
        body["token_expires_at"]
            .as_i64()
            .map(|s| Timestamp::from_millis(s * 1000).to_string())
            .unwrap_or_else(|| "unknown".into())
    );
    Ok(())
}

async fn list(args: StoreArgs, status: Option<String>) -> anyhow::Result<()> {
    let status = status
        .map(|s| AuthorizerStatus::parse(&s).with_context(|| format!("--status {s}")))
        .transpose()?;
    let ctx = args.open().await?;
    let component = ctx.component(args.component.as_deref()).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<20} {:<16} {:<12} {:>10}  {:<25}  NICK NAME",
        "APPID", "KIND", "STATUS", "GENERATION", "TOKEN EXPIRES"
    )?;
    let mut after: Option<Appid> = None;
    loop {
        let page = ctx
            .store
            .authorizers()
            .list_authorizers(&component, after.as_ref(), PAGE)
            .await?;
        for a in page.iter().filter(|a| status.is_none_or(|s| a.status == s)) {
            writeln!(
                out,
                "{:<20} {:<16} {:<12} {:>10}  {:<25}  {}",
                a.appid,
                a.kind.map_or("-", |k| k.as_str()),
                a.status.as_str(),
                a.generation,
                a.token
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |t| t.expires_at.to_string()),
                a.details.nick_name.as_deref().unwrap_or("-"),
            )?;
        }
        match page.last() {
            Some(last) if page.len() == PAGE as usize => after = Some(last.appid.clone()),
            _ => break,
        }
    }
    let counts = ctx
        .store
        .authorizers()
        .count_authorizers(&component)
        .await?;
    writeln!(
        out,
        "component {component}: {} active, {} needs_reauth, {} revoked; {} official accounts, \
         {} mini programs, {} of unknown kind",
        counts.active,
        counts.needs_reauth,
        counts.revoked,
        counts.official_accounts,
        counts.mini_programs,
        counts.kind_unknown
    )?;
    Ok(())
}

async fn show(args: StoreArgs, appid: String) -> anyhow::Result<()> {
    let appid = Appid::parse(&appid).with_context(|| format!("appid {appid}"))?;
    let ctx = args.open().await?;
    let component = ctx.component(args.component.as_deref()).await?;
    let Some(a) = ctx
        .store
        .authorizers()
        .get_authorizer(&component, &appid)
        .await?
    else {
        bail!("no authorizer {appid} under component {component}");
    };
    let history = ctx
        .store
        .authorizers()
        .refresh_token_history(&component, &appid)
        .await?;
    print_authorizer(&a, history.len())?;
    let rogue = ctx
        .store
        .ops()
        .rogue_refresh(&crate::model::Credential::authorizer(&component, &appid))
        .await?;
    match rogue {
        Some(r) => outln!(
            "rogue refresh  {} time(s), last {} (revealed by client {}), first {}: something \
             outside wxtoken refreshes this appid",
            r.times,
            r.last_at,
            r.last_client,
            r.first_at
        ),
        None => outln!("rogue refresh  none seen"),
    }
    for h in &history {
        outln!(
            "  refresh token received {} from {} (generation {}{})",
            h.received_at,
            h.source.as_str(),
            h.generation,
            if h.applied {
                ""
            } else {
                ", lost a race: kept in history only"
            }
        );
    }
    Ok(())
}

fn print_authorizer(a: &AuthorizerRecord, history: usize) -> std::io::Result<()> {
    outln!("authorizer     {}", a.appid);
    outln!("component      {}", a.component);
    outln!(
        "kind           {}",
        a.kind.map_or("unknown", |k| k.as_str())
    );
    let d = &a.details;
    if d.fetched_at.is_some() {
        outln!("nick name      {}", d.nick_name.as_deref().unwrap_or("-"));
        outln!(
            "principal      {}",
            d.principal_name.as_deref().unwrap_or("-")
        );
        outln!(
            "service type   {}",
            d.service_type
                .map_or_else(|| "-".to_owned(), |t| t.to_string())
        );
    } else {
        outln!("details        not asked of WeChat yet (the next reconciliation does)");
    }
    outln!(
        "status         {} since {}",
        a.status.as_str(),
        a.status_changed_at
    );
    if let Some(reason) = &a.status_reason {
        outln!("reason         {reason}");
    }
    outln!("generation     {}", a.generation);
    match &a.token {
        Some(t) => outln!(
            "access token   expires {} (refresh planned {}), source {}",
            t.expires_at,
            t.refresh_at
                .map_or_else(|| "-".to_owned(), |r| r.to_string()),
            t.source.as_str()
        ),
        None => outln!("access token   none yet"),
    }
    outln!(
        "appsecret      {}",
        if a.appsecret.is_some() {
            "on file (fallback)"
        } else {
            "none"
        }
    );
    outln!("refresh tokens {history} received (history kept, values never shown)");
    outln!("created        {}", a.created_at);
    outln!("updated        {}", a.updated_at);
    Ok(())
}

async fn import(args: StoreArgs, file: PathBuf, format: Option<Format>) -> anyhow::Result<()> {
    let ctx = args.open_bulk().await?;
    let component = ctx.component(args.component.as_deref()).await?;
    ctx.store
        .components()
        .ensure_component(&component, Timestamp::now())
        .await?;
    let len = std::fs::metadata(&file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let options = ImportOptions {
        format,
        ..ImportOptions::default()
    };
    let report = transfer::import_file(
        &*ctx.store,
        &ctx.vault,
        &component,
        &file,
        &options,
        &mut |p| {
            bar.set_position(p.bytes);
            bar.set_message(format!("{} rows", p.lines));
        },
    )
    .await;
    bar.finish_and_clear();
    let report = report?;
    let p = &report.progress;
    if p.created + p.updated > 0 {
        crate::manage::announce(
            &*ctx.store,
            crate::store::ChangeScope::Authorizer,
            Some(&component),
            None,
        )
        .await;
    }
    outln!(
        "imported into {component}: {} created, {} updated, {} unchanged, {} failed; a running \
         server serves them within {}",
        p.created,
        p.updated,
        p.unchanged,
        p.failed,
        crate::manage::PROPAGATION
    );
    for e in report.errors.iter().take(MAX_ROW_ERRORS_SHOWN) {
        eprintln!("  line {}: {}", e.line, e.reason);
    }
    if report.errors.len() > MAX_ROW_ERRORS_SHOWN {
        eprintln!(
            "  … and {} more",
            report.errors.len() - MAX_ROW_ERRORS_SHOWN
        );
    }
    if p.failed > 0 {
        bail!("{} rows were not imported (the others were)", p.failed);
    }
    Ok(())
}

async fn export(
    args: StoreArgs,
    file: PathBuf,
    format: Option<Format>,
    overwrite: bool,
) -> anyhow::Result<()> {
    let ctx = args.open().await?;
    let component = ctx.component(args.component.as_deref()).await?;
    let format = format
        .or_else(|| Format::from_path(&file))
        .unwrap_or(Format::JsonLines);
    let bar = ProgressBar::new_spinner();
    let report = transfer::export(
        &*ctx.store,
        &ctx.vault,
        &component,
        &file,
        &ExportOptions { format, overwrite },
        &mut |rows| bar.set_message(format!("{rows} rows")),
    )
    .await;
    bar.finish_and_clear();
    let report = report?;
    outln!(
        "exported {} authorizers of {component} to {} (mode 0600: it holds refresh tokens in clear)",
        report.rows,
        file.display()
    );
    Ok(())
}
