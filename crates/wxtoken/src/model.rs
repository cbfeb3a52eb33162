//! Domain types shared by every module: appids, account kinds, authorizer statuses, credentials,
//! timestamps, sealed values and the records the store reads and writes.
//!
//! Depends on nothing else in the crate (std, thiserror, humantime, subtle). Every module may use it.
//!
//! Invariants:
//! - An `Appid`/`ComponentAppid` is 1..=64 ASCII letters, digits, `_` or `-`; it is safe in logs,
//!   file names, CSV and SQL binds. Parsing is the only way to build one.
//! - Records that cross the store boundary hold secrets only as [`Sealed`] values; plaintext lives
//!   in `SecretString`s and zeroized buffers owned by the caller of the vault.
//! - Timestamps are milliseconds since the Unix epoch (UTC), exactly as stored.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A malformed domain value (appid, kind, status, …). The message names the field, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {reason}")]
pub struct InvalidValue {
    pub what: &'static str,
    pub reason: String,
}

impl InvalidValue {
    fn new(what: &'static str, reason: impl Into<String>) -> Self {
        Self {
            what,
            reason: reason.into(),
        }
    }
}

fn check_appid(what: &'static str, s: &str) -> Result<(), InvalidValue> {
    if s.is_empty() || s.len() > 64 {
        return Err(InvalidValue::new(what, "must be 1 to 64 characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(InvalidValue::new(
            what,
            "only ASCII letters, digits, '_' and '-' are allowed",
        ));
    }
    Ok(())
}

macro_rules! appid_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        ///
        /// Held inline up to 24 bytes (an appid is 18), so a copy allocates nothing.
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(compact_str::CompactString);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, InvalidValue> {
                check_appid($what, s)?;
                Ok(Self(compact_str::CompactString::new(s)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0.as_str())
            }
        }

        // Hash, Eq and Ord are derived from the inner string's, which are `str`'s, so lookups by
        // `&str` agree with them (the token cache looks appids up without allocating).
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                self.0.as_str()
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, InvalidValue> {
                Self::parse(s)
            }
        }
    };
}

appid_type!(
    /// The appid of a third-party platform (component). Everything stored is keyed by it, so one
    /// deployment can serve several platforms without collisions (SPEC.md rule 9).
    ComponentAppid,
    "component appid"
);
appid_type!(
    /// The appid of an Official Account or Mini Program (an authorizer or a direct account).
    Appid,
    "appid"
);

impl ComponentAppid {
    /// The component's own appid as an [`Appid`], used as the appid of its component-token credential.
    pub fn as_appid(&self) -> Appid {
        Appid(self.0.clone())
    }
}

/// Official Account (公众号) or Mini Program (小程序).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppKind {
    OfficialAccount,
    MiniProgram,
}

impl AppKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AppKind::OfficialAccount => "official_account",
            AppKind::MiniProgram => "mini_program",
        }
    }

    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "official_account" => Ok(AppKind::OfficialAccount),
            "mini_program" => Ok(AppKind::MiniProgram),
            _ => Err(InvalidValue::new(
                "kind",
                "expected official_account or mini_program",
            )),
        }
    }
}

/// Where an authorizer stands. `NeedsReauth` and `Revoked` keep all data (SPEC.md rules 5 and 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthorizerStatus {
    Active,
    /// The refresh token was rejected; a merchant must authorize again (an appsecret on file may
    /// still serve tokens through the fallback).
    NeedsReauth,
    /// The merchant withdrew the authorization (`unauthorized` event, or no longer listed).
    Revoked,
}

impl AuthorizerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorizerStatus::Active => "active",
            AuthorizerStatus::NeedsReauth => "needs_reauth",
            AuthorizerStatus::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "active" => Ok(AuthorizerStatus::Active),
            "needs_reauth" => Ok(AuthorizerStatus::NeedsReauth),
            "revoked" => Ok(AuthorizerStatus::Revoked),
            _ => Err(InvalidValue::new(
                "status",
                "expected active, needs_reauth or revoked",
            )),
        }
    }
}

