//! Component rules: verify tickets (61005/61006), component tokens, pre-auth codes, authorization
//! codes (61009/61010), authorizer tokens and refresh tokens (echo or rotate, 61023), the
//! authorizer list and info, and the authorize / re-authorize / unauthorize transitions.

use std::collections::hash_map::Entry;

use super::{AppRef, AuthCode, Issued, PreAuth, Retire, State, Ticket};
use crate::clock::Millis;
use crate::config::{ComponentTokenPolicy, ReauthorizePolicy, RefreshTokenPolicy, TicketPolicy};
use crate::mint;
use crate::model::{
    AccountKind, AuthorizeOutcome, AuthorizerView, BulkAuthorizer, ControlError, TokenKind,
    UnauthorizeOutcome,
};
use crate::wxerr::{WxErr, wx};

/// One account's authorization of one component.
#[derive(Debug)]
pub(crate) struct Authorization {
    pub series: u32,
    /// The refresh token is derived from (component, account, refresh_gen).
    pub refresh_gen: u32,
    /// Under `rotate`, the previous refresh token works until then.
    pub prev_refresh_until: Millis,
    pub auth_time: i64,
    pub authorized: bool,
    pub exchanged: bool,
    pub epoch: u32,
}

/// What `api_query_auth` returns.
#[derive(Debug)]
pub(crate) struct QueryAuthOk {
    pub authorizer_appid: String,
    pub token: Issued,
    pub refresh_token: String,
    pub func_info: &'static [u32],
}

/// A page of `api_get_authorizer_list`.
#[derive(Debug)]
pub(crate) struct AuthorizerListPage {
    pub total_count: usize,
    /// (appid, refresh token if exchanged, auth_time)
    pub list: Vec<(String, Option<String>, i64)>,
}

/// The permission sets a simulated account grants (func_info ids).
pub(crate) fn func_info(kind: AccountKind) -> &'static [u32] {
    match kind {
        AccountKind::OfficialAccount => &[1, 2, 3, 4, 6, 7, 11, 15, 24],
        AccountKind::MiniProgram => &[17, 18, 19, 25, 30, 31],
    }
}

const MAX_TICKETS_KEPT: usize = 256;

impl State {
    // ----- tickets --------------------------------------------------------------------------

    /// Issue the ticket for a push (the same value again while `ticket_repeat` allows).
    pub(crate) fn issue_ticket(&mut self, cid: u32, now: Millis) -> String {
        let repeat = self.rules.ticket_repeat;
        let keep_ms = self.rules.ticket_validity_ms.saturating_mul(2);
        let c = &mut self.components[cid as usize];
        if let Some(latest) = c.tickets.back()
            && c.ticket_uses < repeat
            && now - latest.issued_ms < self.rules.ticket_validity_ms
        {
            c.ticket_uses += 1;
            return latest.value.to_string();
        }
        let value = mint::random_code("ticket@@@", 86);
        c.tickets.push_back(Ticket {
            value: value.clone().into(),
            issued_ms: now,
            acked: false,
        });
        c.ticket_uses = 1;
        while c.tickets.len() > MAX_TICKETS_KEPT
            || c.tickets
                .front()
                .is_some_and(|t| now - t.issued_ms > keep_ms)
        {
            c.tickets.pop_front();
        }
        value
    }

    /// `latest`: the newest ticket whose push was acknowledged, and any ticket issued after it
    /// (their pushes may still be in flight, or failed: docs say to keep using the last ticket
    /// received). `any_valid`: any ticket still remembered. Either way, 61005 past validity.
    fn check_ticket(&self, cid: u32, ticket: &str, now: Millis) -> Result<(), WxErr> {
        let c = &self.components[cid as usize];
        let validity = self.rules.ticket_validity_ms;
        let Some(pos) = c.tickets.iter().rposition(|t| &*t.value == ticket) else {
            return Err(wx(61006));
        };
        if self.rules.ticket_policy == TicketPolicy::Latest {
            let newest_acked = c.tickets.iter().rposition(|t| t.acked).unwrap_or(0);
            if pos < newest_acked {
                return Err(wx(61006));
            }
        }
        if now - c.tickets[pos].issued_ms >= validity {
            return Err(wx(61005));
        }
        Ok(())
    }

    /// A ticket push was answered `success` (or had nowhere to go): older tickets are now stale.
    pub(crate) fn ack_ticket(&mut self, cid: u32, ticket: &str) {
        let c = &mut self.components[cid as usize];
        if let Some(t) = c.tickets.iter_mut().rev().find(|t| &*t.value == ticket) {
            t.acked = true;
        }
    }

