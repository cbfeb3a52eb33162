//! The command line (clap): one file per command group, wiring only — every rule lives in the
//! library modules. `wxtoken --help` documents every flag.

use clap::{Parser, Subcommand};

pub mod sim;

/// wxtoken: the token central-control server (中控服务器) for a WeChat Open Platform
/// third-party platform.
#[derive(Debug, Parser)]
#[command(name = "wxtoken", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the WeChat simulator alone, for tests and offline integration work.
    Sim(sim::SimArgs),
}

impl Cli {
    /// Runs the chosen command to completion.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Sim(args) => sim::run(args).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
