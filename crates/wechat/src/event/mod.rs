//! Pushes to the authorization-event URL: the XML envelope and events, and their crypto
//! (wechat-protocol.md §1 and §2).
//!
//! Server flow: [`Envelope::parse`] the body (size-capped), pick the component by
//! `envelope.app_id`, then [`open_push`] verifies `msg_signature`, decrypts and parses the event.
//! The simulator goes the other way with [`seal_push`].
//!
//! Depends only on `crypto` and `xml` below it. Invariants: nothing here panics on any input;
//! errors never carry the Token, keys or decrypted plaintext; `msg_signature` is checked (in
//! constant time) before any decryption is attempted.

pub mod crypto;
pub mod xml;

pub use crypto::{CryptoError, MsgCrypt};
pub use xml::{
    AuthorizationEvent, Envelope, Event, OtherEvent, TicketEvent, UnauthorizedEvent, XmlError,
};

/// Largest push body accepted (64 KiB); larger bodies are refused before parsing. Real pushes
/// are well under 2 KiB.
pub const MAX_PUSH_BYTES: usize = 64 * 1024;

/// The only `encrypt_type` third-party platform pushes use.
pub const ENCRYPT_TYPE_AES: &str = "aes";

/// The query parameters of a push (`POST <event url>?signature=..&timestamp=..&nonce=..&encrypt_type=aes&msg_signature=..`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PushParams {
    pub signature: String,
    pub timestamp: String,
    pub nonce: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypt_type: Option<String>,
    pub msg_signature: String,
}

