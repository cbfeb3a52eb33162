//! One function per WeChat endpoint: parse the call, apply the rules in `state` (under its lock),
//! and serialize WeChat's success JSON. Check order on component APIs: method (43002), token
//! present (41001), body (44002/47001), token valid (40014/40001/42001/61014), component_appid
//! present (41018) and matching the token (40013), then the endpoint's own rules and the quota.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Api, Call, Effect, Handled, field};
use crate::model::AccountKind;
use crate::sim::Sim;
use crate::state::{AppRef, State};
use crate::wxerr::{WxErr, wx};

/// The `ip_list` of getcallbackip (WeChat's published callback ranges, abridged).
const CALLBACK_IPS: &[&str] = &[
    "101.226.62.77",
    "101.226.62.78",
    "101.226.62.79",
    "101.226.62.80",
    "101.226.62.81",
];

pub(crate) fn handle(api: Api, sim: &Sim, call: &Call<'_>) -> Handled {
    if !api.is_get() && call.method != axum::http::Method::POST {
        return Handled {
            appid: None,
            result: Err(wx(43002)),
            effect: None,
            content_type: None,
        };
    }
    let now = sim.clock.now_ms();
    let mut appid = None;
    let mut effect = None;
    let mut content_type = None;
    let result = {
        let mut st = sim.state.lock();
        let mut cx = Cx {
            st: &mut st,
            now,
            appid: &mut appid,
            effect: &mut effect,
        };
        match api {
            Api::StartPushTicket => cx.start_push_ticket(call),
            Api::ComponentToken => cx.component_token(call),
            Api::CreatePreauthcode => cx.create_preauthcode(call),
            Api::QueryAuth => cx.query_auth(call),
            Api::AuthorizerToken => cx.authorizer_token(call),
            Api::GetAuthorizerList => cx.authorizer_list(call),
            Api::GetAuthorizerInfo => cx.authorizer_info(call),
            Api::Token => cx.token(call),
            Api::StableToken => cx.stable_token(call),
            Api::GetTicket => cx.getticket(call),
            Api::ClearQuota => cx.clear_quota(call),
            Api::ClearQuotaV2 => cx.clear_quota_v2(call),
            Api::ComponentClearQuotaV2 => cx.component_clear_quota_v2(call),
            Api::ComponentClearQuota => cx.component_clear_quota(call),
            Api::QuotaGet => cx.quota_get(call),
            Api::GetCallbackIp => cx.getcallbackip(call),
            Api::CustomSend => cx.custom_send(call),
            Api::MediaUpload => cx.media_upload(call),
            Api::MediaGet => cx.media_get(call).map(|(kind, bytes)| {
                content_type = Some(kind);
                bytes
            }),
        }
    };
    Handled {
        appid,
        result,
        effect,
        content_type,
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, WxErr> {
    serde_json::to_vec(v).map_err(|_| wx(-1))
}

fn ok_json(errmsg: &str) -> Result<Vec<u8>, WxErr> {
    to_json(&serde_json::json!({ "errcode": 0, "errmsg": errmsg }))
}

#[derive(Serialize)]
struct ComponentTokenOut<'a> {
    component_access_token: &'a str,
    expires_in: i64,
}

#[derive(Serialize)]
struct PreAuthOut<'a> {
    pre_auth_code: &'a str,
    expires_in: i64,
}

#[derive(Serialize)]
struct FuncInfoOut {
    funcscope_category: IdOut,
}

#[derive(Serialize)]
struct IdOut {
    id: u32,
}

fn func_info_json(ids: &[u32]) -> Vec<FuncInfoOut> {
    ids.iter()
        .map(|&id| FuncInfoOut {
            funcscope_category: IdOut { id },
        })
        .collect()
}

#[derive(Serialize)]
struct AuthorizationInfoOut<'a> {
    authorizer_appid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    authorizer_access_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authorizer_refresh_token: Option<&'a str>,
    func_info: Vec<FuncInfoOut>,
}

#[derive(Serialize)]
struct AuthorizerTokenOut<'a> {
    authorizer_access_token: &'a str,
    expires_in: i64,
    authorizer_refresh_token: &'a str,
}

#[derive(Serialize)]
struct ListItemOut<'a> {
    authorizer_appid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
    auth_time: i64,
}

#[derive(Serialize)]
struct AccessTokenOut<'a> {
    access_token: &'a str,
    expires_in: i64,
}

