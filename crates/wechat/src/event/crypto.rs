//! WXBizMsgCrypt: the signatures and the AES envelope WeChat uses for pushes (wechat-protocol.md §2).
//!
//! Pure functions over RustCrypto primitives (aes + cbc, sha1) and `subtle` for constant-time
//! comparison; no I/O, no logging. Depends on nothing else in this crate except the size cap in
//! [`super::MAX_PUSH_BYTES`].
//!
//! Invariants:
//! - Decryption never panics: every slice index is guarded, and inputs larger than
//!   [`MAX_ENCRYPT_LEN`] are refused before they are decoded.
//! - Errors and `Debug` output never contain the Token, an AES key or decrypted plaintext.
//! - The scheme: `AESKey = base64(EncodingAESKey + "=")` (32 bytes), AES-256-CBC with
//!   `IV = AESKey[..16]` and no cipher-level padding. Plaintext is
//!   `16 random bytes ‖ u32 BE len(msg) ‖ msg ‖ appid`, padded PKCS#7-style to a multiple of 32.

use std::fmt;

use aes::Aes256;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::generic_array::GenericArray;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// Largest `Encrypt` text (base64 characters) [`MsgCrypt::decrypt`] accepts. An `Encrypt` element
/// can never be larger than the push body that carries it.
pub const MAX_ENCRYPT_LEN: usize = super::MAX_PUSH_BYTES;

/// Length of an EncodingAESKey as configured on the Open Platform console.
pub const ENCODING_AES_KEY_LEN: usize = 43;

/// Pad-to block size of the plaintext (WeChat's K = 32, not the AES block size).
const PAD_BLOCK: usize = 32;
/// AES block size: the ciphertext is a whole number of these.
const AES_BLOCK: usize = 16;
/// Random prefix + big-endian length.
const HEADER_LEN: usize = 16 + 4;

/// Why a key could not be loaded or a ciphertext could not be opened. Never carries key material
/// or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("invalid EncodingAESKey: {reason}")]
    InvalidKey { reason: &'static str },
    #[error("Encrypt is not valid standard base64")]
    Base64,
    #[error("ciphertext length {len} is not a positive multiple of 16")]
    BlockLength { len: usize },
    #[error("invalid padding in decrypted data")]
    Padding,
    #[error("length prefix exceeds the decrypted data")]
    LengthPrefix,
    #[error("decrypted message is not valid UTF-8")]
    Utf8,
    #[error("trailing appid does not match the component appid")]
    AppidMismatch,
    #[error("Encrypt is {len} bytes, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
}

/// `signature`: lowercase hex SHA-1 over `[token, timestamp, nonce]` sorted bytewise and
/// concatenated.
pub fn signature(token: &str, timestamp: &str, nonce: &str) -> String {
    sorted_sha1_hex(&mut [token, timestamp, nonce])
}

/// `msg_signature`: as [`signature`], with the exact `Encrypt` text as a fourth part.
pub fn msg_signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    sorted_sha1_hex(&mut [token, timestamp, nonce, encrypt])
}

