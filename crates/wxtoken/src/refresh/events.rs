//! Push events (SPEC.md rule 7) and reconciliation (rule 8).
//!
//! A verified push is stored (payload sealed) before the HTTP layer answers `success`; processing
//! then runs from the stored event, serialised by one lock, and marks it processed only once
//! applied. So a crash after `success` loses nothing: `process_events` at start replays it. Every
//! handler is idempotent (a repeated push, or a replay after a crash mid-handler, ends in the same
//! state).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use wechat::event::Event;

use super::{Engine, EngineError, Inner, RefreshError};
use crate::alerts::{Alert, AlertKind};
use crate::model::{
    Appid, AuthorizerStatus, ComponentAppid, Credential, EventInsert, NewEvent, SaveOutcome,
    SecretSlot, StatusChange, StoredEvent, TicketOutcome, Timestamp,
};
use crate::store::LeaseKey;
use crate::telemetry;

/// Fenced revocation attempts per `unauthorized` event and pass (a refresh can land between the
/// read and the write).
const UNAUTHORIZE_ATTEMPTS: u32 = 5;

/// Unprocessed events read per pass.
const EVENT_BATCH: u32 = 1000;

/// Longest wait before a stored event that keeps failing transiently is tried again.
const EVENT_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Whether this replica may apply a stored event now.
enum Claim {
    /// Its lease is ours and it is still unprocessed.
    Mine,
    /// Applied meanwhile (by another replica).
    Done,
    /// Another replica holds it (or the lease could not be checked): retried on a later pass.
    Elsewhere,
}

/// Why a stored event was not applied.
enum EventFailure {
    /// Retrying later may succeed: keep it.
    Transient(RefreshError),
    /// It never will: mark it processed, log at error.
    Permanent(String),
}

/// Failures of an event handler that retrying cannot cure: the authorization code is refused or
/// spent (`Gone`), the authorizer does not exist (`Unknown`). Everything else (network, WeChat
/// 5xx, quota, the component token, the store) may pass.
fn permanent(e: &RefreshError) -> bool {
    matches!(e, RefreshError::Gone { .. } | RefreshError::Unknown)
}

/// The authorizer appid and CreateTime of an authorization event (`authorized`,
/// `updateauthorized`, `unauthorized`), the events that must apply in order per appid.
fn authorization_subject(event: &Event) -> Option<(&str, i64)> {
    match event {
        Event::Authorized(a) | Event::UpdateAuthorized(a) => {
            Some((a.authorizer_appid.as_str(), a.create_time))
        }
        Event::Unauthorized(u) => Some((u.authorizer_appid.as_str(), u.create_time)),
        _ => None,
    }
}

/// Event processing's state.
pub(crate) struct EventState {
    /// Authorization codes exchanged and being exchanged (`codes.rs`).
    pub(crate) codes: super::codes::Codes,
    /// Serialises event processing (ingest spawns it; replay and tests call it).
    pub(crate) lock: tokio::sync::Mutex<()>,
    /// Stored events that failed transiently: (failures, not retried before) per (component,
    /// dedupe key).
    pub(crate) retries:
        parking_lot::Mutex<HashMap<(ComponentAppid, String), (u32, tokio::time::Instant)>>,
    /// The last push's receive time (epoch ms): each push is stored strictly after the previous.
    pub(crate) last_received: parking_lot::Mutex<i64>,
    /// Some stored event failed to apply; the loop retries every `backoff_max`.
    pub(crate) pending: std::sync::atomic::AtomicBool,
}

impl EventState {
    pub(crate) fn new(tracker: tokio_util::task::TaskTracker) -> Self {
        Self {
            codes: super::codes::Codes::new(tracker),
            lock: tokio::sync::Mutex::default(),
            retries: parking_lot::Mutex::default(),
            last_received: parking_lot::Mutex::default(),
            pending: std::sync::atomic::AtomicBool::default(),
        }
    }
}

