//! Assembling and running the server: configuration → store, vault, WeChat client, alerts,
//! engine, HTTP state → two listeners, background upkeep, and graceful shutdown. `wxtoken serve`,
//! `wxtoken demo` and the end-to-end tests all start the server through [`App::start`].
//!
//! On PostgreSQL (several replicas) refreshes are claimed through `StoreLease` and every replica
//! follows the store's token changes (`Engine::follow`); on SQLite the lease is in-process.
//!
//! Shutdown order (SIGINT/SIGTERM or [`RunningApp::shutdown`]): stop accepting connections and end
//! long-polls; let in-flight requests finish; stop scheduling; let in-flight refreshes finish and
//! their writes land (bounded by [`SHUTDOWN_GRACE`]); flush read counts; close the store.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wechat::authorize::AuthorizePages;
use wechat::event::MsgCrypt;

use crate::alerts::Alerts;
use crate::config::Config;
use crate::http::{self, AppState, Shared};
use crate::model::{ComponentAppid, Timestamp};
use crate::refresh::lease::{Lease, LocalLease, StoreLease};
use crate::refresh::{ComponentSecret, Engine, EngineDeps, SystemClock};
use crate::store::{self, Backend, Store, StoreOptions};
use crate::vault::Vault;

/// How long shutdown waits for in-flight refreshes and writes before giving up on them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How often read counts are written to the store.
const READ_COUNT_FLUSH: Duration = Duration::from_secs(5);
/// How often processed events older than [`EVENT_RETENTION`] are deleted.
const EVENT_PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Processed pushes are kept this long (pushes older than `server.push_max_skew` are refused
/// anyway, so a replay cannot re-apply a pruned one while that check is on).
const EVENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Gateway call counts are kept 31 days.
const GATEWAY_CALLS_RETENTION: Duration = Duration::from_secs(31 * 24 * 3600);

/// Opens the store `config.storage` names, with its pool settings, running migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    open_store_with(config, false).await
}

/// [`open_store`], for a bulk load if `bulk` ([`StoreOptions::bulk`]).
pub async fn open_store_with(config: &Config, bulk: bool) -> anyhow::Result<Arc<dyn Store>> {
    store::open_with(
        config.storage.url.expose_secret(),
        &StoreOptions {
            max_connections: config.storage.max_connections,
            acquire_timeout: config.storage.connect_timeout,
            bulk,
        },
    )
    .await
    .map_err(|e| match e {
        // It names the database and the cause already.
        e @ store::StoreError::Open { .. } => anyhow::Error::new(e),
        e => {
            anyhow::Error::new(e).context(format!("opening the {} store", config.storage.backend()))
        }
    })
}

/// A started server.
pub struct RunningApp {
    pub public_addr: SocketAddr,
    pub internal_addr: SocketAddr,
    /// The WeChat API gateway's address (`server.gateway_listen`), unless it is off.
    pub gateway_addr: Option<SocketAddr>,
    pub engine: Engine,
    pub store: Arc<dyn Store>,
    pub state: AppState,
    cancel: CancellationToken,
    tracker: TaskTracker,
    servers: Vec<JoinHandle<std::io::Result<()>>>,
    /// The public, the internal and the gateway listener's connection discipline.
    listeners: [http::serve::Discipline; 3],
    /// Held until the app is dropped (SQLite; `None` on PostgreSQL).
    _serve_lock: Option<crate::store::ServeLock>,
}

pub struct App;

impl App {
    /// Opens the store named by `config.storage` (running migrations), checks `vault` against it
    /// and starts the server on the two listeners.
    pub async fn open_and_start(
        config: &Config,
        vault: Vault,
        public: TcpListener,
        internal: TcpListener,
    ) -> anyhow::Result<RunningApp> {
        let store = open_store(config).await?;
        vault
            .verify(&*store)
            .await
            .context("checking the master key against the store")?;
        Self::start(config, store, vault, public, internal).await
    }

