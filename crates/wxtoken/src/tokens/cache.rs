//! The in-memory read path: for each credential its current token (opened once, kept as a secret),
//! expiry, planned refresh time, generation and source, plus why there is no servable token when
//! there is none. The hottest path in the product.
//!
//! Depends on `model` and `plan` only. Invariants:
//! - A read takes no await and no database call: one shard read lock of a `DashMap` keyed by appid
//!   (looked up by `&str`, no allocation), one short `RwLock` read of the credential's slot, and an
//!   `Arc` clone of the token. No global lock: writers of one credential never block readers of
//!   another shard.
//! - Tokens only move forward: `publish` ignores a token whose generation is older than the one
//!   held (or, for a token not stored yet, not newer), so a slow writer can never replace a newer
//!   token in memory either.
//! - Every publish bumps the slot's `watch` channel, so a long-poll (`after=GEN`) wakes at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering as AtomicOrdering};
use std::time::Duration;

use dashmap::DashMap;
use hashbrown::HashTable;
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::model::{
    Appid, AuthorizerStatus, ComponentAppid, Credential, CredentialKind, Timestamp, TokenSource,
};
use crate::tokens::plan;

pub use crate::vault::TokenText;

/// A token as served.
pub struct CachedToken {
    pub access_token: TokenText,
    /// When it was obtained (token-age metrics).
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    /// When wxtoken plans to replace it; clients may cache it until then.
    pub refresh_at: Timestamp,
    pub generation: u64,
    pub source: TokenSource,
    /// Whether the store holds it. A token WeChat just issued is served at once, before its
    /// write lands (`generation` is then the one the write will produce if it lands first).
    pub stored: bool,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("expires_at", &self.expires_at)
            .field("refresh_at", &self.refresh_at)
            .field("generation", &self.generation)
            .field("source", &self.source)
            .field("stored", &self.stored)
            .finish_non_exhaustive()
    }
}

impl CachedToken {
    /// Whether `token` is this one (constant time: it came from a client).
    pub fn is(&self, token: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.access_token
            .expose_secret()
            .as_bytes()
            .ct_eq(token.as_bytes())
            .into()
    }
}

/// Why a read got no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// No such credential (→ 404).
    #[error("unknown appid")]
    Unknown,
    /// The appid is authorized to several components; name one.
    #[error("appid is known under several components")]
    Ambiguous,
    /// Nothing servable right now, refresh failing or not done yet (→ 503).
    #[error("no valid token right now: {reason}")]
    NoToken { reason: String },
    /// The authorization is lost and no token is left (→ 410).
    #[error("authorization lost: {reason}")]
    Gone { reason: String },
    /// The appid or component named is not a valid one (→ 400).
    #[error("{0}")]
    Invalid(String),
    /// Looking an appid up in the store failed (→ 503).
    #[error("storage: {0}")]
    Storage(String),
}

#[derive(Default)]
struct SlotState {
    token: Option<Arc<CachedToken>>,
    /// Why it fails, why it is not active: rare, so boxed (a slot with none pays 8 bytes, not 56:
    /// at a million credentials, 48 MB).
    notes: Option<Box<Notes>>,
}

#[derive(Default)]
struct Notes {
    /// The last refresh failure, cleared by the next success.
    failing: Option<String>,
    /// Why the authorizer is not active.
    status_reason: Option<String>,
}

impl SlotState {
    fn failing(&self) -> Option<&String> {
        self.notes.as_ref()?.failing.as_ref()
    }

    /// Changes the notes, dropping the box once both are empty.
    fn note(&mut self, change: impl FnOnce(&mut Notes)) {
        let notes = self.notes.get_or_insert_with(Box::default);
        change(notes);
        if notes.failing.is_none() && notes.status_reason.is_none() {
            self.notes = None;
        }
    }
}

/// One credential's entry: 96 bytes with its reference counts, so a million take 96 MB. The
/// credential is held in parts (the component shared by every slot of it) and the status beside
/// the lock, where it fills padding.
pub struct Slot {
    appid: Appid,
    component: Arc<ComponentAppid>,
    kind: CredentialKind,
    /// `None` for components and direct accounts (`status_code`); written only under `state`'s
    /// write lock, so a reader holding the read lock sees it consistent with the token.
    status: AtomicU8,
    state: RwLock<SlotState>,
    /// Created by the first long-poll: most credentials are never long-polled, and a channel
    /// costs about 450 bytes (100,000 credentials: 45 MB).
    generation: once_cell::race::OnceBox<watch::Sender<u64>>,
    /// The refresh schedule's deadline for this credential (0: none), kept here so the schedule
    /// needs no map of its own. Owned by `refresh::schedule`, written only under its lock.
    pub(crate) due: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("credential", &self.credential())
            .finish_non_exhaustive()
    }
}

