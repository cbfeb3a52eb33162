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

/// An authorizer as the snapshot before the listing held it.
struct Snapshot {
    generation: u64,
    status: AuthorizerStatus,
    /// SHA-256 of its refresh token (compared, never kept in the clear).
    refresh_token: [u8; 32],
    /// api_get_authorizer_info was asked.
    described: bool,
    /// The list named it.
    listed: bool,
}

fn digest(s: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).into()
}

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
        // The snapshot precedes the list: anything stored later carries a newer generation. Its
        // refresh tokens are kept as digests (a million authorizers: tens of megabytes, not the
        // records), and each listed one is compared as its page arrives.
        let mut snapshot: HashMap<Appid, Snapshot> = HashMap::new();
        let mut failed = None;
        inner
            .io
            .store
            .authorizers()
            .scan_authorizer_states(&mut |state| {
                if state.component != *component || failed.is_some() {
                    return;
                }
                let slot = SecretSlot::RefreshToken {
                    component,
                    appid: &state.appid,
                };
                match inner.io.vault.open_string(slot, &state.refresh_token) {
                    Ok(rt) => {
                        let entry = Snapshot {
                            generation: state.generation,
                            status: state.status,
                            refresh_token: digest(rt.expose_secret()),
                            described: state.described,
                            listed: false,
                        };
                        snapshot.insert(state.appid, entry);
                    }
                    Err(e) => failed = Some(e),
                }
            })
            .await?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        // Listed refresh tokens that differ from the snapshot's (or of authorizers it lacks):
        // the last listing of an appid wins, as a later page is the newer list.
        let mut differing: HashMap<Appid, SecretString> = HashMap::new();
        let mut unknown: HashMap<Appid, Option<SecretString>> = HashMap::new();
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
                let Ok(appid) = Appid::parse(&item.authorizer_appid) else {
                    continue;
                };
                let rt = item.non_empty_refresh_token();
                match snapshot.get_mut(&appid) {
                    Some(entry) => {
                        entry.listed = true;
                        match rt {
                            Some(rt) if digest(rt) != entry.refresh_token => {
                                differing.insert(appid, SecretString::from(rt.to_owned()));
                            }
                            _ => {
                                differing.remove(&appid);
                            }
                        }
                    }
                    None => {
                        unknown.insert(appid, rt.map(|rt| SecretString::from(rt.to_owned())));
                    }
                }
            }
            offset = offset.saturating_add(n);
            if n == 0 || u64::from(offset) >= page.total_count {
                break page.total_count;
            }
            tokio::time::sleep(LIST_PAGE_PAUSE).await;
        };
        after_listing.await;
        let listed = snapshot.values().filter(|e| e.listed).count() + unknown.len();
        let mut report = ReconcileReport {
            listed,
            ..ReconcileReport::default()
        };
        // A list that shrank while we paged is incomplete: never revoke from it.
        let complete = listed as u64 >= total;
        if complete {
            for (appid, entry) in &snapshot {
                if entry.listed || entry.status == AuthorizerStatus::Revoked {
                    continue;
                }
                let credential = Credential::authorizer(component, appid);
                let revoked = inner
                    .revoke_fenced(
                        &credential,
                        entry.generation,
                        "not listed by api_get_authorizer_list",
                    )
                    .await?;
                report.revoked += usize::from(revoked);
            }
        }
        for (appid, rt) in &differing {
            // Stale if it changed since the snapshot (newer than the list): then it is left.
            let expected = Expected::Generation(snapshot[appid].generation);
            report.recovered += usize::from(inner.recover(component, appid, expected, rt).await?);
        }
        for (appid, rt) in &unknown {
            let Some(rt) = rt else { continue };
            report.recovered += usize::from(
                inner
                    .recover(component, appid, Expected::Absent, rt)
                    .await?,
            );
        }
        let undescribed: Vec<Appid> = snapshot
            .iter()
            .filter(|(_, e)| !e.described && e.status == AuthorizerStatus::Active)
            .map(|(appid, _)| appid.clone())
            .collect();
        drop(snapshot);
        report.described = inner.describe_missing(component, undescribed).await;
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
