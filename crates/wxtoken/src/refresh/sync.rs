//! What the HTTP layer and the admin operations ask of a running engine beyond reads and
//! refreshes: exchanging the authorization page's code, bringing a credential that another path
//! stored (an account added, an authorizer imported, by the CLI or the admin API) into the cache
//! and the schedule, dropping a removed one, and a summary for metrics and readiness.
//!
//! Several replicas on PostgreSQL: [`Engine::follow`] applies the store's change stream (every
//! committed token or status change, from any replica) to memory, and reloads everything after
//! the stream was interrupted.
//!
//! Invariant: nothing here replaces a newer token in memory with an older one (`Slot::publish` only
//! moves forward), and a credential already held at the stored generation is left alone, so loading
//! twice changes nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{Engine, EngineError, Inner, RefreshError};
use crate::model::{
    Appid, AuthorizerRecord, AuthorizerStatus, ComponentAppid, Credential, CredentialKind,
    Timestamp, TokenRecord,
};
use crate::store::{LeaseKey, TokenChange, TokenChanges};
use crate::tokens::cache::{CachedToken, ReadError, Slot};

/// Pause after the change stream failed to reconnect, growing to [`FOLLOW_RETRY_MAX`].
const FOLLOW_RETRY: Duration = Duration::from_millis(250);
const FOLLOW_RETRY_MAX: Duration = Duration::from_secs(5);
/// Changed credentials loaded at once, and attempts per change.
const FOLLOW_LOADS: usize = 4;
const FOLLOW_LOAD_ATTEMPTS: u32 = 4;

/// How long an exchange waits for another replica exchanging the same code, asking every
/// [`CODE_LEASE_POLL`].
const CODE_LEASE_WAIT: Duration = Duration::from_secs(15);
const CODE_LEASE_POLL: Duration = Duration::from_millis(100);

/// How long an exchanged authorization code is remembered (WeChat's codes live 10 minutes).
const RECENT_CODE_TTL: Duration = Duration::from_secs(15 * 60);
/// How long the store remembers one (for every replica); older rows are deleted as new ones land.
const STORED_CODE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Bound on remembered codes, whatever arrives.
const RECENT_CODE_MAX: usize = 10_000;

/// Authorization codes this process exchanged recently, by SHA-256 (the code itself is a secret):
/// the page callback and the `authorized` push carry the same single-use code, and whichever comes
/// second gets 61009 and still needs to know which account it was.
#[derive(Default)]
pub(crate) struct RecentCodes {
    codes: Mutex<HashMap<[u8; 32], (Appid, Instant)>>,
}

impl RecentCodes {
    pub(crate) fn insert(&self, code: &str, appid: &Appid) {
        let mut codes = self.codes.lock();
        if codes.len() >= RECENT_CODE_MAX {
            codes.retain(|_, (_, at)| at.elapsed() < RECENT_CODE_TTL);
            if codes.len() >= RECENT_CODE_MAX {
                codes.clear();
            }
        }
        codes.insert(digest(code), (appid.clone(), Instant::now()));
    }

    pub(crate) fn get(&self, code: &str) -> Option<Appid> {
        self.codes
            .lock()
            .get(&digest(code))
            .filter(|(_, at)| at.elapsed() < RECENT_CODE_TTL)
            .map(|(appid, _)| appid.clone())
    }
}

pub(crate) fn digest(code: &str) -> [u8; 32] {
    Sha256::digest(code.as_bytes()).into()
}

/// Authorizers and direct accounts held, by status (for metrics and the admin API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CredentialCounts {
    pub active: u64,
    pub needs_reauth: u64,
    pub revoked: u64,
    pub direct: u64,
}

impl Engine {
    /// Exchanges the code the authorization page's callback received (`api_query_auth`) and stores
    /// the authorizer, exactly as an `authorized` push would; returns the authorizer's appid. The
    /// push carrying the same code is then a no-op (and the other way round).
    pub async fn authorize_code(
        &self,
        component: &ComponentAppid,
        code: &str,
    ) -> Result<Appid, RefreshError> {
        if !self.inner().components.contains_key(component) {
            return Err(RefreshError::NotConfigured(component.to_string()));
        }
        let since = self.inner().clock.now().minus(Duration::from_secs(60));
        self.inner()
            .exchange_code_once(component, None, code, since)
            .await
    }