/// What an access token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CredentialKind {
    /// The component_access_token of a component.
    Component,
    /// An authorizer_access_token.
    Authorizer,
    /// The access token of a directly managed account (own appid + appsecret).
    Direct,
    /// The JS-SDK `jsapi_ticket` of an authorizer or direct account (its appid), fetched with that
    /// account's access token.
    Jsapi,
    /// The `wx_card` api_ticket (card JS-SDK) of an authorizer or direct account.
    WxCard,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Component => "component",
            CredentialKind::Authorizer => "authorizer",
            CredentialKind::Direct => "direct",
            CredentialKind::Jsapi => "jsapi",
            CredentialKind::WxCard => "wx_card",
        }
    }

    /// An authorizer's or direct account's access token (what a rogue refresher can retire).
    pub fn is_account_token(self) -> bool {
        matches!(self, CredentialKind::Authorizer | CredentialKind::Direct)
    }

    /// A JS-SDK ticket (`jsapi`, `wx_card`), not an access token.
    pub fn is_ticket(self) -> bool {
        matches!(self, CredentialKind::Jsapi | CredentialKind::WxCard)
    }

    /// The ticket kind named as in the API path and getticket's `type` (`jsapi`, `wx_card`).
    pub fn parse_ticket(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "jsapi" => Ok(CredentialKind::Jsapi),
            "wx_card" => Ok(CredentialKind::WxCard),
            _ => Err(InvalidValue::new(
                "ticket type",
                "expected jsapi or wx_card",
            )),
        }
    }

    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "component" => Ok(CredentialKind::Component),
            "authorizer" => Ok(CredentialKind::Authorizer),
            "direct" => Ok(CredentialKind::Direct),
            "jsapi" => Ok(CredentialKind::Jsapi),
            "wx_card" => Ok(CredentialKind::WxCard),
            _ => Err(InvalidValue::new("credential kind", "unknown")),
        }
    }
}

/// One refreshable credential: the unit of fencing (one generation counter each) and of refresh.
/// For `CredentialKind::Component` the appid is the component appid itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Credential {
    pub component: ComponentAppid,
    pub kind: CredentialKind,
    pub appid: Appid,
}

impl Credential {
    pub fn component(component: &ComponentAppid) -> Self {
        Self {
            component: component.clone(),
            kind: CredentialKind::Component,
            appid: component.as_appid(),
        }
    }

    pub fn authorizer(component: &ComponentAppid, appid: &Appid) -> Self {
        Self {
            component: component.clone(),
            kind: CredentialKind::Authorizer,
            appid: appid.clone(),
        }
    }

    pub fn direct(component: &ComponentAppid, appid: &Appid) -> Self {
        Self {
            component: component.clone(),
            kind: CredentialKind::Direct,
            appid: appid.clone(),
        }
    }

    /// The JS-SDK ticket of kind `kind` (`Jsapi` or `WxCard`) of the account `self` names (an
    /// authorizer or direct account).
    pub fn ticket(&self, kind: CredentialKind) -> Self {
        debug_assert!(kind.is_ticket());
        Self {
            component: self.component.clone(),
            kind,
            appid: self.appid.clone(),
        }
    }
}

/// How an access token was obtained (reported to clients as `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenSource {
    /// `api_component_token`.
    ComponentToken,
    /// `api_authorizer_token` (a refresh with the authorizer refresh token).
    AuthorizerToken,
    /// `api_query_auth` (an authorization or re-authorization).
    QueryAuth,
    /// `cgi-bin/stable_token` (a direct account, or an authorizer's appsecret fallback).
    StableToken,
    /// `cgi-bin/token` (the same, when stable_token is unavailable).
    Token,
    /// `cgi-bin/ticket/getticket` (a JS-SDK ticket).
    GetTicket,
}

