//! Call counters (per endpoint, per appid, by errcode and by injected fault) and the push log,
//! served by `GET /_sim/stats`. Kept apart from `State` behind its own lock so counting never
//! lengthens the rules' critical section.

use std::collections::{BTreeMap, HashMap, VecDeque};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::api::Api;
use crate::clock::Millis;

/// How many push records `GET /_sim/stats` keeps (oldest dropped first).
const PUSH_LOG_LEN: usize = 1000;
/// Distinct appids counted; further unknown appids are counted under `"(other)"`.
const MAX_APPIDS: usize = 1_000_000;

/// The result of one WeChat API call, for counting.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CallOutcome {
    Ok,
    Errcode(i64),
    Fault(&'static str),
}

#[derive(Debug, Default)]
struct EndpointCounters {
    calls: u64,
    ok: u64,
    errors: BTreeMap<i64, u64>,
    faults: BTreeMap<&'static str, u64>,
}

#[derive(Debug)]
struct Inner {
    since_ms: Millis,
    endpoints: Vec<EndpointCounters>,
    appids: HashMap<Box<str>, Vec<(Api, u64)>>,
    pushes: VecDeque<PushRecord>,
    push_totals: PushTotals,
    next_push_id: u64,
}

#[derive(Debug)]
pub(crate) struct Stats {
    inner: Mutex<Inner>,
    /// Pushes finished (delivered, failed or skipped) since start; never reset.
    finished: watch::Sender<u64>,
    /// Answers issued and being held back right now (the `hold_answer` fault).
    held: watch::Sender<u64>,
}

/// One answer being held back; counted in [`Stats::answers_held`] until dropped (sent, or the
/// connection went away and the handler with it).
pub(crate) struct HeldAnswer<'a>(&'a Stats);

impl Drop for HeldAnswer<'_> {
    fn drop(&mut self) {
        self.0.held.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// One push and its delivery attempts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushRecord {
    pub id: u64,
    pub component_appid: String,
    /// `component_verify_ticket`, `authorized`, `updateauthorized` or `unauthorized`.
    pub info_type: String,
    pub authorizer_appid: Option<String>,
    /// Unix seconds (simulated clock) when the push was queued.
    pub created_at: i64,
    /// `pending`, `delivered` (answered `success`), `failed` (every attempt failed),
    /// `no_push_url` (nothing to push to) or `cancelled` (simulator shut down).
    pub outcome: String,
    pub attempts: Vec<PushAttempt>,
}

/// One HTTP attempt of a push.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushAttempt {
    pub at: i64,
    pub http_status: Option<u16>,
    /// Transport error (connection refused, timeout, ...).
    pub error: Option<String>,
    /// The first 200 bytes of the reply body.
    pub body: Option<String>,
    /// Whether the reply was HTTP 200 with body `success`.
    pub success: bool,
}

/// Push totals since the last reset.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushTotals {
    pub queued: u64,
    pub delivered: u64,
    pub failed: u64,
    pub no_push_url: u64,
    pub attempts: u64,
    pub by_info_type: BTreeMap<String, u64>,
}

/// Counters of one endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointStats {
    pub calls: u64,
    pub ok: u64,
    /// Errcode answers by code (injected errcodes included).
    pub errors: BTreeMap<String, u64>,
    /// Injected faults by kind (`http_status`, `reset`, `malformed_json`, `errcode`).
    pub faults: BTreeMap<String, u64>,
}

/// `GET /_sim/stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Unix seconds of the start or last reset.
    pub since: i64,
    pub total_calls: u64,
    /// By endpoint name (every endpoint listed, zero or not).
    pub endpoints: BTreeMap<String, EndpointStats>,
    /// Calls by appid, then by endpoint name.
    pub appids: BTreeMap<String, BTreeMap<String, u64>>,
    pub pushes: PushTotals,
    /// The most recent pushes, oldest first.
    pub recent_pushes: Vec<PushRecord>,
}

impl StatsSnapshot {
    /// Calls of one endpoint (0 when none).
    pub fn calls(&self, api: Api) -> u64 {
        self.endpoints.get(api.name()).map_or(0, |e| e.calls)
    }

    /// Calls of one endpoint for one appid.
    pub fn calls_for(&self, appid: &str, api: Api) -> u64 {
        self.appids
            .get(appid)
            .and_then(|m| m.get(api.name()))
            .copied()
            .unwrap_or(0)
    }

