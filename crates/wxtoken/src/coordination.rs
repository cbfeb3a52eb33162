//! What running servers and operators' tools tell each other through the store (SPEC.md rule
//! 12, issue 13), on both backends:
//!
//! - **Heartbeats.** Each `serve` writes its `servers` row every [`HEARTBEAT`]: host, pid, start
//!   time and the master key ids it holds (never a key). `wxtoken keys rotate` reads the live ones
//!   (a heartbeat within [`LIVE_WITHIN`]) and refuses to re-seal onto a key a live server lacks.
//!   The row is deleted at a graceful stop; a killed server's row stops being live, and rows
//!   silent for a day are deleted.
//! - **Changes.** The CLI and the admin API record what they changed in `store_changes`
//!   (`manage::announce`); every server polls it every [`CHANGE_POLL`] and applies each change:
//!   an account or authorizer is loaded from the store or unloaded (a removed account answers 404),
//!   a client change empties the API key cache (a revoked key answers 401), a key change re-checks
//!   the keys. A poll is one indexed read; the CLI promises [`crate::manage::PROPAGATION`]. The
//!   changes since the engine's cold start read the store are applied, none twice, and one that
//!   fails is tried again at the next polls.
//! - **Key health.** A server that meets a secret sealed under a key it lacks (a rotation onto a
//!   key it was not given) is not ready (`/readyz` 503 names the key) and alerts `configuration`
//!   once; it re-checks while the condition lasts and is ready again once it holds every key the
//!   store uses.
//!
//! Depends on `store`, `vault`, the engine and the HTTP state (the key cache).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alerts::{Alert, AlertKind};
use crate::http::AppState;
use crate::model::{Appid, Credential, KeyId, Timestamp};
use crate::store::{ChangeScope, ServerRecord, Store, StoreChange};
use crate::vault::Vault;

/// How often a server writes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A server whose heartbeat is older than this is not live.
pub const LIVE_WITHIN: Duration = Duration::from_secs(15);
/// How often a server reads `store_changes`.
pub const CHANGE_POLL: Duration = Duration::from_millis(500);
/// Changes read per poll.
const CHANGES_PER_POLL: u32 = 500;
/// How long recorded changes are kept.
const CHANGE_RETENTION: Duration = Duration::from_secs(86_400);

/// This process, as its heartbeat row shows it.
pub fn this_server(vault: &Vault, started_at: Timestamp) -> ServerRecord {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    ServerRecord {
        id: format!("{:016x}", rand::random::<u64>()),
        host: if host.is_empty() {
            "unknown-host".into()
        } else {
            host
        },
        pid: std::process::id(),
        started_at,
        heartbeat_at: started_at,
        key_ids: vault
            .key_ids()
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect(),
    }
}

/// Live servers that do not hold `key`.
pub async fn servers_lacking(
    store: &dyn Store,
    key: &KeyId,
    now: Timestamp,
) -> Result<Vec<ServerRecord>, crate::store::StoreError> {
    Ok(store
        .ops()
        .live_servers(now.minus(LIVE_WITHIN))
        .await?
        .into_iter()
        .filter(|s| !s.key_ids.iter().any(|k| k == key.as_str()))
        .collect())
}

/// Whether the store holds secrets under a key `vault` lacks; records it in the vault (or
/// clears it). Returns the first such key.
pub async fn check_keys(
    store: &dyn Store,
    vault: &Vault,
) -> Result<Option<KeyId>, crate::store::StoreError> {
    for (key, count) in store.keys().count_sealed_by_key().await? {
        if count > 0 && !vault.holds(&key) {
            vault.note_missing(&key);
            return Ok(Some(key));
        }
    }
    vault.note_keys_complete();
    Ok(None)
}

/// Starts the heartbeat and the change follower on `tracker`, until `cancel`. `changes_from`:
/// the newest change before the engine's cold start read the store.
pub fn spawn(
    state: &AppState,
    changes_from: Option<i64>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) {
    let me = this_server(&state.0.vault, Timestamp::now());
    let beat = state.clone();
    let stop = cancel.clone();
    tracker.spawn(async move { heartbeat(beat, me, stop).await });
    let follow = state.clone();
    tracker.spawn(async move { follow_changes(follow, changes_from, cancel).await });
}

async fn heartbeat(state: AppState, mut me: ServerRecord, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    let mut alerted: Option<KeyId> = None;
    let mut beats = 0u64;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        me.heartbeat_at = Timestamp::now();
        if let Err(e) = state.0.store.ops().heartbeat(&me).await {
            tracing::debug!(error = %e, "heartbeat not written");
        }
        // While a key is missing, look again now and then: the operator may have rotated back.
        if state.0.vault.missing_key().is_some() && beats % 4 == 3 {
            let _ = check_keys(&*state.0.store, &state.0.vault).await;
        }
        beats += 1;
        let missing = state.0.vault.missing_key();
        if let Some(key) = &missing
            && missing != alerted
        {
            alert_missing_key(&state, key);
        }
        alerted = missing;
    }
    if let Err(e) = state.0.store.ops().remove_server(&me.id).await {
        tracing::debug!(error = %e, "heartbeat row not removed; it expires");
    }
}