fn status_code(status: Option<AuthorizerStatus>) -> u8 {
    match status {
        None => 0,
        Some(AuthorizerStatus::Active) => 1,
        Some(AuthorizerStatus::NeedsReauth) => 2,
        Some(AuthorizerStatus::Revoked) => 3,
    }
}

fn status_of(code: u8) -> Option<AuthorizerStatus> {
    match code {
        1 => Some(AuthorizerStatus::Active),
        2 => Some(AuthorizerStatus::NeedsReauth),
        3 => Some(AuthorizerStatus::Revoked),
        _ => None,
    }
}

impl Slot {
    fn new(credential: &Credential, component: Arc<ComponentAppid>) -> Self {
        Self {
            appid: credential.appid.clone(),
            component,
            kind: credential.kind,
            status: AtomicU8::new(0),
            state: RwLock::default(),
            generation: once_cell::race::OnceBox::new(),
            due: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The credential this slot holds (built from its parts: no allocation).
    pub fn credential(&self) -> Credential {
        Credential {
            component: ComponentAppid::clone(&self.component),
            kind: self.kind,
            appid: self.appid.clone(),
        }
    }

    pub fn appid(&self) -> &Appid {
        &self.appid
    }

    pub fn kind(&self) -> CredentialKind {
        self.kind
    }

    pub fn component(&self) -> &ComponentAppid {
        &self.component
    }

    /// Whether this is `credential`'s slot.
    pub fn is_for(&self, credential: &Credential) -> bool {
        self.appid == credential.appid
            && self.kind == credential.kind
            && *self.component == credential.component
    }

    fn status_locked(&self) -> Option<AuthorizerStatus> {
        status_of(self.status.load(AtomicOrdering::Relaxed))
    }

    /// The current token, whether servable or not.
    pub fn current(&self) -> Option<Arc<CachedToken>> {
        self.state.read().token.clone()
    }

    /// The token to hand out at `now`, or why there is none.
    pub fn read(
        &self,
        now: Timestamp,
        serve_margin: Duration,
    ) -> Result<Arc<CachedToken>, ReadError> {
        let state = self.state.read();
        let status = self.status_locked();
        if let Some(token) = &state.token
            && plan::serves(status, token.source)
            && plan::servable(now.as_millis(), token.expires_at.as_millis(), serve_margin)
        {
            return Ok(Arc::clone(token));
        }
        // A fallback token (appsecret) counts above; here no token is left.
        if let Some(status) = status
            && status != AuthorizerStatus::Active
        {
            let reason = state
                .notes
                .as_ref()
                .and_then(|n| n.status_reason.as_deref())
                .unwrap_or("");
            return Err(ReadError::Gone {
                reason: format!("{}: {reason}", status.as_str()),
            });
        }
        Err(ReadError::NoToken {
            reason: state
                .failing()
                .cloned()
                .unwrap_or_else(|| "no token yet".to_owned()),
        })
    }

    /// A receiver that changes whenever a newer generation lands (long-poll).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        // Under the state lock: a publish either happens before (and the channel starts at its
        // generation) or after (and finds the channel to send on).
        let state = self.state.read();
        let current = state.token.as_ref().map_or(0, |t| t.generation);
        self.generation
            .get_or_init(|| Box::new(watch::Sender::new(current)))
            .subscribe()
    }

    /// How many long-polls are waiting on this slot right now.
    pub fn watchers(&self) -> usize {
        self.generation
            .get()
            .map_or(0, watch::Sender::receiver_count)
    }

    /// Installs `token` unless the slot already holds one at least as new. True if installed.
    /// Precisely: a stored token replaces one of the same generation (its own write landing, or
    /// the token another writer stored at the generation an unstored one hoped for); a token not
    /// stored yet needs a strictly newer generation, so it never replaces a stored token of its
    /// own generation.
    ///
    /// A stored access token again at a newer generation (a write that changed only the refresh
    /// token or the status bumps the stored generation) keeps the generation it was first served
    /// at: it is not a new token, so it wakes no long-poll and a report of it is not answered with
    /// it as if it were newer.
    pub fn publish(&self, mut token: CachedToken) -> bool {
        {
            let mut state = self.state.write();
            // (Not for JS-SDK tickets: the same ticket written again moves its schedule on every
            // replica, and a replica waiting for another's refresh must see it as the answer.)
            if let Some(held) = &state.token
                && !self.kind.is_ticket()
                && held.stored
                && token.generation > held.generation
                && held.is(token.access_token.expose_secret())
            {
                token.generation = held.generation;
                token.stored |= held.stored;
                state.token = Some(Arc::new(token));
                return true;
            }
            let generation = token.generation;
            if state.token.as_ref().is_some_and(|t| {
                t.generation > generation || (t.generation == generation && !token.stored)
            }) {
                return false;
            }
            state.token = Some(Arc::new(token));
            if state.notes.is_some() {
                state.note(|n| n.failing = None);
            }
            if let Some(tx) = self.generation.get() {
                tx.send_if_modified(|g| {
                    let newer = generation > *g;
                    if newer {
                        *g = generation;
                    }
                    newer
                });
            }
        }
        true
    }

    /// The last refresh failure, if the last refresh failed.
    pub fn failing(&self) -> Option<String> {
        self.state.read().failing().cloned()
    }

    pub fn set_failing(&self, reason: Option<String>) {
        let mut state = self.state.write();
        if reason.is_some() || state.notes.is_some() {
            state.note(|n| n.failing = reason);
        }
    }

    /// Records an authorizer's status. A revocation drops the token: WeChat retires it at once.
    pub fn set_status(&self, status: AuthorizerStatus, reason: &str) {
        let mut state = self.state.write();
        if status == AuthorizerStatus::Revoked {
            state.token = None;
        }
        self.status
            .store(status_code(Some(status)), AtomicOrdering::Relaxed);
        // An active authorizer's reason is never shown.
        let reason = (status != AuthorizerStatus::Active).then(|| reason.to_owned());
        if reason.is_some() || state.notes.is_some() {
            state.note(|n| n.status_reason = reason);
        }
    }

    pub fn status(&self) -> Option<AuthorizerStatus> {
        let _state = self.state.read();
        self.status_locked()
    }
}

/// The slots, by appid: a sharded hash table of `Arc<Slot>` keyed by the slot's own appid, so an
/// entry is one pointer (8 bytes and a control byte) and the appid is held once, in the slot. A
/// `DashMap<Appid, SmallVec<Arc<Slot>>>` held the appid a second time and cost about 70 bytes an
/// entry at a typical load: 60 MB at a million credentials. An appid with several slots (one per
/// component and kind, rare) has several entries under the same hash.
///
/// Written by hand because no map crate keys a value by a field of itself without a second copy
/// of the key; the shards are hashbrown's `HashTable` behind parking_lot locks, as in `dashmap`.
struct SlotTable {
    shards: Box<[crossbeam_utils::CachePadded<Shard>]>,
    hasher: hashbrown::DefaultHashBuilder,
}

type Shard = RwLock<HashTable<Arc<Slot>>>;

impl Default for SlotTable {
    fn default() -> Self {
        // Four shards a core, as dashmap does, so writers of one shard rarely meet readers.
        let n = (std::thread::available_parallelism().map_or(4, usize::from) * 4)
            .next_power_of_two()
            .max(4);
        Self {
            shards: (0..n).map(|_| Default::default()).collect(),
            hasher: hashbrown::DefaultHashBuilder::default(),
        }
    }
}

impl SlotTable {
    fn hash(&self, appid: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, appid)
    }

