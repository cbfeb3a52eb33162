//! Shared harness for the engine tests: the real simulator over sockets, a real temp-file SQLite
//! store, and an engine that can be dropped and re-opened on the same file (a restart).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;
use wechat::event::{AuthorizationEvent, Event, TicketEvent, UnauthorizedEvent};
use wechat_sim::{
    AuthorizeOutcome, BulkAuthorizer, ComponentInfo, ComponentSpec, SimConfig, SimHandle, Simulator,
};
use wxtoken::alerts::Alerts;
use wxtoken::config::{RefreshConfig, UpstreamConfig};
use wxtoken::model::{
    Appid, AuthorizationWrite, AuthorizerStatus, ComponentAppid, Credential, EventInsert, Expected,
    NewEvent, RefreshTokenSource, SaveOutcome, SecretSlot, Timestamp,
};
use wxtoken::refresh::lease::LocalLease;
use wxtoken::refresh::{ComponentSecret, Engine, EngineDeps, SystemClock};
use wxtoken::store::{self, Store};
use wxtoken::vault::{MasterKey, Vault};

use super::hooks::{HookStore, StoreHooks};

pub use super::init_logs;

pub fn refresh_config(serve_margin: Duration) -> RefreshConfig {
    RefreshConfig {
        refresh_fraction: 0.5,
        jitter: 0.1,
        serve_margin,
        concurrency: 32,
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        // Off unless a test is about them: most stories report tokens back to back, and
        // their tokens are all minutes old at most.
        min_force_interval: Duration::ZERO,
        rogue_window: Duration::ZERO,
        ..RefreshConfig::default()
    }
}

pub struct Harness {
    pub sim: SimHandle,
    pub component: ComponentInfo,
    pub comp: ComponentAppid,
    /// The real store behind [`Harness::hooks`].
    pub store: Arc<dyn Store>,
    /// Test hooks on the engine's store (kept across restarts).
    pub hooks: Arc<StoreHooks>,
    pub engine: Engine,
    pub webhook: Option<Url>,
    refresh: RefreshConfig,
    upstream_timeout: Duration,
    master: MasterKey,
    db_url: String,
    tracker: TaskTracker,
    cancel: CancellationToken,
    tickets: AtomicU64,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub async fn start(sim: SimConfig, refresh: RefreshConfig) -> Self {
        Self::start_with(sim, refresh, None, Duration::from_secs(5)).await
    }

    pub async fn start_with(
        sim: SimConfig,
        refresh: RefreshConfig,
        webhook: Option<Url>,
        upstream_timeout: Duration,
    ) -> Self {
        let h = Self::start_without_ticket(sim, refresh, webhook, upstream_timeout).await;
        h.feed_ticket().await;
        h
    }

    /// [`Harness::start_with`] before WeChat's first ticket push: the engine has no ticket yet.
    pub async fn start_without_ticket(
        sim: SimConfig,
        refresh: RefreshConfig,
        webhook: Option<Url>,
        upstream_timeout: Duration,
    ) -> Self {
        init_logs();
        let sim = Simulator::start(sim).await.expect("simulator starts");
        let component = sim
            .control()
            .create_component(ComponentSpec::default())
            .expect("component");
        let comp = ComponentAppid::parse(&component.component_appid).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db_url = format!("sqlite://{}", dir.path().join("wxtoken.db").display());
        let master = MasterKey::generate();
        let hooks = Arc::new(StoreHooks::default());
        let store = HookStore::wrap(
            store::open(&db_url).await.expect("store opens"),
            Arc::clone(&hooks),
        );
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let engine = open_engine(
            &sim,
            &component,
            &store,
            &master,
            &refresh,
            webhook.clone(),
            upstream_timeout,
            &tracker,
            &cancel,
        )
        .await;
        Self {
            sim,
            component,
            comp,
            store,
            hooks,
            engine,
            webhook,
            refresh,
            upstream_timeout,
            master,
            db_url,
            tracker,
            cancel,
            tickets: AtomicU64::new(0),
            _dir: dir,
        }
    }

