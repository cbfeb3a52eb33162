//! Alerts (SPEC.md rule 5 and 7): an authorizer needs re-authorization or was revoked, the ticket
//! went silent, the daily quota ran out. Each alert is logged at error (appids, codes and classes
//! only, never a secret), counted in a metric and, when configured, POSTed as JSON to a webhook.
//!
//! The webhook never blocks refreshing: alerts go through a bounded queue to one worker task that
//! retries each delivery with backoff; when the queue is full the alert is dropped and counted.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

use crate::model::Timestamp;
use crate::telemetry;

const QUEUE: usize = 1024;
const ATTEMPTS: u32 = 4;
const FIRST_RETRY: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    NeedsReauth,
    Revoked,
    TicketSilence,
    Quota,
    /// WeChat refuses wxtoken's own credentials, IP or permissions (40125, 40164, 61004, 48001 …):
    /// retrying will not help until an operator acts.
    Configuration,
    /// A stored push event can never be applied (code expired or spent, wrong appid, unreadable):
    /// it was marked processed; reconciliation recovers what WeChat still lists.
    EventFailed,
    /// A refresh result failed to store for a reason retrying cannot cure (a constraint, a corrupt
    /// row): it was given up; the credential refreshes again with backoff.
    WriteFailed,
    /// A token wxtoken obtained minutes ago was refused by WeChat: something outside wxtoken
    /// refreshed the appid (another service still holding the appsecret or the refresh token), and
    /// every service using wxtoken's token got 40001 meanwhile. The reason names the reporting
    /// client.
    RogueRefresher,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::NeedsReauth => "needs_reauth",
            AlertKind::Revoked => "revoked",
            AlertKind::TicketSilence => "ticket_silence",
            AlertKind::Quota => "quota",
            AlertKind::Configuration => "configuration",
            AlertKind::EventFailed => "event_failed",
            AlertKind::WriteFailed => "write_failed",
            AlertKind::RogueRefresher => "rogue_refresher",
        }
    }
}

/// One alert, as POSTed to the webhook.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub component_appid: String,
    pub appid: Option<String>,
    /// Errcode and class or event name; never a secret.
    pub reason: String,
    /// RFC 3339.
    pub at: String,
}

impl Alert {
    pub fn new(
        kind: AlertKind,
        component: &str,
        appid: Option<&str>,
        reason: impl Into<String>,
        at: Timestamp,
    ) -> Self {
        Self {
            kind,
            component_appid: component.to_owned(),
            appid: appid.map(str::to_owned),
            reason: reason.into(),
            at: at.to_string(),
        }
    }
}

/// Where alerts go. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Alerts {
    webhook: Option<mpsc::Sender<Alert>>,
    /// The latest alerts of this process, newest last (the dashboard shows them).
    recent: std::sync::Arc<parking_lot::Mutex<std::collections::VecDeque<Alert>>>,
}

/// How many alerts [`Alerts::recent`] keeps.
const RECENT: usize = 50;

impl Alerts {
    /// Log and metric only.
    pub fn log_only() -> Self {
        Self::default()
    }

    /// Also POSTs every alert to `webhook`, from a worker on `tracker` that stops on `cancel`.
    pub fn spawn(webhook: Option<Url>, tracker: &TaskTracker, cancel: CancellationToken) -> Self {
        let Some(url) = webhook else {
            return Self::default();
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tracker.spawn(deliver(url, rx, cancel));
        Self {
            webhook: Some(tx),
            recent: Default::default(),
        }
    }

    /// The latest alerts raised in this process (at most 50), newest first.
    pub fn recent(&self) -> Vec<Alert> {
        self.recent.lock().iter().rev().cloned().collect()
    }

    pub fn raise(&self, alert: Alert) {
        tracing::error!(
            kind = alert.kind.as_str(),
            component = %alert.component_appid,
            appid = alert.appid.as_deref().unwrap_or(""),
            reason = %alert.reason,
            "alert"
        );
        metrics::counter!(telemetry::ALERTS_TOTAL, "kind" => alert.kind.as_str()).increment(1);
        {
            let mut recent = self.recent.lock();
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(alert.clone());
        }
        if let Some(tx) = &self.webhook
            && tx.try_send(alert).is_err()
        {
            metrics::counter!(telemetry::ALERT_WEBHOOK_FAILURES_TOTAL).increment(1);
            tracing::warn!("alert webhook queue full or closed; alert dropped");
        }
    }
}

async fn deliver(url: Url, mut rx: mpsc::Receiver<Alert>, cancel: CancellationToken) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "alert webhook client could not be built");
            return;
        }
    };
    loop {
        let alert = tokio::select! {
            _ = cancel.cancelled() => return,
            a = rx.recv() => match a { Some(a) => a, None => return },
        };
        let mut wait = FIRST_RETRY;
        let mut delivered = false;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait *= 2;
            }
            match client.post(url.clone()).json(&alert).send().await {
                Ok(r) if r.status().is_success() => {
                    delivered = true;
                    break;
                }
                Ok(r) => tracing::warn!(status = r.status().as_u16(), "alert webhook refused"),
                // Without the URL: it may carry a secret path.
                Err(e) => tracing::warn!(error = %e.without_url(), "alert webhook failed"),
            }
        }
        if !delivered {
            metrics::counter!(telemetry::ALERT_WEBHOOK_FAILURES_TOTAL).increment(1);
        }
    }
}