impl TokenSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenSource::ComponentToken => "api_component_token",
            TokenSource::AuthorizerToken => "api_authorizer_token",
            TokenSource::QueryAuth => "api_query_auth",
            TokenSource::StableToken => "stable_token",
            TokenSource::Token => "token",
            TokenSource::GetTicket => "getticket",
        }
    }

    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "api_component_token" => Ok(TokenSource::ComponentToken),
            "api_authorizer_token" => Ok(TokenSource::AuthorizerToken),
            "api_query_auth" => Ok(TokenSource::QueryAuth),
            "stable_token" => Ok(TokenSource::StableToken),
            "token" => Ok(TokenSource::Token),
            "getticket" => Ok(TokenSource::GetTicket),
            _ => Err(InvalidValue::new("token source", "unknown")),
        }
    }
}

/// Where a refresh token came from (kept with each history row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefreshTokenSource {
    /// Returned by `api_authorizer_token`.
    Refresh,
    /// Returned by `api_query_auth`.
    QueryAuth,
    /// Brought in by `wxtoken authorizers import`.
    Import,
    /// Recovered from `api_get_authorizer_list` by reconciliation.
    Reconcile,
}

impl RefreshTokenSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshTokenSource::Refresh => "refresh",
            RefreshTokenSource::QueryAuth => "query_auth",
            RefreshTokenSource::Import => "import",
            RefreshTokenSource::Reconcile => "reconcile",
        }
    }

    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "refresh" => Ok(RefreshTokenSource::Refresh),
            "query_auth" => Ok(RefreshTokenSource::QueryAuth),
            "import" => Ok(RefreshTokenSource::Import),
            "reconcile" => Ok(RefreshTokenSource::Reconcile),
            _ => Err(InvalidValue::new("refresh token source", "unknown")),
        }
    }
}

/// A point in time: milliseconds since the Unix epoch, UTC. Ordered, copyable, stored as is.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Self(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Err(e) => Self(-i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX)),
        }
    }

    pub fn to_system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_millis(self.0.unsigned_abs())
        } else {
            UNIX_EPOCH - Duration::from_millis(self.0.unsigned_abs())
        }
    }

    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// How long after `earlier` this is (zero if it is not after it).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    /// The calendar day in Beijing (UTC+8), `YYYY-MM-DD`: the day WeChat's daily quotas count.
    pub fn beijing_day(self) -> String {
        let ms = u64::try_from(self.0.saturating_add(8 * 3_600_000)).unwrap_or(0);
        let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
        humantime::format_rfc3339_seconds(at).to_string()[..10].to_owned()
    }

    /// `self - d`, saturating.
    pub fn minus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 with milliseconds, UTC.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 0 {
            write!(
                f,
                "{}",
                humantime::format_rfc3339_millis(self.to_system_time())
            )
        } else {
            write!(f, "{}ms", self.0)
        }
    }
}

