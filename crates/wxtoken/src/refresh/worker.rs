//! One refresh of one credential, by kind, and what follows it (store write, cache, next due time,
//! backoff). Everything here runs inside a single flight on the tracker.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::oneshot;
use tokio::time::Instant;
use wechat::client::WechatError;
use wechat::errcode::ErrorClass;

use super::recovery::Recovered;
use super::retry::StoreRetry;
use super::{
    FORCE_MIN_GAP, FORCE_PER_DAY, ForceBudget, Inner, Mode, Outcome, RefreshError,
    START_PUSH_THROTTLE,
};
use crate::alerts::{Alert, AlertKind};
use crate::config::DirectTokenApi;
use crate::model::{
    AuthorizationWrite, AuthorizerRecord, AuthorizerStatus, ComponentAppid, Credential,
    CredentialKind, Expected, ForceBudgetRecord, NewAccessToken, RefreshResult, RefreshTokenSource,
    SaveOutcome, Sealed, SecretSlot, StatusChange, Timestamp, TokenSource,
};
use crate::store::LeaseKey;
use crate::telemetry;
use crate::tokens::cache::CachedToken;
use crate::tokens::plan;
use crate::vault::VaultError;

/// How long a refresh refused the lease waits for the holder's token, asking for the lease again
/// every [`LEASE_POLL`], before giving up (and trying again after [`LEASE_RETRY`]).
const LEASE_WAIT: Duration = Duration::from_secs(3);
const LEASE_POLL: Duration = Duration::from_millis(250);
/// When a credential whose lease another replica holds is looked at again (plus up to as much
/// jitter): its holder's token usually arrives first, and moves the schedule.
const LEASE_RETRY: Duration = Duration::from_millis(250);

/// Credentials loaded overdue at cold start start in waves of `refresh.concurrency`, one wave per
/// this (about one refresh's time), within [`MAX_COLD_SPREAD`] (`plan::cold_start_offset`).
const COLD_START_PER_CALL: Duration = Duration::from_millis(200);
const MAX_COLD_SPREAD: Duration = Duration::from_secs(300);

/// How many times a refresh result that lost the fence to an older token is fenced again.
const STALE_REWRITES: u32 = 3;

type BoxOutcome = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// The refresh token a refresh result carries: the one WeChat answered with, and whether it
/// differs from the one sent (`rotated`) or only echoes it.
pub(crate) struct CarriedRefreshToken {
    pub(crate) sealed: Sealed,
    pub(crate) rotated: bool,
}

