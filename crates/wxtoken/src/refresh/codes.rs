//! Authorization codes: exchanging one (`api_query_auth`) exactly once across the push, the
//! page callback and the replicas (single flight per code, the code's lease, the exchanged-codes
//! record), and storing the answer, whose refresh token WeChat will not give again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use wechat::errcode::ErrorClass;

use super::retry::StoreRetry;
use super::{Engine, Inner, RefreshError};
use crate::model::{
    Appid, AuthorizationWrite, AuthorizerStatus, ComponentAppid, Credential, Expected,
    RefreshTokenSource, SaveOutcome, SecretSlot, Timestamp, TokenSource,
};
use crate::store::LeaseKey;
use crate::tokens::flight::SingleFlight;

/// How long an exchange waits for another replica exchanging the same code, asking every
/// [`CODE_LEASE_POLL`].
const CODE_LEASE_WAIT: Duration = Duration::from_secs(15);

const CODE_LEASE_POLL: Duration = Duration::from_millis(100);

/// How long an exchanged authorization code is remembered (WeChat's codes live 10 minutes).
const RECENT_CODE_TTL: Duration = Duration::from_secs(15 * 60);

/// How long the store remembers one (for every replica); older rows are deleted as new ones land.
const STORED_CODE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Bound on remembered codes, whatever arrives.
const RECENT_CODE_MAX: usize = 10_000;

/// Authorization codes this process exchanged recently, by SHA-256 (the code itself is a secret):
/// the page callback and the `authorized` push carry the same single-use code, and whichever comes
/// second gets 61009 and still needs to know which account it was.
#[derive(Default)]
pub(crate) struct RecentCodes {
    codes: Mutex<HashMap<[u8; 32], (Appid, Instant)>>,
}

/// This process's codes: the recently exchanged, and one `api_query_auth` per code at a time
/// (keyed by its SHA-256).
pub(crate) struct Codes {
    pub(crate) recent: RecentCodes,
    pub(crate) flights: SingleFlight<[u8; 32], Result<Appid, RefreshError>>,
}

impl Codes {
    pub(crate) fn new(tracker: tokio_util::task::TaskTracker) -> Self {
        Self {
            recent: RecentCodes::default(),
            flights: SingleFlight::new(tracker),
        }
    }
}

pub(crate) fn digest(code: &str) -> [u8; 32] {
    Sha256::digest(code.as_bytes()).into()
}

/// `api_query_auth` on a code already exchanged.
const CODE_ALREADY_USED: i64 = 61009;

/// Tries of an `api_query_auth` answer's write that fails for a reason that cannot pass (a
/// constraint, a corrupt row); a transient failure is retried until the write lands.
const WRITE_TRIES_THAT_CANNOT_PASS: u32 = 4;

impl RecentCodes {
    pub(crate) fn insert(&self, code: &str, appid: &Appid) {
        let mut codes = self.codes.lock();
        if codes.len() >= RECENT_CODE_MAX {
            codes.retain(|_, (_, at)| at.elapsed() < RECENT_CODE_TTL);
            if codes.len() >= RECENT_CODE_MAX {
                codes.clear();
            }
        }
        codes.insert(digest(code), (appid.clone(), Instant::now()));
    }

    pub(crate) fn get(&self, code: &str) -> Option<Appid> {
        self.codes
            .lock()
            .get(&digest(code))
            .filter(|(_, at)| at.elapsed() < RECENT_CODE_TTL)
            .map(|(appid, _)| appid.clone())
    }
}

impl Engine {
    /// Exchanges the code the authorization page's callback received (`api_query_auth`) and stores
    /// the authorizer, exactly as an `authorized` push would; returns the authorizer's appid. The
    /// push carrying the same code is then a no-op (and the other way round).
    pub async fn authorize_code(
        &self,
        component: &ComponentAppid,
        code: &str,
    ) -> Result<Appid, RefreshError> {
        if !self.inner().component.secrets.contains_key(component) {
            return Err(RefreshError::NotConfigured(component.to_string()));
        }
        let since = self.inner().io.clock.now().minus(Duration::from_secs(60));
        self.inner()
            .exchange_code_once(component, None, code, since)
            .await
    }
}

