//! The refresh engine (SPEC.md lifecycle rules 1–9, one process): keeps every credential's token
//! fresh, never loses a refresh token, and makes one upstream call per need.
//!
//! Depends on `store`, `vault`, `wechat`, `tokens` and `alerts`; the HTTP layer calls [`Engine`].
//!
//! - Scheduling: every credential has a due time from the `expires_in` WeChat returned
//!   (`plan::refresh_delay`, or `plan::stable_refresh_delay` for stable tokens) in a heap
//!   ([`schedule`]); [`Engine::run`] is a thin loop over [`Engine::start_due`] that `select!`s on
//!   cancellation, the next deadline and wake-ups; [`Engine::run_once`] is the step tests drive.
//! - Single flight: every refresh, whoever asks (scheduler, reader, invalidation report, event), goes
//!   through one `SingleFlight` per credential, whose work runs on the `TaskTracker`, so a cancelled
//!   asker never cancels a refresh between WeChat's answer and the store write.
//! - Bounded concurrency: each upstream call holds a permit of one semaphore
//!   (`refresh.concurrency`); permits are taken around the HTTP call only, never across a nested
//!   wait (an authorizer refresh waiting for the component token holds none).
//! - The [`lease::Lease`] seam is taken around every refresh; the store's generation fencing stays
//!   the final guard: on `SaveOutcome::Stale` the token requested later wins (the stored one is
//!   adopted, or ours is fenced again on the current generation), compared by request send time.
//! - Served before stored: WeChat's new token is published to memory at once (not stored yet) and
//!   written in the background; the credential's next refresh waits for that write.
//! - Failures by class (rule 5): transient and quota → capped exponential backoff with jitter,
//!   serving the current token while servable; stale component token → refresh it, retry once;
//!   ticket → newest stored ticket, `api_start_push_ticket` (throttled); re-authorization →
//!   recover the refresh token from `api_get_authorizer_list` once, else mark, alert, and fall back
//!   to the appsecret if one is on file. A marked authorizer is never retried (its circuit is open)
//!   until re-authorized or recovered.

mod authorizer;
mod codes;
mod cold_start;
mod commit;
mod component;
mod details;
mod direct;
mod events;
mod flight;
mod follow;
pub mod lease;
mod read;
mod reconcile;
mod recovery;
mod reports;
mod retry;
mod schedule;
mod tickets;
mod write;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use secrecy::SecretString;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wechat::client::WechatClient;
use wechat::errcode::ErrorClass;

use crate::alerts::Alerts;
use crate::config::RefreshConfig;
use crate::model::{
    Appid, AuthorizerRecord, ComponentAppid, Credential, RefreshTokenHistoryEntry, Timestamp,
};
use crate::store::{Store, StoreError};
use crate::tokens::cache::{CachedToken, TokenCache};
use crate::vault::{Vault, VaultError};

use lease::Lease;
pub use read::CredentialCounts;
pub use reconcile::ReconcileReport;

/// Wall-clock time for stored timestamps, injectable where tests need it. Scheduling itself uses
/// tokio time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A component the engine refreshes for: its appid and appsecret (from the configuration).
#[derive(Debug, Clone)]
pub struct ComponentSecret {
    pub appid: ComponentAppid,
    pub appsecret: SecretString,
}

/// Everything the engine needs, built by `serve`, `demo` or a test.
pub struct EngineDeps {
    pub store: Arc<dyn Store>,
    pub vault: Arc<Vault>,
    pub client: WechatClient,
    pub config: RefreshConfig,
    pub components: Vec<ComponentSecret>,
    pub alerts: Alerts,
    pub lease: Arc<dyn Lease>,
    pub clock: Arc<dyn Clock>,
    pub tracker: TaskTracker,
}

/// Why a refresh produced no token. Safe to log and to show (no secret, no URL).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// WeChat (or the network) refused; `class` says how the engine reacts.
    #[error("{class}: {detail}")]
    Upstream { class: ErrorClass, detail: String },
    /// No component_verify_ticket stored yet for the component.
    #[error("ticket: no component_verify_ticket received yet")]
    NoTicket,
    /// The authorization is lost and no fallback token exists (→ 410).
    #[error("authorization lost: {reason}")]
    Gone { reason: String },
    /// No such credential.
    #[error("unknown credential")]
    Unknown,
    /// The component is not in the configuration (no appsecret).
    #[error("configuration: component {0} is not configured")]
    NotConfigured(String),
    /// The store or the vault failed.
    #[error("storage: {0}")]
    Storage(String),
    /// Another replica holds the refresh lease.
    #[error("another replica is refreshing")]
    LeaseHeld,
    /// The flight ended without a result (its task panicked).
    #[error("refresh abandoned")]
    Abandoned,
}