    /// The SQLite file's URL (tests open their own connection to it, e.g. to hold its write lock).
    pub fn db_url(&self) -> &str {
        &self.db_url
    }

    pub fn vault(&self) -> Vault {
        Vault::new(&self.master, &[])
    }

    /// Starts the scheduler loop.
    pub fn spawn(&self) {
        self.engine.spawn(self.cancel.clone());
    }

    /// Drops the engine (loop cancelled, flights finished), closes the store, and starts again on
    /// the same SQLite file: the process restart of the crash tests.
    pub async fn restart(&mut self) {
        self.restart_with_store(&store::StoreOptions::default())
            .await;
    }

    /// [`Harness::restart`] with the store opened with `options` (e.g. a short busy timeout).
    pub async fn restart_with_store(&mut self, options: &store::StoreOptions) {
        self.stop().await;
        self.store = HookStore::wrap(
            store::open_with(&self.db_url, options)
                .await
                .expect("store reopens"),
            Arc::clone(&self.hooks),
        );
        self.tracker = TaskTracker::new();
        self.cancel = CancellationToken::new();
        self.engine = open_engine(
            &self.sim,
            &self.component,
            &self.store,
            &self.master,
            &self.refresh,
            self.webhook.clone(),
            self.upstream_timeout,
            &self.tracker,
            &self.cancel,
        )
        .await;
    }

    pub async fn stop(&self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        self.store.close().await;
    }

    /// Pushes the simulator's latest ticket through the engine and applies it.
    pub async fn feed_ticket(&self) {
        let ticket = self
            .sim
            .control()
            .latest_ticket(&self.component.component_appid)
            .expect("ticket");
        let n = self.tickets.fetch_add(1, Ordering::Relaxed);
        let event = Event::ComponentVerifyTicket(TicketEvent {
            app_id: self.component.component_appid.clone(),
            create_time: self.sim.control().now(),
            component_verify_ticket: ticket,
        });
        self.engine
            .ingest_push(
                &self.comp,
                &event,
                &format!("ticket:{n}:{}", self.sim.control().now()),
            )
            .await
            .expect("ticket stored");
        self.engine.process_events().await.expect("events applied");
    }

    /// Stores a push as the HTTP layer would and "crashes" before processing it.
    pub async fn record_only(&self, event: &Event, key: &str) {
        self.record_at(event, key, Timestamp::now()).await;
    }

    /// [`Harness::record_only`] with the receive time given (pushes received in order get increasing times).
    pub async fn record_at(&self, event: &Event, key: &str, received_at: Timestamp) {
        let payload = self
            .vault()
            .seal(
                SecretSlot::EventPayload {
                    component: &self.comp,
                    dedupe_key: key,
                },
                event.to_xml().as_bytes(),
            )
            .unwrap();
        let outcome = self
            .store
            .events()
            .record_event(&NewEvent {
                component: self.comp.clone(),
                dedupe_key: key.to_owned(),
                info_type: event.info_type().to_owned(),
                appid: None,
                payload,
                received_at,
            })
            .await
            .unwrap();
        assert_eq!(outcome, EventInsert::Inserted);
    }

    /// `authorized` or `updateauthorized` as WeChat pushes it after `outcome`.
    pub fn authorization_event(&self, outcome: &AuthorizeOutcome) -> Event {
        let a = AuthorizationEvent {
            app_id: self.component.component_appid.clone(),
            create_time: self.sim.control().now(),
            authorizer_appid: outcome.authorizer_appid.clone(),
            authorization_code: outcome.authorization_code.clone(),
            authorization_code_expired_time: outcome.authorization_code_expired_time,
            pre_auth_code: Some(outcome.pre_auth_code.clone()),
        };
        if outcome.info_type == "updateauthorized" {
            Event::UpdateAuthorized(a)
        } else {
            Event::Authorized(a)
        }
    }

