//! An authorizer's refresh (`api_authorizer_token`, with recovery of a refused refresh token in
//! `recovery.rs`), storing an authorization, losing one (needs_reauth or revoked, with alert), and
//! the fallback to the account's own appid+appsecret.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use wechat::errcode::ErrorClass;

use super::recovery::Recovered;
use super::write::CarriedRefreshToken;
use super::{Inner, Outcome, RefreshError};
use crate::alerts::{Alert, AlertKind};
use crate::config::DirectTokenApi;
use crate::model::{
    AuthorizationWrite, AuthorizerRecord, AuthorizerStatus, ComponentAppid, Credential, Expected,
    NewAccessToken, RefreshTokenSource, SaveOutcome, Sealed, SecretSlot, StatusChange, Timestamp,
    TokenSource,
};

impl Inner {
    pub(super) async fn refresh_authorizer(self: &Arc<Self>, credential: &Credential) -> Outcome {
        let (component, appid) = (&credential.component, &credential.appid);
        let record = self.io.authorizer(component, appid).await?;
        if record.status != AuthorizerStatus::Active {
            let reason = record
                .status_reason
                .clone()
                .unwrap_or_else(|| record.status.as_str().to_owned());
            return self.fallback(credential, &record, &reason).await;
        }
        let mut generation = record.generation;
        // A rotated refresh token the store refused is newer than the stored one, which WeChat
        // may have retired: send it, and write it with the result even if WeChat echoes it.
        let kept = self.kept_refresh_token(credential);
        let mut unstored = kept.is_some();
        let mut sealed_rt = kept.unwrap_or_else(|| record.refresh_token.clone());
        let mut refresh_token = self
            .io
            .vault
            .open_string(SecretSlot::RefreshToken { component, appid }, &sealed_rt)?;
        let mut replaced_component = false;
        let mut recoveries = 0;
        loop {
            let ct = self.ensure_component_token(component).await?;
            let call = self.io.client.authorizer_token(
                ct.access_token.expose_secret(),
                component.as_str(),
                appid.as_str(),
                refresh_token.expose_secret(),
            );
            let result = self.upstream_timed(call).await;
            // A recovery needs a listing fetched after WeChat's refusal, never an older one.
            let refused_at = Instant::now();
            match result {
                Ok((resp, sent_at)) => {
                    // Never store an empty refresh token: keep the one we sent.
                    let rt = match resp.non_empty_refresh_token() {
                        Some(new) if new != refresh_token.expose_secret() => CarriedRefreshToken {
                            sealed: self.io.vault.seal(
                                SecretSlot::RefreshToken { component, appid },
                                new.as_bytes(),
                            )?,
                            rotated: true,
                        },
                        _ => CarriedRefreshToken {
                            sealed: sealed_rt,
                            rotated: unstored,
                        },
                    };
                    return self
                        .save_token(
                            credential,
                            generation,
                            resp.authorizer_access_token,
                            resp.expires_in,
                            TokenSource::AuthorizerToken,
                            Some(rt),
                            sent_at,
                        )
                        .await;
                }
                Err(e) if e.class() == ErrorClass::StaleToken && !replaced_component => {
                    replaced_component = true;
                    self.replace_component_token(component, &ct).await?;
                }
                Err(e) if e.class() == ErrorClass::Reauthorize => {
                    recoveries += 1;
                    if recoveries > super::recovery::MAX_RECOVERIES {
                        return Err(RefreshError::Upstream {
                            class: ErrorClass::Transient,
                            detail: format!("refresh token refused again after recovery: {e}"),
                        });
                    }
                    match self
                        .recover_refresh_token(credential, &refresh_token, refused_at)
                        .await?
                    {
                        Recovered::Use(found) => {
                            tracing::warn!(
                                errcode = e.errcode(),
                                "refresh token refused; retrying with a newer one"
                            );
                            generation = found.generation;
                            sealed_rt = found.sealed;
                            unstored = false;
                            refresh_token = found.refresh_token;
                        }
                        Recovered::Inactive(record) => {
                            let reason = record
                                .status_reason
                                .clone()
                                .unwrap_or_else(|| record.status.as_str().to_owned());
                            return self.fallback(credential, &record, &reason).await;
                        }
                        Recovered::Lost => {
                            return self
                                .lose_authorization(
                                    credential,
                                    Some(generation),
                                    AuthorizerStatus::NeedsReauth,
                                    &e.to_string(),
                                )
                                .await;
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Creates or replaces an authorizer's refresh token (fenced), with its history row.
    pub(crate) async fn save_authorization(
        &self,
        component: &ComponentAppid,
        appid: &crate::model::Appid,
        expected: Expected,
        refresh_token: Sealed,
        access_token: Option<NewAccessToken>,
        source: RefreshTokenSource,
    ) -> Result<SaveOutcome, RefreshError> {
        let write = AuthorizationWrite {
            component: component.clone(),
            appid: appid.clone(),
            expected,
            kind: None,
            status: AuthorizerStatus::Active,
            refresh_token,
            appsecret: None,
            access_token,
            source,
            at: self.io.clock.now(),
        };
        let outcome = self
            .io
            .store
            .authorizers()
            .save_authorizations(std::slice::from_ref(&write))
            .await?
            .pop()
            .ok_or_else(|| RefreshError::Storage("no outcome".into()))?;
        if let SaveOutcome::Saved { .. } = outcome {
            self.cache
                .slot(&Credential::authorizer(component, appid))
                .set_status(AuthorizerStatus::Active, "");
        }
        Ok(outcome)
    }

    /// Marks the authorizer (fenced by `generation` unless a revocation), alerts, and falls back to
    /// its appsecret if one is on file.
    pub(crate) async fn lose_authorization(
        self: &Arc<Self>,
        credential: &Credential,
        generation: Option<u64>,
        status: AuthorizerStatus,
        reason: &str,
    ) -> Outcome {
        let (component, appid) = (&credential.component, &credential.appid);
        let slot = self.cache.slot(credential);
        let was = slot.status();
        let outcome = self
            .io
            .store
            .authorizers()
            .set_authorizer_status(&StatusChange {
                component: component.clone(),
                appid: appid.clone(),
                status,
                reason: Some(reason.to_owned()),
                expected_generation: generation,
                at: self.io.clock.now(),
            })
            .await?;
        match outcome {
            SaveOutcome::Saved { .. } => {}
            // Re-authorized or recovered meanwhile: serve the newer state.
            SaveOutcome::Stale { .. } => return self.adopt_stored(credential).await,
            SaveOutcome::Missing => return Err(RefreshError::Unknown),
        }
        slot.set_status(status, reason);
        if was != Some(status) {
            let kind = if status == AuthorizerStatus::Revoked {
                AlertKind::Revoked
            } else {
                AlertKind::NeedsReauth
            };
            self.io.alerts.raise(Alert::new(
                kind,
                component.as_str(),
                Some(appid.as_str()),
                reason,
                self.io.clock.now(),
            ));
        }
        let record = self.io.authorizer(component, appid).await?;
        self.fallback(credential, &record, reason).await
    }

    /// An authorizer whose authorization is lost: its appsecret's stable token if one is on file,
    /// else Gone (no more refreshes: the circuit stays open until re-authorization).
    pub(super) async fn fallback(
        self: &Arc<Self>,
        credential: &Credential,
        record: &AuthorizerRecord,
        reason: &str,
    ) -> Outcome {
        let (component, appid) = (&credential.component, &credential.appid);
        self.cache
            .slot(credential)
            .set_status(record.status, reason);
        let Some(sealed) = &record.appsecret else {
            return Err(RefreshError::Gone {
                reason: format!("{}: {reason}", record.status.as_str()),
            });
        };
        let secret = self
            .io
            .vault
            .open_string(SecretSlot::AuthorizerAppsecret { component, appid }, sealed)?;
        self.save_own_token(credential, record.generation, &secret, false)
            .await
    }

    /// [`Inner::own_token`] for `credential`'s appid, served and stored as its token, fenced on
    /// `generation` (a direct account, or an authorizer's appsecret fallback).
    pub(super) async fn save_own_token(
        self: &Arc<Self>,
        credential: &Credential,
        generation: u64,
        secret: &SecretString,
        force: bool,
    ) -> Outcome {
        let (resp, source, sent_at) = self.own_token(&credential.appid, secret, force).await?;
        self.save_token(
            credential,
            generation,
            resp.access_token,
            resp.expires_in,
            source,
            None,
            sent_at,
        )
        .await
    }

    /// A token from the account's own appid + appsecret, through the configured API
    /// (`refresh.direct_token_api`). `force` asks stable_token for a new token; cgi-bin/token
    /// always issues one.
    pub(super) async fn own_token(
        &self,
        appid: &crate::model::Appid,
        secret: &SecretString,
        force: bool,
    ) -> Result<(wechat::wire::AccessTokenResponse, TokenSource, Timestamp), RefreshError> {
        Ok(match self.config.direct_token_api {
            DirectTokenApi::StableToken => {
                let (resp, sent_at) = self
                    .upstream_timed(self.io.client.stable_token(
                        appid.as_str(),
                        secret.expose_secret(),
                        force,
                    ))
                    .await?;
                (resp, TokenSource::StableToken, sent_at)
            }
            DirectTokenApi::Token => {
                let (resp, sent_at) = self
                    .upstream_timed(self.io.client.token(appid.as_str(), secret.expose_secret()))
                    .await?;
                (resp, TokenSource::Token, sent_at)
            }
        })
    }
}