/// The id of a master key: 16 lowercase hex characters derived from the key (see `vault`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(InvalidValue::new(
                "key id",
                "1 to 64 ASCII letters or digits",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// A key id the vault derived (lowercase hex digits), which needs no validation.
    pub(crate) fn from_digest_hex(hex: String) -> Self {
        Self(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// AES-GCM nonce length in bytes.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length in bytes: a sealed empty plaintext has exactly this many ciphertext bytes.
pub const TAG_LEN: usize = 16;

/// A secret as the store sees it: AES-256-GCM output under the master key `key_id`, bound to its
/// row by associated data (see `vault::SecretSlot`). The ciphertext includes the tag.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: KeyId,
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
}

impl Sealed {
    /// Whether the sealed plaintext is empty (only the tag is present). Lets the store refuse an
    /// empty refresh token without seeing it.
    pub fn is_empty_plaintext(&self) -> bool {
        self.ciphertext.len() <= TAG_LEN
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .field("len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// Which row and field a sealed value belongs to. The vault turns this into the AES-GCM associated
/// data, so a sealed value copied to another row, field, component or account fails to open.
#[derive(Debug, Clone, Copy)]
pub enum SecretSlot<'a> {
    /// The latest component_verify_ticket of a component.
    Ticket { component: &'a ComponentAppid },
    /// The current access token of a credential (component, authorizer or direct account).
    AccessToken { credential: &'a Credential },
    /// An authorizer refresh token: the current one and every history row share this slot.
    RefreshToken {
        component: &'a ComponentAppid,
        appid: &'a Appid,
    },
    /// The appsecret kept for an authorizer's fallback.
    AuthorizerAppsecret {
        component: &'a ComponentAppid,
        appid: &'a Appid,
    },
    /// The appsecret of a directly managed account.
    DirectAppsecret {
        component: &'a ComponentAppid,
        appid: &'a Appid,
    },
    /// The decrypted payload of a stored push event (may contain an authorization code).
    EventPayload {
        component: &'a ComponentAppid,
        dedupe_key: &'a str,
    },
    /// The key-check value stored for one master key.
    KeyCheck { key_id: &'a KeyId },
}

/// The SHA-256 of an API key; the store keeps only this (see `vault::hash_api_key`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiKeyHash(pub [u8; 32]);

impl ApiKeyHash {
    /// Constant-time comparison, for callers that compare hashes in memory.
    pub fn ct_eq(&self, other: &ApiKeyHash) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeyHash(..)")
    }
}

/// Which appids a client may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppidGrant {
    /// `*`: every appid.
    All,
    Only(Vec<Appid>),
}

impl AppidGrant {
    pub fn allows(&self, appid: &Appid) -> bool {
        match self {
            AppidGrant::All => true,
            AppidGrant::Only(list) => list.contains(appid),
        }
    }

    /// `*` or a comma-separated list (appids never contain a comma).
    pub fn to_stored(&self) -> String {
        match self {
            AppidGrant::All => "*".to_owned(),
            AppidGrant::Only(list) => list.iter().map(Appid::as_str).collect::<Vec<_>>().join(","),
        }
    }

    pub fn from_stored(s: &str) -> Result<Self, InvalidValue> {
        if s == "*" {
            return Ok(AppidGrant::All);
        }
        if s.is_empty() {
            return Ok(AppidGrant::Only(Vec::new()));
        }
        s.split(',')
            .map(Appid::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(AppidGrant::Only)
    }
}

// ---------------------------------------------------------------------------------------------
// Records read from and written to the store.

/// A fresh access token, sealed under `SecretSlot::AccessToken`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccessToken {
    pub sealed: Sealed,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    /// When wxtoken plans to replace it (None: not planned yet).
    pub refresh_at: Option<Timestamp>,
    pub source: TokenSource,
}

/// The stable_token `force_refresh` budget of one credential (wechat-protocol.md §6.2: 20 a day,
/// 30 s apart): how many were used since `day_start`, and when the last one was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForceBudgetRecord {
    pub credential: Credential,
    pub day_start: Timestamp,
    pub used: u32,
    pub last: Option<Timestamp>,
}

/// The state of one credential: its generation and its current token, if it has one yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub credential: Credential,
    /// Bumped by every landed write to this credential; fences stale writers (SPEC.md rule 3).
    pub generation: u64,
    pub token: Option<NewAccessToken>,
    pub updated_at: Timestamp,
}

/// The result of one refresh, written atomically and fenced by `expected_generation`.
#[derive(Debug, Clone)]
pub struct RefreshResult {
    pub credential: Credential,
    /// The generation the refresh was computed from; the write lands only if it is still current.
    pub expected_generation: u64,
    pub access_token: NewAccessToken,
    /// The refresh token returned with it, sealed under `SecretSlot::RefreshToken`. Required for
    /// an authorizer refreshed through `api_authorizer_token`; `None` for component tokens, direct
    /// accounts and the appsecret fallback. Never an empty one.
    pub refresh_token: Option<Sealed>,
    pub at: Timestamp,
}

/// What a fenced write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// The authorizer must not exist yet.
    Absent,
    /// The credential's generation must still be this.
    Generation(u64),
}

/// Creates an authorizer or replaces its refresh token: the result of `api_query_auth`, an import
/// row or a reconciliation recovery. One fenced write with its history row.
#[derive(Debug, Clone)]
pub struct AuthorizationWrite {
    pub component: ComponentAppid,
    pub appid: Appid,
    pub expected: Expected,
    /// `None` keeps the stored kind (or leaves it unknown for a new authorizer).
    pub kind: Option<AppKind>,
    /// Usually `Active`; an import may carry another status over from the exporting database.
    pub status: AuthorizerStatus,
    pub refresh_token: Sealed,
    /// `None` keeps the stored appsecret (or none for a new authorizer).
    pub appsecret: Option<Sealed>,
    /// `None` keeps the stored access token (an import brings none).
    pub access_token: Option<NewAccessToken>,
    pub source: RefreshTokenSource,
    pub at: Timestamp,
}

/// The outcome of a fenced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveOutcome {
    /// It landed; the credential is now at this generation.
    Saved { generation: u64 },
    /// Someone else wrote first (or the authorizer already exists): nothing changed except that a
    /// refresh token carried by the write was still appended to the history.
    Stale { current_generation: u64 },
    /// The credential does not exist.
    Missing,
}

