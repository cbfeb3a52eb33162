//! Fault injection per WeChat endpoint (`PUT /_sim/faults`): latency (fixed, uniform, exponential
//! or normal), an HTTP status (5xx), a connection reset, a malformed JSON body, or any errcode,
//! each with a probability and an optional number of times. Decisions draw from one seeded RNG, so
//! the same seed and the same sequence of calls give the same faults.
//!
//! A fault replaces the call: the rules in `state` do not run (latency alone delays a call that
//! then runs normally). An unset fault set costs one relaxed atomic load per call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::api::Api;
use crate::model::ControlError;

/// The body of `PUT /_sim/faults`: the complete set of rules (it replaces the previous set).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultSet {
    /// Reseeds the fault RNG (defaults to the configured `seed`, else random).
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub rules: Vec<FaultRule>,
}

/// One rule: on `endpoint`, with `probability`, at most `times` times, inject `fault`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// An endpoint name (`api_authorizer_token`), its path, or `*` for every WeChat endpoint.
    pub endpoint: String,
    /// Chance per call, 0.0–1.0 (default 1.0).
    #[serde(default = "always")]
    pub probability: f64,
    /// Stop after firing this many times (default: no limit).
    #[serde(default)]
    pub times: Option<u64>,
    pub fault: Fault,
}

fn always() -> f64 {
    1.0
}

/// What to inject.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Delay the answer; the call then runs normally.
    Latency { latency: Latency },
    /// Run the call (its effects happen: a token is issued, a refresh token rotated), then hold
    /// the answer back this long: the window in which a caller that dies never learns what was
    /// issued. Adds up with other hold rules; never replaces the call.
    HoldAnswer { latency: Latency },
    /// Answer with this HTTP status and an empty body (typically 500, 502, 503, 504).
    HttpStatus { status: u16 },
    /// Reset the TCP connection (RST) instead of answering.
    Reset,
    /// HTTP 200 with a truncated JSON body.
    MalformedJson,
    /// HTTP 200 with `{"errcode":N,"errmsg":"... rid: ..."}`.
    Errcode {
        errcode: i64,
        #[serde(default)]
        errmsg: Option<String>,
    },
}

/// A latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(tag = "distribution", rename_all = "snake_case", deny_unknown_fields)]
pub enum Latency {
    Fixed { ms: u64 },
    Uniform { min_ms: u64, max_ms: u64 },
    Exponential { mean_ms: u64 },
    Normal { mean_ms: u64, stddev_ms: u64 },
}

/// Latency is capped so a typo cannot hang a test run.
const MAX_LATENCY_MS: f64 = 60_000.0;

impl Latency {
    fn sample(&self, rng: &mut StdRng) -> Duration {
        let ms = match *self {
            Latency::Fixed { ms } => ms as f64,
            Latency::Uniform { min_ms, max_ms } => {
                if max_ms <= min_ms {
                    min_ms as f64
                } else {
                    rng.random_range(min_ms..=max_ms) as f64
                }
            }
            Latency::Exponential { mean_ms } => {
                let u: f64 = rng.random();
                -(mean_ms as f64) * (1.0 - u).ln()
            }
            Latency::Normal { mean_ms, stddev_ms } => {
                // Box-Muller.
                let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                let u2: f64 = rng.random();
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                mean_ms as f64 + z * stddev_ms as f64
            }
        };
        Duration::from_millis(ms.clamp(0.0, MAX_LATENCY_MS) as u64)
    }
}

/// What the API layer must do instead of (or before) answering.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Decision {
    pub latency: Option<Duration>,
    /// Held after the call ran, before its answer is sent.
    pub hold: Option<Duration>,
    pub action: Option<Action>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    HttpStatus(u16),
    Reset,
    MalformedJson,
    Errcode(i64, Option<String>),
}

impl Action {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Action::HttpStatus(_) => "http_status",
            Action::Reset => "reset",
            Action::MalformedJson => "malformed_json",
            Action::Errcode(..) => "errcode",
        }
    }
}

/// A rule in force, with its resolved endpoint and counters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActiveRule {
    pub rule: FaultRule,
    /// How many times it fired.
    pub fired: u64,
}

#[derive(Debug)]
struct Inner {
    rules: Vec<(Option<Api>, ActiveRule)>,
    rng: StdRng,
}

