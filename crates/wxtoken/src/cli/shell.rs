//! Commands for installing and running wxtoken: shell completions, man pages and the container
//! health check. Wiring only.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::CommandFactory;

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Prints the completion script for `shell`, e.g.
/// `wxtoken completions bash > /usr/share/bash-completion/completions/wxtoken`.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut command = super::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut command, "wxtoken", &mut out);
    use std::io::Write as _;
    std::io::stdout().write_all(&out)?;
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write a page per command (wxtoken.1, wxtoken-serve.1, …) into this directory instead of
    /// printing wxtoken.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Prints the man page (`wxtoken man | man -l -`), or writes every command's page into `--dir`.
pub fn man(args: ManArgs) -> anyhow::Result<()> {
    let command = super::Cli::command();
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))?;
            eprintln!("wrote the man pages into {}", dir.display());
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(command).render(&mut out)?;
            use std::io::Write as _;
            std::io::stdout().write_all(&out)?;
        }
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// Configuration file (TOML), for `server.internal_listen`.
    #[arg(long, short = 'c', value_name = "FILE", env = "WXTOKEN_CONFIG")]
    pub config: Option<PathBuf>,
    /// The URL to check instead, e.g. `http://127.0.0.1:8081/readyz`.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// How long to wait for the answer.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Exits 0 when the server's `/healthz` (on the internal listener of the configuration) answers
/// 200, 1 otherwise: a container's HEALTHCHECK without curl in the image.
pub async fn healthcheck(args: HealthcheckArgs) -> anyhow::Result<()> {
    let url = match args.url {
        Some(url) => url,
        None => {
            let config = Config::load(args.config.as_deref(), Vec::new())?;
            let mut addr = config.server.internal_listen;
            // A wildcard listener is reached on loopback.
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            format!("http://{addr}/healthz")
        }
    };
    let client = reqwest::Client::builder()
        .timeout(args.timeout)
        .build()
        .context("building the HTTP client")?;
    let answer = match client.get(&url).send().await {
        Ok(answer) => answer,
        // reqwest's chain repeats the URL at each level: name it once, with the root cause.
        Err(e) if e.is_timeout() => bail!(
            "GET {url}: no answer within {}",
            humantime::format_duration(args.timeout)
        ),
        Err(e) => {
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            bail!("GET {url}: {cause}")
        }
    };
    if !answer.status().is_success() {
        bail!("GET {url}: HTTP {}", answer.status());
    }
    Ok(())
}
