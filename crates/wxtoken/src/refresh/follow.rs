//! Keeping memory in step with the store: loading a credential another path stored (an account
//! added, an authorizer imported), unloading a removed one, and following the other replicas'
//! token changes.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Engine, EngineError, Inner};
use crate::model::{
    Appid, AuthorizerState, AuthorizerStatus, ComponentAppid, Credential, CredentialKind,
    TokenRecord,
};
use crate::store::{TokenChange, TokenChanges};

/// Pause after the change stream failed to reconnect, growing to [`FOLLOW_RETRY_MAX`].
const FOLLOW_RETRY: Duration = Duration::from_millis(250);

const FOLLOW_RETRY_MAX: Duration = Duration::from_secs(5);

/// Changed credentials loaded at once, and attempts per change.
const FOLLOW_LOADS: usize = 4;

const FOLLOW_LOAD_ATTEMPTS: u32 = 4;

impl Engine {
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
            Some(c) if inner.component.secrets.contains_key(c) => vec![c.clone()],
            Some(_) => return Ok(false),
            None => self.components(),
        };
        let mut found = false;
        for component in &components {
            if let Some(record) = inner
                .io
                .store
                .authorizers()
                .get_authorizer(component, appid)
                .await?
            {
                inner.install_authorizer(&AuthorizerState::of(&record))?;
                found = true;
            }
            if inner
                .io
                .store
                .direct()
                .get_direct_account(component, appid)
                .await?
                .is_some()
            {
                let credential = Credential::direct(component, appid);
                let record = inner.io.store.tokens().get_token(&credential).await?;
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
        if !inner.component.secrets.contains_key(component) {
            return Ok(0);
        }
        let mut installed = 0;
        let mut failed = None;
        // The state scan, not every full record: after an import of a million.
        inner
            .io
            .store
            .authorizers()
            .scan_authorizer_states(&mut |state| {
                if state.component != *component || failed.is_some() {
                    return;
                }
                match inner.install_authorizer(&state) {
                    Ok(true) => installed += 1,
                    Ok(false) => {}
                    Err(e) => failed = Some(e),
                }
            })
            .await?;
        match failed {
            Some(e) => Err(e),
            None => Ok(installed),
        }
    }

    /// After an authorizer's appsecret changed outside this process (same generation, so
    /// [`Engine::load`] sees nothing new): an authorizer whose authorization is lost is refreshed
    /// at once from its new appsecret fallback. Returns whether it was scheduled.
    pub async fn revisit_fallback(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
    ) -> Result<bool, EngineError> {
        let inner = self.inner();
        let Some(record) = inner
            .io
            .store
            .authorizers()
            .get_authorizer(component, appid)
            .await?
        else {
            return Ok(false);
        };
        if record.status == AuthorizerStatus::Active || record.appsecret.is_none() {
            return Ok(false);
        }
        let credential = Credential::authorizer(component, appid);
        inner.forget_failures(&credential);
        inner.schedule_in(&credential, Duration::ZERO);
        Ok(true)
    }

    /// Stops refreshing and serving a credential that was removed from the store (a direct account
    /// removed through the admin API).
    pub fn unload(&self, credential: &Credential) {
        let inner = self.inner();
        inner.unschedule(credential);
        inner.cache.remove(credential);
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
                    self.inner().io.tracker.spawn(async move {
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
            .io
            .tracker
            .spawn(async move { engine.follow(changes, cancel).await });
    }

    /// Loads every credential whose stored generation is newer than memory's (after the change
    /// stream was interrupted). Returns how many changed.
    pub async fn reload_all(&self) -> Result<usize, EngineError> {
        let inner = self.inner();
        let mut changed = 0;
        for kind in [
            CredentialKind::Component,
            CredentialKind::Direct,
            CredentialKind::Jsapi,
            CredentialKind::WxCard,
        ] {
            for record in inner
                .io
                .store
                .tokens()
                .load_tokens(None, Some(kind))
                .await?
            {
                if inner
                    .component
                    .secrets
                    .contains_key(&record.credential.component)
                    && inner.install_direct(&record.credential.clone(), Some(&record))?
                {
                    changed += 1;
                }
            }
        }
        let mut failed = None;
        inner
            .io
            .store
            .authorizers()
            .scan_authorizer_states(&mut |state| {
                if failed.is_some() || !inner.component.secrets.contains_key(&state.component) {
                    return;
                }
                match inner.install_authorizer(&state) {
                    Ok(true) => changed += 1,
                    Ok(false) => {}
                    Err(e) => failed = Some(e),
                }
            })
            .await?;
        match failed {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }
}

impl Inner {
    /// Applies one change heard from the store: loads the credential unless memory already holds
    /// that generation, stored.
    pub(crate) async fn apply_change(
        &self,
        credential: &Credential,
        generation: u64,
    ) -> Result<(), EngineError> {
        if !self.component.secrets.contains_key(&credential.component) {
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
                    .io
                    .store
                    .authorizers()
                    .get_authorizer(&credential.component, &credential.appid)
                    .await?
                {
                    Some(record) => self.install_authorizer(&AuthorizerState::of(&record)),
                    None => Ok(false),
                }
            }
            CredentialKind::Component
            | CredentialKind::Direct
            | CredentialKind::Jsapi
            | CredentialKind::WxCard => match self.io.store.tokens().get_token(credential).await? {
                Some(record) => self.install_direct(credential, Some(&record)),
                None => Ok(false),
            },
        }
    }

    /// Installs an authorizer record unless memory already holds its generation or a newer one.
    /// Returns whether it changed anything.
    fn install_authorizer(&self, record: &AuthorizerState) -> Result<bool, EngineError> {
        let credential = Credential::authorizer(&record.component, &record.appid);
        if self.held_at(&credential) >= Some(record.generation) {
            return Ok(false);
        }
        let slot = self.cache.slot(&credential);
        slot.set_status(
            record.status,
            record.status_reason.as_deref().unwrap_or_default(),
        );
        let refreshable = record.status == AuthorizerStatus::Active || record.has_appsecret;
        match &record.token {
            Some(stored) => {
                self.publish_stored(&credential, record.generation, stored)?;
                if !refreshable {
                    self.unschedule(&credential);
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