impl Engine {
    /// Revokes an authorizer at an operator's request (the dashboard, the admin API): as an
    /// `unauthorized` push does — no more refreshes, its tokens no longer served, clients told
    /// `revoked` — keeping every stored secret (its refresh token included), so the merchant
    /// authorizing again brings it back. `Ok(false)`: it was revoked already.
    pub async fn revoke_authorizer(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
        reason: &str,
    ) -> Result<bool, RefreshError> {
        let inner = self.inner();
        let credential = Credential::authorizer(component, appid);
        for _ in 0..UNAUTHORIZE_ATTEMPTS {
            let record = inner
                .io
                .store
                .authorizers()
                .get_authorizer(component, appid)
                .await?
                .ok_or(RefreshError::Unknown)?;
            if record.status == AuthorizerStatus::Revoked {
                return Ok(false);
            }
            // Fenced on the generation just read: a refresh landing in between costs a re-read.
            if inner
                .revoke_fenced(&credential, record.generation, reason)
                .await?
            {
                return Ok(true);
            }
        }
        Err(RefreshError::Storage(
            "the authorizer kept changing while it was revoked; try again".into(),
        ))
    }

    /// Stores a verified, decrypted push (payload sealed) and starts processing it. The HTTP layer
    /// answers `success` once this returns `Ok` (`Duplicate` included: WeChat repeats pushes).
    pub async fn ingest_push(
        &self,
        component: &ComponentAppid,
        event: &Event,
        dedupe_key: &str,
    ) -> Result<EventInsert, EngineError> {
        let inner = self.inner();
        let payload = inner.io.vault.seal(
            SecretSlot::EventPayload {
                component,
                dedupe_key,
            },
            event.to_xml().as_bytes(),
        )?;
        let appid = match event {
            Event::Authorized(a) | Event::UpdateAuthorized(a) => Some(&a.authorizer_appid),
            Event::Unauthorized(u) => Some(&u.authorizer_appid),
            _ => None,
        }
        .map(|s| Appid::parse(s))
        .transpose()
        .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let outcome = inner
            .io
            .store
            .events()
            .record_event(&NewEvent {
                component: component.clone(),
                dedupe_key: dedupe_key.to_owned(),
                info_type: event.info_type().to_owned(),
                appid,
                payload,
                received_at: inner.receive_time(),
            })
            .await?;
        if outcome == EventInsert::Inserted {
            metrics::counter!(telemetry::EVENTS_TOTAL, "info_type" => event.info_type().to_owned())
                .increment(1);
            let engine = self.clone();
            inner.io.tracker.spawn(async move {
                if let Err(e) = engine.process_events().await {
                    tracing::warn!(error = %e, "event processing failed; it stays stored");
                }
            });
        }
        Ok(outcome)
    }

