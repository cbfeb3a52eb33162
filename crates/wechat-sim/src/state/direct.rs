//! Directly managed accounts: `cgi-bin/token` (every call a new token, the previous one retired
//! after the overlap), `cgi-bin/stable_token` (the same token until its last minutes, a 20-per-day
//! force budget at least 30 s apart, isolated from cgi-bin/token), business-token checks for
//! `getcallbackip` and `getticket`, and jsapi/wx_card tickets.

use super::{AppRef, Issued, Retire, State, TokenOwner};
use crate::clock::{Millis, calendar};
use crate::config::JsTicketPolicy;
use crate::model::{TokenKind, Validation};
use crate::wxerr::{WxErr, wx};

/// stable_token state of one account.
#[derive(Debug)]
pub(crate) struct Stable {
    pub series: u32,
    pub force_day: i64,
    pub forces: u32,
    pub last_force_ms: Option<Millis>,
}

/// jsapi / wx_card tickets of one account: the current value of each type.
#[derive(Debug, Default)]
pub(crate) struct JsTickets {
    pub jsapi: Option<Box<str>>,
    pub wx_card: Option<Box<str>>,
}

/// One ticket issued.
#[derive(Debug)]
pub(crate) struct JsTicket {
    pub account: u32,
    pub ty: TicketType,
    pub expires_ms: Millis,
    /// When a newer ticket retired it (`new_retiring_previous`).
    pub retired_ms: Option<Millis>,
}

/// Issued tickets are swept this long after they expire.
const TICKET_SWEEP_AFTER_MS: Millis = 24 * 3600 * 1000;

/// `getticket`'s `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TicketType {
    Jsapi,
    WxCard,
}

impl State {
    /// The account an appid + secret pair names (41002/41004/40013/61024/40125).
    pub(crate) fn account_credentials(&self, appid: &str, secret: &str) -> Result<u32, WxErr> {
        if appid.is_empty() {
            return Err(wx(41002));
        }
        if secret.is_empty() {
            return Err(wx(41004));
        }
        let id = match self.app(appid) {
            None => return Err(wx(40013)),
            Some(AppRef::Component(_)) => return Err(wx(61024)),
            Some(AppRef::Account(a)) => a,
        };
        if *self.account_secret(id) != *secret {
            return Err(wx(40125));
        }
        Ok(id)
    }

    /// `cgi-bin/token`: always a new token; the previous one works for the overlap.
    pub(crate) fn direct_token(&mut self, id: u32, now: Millis) -> Result<Issued, WxErr> {
        self.charge(crate::api::Api::Token, AppRef::Account(id), now)?;
        let sid = match self.accounts[id as usize].direct_series {
            Some(s) => s,
            None => {
                let s = self.new_series(TokenKind::Direct, AppRef::Account(id), u32::MAX);
                self.accounts[id as usize].direct_series = Some(s);
                s
            }
        };
        Ok(self.issue(sid, now, Retire::After(self.rules.overlap_ms)))
    }

    /// `cgi-bin/stable_token`.
    pub(crate) fn stable_token(
        &mut self,
        id: u32,
        force: bool,
        now: Millis,
    ) -> Result<Issued, WxErr> {
        self.charge(crate::api::Api::StableToken, AppRef::Account(id), now)?;
        if self.accounts[id as usize].stable.is_none() {
            let series = self.new_series(TokenKind::Stable, AppRef::Account(id), u32::MAX);
            self.accounts[id as usize].stable = Some(Box::new(Stable {
                series,
                force_day: 0,
                forces: 0,
                last_force_ms: None,
            }));
        }
        let window = self.rules.stable_window_ms;
        let gap = self.rules.stable_force_gap_ms;
        let per_day = self.rules.stable_force_per_day;
        let force_overlap = self.rules.stable_force_overlap_ms;
        let Some(st) = self.accounts[id as usize].stable.as_deref() else {
            return Err(wx(-1));
        };
        let sid = st.series;
        let current = self.current(sid, now);
        let reuse = |this: &Self, (t, exp): (crate::mint::TokenRef, Millis)| Issued {
            token: this.minter.mint(t),
            expires_in: (exp - now).div_euclid(1000),
        };
        if force {
            // Closer than the minimum gap to the last forced refresh: "does not refresh".
            if let (Some(last), Some(cur)) = (st.last_force_ms, current)
                && now - last < gap
            {
                return Ok(reuse(self, cur));
            }
            let today = calendar::day(now);
            let forces_today = if st.force_day == today { st.forces } else { 0 };
            if forces_today >= per_day {
                return Err(wx(45009));
            }
            if let Some(st) = self.accounts[id as usize].stable.as_deref_mut() {
                st.force_day = today;
                st.forces = forces_today + 1;
                st.last_force_ms = Some(now);
            }
            return Ok(self.issue(sid, now, Retire::After(force_overlap)));
        }
        match current {
            Some(cur) if cur.1 - now > window => Ok(reuse(self, cur)),
            // In the last minutes (or none yet): a new token; the old one lives to its expiry.
            _ => Ok(self.issue(sid, now, Retire::AtExpiry)),
        }
    }