    /// Starts the server over an opened store and a verified vault.
    pub async fn start(
        config: &Config,
        store: Arc<dyn Store>,
        vault: Vault,
        public: TcpListener,
        internal: TcpListener,
    ) -> anyhow::Result<RunningApp> {
        let (public_cap, internal_cap) =
            http::serve::connection_caps(config).map_err(anyhow::Error::msg)?;
        // One serving process per SQLite file, for as long as this app lives.
        let serve_lock = crate::store::ServeLock::acquire(config.storage.url.expose_secret())
            .map_err(anyhow::Error::msg)?;
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let metrics = crate::telemetry::metrics();
        let vault = Arc::new(vault);
        let mut components = Vec::new();
        let mut pushes = HashMap::new();
        for (i, c) in config.components.iter().enumerate() {
            let appid = ComponentAppid::parse(&c.appid)
                .with_context(|| format!("components[{i}].appid"))?;
            let mut crypt = MsgCrypt::new(
                c.token.expose_secret(),
                c.encoding_aes_key.expose_secret(),
                appid.as_str(),
            )
            .with_context(|| format!("components[{i}].encoding_aes_key"))?;
            if let Some(previous) = &c.previous_encoding_aes_key {
                crypt = crypt
                    .with_previous_key(previous.expose_secret())
                    .with_context(|| format!("components[{i}].previous_encoding_aes_key"))?;
            }
            pushes.insert(appid.clone(), crypt);
            components.push(ComponentSecret {
                appid,
                appsecret: c.appsecret.clone(),
            });
        }
        let wechat = config
            .upstream
            .client()
            .context("building the WeChat client (upstream)")?;
        let alerts = Alerts::spawn(config.alerts.webhook_url.clone(), &tracker, cancel.clone());
        // Several replicas share a PostgreSQL database: refreshes are claimed through lease rows,
        // and every replica hears every token change. Listening starts before the cold start, so
        // nothing committed in between is missed. SQLite: one process, in-process lease.
        let (lease, changes): (Arc<dyn Lease>, _) = match store.backend() {
            Backend::Postgres => (
                Arc::new(StoreLease::new(
                    Arc::clone(&store),
                    config.storage.lease_ttl,
                    tracker.clone(),
                )),
                store
                    .tokens()
                    .token_changes()
                    .await
                    .context("listening for token changes")?,
            ),
            Backend::Sqlite => (Arc::new(LocalLease::new()), None),
        };
        // Changes recorded from here on are applied by the change follower; the cold start
        // below reads everything older.
        let changes_from = store.ops().latest_change().await.ok();
        let engine = Engine::open(EngineDeps {
            store: Arc::clone(&store),
            vault: Arc::clone(&vault),
            client: wechat.clone(),
            config: config.refresh.clone(),
            components,
            alerts,
            lease,
            clock: Arc::new(SystemClock),
            tracker: tracker.clone(),
        })
        .await
        .context("loading tokens and authorizers (cold start)")?;
        engine.spawn(cancel.clone());
        spawn_summary(
            engine.clone(),
            config.log.summary_interval,
            &tracker,
            cancel.clone(),
        );
        if let Some(changes) = changes {
            engine.spawn_follow(changes, cancel.clone());
        }

        let pages = config
            .upstream
            .authorize_url
            .as_ref()
            .map(AuthorizePages::at)
            .unwrap_or_default();
        let state = AppState(Arc::new(Shared::new(
            engine.clone(),
            Arc::clone(&store),
            vault,
            pushes,
            wechat,
            pages,
            config.server.clone(),
            metrics,
            cancel.clone(),
        )));
        spawn_upkeep(&state, &tracker, cancel.clone());
        crate::coordination::spawn(&state, changes_from, &tracker, cancel.clone());

        let public_addr = public.local_addr()?;
        let internal_addr = internal.local_addr()?;
        let gateway = match config.server.gateway_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                format!("binding server.gateway_listen {addr} (set it to \"off\" to run without the gateway)")
            })?),
            None => None,
        };
        let gateway_addr = gateway.as_ref().map(TcpListener::local_addr).transpose()?;
        let mut servers = Vec::new();
        let timeout = config.server.header_read_timeout;
        // The gateway has a cap of its own: a quarter of the internal listener's (each of its
        // calls holds a second socket, upstream).
        let listeners = [
            http::serve::Discipline::new(public_cap, timeout),
            http::serve::Discipline::new(internal_cap, timeout),
            http::serve::Discipline::new((internal_cap / 4).max(1), timeout).without_peer_address(),
        ];
        if let Some(listener) = gateway {
            let upstream = http::gateway::Gateway::new(&config.upstream, &config.gateway)
                .map_err(anyhow::Error::msg)
                .context("building the gateway's HTTP client")?;
            servers.push(tokio::spawn(http::serve::serve(
                listener,
                http::gateway::router(state.clone(), Arc::new(upstream)),
                listeners[2].clone(),
                cancel.clone(),
            )));
        }
        for (listener, router, discipline) in [
            (public, http::public_router(state.clone()), &listeners[0]),
            (
                internal,
                http::internal_router(state.clone()),
                &listeners[1],
            ),
        ] {
            servers.push(tokio::spawn(http::serve::serve(
                listener,
                router,
                discipline.clone(),
                cancel.clone(),
            )));
        }
        tracing::info!(
            public = %public_addr,
            internal = %internal_addr,
            gateway = %gateway_addr.map_or("off".to_owned(), |a| a.to_string()),
            storage = store.backend().as_str(),
            credentials = engine.cache().len(),
            public_max_connections = public_cap,
            internal_max_connections = internal_cap,
            "wxtoken is serving"
        );
        Ok(RunningApp {
            public_addr,
            internal_addr,
            gateway_addr,
            engine,
            store,
            state,
            cancel,
            tracker,
            servers,
            listeners,
            _serve_lock: serve_lock,
        })
    }
}