/// What a result that lost the fence does next.
enum StaleVerdict {
    /// The stored token stands.
    Adopt,
    /// Ours is newer: write again, fenced on `generation`.
    Rewrite {
        generation: u64,
        refresh_token: Option<Sealed>,
    },
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
                Mode::Forced { reported } => reported.as_ref()?,
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
        let mut granted = self.lease.acquire(&lease_key).await;
        if matches!(granted, Ok(false)) {
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
                granted = self.lease.acquire(&lease_key).await;
                if !matches!(granted, Ok(false)) {
                    break;
                }
            }
        }
        let result = match granted {
            Ok(true) => {
                if self.lease.shared() {
                    match self.adopt_newer(&credential, held_at_start, &mode).await {
                        Ok(Some(token)) => {
                            self.lease.release(&lease_key).await;
                            self.forget_failures(&credential);
                            return Ok(token);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            self.lease.release(&lease_key).await;
                            let result = Err(e);
                            self.after_refresh(&credential, &result);
                            return result;
                        }
                    }
                }
                let work = async {
                    match credential.kind {
                        CredentialKind::Component => self.refresh_component(&credential).await,
                        CredentialKind::Authorizer => self.refresh_authorizer(&credential).await,
                        CredentialKind::Direct => self.refresh_direct(&credential, &mode).await,
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
                if self.lease.shared() {
                    // Other replicas must not take the lease before our token is in the store,
                    // or they would read the old generation and ask WeChat again.
                    let inner = Arc::clone(&self);
                    let credential = credential.clone();
                    self.tracker.spawn(async move {
                        inner.settle_pending_write(&credential).await;
                        inner.lease.release(&lease_key).await;
                    });
                } else {
                    self.lease.release(&lease_key).await;
                }
                r
            }
            Ok(false) => Err(RefreshError::LeaseHeld),
            Err(e) => Err(RefreshError::Storage(e.to_string())),
        };
        self.after_refresh(&credential, &result);
        result
    }

    fn after_refresh(&self, credential: &Credential, result: &Outcome) {
        let kind = credential.kind.as_str();
        let slot = self.cache.slot(credential);
        match result {
            Ok(_) => {
                self.refreshed.fetch_add(1, Ordering::Relaxed);
                let kind_index = match credential.kind {
                    CredentialKind::Component => 0,
                    CredentialKind::Authorizer => 1,
                    CredentialKind::Direct => 2,
                };
                self.refreshed_by_kind[kind_index].fetch_add(1, Ordering::Relaxed);
                self.forget_failures(credential);
                metrics::counter!(telemetry::REFRESH_TOTAL, "kind" => kind, "outcome" => "ok")
                    .increment(1);
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
                self.failed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(telemetry::REFRESH_TOTAL, "kind" => kind, "outcome" => e.class())
                    .increment(1);
                tracing::warn!(error = %e, "refresh failed");
                slot.set_failing(Some(e.to_string()));
                if !e.retryable() {
                    self.schedule.lock().remove(credential);
                    return;
                }
                let attempt = {
                    let mut failures = self.failures.lock();
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
                    self.alerts.raise(Alert::new(
                        kind,
                        credential.component.as_str(),
                        Some(credential.appid.as_str()),
                        detail.clone(),
                        self.clock.now(),
                    ));
                }
                let backoff = plan::Backoff {
                    initial: self.config.backoff_initial,
                    max: self.config.backoff_max,
                };
                let delay = backoff.delay(attempt, rand::random::<f64>());
                if credential.kind == CredentialKind::Component {
                    self.component_gate.lock().insert(
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
        self.failures.lock().remove(credential);
        if credential.kind == CredentialKind::Component {
            self.component_gate.lock().remove(&credential.component);
        }
    }

    /// With a shared lease just granted: if the store holds a newer generation than memory,
    /// loads it; then, if memory holds a token newer than `held_at_start` that is not yet due
    /// (another replica refreshed while this flight waited), returns it.
    async fn adopt_newer(
        &self,
        credential: &Credential,
        held_at_start: u64,
        mode: &Mode,
    ) -> Result<Option<Arc<CachedToken>>, RefreshError> {
        let stored = self
            .store
            .get_token(credential)
            .await?
            .map_or(0, |r| r.generation);
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
        let now = self.clock.now();
        Ok(self
            .cache
            .get(credential)
            .and_then(|s| s.current())
            .filter(|t| {
                t.generation > held_at_start && t.stored && t.refresh_at > now && mode.accepts(t)
            }))
    }

    pub(crate) fn schedule_in(&self, credential: &Credential, delay: Duration) {
        self.schedule
            .lock()
            .set(credential.clone(), Instant::now() + delay);
        self.wake.notify_one();
    }

    /// Schedules at a stored wall-clock time (past → now).
    pub(crate) fn schedule_at(&self, credential: &Credential, at: Timestamp) {
        let wait = at.as_millis().saturating_sub(self.clock.now().as_millis());
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
        let _permit = self.permits.acquire().await.ok();
        let sent_at = self.clock.now();
        call.await.map(|v| (v, sent_at))
    }

    fn plan_delay(&self, source: TokenSource, expires_in: Duration) -> Duration {
        let lead = self
            .config
            .stable_token_lead
            .min(plan::STABLE_TOKEN_ROLLOVER);
        if source == TokenSource::StableToken && expires_in > lead * 2 {
            plan::stable_refresh_delay(expires_in, lead)
        } else {
            plan::refresh_delay(
                expires_in,
                self.config.refresh_fraction,
                self.config.jitter,
                rand::random::<f64>(),
                self.config.serve_margin,
            )
        }
    }

    /// Seals and plans a fresh access token obtained by a request sent at `sent_at`: it is
    /// `issued_at`, and `expires_at` and `refresh_at` count from it (the call's latency never makes
    /// them late).
    pub(crate) fn new_access_token(
        &self,
        credential: &Credential,
        token: &str,
        expires_in: Duration,
        source: TokenSource,
        sent_at: Timestamp,
    ) -> Result<NewAccessToken, VaultError> {
        Ok(NewAccessToken {
            sealed: self
                .vault
                .seal(SecretSlot::AccessToken { credential }, token.as_bytes())?,
            issued_at: sent_at,
            expires_at: sent_at.plus(expires_in),
            refresh_at: Some(sent_at.plus(self.plan_delay(source, expires_in))),
            source,
        })
    }

    /// Opens a token read from the store and publishes it (cold start, loading a credential).
    pub(crate) fn publish_stored(
        &self,
        credential: &Credential,
        generation: u64,
        stored: &NewAccessToken,
    ) -> Result<(), VaultError> {
        let token = self
            .vault
            .open_string(SecretSlot::AccessToken { credential }, &stored.sealed)?;
        self.publish(credential, generation, token, stored);
        Ok(())
    }

    /// Installs a stored token into the cache and schedules its next refresh.
    pub(crate) fn publish(
        &self,
        credential: &Credential,
        generation: u64,
        token: SecretString,
        stored: &NewAccessToken,
    ) -> Arc<CachedToken> {
        let refresh_at = stored.refresh_at.unwrap_or(stored.issued_at);
        let slot = self.cache.slot(credential);
        slot.publish(CachedToken {
            access_token: token,
            issued_at: stored.issued_at,
            expires_at: stored.expires_at,
            refresh_at,
            generation,
            source: stored.source,
            stored: true,
        });
        self.schedule_at(credential, refresh_at);
        // The slot may hold a newer one than ours (adopted meanwhile).
        slot.current().expect("just published")
    }

    /// Serves a token WeChat just issued and stores it. The token is published to memory at once
    /// (not stored yet, at the generation its write will produce if it lands first), so readers
    /// and invalidation reports never wait on the store; the write runs in the background
    /// ([`Inner::store_token`]) and the credential's next refresh waits for it
    /// ([`Inner::settle_pending_write`]), so it reads what it wrote (a rotated refresh token
    /// above all). If memory already holds a token as new, the write is awaited instead.
    #[allow(clippy::too_many_arguments)] // one per part of WeChat's answer
    async fn save_token(
        self: &Arc<Self>,
        credential: &Credential,
        expected_generation: u64,
        token: String,
        expires_in: u64,
        source: TokenSource,
        refresh_token: Option<CarriedRefreshToken>,
        sent_at: Timestamp,
    ) -> Outcome {
        let expires_in = Duration::from_secs(expires_in);
        let access = self.new_access_token(credential, &token, expires_in, source, sent_at)?;
        let slot = self.cache.slot(credential);
        let refresh_at = access.refresh_at.unwrap_or(access.issued_at);
        // Pending before it is published: whoever sees the token and then calls `wait_stored`
        // waits for its write.
        let (done, settled) = tokio::sync::watch::channel(false);
        self.pending_writes
            .lock()
            .insert(credential.clone(), settled);
        let served = slot.publish(CachedToken {
            access_token: SecretString::from(token.clone()),
            issued_at: access.issued_at,
            expires_at: access.expires_at,
            refresh_at,
            generation: expected_generation.saturating_add(1),
            source,
            stored: false,
        });
        // (A revocation landing in between may have dropped it again.)
        let Some(current) = slot.current().filter(|_| served) else {
            let stored = self
                .store_token(
                    credential,
                    expected_generation,
                    access,
                    token,
                    refresh_token,
                )
                .await;
            self.pending_writes.lock().remove(credential);
            let _ = done.send(true);
            return stored;
        };
        self.schedule_at(credential, refresh_at);
        let inner = Arc::clone(self);
        let credential = credential.clone();
        self.tracker.spawn(async move {
            let stored = inner
                .store_token(
                    &credential,
                    expected_generation,
                    access,
                    token,
                    refresh_token,
                )
                .await;
            if let Err(e) = &stored {
                // Served but not stored: the credential refreshes again with backoff.
                tracing::warn!(error = %e, "a served token could not be stored");
                inner.after_refresh(&credential, &stored);
            }
            inner.pending_writes.lock().remove(&credential);
            let _ = done.send(true);
        });
        Ok(current)
    }

    /// Waits until the credential's served-but-unstored token (if any) is written or given up.
    pub(crate) async fn settle_pending_write(&self, credential: &Credential) {
        let pending = self.pending_writes.lock().get(credential).cloned();
        if let Some(mut settled) = pending {
            let _ = settled.wait_for(|done| *done).await;
        }
    }

    /// Writes a refresh result (fenced) and publishes the stored outcome. On a stale write,
    /// whichever token was requested later wins: if the stored one was (or the credential's state
    /// no longer takes ours), it is adopted; if ours was, the write is fenced again on the current
    /// generation (at most [`STALE_REWRITES`] times). Both refresh tokens stay in the history
    /// either way.
    async fn store_token(
        &self,
        credential: &Credential,
        expected_generation: u64,
        access: NewAccessToken,
        token: String,
        refresh_token: Option<CarriedRefreshToken>,
    ) -> Outcome {
        let mut expected = expected_generation;
        // An echoed refresh token is the one already stored (and in the history): writing it again
        // would add a duplicate history row per refresh and two statements per result.
        let mut rt = refresh_token
            .as_ref()
            .filter(|c| c.rotated)
            .map(|c| c.sealed.clone());
        for _ in 0..=STALE_REWRITES {
            let result = RefreshResult {
                credential: credential.clone(),
                expected_generation: expected,
                access_token: access.clone(),
                refresh_token: rt.clone(),
                at: self.clock.now(),
            };
            match self.save_with_retry(&result).await? {
                SaveOutcome::Saved { generation } => {
                    return Ok(self.publish(
                        credential,
                        generation,
                        SecretString::from(token),
                        &access,
                    ));
                }
                SaveOutcome::Missing => {
                    return Err(RefreshError::Gone {
                        reason: "credential no longer exists".into(),
                    });
                }
                SaveOutcome::Stale { .. } => {
                    match self
                        .after_stale(credential, &access, refresh_token.as_ref())
                        .await?
                    {
                        StaleVerdict::Adopt => {
                            tracing::info!(
                                "a token requested later was stored meanwhile; adopting it"
                            );
                            return self.adopt_stored(credential).await;
                        }
                        StaleVerdict::Rewrite {
                            generation,
                            refresh_token,
                        } => {
                            tracing::info!(
                                "an older token was stored meanwhile; writing ours over it"
                            );
                            expected = generation;
                            rt = refresh_token;
                        }
                    }
                }
            }
        }
        tracing::warn!("kept losing the fenced write; adopting the stored token");
        self.adopt_stored(credential).await
    }

    /// What a refresh result that lost the fence should do, from the stored state: rewrite only if
    /// the stored token was requested before ours and the credential still takes a token of our
    /// kind (an authorizer-token result needs an active authorizer, an appsecret fallback one that
    /// is not; never over a revocation or a re-authorization's state change).
    async fn after_stale(
        &self,
        credential: &Credential,
        ours: &NewAccessToken,
        carried: Option<&CarriedRefreshToken>,
    ) -> Result<StaleVerdict, RefreshError> {
        let older =
            |stored: Option<&NewAccessToken>| stored.is_none_or(|t| t.issued_at < ours.issued_at);
        if credential.kind == CredentialKind::Authorizer {
            let Some(record) = self
                .store
                .get_authorizer(&credential.component, &credential.appid)
                .await?
            else {
                return Ok(StaleVerdict::Adopt);
            };
            let takes_ours = (record.status == AuthorizerStatus::Active) == carried.is_some();
            if !takes_ours || !older(record.token.as_ref()) {
                return Ok(StaleVerdict::Adopt);
            }
            // An echoed refresh token is the one we sent, older than whatever is stored now: keep
            // the stored one. One WeChat issued with our answer is the newest.
            let refresh_token = carried.map(|c| {
                if c.rotated {
                    c.sealed.clone()
                } else {
                    record.refresh_token.clone()
                }
            });
            return Ok(StaleVerdict::Rewrite {
                generation: record.generation,
                refresh_token,
            });
        }
        match self.store.get_token(credential).await? {
            Some(record) if older(record.token.as_ref()) => Ok(StaleVerdict::Rewrite {
                generation: record.generation,
                refresh_token: None,
            }),
            _ => Ok(StaleVerdict::Adopt),
        }
    }

    /// Group commit: the result joins the pending queue; whoever finds no writer running starts
    /// one on the tracker, which writes everything pending in one fenced transaction per batch. A
    /// SQLite file takes one writer at a time, so batching is what lets thousands of refreshes a
    /// minute land without queueing behind each other.
    async fn save_with_retry(&self, result: &RefreshResult) -> Result<SaveOutcome, RefreshError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.writes.lock();
            q.pending.push((result.clone(), tx));
            !std::mem::replace(&mut q.draining, true)
        };
        if start {
            let (alerts, clock) = (self.alerts.clone(), Arc::clone(&self.clock));
            let give_up: Arc<GiveUp> = Arc::new(move |result: &RefreshResult, e: &RefreshError| {
                let c = &result.credential;
                tracing::error!(
                    kind = c.kind.as_str(),
                    appid = %c.appid,
                    error = %e,
                    "refresh result cannot be stored; given up (the credential refreshes again)"
                );
                alerts.raise(Alert::new(
                    AlertKind::WriteFailed,
                    c.component.as_str(),
                    Some(c.appid.as_str()),
                    format!("{} token not stored: {e}", c.kind.as_str()),
                    clock.now(),
                ));
            });
            self.tracker.spawn(drain_writes(
                Arc::clone(&self.store),
                Arc::clone(&self.writes),
                give_up,
            ));
        }
        rx.await.unwrap_or(Err(RefreshError::Abandoned))
    }

    /// Reads the credential's stored token into the cache (after losing a fenced write).
    pub(crate) async fn adopt_stored(&self, credential: &Credential) -> Outcome {
        let record = self
            .store
            .get_token(credential)
            .await?
            .ok_or(RefreshError::Unknown)?;
        let stored = record.token.ok_or(RefreshError::Storage(
            "stale write but no stored token".into(),
        ))?;
        let token = self
            .vault
            .open_string(SecretSlot::AccessToken { credential }, &stored.sealed)?;
        Ok(self.publish(credential, record.generation, token, &stored))
    }

    // --- component token --------------------------------------------------------------------

    async fn refresh_component(self: &Arc<Self>, credential: &Credential) -> Outcome {
        let component = &credential.component;
        let secret = self
            .components
            .get(component)
            .ok_or_else(|| RefreshError::NotConfigured(component.to_string()))?;
        let Some(ticket) = self.store.latest_ticket(component).await? else {
            self.kick_ticket(component).await;
            return Err(RefreshError::NoTicket);
        };
        let ticket = self
            .vault
            .open_string(SecretSlot::Ticket { component }, &ticket.sealed)?;
        let generation = self
            .store
            .get_token(credential)
            .await?
            .map_or(0, |r| r.generation);
        let (resp, sent_at) = match self
            .upstream_timed(self.client.component_token(
                component.as_str(),
                secret.expose_secret(),
                ticket.expose_secret(),
            ))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                if e.class() == ErrorClass::Ticket {
                    // Keep the newest stored ticket; ask WeChat to push again.
                    self.kick_ticket(component).await;
                }
                return Err(e.into());
            }
        };
        self.save_token(
            credential,
            generation,
            resp.component_access_token,
            resp.expires_in,
            TokenSource::ComponentToken,
            None,
            sent_at,
        )
        .await
    }

    /// `api_start_push_ticket`, at most once per [`START_PUSH_THROTTLE`] per component.
    pub(crate) async fn kick_ticket(&self, component: &ComponentAppid) {
        {
            let mut at = self.push_ticket_at.lock();
            if at
                .get(component)
                .is_some_and(|t| t.elapsed() < START_PUSH_THROTTLE)
            {
                return;
            }
            at.insert(component.clone(), Instant::now());
        }
        let Some(secret) = self.components.get(component) else {
            return;
        };
        match self
            .upstream(
                self.client
                    .start_push_ticket(component.as_str(), secret.expose_secret()),
            )
            .await
        {
            Ok(_) => tracing::info!(component = %component, "asked WeChat to push a ticket"),
            Err(e) => {
                tracing::warn!(component = %component, error = %e, "api_start_push_ticket failed")
            }
        }
    }

    /// A servable component token, refreshing it (single flight) if there is none.
    pub(crate) async fn ensure_component_token(
        self: &Arc<Self>,
        component: &ComponentAppid,
    ) -> Result<Arc<CachedToken>, RefreshError> {
        if let Some(slot) = self.cache.component(component)
            && let Ok(token) = slot.read(self.clock.now(), self.config.serve_margin)
        {
            return Ok(token);
        }
        self.component_gate_open(component)?;
        self.refresh(Credential::component(component), Mode::Normal)
            .await
    }

    /// `Err` with the component token's last failure while that refresh is backing off: the
    /// component credential retries on its own schedule, and authorizers must not each start
    /// another api_component_token call (a daily-quota storm when thousands wait on it).
    fn component_gate_open(&self, component: &ComponentAppid) -> Result<(), RefreshError> {
        let gate = self.component_gate.lock();
        match gate.get(component) {
            // "No ticket yet" costs no WeChat call to re-check, and another replica may have
            // stored one since: let the refresh (single flight) look again.
            Some((_, RefreshError::NoTicket)) => Ok(()),
            Some((until, error)) if Instant::now() < *until => Err(error.clone()),
            _ => Ok(()),
        }
    }

    /// WeChat rejected `rejected` (a component token): refresh it if it is still the current one.
    pub(crate) async fn replace_component_token(
        self: &Arc<Self>,
        component: &ComponentAppid,
        rejected: &CachedToken,
    ) -> Result<Arc<CachedToken>, RefreshError> {
        if let Some(slot) = self.cache.component(component)
            && let Some(current) = slot.current()
            && current.generation > rejected.generation
        {
            return Ok(current);
        }
        self.component_gate_open(component)?;
        self.refresh(Credential::component(component), Mode::Normal)
            .await
    }

    // --- authorizers ------------------------------------------------------------------------

    async fn refresh_authorizer(self: &Arc<Self>, credential: &Credential) -> Outcome {
        let (component, appid) = (&credential.component, &credential.appid);
        let record = self
            .store
            .get_authorizer(component, appid)
            .await?
            .ok_or(RefreshError::Unknown)?;
        if record.status != AuthorizerStatus::Active {
            let reason = record
                .status_reason
                .clone()
                .unwrap_or_else(|| record.status.as_str().to_owned());
            return self.fallback(credential, &record, &reason).await;
        }
        let mut generation = record.generation;
        let mut sealed_rt = record.refresh_token.clone();
        let mut refresh_token = self
            .vault
            .open_string(SecretSlot::RefreshToken { component, appid }, &sealed_rt)?;
        let mut replaced_component = false;
        let mut recoveries = 0;
        loop {
            let ct = self.ensure_component_token(component).await?;
            let call = self.client.authorizer_token(
                ct.access_token.expose_secret(),
                component.as_str(),
                appid.as_str(),
                refresh_token.expose_secret(),
            );
            let result = self.upstream_timed(call).await;
            // A recovery needs a listing fetched after WeChat's refusal, never an older one.
            let refused_at = Instant::now();
            match result {
                Ok((resp, sent_at)) => {
                    // Never store an empty refresh token: keep the one we sent.
                    let rt = match resp.non_empty_refresh_token() {
                        Some(new) if new != refresh_token.expose_secret() => CarriedRefreshToken {
                            sealed: self.vault.seal(
                                SecretSlot::RefreshToken { component, appid },
                                new.as_bytes(),
                            )?,
                            rotated: true,
                        },
                        _ => CarriedRefreshToken {
                            sealed: sealed_rt,
                            rotated: false,
                        },
                    };
                    return self
                        .save_token(
                            credential,
                            generation,
                            resp.authorizer_access_token,
                            resp.expires_in,
                            TokenSource::AuthorizerToken,
                            Some(rt),
                            sent_at,
                        )
                        .await;
                }
                Err(e) if e.class() == ErrorClass::StaleToken && !replaced_component => {
                    replaced_component = true;
                    self.replace_component_token(component, &ct).await?;
                }
                Err(e) if e.class() == ErrorClass::Reauthorize => {
                    recoveries += 1;
                    if recoveries > super::recovery::MAX_RECOVERIES {
                        return Err(RefreshError::Upstream {
                            class: ErrorClass::Transient,
                            detail: format!("refresh token refused again after recovery: {e}"),
                        });
                    }
                    match self
                        .recover_refresh_token(credential, &refresh_token, refused_at)
                        .await?
                    {
                        Recovered::Use(found) => {
                            tracing::warn!(
                                errcode = e.errcode(),
                                "refresh token refused; retrying with a newer one"
                            );
                            generation = found.generation;
                            sealed_rt = found.sealed;
                            refresh_token = found.refresh_token;
                        }
                        Recovered::Inactive(record) => {
                            let reason = record
                                .status_reason
                                .clone()
                                .unwrap_or_else(|| record.status.as_str().to_owned());
                            return self.fallback(credential, &record, &reason).await;
                        }
                        Recovered::Lost => {
                            return self
                                .lose_authorization(
                                    credential,
                                    Some(generation),
                                    AuthorizerStatus::NeedsReauth,
                                    &e.to_string(),
                                )
                                .await;
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Creates or replaces an authorizer's refresh token (fenced), with its history row.
    pub(crate) async fn save_authorization(
        &self,
        component: &ComponentAppid,
        appid: &crate::model::Appid,
        expected: Expected,
        refresh_token: Sealed,
        access_token: Option<NewAccessToken>,
        source: RefreshTokenSource,
    ) -> Result<SaveOutcome, RefreshError> {
        let write = AuthorizationWrite {
            component: component.clone(),
            appid: appid.clone(),
            expected,
            kind: None,
            status: AuthorizerStatus::Active,
            refresh_token,
            appsecret: None,
            access_token,
            source,
            at: self.clock.now(),
        };
        let outcome = self
            .store
            .save_authorizations(std::slice::from_ref(&write))
            .await?
            .pop()
            .ok_or_else(|| RefreshError::Storage("no outcome".into()))?;
        if let SaveOutcome::Saved { .. } = outcome {
            self.cache
                .slot(&Credential::authorizer(component, appid))
                .set_status(AuthorizerStatus::Active, "");
        }
        Ok(outcome)
    }

    /// Marks the authorizer (fenced by `generation` unless a revocation), alerts, and falls back to
    /// its appsecret if one is on file.
    pub(crate) async fn lose_authorization(
        self: &Arc<Self>,
        credential: &Credential,
        generation: Option<u64>,
        status: AuthorizerStatus,
        reason: &str,
    ) -> Outcome {
        let (component, appid) = (&credential.component, &credential.appid);
        let slot = self.cache.slot(credential);
        let was = slot.status();
        let outcome = self
            .store
            .set_authorizer_status(&StatusChange {
                component: component.clone(),
                appid: appid.clone(),
                status,
                reason: Some(reason.to_owned()),
                expected_generation: generation,
                at: self.clock.now(),
            })
            .await?;
        match outcome {
            SaveOutcome::Saved { .. } => {}
            // Re-authorized or recovered meanwhile: serve the newer state.
            SaveOutcome::Stale { .. } => return self.adopt_stored(credential).await,
            SaveOutcome::Missing => return Err(RefreshError::Unknown),
        }
        slot.set_status(status, reason);
        if was != Some(status) {
            let kind = if status == AuthorizerStatus::Revoked {
                AlertKind::Revoked
            } else {
                AlertKind::NeedsReauth
            };
            self.alerts.raise(Alert::new(
                kind,
                component.as_str(),
                Some(appid.as_str()),
                reason,
                self.clock.now(),
            ));
        }
        let record = self
            .store
            .get_authorizer(component, appid)
            .await?
            .ok_or(RefreshError::Unknown)?;
        self.fallback(credential, &record, reason).await
    }

    /// An authorizer whose authorization is lost: its appsecret's stable token if one is on file,
    /// else Gone (no more refreshes: the circuit stays open until re-authorization).
    async fn fallback(
        self: &Arc<Self>,
        credential: &Credential,
        record: &AuthorizerRecord,
        reason: &str,
    ) -> Outcome {
        let (component, appid) = (&credential.component, &credential.appid);
        self.cache
            .slot(credential)
            .set_status(record.status, reason);
        let Some(sealed) = &record.appsecret else {
            return Err(RefreshError::Gone {
                reason: format!("{}: {reason}", record.status.as_str()),
            });
        };
        let secret = self
            .vault
            .open_string(SecretSlot::AuthorizerAppsecret { component, appid }, sealed)?;
        let (resp, source, sent_at) = self.own_token(appid, &secret, false).await?;
        self.save_token(
            credential,
            record.generation,
            resp.access_token,
            resp.expires_in,
            source,
            None,
            sent_at,
        )
        .await
    }

    /// A token from the account's own appid + appsecret, through the configured API
    /// (`refresh.direct_token_api`). `force` asks stable_token for a new token; cgi-bin/token
    /// always issues one.
    async fn own_token(
        &self,
        appid: &crate::model::Appid,
        secret: &SecretString,
        force: bool,
    ) -> Result<(wechat::wire::AccessTokenResponse, TokenSource, Timestamp), RefreshError> {
        Ok(match self.config.direct_token_api {
            DirectTokenApi::StableToken => {
                let (resp, sent_at) = self
                    .upstream_timed(self.client.stable_token(
                        appid.as_str(),
                        secret.expose_secret(),
                        force,
                    ))
                    .await?;
                (resp, TokenSource::StableToken, sent_at)
            }
            DirectTokenApi::Token => {
                let (resp, sent_at) = self
                    .upstream_timed(self.client.token(appid.as_str(), secret.expose_secret()))
                    .await?;
                (resp, TokenSource::Token, sent_at)
            }
        })
    }

    // --- direct accounts --------------------------------------------------------------------

    async fn refresh_direct(self: &Arc<Self>, credential: &Credential, mode: &Mode) -> Outcome {
        let (component, appid) = (&credential.component, &credential.appid);
        let account = self
            .store
            .get_direct_account(component, appid)
            .await?
            .ok_or(RefreshError::Unknown)?;
        let secret = self.vault.open_string(
            SecretSlot::DirectAppsecret { component, appid },
            &account.appsecret,
        )?;
        // The generation this refresh is computed from, read before WeChat is asked: a write that
        // lands meanwhile (another replica, an operator) makes ours stale instead of being overwritten.
        let generation = self
            .store
            .get_token(credential)
            .await?
            .map_or(account.generation, |r| r.generation);
        // Only stable_token has a force budget; every cgi-bin/token call issues a new token.
        let force = matches!(mode, Mode::Forced { .. })
            && self.config.direct_token_api == DirectTokenApi::StableToken
            && self.take_force_budget(credential).await;
        let (resp, source, sent_at) = self.own_token(appid, &secret, force).await?;
        self.save_token(
            credential,
            generation,
            resp.access_token,
            resp.expires_in,
            source,
            None,
            sent_at,
        )
        .await
    }

    /// Takes one `force_refresh` from the account's budget (20 a day, 30 s apart). The budget is
    /// stored before WeChat is asked, so a restart does not reset it; if the store cannot take it,
    /// the in-memory budget still counts (logged).
    async fn take_force_budget(&self, credential: &Credential) -> bool {
        let now = self.clock.now();
        let day = Duration::from_secs(86_400);
        let taken = {
            let mut budgets = self.force_budget.lock();
            let b = budgets.entry(credential.clone()).or_insert(ForceBudget {
                day_start: now,
                used: 0,
                last: None,
            });
            if now.as_millis() - b.day_start.as_millis() >= day.as_millis() as i64 {
                *b = ForceBudget {
                    day_start: now,
                    used: 0,
                    last: None,
                };
            }
            let too_soon = b.last.is_some_and(|l| {
                now.as_millis() - l.as_millis() < FORCE_MIN_GAP.as_millis() as i64
            });
            if b.used >= FORCE_PER_DAY || too_soon {
                None
            } else {
                b.used += 1;
                b.last = Some(now);
                Some(*b)
            }
        };
        let Some(b) = taken else {
            tracing::warn!(
                "force_refresh budget exhausted or too soon; normal stable_token instead"
            );
            return false;
        };
        let record = ForceBudgetRecord {
            credential: credential.clone(),
            day_start: b.day_start,
            used: b.used,
            last: b.last,
        };
        if let Err(e) = self.store.save_force_budget(&record).await {
            tracing::warn!(error = %e, "force_refresh budget not stored; counted in memory only");
        }
        true
    }

    // --- cold start and ticket silence -----------------------------------------------------

    pub(crate) async fn cold_start(self: &Arc<Self>) -> Result<(), super::EngineError> {
        let now = self.clock.now();
        for component in self.components.keys() {
            self.store.ensure_component(component, now).await?;
        }
        let mut records = self
            .store
            .load_tokens(None, Some(CredentialKind::Component))
            .await?;
        records.extend(
            self.store
                .load_tokens(None, Some(CredentialKind::Direct))
                .await?,
        );
        let authorizers = self.store.load_authorizers(None).await?;
        let stored_budgets = self.store.load_force_budgets().await?;
        {
            let mut budgets = self.force_budget.lock();
            for b in stored_budgets {
                budgets.insert(
                    b.credential,
                    ForceBudget {
                        day_start: b.day_start,
                        used: b.used,
                        last: b.last,
                    },
                );
            }
        }
        // Overdue (or token-less) credentials, most urgent first once sorted: no servable token,
        // then by expiry. Valid tokens are served meanwhile; ones not yet due keep their time.
        let mut overdue: Vec<(i64, Credential)> = Vec::new();
        let mut due =
            |inner: &Self, credential: &Credential, token: Option<&NewAccessToken>| match token
                .and_then(|t| t.refresh_at)
            {
                Some(at) if at > now => inner.schedule_at(credential, at),
                _ => {
                    let urgency = token
                        .filter(|t| {
                            plan::servable(
                                now.as_millis(),
                                t.expires_at.as_millis(),
                                inner.config.serve_margin,
                            )
                        })
                        .map_or(i64::MIN, |t| t.expires_at.as_millis());
                    overdue.push((urgency, credential.clone()));
                }
            };
        for record in records {
            let credential = record.credential;
            if !self.components.contains_key(&credential.component) {
                continue;
            }
            self.cache.slot(&credential);
            if let Some(stored) = &record.token {
                self.publish_stored(&credential, record.generation, stored)?;
            }
            due(self, &credential, record.token.as_ref());
        }
        for record in authorizers {
            let credential = Credential::authorizer(&record.component, &record.appid);
            let slot = self.cache.slot(&credential);
            slot.set_status(record.status, record.status_reason.as_deref().unwrap_or(""));
            if let Some(stored) = &record.token {
                self.publish_stored(&credential, record.generation, stored)?;
            }
            let refreshable =
                record.status == AuthorizerStatus::Active || record.appsecret.is_some();
            if self.components.contains_key(&record.component) && refreshable {
                due(self, &credential, record.token.as_ref());
            } else {
                self.schedule.lock().remove(&credential);
            }
        }
        overdue.sort_by_key(|(urgency, _)| *urgency);
        let n = overdue.len();
        let concurrency = self.config.concurrency.max(1);
        for (i, (_, credential)) in overdue.iter().enumerate() {
            let offset =
                plan::cold_start_offset(i, n, concurrency, COLD_START_PER_CALL, MAX_COLD_SPREAD);
            self.schedule_in(credential, offset);
        }
        if n > 0 {
            tracing::info!(
                overdue = n,
                spread_ms = plan::cold_start_offset(
                    n - 1,
                    n,
                    concurrency,
                    COLD_START_PER_CALL,
                    MAX_COLD_SPREAD
                )
                .as_millis() as u64,
                "cold start: overdue credentials spread out"
            );
        }
        tracing::info!(credentials = self.cache.len(), "cold start loaded");
        Ok(())
    }

    /// Alerts (once per silence) when a component has had no ticket push for
    /// `ticket_silence_alert`, and asks WeChat to push again.
    pub(crate) async fn check_ticket_silence(&self) {
        let now = self.clock.now();
        for component in self.components.keys() {
            let latest = match self.store.latest_ticket(component).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "ticket check failed");
                    continue;
                }
            };
            let silent = latest.is_none_or(|t| {
                now.as_millis() - t.received_at.as_millis()
                    > self.config.ticket_silence_alert.as_millis() as i64
            });
            if !silent {
                self.silent_tickets.lock().remove(component);
                continue;
            }
            if self.silent_tickets.lock().insert(component.clone()) {
                self.alerts.raise(Alert::new(
                    AlertKind::TicketSilence,
                    component.as_str(),
                    None,
                    format!(
                        "no component_verify_ticket push for {}",
                        humantime::format_duration(self.config.ticket_silence_alert)
                    ),
                    now,
                ));
                self.kick_ticket(component).await;
            }
        }
    }
}

type WriteOutcome = Result<SaveOutcome, RefreshError>;
type WriteReply = oneshot::Sender<WriteOutcome>;

/// Refresh results waiting for the writer.
#[derive(Default)]
pub(crate) struct WriteQueue {
    pending: Vec<(RefreshResult, WriteReply)>,
    draining: bool,
}

/// Results written per transaction at most.
const MAX_WRITE_BATCH: usize = 256;
/// Attempts at a single result whose write fails for a reason that is probably permanent (a
/// backend error, a constraint) before it is given up.
const SINGLE_WRITE_ATTEMPTS: u32 = 4;

/// Reports a result given up (error log and alert); the caller gets the error.
pub(crate) type GiveUp = dyn Fn(&RefreshResult, &RefreshError) + Send + Sync;

async fn drain_writes(
    store: Arc<dyn crate::store::Store>,
    queue: Arc<parking_lot::Mutex<WriteQueue>>,
    give_up: Arc<GiveUp>,
) {
    loop {
        let batch: Vec<_> = {
            let mut q = queue.lock();
            if q.pending.is_empty() {
                q.draining = false;
                return;
            }
            let n = q.pending.len().min(MAX_WRITE_BATCH);
            q.pending.drain(..n).collect()
        };
        let results: Vec<RefreshResult> = batch.iter().map(|(r, _)| r.clone()).collect();
        let outcomes = write_batch(store.as_ref(), &results, give_up.as_ref()).await;
        for ((_, reply), outcome) in batch.into_iter().zip(outcomes) {
            let _ = reply.send(outcome);
        }
    }
}

/// Writes a batch, one fate per result: the whole batch in one transaction, retried while the
/// store is unavailable or busy; if it fails for another reason (one result the store refuses,
/// say a constraint), it is split in halves, so the good results land and only the bad one is
/// left. A single result that keeps failing that way is given up (`give_up`: error log and
/// alert) after [`SINGLE_WRITE_ATTEMPTS`]; one that fails transiently is retried until it lands.
pub(crate) fn write_batch<'a>(
    store: &'a dyn crate::store::Store,
    results: &'a [RefreshResult],
    give_up: &'a (dyn Fn(&RefreshResult, &RefreshError) + Send + Sync + 'a),
) -> Pin<Box<dyn Future<Output = Vec<WriteOutcome>> + Send + 'a>> {
    Box::pin(async move {
        if results.is_empty() {
            return Vec::new();
        }
        let attempts = if results.len() == 1 {
            SINGLE_WRITE_ATTEMPTS
        } else {
            1
        };
        match write_with_retry(store, results, attempts, &|_| {}).await {
            Ok(outcomes) if outcomes.len() == results.len() => {
                outcomes.into_iter().map(Ok).collect()
            }
            Ok(_) => results
                .iter()
                .map(|_| Err(RefreshError::Storage("outcome count mismatch".into())))
                .collect(),
            Err(e) if results.len() > 1 => {
                tracing::warn!(
                    results = results.len(),
                    error = %e,
                    "a write batch failed; splitting it so the other results land"
                );
                let (left, right) = results.split_at(results.len() / 2);
                let mut out = write_batch(store, left, give_up).await;
                out.extend(write_batch(store, right, give_up).await);
                out
            }
            Err(e) => {
                give_up(&results[0], &e);
                vec![Err(e)]
            }
        }
    })
}

