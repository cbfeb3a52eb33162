//! Dashboard sessions and one-time sign-in links, kept in the store (`ui_sessions`) so that every
//! replica behind a load balancer knows them: a browser signed in through one replica is signed in
//! on all, and signing out anywhere ends the session everywhere.
//!
//! The store holds only the SHA-256 of a session id (the id is in the browser's cookie alone) and
//! the admin key's hash, never a key. The session's CSRF token is derived from the id under another
//! hash domain, so it is not stored at all and cannot be computed from what is.

use std::sync::Arc;
use std::time::Duration;

use sha2::Digest as _;

use crate::model::{ApiKeyHash, Timestamp, UiSessionKind, UiSessionRecord};
use crate::store::{Store, StoreError};

/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after sign-in, however used.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// A one-time sign-in link works this long.
pub const ONCE: Duration = Duration::from_secs(10 * 60);
/// At most this many sessions and links are stored; past it, expired ones are pruned and, if
/// still full, the sign-in is refused (a flood of sign-ins with a valid admin key cannot fill the
/// store).
const MAX_SESSIONS: u64 = 10_000;
/// A session's last use is written at most this often (reads of pages do not each write).
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// The signed-in sessions of every replica, in the store.
pub struct Sessions {
    store: Arc<dyn Store>,
}

/// A live session: whose key, its client's name, the CSRF token of its forms.
#[derive(Debug)]
pub struct Live {
    pub key: ApiKeyHash,
    pub name: String,
    pub csrf: String,
}

impl Sessions {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    fn digest(id: &str) -> [u8; 32] {
        sha2::Sha256::digest(id.as_bytes()).into()
    }

    /// The CSRF token of session `id`: a hash of the id in its own domain.
    fn csrf(id: &str) -> String {
        use base64::Engine as _;
        let mut h = sha2::Sha256::new();
        h.update(b"wxtoken dashboard csrf\0");
        h.update(id.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.finalize())
    }

    async fn insert(
        &self,
        kind: UiSessionKind,
        key: ApiKeyHash,
        name: String,
        now: Timestamp,
    ) -> Result<Option<String>, StoreError> {
        let ops = self.store.ops();
        if ops.count_ui_sessions().await? >= MAX_SESSIONS {
            Self::prune_at(&*self.store, now).await?;
            if ops.count_ui_sessions().await? >= MAX_SESSIONS {
                return Ok(None);
            }
        }
        let id = super::random_token();
        ops.create_ui_session(&UiSessionRecord {
            digest: Self::digest(&id),
            kind,
            key_hash: key,
            client_name: name,
            created_at: now,
            last_seen_at: now,
        })
        .await?;
        Ok(Some(id))
    }

    /// A new session for the key `key` of client `name`; its id (for the cookie), or `None` when
    /// the table is full.
    pub async fn create(
        &self,
        key: ApiKeyHash,
        name: String,
    ) -> Result<Option<String>, StoreError> {
        self.insert(UiSessionKind::Session, key, name, Timestamp::now())
            .await
    }

    /// A one-time sign-in token for the admin key `key` of client `name` (`wxtoken demo` prints it
    /// as a link): exchanged once, within 10 minutes, on any replica, for a session; the key never
    /// is in a URL.
    /// `None` when the table is full.
    pub async fn one_time_token(
        &self,
        key: ApiKeyHash,
        name: String,
    ) -> Result<Option<String>, StoreError> {
        self.insert(UiSessionKind::Once, key, name, Timestamp::now())
            .await
    }

    /// Takes the one-time token `token`: its key and client name if it was a live link (it is gone
    /// afterwards either way).
    pub async fn take_once(&self, token: &str) -> Result<Option<(ApiKeyHash, String)>, StoreError> {
        let taken = self
            .store
            .ops()
            .take_ui_session(&Self::digest(token))
            .await?;
        let now = Timestamp::now();
        Ok(taken
            .filter(|r| r.kind == UiSessionKind::Once && now.since(r.created_at) < ONCE)
            .map(|r| (r.key_hash, r.client_name)))
    }

