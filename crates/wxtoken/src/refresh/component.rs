//! The component access token: its refresh from the newest stored ticket, the gate that keeps
//! authorizers from each asking for it while it backs off, `api_start_push_ticket`, and the
//! ticket-silence alert.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::time::Instant;
use wechat::errcode::ErrorClass;

use std::collections::{HashMap, HashSet};

use parking_lot::Mutex;
use secrecy::SecretString;

use super::{ComponentSecret, Inner, Mode, Outcome, RefreshError};
use crate::alerts::{Alert, AlertKind};
use crate::model::{ComponentAppid, Credential, SecretSlot, Timestamp, TokenSource};
use crate::tokens::cache::CachedToken;

/// At most one api_start_push_ticket per component per this interval.
pub(crate) const START_PUSH_THROTTLE: std::time::Duration = std::time::Duration::from_secs(600);

/// The configured components and what the engine remembers about each.
pub(crate) struct ComponentState {
    /// Appsecrets from the configuration.
    pub(crate) secrets: HashMap<ComponentAppid, SecretString>,
    /// A component whose token refresh failed: until the instant, authorizers needing its token
    /// get the error without a new api_component_token call (no storm while it backs off).
    pub(crate) gate: Mutex<HashMap<ComponentAppid, (Instant, RefreshError)>>,
    pub(crate) push_ticket_at: Mutex<HashMap<ComponentAppid, Instant>>,
    /// Components whose ticket-silence alert is raised.
    pub(crate) silent_tickets: Mutex<HashSet<ComponentAppid>>,
    /// When this engine started: silence is counted from here when the last ticket is older (a
    /// process that was down heard no push, which says nothing about WeChat's pushes).
    started_at: Timestamp,
    /// How many tickets this process has stored per component (see [`ComponentState::landed`]).
    landings: Mutex<HashMap<ComponentAppid, u64>>,
}

impl ComponentState {
    pub(crate) fn new(components: Vec<ComponentSecret>, started_at: Timestamp) -> Self {
        Self {
            started_at,
            secrets: components
                .into_iter()
                .map(|c| (c.appid, c.appsecret))
                .collect(),
            gate: Mutex::default(),
            push_ticket_at: Mutex::default(),
            silent_tickets: Mutex::default(),
            landings: Mutex::default(),
        }
    }

    /// How many tickets of `component` this process has stored: a flight notes it when it
    /// starts (see [`Inner::ticket_landed_during`]).
    pub(crate) fn landings(&self, component: &ComponentAppid) -> u64 {
        self.landings.lock().get(component).copied().unwrap_or(0)
    }
}

