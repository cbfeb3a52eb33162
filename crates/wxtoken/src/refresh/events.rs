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

use secrecy::{ExposeSecret, SecretString};
use wechat::errcode::ErrorClass;
use wechat::event::Event;

use super::retry::StoreRetry;
use super::{Engine, EngineError, Inner, RefreshError};
use crate::alerts::{Alert, AlertKind};
use crate::model::{
    Appid, AuthorizationWrite, AuthorizerStatus, ComponentAppid, Credential, EventInsert, Expected,
    NewEvent, RefreshTokenSource, SaveOutcome, SecretSlot, StatusChange, StoredEvent,
    TicketOutcome, Timestamp, TokenSource,
};
use crate::store::LeaseKey;
use crate::telemetry;

/// `api_query_auth` on a code already exchanged.
const CODE_ALREADY_USED: i64 = 61009;
/// Fenced revocation attempts per `unauthorized` event and pass (a refresh can land between the
/// read and the write).
const UNAUTHORIZE_ATTEMPTS: u32 = 5;
/// Unprocessed events read per pass.
const EVENT_BATCH: u32 = 1000;
/// Tries of an `api_query_auth` answer's write that fails for a reason that cannot pass (a
/// constraint, a corrupt row); a transient failure is retried until the write lands.
const WRITE_TRIES_THAT_CANNOT_PASS: u32 = 4;
/// Longest wait before a stored event that keeps failing transiently is tried again.
const EVENT_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Pause between pages of `api_get_authorizer_list` (rate limit).
const LIST_PAGE_PAUSE: Duration = Duration::from_millis(20);

/// What one reconciliation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Authorizers WeChat listed.
    pub listed: usize,
    /// Refresh tokens recovered (missing from the store or different).
    pub recovered: usize,
    /// Authorizers marked revoked because WeChat no longer lists them.
    pub revoked: usize,
}