    /// Ends session `id` (sign-out, or its key no longer works).
    pub async fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.store
            .ops()
            .take_ui_session(&Self::digest(id))
            .await
            .map(drop)
    }

    /// The live session `id`, its use recorded; `None` if there is none (an expired one is
    /// deleted).
    pub async fn touch(&self, id: &str) -> Result<Option<Live>, StoreError> {
        self.touch_at(id, Timestamp::now()).await
    }

    pub(super) async fn touch_at(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<Live>, StoreError> {
        let digest = Self::digest(id);
        let ops = self.store.ops();
        let Some(r) = ops.ui_session(&digest).await? else {
            return Ok(None);
        };
        if r.kind != UiSessionKind::Session {
            return Ok(None);
        }
        if now.since(r.created_at) >= LIFETIME || now.since(r.last_seen_at) >= IDLE {
            ops.take_ui_session(&digest).await?;
            return Ok(None);
        }
        if now.since(r.last_seen_at) >= TOUCH_EVERY {
            ops.touch_ui_session(&digest, now).await?;
        }
        Ok(Some(Live {
            key: r.key_hash,
            name: r.client_name,
            csrf: Self::csrf(id),
        }))
    }

    /// Deletes every expired session and link.
    pub async fn prune(store: &dyn Store) -> Result<u64, StoreError> {
        Self::prune_at(store, Timestamp::now()).await
    }

    async fn prune_at(store: &dyn Store, now: Timestamp) -> Result<u64, StoreError> {
        // A link lives ONCE, a session LIFETIME; both end when idle (a link is never touched).
        store
            .ops()
            .prune_ui_sessions(now.minus(LIFETIME), now.minus(IDLE.max(ONCE)))
            .await
    }

    /// How many sessions and links are stored (every replica's).
    pub async fn count(&self) -> Result<u64, StoreError> {
        self.store.ops().count_ui_sessions().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::hash_api_key;

    async fn sessions() -> Sessions {
        Sessions::new(crate::store::open("sqlite::memory:").await.expect("store"))
    }

    #[tokio::test]
    async fn sessions_expire_when_idle_or_old_and_a_one_time_token_is_not_a_session() {
        let sessions = sessions().await;
        let key = hash_api_key("wxt_test");
        let id = sessions
            .create(key, "ops".into())
            .await
            .unwrap()
            .expect("room");
        let live = sessions.touch(&id).await.unwrap().expect("live");
        assert_eq!(live.name, "ops");
        assert_eq!(live.csrf, Sessions::csrf(&id));
        assert_ne!(live.csrf, id, "the CSRF token is not the session id");
        assert!(sessions.touch("not-a-session").await.unwrap().is_none());
        // Used again within its idle limit it lives on; after it, it is gone, and deleted.
        let later = Timestamp::now().plus(IDLE - Duration::from_secs(60));
        assert!(sessions.touch_at(&id, later).await.unwrap().is_some());
        let idle = later.plus(IDLE + Duration::from_secs(1));
        assert!(sessions.touch_at(&id, idle).await.unwrap().is_none());
        assert_eq!(sessions.count().await.unwrap(), 0);
        // However used, it ends at its lifetime.
        let id = sessions
            .create(key, "ops".into())
            .await
            .unwrap()
            .expect("room");
        let start = Timestamp::now();
        let mut at = start;
        while at.since(start) < LIFETIME - IDLE {
            at = at.plus(IDLE - Duration::from_secs(1));
            assert!(sessions.touch_at(&id, at).await.unwrap().is_some());
        }
        let end = start.plus(LIFETIME);
        assert!(sessions.touch_at(&id, end).await.unwrap().is_none());
        let once = sessions
            .one_time_token(key, "ops".into())
            .await
            .unwrap()
            .expect("room");
        assert!(
            sessions.touch(&once).await.unwrap().is_none(),
            "a sign-in link is not a session"
        );
        assert_eq!(
            sessions.take_once(&once).await.unwrap().map(|(_, n)| n),
            Some("ops".to_owned())
        );
        assert!(
            sessions.take_once(&once).await.unwrap().is_none(),
            "a link works once"
        );
    }

    #[tokio::test]
    async fn pruning_deletes_expired_sessions_and_links_only() {
        let store = crate::store::open("sqlite::memory:").await.expect("store");
        let sessions = Sessions::new(store.clone());
        let key = hash_api_key("wxt_test");
        let old = Timestamp::now().minus(LIFETIME + Duration::from_secs(1));
        sessions
            .insert(UiSessionKind::Session, key, "old".into(), old)
            .await
            .unwrap();
        sessions
            .insert(UiSessionKind::Once, key, "link".into(), old)
            .await
            .unwrap();
        let id = sessions.create(key, "new".into()).await.unwrap().unwrap();
        assert_eq!(Sessions::prune(&*store).await.unwrap(), 2);
        assert!(sessions.touch(&id).await.unwrap().is_some());
    }
}