impl RunningApp {
    /// Connections open now on the public and on the internal listener.
    pub fn open_connections(&self) -> (usize, usize) {
        (
            self.listeners[0].open_connections(),
            self.listeners[1].open_connections(),
        )
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing requests and refreshes in flight");
        self.shutdown().await
    }

    /// Graceful shutdown (see the module docs).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        for server in self.servers {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "listener ended with an error"),
                Err(e) => tracing::warn!(error = %e, "listener task failed"),
            }
        }
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "refreshes still in flight after {}s; exiting without them",
                SHUTDOWN_GRACE.as_secs()
            );
        }
        if let Err(e) = self.state.0.reads.flush(&*self.store).await {
            tracing::warn!(error = %e, "the last read counts were not written");
        }
        if let Err(e) = self.state.0.gateway_calls.flush(&*self.store).await {
            tracing::warn!(error = %e, "the last gateway call counts were not written");
        }
        self.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Background upkeep: read counts to the store every few seconds, old processed events pruned.
fn spawn_upkeep(state: &AppState, tracker: &TaskTracker, cancel: CancellationToken) {
    let state = state.clone();
    tracker.spawn(async move {
        let mut flush = tokio::time::interval(READ_COUNT_FLUSH);
        let mut prune = tokio::time::interval(EVENT_PRUNE_EVERY);
        let mut minute = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = minute.tick() => {
                    let stats = state.0.engine.stats();
                    if let Err(e) = state.0.refresh_rates.record(&*state.0.store, &stats, Timestamp::now()).await {
                        tracing::debug!(error = %e, "refresh counts not written; kept for the next minute");
                    }
                    if let Err(e) = crate::http::ui::Sessions::prune(&*state.0.store).await {
                        tracing::debug!(error = %e, "expired dashboard sessions not pruned");
                    }
                }
                _ = flush.tick() => {
                    if let Err(e) = state.0.reads.flush(&*state.0.store).await {
                        tracing::warn!(error = %e, "read counts not written; kept for the next flush");
                    }
                    if let Err(e) = state.0.gateway_calls.flush(&*state.0.store).await {
                        tracing::warn!(error = %e, "gateway call counts not written; kept for the next flush");
                    }
                }
                _ = prune.tick() => {
                    let days = Timestamp::now().minus(GATEWAY_CALLS_RETENTION).beijing_day();
                    if let Err(e) = state.0.store.ops().prune_gateway_calls(&days).await {
                        tracing::warn!(error = %e, "pruning gateway call counts failed");
                    }
                    let before = Timestamp::now().minus(EVENT_RETENTION);
                    match state.0.store.events().prune_events(before).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(pruned = n, "old processed events deleted"),
                        Err(e) => tracing::warn!(error = %e, "pruning events failed"),
                    }
                }
            }
        }
    });
}

/// One info line every `every` (`log.summary_interval`): refreshes ok and failed since the last
/// line, credentials held, and the next one due; a healthy server's log says it is working.
fn spawn_summary(
    engine: Engine,
    every: Duration,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) {
    if every.is_zero() {
        return;
    }
    tracker.spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut last = engine.stats();
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = engine.stats();
            let (next_in, next) = match engine.next_due() {
                Some((d, c)) => (
                    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string(),
                    format!("{} {}", c.kind.as_str(), c.appid),
                ),
                None => ("-".to_owned(), "nothing scheduled".to_owned()),
            };
            tracing::info!(
                refreshed = now.refreshed - last.refreshed,
                failed = now.failed - last.failed,
                credentials = engine.cache().len(),
                next_in = %next_in,
                next = %next,
                "refreshes in the last {}",
                humantime::format_duration(every)
            );
            last = now;
        }
    });
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
