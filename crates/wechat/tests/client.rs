//! client: WechatClient against an axum server on 127.0.0.1:0 serving the wire fixtures. Asserts
//! what the client sent (method, path, query, body), how each failure is reported and classified,
//! and that no token or secret reaches an error text or a tracing record.

mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use url::Url;
use wechat::client::{ClientConfig, WechatClient, WechatError};
use wechat::errcode::ErrorClass;
use wechat::wire::{Endpoint, TicketKind};

use common::fixture;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Recorded {
    method: Method,
    path: String,
    query: Option<String>,
    body: Vec<u8>,
}

impl Recorded {
    fn query_pairs(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.query.as_deref().unwrap_or("").as_bytes())
            .into_owned()
            .collect()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }

    fn assert_sent(&self, endpoint: Endpoint, query: &[(&str, &str)]) {
        assert_eq!(
            self.method.as_str(),
            endpoint.method().as_str(),
            "{endpoint} method"
        );
        assert_eq!(self.path, endpoint.path(), "{endpoint} path");
        let expected: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(self.query_pairs(), expected, "{endpoint} query");
    }
}

type Responder = Arc<dyn Fn(&Recorded) -> (u16, Vec<u8>) + Send + Sync>;

#[derive(Clone)]
struct MockState {
    responder: Responder,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

struct Mock {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

async fn record_and_reply(
    State(state): State<MockState>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let recorded = Recorded {
        method,
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        body: body.to_vec(),
    };
    let (status, reply) = (state.responder)(&recorded);
    state.requests.lock().unwrap().push(recorded);
    let status = StatusCode::from_u16(status).unwrap();
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json; encoding=utf-8")],
        reply,
    )
        .into_response();
    if status.is_redirection() {
        response
            .headers_mut()
            .insert(header::LOCATION, "/elsewhere".parse().unwrap());
    }
    response
}

impl Mock {
    /// Binds 127.0.0.1:0 first, then serves: the port is ready before the first request.
    async fn start(
        responder: impl Fn(&Recorded) -> (u16, Vec<u8>) + Send + Sync + 'static,
    ) -> Mock {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = MockState {
            responder: Arc::new(responder),
            requests: requests.clone(),
        };
        let app = Router::new().fallback(record_and_reply).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Mock { addr, requests }
    }

    /// Answers every request with HTTP 200 and the given fixture.
    async fn replying(endpoint: Endpoint, case: &str) -> Mock {
        let body = fixture(endpoint, case);
        Mock::start(move |_| (200, body.clone())).await
    }

    fn base_url(&self) -> Url {
        Url::parse(&format!("http://{}/", self.addr)).unwrap()
    }

    fn client(&self) -> WechatClient {
        client_for(self.base_url(), Duration::from_secs(5))
    }

