//! `wxtoken serve`: run the server from the layered configuration (defaults → TOML → `WXTOKEN_…`
//! environment → these flags) until SIGINT/SIGTERM. `--print-config` prints the commented example.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::app::App;
use crate::config::{self, Config};
use crate::vault::Vault;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Configuration file (TOML); see `--print-config`.
    #[arg(long, short = 'c', value_name = "FILE", env = "WXTOKEN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print a commented example configuration and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Override `server.public_listen` (WeChat's pushes, the authorization pages).
    #[arg(long, value_name = "ADDR")]
    pub public_listen: Option<SocketAddr>,
    /// Override `server.internal_listen` (token API, admin API, metrics).
    #[arg(long, value_name = "ADDR")]
    pub internal_listen: Option<SocketAddr>,
    /// Override `server.gateway_listen` (the WeChat API gateway), or `off`.
    #[arg(long, value_name = "ADDR|off")]
    pub gateway_listen: Option<String>,
    /// Override `storage.url` (prefer `WXTOKEN_STORAGE__URL` for a URL with a password).
    #[arg(long, value_name = "URL")]
    pub storage_url: Option<String>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    if args.print_config {
        out!("{}", config::EXAMPLE);
        return Ok(());
    }
    let mut overrides = Vec::new();
    if let Some(addr) = args.public_listen {
        overrides.push((
            "server.public_listen".to_owned(),
            toml::Value::String(addr.to_string()),
        ));
    }
    if let Some(addr) = args.internal_listen {
        overrides.push((
            "server.internal_listen".to_owned(),
            toml::Value::String(addr.to_string()),
        ));
    }
    if let Some(addr) = args.gateway_listen {
        overrides.push((
            "server.gateway_listen".to_owned(),
            toml::Value::String(addr),
        ));
    }
    if let Some(url) = args.storage_url {
        overrides.push(("storage.url".to_owned(), toml::Value::String(url)));
    }
    let config = Config::load(args.config.as_deref(), overrides)?;
    crate::telemetry::init(&config.log);
    if config.components.is_empty() {
        tracing::warn!("no [[components]] configured: only direct accounts will be served");
    }
    if let Some(file) = &config.security.master_key_file {
        super::warn_if_shared(file, "the master key file (security.master_key_file)");
    }
    if let Some(path) = crate::store::database_file(config.storage.url.expose_secret()) {
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.clone().into_os_string();
            file.push(suffix);
            super::warn_if_shared(file.as_ref(), "the SQLite database (storage.url)");
        }
    }
    let vault = Vault::from_env_or_file(config.security.master_key_file.as_deref())
        .context("loading the master key (WXTOKEN_MASTER_KEY or security.master_key_file)")?;
    let public = TcpListener::bind(config.server.public_listen)
        .await
        .with_context(|| {
            format!(
                "binding server.public_listen {}",
                config.server.public_listen
            )
        })?;
    let internal = TcpListener::bind(config.server.internal_listen)
        .await
        .with_context(|| {
            format!(
                "binding server.internal_listen {}",
                config.server.internal_listen
            )
        })?;
    let running = App::open_and_start(&config, vault, public, internal).await?;
    running.run_until_signal().await
}
