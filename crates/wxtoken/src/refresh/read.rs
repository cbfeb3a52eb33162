//! The read API the HTTP layer uses: a credential's slot, reading it, reading or refreshing it, and
//! the counts behind metrics.

use std::sync::Arc;

use super::{Engine, RefreshError};
use crate::model::{AuthorizerStatus, ComponentAppid, CredentialKind, Timestamp};
use crate::tokens::cache::{CachedToken, ReadError, Slot};

/// Authorizers and direct accounts held, by status (for metrics and the admin API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CredentialCounts {
    pub active: u64,
    pub needs_reauth: u64,
    pub revoked: u64,
    pub direct: u64,
}

impl Engine {
    /// The slot a read of `appid` goes through (see [`Engine::token`]); with [`Engine::read`], lets
    /// the HTTP layer count the read against the slot's credential without a second lookup.
    pub fn slot(&self, component: Option<&str>, appid: &str) -> Result<Arc<Slot>, ReadError> {
        self.inner().cache.find(component, appid)
    }

    /// The token to hand out from `slot` now, or why there is none. No await, no database.
    pub fn read(&self, slot: &Slot) -> Result<Arc<CachedToken>, ReadError> {
        let inner = self.inner();
        slot.read(inner.io.clock.now(), inner.config.serve_margin)
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
                CredentialKind::Component => {}
            });
        counts
    }

    /// The wall-clock now of the engine's clock (token ages and expiries are measured against it).
    pub fn now(&self) -> Timestamp {
        self.inner().io.clock.now()
    }
}