    /// The shard of a hash: bits the table itself does not use to place or tag entries (it uses
    /// the lowest for the bucket and the top seven for the tag).
    fn shard(&self, hash: u64) -> &Shard {
        let index = usize::try_from(hash >> 32).unwrap_or(0) & (self.shards.len() - 1);
        &self.shards[index]
    }

    fn rehash(&self) -> impl Fn(&Arc<Slot>) -> u64 + '_ {
        |slot| self.hash(slot.appid.as_str())
    }

    /// Calls `f` with the slots of `appid`, under its shard's read lock.
    fn with<R>(&self, appid: &str, f: impl for<'a> FnOnce(SlotsOf<'a>) -> R) -> R {
        let hash = self.hash(appid);
        let shard = self.shard(hash).read();
        f(SlotsOf {
            candidates: shard.iter_hash(hash),
            appid,
        })
    }

    fn get_or_insert(&self, credential: &Credential, component: Arc<ComponentAppid>) -> Arc<Slot> {
        let hash = self.hash(credential.appid.as_str());
        let mut shard = self.shard(hash).write();
        if let Some(slot) = shard.find(hash, |s| s.is_for(credential)) {
            return Arc::clone(slot);
        }
        let slot = Arc::new(Slot::new(credential, component));
        shard.insert_unique(hash, Arc::clone(&slot), self.rehash());
        slot
    }

    fn remove(&self, credential: &Credential) {
        let hash = self.hash(credential.appid.as_str());
        let mut shard = self.shard(hash).write();
        if let Ok(entry) = shard.find_entry(hash, |s| s.is_for(credential)) {
            entry.remove();
        }
    }

    fn for_each(&self, mut f: impl FnMut(&Slot)) {
        for shard in &self.shards {
            for slot in shard.read().iter() {
                f(slot);
            }
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }
}

