//! The `wxtoken` binary: parse the command line and dispatch. No logic lives here.

use clap::Parser;

/// mimalloc, not glibc's malloc: see the workspace Cargo.toml (cross-thread frees).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = wxtoken::cli::Cli::parse();
    match cli.run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader of stdout went away (`| head`): stop quietly, as Unix tools do.
        Err(err) if wxtoken::cli::is_broken_pipe(&err) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wxtoken: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