impl Inner {
    /// [`Inner::exchange_code`] in a single flight per code: the page callback and the push carry
    /// the same single-use code, and whichever comes second joins the first's exchange (and its
    /// store write) instead of spending the code again. One that comes after the first finished
    /// gets 61009 and is answered from [`RecentCodes`] or the store's record of exchanged codes,
    /// which only hold stored exchanges.
    pub(crate) async fn exchange_code_once(
        self: &Arc<Self>,
        component: &ComponentAppid,
        expected: Option<&Appid>,
        code: &str,
        since: Timestamp,
    ) -> Result<Appid, RefreshError> {
        let inner = Arc::clone(self);
        let (component, expected_owned, owned_code) =
            (component.clone(), expected.cloned(), code.to_owned());
        let appid = self
            .events
            .codes
            .flights
            .run(digest(code), move || async move {
                inner
                    .exchange_code_leased(&component, expected_owned.as_ref(), &owned_code, since)
                    .await
            })
            .await
            .unwrap_or(Err(RefreshError::Abandoned))?;
        match expected {
            // Joined a flight started without an expected appid (the callback's).
            Some(want) if *want != appid => Err(RefreshError::Gone {
                reason: "api_query_auth returned another appid".into(),
            }),
            _ => Ok(appid),
        }
    }

    /// Remembers that `code` was exchanged for `appid` (its answer stored): in memory, and in the
    /// store for the other replicas, whose page callback or push with the same code gets 61009.
    /// A store failure is only logged: a push knows its appid without it, and a callback on this
    /// replica finds it in memory.
    pub(crate) async fn remember_code(
        &self,
        component: &ComponentAppid,
        code: &str,
        appid: &Appid,
    ) {
        self.events.codes.recent.insert(code, appid);
        let now = self.io.clock.now();
        let forget_before = Timestamp::from_millis(
            now.as_millis() - i64::try_from(STORED_CODE_TTL.as_millis()).unwrap_or(i64::MAX),
        );
        if let Err(e) = self
            .io
            .store
            .authorizers()
            .record_exchanged_code(
                component,
                &hex::encode(digest(code)),
                appid,
                now,
                forget_before,
            )
            .await
        {
            tracing::warn!(error = %e, "exchanged authorization code not recorded for other replicas");
        }
    }

    /// Which authorizer `code` was exchanged for, by this process or another replica.
    pub(crate) async fn code_exchanged_for(
        &self,
        component: &ComponentAppid,
        code: &str,
    ) -> Result<Option<Appid>, RefreshError> {
        if let Some(appid) = self.events.codes.recent.get(code) {
            return Ok(Some(appid));
        }
        Ok(self
            .io
            .store
            .authorizers()
            .exchanged_code(component, &hex::encode(digest(code)))
            .await?)
    }

    /// [`Inner::exchange_code`] under the code's lease, so a push and a page callback carrying the
    /// same code on two replicas make one `api_query_auth`: the second waits for the first's
    /// exchange and write, then finds the stored answer (a push by its appid's history, a callback
    /// by the exchanged code's record) instead of spending the code again.
    async fn exchange_code_leased(
        self: &Arc<Self>,
        component: &ComponentAppid,
        expected: Option<&Appid>,
        code: &str,
        since: Timestamp,
    ) -> Result<Appid, RefreshError> {
        let key = LeaseKey::Code {
            component: component.clone(),
            digest: hex::encode(digest(code)),
        };
        let give_up = tokio::time::Instant::now() + CODE_LEASE_WAIT;
        let mut waited = false;
        loop {
            match self.io.lease.acquire(&key).await {
                Ok(grant) if grant.granted() => break,
                // The database is away: the exchange's own write would wait for it anyway.
                Err(_) => break,
                Ok(_) if tokio::time::Instant::now() >= give_up => break,
                Ok(_) => {
                    waited = true;
                    tokio::time::sleep(CODE_LEASE_POLL).await;
                }
            }
        }
        let result = match expected {
            Some(appid) if waited && self.exchanged_since(component, appid, since).await? => {
                Ok(appid.clone())
            }
            // A callback: the push may have been exchanged already, here or on another replica.
            None => match self.code_exchanged_for(component, code).await? {
                Some(appid) => Ok(appid),
                None => self.exchange_code(component, None, code, since).await,
            },
            _ => self.exchange_code(component, expected, code, since).await,
        };
        self.io.lease.release(&key).await;
        result
    }

