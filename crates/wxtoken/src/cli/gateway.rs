//! `wxtoken gateway stats`: calls through the WeChat API gateway per appid and WeChat path on one
//! Beijing day (WeChat's quota day), from the store (every server adds its counts every few
//! seconds), so a daily quota (45009) is seen coming.

use std::io::Write;

use super::context::StoreArgs;
use crate::manage;
use crate::model::Timestamp;

#[derive(Debug, clap::Subcommand)]
pub enum GatewayCommand {
    /// Calls per appid and WeChat path on one day, most first.
    Stats {
        #[command(flatten)]
        store: StoreArgs,
        /// The Beijing day, YYYY-MM-DD (UTC+8); today by default.
        #[arg(long)]
        day: Option<String>,
        /// One appid only.
        #[arg(long)]
        appid: Option<String>,
    },
}

pub async fn run(command: GatewayCommand) -> anyhow::Result<()> {
    let GatewayCommand::Stats { store, day, appid } = command;
    let day = match day {
        Some(day) => manage::check_day(&day).map_err(anyhow::Error::msg)?,
        None => Timestamp::now().beijing_day(),
    };
    let ctx = store.open().await?;
    let counts = ctx
        .store
        .ops()
        .gateway_calls(&day, appid.as_deref())
        .await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "gateway calls on {day} (Beijing time)")?;
    if counts.is_empty() {
        writeln!(out, "none")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<20} {:<44} {:>10} {:>8}",
        "APPID", "PATH", "CALLS", "ERRORS"
    )?;
    for c in counts {
        writeln!(
            out,
            "{:<20} {:<44} {:>10} {:>8}",
            c.appid, c.path, c.calls, c.errors
        )?;
    }
    Ok(())
}
