//! Store benchmark: `cargo bench -p wxtoken --bench store`.
//!
//! Imports 100,000 authorizers (CSV, realistic value sizes) into a fresh SQLite database, writes
//! an access token for each (refresh results in batches, and some one at a time), then measures a
//! cold start: open the database, check the master key, load and decrypt every authorizer and
//! every token. Prints the figures; asserts nothing (see docs/BENCHMARKS.md).
//! `WXTOKEN_BENCH_AUTHORIZERS` overrides the count; `WXTOKEN_BENCH_PG_URL` also runs the import
//! and the cold start against that PostgreSQL database (which must be empty).

use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::RngCore as _;
use secrecy::ExposeSecret;
use wxtoken::model::{
    Appid, ComponentAppid, Credential, CredentialKind, NewAccessToken, RefreshResult, SecretSlot,
    Timestamp, TokenSource,
};
use wxtoken::store::open;
use wxtoken::transfer::{self, ImportOptions};
use wxtoken::vault::{MasterKey, Vault};

fn random_text(len: usize) -> String {
    let mut raw = vec![0u8; len];
    rand::rng().fill_bytes(&mut raw);
    let mut s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    s.truncate(len);
    s
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

const COLD_URL_ENV: &str = "WXTOKEN_BENCH_COLD_URL";
const COLD_KEY_ENV: &str = "WXTOKEN_BENCH_COLD_KEY";

fn main() {
    if let Ok(url) = std::env::var(COLD_URL_ENV) {
        let key = MasterKey::parse(&std::env::var(COLD_KEY_ENV).expect("key")).expect("key");
        let n = std::env::var("WXTOKEN_BENCH_AUTHORIZERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let backend = if url.starts_with("sqlite") {
            "sqlite"
        } else {
            "postgres"
        };
        rt.block_on(cold_start(
            &format!("{backend}, fresh process"),
            &url,
            &Vault::new(&key, &[]),
            n,
        ));
        return;
    }
    let n: usize = std::env::var("WXTOKEN_BENCH_AUTHORIZERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("authorizers.csv");
    let mut text = String::from("appid,refresh_token,kind,appsecret\n");
    for i in 0..n {
        // Shapes as WeChat issues them: wx + 16 hex; refreshtoken@@@ + ~86 chars.
        let secret = if i % 10 == 0 {
            random_text(32)
        } else {
            String::new()
        };
        let kind = if i % 2 == 0 {
            "official_account"
        } else {
            "mini_program"
        };
        text.push_str(&format!(
            "wx{i:016x},refreshtoken@@@{},{kind},{secret}\n",
            random_text(86)
        ));
    }
    std::fs::write(&csv, &text).expect("write csv");
    println!(
        "store bench: {n} authorizers, {} CPUs, CSV {:.1} MB",
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        text.len() as f64 / 1e6
    );
    drop(text);

    let key = MasterKey::generate();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    rt.block_on(run("sqlite", &url, &csv, &key, n));
    let db = std::fs::metadata(dir.path().join("bench.db")).map_or(0, |m| m.len());
    println!("  sqlite database file: {:.1} MB", db as f64 / 1e6);
    if let Ok(pg) = std::env::var("WXTOKEN_BENCH_PG_URL") {
        rt.block_on(run("postgres", &pg, &csv, &key, n));
    }
}

async fn run(backend: &str, url: &str, csv: &std::path::Path, key: &MasterKey, n: usize) {
    let c = ComponentAppid::parse("wxbenchcomponent").expect("appid");
    let vault = Vault::new(key, &[]);
    let store = open(url).await.expect("open");
    vault.verify(store.as_ref()).await.expect("verify");

    let t = Instant::now();
    let report = transfer::import_file(
        store.as_ref(),
        &vault,
        &c,
        csv,
        &ImportOptions::default(),
        &mut |_| {},
    )
    .await
    .expect("import");
    let import = t.elapsed();
    assert_eq!(
        report.progress.created as usize,
        n,
        "{:?}",
        report.errors.first()
    );
    println!(
        "[{backend}] import {n} authorizers (batches of 500): {}",
        secs(import)
    );

    let t = Instant::now();
    let again = transfer::import_file(
        store.as_ref(),
        &vault,
        &c,
        csv,
        &ImportOptions::default(),
        &mut |_| {},
    )
    .await
    .expect("re-import");
    assert_eq!(again.progress.unchanged as usize, n);
    println!(
        "[{backend}] re-import, all unchanged: {}",
        secs(t.elapsed())
    );

    let t = Instant::now();
    let now = Timestamp::now();
    let appids: Vec<Appid> = store
        .authorizers()
        .load_authorizers(Some(&c))
        .await
        .expect("load")
        .into_iter()
        .map(|a| a.appid)
        .collect();
    for chunk in appids.chunks(1000) {
        let results: Vec<RefreshResult> = chunk
            .iter()
            .map(|a| refresh_result(&vault, &c, a, 1, now))
            .collect();
        store
            .tokens()
            .save_refresh_results(&results)
            .await
            .expect("save");
    }
    println!(
        "[{backend}] write {n} refresh results (batches of 1000): {}",
        secs(t.elapsed())
    );

    let single = 500.min(n);
    let t = Instant::now();
    for a in &appids[..single] {
        let r = refresh_result(&vault, &c, a, 2, now);
        store
            .tokens()
            .save_refresh_result(&r)
            .await
            .expect("save one");
    }
    let per = t.elapsed() / u32::try_from(single.max(1)).unwrap_or(1);
    println!(
        "[{backend}] one fenced refresh write (own transaction, durable commit): {:.2} ms each",
        per.as_secs_f64() * 1e3
    );
    store.close().await;

    cold_start(backend, url, &vault, n).await;
    // The same in a fresh process, whose RSS is then only what a cold start holds.
    let out = std::process::Command::new(std::env::current_exe().expect("current_exe"))
        .env(COLD_URL_ENV, url)
        .env(COLD_KEY_ENV, key.to_base64().expose_secret())
        .env("WXTOKEN_BENCH_AUTHORIZERS", n.to_string())
        .output()
        .expect("run the cold-start process");
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

/// Cold start, as a restarting server does it: open, check the key, load and decrypt everything.
async fn cold_start(backend: &str, url: &str, vault: &Vault, n: usize) {
    let t0 = Instant::now();
    let store = open(url).await.expect("reopen");
    vault.verify(store.as_ref()).await.expect("verify");
    let opened = t0.elapsed();
    let t = Instant::now();
    let authorizers = store
        .authorizers()
        .load_authorizers(None)
        .await
        .expect("load");
    let load_a = t.elapsed();
    let t = Instant::now();
    let mut bytes = 0usize;
    for a in &authorizers {
        let rt = vault
            .open_string(
                SecretSlot::RefreshToken {
                    component: &a.component,
                    appid: &a.appid,
                },
                &a.refresh_token,
            )
            .expect("open");
        bytes += rt.expose_secret().len();
        if let Some(s) = &a.appsecret {
            let s = vault
                .open_string(
                    SecretSlot::AuthorizerAppsecret {
                        component: &a.component,
                        appid: &a.appid,
                    },
                    s,
                )
                .expect("open");
            bytes += s.expose_secret().len();
        }
        if let Some(tok) = &a.token {
            let credential = Credential::authorizer(&a.component, &a.appid);
            let s = vault
                .open_string(
                    SecretSlot::AccessToken {
                        credential: &credential,
                    },
                    &tok.sealed,
                )
                .expect("open");
            bytes += s.expose_secret().len();
        }
    }
    let dec_a = t.elapsed();
    let t = Instant::now();
    // Authorizers' tokens came with them; the rest (component, direct accounts) are few.
    let mut tokens = store
        .tokens()
        .load_tokens(None, Some(CredentialKind::Component))
        .await
        .expect("load tokens");
    tokens.extend(
        store
            .tokens()
            .load_tokens(None, Some(CredentialKind::Direct))
            .await
            .expect("load tokens"),
    );
    let load_t = t.elapsed();
    let t = Instant::now();
    for r in &tokens {
        if let Some(tok) = &r.token {
            let s = vault
                .open_string(
                    SecretSlot::AccessToken {
                        credential: &r.credential,
                    },
                    &tok.sealed,
                )
                .expect("open");
            bytes += s.expose_secret().len();
        }
    }
    let dec_t = t.elapsed();
    let total = t0.elapsed();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_owned())
            .unwrap_or_default()
    };
    let rss = format!("{} (peak {})", field("VmRSS:"), field("VmHWM:"));
    assert_eq!(authorizers.len(), n);
    println!("[{backend}] process RSS holding both loaded sets: {rss}");
    println!(
        "[{backend}] cold start, {} authorizers with their tokens + {} other tokens: {} total \
         (open+migrate+key check {}, load authorizers {}, decrypt {}, load other tokens {}, decrypt {}; \
         {:.1} MB of plaintext)",
        authorizers.len(),
        tokens.len(),
        secs(total),
        secs(opened),
        secs(load_a),
        secs(dec_a),
        secs(load_t),
        secs(dec_t),
        bytes as f64 / 1e6
    );
    store.close().await;
}

fn refresh_result(
    vault: &Vault,
    c: &ComponentAppid,
    a: &Appid,
    generation: u64,
    now: Timestamp,
) -> RefreshResult {
    let credential = Credential::authorizer(c, a);
    let token = format!("89_{}", random_text(150));
    RefreshResult {
        access_token: NewAccessToken {
            sealed: vault
                .seal(
                    SecretSlot::AccessToken {
                        credential: &credential,
                    },
                    token.as_bytes(),
                )
                .expect("seal"),
            issued_at: now,
            expires_at: now.plus(Duration::from_secs(7200)),
            refresh_at: Some(now.plus(Duration::from_secs(3600))),
            source: TokenSource::AuthorizerToken,
        },
        credential,
        expected_generation: generation,
        refresh_token: Some(
            vault
                .seal(
                    SecretSlot::RefreshToken {
                        component: c,
                        appid: a,
                    },
                    format!("refreshtoken@@@{}", random_text(86)).as_bytes(),
                )
                .expect("seal"),
        ),
        at: now,
    }
}
