//! Shared test plumbing: a simulator on 127.0.0.1:0, a `WechatClient` and a raw reqwest client
//! pointed at it, and a push receiver (bound before the simulator learns its URL) that forwards
//! every push into a channel and answers `success` (or fails on request).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::post;
use tokio::sync::mpsc;
use wechat::client::{ClientConfig, WechatClient};
use wechat::event::{Envelope, Event, MsgCrypt, PushParams, open_push};
use wechat_sim::{
    AccountInfo, AccountKind, AccountSpec, ComponentInfo, ComponentSpec, SimConfig, SimHandle,
    Simulator,
};

pub struct TestSim {
    pub sim: SimHandle,
    pub wx: WechatClient,
    pub http: reqwest::Client,
}

impl TestSim {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(f: impl FnOnce(&mut SimConfig)) -> Self {
        let mut config = SimConfig::default();
        // Pushes in tests are retried quickly, and tickets come only when a test asks (a timer
        // ticket after a clock jump would race with the test's own ticket reads).
        config.push.backoff = Duration::from_millis(10);
        config.ticket_interval = Duration::ZERO;
        f(&mut config);
        let sim = Simulator::start(config).await.expect("simulator starts");
        let base = url::Url::parse(sim.base_url()).unwrap();
        let wx = WechatClient::new(ClientConfig::with_base_url(base)).unwrap();
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        TestSim { sim, wx, http }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.sim.base_url(), path)
    }

    pub fn component(&self) -> ComponentInfo {
        self.sim
            .control()
            .create_component(ComponentSpec::default())
            .unwrap()
    }

    pub fn component_pushing_to(&self, rx: &Receiver) -> ComponentInfo {
        self.sim
            .control()
            .create_component(ComponentSpec {
                push_url: Some(rx.url.clone()),
                ..Default::default()
            })
            .unwrap()
    }

    pub fn account(&self, kind: AccountKind) -> AccountInfo {
        self.sim
            .control()
            .create_account(AccountSpec {
                kind,
                appid: None,
                appsecret: None,
            })
            .unwrap()
    }

    pub fn oa(&self) -> AccountInfo {
        self.account(AccountKind::OfficialAccount)
    }

    /// A component token for a fresh component.
    pub async fn component_token(&self, c: &ComponentInfo) -> String {
        let ticket = self
            .sim
            .control()
            .latest_ticket(&c.component_appid)
            .unwrap();
        self.wx
            .component_token(&c.component_appid, &c.component_appsecret, &ticket)
            .await
            .unwrap()
            .component_access_token
    }

    /// Authorize `a` to `c` and exchange the code: (access token, refresh token).
    pub async fn authorized(
        &self,
        c: &ComponentInfo,
        a: &AccountInfo,
        ct: &str,
    ) -> (String, String) {
        let out = self
            .sim
            .control()
            .authorize(&a.appid, &c.component_appid)
            .unwrap();
        let info = self
            .wx
            .query_auth(ct, &c.component_appid, &out.authorization_code)
            .await
            .unwrap()
            .authorization_info;
        (
            info.authorizer_access_token.unwrap(),
            info.authorizer_refresh_token.unwrap(),
        )
    }

    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        self.http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> serde_json::Value {
        self.http
            .post(self.url(path))
            .body(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// The errcode of a failed `WechatClient` call.
pub fn errcode<T: std::fmt::Debug>(r: Result<T, wechat::client::WechatError>) -> i64 {
    r.unwrap_err().errcode().expect("an errcode answer")
}

/// One push as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub params: PushParams,
    pub body: String,
    pub raw_query: String,
}

impl Received {
    pub fn open(&self, c: &ComponentInfo) -> Event {
        let crypt = MsgCrypt::new(&c.token, &c.encoding_aes_key, &c.component_appid).unwrap();
        let envelope = Envelope::parse(self.body.as_bytes()).unwrap();
        open_push(&crypt, &self.params, &envelope).expect("push opens with the component's keys")
    }
}

#[derive(Clone)]
struct RxState {
    tx: mpsc::UnboundedSender<Received>,
    fail_next: Arc<AtomicU32>,
}

/// A push receiver on 127.0.0.1:0.
pub struct Receiver {
    pub url: String,
    rx: mpsc::UnboundedReceiver<Received>,
    fail_next: Arc<AtomicU32>,
    _server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Self {
        Self::at_path("/wechat/events?from=sim").await
    }

    pub async fn at_path(path_and_query: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let fail_next = Arc::new(AtomicU32::new(0));
        let state = RxState {
            tx,
            fail_next: fail_next.clone(),
        };
        let path = path_and_query.split('?').next().unwrap().to_string();
        let app = axum::Router::new()
            .route(&path, post(receive))
            .with_state(state);
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url: format!("http://{addr}{path_and_query}"),
            rx,
            fail_next,
            _server: server,
        }
    }

    /// Answer the next `n` pushes with HTTP 500 instead of `success`.
    pub fn fail_next(&self, n: u32) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// The next push (fails the test after 10 s: a safety net, not a synchronisation sleep).
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("a push arrives")
            .expect("receiver open")
    }

    /// The next push that is not a ticket.
    pub async fn next_event(&mut self, c: &ComponentInfo) -> Event {
        loop {
            let e = self.next().await.open(c);
            if !matches!(e, Event::ComponentVerifyTicket(_)) {
                return e;
            }
        }
    }
}

async fn receive(
    State(s): State<RxState>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let raw_query = q.unwrap_or_default();
    let mut p = std::collections::HashMap::new();
    for (k, v) in url::form_urlencoded::parse(raw_query.as_bytes()) {
        p.insert(k.into_owned(), v.into_owned());
    }
    let params = PushParams {
        signature: p.remove("signature").unwrap_or_default(),
        timestamp: p.remove("timestamp").unwrap_or_default(),
        nonce: p.remove("nonce").unwrap_or_default(),
        encrypt_type: p.remove("encrypt_type"),
        msg_signature: p.remove("msg_signature").unwrap_or_default(),
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    let _ = s.tx.send(Received {
        params,
        body,
        raw_query,
    });
    let failing = s
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        (StatusCode::INTERNAL_SERVER_ERROR, "fail")
    } else {
        (StatusCode::OK, "success")
    }
}
