//! Retrying a store write that must land. SPEC.md rule 2: a refresh token WeChat will not give
//! again (a rotation, a spent authorization code) is never given up while the store can pass, so
//! a write is retried for as long as its error is transient ([`StoreError::is_transient`], the
//! one answer to "can this error pass?"), with the capped, jittered waits of
//! [`plan::Backoff`]. An error that cannot pass (a constraint, a corrupt row, a backend bug) is
//! given back after a bounded number of tries, for the caller to split a batch or alert.
//!
//! Every engine loop that writes what WeChat answered uses this: the refresh results' group
//! commit and the `api_query_auth` answer.

use std::time::Duration;

use crate::store::StoreError;
use crate::tokens::plan::Backoff;

/// The waits: from 50 ms, doubling, capped at 5 s.
const BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(50),
    max: Duration::from_secs(5),
};
/// After this many failures in a row each further one is logged at error level.
const QUIET_FAILURES: u32 = 3;

/// The retry state of one write.
pub(crate) struct StoreRetry {
    /// What is being written, for the log ("refresh results", "api_query_auth answer").
    what: &'static str,
    /// Tries allowed in all when the error cannot pass (at least 1).
    permanent_tries: u32,
    failures: u32,
    permanent: u32,
}

impl StoreRetry {
    pub(crate) fn new(what: &'static str, permanent_tries: u32) -> Self {
        Self {
            what,
            permanent_tries: permanent_tries.max(1),
            failures: 0,
            permanent: 0,
        }
    }

    /// After a failed try: `Err(e)` if it is to be given back (it cannot pass, and the tries
    /// allowed for that are used up); otherwise waits the backoff and returns `Ok` to try again.
    pub(crate) async fn after(&mut self, e: StoreError) -> Result<(), StoreError> {
        self.failures = self.failures.saturating_add(1);
        if !e.is_transient() {
            self.permanent += 1;
            if self.permanent >= self.permanent_tries {
                return Err(e);
            }
        }
        if self.failures > QUIET_FAILURES {
            tracing::error!(what = self.what, failures = self.failures, error = %e, "not stored yet; retrying until it is");
        } else {
            tracing::warn!(what = self.what, failures = self.failures, error = %e, "not stored; retrying");
        }
        tokio::time::sleep(self.delay()).await;
        Ok(())
    }

    /// Failed tries so far.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    fn delay(&self) -> Duration {
        BACKOFF.delay(self.failures.saturating_sub(1), rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> StoreError {
        StoreError::Unavailable(sqlx::Error::PoolTimedOut)
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_error_is_retried_however_often_it_comes() {
        let mut retry = StoreRetry::new("test", 1);
        for _ in 0..50 {
            retry.after(unavailable()).await.expect("retried");
        }
        assert_eq!(retry.failures(), 50);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_that_cannot_pass_is_given_back_after_its_tries() {
        let mut retry = StoreRetry::new("test", 3);
        let corrupt = || StoreError::Corrupt("x".into());
        retry.after(corrupt()).await.expect("second try");
        retry
            .after(unavailable())
            .await
            .expect("transient ones do not count");
        retry.after(corrupt()).await.expect("third try");
        assert!(matches!(
            retry.after(corrupt()).await,
            Err(StoreError::Corrupt(_))
        ));
        let mut once = StoreRetry::new("test", 0);
        assert!(once.after(corrupt()).await.is_err(), "at least one try");
    }

    #[tokio::test(start_paused = true)]
    async fn waits_grow_to_the_cap() {
        let mut retry = StoreRetry::new("test", 1);
        let started = tokio::time::Instant::now();
        retry.after(unavailable()).await.unwrap();
        let first = started.elapsed();
        assert!(first >= Duration::from_millis(25) && first <= Duration::from_millis(50));
        for _ in 0..20 {
            retry.after(unavailable()).await.unwrap();
        }
        let before = tokio::time::Instant::now();
        retry.after(unavailable()).await.unwrap();
        let last = before.elapsed();
        assert!(last >= Duration::from_millis(2500) && last <= Duration::from_secs(5));
    }
}
