//! After a run that stores every kind of secret, neither the database (SQLite file, -wal and -shm,
//! read as raw bytes; on PostgreSQL, a text dump of every table) nor the logs captured at TRACE
//! level (sqlx's query logs included) contain any token, ticket or secret in plaintext.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::harness::store::{Harness, Kind, appid, at, authorization, component, refresh};
use secrecy::ExposeSecret;
use wxtoken::model::{
    AppKind, AppidGrant, Credential, CredentialKind, DirectAccountWrite, Expected, NewClient,
    NewEvent, RefreshResult, SecretSlot, TokenSource,
};
use wxtoken::transfer::{self, ExportOptions, Format, ImportOptions};
use wxtoken::vault::{self, MasterKey, Vault};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Stores one of everything, each secret a distinctive marker; returns the markers.
async fn store_every_secret(h: &Harness, v: &Vault, key: &MasterKey) -> Vec<String> {
    let s = &h.store;
    let c = component("wxcomp0001");
    let mut secrets = vec![key.to_base64().expose_secret().to_owned()];
    let mut mark = |what: &str| {
        let m = format!("PLAINTEXT-{what}-{:012x}", rand::random::<u64>() >> 16);
        secrets.push(m.clone());
        m
    };
    s.components().ensure_component(&c, at(0)).await.unwrap();

    let ticket = mark("ticket");
    let t = v
        .seal(SecretSlot::Ticket { component: &c }, ticket.as_bytes())
        .unwrap();
    s.components().record_ticket(&c, &t, at(1)).await.unwrap();

    let ccred = Credential::component(&c);
    let mut ctok = crate::harness::store::access_token(v, &ccred, &mark("component-token"), 0);
    ctok.source = TokenSource::ComponentToken;
    s.tokens()
        .save_refresh_result(&RefreshResult {
            credential: ccred,
            expected_generation: 0,
            access_token: ctok,
            refresh_token: None,
            at: at(0),
        })
        .await
        .unwrap();

    for i in 0..5 {
        let a = appid(&format!("wxauth{i:04}"));
        let mut w = authorization(
            v,
            &c,
            &a,
            &mark("refresh-token"),
            Some(&mark("access-token")),
            Expected::Absent,
            0,
        );
        w.appsecret = Some(
            v.seal(
                SecretSlot::AuthorizerAppsecret {
                    component: &c,
                    appid: &a,
                },
                mark("authorizer-appsecret").as_bytes(),
            )
            .unwrap(),
        );
        s.authorizers().save_authorization(&w).await.unwrap();
        let r = refresh(
            v,
            &c,
            &a,
            1,
            &mark("access-token"),
            &mark("refresh-token"),
            1,
        );
        s.tokens().save_refresh_result(&r).await.unwrap();
        // A stale one too: its refresh token goes to the history.
        let r = refresh(
            v,
            &c,
            &a,
            1,
            &mark("access-token"),
            &mark("refresh-token"),
            2,
        );
        s.tokens().save_refresh_result(&r).await.unwrap();
    }

    let d = appid("wxdirect01");
    s.direct()
        .upsert_direct_account(&DirectAccountWrite {
            component: c.clone(),
            appid: d.clone(),
            kind: AppKind::OfficialAccount,
            appsecret: v
                .seal(
                    SecretSlot::DirectAppsecret {
                        component: &c,
                        appid: &d,
                    },
                    mark("direct-appsecret").as_bytes(),
                )
                .unwrap(),
            at: at(0),
        })
        .await
        .unwrap();

    // JS-SDK tickets of an authorizer and of the direct account (both kinds), sealed like tokens.
    for (owner, kind) in [
        (
            Credential::authorizer(&c, &appid("wxauth0000")),
            CredentialKind::Jsapi,
        ),
        (Credential::direct(&c, &d), CredentialKind::WxCard),
    ] {
        let tcred = owner.ticket(kind);
        let generation = s.tokens().ensure_ticket(&tcred, at(0)).await.unwrap();
        let mut ttok = crate::harness::store::access_token(v, &tcred, &mark("js-ticket"), 0);
        ttok.source = TokenSource::GetTicket;
        s.tokens()
            .save_refresh_result(&RefreshResult {
                credential: tcred,
                expected_generation: generation,
                access_token: ttok,
                refresh_token: None,
                at: at(0),
            })
            .await
            .unwrap();
    }

    let code = mark("authorization-code");
    let payload =
        format!("<xml><AuthorizationCode>queryauthcode@@@{code}</AuthorizationCode></xml>");
    s.events()
        .record_event(&NewEvent {
            component: c.clone(),
            dedupe_key: "authorized:1:wxauth0000".into(),
            info_type: "authorized".into(),
            appid: Some(appid("wxauth0000")),
            payload: v
                .seal(
                    SecretSlot::EventPayload {
                        component: &c,
                        dedupe_key: "authorized:1:wxauth0000",
                    },
                    payload.as_bytes(),
                )
                .unwrap(),
            received_at: at(0),
        })
        .await
        .unwrap();

    let api_key = vault::generate_api_key();
    let api_plain = api_key.key.expose_secret().to_owned();
    s.clients()
        .create_client(&NewClient {
            name: "svc".into(),
            key_hash: api_key.hash,
            key_hint: api_key.hint.clone(),
            grant: AppidGrant::All,
            admin: false,
            created_at: at(0),
        })
        .await
        .unwrap();

    let mut csv = String::new();
    for i in 0..5 {
        csv.push_str(&format!(
            "wximport{i:03},{},mini_program,{}\n",
            mark("imported-refresh-token"),
            mark("imported-appsecret")
        ));
    }
    let report = transfer::import(
        s.as_ref(),
        v,
        &c,
        &mut csv.as_bytes(),
        &ImportOptions::default(),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.progress.created, 5);
    secrets.push(api_plain);
    secrets
}