/// Per-call context: the locked state, the clock reading, and where to note the appid and
/// follow-up work.
struct Cx<'s, 'o> {
    st: &'s mut State,
    now: i64,
    appid: &'o mut Option<String>,
    effect: &'o mut Option<Effect>,
}

impl Cx<'_, '_> {
    fn note(&mut self, appid: &str) {
        if !appid.is_empty() {
            *self.appid = Some(appid.to_string());
        }
    }

    /// The component token in the URL (41001 when absent).
    fn component_token_param(&self, call: &Call<'_>) -> Result<String, WxErr> {
        let t = call.query("component_access_token");
        if !t.is_empty() {
            return Ok(t.into_owned());
        }
        if self.st.rules.access_token_alias {
            let t = call.query("access_token");
            if !t.is_empty() {
                return Ok(t.into_owned());
            }
        }
        Err(wx(41001))
    }

    /// Token, body, token validity, component_appid: the common prologue of component APIs.
    fn component_call(&mut self, call: &Call<'_>) -> Result<(u32, Map<String, Value>), WxErr> {
        let token = self.component_token_param(call)?;
        let body = call.json()?;
        let checked = self.st.component_of_token(&token, self.now);
        let appid = field(&body, "component_appid");
        self.note(&appid);
        let cid = checked?;
        if appid.is_empty() {
            return Err(wx(41018));
        }
        if *self.st.components[cid as usize].appid != *appid {
            return Err(wx(40013));
        }
        Ok((cid, body))
    }