/// Writes refresh results until they land. A result may carry a refresh token WeChat will not
/// give again (rotation), so a store that is unavailable, busy or in a concurrent-transaction
/// conflict is retried with capped backoff for as long as it takes — never given up on (SPEC.md
/// rule 2). Any other failure is tried `attempts` times in all, then returned (the caller splits
/// the batch or gives the single result up). Readers keep being served from memory meanwhile;
/// shutdown bounds the wait with its deadline.
async fn write_with_retry(
    store: &dyn crate::store::Store,
    results: &[RefreshResult],
    attempts: u32,
    on_retry: &(dyn Fn(u32) + Send + Sync),
) -> Result<Vec<SaveOutcome>, RefreshError> {
    let mut retry = StoreRetry::new("refresh results", attempts);
    loop {
        match store.save_refresh_results(results).await {
            Ok(v) => return Ok(v),
            Err(e) => {
                retry.after(e).await?;
                on_retry(retry.failures());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        AppKind, Appid, AuthorizationWrite, AuthorizerStatus, ComponentAppid, Expected,
        RefreshTokenSource, Timestamp,
    };
    use crate::store::{self, StoreOptions};
    use crate::vault::{MasterKey, Vault};
    use sqlx::Connection;

    /// An authorizer in `store` and a refresh result for it fenced on its generation.
    async fn authorizer_result(
        store: &Arc<dyn crate::store::Store>,
        vault: &Vault,
        component: &ComponentAppid,
        appid: &str,
    ) -> RefreshResult {
        let appid = Appid::parse(appid).expect("appid");
        let now = Timestamp::now();
        let slot = SecretSlot::RefreshToken {
            component,
            appid: &appid,
        };
        store
            .save_authorization(&AuthorizationWrite {
                component: component.clone(),
                appid: appid.clone(),
                expected: Expected::Absent,
                kind: Some(AppKind::OfficialAccount),
                status: AuthorizerStatus::Active,
                refresh_token: vault.seal(slot, b"refreshtoken@@@first").expect("seal"),
                appsecret: None,
                access_token: None,
                source: RefreshTokenSource::Import,
                at: now,
            })
            .await
            .expect("authorizer");
        let credential = Credential::authorizer(component, &appid);
        let generation = store
            .get_token(&credential)
            .await
            .expect("read")
            .expect("credential")
            .generation;
        let access = vault
            .seal(
                SecretSlot::AccessToken {
                    credential: &credential,
                },
                b"access",
            )
            .expect("seal");
        RefreshResult {
            credential,
            expected_generation: generation,
            access_token: crate::model::NewAccessToken {
                sealed: access,
                issued_at: now,
                expires_at: now.plus(Duration::from_secs(7200)),
                refresh_at: None,
                source: TokenSource::AuthorizerToken,
            },
            refresh_token: Some(vault.seal(slot, b"refreshtoken@@@rotated").expect("seal")),
            at: now,
        }
    }

    #[tokio::test]
    async fn a_result_the_store_always_refuses_is_given_up_alone_and_the_rest_of_its_batch_lands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("wx.db").display());
        let store = store::open(&url).await.expect("store");
        let vault = Vault::new(&MasterKey::generate(), &[]);
        let component = ComponentAppid::parse("wxcomponent0000001").expect("component");
        store
            .ensure_component(&component, Timestamp::now())
            .await
            .expect("component");
        let mut results = Vec::new();
        for i in 0..5 {
            results.push(
                authorizer_result(&store, &vault, &component, &format!("wxauthorizer0000{i}"))
                    .await,
            );
        }
        // A row state that fails every write of one authorizer's token, deterministically.
        let mut conn = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("connect");
        sqlx::query(
            "CREATE TRIGGER refuse_one BEFORE UPDATE ON access_tokens \
             WHEN NEW.appid = 'wxauthorizer00003' BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .execute(&mut conn)
        .await
        .expect("trigger");
        let given_up = parking_lot::Mutex::new(Vec::new());
        let give_up = |r: &RefreshResult, _: &RefreshError| {
            given_up.lock().push(r.credential.appid.as_str().to_owned());
        };
        let outcomes = write_batch(store.as_ref(), &results, &give_up).await;
        assert_eq!(outcomes.len(), 5);
        for (i, outcome) in outcomes.iter().enumerate() {
            if i == 3 {
                assert!(
                    matches!(outcome, Err(RefreshError::Storage(_))),
                    "{outcome:?}"
                );
            } else {
                assert!(
                    matches!(outcome, Ok(SaveOutcome::Saved { .. })),
                    "{i}: {outcome:?}"
                );
            }
        }
        assert_eq!(*given_up.lock(), vec!["wxauthorizer00003".to_owned()]);
    }

    #[tokio::test]
    async fn refresh_result_is_retried_past_a_locked_database_until_it_lands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("wx.db").display());
        let store = store::open_with(
            &url,
            &StoreOptions {
                acquire_timeout: Duration::from_millis(20),
                ..StoreOptions::default()
            },
        )
        .await
        .expect("store");
        let vault = Vault::new(&MasterKey::generate(), &[]);
        let component = ComponentAppid::parse("wxcomponent0000001").expect("component");
        let appid = Appid::parse("wxauthorizer00001").expect("appid");
        let now = Timestamp::now();
        store
            .ensure_component(&component, now)
            .await
            .expect("component");
        let slot = SecretSlot::RefreshToken {
            component: &component,
            appid: &appid,
        };
        let first = vault.seal(slot, b"refreshtoken@@@first").expect("seal");
        store
            .save_authorization(&AuthorizationWrite {
                component: component.clone(),
                appid: appid.clone(),
                expected: Expected::Absent,
                kind: Some(AppKind::OfficialAccount),
                status: AuthorizerStatus::Active,
                refresh_token: first,
                appsecret: None,
                access_token: None,
                source: RefreshTokenSource::Import,
                at: now,
            })
            .await
            .expect("authorizer");
        let credential = Credential::authorizer(&component, &appid);
        let generation = store
            .get_token(&credential)
            .await
            .expect("read")
            .expect("credential")
            .generation;
        let rotated = vault.seal(slot, b"refreshtoken@@@rotated").expect("seal");
        let access = vault
            .seal(
                SecretSlot::AccessToken {
                    credential: &credential,
                },
                b"access",
            )
            .expect("seal");
        let result = RefreshResult {
            credential: credential.clone(),
            expected_generation: generation,
            access_token: crate::model::NewAccessToken {
                sealed: access,
                issued_at: now,
                expires_at: now.plus(Duration::from_secs(7200)),
                refresh_at: None,
                source: TokenSource::AuthorizerToken,
            },
            refresh_token: Some(rotated.clone()),
            at: now,
        };

        // Another process holds SQLite's write lock: every attempt times out as busy.
        let mut blocker = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("connect");
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut blocker)
            .await
            .expect("lock");
        let (failed, mut failures) = tokio::sync::mpsc::unbounded_channel();
        let writer = {
            let store = store.clone();
            let results = vec![result];
            tokio::spawn(async move {
                let on_retry = move |n: u32| {
                    let _ = failed.send(n);
                };
                write_with_retry(store.as_ref(), &results, 1, &on_retry).await
            })
        };
        while let Some(n) = failures.recv().await {
            if n > 5 {
                break;
            }
        }
        sqlx::query("COMMIT")
            .execute(&mut blocker)
            .await
            .expect("unlock");
        // Bounded: if the write never lands after the lock is gone, fail instead of hanging.
        let outcome = tokio::time::timeout(Duration::from_secs(120), writer)
            .await
            .expect("the write lands within 120 s of the lock being released")
            .expect("task")
            .expect("lands once the lock is gone");
        assert!(
            matches!(outcome.as_slice(), [SaveOutcome::Saved { .. }]),
            "{outcome:?}"
        );
        let stored = store
            .get_authorizer(&component, &appid)
            .await
            .expect("read")
            .expect("authorizer");
        assert_eq!(
            stored.refresh_token, rotated,
            "the rotated refresh token was not lost"
        );
    }
}