impl RefreshError {
    /// Whether retrying later can help (Gone and Unknown stop the schedule).
    fn retryable(&self) -> bool {
        !matches!(self, RefreshError::Gone { .. } | RefreshError::Unknown)
    }

    fn class(&self) -> &'static str {
        match self {
            RefreshError::Upstream { class, .. } => class.as_str(),
            RefreshError::NoTicket => "waiting_ticket",
            RefreshError::Gone { .. } => "reauthorize",
            RefreshError::Unknown => "unknown",
            RefreshError::NotConfigured(_) => "configuration",
            RefreshError::Storage(_) => "storage",
            RefreshError::LeaseHeld => "lease",
            RefreshError::Abandoned => "abandoned",
        }
    }
}

impl From<StoreError> for RefreshError {
    fn from(e: StoreError) -> Self {
        RefreshError::Storage(e.to_string())
    }
}

impl From<VaultError> for RefreshError {
    fn from(e: VaultError) -> Self {
        RefreshError::Storage(e.to_string())
    }
}

impl From<wechat::client::WechatError> for RefreshError {
    fn from(e: wechat::client::WechatError) -> Self {
        RefreshError::Upstream {
            class: e.class(),
            detail: e.to_string(),
        }
    }
}

/// Why the engine could not start or store an event.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// What one [`Engine::run_once`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepOutcome {
    pub refreshed: usize,
    pub failed: usize,
}

/// Counters since start (tests compare them with the simulator's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Refresh flights that ended with a token.
    pub refreshed: u64,
    /// Refresh flights that ended with an error.
    pub failed: u64,
    /// Of `refreshed`: component tokens, authorizers (the appsecret fallback included), direct
    /// accounts, JS-SDK tickets.
    pub component_refreshed: u64,
    pub authorizer_refreshed: u64,
    pub direct_refreshed: u64,
    /// JS-SDK tickets (jsapi, wx_card).
    pub ticket_refreshed: u64,
}

pub(crate) type Outcome = Result<Arc<CachedToken>, RefreshError>;

/// How a refresh was asked for.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    Normal,
    /// An invalidation report of `reported` (None: no token was current): direct accounts use
    /// `force_refresh` (within budget). The flight answers with any held token other than the
    /// reported one (a report that raced a refresh landing in between causes no second call), and
    /// never with the reported token itself, whatever its generation says: a write that changed
    /// only the refresh token bumps the generation but not the access token.
    Forced {
        reported: Option<Arc<CachedToken>>,
        /// The client that reported (for a rogue refresher alert).
        reporter: Option<Arc<str>>,
    },
}

impl Mode {
    /// Whether `token` may answer this refresh without a new upstream call: any token does for a
    /// normal refresh, anything but the reported token for a report.
    fn accepts(&self, token: &CachedToken) -> bool {
        match self {
            Mode::Forced {
                reported: Some(reported),
                ..
            } => !token.is(reported.access_token.expose_secret()),
            _ => true,
        }
    }
}

/// What the engine talks to: the store, the vault, WeChat, the lease seam, the clock, the task
/// tracker its flights run on, and the alert sink.
pub(crate) struct Io {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) vault: Arc<Vault>,
    pub(crate) client: WechatClient,
    pub(crate) lease: Arc<dyn Lease>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) tracker: TaskTracker,
    pub(crate) alerts: Alerts,
}

impl Io {
    /// The generation stored for `credential` (`None`: no row yet).
    pub(crate) async fn stored_generation(
        &self,
        credential: &Credential,
    ) -> Result<Option<u64>, StoreError> {
        let record = self.store.tokens().get_token(credential).await?;
        Ok(record.map(|r| r.generation))
    }

    /// An authorizer's stored record; `Unknown` if there is none.
    pub(crate) async fn authorizer(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
    ) -> Result<AuthorizerRecord, RefreshError> {
        let record = self.store.authorizers().get_authorizer(component, appid);
        record.await?.ok_or(RefreshError::Unknown)
    }

    /// Every refresh token an authorizer ever had, oldest first.
    pub(crate) async fn history(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
    ) -> Result<Vec<RefreshTokenHistoryEntry>, StoreError> {
        let authorizers = self.store.authorizers();
        authorizers.refresh_token_history(component, appid).await
    }
}

