//! [`SimControl`]: the control API as Rust methods, for tests and for `wxtoken demo`. The HTTP
//! control API (`control`) is a thin layer over these same methods, so both behave identically.

use std::sync::Arc;
use std::time::Duration;

use crate::faults::{ActiveRule, FaultSet};
use crate::model::{
    AccountInfo, AccountKind, AccountSpec, AuthorizeOutcome, AuthorizerView, BulkAuthorizer,
    ComponentInfo, ComponentSpec, ControlError, UnauthorizeOutcome, Validation,
};
use crate::push::{self, PushEvent};
use crate::sim::Sim;
use crate::state::check_push_url;
use crate::stats::StatsSnapshot;

/// A cheap, cloneable handle on a running simulator's state.
#[derive(Clone, Debug)]
pub struct SimControl {
    pub(crate) sim: Arc<Sim>,
}

fn not_found(what: &str, appid: &str) -> ControlError {
    ControlError::NotFound(format!("no {what} with appid {appid}"))
}

impl SimControl {
    /// The simulator's base URL, e.g. `http://127.0.0.1:39017`.
    pub fn base_url(&self) -> &str {
        &self.sim.base_url
    }

    /// Create a component and start its push task (a first ticket is issued and pushed at once
    /// when it has a `push_url`).
    pub fn create_component(&self, spec: ComponentSpec) -> Result<ComponentInfo, ControlError> {
        let now = self.sim.clock.now_ms();
        let (id, info, ticket) = {
            let mut st = self.sim.state.lock();
            let id = st.create_component(spec, now)?;
            let info = st.component_info(id);
            let ticket = info.latest_ticket.clone().unwrap_or_default();
            (id, info, ticket)
        };
        push::spawn_worker(&self.sim, id);
        push::enqueue_ticket(&self.sim, id, ticket);
        Ok(info)
    }

    pub fn component(&self, component_appid: &str) -> Result<ComponentInfo, ControlError> {
        let st = self.sim.state.lock();
        let id = st
            .component_id(component_appid)
            .ok_or_else(|| not_found("component", component_appid))?;
        Ok(st.component_info(id))
    }

    pub fn components(&self) -> Vec<ComponentInfo> {
        let st = self.sim.state.lock();
        (0..st.components.len() as u32)
            .map(|id| st.component_info(id))
            .collect()
    }

    /// Change (or remove, with `None`) where a component's events are pushed.
    pub fn set_push_url(
        &self,
        component_appid: &str,
        push_url: Option<String>,
    ) -> Result<ComponentInfo, ControlError> {
        if let Some(u) = &push_url {
            check_push_url(u)?;
        }
        let mut st = self.sim.state.lock();
        let id = st
            .component_id(component_appid)
            .ok_or_else(|| not_found("component", component_appid))?;
        st.components[id as usize].push_url = push_url.map(Into::into);
        Ok(st.component_info(id))
    }

    /// The latest `component_verify_ticket` of a component.
    pub fn latest_ticket(&self, component_appid: &str) -> Result<String, ControlError> {
        self.component(component_appid)?
            .latest_ticket
            .ok_or_else(|| ControlError::NotFound("no ticket issued yet".into()))
    }

    /// Issue a ticket now and push it (to one component, or every component with `None`).
    /// Returns `(component_appid, ticket)` pairs.
    pub fn push_ticket(
        &self,
        component_appid: Option<&str>,
    ) -> Result<Vec<(String, String)>, ControlError> {
        let now = self.sim.clock.now_ms();
        let issued: Vec<(u32, String, String)> = {
            let mut st = self.sim.state.lock();
            let ids: Vec<u32> = match component_appid {
                Some(a) => vec![
                    st.component_id(a)
                        .ok_or_else(|| not_found("component", a))?,
                ],
                None => (0..st.components.len() as u32).collect(),
            };
            ids.into_iter()
                .map(|id| {
                    let t = st.issue_ticket(id, now);
                    (id, st.components[id as usize].appid.to_string(), t)
                })
                .collect()
        };
        let mut out = Vec::with_capacity(issued.len());
        for (id, appid, ticket) in issued {
            push::enqueue_ticket(&self.sim, id, ticket.clone());
            out.push((appid, ticket));
        }
        Ok(out)
    }

    pub fn create_account(&self, spec: AccountSpec) -> Result<AccountInfo, ControlError> {
        let mut st = self.sim.state.lock();
        let id = st.create_account(spec)?;
        Ok(st.account_info(id))
    }

    pub fn account(&self, appid: &str) -> Result<AccountInfo, ControlError> {
        let st = self.sim.state.lock();
        let id = st
            .account_id(appid)
            .ok_or_else(|| not_found("account", appid))?;
        Ok(st.account_info(id))
    }

    /// Accounts, optionally of one kind, at most `limit` of them (in creation order).
    pub fn accounts(&self, kind: Option<AccountKind>, limit: usize) -> Vec<AccountInfo> {
        let st = self.sim.state.lock();
        (0..st.accounts.len() as u32)
            .filter(|id| kind.is_none_or(|k| st.accounts[*id as usize].kind == k))
            .take(limit)
            .map(|id| st.account_info(id))
            .collect()
    }

    /// Authorize (or re-authorize) an account, as if its admin approved the consent page, and push
    /// `authorized` (or `updateauthorized`).
    pub fn authorize(
        &self,
        appid: &str,
        component_appid: &str,
    ) -> Result<AuthorizeOutcome, ControlError> {
        self.authorize_with(appid, component_appid, None)
    }

