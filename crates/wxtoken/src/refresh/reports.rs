//! Invalidation reports (SPEC.md rules 6, 10 and 11): a client got 40001/42001 with a token and
//! says so. The rules, each enforced here:
//!
//! 1. **Only the current token.** A report of a token already replaced is answered with the
//!    current one, and WeChat is not called ([`Engine::invalidate`]).
//! 2. **One forced refresh per credential per `refresh.min_force_interval`, across replicas.**
//!    The refresh a report forces first claims the credential's force budget: a lease row
//!    (`LeaseKey::Force`) taken until the interval ends and never released, so on PostgreSQL
//!    every replica sees the same claim, and on either backend a restart does not reset it. A
//!    report inside the interval is answered with the current token, no upstream call. Memory
//!    remembers a claim's expiry, so a reporting loop costs no store round trip either. If the
//!    store cannot be reached, the claim is made in memory alone (this replica's budget still
//!    bounds its calls).
//! 3. **Rogue refreshers are found.** A reported token younger than `refresh.rogue_window` is
//!    first checked with one getcallbackip call (under the budget above). If WeChat accepts it,
//!    the report was wrong: nothing is refreshed. If WeChat refuses it, it was retired by a
//!    refresh wxtoken did not make: when this process obtained that token and knows of no other
//!    attempt since (no refresh of its own with an unknown outcome, no other replica's lease on
//!    the credential), that is a rogue refresher: alert `rogue_refresher` naming the reporting
//!    client, count it, record it for `authorizers show`, and refresh once. Otherwise (the token
//!    came from the store after a restart, another replica was refreshing) a wxtoken process that
//!    died between WeChat's answer and its store write explains it as well, and no alert is
//!    raised.
//!
//! Depends on `store` (the lease role), the engine's upstream client and `alerts`.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use wechat::client::WechatError;
use wechat::errcode::ErrorClass;

use super::{Engine, Inner, Mode, Outcome, RefreshError};
use crate::alerts::{Alert, AlertKind};
use crate::model::{Credential, CredentialKind, Timestamp};
use crate::store::LeaseKey;
use crate::telemetry;
use crate::tokens::cache::CachedToken;

/// Entries kept before expired ones are pruned.
const PRUNE_ABOVE: usize = 4096;

/// A map of credentials whose entries expire, pruned when it has doubled since the last pruning
/// (never below [`PRUNE_ABOVE`]): with a million credentials, tens of thousands of entries can be
/// live at once, and pruning at a fixed size would scan them all on every insert.
pub(crate) struct Book<V> {
    map: HashMap<Credential, V>,
    prune_at: usize,
}

impl<V> Default for Book<V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            prune_at: PRUNE_ABOVE,
        }
    }
}

impl<V> Book<V> {
    /// Inserts, first dropping the entries `live` says are over when the map is due for it.
    /// Amortized O(1).
    pub(crate) fn insert(
        &mut self,
        credential: Credential,
        value: V,
        live: impl FnMut(&V) -> bool,
    ) {
        if self.map.len() >= self.prune_at {
            let mut live = live;
            self.map.retain(|_, v| live(v));
            self.prune_at = (self.map.len() * 2).max(PRUNE_ABOVE);
        }
        self.map.insert(credential, value);
    }

    pub(crate) fn get(&self, credential: &Credential) -> Option<&V> {
        self.map.get(credential)
    }