/// The engine's state, one field per concern; each concern's state is defined (and locked) in the
/// file that owns it.
pub(crate) struct Inner {
    pub(crate) io: Io,
    pub(crate) config: RefreshConfig,
    /// What readers see (`tokens::cache`).
    pub(crate) cache: TokenCache,
    /// Single flight per credential, the upstream permits, and flight counters (`flight.rs`).
    pub(crate) flights: flight::Flights,
    /// Due times, wake-ups and backoff attempts (`schedule.rs`).
    pub(crate) schedule: schedule::Scheduling,
    /// Component secrets, the token gate, ticket nudges and silence (`component.rs`).
    pub(crate) component: component::ComponentState,
    /// api_get_authorizer_list pagings for refresh-token recovery (`recovery.rs`).
    pub(crate) listings: recovery::Listings,
    /// Event processing and its retries, and authorization codes exchanged and being exchanged
    /// (`events.rs`, `codes.rs`).
    pub(crate) events: events::EventState,
    /// Served-but-unstored writes and the group commit (`write.rs`, `commit.rs`).
    pub(crate) writes: write::Writes,
    /// Force budgets (reports', and stable_token's own) and the tokens this process obtained
    /// (`reports.rs`, `direct.rs`).
    pub(crate) reports: reports::Reports,
}

