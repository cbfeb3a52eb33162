//! Direct accounts (the account's own appid+appsecret): `stable_token` or `cgi-bin/token`, and the
//! stored daily budget for forced refreshes.

use std::sync::Arc;
use std::time::Duration;

use super::{Inner, Mode, Outcome, RefreshError};
use crate::config::DirectTokenApi;
use crate::model::{Credential, ForceBudgetRecord, SecretSlot, Timestamp};

/// stable_token `force_refresh` budget of one account (wechat-protocol.md §6.2): 20 a day, 30 s
/// apart.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ForceBudget {
    pub(crate) day_start: Timestamp,
    pub(crate) used: u32,
    pub(crate) last: Option<Timestamp>,
}

/// Every direct account's budget, by credential.
pub(crate) type ForceBudgets =
    parking_lot::Mutex<std::collections::HashMap<Credential, ForceBudget>>;

pub(crate) const FORCE_PER_DAY: u32 = 20;
pub(crate) const FORCE_MIN_GAP: Duration = Duration::from_secs(30);

impl Inner {
    pub(super) async fn refresh_direct(
        self: &Arc<Self>,
        credential: &Credential,
        mode: &Mode,
    ) -> Outcome {
        let (component, appid) = (&credential.component, &credential.appid);
        let account = self
            .io
            .store
            .direct()
            .get_direct_account(component, appid)
            .await?
            .ok_or(RefreshError::Unknown)?;
        let secret = self.io.vault.open_string(
            SecretSlot::DirectAppsecret { component, appid },
            &account.appsecret,
        )?;
        // The generation this refresh is computed from, read before WeChat is asked: a write that
        // lands meanwhile (another replica, an operator) makes ours stale instead of being overwritten.
        let generation = self
            .io
            .stored_generation(credential)
            .await?
            .unwrap_or(account.generation);
        // Only stable_token has a force budget; every cgi-bin/token call issues a new token.
        let force = matches!(mode, Mode::Forced { .. })
            && self.config.direct_token_api == DirectTokenApi::StableToken
            && self.take_force_budget(credential).await;
        self.save_own_token(credential, generation, &secret, force)
            .await
    }

    /// Takes one `force_refresh` from the account's budget (20 a day, 30 s apart). The budget is
    /// stored before WeChat is asked, so a restart does not reset it; if the store cannot take it,
    /// the in-memory budget still counts (logged).
    async fn take_force_budget(&self, credential: &Credential) -> bool {
        let now = self.io.clock.now();
        let day = Duration::from_secs(86_400);
        let taken = {
            let mut budgets = self.reports.stable_token.lock();
            let b = budgets.entry(credential.clone()).or_insert(ForceBudget {
                day_start: now,
                used: 0,
                last: None,
            });
            if now.as_millis() - b.day_start.as_millis() >= day.as_millis() as i64 {
                *b = ForceBudget {
                    day_start: now,
                    used: 0,
                    last: None,
                };
            }
            let too_soon = b.last.is_some_and(|l| {
                now.as_millis() - l.as_millis() < FORCE_MIN_GAP.as_millis() as i64
            });
            if b.used >= FORCE_PER_DAY || too_soon {
                None
            } else {
                b.used += 1;
                b.last = Some(now);
                Some(*b)
            }
        };
        let Some(b) = taken else {
            tracing::warn!(
                "force_refresh budget exhausted or too soon; normal stable_token instead"
            );
            return false;
        };
        let record = ForceBudgetRecord {
            credential: credential.clone(),
            day_start: b.day_start,
            used: b.used,
            last: b.last,
        };
        if let Err(e) = self.io.store.direct().save_force_budget(&record).await {
            tracing::warn!(error = %e, "force_refresh budget not stored; counted in memory only");
        }
        true
    }
}
