//! A store that delegates to the real one, with hooks for tests: one-shot actions run just
//! before the next `save_refresh_results` (e.g. another writer landing between a refresh's
//! generation read and its write) or just after the next `latest_ticket` read (a ticket landing
//! while a component refresh reads the store), so races are staged deterministically instead of
//! by timing; and failures of the next writes, each with the error the store would give.

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use wxtoken::model::{
    Appid, AuthorizationWrite, AuthorizerCounts, AuthorizerRecord, AuthorizerState, ComponentAppid,
    Credential, CredentialKind, RefreshResult, RefreshTokenHistoryEntry, SaveOutcome, Sealed,
    StatusChange, StoredTicket, TicketOutcome, Timestamp, TokenRecord,
};
use wxtoken::store::{
    AuthorizerStore, Backend, ClientStore, ComponentStore, DirectStore, EventStore, KeyStore,
    LeaseStore, Store, StoreError, TokenChanges, TokenStore,
};

type Hook = Box<dyn FnOnce(Arc<dyn Store>) -> BoxFuture<'static, ()> + Send>;

/// The hooks of a [`HookStore`], shared across restarts of the harness.
#[derive(Default)]
pub struct StoreHooks {
    before_save: Mutex<Option<Hook>>,
    after_latest_ticket: Mutex<Option<Hook>>,
    fail_refresh_results: Mutex<Option<Failures>>,
    fail_authorizations: Mutex<Option<Failures>>,
}

/// The next `remaining` calls fail with `error()`.
struct Failures {
    remaining: u32,
    error: fn() -> StoreError,
}

impl Failures {
    fn take(slot: &Mutex<Option<Failures>>) -> Option<StoreError> {
        let mut slot = slot.lock();
        let failures = slot.as_mut()?;
        failures.remaining -= 1;
        let e = (failures.error)();
        if failures.remaining == 0 {
            *slot = None;
        }
        Some(e)
    }
}

impl StoreHooks {
    /// Runs `hook` (given the real store) once, just before the next `save_refresh_results`.
    pub fn before_next_save(
        &self,
        hook: impl FnOnce(Arc<dyn Store>) -> BoxFuture<'static, ()> + Send + 'static,
    ) {
        *self.before_save.lock() = Some(Box::new(hook));
    }

    /// Runs `hook` (given the real store) once, just after the next `latest_ticket` has read the
    /// store and before its answer reaches the caller.
    pub fn after_next_latest_ticket(
        &self,
        hook: impl FnOnce(Arc<dyn Store>) -> BoxFuture<'static, ()> + Send + 'static,
    ) {
        *self.after_latest_ticket.lock() = Some(Box::new(hook));
    }

    /// The next `times` calls of `save_refresh_results` fail with `error()` (and write nothing).
    /// (`times` 0 ends failures set before.)
    pub fn fail_refresh_results(&self, times: u32, error: fn() -> StoreError) {
        *self.fail_refresh_results.lock() = (times > 0).then_some(Failures {
            remaining: times,
            error,
        });
    }

    /// The next `times` calls of `save_authorizations` fail with `error()` (and write nothing).
    pub fn fail_authorizations(&self, times: u32, error: fn() -> StoreError) {
        *self.fail_authorizations.lock() = (times > 0).then_some(Failures {
            remaining: times,
            error,
        });
    }
}

/// The real store behind [`StoreHooks`]: it intercepts the token and authorizer roles (their
/// writes) and hands out the real store's other roles unchanged.
pub struct HookStore {
    inner: Arc<dyn Store>,
    hooks: Arc<StoreHooks>,
}

impl HookStore {
    pub fn wrap(inner: Arc<dyn Store>, hooks: Arc<StoreHooks>) -> Arc<dyn Store> {
        Arc::new(Self { inner, hooks })
    }

    async fn run(&self, slot: &Mutex<Option<Hook>>) {
        let hook = slot.lock().take();
        if let Some(hook) = hook {
            hook(Arc::clone(&self.inner)).await;
        }
    }
}

#[async_trait]
impl Store for HookStore {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn close(&self) {
        self.inner.close().await
    }

    fn components(&self) -> &dyn ComponentStore {
        self
    }

    fn tokens(&self) -> &dyn TokenStore {
        self
    }

    fn authorizers(&self) -> &dyn AuthorizerStore {
        self
    }

    fn direct(&self) -> &dyn DirectStore {
        self.inner.direct()
    }

    fn events(&self) -> &dyn EventStore {
        self.inner.events()
    }

    fn clients(&self) -> &dyn ClientStore {
        self.inner.clients()
    }

    fn keys(&self) -> &dyn KeyStore {
        self.inner.keys()
    }

    fn leases(&self) -> &dyn LeaseStore {
        self.inner.leases()
    }

    fn ops(&self) -> &dyn wxtoken::store::OpsStore {
        self.inner.ops()
    }
}

#[async_trait]
impl ComponentStore for HookStore {
    async fn ensure_component(
        &self,
        component: &ComponentAppid,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        self.inner
            .components()
            .ensure_component(component, at)
            .await
    }

    async fn list_components(&self) -> Result<Vec<ComponentAppid>, StoreError> {
        self.inner.components().list_components().await
    }