/// Why a push could not be opened. Never carries secrets or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("push is {len} bytes, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("push XML: {0}")]
    Xml(#[from] XmlError),
    #[error("msg_signature does not match")]
    BadSignature,
    #[error("unsupported encrypt_type (only \"aes\" is accepted)")]
    UnsupportedEncryptType,
    #[error("envelope AppId is not this component's appid")]
    ComponentMismatch,
    #[error("push crypto: {0}")]
    Crypto(#[from] CryptoError),
}

/// Verifies `msg_signature` over `envelope.encrypt` (constant time), then decrypts, then parses
/// the event.
///
/// Also refuses an `encrypt_type` other than `aes` (absent is accepted) and an envelope `AppId`
/// other than `crypt.appid()` (absent is accepted: message pushes carry `ToUserName` instead).
/// The plain `signature` parameter is not checked: `msg_signature` covers the same inputs plus
/// the ciphertext. No replay window is applied to `timestamp` (none is documented); callers
/// that want one check `params.timestamp` themselves.
pub fn open_push(
    crypt: &MsgCrypt,
    params: &PushParams,
    envelope: &Envelope,
) -> Result<Event, EventError> {
    if envelope.encrypt.len() > MAX_PUSH_BYTES {
        return Err(EventError::TooLarge {
            len: envelope.encrypt.len(),
            max: MAX_PUSH_BYTES,
        });
    }
    if params
        .encrypt_type
        .as_deref()
        .is_some_and(|t| t != ENCRYPT_TYPE_AES)
    {
        return Err(EventError::UnsupportedEncryptType);
    }
    if envelope
        .app_id
        .as_deref()
        .is_some_and(|a| a != crypt.appid())
    {
        return Err(EventError::ComponentMismatch);
    }
    if !crypt.verify_msg_signature(
        &params.timestamp,
        &params.nonce,
        &envelope.encrypt,
        &params.msg_signature,
    ) {
        return Err(EventError::BadSignature);
    }
    let plaintext = crypt.decrypt(&envelope.encrypt)?;
    Ok(Event::parse(&plaintext)?)
}

/// For the simulator: encrypts `event.to_xml()` with a random prefix, builds the
/// `AppId` + `Encrypt` envelope and the signed query parameters. Returns `(params, body)`.
pub fn seal_push(
    crypt: &MsgCrypt,
    event: &Event,
    timestamp: i64,
    nonce: &str,
) -> (PushParams, String) {
    let encrypt = crypt.encrypt(&event.to_xml());
    seal_encrypted(crypt, encrypt, timestamp, nonce)
}

/// [`seal_push`] with a fixed 16-byte random prefix, for reproducible fixtures.
pub fn seal_push_with_prefix(
    crypt: &MsgCrypt,
    event: &Event,
    timestamp: i64,
    nonce: &str,
    prefix: &[u8; 16],
) -> (PushParams, String) {
    let encrypt = crypt.encrypt_with_prefix(&event.to_xml(), prefix);
    seal_encrypted(crypt, encrypt, timestamp, nonce)
}

fn seal_encrypted(
    crypt: &MsgCrypt,
    encrypt: String,
    timestamp: i64,
    nonce: &str,
) -> (PushParams, String) {
    let timestamp = timestamp.to_string();
    let params = PushParams {
        signature: crypt.signature(&timestamp, nonce),
        msg_signature: crypt.msg_signature(&timestamp, nonce, &encrypt),
        timestamp,
        nonce: nonce.to_owned(),
        encrypt_type: Some(ENCRYPT_TYPE_AES.to_owned()),
    };
    let envelope = Envelope {
        app_id: Some(crypt.appid().to_owned()),
        to_user_name: None,
        encrypt,
    };
    (params, envelope.to_xml())
}

#[cfg(test)]
mod tests {
    use super::*;

    // wechat-protocol.md §2.1 vector 3.
    const TOKEN: &str = "pamtest";
    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const APPID: &str = "wxb11529c136998cb6";
    const PREFIX: &[u8; 16] = b"aaaabbbbccccdddd";
    const TIMESTAMP: i64 = 1409304348;
    const NONCE: &str = "1320562132";
    const V3_ENCRYPT: &str = "jn1L23DB+6ELqJ+6bruv25KMzfZCJby+Bs65SdTY74Zi57RlcWWeXg5BEb+dZr9vMhDjYE/aUgPqYvFPogFPPiqqLQ19N+9dzM7u8Pt1J6xNbpodRm4KzFYeD1elqJfXJ/4KoagL48vB1QWX7Jsr8b4oAQLJvrRp84GrgGZ/88tky8uIwcDyz0AzXGwrUuLOBreihA7hgMLhMYwn1JoJXirCjQcb7zQ8P5kjHOacDYy0yzxlAGtlMFx5xU7IYAupPeBg0OusOqWjDjviylx02JR5fRQGfgGmTmsydgYtVconcjfjviQrDlg1DkKzBh/aVjSRsy+pAaKP8rDxF8ZRl2JJTWPBZuSbOCCL26Gwrp55JME3/HkIHvwcUIcllDpl";
    const V3_SIGNATURE: &str = "7918aa3d6b00701d81b4a8e5490fe4811ac91dfa";
    const V3_MSG_SIGNATURE: &str = "c72a831d9283dead73fedca6d99642c32da5d7cd";

    fn crypt() -> MsgCrypt {
        MsgCrypt::new(TOKEN, KEY, APPID).unwrap()
    }

    fn ticket() -> Event {
        Event::ComponentVerifyTicket(TicketEvent {
            app_id: APPID.into(),
            create_time: TIMESTAMP,
            component_verify_ticket: "ticket@@@TESTTICKET".into(),
        })
    }

    fn v3_params() -> PushParams {
        PushParams {
            signature: V3_SIGNATURE.into(),
            timestamp: TIMESTAMP.to_string(),
            nonce: NONCE.into(),
            encrypt_type: Some("aes".into()),
            msg_signature: V3_MSG_SIGNATURE.into(),
        }
    }

    fn v3_envelope() -> Envelope {
        Envelope {
            app_id: Some(APPID.into()),
            to_user_name: None,
            encrypt: V3_ENCRYPT.into(),
        }
    }

    #[test]
    fn vector3_seal_push_matches_known_answer() {
        let (params, body) = seal_push_with_prefix(&crypt(), &ticket(), TIMESTAMP, NONCE, PREFIX);
        assert_eq!(params, v3_params());
        assert_eq!(body, v3_envelope().to_xml());
        assert_eq!(
            Envelope::parse(body.as_bytes()).unwrap().encrypt,
            V3_ENCRYPT
        );
    }

    #[test]
    fn vector3_open_push_returns_ticket_event() {
        let event = open_push(&crypt(), &v3_params(), &v3_envelope()).unwrap();
        assert_eq!(event, ticket());
        let Event::ComponentVerifyTicket(t) = event else {
            panic!("expected a ticket event")
        };
        assert_eq!(t.component_verify_ticket, "ticket@@@TESTTICKET");
    }

    #[test]
    fn open_push_rejects_forged_msg_signature() {
        let mut params = v3_params();
        params.msg_signature = "0000000000000000000000000000000000000000".into();
        assert_eq!(
            open_push(&crypt(), &params, &v3_envelope()),
            Err(EventError::BadSignature)
        );
        // The valid plain `signature` in its place does not pass either.
        params.msg_signature = V3_SIGNATURE.into();
        assert_eq!(
            open_push(&crypt(), &params, &v3_envelope()),
            Err(EventError::BadSignature)
        );
    }

    #[test]
    fn open_push_rejects_tampered_ciphertext_before_decrypting() {
        let mut envelope = v3_envelope();
        envelope.encrypt = envelope.encrypt.replacen('j', "k", 1);
        assert_eq!(
            open_push(&crypt(), &v3_params(), &envelope),
            Err(EventError::BadSignature)
        );
        // Garbage that is not even base64 is also a signature failure, not a crypto error.
        envelope.encrypt = "!!!".into();
        assert_eq!(
            open_push(&crypt(), &v3_params(), &envelope),
            Err(EventError::BadSignature)
        );
    }

    #[test]
    fn open_push_rejects_wrong_token() {
        let other = MsgCrypt::new("othertoken", KEY, APPID).unwrap();
        assert_eq!(
            open_push(&other, &v3_params(), &v3_envelope()),
            Err(EventError::BadSignature)
        );
    }

    #[test]
    fn open_push_rejects_other_components_envelope() {
        let mut envelope = v3_envelope();
        envelope.app_id = Some("wxsomeoneelse".into());
        assert_eq!(
            open_push(&crypt(), &v3_params(), &envelope),
            Err(EventError::ComponentMismatch)
        );
    }

    #[test]
    fn open_push_accepts_envelope_without_app_id_and_params_without_encrypt_type() {
        let mut envelope = v3_envelope();
        envelope.app_id = None;
        envelope.to_user_name = Some("gh_123".into());
        let mut params = v3_params();
        params.encrypt_type = None;
        assert_eq!(open_push(&crypt(), &params, &envelope), Ok(ticket()));
    }

    #[test]
    fn open_push_rejects_unsupported_encrypt_type() {
        let mut params = v3_params();
        params.encrypt_type = Some("raw".into());
        assert_eq!(
            open_push(&crypt(), &params, &v3_envelope()),
            Err(EventError::UnsupportedEncryptType)
        );
    }

    #[test]
    fn open_push_rejects_multi_megabyte_encrypt() {
        let mut envelope = v3_envelope();
        envelope.encrypt = "A".repeat(4 << 20);
        assert_eq!(
            open_push(&crypt(), &v3_params(), &envelope),
            Err(EventError::TooLarge {
                len: 4 << 20,
                max: MAX_PUSH_BYTES
            })
        );
    }

    #[test]
    fn open_push_reports_crypto_error_for_signed_garbage() {
        let mut envelope = v3_envelope();
        envelope.encrypt = "QUJD".into(); // "ABC": 3 bytes
        let (ts, nonce) = ("1", "2");
        let params = PushParams {
            signature: crypt().signature(ts, nonce),
            timestamp: ts.into(),
            nonce: nonce.into(),
            encrypt_type: Some("aes".into()),
            msg_signature: crypt().msg_signature(ts, nonce, "QUJD"),
        };
        assert_eq!(
            open_push(&crypt(), &params, &envelope),
            Err(EventError::Crypto(CryptoError::BlockLength { len: 3 }))
        );
    }

    #[test]
    fn open_push_reports_xml_error_for_signed_non_event() {
        let encrypt = crypt().encrypt("<xml><AppId>x</AppId></xml>");
        let envelope = Envelope {
            app_id: Some(APPID.into()),
            to_user_name: None,
            encrypt: encrypt.clone(),
        };
        let params = PushParams {
            signature: String::new(),
            timestamp: "1".into(),
            nonce: "2".into(),
            encrypt_type: None,
            msg_signature: crypt().msg_signature("1", "2", &encrypt),
        };
        assert_eq!(
            open_push(&crypt(), &params, &envelope),
            Err(EventError::Xml(XmlError::MissingField("InfoType")))
        );
    }

    #[test]
    fn seal_push_then_open_push_round_trips_with_random_prefix() {
        let c = crypt();
        let (params, body) = seal_push(&c, &ticket(), 1700000000, "42");
        assert_eq!(params.timestamp, "1700000000");
        assert!(c.verify_signature(&params.timestamp, &params.nonce, &params.signature));
        let envelope = Envelope::parse(body.as_bytes()).unwrap();
        assert_eq!(open_push(&c, &params, &envelope), Ok(ticket()));
    }

    #[test]
    fn push_params_serialise_as_query_fields() {
        let json = serde_json::to_value(v3_params()).unwrap();
        assert_eq!(json["msg_signature"], V3_MSG_SIGNATURE);
        assert_eq!(json["encrypt_type"], "aes");
        let mut params = v3_params();
        params.encrypt_type = None;
        let json = serde_json::to_string(&params).unwrap();
        assert!(!json.contains("encrypt_type"));
        let back: PushParams = serde_json::from_str(&json).unwrap();
        assert_eq!(back, params);
    }
}
