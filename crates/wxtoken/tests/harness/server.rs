//! Harness for the end-to-end HTTP tests: the real simulator and a real wxtoken server (both
//! listeners on OS-assigned loopback ports, a temp-file SQLite store), talked to over sockets with
//! reqwest. The simulator's component pushes to wxtoken's public listener, as WeChat would.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use wechat::event::{Event, MsgCrypt, PushParams, seal_push};
use wechat_sim::{AccountKind, AccountSpec, ComponentInfo, ComponentSpec, SimConfig, SimHandle};
use wxtoken::app::{App, RunningApp};
use wxtoken::config::{ComponentConfig, Config, Sources};
use wxtoken::model::AppidGrant;
use wxtoken::store::{self, Store};
use wxtoken::vault::{MasterKey, Vault};

pub struct Server {
    pub sim: SimHandle,
    pub app: Option<RunningApp>,
    pub component: ComponentInfo,
    pub store: Arc<dyn Store>,
    pub public: String,
    pub internal: String,
    /// The WeChat API gateway's base URL.
    pub gateway: String,
    /// An admin key granted every appid.
    pub admin_key: String,
    pub http: reqwest::Client,
    pub crypt: MsgCrypt,
    /// The store's URL and the master key (base64), for running the CLI against the store.
    pub db_url: String,
    pub master_key: String,
    _dir: tempfile::TempDir,
}