#[test]
fn no_token_ticket_or_secret_reaches_the_database_files_or_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut harnesses = vec![Harness::sqlite().await];
        harnesses.extend(Harness::postgres().await);
        for h in harnesses {
            let key = MasterKey::generate();
            let v = Vault::new(&key, &[]);
            v.verify(h.store.as_ref()).await.unwrap();
            let mut secrets = store_every_secret(&h, &v, &key).await;

            // A rotation re-seals everything; the new key must not leak either.
            let new_key = MasterKey::generate();
            secrets.push(new_key.to_base64().expose_secret().to_owned());
            let both = Vault::new(&new_key, std::slice::from_ref(&key));
            vault::rotate(h.store.as_ref(), &both, 4, &mut |_| {})
                .await
                .unwrap();

            // Export writes plaintext on purpose, into its own 0600 file outside the database.
            let out = tempfile::tempdir().unwrap();
            transfer::export(
                h.store.as_ref(),
                &both,
                &component("wxcomp0001"),
                &out.path().join("export.csv"),
                &ExportOptions {
                    format: Format::Csv,
                    overwrite: false,
                },
                &mut |_| {},
            )
            .await
            .unwrap();

            // Positive control: the scan finds markers where they are meant to be.
            let exported = std::fs::read(out.path().join("export.csv")).unwrap();
            let found = secrets
                .iter()
                .filter(|m| contains(&exported, m.as_bytes()))
                .count();
            // 5 authorized + 5 imported authorizers: current refresh token and appsecret each.
            assert_eq!(found, 20, "refresh tokens and appsecrets exported");

            let mut dumps: Vec<(String, Vec<u8>)> = Vec::new();
            match h.kind {
                Kind::Sqlite => {
                    let dir = h.dir().unwrap();
                    // While open (the -wal holds recent pages), then after close (checkpointed).
                    for entry in std::fs::read_dir(dir).unwrap() {
                        let p = entry.unwrap().path();
                        dumps.push((p.display().to_string(), std::fs::read(&p).unwrap()));
                    }
                    assert!(dumps.iter().any(|(n, _)| n.ends_with("-wal")), "WAL mode");
                    h.store.close().await;
                    for entry in std::fs::read_dir(dir).unwrap() {
                        let p = entry.unwrap().path();
                        dumps.push((p.display().to_string(), std::fs::read(&p).unwrap()));
                    }
                }
                Kind::Postgres => {
                    let pool = sqlx::PgPool::connect(&h.url).await.unwrap();
                    let tables: Vec<(String,)> = sqlx::query_as(
                        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
                    )
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                    assert!(tables.len() >= 9);
                    for (t,) in tables {
                        let rows: Vec<(String,)> =
                            sqlx::query_as(&format!("SELECT CAST(x AS TEXT) FROM {t} x"))
                                .fetch_all(&pool)
                                .await
                                .unwrap();
                        let text: String = rows.into_iter().map(|(r,)| r + "\n").collect();
                        dumps.push((t, text.into_bytes()));
                    }
                    pool.close().await;
                    h.store.close().await;
                }
            }
            assert!(dumps.iter().map(|(_, b)| b.len()).sum::<usize>() > 10_000);
            for secret in &secrets {
                for (name, bytes) in &dumps {
                    assert!(!contains(bytes, secret.as_bytes()), "{secret} in {name}");
                    // bytea columns dump as hex
                    assert!(
                        !contains(bytes, hex::encode(secret.as_bytes()).as_bytes()),
                        "{secret} (hex) in {name}"
                    );
                }
            }
            let logs = captured.0.lock().unwrap().clone();
            assert!(contains(&logs, b"sqlx::query"), "query logs were captured");
            for secret in &secrets {
                assert!(!contains(&logs, secret.as_bytes()), "{secret} in the logs");
            }
        }
    });
}
