//! Recovering an authorizer's refresh token after WeChat refused it (61023 and the other
//! re-authorization codes), SPEC.md rule 5. The rules, each enforced here and nowhere else:
//!
//! 1. **The store first.** If the stored authorizer changed since the refused refresh read it
//!    (another replica stored a rotated token, a re-authorization landed), its refresh token is
//!    newer than the refused one: retry with it, no listing needed.
//! 2. **Only a fresh listing.** `api_get_authorizer_list` is consulted only through a paging that
//!    *started after* WeChat's refusal ([`Listings::fetch`]): a listing fetched before it may show a
//!    refresh token from before a rotation that the refused request's replica never stored. One
//!    paging per component at a time is shared by every recovery that can use it.
//! 3. **Never backwards.** A listed refresh token is written over the stored one only if it is not
//!    one this authorizer already moved past: the refused token itself, or any refresh token the
//!    history shows WeChat replaced (by a rotation or a re-authorization). A listing showing such
//!    a token is stale, and the recovery is retried later (a transient failure), never treated as
//!    lost.
//! 4. **Lost only on evidence.** The authorizer is marked `needs_reauth` only when a fresh listing
//!    shows it absent, never exchanged, or holding exactly the refresh token just refused.
//!
//! Depends on `store`, `vault` and the engine's upstream client.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use wechat::errcode::ErrorClass;

use super::{Inner, RefreshError};
use crate::model::{
    Appid, AuthorizerRecord, AuthorizerStatus, ComponentAppid, Credential, Expected,
    RefreshTokenSource, SaveOutcome, Sealed, SecretSlot,
};
use crate::tokens::flight::SingleFlight;

/// Recoveries one refresh attempts before it fails (transiently) instead: each is a refusal of a
/// refresh token the store or a fresh listing offered.
pub(crate) const MAX_RECOVERIES: u32 = 3;
/// Pagings one recovery waits through for a listing that started after its refusal (it may join
/// one already under way, which started before).
const LISTING_ROUNDS: u32 = 3;

/// What api_get_authorizer_list showed: appid → its refresh token (None: authorized, never
/// exchanged).
pub(crate) type Listing = HashMap<String, Option<SecretString>>;

/// One paging of the list, with when it started.
#[derive(Clone)]
struct Paged {
    started: Instant,
    listing: Arc<Listing>,
}

/// The listings of each component: one paging at a time, shared by every recovery whose refusal
/// it postdates, and the newest kept for recoveries arriving just after it.
pub(crate) struct Listings {
    flights: SingleFlight<ComponentAppid, Result<Paged, RefreshError>>,
    newest: Mutex<HashMap<ComponentAppid, Paged>>,
}

impl Listings {
    pub(crate) fn new(tracker: tokio_util::task::TaskTracker) -> Self {
        Self {
            flights: SingleFlight::new(tracker),
            newest: Mutex::default(),
        }
    }

    fn newest_since(&self, component: &ComponentAppid, since: Instant) -> Option<Arc<Listing>> {
        self.newest
            .lock()
            .get(component)
            .filter(|p| p.started >= since)
            .map(|p| Arc::clone(&p.listing))
    }
}

/// A refresh token to retry with.
pub(crate) struct Found {
    pub(crate) generation: u64,
    pub(crate) sealed: Sealed,
    pub(crate) refresh_token: SecretString,
}

/// What a recovery concluded.
pub(crate) enum Recovered {
    /// Retry the refresh with this refresh token (from the store, or from a fresh listing and now
    /// stored).
    Use(Found),
    /// The authorizer is no longer active in the store (revoked or marked meanwhile).
    Inactive(Box<AuthorizerRecord>),
    /// A fresh listing proves the authorization is lost.
    Lost,
}

impl Inner {
    /// After WeChat refused the stored refresh token `refused` at `refused_at`: the rules in this
    /// module's doc, in order.
    pub(crate) async fn recover_refresh_token(
        self: &Arc<Self>,
        credential: &Credential,
        refused: &SecretString,
        refused_at: Instant,
    ) -> Result<Recovered, RefreshError> {
        let (component, appid) = (&credential.component, &credential.appid);
        let slot = SecretSlot::RefreshToken { component, appid };
        let mut record = self.stored_authorizer(component, appid).await?;
        for _ in 0..MAX_RECOVERIES {
            if record.status != AuthorizerStatus::Active {
                return Ok(Recovered::Inactive(Box::new(record)));
            }
            // Rule 1: the store moved on since the refused read.
            let stored = self.io.vault.open_string(slot, &record.refresh_token)?;
            if stored.expose_secret() != refused.expose_secret() {
                return Ok(Recovered::Use(Found {
                    generation: record.generation,
                    sealed: record.refresh_token,
                    refresh_token: stored,
                }));
            }
            // Rules 2 and 4.
            let listing = self.fresh_listing(component, refused_at).await?;
            let Some(Some(listed)) = listing.get(appid.as_str()) else {
                return Ok(Recovered::Lost);
            };
            if listed.expose_secret() == refused.expose_secret() {
                return Ok(Recovered::Lost);
            }
            // Rule 3.
            if self.moved_past(component, appid, listed).await? {
                return Err(RefreshError::Upstream {
                    class: ErrorClass::Transient,
                    detail: "api_get_authorizer_list shows a refresh token this authorizer \
                             already moved past; recovery retried later"
                        .into(),
                });
            }
            let sealed = self
                .io
                .vault
                .seal(slot, listed.expose_secret().as_bytes())?;
            match self
                .save_authorization(
                    component,
                    appid,
                    Expected::Generation(record.generation),
                    sealed.clone(),
                    None,
                    RefreshTokenSource::Reconcile,
                )
                .await?
            {
                SaveOutcome::Saved { generation } => {
                    tracing::warn!("refresh token recovered from a fresh api_get_authorizer_list");
                    return Ok(Recovered::Use(Found {
                        generation,
                        sealed,
                        refresh_token: SecretString::from(listed.expose_secret().to_owned()),
                    }));
                }
                // Something landed meanwhile: start over from what is stored now.
                SaveOutcome::Stale { .. } => {
                    record = self.stored_authorizer(component, appid).await?;
                }
                SaveOutcome::Missing => return Err(RefreshError::Unknown),
            }
        }
        Err(RefreshError::Storage(
            "the authorizer kept changing during recovery; retried later".into(),
        ))
    }

