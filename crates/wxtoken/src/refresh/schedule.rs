//! The due-time queue: one entry per credential, a binary heap ordered by deadline (never a poll
//! over the whole table). Replacing a credential's deadline pushes a new heap entry and bumps the
//! credential's sequence number; stale heap entries are skipped when they surface (lazy deletion),
//! so `set` and `pop_due` are O(log n).
//!
//! Uses tokio's `Instant`, so scheduler tests run on paused time. The heap and the map share one
//! `Arc<Credential>` per entry (not two copies of its strings): with 100,000 credentials that is
//! about 15 MB less.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use tokio::time::Instant;

use crate::model::Credential;

#[derive(Debug, Default)]
pub(crate) struct Schedule {
    heap: BinaryHeap<Reverse<(Instant, u64, Arc<Credential>)>>,
    current: HashMap<Arc<Credential>, (Instant, u64)>,
    seq: u64,
}

impl Schedule {
    /// Sets (or replaces) the deadline of `credential`.
    pub(crate) fn set(&mut self, credential: Credential, at: Instant) {
        self.seq += 1;
        // Reuse the key already held for this credential, if any.
        let key = match self.current.get_key_value(&credential) {
            Some((key, _)) => Arc::clone(key),
            None => Arc::new(credential),
        };
        self.current.insert(Arc::clone(&key), (at, self.seq));
        self.heap.push(Reverse((at, self.seq, key)));
    }

    pub(crate) fn remove(&mut self, credential: &Credential) {
        self.current.remove(credential);
    }

    pub(crate) fn deadline(&self, credential: &Credential) -> Option<Instant> {
        self.current.get(credential).map(|(t, _)| *t)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.current.len()
    }

    /// The earliest live deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        self.drop_stale();
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }

    /// The earliest live deadline and its credential.
    pub(crate) fn next(&mut self) -> Option<(Instant, Credential)> {
        self.drop_stale();
        self.heap
            .peek()
            .map(|Reverse((t, _, credential))| (*t, Credential::clone(credential)))
    }

    /// Removes and returns every credential due at `now`, earliest first, at most `limit`.
    pub(crate) fn pop_due(&mut self, now: Instant, limit: usize) -> Vec<Credential> {
        let mut due = Vec::new();
        while due.len() < limit {
            self.drop_stale();
            match self.heap.peek() {
                Some(Reverse((t, _, _))) if *t <= now => {
                    let Some(Reverse((_, _, credential))) = self.heap.pop() else {
                        break;
                    };
                    self.current.remove(&*credential);
                    due.push(Arc::unwrap_or_clone(credential));
                }
                _ => break,
            }
        }
        due
    }

    fn drop_stale(&mut self) {
        while let Some(Reverse((_, seq, credential))) = self.heap.peek() {
            if self
                .current
                .get(&**credential)
                .is_some_and(|(_, s)| s == seq)
            {
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
    use std::time::Duration;

    fn cred(appid: &str) -> Credential {
        Credential::authorizer(
            &ComponentAppid::parse("wxc").unwrap(),
            &Appid::parse(appid).unwrap(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn due_credentials_come_out_in_deadline_order_and_only_when_due() {
        let mut s = Schedule::default();
        let now = Instant::now();
        s.set(cred("b"), now + Duration::from_secs(2));
        s.set(cred("a"), now + Duration::from_secs(1));
        s.set(cred("c"), now + Duration::from_secs(3));
        assert!(s.pop_due(now, 10).is_empty());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(s.pop_due(Instant::now(), 10), vec![cred("a"), cred("b")]);
        assert_eq!(s.next_deadline(), Some(now + Duration::from_secs(3)));
        assert_eq!(s.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn replacing_a_deadline_fires_once_at_the_new_time() {
        let mut s = Schedule::default();
        let now = Instant::now();
        s.set(cred("a"), now + Duration::from_secs(1));
        s.set(cred("a"), now + Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(s.pop_due(Instant::now(), 10).is_empty());
        assert_eq!(s.deadline(&cred("a")), Some(now + Duration::from_secs(5)));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(s.pop_due(Instant::now(), 10), vec![cred("a")]);
        assert!(s.pop_due(Instant::now(), 10).is_empty());
        assert_eq!(s.next_deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn removed_credential_never_fires() {
        let mut s = Schedule::default();
        let now = Instant::now();
        s.set(cred("a"), now);
        s.remove(&cred("a"));
        assert!(s.pop_due(now, 10).is_empty());
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
