//! The write path of a refresh: WeChat's answer is served at once (`save_token`), then written
//! fenced through the group commit (`WriteQueue`, `write_batch`), retried while the store can pass
//! (`retry.rs`), rewritten or adopted when it loses the fence (`store_token`, `after_stale`).

use std::sync::Arc;
use std::time::Duration;

use super::retry::StoreRetry;
use super::{Inner, Outcome, RefreshError};
use crate::model::{
    AuthorizationWrite, AuthorizerStatus, Credential, CredentialKind, Expected, NewAccessToken,
    RefreshResult, RefreshTokenSource, SaveOutcome, Sealed, SecretSlot, Timestamp, TokenSource,
};
use crate::tokens::cache::{CachedToken, TokenText};
use crate::vault::VaultError;

/// How many times a refresh result that lost the fence to an older token is fenced again.
const STALE_REWRITES: u32 = 3;

/// Tries of a refused result's rotated refresh token, written alone, that fails for a reason that
/// cannot pass (transient failures are retried until it lands).
const KEPT_WRITE_TRIES: u32 = 4;

/// The refresh token a refresh result carries: the one WeChat answered with, and whether it
/// differs from the one sent (`rotated`) or only echoes it.
pub(crate) struct CarriedRefreshToken {
    pub(crate) sealed: Sealed,
    pub(crate) rotated: bool,
}

/// Writes of tokens already served.
#[derive(Default)]
pub(crate) struct Writes {
    /// Per credential, the background write of a token already served: settled (true) once it
    /// is stored or given up. The credential's next refresh waits for it.
    pub(crate) pending: parking_lot::Mutex<
        std::collections::HashMap<Credential, tokio::sync::watch::Receiver<bool>>,
    >,
    /// Refresh results waiting for the group-commit writer.
    pub(crate) queue: Arc<parking_lot::Mutex<super::commit::WriteQueue>>,
    /// Rotated refresh tokens the store refused to take with their refresh result (a reason that
    /// cannot pass), by credential, with the generation they were fenced on: the credential's next
    /// refresh sends this one, not the stored one WeChat may have retired, and its result writes
    /// it again. Dropped once a write carrying it (or a newer one) lands.
    pub(crate) kept_refresh_tokens:
        parking_lot::Mutex<std::collections::HashMap<Credential, Sealed>>,
}

/// What a result that lost the fence does next.
enum StaleVerdict {
    /// The stored token stands.
    Adopt,
    /// Ours is newer: write again, fenced on `generation`.
    Rewrite {
        generation: u64,
        refresh_token: Option<Sealed>,
    },
}

impl Inner {
    /// Seals and plans a fresh access token obtained by a request sent at `sent_at`: it is
    /// `issued_at`, and `expires_at` and `refresh_at` count from it (the call's latency never makes
    /// them late).
    pub(crate) fn new_access_token(
        &self,
        credential: &Credential,
        token: &str,
        expires_in: Duration,
        source: TokenSource,
        sent_at: Timestamp,
    ) -> Result<NewAccessToken, VaultError> {
        Ok(NewAccessToken {
            sealed: self
                .io
                .vault
                .seal(SecretSlot::AccessToken { credential }, token.as_bytes())?,
            issued_at: sent_at,
            expires_at: sent_at.plus(expires_in),
            refresh_at: Some(sent_at.plus(self.plan_delay(source, expires_in))),
            source,
        })
    }

    /// Opens a token read from the store and publishes it (cold start, loading a credential).
    pub(crate) fn publish_stored(
        &self,
        credential: &Credential,
        generation: u64,
        stored: &NewAccessToken,
    ) -> Result<(), VaultError> {
        let token = self
            .io
            .vault
            .open_token(SecretSlot::AccessToken { credential }, &stored.sealed)?;
        self.publish(credential, generation, token, stored);
        Ok(())
    }

