//! The lease seam (SPEC.md rule 3 across replicas): before refreshing a credential the engine
//! acquires its lease, and releases it after the store write. One process needs no more than its
//! single flight, so [`LocalLease`] only guards against a second engine in the same process; the
//! high-availability issue implements [`Lease`] with PostgreSQL row leases that expire when a
//! replica dies.
//!
//! The lease is an optimisation, not the safety net: the store's generation fencing is the final
//! guard, so a refresher whose lease ran out still cannot overwrite a newer token.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::model::Credential;

/// The lease could not be checked (database unreachable). The engine treats it as "not granted"
/// and retries later, serving what it holds meanwhile.
#[derive(Debug, thiserror::Error)]
#[error("lease unavailable: {0}")]
pub struct LeaseError(pub String);

#[async_trait]
pub trait Lease: Send + Sync + 'static {
    /// Tries to take the lease on `credential` for at most `ttl`. `Ok(false)`: another holder has
    /// it (its refresh result will reach this process through the store).
    async fn acquire(&self, credential: &Credential, ttl: Duration) -> Result<bool, LeaseError>;

    /// Gives the lease back early (after the store write).
    async fn release(&self, credential: &Credential);
}

/// The single-process lease: an in-process set of held credentials.
#[derive(Debug, Default)]
pub struct LocalLease {
    held: Mutex<HashSet<Credential>>,
}

impl LocalLease {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Lease for LocalLease {
    async fn acquire(&self, credential: &Credential, _ttl: Duration) -> Result<bool, LeaseError> {
        Ok(self.held.lock().insert(credential.clone()))
    }

    async fn release(&self, credential: &Credential) {
        self.held.lock().remove(credential);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ComponentAppid;

    #[tokio::test]
    async fn local_lease_is_exclusive_until_released() {
        let lease = LocalLease::new();
        let c = Credential::component(&ComponentAppid::parse("wxc").unwrap());
        let ttl = Duration::from_secs(30);
        assert!(lease.acquire(&c, ttl).await.unwrap());
        assert!(!lease.acquire(&c, ttl).await.unwrap());
        lease.release(&c).await;
        assert!(lease.acquire(&c, ttl).await.unwrap());
    }
}
