//! The simulator's clock: real time plus an offset that only moves forward
//! (`POST /_sim/clock/advance`). Every rule (token expiry, overlaps, ticket validity, daily quotas,
//! the stable_token force budget) reads this clock, so tests can cross a 5-minute overlap or a 12-hour
//! ticket validity instantly. Timers (the ticket pusher) subscribe to [`Clock::subscribe`] to
//! re-plan when the clock jumps.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// Milliseconds since the Unix epoch on the simulated clock.
pub(crate) type Millis = i64;

/// How far the clock may ever run ahead of real time: a hundred years is more than any test needs,
/// and keeps every `now + lifetime` far from `i64` overflow whatever the control API is sent.
pub(crate) const MAX_CLOCK_OFFSET: Duration = Duration::from_secs(100 * 366 * 86_400);
const MAX_OFFSET_MS: i64 = MAX_CLOCK_OFFSET.as_millis() as i64;

#[derive(Debug)]
pub(crate) struct Clock {
    offset_ms: AtomicI64,
    jumps: watch::Sender<i64>,
}

impl Clock {
    pub(crate) fn new() -> Self {
        let (jumps, _) = watch::channel(0);
        Self {
            offset_ms: AtomicI64::new(0),
            jumps,
        }
    }

    /// Now, in simulated Unix milliseconds.
    pub(crate) fn now_ms(&self) -> Millis {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4))
            .unwrap_or(0);
        real.saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    /// How far the simulated clock is ahead of real time.
    pub(crate) fn offset(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.offset_ms.load(Ordering::Relaxed)).unwrap_or(0))
    }

    /// Move the clock forward and wake every timer. The total offset saturates at
    /// [`MAX_CLOCK_OFFSET`].
    pub(crate) fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(MAX_OFFSET_MS);
        let step = |offset: i64| Some(offset.saturating_add(by).min(MAX_OFFSET_MS));
        let previous = self
            .offset_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, step)
            .unwrap_or_else(|current| current);
        self.jumps
            .send_replace(previous.saturating_add(by).min(MAX_OFFSET_MS));
    }

    /// A receiver that changes whenever the clock is advanced.
    pub(crate) fn subscribe(&self) -> watch::Receiver<i64> {
        self.jumps.subscribe()
    }
}

#[cfg(test)]
mod offset_tests {
    use super::*;

    #[test]
    fn advancing_past_the_cap_saturates_instead_of_overflowing() {
        let clock = Clock::new();
        clock.advance(Duration::from_secs(u64::MAX));
        clock.advance(Duration::from_secs(u64::MAX));
        assert_eq!(clock.offset(), Duration::from_millis(MAX_OFFSET_MS as u64));
        assert!(clock.now_ms() > 0);
        assert!(
            clock.now_ms().checked_add(MAX_OFFSET_MS).is_some(),
            "room left for lifetimes"
        );
    }
}

/// Beijing-time calendar helpers: WeChat's daily quotas and the monthly clear budget reset at
/// midnight China Standard Time (UTC+8).
pub(crate) mod calendar {
    use super::Millis;

    const CST_OFFSET_MS: i64 = 8 * 3600 * 1000;
    const DAY_MS: i64 = 86_400_000;

    /// Day number (days since 1970-01-01 in UTC+8).
    pub(crate) fn day(now: Millis) -> i64 {
        (now + CST_OFFSET_MS).div_euclid(DAY_MS)
    }

    /// Month number (`year * 12 + month0`) in UTC+8.
    pub(crate) fn month(now: Millis) -> i64 {
        let (y, m, _) = civil_from_days(day(now));
        y * 12 + (m as i64 - 1)
    }

    /// Howard Hinnant's days-to-civil algorithm.
    fn civil_from_days(z: i64) -> (i64, u32, u32) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        (if m <= 2 { y + 1 } else { y }, m, d)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn civil_dates_match_known_days() {
            assert_eq!(civil_from_days(0), (1970, 1, 1));
            assert_eq!(civil_from_days(19_723), (2024, 1, 1));
            assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        }

        #[test]
        fn day_changes_at_beijing_midnight() {
            // 2024-01-01T15:59:59Z is 23:59:59 in Beijing; one second later is the next day.
            let before = 1_704_124_799_000;
            assert_eq!(day(before) + 1, day(before + 1000));
            assert_eq!(month(before), 2024 * 12);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_now_forward_and_notifies() {
        let clock = Clock::new();
        let rx = clock.subscribe();
        let before = clock.now_ms();
        clock.advance(Duration::from_secs(3600));
        assert!(clock.now_ms() >= before + 3_600_000);
        assert!(rx.has_changed().unwrap());
        assert_eq!(clock.offset(), Duration::from_secs(3600));
    }
}
