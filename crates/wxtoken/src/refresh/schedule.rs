//! The due-time queue: a binary heap of (deadline, slot), never a poll over the whole table. A
//! credential's current deadline is kept in its cache slot (`Slot::due`), so the schedule holds no
//! map and no copy of the credential: 16 bytes a heap entry. Replacing a deadline pushes a new
//! entry; an entry whose deadline is no longer its slot's is stale and skipped when it surfaces
//! (lazy deletion), so `set` and `pop_due` are O(log n). Stale entries are swept out once they
//! outnumber the live ones, so the heap stays within about twice the scheduled credentials.
//!
//! Uses tokio's `Instant`, so scheduler tests run on paused time.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::Credential;
use crate::tokens::cache::Slot;

/// A deadline as the slot holds it: 1 + nanoseconds after the schedule's base (0 is "none").
type Mark = u64;

struct Entry {
    at: Mark,
    slot: Arc<Slot>,
}

impl Entry {
    fn live(&self) -> bool {
        self.slot.due.load(Relaxed) == self.at
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at
            .cmp(&other.at)
            .then_with(|| Arc::as_ptr(&self.slot).cmp(&Arc::as_ptr(&other.slot)))
    }
}

/// Stale entries tolerated beyond the live ones before a sweep.
const SWEEP_SLACK: usize = 1024;

/// The marks in the slots are only written under the lock that guards this (`Scheduling::heap`).
pub(crate) struct Schedule {
    heap: BinaryHeap<Reverse<Entry>>,
    base: Instant,
    /// Slots with a deadline.
    live: usize,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            base: Instant::now(),
            live: 0,
        }
    }
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schedule")
            .field("live", &self.live)
            .field("entries", &self.heap.len())
            .finish_non_exhaustive()
    }
}

impl Schedule {
    fn mark(&self, at: Instant) -> Mark {
        let nanos = at.saturating_duration_since(self.base).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1
    }

    fn instant(&self, mark: Mark) -> Instant {
        self.base + Duration::from_nanos(mark - 1)
    }

    /// Sets (or replaces) the deadline of `slot`'s credential.
    pub(crate) fn set(&mut self, slot: Arc<Slot>, at: Instant) {
        let mark = self.mark(at);
        let held = slot.due.swap(mark, Relaxed);
        if held == mark {
            return;
        }
        if held == 0 {
            self.live += 1;
        }
        self.heap.push(Reverse(Entry { at: mark, slot }));
        if self.heap.len() > 2 * self.live + SWEEP_SLACK {
            self.heap.retain(|Reverse(e)| e.live());
        }
    }

    pub(crate) fn remove(&mut self, slot: &Slot) {
        if slot.due.swap(0, Relaxed) != 0 {
            self.live -= 1;
        }
    }

    pub(crate) fn deadline(&self, slot: &Slot) -> Option<Instant> {
        let mark = slot.due.load(Relaxed);
        (mark != 0).then(|| self.instant(mark))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// The earliest live deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        self.drop_stale();
        let at = self.heap.peek()?.0.at;
        Some(self.instant(at))
    }

    /// The earliest live deadline and its credential.
    pub(crate) fn next(&mut self) -> Option<(Instant, Credential)> {
        self.drop_stale();
        let Reverse(entry) = self.heap.peek()?;
        Some((self.instant(entry.at), entry.slot.credential()))
    }

    /// Removes and returns every credential due at `now`, earliest first, at most `limit`.
    pub(crate) fn pop_due(&mut self, now: Instant, limit: usize) -> Vec<Credential> {
        let now = self.mark(now);
        let mut due = Vec::new();
        while due.len() < limit {
            self.drop_stale();
            match self.heap.peek() {
                Some(Reverse(entry)) if entry.at <= now => {
                    let Some(Reverse(entry)) = self.heap.pop() else {
                        break;
                    };
                    // Any other entry of this slot is stale from here on.
                    entry.slot.due.store(0, Relaxed);
                    self.live -= 1;
                    due.push(entry.slot.credential());
                }
                _ => break,
            }
        }
        due
    }

