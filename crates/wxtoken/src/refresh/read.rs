//! The one read path, for the HTTP layer, the CLI's server commands, the demo and the tests:
//! finding a credential's slot (memory, else the store once, else remembered as unknown), reading
//! it, reading or refreshing it, waiting for a newer generation (long-polls); and the counts behind
//! metrics. What may be served is decided by `tokens::cache::Slot::read`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Engine, RefreshError};
use crate::model::{Appid, AuthorizerStatus, ComponentAppid, CredentialKind, Timestamp};
use crate::tokens::cache::{CachedToken, ReadError, Slot};

/// How long an appid that is in neither memory nor the store is remembered as unknown, so a flood
/// of reads of unknown appids cannot become a flood of queries.
const UNKNOWN_APPID_TTL: Duration = Duration::from_secs(5);
/// Bound on remembered unknown appids.
const UNKNOWN_APPID_MAX: usize = 10_000;

/// Authorizers and direct accounts held, by status (for metrics and the admin API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CredentialCounts {
    pub active: u64,
    pub needs_reauth: u64,
    pub revoked: u64,
    pub direct: u64,
}

impl Engine {
    /// The slot a read of `appid` goes through, in memory only: under `component`, or (when `None`)
    /// whichever single component has `appid`. With [`Engine::read`], lets the HTTP layer count
    /// the read against the slot's credential without a second lookup.
    pub fn slot(&self, component: Option<&str>, appid: &str) -> Result<Arc<Slot>, ReadError> {
        self.inner().cache.find(component, appid)
    }

    /// [`Engine::slot`], and an appid memory does not hold is looked up in the store once (an
    /// account added or an authorizer imported by another path while this process runs); if it is
    /// absent there too, it is remembered as unknown for a few seconds.
    pub async fn lookup(
        &self,
        component: Option<&str>,
        appid: &str,
    ) -> Result<Arc<Slot>, ReadError> {
        match self.slot(component, appid) {
            Err(ReadError::Unknown) => {}
            other => return other,
        }
        let cache = &self.inner().cache;
        if cache.recently_unknown(appid, UNKNOWN_APPID_TTL) {
            return Err(ReadError::Unknown);
        }
        let parsed = Appid::parse(appid).map_err(|e| ReadError::Invalid(e.to_string()))?;
        let component = component
            .map(ComponentAppid::parse)
            .transpose()
            .map_err(|e| ReadError::Invalid(format!("component: {e}")))?;
        let found = self
            .load(component.as_ref(), &parsed)
            .await
            .map_err(|e| ReadError::Storage(e.to_string()))?;
        if !found {
            cache.remember_unknown(appid, UNKNOWN_APPID_MAX);
        }
        self.slot(component.as_ref().map(ComponentAppid::as_str), appid)
    }

    /// The token to hand out for an authorizer or direct account now (memory only: [`Engine::slot`]
    /// then [`Engine::read`]).
    pub fn token(
        &self,
        component: Option<&str>,
        appid: &str,
    ) -> Result<Arc<CachedToken>, ReadError> {
        self.read(&*self.slot(component, appid)?)
    }

    /// The component access token now.
    pub fn component_token(
        &self,
        component: &ComponentAppid,
    ) -> Result<Arc<CachedToken>, ReadError> {
        let slot = self
            .inner()
            .cache
            .component(component)
            .ok_or(ReadError::Unknown)?;
        self.read(&slot)
    }

    /// Long-poll: waits until `slot` holds a generation newer than `after`, at most `wait` or until
    /// `cancel` (shutdown), then reads it: the newer token, or on timeout the current one (or why
    /// there is none). Ends at once if a newer generation is already there.
    pub async fn wait_newer(
        &self,
        slot: &Slot,
        after: u64,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<Arc<CachedToken>, ReadError> {
        let mut newer = slot.subscribe();
        tokio::select! {
            // The receiver closes only with the slot, which outlives this borrow.
            _ = tokio::time::timeout(wait, newer.wait_for(|g| *g > after)) => {}
            () = cancel.cancelled() => {}
        }
        self.read(slot)
    }

    /// The token to hand out from `slot` now, or why there is none. No await, no database.
    pub fn read(&self, slot: &Slot) -> Result<Arc<CachedToken>, ReadError> {
        self.read_at(slot, self.inner().io.clock.now())
    }

    /// [`Engine::read`] as of `now` (a pass over the whole cache reads the clock once).
    pub fn read_at(&self, slot: &Slot, now: Timestamp) -> Result<Arc<CachedToken>, ReadError> {
        let inner = self.inner();
        let margin = if slot.credential().kind.is_ticket() {
            inner.config.ticket_serve_margin
        } else {
            inner.config.serve_margin
        };
        slot.read(now, margin)
    }

    /// Like [`Engine::read`], but a credential that has never had a token (just authorized, just
    /// added) is refreshed now (single flight) instead of answering "no token yet". A credential
    /// whose refresh is failing is not: its backoff decides when WeChat is asked again.
    pub async fn read_or_refresh(&self, slot: &Slot) -> Result<Arc<CachedToken>, ReadError> {
        match self.read(slot) {
            Err(ReadError::NoToken { .. })
                if slot.current().is_none() && slot.failing().is_none() =>
            {
                match self.refresh_now(&slot.credential()).await {
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
        let mut list: Vec<_> = self.inner().component.secrets.keys().cloned().collect();
        list.sort();
        list
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
                CredentialKind::Component | CredentialKind::Jsapi | CredentialKind::WxCard => {}
            });
        counts
    }

    /// The wall-clock now of the engine's clock (token ages and expiries are measured against it).
    pub fn now(&self) -> Timestamp {
        self.inner().io.clock.now()
    }
}