    /// An access token in the URL (41001 when absent).
    fn access_token_param<'c>(
        &self,
        call: &'c Call<'_>,
    ) -> Result<std::borrow::Cow<'c, str>, WxErr> {
        let t = call.query("access_token");
        if t.is_empty() { Err(wx(41001)) } else { Ok(t) }
    }

    // ----- component credentials ------------------------------------------------------------

    fn start_push_ticket(&mut self, call: &Call<'_>) -> Result<Vec<u8>, WxErr> {
        let body = call.json()?;
        let appid = field(&body, "component_appid");
        self.note(&appid);
        let mut secret = field(&body, "component_secret");
        if secret.is_empty() {
            secret = field(&body, "component_appsecret");
        }
        let cid = self.st.component_credentials(&appid, &secret)?;
        self.st
            .charge(Api::StartPushTicket, AppRef::Component(cid), self.now)?;
        let c = &mut self.st.components[cid as usize];
        if c.push_healthy {
            return ok_json("in a normal state");
        }
        c.push_healthy = true;
        let ticket = self.st.issue_ticket(cid, self.now);
        *self.effect = Some(Effect::PushTicket {
            component: cid,
            ticket,
        });
        ok_json("ok")
    }

    fn component_token(&mut self, call: &Call<'_>) -> Result<Vec<u8>, WxErr> {
        let body = call.json()?;
        let appid = field(&body, "component_appid");
        self.note(&appid);
        let cid = self
            .st
            .component_credentials(&appid, &field(&body, "component_appsecret"))?;
        let ticket = field(&body, "component_verify_ticket");
        let issued = self.st.component_token(cid, &ticket, self.now)?;
        to_json(&ComponentTokenOut {
            component_access_token: &issued.token,
            expires_in: issued.expires_in,
        })
    }

    // ----- authorization flow ---------------------------------------------------------------

    fn create_preauthcode(&mut self, call: &Call<'_>) -> Result<Vec<u8>, WxErr> {
        let (cid, _) = self.component_call(call)?;
        self.st
            .charge(Api::CreatePreauthcode, AppRef::Component(cid), self.now)?;
        let (code, expires_in) = self.st.create_pre_auth_code(cid, self.now);
        to_json(&PreAuthOut {
            pre_auth_code: &code,
            expires_in,
        })
    }

    fn query_auth(&mut self, call: &Call<'_>) -> Result<Vec<u8>, WxErr> {
        let (cid, body) = self.component_call(call)?;
        let code = field(&body, "authorization_code");
        if code.is_empty() {
            return Err(wx(61009));
        }
        let ok = self.st.query_auth(cid, &code, self.now)?;
        to_json(&serde_json::json!({
            "authorization_info": AuthorizationInfoOut {
                authorizer_appid: &ok.authorizer_appid,
                authorizer_access_token: Some(&ok.token.token),
                expires_in: Some(ok.token.expires_in),
                authorizer_refresh_token: Some(&ok.refresh_token),
                func_info: func_info_json(ok.func_info),
            }
        }))
    }

    fn authorizer_token(&mut self, call: &Call<'_>) -> Result<Vec<u8>, WxErr> {
        let (cid, body) = self.component_call(call)?;
        let authorizer = field(&body, "authorizer_appid");
        self.note(&authorizer);
        let refresh = field(&body, "authorizer_refresh_token");
        let (issued, refresh_out) =
            self.st
                .authorizer_token(cid, &authorizer, &refresh, self.now)?;
        to_json(&AuthorizerTokenOut {
            authorizer_access_token: &issued.token,
            expires_in: issued.expires_in,
            authorizer_refresh_token: &refresh_out,
        })
    }

    fn authorizer_list(&mut self, call: &Call<'_>) -> Result<Vec<u8>, WxErr> {
        let (cid, body) = self.component_call(call)?;
        let number = |key: &str, default: i64| -> Result<i64, WxErr> {
            let text = field(&body, key);
            if text.is_empty() {
                return Ok(default);
            }
            text.trim().parse::<i64>().map_err(|_| wx(40097))
        };
        let offset = number("offset", 0)?;
        let count = number("count", 500)?;
        if offset < 0 || !(1..=500).contains(&count) {
            return Err(wx(40097));
        }
        self.st
            .charge(Api::GetAuthorizerList, AppRef::Component(cid), self.now)?;
        let page = self
            .st
            .authorizer_list(cid, offset as usize, count as usize);
        let list: Vec<ListItemOut<'_>> = page
            .list
            .iter()
            .map(|(a, r, t)| ListItemOut {
                authorizer_appid: a,
                refresh_token: r.as_deref(),
                auth_time: *t,
            })
            .collect();
        to_json(&serde_json::json!({ "total_count": page.total_count, "list": list }))
    }

    fn authorizer_info(&mut self, call: &Call<'_>) -> Result<Vec<u8>, WxErr> {
        let (cid, body) = self.component_call(call)?;
        let authorizer = field(&body, "authorizer_appid");
        self.note(&authorizer);
        let account = self.st.authorized_account(cid, &authorizer)?;
        self.st
            .charge(Api::GetAuthorizerInfo, AppRef::Component(cid), self.now)?;
        let view = self
            .st
            .authorizer_view(cid, account)
            .ok_or_else(|| wx(61003))?;
        let acc = &self.st.accounts[account as usize];
        let mut info = serde_json::json!({
            "nick_name": crate::state::nick_name(acc),
            "head_img": format!("http://wx.qlogo.cn/mmopen/sim/{}/0", acc.appid),
            "service_type_info": { "id": if acc.kind == AccountKind::MiniProgram { 0 } else { 2 } },
            "verify_type_info": { "id": 0 },
            "user_name": crate::state::user_name(&acc.appid),
            "alias": "",
            "qrcode_url": format!("http://mmbiz.qpic.cn/mmbiz_jpg/sim/{}/0", acc.appid),
            "business_info": { "open_pay": 0, "open_shake": 0, "open_scan": 0, "open_card": 0, "open_store": 0 },
            "idc": 1,
            "principal_name": "模拟主体有限公司",
            "signature": "wechat-sim account",
            "register_type": 0,
            "account_status": 1,
            "basic_config": { "is_phone_configured": true, "is_email_configured": true },
        });
        if acc.kind == AccountKind::MiniProgram {
            info["MiniProgramInfo"] = serde_json::json!({
                "network": { "RequestDomain": [], "WsRequestDomain": [], "UploadDomain": [], "DownloadDomain": [] },
                "categories": [],
                "visit_status": 0,
            });
        }
        let refresh = view
            .refresh_token_exchanged
            .then_some(view.refresh_token.as_str());
        to_json(&serde_json::json!({
            "authorizer_info": info,
            "authorization_info": AuthorizationInfoOut {
                authorizer_appid: &view.authorizer_appid,
                authorizer_access_token: None,
                expires_in: None,
                authorizer_refresh_token: refresh,
                func_info: func_info_json(&view.func_info),
            }
        }))
    }

    // ----- direct accounts ------------------------------------------------------------------

    fn token(&mut self, call: &Call<'_>) -> Result<Vec<u8>, WxErr> {
        let appid = call.query("appid");
        self.note(&appid);
        if call.query("grant_type") != "client_credential" {
            return Err(wx(40002));
        }
        let id = self.st.account_credentials(&appid, &call.query("secret"))?;
        let issued = self.st.direct_token(id, self.now)?;
        to_json(&AccessTokenOut {
            access_token: &issued.token,
            expires_in: issued.expires_in,
        })
    }

    fn stable_token(&mut self, call: &Call<'_>) -> Result<Vec<u8>, WxErr> {
        let body = call.json()?;
        let appid = field(&body, "appid");
        self.note(&appid);
        if field(&body, "grant_type") != "client_credential" {
            return Err(wx(40002));
        }
        let id = self
            .st
            .account_credentials(&appid, &field(&body, "secret"))?;
        let force = match body.get("force_refresh") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::Number(n)) => n.as_i64() == Some(1),
            Some(Value::String(s)) => s == "true" || s == "1",
            Some(_) => return Err(wx(47001)),
        };
        let issued = self.st.stable_token(id, force, self.now)?;
        to_json(&AccessTokenOut {
            access_token: &issued.token,
            expires_in: issued.expires_in,
        })
    }

    // ----- token-checked APIs ---------------------------------------------------------------

    fn business_account(&mut self, token: &str) -> Result<u32, WxErr> {
        let owner = self.st.business_owner(token, self.now);
        if let Ok(o) = &owner {
            let appid = self.st.appid_of(o.owner).to_string();
            self.note(&appid);
        }
        match owner?.owner {
            AppRef::Account(a) => Ok(a),
            AppRef::Component(_) => Err(wx(61015)),
        }
    }

    fn getcallbackip(&mut self, call: &Call<'_>) -> Result<Vec<u8>, WxErr> {
        let token = self.access_token_param(call)?;
        let account = self.business_account(&token)?;
        self.st
            .charge(Api::GetCallbackIp, AppRef::Account(account), self.now)?;
        to_json(&serde_json::json!({ "ip_list": CALLBACK_IPS }))
    }

    /// `message/custom/send`: a customer-service message (not delivered anywhere; checked and
    /// counted). 44002/47001 for a bad body, 40003 without `touser`, 40008 without `msgtype`.
    fn custom_send(&mut self, call: &Call<'_>) -> Result<Vec<u8>, WxErr> {
        let token = self.access_token_param(call)?;
        let account = self.business_account(&token)?;
        let body = call.json()?;
        if field(&body, "touser").is_empty() {
            return Err(wx(40003));
        }
        if field(&body, "msgtype").is_empty() {
            return Err(wx(40008));
        }
        self.st
            .charge(Api::CustomSend, AppRef::Account(account), self.now)?;
        ok_json("ok")
    }

    /// `media/upload?type=`: a temporary media file from the multipart part `media` (41005 without
    /// one, 40004 for an unknown type); answers `{type, media_id, created_at}`.
    fn media_upload(&mut self, call: &Call<'_>) -> Result<Vec<u8>, WxErr> {
        let token = self.access_token_param(call)?;
        let account = self.business_account(&token)?;
        let kind = call.query("type");
        if !matches!(&*kind, "image" | "voice" | "video" | "thumb") {
            return Err(wx(40004));
        }
        let media = call.media.ok_or_else(|| wx(41005))?;
        self.st
            .charge(Api::MediaUpload, AppRef::Account(account), self.now)?;
        let media_id = self.st.store_media(account, media, self.now);
        to_json(&serde_json::json!({
            "type": kind, "media_id": media_id, "created_at": self.now / 1000
        }))
    }

    /// `media/get?media_id=`: the stored file's bytes with its content type (40007 for an unknown
    /// media id, or one of another account).
    fn media_get(&mut self, call: &Call<'_>) -> Result<(String, Vec<u8>), WxErr> {
        let token = self.access_token_param(call)?;
        let account = self.business_account(&token)?;
        let media_id = call.query("media_id");
        let media = self
            .st
            .media(account, &media_id, self.now)
            .ok_or_else(|| wx(40007))?;
        self.st
            .charge(Api::MediaGet, AppRef::Account(account), self.now)?;
        Ok(media)
    }

    fn getticket(&mut self, call: &Call<'_>) -> Result<Vec<u8>, WxErr> {
        let token = self.access_token_param(call)?;
        let account = self.business_account(&token)?;
        let ty = match &*call.query("type") {
            "" | "jsapi" => crate::state::TicketType::Jsapi,
            "wx_card" => crate::state::TicketType::WxCard,
            _ => return Err(wx(40097)),
        };
        let (ticket, expires_in) = self.st.js_ticket(account, ty, self.now)?;
        to_json(&serde_json::json!({
            "errcode": 0, "errmsg": "ok", "ticket": ticket, "expires_in": expires_in
        }))
    }

    // ----- quota ----------------------------------------------------------------------------

    fn clear_quota(&mut self, call: &Call<'_>) -> Result<Vec<u8>, WxErr> {
        let token = self.access_token_param(call)?;
        let body = call.json()?;
        let owner = self.st.check(&token, self.now).valid()?;
        let owner_appid = self.st.appid_of(owner.owner).to_string();
        self.note(&owner_appid);
        let appid = field(&body, "appid");
        if appid.is_empty() {
            return Err(wx(41002));
        }
        if appid != owner_appid {
            return Err(wx(40013));
        }
        self.st.charge(Api::ClearQuota, owner.owner, self.now)?;
        self.st.clear_quota(owner.owner, self.now)?;
        ok_json("ok")
    }

    fn clear_quota_v2(&mut self, call: &Call<'_>) -> Result<Vec<u8>, WxErr> {
        // Docs disagree on placement: accept the query string or a JSON body (query wins).
        let body = if call.body.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            call.json()?
        };
        let pick = |key: &str| -> String {
            let q = call.query(key);
            if q.is_empty() {
                field(&body, key).into_owned()
            } else {
                q.into_owned()
            }
        };
        let appid = pick("appid");
        self.note(&appid);
        let secret = pick("appsecret");
        if appid.is_empty() {
            return Err(wx(41002));
        }
        if secret.is_empty() {
            return Err(wx(41004));
        }
        let app = match self.st.app(&appid) {
            None => return Err(wx(40013)),
            Some(AppRef::Component(c)) => {
                if *self.st.components[c as usize].secret != *secret {
                    return Err(wx(40125));
                }
                AppRef::Component(c)
            }
            Some(AppRef::Account(a)) => {
                AppRef::Account(self.st.account_credentials(&appid, &secret).map(|_| a)?)
            }
        };
        self.st.charge(Api::ClearQuotaV2, app, self.now)?;
        self.st.clear_quota(app, self.now)?;
        ok_json("ok")
    }

    fn component_clear_quota_v2(&mut self, call: &Call<'_>) -> Result<Vec<u8>, WxErr> {
        let body = call.json()?;
        let appid = field(&body, "component_appid");
        self.note(&appid);
        let cid = self
            .st
            .component_credentials(&appid, &field(&body, "appsecret"))?;
        let target = field(&body, "appid");
        let app = if target.is_empty() {
            AppRef::Component(cid)
        } else {
            AppRef::Account(self.st.authorized_account(cid, &target)?)
        };
        self.st
            .charge(Api::ComponentClearQuotaV2, AppRef::Component(cid), self.now)?;
        self.st.clear_quota(app, self.now)?;
        ok_json("ok")
    }

    fn component_clear_quota(&mut self, call: &Call<'_>) -> Result<Vec<u8>, WxErr> {
        let (cid, _) = self.component_call(call)?;
        self.st
            .charge(Api::ComponentClearQuota, AppRef::Component(cid), self.now)?;
        self.st.clear_quota(AppRef::Component(cid), self.now)?;
        ok_json("ok")
    }

    fn quota_get(&mut self, call: &Call<'_>) -> Result<Vec<u8>, WxErr> {
        let token = self.access_token_param(call)?;
        let body = call.json()?;
        let owner = self.st.check(&token, self.now).valid()?;
        let owner_appid = self.st.appid_of(owner.owner).to_string();
        self.note(&owner_appid);
        let path = field(&body, "cgi_path");
        if path.is_empty() {
            return Err(wx(76021));
        }
        self.st.charge(Api::QuotaGet, owner.owner, self.now)?;
        let q = self
            .st
            .quota_view(owner.kind, owner.owner, &path, self.now)?;
        to_json(&serde_json::json!({
            "errcode": 0,
            "errmsg": "ok",
            "quota": { "daily_limit": q.daily_limit, "used": q.used, "remain": q.remain },
        }))
    }
}
