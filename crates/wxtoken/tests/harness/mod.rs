//! The one harness of the wxtoken integration tests, shared by the `stories` and `store` test
//! binaries:
//! - [`store`]: a fresh database per test (a temp SQLite file always; a fresh PostgreSQL database
//!   when `WXTOKEN_TEST_PG_URL` is set) and small builders for records;
//! - [`engine`]: the real simulator and an engine on a real SQLite file that can be restarted,
//!   its store wrapped by [`hooks`] to stage races and failures;
//! - [`server`]: the simulator and a whole wxtoken app on OS-assigned loopback ports;
//! - [`cluster`]: real `wxtoken serve` processes (replicas) and their configuration.
//!
//! Each binary uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::time::Duration;

use wechat_sim::SimConfig;

pub mod cluster;
pub mod engine;
pub mod hooks;
pub mod server;
pub mod store;

/// Held by the tests that measure under load (rates, "never without a token", propagation
/// latency) for their whole run, so no two of them share the machine's two cores: the test
/// binary runs two tests at a time, and two load tests side by side starve each other's engine.
/// The tests that run a heavy external program (a browser, a compiler: `go test`, `javac`) hold
/// it too, so they never starve a load test.
pub async fn alone() -> tokio::sync::MutexGuard<'static, ()> {
    static LOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOAD.lock().await
}

/// Logs to the test output when `TEST_LOG` is set (`RUST_LOG` filters; `info` by default).
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_test_writer()
            .try_init();
    }
}

/// Short lifetimes for tests: `lifetime` tokens, the simulator's overlap, no ticket timer.
pub fn sim_config(lifetime: Duration, overlap: Duration) -> SimConfig {
    SimConfig {
        token_lifetime: lifetime,
        overlap,
        ticket_interval: Duration::ZERO,
        seed: Some(7),
        ..SimConfig::default()
    }
}
