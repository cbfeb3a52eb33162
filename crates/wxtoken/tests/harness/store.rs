//! A fresh database per test (a temp SQLite file always; a
//! fresh PostgreSQL database when `WXTOKEN_TEST_PG_URL` is set), and small builders for records.

use std::sync::Arc;

use wxtoken::model::{
    Appid, AuthorizationWrite, AuthorizerStatus, ComponentAppid, Credential, Expected,
    NewAccessToken, RefreshResult, RefreshTokenSource, SaveOutcome, Sealed, SecretSlot, Timestamp,
    TokenSource,
};
use wxtoken::store::{Store, open};

use wxtoken::vault::Vault;

pub const PG_ENV: &str = "WXTOKEN_TEST_PG_URL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// A fresh, isolated database and a store opened on it. Dropping it removes the database.
pub struct Harness {
    pub kind: Kind,
    pub url: String,
    pub store: Arc<dyn Store>,
    dir: Option<tempfile::TempDir>,
    pg: Option<PgDatabase>,
}

impl Harness {
    pub async fn sqlite() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wxtoken.db");
        let url = format!("sqlite://{}", path.display());
        let store = open(&url).await.expect("open sqlite");
        Harness {
            kind: Kind::Sqlite,
            url,
            store,
            dir: Some(dir),
            pg: None,
        }
    }

    /// `None` (the test is skipped) unless `WXTOKEN_TEST_PG_URL` is set. Under `CI=true` an unset
    /// variable fails the test instead: CI must never pass by skipping the PostgreSQL suite.
    pub async fn postgres() -> Option<Harness> {
        let Some(admin_url) = std::env::var(PG_ENV).ok().filter(|v| !v.is_empty()) else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but {PG_ENV} is unset: the PostgreSQL suite must run in CI"
            );
            return None;
        };
        let db = PgDatabase::create(&admin_url).await;
        let url = db.url.clone();
        let store = open(&url).await.expect("open postgres");
        Some(Harness {
            kind: Kind::Postgres,
            url,
            store,
            dir: None,
            pg: Some(db),
        })
    }

    pub async fn new(kind: Kind) -> Option<Harness> {
        match kind {
            Kind::Sqlite => Some(Harness::sqlite().await),
            Kind::Postgres => Harness::postgres().await,
        }
    }

    /// The SQLite file (and its -wal/-shm siblings live beside it).
    pub fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        self.dir.as_ref().map(|d| d.path().join("wxtoken.db"))
    }

    pub fn dir(&self) -> Option<&std::path::Path> {
        self.dir.as_ref().map(|d| d.path())
    }

    /// A second, independent store on the same database (another replica or process).
    pub async fn reopen(&self) -> Arc<dyn Store> {
        open(&self.url).await.expect("reopen")
    }

    /// Runs raw SQL outside the store, as an operator or an attacker with database access would.
    pub async fn exec(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match self.kind {
            Kind::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&self.url).await?;
                let r = sqlx::query(sql)
                    .execute(&pool)
                    .await
                    .map(|r| r.rows_affected());
                pool.close().await;
                r
            }
            Kind::Postgres => {
                let pool = sqlx::PgPool::connect(&self.url).await?;
                let r = sqlx::query(sql)
                    .execute(&pool)
                    .await
                    .map(|r| r.rows_affected());
                pool.close().await;
                r
            }
        }
    }

    /// Records a migration this binary does not know, as a newer wxtoken would have.
    pub async fn fake_future_migration(&self, version: i64) {
        let checksum = match self.kind {
            Kind::Sqlite => "X'00'",
            Kind::Postgres => "'\\x00'::bytea",
        };
        self.exec(&format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
             execution_time) VALUES ({version}, 'from the future', TRUE, {checksum}, 0)"
        ))
        .await
        .expect("insert fake migration");
    }
}

