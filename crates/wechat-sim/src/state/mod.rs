//! The simulated WeChat: components, accounts, authorizations, token series, codes and quotas,
//! and the rules of protocol notes section 9. Everything here is synchronous and takes `now` from
//! the caller (the simulated clock), so the rules are plain functions over a struct; `api` and
//! `control` hold the one `Mutex<State>` for the few microseconds a call takes.
//!
//! Memory stays small for 100,000 authorizers: access tokens are self-describing (see `mint`), so a
//! token *series* keeps only its current generation, expiry and the few superseded generations
//! still inside their overlap (pruned on the next issue); refresh tokens and generated appsecrets
//! are derived from integers. Per authorizer that is one `Account`, one `Authorization` and one
//! `Series`, a few hundred bytes.
//!
//! Depends on `config` (rules), `mint` (values), `model` (public views) and `wxerr` (codes).

mod authz;
mod direct;
mod quota;

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};

use crate::clock::Millis;
use crate::config::Rules;
use crate::mint::{self, Minter, TokenRef};
use crate::model::{
    AccountInfo, AccountKind, AccountSpec, ComponentInfo, ComponentSpec, ControlError, TokenKind,
    Validation,
};
use crate::wxerr::{WxErr, wx};

pub(crate) use direct::TicketType;
pub(crate) use quota::QuotaBook;

/// A reference to anything with an appid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum AppRef {
    Component(u32),
    Account(u32),
}

/// A freshly issued (or re-served) token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issued {
    pub token: String,
    pub expires_in: i64,
}

/// How the token being replaced retires.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Retire {
    /// Keeps working for this long (capped by its own expiry).
    After(Millis),
    /// Keeps working until its own expiry (stable_token's natural roll-over).
    AtExpiry,
}

/// One line of tokens: a component's, an authorization's, an account's cgi-bin/token or its
/// stable_token. Generation 0 means "none issued yet".
#[derive(Debug)]
pub(crate) struct Series {
    pub kind: TokenKind,
    pub owner: AppRef,
    /// The component of an authorizer series (`u32::MAX` otherwise).
    pub component: u32,
    pub generation: u32,
    pub expires_ms: Millis,
    /// Generations below this are dead at once (re-authorization, unauthorize).
    pub retired_below: u32,
    /// Superseded generations still usable, with the instant they stop working, in generation
    /// order (so lookups are a binary search and expired entries leave from the front).
    pub recent: VecDeque<(u32, Millis)>,
}

/// The verdict on a presented token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenCheck {
    Valid(TokenOwner),
    Expired(TokenOwner),
    Superseded(TokenOwner),
    Retired(TokenOwner),
    Unknown,
}

/// Whose token it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenOwner {
    pub kind: TokenKind,
    pub owner: AppRef,
    pub component: Option<u32>,
    pub expires_ms: Millis,
}

