//! Single flight (SPEC.md rule 3): any number of concurrent askers for the same credential cause one
//! upstream call, and all of them get its result.
//!
//! The work runs in its own task on the application's `TaskTracker`, not inside the first caller:
//! a reader whose HTTP request times out must never cancel a refresh between WeChat's answer and the
//! store write (the answer may carry a new refresh token), and shutdown waits for flights in progress.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// The flight ended without a result: its task panicked or was aborted. Callers may start another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the in-flight operation ended without a result")]
pub struct Abandoned;

struct Flight<V> {
    result: watch::Receiver<Option<V>>,
    waiters: Arc<AtomicUsize>,
}

type Flights<K, V> = Arc<Mutex<HashMap<K, Flight<V>>>>;

pub struct SingleFlight<K, V> {
    flights: Flights<K, V>,
    tracker: TaskTracker,
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new(tracker: TaskTracker) -> Self {
        Self {
            flights: Arc::default(),
            tracker,
        }
    }

    /// Waits for the flight running for `key`, starting it with `work` if none is running.
    /// `work` is only called (and its future only spawned) when this caller starts the flight.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> Result<V, Abandoned>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let mut result = self.join_or_start(key, work);
        let value = result
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Abandoned)?;
        value.clone().ok_or(Abandoned)
    }

    /// Waits for the flight running for `key`, if one is in the air; `None` (at once) if none is.
    pub async fn join(&self, key: &K) -> Option<Result<V, Abandoned>> {
        let mut result = {
            let flights = self.flights.lock();
            let flight = flights.get(key).filter(|f| f.result.borrow().is_none())?;
            flight.waiters.fetch_add(1, Ordering::Relaxed);
            flight.result.clone()
        };
        Some(match result.wait_for(Option::is_some).await {
            Ok(value) => value.clone().ok_or(Abandoned),
            Err(_) => Err(Abandoned),
        })
    }

    /// How many callers have joined the flight for `key` so far, including any that gave up waiting
    /// (0 when none runs): for tests and metrics.
    pub fn waiters(&self, key: &K) -> usize {
        self.flights
            .lock()
            .get(key)
            .map_or(0, |f| f.waiters.load(Ordering::Relaxed))
    }

    /// Number of flights running now.
    pub fn in_flight(&self) -> usize {
        self.flights.lock().len()
    }

    fn join_or_start<F, Fut>(&self, key: K, work: F) -> watch::Receiver<Option<V>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        // The lock is never held across an await: joining or registering is synchronous.
        let mut flights = self.flights.lock();
        // Join only a flight still in the air. One that has published its result but not yet left
        // the map is over: its answer may predate what this caller knows (an invalidation report
        // of the very token it returned), so a new flight replaces it; `Landing` then leaves the
        // newer entry alone.
        if let Some(flight) = flights.get(&key)
            && flight.result.borrow().is_none()
        {
            flight.waiters.fetch_add(1, Ordering::Relaxed);
            return flight.result.clone();
        }
        let (tx, rx) = watch::channel(None);
        flights.insert(
            key.clone(),
            Flight {
                result: rx.clone(),
                waiters: Arc::new(AtomicUsize::new(1)),
            },
        );
        drop(flights);
        let landing = Landing {
            flights: Arc::clone(&self.flights),
            key,
            result: rx.clone(),
        };
        let fut = work();
        self.tracker.spawn(async move {
            // `landing` removes the entry even if `fut` panics; the dropped sender then tells the
            // waiters the flight was abandoned.
            let landing = landing;
            let value = fut.await;
            let _ = tx.send(Some(value));
            drop(landing);
        });
        rx
    }
}

/// Removes a finished flight from the map, unless a newer flight for the same key replaced it.
struct Landing<K: Hash + Eq, V> {
    flights: Flights<K, V>,
    key: K,
    result: watch::Receiver<Option<V>>,
}