    /// The owner of a valid business token (authorizer, cgi-bin/token or stable token);
    /// a component token gets 61015.
    pub(crate) fn business_owner(&self, token: &str, now: Millis) -> Result<TokenOwner, WxErr> {
        let owner = self.check(token, now).valid()?;
        if owner.kind == TokenKind::Component {
            return Err(wx(61015));
        }
        Ok(owner)
    }

    /// `getticket`: per `js_ticket_policy`, the same ticket while it is valid or a new one on
    /// every call (the previous retired after the overlap, or kept); `expires_in` is always the
    /// full lifetime.
    pub(crate) fn js_ticket(
        &mut self,
        id: u32,
        ty: TicketType,
        now: Millis,
    ) -> Result<(String, i64), WxErr> {
        self.charge(crate::api::Api::GetTicket, AppRef::Account(id), now)?;
        let lifetime = self.rules.token_lifetime_ms;
        let policy = self.rules.js_ticket_policy;
        let overlap = self.rules.overlap_ms;
        let tickets = self.accounts[id as usize]
            .js_tickets
            .get_or_insert_with(Default::default);
        let slot = match ty {
            TicketType::Jsapi => &mut tickets.jsapi,
            TicketType::WxCard => &mut tickets.wx_card,
        };
        let current = slot.clone();
        if policy == JsTicketPolicy::SameWhileValid
            && let Some(value) = &current
            && self
                .js_ticket_index
                .get(value)
                .is_some_and(|t| t.expires_ms > now)
        {
            return Ok((value.to_string(), lifetime / 1000));
        }
        let value: Box<str> = crate::mint::random_code("", 86).into();
        *slot = Some(value.clone());
        if policy == JsTicketPolicy::NewRetiringPrevious
            && let Some(previous) = current.and_then(|v| self.js_ticket_index.get_mut(&v))
        {
            let at = now + overlap;
            previous.retired_ms = Some(previous.retired_ms.map_or(at, |r| r.min(at)));
        }
        if self.js_ticket_index.len() % 4096 == 4095 {
            self.js_ticket_index
                .retain(|_, t| t.expires_ms + TICKET_SWEEP_AFTER_MS > now);
        }
        self.js_ticket_index.insert(
            value.clone(),
            JsTicket {
                account: id,
                ty,
                expires_ms: now + lifetime,
                retired_ms: None,
            },
        );
        Ok((value.to_string(), lifetime / 1000))
    }

    /// Whether a jsapi / wx_card ticket works right now, and why not.
    pub(crate) fn ticket_validation(&self, ticket: &str, now: Millis) -> Validation {
        let found = self.js_ticket_index.get(ticket);
        let (reason, errcode) = match found {
            None => ("unknown", 40097),
            Some(t) if t.expires_ms <= now => ("expired", 42001),
            Some(t) if t.retired_ms.is_some_and(|r| r <= now) => ("superseded", 40001),
            Some(_) => ("ok", 0),
        };
        Validation {
            valid: errcode == 0,
            reason: reason.into(),
            errcode,
            kind: None,
            appid: found.map(|t| self.accounts[t.account as usize].appid.to_string()),
            component_appid: None,
            expires_in: found.map(|t| (t.expires_ms - now).div_euclid(1000)),
            ticket_type: found.map(|t| {
                match t.ty {
                    TicketType::Jsapi => "jsapi",
                    TicketType::WxCard => "wx_card",
                }
                .to_owned()
            }),
        }
    }
}