#[derive(Debug)]
pub(crate) struct Faults {
    active: AtomicBool,
    default_seed: Option<u64>,
    inner: Mutex<Inner>,
}

fn rng_for(seed: Option<u64>) -> StdRng {
    match seed {
        Some(s) => StdRng::seed_from_u64(s),
        None => StdRng::seed_from_u64(rand::rng().random()),
    }
}

impl Faults {
    pub(crate) fn new(seed: Option<u64>) -> Self {
        Self {
            active: AtomicBool::new(false),
            default_seed: seed,
            inner: Mutex::new(Inner {
                rules: Vec::new(),
                rng: rng_for(seed),
            }),
        }
    }

    /// Replace the rule set (validated first; nothing changes on error).
    pub(crate) fn set(&self, set: FaultSet) -> Result<(), ControlError> {
        let mut rules = Vec::with_capacity(set.rules.len());
        for (i, rule) in set.rules.into_iter().enumerate() {
            let api = match rule.endpoint.as_str() {
                "*" => None,
                name => Some(Api::from_name(name).ok_or_else(|| {
                    ControlError::Invalid(format!("rules[{i}].endpoint: unknown endpoint {name:?}"))
                })?),
            };
            if !(0.0..=1.0).contains(&rule.probability) {
                return Err(ControlError::Invalid(format!(
                    "rules[{i}].probability must be between 0 and 1"
                )));
            }
            if let Fault::HttpStatus { status } = rule.fault
                && !(100..=599).contains(&status)
            {
                return Err(ControlError::Invalid(format!(
                    "rules[{i}].fault.status must be an HTTP status"
                )));
            }
            rules.push((api, ActiveRule { rule, fired: 0 }));
        }
        let mut g = self.inner.lock();
        g.rng = rng_for(set.seed.or(self.default_seed));
        self.active.store(!rules.is_empty(), Ordering::Release);
        g.rules = rules;
        Ok(())
    }

    pub(crate) fn clear(&self) {
        let mut g = self.inner.lock();
        g.rules.clear();
        g.rng = rng_for(self.default_seed);
        self.active.store(false, Ordering::Release);
    }

