//! A store that delegates to the real one, with hooks for tests: a one-shot action run just
//! before the next `save_refresh_results` (e.g. another writer landing between a refresh's
//! generation read and its write), so races are staged deterministically instead of by timing;
//! and failures of the next writes, each with the error the store would give.

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use wxtoken::model::{
    ApiKeyHash, Appid, AuthorizationWrite, AuthorizerCounts, AuthorizerRecord, ClientCreate,
    ClientRecord, ComponentAppid, Credential, CredentialKind, DirectAccountRecord,
    DirectAccountWrite, EventInsert, ForceBudgetRecord, KeyCheck, KeyId, NewClient, NewEvent,
    ReadCount, RefreshResult, RefreshTokenHistoryEntry, SaveOutcome, Sealed, StatusChange,
    StoredEvent, StoredTicket, TicketOutcome, Timestamp, TokenRecord, UpsertOutcome,
};
use wxtoken::store::{Backend, Reseal, SealedCell, SealedColumn, Store, StoreError};

type Hook = Box<dyn FnOnce(Arc<dyn Store>) -> BoxFuture<'static, ()> + Send>;

/// The hooks of a [`HookStore`], shared across restarts of the harness.
#[derive(Default)]
pub struct StoreHooks {
    before_save: Mutex<Option<Hook>>,
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

/// The real store behind [`StoreHooks`].
pub struct HookStore {
    inner: Arc<dyn Store>,
    hooks: Arc<StoreHooks>,
}

impl HookStore {
    pub fn wrap(inner: Arc<dyn Store>, hooks: Arc<StoreHooks>) -> Arc<dyn Store> {
        Arc::new(Self { inner, hooks })
    }