    /// The slot a read of `appid` goes through (see [`Engine::token`]); with [`Engine::read`], lets
    /// the HTTP layer count the read against the slot's credential without a second lookup.
    pub fn slot(&self, component: Option<&str>, appid: &str) -> Result<Arc<Slot>, ReadError> {
        self.inner().cache.find(component, appid)
    }

    /// The token to hand out from `slot` now, or why there is none. No await, no database.
    pub fn read(&self, slot: &Slot) -> Result<Arc<CachedToken>, ReadError> {
        let inner = self.inner();
        slot.read(inner.clock.now(), inner.config.serve_margin)
    }

    /// Like [`Engine::read`], but a credential that has never had a token (just authorized, just
    /// added) is refreshed now (single flight) instead of answering "no token yet". A credential
    /// whose refresh is failing is not: its backoff decides when WeChat is asked again.
    pub async fn read_or_refresh(&self, slot: &Slot) -> Result<Arc<CachedToken>, ReadError> {
        match self.read(slot) {
            Err(ReadError::NoToken { .. })
                if slot.current().is_none() && slot.failing().is_none() =>
            {
                match self.refresh_now(slot.credential()).await {
                    Ok(_) => self.read(slot),
                    Err(RefreshError::Gone { reason }) => Err(ReadError::Gone { reason }),
                    Err(RefreshError::Unknown) => Err(ReadError::Unknown),
                    Err(e) => Err(ReadError::NoToken {
                        reason: e.to_string(),
                    }),
                }
            }
            other => other,
        }
    }

    /// The configured components.
    pub fn components(&self) -> Vec<ComponentAppid> {
        let mut list: Vec<_> = self.inner().components.keys().cloned().collect();
        list.sort();
        list
    }

    /// Brings `appid` (an authorizer, a direct account, or both) from the store into the cache and
    /// the schedule, under `component` or under every configured component. For credentials stored
    /// by another path while this process runs. Returns whether anything was found.
    pub async fn load(
        &self,
        component: Option<&ComponentAppid>,
        appid: &Appid,
    ) -> Result<bool, EngineError> {
        let inner = self.inner();
        let components = match component {
            Some(c) if inner.components.contains_key(c) => vec![c.clone()],
            Some(_) => return Ok(false),
            None => self.components(),
        };
        let mut found = false;
        for component in &components {
            if let Some(record) = inner.store.get_authorizer(component, appid).await? {
                inner.install_authorizer(&record)?;
                found = true;
            }
            if inner
                .store
                .get_direct_account(component, appid)
                .await?
                .is_some()
            {
                let credential = Credential::direct(component, appid);
                let record = inner.store.get_token(&credential).await?;
                inner.install_direct(&credential, record.as_ref())?;
                found = true;
            }
        }
        Ok(found)
    }

    /// Brings every authorizer of `component` that the store holds and memory does not (or holds
    /// at an older generation) into the cache: after an import. Returns how many were installed.
    pub async fn load_all(&self, component: &ComponentAppid) -> Result<usize, EngineError> {
        let inner = self.inner();
        if !inner.components.contains_key(component) {
            return Ok(0);
        }
        let mut installed = 0;
        for record in inner.store.load_authorizers(Some(component)).await? {
            if inner.install_authorizer(&record)? {
                installed += 1;
            }
        }
        Ok(installed)
    }

    /// Stops refreshing and serving a credential that was removed from the store (a direct account
    /// removed through the admin API).
    pub fn unload(&self, credential: &Credential) {
        let inner = self.inner();
        inner.schedule.lock().remove(credential);
        inner.cache.remove(credential);
    }

    /// How many authorizers are held in each status, and how many direct accounts.
    pub fn counts(&self) -> CredentialCounts {
        let mut counts = CredentialCounts::default();
        self.inner()
            .cache
            .for_each(|slot| match slot.credential().kind {
                CredentialKind::Authorizer => match slot.status() {
                    Some(AuthorizerStatus::NeedsReauth) => counts.needs_reauth += 1,
                    Some(AuthorizerStatus::Revoked) => counts.revoked += 1,
                    _ => counts.active += 1,
                },
                CredentialKind::Direct => counts.direct += 1,
                CredentialKind::Component => {}
            });
        counts
    }