    /// Installs a stored token into the cache and schedules its next refresh.
    pub(crate) fn publish(
        &self,
        credential: &Credential,
        generation: u64,
        token: TokenText,
        stored: &NewAccessToken,
    ) -> Arc<CachedToken> {
        let refresh_at = stored.refresh_at.unwrap_or(stored.issued_at);
        let slot = self.cache.slot(credential);
        slot.publish(CachedToken {
            access_token: token,
            issued_at: stored.issued_at,
            expires_at: stored.expires_at,
            refresh_at,
            generation,
            source: stored.source,
            stored: true,
        });
        self.schedule_at(credential, refresh_at);
        // The slot may hold a newer one than ours (adopted meanwhile).
        slot.current().expect("just published")
    }

    /// Serves a token WeChat just issued and stores it. The token is published to memory at once
    /// (not stored yet, at the generation its write will produce if it lands first), so readers
    /// and invalidation reports never wait on the store; the write runs in the background
    /// ([`Inner::store_token`]) and the credential's next refresh waits for it
    /// ([`Inner::settle_pending_write`]), so it reads what it wrote (a rotated refresh token
    /// above all). If memory already holds a token as new, the write is awaited instead.
    #[allow(clippy::too_many_arguments)] // one per part of WeChat's answer
    pub(super) async fn save_token(
        self: &Arc<Self>,
        credential: &Credential,
        expected_generation: u64,
        token: String,
        expires_in: u64,
        source: TokenSource,
        refresh_token: Option<CarriedRefreshToken>,
        sent_at: Timestamp,
    ) -> Outcome {
        let expires_in = Duration::from_secs(expires_in);
        let access = self.new_access_token(credential, &token, expires_in, source, sent_at)?;
        self.save_access(
            credential,
            expected_generation,
            token,
            access,
            refresh_token,
        )
        .await
    }

    /// [`Inner::save_token`] with the token already sealed and planned.
    pub(super) async fn save_access(
        self: &Arc<Self>,
        credential: &Credential,
        expected_generation: u64,
        token: String,
        access: NewAccessToken,
        refresh_token: Option<CarriedRefreshToken>,
    ) -> Outcome {
        let source = access.source;
        let slot = self.cache.slot(credential);
        let refresh_at = access.refresh_at.unwrap_or(access.issued_at);
        // Pending before it is published: whoever sees the token and then calls `wait_stored`
        // waits for its write.
        let (done, settled) = tokio::sync::watch::channel(false);
        self.writes
            .pending
            .lock()
            .insert(credential.clone(), settled);
        self.reports.obtained(
            credential,
            &token,
            access.issued_at,
            self.config.rogue_window,
        );
        let served = slot.publish(CachedToken {
            access_token: TokenText::from(token.as_str()),
            issued_at: access.issued_at,
            expires_at: access.expires_at,
            refresh_at,
            generation: expected_generation.saturating_add(1),
            source,
            stored: false,
        });
        // (A revocation landing in between may have dropped it again.)
        let Some(current) = slot.current().filter(|_| served) else {
            let stored = self
                .store_token(
                    credential,
                    expected_generation,
                    access,
                    token,
                    refresh_token,
                )
                .await;
            self.writes.pending.lock().remove(credential);
            let _ = done.send(true);
            return stored;
        };
        self.schedule_at(credential, refresh_at);
        let inner = Arc::clone(self);
        let credential = credential.clone();
        self.io.tracker.spawn(async move {
            let stored = inner
                .store_token(
                    &credential,
                    expected_generation,
                    access,
                    token,
                    refresh_token,
                )
                .await;
            if let Err(e) = &stored {
                // Served but not stored: the credential refreshes again with backoff.
                tracing::warn!(error = %e, "a served token could not be stored");
                inner.after_refresh(&credential, &stored);
            }
            inner.writes.pending.lock().remove(&credential);
            let _ = done.send(true);
        });
        Ok(current)
    }

