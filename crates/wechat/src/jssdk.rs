//! JS-SDK signatures (docs/JSSDK.md): `wx.config`'s, made with the account's `jsapi_ticket`,
//! and the `cardExt` of `wx.addCard`, made with its `wx_card` api_ticket. Both are SHA-1 in
//! lowercase hex. Hand-written because they are two string rules, not a protocol a crate
//! implements; the hashing is RustCrypto's `sha1`.

use sha1::{Digest, Sha1};

/// What WeChat signs of a page URL: everything before the first `#`, exactly as given (no
/// re-encoding, no normalisation: the page must pass `location.href.split('#')[0]`).
pub fn signed_url(url: &str) -> &str {
    url.split('#').next().unwrap_or(url)
}

/// Whether `url` may be signed: an absolute `http` or `https` URL with a host, and no character a
/// browser would never put in `location.href` (whitespace, controls). The reason if not.
pub fn check_page_url(url: &str) -> Result<(), &'static str> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return Err("must be an absolute http:// or https:// URL");
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err("must name a host");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters");
    }
    Ok(())
}

/// `wx.config`'s signature: SHA-1 of `jsapi_ticket=…&noncestr=…&timestamp=…&url=…` (the four
/// keys in ASCII order, values raw), with the URL as [`signed_url`] gives it.
pub fn config_signature(jsapi_ticket: &str, noncestr: &str, timestamp: i64, url: &str) -> String {
    let text = format!(
        "jsapi_ticket={jsapi_ticket}&noncestr={noncestr}&timestamp={timestamp}&url={}",
        signed_url(url)
    );
    hex(&Sha1::digest(text.as_bytes()))
}

/// The `signature` of a `cardExt` (`wx.addCard`): the values of `api_ticket`, `timestamp`,
/// `card_id`, `nonce_str` and of whichever of `code`, `openid` and `balance` are given, sorted as
/// strings (byte order), concatenated without separator, SHA-1. Absent optional fields take no
/// part (an empty string sorts first and adds nothing, so it is the same as absent).
pub fn card_ext_signature(fields: &CardExtFields<'_>) -> String {
    let mut values: Vec<&str> = vec![
        fields.api_ticket,
        fields.timestamp,
        fields.card_id,
        fields.nonce_str,
    ];
    values.extend(
        [fields.code, fields.openid, fields.balance]
            .into_iter()
            .flatten(),
    );
    values.sort_unstable();
    let mut hasher = Sha1::new();
    for v in values {
        hasher.update(v.as_bytes());
    }
    hex(&hasher.finalize())
}

/// The signed fields of a `cardExt`.
#[derive(Debug, Clone, Copy)]
pub struct CardExtFields<'a> {
    pub api_ticket: &'a str,
    pub timestamp: &'a str,
    pub card_id: &'a str,
    pub nonce_str: &'a str,
    pub code: Option<&'a str>,
    pub openid: Option<&'a str>,
    pub balance: Option<&'a str>,
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The example of WeChat's JS-SDK documentation (附录1).
    #[test]
    fn config_signature_matches_wechats_documented_example() {
        assert_eq!(
            config_signature(
                "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg",
                "Wm3WZYTPz0wzccnW",
                1414587457,
                "http://mp.weixin.qq.com?params=value",
            ),
            "0f9de62fce790f9a083d5c99e95740ceb90c27ed"
        );
    }

    #[test]
    fn card_ext_signature_is_sha1_of_the_sorted_values() {
        let fields = CardExtFields {
            api_ticket: "ticket",
            timestamp: "1414587457",
            card_id: "pFS7Fjg8kV1IdDz01r4SQwMkuCKc",
            nonce_str: "nonce",
            code: Some("12345"),
            openid: None,
            balance: None,
        };
        let mut sorted = [
            "ticket",
            "1414587457",
            "pFS7Fjg8kV1IdDz01r4SQwMkuCKc",
            "nonce",
            "12345",
        ];
        sorted.sort_unstable();
        assert_eq!(
            card_ext_signature(&fields),
            hex(&Sha1::digest(sorted.concat().as_bytes()))
        );
        // An empty optional value is the same as none.
        let empty = CardExtFields {
            openid: Some(""),
            ..fields
        };
        assert_eq!(card_ext_signature(&empty), card_ext_signature(&fields));
    }

    #[test]
    fn page_urls_must_be_absolute_http_with_a_host() {
        for ok in [
            "http://mp.weixin.qq.com?params=value",
            "https://shop.example.com/p/1?x=%E4%B8%AD#frag",
            "HTTPS://Shop.example.com",
        ] {
            assert_eq!(check_page_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/relative/path",
            "shop.example.com/p",
            "ftp://example.com/",
            "javascript:alert(1)",
            "https://",
            "https:///path",
            "https://example.com/a b",
            "https://example.com/\n",
        ] {
            assert!(check_page_url(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        /// Whatever follows `#` takes no part in the signature.
        #[test]
        fn the_fragment_is_never_signed(
            path in "[a-z0-9/?=&%._-]{0,40}",
            fragment in "[a-zA-Z0-9/?=&#!._-]{0,20}",
            ticket in "[A-Za-z0-9_-]{1,90}",
            nonce in "[A-Za-z0-9]{1,32}",
            ts in 0i64..4_000_000_000,
        ) {
            let base = format!("https://example.com/{path}");
            prop_assert_eq!(
                config_signature(&ticket, &nonce, ts, &format!("{base}#{fragment}")),
                config_signature(&ticket, &nonce, ts, &base)
            );
        }

        /// The card signature depends on the values, never on which field carries which.
        #[test]
        fn card_ext_signature_ignores_field_order(
            a in "[A-Za-z0-9]{1,20}", b in "[A-Za-z0-9]{1,20}", c in "[A-Za-z0-9]{1,20}",
            d in "[A-Za-z0-9]{1,20}", e in "[A-Za-z0-9]{1,20}",
        ) {
            let one = CardExtFields {
                api_ticket: &a, timestamp: &b, card_id: &c, nonce_str: &d,
                code: Some(&e), openid: None, balance: None,
            };
            let other = CardExtFields {
                api_ticket: &e, timestamp: &d, card_id: &c, nonce_str: &b,
                code: None, openid: Some(&a), balance: None,
            };
            prop_assert_eq!(card_ext_signature(&one), card_ext_signature(&other));
        }
    }
}