impl TokenCheck {
    /// The owner of a valid token, or the errcode a token-checked API answers.
    pub(crate) fn valid(self) -> Result<TokenOwner, WxErr> {
        match self {
            TokenCheck::Valid(o) => Ok(o),
            TokenCheck::Expired(_) => Err(wx(42001)),
            TokenCheck::Superseded(_) | TokenCheck::Retired(_) => Err(wx(40001)),
            TokenCheck::Unknown => Err(wx(40014)),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Ticket {
    pub value: Box<str>,
    pub issued_ms: Millis,
    /// Its push was answered `success` (or there was no push_url to push to).
    pub acked: bool,
}

#[derive(Debug)]
pub(crate) struct Component {
    pub appid: Box<str>,
    pub secret: Box<str>,
    pub token: Box<str>,
    pub aes_key: Box<str>,
    pub push_url: Option<Box<str>>,
    pub series: u32,
    /// Issued tickets, oldest first; pruned to twice the validity.
    pub tickets: VecDeque<Ticket>,
    /// Pushes that carried the latest ticket value (for `ticket_repeat`).
    pub ticket_uses: u32,
    /// False after a ticket push was not answered `success` (api_start_push_ticket says "ok" then).
    pub push_healthy: bool,
    pub authorizations: HashMap<u32, authz::Authorization>,
    /// Authorized accounts in authorization order (api_get_authorizer_list pages through this).
    pub order: Vec<u32>,
}

#[derive(Debug)]
pub(crate) struct Account {
    pub appid: Box<str>,
    /// `None`: derived from the account number (bulk-created accounts store no secret).
    pub secret: Option<Box<str>>,
    pub kind: AccountKind,
    pub direct_series: Option<u32>,
    pub stable: Option<Box<direct::Stable>>,
    pub js_tickets: Option<Box<direct::JsTickets>>,
}

/// Files kept for media/get at most (each up to 20 MiB).
const MEDIA_KEPT: usize = 32;
/// WeChat keeps temporary media for 3 days.
const MEDIA_LIFETIME_MS: Millis = 3 * 86_400_000;

/// A temporary media file.
#[derive(Debug)]
pub(crate) struct Media {
    pub account: u32,
    pub content_type: String,
    pub bytes: Vec<u8>,
    pub expires_ms: Millis,
}

/// A pre-auth code waiting for the consent page.
#[derive(Debug)]
pub(crate) struct PreAuth {
    pub component: u32,
    pub expires_ms: Millis,
}

/// An authorization code waiting for `api_query_auth`.
#[derive(Debug)]
pub(crate) struct AuthCode {
    pub component: u32,
    pub account: u32,
    /// The authorization epoch it belongs to; a later (re/un)authorization voids it.
    pub epoch: u32,
    pub expires_ms: Millis,
}

#[derive(Debug)]
pub(crate) struct State {
    pub rules: Rules,
    pub minter: Minter,
    pub components: Vec<Component>,
    pub accounts: Vec<Account>,
    pub appids: HashMap<Box<str>, AppRef>,
    pub series: Vec<Series>,
    pub pre_auth: HashMap<Box<str>, PreAuth>,
    pub auth_codes: HashMap<Box<str>, AuthCode>,
    pub quota: QuotaBook,
    /// Every jsapi / wx_card ticket issued and not yet swept (for `/_sim/validate?ticket=`).
    pub js_ticket_index: HashMap<Box<str>, direct::JsTicket>,
    /// Temporary media by media_id (media/upload, media/get), oldest evicted first.
    pub media: HashMap<Box<str>, Media>,
    pub media_order: VecDeque<Box<str>>,
    /// Inserts since the last sweep of expired codes.
    code_inserts: u32,
}

impl State {
    pub(crate) fn new(rules: Rules) -> Self {
        Self {
            rules,
            minter: Minter::new(),
            components: Vec::new(),
            accounts: Vec::new(),
            appids: HashMap::new(),
            series: Vec::new(),
            pre_auth: HashMap::new(),
            auth_codes: HashMap::new(),
            quota: QuotaBook::default(),
            js_ticket_index: HashMap::new(),
            media: HashMap::new(),
            media_order: VecDeque::new(),
            code_inserts: 0,
        }
    }

    pub(crate) fn app(&self, appid: &str) -> Option<AppRef> {
        self.appids.get(appid).copied()
    }

    pub(crate) fn component_id(&self, appid: &str) -> Option<u32> {
        match self.app(appid) {
            Some(AppRef::Component(c)) => Some(c),
            _ => None,
        }
    }

    pub(crate) fn account_id(&self, appid: &str) -> Option<u32> {
        match self.app(appid) {
            Some(AppRef::Account(a)) => Some(a),
            _ => None,
        }
    }

    pub(crate) fn appid_of(&self, app: AppRef) -> &str {
        match app {
            AppRef::Component(c) => &self.components[c as usize].appid,
            AppRef::Account(a) => &self.accounts[a as usize].appid,
        }
    }

    pub(crate) fn account_secret(&self, id: u32) -> Cow<'_, str> {
        match &self.accounts[id as usize].secret {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(self.minter.secret(id)),
        }
    }

    // ----- creation -------------------------------------------------------------------------

    pub(crate) fn create_component(
        &mut self,
        spec: ComponentSpec,
        now: Millis,
    ) -> Result<u32, ControlError> {
        let appid = spec.component_appid.unwrap_or_else(mint::random_appid);
        check_appid(&appid)?;
        if self.appids.contains_key(appid.as_str()) {
            return Err(ControlError::Conflict(format!(
                "appid {appid} already exists"
            )));
        }
        let aes_key = spec.encoding_aes_key.unwrap_or_else(mint::random_aes_key);
        if !crate::config::valid_aes_key(&aes_key) {
            return Err(ControlError::Invalid(
                "encoding_aes_key must be 43 characters A-Z a-z 0-9".into(),
            ));
        }
        if let Some(url) = &spec.push_url {
            check_push_url(url)?;
        }
        let id = u32::try_from(self.components.len())
            .map_err(|_| ControlError::Conflict("too many components".into()))?;
        let series = self.new_series(TokenKind::Component, AppRef::Component(id), u32::MAX);
        self.components.push(Component {
            appid: appid.clone().into(),
            secret: spec
                .component_appsecret
                .unwrap_or_else(mint::random_secret)
                .into(),
            token: spec
                .token
                .unwrap_or_else(|| mint::random_code("", 32))
                .into(),
            aes_key: aes_key.into(),
            push_url: spec.push_url.map(Into::into),
            series,
            tickets: VecDeque::new(),
            ticket_uses: 0,
            push_healthy: true,
            authorizations: HashMap::new(),
            order: Vec::new(),
        });
        self.appids.insert(appid.into(), AppRef::Component(id));
        // A component has a ticket from the start, as an approved platform does.
        self.issue_ticket(id, now);
        Ok(id)
    }

    pub(crate) fn create_account(&mut self, spec: AccountSpec) -> Result<u32, ControlError> {
        let appid = spec.appid.unwrap_or_else(mint::random_appid);
        check_appid(&appid)?;
        if self.appids.contains_key(appid.as_str()) {
            return Err(ControlError::Conflict(format!(
                "appid {appid} already exists"
            )));
        }
        if spec.appsecret.as_deref() == Some("") {
            return Err(ControlError::Invalid("appsecret must not be empty".into()));
        }
        Ok(self.insert_account(appid, spec.appsecret, spec.kind))
    }

    pub(crate) fn insert_account(
        &mut self,
        appid: String,
        secret: Option<String>,
        kind: AccountKind,
    ) -> u32 {
        // Invariant: fewer than 2^32 accounts (memory would run out long before).
        let id = self.accounts.len() as u32;
        self.accounts.push(Account {
            appid: appid.clone().into(),
            secret: secret.map(Into::into),
            kind,
            direct_series: None,
            stable: None,
            js_tickets: None,
        });
        self.appids.insert(appid.into(), AppRef::Account(id));
        id
    }

    pub(crate) fn component_info(&self, id: u32) -> ComponentInfo {
        let c = &self.components[id as usize];
        let latest = c.tickets.back();
        ComponentInfo {
            component_appid: c.appid.to_string(),
            component_appsecret: c.secret.to_string(),
            token: c.token.to_string(),
            encoding_aes_key: c.aes_key.to_string(),
            push_url: c.push_url.as_deref().map(str::to_string),
            latest_ticket: latest.map(|t| t.value.to_string()),
            latest_ticket_issued_at: latest.map(|t| t.issued_ms.div_euclid(1000)),
            authorizer_count: c.order.len(),
        }
    }

    pub(crate) fn account_info(&self, id: u32) -> AccountInfo {
        let a = &self.accounts[id as usize];
        AccountInfo {
            appid: a.appid.to_string(),
            appsecret: self.account_secret(id).into_owned(),
            kind: a.kind,
            nick_name: nick_name(a),
            user_name: user_name(&a.appid),
        }
    }

    // ----- token series ---------------------------------------------------------------------

    pub(crate) fn new_series(&mut self, kind: TokenKind, owner: AppRef, component: u32) -> u32 {
        // Invariant: fewer than 2^32 series (one or two per account).
        let id = self.series.len() as u32;
        self.series.push(Series {
            kind,
            owner,
            component,
            generation: 0,
            expires_ms: 0,
            retired_below: 0,
            recent: VecDeque::new(),
        });
        id
    }

    /// Issue the next token of a series; the current one retires as `retire` says.
    pub(crate) fn issue(&mut self, sid: u32, now: Millis, retire: Retire) -> Issued {
        let lifetime = self.rules.token_lifetime_ms;
        let s = &mut self.series[sid as usize];
        // Retirement instants are almost always in generation order; an entry stuck behind a
        // longer-lived one is pruned once that one goes.
        while s.recent.front().is_some_and(|&(_, until)| until <= now) {
            s.recent.pop_front();
        }
        if s.generation > 0 && s.generation >= s.retired_below {
            let until = match retire {
                Retire::After(ms) => now.saturating_add(ms).min(s.expires_ms),
                Retire::AtExpiry => s.expires_ms,
            };
            if until > now {
                s.recent.push_back((s.generation, until));
            }
        }
        if s.recent.is_empty() && s.recent.capacity() > 4 {
            s.recent = VecDeque::new();
        }
        s.generation += 1;
        s.expires_ms = now + lifetime;
        let t = TokenRef {
            series: sid,
            generation: s.generation,
            expires_ms: s.expires_ms,
        };
        Issued {
            token: self.minter.mint(t),
            expires_in: lifetime / 1000,
        }
    }

    /// The current token of a series, if one is live (issued, not retired, not expired).
    pub(crate) fn current(&self, sid: u32, now: Millis) -> Option<(TokenRef, Millis)> {
        let s = &self.series[sid as usize];
        (s.generation > 0 && s.generation >= s.retired_below && now < s.expires_ms).then_some((
            TokenRef {
                series: sid,
                generation: s.generation,
                expires_ms: s.expires_ms,
            },
            s.expires_ms,
        ))
    }

    /// Keeps an uploaded file (WeChat keeps temporary media 3 days); returns its media_id. At most
    /// [`MEDIA_KEPT`] files are kept, the oldest dropped first.
    pub(crate) fn store_media(
        &mut self,
        account: u32,
        part: &crate::api::MediaPart,
        now: Millis,
    ) -> String {
        let media_id = crate::mint::random_code("", 64);
        while self.media_order.len() >= MEDIA_KEPT {
            if let Some(old) = self.media_order.pop_front() {
                self.media.remove(&old);
            }
        }
        self.media_order.push_back(media_id.clone().into());
        self.media.insert(
            media_id.clone().into(),
            Media {
                account,
                content_type: part.content_type.clone(),
                bytes: part.bytes.clone(),
                expires_ms: now + MEDIA_LIFETIME_MS,
            },
        );
        media_id
    }

    /// An uploaded file of `account` still kept: its content type and bytes.
    pub(crate) fn media(
        &self,
        account: u32,
        media_id: &str,
        now: Millis,
    ) -> Option<(String, Vec<u8>)> {
        self.media
            .get(media_id)
            .filter(|m| m.account == account && m.expires_ms > now)
            .map(|m| (m.content_type.clone(), m.bytes.clone()))
    }

    /// Retires every access token of an account at once, as a refresh elsewhere would after the
    /// overlap: its authorizer tokens under every component, its own token and its stable token.
    /// Returns how many token series were retired.
    pub(crate) fn retire_account_tokens(&mut self, account: u32) -> usize {
        let mut series: Vec<u32> = self
            .components
            .iter()
            .filter_map(|c| c.authorizations.get(&account).map(|a| a.series))
            .collect();
        let a = &self.accounts[account as usize];
        series.extend(a.direct_series);
        series.extend(a.stable.as_ref().map(|s| s.series));
        for sid in &series {
            self.retire_all(*sid);
        }
        series.len()
    }

    /// Kill every token of a series at once.
    pub(crate) fn retire_all(&mut self, sid: u32) {
        let s = &mut self.series[sid as usize];
        s.retired_below = s.generation + 1;
        s.recent = VecDeque::new();
    }

    /// Judge a presented access token.
    pub(crate) fn check(&self, token: &str, now: Millis) -> TokenCheck {
        let Some(t) = self.minter.parse(token) else {
            return TokenCheck::Unknown;
        };
        let Some(s) = self.series.get(t.series as usize) else {
            return TokenCheck::Unknown;
        };
        if t.generation == 0 || t.generation > s.generation {
            return TokenCheck::Unknown;
        }
        let owner = TokenOwner {
            kind: s.kind,
            owner: s.owner,
            component: (s.component != u32::MAX).then_some(s.component),
            expires_ms: t.expires_ms,
        };
        // Precedence when several apply: retired (40001), then past its own expiry (42001),
        // then superseded beyond its overlap (40001).
        if t.generation < s.retired_below {
            return TokenCheck::Retired(owner);
        }
        if now >= t.expires_ms {
            return TokenCheck::Expired(owner);
        }
        if t.generation < s.generation {
            match s.recent.binary_search_by_key(&t.generation, |&(g, _)| g) {
                Ok(i) if now < s.recent[i].1 => {}
                _ => return TokenCheck::Superseded(owner),
            }
        }
        TokenCheck::Valid(owner)
    }

    pub(crate) fn validation(&self, token: &str, now: Millis) -> Validation {
        let check = self.check(token, now);
        let (reason, owner) = match check {
            TokenCheck::Valid(o) => ("ok", Some(o)),
            TokenCheck::Expired(o) => ("expired", Some(o)),
            TokenCheck::Superseded(o) => ("superseded", Some(o)),
            TokenCheck::Retired(o) => ("retired", Some(o)),
            TokenCheck::Unknown => ("unknown", None),
        };
        let errcode = check.valid().err().map_or(0, |e| e.code);
        Validation {
            valid: errcode == 0,
            reason: reason.into(),
            errcode,
            kind: owner.map(|o| o.kind),
            appid: owner.map(|o| self.appid_of(o.owner).to_string()),
            component_appid: owner
                .and_then(|o| o.component)
                .map(|c| self.components[c as usize].appid.to_string())
                .or_else(|| match owner.map(|o| o.owner) {
                    Some(AppRef::Component(c)) => {
                        Some(self.components[c as usize].appid.to_string())
                    }
                    _ => None,
                }),
            expires_in: owner.map(|o| (o.expires_ms - now).div_euclid(1000)),
            ticket_type: None,
        }
    }

    /// Drop expired pre-auth and authorization codes every few thousand inserts.
    pub(crate) fn note_code_insert(&mut self, now: Millis) {
        self.code_inserts += 1;
        if self.code_inserts >= 4096 {
            self.code_inserts = 0;
            self.pre_auth.retain(|_, p| p.expires_ms > now);
            self.auth_codes.retain(|_, c| c.expires_ms > now);
        }
    }
}

fn check_appid(appid: &str) -> Result<(), ControlError> {
    if appid.is_empty()
        || appid.len() > 64
        || !appid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ControlError::Invalid(format!(
            "appid {appid:?} must be 1-64 characters A-Z a-z 0-9 _ -"
        )));
    }
    Ok(())
}

pub(crate) fn check_push_url(url: &str) -> Result<(), ControlError> {
    match url::Url::parse(url) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(()),
        _ => Err(ControlError::Invalid(format!(
            "push_url {url:?} is not an http(s) URL"
        ))),
    }
}

/// A display name derived from the appid.
pub(crate) fn nick_name(a: &Account) -> String {
    let tail = &a.appid[a.appid.len().saturating_sub(6)..];
    match a.kind {
        AccountKind::OfficialAccount => format!("模拟公众号 {tail}"),
        AccountKind::MiniProgram => format!("模拟小程序 {tail}"),
    }
}

/// An original id (`gh_` + 12 hex) derived from the appid.
pub(crate) fn user_name(appid: &str) -> String {
    let h = appid.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("gh_{:012x}", h & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests;