    /// How many times an endpoint answered this errcode.
    pub fn errors(&self, api: Api, errcode: i64) -> u64 {
        self.endpoints
            .get(api.name())
            .and_then(|e| e.errors.get(&errcode.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

impl Inner {
    fn new(now: Millis) -> Self {
        Self {
            since_ms: now,
            endpoints: Api::ALL
                .iter()
                .map(|_| EndpointCounters::default())
                .collect(),
            appids: HashMap::new(),
            pushes: VecDeque::new(),
            push_totals: PushTotals::default(),
            next_push_id: 1,
        }
    }
}

impl Stats {
    pub(crate) fn new(now: Millis) -> Self {
        let (finished, _) = watch::channel(0);
        let (held, _) = watch::channel(0);
        Self {
            inner: Mutex::new(Inner::new(now)),
            finished,
            held,
        }
    }

    pub(crate) fn record(&self, api: Api, appid: Option<&str>, outcome: CallOutcome) {
        let mut g = self.inner.lock();
        let e = &mut g.endpoints[api as usize];
        e.calls += 1;
        match outcome {
            CallOutcome::Ok => e.ok += 1,
            CallOutcome::Errcode(c) => *e.errors.entry(c).or_default() += 1,
            CallOutcome::Fault(kind) => *e.faults.entry(kind).or_default() += 1,
        }
        if let Some(appid) = appid.filter(|a| !a.is_empty()) {
            let full = g.appids.len() >= MAX_APPIDS;
            let per = match g.appids.get_mut(appid) {
                Some(per) => per,
                None => {
                    let key: Box<str> = if full { "(other)".into() } else { appid.into() };
                    g.appids.entry(key).or_default()
                }
            };
            match per.iter_mut().find(|(a, _)| *a == api) {
                Some((_, n)) => *n += 1,
                None => per.push((api, 1)),
            }
        }
    }

    pub(crate) fn reset(&self, now: Millis) {
        let mut g = self.inner.lock();
        let next_push_id = g.next_push_id;
        *g = Inner::new(now);
        g.next_push_id = next_push_id;
    }

    pub(crate) fn snapshot(&self, appid_filter: Option<&str>) -> StatsSnapshot {
        let g = self.inner.lock();
        let endpoints = Api::ALL
            .iter()
            .map(|a| {
                let e = &g.endpoints[*a as usize];
                let stats = EndpointStats {
                    calls: e.calls,
                    ok: e.ok,
                    errors: e.errors.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                    faults: e.faults.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                };
                (a.name().to_string(), stats)
            })
            .collect();
        let appids = g
            .appids
            .iter()
            .filter(|(k, _)| appid_filter.is_none_or(|f| f == &***k))
            .map(|(k, per)| {
                (
                    k.to_string(),
                    per.iter()
                        .map(|(a, n)| (a.name().to_string(), *n))
                        .collect(),
                )
            })
            .collect();
        StatsSnapshot {
            since: g.since_ms.div_euclid(1000),
            total_calls: g.endpoints.iter().map(|e| e.calls).sum(),
            endpoints,
            appids,
            pushes: g.push_totals.clone(),
            recent_pushes: g.pushes.iter().cloned().collect(),
        }
    }

    // ----- push log -------------------------------------------------------------------------

    pub(crate) fn push_queued(
        &self,
        component_appid: &str,
        info_type: &str,
        authorizer_appid: Option<&str>,
        now: Millis,
    ) -> u64 {
        let mut g = self.inner.lock();
        let id = g.next_push_id;
        g.next_push_id += 1;
        g.push_totals.queued += 1;
        *g.push_totals
            .by_info_type
            .entry(info_type.to_string())
            .or_default() += 1;
        g.pushes.push_back(PushRecord {
            id,
            component_appid: component_appid.to_string(),
            info_type: info_type.to_string(),
            authorizer_appid: authorizer_appid.map(str::to_string),
            created_at: now.div_euclid(1000),
            outcome: "pending".into(),
            attempts: Vec::new(),
        });
        while g.pushes.len() > PUSH_LOG_LEN {
            g.pushes.pop_front();
        }
        id
    }

    pub(crate) fn push_attempt(&self, id: u64, attempt: PushAttempt) {
        let mut g = self.inner.lock();
        g.push_totals.attempts += 1;
        if let Some(r) = g.pushes.iter_mut().rev().find(|r| r.id == id) {
            r.attempts.push(attempt);
        }
    }

    pub(crate) fn push_finished(&self, id: u64, outcome: &'static str) {
        {
            let mut g = self.inner.lock();
            match outcome {
                "delivered" => g.push_totals.delivered += 1,
                "failed" => g.push_totals.failed += 1,
                "no_push_url" => g.push_totals.no_push_url += 1,
                _ => {}
            }
            if let Some(r) = g.pushes.iter_mut().rev().find(|r| r.id == id) {
                r.outcome = outcome.to_string();
            }
        }
        self.finished.send_modify(|n| *n += 1);
    }

    /// Resolves once at least `n` pushes have finished since start.
    pub(crate) async fn wait_pushes_finished(&self, n: u64) {
        let mut rx = self.finished.subscribe();
        // The sender lives as long as `self`, so `wait_for` only fails if we are being dropped.
        let _ = rx.wait_for(|done| *done >= n).await;
    }

    pub(crate) fn pushes_finished(&self) -> u64 {
        *self.finished.borrow()
    }

    /// Counts an answer as held until the guard is dropped.
    pub(crate) fn hold_answer(&self) -> HeldAnswer<'_> {
        self.held.send_modify(|n| *n += 1);
        HeldAnswer(self)
    }

    pub(crate) fn answers_held(&self) -> u64 {
        *self.held.borrow()
    }

    /// Resolves once at least `n` answers are being held at the same time.
    pub(crate) async fn wait_answers_held(&self, n: u64) {
        let mut rx = self.held.subscribe();
        let _ = rx.wait_for(|held| *held >= n).await;
    }
}