    /// The component an appid + secret pair names (41018/41004/40013/61011/40125).
    pub(crate) fn component_credentials(&self, appid: &str, secret: &str) -> Result<u32, WxErr> {
        if appid.is_empty() {
            return Err(wx(41018));
        }
        if secret.is_empty() {
            return Err(wx(41004));
        }
        let cid = match self.app(appid) {
            None => return Err(wx(40013)),
            Some(AppRef::Account(_)) => return Err(wx(61011)),
            Some(AppRef::Component(c)) => c,
        };
        if *self.components[cid as usize].secret != *secret {
            return Err(wx(40125));
        }
        Ok(cid)
    }

    // ----- component token ------------------------------------------------------------------

    pub(crate) fn component_token(
        &mut self,
        cid: u32,
        ticket: &str,
        now: Millis,
    ) -> Result<Issued, WxErr> {
        self.check_ticket(cid, ticket, now)?;
        self.charge(crate::api::Api::ComponentToken, AppRef::Component(cid), now)?;
        let sid = self.components[cid as usize].series;
        if self.rules.component_token_policy == ComponentTokenPolicy::Reuse
            && let Some((t, exp)) = self.current(sid, now)
            && exp - now > self.rules.overlap_ms
        {
            return Ok(Issued {
                token: self.minter.mint(t),
                expires_in: (exp - now).div_euclid(1000),
            });
        }
        Ok(self.issue(sid, now, Retire::After(self.rules.overlap_ms)))
    }

    /// The component a valid component token belongs to (61014 for another kind of token).
    pub(crate) fn component_of_token(&self, token: &str, now: Millis) -> Result<u32, WxErr> {
        let owner = self.check(token, now).valid()?;
        match (owner.kind, owner.owner) {
            (TokenKind::Component, AppRef::Component(c)) => Ok(c),
            _ => Err(wx(61014)),
        }
    }

    // ----- pre-auth and authorization codes -------------------------------------------------

    pub(crate) fn create_pre_auth_code(&mut self, cid: u32, now: Millis) -> (String, i64) {
        let code = mint::random_code("preauthcode@@@", 62);
        let ms = self.rules.pre_auth_ms;
        self.pre_auth.insert(
            code.clone().into(),
            PreAuth {
                component: cid,
                expires_ms: now + ms,
            },
        );
        self.note_code_insert(now);
        (code, ms / 1000)
    }

    /// Check a pre-auth code for the consent page; `consume` makes it single-use.
    pub(crate) fn pre_auth_code(
        &mut self,
        cid: u32,
        code: &str,
        now: Millis,
        consume: bool,
    ) -> Result<(), ControlError> {
        let ok = match self.pre_auth.get(code) {
            None => {
                return Err(ControlError::Invalid(
                    "pre_auth_code is invalid or was already used".into(),
                ));
            }
            Some(p) if p.component != cid => {
                return Err(ControlError::Invalid(
                    "pre_auth_code belongs to another component".into(),
                ));
            }
            Some(p) => p.expires_ms > now,
        };
        if !ok {
            self.pre_auth.remove(code);
            return Err(ControlError::Invalid("pre_auth_code has expired".into()));
        }
        if consume {
            self.pre_auth.remove(code);
        }
        Ok(())
    }

    pub(crate) fn query_auth(
        &mut self,
        cid: u32,
        code: &str,
        now: Millis,
    ) -> Result<QueryAuthOk, WxErr> {
        let Some(ac) = self.auth_codes.get(code) else {
            return Err(wx(61009));
        };
        if ac.component != cid {
            return Err(wx(61009));
        }
        if now >= ac.expires_ms {
            self.auth_codes.remove(code);
            return Err(wx(61010));
        }
        let (account, epoch) = (ac.account, ac.epoch);
        let c = &self.components[cid as usize];
        let Some(a) = c.authorizations.get(&account) else {
            return Err(wx(61009));
        };
        if a.epoch != epoch || !a.authorized {
            return Err(wx(61009));
        }
        self.charge(crate::api::Api::QueryAuth, AppRef::Component(cid), now)?;
        if self.rules.auth_code_single_use {
            self.auth_codes.remove(code);
        }
        let a = self.components[cid as usize]
            .authorizations
            .get_mut(&account)
            .ok_or_else(|| wx(61009))?;
        a.exchanged = true;
        let (sid, generation) = (a.series, a.refresh_gen);
        let token = self.issue(sid, now, Retire::After(self.rules.overlap_ms));
        let kind = self.accounts[account as usize].kind;
        Ok(QueryAuthOk {
            authorizer_appid: self.accounts[account as usize].appid.to_string(),
            token,
            refresh_token: self.minter.refresh_token(cid, account, generation),
            func_info: func_info(kind),
        })
    }

