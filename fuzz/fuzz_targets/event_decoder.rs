//! Arbitrary bytes through every decoder of `wechat::event`: `Envelope::parse`, `Event::parse`
//! (lossy UTF-8), `MsgCrypt::decrypt` (as `Encrypt` text, and as a ciphertext whose plaintext
//! the fuzzer controls) and `open_push` (with forged and with valid signatures).
//!
//! Oracles besides "no panic": whatever parses survives `to_xml` and a second parse unchanged,
//! and a forged msg_signature is always refused.

#![no_main]

use std::sync::LazyLock;

use aes::Aes256;
use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use cbc::cipher::generic_array::GenericArray;
use cbc::cipher::{BlockEncryptMut, KeyIvInit};
use libfuzzer_sys::fuzz_target;
use wechat::event::crypto::MsgCrypt;
use wechat::event::xml::{Envelope, Event, MAX_XML_BYTES};
use wechat::event::{EventError, PushParams, open_push};

// wechat-protocol.md §2.1.
const TOKEN: &str = "pamtest";
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const PREVIOUS_KEY: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
const APPID: &str = "wxb11529c136998cb6";
const TIMESTAMP: &str = "1409304348";
const NONCE: &str = "1320562132";

static CRYPT: LazyLock<MsgCrypt> = LazyLock::new(|| {
    MsgCrypt::new(TOKEN, KEY, APPID)
        .and_then(|c| c.with_previous_key(PREVIOUS_KEY))
        .expect("fixed test key is valid")
});

/// The raw AES key, so the target can produce ciphertexts whose plaintext is the fuzz input.
static RAW_KEY: LazyLock<[u8; 32]> = LazyLock::new(|| {
    let lenient = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    lenient
        .decode(format!("{KEY}="))
        .expect("key decodes")
        .try_into()
        .expect("32 bytes")
});

fn signed_params(encrypt: &str) -> PushParams {
    PushParams {
        signature: CRYPT.signature(TIMESTAMP, NONCE),
        timestamp: TIMESTAMP.into(),
        nonce: NONCE.into(),
        encrypt_type: Some("aes".into()),
        msg_signature: CRYPT.msg_signature(TIMESTAMP, NONCE, encrypt),
    }
}

fn check_event_round_trip(event: &Event) {
    let xml = event.to_xml();
    if xml.len() <= MAX_XML_BYTES {
        assert_eq!(Event::parse(&xml).as_ref(), Ok(event), "event round trip");
    }
}

/// AES-256-CBC with the fixed key over `data` zero-padded to 16 bytes, base64: the decrypted
/// bytes seen by `MsgCrypt::decrypt` are exactly the (padded) input.
fn encrypt_raw(data: &[u8]) -> String {
    let mut buf = data.to_vec();
    buf.resize(data.len().div_ceil(16) * 16, 0);
    let key = GenericArray::from(*RAW_KEY);
    let iv = GenericArray::clone_from_slice(&RAW_KEY[..16]);
    let mut enc = cbc::Encryptor::<Aes256>::new(&key, &iv);
    for block in buf.chunks_exact_mut(16) {
        enc.encrypt_block_mut(GenericArray::from_mut_slice(block));
    }
    STANDARD.encode(buf)
}

fn open_signed(encrypt: &str) {
    let envelope = Envelope {
        app_id: Some(APPID.into()),
        to_user_name: None,
        encrypt: encrypt.to_owned(),
    };
    if let Ok(event) = open_push(&CRYPT, &signed_params(encrypt), &envelope) {
        check_event_round_trip(&event);
    }
}

fuzz_target!(|data: &[u8]| {
    // 1. The body as a push envelope.
    if let Ok(envelope) = Envelope::parse(data) {
        let xml = envelope.to_xml();
        if xml.len() <= MAX_XML_BYTES {
            assert_eq!(Envelope::parse(xml.as_bytes()).as_ref(), Ok(&envelope));
        }
        let mut forged = signed_params(&envelope.encrypt);
        forged.msg_signature = "0000000000000000000000000000000000000000".into();
        let result = open_push(&CRYPT, &forged, &envelope);
        assert!(
            matches!(
                result,
                Err(EventError::BadSignature
                    | EventError::TooLarge { .. }
                    | EventError::ComponentMismatch)
            ),
            "forged signature accepted: {result:?}"
        );
        if envelope.app_id.as_deref().is_none_or(|a| a == APPID) {
            let _ = open_push(&CRYPT, &signed_params(&envelope.encrypt), &envelope);
        }
    }

    // 2. The bytes as decrypted event XML.
    let text = String::from_utf8_lossy(data);
    if let Ok(event) = Event::parse(&text) {
        check_event_round_trip(&event);
    }

    // 3. The bytes as Encrypt text, signed so open_push gets past verification.
    if let Ok(msg) = CRYPT.decrypt(&text) {
        let _ = Event::parse(&msg);
    }
    open_signed(&text);

    // 4. The bytes as the decrypted plaintext frame (random ‖ len ‖ msg ‖ appid ‖ pad).
    let encrypt = encrypt_raw(data);
    if let Ok(msg) = CRYPT.decrypt(&encrypt) {
        if let Ok(event) = Event::parse(&msg) {
            check_event_round_trip(&event);
        }
    }
    open_signed(&encrypt);
});
