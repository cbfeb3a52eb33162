//! The group commit: refresh results queue for one writer, which writes everything pending in
//! one fenced transaction per batch (a SQLite file takes one writer at a time). A batch that fails
//! for a reason that cannot pass is split so the good results land; transient failures are
//! retried until the write lands (`retry.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::retry::StoreRetry;
use super::{Inner, RefreshError};
use crate::alerts::{Alert, AlertKind};
use crate::model::{RefreshResult, SaveOutcome};

impl Inner {
    /// Group commit: the result joins the pending queue; whoever finds no writer running starts
    /// one on the tracker, which writes everything pending in one fenced transaction per batch. A
    /// SQLite file takes one writer at a time, so batching is what lets thousands of refreshes a
    /// minute land without queueing behind each other.
    pub(super) async fn save_with_retry(
        &self,
        result: &RefreshResult,
    ) -> Result<SaveOutcome, RefreshError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.writes.queue.lock();
            q.pending.push((result.clone(), tx));
            !std::mem::replace(&mut q.draining, true)
        };
        if start {
            let (alerts, clock) = (self.io.alerts.clone(), Arc::clone(&self.io.clock));
            let give_up: Arc<GiveUp> = Arc::new(move |result: &RefreshResult, e: &RefreshError| {
                let c = &result.credential;
                tracing::error!(
                    kind = c.kind.as_str(),
                    appid = %c.appid,
                    error = %e,
                    "refresh result cannot be stored; given up (a rotated refresh token in it is written alone or kept for the next refresh)"
                );
                alerts.raise(Alert::new(
                    AlertKind::WriteFailed,
                    c.component.as_str(),
                    Some(c.appid.as_str()),
                    format!("{} token not stored: {e}", c.kind.as_str()),
                    clock.now(),
                ));
            });
            self.io.tracker.spawn(drain_writes(
                Arc::clone(&self.io.store),
                Arc::clone(&self.writes.queue),
                give_up,
            ));
        }
        rx.await.unwrap_or(Err(RefreshError::Abandoned))
    }
}

type WriteOutcome = Result<SaveOutcome, RefreshError>;
type WriteReply = oneshot::Sender<WriteOutcome>;

/// Refresh results waiting for the writer.
#[derive(Default)]
pub(crate) struct WriteQueue {
    pending: Vec<(RefreshResult, WriteReply)>,
    draining: bool,
}

/// Results written per transaction at most.
const MAX_WRITE_BATCH: usize = 256;
/// Attempts at a single result whose write fails for a reason that is probably permanent (a
/// backend error, a constraint) before it is given up.
const SINGLE_WRITE_ATTEMPTS: u32 = 4;

/// Reports a result given up (error log and alert); the caller gets the error.
pub(crate) type GiveUp = dyn Fn(&RefreshResult, &RefreshError) + Send + Sync;

async fn drain_writes(
    store: Arc<dyn crate::store::Store>,
    queue: Arc<parking_lot::Mutex<WriteQueue>>,
    give_up: Arc<GiveUp>,
) {
    loop {
        let batch: Vec<_> = {
            let mut q = queue.lock();
            if q.pending.is_empty() {
                q.draining = false;
                return;
            }
            let n = q.pending.len().min(MAX_WRITE_BATCH);
            q.pending.drain(..n).collect()
        };
        let results: Vec<RefreshResult> = batch.iter().map(|(r, _)| r.clone()).collect();
        let outcomes = write_batch(store.as_ref(), &results, give_up.as_ref()).await;
        for ((_, reply), outcome) in batch.into_iter().zip(outcomes) {
            let _ = reply.send(outcome);
        }
    }
}

