//! Pushes to each component's `push_url`: `component_verify_ticket` on a timer and on demand, and
//! `authorized` / `updateauthorized` / `unauthorized` when an account's authorization changes.
//! Encrypted and signed exactly as WeChat does (protocol notes section 2, via
//! `wechat::event::seal_push`); an attempt succeeds only when the receiver answers HTTP 200 with
//! body `success`, otherwise it is retried (`push.attempts`, `push.backoff` doubling).
//!
//! One background task per component, tracked by the simulator's `TaskTracker` and stopped by its
//! `CancellationToken`; handlers only enqueue (an unbounded channel), so pushing never blocks an
//! API call. Per component, pushes are delivered in order. Every push and attempt is recorded in
//! `stats`.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};
use wechat::event::{
    AuthorizationEvent, Event, MsgCrypt, TicketEvent, UnauthorizedEvent, seal_push,
};

use crate::clock::Millis;
use crate::model::AuthorizeOutcome;
use crate::sim::Sim;
use crate::stats::PushAttempt;

/// What to push (the event's fields besides AppId and CreateTime).
#[derive(Debug, Clone)]
pub(crate) enum PushEvent {
    Ticket { ticket: String },
    Authorization(AuthorizeOutcome),
    Unauthorized { authorizer_appid: String },
}

impl PushEvent {
    fn info_type(&self) -> &str {
        match self {
            PushEvent::Ticket { .. } => "component_verify_ticket",
            PushEvent::Authorization(o) => &o.info_type,
            PushEvent::Unauthorized { .. } => "unauthorized",
        }
    }

    fn authorizer_appid(&self) -> Option<&str> {
        match self {
            PushEvent::Ticket { .. } => None,
            PushEvent::Authorization(o) => Some(&o.authorizer_appid),
            PushEvent::Unauthorized { authorizer_appid } => Some(authorizer_appid),
        }
    }

    fn to_event(&self, app_id: &str, create_time: i64) -> Event {
        let app_id = app_id.to_string();
        match self {
            PushEvent::Ticket { ticket } => Event::ComponentVerifyTicket(TicketEvent {
                app_id,
                create_time,
                component_verify_ticket: ticket.clone(),
            }),
            PushEvent::Authorization(o) => {
                let e = AuthorizationEvent {
                    app_id,
                    create_time,
                    authorizer_appid: o.authorizer_appid.clone(),
                    authorization_code: o.authorization_code.clone(),
                    authorization_code_expired_time: o.authorization_code_expired_time,
                    pre_auth_code: Some(o.pre_auth_code.clone()),
                };
                if o.info_type == "updateauthorized" {
                    Event::UpdateAuthorized(e)
                } else {
                    Event::Authorized(e)
                }
            }
            PushEvent::Unauthorized { authorizer_appid } => {
                Event::Unauthorized(UnauthorizedEvent {
                    app_id,
                    create_time,
                    authorizer_appid: authorizer_appid.clone(),
                })
            }
        }
    }
}

/// A queued push.
#[derive(Debug)]
pub(crate) struct PushJob {
    id: u64,
    created_ms: Millis,
    event: PushEvent,
}

/// Queue a push for a component (recorded as `pending` at once).
pub(crate) fn enqueue(sim: &Arc<Sim>, component: u32, event: PushEvent) {
    let now = sim.clock.now_ms();
    let appid = sim.state.lock().components[component as usize]
        .appid
        .to_string();
    let id = sim
        .stats
        .push_queued(&appid, event.info_type(), event.authorizer_appid(), now);
    let job = PushJob {
        id,
        created_ms: now,
        event,
    };
    let sender = sim.push_workers.lock().get(&component).cloned();
    match sender {
        Some(tx) => {
            if let Err(mpsc::error::SendError(job)) = tx.send(job) {
                sim.stats.push_finished(job.id, "cancelled");
            }
        }
        None => sim.stats.push_finished(id, "cancelled"),
    }
}

pub(crate) fn enqueue_ticket(sim: &Arc<Sim>, component: u32, ticket: String) {
    enqueue(sim, component, PushEvent::Ticket { ticket });
}

/// Start the push task of a new component.
pub(crate) fn spawn_worker(sim: &Arc<Sim>, component: u32) {
    let (tx, rx) = mpsc::unbounded_channel();
    sim.push_workers.lock().insert(component, tx);
    let appid = sim.state.lock().components[component as usize]
        .appid
        .to_string();
    let task = worker(sim.clone(), component, rx, sim.cancel.clone())
        .instrument(info_span!("push_worker", component_appid = %appid));
    sim.tracker.spawn_on(task, &sim.runtime);
}