    async fn record_ticket(
        &self,
        component: &ComponentAppid,
        ticket: &Sealed,
        received_at: Timestamp,
    ) -> Result<TicketOutcome, StoreError> {
        let components = self.inner.components();
        components
            .record_ticket(component, ticket, received_at)
            .await
    }

    async fn latest_ticket(
        &self,
        component: &ComponentAppid,
    ) -> Result<Option<StoredTicket>, StoreError> {
        let read = self.inner.components().latest_ticket(component).await;
        self.run(&self.hooks.after_latest_ticket).await;
        read
    }
}

#[async_trait]
impl TokenStore for HookStore {
    async fn get_token(&self, credential: &Credential) -> Result<Option<TokenRecord>, StoreError> {
        self.inner.tokens().get_token(credential).await
    }

    async fn load_tokens(
        &self,
        component: Option<&ComponentAppid>,
        kind: Option<CredentialKind>,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        self.inner.tokens().load_tokens(component, kind).await
    }

    async fn save_refresh_results(
        &self,
        results: &[RefreshResult],
    ) -> Result<Vec<SaveOutcome>, StoreError> {
        self.run(&self.hooks.before_save).await;
        if let Some(e) = Failures::take(&self.hooks.fail_refresh_results) {
            return Err(e);
        }
        self.inner.tokens().save_refresh_results(results).await
    }

    async fn token_changes(&self) -> Result<Option<TokenChanges>, StoreError> {
        self.inner.tokens().token_changes().await
    }

    async fn ensure_ticket(
        &self,
        credential: &Credential,
        at: Timestamp,
    ) -> Result<u64, StoreError> {
        self.inner.tokens().ensure_ticket(credential, at).await
    }
}

#[async_trait]
impl AuthorizerStore for HookStore {
    async fn save_authorizations(
        &self,
        writes: &[AuthorizationWrite],
    ) -> Result<Vec<SaveOutcome>, StoreError> {
        if let Some(e) = Failures::take(&self.hooks.fail_authorizations) {
            return Err(e);
        }
        self.inner.authorizers().save_authorizations(writes).await
    }

    async fn get_authorizer(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
    ) -> Result<Option<AuthorizerRecord>, StoreError> {
        self.inner
            .authorizers()
            .get_authorizer(component, appid)
            .await
    }

    async fn list_authorizers(
        &self,
        component: &ComponentAppid,
        after: Option<&Appid>,
        limit: u32,
    ) -> Result<Vec<AuthorizerRecord>, StoreError> {
        let authorizers = self.inner.authorizers();
        authorizers.list_authorizers(component, after, limit).await
    }

    async fn search_authorizers(
        &self,
        component: &ComponentAppid,
        text: &str,
        after: Option<&Appid>,
        limit: u32,
    ) -> Result<Vec<AuthorizerRecord>, StoreError> {
        let authorizers = self.inner.authorizers();
        authorizers
            .search_authorizers(component, text, after, limit)
            .await
    }

    async fn load_authorizers(
        &self,
        component: Option<&ComponentAppid>,
    ) -> Result<Vec<AuthorizerRecord>, StoreError> {
        self.inner.authorizers().load_authorizers(component).await
    }

    async fn scan_authorizer_states(
        &self,
        each: &mut (dyn FnMut(AuthorizerState) + Send),
    ) -> Result<(), StoreError> {
        self.inner.authorizers().scan_authorizer_states(each).await
    }

    async fn count_authorizers(
        &self,
        component: &ComponentAppid,
    ) -> Result<AuthorizerCounts, StoreError> {
        self.inner.authorizers().count_authorizers(component).await
    }

    async fn set_authorizer_status(
        &self,
        change: &StatusChange,
    ) -> Result<SaveOutcome, StoreError> {
        self.inner.authorizers().set_authorizer_status(change).await
    }

    async fn set_authorizer_details(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
        kind: wxtoken::model::AppKind,
        details: &wxtoken::model::AuthorizerDetails,
    ) -> Result<bool, StoreError> {
        self.inner
            .authorizers()
            .set_authorizer_details(component, appid, kind, details)
            .await
    }

    async fn set_authorizer_appsecret(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
        appsecret: Option<&Sealed>,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let authorizers = self.inner.authorizers();
        authorizers
            .set_authorizer_appsecret(component, appid, appsecret, at)
            .await
    }

    async fn refresh_token_history(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
    ) -> Result<Vec<RefreshTokenHistoryEntry>, StoreError> {
        let authorizers = self.inner.authorizers();
        authorizers.refresh_token_history(component, appid).await
    }

    async fn count_refresh_token_history(
        &self,
        component: Option<&ComponentAppid>,
    ) -> Result<u64, StoreError> {
        let authorizers = self.inner.authorizers();
        authorizers.count_refresh_token_history(component).await
    }

    async fn record_exchanged_code(
        &self,
        component: &ComponentAppid,
        code_digest: &str,
        appid: &Appid,
        at: Timestamp,
        forget_before: Timestamp,
    ) -> Result<(), StoreError> {
        let authorizers = self.inner.authorizers();
        authorizers
            .record_exchanged_code(component, code_digest, appid, at, forget_before)
            .await
    }

    async fn exchanged_code(
        &self,
        component: &ComponentAppid,
        code_digest: &str,
    ) -> Result<Option<Appid>, StoreError> {
        self.inner
            .authorizers()
            .exchanged_code(component, code_digest)
            .await
    }
}
