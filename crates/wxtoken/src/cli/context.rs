//! What every store command needs: the configuration, the opened store, the vault verified
//! against it, and the component the command is about. Wiring only.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::config::{Config, LogConfig};
use crate::model::ComponentAppid;
use crate::store::Store;
use crate::vault::Vault;

/// Where the store is and which component a command is about.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Configuration file (TOML). Defaults and `WXTOKEN_SECTION__KEY` variables apply as for `serve`.
    #[arg(long, short = 'c', value_name = "FILE", env = "WXTOKEN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Storage URL, overriding `storage.url` (prefer `WXTOKEN_STORAGE__URL` for a URL with a password:
    /// flags are visible to other users of the machine).
    #[arg(long, value_name = "URL")]
    pub storage_url: Option<String>,
    /// The component (third-party platform appid); needed when more than one is known.
    #[arg(long, value_name = "APPID")]
    pub component: Option<String>,
}

pub struct StoreContext {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub vault: Vault,
}

impl StoreArgs {
    /// Loads the configuration, opens the store (running migrations) and verifies the master key.
    pub async fn open(&self) -> anyhow::Result<StoreContext> {
        self.open_with(false).await
    }

    /// [`StoreArgs::open`] for a bulk load (`authorizers import`): see `StoreOptions::bulk`.
    pub async fn open_bulk(&self) -> anyhow::Result<StoreContext> {
        self.open_with(true).await
    }

    async fn open_with(&self, bulk: bool) -> anyhow::Result<StoreContext> {
        let overrides = self
            .storage_url
            .iter()
            .map(|url| ("storage.url".to_owned(), toml::Value::String(url.clone())))
            .collect();
        let config = Config::load(self.config.as_deref(), overrides)?;
        crate::telemetry::init(&LogConfig {
            level: "warn".to_owned(),
            ..config.log.clone()
        });
        let store = crate::app::open_store_with(&config, bulk).await?;
        let vault = Vault::from_env_or_file(config.security.master_key_file.as_deref())
            .context("loading the master key (WXTOKEN_MASTER_KEY or security.master_key_file)")?;
        vault
            .verify(&*store)
            .await
            .context("checking the master key against the store")?;
        Ok(StoreContext {
            config,
            store,
            vault,
        })
    }
}

impl StoreContext {
    /// The component named by `--component`, else the only one configured, else the only one stored.
    pub async fn component(&self, requested: Option<&str>) -> anyhow::Result<ComponentAppid> {
        if let Some(appid) = requested {
            return ComponentAppid::parse(appid).with_context(|| format!("--component {appid}"));
        }
        if let [only] = self.config.components.as_slice() {
            return ComponentAppid::parse(&only.appid).context("components[0].appid");
        }
        let stored = self.store.components().list_components().await?;
        match stored.as_slice() {
            [only] if self.config.components.is_empty() => Ok(only.clone()),
            [] if self.config.components.is_empty() => {
                bail!("no component is configured or stored: pass --component APPID")
            }
            _ => bail!("several components are known: pass --component APPID"),
        }
    }
}