    // ----- authorizer tokens ----------------------------------------------------------------

    /// `api_authorizer_token`: (token, refresh token to store).
    pub(crate) fn authorizer_token(
        &mut self,
        cid: u32,
        authorizer_appid: &str,
        refresh_token: &str,
        now: Millis,
    ) -> Result<(Issued, String), WxErr> {
        if authorizer_appid.is_empty() {
            return Err(wx(41002));
        }
        let account = match self.app(authorizer_appid) {
            None => return Err(wx(40013)),
            Some(AppRef::Component(_)) => return Err(wx(61003)),
            Some(AppRef::Account(a)) => a,
        };
        if refresh_token.is_empty() {
            return Err(wx(61023));
        }
        let Some(a) = self.components[cid as usize].authorizations.get(&account) else {
            return Err(wx(61003));
        };
        if !a.authorized {
            return Err(wx(61023));
        }
        let current = self.minter.refresh_token(cid, account, a.refresh_gen);
        let matches_prev = a.refresh_gen > 1
            && now < a.prev_refresh_until
            && self.minter.refresh_token(cid, account, a.refresh_gen - 1) == refresh_token;
        if current != refresh_token && !matches_prev {
            return Err(wx(61023));
        }
        self.charge(
            crate::api::Api::AuthorizerToken,
            AppRef::Account(account),
            now,
        )?;
        let rotate = self.rules.refresh_policy == RefreshTokenPolicy::Rotate;
        let overlap = self.rules.overlap_ms;
        let a = self.components[cid as usize]
            .authorizations
            .get_mut(&account)
            .ok_or_else(|| wx(61003))?;
        let out_refresh = if rotate {
            a.refresh_gen += 1;
            a.prev_refresh_until = now + overlap;
            self.minter.refresh_token(cid, account, a.refresh_gen)
        } else {
            current
        };
        let sid = a.series;
        let token = self.issue(sid, now, Retire::After(overlap));
        Ok((token, out_refresh))
    }

    pub(crate) fn authorizer_list(
        &self,
        cid: u32,
        offset: usize,
        count: usize,
    ) -> AuthorizerListPage {
        let c = &self.components[cid as usize];
        let list = c
            .order
            .iter()
            .skip(offset)
            .take(count)
            .filter_map(|acc| {
                let a = c.authorizations.get(acc)?;
                let refresh = a
                    .exchanged
                    .then(|| self.minter.refresh_token(cid, *acc, a.refresh_gen));
                Some((
                    self.accounts[*acc as usize].appid.to_string(),
                    refresh,
                    a.auth_time,
                ))
            })
            .collect();
        AuthorizerListPage {
            total_count: c.order.len(),
            list,
        }
    }

    /// The authorized account behind `authorizer_appid` (40013 unknown, 61003 not authorized).
    pub(crate) fn authorized_account(
        &self,
        cid: u32,
        authorizer_appid: &str,
    ) -> Result<u32, WxErr> {
        if authorizer_appid.is_empty() {
            return Err(wx(41002));
        }
        let account = match self.app(authorizer_appid) {
            None => return Err(wx(40013)),
            Some(AppRef::Component(_)) => return Err(wx(61003)),
            Some(AppRef::Account(a)) => a,
        };
        match self.components[cid as usize].authorizations.get(&account) {
            Some(a) if a.authorized => Ok(account),
            _ => Err(wx(61003)),
        }
    }

    // ----- authorize / unauthorize (consent page and control API) ---------------------------

