//! The lease seam (SPEC.md rule 3 across replicas): before refreshing a credential the engine
//! acquires its lease, and releases it after the store write. One process needs no more than its
//! single flight, so [`LocalLease`] only guards against a second engine in the same process.
//! [`StoreLease`] is the replicas' lease: a row in the shared PostgreSQL database
//! (`LeaseStore::try_lease`) with an expiry, renewed while the refresh is in flight, so a dead
//! replica's work is taken over once its lease runs out.
//!
//! The lease is an optimisation, not the safety net: the store's generation fencing is the final
//! guard, so a refresher whose lease ran out still cannot overwrite a newer token.
//!
//! Depends on `store` and `model`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::model::Timestamp;
use crate::store::{LeaseKey, Store};

/// The lease could not be checked (database unreachable). The engine treats it as "not granted"
/// and retries later, serving what it holds meanwhile.
#[derive(Debug, thiserror::Error)]
#[error("lease unavailable: {0}")]
pub struct LeaseError(pub String);

/// The answer to [`Lease::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Another holder has it: its result reaches this process through the store.
    Refused,
    /// Granted, and nobody else can have done the work since this process last looked: the
    /// process-local lease, or a shared lease this process already held.
    Held,
    /// Granted from the shared table: another process may have done the work (refreshed, written)
    /// since this one last read the store, so read it again before asking WeChat.
    Taken,
}

impl Grant {
    pub fn granted(self) -> bool {
        !matches!(self, Grant::Refused)
    }
}

#[async_trait]
pub trait Lease: Send + Sync + 'static {
    /// Tries to take the lease on `key` (a credential's refresh, an event's application, a code's
    /// exchange).
    async fn acquire(&self, key: &LeaseKey) -> Result<Grant, LeaseError>;

    /// Gives the lease back (after the store write).
    async fn release(&self, key: &LeaseKey);

    /// Gives the lease back once `landed` (the holder's store write) has completed, without
    /// making the caller wait. Others must not take a shared lease before the write is in the
    /// store, or they would read the old generation and ask WeChat again; a process-local lease
    /// has nobody else reading the store for it and is released at once.
    async fn release_after(&self, key: LeaseKey, landed: BoxFuture<'static, ()>);
}

/// The single-process lease: an in-process set of held credentials.
#[derive(Debug, Default)]
pub struct LocalLease {
    held: Mutex<HashSet<LeaseKey>>,
}

impl LocalLease {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Lease for LocalLease {
    async fn acquire(&self, key: &LeaseKey) -> Result<Grant, LeaseError> {
        Ok(if self.held.lock().insert(key.clone()) {
            Grant::Held
        } else {
            Grant::Refused
        })
    }

    async fn release(&self, key: &LeaseKey) {
        self.held.lock().remove(key);
    }

    async fn release_after(&self, key: LeaseKey, _landed: BoxFuture<'static, ()>) {
        self.release(&key).await;
    }
}

/// One credential's lease as this process holds it.
struct Held {
    /// Acquisitions not yet released (a flight's lease outlives it until its write lands, and
    /// the credential's next flight may acquire it meanwhile).
    count: u32,
    /// Stops the renewal task.
    renewal: CancellationToken,
}

/// The replicas' lease: a row of `refresh_leases` in the shared database, taken with one
/// conditional statement, renewed every third of its time to live while held, deleted on
/// release. Refused when another live holder has it; a dead holder's row expires. Its time to
/// live is `storage.lease_ttl`: renewal, not a long lease, covers a slow refresh. Expiry compares wall clocks of different machines: keep them in
/// sync (NTP) to well under the time to live.
pub struct StoreLease {
    rows: Arc<LeaseRows>,
    ttl: Duration,
    tracker: TaskTracker,
}

/// What a [`StoreLease`] shares with its renewal and delayed-release tasks.
struct LeaseRows {
    store: Arc<dyn Store>,
    /// This process's identity in the lease rows (unique per start).
    holder: String,
    held: Mutex<HashMap<LeaseKey, Held>>,
}

impl LeaseRows {
    async fn release(&self, key: &LeaseKey) {
        {
            let mut held = self.held.lock();
            let Some(h) = held.get_mut(key) else {
                return;
            };
            h.count -= 1;
            if h.count > 0 {
                return;
            }
            h.renewal.cancel();
            held.remove(key);
        }
        if let Err(e) = self.store.leases().release_lease(key, &self.holder).await {
            // It runs out by itself.
            tracing::debug!(lease = %key, error = %e, "releasing a lease failed");
        }
    }
}

impl std::fmt::Debug for StoreLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreLease")
            .field("holder", &self.rows.holder)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl StoreLease {
    /// A lease holder named after this process (pid and a random suffix, so a restarted replica
    /// never mistakes its predecessor's rows for its own). `ttl`: `storage.lease_ttl`.
    pub fn new(store: Arc<dyn Store>, ttl: Duration, tracker: TaskTracker) -> Self {
        Self {
            rows: Arc::new(LeaseRows {
                store,
                holder: format!("{}-{:016x}", std::process::id(), rand::random::<u64>()),
                held: Mutex::default(),
            }),
            ttl: ttl.max(Duration::from_secs(1)),
            tracker,
        }
    }

    pub fn holder(&self) -> &str {
        &self.rows.holder
    }

    fn spawn_renewal(&self, key: LeaseKey, stop: CancellationToken) {
        let store = Arc::clone(&self.rows.store);
        let holder = self.rows.holder.clone();
        let ttl = self.ttl;
        self.tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(ttl / 3) => {}
                }
                let now = Timestamp::now();
                match store
                    .leases()
                    .try_lease(&key, &holder, now, now.plus(ttl))
                    .await
                {
                    Ok(true) => {}
                    // Taken over after it ran out: the fence still guards our write.
                    Ok(false) => {
                        tracing::warn!(lease = %key, "lease lost to another replica");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(lease = %key, error = %e, "renewing a lease failed");
                    }
                }
            }
        });
    }
}