/// Writes a batch, one fate per result: the whole batch in one transaction, retried while the
/// store is unavailable or busy; if it fails for another reason (one result the store refuses,
/// say a constraint), it is split in halves, so the good results land and only the bad one is
/// left. A single result that keeps failing that way is given up (`give_up`: error log and
/// alert) after [`SINGLE_WRITE_ATTEMPTS`]; one that fails transiently is retried until it lands.
pub(crate) fn write_batch<'a>(
    store: &'a dyn crate::store::Store,
    results: &'a [RefreshResult],
    give_up: &'a (dyn Fn(&RefreshResult, &RefreshError) + Send + Sync + 'a),
) -> Pin<Box<dyn Future<Output = Vec<WriteOutcome>> + Send + 'a>> {
    Box::pin(async move {
        if results.is_empty() {
            return Vec::new();
        }
        let attempts = if results.len() == 1 {
            SINGLE_WRITE_ATTEMPTS
        } else {
            1
        };
        match write_with_retry(store, results, attempts, &|_| {}).await {
            Ok(outcomes) if outcomes.len() == results.len() => {
                outcomes.into_iter().map(Ok).collect()
            }
            Ok(_) => results
                .iter()
                .map(|_| Err(RefreshError::Storage("outcome count mismatch".into())))
                .collect(),
            Err(e) if results.len() > 1 => {
                tracing::warn!(
                    results = results.len(),
                    error = %e,
                    "a write batch failed; splitting it so the other results land"
                );
                let (left, right) = results.split_at(results.len() / 2);
                let mut out = write_batch(store, left, give_up).await;
                out.extend(write_batch(store, right, give_up).await);
                out
            }
            Err(e) => {
                give_up(&results[0], &e);
                vec![Err(e)]
            }
        }
    })
}