impl<K: Hash + Eq, V> Drop for Landing<K, V> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock();
        if flights
            .get(&self.key)
            .is_some_and(|f| f.result.same_channel(&self.result))
        {
            flights.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use tokio::sync::oneshot;
    use tokio::task::JoinSet;

    async fn until(mut cond: impl FnMut() -> bool) {
        while !cond() {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn two_hundred_concurrent_askers_cause_one_call_and_share_its_result() {
        let tracker = TaskTracker::new();
        let flight = Arc::new(SingleFlight::<&str, u32>::new(tracker.clone()));
        let calls = Arc::new(AtomicU32::new(0));
        let (release, gate) = oneshot::channel::<()>();
        let gate = Arc::new(Mutex::new(Some(gate)));
        let mut askers = JoinSet::new();
        for _ in 0..200 {
            let (flight, calls, gate) = (flight.clone(), calls.clone(), gate.clone());
            askers.spawn(async move {
                flight
                    .run("wx_appid", || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let gate = gate.lock().take();
                        async move {
                            if let Some(gate) = gate {
                                let _ = gate.await;
                            }
                            42
                        }
                    })
                    .await
            });
        }
        until(|| flight.waiters(&"wx_appid") == 200).await;
        release.send(()).expect("flight is waiting");
        while let Some(result) = askers.join_next().await {
            assert_eq!(result.expect("task"), Ok(42));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(flight.in_flight(), 0);
    }

    #[tokio::test]
    async fn cancelled_first_caller_does_not_cancel_the_flight() {
        let tracker = TaskTracker::new();
        let flight = Arc::new(SingleFlight::<u8, &'static str>::new(tracker.clone()));
        let (release, gate) = oneshot::channel::<()>();
        let leader = {
            let flight = flight.clone();
            tokio::spawn(async move {
                flight
                    .run(1, move || async move {
                        let _ = gate.await;
                        "stored"
                    })
                    .await
            })
        };
        until(|| flight.waiters(&1) == 1).await;
        leader.abort();
        let _ = leader.await;
        let follower = {
            let flight = flight.clone();
            tokio::spawn(async move { flight.run(1, || async { "second flight" }).await })
        };
        until(|| flight.waiters(&1) == 2).await;
        release.send(()).expect("the work is still running");
        assert_eq!(follower.await.expect("task"), Ok("stored"));
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test]
    async fn panicking_work_abandons_its_waiters_and_the_next_call_starts_afresh() {
        let flight = SingleFlight::<u8, u8>::new(TaskTracker::new());
        let result = flight
            .run(7, || async {
                panic!("refresh blew up");
            })
            .await;
        assert_eq!(result, Err(Abandoned));
        assert_eq!(flight.in_flight(), 0);
        assert_eq!(flight.run(7, || async { 3 }).await, Ok(3));
    }

    #[tokio::test]
    async fn different_keys_fly_independently() {
        let flight = Arc::new(SingleFlight::<u8, u8>::new(TaskTracker::new()));
        let (release, gate) = oneshot::channel::<()>();
        let slow = {
            let flight = flight.clone();
            tokio::spawn(async move {
                flight
                    .run(1, move || async move {
                        let _ = gate.await;
                        1
                    })
                    .await
            })
        };
        until(|| flight.waiters(&1) == 1).await;
        assert_eq!(flight.run(2, || async { 2 }).await, Ok(2));
        release.send(()).expect("slow flight waits");
        assert_eq!(slow.await.expect("task"), Ok(1));
    }

    #[tokio::test]
    async fn shutdown_waits_for_a_flight_in_progress() {
        let tracker = TaskTracker::new();
        let flight = Arc::new(SingleFlight::<u8, u8>::new(tracker.clone()));
        let (release, gate) = oneshot::channel::<()>();
        let done = Arc::new(AtomicU32::new(0));
        let asker = {
            let (flight, done) = (flight.clone(), done.clone());
            tokio::spawn(async move {
                flight
                    .run(1, move || async move {
                        let _ = gate.await;
                        done.fetch_add(1, Ordering::SeqCst);
                        9
                    })
                    .await
            })
        };
        until(|| flight.waiters(&1) == 1).await;
        asker.abort();
        tracker.close();
        release.send(()).expect("work waits");
        tracker.wait().await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }
}