fn alert_missing_key(state: &AppState, key: &KeyId) {
    tracing::error!(key_id = %key, "the store holds secrets sealed under a master key this server was not given; it is not ready until it has the key");
    for component in state.0.engine.components() {
        state.0.engine.raise(Alert::new(
            AlertKind::Configuration,
            component.as_str(),
            None,
            format!(
                "secrets are sealed under master key {key}, which this server does not hold \
                 (a `wxtoken keys rotate` onto a key it was not given): give it the key and \
                 restart it"
            ),
            Timestamp::now(),
        ));
    }
}

/// Changes re-read behind the newest one applied: on PostgreSQL a sequence number is taken before
/// its transaction commits, so a change may become visible after a higher-numbered one.
const CHANGE_WINDOW: i64 = 64;

/// Polls `store_changes` and applies each change (the module doc), starting after `from` (the
/// newest change when the engine's cold start read the store; `None`: the newest now). A change
/// that fails to apply is tried again at each poll while it is within [`CHANGE_WINDOW`].
pub async fn follow_changes(state: AppState, from: Option<i64>, cancel: CancellationToken) {
    let store = &state.0.store;
    let mut last = match from {
        Some(seq) => seq,
        None => loop {
            match store.ops().latest_change().await {
                Ok(seq) => break seq,
                Err(e) => {
                    tracing::debug!(error = %e, "store changes not readable yet");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(CHANGE_POLL) => {}
                    }
                }
            }
        },
    };
    // Applied (or unreadable) changes within the window, so none is applied twice.
    let mut done: std::collections::BTreeSet<i64> =
        (last.saturating_sub(CHANGE_WINDOW)..=last).collect();
    let mut failing: std::collections::HashSet<i64> = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(CHANGE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut polls = 0u64;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        polls += 1;
        let after = last.saturating_sub(CHANGE_WINDOW);
        let changes = match store.ops().changes_after(after, CHANGES_PER_POLL).await {
            Ok(changes) => changes,
            Err(e) => {
                tracing::debug!(error = %e, "store changes not read; trying again");
                continue;
            }
        };
        for (seq, change) in changes {
            if done.contains(&seq) {
                continue;
            }
            let applied = match &change {
                None => Ok(()),
                Some(change) => apply(&state, change).await,
            };
            match applied {
                Ok(()) => {
                    done.insert(seq);
                    failing.remove(&seq);
                }
                Err(e) => {
                    if failing.insert(seq) {
                        tracing::warn!(error = %e, seq, "a change made outside this server was not applied; trying again");
                    }
                }
            }
            last = last.max(seq);
        }
        let horizon = last.saturating_sub(CHANGE_WINDOW);
        done = done.split_off(&horizon);
        failing.retain(|seq| {
            let keep = *seq >= horizon;
            if !keep {
                tracing::error!(seq, "a change made outside this server could not be applied; restart the server to load it");
            }
            keep
        });
        // Once an hour or so (polls are twice a second).
        if polls.is_multiple_of(7200) {
            let now = Timestamp::now();
            let _ = store.ops().prune_changes(now.minus(CHANGE_RETENTION)).await;
            let _ = store.ops().prune_servers(now.minus(CHANGE_RETENTION)).await;
        }
    }
}

async fn apply(state: &AppState, change: &StoreChange) -> anyhow::Result<()> {
    let engine = &state.0.engine;
    match change.scope {
        ChangeScope::Client => state.0.keys.forget_all(),
        ChangeScope::Keys => {
            if let Some(key) = check_keys(&*state.0.store, &state.0.vault).await? {
                tracing::warn!(key_id = %key, "after a key rotation the store holds secrets under a key this server lacks");
            }
        }
        ChangeScope::Account | ChangeScope::Authorizer => {
            let Some(component) = &change.component else {
                return Ok(());
            };
            if !engine.components().contains(component) {
                return Ok(());
            }
            match change.subject.as_deref().map(Appid::parse) {
                None => {
                    engine.load_all(component).await?;
                }
                Some(Err(_)) => {}
                Some(Ok(appid)) => {
                    let present = state
                        .0
                        .store
                        .direct()
                        .get_direct_account(component, &appid)
                        .await?
                        .is_some();
                    if change.scope == ChangeScope::Account && !present {
                        engine.unload(&Credential::direct(component, &appid));
                    }
                    engine.load(Some(component), &appid).await?;
                    if change.scope == ChangeScope::Authorizer {
                        engine.revisit_fallback(component, &appid).await?;
                    }
                }
            }
        }
    }
    Ok(())
}
