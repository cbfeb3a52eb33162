//! API-key authentication for the internal listener: `Authorization: Bearer <key>`, checked against
//! the stored SHA-256 hashes through an in-memory index, per-appid grants, the admin scope, and
//! per-client read counts flushed to the store in batches.
//!
//! The token read path must not wait on the database: a known key is answered from memory and
//! re-checked against the store at most once per `ttl` (so a revocation made by another process
//! takes effect within it; one made through this process's admin API calls `forget`). If the store
//! is unreachable when an entry is due, the entry keeps serving. Unknown keys are cached too (a
//! bounded number), so a flood of garbage keys cannot turn into a flood of queries.
//!
//! Looking a hash up in a map is not constant-time, which is fine: the keys are 256-bit random
//! values and timing could at most reveal something about their hash, not the key.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use dashmap::DashMap;

use super::error::ApiError;
use crate::model::{ApiKeyHash, Appid, AppidGrant, ReadCount, Timestamp};
use crate::store::{Store, StoreError};
use crate::tokens::cache::Slot;
use crate::vault::{API_KEY_PREFIX, hash_api_key};

/// Longest bearer value considered; anything longer is refused without hashing.
const MAX_KEY_LEN: usize = 128;
/// How many unknown keys are remembered; past that, unknown keys are not cached (and the cache of
/// unknown keys is cleared), so memory stays bounded whatever is sent.
const MAX_UNKNOWN_KEYS: usize = 10_000;

/// An authenticated client.
#[derive(Debug)]
pub struct Caller {
    pub id: i64,
    pub name: String,
    pub admin: bool,
    grant: Grant,
    /// A rotated-out key in its grace period stops working at this time.
    expires_at: Option<Timestamp>,
}

#[derive(Debug)]
enum Grant {
    All,
    Only(HashSet<Appid>),
}

impl Caller {
    /// Whether the key this caller authenticated with still works (a rotated-out key stops at the
    /// end of its grace period).
    fn key_works(&self, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }

    /// Whether this client may read the tokens of `appid`.
    pub fn may_read(&self, appid: &str) -> bool {
        match &self.grant {
            Grant::All => true,
            Grant::Only(set) => set.contains(appid),
        }
    }

    /// `Ok` for admin keys, 403 otherwise.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this API needs an admin key".to_owned(),
            ))
        }
    }

    /// `Ok` if this client may read `appid`, 403 otherwise.
    pub fn require_read(&self, appid: &str) -> Result<(), ApiError> {
        if self.may_read(appid) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this API key is not granted appid {appid}"
            )))
        }
    }
}

enum Entry {
    Known {
        caller: Arc<Caller>,
        checked: Instant,
    },
    Unknown {
        checked: Instant,
    },
}

/// Why a request is not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no API key")]
    Missing,
    #[error("invalid API key")]
    Invalid,
    #[error("the key store is unavailable")]
    Unavailable(#[source] StoreError),
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Missing | AuthError::Invalid => ApiError::Unauthorized,
            AuthError::Unavailable(e) => ApiError::from(e),
        }
    }
}

pub struct KeyIndex {
    store: Arc<dyn Store>,
    entries: DashMap<ApiKeyHash, Entry>,
    unknown: std::sync::atomic::AtomicUsize,
    ttl: Duration,
}

impl KeyIndex {
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> Self {
        Self {
            store,
            entries: DashMap::new(),
            unknown: Default::default(),
            ttl,
        }
    }

    /// The client holding `key`, from memory when it was checked within `ttl`.
    pub async fn authenticate(&self, key: &str) -> Result<Arc<Caller>, AuthError> {
        if !key.starts_with(API_KEY_PREFIX) || key.len() > MAX_KEY_LEN {
            return Err(AuthError::Invalid);
        }
        self.authenticate_hash(hash_api_key(key)).await
    }