fn sorted_sha1_hex(parts: &mut [&str]) -> String {
    // `str`'s `Ord` is bytewise lexicographic, which is what WeChat's samples use.
    parts.sort_unstable();
    let mut hasher = Sha1::new();
    for part in parts.iter() {
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Compares two signature strings without an early exit on the first differing byte.
fn ct_str_eq(expected: &str, given: &str) -> bool {
    // Lengths are public (a SHA-1 hex digest is always 40 bytes); the contents are compared in
    // constant time.
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

/// A decoded 32-byte AES key. Its IV is its first 16 bytes.
#[derive(Clone)]
struct AesKey([u8; 32]);

impl AesKey {
    fn from_encoding_aes_key(encoding_aes_key: &str) -> Result<Self, CryptoError> {
        if encoding_aes_key.len() != ENCODING_AES_KEY_LEN {
            return Err(CryptoError::InvalidKey {
                reason: "must be exactly 43 characters",
            });
        }
        if !encoding_aes_key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(CryptoError::InvalidKey {
                reason: "may only contain characters from [A-Za-z0-9]",
            });
        }
        // 43 base64 characters carry 258 bits; the last 2 are not part of the key. WeChat's
        // console (and the Java/PHP decoders every SDK uses) ignore them, and many real keys -
        // including the one in WeChat's own sample - have them set, so a strict decoder would
        // reject valid keys.
        const LENIENT: GeneralPurpose = GeneralPurpose::new(
            &alphabet::STANDARD,
            GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
        );
        let mut padded = String::with_capacity(ENCODING_AES_KEY_LEN + 1);
        padded.push_str(encoding_aes_key);
        padded.push('=');
        let bytes = LENIENT
            .decode(padded)
            .map_err(|_| CryptoError::InvalidKey {
                reason: "is not decodable as base64",
            })?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::InvalidKey {
            reason: "does not decode to 32 bytes",
        })?;
        Ok(Self(key))
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.0[..16]);
        iv
    }

    fn cipher_parts(
        &self,
    ) -> (
        GenericArray<u8, cbc::cipher::consts::U32>,
        GenericArray<u8, cbc::cipher::consts::U16>,
    ) {
        (GenericArray::from(self.0), GenericArray::from(self.iv()))
    }

    /// Encrypts a buffer whose length is a multiple of 16, in place.
    fn encrypt_in_place(&self, buf: &mut [u8]) {
        let (key, iv) = self.cipher_parts();
        let mut enc = cbc::Encryptor::<Aes256>::new(&key, &iv);
        // CBC encryption is sequential anyway; `chunks_exact_mut` makes every block exactly 16
        // bytes, so `from_mut_slice` cannot fail. Callers pad to 32, so there is no remainder.
        for block in buf.chunks_exact_mut(AES_BLOCK) {
            enc.encrypt_block_mut(GenericArray::from_mut_slice(block));
        }
    }

    /// Decrypts and unframes one ciphertext (already base64-decoded and length-checked).
    fn open(&self, ciphertext: &[u8], appid: &str) -> Result<String, CryptoError> {
        let (key, iv) = self.cipher_parts();
        let mut buf = ciphertext.to_vec();
        let plain = cbc::Decryptor::<Aes256>::new(&key, &iv)
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .map_err(|_| CryptoError::BlockLength {
                len: ciphertext.len(),
            })?;
        let unpadded = strip_padding(plain)?;
        let (msg, tail) = split_frame(unpadded)?;
        // The appid is not secret; a plain comparison is fine.
        if tail != appid.as_bytes() {
            return Err(CryptoError::AppidMismatch);
        }
        String::from_utf8(msg.to_vec()).map_err(|_| CryptoError::Utf8)
    }
}

/// Removes WeChat's PKCS#7-style padding (block size 32). Strict: the pad byte must be in
/// `1..=32`, no larger than the buffer, and every pad byte must carry the same value.
fn strip_padding(plain: &[u8]) -> Result<&[u8], CryptoError> {
    let pad = usize::from(*plain.last().ok_or(CryptoError::Padding)?);
    if !(1..=PAD_BLOCK).contains(&pad) || pad > plain.len() {
        return Err(CryptoError::Padding);
    }
    let split = plain.len() - pad;
    let (body, padding) = plain.split_at(split);
    if padding.iter().any(|&b| usize::from(b) != pad) {
        return Err(CryptoError::Padding);
    }
    Ok(body)
}