    pub(crate) fn authorize_with(
        &self,
        appid: &str,
        component_appid: &str,
        pre_auth_code: Option<String>,
    ) -> Result<AuthorizeOutcome, ControlError> {
        let now = self.sim.clock.now_ms();
        let (cid, outcome) = {
            let mut st = self.sim.state.lock();
            let cid = st
                .component_id(component_appid)
                .ok_or_else(|| not_found("component", component_appid))?;
            let account = st
                .account_id(appid)
                .ok_or_else(|| not_found("account", appid))?;
            (cid, st.authorize(account, cid, pre_auth_code, now))
        };
        push::enqueue(&self.sim, cid, PushEvent::Authorization(outcome.clone()));
        Ok(outcome)
    }

    /// Revoke an authorization, as the merchant does from WeChat, and push `unauthorized`.
    pub fn unauthorize(
        &self,
        appid: &str,
        component_appid: &str,
    ) -> Result<UnauthorizeOutcome, ControlError> {
        let (cid, outcome) = {
            let mut st = self.sim.state.lock();
            let cid = st
                .component_id(component_appid)
                .ok_or_else(|| not_found("component", component_appid))?;
            let account = st
                .account_id(appid)
                .ok_or_else(|| not_found("account", appid))?;
            (cid, st.unauthorize(account, cid)?)
        };
        push::enqueue(
            &self.sim,
            cid,
            PushEvent::Unauthorized {
                authorizer_appid: outcome.authorizer_appid.clone(),
            },
        );
        Ok(outcome)
    }

    /// Create and authorize `count` accounts at once (codes already exchanged, nothing pushed);
    /// returns their refresh tokens. For benchmarks and imports.
    pub fn bulk_authorize(
        &self,
        component_appid: &str,
        count: usize,
        kind: AccountKind,
    ) -> Result<Vec<BulkAuthorizer>, ControlError> {
        if count > 1_000_000 {
            return Err(ControlError::Invalid(
                "count must be at most 1000000".into(),
            ));
        }
        let now = self.sim.clock.now_ms();
        let mut st = self.sim.state.lock();
        let cid = st
            .component_id(component_appid)
            .ok_or_else(|| not_found("component", component_appid))?;
        Ok(st.bulk_authorize(cid, count, kind, now))
    }

    /// What the simulator holds for an authorizer (current refresh token, status, ...).
    pub fn authorizer(
        &self,
        component_appid: &str,
        appid: &str,
    ) -> Result<AuthorizerView, ControlError> {
        let st = self.sim.state.lock();
        let cid = st
            .component_id(component_appid)
            .ok_or_else(|| not_found("component", component_appid))?;
        let account = st
            .account_id(appid)
            .ok_or_else(|| not_found("account", appid))?;
        st.authorizer_view(cid, account).ok_or_else(|| {
            ControlError::NotFound(format!("{appid} never authorized {component_appid}"))
        })
    }

    /// Retires every current access token of the account `appid` at once (its authorizer tokens
    /// under every component, its own and stable tokens): the next call with one answers 40001,
    /// as after a refresh elsewhere once the overlap is over. Returns how many token series.
    pub fn retire_tokens(&self, appid: &str) -> Result<usize, ControlError> {
        let mut st = self.sim.state.lock();
        let account = st
            .account_id(appid)
            .ok_or_else(|| not_found("account", appid))?;
        Ok(st.retire_account_tokens(account))
    }

    /// Whether a token would be accepted right now, and why not.
    pub fn validate(&self, access_token: &str) -> Validation {
        let now = self.sim.clock.now_ms();
        self.sim.state.lock().validation(access_token, now)
    }

    /// Whether a jsapi / wx_card ticket works right now, and why not.
    pub fn validate_ticket(&self, ticket: &str) -> Validation {
        let now = self.sim.clock.now_ms();
        self.sim.state.lock().ticket_validation(ticket, now)
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.sim.stats.snapshot(None)
    }

    /// Stats with the per-appid section restricted to one appid.
    pub fn stats_for(&self, appid: &str) -> StatsSnapshot {
        self.sim.stats.snapshot(Some(appid))
    }

    pub fn reset_stats(&self) {
        self.sim.stats.reset(self.sim.clock.now_ms());
    }

    pub fn set_faults(&self, set: FaultSet) -> Result<(), ControlError> {
        self.sim.faults.set(set)
    }

    pub fn faults(&self) -> Vec<ActiveRule> {
        self.sim.faults.list()
    }

    pub fn clear_faults(&self) {
        self.sim.faults.clear();
    }

    /// Move the simulated clock forward (tokens, tickets, codes and quotas all follow it).
    pub fn advance_clock(&self, by: Duration) {
        self.sim.clock.advance(by);
    }

    /// Simulated now, Unix seconds.
    pub fn now(&self) -> i64 {
        self.sim.clock.now_ms().div_euclid(1000)
    }

    /// How far the simulated clock is ahead of real time.
    pub fn clock_offset(&self) -> Duration {
        self.sim.clock.offset()
    }

    /// Pushes finished (delivered, failed, skipped or cancelled) since start.
    pub fn pushes_finished(&self) -> u64 {
        self.sim.stats.pushes_finished()
    }

    /// Answers issued and being held back right now by a `hold_answer` fault: a caller that
    /// dies now never learns what was issued (a rotated refresh token, a new access token).
    pub fn answers_held(&self) -> u64 {
        self.sim.stats.answers_held()
    }

    /// Wait until at least `n` answers are being held at once (no polling, no sleeps): the
    /// moment to kill a caller for a test of the window after issue and before delivery.
    pub async fn wait_answers_held(&self, n: u64) {
        self.sim.stats.wait_answers_held(n).await;
    }

    /// Wait until at least `n` pushes have finished since start (no polling, no sleeps).
    pub async fn wait_pushes_finished(&self, n: u64) {
        self.sim.stats.wait_pushes_finished(n).await;
    }
}
