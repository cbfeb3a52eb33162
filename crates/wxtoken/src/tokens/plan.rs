//! Refresh planning as pure functions, so the maths is tested without clocks (SPEC.md rules 1, 4, 5).
//!
//! Lifetimes always come from the `expires_in` WeChat returned, never a constant: a simulator with
//! 20-second tokens exercises exactly the code that runs against 2-hour tokens.

use crate::model::{AuthorizerStatus, TokenSource};
use std::time::Duration;

/// stable_token in normal mode returns the same token until its last five minutes
/// (wechat-protocol.md §6.2); a refresh before that window is wasted.
pub const STABLE_TOKEN_ROLLOVER: Duration = Duration::from_secs(300);

/// How long after issue a token is due for refresh: `fraction` of its lifetime plus up to `jitter`
/// of it, spread by `unit` (a uniform random number in [0, 1)), so a fleet does not refresh at once.
///
/// The result never exceeds `expires_in - serve_margin`, so a token is always replaced before it
/// stops being servable, even with a large jitter or a very short lifetime.
pub fn refresh_delay(
    expires_in: Duration,
    fraction: f64,
    jitter: f64,
    unit: f64,
    serve_margin: Duration,
) -> Duration {
    let unit = unit.clamp(0.0, 1.0);
    let planned = expires_in.mul_f64((fraction + jitter * unit).clamp(0.0, 1.0));
    planned.min(expires_in.saturating_sub(serve_margin))
}

/// The due time of a direct account's stable token: inside the rollover window, `lead` before
/// expiry (SPEC.md rule 1's exception), since an earlier call returns the same token.
pub fn stable_refresh_delay(expires_in: Duration, lead: Duration) -> Duration {
    expires_in.saturating_sub(lead.min(STABLE_TOKEN_ROLLOVER))
}

/// Cold start: when the `index`-th (0-based, most urgent first) of `overdue` credentials loaded
/// overdue starts, relative to now. They start in waves of `concurrency`, one wave per `per_call`
/// (the expected time of one refresh), so no more refreshes start at once than can run at once
/// (each reads the store before it waits for an upstream permit). The whole spread is bounded by
/// `max`: a fleet too big for that starts its waves closer together, still in order.
pub fn cold_start_offset(
    index: usize,
    overdue: usize,
    concurrency: usize,
    per_call: Duration,
    max: Duration,
) -> Duration {
    let concurrency = concurrency.max(1);
    let waves = overdue.max(1).div_ceil(concurrency);
    let wave = (index / concurrency).min(waves - 1);
    let window = per_call.mul_f64(waves as f64).min(max);
    window.mul_f64(wave as f64 / waves as f64)
}

/// Whether a token from `source` may be handed out for a credential in `status` (`None`: a
/// component or a direct account). A revoked authorizer's own tokens are retired; only its
/// appsecret fallback (`stable_token` / `token`) is served. The one place this is decided: the
/// cache's reads and `wxtoken token` both ask it.
pub fn serves(status: Option<AuthorizerStatus>, source: TokenSource) -> bool {
    status != Some(AuthorizerStatus::Revoked)
        || matches!(source, TokenSource::StableToken | TokenSource::Token)
}

/// Whether a token may be handed out: until `serve_margin` before its expiry (SPEC.md rule 4).
/// Times are milliseconds since the Unix epoch, as stored.
pub fn servable(now_ms: i64, expires_at_ms: i64, serve_margin: Duration) -> bool {
    let margin = i64::try_from(serve_margin.as_millis()).unwrap_or(i64::MAX);
    now_ms < expires_at_ms.saturating_sub(margin)
}

