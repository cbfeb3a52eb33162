//! Reconciliation: pages `api_get_authorizer_list` and makes the store agree with it (a missing or
//! different refresh token recovered, an unlisted authorizer revoked), never over what events
//! stored meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::{Engine, Inner, RefreshError};
use crate::model::{
    Appid, AuthorizerStatus, ComponentAppid, Credential, Expected, RefreshTokenSource, SaveOutcome,
    SecretSlot,
};

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
    /// Authorizers never described before whose details (kind, nick name …) were fetched.
    pub described: usize,
}

impl Engine {
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
        let stored = inner
            .io
            .store
            .authorizers()
            .load_authorizers(Some(component))
            .await?;
        let mut listed: HashMap<String, Option<SecretString>> = HashMap::new();
        let mut offset = 0u32;
        let total = loop {
            let page = inner
                .io
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
        for record in &stored {
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
                    let ours = inner.io.vault.open_string(slot, &record.refresh_token)?;
                    if ours.expose_secret() != rt.expose_secret() {
                        // Stale: changed since the snapshot (newer than the list); leave it.
                        let expected = Expected::Generation(record.generation);
                        report.recovered += usize::from(
                            inner
                                .recover(component, &record.appid, expected, rt)
                                .await?,
                        );
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
            report.recovered += usize::from(
                inner
                    .recover(component, &appid, Expected::Absent, rt)
                    .await?,
            );
        }
        report.described = inner.describe_missing(component, &stored).await;
        tracing::info!(component = %component, listed = report.listed, recovered = report.recovered, revoked = report.revoked, described = report.described, "reconciled");
        Ok(report)
    }
}

impl Inner {
    /// Writes the listed refresh token `rt` of `appid`, fenced on `expected` (the snapshot read
    /// before the listing), and refreshes the authorizer at once if it landed. False if the
    /// authorizer changed since the snapshot: what an event stored is newer than the list.
    async fn recover(
        self: &Arc<Self>,
        component: &ComponentAppid,
        appid: &Appid,
        expected: Expected,
        rt: &SecretString,
    ) -> Result<bool, RefreshError> {
        let slot = SecretSlot::RefreshToken { component, appid };
        let sealed = self.io.vault.seal(slot, rt.expose_secret().as_bytes())?;
        let outcome = self
            .save_authorization(
                component,
                appid,
                expected,
                sealed,
                None,
                RefreshTokenSource::Reconcile,
            )
            .await?;
        let saved = matches!(outcome, SaveOutcome::Saved { .. });
        if saved {
            self.schedule_in(&Credential::authorizer(component, appid), Duration::ZERO);
        }
        Ok(saved)
    }
}
