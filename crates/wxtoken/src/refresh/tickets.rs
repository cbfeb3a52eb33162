//! JS-SDK tickets (SPEC.md rule 13): an authorizer's or direct account's `jsapi` ticket and
//! `wx_card` api_ticket, from `cgi-bin/ticket/getticket` with the account's current token. They are
//! credentials like tokens: one single flight, the lease across replicas, fenced writes with
//! generations, sealed at rest, the serve margin (`refresh.ticket_serve_margin`), long-polls and
//! invalidation reports under the same force budget. Three rules of their own, each enforced here:
//!
//! 1. **On demand.** A ticket is fetched at its first read and refreshed ahead of expiry only while
//!    it is read: when a ticket comes due and has not been read for `refresh.ticket_idle`, the
//!    scheduler lets it go ([`Inner::drop_idle_tickets`]); the next read puts it back
//!    ([`Engine::ticket`]). A platform whose JS-SDK pages use 2,000 of its 100,000 accounts makes
//!    about 2,000 getticket calls per ticket lifetime, not 100,000.
//! 2. **The same ticket is not a new one.** WeChat answers getticket with the same ticket while it
//!    is valid, and with `expires_in` the full lifetime again (docs/JSSDK.md), so its real expiry
//!    is the first answer's. An unchanged ticket keeps its first `issued_at` and `expires_at`, and
//!    is next due when it stops being served; a refresh inside that last window waits for the
//!    expiry and asks once more. Whether a new ticket retires the previous one is not documented:
//!    with either behaviour the newest ticket is served, and the previous one is never served again.
//! 3. **The account's token refused** (40001/42001/40014): it is reported like a client's report
//!    (one budgeted refresh, single flight), and getticket is retried once with the new token.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;
use wechat::client::WechatError;
use wechat::errcode::ErrorClass;
use wechat::wire::{TicketKind, TicketResponse};

use super::{Engine, Inner, Outcome, RefreshError};
use crate::model::{
    Credential, CredentialKind, NewAccessToken, SecretSlot, Timestamp, TokenSource,
};
use crate::telemetry;
use crate::tokens::cache::{CachedToken, ReadError, Slot};

/// Who a report of the account's token made by a ticket refresh names (rogue refresher alerts).
const REPORTER: &str = "wxtoken (getticket)";
/// After the ticket's expiry, how long a refresh that got the expiring ticket again waits before
/// asking once more (WeChat's clock and ours differ by this much at most, we assume).
const EXPIRY_SLACK: Duration = Duration::from_secs(1);

/// When each ticket was last read (rule 1), by tokio time, so schedule tests run on paused time.
#[derive(Default)]
pub(crate) struct TicketReads(DashMap<Credential, Instant>);

impl TicketReads {
    /// Records a read now; true if the ticket was idle (never read, or not for `idle`).
    fn note(&self, credential: &Credential, idle: Duration) -> bool {
        let now = Instant::now();
        if let Some(mut at) = self.0.get_mut(credential) {
            let previous = std::mem::replace(&mut *at, now);
            return now.duration_since(previous) >= idle;
        }
        self.0.insert(credential.clone(), now);
        true
    }

    fn idle(&self, credential: &Credential, idle: Duration) -> bool {
        self.0.get(credential).is_none_or(|at| at.elapsed() >= idle)
    }
}