    /// Applies every stored, unprocessed event, oldest first; returns how many were applied.
    ///
    /// - Tickets go first: no authorization event, however slow or failing, delays them.
    /// - A transient failure keeps the event for the next pass (the loop retries every
    ///   `backoff_max`, and every push and restart runs a pass), and holds back that appid's later
    ///   events in this pass, so they are applied in order (an `unauthorized` retried after a
    ///   newer `authorized` would revoke a fresh authorization).
    /// - A permanent failure (code expired or already spent without its answer stored, an
    ///   unreadable event) marks the event processed, logs at error and alerts: retrying cannot
    ///   succeed, and reconciliation recovers what WeChat still lists.
    /// - An authorization event older (CreateTime) than one applied for the same appid earlier in
    ///   the pass is obsolete and only marked processed.
    pub async fn process_events(&self) -> Result<usize, EngineError> {
        let inner = self.inner();
        let _serial = inner.events.lock.lock().await;
        let events = inner
            .io
            .store
            .events()
            .unprocessed_events(None, EVENT_BATCH)
            .await?;
        let (tickets, others): (Vec<_>, Vec<_>) = events
            .into_iter()
            .partition(|e| e.info_type == wechat::event::xml::INFO_TYPE_COMPONENT_VERIFY_TICKET);
        let mut applied = 0;
        let mut pending = false;
        // Appids with an earlier event still unapplied, and the newest CreateTime applied, this pass.
        let mut held: HashSet<(ComponentAppid, String)> = HashSet::new();
        let mut newest: HashMap<(ComponentAppid, String), i64> = HashMap::new();
        for stored in tickets.iter().chain(&others) {
            let event = match inner.decode(stored) {
                Ok(event) => event,
                Err(EventFailure::Transient(e)) => {
                    pending = true;
                    if inner.event_backing_off(stored) {
                        continue;
                    }
                    let retry_in = inner.event_failed(stored);
                    tracing::warn!(info_type = %stored.info_type, error = %e, retry_in_ms = retry_in.as_millis() as u64, "event not readable now; kept for retry");
                    continue;
                }
                Err(EventFailure::Permanent(reason)) => {
                    tracing::error!(info_type = %stored.info_type, reason = %reason, "event can never be applied; dropped");
                    inner.io.alerts.raise(Alert::new(
                        AlertKind::EventFailed,
                        stored.component.as_str(),
                        stored.appid.as_ref().map(|a| a.as_str()),
                        format!("{} event not applied: {reason}", stored.info_type),
                        inner.io.clock.now(),
                    ));
                    inner.mark_processed(stored).await?;
                    inner.event_done(stored);
                    continue;
                }
            };
            let subject = authorization_subject(&event)
                .map(|(appid, created)| ((stored.component.clone(), appid.to_owned()), created));
            if let Some((key, created)) = &subject {
                if held.contains(key) {
                    pending = true;
                    continue;
                }
                if newest.get(key).is_some_and(|newer| created < newer) {
                    tracing::info!(info_type = %stored.info_type, appid = %key.1, "authorization event older than one applied; ignored");
                    inner.mark_processed(stored).await?;
                    inner.event_done(stored);
                    continue;
                }
            }
            // Failed before and its backoff has not run out: not retried on this pass, and its
            // appid's later events wait behind it.
            if inner.event_backing_off(stored) {
                pending = true;
                if let Some((key, _)) = &subject {
                    held.insert(key.clone());
                }
                continue;
            }
            // Another replica may be applying it (or have applied it since it was listed): one
            // application per event across replicas. Tickets are idempotent and every replica
            // learns of one this way, so they take no claim.
            let claim = subject.as_ref().map(|_| LeaseKey::Event {
                component: stored.component.clone(),
                dedupe_key: stored.dedupe_key.clone(),
            });
            if let Some(key) = &claim {
                match inner.claim_event(key, stored).await {
                    Claim::Mine => {}
                    Claim::Done => {
                        inner.event_done(stored);
                        continue;
                    }
                    Claim::Elsewhere => {
                        pending = true;
                        if let Some((k, _)) = &subject {
                            held.insert(k.clone());
                        }
                        continue;
                    }
                }
            }
            let outcome = inner.apply_event(stored, &event).await;
            let marked = match &outcome {
                Ok(()) => inner.mark_processed(stored).await,
                Err(e) if permanent(e) => inner.mark_processed(stored).await,
                Err(_) => Ok(()),
            };
            if let Some(key) = &claim {
                inner.io.lease.release(key).await;
            }
            marked?;
            match outcome {
                Ok(()) => {
                    inner.event_done(stored);
                    applied += 1;
                    if let Some((key, created)) = subject {
                        let at = newest.entry(key).or_insert(created);
                        *at = (*at).max(created);
                    }
                }
                Err(e) if permanent(&e) => {
                    let appid = subject.as_ref().map(|(k, _)| k.1.as_str());
                    tracing::error!(
                        info_type = %stored.info_type,
                        appid = appid.unwrap_or(""),
                        error = %e,
                        "event can never be applied; dropped"
                    );
                    if !matches!(event, Event::Unauthorized(_)) {
                        inner.io.alerts.raise(Alert::new(
                            AlertKind::EventFailed,
                            stored.component.as_str(),
                            appid,
                            format!("{} event not applied: {e}", stored.info_type),
                            inner.io.clock.now(),
                        ));
                    }
                    inner.event_done(stored);
                }
                Err(e) => {
                    pending = true;
                    if let Some((key, _)) = subject {
                        held.insert(key);
                    }
                    let retry_in = inner.event_failed(stored);
                    tracing::warn!(
                        info_type = %stored.info_type,
                        error = %e,
                        retry_in_ms = retry_in.as_millis() as u64,
                        "event not applied; kept for retry"
                    );
                }
            }
        }
        inner
            .events
            .pending
            .store(pending, std::sync::atomic::Ordering::Relaxed);
        Ok(applied)
    }

