//! `wxtoken sim`: run the WeChat simulator alone, for other tools and for platform teams testing
//! their own integrations offline. Configuration layers: built-in defaults, then `--config FILE`
//! (TOML, see docs/SIMULATOR.md), then the flags below. Runs until Ctrl-C.
//!
//! Wiring only: every rule lives in the `wechat-sim` crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use wechat_sim::{
    CONTROL_SUMMARY, ComponentInfo, RefreshTokenPolicy, SimConfig, Simulator, TicketPolicy,
};

/// Address `wxtoken sim` listens on when neither `--listen` nor the config file says.
const DEFAULT_LISTEN: &str = "127.0.0.1:8090";

/// Run the offline WeChat simulator (token APIs, pushes, consent page, /_sim/ control API).
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on [default: 127.0.0.1:8090; use port 0 for any free port].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Simulator configuration file (TOML; unknown keys are errors). Flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Lifetime of every access token issued, e.g. `7200s`, `20s` [default: 2h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub token_lifetime: Option<Duration>,

    /// How long a replaced token keeps working [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub overlap: Option<Duration>,

    /// Interval between component_verify_ticket pushes; `0s` turns the timer off [default: 10m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ticket_interval: Option<Duration>,

    /// Which tickets api_component_token accepts [default: latest].
    #[arg(long, value_enum, value_name = "POLICY")]
    pub ticket_policy: Option<TicketPolicyArg>,

    /// What api_authorizer_token returns as the refresh token [default: echo].
    #[arg(long, value_enum, value_name = "POLICY")]
    pub refresh_token_policy: Option<RefreshPolicyArg>,

    /// Attempts per push before it is recorded as failed [default: 3].
    #[arg(long, value_name = "N")]
    pub push_attempts: Option<u32>,

    /// Seed for fault-injection randomness (repeatable fault runs).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Appid of the component created at start [default: generated].
    #[arg(long, value_name = "APPID")]
    pub component_appid: Option<String>,

    /// Appsecret of the component created at start [default: generated].
    #[arg(long, value_name = "SECRET")]
    pub component_secret: Option<String>,

    /// Message-verification Token of the component created at start [default: generated].
    #[arg(long, value_name = "TOKEN")]
    pub component_token: Option<String>,

    /// EncodingAESKey (43 characters) of the component created at start [default: generated].
    #[arg(long, value_name = "KEY")]
    pub encoding_aes_key: Option<String>,

    /// URL the component's ticket and authorization events are pushed to (your event endpoint).
    #[arg(long, value_name = "URL")]
    pub push_url: Option<String>,

    /// Start without a component (create them with POST /_sim/components).
    #[arg(long, conflicts_with_all = ["component_appid", "component_secret", "component_token", "encoding_aes_key", "push_url"])]
    pub no_component: bool,
}

/// `--ticket-policy`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TicketPolicyArg {
    /// Only the latest ticket (the older one until the newer one's push is acknowledged).
    Latest,
    /// Any ticket issued within its 12-hour validity.
    AnyValid,
}

/// `--refresh-token-policy`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RefreshPolicyArg {
    /// The refresh token sent is returned unchanged (WeChat today).
    Echo,
    /// A new refresh token on every refresh; the old one works for the overlap.
    Rotate,
}

fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// Defaults, then the file, then the flags.
fn build_config(args: &SimArgs) -> anyhow::Result<SimConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            SimConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => SimConfig {
            listen: DEFAULT_LISTEN.parse().context("default listen address")?,
            ..SimConfig::default()
        },
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(d) = args.token_lifetime {
        config.token_lifetime = d;
    }
    if let Some(d) = args.overlap {
        config.overlap = d;
    }
    if let Some(d) = args.ticket_interval {
        config.ticket_interval = d;
    }
    if let Some(p) = args.ticket_policy {
        config.ticket_policy = match p {
            TicketPolicyArg::Latest => TicketPolicy::Latest,
            TicketPolicyArg::AnyValid => TicketPolicy::AnyValid,
        };
    }
    if let Some(p) = args.refresh_token_policy {
        config.refresh_token_policy = match p {
            RefreshPolicyArg::Echo => RefreshTokenPolicy::Echo,
            RefreshPolicyArg::Rotate => RefreshTokenPolicy::Rotate,
        };
    }
    if let Some(n) = args.push_attempts {
        config.push.attempts = n;
    }
    if args.seed.is_some() {
        config.seed = args.seed;
    }
    if args.no_component {
        config.component = None;
    } else {
        let mut spec = config.component.take().unwrap_or_default();
        let set = |slot: &mut Option<String>, flag: &Option<String>| {
            if flag.is_some() {
                slot.clone_from(flag);
            }
        };
        set(&mut spec.component_appid, &args.component_appid);
        set(&mut spec.component_appsecret, &args.component_secret);
        set(&mut spec.token, &args.component_token);
        set(&mut spec.encoding_aes_key, &args.encoding_aes_key);
        set(&mut spec.push_url, &args.push_url);
        config.component = Some(spec);
    }
    Ok(config)
}