    /// Waits until the credential's served-but-unstored token (if any) is written or given up.
    pub(crate) async fn settle_pending_write(&self, credential: &Credential) {
        let pending = self.writes.pending.lock().get(credential).cloned();
        if let Some(mut settled) = pending {
            let _ = settled.wait_for(|done| *done).await;
        }
    }

    /// Writes a refresh result (fenced) and publishes the stored outcome. On a stale write,
    /// whichever token was requested later wins: if the stored one was (or the credential's state
    /// no longer takes ours), it is adopted; if ours was, the write is fenced again on the current
    /// generation (at most [`STALE_REWRITES`] times). Both refresh tokens stay in the history
    /// either way.
    async fn store_token(
        &self,
        credential: &Credential,
        expected_generation: u64,
        access: NewAccessToken,
        token: String,
        refresh_token: Option<CarriedRefreshToken>,
    ) -> Outcome {
        let mut expected = expected_generation;
        // An echoed refresh token is the one already stored (and in the history): writing it again
        // would add a duplicate history row per refresh and two statements per result.
        let mut rt = refresh_token
            .as_ref()
            .filter(|c| c.rotated)
            .map(|c| c.sealed.clone());
        for _ in 0..=STALE_REWRITES {
            let result = RefreshResult {
                credential: credential.clone(),
                expected_generation: expected,
                access_token: access.clone(),
                refresh_token: rt.clone(),
                at: self.io.clock.now(),
            };
            let saved = match self.save_with_retry(&result).await {
                Ok(saved) => saved,
                Err(e) => {
                    if let Some(rotated) = rt {
                        self.keep_refresh_token(credential, expected, rotated).await;
                    }
                    return Err(e);
                }
            };
            if rt.is_some() || matches!(saved, SaveOutcome::Missing) {
                self.writes.kept_refresh_tokens.lock().remove(credential);
            }
            match saved {
                SaveOutcome::Saved { generation } => {
                    return Ok(self.publish(
                        credential,
                        generation,
                        TokenText::from(token),
                        &access,
                    ));
                }
                SaveOutcome::Missing => {
                    return Err(RefreshError::Gone {
                        reason: "credential no longer exists".into(),
                    });
                }
                SaveOutcome::Stale { .. } => {
                    match self
                        .after_stale(credential, &access, refresh_token.as_ref())
                        .await?
                    {
                        StaleVerdict::Adopt => {
                            tracing::info!(
                                "a token requested later was stored meanwhile; adopting it"
                            );
                            return self.adopt_stored(credential).await;
                        }
                        StaleVerdict::Rewrite {
                            generation,
                            refresh_token,
                        } => {
                            tracing::info!(
                                "an older token was stored meanwhile; writing ours over it"
                            );
                            expected = generation;
                            rt = refresh_token;
                        }
                    }
                }
            }
        }
        tracing::warn!("kept losing the fenced write; adopting the stored token");
        self.adopt_stored(credential).await
    }