#[async_trait]
impl Lease for StoreLease {
    async fn acquire(&self, key: &LeaseKey) -> Result<Grant, LeaseError> {
        if let Some(held) = self.rows.held.lock().get_mut(key) {
            held.count += 1;
            return Ok(Grant::Held);
        }
        let now = Timestamp::now();
        let granted = self
            .rows
            .store
            .leases()
            .try_lease(key, &self.rows.holder, now, now.plus(self.ttl))
            .await
            .map_err(|e| LeaseError(e.to_string()))?;
        if !granted {
            return Ok(Grant::Refused);
        }
        let mut held = self.rows.held.lock();
        if let Some(h) = held.get_mut(key) {
            h.count += 1;
        } else {
            let renewal = CancellationToken::new();
            self.spawn_renewal(key.clone(), renewal.clone());
            held.insert(key.clone(), Held { count: 1, renewal });
        }
        Ok(Grant::Taken)
    }

    async fn release(&self, key: &LeaseKey) {
        self.rows.release(key).await;
    }

    async fn release_after(&self, key: LeaseKey, landed: BoxFuture<'static, ()>) {
        let rows = Arc::clone(&self.rows);
        self.tracker.spawn(async move {
            landed.await;
            rows.release(&key).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ComponentAppid, Credential};

    /// A fresh in-memory store with one component, and the lease key of its token's refresh.
    async fn store_and_key() -> (Arc<dyn Store>, LeaseKey) {
        let store = crate::store::open("sqlite::memory:").await.unwrap();
        let component = ComponentAppid::parse("wxc").unwrap();
        store
            .components()
            .ensure_component(&component, Timestamp::now())
            .await
            .unwrap();
        (store, LeaseKey::refresh(&Credential::component(&component)))
    }

    #[tokio::test]
    async fn local_lease_is_exclusive_until_released() {
        let lease = LocalLease::new();
        let c = LeaseKey::refresh(&Credential::component(
            &ComponentAppid::parse("wxc").unwrap(),
        ));
        assert!(lease.acquire(&c).await.unwrap().granted());
        assert!(!lease.acquire(&c).await.unwrap().granted());
        lease.release(&c).await;
        assert!(lease.acquire(&c).await.unwrap().granted());
    }

    #[tokio::test]
    async fn store_lease_is_exclusive_between_holders_and_reentrant_within_one() {
        let (store, c) = store_and_key().await;
        let ttl = Duration::from_secs(30);
        let a = StoreLease::new(Arc::clone(&store), ttl, TaskTracker::new());
        let b = StoreLease::new(Arc::clone(&store), ttl, TaskTracker::new());
        assert!(a.acquire(&c).await.unwrap().granted());
        assert!(
            a.acquire(&c).await.unwrap().granted(),
            "the holder may take it again"
        );
        assert!(!b.acquire(&c).await.unwrap().granted());
        a.release(&c).await;
        assert!(!b.acquire(&c).await.unwrap().granted(), "still held once");
        a.release(&c).await;
        assert!(b.acquire(&c).await.unwrap().granted());
    }

    #[tokio::test]
    async fn store_lease_of_a_dead_holder_is_taken_over_once_it_runs_out() {
        let (store, c) = store_and_key().await;
        let now = Timestamp::now();
        // A holder that died: its row is there, its renewals stopped.
        assert!(
            store
                .leases()
                .try_lease(
                    &c,
                    "dead",
                    now.minus(Duration::from_secs(60)),
                    now.minus(Duration::from_secs(1))
                )
                .await
                .unwrap()
        );
        let live = StoreLease::new(
            Arc::clone(&store),
            Duration::from_secs(30),
            TaskTracker::new(),
        );
        assert!(live.acquire(&c).await.unwrap().granted());
    }

    /// Wall time is the scenario here: a lease of 1 s outlives 2 s because it is renewed.
    #[tokio::test]
    async fn store_lease_is_renewed_while_held_and_freed_on_release() {
        let (store, c) = store_and_key().await;
        let ttl = Duration::from_secs(1);
        let tracker = TaskTracker::new();
        let holder = StoreLease::new(Arc::clone(&store), ttl, tracker.clone());
        assert!(holder.acquire(&c).await.unwrap().granted());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = Timestamp::now();
        assert!(
            !store
                .leases()
                .try_lease(&c, "other", now, now.plus(ttl))
                .await
                .unwrap(),
            "renewed past its first expiry"
        );
        holder.release(&c).await;
        tracker.close();
        tracker.wait().await;
        assert!(
            store
                .leases()
                .try_lease(&c, "other", now, now.plus(ttl))
                .await
                .unwrap()
        );
    }
}