    fn drop_stale(&mut self) {
        while let Some(Reverse(entry)) = self.heap.peek() {
            if entry.live() {
                return;
            }
            self.heap.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Appid, ComponentAppid};
    use crate::tokens::cache::TokenCache;

    fn cred(appid: &str) -> Credential {
        Credential::authorizer(
            &ComponentAppid::parse("wxc").unwrap(),
            &Appid::parse(appid).unwrap(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn due_credentials_come_out_in_deadline_order_and_only_when_due() {
        let cache = TokenCache::new();
        let mut s = Schedule::default();
        let now = Instant::now();
        s.set(cache.slot(&cred("b")), now + Duration::from_secs(2));
        s.set(cache.slot(&cred("a")), now + Duration::from_secs(1));
        s.set(cache.slot(&cred("c")), now + Duration::from_secs(3));
        assert!(s.pop_due(now, 10).is_empty());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(s.pop_due(Instant::now(), 10), vec![cred("a"), cred("b")]);
        assert_eq!(s.next_deadline(), Some(now + Duration::from_secs(3)));
        assert_eq!(s.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn replacing_a_deadline_fires_once_at_the_new_time() {
        let cache = TokenCache::new();
        let a = cache.slot(&cred("a"));
        let mut s = Schedule::default();
        let now = Instant::now();
        s.set(Arc::clone(&a), now + Duration::from_secs(1));
        s.set(Arc::clone(&a), now + Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(s.pop_due(Instant::now(), 10).is_empty());
        assert_eq!(s.deadline(&a), Some(now + Duration::from_secs(5)));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(s.pop_due(Instant::now(), 10), vec![cred("a")]);
        assert!(s.pop_due(Instant::now(), 10).is_empty());
        assert_eq!(s.next_deadline(), None);
        assert_eq!(s.deadline(&a), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_set_back_to_an_earlier_one_still_fires_once() {
        let cache = TokenCache::new();
        let a = cache.slot(&cred("a"));
        let mut s = Schedule::default();
        let now = Instant::now();
        s.set(Arc::clone(&a), now + Duration::from_secs(1));
        s.set(Arc::clone(&a), now + Duration::from_secs(5));
        s.set(Arc::clone(&a), now + Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(s.pop_due(Instant::now(), 10), vec![cred("a")]);
        assert_eq!(s.next_deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn removed_credential_never_fires() {
        let cache = TokenCache::new();
        let a = cache.slot(&cred("a"));
        let mut s = Schedule::default();
        let now = Instant::now();
        s.set(Arc::clone(&a), now);
        s.remove(&a);
        assert!(s.pop_due(now, 10).is_empty());
        assert_eq!(s.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn rescheduling_many_times_keeps_the_heap_bounded() {
        let cache = TokenCache::new();
        let slots: Vec<_> = (0..10)
            .map(|i| cache.slot(&cred(&format!("a{i}"))))
            .collect();
        let mut s = Schedule::default();
        let now = Instant::now();
        for round in 1..=1000u64 {
            for slot in &slots {
                s.set(Arc::clone(slot), now + Duration::from_secs(round));
            }
        }
        assert!(s.heap.len() <= 2 * slots.len() + SWEEP_SLACK + 1);
        tokio::time::advance(Duration::from_secs(1000)).await;
        assert_eq!(s.pop_due(Instant::now(), 100).len(), slots.len());
    }
}

/// The scheduler's state: due times, the loop's wake-up, and consecutive failures per credential
/// (the backoff attempt number).
#[derive(Default)]
pub(crate) struct Scheduling {
    pub(crate) heap: parking_lot::Mutex<Schedule>,
    pub(crate) wake: tokio::sync::Notify,
    pub(crate) failures: parking_lot::Mutex<std::collections::HashMap<Credential, u32>>,
    /// When each JS-SDK ticket was last read: an idle one is let go when it comes due
    /// (`tickets.rs`).
    pub(crate) ticket_reads: super::tickets::TicketReads,
}