    async fn before_save(&self) {
        let hook = self.hooks.before_save.lock().take();
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

    async fn ensure_component(
        &self,
        component: &ComponentAppid,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        self.inner.ensure_component(component, at).await
    }

    async fn list_components(&self) -> Result<Vec<ComponentAppid>, StoreError> {
        self.inner.list_components().await
    }

    async fn record_ticket(
        &self,
        component: &ComponentAppid,
        ticket: &Sealed,
        received_at: Timestamp,
    ) -> Result<TicketOutcome, StoreError> {
        self.inner
            .record_ticket(component, ticket, received_at)
            .await
    }

    async fn latest_ticket(
        &self,
        component: &ComponentAppid,
    ) -> Result<Option<StoredTicket>, StoreError> {
        self.inner.latest_ticket(component).await
    }

    async fn get_token(&self, credential: &Credential) -> Result<Option<TokenRecord>, StoreError> {
        self.inner.get_token(credential).await
    }

    async fn load_tokens(
        &self,
        component: Option<&ComponentAppid>,
        kind: Option<CredentialKind>,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        self.inner.load_tokens(component, kind).await
    }

    async fn save_refresh_results(
        &self,
        results: &[RefreshResult],
    ) -> Result<Vec<SaveOutcome>, StoreError> {
        self.before_save().await;
        if let Some(e) = Failures::take(&self.hooks.fail_refresh_results) {
            return Err(e);
        }
        self.inner.save_refresh_results(results).await
    }

    async fn save_authorizations(
        &self,
        writes: &[AuthorizationWrite],
    ) -> Result<Vec<SaveOutcome>, StoreError> {
        if let Some(e) = Failures::take(&self.hooks.fail_authorizations) {
            return Err(e);
        }
        self.inner.save_authorizations(writes).await
    }

    async fn get_authorizer(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
    ) -> Result<Option<AuthorizerRecord>, StoreError> {
        self.inner.get_authorizer(component, appid).await
    }

    async fn list_authorizers(
        &self,
        component: &ComponentAppid,
        after: Option<&Appid>,
        limit: u32,
    ) -> Result<Vec<AuthorizerRecord>, StoreError> {
        self.inner.list_authorizers(component, after, limit).await
    }

    async fn load_authorizers(
        &self,
        component: Option<&ComponentAppid>,
    ) -> Result<Vec<AuthorizerRecord>, StoreError> {
        self.inner.load_authorizers(component).await
    }

    async fn count_authorizers(
        &self,
        component: &ComponentAppid,
    ) -> Result<AuthorizerCounts, StoreError> {
        self.inner.count_authorizers(component).await
    }

    async fn set_authorizer_status(
        &self,
        change: &StatusChange,
    ) -> Result<SaveOutcome, StoreError> {
        self.inner.set_authorizer_status(change).await
    }

    async fn set_authorizer_appsecret(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
        appsecret: Option<&Sealed>,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        self.inner
            .set_authorizer_appsecret(component, appid, appsecret, at)
            .await
    }

    async fn refresh_token_history(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
    ) -> Result<Vec<RefreshTokenHistoryEntry>, StoreError> {
        self.inner.refresh_token_history(component, appid).await
    }

    async fn count_refresh_token_history(
        &self,
        component: Option<&ComponentAppid>,
    ) -> Result<u64, StoreError> {
        self.inner.count_refresh_token_history(component).await
    }

    async fn upsert_direct_account(
        &self,
        account: &DirectAccountWrite,
    ) -> Result<UpsertOutcome, StoreError> {
        self.inner.upsert_direct_account(account).await
    }

    async fn get_direct_account(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
    ) -> Result<Option<DirectAccountRecord>, StoreError> {
        self.inner.get_direct_account(component, appid).await
    }

    async fn list_direct_accounts(
        &self,
        component: Option<&ComponentAppid>,
    ) -> Result<Vec<DirectAccountRecord>, StoreError> {
        self.inner.list_direct_accounts(component).await
    }

    async fn remove_direct_account(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
    ) -> Result<bool, StoreError> {
        self.inner.remove_direct_account(component, appid).await
    }

    async fn load_force_budgets(&self) -> Result<Vec<ForceBudgetRecord>, StoreError> {
        self.inner.load_force_budgets().await
    }

    async fn save_force_budget(&self, budget: &ForceBudgetRecord) -> Result<(), StoreError> {
        self.inner.save_force_budget(budget).await
    }

    async fn try_lease(
        &self,
        key: &wxtoken::store::LeaseKey,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError> {
        self.inner.try_lease(key, holder, now, until).await
    }

    async fn release_lease(
        &self,
        key: &wxtoken::store::LeaseKey,
        holder: &str,
    ) -> Result<(), StoreError> {
        self.inner.release_lease(key, holder).await
    }

    async fn event_unprocessed(
        &self,
        component: &ComponentAppid,
        dedupe_key: &str,
    ) -> Result<bool, StoreError> {
        self.inner.event_unprocessed(component, dedupe_key).await
    }

    async fn record_exchanged_code(
        &self,
        component: &ComponentAppid,
        code_digest: &str,
        appid: &Appid,
        at: Timestamp,
        forget_before: Timestamp,
    ) -> Result<(), StoreError> {
        self.inner
            .record_exchanged_code(component, code_digest, appid, at, forget_before)
            .await
    }

    async fn exchanged_code(
        &self,
        component: &ComponentAppid,
        code_digest: &str,
    ) -> Result<Option<Appid>, StoreError> {
        self.inner.exchanged_code(component, code_digest).await
    }

    async fn token_changes(&self) -> Result<Option<wxtoken::store::TokenChanges>, StoreError> {
        self.inner.token_changes().await
    }

    async fn record_event(&self, event: &NewEvent) -> Result<EventInsert, StoreError> {
        self.inner.record_event(event).await
    }

    async fn unprocessed_events(
        &self,
        component: Option<&ComponentAppid>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.unprocessed_events(component, limit).await
    }

    async fn mark_event_processed(
        &self,
        component: &ComponentAppid,
        dedupe_key: &str,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        self.inner
            .mark_event_processed(component, dedupe_key, at)
            .await
    }

    async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.inner.prune_events(before).await
    }

    async fn create_client(&self, client: &NewClient) -> Result<ClientCreate, StoreError> {
        self.inner.create_client(client).await
    }

    async fn find_client_by_key(
        &self,
        hash: &ApiKeyHash,
    ) -> Result<Option<ClientRecord>, StoreError> {
        self.inner.find_client_by_key(hash).await
    }

    async fn list_clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        self.inner.list_clients().await
    }

    async fn revoke_client(&self, name: &str, at: Timestamp) -> Result<bool, StoreError> {
        self.inner.revoke_client(name, at).await
    }

    async fn add_read_counts(&self, counts: &[ReadCount]) -> Result<(), StoreError> {
        self.inner.add_read_counts(counts).await
    }

    async fn read_counts(&self, client_id: Option<i64>) -> Result<Vec<ReadCount>, StoreError> {
        self.inner.read_counts(client_id).await
    }

    async fn key_checks(&self) -> Result<Vec<KeyCheck>, StoreError> {
        self.inner.key_checks().await
    }

    async fn add_key_check(&self, check: &KeyCheck) -> Result<bool, StoreError> {
        self.inner.add_key_check(check).await
    }

    async fn retire_key(&self, key_id: &KeyId, at: Timestamp) -> Result<bool, StoreError> {
        self.inner.retire_key(key_id, at).await
    }

    async fn sealed_cells(
        &self,
        column: SealedColumn,
        not_under: &KeyId,
        limit: u32,
    ) -> Result<Vec<SealedCell>, StoreError> {
        self.inner.sealed_cells(column, not_under, limit).await
    }

    async fn reseal(&self, updates: &[Reseal]) -> Result<u64, StoreError> {
        self.inner.reseal(updates).await
    }

    async fn count_sealed_by_key(&self) -> Result<Vec<(KeyId, u64)>, StoreError> {
        self.inner.count_sealed_by_key().await
    }
}
