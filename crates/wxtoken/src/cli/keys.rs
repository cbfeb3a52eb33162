//! `wxtoken keys generate|rotate`: the master key that seals every secret at rest.

use anyhow::{Context, bail};
use secrecy::ExposeSecret;

use super::context::StoreArgs;
use crate::coordination;
use crate::model::Timestamp;
use crate::vault::{self, MasterKey};

/// Values re-sealed per transaction during a rotation.
const ROTATE_BATCH: u32 = 500;

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Print a new random master key (base64 of 32 bytes) for WXTOKEN_MASTER_KEY or a key file.
    Generate,
    /// Re-seal every secret under the primary master key, online: give every server the new key as
    /// primary and the old one as WXTOKEN_MASTER_KEY_OLD (or a further key-file line) first, run
    /// this, then remove the old key. Idempotent and resumable.
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
        /// Re-seal even though a live server does not hold the new primary key (its tokens go
        /// down until it is given the key and restarted).
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Generate => {
            let key = MasterKey::generate();
            eprintln!("new master key, id {}:", key.id());
            outln!("{}", key.to_base64().expose_secret());
            Ok(())
        }
        KeysCommand::Rotate { store, force } => {
            let ctx = store.open().await?;
            let primary = ctx.vault.primary_id().clone();
            let lacking =
                coordination::servers_lacking(&*ctx.store, &primary, Timestamp::now()).await?;
            if !lacking.is_empty() {
                let names: Vec<String> = lacking
                    .iter()
                    .map(|s| {
                        format!(
                            "pid {} on {} (started {}, holds key(s) {})",
                            s.pid,
                            s.host,
                            s.started_at,
                            s.key_ids.join(", ")
                        )
                    })
                    .collect();
                if !force {
                    bail!(
                        "refusing to re-seal onto key {primary}: {} live server(s) do not hold it \
                         and would stop serving every token it seals: {}. Give each server the \
                         new key as primary and the old one in WXTOKEN_MASTER_KEY_OLD, restart \
                         them, then rotate (or pass --force)",
                        lacking.len(),
                        names.join("; ")
                    );
                }
                eprintln!(
                    "warning: --force: re-sealing onto key {primary}, which these live servers \
                     lack: {}",
                    names.join("; ")
                );
            }
            let report = vault::rotate(&*ctx.store, &ctx.vault, ROTATE_BATCH, &mut |p| {
                eprint!("\rre-sealed {} values ({:?})   ", p.resealed, p.column);
            })
            .await
            .context("rotating the master key")?;
            eprintln!();
            crate::manage::announce(&*ctx.store, crate::store::ChangeScope::Keys, None, None).await;
            outln!(
                "re-sealed {} values under key {}",
                report.resealed,
                ctx.vault.primary_id()
            );
            for id in &report.retired {
                outln!(
                    "key {id} no longer seals anything: it may be removed from the configuration"
                );
            }
            for (id, n) in &report.remaining {
                outln!("  {n} values under key {id}");
            }
            Ok(())
        }
    }
}
