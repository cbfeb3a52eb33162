//! Values in WeChat's observed shapes (protocol notes, section 0): access tokens `NN_` + ~136
//! base64url characters, `preauthcode@@@…`, `queryauthcode@@@…`, `refreshtoken@@@…`, `ticket@@@…`,
//! 32-hex appsecrets and `wx` + 16-hex appids.
//!
//! Access tokens are self-describing so the simulator stores no token strings at all: the first 32
//! characters after the prefix are the base64url of (series, generation, expiry, MAC) and the rest is
//! filler derived from the MAC. A token that does not decode, or whose MAC or filler is wrong, is
//! garbage (40014). The MAC is SipHash under a per-process random key: enough to tell a token this
//! simulator issued from anything else, not a security boundary. Refresh tokens and generated
//! appsecrets are derived the same way from small integers, so 100,000 authorizers cost no
//! per-authorizer strings beyond the appid.

use std::hash::{BuildHasher, Hasher, RandomState};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;

use crate::clock::Millis;

/// Prefix of every access token (WeChat's number changes over the years: `69_`, `86_`, ...).
const TOKEN_PREFIX: &str = "86_";
const HEAD_LEN: usize = 32;
const FILLER_LEN: usize = 104;
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// What an access token says about itself once its MAC checks out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenRef {
    pub series: u32,
    pub generation: u32,
    pub expires_ms: Millis,
}

/// Domains separate the derived values so one can never be mistaken for another.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Domain {
    Token = 1,
    Refresh = 2,
    Secret = 3,
}

#[derive(Debug)]
pub(crate) struct Minter {
    key: RandomState,
}

impl Minter {
    pub(crate) fn new() -> Self {
        Self {
            key: RandomState::new(),
        }
    }

    fn mac(&self, domain: Domain, words: &[u64]) -> u64 {
        let mut h = self.key.build_hasher();
        h.write_u8(domain as u8);
        for w in words {
            h.write_u64(*w);
        }
        h.finish()
    }

    /// The token string for a (series, generation, expiry). Deterministic: minting the same
    /// triple again gives the same string (stable_token returns "the same token" this way).
    pub(crate) fn mint(&self, t: TokenRef) -> String {
        let mac = self.mac(
            Domain::Token,
            &[t.series.into(), t.generation.into(), t.expires_ms as u64],
        );
        let mut head = [0u8; 24];
        head[0..4].copy_from_slice(&t.series.to_le_bytes());
        head[4..8].copy_from_slice(&t.generation.to_le_bytes());
        head[8..16].copy_from_slice(&t.expires_ms.to_le_bytes());
        head[16..24].copy_from_slice(&mac.to_le_bytes());
        let mut out = String::with_capacity(TOKEN_PREFIX.len() + HEAD_LEN + FILLER_LEN);
        out.push_str(TOKEN_PREFIX);
        URL_SAFE_NO_PAD.encode_string(head, &mut out);
        expand(mac, FILLER_LEN, &mut out);
        out
    }

    /// Decode a token this simulator minted; `None` for anything else.
    pub(crate) fn parse(&self, token: &str) -> Option<TokenRef> {
        let rest = token.strip_prefix(TOKEN_PREFIX)?;
        if rest.len() != HEAD_LEN + FILLER_LEN || !rest.is_ascii() {
            return None;
        }
        let (head_text, filler) = rest.split_at(HEAD_LEN);
        let mut head = [0u8; 24];
        let n = URL_SAFE_NO_PAD.decode_slice(head_text, &mut head).ok()?;
        if n != 24 {
            return None;
        }
        let word = |r: std::ops::Range<usize>| -> Option<u64> {
            let mut b = [0u8; 8];
            b[..r.len()].copy_from_slice(head.get(r)?);
            Some(u64::from_le_bytes(b))
        };
        let series = u32::try_from(word(0..4)?).ok()?;
        let generation = u32::try_from(word(4..8)?).ok()?;
        let expires_ms = word(8..16)? as i64;
        let mac = word(16..24)?;
        if mac
            != self.mac(
                Domain::Token,
                &[series.into(), generation.into(), expires_ms as u64],
            )
        {
            return None;
        }
        let mut expected = String::with_capacity(FILLER_LEN);
        expand(mac, FILLER_LEN, &mut expected);
        (expected == filler).then_some(TokenRef {
            series,
            generation,
            expires_ms,
        })
    }

