//! `wxtoken accounts add|remove|list`: directly managed accounts (their own appid + appsecret).
//! The appsecret is read from the environment or standard input, never from a flag, so it does not
//! show in the process list or the shell history.

use std::io::{BufRead, Write};

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};

use super::context::StoreArgs;
use crate::manage;
use crate::model::{AppKind, Appid, UpsertOutcome};

/// The variable `accounts add` reads the appsecret from (else standard input).
pub const APPSECRET_ENV: &str = "WXTOKEN_APPSECRET";

#[derive(Debug, clap::Subcommand)]
pub enum AccountsCommand {
    /// Add a direct account, or replace its kind and appsecret. The appsecret comes from
    /// WXTOKEN_APPSECRET or, if that is unset, the first line of standard input.
    Add {
        #[command(flatten)]
        store: StoreArgs,
        appid: String,
        /// official_account or mini_program.
        #[arg(long, default_value = "official_account")]
        kind: String,
    },
    /// Remove a direct account and its token.
    Remove {
        #[command(flatten)]
        store: StoreArgs,
        appid: String,
    },
    /// List direct accounts (never their secrets).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub async fn run(command: AccountsCommand) -> anyhow::Result<()> {
    match command {
        AccountsCommand::Add { store, appid, kind } => add(store, appid, kind).await,
        AccountsCommand::Remove { store, appid } => remove(store, appid).await,
        AccountsCommand::List { store } => list(store).await,
    }
}

pub(super) fn read_appsecret() -> anyhow::Result<SecretString> {
    if let Ok(secret) = std::env::var(APPSECRET_ENV) {
        return Ok(SecretString::from(secret.trim().to_owned()));
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the appsecret from standard input")?;
    Ok(SecretString::from(line.trim().to_owned()))
}

async fn add(args: StoreArgs, appid: String, kind: String) -> anyhow::Result<()> {
    let appid = Appid::parse(&appid).with_context(|| format!("appid {appid}"))?;
    let kind = AppKind::parse(&kind).with_context(|| format!("--kind {kind}"))?;
    let secret = read_appsecret()?;
    if secret.expose_secret().is_empty() {
        bail!("the appsecret is empty: set {APPSECRET_ENV} or pass it on standard input");
    }
    let ctx = args.open().await?;
    let component = ctx.component(args.component.as_deref()).await?;
    let outcome =
        manage::add_direct_account(&*ctx.store, &ctx.vault, &component, &appid, kind, &secret)
            .await?;
    let verb = match outcome {
        UpsertOutcome::Created => "added",
        UpsertOutcome::Updated => "updated",
    };
    outln!(
        "{verb} direct account {appid} ({}) under {component}; a running server serves it \
         within {}",
        kind.as_str(),
        manage::PROPAGATION
    );
    Ok(())
}

async fn remove(args: StoreArgs, appid: String) -> anyhow::Result<()> {
    let appid = Appid::parse(&appid).with_context(|| format!("appid {appid}"))?;
    let ctx = args.open().await?;
    let component = ctx.component(args.component.as_deref()).await?;
    if !manage::remove_direct_account(&*ctx.store, &component, &appid).await? {
        bail!("no direct account {appid} under component {component}");
    }
    outln!(
        "removed direct account {appid} from {component}; a running server stops serving it \
         within {}",
        manage::PROPAGATION
    );
    Ok(())
}

async fn list(args: StoreArgs) -> anyhow::Result<()> {
    let ctx = args.open().await?;
    let component = ctx.component(args.component.as_deref()).await?;
    let accounts = ctx
        .store
        .direct()
        .list_direct_accounts(Some(&component))
        .await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<20} {:<16} {:>10}  UPDATED",
        "APPID", "KIND", "GENERATION"
    )?;
    for a in &accounts {
        writeln!(
            out,
            "{:<20} {:<16} {:>10}  {}",
            a.appid,
            a.kind.as_str(),
            a.generation,
            a.updated_at
        )?;
    }
    writeln!(out, "{} direct accounts under {component}", accounts.len())?;
    Ok(())
}