/// The simulator of the HTTP stories: two-minute tokens, 30 s overlap.
pub fn sim_config() -> SimConfig {
    SimConfig {
        seed: Some(11),
        ..super::sim_config(Duration::from_secs(120), Duration::from_secs(30))
    }
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(sim_config(), |_| {}).await
    }

    /// Starts the simulator, then wxtoken configured for it (`adjust` may change the config), then
    /// registers the component at the simulator, whose first ticket push is awaited.
    pub async fn start_with(sim: SimConfig, adjust: impl FnOnce(&mut Config)) -> Server {
        super::init_logs();
        let sim = wechat_sim::Simulator::start(sim).await.expect("simulator");
        let public = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let internal = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let public_url = format!("http://{}", public.local_addr().unwrap());
        let internal_url = format!("http://{}", internal.local_addr().unwrap());
        let spec = ComponentSpec {
            component_appid: Some("wxe2ecomponent0001".into()),
            component_appsecret: Some("e2e-component-secret".into()),
            token: Some("e2etoken".into()),
            encoding_aes_key: Some("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG".into()),
            push_url: Some(format!("{public_url}/wechat/events")),
        };

        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::from_sources(Sources::default()).expect("defaults");
        config.storage.url =
            SecretString::from(format!("sqlite://{}", dir.path().join("w.db").display()));
        config.server.public_url = Some(public_url.parse().unwrap());
        config.server.gateway_listen = Some("127.0.0.1:0".parse().unwrap());
        config.upstream.base_url = sim.base_url().parse().unwrap();
        config.upstream.authorize_url = Some(sim.base_url().parse().unwrap());
        config.refresh.serve_margin = Duration::from_secs(10);
        config.refresh.backoff_max = Duration::from_secs(2);
        config.components = vec![ComponentConfig {
            appid: spec.component_appid.clone().unwrap(),
            appsecret: SecretString::from(spec.component_appsecret.clone().unwrap()),
            token: SecretString::from(spec.token.clone().unwrap()),
            encoding_aes_key: SecretString::from(spec.encoding_aes_key.clone().unwrap()),
            previous_encoding_aes_key: None,
        }];
        adjust(&mut config);
        config.validate().expect("valid config");

        let store = store::open(config.storage.url.expose_secret())
            .await
            .expect("store");
        let master = MasterKey::generate();
        let master_key = master.to_base64().expose_secret().to_owned();
        let vault = Vault::new(&master, &[]);
        vault.verify(&*store).await.expect("vault");
        let (_, key) = wxtoken::manage::create_client(&*store, "admin", AppidGrant::All, true)
            .await
            .expect("admin client");
        let app = App::start(&config, Arc::clone(&store), vault, public, internal)
            .await
            .expect("wxtoken starts");
        let crypt = MsgCrypt::new(
            spec.token.as_deref().unwrap(),
            spec.encoding_aes_key.as_deref().unwrap(),
            spec.component_appid.as_deref().unwrap(),
        )
        .unwrap();
        let finished = sim.control().pushes_finished();
        let component = sim.control().create_component(spec).expect("component");
        // The ticket push is answered `success` only once stored.
        sim.control().wait_pushes_finished(finished + 1).await;
        // Stored; now applied (the push's processing runs after the answer).
        app.engine.process_events().await.expect("ticket applied");
        // The component token: the ticket's landing asks for a refresh that sees it, even when
        // the cold start's refresh read the store just before the ticket arrived.
        let component_appid =
            wxtoken::model::ComponentAppid::parse(&component.component_appid).unwrap();
        let slot = app
            .engine
            .cache()
            .component(&component_appid)
            .expect("configured");
        let mut generation = slot.subscribe();
        tokio::time::timeout(Duration::from_secs(10), generation.wait_for(|g| *g > 0))
            .await
            .expect("the component token is fetched once the ticket is stored")
            .expect("the slot lives as long as the engine");
        let gateway = format!("http://{}", app.gateway_addr.expect("gateway on"));
        Server {
            sim,
            gateway,
            app: Some(app),
            component,
            store,
            public: public_url,
            internal: internal_url,
            admin_key: key.key.expose_secret().to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            crypt,
            db_url: config.storage.url.expose_secret().to_owned(),
            master_key,
            _dir: dir,
        }
    }

    pub fn app(&self) -> &RunningApp {
        self.app.as_ref().expect("running")
    }

    pub fn comp(&self) -> &str {
        &self.component.component_appid
    }

    /// A new simulated account, not authorized yet.
    pub fn new_account(&self, kind: AccountKind) -> wechat_sim::AccountInfo {
        self.sim
            .control()
            .create_account(AccountSpec {
                kind,
                appid: None,
                appsecret: None,
            })
            .unwrap()
    }

    /// A new simulated account, authorized through the simulator's control API: the simulator
    /// pushes `authorized` to wxtoken, which exchanges the code. Returns once it is applied.
    pub async fn authorize_account(&self, kind: AccountKind) -> String {
        let account = self.new_account(kind);
        self.authorize_existing(&account.appid).await;
        account.appid
    }

    /// The simulated account `appid` authorizes the component (pushed, then applied).
    pub async fn authorize_existing(&self, appid: &str) {
        let finished = self.sim.control().pushes_finished();
        self.sim.control().authorize(appid, self.comp()).unwrap();
        self.sim.control().wait_pushes_finished(finished + 1).await;
        self.app().engine.process_events().await.expect("events");
    }

    /// The simulated account `appid` unbinds the component (pushed, then applied).
    pub async fn unauthorize_existing(&self, appid: &str) {
        let finished = self.sim.control().pushes_finished();
        self.sim.control().unauthorize(appid, self.comp()).unwrap();
        self.sim.control().wait_pushes_finished(finished + 1).await;
        self.app().engine.process_events().await.expect("events");
    }

    /// Creates a client through the admin API and returns its key.
    pub async fn client_key(&self, name: &str, appids: &[&str], admin: bool) -> String {
        let response = self
            .http
            .post(format!("{}/v1/admin/clients", self.internal))
            .bearer_auth(&self.admin_key)
            .json(&serde_json::json!({"name": name, "appids": appids, "admin": admin}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: serde_json::Value = response.json().await.unwrap();
        body["api_key"].as_str().unwrap().to_owned()
    }

    /// `GET path` on the internal listener with `key`: (status, JSON body).
    pub async fn get(&self, key: Option<&str>, path: &str) -> (StatusCode, serde_json::Value) {
        let mut request = self.http.get(format!("{}{path}", self.internal));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    /// Seals `event` as WeChat would, with `timestamp` (Unix seconds).
    pub fn seal(&self, event: &Event, timestamp: i64) -> (PushParams, String) {
        seal_push(&self.crypt, event, timestamp, "nonce123")
    }

    /// POSTs a push to the public listener: (status, body text).
    pub async fn push(
        &self,
        params: &PushParams,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, String) {
        let response = self
            .http
            .post(format!("{}/wechat/events", self.public))
            .query(params)
            .body(body)
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    /// Runs the `wxtoken` binary's `args` against this server's store (its master key in the
    /// environment, `env` added), as an operator would beside the running server.
    pub async fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxtoken"));
        command
            .args(args)
            .args(["--storage-url", &self.db_url])
            .env("WXTOKEN_MASTER_KEY", &self.master_key)
            .env_remove("WXTOKEN_CONFIG")
            .env_remove("WXTOKEN_MASTER_KEY_OLD")
            .env_remove("WXTOKEN_APPSECRET")
            .stdin(std::process::Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().await.expect("the wxtoken binary runs")
    }

    /// Refreshes `appid`'s token at the simulator with its refresh token, behind wxtoken's back,
    /// as a forgotten refresher elsewhere would; returns WeChat's answer. The token wxtoken holds
    /// is retired once the simulator's overlap is over.
    pub async fn refresh_behind_wxtokens_back(&self, appid: &str) -> serde_json::Value {
        let (_, component) = self.get(Some(&self.admin_key), "/v1/component/token").await;
        let refresh_token = self
            .sim
            .control()
            .authorizer(self.comp(), appid)
            .unwrap()
            .refresh_token;
        let answer: serde_json::Value = self
            .http
            .post(format!(
                "{}/cgi-bin/component/api_authorizer_token",
                self.sim.base_url()
            ))
            .query(&[(
                "component_access_token",
                component["access_token"].as_str().unwrap(),
            )])
            .json(&serde_json::json!({
                "component_appid": self.comp(),
                "authorizer_appid": appid,
                "authorizer_refresh_token": refresh_token,
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(answer["authorizer_access_token"].is_string(), "{answer}");
        answer
    }

    /// Upstream calls of `endpoint` so far.
    pub fn calls(&self, endpoint: &str) -> u64 {
        self.sim.control().stats().endpoints[endpoint].calls
    }

    pub async fn shutdown(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await.expect("clean shutdown");
        }
    }
}

pub fn now_secs() -> i64 {
    wxtoken::model::Timestamp::now().as_millis() / 1000
}