    pub(crate) fn list(&self) -> Vec<ActiveRule> {
        self.inner
            .lock()
            .rules
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Decide the faults for one call of `api`. Every latency (or hold) rule that fires adds its
    /// delay; the first other rule that fires decides the answer (later ones are not rolled).
    pub(crate) fn decide(&self, api: Api) -> Decision {
        if !self.active.load(Ordering::Acquire) {
            return Decision::default();
        }
        let mut g = self.inner.lock();
        let Inner { rules, rng } = &mut *g;
        let mut d = Decision::default();
        for (target, active) in rules.iter_mut() {
            if target.is_some_and(|t| t != api) {
                continue;
            }
            let is_latency = matches!(
                active.rule.fault,
                Fault::Latency { .. } | Fault::HoldAnswer { .. }
            );
            if !is_latency && d.action.is_some() {
                continue;
            }
            if active.rule.times.is_some_and(|t| active.fired >= t) {
                continue;
            }
            if rng.random::<f64>() >= active.rule.probability {
                continue;
            }
            active.fired += 1;
            match &active.rule.fault {
                Fault::Latency { latency } => {
                    let add = latency.sample(rng);
                    d.latency = Some(d.latency.unwrap_or_default() + add);
                }
                Fault::HoldAnswer { latency } => {
                    let add = latency.sample(rng);
                    d.hold = Some(d.hold.unwrap_or_default() + add);
                }
                Fault::HttpStatus { status } => d.action = Some(Action::HttpStatus(*status)),
                Fault::Reset => d.action = Some(Action::Reset),
                Fault::MalformedJson => d.action = Some(Action::MalformedJson),
                Fault::Errcode { errcode, errmsg } => {
                    d.action = Some(Action::Errcode(*errcode, errmsg.clone()))
                }
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(endpoint: &str, probability: f64, fault: Fault) -> FaultRule {
        FaultRule {
            endpoint: endpoint.into(),
            probability,
            times: None,
            fault,
        }
    }

    #[test]
    fn same_seed_gives_the_same_fault_sequence() {
        let run = || {
            let f = Faults::new(None);
            f.set(FaultSet {
                seed: Some(42),
                rules: vec![rule(
                    "token",
                    0.3,
                    Fault::Errcode {
                        errcode: -1,
                        errmsg: None,
                    },
                )],
            })
            .unwrap();
            (0..200)
                .map(|_| f.decide(Api::Token).action.is_some())
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let hits = a.iter().filter(|x| **x).count();
        assert!((30..90).contains(&hits), "about 30% of 200, got {hits}");
    }

    #[test]
    fn times_limits_how_often_a_rule_fires_and_endpoints_are_matched() {
        let f = Faults::new(Some(1));
        let mut r = rule("api_authorizer_token", 1.0, Fault::Reset);
        r.times = Some(2);
        f.set(FaultSet {
            seed: None,
            rules: vec![r],
        })
        .unwrap();
        assert_eq!(f.decide(Api::Token), Decision::default());
        assert_eq!(f.decide(Api::AuthorizerToken).action, Some(Action::Reset));
        assert_eq!(f.decide(Api::AuthorizerToken).action, Some(Action::Reset));
        assert_eq!(f.decide(Api::AuthorizerToken).action, None);
        assert_eq!(f.list()[0].fired, 2);
    }

    #[test]
    fn latency_adds_up_and_other_faults_still_apply() {
        let f = Faults::new(Some(1));
        f.set(FaultSet {
            seed: None,
            rules: vec![
                rule(
                    "*",
                    1.0,
                    Fault::Latency {
                        latency: Latency::Fixed { ms: 5 },
                    },
                ),
                rule(
                    "*",
                    1.0,
                    Fault::Latency {
                        latency: Latency::Uniform {
                            min_ms: 1,
                            max_ms: 1,
                        },
                    },
                ),
                rule("*", 1.0, Fault::HttpStatus { status: 503 }),
            ],
        })
        .unwrap();
        let d = f.decide(Api::GetCallbackIp);
        assert_eq!(d.latency, Some(Duration::from_millis(6)));
        assert_eq!(d.action, Some(Action::HttpStatus(503)));
    }

    #[test]
    fn hold_answer_is_decided_apart_from_latency_and_lets_the_call_run() {
        let f = Faults::new(Some(1));
        f.set(FaultSet {
            seed: None,
            rules: vec![rule(
                "api_authorizer_token",
                1.0,
                Fault::HoldAnswer {
                    latency: Latency::Fixed { ms: 7 },
                },
            )],
        })
        .unwrap();
        let d = f.decide(Api::AuthorizerToken);
        assert_eq!(d.hold, Some(Duration::from_millis(7)));
        assert_eq!(d.latency, None);
        assert_eq!(d.action, None, "the call itself runs");
    }

    #[test]
    fn invalid_rules_are_refused_and_change_nothing() {
        let f = Faults::new(None);
        let bad = FaultSet {
            seed: None,
            rules: vec![rule("nope", 1.0, Fault::Reset)],
        };
        assert!(f.set(bad).is_err());
        let bad = FaultSet {
            seed: None,
            rules: vec![rule("*", 1.5, Fault::Reset)],
        };
        assert!(f.set(bad).is_err());
        assert!(f.list().is_empty());
        assert_eq!(f.decide(Api::Token), Decision::default());
    }

    #[test]
    fn fault_rules_parse_from_their_documented_json() {
        let set: FaultSet = serde_json::from_str(
            r#"{"seed":7,"rules":[
              {"endpoint":"api_component_token","probability":0.5,"fault":{"kind":"errcode","errcode":45009}},
              {"endpoint":"*","fault":{"kind":"latency","latency":{"distribution":"exponential","mean_ms":20}}},
              {"endpoint":"/cgi-bin/token","times":1,"fault":{"kind":"http_status","status":502}},
              {"endpoint":"token","fault":{"kind":"reset"}},
              {"endpoint":"token","fault":{"kind":"malformed_json"}},
              {"endpoint":"api_authorizer_token","fault":{"kind":"hold_answer","latency":{"distribution":"uniform","min_ms":100,"max_ms":500}}}
            ]}"#,
        )
        .unwrap();
        assert_eq!(set.rules.len(), 6);
        Faults::new(None).set(set).unwrap();
    }
}