/// Writes refresh results until they land. A result may carry a refresh token WeChat will not
/// give again (rotation), so a store that is unavailable, busy or in a concurrent-transaction
/// conflict is retried with capped backoff for as long as it takes — never given up on (SPEC.md
/// rule 2). Any other failure is tried `attempts` times in all, then returned (the caller splits
/// the batch or gives the single result up). Readers keep being served from memory meanwhile;
/// shutdown bounds the wait with its deadline.
async fn write_with_retry(
    store: &dyn crate::store::Store,
    results: &[RefreshResult],
    attempts: u32,
    on_retry: &(dyn Fn(u32) + Send + Sync),
) -> Result<Vec<SaveOutcome>, RefreshError> {
    let mut retry = StoreRetry::new("refresh results", attempts);
    loop {
        match store.tokens().save_refresh_results(results).await {
            Ok(v) => return Ok(v),
            Err(e) => {
                retry.after(e).await?;
                on_retry(retry.failures());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{
        AppKind, Appid, AuthorizationWrite, AuthorizerStatus, ComponentAppid, Credential, Expected,
        RefreshTokenSource, SecretSlot, Timestamp, TokenSource,
    };
    use crate::store::{self, StoreOptions};
    use crate::vault::{MasterKey, Vault};
    use sqlx::Connection;

    /// An authorizer in `store` and a refresh result for it fenced on its generation.
    async fn authorizer_result(
        store: &Arc<dyn crate::store::Store>,
        vault: &Vault,
        component: &ComponentAppid,
        appid: &str,
    ) -> RefreshResult {
        let appid = Appid::parse(appid).expect("appid");
        let now = Timestamp::now();
        let slot = SecretSlot::RefreshToken {
            component,
            appid: &appid,
        };
        store
            .authorizers()
            .save_authorization(&AuthorizationWrite {
                component: component.clone(),
                appid: appid.clone(),
                expected: Expected::Absent,
                kind: Some(AppKind::OfficialAccount),
                status: AuthorizerStatus::Active,
                refresh_token: vault.seal(slot, b"refreshtoken@@@first").expect("seal"),
                appsecret: None,
                access_token: None,
                source: RefreshTokenSource::Import,
                at: now,
            })
            .await
            .expect("authorizer");
        let credential = Credential::authorizer(component, &appid);
        let generation = store
            .tokens()
            .get_token(&credential)
            .await
            .expect("read")
            .expect("credential")
            .generation;
        let access = vault
            .seal(
                SecretSlot::AccessToken {
                    credential: &credential,
                },
                b"access",
            )
            .expect("seal");
        RefreshResult {
            credential,
            expected_generation: generation,
            access_token: crate::model::NewAccessToken {
                sealed: access,
                issued_at: now,
                expires_at: now.plus(Duration::from_secs(7200)),
                refresh_at: None,
                source: TokenSource::AuthorizerToken,
            },
            refresh_token: Some(vault.seal(slot, b"refreshtoken@@@rotated").expect("seal")),
            at: now,
        }
    }

    #[tokio::test]
    async fn a_result_the_store_always_refuses_is_given_up_alone_and_the_rest_of_its_batch_lands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("wx.db").display());
        let store = store::open(&url).await.expect("store");
        let vault = Vault::new(&MasterKey::generate(), &[]);
        let component = ComponentAppid::parse("wxcomponent0000001").expect("component");
        store
            .components()
            .ensure_component(&component, Timestamp::now())
            .await
            .expect("component");
        let mut results = Vec::new();
        for i in 0..5 {
            results.push(
                authorizer_result(&store, &vault, &component, &format!("wxauthorizer0000{i}"))
                    .await,
            );
        }
        // A row state that fails every write of one authorizer's token, deterministically.
        let mut conn = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("connect");
        sqlx::query(
            "CREATE TRIGGER refuse_one BEFORE UPDATE ON access_tokens \
             WHEN NEW.appid = 'wxauthorizer00003' BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .execute(&mut conn)
        .await
        .expect("trigger");
        let given_up = parking_lot::Mutex::new(Vec::new());
        let give_up = |r: &RefreshResult, _: &RefreshError| {
            given_up.lock().push(r.credential.appid.as_str().to_owned());
        };
        let outcomes = write_batch(store.as_ref(), &results, &give_up).await;
        assert_eq!(outcomes.len(), 5);
        for (i, outcome) in outcomes.iter().enumerate() {
            if i == 3 {
                assert!(
                    matches!(outcome, Err(RefreshError::Storage(_))),
                    "{outcome:?}"
                );
            } else {
                assert!(
                    matches!(outcome, Ok(SaveOutcome::Saved { .. })),
                    "{i}: {outcome:?}"
                );
            }
        }
        assert_eq!(*given_up.lock(), vec!["wxauthorizer00003".to_owned()]);
    }

    #[tokio::test]
    async fn refresh_result_is_retried_past_a_locked_database_until_it_lands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("wx.db").display());
        // Created and migrated with the default pool; then reopened with a short acquire timeout,
        // so a locked database fails attempts quickly (opening with it can time out on a machine
        // busy with the other tests, which is not what this test is about).
        store::open(&url).await.expect("store").close().await;
        let mut opened = None;
        for _ in 0..50 {
            match store::open_with(
                &url,
                &StoreOptions {
                    acquire_timeout: Duration::from_millis(250),
                    ..StoreOptions::default()
                },
            )
            .await
            {
                Ok(store) => {
                    opened = Some(store);
                    break;
                }
                Err(e) => assert!(e.is_transient(), "{e}"),
            }
        }
        let store = opened.expect("the store opens within 50 tries");
        let vault = Vault::new(&MasterKey::generate(), &[]);
        let component = ComponentAppid::parse("wxcomponent0000001").expect("component");
        let appid = Appid::parse("wxauthorizer00001").expect("appid");
        store
            .components()
            .ensure_component(&component, Timestamp::now())
            .await
            .expect("component");
        let result = authorizer_result(&store, &vault, &component, appid.as_str()).await;
        let rotated = result.refresh_token.clone().expect("rotated");

        // Another process holds SQLite's write lock: every attempt times out as busy.
        let mut blocker = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("connect");
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut blocker)
            .await
            .expect("lock");
        let (failed, mut failures) = tokio::sync::mpsc::unbounded_channel();
        let writer = {
            let store = store.clone();
            let results = vec![result];
            tokio::spawn(async move {
                let on_retry = move |n: u32| {
                    let _ = failed.send(n);
                };
                write_with_retry(store.as_ref(), &results, 1, &on_retry).await
            })
        };
        while let Some(n) = failures.recv().await {
            if n > 5 {
                break;
            }
        }
        sqlx::query("COMMIT")
            .execute(&mut blocker)
            .await
            .expect("unlock");
        // Bounded: if the write never lands after the lock is gone, fail instead of hanging.
        let outcome = tokio::time::timeout(Duration::from_secs(120), writer)
            .await
            .expect("the write lands within 120 s of the lock being released")
            .expect("task")
            .expect("lands once the lock is gone");
        assert!(
            matches!(outcome.as_slice(), [SaveOutcome::Saved { .. }]),
            "{outcome:?}"
        );
        let stored = store
            .authorizers()
            .get_authorizer(&component, &appid)
            .await
            .expect("read")
            .expect("authorizer");
        assert_eq!(
            stored.refresh_token, rotated,
            "the rotated refresh token was not lost"
        );
    }
}