    async fn stored_authorizer(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
    ) -> Result<AuthorizerRecord, RefreshError> {
        self.io
            .store
            .authorizers()
            .get_authorizer(component, appid)
            .await?
            .ok_or(RefreshError::Unknown)
    }

    /// Whether `candidate` is a refresh token WeChat itself replaced for this authorizer: an
    /// applied history entry followed by an applied one WeChat issued in exchange (a rotation by
    /// `api_authorizer_token`, a re-authorization by `api_query_auth`). WeChat never takes such a
    /// token back once its overlap is over, so going back to it would undo the rotation. (A token
    /// replaced by an import or a recovery is not: the operator or the list may have been wrong
    /// then, and WeChat may still hold it. An entry of a write that lost its fence is not either:
    /// WeChat may have issued it after the stored one.)
    pub(crate) async fn moved_past(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
        candidate: &SecretString,
    ) -> Result<bool, RefreshError> {
        let history = self.io.history(component, appid).await?;
        let applied: Vec<_> = history.iter().filter(|h| h.applied).collect();
        let slot = SecretSlot::RefreshToken { component, appid };
        for pair in applied.windows(2) {
            let (old, next) = (pair[0], pair[1]);
            let issued_in_exchange = matches!(
                next.source,
                RefreshTokenSource::Refresh | RefreshTokenSource::QueryAuth
            );
            if !issued_in_exchange {
                continue;
            }
            let old = self.io.vault.open_string(slot, &old.refresh_token)?;
            if old.expose_secret() == candidate.expose_secret() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A listing of `component` whose paging started at or after `since`: the newest kept one if
    /// it qualifies, else one paging shared with every other recovery (waiting out one already
    /// under way that started too early).
    pub(crate) async fn fresh_listing(
        self: &Arc<Self>,
        component: &ComponentAppid,
        since: Instant,
    ) -> Result<Arc<Listing>, RefreshError> {
        for _ in 0..LISTING_ROUNDS {
            if let Some(listing) = self.listings.newest_since(component, since) {
                return Ok(listing);
            }
            let inner = Arc::clone(self);
            let key = component.clone();
            let paged = self
                .listings
                .flights
                .run(component.clone(), move || async move {
                    let started = Instant::now();
                    let listing = inner.page_listing(&key).await?;
                    let paged = Paged { started, listing };
                    // Kept before the flight answers, so a recovery arriving just after finds it.
                    let mut newest = inner.listings.newest.lock();
                    if newest.get(&key).is_none_or(|p| p.started < started) {
                        newest.insert(key, paged.clone());
                    }
                    Ok(paged)
                })
                .await
                .unwrap_or(Err(RefreshError::Abandoned))?;
            if paged.started >= since {
                return Ok(paged.listing);
            }
        }
        Err(RefreshError::Upstream {
            class: ErrorClass::Transient,
            detail: "no fresh api_get_authorizer_list paging completed".into(),
        })
    }

    async fn page_listing(
        self: &Arc<Self>,
        component: &ComponentAppid,
    ) -> Result<Arc<Listing>, RefreshError> {
        let ct = self.ensure_component_token(component).await?;
        let mut listing = Listing::new();
        let mut offset = 0u32;
        loop {
            let page = self
                .upstream(self.io.client.get_authorizer_list(
                    ct.access_token.expose_secret(),
                    component.as_str(),
                    offset,
                    wechat::wire::AUTHORIZER_LIST_MAX_COUNT,
                ))
                .await?;
            for item in &page.list {
                let rt = item
                    .non_empty_refresh_token()
                    .map(|s| SecretString::from(s.to_owned()));
                listing.insert(item.authorizer_appid.clone(), rt);
            }
            let n = u32::try_from(page.list.len()).unwrap_or(u32::MAX);
            offset = offset.saturating_add(n);
            if n == 0 || u64::from(offset) >= page.total_count {
                return Ok(Arc::new(listing));
            }
        }
    }
}
