//! WeChat's error answers: an errcode and the message WeChat sends with it. Rendering (HTTP 200,
//! `{"errcode":N,"errmsg":"<message> rid: …"}`) happens in `api`; the rules in `state` only pick
//! the code.

use std::borrow::Cow;

/// An errcode answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WxErr {
    pub code: i64,
    pub msg: Cow<'static, str>,
}

impl WxErr {
    /// The error with WeChat's usual message for that code.
    pub(crate) fn code(code: i64) -> Self {
        Self {
            code,
            msg: Cow::Borrowed(message(code)),
        }
    }
}

/// Shorthand used by the rules: `Err(wx(61023))`.
pub(crate) fn wx(code: i64) -> WxErr {
    WxErr::code(code)
}

/// The errmsg text WeChat sends for a code (protocol notes, section 7), without the rid suffix.
pub(crate) fn message(code: i64) -> &'static str {
    match code {
        -1 => "system error",
        0 => "ok",
        40001 => "invalid credential, access_token is invalid or not latest",
        40002 => "invalid grant_type",
        40003 => "invalid openid",
        40004 => "invalid media type",
        40007 => "invalid media_id",
        40008 => "invalid message type",
        40013 => "invalid appid",
        40014 => "invalid access_token",
        40097 => "invalid args",
        40125 => "invalid appsecret",
        40164 => "invalid ip 127.0.0.1 ipv6 ::ffff:127.0.0.1, not in whitelist",
        40243 => "AppSecret已被冻结，请登录小程序平台解冻后再次调用。",
        41001 => "access_token missing",
        41002 => "appid missing",
        41004 => "appsecret missing",
        41005 => "media data missing",
        41018 => "missing component_appid",
        42001 => "access_token expired",
        43002 => "require POST method",
        44002 => "empty post data",
        45009 => "reach max api daily quota limit",
        45011 => "api minute-quota reach limit  mustslower  retry next minute",
        47001 => "data format error",
        48001 => "api unauthorized",
        48004 => "api forbidden for irregularities",
        48006 => "forbid to clear quota because of reaching the limit",
        50001 => "user unauthorized",
        50002 => "user limited",
        61003 => "component is not authorized by this account",
        61004 => "access clientip is not registered requestIP: 127.0.0.1",
        61005 => "component ticket is expired",
        61006 => "component ticket is invalid",
        61007 => "api is unauthorized to component",
        61009 => "code is invalid",
        61010 => "code is expired",
        61011 => "invalid component",
        61014 => "must use component token",
        61015 => "must use business account token",
        61023 => "refresh_token is invalid",
        61024 => "must use api(api_component_token) to get token for component acct",
        76021 => "cgi_path not found, please check",
        76022 => "could not use this cgi_path,no permission",
        89501 => "this IP is pending for admin confirmation",
        89503 => "this IP call requires admin confirmation",
        89506 => "this IP was refused by admin twice within 24 hours",
        89507 => "this IP was refused by admin within 1 hour",
        _ => "simulated error",
    }
}
