//! The push half of `wechat::event` through its public API: fixture pushes (wechat-protocol.md
//! §2.1 vector 3 and §1 event shapes) and property tests for crypto and XML round trips.

use std::path::PathBuf;

use proptest::prelude::*;
use wechat::event::crypto::{CryptoError, MsgCrypt};
use wechat::event::xml::{
    AuthorizationEvent, Envelope, Event, OtherEvent, TicketEvent, UnauthorizedEvent,
};
use wechat::event::{EventError, MAX_PUSH_BYTES, PushParams, open_push, seal_push};

const TOKEN: &str = "pamtest";
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const APPID: &str = "wxb11529c136998cb6";

fn fixture(name: &str) -> Vec<u8> {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests/fixtures/event", name]
        .iter()
        .collect();
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture_str(name: &str) -> String {
    String::from_utf8(fixture(name)).unwrap()
}

fn crypt() -> MsgCrypt {
    MsgCrypt::new(TOKEN, KEY, APPID).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Fixtures

#[test]
fn fixture_ticket_push_opens_to_component_verify_ticket() {
    let params: PushParams = serde_json::from_slice(&fixture("ticket_push_params.json")).unwrap();
    let envelope = Envelope::parse(&fixture("ticket_push_body.xml")).unwrap();
    assert_eq!(envelope.app_id.as_deref(), Some(APPID));
    let event = open_push(&crypt(), &params, &envelope).unwrap();
    assert_eq!(
        event,
        Event::ComponentVerifyTicket(TicketEvent {
            app_id: APPID.into(),
            create_time: 1409304348,
            component_verify_ticket: "ticket@@@TESTTICKET".into(),
        })
    );
    assert_eq!(event.to_xml(), fixture_str("ticket_plaintext.xml"));
    assert!(crypt().verify_signature(&params.timestamp, &params.nonce, &params.signature));
}

#[test]
fn fixture_ticket_push_body_decrypts_to_the_225_byte_plaintext() {
    let envelope = Envelope::parse(&fixture("ticket_push_body.xml")).unwrap();
    let plaintext = crypt().decrypt(&envelope.encrypt).unwrap();
    assert_eq!(plaintext.len(), 225);
    assert_eq!(plaintext, fixture_str("ticket_plaintext.xml"));
}

#[test]
fn fixture_ticket_push_with_one_changed_query_parameter_is_rejected() {
    let params: PushParams = serde_json::from_slice(&fixture("ticket_push_params.json")).unwrap();
    let envelope = Envelope::parse(&fixture("ticket_push_body.xml")).unwrap();
    let mut tampered = params.clone();
    tampered.timestamp = "1409304349".into();
    assert_eq!(
        open_push(&crypt(), &tampered, &envelope),
        Err(EventError::BadSignature)
    );
    let mut tampered = params;
    tampered.nonce = "1320562133".into();
    assert_eq!(
        open_push(&crypt(), &tampered, &envelope),
        Err(EventError::BadSignature)
    );
}

#[test]
fn fixture_authorized_event_parses() {
    let event = Event::parse(&fixture_str("authorized_plaintext.xml")).unwrap();
    assert_eq!(
        event,
        Event::Authorized(AuthorizationEvent {
            app_id: APPID.into(),
            create_time: 1413192760,
            authorizer_appid: "wx570bc396a51b8ff8".into(),
            authorization_code: "queryauthcode@@@Xxx".into(),
            authorization_code_expired_time: 1413196360,
            pre_auth_code: Some("preauthcode@@@Xxx".into()),
        })
    );
}

#[test]
fn fixture_unauthorized_event_parses() {
    let event = Event::parse(&fixture_str("unauthorized_plaintext.xml")).unwrap();
    assert_eq!(
        event,
        Event::Unauthorized(UnauthorizedEvent {
            app_id: APPID.into(),
            create_time: 1413192760,
            authorizer_appid: "wx570bc396a51b8ff8".into(),
        })
    );
}

#[test]
fn fixture_fast_registration_event_is_kept_as_other_with_flattened_info() {
    let event = Event::parse(&fixture_str("notify_third_fasteregister_plaintext.xml")).unwrap();
    let Event::Other(other) = &event else {
        panic!("expected Event::Other, got {event:?}")
    };
    assert_eq!(other.info_type, "notify_third_fasteregister");
    assert_eq!(other.app_id.as_deref(), Some(APPID));
    assert_eq!(other.create_time, Some(1535442403));
    let get = |k: &str| {
        other
            .fields
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("auth_code"), Some("xxxxx"));
    assert_eq!(get("status"), Some("0"));
    assert_eq!(get("info/name"), Some("示例公司"));
    assert_eq!(get("info/legal_persona_name"), Some("张三"));
    assert_eq!(other.fields.len(), 10);
    assert_eq!(Event::parse(&event.to_xml()).unwrap(), event);
}

#[test]
fn every_fixture_event_survives_seal_and_open() {
    let c = crypt();
    for name in [
        "ticket_plaintext.xml",
        "authorized_plaintext.xml",
        "unauthorized_plaintext.xml",
        "notify_third_fasteregister_plaintext.xml",
    ] {
        let event = Event::parse(&fixture_str(name)).unwrap();
        let (params, body) = seal_push(&c, &event, 1700000000, "123456");
        let envelope = Envelope::parse(body.as_bytes()).unwrap();
        assert_eq!(open_push(&c, &params, &envelope).unwrap(), event, "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Size caps

#[test]
fn envelope_over_max_push_bytes_is_refused() {
    let body = format!(
        "<xml><Encrypt>{}</Encrypt></xml>",
        "A".repeat(MAX_PUSH_BYTES)
    );
    assert!(matches!(
        Envelope::parse(body.as_bytes()),
        Err(wechat::event::XmlError::TooLarge { .. })
    ));
}

#[test]
fn envelope_just_under_max_push_bytes_is_parsed_and_then_fails_signature() {
    let filler = "A".repeat(MAX_PUSH_BYTES - 100);
    let body = format!("<xml><AppId>{APPID}</AppId><Encrypt>{filler}</Encrypt></xml>");
    let envelope = Envelope::parse(body.as_bytes()).unwrap();
    let params = PushParams {
        signature: String::new(),
        timestamp: "1".into(),
        nonce: "1".into(),
        encrypt_type: Some("aes".into()),
        msg_signature: "forged".into(),
    };
    assert_eq!(
        open_push(&crypt(), &params, &envelope),
        Err(EventError::BadSignature)
    );
}

// ---------------------------------------------------------------------------------------------
// Properties

fn encoding_aes_key() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{43}"
}

fn appid() -> impl Strategy<Value = String> {
    prop_oneof!["wx[0-9a-f]{16}", any::<String>(), Just(String::new()),]
}

/// Arbitrary UTF-8, including empty and multi-KB messages.
fn message() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        any::<String>(),
        prop::collection::vec(any::<char>(), 0..6000).prop_map(String::from_iter),
        "[ -~]{2000,9000}",
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,40}",
        // Strings that stress CDATA handling.
        prop::collection::vec(
            prop_oneof![
                Just("]]>"),
                Just("]]"),
                Just("<![CDATA["),
                Just("\r\n"),
                Just("&amp;"),
                Just(" ")
            ],
            0..6
        )
        .prop_map(|parts| parts.concat()),
    ]
}

fn authorization_event() -> impl Strategy<Value = AuthorizationEvent> {
    (
        text(),
        any::<i64>(),
        text(),
        text(),
        any::<i64>(),
        prop::option::of(text()),
    )
        .prop_map(
            |(
                app_id,
                create_time,
                authorizer_appid,
                authorization_code,
                expired,
                pre_auth_code,
            )| {
                AuthorizationEvent {
                    app_id,
                    create_time,
                    authorizer_appid,
                    authorization_code,
                    authorization_code_expired_time: expired,
                    pre_auth_code,
                }
            },
        )
}

/// A flattened field path: 1 to 3 XML names, never a top-level AppId/CreateTime/InfoType.
fn field_path() -> impl Strategy<Value = String> {
    prop::collection::vec("[A-Za-z_:][A-Za-z0-9_.:-]{0,6}", 1..=3)
        .prop_map(|segments| segments.join("/"))
        .prop_filter("reserved top-level name", |p| {
            !matches!(p.as_str(), "AppId" | "CreateTime" | "InfoType")
        })
}

fn other_event() -> impl Strategy<Value = OtherEvent> {
    (
        prop::option::of(text()),
        prop::option::of(any::<i64>()),
        text().prop_filter("modelled InfoType", |t| {
            !matches!(
                t.as_str(),
                "component_verify_ticket" | "authorized" | "updateauthorized" | "unauthorized"
            )
        }),
        prop::collection::vec(
            (
                prop_oneof![
                    field_path(),
                    Just("AppId/nested".to_owned()),
                    Just("info/name".to_owned())
                ],
                text(),
            ),
            0..8,
        ),
    )
        .prop_map(|(app_id, create_time, info_type, fields)| OtherEvent {
            app_id,
            create_time,
            info_type,
            fields,
        })
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (text(), any::<i64>(), text()).prop_map(|(app_id, create_time, ticket)| {
            Event::ComponentVerifyTicket(TicketEvent {
                app_id,
                create_time,
                component_verify_ticket: ticket,
            })
        }),
        authorization_event().prop_map(Event::Authorized),
        authorization_event().prop_map(Event::UpdateAuthorized),
        (text(), any::<i64>(), text()).prop_map(|(app_id, create_time, authorizer_appid)| {
            Event::Unauthorized(UnauthorizedEvent {
                app_id,
                create_time,
                authorizer_appid,
            })
        }),
        other_event().prop_map(Event::Other),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decrypt_inverts_encrypt(key in encoding_aes_key(), appid in appid(), token in "[A-Za-z0-9]{3,32}", msg in message()) {
        let c = MsgCrypt::new(&token, &key, &appid).unwrap();
        let encrypted = c.encrypt(&msg);
        prop_assert_eq!(c.decrypt(&encrypted).unwrap(), msg);
    }

    #[test]
    fn decrypt_inverts_encrypt_with_fixed_prefix(key in encoding_aes_key(), appid in appid(), msg in message(), prefix in any::<[u8; 16]>()) {
        let c = MsgCrypt::new("t", &key, &appid).unwrap();
        let encrypted = c.encrypt_with_prefix(&msg, &prefix);
        prop_assert_eq!(encrypted.len() % 4, 0);
        prop_assert_eq!(c.decrypt(&encrypted).unwrap(), msg);
    }

    #[test]
    fn decrypt_falls_back_to_previous_key(old in encoding_aes_key(), new in encoding_aes_key(), appid in appid(), msg in message()) {
        prop_assume!(old != new);
        let before = MsgCrypt::new("t", &old, &appid).unwrap();
        let after = MsgCrypt::new("t", &new, &appid).unwrap().with_previous_key(&old).unwrap();
        let in_flight = before.encrypt(&msg);
        prop_assert_eq!(after.decrypt(&in_flight).unwrap(), msg.clone());
        let fresh = after.encrypt(&msg);
        prop_assert_eq!(after.decrypt(&fresh).unwrap(), msg);
    }

    #[test]
    fn decrypt_with_wrong_key_fails_with_typed_error(a in encoding_aes_key(), b in encoding_aes_key(), appid in appid(), msg in message()) {
        prop_assume!(a != b);
        let right = MsgCrypt::new("t", &a, &appid).unwrap();
        let wrong = MsgCrypt::new("t", &b, &appid).unwrap();
        let err = wrong.decrypt(&right.encrypt(&msg)).unwrap_err();
        prop_assert!(matches!(err, CryptoError::Padding | CryptoError::LengthPrefix | CryptoError::AppidMismatch | CryptoError::Utf8), "{:?}", err);
    }

    #[test]
    fn decrypt_never_panics_on_arbitrary_text(input in any::<String>()) {
        let _ = crypt().decrypt(&input);
    }

    #[test]
    fn decrypt_never_panics_on_arbitrary_ciphertext(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let _ = crypt().decrypt(&encoded);
    }

    #[test]
    fn new_accepts_only_43_alphanumeric_characters(key in any::<String>()) {
        let valid = key.len() == 43 && key.bytes().all(|b| b.is_ascii_alphanumeric());
        prop_assert_eq!(MsgCrypt::new("t", &key, "a").is_ok(), valid);
    }

    #[test]
    fn event_parse_inverts_to_xml(e in event()) {
        let xml = e.to_xml();
        prop_assert_eq!(Event::parse(&xml).unwrap(), e);
    }

    #[test]
    fn open_push_inverts_seal_push(e in event(), key in encoding_aes_key(), token in "[A-Za-z0-9]{3,32}", ts in any::<i64>(), nonce in "[0-9]{1,10}") {
        let c = MsgCrypt::new(&token, &key, APPID).unwrap();
        let (params, body) = seal_push(&c, &e, ts, &nonce);
        let envelope = Envelope::parse(body.as_bytes()).unwrap();
        prop_assert_eq!(open_push(&c, &params, &envelope).unwrap(), e);
    }

    #[test]
    fn envelope_parse_inverts_to_xml(app_id in prop::option::of(text()), to_user_name in prop::option::of(text()), encrypt in text()) {
        let env = Envelope { app_id, to_user_name, encrypt };
        prop_assert_eq!(Envelope::parse(env.to_xml().as_bytes()).unwrap(), env);
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_input(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = Envelope::parse(&bytes);
        if let Ok(e) = Event::parse(&String::from_utf8_lossy(&bytes)) {
            prop_assert_eq!(Event::parse(&e.to_xml()).unwrap(), e);
        }
    }

    #[test]
    fn event_parse_is_stable_on_mutated_events(e in event(), cut in any::<prop::sample::Index>(), insert in "[<>&/!\\[\\]a-z]{0,4}") {
        // Splice junk into a valid document: any outcome is fine except a panic, and whatever
        // parses must survive a second round trip.
        let xml = e.to_xml();
        let mut at = cut.index(xml.len() + 1);
        while !xml.is_char_boundary(at) { at -= 1; }
        let mutated = format!("{}{}{}", &xml[..at], insert, &xml[at..]);
        if let Ok(parsed) = Event::parse(&mutated) {
            prop_assert_eq!(Event::parse(&parsed.to_xml()).unwrap(), parsed);
        }
    }
}
