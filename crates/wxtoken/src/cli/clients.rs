//! `wxtoken clients add|list|rotate|revoke`: the internal services allowed to read tokens. A new
//! API key is printed once, at creation or rotation; only its SHA-256 hash is stored.

use std::io::Write;

use anyhow::{Context, bail};
use secrecy::ExposeSecret;

use super::context::StoreArgs;
use crate::manage;

#[derive(Debug, clap::Subcommand)]
pub enum ClientsCommand {
    /// Create a client and print its API key (shown only this once).
    Add {
        #[command(flatten)]
        store: StoreArgs,
        /// A unique name for the service, e.g. `order-service`.
        name: String,
        /// An appid this client may read; repeat it, or pass `*` for every appid.
        #[arg(long = "appid", value_name = "APPID|*", required = true)]
        appids: Vec<String>,
        /// Also allow the admin API (authorizers, accounts, clients).
        #[arg(long)]
        admin: bool,
    },
    /// List clients: name, key prefix, granted appids, admin, created, revoked.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Give a client a new API key (printed once); with --grace the previous key keeps working
    /// that long, so its services can move to the new one.
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
        name: String,
        /// How long the previous key keeps working, e.g. `1h` (default: it stops at once; at
        /// most 30 days).
        #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
    },
    /// Revoke a client's key; its requests are refused from then on. Its name can then be given
    /// to a new client.
    Revoke {
        #[command(flatten)]
        store: StoreArgs,
        name: String,
    },
}

pub async fn run(command: ClientsCommand) -> anyhow::Result<()> {
    match command {
        ClientsCommand::Add {
            store,
            name,
            appids,
            admin,
        } => add(store, name, appids, admin).await,
        ClientsCommand::List { store } => list(store).await,
        ClientsCommand::Rotate { store, name, grace } => rotate(store, name, grace).await,
        ClientsCommand::Revoke { store, name } => revoke(store, name).await,
    }
}

async fn add(
    args: StoreArgs,
    name: String,
    appids: Vec<String>,
    admin: bool,
) -> anyhow::Result<()> {
    let grant = manage::parse_grant(&appids).context("--appid")?;
    let ctx = args.open().await?;
    let (client, key) = manage::create_client(&*ctx.store, &name, grant, admin).await?;
    eprintln!(
        "created client {} ({}); its API key follows, shown only this once:",
        client.name,
        if client.admin { "admin" } else { "token reads" }
    );
    outln!("{}", key.key.expose_secret());
    Ok(())
}

async fn list(args: StoreArgs) -> anyhow::Result<()> {
    let ctx = args.open().await?;
    let clients = ctx.store.clients().list_clients().await?;
    let now = crate::model::Timestamp::now();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<24} {:<10} {:<6} {:<28} STATE",
        "NAME", "KEY", "ADMIN", "APPIDS"
    )?;
    for c in &clients {
        writeln!(
            out,
            "{:<24} {:<10} {:<6} {:<28} {}",
            c.name,
            format!("{}…", c.key_hint),
            if c.admin { "yes" } else { "no" },
            c.grant.to_stored(),
            match (&c.revoked_at, &c.previous_key) {
                (Some(at), _) => format!("revoked {at}"),
                (None, Some(p)) if p.expires_at > now => format!(
                    "active since {}; previous key {}… works until {}",
                    c.created_at, p.key_hint, p.expires_at
                ),
                (None, _) => format!("active since {}", c.created_at),
            },
        )?;
    }
    Ok(())
}

async fn rotate(args: StoreArgs, name: String, grace: std::time::Duration) -> anyhow::Result<()> {
    let ctx = args.open().await?;
    let (client, key) = manage::rotate_client(&*ctx.store, &name, grace).await?;
    match &client.previous_key {
        Some(p) => eprintln!(
            "rotated the key of {name}; the previous key ({}…) works until {}; the new key follows, shown only this once:",
            p.key_hint, p.expires_at
        ),
        None => eprintln!(
            "rotated the key of {name}; the previous key stops working within {}; the new key follows, shown only this once:",
            manage::PROPAGATION
        ),
    }
    outln!("{}", key.key.expose_secret());
    Ok(())
}

async fn revoke(args: StoreArgs, name: String) -> anyhow::Result<()> {
    let ctx = args.open().await?;
    if !manage::revoke_client(&*ctx.store, &name).await? {
        bail!("no active client named {name}");
    }
    outln!(
        "revoked client {name}; running servers refuse its key within {}",
        manage::PROPAGATION
    );
    Ok(())
}
