//! Daily quotas per API per appid (45009), the monthly `clear_quota` budget (48006) and the quota
//! query. Days and months follow Beijing time on the simulated clock.

use std::collections::HashMap;

use super::{AppRef, State};
use crate::api::{Api, Owner};
use crate::clock::{Millis, calendar};
use crate::model::TokenKind;
use crate::wxerr::{WxErr, wx};

#[derive(Debug, Default)]
pub(crate) struct QuotaBook {
    day: i64,
    used: HashMap<(Api, AppRef), u32>,
    /// Per appid: (month, resets used that month).
    clears: HashMap<AppRef, (i64, u32)>,
}

/// `openapi/quota/get`'s `quota` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QuotaView {
    pub daily_limit: u32,
    pub used: u32,
    pub remain: u32,
}

impl QuotaBook {
    fn roll(&mut self, now: Millis) {
        let day = calendar::day(now);
        if day != self.day {
            self.day = day;
            self.used.clear();
        }
    }
}

impl State {
    /// Count one call of `api` against `app`'s daily quota; 45009 once the limit is reached.
    pub(crate) fn charge(&mut self, api: Api, app: AppRef, now: Millis) -> Result<(), WxErr> {
        let limit = self.rules.daily_quota[api as usize];
        self.quota.roll(now);
        let used = self.quota.used.entry((api, app)).or_insert(0);
        if limit != 0 && *used >= limit {
            return Err(wx(45009));
        }
        *used += 1;
        Ok(())
    }

    /// Reset `app`'s daily counters; 48006 once the monthly budget is spent.
    pub(crate) fn clear_quota(&mut self, app: AppRef, now: Millis) -> Result<(), WxErr> {
        let month = calendar::month(now);
        let entry = self.quota.clears.entry(app).or_insert((month, 0));
        if entry.0 != month {
            *entry = (month, 0);
        }
        if entry.1 >= self.rules.clear_per_month {
            return Err(wx(48006));
        }
        entry.1 += 1;
        self.quota.roll(now);
        for api in Api::ALL {
            if self.rules.clear_resets_token_apis || !api.issues_tokens() {
                self.quota.used.remove(&(api, app));
            }
        }
        Ok(())
    }

    /// The quota of the API at `cgi_path`, as seen by the owner of a valid token.
    pub(crate) fn quota_view(
        &mut self,
        kind: TokenKind,
        app: AppRef,
        cgi_path: &str,
        now: Millis,
    ) -> Result<QuotaView, WxErr> {
        let path = cgi_path.trim();
        let path = path.split('?').next().unwrap_or(path);
        if path.starts_with("/sns/") {
            return Err(wx(76022));
        }
        let Some(api) = Api::ALL
            .into_iter()
            .find(|a| a.path() == path || a.path().strip_prefix('/') == Some(path))
        else {
            return Err(wx(76021));
        };
        let owner_ok = match api.owner() {
            Owner::Component => kind == TokenKind::Component,
            Owner::Account => kind != TokenKind::Component,
        };
        if !owner_ok {
            return Err(wx(76022));
        }
        self.quota.roll(now);
        let used = self.quota.used.get(&(api, app)).copied().unwrap_or(0);
        let limit = self.rules.daily_quota[api as usize];
        // An unlimited API reports WeChat's "very large" figure rather than 0.
        let daily_limit = if limit == 0 { 100_000_000 } else { limit };
        Ok(QuotaView {
            daily_limit,
            used,
            remain: daily_limit.saturating_sub(used),
        })
    }
}