    /// Follows the store's change stream until `cancel`: every change another replica (or this
    /// one) committed is loaded into memory, which wakes long-polls; after an interruption
    /// (the database lost, the session ended) everything is reloaded once the stream is back. Runs
    /// on the tracker ([`Engine::spawn_follow`]); reads never wait on it.
    pub async fn follow(&self, mut changes: TokenChanges, cancel: CancellationToken) {
        let pause = |failures: u32| {
            FOLLOW_RETRY
                .saturating_mul(1 << failures.min(5))
                .min(FOLLOW_RETRY_MAX)
        };
        // Bounds the loads in flight (a burst of changes must not exhaust the pool); changes
        // wait in the listener's buffer meanwhile.
        let loads = Arc::new(tokio::sync::Semaphore::new(FOLLOW_LOADS));
        let mut failures = 0u32;
        loop {
            let next = tokio::select! {
                () = cancel.cancelled() => return,
                next = changes.next() => next,
            };
            match next {
                Ok(TokenChange::Changed {
                    credential,
                    generation,
                }) => {
                    failures = 0;
                    let Ok(permit) = Arc::clone(&loads).acquire_owned().await else {
                        return;
                    };
                    let inner = Arc::clone(self.inner());
                    let cancel = cancel.clone();
                    // Off the loop: a slow store must not hold up the changes behind this one. A
                    // load that fails is tried again (the change is not announced twice).
                    self.inner().tracker.spawn(async move {
                        let _permit = permit;
                        for attempt in 0..FOLLOW_LOAD_ATTEMPTS {
                            match inner.apply_change(&credential, generation).await {
                                Ok(()) => return,
                                Err(e) if attempt + 1 == FOLLOW_LOAD_ATTEMPTS => {
                                    tracing::warn!(appid = %credential.appid, error = %e, "loading a changed token failed; its next refresh reads the store");
                                }
                                Err(_) => {}
                            }
                            tokio::select! {
                                () = cancel.cancelled() => return,
                                () = tokio::time::sleep(pause(attempt)) => {}
                            }
                        }
                    });
                }
                Ok(TokenChange::Resumed) => {
                    failures = 0;
                    tracing::info!("token changes heard again; reloading what changed meanwhile");
                    // Until it succeeds: what changed during the gap is heard of only this way.
                    let mut attempt = 0;
                    loop {
                        match self.reload_all().await {
                            Ok(n) => {
                                tracing::info!(loaded = n, "reloaded after the interruption");
                                break;
                            }
                            Err(e) => {
                                if attempt == 0 {
                                    tracing::warn!(error = %e, "reloading after the interruption failed; retrying");
                                }
                                tokio::select! {
                                    () = cancel.cancelled() => return,
                                    () = tokio::time::sleep(pause(attempt)) => {}
                                }
                                attempt += 1;
                            }
                        }
                    }
                }
                Err(e) => {
                    if failures == 0 {
                        tracing::warn!(error = %e, "not hearing token changes; serving what memory holds");
                    }
                    let wait = pause(failures);
                    failures = failures.saturating_add(1);
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// [`Engine::follow`] on the tracker.
    pub fn spawn_follow(&self, changes: TokenChanges, cancel: CancellationToken) {
        let engine = self.clone();
        self.inner()
            .tracker
            .spawn(async move { engine.follow(changes, cancel).await });
    }

    /// Loads every credential whose stored generation is newer than memory's (after the change
    /// stream was interrupted). Returns how many changed.
    pub async fn reload_all(&self) -> Result<usize, EngineError> {
        let inner = self.inner();
        let mut changed = 0;
        for kind in [CredentialKind::Component, CredentialKind::Direct] {
            for record in inner.store.load_tokens(None, Some(kind)).await? {
                if inner.components.contains_key(&record.credential.component)
                    && inner.install_direct(&record.credential.clone(), Some(&record))?
                {
                    changed += 1;
                }
            }
        }
        for record in inner.store.load_authorizers(None).await? {
            if inner.components.contains_key(&record.component)
                && inner.install_authorizer(&record)?
            {
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// The wall-clock now of the engine's clock (token ages and expiries are measured against it).
    pub fn now(&self) -> Timestamp {
        self.inner().clock.now()
    }
}

impl Inner {
    /// [`Inner::exchange_code`] in a single flight per code: the page callback and the push carry
    /// the same single-use code, and whichever comes second joins the first's exchange (and its
    /// store write) instead of spending the code again. One that comes after the first finished
    /// gets 61009 and is answered from [`RecentCodes`] or the store's record of exchanged codes,
    /// which only hold stored exchanges.
    pub(crate) async fn exchange_code_once(
        self: &Arc<Self>,
        component: &ComponentAppid,
        expected: Option<&Appid>,
        code: &str,
        since: Timestamp,
    ) -> Result<Appid, RefreshError> {
        let inner = Arc::clone(self);
        let (component, expected_owned, owned_code) =
            (component.clone(), expected.cloned(), code.to_owned());
        let appid = self
            .code_flights
            .run(digest(code), move || async move {
                inner
                    .exchange_code_leased(&component, expected_owned.as_ref(), &owned_code, since)
                    .await
            })
            .await
            .unwrap_or(Err(RefreshError::Abandoned))?;
        match expected {
            // Joined a flight started without an expected appid (the callback's).
            Some(want) if *want != appid => Err(RefreshError::Gone {
                reason: "api_query_auth returned another appid".into(),
            }),
            _ => Ok(appid),
        }
    }

    /// Remembers that `code` was exchanged for `appid` (its answer stored): in memory, and in the
    /// store for the other replicas, whose page callback or push with the same code gets 61009.
    /// A store failure is only logged: a push knows its appid without it, and a callback on this
    /// replica finds it in memory.
    pub(crate) async fn remember_code(
        &self,
        component: &ComponentAppid,
        code: &str,
        appid: &Appid,
    ) {
        self.recent_codes.insert(code, appid);
        let now = self.clock.now();
        let forget_before = Timestamp::from_millis(
            now.as_millis() - i64::try_from(STORED_CODE_TTL.as_millis()).unwrap_or(i64::MAX),
        );
        if let Err(e) = self
            .store
            .record_exchanged_code(
                component,
                &hex::encode(digest(code)),
                appid,
                now,
                forget_before,
            )
            .await
        {
            tracing::warn!(error = %e, "exchanged authorization code not recorded for other replicas");
        }
    }

    /// Which authorizer `code` was exchanged for, by this process or another replica.
    pub(crate) async fn code_exchanged_for(
        &self,
        component: &ComponentAppid,
        code: &str,
    ) -> Result<Option<Appid>, RefreshError> {
        if let Some(appid) = self.recent_codes.get(code) {
            return Ok(Some(appid));
        }
        Ok(self
            .store
            .exchanged_code(component, &hex::encode(digest(code)))
            .await?)
    }

    /// [`Inner::exchange_code`] under the code's lease, so a push and a page callback carrying the
    /// same code on two replicas make one `api_query_auth`: the second waits for the first's
    /// exchange and write, then finds the stored answer (a push by its appid's history, a callback
    /// by the exchanged code's record) instead of spending the code again.
    async fn exchange_code_leased(
        self: &Arc<Self>,
        component: &ComponentAppid,
        expected: Option<&Appid>,
        code: &str,
        since: Timestamp,
    ) -> Result<Appid, RefreshError> {
        let key = LeaseKey::Code {
            component: component.clone(),
            digest: hex::encode(digest(code)),
        };
        let give_up = tokio::time::Instant::now() + CODE_LEASE_WAIT;
        let mut waited = false;
        loop {
            match self.lease.acquire(&key).await {
                Ok(true) => break,
                // The database is away: the exchange's own write would wait for it anyway.
                Err(_) => break,
                Ok(false) if tokio::time::Instant::now() >= give_up => break,
                Ok(false) => {
                    waited = true;
                    tokio::time::sleep(CODE_LEASE_POLL).await;
                }
            }
        }
        let result = match expected {
            Some(appid) if waited && self.exchanged_since(component, appid, since).await? => {
                Ok(appid.clone())
            }
            // A callback: the push may have been exchanged already, here or on another replica.
            None => match self.code_exchanged_for(component, code).await? {
                Some(appid) => Ok(appid),
                None => self.exchange_code(component, None, code, since).await,
            },
            _ => self.exchange_code(component, expected, code, since).await,
        };
        self.lease.release(&key).await;
        result
    }

    /// Applies one change heard from the store: loads the credential unless memory already holds
    /// that generation, stored.
    pub(crate) async fn apply_change(
        &self,
        credential: &Credential,
        generation: u64,
    ) -> Result<(), EngineError> {
        if !self.components.contains_key(&credential.component) {
            return Ok(());
        }
        let held = self.cache.get(credential).and_then(|s| s.current());
        if held
            .is_some_and(|t| t.generation > generation || (t.generation == generation && t.stored))
        {
            return Ok(());
        }
        if self.install_stored(credential).await? {
            self.forget_failures(credential);
        }
        Ok(())
    }

    /// Loads one credential from the store into memory (and the schedule) unless memory holds its
    /// generation or a newer one. Returns whether anything changed.
    pub(crate) async fn install_stored(
        &self,
        credential: &Credential,
    ) -> Result<bool, EngineError> {
        match credential.kind {
            CredentialKind::Authorizer => {
                match self
                    .store
                    .get_authorizer(&credential.component, &credential.appid)
                    .await?
                {
                    Some(record) => self.install_authorizer(&record),
                    None => Ok(false),
                }
            }
            CredentialKind::Component | CredentialKind::Direct => {
                match self.store.get_token(credential).await? {
                    Some(record) => self.install_direct(credential, Some(&record)),
                    None => Ok(false),
                }
            }
        }
    }

    /// Installs an authorizer record unless memory already holds its generation or a newer one.
    /// Returns whether it changed anything.
    fn install_authorizer(&self, record: &AuthorizerRecord) -> Result<bool, EngineError> {
        let credential = Credential::authorizer(&record.component, &record.appid);
        if self.held_at(&credential) >= Some(record.generation) {
            return Ok(false);
        }
        let slot = self.cache.slot(&credential);
        slot.set_status(
            record.status,
            record.status_reason.as_deref().unwrap_or_default(),
        );
        let refreshable = record.status == AuthorizerStatus::Active || record.appsecret.is_some();
        match &record.token {
            Some(stored) => {
                self.publish_stored(&credential, record.generation, stored)?;
                if !refreshable {
                    self.schedule.lock().remove(&credential);
                }
            }
            None if refreshable => self.schedule_in(&credential, Duration::ZERO),
            None => {}
        }
        Ok(true)
    }

    fn install_direct(
        &self,
        credential: &Credential,
        record: Option<&TokenRecord>,
    ) -> Result<bool, EngineError> {
        let generation = record.map_or(0, |r| r.generation);
        let held = self.held_at(credential);
        if held.is_some() && held >= Some(generation) {
            return Ok(false);
        }
        self.cache.slot(credential);
        match record.and_then(|r| r.token.as_ref()) {
            Some(stored) => {
                self.publish_stored(credential, generation, stored)?;
            }
            None => self.schedule_in(credential, Duration::ZERO),
        }
        Ok(true)
    }

    /// The generation memory holds for `credential`: `None` when it has no slot, `Some(0)` for a
    /// slot without a token.
    fn held_at(&self, credential: &Credential) -> Option<u64> {
        let slot = self.cache.get(credential)?;
        Some(slot.current().map_or(0, |t| t.generation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_codes_answer_by_code_and_keep_no_code_in_memory() {
        let codes = RecentCodes::default();
        let appid = Appid::parse("wxauthorizer00001").expect("appid");
        codes.insert("queryauthcode@@@secret", &appid);
        assert_eq!(codes.get("queryauthcode@@@secret"), Some(appid));
        assert_eq!(codes.get("queryauthcode@@@other"), None);
        let held = codes.codes.lock();
        assert!(
            held.keys()
                .all(|k| k != b"queryauthcode@@@secret".as_slice())
        );
    }
}