    /// A rotated refresh token whose refresh result the store refused for a reason that cannot
    /// pass (a constraint, a corrupt row, a backend bug; transient failures never get here: they
    /// are retried until they land). WeChat will not give it again (SPEC.md rule 2), so it is
    /// kept in memory, where the credential's next refresh takes it from, and written alone: the
    /// refresh token and its history row, fenced on `generation`, without the access token the
    /// store refused. If that lands, the store holds it (`Saved`) or at least its history does
    /// (`Stale`: a newer state landed meanwhile, and recovery finds ours in the history).
    async fn keep_refresh_token(&self, credential: &Credential, generation: u64, sealed: Sealed) {
        self.writes
            .kept_refresh_tokens
            .lock()
            .insert(credential.clone(), sealed.clone());
        let write = AuthorizationWrite {
            component: credential.component.clone(),
            appid: credential.appid.clone(),
            expected: Expected::Generation(generation),
            kind: None,
            status: AuthorizerStatus::Active,
            refresh_token: sealed,
            appsecret: None,
            access_token: None,
            source: RefreshTokenSource::Refresh,
            at: self.io.clock.now(),
        };
        let mut retry = StoreRetry::new("rotated refresh token alone", KEPT_WRITE_TRIES);
        let outcome = loop {
            match self
                .io
                .store
                .authorizers()
                .save_authorizations(std::slice::from_ref(&write))
                .await
            {
                Ok(outcomes) => break Ok(outcomes.into_iter().next()),
                Err(e) => {
                    if let Err(e) = retry.after(e).await {
                        break Err(e);
                    }
                }
            }
        };
        match outcome {
            Ok(Some(SaveOutcome::Saved { .. } | SaveOutcome::Stale { .. })) => {
                tracing::warn!(
                    appid = %credential.appid,
                    "the refresh result was refused, but its rotated refresh token is stored"
                );
                self.writes.kept_refresh_tokens.lock().remove(credential);
            }
            Ok(_) => {
                self.writes.kept_refresh_tokens.lock().remove(credential);
            }
            Err(e) => tracing::error!(
                appid = %credential.appid,
                error = %e,
                "a rotated refresh token cannot be stored; kept in memory for the next refresh"
            ),
        }
    }

    /// The rotated refresh token the store refused, if any (see [`Inner::keep_refresh_token`]).
    pub(crate) fn kept_refresh_token(&self, credential: &Credential) -> Option<Sealed> {
        self.writes
            .kept_refresh_tokens
            .lock()
            .get(credential)
            .cloned()
    }

    /// What a refresh result that lost the fence should do, from the stored state: rewrite only if
    /// the stored token was requested before ours and the credential still takes a token of our
    /// kind (an authorizer-token result needs an active authorizer, an appsecret fallback one that
    /// is not; never over a revocation or a re-authorization's state change).
    async fn after_stale(
        &self,
        credential: &Credential,
        ours: &NewAccessToken,
        carried: Option<&CarriedRefreshToken>,
    ) -> Result<StaleVerdict, RefreshError> {
        let older =
            |stored: Option<&NewAccessToken>| stored.is_none_or(|t| t.issued_at < ours.issued_at);
        if credential.kind == CredentialKind::Authorizer {
            let Some(record) = self
                .io
                .store
                .authorizers()
                .get_authorizer(&credential.component, &credential.appid)
                .await?
            else {
                return Ok(StaleVerdict::Adopt);
            };
            let takes_ours = (record.status == AuthorizerStatus::Active) == carried.is_some();
            if !takes_ours || !older(record.token.as_ref()) {
                return Ok(StaleVerdict::Adopt);
            }
            // An echoed refresh token is the one we sent, older than whatever is stored now: keep
            // the stored one. One WeChat issued with our answer is the newest.
            let refresh_token = carried.map(|c| {
                if c.rotated {
                    c.sealed.clone()
                } else {
                    record.refresh_token.clone()
                }
            });
            return Ok(StaleVerdict::Rewrite {
                generation: record.generation,
                refresh_token,
            });
        }
        match self.io.store.tokens().get_token(credential).await? {
            Some(record) if older(record.token.as_ref()) => Ok(StaleVerdict::Rewrite {
                generation: record.generation,
                refresh_token: None,
            }),
            _ => Ok(StaleVerdict::Adopt),
        }
    }

    /// Reads the credential's stored token into the cache (after losing a fenced write).
    pub(crate) async fn adopt_stored(&self, credential: &Credential) -> Outcome {
        let record = self
            .io
            .store
            .tokens()
            .get_token(credential)
            .await?
            .ok_or(RefreshError::Unknown)?;
        let stored = record.token.ok_or(RefreshError::Storage(
            "stale write but no stored token".into(),
        ))?;
        let token = self
            .io
            .vault
            .open_token(SecretSlot::AccessToken { credential }, &stored.sealed)?;
        Ok(self.publish(credential, record.generation, token, &stored))
    }
}