    pub(crate) fn remove(&mut self, credential: &Credential) -> Option<V> {
        self.map.remove(credential)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// A token this process obtained from WeChat: when, and a fingerprint of it (never the token).
#[derive(Clone, Copy)]
struct Obtained {
    issued_at: Timestamp,
    fingerprint: u64,
}

/// The report state of every credential.
pub(crate) struct Reports {
    /// Until when a credential's force budget is known to be spent (claimed by this process, or
    /// by another as the store said).
    spent_until: Mutex<Book<Timestamp>>,
    /// Tokens obtained by this process within the rogue window, with no refresh attempt of
    /// unknown outcome since.
    obtained: Mutex<Book<Obtained>>,
    /// The generation of the token a report's flight last went to refresh because it was refused
    /// (or old enough to be): a later report of that same token, inside the budget, waits a moment
    /// for the new one rather than being handed a token known to be refused.
    refreshing: Mutex<HashMap<Credential, u64>>,
    /// stable_token's own `force_refresh` budget per direct account (`direct.rs`).
    pub(crate) stable_token: super::direct::ForceBudgets,
    /// Keys the fingerprints (a random key per process: they are compared, never kept).
    hasher: std::collections::hash_map::RandomState,
}

/// What checking a reported token with WeChat showed.
enum Probe {
    /// WeChat accepts it: the report was wrong.
    Accepted,
    /// WeChat refuses it (40001/42001/40014).
    Refused,
    /// Neither (a network error, a permission code): refresh as for any report.
    Inconclusive(String),
}

impl Default for Reports {
    fn default() -> Self {
        Self {
            spent_until: Mutex::default(),
            obtained: Mutex::default(),
            refreshing: Mutex::default(),
            stable_token: super::direct::ForceBudgets::default(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl Reports {
    fn fingerprint(&self, token: &str) -> u64 {
        self.hasher.hash_one(token)
    }

    /// Records that a report's flight refreshes the credential's token of `generation`.
    fn note_refreshing(&self, credential: &Credential, generation: u64) {
        let mut refreshing = self.refreshing.lock();
        if refreshing.len() > PRUNE_ABOVE {
            refreshing.clear();
        }
        refreshing.insert(credential.clone(), generation);
    }

    /// Whether a report's flight went to refresh the credential's token of `generation`.
    fn refreshing(&self, credential: &Credential, generation: u64) -> bool {
        self.refreshing.lock().get(credential) == Some(&generation)
    }

    /// Whether the credential's force budget is spent at `now`, as far as memory knows.
    pub(crate) fn spent(&self, credential: &Credential, now: Timestamp) -> bool {
        self.spent_until
            .lock()
            .get(credential)
            .is_some_and(|until| *until > now)
    }

    fn note_spent(&self, credential: &Credential, until: Timestamp, now: Timestamp) {
        self.spent_until
            .lock()
            .insert(credential.clone(), until, |u| *u > now);
    }

    /// A token WeChat just issued to this process for `credential`.
    pub(crate) fn obtained(
        &self,
        credential: &Credential,
        token: &str,
        issued_at: Timestamp,
        window: Duration,
    ) {
        if window.is_zero() || !credential.kind.is_account_token() {
            return;
        }
        let horizon = issued_at.as_millis() - millis(window);
        let fingerprint = self.fingerprint(token);
        self.obtained.lock().insert(
            credential.clone(),
            Obtained {
                issued_at,
                fingerprint,
            },
            |o| o.issued_at.as_millis() > horizon,
        );
    }

    /// A refresh of `credential` failed: it may have reached WeChat (a timeout, a lost answer),
    /// so a later refusal of the token held is no evidence of a rogue refresher.
    pub(crate) fn attempt_unknown(&self, credential: &Credential) {
        self.obtained.lock().remove(credential);
    }

    /// Whether this process obtained `token` and knows of no other attempt since.
    fn obtained_here(&self, credential: &Credential, token: &str) -> bool {
        let fingerprint = self.fingerprint(token);
        self.obtained
            .lock()
            .get(credential)
            .is_some_and(|o| o.fingerprint == fingerprint)
    }
}

/// How long a report inside the force budget waits for the token a refresh under way brings,
/// rather than be handed the token WeChat refused.
const REPORT_WAIT: Duration = Duration::from_secs(5);

impl Inner {
    /// `held` (the reported token, inside the force budget), or — when this process already went
    /// to refresh that very token for a report, so WeChat refused it — the token that refresh
    /// brings within [`REPORT_WAIT`] (a recovery after 61023 can take a moment). Without such a
    /// refresh, `held` at once: a report of a token WeChat accepts must not wait.
    pub(super) async fn newer_than_refused(
        &self,
        credential: &Credential,
        held: Arc<CachedToken>,
    ) -> Arc<CachedToken> {
        let slot = self.cache.slot(credential);
        if let Some(current) = slot.current().filter(|t| t.generation > held.generation) {
            return current;
        }
        if !self.reports.refreshing(credential, held.generation) {
            return held;
        }
        let mut landed = slot.subscribe();
        let _ = tokio::time::timeout(REPORT_WAIT, landed.wait_for(|g| *g > held.generation)).await;
        slot.current()
            .filter(|t| t.generation > held.generation)
            .unwrap_or(held)
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What the report gate decided inside the forced flight.
pub(super) enum Gate {
    /// Refresh upstream.
    Refresh,
    /// Answer with this token, no refresh (WeChat accepts the reported token, or it was replaced).
    Answer(Arc<CachedToken>),
    /// The budget is spent: answer with this token (the reported one), or with the one a refresh
    /// already under way for it brings within [`REPORT_WAIT`] (see [`Inner::newer_than_refused`]).
    Budgeted(Arc<CachedToken>),
}

impl Engine {
    /// An invalidation report (rule 6): a client got 40001/42001 with `reported`. If it is the
    /// current token, refresh (single flight, within the force budget; direct accounts force
    /// within stable_token's own budget too) and return the new one; otherwise return the
    /// current token with no upstream call. `reporter` names the client (for a rogue refresher
    /// alert).
    pub async fn invalidate_for(
        &self,
        credential: &Credential,
        reported: &str,
        reporter: Option<&str>,
    ) -> Outcome {
        let inner = self.inner();
        let slot = inner.cache.get(credential).ok_or(RefreshError::Unknown)?;
        let held = match slot.current() {
            Some(current) if !current.is(reported) => {
                count_report("not_current");
                return Ok(current);
            }
            current => current,
        };
        // No token at all and the last refresh failed: the retry comes with backoff, as for a
        // read (a report must not turn a failing credential into a call per report).
        if held.is_none()
            && let Some(reason) = slot.failing()
        {
            count_report("budgeted");
            return Err(RefreshError::Upstream {
                class: ErrorClass::Transient,
                detail: format!("the last refresh failed ({reason}); it is retried with backoff"),
            });
        }
        if let Some(reported) = &held
            && inner.reports.spent(credential, inner.io.clock.now())
        {
            count_report("budgeted");
            // The refresh that spent the budget may still be in the air (its answer is the one),
            // or have landed since the read above.
            if let Some(Ok(out)) = inner.flights.single.join(credential).await {
                return out;
            }
            return Ok(inner
                .newer_than_refused(credential, Arc::clone(reported))
                .await);
        }
        // A report that joined a flight already under way (a scheduled refresh waiting on another
        // replica's lease, say) may get that flight's answer: if it is the reported token, the
        // report asks once more, this time in a flight of its own. (A direct account's
        // stable_token answers without force_refresh with the same token: no second call.)
        // (getticket too answers with the same ticket while WeChat holds it valid.)
        let tries = if credential.kind == CredentialKind::Direct || credential.kind.is_ticket() {
            1
        } else {
            2
        };
        let reporter: Option<Arc<str>> = reporter.map(Arc::from);
        for _ in 0..tries {
            let out = Arc::clone(inner)
                .refresh_owned(
                    credential.clone(),
                    Mode::Forced {
                        reported: held.clone(),
                        reporter: reporter.clone(),
                    },
                )
                .await?;
            // The report's own flight answered with the reported token on purpose (its budget
            // was spent, or WeChat accepts the token): that is the answer.
            if !out.is(reported) || inner.reports.spent(credential, inner.io.clock.now()) {
                return Ok(out);
            }
        }
        // Only WeChat answering with the same token again gets here (stable_token without a
        // force_refresh budget): it is all there is.
        tracing::warn!(appid = %credential.appid, "WeChat answered a report with the reported token");
        slot.current().ok_or(RefreshError::Abandoned)
    }

    /// [`Engine::invalidate_for`] without a client's name (the CLI, tests).
    pub async fn invalidate(&self, credential: &Credential, reported: &str) -> Outcome {
        self.invalidate_for(credential, reported, None).await
    }
}

fn count_report(outcome: &'static str) {
    metrics::counter!(telemetry::REPORTS_TOTAL, "outcome" => outcome).increment(1);
}

impl Inner {
    /// Before a report's forced flight asks for the refresh lease: whether a rogue refresher
    /// could be concluded from a refusal of the reported token (rule 3's evidence: this process
    /// obtained it, and no other replica holds or held the credential's lease).
    pub(super) async fn rogue_evidence(&self, credential: &Credential, mode: &Mode) -> bool {
        let Mode::Forced {
            reported: Some(reported),
            ..
        } = mode
        else {
            return false;
        };
        if self.config.rogue_window.is_zero()
            || !self
                .reports
                .obtained_here(credential, reported.access_token.expose_secret())
        {
            return false;
        }
        let leases = self.io.store.leases();
        // Another replica refreshing it now, or one that died doing so.
        match leases.lease_row(&LeaseKey::refresh(credential)).await {
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => return false,
        }
        // A forced refresh since this token was issued (another replica's, whose outcome this
        // one cannot know: it may have timed out after WeChat issued a token).
        let claimed_since = |expiry: Timestamp| {
            expiry.as_millis() - millis(self.config.min_force_interval)
                >= reported.issued_at.as_millis()
        };
        match leases.lease_row(&LeaseKey::Force(credential.clone())).await {
            Ok(None) => true,
            Ok(Some((_, expiry))) => !claimed_since(expiry),
            Err(_) => false,
        }
    }

    /// Inside a report's forced flight, holding the refresh lease: rules 2 and 3.
    pub(super) async fn report_gate(
        &self,
        credential: &Credential,
        mode: &Mode,
        evidence: bool,
    ) -> Gate {
        let Mode::Forced {
            reported: Some(reported),
            reporter,
        } = mode
        else {
            return Gate::Refresh;
        };
        let Some(current) = self.cache.get(credential).and_then(|s| s.current()) else {
            return Gate::Refresh;
        };
        // Replaced while this flight started (an authorization landed, another replica's token
        // was adopted): that token is the answer, never a second refresh.
        if !current.is(reported.access_token.expose_secret()) {
            return Gate::Answer(current);
        }
        if !self.claim_force(credential).await {
            count_report("budgeted");
            tracing::info!(appid = %credential.appid, "report inside refresh.min_force_interval: answered with the current token");
            return Gate::Budgeted(current);
        }
        let now = self.io.clock.now();
        let age = now.as_millis() - current.issued_at.as_millis();
        // A ticket has no cheap check call; its report refreshes under the budget.
        if age >= millis(self.config.rogue_window) || credential.kind.is_ticket() {
            count_report("refreshed");
            self.reports.note_refreshing(credential, current.generation);
            return Gate::Refresh;
        }
        match self.probe(&current).await {
            Probe::Accepted => {
                count_report("valid");
                tracing::warn!(appid = %credential.appid, client = reporter.as_deref().unwrap_or("-"), "reported token is accepted by WeChat: nothing refreshed (the client's 40001 came from elsewhere: another appid's token, a typo)");
                Gate::Answer(current)
            }
            Probe::Refused if evidence => {
                self.rogue_found(credential, reporter.as_deref(), age, now)
                    .await;
                count_report("refreshed");
                self.reports.note_refreshing(credential, current.generation);
                Gate::Refresh
            }
            Probe::Refused => {
                tracing::info!(appid = %credential.appid, "a token obtained {}s ago is refused; it may have been retired by a wxtoken process that died before storing its refresh, so no rogue refresher is concluded", age / 1000);
                count_report("refreshed");
                self.reports.note_refreshing(credential, current.generation);
                Gate::Refresh
            }
            Probe::Inconclusive(detail) => {
                tracing::debug!(appid = %credential.appid, detail, "reported token could not be checked");
                count_report("refreshed");
                self.reports.note_refreshing(credential, current.generation);
                Gate::Refresh
            }
        }
    }

    /// Claims the credential's force budget (rule 2). True if this report may refresh upstream.
    async fn claim_force(&self, credential: &Credential) -> bool {
        let interval = self.config.min_force_interval;
        if interval.is_zero() {
            return true;
        }
        let now = self.io.clock.now();
        if self.reports.spent(credential, now) {
            return false;
        }
        let until = Timestamp::from_millis(now.as_millis().saturating_add(millis(interval)));
        match self
            .io
            .store
            .leases()
            .claim(&LeaseKey::Force(credential.clone()), now, until)
            .await
        {
            Ok(None) => {
                self.reports.note_spent(credential, until, now);
                true
            }
            Ok(Some(expiry)) => {
                self.reports.note_spent(credential, expiry, now);
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "force budget not claimed in the store; counted in memory only");
                self.reports.note_spent(credential, until, now);
                true
            }
        }
    }

    /// One getcallbackip call with the reported token.
    async fn probe(&self, token: &CachedToken) -> Probe {
        match self
            .upstream(
                self.io
                    .client
                    .get_callback_ip(token.access_token.expose_secret()),
            )
            .await
        {
            Ok(_) => Probe::Accepted,
            Err(WechatError::Api {
                class: ErrorClass::StaleToken,
                ..
            }) => Probe::Refused,
            Err(e) => Probe::Inconclusive(e.to_string()),
        }
    }

    async fn rogue_found(
        &self,
        credential: &Credential,
        reporter: Option<&str>,
        age_ms: i64,
        now: Timestamp,
    ) {
        let client = reporter.unwrap_or("(no client: a CLI or internal report)");
        metrics::counter!(telemetry::ROGUE_REFRESHES_TOTAL, "kind" => credential.kind.as_str())
            .increment(1);
        tracing::error!(appid = %credential.appid, client, "rogue refresher: a token wxtoken obtained {}s ago was retired by a refresh wxtoken did not make", age_ms / 1000);
        self.io.alerts.raise(Alert::new(
            AlertKind::RogueRefresher,
            credential.component.as_str(),
            Some(credential.appid.as_str()),
            format!(
                "WeChat refused the {} token wxtoken obtained {}s ago: something outside wxtoken \
                 refreshed {} (find the service still holding its appsecret or refresh token); \
                 reported by client {client}",
                credential.kind.as_str(),
                age_ms / 1000,
                credential.appid
            ),
            now,
        ));
        if let Err(e) = self
            .io
            .store
            .ops()
            .record_rogue_refresh(credential, now, client)
            .await
        {
            tracing::warn!(error = %e, "rogue refresh not recorded in the store");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Appid, ComponentAppid};

    fn credential(i: usize) -> Credential {
        Credential::authorizer(
            &ComponentAppid::parse("wxcomponent").unwrap(),
            &Appid::parse(&format!("wx{i:016x}")).unwrap(),
        )
    }

    #[test]
    fn a_book_keeps_live_entries_and_drops_expired_ones_once_it_has_doubled() {
        let mut book = Book::default();
        // Live entries are never dropped, however many; each pruning pass doubles the next point.
        for i in 0..4 * PRUNE_ABOVE {
            book.insert(credential(i), i, |_| true);
        }
        assert_eq!(book.len(), 4 * PRUNE_ABOVE);
        assert_eq!(book.prune_at, 4 * PRUNE_ABOVE);
        // At that point the expired ones go, and the next point is twice what is left.
        book.insert(credential(usize::MAX), 0, |v| *v >= 3 * PRUNE_ABOVE);
        assert_eq!(book.len(), PRUNE_ABOVE + 1);
        assert_eq!(book.prune_at, 2 * PRUNE_ABOVE);
        assert!(book.get(&credential(0)).is_none());
        assert_eq!(
            book.get(&credential(4 * PRUNE_ABOVE - 1)),
            Some(&(4 * PRUNE_ABOVE - 1))
        );
    }
}