/// Splits `random(16) ‖ len(4) ‖ msg ‖ appid` into `(msg, appid)`.
fn split_frame(unpadded: &[u8]) -> Result<(&[u8], &[u8]), CryptoError> {
    let len_bytes: [u8; 4] = unpadded
        .get(16..HEADER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(CryptoError::LengthPrefix)?;
    let msg_len =
        usize::try_from(u32::from_be_bytes(len_bytes)).map_err(|_| CryptoError::LengthPrefix)?;
    let rest = unpadded
        .get(HEADER_LEN..)
        .ok_or(CryptoError::LengthPrefix)?;
    if msg_len > rest.len() {
        return Err(CryptoError::LengthPrefix);
    }
    Ok(rest.split_at(msg_len))
}

/// One component's message crypto: its Token, current EncodingAESKey, optionally the previous
/// EncodingAESKey (tried when the current one fails, during a key change), and its appid.
///
/// `Debug` prints the appid only.
#[derive(Clone)]
pub struct MsgCrypt {
    token: String,
    key: AesKey,
    previous_key: Option<AesKey>,
    appid: String,
}

impl fmt::Debug for MsgCrypt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsgCrypt")
            .field("appid", &self.appid)
            .field("token", &"<redacted>")
            .field("key", &"<redacted>")
            .field(
                "previous_key",
                &self.previous_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl MsgCrypt {
    /// Loads a component's crypto settings. The EncodingAESKey must be exactly 43 characters
    /// from `[A-Za-z0-9]`; the Token and appid are taken as given.
    pub fn new(token: &str, encoding_aes_key: &str, appid: &str) -> Result<Self, CryptoError> {
        Ok(Self {
            token: token.to_owned(),
            key: AesKey::from_encoding_aes_key(encoding_aes_key)?,
            previous_key: None,
            appid: appid.to_owned(),
        })
    }

    /// Adds the previous EncodingAESKey, tried by [`decrypt`](Self::decrypt) when the current
    /// key fails (WeChat's recommendation during a key change). Encryption always uses the
    /// current key.
    pub fn with_previous_key(mut self, encoding_aes_key: &str) -> Result<Self, CryptoError> {
        self.previous_key = Some(AesKey::from_encoding_aes_key(encoding_aes_key)?);
        Ok(self)
    }

    /// The component appid this crypto belongs to (and checks decrypted messages against).
    pub fn appid(&self) -> &str {
        &self.appid
    }

    /// [`signature`] with this component's Token.
    pub fn signature(&self, timestamp: &str, nonce: &str) -> String {
        signature(&self.token, timestamp, nonce)
    }

    /// [`msg_signature`] with this component's Token.
    pub fn msg_signature(&self, timestamp: &str, nonce: &str, encrypt: &str) -> String {
        msg_signature(&self.token, timestamp, nonce, encrypt)
    }

    /// Checks a `signature` query parameter in constant time.
    pub fn verify_signature(&self, timestamp: &str, nonce: &str, signature: &str) -> bool {
        ct_str_eq(&self.signature(timestamp, nonce), signature)
    }

    /// Checks a `msg_signature` query parameter over the exact `Encrypt` text, in constant time.
    pub fn verify_msg_signature(
        &self,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
        msg_signature: &str,
    ) -> bool {
        ct_str_eq(
            &self.msg_signature(timestamp, nonce, encrypt),
            msg_signature,
        )
    }

    /// Encrypts `msg` with a fresh random 16-byte prefix; returns standard base64 with `=`.
    pub fn encrypt(&self, msg: &str) -> String {
        let prefix: [u8; 16] = rand::random();
        self.encrypt_with_prefix(msg, &prefix)
    }

    /// Encrypts `msg` with the given 16-byte prefix (deterministic; for known-answer tests and
    /// reproducible fixtures). Messages longer than `u32::MAX` bytes cannot be framed: their
    /// length prefix saturates and the result will not decrypt.
    pub fn encrypt_with_prefix(&self, msg: &str, prefix: &[u8; 16]) -> String {
        let body_len = HEADER_LEN + msg.len() + self.appid.len();
        let pad = PAD_BLOCK - body_len % PAD_BLOCK; // 1..=32: a full block when aligned
        let mut buf = Vec::with_capacity(body_len + pad);
        buf.extend_from_slice(prefix);
        let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(msg.as_bytes());
        buf.extend_from_slice(self.appid.as_bytes());
        // `pad` is at most 32, so it fits a byte.
        buf.resize(body_len + pad, pad as u8);
        self.key.encrypt_in_place(&mut buf);
        STANDARD.encode(&buf)
    }

    /// Decrypts an `Encrypt` value and returns the message (the event XML).
    ///
    /// Tries the current key, then the previous one if set. The trailing appid must equal
    /// [`appid`](Self::appid). When both keys fail, the current key's error is returned.
    pub fn decrypt(&self, encrypt: &str) -> Result<String, CryptoError> {
        if encrypt.len() > MAX_ENCRYPT_LEN {
            return Err(CryptoError::TooLarge {
                len: encrypt.len(),
                max: MAX_ENCRYPT_LEN,
            });
        }
        let ciphertext = STANDARD.decode(encrypt).map_err(|_| CryptoError::Base64)?;
        if ciphertext.is_empty() || ciphertext.len() % AES_BLOCK != 0 {
            return Err(CryptoError::BlockLength {
                len: ciphertext.len(),
            });
        }
        match self.key.open(&ciphertext, &self.appid) {
            Ok(msg) => Ok(msg),
            Err(current_err) => match &self.previous_key {
                Some(previous) => previous
                    .open(&ciphertext, &self.appid)
                    .map_err(|_| current_err),
                None => Err(current_err),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // wechat-protocol.md §2.1, vectors 1 and 3.
    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const APPID: &str = "wxb11529c136998cb6";
    const PREFIX: &[u8; 16] = b"aaaabbbbccccdddd";
    const V1_MSG: &str = "我是中文abcd123";
    const V1_ENCRYPT: &str =
        "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg==";
    const OTHER_KEY: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";

    fn crypt() -> MsgCrypt {
        MsgCrypt::new("pamtest", KEY, APPID).unwrap()
    }

    /// Encrypts a hand-built plaintext (already framed and padded) under `KEY`.
    fn encrypt_raw(plain: &[u8]) -> String {
        let mut buf = plain.to_vec();
        AesKey::from_encoding_aes_key(KEY)
            .unwrap()
            .encrypt_in_place(&mut buf);
        STANDARD.encode(buf)
    }

    /// `prefix ‖ len ‖ msg ‖ appid` without padding.
    fn frame(len_prefix: u32, msg: &[u8], appid: &[u8]) -> Vec<u8> {
        let mut v = PREFIX.to_vec();
        v.extend_from_slice(&len_prefix.to_be_bytes());
        v.extend_from_slice(msg);
        v.extend_from_slice(appid);
        v
    }

    fn pad_correctly(mut v: Vec<u8>) -> Vec<u8> {
        let pad = 32 - v.len() % 32;
        v.resize(v.len() + pad, pad as u8);
        v
    }

    #[test]
    fn vector1_encrypt_with_fixed_prefix_matches_known_answer() {
        assert_eq!(crypt().encrypt_with_prefix(V1_MSG, PREFIX), V1_ENCRYPT);
    }

    #[test]
    fn vector1_decrypt_returns_message() {
        assert_eq!(crypt().decrypt(V1_ENCRYPT).unwrap(), V1_MSG);
    }

    #[test]
    fn vector1_iv_is_first_16_key_bytes() {
        let key = AesKey::from_encoding_aes_key(KEY).unwrap();
        assert_eq!(hex::encode(key.iv()), "69b71d79f8218a39259a7a29aabb2dba");
    }

    #[test]
    fn vector1_msg_signature_with_token_pamtest() {
        let expected = "82c962d39941aa48552f90ef55aa323dc620cc10";
        assert_eq!(
            msg_signature("pamtest", "1409304348", "xxxxxx", V1_ENCRYPT),
            expected
        );
        assert!(crypt().verify_msg_signature("1409304348", "xxxxxx", V1_ENCRYPT, expected));
    }

    #[test]
    fn vector2_plain_signatures_match_official_examples() {
        let cases = [
            (
                "1714037059",
                "486452656",
                "899cf89e464efb63f54ddac96b0a0a235f53aa78",
            ),
            (
                "1714036504",
                "1514711492",
                "f464b24fc39322e44b38aa78f5edd27bd1441696",
            ),
            (
                "1715943329",
                "1590219412",
                "cc0c594499c1634947d5b502f158ee518947db27",
            ),
        ];
        let c = MsgCrypt::new("AAAAA", KEY, APPID).unwrap();
        for (ts, nonce, expected) in cases {
            assert_eq!(signature("AAAAA", ts, nonce), expected);
            assert!(c.verify_signature(ts, nonce, expected));
        }
    }

    #[test]
    fn verify_signature_rejects_other_values() {
        let c = MsgCrypt::new("AAAAA", KEY, APPID).unwrap();
        let good = "899cf89e464efb63f54ddac96b0a0a235f53aa78";
        assert!(!c.verify_signature("1714037059", "486452656", ""));
        assert!(!c.verify_signature("1714037059", "486452656", &good.to_uppercase()));
        assert!(!c.verify_signature("1714037059", "486452656", &good[..39]));
        assert!(!c.verify_signature("1714037059", "486452657", good));
        assert!(!c.verify_msg_signature("1714037059", "486452656", "x", good));
    }

    #[test]
    fn new_accepts_key_with_nonzero_trailing_bits() {
        // 'G' = 0b000110: the two discarded bits are not zero.
        assert!(MsgCrypt::new("t", KEY, APPID).is_ok());
    }

    #[test]
    fn new_rejects_42_and_44_char_keys() {
        for key in [&KEY[..42], &format!("{KEY}A")[..], ""] {
            assert!(matches!(
                MsgCrypt::new("t", key, APPID),
                Err(CryptoError::InvalidKey { .. })
            ));
        }
    }

    #[test]
    fn new_rejects_43_char_key_with_bad_character() {
        for bad in ['+', '/', '=', '-', '_', ' ', 'é'] {
            let mut key: String = KEY[..42].to_owned();
            key.push(bad);
            assert!(
                matches!(
                    MsgCrypt::new("t", &key, APPID),
                    Err(CryptoError::InvalidKey { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn with_previous_key_rejects_invalid_key() {
        assert!(matches!(
            crypt().with_previous_key("short"),
            Err(CryptoError::InvalidKey { .. })
        ));
    }

    #[test]
    fn debug_does_not_print_token_or_keys() {
        let c = MsgCrypt::new("sekrit-token", KEY, APPID)
            .unwrap()
            .with_previous_key(OTHER_KEY)
            .unwrap();
        let s = format!("{c:?}");
        assert!(s.contains(APPID));
        assert!(!s.contains("sekrit-token"));
        assert!(!s.contains(KEY) && !s.contains(OTHER_KEY));
        // Raw key bytes (as printed by a derived Debug) must not appear either.
        assert!(!s.contains("105"), "{s}"); // 0x69 = 105, first key byte
    }

    #[test]
    fn encrypt_pads_aligned_plaintext_with_a_full_block() {
        // 20 + 12 + 0 = 32 bytes: aligned, so 32 pad bytes follow -> 64 bytes of ciphertext.
        let c = MsgCrypt::new("t", KEY, "").unwrap();
        let enc = c.encrypt_with_prefix("123456789012", PREFIX);
        assert_eq!(STANDARD.decode(&enc).unwrap().len(), 64);
        assert_eq!(c.decrypt(&enc).unwrap(), "123456789012");
    }

    #[test]
    fn encrypt_uses_a_random_prefix() {
        let c = crypt();
        assert_ne!(c.encrypt("same"), c.encrypt("same"));
    }

    #[test]
    fn decrypt_rejects_bad_base64() {
        for bad in ["not base64!", "abc", "jn1L23DB+6ELqJ+6bruv21Y6MD7K===="] {
            assert_eq!(crypt().decrypt(bad), Err(CryptoError::Base64), "{bad}");
        }
    }

    #[test]
    fn decrypt_rejects_ciphertext_not_a_multiple_of_16() {
        for len in [1usize, 15, 17, 31, 33] {
            let enc = STANDARD.encode(vec![7u8; len]);
            assert_eq!(crypt().decrypt(&enc), Err(CryptoError::BlockLength { len }));
        }
    }

    #[test]
    fn decrypt_rejects_empty_ciphertext() {
        assert_eq!(
            crypt().decrypt(""),
            Err(CryptoError::BlockLength { len: 0 })
        );
    }

    #[test]
    fn decrypt_rejects_pad_byte_0_33_and_255() {
        for pad in [0u8, 33, 255] {
            let mut plain = frame(3, b"abc", APPID.as_bytes());
            plain.resize(64, pad);
            assert_eq!(
                crypt().decrypt(&encrypt_raw(&plain)),
                Err(CryptoError::Padding),
                "{pad}"
            );
        }
    }

    #[test]
    fn decrypt_rejects_inconsistent_pad_bytes() {
        let mut plain = pad_correctly(frame(3, b"abc", APPID.as_bytes()));
        let n = plain.len();
        plain[n - 2] ^= 1;
        assert_eq!(
            crypt().decrypt(&encrypt_raw(&plain)),
            Err(CryptoError::Padding)
        );
    }

    #[test]
    fn decrypt_rejects_padding_that_leaves_no_header() {
        // 32 bytes of 0x20: all padding, nothing left for the random prefix and length.
        let plain = vec![32u8; 32];
        assert_eq!(
            crypt().decrypt(&encrypt_raw(&plain)),
            Err(CryptoError::LengthPrefix)
        );
    }

    #[test]
    fn decrypt_rejects_length_prefix_past_end_of_buffer() {
        for len in [3 + APPID.len() as u32 + 1, 1000, u32::MAX] {
            let plain = pad_correctly(frame(len, b"abc", APPID.as_bytes()));
            assert_eq!(
                crypt().decrypt(&encrypt_raw(&plain)),
                Err(CryptoError::LengthPrefix)
            );
        }
    }

    #[test]
    fn decrypt_rejects_wrong_appid() {
        let plain = pad_correctly(frame(3, b"abc", b"wx0000000000000000"));
        assert_eq!(
            crypt().decrypt(&encrypt_raw(&plain)),
            Err(CryptoError::AppidMismatch)
        );
        let other = MsgCrypt::new("pamtest", KEY, "wx0000000000000000").unwrap();
        assert_eq!(other.decrypt(V1_ENCRYPT), Err(CryptoError::AppidMismatch));
    }

    #[test]
    fn decrypt_rejects_invalid_utf8_message() {
        let plain = pad_correctly(frame(2, &[0xff, 0xfe], APPID.as_bytes()));
        assert_eq!(
            crypt().decrypt(&encrypt_raw(&plain)),
            Err(CryptoError::Utf8)
        );
    }

    #[test]
    fn decrypt_rejects_multi_megabyte_encrypt_before_decoding() {
        let huge = "A".repeat(4 << 20);
        let start = std::time::Instant::now();
        assert_eq!(
            crypt().decrypt(&huge),
            Err(CryptoError::TooLarge {
                len: huge.len(),
                max: MAX_ENCRYPT_LEN
            })
        );
        assert!(start.elapsed() < std::time::Duration::from_millis(50));
    }

    #[test]
    fn decrypt_with_wrong_key_fails_cleanly() {
        let other = MsgCrypt::new("pamtest", OTHER_KEY, APPID).unwrap();
        let err = other.decrypt(V1_ENCRYPT).unwrap_err();
        assert!(
            matches!(
                err,
                CryptoError::Padding | CryptoError::LengthPrefix | CryptoError::AppidMismatch
            ),
            "{err:?}"
        );
    }

    #[test]
    fn decrypt_falls_back_to_previous_key() {
        let rotated = MsgCrypt::new("pamtest", OTHER_KEY, APPID)
            .unwrap()
            .with_previous_key(KEY)
            .unwrap();
        assert_eq!(rotated.decrypt(V1_ENCRYPT).unwrap(), V1_MSG);
        // New messages use the current key, which the old configuration cannot read.
        let fresh = rotated.encrypt("new");
        assert_eq!(rotated.decrypt(&fresh).unwrap(), "new");
        assert!(crypt().decrypt(&fresh).is_err());
    }

    #[test]
    fn decrypt_reports_current_key_error_when_both_keys_fail() {
        let c = MsgCrypt::new("pamtest", KEY, "wx0000000000000000")
            .unwrap()
            .with_previous_key(OTHER_KEY)
            .unwrap();
        assert_eq!(c.decrypt(V1_ENCRYPT), Err(CryptoError::AppidMismatch));
    }

    #[test]
    fn errors_do_not_leak_plaintext_or_appid() {
        let other = MsgCrypt::new("pamtest", KEY, "wx0000000000000000").unwrap();
        let err = other.decrypt(V1_ENCRYPT).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains(APPID) && !text.contains("abcd123"), "{text}");
    }
}