    pub fn unauthorized_event(&self, appid: &str) -> Event {
        Event::Unauthorized(UnauthorizedEvent {
            app_id: self.component.component_appid.clone(),
            create_time: self.sim.control().now(),
            authorizer_appid: appid.to_owned(),
        })
    }

    /// Creates `n` authorizers in the simulator and imports their refresh tokens into the store
    /// (as `wxtoken authorizers import` would).
    pub async fn import_authorizers(&self, n: usize) -> Vec<BulkAuthorizer> {
        let bulk = self
            .sim
            .control()
            .bulk_authorize(
                &self.component.component_appid,
                n,
                wechat_sim::AccountKind::OfficialAccount,
            )
            .expect("bulk authorize");
        let vault = self.vault();
        let writes: Vec<_> = bulk
            .iter()
            .map(|b| {
                let appid = Appid::parse(&b.authorizer_appid).unwrap();
                AuthorizationWrite {
                    component: self.comp.clone(),
                    refresh_token: vault
                        .seal(
                            SecretSlot::RefreshToken {
                                component: &self.comp,
                                appid: &appid,
                            },
                            b.authorizer_refresh_token.as_bytes(),
                        )
                        .unwrap(),
                    appid,
                    expected: Expected::Absent,
                    kind: None,
                    status: AuthorizerStatus::Active,
                    appsecret: None,
                    access_token: None,
                    source: RefreshTokenSource::Import,
                    at: Timestamp::now(),
                }
            })
            .collect();
        for chunk in writes.chunks(500) {
            let outcomes = self
                .store
                .authorizers()
                .save_authorizations(chunk)
                .await
                .unwrap();
            assert!(
                outcomes
                    .iter()
                    .all(|o| matches!(o, SaveOutcome::Saved { .. }))
            );
        }
        bulk
    }

    /// Creates an account in the simulator, stores it as a direct account with its appsecret, and
    /// restarts the engine so the cold start picks it up.
    pub async fn add_direct_account(
        &mut self,
        kind: wechat_sim::AccountKind,
    ) -> (wechat_sim::AccountInfo, Appid) {
        let account = self
            .sim
            .control()
            .create_account(wechat_sim::AccountSpec {
                kind,
                appid: None,
                appsecret: None,
            })
            .unwrap();
        let appid = Appid::parse(&account.appid).unwrap();
        let sealed = self
            .vault()
            .seal(
                wxtoken::model::SecretSlot::DirectAppsecret {
                    component: &self.comp,
                    appid: &appid,
                },
                account.appsecret.as_bytes(),
            )
            .unwrap();
        let stored_kind = match kind {
            wechat_sim::AccountKind::OfficialAccount => wxtoken::model::AppKind::OfficialAccount,
            wechat_sim::AccountKind::MiniProgram => wxtoken::model::AppKind::MiniProgram,
        };
        self.store
            .direct()
            .upsert_direct_account(&wxtoken::model::DirectAccountWrite {
                component: self.comp.clone(),
                appid: appid.clone(),
                kind: stored_kind,
                appsecret: sealed,
                at: wxtoken::model::Timestamp::now(),
            })
            .await
            .unwrap();
        self.restart().await;
        (account, appid)
    }

    pub fn credential(&self, appid: &str) -> Credential {
        Credential::authorizer(&self.comp, &Appid::parse(appid).unwrap())
    }

    /// Whether the simulator accepts `token` right now.
    pub fn valid(&self, token: &wxtoken::tokens::cache::TokenText) -> bool {
        self.sim.control().validate(token.expose_secret()).valid
    }