    /// `authorized` / `updateauthorized`: exchanges the code and stores the new refresh token and
    /// access token (re-authorization retires the old refresh token). Idempotent: a code already
    /// exchanged (61009) is fine only if an `api_query_auth` answer was stored since `since` (the
    /// event's CreateTime or receive time, whichever is earlier); otherwise the refresh token it
    /// carried is lost to us and 61009 is returned as the error it is.
    ///
    /// `appid` is the authorizer the code is expected for (from a push); `None` when it is not
    /// known beforehand (the authorization page's callback): then a spent code is answered from
    /// the codes exchanged recently (by this process or, through the store, another replica),
    /// and is `Gone` otherwise. Returns the appid.
    pub(crate) async fn exchange_code(
        self: &Arc<Self>,
        component: &ComponentAppid,
        expected: Option<&Appid>,
        code: &str,
        since: Timestamp,
    ) -> Result<Appid, RefreshError> {
        let mut replaced_component = false;
        let (info, sent_at) = loop {
            let ct = self.ensure_component_token(component).await?;
            let call = self.io.client.query_auth(
                ct.access_token.expose_secret(),
                component.as_str(),
                code,
            );
            let _permit = self.flights.permits.acquire().await.ok();
            // The answer's access token counts its lifetime from here (see `upstream_timed`).
            let sent_at = self.io.clock.now();
            match call.await {
                Ok(resp) => break (resp.authorization_info, sent_at),
                Err(e) if e.errcode() == Some(CODE_ALREADY_USED) => {
                    let appid = match expected {
                        Some(appid) => Some(appid.clone()),
                        None => self.code_exchanged_for(component, code).await?,
                    };
                    let Some(appid) = appid else {
                        // WeChat's errors name their endpoint already.
                        return Err(RefreshError::Gone {
                            reason: e.to_string(),
                        });
                    };
                    return if self.exchanged_since(component, &appid, since).await? {
                        Ok(appid)
                    } else {
                        // Spent, and its answer never stored: retrying cannot bring it back.
                        Err(RefreshError::Gone {
                            reason: format!("{e}; its refresh token was not stored"),
                        })
                    };
                }
                Err(e) if e.class() == ErrorClass::StaleToken && !replaced_component => {
                    replaced_component = true;
                    drop(_permit);
                    self.replace_component_token(component, &ct).await?;
                }
                // The code itself is refused (expired 61010, invalid, not permitted): final.
                Err(e)
                    if matches!(
                        e.class(),
                        ErrorClass::Reauthorize
                            | ErrorClass::Configuration
                            | ErrorClass::Permission
                    ) =>
                {
                    return Err(RefreshError::Gone {
                        reason: e.to_string(),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        };
        let appid = match expected {
            Some(appid) if info.authorizer_appid != appid.as_str() => {
                return Err(RefreshError::Gone {
                    reason: "api_query_auth returned another appid".into(),
                });
            }
            Some(appid) => appid.clone(),
            None => Appid::parse(&info.authorizer_appid).map_err(|e| RefreshError::Gone {
                reason: format!("api_query_auth: {e}"),
            })?,
        };
        let appid = &appid;
        let rt = info
            .non_empty_refresh_token()
            .ok_or_else(|| RefreshError::Upstream {
                class: ErrorClass::Transient,
                detail: "api_query_auth: no authorizer_refresh_token".into(),
            })?;
        let credential = Credential::authorizer(component, appid);
        let slot = SecretSlot::RefreshToken { component, appid };
        let sealed_rt = self.io.vault.seal(slot, rt.as_bytes())?;
        let access = match (&info.authorizer_access_token, info.expires_in) {
            (Some(t), Some(secs)) if !t.is_empty() => Some((
                t.clone(),
                self.new_access_token(
                    &credential,
                    t,
                    Duration::from_secs(secs),
                    TokenSource::QueryAuth,
                    sent_at,
                )?,
            )),
            _ => None,
        };
        // WeChat will not give this refresh token again (the code is spent): the write is retried
        // while the store can pass (SPEC.md rule 2), and re-fenced on whatever landed meanwhile.
        let mut retry = StoreRetry::new("api_query_auth answer", WRITE_TRIES_THAT_CANNOT_PASS);
        let mut lost_race = false;
        let mut folded_any = false;
        loop {
            let current = match self
                .io
                .store
                .authorizers()
                .get_authorizer(component, appid)
                .await
            {
                Ok(current) => current,
                Err(e) => {
                    retry.after(e).await?;
                    continue;
                }
            };
            let expected = match &current {
                Some(r) => {
                    // A write that reported failure but landed (or another pass storing the
                    // same answer): nothing left to write.
                    if lost_race
                        && self
                            .io
                            .vault
                            .open_string(slot, &r.refresh_token)?
                            .expose_secret()
                            == rt
                    {
                        self.schedule.failures.lock().remove(&credential);
                        if self.adopt_stored(&credential).await.is_err() {
                            self.schedule_in(&credential, Duration::ZERO);
                        }
                        self.remember_code(component, code, appid).await;
                        if folded_any {
                            self.remove_folded_direct(component, appid).await;
                        }
                        self.describe_later(component, appid);
                        return Ok(appid.clone());
                    }
                    Expected::Generation(r.generation)
                }
                None => Expected::Absent,
            };
            // A token requested after ours (a refresh that landed meanwhile) stays: only the
            // refresh token is written then.
            let stored_newer = current
                .as_ref()
                .and_then(|r| r.token.as_ref())
                .zip(access.as_ref())
                .is_some_and(|(stored, (_, ours))| stored.issued_at > ours.issued_at);
            let access_write = access.as_ref().filter(|_| !stored_newer);
            let folded = match self
                .direct_to_fold(component, appid, current.as_ref())
                .await
            {
                Ok(folded) => folded,
                // The answer must still be stored: retried like the write itself.
                Err(e) => {
                    retry.after(e).await?;
                    continue;
                }
            };
            folded_any |= folded.is_some();
            let write = AuthorizationWrite {
                component: component.clone(),
                appid: appid.clone(),
                expected,
                kind: folded.as_ref().map(|f| f.kind),
                status: AuthorizerStatus::Active,
                refresh_token: sealed_rt.clone(),
                appsecret: folded.as_ref().and_then(|f| f.appsecret.clone()),
                access_token: access_write.map(|(_, a)| a.clone()),
                source: RefreshTokenSource::QueryAuth,
                at: self.io.clock.now(),
            };
            match self.io.store.authorizers().save_authorization(&write).await {
                Ok(SaveOutcome::Saved { generation }) => {
                    self.cache
                        .slot(&credential)
                        .set_status(AuthorizerStatus::Active, "");
                    self.schedule.failures.lock().remove(&credential);
                    match access_write {
                        Some((token, stored)) => {
                            self.reports.obtained(
                                &credential,
                                token,
                                stored.issued_at,
                                self.config.rogue_window,
                            );
                            self.publish(
                                &credential,
                                generation,
                                crate::vault::TokenText::from(token.as_str()),
                                stored,
                            );
                        }
                        None if stored_newer => {
                            if self.adopt_stored(&credential).await.is_err() {
                                self.schedule_in(&credential, Duration::ZERO);
                            }
                        }
                        None => self.schedule_in(&credential, Duration::ZERO),
                    }
                    self.remember_code(component, code, appid).await;
                    if folded.is_some() {
                        self.remove_folded_direct(component, appid).await;
                    }
                    self.describe_later(component, appid);
                    return Ok(appid.clone());
                }
                // A refresh (or a commit we saw fail) landed between our read and our write.
                Ok(SaveOutcome::Stale { .. }) => lost_race = true,
                Ok(SaveOutcome::Missing) => return Err(RefreshError::Unknown),
                Err(e) => {
                    // The commit itself may have landed: compare before writing again.
                    lost_race = true;
                    retry.after(e).await?;
                }
            }
        }
    }

    /// A direct account of the same appid and component that an authorization replaces (SPEC.md
    /// rule 1: one appid, one credential per component): its kind, and its appsecret re-sealed
    /// as the authorizer's fallback unless the authorizer has one already.
    async fn direct_to_fold(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
        current: Option<&crate::model::AuthorizerRecord>,
    ) -> Result<Option<Folded>, crate::store::StoreError> {
        let Some(direct) = self
            .io
            .store
            .direct()
            .get_direct_account(component, appid)
            .await?
        else {
            return Ok(None);
        };
        let appsecret = if current.is_some_and(|r| r.appsecret.is_some()) {
            None
        } else {
            let resealed = self
                .io
                .vault
                .open(
                    SecretSlot::DirectAppsecret { component, appid },
                    &direct.appsecret,
                )
                .and_then(|secret| {
                    self.io.vault.seal(
                        SecretSlot::AuthorizerAppsecret { component, appid },
                        &secret,
                    )
                });
            match resealed {
                Ok(sealed) => Some(sealed),
                // (A key this server lacks.) The authorization is stored all the same; the
                // direct account stays beside it until removed.
                Err(e) => {
                    tracing::warn!(%appid, error = %e, "the direct account of this appid could not be folded into its authorization");
                    return Ok(None);
                }
            }
        };
        Ok(Some(Folded {
            kind: direct.kind,
            appsecret,
        }))
    }

    /// After the authorization that folded it landed: the direct account goes (its appsecret
    /// is the authorizer's fallback now), here and, through the change feed, on other replicas.
    async fn remove_folded_direct(&self, component: &ComponentAppid, appid: &Appid) {
        let direct = Credential::direct(component, appid);
        self.unschedule(&direct);
        self.cache.remove(&direct);
        match crate::manage::remove_direct_account(&*self.io.store, component, appid).await {
            Ok(_) => tracing::warn!(
                %appid,
                "the direct account of this appid was folded into its new authorization: its \
                 appsecret is now the authorizer's fallback, and it is served as an authorizer"
            ),
            Err(e) => {
                tracing::warn!(%appid, error = %e, "the direct account folded into the authorization could not be removed; remove it with `wxtoken accounts remove`")
            }
        }
    }

    /// Whether an `api_query_auth` answer for `appid` was stored at or after `since`.
    pub(crate) async fn exchanged_since(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
        since: Timestamp,
    ) -> Result<bool, RefreshError> {
        let history = self.io.history(component, appid).await?;
        Ok(history.iter().any(|h| {
            h.applied && h.source == RefreshTokenSource::QueryAuth && h.received_at >= since
        }))
    }
}

/// What an authorization takes over from a direct account of the same appid.
struct Folded {
    kind: crate::model::AppKind,
    appsecret: Option<crate::model::Sealed>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_codes_answer_by_code_and_keep_no_code_in_memory() {
        let codes = RecentCodes::default();
        let appid = Appid::parse("wxauthorizer00001").expect("appid");
        codes.insert("queryauthcode@@@secret", &appid);
        assert_eq!(codes.get("queryauthcode@@@secret"), Some(appid));
        assert_eq!(codes.get("queryauthcode@@@other"), None);
        let held = codes.codes.lock();
        assert!(
            held.keys()
                .all(|k| k != b"queryauthcode@@@secret".as_slice())
        );
    }
}