impl Engine {
    /// The `kind` ticket (`Jsapi` or `WxCard`) of the account whose slot `account` is (an
    /// authorizer or direct account, from [`Engine::lookup`]): the ticket held if servable, else
    /// fetched now (single flight; readers of the same ticket share one getticket call). A read
    /// keeps the ticket refreshed ahead of expiry for `refresh.ticket_idle`.
    pub async fn ticket(
        &self,
        account: &Slot,
        kind: CredentialKind,
    ) -> Result<Arc<CachedToken>, ReadError> {
        let slot = self.ticket_slot(account, kind)?;
        let inner = self.inner();
        let credential = slot.credential();
        let woke = inner
            .schedule
            .ticket_reads
            .note(&credential, inner.config.ticket_idle);
        match self.read(&slot) {
            Ok(ticket) => {
                // Let go while idle: back on the schedule (an overdue one comes due at once).
                if woke && inner.scheduled_at(&credential).is_none() {
                    inner.schedule_at(&credential, ticket.refresh_at);
                }
                Ok(ticket)
            }
            // Never fetched, expired while idle, or in its last window: fetch (or join the flight).
            // One whose refresh is failing waits for its backoff, unless it was idle (nothing
            // retries an idle ticket).
            Err(ReadError::NoToken { .. }) if woke || slot.failing().is_none() => {
                match self.refresh_now(&credential).await {
                    Ok(_) => self.read(&slot),
                    Err(RefreshError::Gone { reason }) => Err(ReadError::Gone { reason }),
                    Err(RefreshError::Unknown) => Err(ReadError::Unknown),
                    Err(e) => Err(ReadError::NoToken {
                        reason: e.to_string(),
                    }),
                }
            }
            other => other,
        }
    }

    /// The slot of the `kind` ticket of the account whose slot `account` is (long-polls wait on
    /// it; it is created empty if the ticket was never read).
    pub fn ticket_slot(
        &self,
        account: &Slot,
        kind: CredentialKind,
    ) -> Result<Arc<Slot>, ReadError> {
        let owner = account.credential();
        if !kind.is_ticket()
            || !matches!(
                owner.kind,
                CredentialKind::Authorizer | CredentialKind::Direct
            )
        {
            return Err(ReadError::Invalid(
                "tickets belong to authorizers and direct accounts".into(),
            ));
        }
        Ok(self.inner().cache.slot(&owner.ticket(kind)))
    }
}

impl Inner {
    /// Takes out of `due` the tickets nobody read for `refresh.ticket_idle` (rule 1): they stay
    /// in memory, servable while valid, and off the schedule until the next read.
    pub(crate) fn drop_idle_tickets(&self, due: &mut Vec<Credential>) {
        let idle = self.config.ticket_idle;
        due.retain(|c| {
            let keep = !c.kind.is_ticket() || !self.schedule.ticket_reads.idle(c, idle);
            if !keep {
                tracing::debug!(kind = c.kind.as_str(), appid = %c.appid, "ticket idle: no longer refreshed until read");
            }
            keep
        });
    }

    /// One getticket refresh of a ticket credential (rules 2 and 3).
    pub(super) async fn refresh_ticket(self: &Arc<Self>, credential: &Credential) -> Outcome {
        let kind = match credential.kind {
            CredentialKind::Jsapi => TicketKind::Jsapi,
            CredentialKind::WxCard => TicketKind::WxCard,
            _ => return Err(RefreshError::Unknown),
        };
        let engine = Engine {
            inner: Arc::clone(self),
        };
        // The account it belongs to must still be held (a removed account's ticket is not).
        let account = self
            .cache
            .find(
                Some(credential.component.as_str()),
                credential.appid.as_str(),
            )
            .map_err(|_| RefreshError::Unknown)?;
        // The generation this refresh is computed from, read before WeChat is asked.
        let generation = match self.io.stored_generation(credential).await? {
            Some(generation) => generation,
            None => {
                let tokens = self.io.store.tokens();
                tokens
                    .ensure_ticket(credential, self.io.clock.now())
                    .await?
            }
        };
        let token = account_token(&engine, &account).await?;
        let answer = match self.get_ticket(&token, kind).await {
            Err(WechatError::Api {
                class: ErrorClass::StaleToken,
                ..
            }) => {
                // Rule 3: the account's token was refused. One budgeted refresh of it, once more.
                let reported = token.access_token.expose_secret();
                let fresh = engine
                    .invalidate_for(&account.credential(), reported, Some(REPORTER))
                    .await?;
                self.get_ticket(&fresh, kind).await
            }
            other => other,
        };
        let (answer, sent_at) = answer?;
        self.save_ticket(credential, generation, answer, sent_at, &token, kind)
            .await
    }

