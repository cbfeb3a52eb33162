//! Cold start: every stored credential loaded into memory and scheduled, overdue ones in waves.

use std::sync::Arc;
use std::time::Duration;

use super::Inner;
use super::direct::ForceBudget;
use crate::model::{AuthorizerStatus, Credential, CredentialKind, NewAccessToken};
use crate::tokens::plan;

/// Credentials loaded overdue at cold start start in waves of `refresh.concurrency`, one wave per
/// this (about one refresh's time), within [`MAX_COLD_SPREAD`] (`plan::cold_start_offset`).
const COLD_START_PER_CALL: Duration = Duration::from_millis(200);
const MAX_COLD_SPREAD: Duration = Duration::from_secs(300);

impl Inner {
    pub(crate) async fn cold_start(self: &Arc<Self>) -> Result<(), super::EngineError> {
        let now = self.io.clock.now();
        for component in self.component.secrets.keys() {
            self.io
                .store
                .components()
                .ensure_component(component, now)
                .await?;
        }
        let mut records = self
            .io
            .store
            .tokens()
            .load_tokens(None, Some(CredentialKind::Component))
            .await?;
        records.extend(
            self.io
                .store
                .tokens()
                .load_tokens(None, Some(CredentialKind::Direct))
                .await?,
        );
        // JS-SDK tickets are served while valid, and refreshed only once read (`tickets.rs`).
        let mut tickets = Vec::new();
        for kind in [CredentialKind::Jsapi, CredentialKind::WxCard] {
            tickets.extend(self.io.store.tokens().load_tokens(None, Some(kind)).await?);
        }
        let stored_budgets = self.io.store.direct().load_force_budgets().await?;
        {
            let mut budgets = self.reports.stable_token.lock();
            for b in stored_budgets {
                budgets.insert(
                    b.credential,
                    ForceBudget {
                        day_start: b.day_start,
                        used: b.used,
                        last: b.last,
                    },
                );
            }
        }
        // Overdue (or token-less) credentials, most urgent first once sorted: no servable token,
        // then by expiry. Valid tokens are served meanwhile; ones not yet due keep their time.
        let mut overdue: Vec<(i64, Credential)> = Vec::new();
        let mut due =
            |inner: &Self, credential: &Credential, token: Option<&NewAccessToken>| match token
                .and_then(|t| t.refresh_at)
            {
                Some(at) if at > now => inner.schedule_at(credential, at),
                _ => {
                    let urgency = token
                        .filter(|t| {
                            plan::servable(
                                now.as_millis(),
                                t.expires_at.as_millis(),
                                inner.config.serve_margin,
                            )
                        })
                        .map_or(i64::MIN, |t| t.expires_at.as_millis());
                    overdue.push((urgency, credential.clone()));
                }
            };
        for record in records {
            let credential = record.credential;
            if !self.component.secrets.contains_key(&credential.component) {
                continue;
            }
            self.cache.slot(&credential);
            if let Some(stored) = &record.token {
                self.publish_stored(&credential, record.generation, stored)?;
            }
            due(self, &credential, record.token.as_ref());
        }
        for record in tickets {
            if let Some(stored) = &record.token
                && self
                    .component
                    .secrets
                    .contains_key(&record.credential.component)
            {
                self.publish_stored(&record.credential, record.generation, stored)?;
            }
        }
        // Authorizers as the store reads them (a million are never a list in memory).
        let mut failed = None;
        self.io
            .store
            .authorizers()
            .scan_authorizer_states(&mut |state| {
                if failed.is_some() {
                    return;
                }
                let credential = Credential::authorizer(&state.component, &state.appid);
                let slot = self.cache.slot(&credential);
                slot.set_status(state.status, state.status_reason.as_deref().unwrap_or(""));
                if let Some(stored) = &state.token
                    && let Err(e) = self.publish_stored(&credential, state.generation, stored)
                {
                    failed = Some(e);
                    return;
                }
                let refreshable = state.status == AuthorizerStatus::Active || state.has_appsecret;
                if self.component.secrets.contains_key(&state.component) && refreshable {
                    due(self, &credential, state.token.as_ref());
                } else {
                    self.unschedule(&credential);
                }
            })
            .await?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        overdue.sort_by_key(|(urgency, _)| *urgency);
        let n = overdue.len();
        let concurrency = self.config.concurrency.max(1);
        for (i, (_, credential)) in overdue.iter().enumerate() {
            let offset =
                plan::cold_start_offset(i, n, concurrency, COLD_START_PER_CALL, MAX_COLD_SPREAD);
            self.schedule_in(credential, offset);
        }
        if n > 0 {
            tracing::info!(
                overdue = n,
                spread_ms = plan::cold_start_offset(
                    n - 1,
                    n,
                    concurrency,
                    COLD_START_PER_CALL,
                    MAX_COLD_SPREAD
                )
                .as_millis() as u64,
                "cold start: overdue credentials spread out"
            );
        }
        tracing::info!(credentials = self.cache.len(), "cold start loaded");
        Ok(())
    }
}
