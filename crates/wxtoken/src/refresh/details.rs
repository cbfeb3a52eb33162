//! Authorizer details from `api_get_authorizer_info`: the kind (Official Account or Mini
//! Program), nick name, principal name and service type. Asked once an authorization is stored
//! (in the background: the authorization never waits for it) and, for authorizers that were
//! never described (imported, or a failed first ask), by each reconciliation pass, a bounded
//! number at a time.

use std::sync::Arc;

use super::{Engine, Inner, RefreshError};
use crate::model::{AppKind, Appid, AuthorizerDetails, ComponentAppid};

/// Authorizers described per reconciliation pass (each one api_get_authorizer_info call).
pub(crate) const DESCRIBE_PER_PASS: usize = 200;

impl Engine {
    /// Asks WeChat for an authorizer's details and stores them; returns its kind.
    pub async fn describe(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
    ) -> Result<AppKind, RefreshError> {
        self.inner().describe(component, appid).await
    }
}

impl Inner {
    pub(crate) async fn describe(
        self: &Arc<Self>,
        component: &ComponentAppid,
        appid: &Appid,
    ) -> Result<AppKind, RefreshError> {
        let ct = self.ensure_component_token(component).await?;
        let info = self
            .upstream(self.io.client.get_authorizer_info(
                ct.access_token.expose_secret(),
                component.as_str(),
                appid.as_str(),
            ))
            .await?;
        let kind = if info.is_mini_program() {
            AppKind::MiniProgram
        } else {
            AppKind::OfficialAccount
        };
        let a = &info.authorizer_info;
        let details = AuthorizerDetails {
            nick_name: a.nick_name.clone().filter(|s| !s.is_empty()),
            principal_name: a.principal_name.clone().filter(|s| !s.is_empty()),
            service_type: a.service_type_info.as_ref().map(|t| t.id),
            fetched_at: Some(self.io.clock.now()),
        };
        self.io
            .store
            .authorizers()
            .set_authorizer_details(component, appid, kind, &details)
            .await?;
        Ok(kind)
    }

    /// [`Inner::describe`] on the tracker, for a new authorization (a failure is left to the next
    /// reconciliation).
    pub(crate) fn describe_later(self: &Arc<Self>, component: &ComponentAppid, appid: &Appid) {
        let inner = Arc::clone(self);
        let (component, appid) = (component.clone(), appid.clone());
        self.io.tracker.spawn(async move {
            if let Err(e) = inner.describe(&component, &appid).await {
                tracing::info!(%appid, error = %e, "api_get_authorizer_info failed; reconciliation asks again");
            }
        });
    }

    /// Describes up to [`DESCRIBE_PER_PASS`] of `stored` that were never described. Returns how
    /// many were.
    pub(crate) async fn describe_missing(
        self: &Arc<Self>,
        component: &ComponentAppid,
        mut missing: Vec<Appid>,
    ) -> usize {
        let mut described = 0;
        // In a random order: authorizers that keep failing never hold the others back.
        rand::seq::SliceRandom::shuffle(&mut missing[..], &mut rand::rng());
        for appid in missing.into_iter().take(DESCRIBE_PER_PASS) {
            match self.describe(component, &appid).await {
                Ok(_) => described += 1,
                Err(e) => {
                    tracing::info!(appid = %appid, error = %e, "api_get_authorizer_info failed; the next reconciliation asks again");
                }
            }
        }
        described
    }
}
