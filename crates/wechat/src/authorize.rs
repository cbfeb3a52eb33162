//! Authorization-page URLs (wechat-protocol.md section 3.4) and the redirect back (3.5).
//!
//! Pure functions over `url`; no I/O. Invariants:
//! - Every parameter value is percent-encoded with the RFC 3986 unreserved set (like JavaScript's
//!   `encodeURIComponent`, minus `!*'()`), so a `redirect_uri` carrying its own query
//!   (`?a=1&b=2`) survives intact and spaces become `%20`, never `+`.
//! - `biz_appid` and `auth_type` are mutually exclusive per the doc note: when `biz_appid` is set
//!   (and non-empty) it wins and `auth_type` is left out, because naming one account is the
//!   stronger restriction and the page would show only it anyway.
//! - Parameter order is fixed (`component_appid`, `pre_auth_code`, `redirect_uri`, then
//!   `auth_type` or `biz_appid`), so generated URLs are stable for tests and logs.
//!   Note that the URLs contain the single-use `pre_auth_code`: log the page, not the URL.

use std::fmt;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::wire::redact;

/// Path of the PC (scan QR) page on `mp.weixin.qq.com`.
pub const PC_PATH: &str = "/cgi-bin/componentloginpage";
/// Path of the current H5/mobile page on `open.weixin.qq.com`.
pub const MOBILE_PATH: &str = "/wxaopen/safe/bindcomponent";
/// Default PC page.
pub const DEFAULT_PC_URL: &str = "https://mp.weixin.qq.com/cgi-bin/componentloginpage";
/// Default mobile page (the form WxJava and silenceper switched to; the older one was
/// `https://mp.weixin.qq.com/safe/bindcomponent`).
pub const DEFAULT_MOBILE_URL: &str = "https://open.weixin.qq.com/wxaopen/safe/bindcomponent";

/// Which account kinds the page offers (`auth_type`). Omitted means both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthType {
    OfficialAccount = 1,
    MiniProgram = 2,
    Both = 3,
}

impl AuthType {
    /// The numeric value WeChat expects.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Inverse of [`AuthType::code`] (for the simulator's consent page). Newer values (Channels,
    /// WeChat shop) are not modelled and give `None`.
    pub fn from_code(code: u8) -> Option<AuthType> {
        match code {
            1 => Some(AuthType::OfficialAccount),
            2 => Some(AuthType::MiniProgram),
            3 => Some(AuthType::Both),
            _ => None,
        }
    }
}

/// What goes into an authorization page URL.
#[derive(Clone, Copy)]
pub struct AuthorizeParams<'a> {
    pub component_appid: &'a str,
    pub pre_auth_code: &'a str,
    /// The callback, unencoded; it is encoded here.
    pub redirect_uri: &'a str,
    pub auth_type: Option<AuthType>,
    /// Restrict the page to one account; wins over `auth_type` (see the module docs).
    pub biz_appid: Option<&'a str>,
}

impl fmt::Debug for AuthorizeParams<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizeParams")
            .field("component_appid", &self.component_appid)
            .field("pre_auth_code", &redact(self.pre_auth_code))
            .field("redirect_uri", &self.redirect_uri)
            .field("auth_type", &self.auth_type)
            .field("biz_appid", &self.biz_appid)
            .finish()
    }
}

/// The two authorization pages: PC (QR scan) and mobile (H5 inside WeChat).
#[derive(Clone, Debug)]
pub struct AuthorizePages {
    pub pc: Url,
    pub mobile: Url,
}

impl Default for AuthorizePages {
    /// WeChat's pages: [`DEFAULT_PC_URL`] and [`DEFAULT_MOBILE_URL`].
    fn default() -> Self {
        // Invariant: constant, valid URLs (covered by a test).
        AuthorizePages {
            pc: Url::parse(DEFAULT_PC_URL).expect("DEFAULT_PC_URL is a valid URL"),
            mobile: Url::parse(DEFAULT_MOBILE_URL).expect("DEFAULT_MOBILE_URL is a valid URL"),
        }
    }
}

impl AuthorizePages {
    /// The same two paths ([`PC_PATH`], [`MOBILE_PATH`]) under another base, e.g. the simulator's
    /// consent page. A path prefix of `base` is kept; its query and fragment are dropped.
    pub fn at(base: &Url) -> Self {
        let under = |path: &str| {
            let mut url = base.clone();
            url.set_query(None);
            url.set_fragment(None);
            let full = format!("{}{}", base.path().trim_end_matches('/'), path);
            url.set_path(&full);
            url
        };
        AuthorizePages {
            pc: under(PC_PATH),
            mobile: under(MOBILE_PATH),
        }
    }

    /// `<pc>?component_appid=..&pre_auth_code=..&redirect_uri=..[&auth_type=..|&biz_appid=..]`.
    pub fn pc_url(&self, p: &AuthorizeParams) -> String {
        let mut query = String::new();
        push_params(&mut query, p);
        format!("{}?{}", without_query(&self.pc), query)
    }

    /// `<mobile>?action=bindcomponent&no_scan=1&component_appid=..&...#wechat_redirect`.
    pub fn mobile_url(&self, p: &AuthorizeParams) -> String {
        let mut query = String::from("action=bindcomponent&no_scan=1");
        push_params(&mut query, p);
        format!("{}?{}#wechat_redirect", without_query(&self.mobile), query)
    }
}

fn without_query(url: &Url) -> &str {
    let s = url.as_str();
    let end = s.find(['?', '#']).unwrap_or(s.len());
    &s[..end]
}

fn push_params(query: &mut String, p: &AuthorizeParams) {
    push_pair(query, "component_appid", p.component_appid);
    push_pair(query, "pre_auth_code", p.pre_auth_code);
    push_pair(query, "redirect_uri", p.redirect_uri);
    match p.biz_appid.filter(|b| !b.is_empty()) {
        Some(biz_appid) => push_pair(query, "biz_appid", biz_appid),
        None => {
            if let Some(auth_type) = p.auth_type {
                let code = auth_type.code().to_string();
                push_pair(query, "auth_type", &code);
            }
        }
    }
}

fn push_pair(query: &mut String, key: &str, value: &str) {
    if !query.is_empty() {
        query.push('&');
    }
    query.push_str(key);
    query.push('=');
    percent_encode_into(query, value);
}

/// Percent-encodes everything outside RFC 3986's unreserved set `A-Z a-z 0-9 - . _ ~`.
fn percent_encode_into(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in value.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
}

/// Query WeChat appends to `redirect_uri` after the admin confirms (3.5):
/// `?auth_code=<queryauthcode@@@...>&expires_in=600`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizeCallback {
    pub auth_code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
}

impl fmt::Debug for AuthorizeCallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizeCallback")
            .field("auth_code", &redact(&self.auth_code))
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Where the consent page sends the browser: `redirect_uri` with `auth_code` and `expires_in`
/// appended to whatever query it already has (the simulator uses this).
pub fn redirect_back_url(
    redirect_uri: &str,
    auth_code: &str,
    expires_in: u64,
) -> Result<Url, url::ParseError> {
    let mut url = Url::parse(redirect_uri)?;
    url.query_pairs_mut()
        .append_pair("auth_code", auth_code)
        .append_pair("expires_in", &expires_in.to_string());
    Ok(url)
}

/// HTML-escapes text and attribute values, for the authorization pages on both sides (wxtoken's
/// own page and the simulator's consent page). Five replacements do not justify a dependency.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