    /// When a stored event that failed is next tried (None: it has not failed, or was applied or
    /// dropped since). For tests and admin views.
    pub fn event_retry_at(
        &self,
        component: &ComponentAppid,
        dedupe_key: &str,
    ) -> Option<tokio::time::Instant> {
        self.inner()
            .events
            .retries
            .lock()
            .get(&(component.clone(), dedupe_key.to_owned()))
            .map(|(_, at)| *at)
    }
}

impl Inner {
    async fn claim_event(&self, key: &LeaseKey, stored: &StoredEvent) -> Claim {
        match self.io.lease.acquire(key).await {
            Ok(grant) if grant.granted() => {}
            Ok(_) | Err(_) => return Claim::Elsewhere,
        }
        match self
            .io
            .store
            .events()
            .event_unprocessed(&stored.component, &stored.dedupe_key)
            .await
        {
            Ok(true) => Claim::Mine,
            Ok(false) => {
                self.io.lease.release(key).await;
                Claim::Done
            }
            Err(_) => {
                self.io.lease.release(key).await;
                Claim::Elsewhere
            }
        }
    }

    /// Revokes an authorizer only if its generation is still `generation` (what the caller read).
    /// True if it is revoked now by this call; false if it changed meanwhile (re-authorized,
    /// recovered, refreshed) or is gone. Alert, cache and appsecret fallback follow as for any lost
    /// authorization.
    pub(super) async fn revoke_fenced(
        self: &Arc<Self>,
        credential: &Credential,
        generation: u64,
        reason: &str,
    ) -> Result<bool, RefreshError> {
        let outcome = self
            .io
            .store
            .authorizers()
            .set_authorizer_status(&StatusChange {
                component: credential.component.clone(),
                appid: credential.appid.clone(),
                status: AuthorizerStatus::Revoked,
                reason: Some(reason.to_owned()),
                expected_generation: Some(generation),
                at: self.io.clock.now(),
            })
            .await?;
        let SaveOutcome::Saved { generation } = outcome else {
            return Ok(false);
        };
        self.unschedule(credential);
        // Already revoked at `generation`: this only updates the cache, alerts and falls back.
        match self
            .lose_authorization(
                credential,
                Some(generation),
                AuthorizerStatus::Revoked,
                reason,
            )
            .await
        {
            // Gone: no appsecret; Upstream: only the fallback failed (it retries on schedule).
            Ok(_) | Err(RefreshError::Gone { .. } | RefreshError::Upstream { .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// The receive time of a push: the clock, but strictly after the previous push's, so pushes
    /// stored in the same millisecond keep their arrival order (events are applied in
    /// `received_at` order; a tie would fall back to the dedupe key, and an `authorized` could
    /// then be applied before the `unauthorized` that came before it).
    fn receive_time(&self) -> Timestamp {
        let mut last = self.events.last_received.lock();
        let at = self.io.clock.now().as_millis().max(last.saturating_add(1));
        *last = at;
        Timestamp::from_millis(at)
    }

    /// Whether a stored event failed before and its backoff has not run out.
    fn event_backing_off(&self, stored: &StoredEvent) -> bool {
        self.events
            .retries
            .lock()
            .get(&(stored.component.clone(), stored.dedupe_key.clone()))
            .is_some_and(|(_, at)| tokio::time::Instant::now() < *at)
    }

    /// Records a transient failure of a stored event; returns how long until it is retried
    /// (capped exponential backoff with jitter, from `refresh.backoff_initial` to
    /// [`EVENT_BACKOFF_MAX`]).
    fn event_failed(&self, stored: &StoredEvent) -> Duration {
        let backoff = crate::tokens::plan::Backoff {
            initial: self.config.backoff_initial,
            max: EVENT_BACKOFF_MAX,
        };
        let mut retries = self.events.retries.lock();
        let entry = retries
            .entry((stored.component.clone(), stored.dedupe_key.clone()))
            .or_insert((0, tokio::time::Instant::now()));
        let delay = backoff.delay(entry.0, rand::random::<f64>());
        entry.0 = entry.0.saturating_add(1);
        entry.1 = tokio::time::Instant::now() + delay;
        delay
    }

    /// Forgets a stored event's failures (applied or dropped).
    fn event_done(&self, stored: &StoredEvent) {
        self.events
            .retries
            .lock()
            .remove(&(stored.component.clone(), stored.dedupe_key.clone()));
    }

    async fn mark_processed(&self, stored: &StoredEvent) -> Result<(), EngineError> {
        self.io
            .store
            .events()
            .mark_event_processed(&stored.component, &stored.dedupe_key, self.io.clock.now())
            .await?;
        Ok(())
    }

    /// Opens and parses a stored event. A vault failure may pass (a key not loaded yet); a payload
    /// that opens but does not parse never will.
    fn decode(&self, stored: &StoredEvent) -> Result<Event, EventFailure> {
        let xml = self
            .io
            .vault
            .open(
                SecretSlot::EventPayload {
                    component: &stored.component,
                    dedupe_key: &stored.dedupe_key,
                },
                &stored.payload,
            )
            .map_err(|e| EventFailure::Transient(e.into()))?;
        let text = std::str::from_utf8(&xml)
            .map_err(|_| EventFailure::Permanent("stored event is not UTF-8".into()))?;
        Event::parse(text).map_err(|e| EventFailure::Permanent(e.to_string()))
    }

    async fn apply_event(
        self: &Arc<Self>,
        stored: &StoredEvent,
        event: &Event,
    ) -> Result<(), RefreshError> {
        let component = &stored.component;
        match event {
            Event::ComponentVerifyTicket(t) => {
                let sealed = self.io.vault.seal(
                    SecretSlot::Ticket { component },
                    t.component_verify_ticket.as_bytes(),
                )?;
                let outcome = self
                    .io
                    .store
                    .components()
                    .record_ticket(component, &sealed, stored.received_at)
                    .await?;
                self.component.silent_tickets.lock().remove(component);
                if outcome == TicketOutcome::Stored {
                    self.ticket_landed(component);
                }
                Ok(())
            }
            Event::Authorized(a) | Event::UpdateAuthorized(a) => {
                let appid = Appid::parse(&a.authorizer_appid).map_err(|e| RefreshError::Gone {
                    reason: e.to_string(),
                })?;
                // A re-sent push keeps its CreateTime (seconds, WeChat's clock).
                let created = Timestamp::from_millis(a.create_time.saturating_mul(1000));
                self.exchange_code_once(
                    component,
                    Some(&appid),
                    &a.authorization_code,
                    created.min(stored.received_at),
                )
                .await
                .map(drop)
            }
            Event::Unauthorized(u) => {
                let appid = Appid::parse(&u.authorizer_appid).map_err(|e| RefreshError::Gone {
                    reason: e.to_string(),
                })?;
                let credential = Credential::authorizer(component, &appid);
                // Receive time, not CreateTime: whole seconds would count an authorization stored
                // in the same second, before the revocation, as newer.
                let since = stored.received_at;
                // Fenced on the generation read here; a refresh landing in between only costs a
                // re-read, a re-authorization since the event wins.
                for _ in 0..UNAUTHORIZE_ATTEMPTS {
                    let Some(record) = self
                        .io
                        .store
                        .authorizers()
                        .get_authorizer(component, &appid)
                        .await?
                    else {
                        return Ok(());
                    };
                    if self.exchanged_since(component, &appid, since).await? {
                        tracing::info!(appid = %appid, "re-authorized after the unauthorized event; kept");
                        return Ok(());
                    }
                    if self
                        .revoke_fenced(&credential, record.generation, "unauthorized event")
                        .await?
                    {
                        return Ok(());
                    }
                }
                Err(RefreshError::Storage(
                    "revocation kept losing the race; retried next pass".into(),
                ))
            }
            Event::Other(_) => Ok(()),
        }
    }
}