    /// [`KeyIndex::authenticate`] by the key's hash: what a dashboard session keeps (never the key),
    /// so a revoked or rotated-out key ends its sessions too.
    pub async fn authenticate_hash(&self, hash: ApiKeyHash) -> Result<Arc<Caller>, AuthError> {
        let stale = match self.entries.get(&hash).as_deref() {
            Some(Entry::Known { caller, checked })
                if checked.elapsed() < self.ttl && caller.key_works(Timestamp::now()) =>
            {
                return Ok(caller.clone());
            }
            Some(Entry::Unknown { checked }) if checked.elapsed() < self.ttl => {
                return Err(AuthError::Invalid);
            }
            Some(Entry::Known { caller, .. }) => Some(caller.clone()),
            _ => None,
        };
        match self.store.clients().find_client_by_key(&hash).await {
            Ok(Some(record))
                if record.revoked_at.is_none()
                    && record.key_expires_at.is_none_or(|at| Timestamp::now() < at) =>
            {
                let caller = Arc::new(Caller {
                    id: record.id,
                    name: record.name,
                    admin: record.admin,
                    expires_at: record.key_expires_at,
                    grant: match record.grant {
                        AppidGrant::All => Grant::All,
                        AppidGrant::Only(list) => Grant::Only(list.into_iter().collect()),
                    },
                });
                self.entries.insert(
                    hash,
                    Entry::Known {
                        caller: caller.clone(),
                        checked: Instant::now(),
                    },
                );
                Ok(caller)
            }
            Ok(_) => {
                self.remember_unknown(hash);
                Err(AuthError::Invalid)
            }
            // The database is down: a key that was valid keeps working (the read path never
            // depends on the database); an unknown one cannot be checked.
            Err(e) => match stale {
                Some(caller) if caller.key_works(Timestamp::now()) => Ok(caller),
                Some(_) => Err(AuthError::Invalid),
                None => Err(AuthError::Unavailable(e)),
            },
        }
    }