/// Start the simulator, print where it is and how to drive it, and run until Ctrl-C.
pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let config = build_config(&args)?;
    let sim = Simulator::start(config)
        .await
        .context("cannot start the WeChat simulator")?;
    outln!("WeChat simulator listening on {}", sim.base_url());
    outln!("  API base URL (for WeChat clients): {}", sim.base_url());
    outln!(
        "  consent page: {}/cgi-bin/componentloginpage and {}/wxaopen/safe/bindcomponent",
        sim.base_url(),
        sim.base_url()
    );
    if let Some(c) = sim.initial_component() {
        print_component(c)?;
    }
    outln!("Control API (JSON; docs/SIMULATOR.md):");
    for line in CONTROL_SUMMARY.lines() {
        outln!("  {line}");
    }
    outln!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    outln!("stopping the simulator");
    sim.shutdown().await;
    Ok(())
}

fn print_component(c: &ComponentInfo) -> std::io::Result<()> {
    outln!("Component (third-party platform):");
    outln!("  component_appid     {}", c.component_appid);
    outln!("  component_appsecret {}", c.component_appsecret);
    outln!("  token               {}", c.token);
    outln!("  encoding_aes_key    {}", c.encoding_aes_key);
    outln!(
        "  push_url            {}",
        c.push_url
            .as_deref()
            .unwrap_or("(none: tickets via GET /_sim/components)")
    );
    if let Some(t) = &c.latest_ticket {
        outln!("  latest ticket       {t}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    fn parse(args: &[&str]) -> SimArgs {
        Cli::try_parse_from(std::iter::once("sim").chain(args.iter().copied()))
            .unwrap()
            .sim
    }

    #[test]
    fn flags_override_the_defaults() {
        let args = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--token-lifetime",
            "20s",
            "--overlap",
            "5s",
            "--ticket-policy",
            "any-valid",
            "--refresh-token-policy",
            "rotate",
            "--component-appid",
            "wxflagcomponent01",
            "--push-url",
            "http://127.0.0.1:9/e",
        ]);
        let c = build_config(&args).unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.token_lifetime, Duration::from_secs(20));
        assert_eq!(c.overlap, Duration::from_secs(5));
        assert_eq!(c.ticket_policy, TicketPolicy::AnyValid);
        assert_eq!(c.refresh_token_policy, RefreshTokenPolicy::Rotate);
        let spec = c.component.unwrap();
        assert_eq!(spec.component_appid.as_deref(), Some("wxflagcomponent01"));
        assert_eq!(spec.push_url.as_deref(), Some("http://127.0.0.1:9/e"));
    }

    #[test]
    fn defaults_listen_on_8090_with_a_generated_component() {
        let c = build_config(&parse(&[])).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(c.component.is_some());
        assert!(
            build_config(&parse(&["--no-component"]))
                .unwrap()
                .component
                .is_none()
        );
    }

    #[test]
    fn a_config_file_is_read_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sim.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7000\"\ntoken_lifetime = \"30s\"\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = build_config(&parse(&["--config", p, "--token-lifetime", "10s"])).unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.token_lifetime, Duration::from_secs(10));
        std::fs::write(&path, "tokn_lifetime = \"30s\"\n").unwrap();
        assert!(build_config(&parse(&["--config", p])).is_err());
    }

    #[tokio::test]
    async fn the_simulator_starts_from_the_flags() {
        let c = build_config(&parse(&["--listen", "127.0.0.1:0"])).unwrap();
        let sim = Simulator::start(c).await.unwrap();
        assert!(sim.initial_component().is_some());
        sim.shutdown().await;
    }
}
