//! wechat-sim: a faithful, offline stand-in for WeChat's servers for a third-party platform
//! (第三方平台). It serves the real paths and JSON of every token endpoint, issues values in
//! WeChat's observed shapes, retires replaced tokens after an overlap, pushes encrypted and signed
//! ticket and authorization events, enforces daily quotas, injects faults, and exposes a control
//! API under `/_sim/` (docs/SIMULATOR.md). Used by wxtoken's tests, benchmarks and `demo`, and on
//! its own through `wxtoken sim`.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use wechat_sim::{SimConfig, Simulator, ComponentSpec};
//! let sim = Simulator::start(SimConfig::default()).await?;
//! let component = sim.control().create_component(ComponentSpec::default())?;
//! println!("WeChat at {}, ticket {:?}", sim.base_url(), component.latest_ticket);
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Layout: `config` (SimConfig), `clock` (simulated time), `mint` (token shapes), `state` (the
//! rules), `api` (WeChat endpoints), `consent` (authorization page), `control` + `handle` (the
//! control API over HTTP and in Rust), `push` (event delivery), `faults`, `stats`, `server` (TCP
//! with resettable connections). Depends only on the `wechat` crate of this workspace.

mod api;
mod clock;
mod config;
mod consent;
mod control;
mod faults;
mod handle;
pub mod loadgen;
mod mint;
mod model;
mod push;
mod server;
mod sim;
mod state;
mod stats;
mod wxerr;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span, warn};

pub use api::Api;
pub use config::{
    ComponentTokenPolicy, ConfigError, JsTicketPolicy, PushConfig, QuotaConfig, ReauthorizePolicy,
    RefreshTokenPolicy, SimConfig, StableTokenConfig, TicketPolicy,
};
pub use faults::{ActiveRule, Fault, FaultRule, FaultSet, Latency};
pub use handle::SimControl;
pub use model::{
    AccountInfo, AccountKind, AccountSpec, AuthorizeOutcome, AuthorizerView, BulkAuthorizer,
    ComponentInfo, ComponentSpec, ControlError, TokenKind, UnauthorizeOutcome, Validation,
};
pub use stats::{EndpointStats, PushAttempt, PushRecord, PushTotals, StatsSnapshot};

use server::{ConnCtl, ResettableListener};
use sim::Sim;

/// One-line-per-route summary of the control API (printed by `wxtoken sim`, served at `/_sim`).
pub const CONTROL_SUMMARY: &str = "\
POST   /_sim/components                         create a component {component_appid?, component_appsecret?, token?, encoding_aes_key?, push_url?}
GET    /_sim/components[/{appid}]               components (with their latest ticket)
PATCH  /_sim/components/{appid}                 {push_url} (null stops pushes)
POST   /_sim/accounts                           create an account {kind: official_account|mini_program, appid?, appsecret?}
GET    /_sim/accounts[/{appid}]                 accounts (?kind=&limit=)
POST   /_sim/accounts/{appid}/authorize         {component_appid} -> {authorization_code, ...}; pushes authorized/updateauthorized
POST   /_sim/accounts/{appid}/unauthorize       {component_appid}; pushes unauthorized
POST   /_sim/accounts/{appid}/retire_tokens     retire the account's access tokens now (40001 next)
GET    /_sim/authorizers/{component}/{appid}    the authorizer as WeChat holds it (current refresh token)
POST   /_sim/bulk/authorizers                   {component_appid, count, kind?} -> JSON lines of refresh tokens
GET    /_sim/stats (?appid=)  POST /_sim/stats/reset   calls per endpoint and appid, errors, pushes
GET    /_sim/validate?access_token=T            {valid, reason, errcode, kind, appid, ...}
GET    /_sim/validate?ticket=T                  the same for a jsapi / wx_card ticket
GET|PUT|DELETE /_sim/faults                     latency, HTTP status, reset, malformed JSON, errcode per endpoint
POST   /_sim/tickets/push                       {component_appid?} issue and push a ticket now
GET    /_sim/clock  POST /_sim/clock/advance    {seconds}: move simulated time forward";

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("initial component: {0}")]
    Component(#[from] ControlError),
    #[error("cannot build the push HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Entry point.
pub struct Simulator;

impl Simulator {
    /// Bind `config.listen` and serve. Must be called inside a Tokio runtime.
    pub async fn start(config: SimConfig) -> Result<SimHandle, SimError> {
        config.validate()?;
        let addr = config.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind { addr, source })?;
        Self::serve(listener, config).await
    }

    /// Serve on a listener the caller already bound (so its address is known before start).
    pub async fn serve(listener: TcpListener, config: SimConfig) -> Result<SimHandle, SimError> {
        let rules = config.validate()?;
        let local_addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: config.listen,
            source,
        })?;
        let base_url = format!("http://{local_addr}");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(config.push.timeout)
            .connect_timeout(config.push.timeout)
            .build()?;
        let clock = clock::Clock::new();
        let now = clock.now_ms();
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let sim = Arc::new(Sim {
            state: Mutex::new(state::State::new(rules.clone())),
            rules,
            stats: stats::Stats::new(now),
            faults: faults::Faults::new(config.seed),
            clock,
            http,
            push_workers: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
            tracker: tracker.clone(),
            cancel: cancel.clone(),
            base_url: base_url.clone(),
            config,
        });
        let app = api::router()
            .merge(control::router())
            .merge(consent::router())
            .with_state(sim.clone());
        let serve = axum::serve(
            ResettableListener::new(listener),
            app.into_make_service_with_connect_info::<ConnCtl>(),
        )
        .with_graceful_shutdown(cancel.clone().cancelled_owned());
        tracker.spawn(
            async move {
                if let Err(e) = serve.await {
                    warn!(error = %e, "simulator server stopped with an error");
                }
            }
            .instrument(info_span!("wechat_sim", %local_addr)),
        );
        let control = SimControl { sim: sim.clone() };
        let initial_component = match sim.config.component.clone() {
            Some(spec) => Some(control.create_component(spec)?),
            None => None,
        };
        Ok(SimHandle {
            control,
            local_addr,
            base_url,
            cancel,
            tracker,
            initial_component,
        })
    }
}

/// A running simulator. Dropping it stops the server and the push tasks without waiting; call
/// [`SimHandle::shutdown`] to wait for them.
pub struct SimHandle {
    control: SimControl,
    local_addr: SocketAddr,
    base_url: String,
    cancel: CancellationToken,
    tracker: TaskTracker,
    initial_component: Option<ComponentInfo>,
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`: the API base URL to give a WeChat client.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The control API in Rust.
    pub fn control(&self) -> &SimControl {
        &self.control
    }

    /// The component created from `SimConfig::component`, if any.
    pub fn initial_component(&self) -> Option<&ComponentInfo> {
        self.initial_component.as_ref()
    }

    /// Stop accepting connections, stop the push tasks, and wait for them (at most 5 s).
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), self.tracker.wait())
            .await
            .is_err()
        {
            warn!("simulator tasks did not stop within 5 s");
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