/// A status change of an authorizer.
#[derive(Debug, Clone)]
pub struct StatusChange {
    pub component: ComponentAppid,
    pub appid: Appid,
    pub status: AuthorizerStatus,
    /// A short human reason (errcode and class, "unauthorized event"); never a secret.
    pub reason: Option<String>,
    /// `Some(g)`: only if the generation is still `g` (a refresh failure computed from `g` must not
    /// mark an authorizer that was re-authorized meanwhile). `None`: unconditional (revocation).
    pub expected_generation: Option<u64>,
    pub at: Timestamp,
}

/// An authorizer as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizerRecord {
    pub component: ComponentAppid,
    pub appid: Appid,
    pub kind: Option<AppKind>,
    pub status: AuthorizerStatus,
    pub status_reason: Option<String>,
    pub status_changed_at: Timestamp,
    pub refresh_token: Sealed,
    pub appsecret: Option<Sealed>,
    /// The generation of its access-token credential.
    pub generation: u64,
    /// Its current access token, if it has one yet (loaded with it: one pass at cold start).
    pub token: Option<NewAccessToken>,
    /// What api_get_authorizer_info said of it, if it was asked.
    pub details: AuthorizerDetails,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What a cold start and a reconciliation need of an authorizer
/// ([`crate::store::AuthorizerStore::scan_authorizer_states`]): not its appsecret, not its details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizerState {
    pub component: ComponentAppid,
    pub appid: Appid,
    pub status: AuthorizerStatus,
    pub status_reason: Option<String>,
    pub refresh_token: Sealed,
    /// An appsecret is on file for its fallback.
    pub has_appsecret: bool,
    /// api_get_authorizer_info was asked (its details are on file).
    pub described: bool,
    /// The generation of its access-token credential.
    pub generation: u64,
    pub token: Option<NewAccessToken>,
}

impl AuthorizerState {
    /// The state part of a full record.
    pub fn of(record: &AuthorizerRecord) -> Self {
        AuthorizerState {
            component: record.component.clone(),
            appid: record.appid.clone(),
            status: record.status,
            status_reason: record.status_reason.clone(),
            refresh_token: record.refresh_token.clone(),
            has_appsecret: record.appsecret.is_some(),
            described: record.details.fetched_at.is_some(),
            generation: record.generation,
            token: record.token.clone(),
        }
    }
}

/// What api_get_authorizer_info says of an authorizer (its kind is [`AuthorizerRecord::kind`]).
/// Public facts about the account, never a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizerDetails {
    pub nick_name: Option<String>,
    /// The registered entity (company or person) behind the account.
    pub principal_name: Option<String>,
    /// `service_type_info.id`: for an Official Account 0 subscription, 1 upgraded subscription,
    /// 2 service account; 0 for a Mini Program.
    pub service_type: Option<i64>,
    /// When WeChat was last asked (`None`: never).
    pub fetched_at: Option<Timestamp>,
}