    /// Serves and stores getticket's answer: a new ticket as any new token; the held ticket again
    /// with its first expiry kept (rule 2).
    async fn save_ticket(
        self: &Arc<Self>,
        credential: &Credential,
        generation: u64,
        answer: TicketResponse,
        sent_at: Timestamp,
        token: &CachedToken,
        kind: TicketKind,
    ) -> Outcome {
        let held = self.cache.get(credential).and_then(|s| s.current());
        let Some(same) = held.filter(|t| t.is(&answer.ticket)) else {
            return self
                .save_new_ticket(credential, generation, answer, sent_at)
                .await;
        };
        let margin = self.config.ticket_serve_margin;
        let last_window = same.expires_at.minus(margin);
        if last_window > self.io.clock.now() {
            return self
                .save_same_ticket(credential, generation, &same, last_window, answer.ticket)
                .await;
        }
        // Inside its last window: WeChat hands out the next ticket once this one has expired.
        let wait = same.expires_at.as_millis() - self.io.clock.now().as_millis();
        let wait =
            Duration::from_millis(u64::try_from(wait).unwrap_or(0)).min(margin) + EXPIRY_SLACK;
        tokio::time::sleep(wait).await;
        let (again, sent_at) = self.get_ticket(token, kind).await?;
        if same.is(&again.ticket) {
            return Err(RefreshError::Upstream {
                class: ErrorClass::Transient,
                detail: "getticket still answers the expiring ticket".into(),
            });
        }
        self.save_new_ticket(credential, generation, again, sent_at)
            .await
    }

    /// A ticket WeChat just issued: served and stored like any new token.
    async fn save_new_ticket(
        self: &Arc<Self>,
        credential: &Credential,
        generation: u64,
        answer: TicketResponse,
        sent_at: Timestamp,
    ) -> Outcome {
        let source = TokenSource::GetTicket;
        let (ticket, expires_in) = (answer.ticket, answer.expires_in);
        self.save_token(
            credential, generation, ticket, expires_in, source, None, sent_at,
        )
        .await
    }

    /// The held ticket answered again: written at the next generation (so every replica's
    /// schedule moves with it) with its first `issued_at` and `expires_at`, due at `due`.
    async fn save_same_ticket(
        self: &Arc<Self>,
        credential: &Credential,
        generation: u64,
        same: &CachedToken,
        due: Timestamp,
        ticket: String,
    ) -> Outcome {
        let sealed = self
            .io
            .vault
            .seal(SecretSlot::AccessToken { credential }, ticket.as_bytes())?;
        let access = NewAccessToken {
            sealed,
            issued_at: same.issued_at,
            expires_at: same.expires_at,
            refresh_at: Some(due),
            source: TokenSource::GetTicket,
        };
        self.save_access(credential, generation, ticket, access, None)
            .await
    }

    /// One getticket call under the upstream permits, counted by type and outcome.
    async fn get_ticket(
        &self,
        token: &CachedToken,
        kind: TicketKind,
    ) -> Result<(TicketResponse, Timestamp), WechatError> {
        let call = self
            .io
            .client
            .get_ticket(token.access_token.expose_secret(), kind);
        let result = self.upstream_timed(call).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.class().as_str(),
        };
        metrics::counter!(telemetry::GETTICKET_TOTAL, "type" => kind.as_str(), "outcome" => outcome)
            .increment(1);
        result
    }
}

/// The account's token to call getticket with: the one held if servable, else its first refresh
/// (single flight); why there is none otherwise.
async fn account_token(engine: &Engine, account: &Slot) -> Result<Arc<CachedToken>, RefreshError> {
    engine.read_or_refresh(account).await.map_err(|e| match e {
        ReadError::Gone { reason } => RefreshError::Gone { reason },
        ReadError::Unknown => RefreshError::Unknown,
        ReadError::Storage(detail) => RefreshError::Storage(detail),
        other => RefreshError::Upstream {
            class: ErrorClass::Transient,
            detail: format!("the account has no token to fetch a ticket with: {other}"),
        },
    })
}