    pub(crate) fn authorize(
        &mut self,
        account: u32,
        cid: u32,
        pre_auth_code: Option<String>,
        now: Millis,
    ) -> AuthorizeOutcome {
        let fresh_series = match self.components[cid as usize]
            .authorizations
            .contains_key(&account)
        {
            true => None,
            false => Some(self.new_series(TokenKind::Authorizer, AppRef::Account(account), cid)),
        };
        let reauth_new = self.rules.reauthorize == ReauthorizePolicy::New;
        let c = &mut self.components[cid as usize];
        let (info_type, retire) = match c.authorizations.entry(account) {
            Entry::Vacant(v) => {
                v.insert(Authorization {
                    series: fresh_series.unwrap_or(u32::MAX),
                    refresh_gen: 1,
                    prev_refresh_until: 0,
                    auth_time: now.div_euclid(1000),
                    authorized: true,
                    exchanged: false,
                    epoch: 1,
                });
                c.order.push(account);
                ("authorized", None)
            }
            Entry::Occupied(mut o) => {
                let a = o.get_mut();
                let was_authorized = a.authorized;
                if !was_authorized || reauth_new {
                    a.refresh_gen += 1;
                    a.prev_refresh_until = 0;
                    a.exchanged = false;
                }
                a.epoch += 1;
                a.authorized = true;
                a.auth_time = now.div_euclid(1000);
                if !was_authorized {
                    c.order.push(account);
                }
                (
                    if was_authorized {
                        "updateauthorized"
                    } else {
                        "authorized"
                    },
                    Some(a.series),
                )
            }
        };
        if let Some(sid) = retire {
            // Re-authorizing retires the account's access tokens at once (40001).
            self.retire_all(sid);
        }
        let epoch = self.components[cid as usize]
            .authorizations
            .get(&account)
            .map_or(0, |a| a.epoch);
        let code = mint::random_code("queryauthcode@@@", 86);
        let ms = self.rules.auth_code_ms;
        self.auth_codes.insert(
            code.clone().into(),
            AuthCode {
                component: cid,
                account,
                epoch,
                expires_ms: now + ms,
            },
        );
        self.note_code_insert(now);
        AuthorizeOutcome {
            authorizer_appid: self.accounts[account as usize].appid.to_string(),
            component_appid: self.components[cid as usize].appid.to_string(),
            authorization_code: code,
            expires_in: ms / 1000,
            authorization_code_expired_time: (now + ms).div_euclid(1000),
            info_type: info_type.into(),
            pre_auth_code: pre_auth_code.unwrap_or_else(|| mint::random_code("preauthcode@@@", 62)),
        }
    }

    pub(crate) fn unauthorize(
        &mut self,
        account: u32,
        cid: u32,
    ) -> Result<UnauthorizeOutcome, ControlError> {
        let c = &mut self.components[cid as usize];
        let Some(a) = c.authorizations.get_mut(&account).filter(|a| a.authorized) else {
            return Err(ControlError::Conflict(format!(
                "{} is not authorized to {}",
                self.accounts[account as usize].appid, c.appid
            )));
        };
        a.authorized = false;
        a.epoch += 1;
        a.prev_refresh_until = 0;
        let sid = a.series;
        c.order.retain(|x| *x != account);
        self.retire_all(sid);
        Ok(UnauthorizeOutcome {
            authorizer_appid: self.accounts[account as usize].appid.to_string(),
            component_appid: self.components[cid as usize].appid.to_string(),
            info_type: "unauthorized".into(),
        })
    }

    /// Create `count` accounts and authorize them (codes already exchanged, no pushes).
    pub(crate) fn bulk_authorize(
        &mut self,
        cid: u32,
        count: usize,
        kind: AccountKind,
        now: Millis,
    ) -> Vec<BulkAuthorizer> {
        let mut out = Vec::with_capacity(count);
        self.accounts.reserve(count);
        self.series.reserve(count);
        self.appids.reserve(count);
        self.components[cid as usize].authorizations.reserve(count);
        self.components[cid as usize].order.reserve(count);
        while out.len() < count {
            let appid = mint::random_appid();
            if self.appids.contains_key(appid.as_str()) {
                continue;
            }
            let account = self.insert_account(appid.clone(), None, kind);
            let series = self.new_series(TokenKind::Authorizer, AppRef::Account(account), cid);
            let c = &mut self.components[cid as usize];
            c.authorizations.insert(
                account,
                Authorization {
                    series,
                    refresh_gen: 1,
                    prev_refresh_until: 0,
                    auth_time: now.div_euclid(1000),
                    authorized: true,
                    exchanged: true,
                    epoch: 1,
                },
            );
            c.order.push(account);
            out.push(BulkAuthorizer {
                authorizer_appid: appid,
                authorizer_refresh_token: self.minter.refresh_token(cid, account, 1),
                kind,
            });
        }
        out
    }

    pub(crate) fn authorizer_view(&self, cid: u32, account: u32) -> Option<AuthorizerView> {
        let c = &self.components[cid as usize];
        let a = c.authorizations.get(&account)?;
        let acc = &self.accounts[account as usize];
        Some(AuthorizerView {
            component_appid: c.appid.to_string(),
            authorizer_appid: acc.appid.to_string(),
            kind: acc.kind,
            status: if a.authorized {
                "authorized"
            } else {
                "unauthorized"
            }
            .into(),
            refresh_token: self.minter.refresh_token(cid, account, a.refresh_gen),
            refresh_token_exchanged: a.exchanged,
            auth_time: a.auth_time,
            func_info: func_info(acc.kind).to_vec(),
            access_token_generation: self.series[a.series as usize].generation,
        })
    }
}