/// Authorizer counts of one component by status, and (of every status) by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthorizerCounts {
    pub active: u64,
    pub needs_reauth: u64,
    pub revoked: u64,
    pub official_accounts: u64,
    pub mini_programs: u64,
    /// Kind not known yet (imported without one, details not fetched).
    pub kind_unknown: u64,
}

/// One row of the refresh-token history (append-only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshTokenHistoryEntry {
    pub id: i64,
    pub component: ComponentAppid,
    pub appid: Appid,
    pub refresh_token: Sealed,
    pub source: RefreshTokenSource,
    /// The generation the write produced, or the one it expected when it lost (`applied == false`).
    pub generation: u64,
    /// Whether the write it came with landed. A losing writer's token is still kept.
    pub applied: bool,
    pub received_at: Timestamp,
}

/// The latest ticket of a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTicket {
    pub sealed: Sealed,
    pub received_at: Timestamp,
}

/// Whether a pushed ticket became the latest one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketOutcome {
    Stored,
    /// A ticket received later is already stored; this one was ignored.
    Older,
}

/// A directly managed account, as written.
#[derive(Debug, Clone)]
pub struct DirectAccountWrite {
    pub component: ComponentAppid,
    pub appid: Appid,
    pub kind: AppKind,
    /// Sealed under `SecretSlot::DirectAppsecret`.
    pub appsecret: Sealed,
    pub at: Timestamp,
}

/// A directly managed account, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectAccountRecord {
    pub component: ComponentAppid,
    pub appid: Appid,
    pub kind: AppKind,
    pub appsecret: Sealed,
    pub generation: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Whether an upsert created or updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertOutcome {
    Created,
    Updated,
}

/// A verified, decrypted push, persisted before it is answered `success` (SPEC.md rule 7).
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub component: ComponentAppid,
    /// Computed by the caller from the push (e.g. InfoType + CreateTime + AuthorizerAppid), so a
    /// push WeChat repeats maps to the same key.
    pub dedupe_key: String,
    /// The InfoType (`authorized`, `unauthorized`, …); not secret.
    pub info_type: String,
    pub appid: Option<Appid>,
    /// Sealed under `SecretSlot::EventPayload`.
    pub payload: Sealed,
    pub received_at: Timestamp,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub component: ComponentAppid,
    pub dedupe_key: String,
    pub info_type: String,
    pub appid: Option<Appid>,
    pub payload: Sealed,
    pub received_at: Timestamp,
    pub processed_at: Option<Timestamp>,
}

/// Whether an event was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventInsert {
    Inserted,
    Duplicate,
}

/// A client to create. The API key itself is never stored.
#[derive(Debug, Clone)]
pub struct NewClient {
    pub name: String,
    pub key_hash: ApiKeyHash,
    /// The key's first characters (`wxt_AbCd`), to recognise it in listings.
    pub key_hint: String,
    pub grant: AppidGrant,
    pub admin: bool,
    pub created_at: Timestamp,
}

/// A client as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    pub id: i64,
    pub name: String,
    pub key_hint: String,
    pub grant: AppidGrant,
    pub admin: bool,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    /// After a rotation with a grace period: the previous key's hint and when it stops working.
    pub previous_key: Option<PreviousKey>,
    /// When the key this record was found by stops working: `Some` only for a lookup by a
    /// rotated-out key still in its grace period.
    pub key_expires_at: Option<Timestamp>,
}

/// A rotated-out key that keeps working until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousKey {
    pub key_hint: String,
    pub expires_at: Timestamp,
}

/// What `clients rotate` stores: the new key, and the grace of the previous one.
#[derive(Debug, Clone)]
pub struct KeyRotation {
    pub key_hash: ApiKeyHash,
    pub key_hint: String,
    /// Until when the previous key keeps working; `None` ends it at once.
    pub previous_until: Option<Timestamp>,
    pub at: Timestamp,
}

/// Whether a client was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCreate {
    Created(ClientRecord),
    NameTaken,
}

