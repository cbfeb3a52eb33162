//! An older database upgraded in place: the migrations that rebuild tables keep every row.

use std::str::FromStr;

use secrecy::ExposeSecret;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use wxtoken::model::{AppidGrant, ClientCreate, NewClient, Timestamp};
use wxtoken::vault;

/// Schema 9 rebuilds `clients` and `client_reads` on SQLite (to let a revoked client's name be
/// reused): a schema-8 database with a client and its read counts keeps both, ids included.
#[tokio::test]
async fn a_schema_8_sqlite_database_keeps_its_clients_and_read_counts_through_schema_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let older = dir.path().join("migrations");
    std::fs::create_dir(&older).expect("mkdir");
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for entry in std::fs::read_dir(&all).expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if name.as_str() < "20250101000009" {
            std::fs::copy(&path, older.join(&name)).expect("copy");
        }
    }
    let url = format!("sqlite://{}", dir.path().join("wx.db").display());
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::from_str(&url)
                .expect("url")
                .create_if_missing(true)
                .foreign_keys(true),
        )
        .await
        .expect("open");
    sqlx::migrate::Migrator::new(older.as_path())
        .await
        .expect("migrator")
        .run(&pool)
        .await
        .expect("schema 8");
    let key = vault::generate_api_key();
    sqlx::query(
        "INSERT INTO clients (id, name, key_hash, key_hint, grant_appids, admin, created_at, \
         revoked_at) VALUES (7, 'billing', $1, $2, '*', 0, 1000, NULL), \
         (8, 'old', $3, 'wxt_old', '*', 0, 1000, 2000)",
    )
    .bind(&key.hash.0[..])
    .bind(key.hint.as_str())
    .bind(&vault::generate_api_key().hash.0[..])
    .execute(&pool)
    .await
    .expect("clients");
    sqlx::query(
        "INSERT INTO client_reads (client_id, component_appid, appid, reads, last_read_at) \
         VALUES (7, 'wxcomp0001', 'wxauth0001', 41, 5000)",
    )
    .execute(&pool)
    .await
    .expect("reads");
    pool.close().await;

    let store = wxtoken::store::open(&url)
        .await
        .expect("upgraded to the latest schema");
    let found = store
        .clients()
        .find_client_by_key(&vault::hash_api_key(key.key.expose_secret()))
        .await
        .expect("find")
        .expect("the client survived");
    assert_eq!((found.id, found.name.as_str()), (7, "billing"));
    let counts = store.clients().read_counts(Some(7)).await.expect("counts");
    assert_eq!(counts.len(), 1);
    assert_eq!(counts[0].count, 41);
    // The revoked name is free now; the live one is not.
    let new = |name: &str| NewClient {
        name: name.into(),
        key_hash: vault::generate_api_key().hash,
        key_hint: "wxt_new".into(),
        grant: AppidGrant::All,
        admin: false,
        created_at: Timestamp::now(),
    };
    assert!(matches!(
        store.clients().create_client(&new("old")).await.expect("create"),
        ClientCreate::Created(c) if c.id > 8
    ));
    assert_eq!(
        store
            .clients()
            .create_client(&new("billing"))
            .await
            .expect("create"),
        ClientCreate::NameTaken
    );
    // Foreign keys still hold: a read count for a client that does not exist is refused.
    let bad = store
        .clients()
        .add_read_counts(&[wxtoken::model::ReadCount {
            client_id: 999,
            component: wxtoken::model::ComponentAppid::parse("wxcomp0001").expect("appid"),
            appid: wxtoken::model::Appid::parse("wxauth0001").expect("appid"),
            count: 1,
            last_read_at: Timestamp::now(),
        }])
        .await;
    assert!(bad.is_err(), "{bad:?}");
    store.close().await;
}