async fn worker(
    sim: Arc<Sim>,
    component: u32,
    mut rx: mpsc::UnboundedReceiver<PushJob>,
    cancel: CancellationToken,
) {
    let crypt = {
        let st = sim.state.lock();
        let c = &st.components[component as usize];
        MsgCrypt::new(&c.token, &c.aes_key, &c.appid)
    };
    let crypt = match crypt {
        Ok(c) => c,
        Err(e) => {
            // Unreachable in practice: keys are validated when the component is created.
            warn!(error = %e, "cannot build the push cipher; pushes disabled for this component");
            return;
        }
    };
    let interval = sim.rules.ticket_interval_ms;
    let mut clock_jumps = sim.clock.subscribe();
    let mut next_ticket = (interval > 0).then(|| sim.clock.now_ms() + interval);
    loop {
        let wait = next_ticket.map_or(Duration::from_secs(86_400), |t| {
            Duration::from_millis(u64::try_from(t - sim.clock.now_ms()).unwrap_or(0))
        });
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            job = rx.recv() => match job {
                Some(job) => deliver(&sim, component, &crypt, job, &cancel).await,
                None => break,
            },
            changed = clock_jumps.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep(wait), if next_ticket.is_some() => {}
        }
        if let Some(due) = next_ticket {
            let now = sim.clock.now_ms();
            if now >= due {
                // One ticket per timer firing; after a clock jump, the schedule restarts from now.
                next_ticket = Some(if due + interval > now {
                    due + interval
                } else {
                    now + interval
                });
                let ticket = sim.state.lock().issue_ticket(component, now);
                let appid = sim.state.lock().components[component as usize]
                    .appid
                    .to_string();
                let event = PushEvent::Ticket { ticket };
                let id = sim.stats.push_queued(&appid, event.info_type(), None, now);
                deliver(
                    &sim,
                    component,
                    &crypt,
                    PushJob {
                        id,
                        created_ms: now,
                        event,
                    },
                    &cancel,
                )
                .await;
            }
        }
    }
    // Whatever is still queued is recorded as cancelled.
    rx.close();
    while let Ok(job) = rx.try_recv() {
        sim.stats.push_finished(job.id, "cancelled");
    }
}

/// The push URL with the signed query parameters appended (keeping any query it already has).
fn target_url(push_url: &str, params: &wechat::event::PushParams) -> Option<url::Url> {
    let mut url = url::Url::parse(push_url).ok()?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("signature", &params.signature);
        q.append_pair("timestamp", &params.timestamp);
        q.append_pair("nonce", &params.nonce);
        if let Some(t) = &params.encrypt_type {
            q.append_pair("encrypt_type", t);
        }
        q.append_pair("msg_signature", &params.msg_signature);
    }
    Some(url)
}

async fn deliver(
    sim: &Arc<Sim>,
    component: u32,
    crypt: &MsgCrypt,
    job: PushJob,
    cancel: &CancellationToken,
) {
    let push_url = sim.state.lock().components[component as usize]
        .push_url
        .as_deref()
        .map(str::to_string);
    let ticket = match &job.event {
        PushEvent::Ticket { ticket } => Some(ticket.as_str()),
        _ => None,
    };
    let Some(push_url) = push_url else {
        if let Some(ticket) = ticket {
            sim.state.lock().ack_ticket(component, ticket);
        }
        sim.stats.push_finished(job.id, "no_push_url");
        return;
    };
    let event = job
        .event
        .to_event(crypt.appid(), job.created_ms.div_euclid(1000));
    let attempts = sim.config.push.attempts.max(1);
    let mut backoff = sim.config.push.backoff;
    let mut delivered = false;
    for attempt in 1..=attempts {
        let now = sim.clock.now_ms();
        let nonce = rand::rng()
            .random_range(100_000_000u64..10_000_000_000)
            .to_string();
        let (params, body) = seal_push(crypt, &event, now.div_euclid(1000), &nonce);
        let Some(url) = target_url(&push_url, &params) else {
            sim.stats.push_attempt(
                job.id,
                failed_attempt(now, "push_url is not a valid URL".into()),
            );
            break;
        };
        let send = async {
            let resp = sim
                .http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "text/xml")
                .body(body)
                .send()
                .await?;
            let status = resp.status().as_u16();
            let text = resp.text().await?;
            Ok::<_, reqwest::Error>((status, text))
        };
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                sim.stats.push_finished(job.id, "cancelled");
                return;
            }
            r = send => r,
        };
        let record = match result {
            Ok((status, text)) => {
                let success = status == 200 && text.trim() == "success";
                PushAttempt {
                    at: now.div_euclid(1000),
                    http_status: Some(status),
                    error: None,
                    body: Some(text.chars().take(200).collect()),
                    success,
                }
            }
            Err(e) => failed_attempt(now, error_chain(&e)),
        };
        let success = record.success;
        debug!(attempt, success, status = ?record.http_status, "push attempt");
        sim.stats.push_attempt(job.id, record);
        if success {
            delivered = true;
            break;
        }
        if attempt < attempts {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    sim.stats.push_finished(job.id, "cancelled");
                    return;
                }
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = backoff.saturating_mul(2);
        }
    }
    if let Some(ticket) = ticket {
        let mut st = sim.state.lock();
        st.components[component as usize].push_healthy = delivered;
        if delivered {
            st.ack_ticket(component, ticket);
        }
    }
    sim.stats
        .push_finished(job.id, if delivered { "delivered" } else { "failed" });
}

fn failed_attempt(now: Millis, error: String) -> PushAttempt {
    PushAttempt {
        at: now.div_euclid(1000),
        http_status: None,
        error: Some(error),
        body: None,
        success: false,
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}