/// The refresh engine. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("credentials", &self.inner.cache.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Cold start: registers the configured components, loads every token and authorizer from the
    /// store (one query per kind), opens the tokens into the cache and schedules each credential
    /// at its stored `refresh_at` (overdue ones soon, spread out). Does not start the loop
    /// ([`Engine::spawn`]) nor replay events ([`Engine::process_events`]).
    pub async fn open(deps: EngineDeps) -> Result<Self, EngineError> {
        let concurrency = deps.config.concurrency.max(1);
        let started_at = deps.clock.now();
        let inner = Arc::new(Inner {
            io: Io {
                store: deps.store,
                vault: deps.vault,
                client: deps.client,
                lease: deps.lease,
                clock: deps.clock,
                tracker: deps.tracker.clone(),
                alerts: deps.alerts,
            },
            config: deps.config,
            cache: TokenCache::new(),
            flights: flight::Flights::new(deps.tracker.clone(), concurrency),
            schedule: schedule::Scheduling::default(),
            component: component::ComponentState::new(deps.components, started_at),
            listings: recovery::Listings::new(deps.tracker.clone()),
            events: events::EventState::new(deps.tracker),
            writes: write::Writes::default(),
            reports: reports::Reports::default(),
        });
        inner.cold_start().await?;
        Ok(Self { inner })
    }

    /// Starts the scheduler loop on the tracker, running until `cancel`, and beside it replays
    /// unprocessed events (a slow WeChat during the replay never delays scheduling).
    pub fn spawn(&self, cancel: CancellationToken) {
        let engine = self.clone();
        self.inner.io.tracker.spawn(async move {
            if let Err(e) = engine.process_events().await {
                tracing::warn!(error = %e, "event replay failed; the loop retries it");
                engine.inner.events.pending.store(true, Ordering::Relaxed);
            }
        });
        let engine = self.clone();
        self.inner
            .io
            .tracker
            .spawn(async move { engine.run(cancel).await });
    }

    /// The scheduler loop: starts due refreshes, sleeps until the next deadline or a wake-up,
    /// reconciles every `reconcile_interval`, checks ticket silence, and stops on `cancel`
    /// (flights already started finish on the tracker).
    pub async fn run(&self, cancel: CancellationToken) {
        let cfg = &self.inner.config;
        let reconcile_every = cfg.reconcile_interval.max(Duration::from_secs(1));
        let mut reconcile =
            tokio::time::interval_at(Instant::now() + reconcile_every, reconcile_every);
        let silence_every =
            (cfg.ticket_silence_alert / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut silence = tokio::time::interval_at(Instant::now() + silence_every, silence_every);
        let events_every = cfg
            .backoff_max
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut events = tokio::time::interval_at(Instant::now() + events_every, events_every);
        // A reconciliation pages the whole list; a slow one must not overlap the next.
        let reconciling = Arc::new(std::sync::atomic::AtomicBool::new(false));
        loop {
            self.start_due();
            let next = self.inner.schedule.heap.lock().next_deadline();
            let deadline = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                () = self.inner.schedule.wake.notified() => {}
                () = tokio::time::sleep_until(deadline) => {}
                _ = reconcile.tick() => {
                    if reconciling.swap(true, Ordering::AcqRel) {
                        tracing::warn!("the previous reconciliation is still running; skipping this one");
                        continue;
                    }
                    let engine = self.clone();
                    let reconciling = Arc::clone(&reconciling);
                    let components: Vec<_> = self.inner.component.secrets.keys().cloned().collect();
                    self.inner.io.tracker.spawn(async move {
                        for component in components {
                            if let Err(e) = engine.reconcile_once(&component).await {
                                tracing::warn!(component = %component, error = %e, "reconciliation failed");
                            }
                        }
                        reconciling.store(false, Ordering::Release);
                    });
                }
                // Off the loop: the check reads the store and may call WeChat, and scheduling must
                // never wait on either.
                _ = silence.tick() => {
                    let inner = Arc::clone(&self.inner);
                    self.inner.io.tracker.spawn(async move {
                        inner.check_ticket_silence().await;
                    });
                }
                _ = events.tick() => {
                    if self.inner.events.pending.load(Ordering::Relaxed) {
                        let engine = self.clone();
                        self.inner.io.tracker.spawn(async move {
                            if let Err(e) = engine.process_events().await {
                                tracing::warn!(error = %e, "event retry failed");
                            }
                        });
                    }
                }
            }
        }
    }

    /// Every credential due now, taken off the schedule.
    fn take_due(&self) -> Vec<Credential> {
        let mut due = self
            .inner
            .schedule
            .heap
            .lock()
            .pop_due(Instant::now(), usize::MAX);
        self.inner.drop_idle_tickets(&mut due);
        due
    }

    /// Starts every due refresh on the tracker without waiting for them. Returns how many.
    pub fn start_due(&self) -> usize {
        let due = self.take_due();
        let n = due.len();
        for credential in due {
            let inner = Arc::clone(&self.inner);
            self.inner.io.tracker.spawn(async move {
                let _ = inner.refresh(credential, Mode::Normal).await;
            });
        }
        n
    }

    /// The ticket-silence check the loop runs periodically, now: alerts (once per silence) each
    /// component that has heard no push for `ticket_silence_alert` since its last ticket or this
    /// engine's start, whichever is later, and returns the ones newly alerted.
    pub async fn check_ticket_silence(&self) -> Vec<ComponentAppid> {
        self.inner.check_ticket_silence().await
    }

    /// One step for tests: runs every refresh due now and waits for them.
    pub async fn run_once(&self) -> StepOutcome {
        let due = self.take_due();
        let results = futures::future::join_all(
            due.into_iter()
                .map(|c| Arc::clone(&self.inner).refresh_owned(c, Mode::Normal)),
        )
        .await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        StepOutcome {
            refreshed: results.len() - failed,
            failed,
        }
    }

    /// Refreshes now (single flight), e.g. `wxtoken authorizers refresh` or a reader that found no
    /// token.
    pub async fn refresh_now(&self, credential: &Credential) -> Outcome {
        Arc::clone(&self.inner)
            .refresh_owned(credential.clone(), Mode::Normal)
            .await
    }

    /// Waits until the credential's served token is stored (or its write given up): a refresh
    /// returns as soon as WeChat answered, and writes in the background. For callers that need
    /// the store to hold what they were given (the CLI, tests). Returns at once if nothing is
    /// pending.
    pub async fn wait_stored(&self, credential: &Credential) {
        self.inner.settle_pending_write(credential).await;
    }

    /// How long until the next scheduled refresh, and of what (the summary log line).
    pub fn next_due(&self) -> Option<(Duration, Credential)> {
        let (at, credential) = self.inner.schedule.heap.lock().next()?;
        Some((at.saturating_duration_since(Instant::now()), credential))
    }

    /// When the credential is next due, if scheduled (for tests and admin views).
    pub fn next_refresh(&self, credential: &Credential) -> Option<Instant> {
        self.inner.scheduled_at(credential)
    }

    pub fn stats(&self) -> EngineStats {
        let by_kind = |i: usize| self.inner.flights.stats.by_kind[i].load(Ordering::Relaxed);
        EngineStats {
            refreshed: self.inner.flights.stats.refreshed.load(Ordering::Relaxed),
            failed: self.inner.flights.stats.failed.load(Ordering::Relaxed),
            component_refreshed: by_kind(0),
            authorizer_refreshed: by_kind(1),
            direct_refreshed: by_kind(2),
            ticket_refreshed: by_kind(3),
        }
    }

    /// Raises an alert through the engine's sink (logged, counted, sent to the webhook).
    pub fn raise(&self, alert: crate::alerts::Alert) {
        self.inner.io.alerts.raise(alert);
    }

    /// The latest alerts this process raised, newest first (the dashboard).
    pub fn recent_alerts(&self) -> Vec<crate::alerts::Alert> {
        self.inner.io.alerts.recent()
    }

    /// The in-memory cache (readers and tests).
    pub fn cache(&self) -> &TokenCache {
        &self.inner.cache
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}