impl Inner {
    /// The component token from the newest stored ticket.
    pub(super) async fn refresh_component(self: &Arc<Self>, credential: &Credential) -> Outcome {
        let component = &credential.component;
        let secret = self
            .component
            .secrets
            .get(component)
            .ok_or_else(|| RefreshError::NotConfigured(component.to_string()))?;
        let Some(ticket) = self.io.store.components().latest_ticket(component).await? else {
            self.kick_ticket(component).await;
            return Err(RefreshError::NoTicket);
        };
        let ticket = self
            .io
            .vault
            .open_string(SecretSlot::Ticket { component }, &ticket.sealed)?;
        let generation = self.io.stored_generation(credential).await?.unwrap_or(0);
        let (resp, sent_at) = match self
            .upstream_timed(self.io.client.component_token(
                component.as_str(),
                secret.expose_secret(),
                ticket.expose_secret(),
            ))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                if e.class() == ErrorClass::Ticket {
                    // Keep the newest stored ticket; ask WeChat to push again.
                    self.kick_ticket(component).await;
                }
                return Err(e.into());
            }
        };
        self.save_token(
            credential,
            generation,
            resp.component_access_token,
            resp.expires_in,
            TokenSource::ComponentToken,
            None,
            sent_at,
        )
        .await
    }

    /// A ticket of `component` is now in the store. If its token is not healthy (waiting for a
    /// ticket, or failing), refresh it at once, and let authorizers waiting on it through the gate.
    pub(crate) fn ticket_landed(&self, component: &ComponentAppid) {
        *self
            .component
            .landings
            .lock()
            .entry(component.clone())
            .or_default() += 1;
        let healthy = self.cache.component(component).is_some_and(|s| {
            s.read(self.io.clock.now(), self.config.serve_margin)
                .is_ok()
        });
        if healthy {
            return;
        }
        let credential = Credential::component(component);
        self.schedule.failures.lock().remove(&credential);
        self.component.gate.lock().remove(component);
        // Its last failure's cause is gone: readers now join the refresh instead of being told
        // to wait for a ticket.
        if let Some(slot) = self.cache.component(component) {
            slot.set_failing(None);
        }
        self.schedule_in(&credential, Duration::ZERO);
    }

    /// A component refresh that started when `component` had had `landings_at_start` tickets
    /// and failed for want of one (none stored, or WeChat refused it) while a ticket landed: it
    /// may have read the store just before the ticket, and the refresh the landing asked for may
    /// have joined it. Refresh again at once, so a refresh that sees the ticket follows.
    pub(crate) fn ticket_landed_during(
        &self,
        credential: &Credential,
        landings_at_start: u64,
        result: &Outcome,
    ) {
        let wanted_ticket = matches!(
            result,
            Err(RefreshError::NoTicket
                | RefreshError::Upstream {
                    class: ErrorClass::Ticket,
                    ..
                })
        );
        if wanted_ticket && self.component.landings(&credential.component) != landings_at_start {
            self.ticket_landed(&credential.component);
        }
    }

    /// `api_start_push_ticket`, at most once per [`START_PUSH_THROTTLE`] per component.
    pub(crate) async fn kick_ticket(&self, component: &ComponentAppid) {
        {
            let mut at = self.component.push_ticket_at.lock();
            if at
                .get(component)
                .is_some_and(|t| t.elapsed() < START_PUSH_THROTTLE)
            {
                return;
            }
            at.insert(component.clone(), Instant::now());
        }
        let Some(secret) = self.component.secrets.get(component) else {
            return;
        };
        match self
            .upstream(
                self.io
                    .client
                    .start_push_ticket(component.as_str(), secret.expose_secret()),
            )
            .await
        {
            Ok(_) => tracing::info!(component = %component, "asked WeChat to push a ticket"),
            Err(e) => {
                tracing::warn!(component = %component, error = %e, "api_start_push_ticket failed")
            }
        }
    }

    /// A servable component token, refreshing it (single flight) if there is none.
    pub(crate) async fn ensure_component_token(
        self: &Arc<Self>,
        component: &ComponentAppid,
    ) -> Result<Arc<CachedToken>, RefreshError> {
        if let Some(slot) = self.cache.component(component)
            && let Ok(token) = slot.read(self.io.clock.now(), self.config.serve_margin)
        {
            return Ok(token);
        }
        self.component_gate_open(component)?;
        self.refresh(Credential::component(component), Mode::Normal)
            .await
    }

    /// `Err` with the component token's last failure while that refresh is backing off: the
    /// component credential retries on its own schedule, and authorizers must not each start
    /// another api_component_token call (a daily-quota storm when thousands wait on it).
    fn component_gate_open(&self, component: &ComponentAppid) -> Result<(), RefreshError> {
        let gate = self.component.gate.lock();
        match gate.get(component) {
            // "No ticket yet" costs no WeChat call to re-check, and another replica may have
            // stored one since: let the refresh (single flight) look again.
            Some((_, RefreshError::NoTicket)) => Ok(()),
            Some((until, error)) if Instant::now() < *until => Err(error.clone()),
            _ => Ok(()),
        }
    }

    /// WeChat rejected `rejected` (a component token): refresh it if it is still the current one.
    pub(crate) async fn replace_component_token(
        self: &Arc<Self>,
        component: &ComponentAppid,
        rejected: &CachedToken,
    ) -> Result<Arc<CachedToken>, RefreshError> {
        if let Some(slot) = self.cache.component(component)
            && let Some(current) = slot.current()
            && current.generation > rejected.generation
        {
            return Ok(current);
        }
        self.component_gate_open(component)?;
        self.refresh(Credential::component(component), Mode::Normal)
            .await
    }

    /// Alerts (once per silence) when a component has had no ticket push for
    /// `ticket_silence_alert`, and asks WeChat to push again.
    /// Returns the components newly alerted.
    pub(crate) async fn check_ticket_silence(&self) -> Vec<ComponentAppid> {
        let now = self.io.clock.now();
        let mut alerted = Vec::new();
        for component in self.component.secrets.keys() {
            let latest = match self.io.store.components().latest_ticket(component).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "ticket check failed");
                    continue;
                }
            };
            let heard = latest.map_or(self.component.started_at, |t| {
                t.received_at.max(self.component.started_at)
            });
            let silent = now.as_millis() - heard.as_millis()
                > self.config.ticket_silence_alert.as_millis() as i64;
            if !silent {
                self.component.silent_tickets.lock().remove(component);
                continue;
            }
            if self
                .component
                .silent_tickets
                .lock()
                .insert(component.clone())
            {
                self.io.alerts.raise(Alert::new(
                    AlertKind::TicketSilence,
                    component.as_str(),
                    None,
                    format!(
                        "no component_verify_ticket push for {}",
                        humantime::format_duration(self.config.ticket_silence_alert)
                    ),
                    now,
                ));
                self.kick_ticket(component).await;
                alerted.push(component.clone());
            }
        }
        alerted
    }
}