/// A throwaway PostgreSQL database `wxtoken_t_<random>`, dropped (WITH FORCE) on drop, even when
/// the test panicked.
struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDatabase {
    async fn create(admin_url: &str) -> PgDatabase {
        let name = format!("wxtoken_t_{:016x}", rand::random::<u64>());
        let admin = sqlx::PgPool::connect(admin_url)
            .await
            .expect("connect to WXTOKEN_TEST_PG_URL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let mut url = url::Url::parse(admin_url).expect("WXTOKEN_TEST_PG_URL is a URL");
        url.set_path(&format!("/{name}"));
        PgDatabase {
            admin_url: admin_url.to_owned(),
            name,
            url: url.to_string(),
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside a test's runtime: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(admin) = sqlx::PgPool::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&admin)
                        .await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

pub fn component(s: &str) -> ComponentAppid {
    ComponentAppid::parse(s).expect("component appid")
}

pub fn appid(s: &str) -> Appid {
    Appid::parse(s).expect("appid")
}

pub fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(1_700_000_000_000 + ms)
}

pub fn access_token(vault: &Vault, credential: &Credential, text: &str, t: i64) -> NewAccessToken {
    NewAccessToken {
        sealed: vault
            .seal(SecretSlot::AccessToken { credential }, text.as_bytes())
            .expect("seal"),
        issued_at: at(t),
        expires_at: at(t + 7_200_000),
        refresh_at: Some(at(t + 3_600_000)),
        source: TokenSource::AuthorizerToken,
    }
}

/// An `api_query_auth`-like write creating (or re-authorizing) an authorizer.
pub fn authorization(
    vault: &Vault,
    c: &ComponentAppid,
    a: &Appid,
    rt: &str,
    token: Option<&str>,
    expected: Expected,
    t: i64,
) -> AuthorizationWrite {
    let credential = Credential::authorizer(c, a);
    AuthorizationWrite {
        component: c.clone(),
        appid: a.clone(),
        expected,
        kind: Some(wxtoken::model::AppKind::OfficialAccount),
        status: AuthorizerStatus::Active,
        refresh_token: sealed_rt(vault, c, a, rt),
        appsecret: None,
        access_token: token.map(|tok| {
            let mut t = access_token(vault, &credential, tok, t);
            t.source = TokenSource::QueryAuth;
            t
        }),
        source: RefreshTokenSource::QueryAuth,
        at: at(t),
    }
}

/// `rt` sealed as `a`'s refresh token.
pub fn sealed_rt(vault: &Vault, c: &ComponentAppid, a: &Appid, rt: &str) -> Sealed {
    let slot = SecretSlot::RefreshToken {
        component: c,
        appid: a,
    };
    vault.seal(slot, rt.as_bytes()).expect("seal")
}

/// An `api_authorizer_token`-like refresh result.
pub fn refresh(
    vault: &Vault,
    c: &ComponentAppid,
    a: &Appid,
    expected_generation: u64,
    token: &str,
    rt: &str,
    t: i64,
) -> RefreshResult {
    let credential = Credential::authorizer(c, a);
    RefreshResult {
        access_token: access_token(vault, &credential, token, t),
        credential,
        expected_generation,
        refresh_token: Some(sealed_rt(vault, c, a, rt)),
        at: at(t),
    }
}

pub fn saved(outcome: SaveOutcome) -> u64 {
    match outcome {
        SaveOutcome::Saved { generation } => generation,
        other => panic!("expected Saved, got {other:?}"),
    }
}

pub fn open_rt(vault: &Vault, c: &ComponentAppid, a: &Appid, s: &wxtoken::model::Sealed) -> String {
    let bytes = vault
        .open(
            SecretSlot::RefreshToken {
                component: c,
                appid: a,
            },
            s,
        )
        .expect("open refresh token");
    String::from_utf8(bytes.to_vec()).expect("utf8")
}

pub fn open_token(vault: &Vault, credential: &Credential, s: &wxtoken::model::Sealed) -> String {
    let bytes = vault
        .open(SecretSlot::AccessToken { credential }, s)
        .expect("open access token");
    String::from_utf8(bytes.to_vec()).expect("utf8")
}