    fn remember_unknown(&self, hash: ApiKeyHash) {
        use std::sync::atomic::Ordering;
        if self.unknown.fetch_add(1, Ordering::Relaxed) >= MAX_UNKNOWN_KEYS {
            self.entries.retain(|_, e| matches!(e, Entry::Known { .. }));
            self.unknown.store(0, Ordering::Relaxed);
        }
        let previous = self.entries.insert(
            hash,
            Entry::Unknown {
                checked: Instant::now(),
            },
        );
        if matches!(previous, Some(Entry::Unknown { .. })) {
            self.unknown.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Drops every cached entry: called after this process revokes or changes a client.
    pub fn forget_all(&self) {
        self.entries.clear();
        self.unknown.store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Extractor: the authenticated caller of a request on the internal listener.
pub struct Authenticated(pub Arc<Caller>);

impl<S> FromRequestParts<S> for Authenticated
where
    Arc<KeyIndex>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(AuthError::Missing)?
            .to_str()
            .map_err(|_| AuthError::Invalid)?;
        let key = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(AuthError::Invalid)?
            .trim();
        let index = Arc::<KeyIndex>::from_ref(state);
        Ok(Authenticated(index.authenticate(key).await?))
    }
}

/// Read counts written per transaction by [`ReadCounter::flush`].
const READ_FLUSH_CHUNK: usize = 2000;

/// Per-client, per-appid token-read counts (SPEC.md: every token read is counted), kept in memory
/// and written to the store in batches so the read path never waits on the database.
///
/// Keyed by client id and the address of the credential's cache slot, so counting a read allocates
/// nothing and takes one shard read lock and two atomic stores; the entry holds the slot, so the
/// address cannot be reused before the entry is flushed.
#[derive(Default)]
pub struct ReadCounter {
    counts: DashMap<(i64, usize), Count>,
}

struct Count {
    slot: Arc<Slot>,
    reads: AtomicU64,
    last_ms: AtomicI64,
}

impl ReadCounter {
    pub fn record(&self, client_id: i64, slot: &Arc<Slot>) {
        let now = Timestamp::now().as_millis();
        let key = (client_id, Arc::as_ptr(slot) as usize);
        if let Some(count) = self.counts.get(&key) {
            count.reads.fetch_add(1, Ordering::Relaxed);
            count.last_ms.fetch_max(now, Ordering::Relaxed);
            return;
        }
        let count = self.counts.entry(key).or_insert_with(|| Count {
            slot: Arc::clone(slot),
            reads: AtomicU64::new(0),
            last_ms: AtomicI64::new(now),
        });
        count.reads.fetch_add(1, Ordering::Relaxed);
        count.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// Writes the counts gathered so far; on failure they are put back, so no read is lost.
    pub async fn flush(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let keys: Vec<(i64, usize)> = self.counts.iter().map(|e| *e.key()).collect();
        // Removing takes the shard's write lock, so every increment made through `get` has landed.
        let drained: Vec<((i64, usize), Count)> = keys
            .into_iter()
            .filter_map(|k| self.counts.remove(&k))
            .collect();
        if drained.is_empty() {
            return Ok(0);
        }
        let batch: Vec<ReadCount> = drained
            .iter()
            .map(|((client_id, _), c)| {
                let credential = c.slot.credential();
                ReadCount {
                    client_id: *client_id,
                    component: credential.component.clone(),
                    appid: credential.appid.clone(),
                    count: c.reads.load(Ordering::Relaxed),
                    last_read_at: Timestamp::from_millis(c.last_ms.load(Ordering::Relaxed)),
                }
            })
            .collect();
        // A transaction per chunk: at a million authorizers one flush can carry hundreds of
        // thousands of counts, and one transaction would hold SQLite's write lock (and every
        // refresh's write behind it) for seconds.
        let mut written = 0;
        for (i, chunk) in batch.chunks(READ_FLUSH_CHUNK).enumerate() {
            if let Err(e) = store.clients().add_read_counts(chunk).await {
                // Put back what was not written, so no read is lost.
                for (key, count) in drained.into_iter().skip(i * READ_FLUSH_CHUNK) {
                    let (reads, last) = (
                        count.reads.load(Ordering::Relaxed),
                        count.last_ms.load(Ordering::Relaxed),
                    );
                    let slot = count.slot;
                    let entry = self.counts.entry(key).or_insert_with(|| Count {
                        slot,
                        reads: AtomicU64::new(0),
                        last_ms: AtomicI64::new(last),
                    });
                    entry.reads.fetch_add(reads, Ordering::Relaxed);
                    entry.last_ms.fetch_max(last, Ordering::Relaxed);
                }
                return Err(e);
            }
            written += chunk.len();
        }
        Ok(written)
    }

    /// Reads counted and not yet flushed (tests, metrics).
    pub fn pending(&self) -> u64 {
        self.counts
            .iter()
            .map(|e| e.reads.load(Ordering::Relaxed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NewClient;
    use crate::store;
    use crate::vault::generate_api_key;
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use secrecy::ExposeSecret;
    use tower::ServiceExt;

    async fn store_with_client(grant: AppidGrant, admin: bool) -> (Arc<dyn Store>, String) {
        let store = store::open("sqlite::memory:").await.expect("store");
        let key = generate_api_key();
        store
            .clients()
            .create_client(&NewClient {
                name: "svc".into(),
                key_hash: key.hash,
                key_hint: key.hint.clone(),
                grant,
                admin,
                created_at: Timestamp::now(),
            })
            .await
            .expect("create client");
        (store, key.key.expose_secret().to_owned())
    }

    fn appid(s: &str) -> Appid {
        Appid::parse(s).expect("appid")
    }

    fn router(index: Arc<KeyIndex>) -> Router {
        Router::new()
            .route(
                "/v1/tokens/{appid}",
                get(
                    |Authenticated(caller): Authenticated,
                     axum::extract::Path(a): axum::extract::Path<String>| async move {
                        caller.require_read(&a).map(|()| caller.name.clone())
                    },
                ),
            )
            .with_state(index)
    }

    async fn status(app: &Router, auth: Option<&str>, path: &str) -> StatusCode {
        let mut req = Request::get(path);
        if let Some(auth) = auth {
            req = req.header(AUTHORIZATION, auth);
        }
        app.clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("response")
            .status()
    }

    #[tokio::test]
    async fn missing_malformed_and_unknown_keys_get_401() {
        let (store, _) = store_with_client(AppidGrant::All, false).await;
        let app = router(Arc::new(KeyIndex::new(store, Duration::from_secs(30))));
        let path = "/v1/tokens/wxauthorizer00001";
        assert_eq!(status(&app, None, path).await, StatusCode::UNAUTHORIZED);
        assert_eq!(
            status(&app, Some("Basic abc"), path).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(&app, Some("Bearer nope"), path).await,
            StatusCode::UNAUTHORIZED
        );
        let forged = format!("Bearer {API_KEY_PREFIX}{}", "A".repeat(43));
        assert_eq!(
            status(&app, Some(&forged), path).await,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn key_for_appid_a_reading_appid_b_gets_403() {
        let (store, key) =
            store_with_client(AppidGrant::Only(vec![appid("wxauthorizer0000a")]), false).await;
        let app = router(Arc::new(KeyIndex::new(store, Duration::from_secs(30))));
        let bearer = format!("Bearer {key}");
        assert_eq!(
            status(&app, Some(&bearer), "/v1/tokens/wxauthorizer0000a").await,
            StatusCode::OK
        );
        assert_eq!(
            status(&app, Some(&bearer), "/v1/tokens/wxauthorizer0000b").await,
            StatusCode::FORBIDDEN
        );
    }

    #[tokio::test]
    async fn known_key_keeps_working_from_memory_when_the_store_is_gone() {
        let (store, key) = store_with_client(AppidGrant::All, true).await;
        let index = KeyIndex::new(store.clone(), Duration::ZERO);
        let caller = index.authenticate(&key).await.expect("valid key");
        assert!(caller.admin && caller.require_admin().is_ok());
        store.close().await;
        let again = index.authenticate(&key).await.expect("served from memory");
        assert_eq!(again.id, caller.id);
        let unknown = format!("{API_KEY_PREFIX}{}", "B".repeat(43));
        assert!(matches!(
            index.authenticate(&unknown).await,
            Err(AuthError::Unavailable(_))
        ));
    }

    fn rotation(previous_until: Option<Timestamp>) -> (crate::model::KeyRotation, String) {
        let key = generate_api_key();
        let rotation = crate::model::KeyRotation {
            key_hash: key.hash,
            key_hint: key.hint.clone(),
            previous_until,
            at: Timestamp::now(),
        };
        (rotation, key.key.expose_secret().to_owned())
    }

    #[tokio::test]
    async fn a_rotated_key_works_through_its_grace_and_is_refused_after_it() {
        let (store, old) = store_with_client(AppidGrant::All, false).await;
        let index = KeyIndex::new(store.clone(), Duration::from_secs(3600));
        index
            .authenticate(&old)
            .await
            .expect("valid before the rotation");

        // A grace that has not ended: both keys work, and the old one carries its end.
        let until = Timestamp::now().plus(Duration::from_secs(3600));
        let (r, new) = rotation(Some(until));
        let record = store
            .clients()
            .rotate_client_key("svc", &r)
            .await
            .expect("rotate")
            .expect("a live client");
        assert_eq!(record.previous_key.map(|p| p.expires_at), Some(until));
        index.forget_all();
        assert!(index.authenticate(&new).await.is_ok(), "the new key");
        assert!(
            index.authenticate(&old).await.is_ok(),
            "the old key in its grace"
        );

        // A grace that ended (set in the past, so no clock has to move): the old key is refused,
        // from memory too, though it is cached for an hour.
        let (r, newer) = rotation(Some(Timestamp::now().minus(Duration::from_secs(1))));
        store
            .clients()
            .rotate_client_key("svc", &r)
            .await
            .expect("rotate")
            .expect("live");
        index.forget_all();
        assert!(index.authenticate(&newer).await.is_ok());
        assert!(
            matches!(index.authenticate(&new).await, Err(AuthError::Invalid)),
            "grace over"
        );
        assert!(
            matches!(index.authenticate(&old).await, Err(AuthError::Invalid)),
            "two rotations ago"
        );

        // No grace: the previous key stops at once.
        let (r, newest) = rotation(None);
        store
            .clients()
            .rotate_client_key("svc", &r)
            .await
            .expect("rotate")
            .expect("live");
        index.forget_all();
        assert!(index.authenticate(&newest).await.is_ok());
        assert!(matches!(
            index.authenticate(&newer).await,
            Err(AuthError::Invalid)
        ));
    }

    #[tokio::test]
    async fn a_cached_key_whose_grace_ended_is_refused_though_its_cache_entry_is_fresh() {
        let (store, old) = store_with_client(AppidGrant::All, false).await;
        let index = KeyIndex::new(store.clone(), Duration::from_secs(3600));
        let ended = Timestamp::now().minus(Duration::from_secs(1));
        let (r, _new) = rotation(Some(ended));
        store
            .clients()
            .rotate_client_key("svc", &r)
            .await
            .expect("rotate")
            .expect("live");
        // As if it was authenticated during its grace a moment ago and cached for an hour.
        index.entries.insert(
            hash_api_key(&old),
            Entry::Known {
                caller: Arc::new(Caller {
                    id: 1,
                    name: "svc".into(),
                    admin: false,
                    grant: Grant::All,
                    expires_at: Some(ended),
                }),
                checked: Instant::now(),
            },
        );
        assert!(matches!(
            index.authenticate(&old).await,
            Err(AuthError::Invalid)
        ));
    }

    #[tokio::test]
    async fn revocation_takes_effect_after_the_ttl_or_forget() {
        let (store, key) = store_with_client(AppidGrant::All, false).await;
        let index = KeyIndex::new(store.clone(), Duration::from_secs(3600));
        index.authenticate(&key).await.expect("valid");
        assert!(
            store
                .clients()
                .revoke_client("svc", Timestamp::now())
                .await
                .expect("revoke")
        );
        assert!(
            index.authenticate(&key).await.is_ok(),
            "cached within the ttl"
        );
        index.forget_all();
        assert!(matches!(
            index.authenticate(&key).await,
            Err(AuthError::Invalid)
        ));
    }

    #[tokio::test]
    async fn read_counts_are_batched_and_survive_a_failed_flush() {
        let (store, key) = store_with_client(AppidGrant::All, false).await;
        let index = KeyIndex::new(store.clone(), Duration::from_secs(30));
        let caller = index.authenticate(&key).await.expect("valid");
        let component =
            crate::model::ComponentAppid::parse("wxcomponent0000001").expect("component");
        store
            .components()
            .ensure_component(&component, Timestamp::now())
            .await
            .expect("component");
        let cache = crate::tokens::cache::TokenCache::new();
        let one = cache.slot(&crate::model::Credential::authorizer(
            &component,
            &appid("wxauthorizer00001"),
        ));
        let two = cache.slot(&crate::model::Credential::authorizer(
            &component,
            &appid("wxauthorizer00002"),
        ));
        let counter = ReadCounter::default();
        for _ in 0..5 {
            counter.record(caller.id, &one);
        }
        counter.record(caller.id, &two);
        assert_eq!(counter.flush(&*store).await.expect("flush"), 2);
        assert_eq!(counter.flush(&*store).await.expect("nothing left"), 0);
        let counts = store
            .clients()
            .read_counts(Some(caller.id))
            .await
            .expect("counts");
        let total: u64 = counts.iter().map(|c| c.count).sum();
        assert_eq!(total, 6);

        counter.record(caller.id, &one);
        store.close().await;
        assert!(counter.flush(&*store).await.is_err());
        assert_eq!(counter.pending(), 1, "kept for the next flush");
    }
}
