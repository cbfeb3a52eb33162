//! One refresh of one credential: the single flight, the lease between replicas (waiting for
//! the holder's token), what follows the refresh (failures and backoff, the component gate, the
//! next due time), and the upstream call wrappers. Each kind's refresh is in its own file.

use std::sync::atomic::AtomicU64;

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::tokens::flight::SingleFlight;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;
use wechat::client::WechatError;
use wechat::errcode::ErrorClass;

use super::lease::Grant;
use super::reports::Gate;
use super::{Inner, Mode, Outcome, RefreshError};
use crate::alerts::{Alert, AlertKind};
use crate::model::{Credential, CredentialKind, Timestamp, TokenSource};
use crate::store::LeaseKey;
use crate::telemetry;
use crate::tokens::cache::CachedToken;
use crate::tokens::plan;

/// How long a refresh refused the lease waits for the holder's token, asking for the lease again
/// every [`LEASE_POLL`], before giving up (and trying again after [`LEASE_RETRY`]).
const LEASE_WAIT: Duration = Duration::from_secs(3);
const LEASE_POLL: Duration = Duration::from_millis(250);
/// When a credential whose lease another replica holds is looked at again (plus up to as much
/// jitter): its holder's token usually arrives first, and moves the schedule.
const LEASE_RETRY: Duration = Duration::from_millis(250);

type BoxOutcome = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// Single flight per credential, the permits bounding upstream calls, and what flights ended in.
pub(crate) struct Flights {
    pub(crate) single: SingleFlight<Credential, Outcome>,
    pub(crate) permits: Semaphore,
    pub(crate) stats: FlightStats,
}

/// Counters since start (read by [`super::Engine::stats`]).
#[derive(Default)]
pub(crate) struct FlightStats {
    pub(crate) refreshed: AtomicU64,
    /// Landed flights by kind (component, authorizer, direct, JS-SDK ticket).
    pub(crate) by_kind: [AtomicU64; 4],
    pub(crate) failed: AtomicU64,
}

impl Flights {
    pub(crate) fn new(tracker: TaskTracker, concurrency: usize) -> Self {
        Self {
            single: SingleFlight::new(tracker),
            permits: Semaphore::new(concurrency),
            stats: FlightStats::default(),
        }
    }
}

impl Inner {
    /// Refreshes `credential` through its single flight.
    pub(crate) async fn refresh(self: &Arc<Self>, credential: Credential, mode: Mode) -> Outcome {
        Arc::clone(self).refresh_owned(credential, mode).await
    }

    /// Boxed (and declared `Send`): an authorizer's flight waits on its component's flight, so this
    /// future contains itself.
    pub(crate) fn refresh_owned(self: Arc<Self>, credential: Credential, mode: Mode) -> BoxOutcome {
        Box::pin(async move {
            let inner = Arc::clone(&self);
            let key = credential.clone();
            self.flights
                .single
                .run(key, move || inner.refresh_flight(credential, mode))
                .await
                .unwrap_or(Err(RefreshError::Abandoned))
        })
    }