/// The slots of one appid (the entries under its hash whose appid it is).
struct SlotsOf<'a> {
    candidates: hashbrown::hash_table::IterHash<'a, Arc<Slot>>,
    appid: &'a str,
}

impl<'a> Iterator for SlotsOf<'a> {
    type Item = &'a Arc<Slot>;

    fn next(&mut self) -> Option<Self::Item> {
        self.candidates
            .by_ref()
            .find(|s| s.appid.as_str() == self.appid)
    }
}

/// Every credential's slot, by appid.
#[derive(Default)]
pub struct TokenCache {
    by_appid: SlotTable,
    /// Every component named by a slot, held once and shared by its slots (a handful).
    components: RwLock<Vec<Arc<ComponentAppid>>>,
    /// Appids found in neither memory nor the store, and when (see `Engine::lookup`).
    unknown: DashMap<String, std::time::Instant>,
}

impl TokenCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The slot of `credential`, created empty if absent.
    pub fn slot(&self, credential: &Credential) -> Arc<Slot> {
        if let Some(slot) = self.get(credential) {
            return slot;
        }
        self.by_appid
            .get_or_insert(credential, self.intern(&credential.component))
    }

    fn intern(&self, component: &ComponentAppid) -> Arc<ComponentAppid> {
        if let Some(held) = self.components.read().iter().find(|c| ***c == *component) {
            return Arc::clone(held);
        }
        let mut components = self.components.write();
        if let Some(held) = components.iter().find(|c| ***c == *component) {
            return Arc::clone(held);
        }
        let held = Arc::new(component.clone());
        components.push(Arc::clone(&held));
        held
    }

    pub fn get(&self, credential: &Credential) -> Option<Arc<Slot>> {
        self.by_appid.with(credential.appid.as_str(), |mut slots| {
            slots.find(|s| s.is_for(credential)).cloned()
        })
    }

    /// An authorizer's or direct account's slot by appid (never a component's or a ticket's),
    /// under `component` or, when `None`, under whichever single component has it.
    pub fn find(&self, component: Option<&str>, appid: &str) -> Result<Arc<Slot>, ReadError> {
        self.by_appid.with(appid, |slots| {
            let mut found = slots.filter(|s| {
                matches!(s.kind, CredentialKind::Authorizer | CredentialKind::Direct)
                    && component.is_none_or(|c| s.component.as_str() == c)
            });
            let first = found.next().ok_or(ReadError::Unknown)?;
            let mut chosen = first;
            for other in found {
                if other.component != first.component {
                    return Err(ReadError::Ambiguous);
                }
                // The same appid as an authorizer and a direct account of one component (a
                // database from before such pairs were refused or folded): the authorizer answers.
                if other.kind == CredentialKind::Authorizer {
                    chosen = other;
                }
            }
            Ok(Arc::clone(chosen))
        })
    }

    /// Whether `appid` was found unknown (in neither memory nor the store) less than `ttl` ago.
    pub fn recently_unknown(&self, appid: &str, ttl: Duration) -> bool {
        self.unknown.get(appid).is_some_and(|at| at.elapsed() < ttl)
    }

    /// Remembers `appid` as unknown; forgets them all once `max` are remembered.
    pub fn remember_unknown(&self, appid: &str, max: usize) {
        if self.unknown.len() >= max {
            self.unknown.clear();
        }
        self.unknown
            .insert(appid.to_owned(), std::time::Instant::now());
    }

    /// The component token's slot.
    pub fn component(&self, component: &ComponentAppid) -> Option<Arc<Slot>> {
        self.by_appid.with(component.as_str(), |mut slots| {
            slots
                .find(|s| s.kind == CredentialKind::Component && *s.component == *component)
                .cloned()
        })
    }

    /// Drops a credential's slot; long-polls already waiting on it end at their own timeout.
    pub fn remove(&self, credential: &Credential) {
        self.by_appid.remove(credential);
    }

    /// Calls `f` with every slot (metrics, admin views); holds one shard lock at a time.
    pub fn for_each(&self, f: impl FnMut(&Slot)) {
        self.by_appid.for_each(f);
    }

    /// Number of credentials held.
    pub fn len(&self) -> usize {
        self.by_appid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(value: &str, generation: u64, expires_at: i64) -> CachedToken {
        CachedToken {
            access_token: TokenText::from(value),
            issued_at: Timestamp::from_millis(0),
            expires_at: Timestamp::from_millis(expires_at),
            refresh_at: Timestamp::from_millis(expires_at / 2),
            generation,
            source: TokenSource::AuthorizerToken,
            stored: true,
        }
    }

    #[test]
    fn the_same_stored_token_at_a_newer_generation_keeps_its_generation_and_wakes_no_long_poll() {
        let cache = TokenCache::new();
        let c = Credential::component(&ComponentAppid::parse("wxc").unwrap());
        let slot = cache.slot(&c);
        assert!(slot.publish(token("access-a", 3, 10_000)));
        let rx = slot.subscribe();
        // A write that changed only the refresh token bumped the stored generation to 4.
        assert!(slot.publish(token("access-a", 4, 10_000)));
        assert_eq!(slot.current().unwrap().generation, 3, "not a new token");
        assert!(!rx.has_changed().unwrap(), "no long-poll woken");
        // A new access token moves on as usual.
        assert!(slot.publish(token("access-b", 5, 20_000)));
        assert_eq!(slot.current().unwrap().generation, 5);
        assert!(rx.has_changed().unwrap());
    }

    #[test]
    fn unstored_token_needs_a_newer_generation_and_its_stored_copy_replaces_it() {
        let cache = TokenCache::new();
        let slot = cache.slot(&cred("wxc", "wxa"));
        assert!(slot.publish(token("stored5", 5, 100_000)));
        let unstored = |v: &str, g| CachedToken {
            stored: false,
            ..token(v, g, 100_000)
        };
        // Hoping for generation 5, which another writer already stored: refused.
        assert!(!slot.publish(unstored("ours5", 5)));
        assert!(slot.current().unwrap().is("stored5"));
        // Hoping for 6: served at once.
        assert!(slot.publish(unstored("ours6", 6)));
        assert!(!slot.current().unwrap().stored);
        // Another writer's token stored at 6 (or ours landing): replaces it.
        assert!(slot.publish(token("theirs6", 6, 100_000)));
        let current = slot.current().unwrap();
        assert!(current.is("theirs6") && current.stored);
        assert!(!slot.publish(unstored("late6", 6)));
    }

    fn cred(component: &str, appid: &str) -> Credential {
        Credential::authorizer(
            &ComponentAppid::parse(component).unwrap(),
            &Appid::parse(appid).unwrap(),
        )
    }

    #[test]
    fn older_generation_never_replaces_a_newer_token() {
        let cache = TokenCache::new();
        let slot = cache.slot(&cred("wxc", "wxa"));
        assert!(slot.publish(token("new", 5, 100_000)));
        assert!(!slot.publish(token("old", 4, 100_000)));
        assert!(slot.current().unwrap().is("new"));
    }

    #[test]
    fn token_inside_the_serve_margin_is_not_served() {
        let cache = TokenCache::new();
        let slot = cache.slot(&cred("wxc", "wxa"));
        slot.publish(token("t", 1, 100_000));
        let margin = Duration::from_secs(60);
        assert!(slot.read(Timestamp::from_millis(39_999), margin).is_ok());
        slot.set_failing(Some("transient: HTTP 500".into()));
        assert_eq!(
            slot.read(Timestamp::from_millis(40_000), margin)
                .unwrap_err(),
            ReadError::NoToken {
                reason: "transient: HTTP 500".into()
            }
        );
    }

    #[test]
    fn revoked_authorizer_reads_gone_unless_its_appsecret_fallback_has_a_token() {
        let cache = TokenCache::new();
        let slot = cache.slot(&cred("wxc", "wxa"));
        slot.publish(token("t", 1, i64::MAX));
        slot.set_status(AuthorizerStatus::Revoked, "unauthorized event");
        assert!(matches!(
            slot.read(Timestamp::from_millis(0), Duration::ZERO),
            Err(ReadError::Gone { .. })
        ));
        let mut fallback = token("stable", 2, i64::MAX);
        fallback.source = TokenSource::StableToken;
        slot.publish(fallback);
        assert!(
            slot.read(Timestamp::from_millis(0), Duration::ZERO)
                .unwrap()
                .is("stable")
        );
        // The fallback may come from cgi-bin/token (refresh.direct_token_api = "token").
        let mut from_token_api = token("cgi-bin", 3, i64::MAX);
        from_token_api.source = TokenSource::Token;
        slot.publish(from_token_api);
        assert!(
            slot.read(Timestamp::from_millis(0), Duration::ZERO)
                .unwrap()
                .is("cgi-bin")
        );
    }

    #[test]
    fn a_slot_with_its_reference_counts_fits_a_96_byte_allocation() {
        // At a million credentials every 8 bytes here is 8 MB, and one byte more than 80 puts
        // every slot in the allocator's next size class (112 bytes).
        assert!(std::mem::size_of::<Slot>() <= 80);
    }

    #[test]
    fn a_token_with_its_reference_counts_fits_a_64_byte_allocation() {
        assert!(std::mem::size_of::<CachedToken>() <= 48);
        let text = "x".repeat(139);
        assert_eq!(TokenText::from(text.as_str()).expose_secret(), text);
    }

    #[test]
    fn slots_of_one_appid_under_several_components_are_kept_and_removed_apart() {
        let cache = TokenCache::new();
        let one = cred("wxc1", "wxa");
        let two = cred("wxc2", "wxa");
        let first = cache.slot(&one);
        cache.slot(&two);
        assert!(Arc::ptr_eq(&first, &cache.slot(&one)), "no second slot");
        assert_eq!(cache.len(), 2);
        cache.remove(&two);
        assert!(cache.get(&two).is_none());
        assert!(Arc::ptr_eq(&first, &cache.get(&one).unwrap()));
        assert!(cache.find(None, "wxa").is_ok());
        let component = Credential::component(&ComponentAppid::parse("wxa").unwrap());
        cache.slot(&component);
        assert!(
            cache
                .component(&ComponentAppid::parse("wxa").unwrap())
                .is_some()
        );
        assert!(
            cache.find(None, "wxa").is_ok(),
            "a component slot is not an authorizer's"
        );
        let mut seen = 0;
        cache.for_each(|_| seen += 1);
        assert_eq!(seen, 2);
    }

    #[test]
    fn appid_alone_is_found_unless_two_components_have_it() {
        let cache = TokenCache::new();
        cache.slot(&cred("wxc1", "wxa"));
        assert!(cache.find(None, "wxa").is_ok());
        assert_eq!(cache.find(None, "wxb").unwrap_err(), ReadError::Unknown);
        cache.slot(&cred("wxc2", "wxa"));
        assert_eq!(cache.find(None, "wxa").unwrap_err(), ReadError::Ambiguous);
        assert!(cache.find(Some("wxc2"), "wxa").is_ok());
    }

    #[tokio::test]
    async fn long_poll_wakes_when_a_newer_generation_lands() {
        let cache = Arc::new(TokenCache::new());
        let slot = cache.slot(&cred("wxc", "wxa"));
        slot.publish(token("a", 1, i64::MAX));
        let mut rx = slot.subscribe();
        let waiter = tokio::spawn(async move { *rx.wait_for(|g| *g > 1).await.unwrap() });
        slot.publish(token("b", 2, i64::MAX));
        assert_eq!(waiter.await.unwrap(), 2);
    }
}