    /// The refresh token the store holds for `appid`.
    pub async fn stored_refresh_token(&self, appid: &str) -> String {
        let appid = Appid::parse(appid).unwrap();
        let record = self
            .store
            .authorizers()
            .get_authorizer(&self.comp, &appid)
            .await
            .unwrap()
            .expect("authorizer stored");
        self.vault()
            .open_string(
                SecretSlot::RefreshToken {
                    component: &self.comp,
                    appid: &appid,
                },
                &record.refresh_token,
            )
            .unwrap()
            .expose_secret()
            .to_owned()
    }

    pub async fn status(&self, appid: &str) -> AuthorizerStatus {
        let appid = Appid::parse(appid).unwrap();
        self.store
            .authorizers()
            .get_authorizer(&self.comp, &appid)
            .await
            .unwrap()
            .expect("authorizer stored")
            .status
    }

    /// The refresh token the simulator accepts now.
    pub fn sim_refresh_token(&self, appid: &str) -> String {
        self.sim
            .control()
            .authorizer(&self.component.component_appid, appid)
            .expect("sim authorizer")
            .refresh_token
    }
}

#[allow(clippy::too_many_arguments)]
async fn open_engine(
    sim: &SimHandle,
    component: &ComponentInfo,
    store: &Arc<dyn Store>,
    master: &MasterKey,
    refresh: &RefreshConfig,
    webhook: Option<Url>,
    upstream_timeout: Duration,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Engine {
    let upstream = UpstreamConfig {
        base_url: Url::parse(sim.base_url()).unwrap(),
        timeout: upstream_timeout,
        connect_timeout: Duration::from_secs(2),
        authorize_url: None,
    };
    Engine::open(EngineDeps {
        store: Arc::clone(store),
        vault: Arc::new(Vault::new(master, &[])),
        client: upstream.client().expect("client"),
        config: refresh.clone(),
        components: vec![ComponentSecret {
            appid: ComponentAppid::parse(&component.component_appid).unwrap(),
            appsecret: SecretString::from(component.component_appsecret.clone()),
        }],
        alerts: Alerts::spawn(webhook, tracker, cancel.clone()),
        lease: Arc::new(LocalLease::new()),
        clock: Arc::new(SystemClock),
        tracker: tracker.clone(),
    })
    .await
    .expect("engine opens")
}

/// A webhook receiver on 127.0.0.1:0 that records every JSON body.
pub struct WebhookReceiver {
    pub url: Url,
    received: Arc<Mutex<Vec<serde_json::Value>>>,
    arrived: Arc<Notify>,
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/alerts", listener.local_addr().unwrap())).unwrap();
        let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let arrived = Arc::new(Notify::new());
        let (r, a) = (received.clone(), arrived.clone());
        let app = axum::Router::new().route(
            "/alerts",
            axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let (r, a) = (r.clone(), a.clone());
                async move {
                    r.lock().push(body);
                    a.notify_waiters();
                    "ok"
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            received,
            arrived,
        }
    }

    /// Waits until an alert of `kind` for `appid` arrived, and returns it.
    pub async fn wait_for(&self, kind: &str, appid: &str) -> serde_json::Value {
        self.wait_until(|v| v["kind"] == kind && v["appid"] == appid)
            .await
    }

    /// Waits until an alert of `kind` (for any appid, or none) arrived, and returns it.
    pub async fn wait_for_kind(&self, kind: &str) -> serde_json::Value {
        self.wait_until(|v| v["kind"] == kind).await
    }

    /// How many alerts of this kind arrived so far.
    pub fn count_kind(&self, kind: &str) -> usize {
        self.received
            .lock()
            .iter()
            .filter(|v| v["kind"] == kind)
            .count()
    }

    async fn wait_until(&self, matches: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        loop {
            let notified = self.arrived.notified();
            if let Some(v) = self.received.lock().iter().find(|v| matches(v)) {
                return v.clone();
            }
            tokio::time::timeout(Duration::from_secs(10), notified)
                .await
                .expect("alert arrives within 10 s");
        }
    }
}