    fn only_request(&self) -> Recorded {
        let requests = self.requests.lock().unwrap();
        assert_eq!(requests.len(), 1, "{requests:?}");
        requests[0].clone()
    }
}

fn client_for(base_url: Url, timeout: Duration) -> WechatClient {
    WechatClient::new(ClientConfig {
        base_url,
        timeout,
        connect_timeout: Duration::from_secs(2),
    })
    .unwrap()
}

// Values shaped like WeChat's; the secrets contain characters that change under form encoding.
const COMPONENT_APPID: &str = "wx1c2e3f4a5b6c7d8e";
const AUTHORIZER_APPID: &str = "wxf8b4f85f3a794e77";
const APPSECRET: &str = "f1c2d3e4+SECRET/a9b8=c7d6e5f4";
const COMPONENT_TOKEN: &str = "69_COMPONENTTOKEN-hgAOc2kX+Zr/8wPq0mVbN1s";
const ACCESS_TOKEN: &str = "69_ACCESSTOKEN-Yk3vZ7pQ0aLr9cT2dXw5";
const REFRESH_TOKEN: &str = "refreshtoken@@@REFRESH-Qw8Ue2+Rt/yI0o";
const TICKET: &str = "ticket@@@TICKET-9vR2kPz+Lm/W4xQ";
const AUTH_CODE: &str = "queryauthcode@@@AUTHCODE-mN3bV5+cX/7zA";

const ALL_SECRETS: &[&str] = &[
    APPSECRET,
    COMPONENT_TOKEN,
    ACCESS_TOKEN,
    REFRESH_TOKEN,
    TICKET,
    AUTH_CODE,
];

/// Display, Debug and pretty Debug of `err` (and its sources) contain none of the secrets, raw
/// or form-encoded.
fn assert_no_secret(err: &WechatError) {
    let mut texts = vec![err.to_string(), format!("{err:?}"), format!("{err:#?}")];
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        texts.push(cause.to_string());
        source = cause.source();
    }
    for text in texts {
        for secret in ALL_SECRETS {
            let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
            assert!(
                !text.contains(secret) && !text.contains(&encoded),
                "secret leaked into: {text}"
            );
        }
        for marker in ["SECRET", "TOKEN-", "REFRESH-", "TICKET-", "AUTHCODE-"] {
            assert!(
                !text.contains(marker),
                "secret fragment {marker} leaked into: {text}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What each method sends
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn start_push_ticket_posts_component_secret_with_no_token_in_the_url() {
    let mock = Mock::replying(Endpoint::StartPushTicket, "ok_in_a_normal_state").await;
    let r = mock
        .client()
        .start_push_ticket(COMPONENT_APPID, APPSECRET)
        .await
        .unwrap();
    assert_eq!(r.errmsg, "in a normal state");
    let req = mock.only_request();
    req.assert_sent(Endpoint::StartPushTicket, &[]);
    assert_eq!(
        req.json(),
        json!({"component_appid": COMPONENT_APPID, "component_secret": APPSECRET})
    );
}

#[tokio::test]
async fn component_token_posts_appid_appsecret_and_ticket() {
    let mock = Mock::replying(Endpoint::ComponentToken, "ok").await;
    let r = mock
        .client()
        .component_token(COMPONENT_APPID, APPSECRET, TICKET)
        .await
        .unwrap();
    assert_eq!(r.expires_in, 7200);
    let req = mock.only_request();
    req.assert_sent(Endpoint::ComponentToken, &[]);
    assert_eq!(
        req.json(),
        json!({"component_appid": COMPONENT_APPID, "component_appsecret": APPSECRET, "component_verify_ticket": TICKET})
    );
}

#[tokio::test]
async fn create_preauthcode_passes_the_component_token_as_component_access_token() {
    let mock = Mock::replying(Endpoint::CreatePreauthcode, "ok").await;
    let r = mock
        .client()
        .create_preauthcode(COMPONENT_TOKEN, COMPONENT_APPID)
        .await
        .unwrap();
    assert!(r.pre_auth_code.starts_with("preauthcode@@@"));
    let req = mock.only_request();
    req.assert_sent(
        Endpoint::CreatePreauthcode,
        &[("component_access_token", COMPONENT_TOKEN)],
    );
    assert_eq!(req.json(), json!({"component_appid": COMPONENT_APPID}));
}

#[tokio::test]
async fn query_auth_posts_the_authorization_code() {
    let mock = Mock::replying(Endpoint::QueryAuth, "ok").await;
    let r = mock
        .client()
        .query_auth(COMPONENT_TOKEN, COMPONENT_APPID, AUTH_CODE)
        .await
        .unwrap();
    assert_eq!(r.authorization_info.authorizer_appid, AUTHORIZER_APPID);
    let req = mock.only_request();
    req.assert_sent(
        Endpoint::QueryAuth,
        &[("component_access_token", COMPONENT_TOKEN)],
    );
    assert_eq!(
        req.json(),
        json!({"component_appid": COMPONENT_APPID, "authorization_code": AUTH_CODE})
    );
}

#[tokio::test]
async fn authorizer_token_posts_the_refresh_token_and_returns_the_new_token() {
    let mock = Mock::replying(Endpoint::AuthorizerToken, "ok").await;
    let r = mock
        .client()
        .authorizer_token(
            COMPONENT_TOKEN,
            COMPONENT_APPID,
            AUTHORIZER_APPID,
            REFRESH_TOKEN,
        )
        .await
        .unwrap();
    assert!(r.authorizer_access_token.starts_with("69_"));
    assert!(r.non_empty_refresh_token().is_some());
    let req = mock.only_request();
    req.assert_sent(
        Endpoint::AuthorizerToken,
        &[("component_access_token", COMPONENT_TOKEN)],
    );
    assert_eq!(
        req.json(),
        json!({"component_appid": COMPONENT_APPID, "authorizer_appid": AUTHORIZER_APPID, "authorizer_refresh_token": REFRESH_TOKEN})
    );
}

#[tokio::test]
async fn get_authorizer_list_posts_offset_and_count() {
    let mock = Mock::replying(Endpoint::GetAuthorizerList, "ok").await;
    let r = mock
        .client()
        .get_authorizer_list(COMPONENT_TOKEN, COMPONENT_APPID, 500, 500)
        .await
        .unwrap();
    assert_eq!(r.total_count, 33);
    let req = mock.only_request();
    req.assert_sent(
        Endpoint::GetAuthorizerList,
        &[("component_access_token", COMPONENT_TOKEN)],
    );
    assert_eq!(
        req.json(),
        json!({"component_appid": COMPONENT_APPID, "offset": 500, "count": 500})
    );
}

#[tokio::test]
async fn get_authorizer_info_posts_both_appids() {
    let mock = Mock::replying(Endpoint::GetAuthorizerInfo, "ok_mini_program").await;
    let r = mock
        .client()
        .get_authorizer_info(COMPONENT_TOKEN, COMPONENT_APPID, AUTHORIZER_APPID)
        .await
        .unwrap();
    assert!(r.is_mini_program());
    let req = mock.only_request();
    req.assert_sent(
        Endpoint::GetAuthorizerInfo,
        &[("component_access_token", COMPONENT_TOKEN)],
    );
    assert_eq!(
        req.json(),
        json!({"component_appid": COMPONENT_APPID, "authorizer_appid": AUTHORIZER_APPID})
    );
}

#[tokio::test]
async fn token_gets_with_grant_type_appid_and_secret_in_the_query() {
    let mock = Mock::replying(Endpoint::Token, "ok").await;
    let r = mock
        .client()
        .token(AUTHORIZER_APPID, APPSECRET)
        .await
        .unwrap();
    assert_eq!(r.expires_in, 7200);
    let req = mock.only_request();
    req.assert_sent(
        Endpoint::Token,
        &[
            ("grant_type", "client_credential"),
            ("appid", AUTHORIZER_APPID),
            ("secret", APPSECRET),
        ],
    );
    assert!(req.body.is_empty());
}

#[tokio::test]
async fn stable_token_posts_json_with_explicit_force_refresh() {
    let mock = Mock::replying(Endpoint::StableToken, "ok").await;
    let client = mock.client();
    client
        .stable_token(AUTHORIZER_APPID, APPSECRET, false)
        .await
        .unwrap();
    client
        .stable_token(AUTHORIZER_APPID, APPSECRET, true)
        .await
        .unwrap();
    let requests = mock.requests.lock().unwrap().clone();
    for (req, force) in requests.iter().zip([false, true]) {
        req.assert_sent(Endpoint::StableToken, &[]);
        assert_eq!(
            req.json(),
            json!({"grant_type": "client_credential", "appid": AUTHORIZER_APPID, "secret": APPSECRET, "force_refresh": force})
        );
    }
}

#[tokio::test]
async fn get_ticket_gets_with_access_token_and_type() {
    let mock = Mock::replying(Endpoint::GetTicket, "ok").await;
    let client = mock.client();
    let r = client
        .get_ticket(ACCESS_TOKEN, TicketKind::Jsapi)
        .await
        .unwrap();
    assert_eq!(r.expires_in, 7200);
    client
        .get_ticket(ACCESS_TOKEN, TicketKind::WxCard)
        .await
        .unwrap();
    let requests = mock.requests.lock().unwrap().clone();
    requests[0].assert_sent(
        Endpoint::GetTicket,
        &[("access_token", ACCESS_TOKEN), ("type", "jsapi")],
    );
    requests[1].assert_sent(
        Endpoint::GetTicket,
        &[("access_token", ACCESS_TOKEN), ("type", "wx_card")],
    );
}

#[tokio::test]
async fn clear_quota_posts_appid_with_the_access_token() {
    let mock = Mock::replying(Endpoint::ClearQuota, "ok").await;
    mock.client()
        .clear_quota(ACCESS_TOKEN, AUTHORIZER_APPID)
        .await
        .unwrap();
    let req = mock.only_request();
    req.assert_sent(Endpoint::ClearQuota, &[("access_token", ACCESS_TOKEN)]);
    assert_eq!(req.json(), json!({"appid": AUTHORIZER_APPID}));
}

#[tokio::test]
async fn clear_quota_v2_sends_appid_and_appsecret_in_both_query_and_body() {
    let mock = Mock::replying(Endpoint::ClearQuotaV2, "ok").await;
    mock.client()
        .clear_quota_v2(AUTHORIZER_APPID, APPSECRET)
        .await
        .unwrap();
    let req = mock.only_request();
    req.assert_sent(
        Endpoint::ClearQuotaV2,
        &[("appid", AUTHORIZER_APPID), ("appsecret", APPSECRET)],
    );
    assert_eq!(
        req.json(),
        json!({"appid": AUTHORIZER_APPID, "appsecret": APPSECRET})
    );
}

#[tokio::test]
async fn component_clear_quota_v2_posts_component_appid_appsecret_and_optional_appid() {
    let mock = Mock::replying(Endpoint::ComponentClearQuotaV2, "ok").await;
    let client = mock.client();
    client
        .component_clear_quota_v2(COMPONENT_APPID, APPSECRET, None)
        .await
        .unwrap();
    client
        .component_clear_quota_v2(COMPONENT_APPID, APPSECRET, Some(AUTHORIZER_APPID))
        .await
        .unwrap();
    let requests = mock.requests.lock().unwrap().clone();
    requests[0].assert_sent(Endpoint::ComponentClearQuotaV2, &[]);
    assert_eq!(
        requests[0].json(),
        json!({"component_appid": COMPONENT_APPID, "appsecret": APPSECRET})
    );
    assert_eq!(
        requests[1].json(),
        json!({"component_appid": COMPONENT_APPID, "appsecret": APPSECRET, "appid": AUTHORIZER_APPID})
    );
}

#[tokio::test]
async fn legacy_component_clear_quota_posts_component_appid_with_the_component_token() {
    let mock = Mock::replying(Endpoint::ComponentClearQuota, "ok").await;
    mock.client()
        .component_clear_quota(COMPONENT_TOKEN, COMPONENT_APPID)
        .await
        .unwrap();
    let req = mock.only_request();
    req.assert_sent(
        Endpoint::ComponentClearQuota,
        &[("component_access_token", COMPONENT_TOKEN)],
    );
    assert_eq!(req.json(), json!({"component_appid": COMPONENT_APPID}));
}

#[tokio::test]
async fn quota_get_posts_the_cgi_path() {
    let mock = Mock::replying(Endpoint::QuotaGet, "ok").await;
    let r = mock
        .client()
        .quota_get(COMPONENT_TOKEN, "/cgi-bin/component/api_component_token")
        .await
        .unwrap();
    assert_eq!(r.quota.daily_limit, 10000);
    let req = mock.only_request();
    req.assert_sent(Endpoint::QuotaGet, &[("access_token", COMPONENT_TOKEN)]);
    assert_eq!(
        req.json(),
        json!({"cgi_path": "/cgi-bin/component/api_component_token"})
    );
}

#[tokio::test]
async fn get_callback_ip_gets_with_the_access_token() {
    let mock = Mock::replying(Endpoint::GetCallbackIp, "ok").await;
    let r = mock.client().get_callback_ip(ACCESS_TOKEN).await.unwrap();
    assert_eq!(r.ip_list.len(), 5);
    mock.only_request()
        .assert_sent(Endpoint::GetCallbackIp, &[("access_token", ACCESS_TOKEN)]);
}

#[tokio::test]
async fn a_base_url_path_prefix_is_kept() {
    let mock = Mock::replying(Endpoint::Token, "ok").await;
    let base = Url::parse(&format!("http://{}/wechat-sim/", mock.addr)).unwrap();
    client_for(base, Duration::from_secs(5))
        .token(AUTHORIZER_APPID, APPSECRET)
        .await
        .unwrap();
    assert_eq!(mock.only_request().path, "/wechat-sim/cgi-bin/token");
}

// ---------------------------------------------------------------------------------------------
// Failures and their classes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn errcode_bodies_become_api_errors_classified_for_their_endpoint() {
    struct Case {
        endpoint: Endpoint,
        fixture: &'static str,
        code: i64,
        class: ErrorClass,
    }
    let cases = [
        Case {
            endpoint: Endpoint::Token,
            fixture: "err_40001",
            code: 40001,
            class: ErrorClass::Configuration,
        },
        Case {
            endpoint: Endpoint::GetCallbackIp,
            fixture: "err_40001",
            code: 40001,
            class: ErrorClass::StaleToken,
        },
        Case {
            endpoint: Endpoint::GetCallbackIp,
            fixture: "err_42001",
            code: 42001,
            class: ErrorClass::StaleToken,
        },
        Case {
            endpoint: Endpoint::AuthorizerToken,
            fixture: "err_61023",
            code: 61023,
            class: ErrorClass::Reauthorize,
        },
        Case {
            endpoint: Endpoint::AuthorizerToken,
            fixture: "err_42001",
            code: 42001,
            class: ErrorClass::StaleToken,
        },
        Case {
            endpoint: Endpoint::AuthorizerToken,
            fixture: "err_45009",
            code: 45009,
            class: ErrorClass::Quota,
        },
        Case {
            endpoint: Endpoint::ComponentToken,
            fixture: "err_61006",
            code: 61006,
            class: ErrorClass::Ticket,
        },
        Case {
            endpoint: Endpoint::ComponentToken,
            fixture: "err_40001",
            code: 40001,
            class: ErrorClass::Configuration,
        },
        Case {
            endpoint: Endpoint::QueryAuth,
            fixture: "err_61009",
            code: 61009,
            class: ErrorClass::Configuration,
        },
        Case {
            endpoint: Endpoint::GetTicket,
            fixture: "err_48001",
            code: 48001,
            class: ErrorClass::Permission,
        },
    ];
    for case in cases {
        let mock = Mock::replying(case.endpoint, case.fixture).await;
        let client = mock.client();
        let err = match case.endpoint {
            Endpoint::Token => client.token(AUTHORIZER_APPID, APPSECRET).await.map(drop),
            Endpoint::GetCallbackIp => client.get_callback_ip(ACCESS_TOKEN).await.map(drop),
            Endpoint::AuthorizerToken => client
                .authorizer_token(
                    COMPONENT_TOKEN,
                    COMPONENT_APPID,
                    AUTHORIZER_APPID,
                    REFRESH_TOKEN,
                )
                .await
                .map(drop),
            Endpoint::ComponentToken => client
                .component_token(COMPONENT_APPID, APPSECRET, TICKET)
                .await
                .map(drop),
            Endpoint::QueryAuth => client
                .query_auth(COMPONENT_TOKEN, COMPONENT_APPID, AUTH_CODE)
                .await
                .map(drop),
            Endpoint::GetTicket => client
                .get_ticket(ACCESS_TOKEN, TicketKind::Jsapi)
                .await
                .map(drop),
            other => unreachable!("{other}"),
        }
        .unwrap_err();
        let label = format!("{}/{}", case.endpoint, case.fixture);
        assert!(matches!(err, WechatError::Api { .. }), "{label}: {err:?}");
        assert_eq!(err.errcode(), Some(case.code), "{label}");
        assert_eq!(err.class(), case.class, "{label}");
        assert_eq!(err.endpoint(), Some(case.endpoint), "{label}");
        assert!(
            err.to_string().contains(" rid: "),
            "{label}: errmsg keeps the rid: {err}"
        );
        assert_no_secret(&err);
    }
}

#[tokio::test]
async fn http_500_is_a_transient_http_status_error() {
    let mock = Mock::start(|_| (500, b"<html>Internal Server Error</html>".to_vec())).await;
    let err = mock
        .client()
        .token(AUTHORIZER_APPID, APPSECRET)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WechatError::HttpStatus {
                endpoint: Endpoint::Token,
                status: 500
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.class(), ErrorClass::Transient);
    assert_eq!(err.errcode(), None);
    assert_no_secret(&err);
}

#[tokio::test]
async fn http_404_is_a_configuration_error() {
    let mock = Mock::start(|_| (404, b"not found".to_vec())).await;
    let err = mock
        .client()
        .get_callback_ip(ACCESS_TOKEN)
        .await
        .unwrap_err();
    assert!(
        matches!(err, WechatError::HttpStatus { status: 404, .. }),
        "{err:?}"
    );
    assert_eq!(err.class(), ErrorClass::Configuration);
}

#[tokio::test]
async fn redirects_are_not_followed_so_the_token_is_not_resent() {
    let mock = Mock::start(|_| (302, Vec::new())).await;
    let err = mock
        .client()
        .get_callback_ip(ACCESS_TOKEN)
        .await
        .unwrap_err();
    assert!(
        matches!(err, WechatError::HttpStatus { status: 302, .. }),
        "{err:?}"
    );
    assert_eq!(mock.only_request().path, Endpoint::GetCallbackIp.path());
}

#[tokio::test]
async fn malformed_body_is_a_transient_malformed_error() {
    for body in [
        &b"{\"access_token\":\"69_abc\",\"expi"[..],
        b"<html>gateway</html>",
        b"",
        b"[]",
    ] {
        let owned = body.to_vec();
        let mock = Mock::start(move |_| (200, owned.clone())).await;
        let err = mock
            .client()
            .token(AUTHORIZER_APPID, APPSECRET)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                WechatError::Malformed {
                    endpoint: Endpoint::Token,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.class(), ErrorClass::Transient);
    }
}

#[tokio::test]
async fn oversized_body_is_malformed() {
    let huge = vec![b' '; wechat::client::MAX_RESPONSE_BYTES + 1];
    let mock = Mock::start(move |_| (200, huge.clone())).await;
    let err = mock
        .client()
        .get_callback_ip(ACCESS_TOKEN)
        .await
        .unwrap_err();
    assert!(matches!(err, WechatError::Malformed { .. }), "{err:?}");
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_transient_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let client = client_for(
        Url::parse(&format!("http://{addr}/")).unwrap(),
        Duration::from_millis(200),
    );
    let started = std::time::Instant::now();
    let err = client.token(AUTHORIZER_APPID, APPSECRET).await.unwrap_err();
    assert!(
        matches!(
            err,
            WechatError::Timeout {
                endpoint: Endpoint::Token
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.class(), ErrorClass::Transient);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the 200 ms timeout applied"
    );
    assert_no_secret(&err);
}

#[tokio::test]
async fn a_refused_connection_is_a_transient_network_error() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = client_for(
        Url::parse(&format!("http://{addr}/")).unwrap(),
        Duration::from_secs(5),
    );
    let err = client.token(AUTHORIZER_APPID, APPSECRET).await.unwrap_err();
    assert!(
        matches!(
            err,
            WechatError::Network {
                endpoint: Endpoint::Token,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.class(), ErrorClass::Transient);
    assert_no_secret(&err);
}

// ---------------------------------------------------------------------------------------------
// No secret in any error or log line
// ---------------------------------------------------------------------------------------------

/// A server that echoes the whole request (raw query and body) into errmsg, as a hostile or
/// buggy upstream might.
async fn echoing_mock(code: i64) -> Mock {
    Mock::start(move |req| {
        let echo = format!(
            "echo {} {} {} rid: 61b2c8e7-5746986a-4c6edd06",
            req.path,
            req.query.as_deref().unwrap_or(""),
            String::from_utf8_lossy(&req.body)
        );
        (
            200,
            serde_json::to_vec(&json!({"errcode": code, "errmsg": echo})).unwrap(),
        )
    })
    .await
}

#[tokio::test]
async fn cgi_bin_token_errors_never_contain_the_secret() {
    // Api, with the secret echoed back in errmsg.
    let mock = echoing_mock(40001).await;
    let err = mock
        .client()
        .token(AUTHORIZER_APPID, APPSECRET)
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Configuration);
    assert!(
        err.to_string().contains("***"),
        "the echoed secret was scrubbed: {err}"
    );
    assert_no_secret(&err);

    // Malformed, with the secret in a wrong-typed field.
    let body = serde_json::to_vec(&json!({"access_token": 1, "expires_in": APPSECRET})).unwrap();
    let mock = Mock::start(move |_| (200, body.clone())).await;
    let err = mock
        .client()
        .token(AUTHORIZER_APPID, APPSECRET)
        .await
        .unwrap_err();
    assert!(matches!(err, WechatError::Malformed { .. }), "{err:?}");
    assert_no_secret(&err);

    // HttpStatus.
    let mock = Mock::start(|_| (502, APPSECRET.as_bytes().to_vec())).await;
    let err = mock
        .client()
        .token(AUTHORIZER_APPID, APPSECRET)
        .await
        .unwrap_err();
    assert_no_secret(&err);
    // Timeout and Network are covered by their own tests with the same assertion.
}

#[tokio::test]
async fn errors_of_token_carrying_calls_never_contain_any_token() {
    let mock = echoing_mock(61023).await;
    let client = mock.client();
    let errors = vec![
        client
            .authorizer_token(
                COMPONENT_TOKEN,
                COMPONENT_APPID,
                AUTHORIZER_APPID,
                REFRESH_TOKEN,
            )
            .await
            .unwrap_err(),
        client
            .query_auth(COMPONENT_TOKEN, COMPONENT_APPID, AUTH_CODE)
            .await
            .unwrap_err(),
        client
            .component_token(COMPONENT_APPID, APPSECRET, TICKET)
            .await
            .unwrap_err(),
        client
            .start_push_ticket(COMPONENT_APPID, APPSECRET)
            .await
            .unwrap_err(),
        client
            .stable_token(AUTHORIZER_APPID, APPSECRET, true)
            .await
            .unwrap_err(),
        client.get_callback_ip(ACCESS_TOKEN).await.unwrap_err(),
        client
            .get_ticket(ACCESS_TOKEN, TicketKind::Jsapi)
            .await
            .unwrap_err(),
        client
            .clear_quota_v2(AUTHORIZER_APPID, APPSECRET)
            .await
            .unwrap_err(),
        client
            .component_clear_quota_v2(COMPONENT_APPID, APPSECRET, Some(AUTHORIZER_APPID))
            .await
            .unwrap_err(),
        client
            .component_clear_quota(COMPONENT_TOKEN, COMPONENT_APPID)
            .await
            .unwrap_err(),
        client
            .quota_get(ACCESS_TOKEN, "/cgi-bin/token")
            .await
            .unwrap_err(),
        client
            .clear_quota(ACCESS_TOKEN, AUTHORIZER_APPID)
            .await
            .unwrap_err(),
        client
            .create_preauthcode(COMPONENT_TOKEN, COMPONENT_APPID)
            .await
            .unwrap_err(),
        client
            .get_authorizer_list(COMPONENT_TOKEN, COMPONENT_APPID, 0, 500)
            .await
            .unwrap_err(),
        client
            .get_authorizer_info(COMPONENT_TOKEN, COMPONENT_APPID, AUTHORIZER_APPID)
            .await
            .unwrap_err(),
    ];
    for err in &errors {
        assert_eq!(err.errcode(), Some(61023));
        assert_no_secret(err);
    }
}

/// Captures every span and event field as text, for the current thread.
struct Capture {
    text: Arc<Mutex<String>>,
    next_id: AtomicU64,
}

struct Visitor<'a>(&'a mut String);

impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut text = self.text.lock().unwrap();
        let _ = write!(text, "\nspan {}", span.metadata().name());
        span.record(&mut Visitor(&mut text));
        tracing::span::Id::from_u64(self.next_id.fetch_add(1, Ordering::Relaxed))
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        values.record(&mut Visitor(&mut self.text.lock().unwrap()));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut text = self.text.lock().unwrap();
        let _ = write!(text, "\nevent {}", event.metadata().target());
        event.record(&mut Visitor(&mut text));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn tracing_records_carry_the_endpoint_but_never_a_secret() {
    let text = Arc::new(Mutex::new(String::new()));
    let _guard = tracing::subscriber::set_default(Capture {
        text: text.clone(),
        next_id: AtomicU64::new(1),
    });

    let ok = Mock::replying(Endpoint::AuthorizerToken, "ok").await;
    ok.client()
        .authorizer_token(
            COMPONENT_TOKEN,
            COMPONENT_APPID,
            AUTHORIZER_APPID,
            REFRESH_TOKEN,
        )
        .await
        .unwrap();
    let echo = echoing_mock(40001).await;
    echo.client()
        .token(AUTHORIZER_APPID, APPSECRET)
        .await
        .unwrap_err();
    let malformed = Mock::start(|_| {
        (
            200,
            br#"{"access_token":1,"expires_in":"69_ACCESSTOKEN-x"}"#.to_vec(),
        )
    })
    .await;
    malformed
        .client()
        .token(AUTHORIZER_APPID, APPSECRET)
        .await
        .unwrap_err();
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    client_for(
        Url::parse(&format!("http://{refused}/")).unwrap(),
        Duration::from_secs(5),
    )
    .get_callback_ip(ACCESS_TOKEN)
    .await
    .unwrap_err();

    let text = text.lock().unwrap().clone();
    assert!(text.contains("endpoint=\"api_authorizer_token\""), "{text}");
    assert!(text.contains("endpoint=\"token\""), "{text}");
    assert!(text.contains("errcode=40001"), "{text}");
    for secret in ALL_SECRETS {
        let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        assert!(
            !text.contains(secret) && !text.contains(&encoded),
            "secret in tracing output:\n{text}"
        );
    }
    for marker in ["SECRET", "TOKEN-", "REFRESH-", "TICKET-", "AUTHCODE-"] {
        assert!(
            !text.contains(marker),
            "{marker} in tracing output:\n{text}"
        );
    }
}

#[tokio::test]
async fn the_client_is_cheap_to_clone_and_its_debug_shows_only_the_base_url() {
    let mock = Mock::replying(Endpoint::GetCallbackIp, "ok").await;
    let client = mock.client();
    let clone = client.clone();
    assert_eq!(clone.base_url(), client.base_url());
    clone.get_callback_ip(ACCESS_TOKEN).await.unwrap();
    assert_eq!(
        format!("{client:?}"),
        format!("WechatClient {{ base_url: \"http://{}/\" }}", mock.addr)
    );
}