/// Reads to add to a client's audit counters (batched by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadCount {
    pub client_id: i64,
    pub component: ComponentAppid,
    pub appid: Appid,
    pub count: u64,
    pub last_read_at: Timestamp,
}

/// Calls one appid made through the gateway on one Beijing day (WeChat's quotas reset at
/// midnight UTC+8), on one WeChat path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayCallCount {
    /// `YYYY-MM-DD`, UTC+8.
    pub day: String,
    /// The authorizer's, direct account's or component's appid.
    pub appid: String,
    pub path: String,
    pub calls: u64,
    /// Of `calls`: answered with a WeChat errcode, an HTTP error or not at all.
    pub errors: u64,
}

/// What a dashboard session row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UiSessionKind {
    /// A signed-in browser's session.
    Session,
    /// A one-time sign-in link, exchanged once for a session.
    Once,
}

impl UiSessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Once => "once",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "session" => Some(Self::Session),
            "once" => Some(Self::Once),
            _ => None,
        }
    }
}

/// A stored dashboard session or one-time sign-in link, shared by every replica. Holds no secret:
/// the id's SHA-256 and the admin key's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiSessionRecord {
    /// SHA-256 of the session id or one-time token.
    pub digest: [u8; 32],
    pub kind: UiSessionKind,
    pub key_hash: ApiKeyHash,
    pub client_name: String,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
}

/// Refreshes one server made in one wall-clock minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshMinute {
    /// Minutes since the Unix epoch.
    pub minute: i64,
    pub refreshed: u64,
    pub failed: u64,
}

/// The stored key-check value of one master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCheck {
    pub key_id: KeyId,
    /// A constant sealed under this key with `SecretSlot::KeyCheck`.
    pub sealed: Sealed,
    pub created_at: Timestamp,
    /// Set once rotation has moved every secret off this key.
    pub retired_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quota_day_changes_at_midnight_in_beijing() {
        // 2026-12-06 15:59:59 UTC is 23:59:59 in Beijing; a second later it is the 7th there.
        let before = Timestamp::from_millis(1_796_572_799_000);
        assert_eq!(before.beijing_day(), "2026-12-06");
        assert_eq!(
            Timestamp::from_millis(1_796_572_800_000).beijing_day(),
            "2026-12-07"
        );
    }

    #[test]
    fn appid_accepts_wechat_shapes_and_rejects_separators() {
        assert!(Appid::parse("wx1234567890abcdef").is_ok());
        assert!(Appid::parse("").is_err());
        assert!(Appid::parse("wx,1").is_err());
        assert!(Appid::parse("wx 1").is_err());
        assert!(Appid::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn grant_round_trips_through_its_stored_form() {
        let g = AppidGrant::Only(vec![
            Appid::parse("wxa").unwrap(),
            Appid::parse("wxb").unwrap(),
        ]);
        assert_eq!(AppidGrant::from_stored(&g.to_stored()).unwrap(), g);
        assert_eq!(AppidGrant::from_stored("*").unwrap(), AppidGrant::All);
    }

    #[test]
    fn timestamp_displays_as_rfc3339_millis() {
        assert_eq!(
            Timestamp::from_millis(1_700_000_000_123).to_string(),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            Timestamp::from_millis(1000)
                .plus(Duration::from_secs(1))
                .as_millis(),
            2000
        );
    }

    #[test]
    fn enums_round_trip_through_their_names() {
        for k in [AppKind::OfficialAccount, AppKind::MiniProgram] {
            assert_eq!(AppKind::parse(k.as_str()).unwrap(), k);
        }
        for s in [
            AuthorizerStatus::Active,
            AuthorizerStatus::NeedsReauth,
            AuthorizerStatus::Revoked,
        ] {
            assert_eq!(AuthorizerStatus::parse(s.as_str()).unwrap(), s);
        }
        for s in [
            TokenSource::ComponentToken,
            TokenSource::AuthorizerToken,
            TokenSource::QueryAuth,
            TokenSource::StableToken,
            TokenSource::Token,
        ] {
            assert_eq!(TokenSource::parse(s.as_str()).unwrap(), s);
        }
    }
}
