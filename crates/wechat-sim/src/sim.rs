//! The shared simulator: configuration, clock, the rules' state, counters, faults and the push
//! machinery, held in one `Arc<Sim>` by the HTTP handlers, the push tasks and [`crate::SimControl`].
//!
//! Lock order: `state` before `push_workers`; `stats` and `faults` are never held together with
//! another lock. No lock is held across an `.await`.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::{Rules, SimConfig};
use crate::faults::Faults;
use crate::push::PushJob;
use crate::state::State;
use crate::stats::Stats;

#[derive(Debug)]
pub(crate) struct Sim {
    pub config: SimConfig,
    pub rules: Rules,
    pub clock: Clock,
    pub state: Mutex<State>,
    pub stats: Stats,
    pub faults: Faults,
    /// Client for pushes (no proxy, `push.timeout`).
    pub http: reqwest::Client,
    pub push_workers: Mutex<HashMap<u32, mpsc::UnboundedSender<PushJob>>>,
    pub runtime: tokio::runtime::Handle,
    pub tracker: TaskTracker,
    pub cancel: CancellationToken,
    /// The simulator's own base URL (`http://127.0.0.1:PORT`), for the consent page.
    pub base_url: String,
}