/// Capped exponential backoff with jitter for transient failures (SPEC.md rule 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The ceiling for the given attempt (0-based): `initial * 2^attempt`, capped at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.checked_pow(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The wait before retry number `attempt` ("equal jitter"): between half the ceiling and the
    /// ceiling, so retries never bunch at zero yet never exceed the cap. `unit` is uniform in [0, 1).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        half + (ceiling - half).mul_f64(unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const TWO_HOURS: Duration = Duration::from_secs(7200);

    proptest! {
        #[test]
        fn cold_start_never_starts_more_than_concurrency_per_call_and_stays_within_the_bound(
            overdue in 1usize..200_000,
            concurrency in 1usize..512,
            per_call_ms in 1u64..2_000,
            max_s in 1u64..900,
        ) {
            let per_call = Duration::from_millis(per_call_ms);
            let max = Duration::from_secs(max_s);
            let offset = |i| cold_start_offset(i, overdue, concurrency, per_call, max);
            prop_assert_eq!(offset(0), Duration::ZERO);
            prop_assert!(offset(overdue - 1) < max);
            // Offsets never go down with urgency order (sampled: the fleet can be large).
            let step = (overdue / 500).max(1);
            let mut last = Duration::ZERO;
            for i in (0..overdue).step_by(step).chain([overdue - 1]) {
                let o = offset(i);
                prop_assert!(o >= last);
                last = o;
            }
            let waves = overdue.div_ceil(concurrency) as u64;
            if per_call.saturating_mul(u32::try_from(waves).unwrap_or(u32::MAX)) <= max {
                // Uncapped: a wave of at most `concurrency` per `per_call`, nothing else beside it.
                for i in (0..overdue).step_by(step) {
                    let (a, b) = (offset(i), offset((i + concurrency).min(overdue - 1)));
                    if i + concurrency < overdue {
                        prop_assert!(b - a + Duration::from_micros(1) >= per_call, "{i}: {a:?} {b:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn cold_start_of_a_hundred_thousand_spreads_them_over_the_bound() {
        let max = Duration::from_secs(300);
        let per_call = Duration::from_millis(200);
        // 100 000 at 32 at a time: 3 125 waves of 200 ms would take 625 s, bounded to 300 s.
        let last = cold_start_offset(99_999, 100_000, 32, per_call, max);
        assert!(last > Duration::from_secs(290) && last < max, "{last:?}");
        assert_eq!(
            cold_start_offset(31, 100_000, 32, per_call, max),
            Duration::ZERO
        );
        assert!(cold_start_offset(32, 100_000, 32, per_call, max) > Duration::ZERO);
        // A few: one wave, all now.
        assert_eq!(cold_start_offset(9, 10, 32, per_call, max), Duration::ZERO);
    }

    #[test]
    fn two_hour_token_is_due_after_about_an_hour() {
        let earliest = refresh_delay(TWO_HOURS, 0.5, 0.05, 0.0, Duration::from_secs(60));
        let latest = refresh_delay(TWO_HOURS, 0.5, 0.05, 0.999, Duration::from_secs(60));
        assert_eq!(earliest, HOUR);
        assert!(
            latest > HOUR && latest <= HOUR + Duration::from_secs(360),
            "{latest:?}"
        );
    }

    #[test]
    fn lifetime_comes_from_expires_in_so_short_tokens_scale() {
        let d = refresh_delay(
            Duration::from_secs(20),
            0.5,
            0.0,
            0.0,
            Duration::from_secs(1),
        );
        assert_eq!(d, Duration::from_secs(10));
    }

    #[test]
    fn due_time_never_passes_the_serve_margin() {
        let d = refresh_delay(
            Duration::from_secs(90),
            0.5,
            0.45,
            0.99,
            Duration::from_secs(60),
        );
        assert_eq!(d, Duration::from_secs(30));
        let d = refresh_delay(
            Duration::from_secs(30),
            0.5,
            0.0,
            0.0,
            Duration::from_secs(60),
        );
        assert_eq!(
            d,
            Duration::ZERO,
            "a token already inside the margin is due at once"
        );
    }

    #[test]
    fn stable_token_is_due_inside_its_rollover_window() {
        let d = stable_refresh_delay(TWO_HOURS, Duration::from_secs(240));
        assert_eq!(d, TWO_HOURS - Duration::from_secs(240));
        let d = stable_refresh_delay(TWO_HOURS, Duration::from_secs(900));
        assert_eq!(
            d,
            TWO_HOURS - STABLE_TOKEN_ROLLOVER,
            "a lead beyond the window would be wasted"
        );
    }

    #[test]
    fn token_stops_being_servable_at_the_margin() {
        let margin = Duration::from_secs(60);
        assert!(servable(0, 61_000, margin));
        assert!(!servable(1_000, 61_000, margin));
        assert!(!servable(0, 0, margin));
        assert!(!servable(i64::MIN, i64::MIN, margin));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        };
        assert_eq!(b.ceiling(0), Duration::from_secs(1));
        assert_eq!(b.ceiling(3), Duration::from_secs(8));
        assert_eq!(b.ceiling(9), Duration::from_secs(300));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(300));
    }

    proptest! {
        #[test]
        fn backoff_delay_stays_between_half_ceiling_and_ceiling(attempt in 0u32..100, unit in 0.0f64..1.0) {
            let b = Backoff { initial: Duration::from_millis(250), max: Duration::from_secs(60) };
            let d = b.delay(attempt, unit);
            prop_assert!(d >= b.ceiling(attempt) / 2);
            prop_assert!(d <= b.ceiling(attempt));
        }

        #[test]
        fn refresh_delay_is_within_lifetime_and_before_margin(
            secs in 0u64..100_000, fraction in 0.05f64..0.95, jitter in 0.0f64..0.2,
            unit in 0.0f64..1.0, margin in 0u64..600,
        ) {
            let expires_in = Duration::from_secs(secs);
            let d = refresh_delay(expires_in, fraction, jitter, unit, Duration::from_secs(margin));
            prop_assert!(d <= expires_in.saturating_sub(Duration::from_secs(margin)));
        }
    }
}