impl Engine {
    /// Stores a verified, decrypted push (payload sealed) and starts processing it. The HTTP layer
    /// answers `success` once this returns `Ok` (`Duplicate` included: WeChat repeats pushes).
    pub async fn ingest_push(
        &self,
        component: &ComponentAppid,
        event: &Event,
        dedupe_key: &str,
    ) -> Result<EventInsert, EngineError> {
        let inner = self.inner();
        let payload = inner.vault.seal(
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
            .store
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
            inner.tracker.spawn(async move {
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
        let _serial = inner.events_lock.lock().await;
        let events = inner.store.unprocessed_events(None, EVENT_BATCH).await?;
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
                    inner.alerts.raise(Alert::new(
                        AlertKind::EventFailed,
                        stored.component.as_str(),
                        stored.appid.as_ref().map(|a| a.as_str()),
                        format!("{} event not applied: {reason}", stored.info_type),
                        inner.clock.now(),
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
                inner.lease.release(key).await;
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
                        inner.alerts.raise(Alert::new(
                            AlertKind::EventFailed,
                            stored.component.as_str(),
                            appid,
                            format!("{} event not applied: {e}", stored.info_type),
                            inner.clock.now(),
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
            .events_pending
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
            .event_retries
            .lock()
            .get(&(component.clone(), dedupe_key.to_owned()))
            .map(|(_, at)| *at)
    }

    /// Pages through `api_get_authorizer_list` and compares it with the store: recovers refresh
    /// tokens missing or different, and marks authorizers no longer listed as revoked.
    ///
    /// The store is read once, *before* paging, and every write is fenced on that snapshot's
    /// generation (the revocation included): whatever an event, a refresh or an import stored
    /// while the list was being paged is newer than the list, so a write that finds it (`Stale`)
    /// leaves it.
    pub async fn reconcile_once(
        &self,
        component: &ComponentAppid,
    ) -> Result<ReconcileReport, RefreshError> {
        self.reconcile_once_with(component, std::future::ready(()))
            .await
    }

    /// [`Engine::reconcile_once`] that awaits `after_listing` between paging the list and comparing
    /// it with the snapshot: the seam tests use to change the store while the list is in hand.
    #[doc(hidden)]
    pub async fn reconcile_once_with(
        &self,
        component: &ComponentAppid,
        after_listing: impl std::future::Future<Output = ()>,
    ) -> Result<ReconcileReport, RefreshError> {
        let inner = self.inner();
        let ct = inner.ensure_component_token(component).await?;
        // The snapshot precedes the list: anything stored later carries a newer generation.
        let stored = inner.store.load_authorizers(Some(component)).await?;
        let mut listed: HashMap<String, Option<SecretString>> = HashMap::new();
        let mut offset = 0u32;
        let total = loop {
            let page = inner
                .client
                .get_authorizer_list(
                    ct.access_token.expose_secret(),
                    component.as_str(),
                    offset,
                    wechat::wire::AUTHORIZER_LIST_MAX_COUNT,
                )
                .await?;
            let n = u32::try_from(page.list.len()).unwrap_or(u32::MAX);
            for item in page.list {
                let rt = item
                    .non_empty_refresh_token()
                    .map(|s| SecretString::from(s.to_owned()));
                listed.insert(item.authorizer_appid, rt);
            }
            offset = offset.saturating_add(n);
            if n == 0 || u64::from(offset) >= page.total_count {
                break page.total_count;
            }
            tokio::time::sleep(LIST_PAGE_PAUSE).await;
        };
        after_listing.await;
        let mut report = ReconcileReport {
            listed: listed.len(),
            ..ReconcileReport::default()
        };
        // A list that shrank while we paged is incomplete: never revoke from it.
        let complete = listed.len() as u64 >= total;
        let mut known = std::collections::HashSet::new();
        for record in stored {
            known.insert(record.appid.as_str().to_owned());
            let credential = Credential::authorizer(component, &record.appid);
            match listed.get(record.appid.as_str()) {
                None if complete && record.status != AuthorizerStatus::Revoked => {
                    let revoked = inner
                        .revoke_fenced(
                            &credential,
                            record.generation,
                            "not listed by api_get_authorizer_list",
                        )
                        .await?;
                    report.revoked += usize::from(revoked);
                }
                Some(Some(rt)) => {
                    let slot = SecretSlot::RefreshToken {
                        component,
                        appid: &record.appid,
                    };
                    let ours = inner.vault.open_string(slot, &record.refresh_token)?;
                    if ours.expose_secret() != rt.expose_secret() {
                        let sealed = inner.vault.seal(slot, rt.expose_secret().as_bytes())?;
                        let outcome = inner
                            .save_authorization(
                                component,
                                &record.appid,
                                Expected::Generation(record.generation),
                                sealed,
                                None,
                                RefreshTokenSource::Reconcile,
                            )
                            .await?;
                        // Stale: changed since the snapshot (newer than the list); leave it.
                        if let SaveOutcome::Saved { .. } = outcome {
                            report.recovered += 1;
                            inner.schedule_in(&credential, Duration::ZERO);
                        }
                    }
                }
                _ => {}
            }
        }
        for (appid, rt) in &listed {
            let Some(rt) = rt else { continue };
            if known.contains(appid) {
                continue;
            }
            let Ok(appid) = Appid::parse(appid) else {
                continue;
            };
            let sealed = inner.vault.seal(
                SecretSlot::RefreshToken {
                    component,
                    appid: &appid,
                },
                rt.expose_secret().as_bytes(),
            )?;
            let outcome = inner
                .save_authorization(
                    component,
                    &appid,
                    Expected::Absent,
                    sealed,
                    None,
                    RefreshTokenSource::Reconcile,
                )
                .await?;
            if let SaveOutcome::Saved { .. } = outcome {
                report.recovered += 1;
                inner.schedule_in(&Credential::authorizer(component, &appid), Duration::ZERO);
            }
        }
        tracing::info!(component = %component, listed = report.listed, recovered = report.recovered, revoked = report.revoked, "reconciled");
        Ok(report)
    }
}

/// Whether this replica may apply a stored event now.
enum Claim {
    /// Its lease is ours and it is still unprocessed.
    Mine,
    /// Applied meanwhile (by another replica).
    Done,
    /// Another replica holds it (or the lease could not be checked): retried on a later pass.
    Elsewhere,
}

impl Inner {
    async fn claim_event(&self, key: &LeaseKey, stored: &StoredEvent) -> Claim {
        match self.lease.acquire(key).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return Claim::Elsewhere,
        }
        match self
            .store
            .event_unprocessed(&stored.component, &stored.dedupe_key)
            .await
        {
            Ok(true) => Claim::Mine,
            Ok(false) => {
                self.lease.release(key).await;
                Claim::Done
            }
            Err(_) => {
                self.lease.release(key).await;
                Claim::Elsewhere
            }
        }
    }

    /// Revokes an authorizer only if its generation is still `generation` (what the caller read).
    /// True if it is revoked now by this call; false if it changed meanwhile (re-authorized,
    /// recovered, refreshed) or is gone. Alert, cache and appsecret fallback follow as for any lost
    /// authorization.
    async fn revoke_fenced(
        self: &Arc<Self>,
        credential: &Credential,
        generation: u64,
        reason: &str,
    ) -> Result<bool, RefreshError> {
        let outcome = self
            .store
            .set_authorizer_status(&StatusChange {
                component: credential.component.clone(),
                appid: credential.appid.clone(),
                status: AuthorizerStatus::Revoked,
                reason: Some(reason.to_owned()),
                expected_generation: Some(generation),
                at: self.clock.now(),
            })
            .await?;
        let SaveOutcome::Saved { generation } = outcome else {
            return Ok(false);
        };
        self.schedule.lock().remove(credential);
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
        let mut last = self.last_received.lock();
        let at = self.clock.now().as_millis().max(last.saturating_add(1));
        *last = at;
        Timestamp::from_millis(at)
    }

    /// Whether a stored event failed before and its backoff has not run out.
    fn event_backing_off(&self, stored: &StoredEvent) -> bool {
        self.event_retries
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
        let mut retries = self.event_retries.lock();
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
        self.event_retries
            .lock()
            .remove(&(stored.component.clone(), stored.dedupe_key.clone()));
    }

    async fn mark_processed(&self, stored: &StoredEvent) -> Result<(), EngineError> {
        self.store
            .mark_event_processed(&stored.component, &stored.dedupe_key, self.clock.now())
            .await?;
        Ok(())
    }

    /// Opens and parses a stored event. A vault failure may pass (a key not loaded yet); a payload
    /// that opens but does not parse never will.
    fn decode(&self, stored: &StoredEvent) -> Result<Event, EventFailure> {
        let xml = self
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
                let sealed = self.vault.seal(
                    SecretSlot::Ticket { component },
                    t.component_verify_ticket.as_bytes(),
                )?;
                let outcome = self
                    .store
                    .record_ticket(component, &sealed, stored.received_at)
                    .await?;
                self.silent_tickets.lock().remove(component);
                let credential = Credential::component(component);
                let healthy = self
                    .cache
                    .component(component)
                    .is_some_and(|s| s.read(self.clock.now(), self.config.serve_margin).is_ok());
                if outcome == TicketOutcome::Stored && !healthy {
                    // The component token was waiting for a ticket (or failing): try now, and
                    // let authorizers waiting on it through the gate at once.
                    self.failures.lock().remove(&credential);
                    self.component_gate.lock().remove(component);
                    // Its last failure's cause is gone: readers now join the refresh instead of
                    // being told to wait for a ticket.
                    if let Some(slot) = self.cache.component(component) {
                        slot.set_failing(None);
                    }
                    self.schedule_in(&credential, Duration::ZERO);
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
                    let Some(record) = self.store.get_authorizer(component, &appid).await? else {
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

    /// `authorized` / `updateauthorized`: exchanges the code and stores the new refresh token and
    /// access token (re-authorization retires the old refresh token). Idempotent: a code already
    /// exchanged (61009) is fine only if an `api_query_auth` answer was stored since `since` (the
    /// event's CreateTime or receive time, whichever is earlier); otherwise the refresh token it
    /// carried is lost to us and 61009 is returned as the error it is.
    ///
    /// `appid` is the authorizer the code is expected for (from a push); `None` when it is not
    /// known beforehand (the authorization page's callback): then a spent code is answered from
    /// the codes exchanged recently (by this process or, through the store, another replica),
    /// and is `Gone` otherwise. Returns the appid.
    pub(crate) async fn exchange_code(
        self: &Arc<Self>,
        component: &ComponentAppid,
        expected: Option<&Appid>,
        code: &str,
        since: Timestamp,
    ) -> Result<Appid, RefreshError> {
        let mut replaced_component = false;
        let (info, sent_at) = loop {
            let ct = self.ensure_component_token(component).await?;
            let call =
                self.client
                    .query_auth(ct.access_token.expose_secret(), component.as_str(), code);
            let _permit = self.permits.acquire().await.ok();
            // The answer's access token counts its lifetime from here (see `upstream_timed`).
            let sent_at = self.clock.now();
            match call.await {
                Ok(resp) => break (resp.authorization_info, sent_at),
                Err(e) if e.errcode() == Some(CODE_ALREADY_USED) => {
                    let appid = match expected {
                        Some(appid) => Some(appid.clone()),
                        None => self.code_exchanged_for(component, code).await?,
                    };
                    let Some(appid) = appid else {
                        return Err(RefreshError::Gone {
                            reason: format!("api_query_auth: {e}"),
                        });
                    };
                    return if self.exchanged_since(component, &appid, since).await? {
                        Ok(appid)
                    } else {
                        // Spent, and its answer never stored: retrying cannot bring it back.
                        Err(RefreshError::Gone {
                            reason: format!(
                                "api_query_auth: {e}; its refresh token was not stored"
                            ),
                        })
                    };
                }
                Err(e) if e.class() == ErrorClass::StaleToken && !replaced_component => {
                    replaced_component = true;
                    drop(_permit);
                    self.replace_component_token(component, &ct).await?;
                }
                // The code itself is refused (expired 61010, invalid, not permitted): final.
                Err(e)
                    if matches!(
                        e.class(),
                        ErrorClass::Reauthorize
                            | ErrorClass::Configuration
                            | ErrorClass::Permission
                    ) =>
                {
                    return Err(RefreshError::Gone {
                        reason: format!("api_query_auth: {e}"),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        };
        let appid = match expected {
            Some(appid) if info.authorizer_appid != appid.as_str() => {
                return Err(RefreshError::Gone {
                    reason: "api_query_auth returned another appid".into(),
                });
            }
            Some(appid) => appid.clone(),
            None => Appid::parse(&info.authorizer_appid).map_err(|e| RefreshError::Gone {
                reason: format!("api_query_auth: {e}"),
            })?,
        };
        let appid = &appid;
        let rt = info
            .non_empty_refresh_token()
            .ok_or_else(|| RefreshError::Upstream {
                class: ErrorClass::Transient,
                detail: "api_query_auth: no authorizer_refresh_token".into(),
            })?;
        let credential = Credential::authorizer(component, appid);
        let slot = SecretSlot::RefreshToken { component, appid };
        let sealed_rt = self.vault.seal(slot, rt.as_bytes())?;
        let access = match (&info.authorizer_access_token, info.expires_in) {
            (Some(t), Some(secs)) if !t.is_empty() => Some((
                t.clone(),
                self.new_access_token(
                    &credential,
                    t,
                    Duration::from_secs(secs),
                    TokenSource::QueryAuth,
                    sent_at,
                )?,
            )),
            _ => None,
        };
        // WeChat will not give this refresh token again (the code is spent): the write is retried
        // while the store can pass (SPEC.md rule 2), and re-fenced on whatever landed meanwhile.
        let mut retry = StoreRetry::new("api_query_auth answer", WRITE_TRIES_THAT_CANNOT_PASS);
        let mut lost_race = false;
        loop {
            let current = match self.store.get_authorizer(component, appid).await {
                Ok(current) => current,
                Err(e) => {
                    retry.after(e).await?;
                    continue;
                }
            };
            let expected = match &current {
                Some(r) => {
                    // A write that reported failure but landed (or another pass storing the
                    // same answer): nothing left to write.
                    if lost_race
                        && self
                            .vault
                            .open_string(slot, &r.refresh_token)?
                            .expose_secret()
                            == rt
                    {
                        self.failures.lock().remove(&credential);
                        if self.adopt_stored(&credential).await.is_err() {
                            self.schedule_in(&credential, Duration::ZERO);
                        }
                        self.remember_code(component, code, appid).await;
                        return Ok(appid.clone());
                    }
                    Expected::Generation(r.generation)
                }
                None => Expected::Absent,
            };
            // A token requested after ours (a refresh that landed meanwhile) stays: only the
            // refresh token is written then.
            let stored_newer = current
                .as_ref()
                .and_then(|r| r.token.as_ref())
                .zip(access.as_ref())
                .is_some_and(|(stored, (_, ours))| stored.issued_at > ours.issued_at);
            let access_write = access.as_ref().filter(|_| !stored_newer);
            let write = AuthorizationWrite {
                component: component.clone(),
                appid: appid.clone(),
                expected,
                kind: None,
                status: AuthorizerStatus::Active,
                refresh_token: sealed_rt.clone(),
                appsecret: None,
                access_token: access_write.map(|(_, a)| a.clone()),
                source: RefreshTokenSource::QueryAuth,
                at: self.clock.now(),
            };
            match self.store.save_authorization(&write).await {
                Ok(SaveOutcome::Saved { generation }) => {
                    self.cache
                        .slot(&credential)
                        .set_status(AuthorizerStatus::Active, "");
                    self.failures.lock().remove(&credential);
                    match access_write {
                        Some((token, stored)) => {
                            self.publish(
                                &credential,
                                generation,
                                SecretString::from(token.clone()),
                                stored,
                            );
                        }
                        None if stored_newer => {
                            if self.adopt_stored(&credential).await.is_err() {
                                self.schedule_in(&credential, Duration::ZERO);
                            }
                        }
                        None => self.schedule_in(&credential, Duration::ZERO),
                    }
                    self.remember_code(component, code, appid).await;
                    return Ok(appid.clone());
                }
                // A refresh (or a commit we saw fail) landed between our read and our write.
                Ok(SaveOutcome::Stale { .. }) => lost_race = true,
                Ok(SaveOutcome::Missing) => return Err(RefreshError::Unknown),
                Err(e) => {
                    // The commit itself may have landed: compare before writing again.
                    lost_race = true;
                    retry.after(e).await?;
                }
            }
        }
    }

    /// Whether an `api_query_auth` answer for `appid` was stored at or after `since`.
    pub(crate) async fn exchanged_since(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
        since: Timestamp,
    ) -> Result<bool, RefreshError> {
        let history = self.store.refresh_token_history(component, appid).await?;
        Ok(history.iter().any(|h| {
            h.applied && h.source == RefreshTokenSource::QueryAuth && h.received_at >= since
        }))
    }
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
