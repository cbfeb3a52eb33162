//! The operations the CLI and the admin API share (adding a direct account, creating a client), so
//! both apply the same rules. Depends on `store`, `vault` and `model` only.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::model::{
    AppKind, Appid, AppidGrant, ClientCreate, ClientRecord, ComponentAppid, DirectAccountWrite,
    KeyRotation, NewClient, SecretSlot, Timestamp, UpsertOutcome,
};
use crate::store::{ChangeScope, Store, StoreChange, StoreError};
use crate::vault::{NewApiKey, Vault, VaultError, generate_api_key};

/// Why a management operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    /// Bad input; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// The name is taken by a live client (a revoked client's name can be reused).
    #[error("a client named {0} already exists (revoke it first to reuse the name)")]
    NameTaken(String),
    /// No live client has this name.
    #[error("no active client named {0}")]
    NoSuchClient(String),
    /// The appid is an authorizer of the component: a direct account beside it would make every
    /// read of it ambiguous.
    #[error(
        "{appid} is an authorizer of {component}, not a direct account: give its appsecret as the \
         authorizer's fallback with `wxtoken authorizers set-appsecret {appid}` (or the \
         appsecret column of `wxtoken authorizers import`)"
    )]
    IsAuthorizer {
        appid: Appid,
        component: ComponentAppid,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// Adds (or updates the appsecret of) a direct account; the appsecret is sealed before it is
/// stored. Refused for an appid that is an authorizer of the component.
pub async fn add_direct_account(
    store: &dyn Store,
    vault: &Vault,
    component: &ComponentAppid,
    appid: &Appid,
    kind: AppKind,
    appsecret: &SecretString,
) -> Result<UpsertOutcome, ManageError> {
    let secret = appsecret.expose_secret();
    check_appsecret(secret)?;
    if store
        .authorizers()
        .get_authorizer(component, appid)
        .await?
        .is_some()
    {
        return Err(ManageError::IsAuthorizer {
            appid: appid.clone(),
            component: component.clone(),
        });
    }
    let now = Timestamp::now();
    store.components().ensure_component(component, now).await?;
    let sealed = vault.seal(
        SecretSlot::DirectAppsecret { component, appid },
        secret.as_bytes(),
    )?;
    let outcome = store
        .direct()
        .upsert_direct_account(&DirectAccountWrite {
            component: component.clone(),
            appid: appid.clone(),
            kind,
            appsecret: sealed,
            at: now,
        })
        .await?;
    announce(
        store,
        ChangeScope::Account,
        Some(component),
        Some(appid.as_str()),
    )
    .await;
    Ok(outcome)
}

/// Sets (or, with `None`, clears) the appsecret kept as an authorizer's fallback, sealed before
/// it is stored. False if there is no such authorizer.
pub async fn set_authorizer_appsecret(
    store: &dyn Store,
    vault: &Vault,
    component: &ComponentAppid,
    appid: &Appid,
    appsecret: Option<&SecretString>,
) -> Result<bool, ManageError> {
    let sealed = match appsecret {
        Some(secret) => {
            let secret = secret.expose_secret();
            check_appsecret(secret)?;
            Some(vault.seal(
                SecretSlot::AuthorizerAppsecret { component, appid },
                secret.as_bytes(),
            )?)
        }
        None => None,
    };
    let set = store
        .authorizers()
        .set_authorizer_appsecret(component, appid, sealed.as_ref(), Timestamp::now())
        .await?;
    if set {
        announce(
            store,
            ChangeScope::Authorizer,
            Some(component),
            Some(appid.as_str()),
        )
        .await;
    }
    Ok(set)
}

fn check_appsecret(secret: &str) -> Result<(), ManageError> {
    if secret.trim().is_empty() || secret.len() > 256 {
        return Err(ManageError::Invalid(
            "the appsecret must be 1 to 256 characters".into(),
        ));
    }
    Ok(())
}

/// Removes a direct account. False if there was none.
pub async fn remove_direct_account(
    store: &dyn Store,
    component: &ComponentAppid,
    appid: &Appid,
) -> Result<bool, ManageError> {
    let removed = store
        .direct()
        .remove_direct_account(component, appid)
        .await?;
    if removed {
        announce(
            store,
            ChangeScope::Account,
            Some(component),
            Some(appid.as_str()),
        )
        .await;
    }
    Ok(removed)
}

/// Revokes a client's key. False if no active client has that name.
pub async fn revoke_client(store: &dyn Store, name: &str) -> Result<bool, ManageError> {
    let revoked = store
        .clients()
        .revoke_client(name, Timestamp::now())
        .await?;
    if revoked {
        announce(store, ChangeScope::Client, None, Some(name)).await;
    }
    Ok(revoked)
}

/// The longest a rotated-out key keeps working: a grace without end is no rotation.
pub const MAX_KEY_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Gives the live client `name` a new key (returned, shown once). The previous key keeps working
/// for `grace` (zero: it stops at once), replacing the grace of an earlier rotation.
pub async fn rotate_client(
    store: &dyn Store,
    name: &str,
    grace: Duration,
) -> Result<(ClientRecord, NewApiKey), ManageError> {
    if grace > MAX_KEY_GRACE {
        return Err(ManageError::Invalid(format!(
            "the grace period is at most {}",
            humantime::format_duration(MAX_KEY_GRACE)
        )));
    }
    let key = generate_api_key();
    let now = Timestamp::now();
    let rotation = KeyRotation {
        key_hash: key.hash,
        key_hint: key.hint.clone(),
        previous_until: (!grace.is_zero()).then(|| now.plus(grace)),
        at: now,
    };
    let record = store
        .clients()
        .rotate_client_key(name, &rotation)
        .await?
        .ok_or_else(|| ManageError::NoSuchClient(name.to_owned()))?;
    announce(store, ChangeScope::Client, None, Some(name)).await;
    Ok((record, key))
}

/// How soon running servers apply a change made through the store (what the CLI tells the
/// operator): they poll `store_changes` every [`crate::coordination::CHANGE_POLL`].
pub const PROPAGATION: &str = "2 s";

/// Records `scope`'s change for running servers (`coordination::follow_changes`). The change
/// itself is made already: if it cannot be announced, servers learn of it later (the key cache's
/// `server.key_cache_ttl`, the next restart), which is logged.
pub async fn announce(
    store: &dyn Store,
    scope: ChangeScope,
    component: Option<&ComponentAppid>,
    subject: Option<&str>,
) {
    let change = StoreChange::new(scope, component, subject);
    if let Err(e) = store.ops().record_change(&change, Timestamp::now()).await {
        tracing::warn!(error = %e, scope = scope.as_str(), "the change is made but running servers were not told; they apply it at their next restart");
    }
}

/// `*` anywhere grants every appid; otherwise each value must be a valid appid.
pub fn parse_grant(appids: &[String]) -> Result<AppidGrant, ManageError> {
    if appids.is_empty() {
        return Err(ManageError::Invalid(
            "grant at least one appid (or *)".into(),
        ));
    }
    if appids.iter().any(|a| a == "*") {
        return Ok(AppidGrant::All);
    }
    let parsed = appids
        .iter()
        .map(|a| Appid::parse(a).map_err(|e| ManageError::Invalid(format!("appid {a}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AppidGrant::Only(parsed))
}

/// Creates a client and returns it with its API key (the key is shown once; only its hash is
/// stored).
pub async fn create_client(
    store: &dyn Store,
    name: &str,
    grant: AppidGrant,
    admin: bool,
) -> Result<(ClientRecord, NewApiKey), ManageError> {
    if name.trim().is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(ManageError::Invalid(
            "the client name must be 1 to 128 printable characters".into(),
        ));
    }
    let key = generate_api_key();
    match store
        .clients()
        .create_client(&NewClient {
            name: name.to_owned(),
            key_hash: key.hash,
            key_hint: key.hint.clone(),
            grant,
            admin,
            created_at: Timestamp::now(),
        })
        .await?
    {
        ClientCreate::Created(record) => {
            announce(store, ChangeScope::Client, None, Some(name)).await;
            Ok((record, key))
        }
        ClientCreate::NameTaken => Err(ManageError::NameTaken(name.to_owned())),
    }
}

/// A Beijing day as `YYYY-MM-DD` (the gateway's call counts), checked.
pub fn check_day(day: &str) -> Result<String, String> {
    let shaped = day.len() == 10
        && day.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if shaped {
        Ok(day.to_owned())
    } else {
        Err(format!("day `{day}` is not YYYY-MM-DD"))
    }
}