    #[tracing::instrument(skip_all, fields(kind = credential.kind.as_str(), appid = %credential.appid))]
    async fn refresh_flight(self: Arc<Self>, credential: Credential, mode: Mode) -> Outcome {
        // An invalidation report that lost a race with a refresh: the token it reported is already
        // replaced, so the answer is the current token and WeChat is not asked again.
        let replaced = |inner: &Self| {
            let current = inner.cache.get(&credential).and_then(|s| s.current())?;
            let reported = match &mode {
                Mode::Forced { reported, .. } => reported.as_ref()?,
                Mode::Normal => return None,
            };
            (current.generation > reported.generation && mode.accepts(&current)).then_some(current)
        };
        if let Some(current) = replaced(&self) {
            return Ok(current);
        }
        // The previous refresh's token may still be on its way to the store: this one reads the
        // store (its generation, the refresh token), so it starts from what that one wrote.
        self.settle_pending_write(&credential).await;
        if let Some(current) = replaced(&self) {
            return Ok(current);
        }
        let slot = self.cache.slot(&credential);
        // What memory held when this flight started: a token newer than it, from another replica,
        // answers the flight instead of a new upstream call (never the token a report names).
        let held_at_start = slot.current().map_or(0, |t| t.generation);
        let mut landed = slot.subscribe();
        let lease_key = LeaseKey::refresh(&credential);
        // Refused: another replica refreshes, and its token reaches memory through the change
        // stream. Wait for it rather than fail the readers joined to this flight, asking again
        // every LEASE_POLL: if the holder died, its lease runs out and this flight takes over.
        let landings_at_start = self.component.landings(&credential.component);
        // Read before the lease is taken: taking it overwrites another holder's row.
        let rogue_evidence = self.rogue_evidence(&credential, &mode).await;
        let mut granted = self.io.lease.acquire(&lease_key).await;
        if matches!(granted, Ok(Grant::Refused)) {
            let give_up = Instant::now() + LEASE_WAIT;
            loop {
                let _ =
                    tokio::time::timeout(LEASE_POLL, landed.wait_for(|g| *g > held_at_start)).await;
                if let Some(token) = slot
                    .current()
                    .filter(|t| t.generation > held_at_start && mode.accepts(t))
                {
                    self.forget_failures(&credential);
                    return Ok(token);
                }
                if Instant::now() >= give_up {
                    break;
                }
                granted = self.io.lease.acquire(&lease_key).await;
                if !matches!(granted, Ok(Grant::Refused)) {
                    break;
                }
            }
        }
        let result = match granted {
            Ok(grant @ (Grant::Held | Grant::Taken)) => {
                if grant == Grant::Taken {
                    match self.adopt_newer(&credential, held_at_start, &mode).await {
                        Ok(Some(token)) => {
                            self.io.lease.release(&lease_key).await;
                            self.forget_failures(&credential);
                            return Ok(token);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            self.io.lease.release(&lease_key).await;
                            let result = Err(e);
                            self.after_refresh(&credential, &result);
                            return result;
                        }
                    }
                }
                match self.report_gate(&credential, &mode, rogue_evidence).await {
                    Gate::Refresh => {}
                    Gate::Answer(token) => {
                        self.io.lease.release(&lease_key).await;
                        // The scheduler may have joined this flight: the credential stays on
                        // the schedule (an overdue token comes due at once).
                        self.schedule_at(&credential, token.refresh_at);
                        return Ok(token);
                    }
                    Gate::Budgeted(token) => {
                        // The lease released first: the refresh this may wait for can need it.
                        self.io.lease.release(&lease_key).await;
                        self.schedule_at(&credential, token.refresh_at);
                        return Ok(self.newer_than_refused(&credential, token).await);
                    }
                }
                let work = async {
                    match credential.kind {
                        CredentialKind::Component => self.refresh_component(&credential).await,
                        CredentialKind::Authorizer => self.refresh_authorizer(&credential).await,
                        CredentialKind::Direct => self.refresh_direct(&credential, &mode).await,
                        CredentialKind::Jsapi | CredentialKind::WxCard => {
                            self.refresh_ticket(&credential).await
                        }
                    }
                };
                // A panic must not leave the lease held and the credential off the schedule:
                // it becomes `Abandoned`, which releases the lease and backs off like a failure.
                let r = std::panic::AssertUnwindSafe(work)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| {
                        tracing::error!("refresh panicked; it will be retried with backoff");
                        Err(RefreshError::Abandoned)
                    });
                let inner = Arc::clone(&self);
                let written = credential.clone();
                let landed = async move { inner.settle_pending_write(&written).await };
                self.io.lease.release_after(lease_key, landed.boxed()).await;
                r
            }
            Ok(Grant::Refused) => Err(RefreshError::LeaseHeld),
            Err(e) => Err(RefreshError::Storage(e.to_string())),
        };
        self.after_refresh(&credential, &result);
        if credential.kind == CredentialKind::Component {
            self.ticket_landed_during(&credential, landings_at_start, &result);
        }
        result
    }

    pub(super) fn after_refresh(&self, credential: &Credential, result: &Outcome) {
        let kind = credential.kind.as_str();
        let slot = self.cache.slot(credential);
        match result {
            Ok(_) => {
                self.flights.stats.refreshed.fetch_add(1, Ordering::Relaxed);
                let kind_index = match credential.kind {
                    CredentialKind::Component => 0,
                    CredentialKind::Authorizer => 1,
                    CredentialKind::Direct => 2,
                    CredentialKind::Jsapi | CredentialKind::WxCard => 3,
                };
                self.flights.stats.by_kind[kind_index].fetch_add(1, Ordering::Relaxed);
                self.forget_failures(credential);
                metrics::counter!(telemetry::REFRESH_TOTAL, "kind" => kind, "outcome" => "ok")
                    .increment(1);
                // Each refresh at debug; `log.summary_interval` sums them up at info.
                tracing::debug!(kind, appid = %credential.appid, "refreshed");
            }
            // Not a failure: another replica refreshes. Look again soon; its token usually lands
            // first and moves the schedule. If it died, its lease runs out and this one takes over.
            Err(RefreshError::LeaseHeld) => {
                metrics::counter!(telemetry::REFRESH_TOTAL, "kind" => kind, "outcome" => "lease")
                    .increment(1);
                let jitter = LEASE_RETRY.mul_f64(rand::random::<f64>());
                self.schedule_in(credential, LEASE_RETRY + jitter);
            }
            Err(e) => {
                metrics::counter!(telemetry::REFRESH_TOTAL, "kind" => kind, "outcome" => e.class())
                    .increment(1);
                // It may have reached WeChat: a refusal of the token held proves nothing now.
                self.reports.attempt_unknown(credential);
                if matches!(e, RefreshError::NoTicket) {
                    // Every fresh deployment starts here: the first push is at most 10 min away
                    // (ticket silence alerts if it is not), so this is no failure.
                    tracing::info!("waiting for the first component_verify_ticket push");
                } else {
                    self.flights.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "refresh failed");
                }
                slot.set_failing(Some(e.to_string()));
                if !e.retryable() {
                    self.unschedule(credential);
                    return;
                }
                let attempt = {
                    let mut failures = self.schedule.failures.lock();
                    let n = failures.entry(credential.clone()).or_insert(0);
                    let attempt = *n;
                    *n = n.saturating_add(1);
                    attempt
                };
                let alert = match e {
                    RefreshError::Upstream {
                        class: ErrorClass::Quota,
                        detail,
                    } => Some((AlertKind::Quota, detail)),
                    RefreshError::Upstream {
                        class: ErrorClass::Configuration | ErrorClass::Permission,
                        detail,
                    } => Some((AlertKind::Configuration, detail)),
                    _ => None,
                };
                if attempt == 0
                    && let Some((kind, detail)) = alert
                {
                    self.io.alerts.raise(Alert::new(
                        kind,
                        credential.component.as_str(),
                        Some(credential.appid.as_str()),
                        detail.clone(),
                        self.io.clock.now(),
                    ));
                }
                let backoff = plan::Backoff {
                    initial: self.config.backoff_initial,
                    max: self.config.backoff_max,
                };
                let delay = backoff.delay(attempt, rand::random::<f64>());
                if credential.kind == CredentialKind::Component {
                    self.component.gate.lock().insert(
                        credential.component.clone(),
                        (Instant::now() + delay, e.clone()),
                    );
                }
                self.schedule_in(credential, delay);
            }
        }
    }

    /// The credential has a good token again (its own, or another replica's): its backoff starts
    /// over, and authorizers stop getting a component's failure.
    pub(crate) fn forget_failures(&self, credential: &Credential) {
        self.schedule.failures.lock().remove(credential);
        if credential.kind == CredentialKind::Component {
            self.component.gate.lock().remove(&credential.component);
        }
    }

    /// With a lease just taken from the shared table: if the store holds a newer generation than memory,
    /// loads it; then, if memory holds a token newer than `held_at_start` that is not yet due
    /// (another replica refreshed while this flight waited), returns it.
    async fn adopt_newer(
        &self,
        credential: &Credential,
        held_at_start: u64,
        mode: &Mode,
    ) -> Result<Option<Arc<CachedToken>>, RefreshError> {
        let stored = self.io.stored_generation(credential).await?.unwrap_or(0);
        if stored
            > self
                .cache
                .slot(credential)
                .current()
                .map_or(0, |t| t.generation)
        {
            self.install_stored(credential)
                .await
                .map_err(|e| RefreshError::Storage(e.to_string()))?;
        }
        let now = self.io.clock.now();
        Ok(self
            .cache
            .get(credential)
            .and_then(|s| s.current())
            .filter(|t| {
                t.generation > held_at_start && t.stored && t.refresh_at > now && mode.accepts(t)
            }))
    }

    pub(crate) fn schedule_in(&self, credential: &Credential, delay: Duration) {
        // The deadline lives in the credential's slot (created empty if it has none yet).
        let slot = self.cache.slot(credential);
        self.schedule.heap.lock().set(slot, Instant::now() + delay);
        self.schedule.wake.notify_one();
    }

    /// Takes the credential off the schedule (its slot, if any, keeps its token).
    pub(crate) fn unschedule(&self, credential: &Credential) {
        if let Some(slot) = self.cache.get(credential) {
            self.schedule.heap.lock().remove(&slot);
        }
    }

    /// When the credential is next due, if scheduled.
    pub(crate) fn scheduled_at(&self, credential: &Credential) -> Option<Instant> {
        let slot = self.cache.get(credential)?;
        self.schedule.heap.lock().deadline(&slot)
    }

    /// Schedules at a stored wall-clock time (past → now).
    pub(crate) fn schedule_at(&self, credential: &Credential, at: Timestamp) {
        let wait = at
            .as_millis()
            .saturating_sub(self.io.clock.now().as_millis());
        self.schedule_in(
            credential,
            Duration::from_millis(u64::try_from(wait).unwrap_or(0)),
        );
    }

    /// The permit-holding upstream call: bounded concurrency toward WeChat.
    pub(crate) async fn upstream<T>(
        &self,
        call: impl Future<Output = Result<T, WechatError>>,
    ) -> Result<T, WechatError> {
        self.upstream_timed(call).await.map(|(v, _)| v)
    }

    /// [`Inner::upstream`] that also returns when the request was sent (once the permit is held):
    /// a token's lifetime counts from then, never from the answer's arrival, and a `Stale` write
    /// compares send times.
    pub(crate) async fn upstream_timed<T>(
        &self,
        call: impl Future<Output = Result<T, WechatError>>,
    ) -> Result<(T, Timestamp), WechatError> {
        // The semaphore is never closed.
        let _permit = self.flights.permits.acquire().await.ok();
        let sent_at = self.io.clock.now();
        call.await.map(|v| (v, sent_at))
    }

    pub(super) fn plan_delay(&self, source: TokenSource, expires_in: Duration) -> Duration {
        let lead = self
            .config
            .stable_token_lead
            .min(plan::STABLE_TOKEN_ROLLOVER);
        let margin = if source == TokenSource::GetTicket {
            self.config.ticket_serve_margin
        } else {
            self.config.serve_margin
        };
        if source == TokenSource::StableToken && expires_in > lead * 2 {
            plan::stable_refresh_delay(expires_in, lead)
        } else {
            plan::refresh_delay(
                expires_in,
                self.config.refresh_fraction,
                self.config.jitter,
                rand::random::<f64>(),
                margin,
            )
        }
    }
}
