//! The command line (clap): one file per command group, wiring only — every rule lives in the
//! library modules. `wxtoken --help` documents every flag.

use clap::{Parser, Subcommand};

/// `println!` for command output that stops quietly when stdout is closed (`wxtoken … | head`):
/// the write error (EPIPE) is returned with `?` and `main` exits 0 on it, the Unix way, instead of
/// `println!`'s panic. The enclosing function must return a `Result` taking `std::io::Error`.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?;
    }};
}

/// `print!` with the same EPIPE handling as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout(), $($arg)*)?;
    }};
}

/// Whether `err` is (caused by) a write to a closed pipe: the reader went away, which is not a
/// failure of the command (`wxtoken authorizers list | head -1`).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

pub mod accounts;
pub mod authorizers;
pub mod clients;
pub mod context;
pub mod demo;
pub mod gateway;
pub mod keys;
pub mod serve;
pub mod shell;
pub mod sim;
pub mod token;

/// `wxtoken --version`: the version, the git commit and the build date (from `build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WXTOKEN_GIT_COMMIT"),
    ", built ",
    env!("WXTOKEN_BUILD_DATE"),
    ")"
);

/// wxtoken: the token central-control server (中控服务器) for a WeChat Open Platform
/// third-party platform.
#[derive(Debug, Parser)]
#[command(name = "wxtoken", version = VERSION, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: WeChat's pushes and the authorization pages on the public listener, the
    /// token and admin APIs on the internal one.
    Serve(serve::ServeArgs),
    /// Run wxtoken against the built-in WeChat simulator, with a few authorized accounts and an API
    /// key, to see it work with no WeChat account.
    Demo(demo::DemoArgs),
    /// Print the current token of an authorizer or direct account (for scripts).
    Token(token::TokenArgs),
    /// Print the current JS-SDK ticket (jsapi or wx_card) of an authorizer or direct account.
    Ticket(token::TicketArgs),
    /// Run the WeChat simulator alone, for tests and offline integration work.
    Sim(sim::SimArgs),
    /// Operate on authorizers: list, show, import, export.
    #[command(subcommand)]
    Authorizers(authorizers::AuthorizersCommand),
    /// Directly managed accounts (their own appid + appsecret): add, remove, list.
    #[command(subcommand)]
    Accounts(accounts::AccountsCommand),
    /// Internal services allowed to read tokens: add (prints the API key once), list, revoke.
    #[command(subcommand)]
    Clients(clients::ClientsCommand),
    /// The WeChat API gateway: calls per appid and WeChat path (`stats`).
    #[command(subcommand)]
    Gateway(gateway::GatewayCommand),
    /// The master key: generate one, or rotate every secret onto a new one.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Exit 0 if the server's /healthz answers (for a container HEALTHCHECK), 1 otherwise.
    Healthcheck(shell::HealthcheckArgs),
    /// Print the shell completion script (bash, zsh, fish, powershell, elvish).
    Completions(shell::CompletionsArgs),
    /// Print the man page, or write one per command into a directory (--dir).
    Man(shell::ManArgs),
}

impl Cli {
    /// Runs the chosen command to completion.
    pub async fn run(self) -> anyhow::Result<()> {
        private_files();
        match self.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Token(args) => token::run(args).await,
            Command::Ticket(args) => token::run_ticket(args).await,
            Command::Sim(args) => sim::run(args).await,
            Command::Authorizers(c) => authorizers::run(c).await,
            Command::Accounts(c) => accounts::run(c).await,
            Command::Clients(c) => clients::run(c).await,
            Command::Keys(c) => keys::run(c).await,
            Command::Gateway(c) => gateway::run(c).await,
            Command::Healthcheck(args) => shell::healthcheck(args).await,
            Command::Completions(args) => shell::completions(args),
            Command::Man(args) => shell::man(args),
        }
    }
}

/// Every file this process creates (the SQLite database with its -wal and -shm, exports, key
/// files) is readable and writable by its user only: the secrets inside are sealed, but key
/// hashes and hints, appids and client names are not for other local users.
fn private_files() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Warns when `path` (a secret-holding file that already exists) is readable by group or others.
pub(crate) fn warn_if_shared(path: &std::path::Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "{what} is readable by group or others: chmod 600 it"
            );
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