    /// `refreshtoken@@@…` for (component, account, refresh generation).
    pub(crate) fn refresh_token(&self, component: u32, account: u32, generation: u32) -> String {
        let mac = self.mac(
            Domain::Refresh,
            &[component.into(), account.into(), generation.into()],
        );
        let mut out = String::from("refreshtoken@@@");
        expand(mac, 43, &mut out);
        out
    }

    /// A 32-hex-digit appsecret derived from an entity number.
    pub(crate) fn secret(&self, entity: u32) -> String {
        let a = self.mac(Domain::Secret, &[entity.into(), 0]);
        let b = self.mac(Domain::Secret, &[entity.into(), 1]);
        format!("{a:016x}{b:016x}")
    }
}

/// Append `len` base64url characters drawn from a splitmix64 stream seeded by `seed`.
fn expand(seed: u64, len: usize, out: &mut String) {
    let mut state = seed;
    let mut written = 0;
    while written < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        for i in 0..10 {
            if written == len {
                break;
            }
            out.push(ALPHABET[((z >> (i * 6)) & 63) as usize] as char);
            written += 1;
        }
    }
}

/// `prefix` followed by `len` random base64url characters.
pub(crate) fn random_code(prefix: &str, len: usize) -> String {
    let mut rng = rand::rng();
    let mut out = String::with_capacity(prefix.len() + len);
    out.push_str(prefix);
    for _ in 0..len {
        out.push(ALPHABET[rng.random_range(0..64)] as char);
    }
    out
}

/// A new `wx` + 16 hex digits appid.
pub(crate) fn random_appid() -> String {
    format!("wx{:016x}", rand::rng().random::<u64>())
}

/// A new 32-hex-digit appsecret.
pub(crate) fn random_secret() -> String {
    let mut rng = rand::rng();
    format!("{:016x}{:016x}", rng.random::<u64>(), rng.random::<u64>())
}

/// A new EncodingAESKey (43 characters from `A-Z a-z 0-9`).
pub(crate) fn random_aes_key() -> String {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..43)
        .map(|_| ALNUM[rng.random_range(0..ALNUM.len())] as char)
        .collect()
}

/// A request id as WeChat appends it to `errmsg`: three groups of 8 hex digits.
pub(crate) fn rid() -> String {
    let mut rng = rand::rng();
    format!(
        "{:08x}-{:08x}-{:08x}",
        rng.random::<u32>(),
        rng.random::<u32>(),
        rng.random::<u32>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_round_trip_and_look_like_wechat_tokens() {
        let m = Minter::new();
        let t = TokenRef {
            series: 7,
            generation: 3,
            expires_ms: 1_700_000_000_123,
        };
        let s = m.mint(t);
        assert!(s.starts_with("86_"));
        assert_eq!(s.len(), 139);
        assert!(
            s[3..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(m.parse(&s), Some(t));
        assert_eq!(m.mint(t), s, "minting is deterministic");
    }

    #[test]
    fn tampered_or_foreign_tokens_do_not_parse() {
        let m = Minter::new();
        let s = m.mint(TokenRef {
            series: 1,
            generation: 1,
            expires_ms: 5,
        });
        let mut bytes = s.clone().into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(m.parse(&String::from_utf8(bytes).unwrap()), None);
        assert_eq!(Minter::new().parse(&s), None, "another simulator's key");
        assert_eq!(m.parse("garbage"), None);
        assert_eq!(m.parse(""), None);
        assert_eq!(m.parse("86_é"), None);
    }

    #[test]
    fn derived_values_have_wechat_shapes() {
        let m = Minter::new();
        let r = m.refresh_token(1, 2, 3);
        assert!(r.starts_with("refreshtoken@@@") && r.len() == 58);
        assert_ne!(r, m.refresh_token(1, 2, 4));
        assert_eq!(m.secret(9).len(), 32);
        assert!(random_appid().starts_with("wx") && random_appid().len() == 18);
        let rid = rid();
        assert_eq!(rid.len(), 26);
        assert!(crate::config::valid_aes_key(&random_aes_key()));
    }
}
