//! A real process is killed (SIGKILL) in the middle of writing, then the store is reopened.
//!
//! Each test re-executes this test binary (`current_exe() --exact <test> --nocapture`) with
//! `WXTOKEN_CRASH_CHILD` set, so the child runs the writer loop. The child prints
//! `CRASH-CHILD midway` once it is well into its work and keeps going; the parent reads the line
//! (no sleeps), kills it, reopens the database and checks that nothing was lost or half-written.
//! SQLite always; PostgreSQL too when `WXTOKEN_TEST_PG_URL` is set.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::harness::store::{
    Harness, Kind, appid, authorization, component, open_rt, open_token, refresh,
};
use secrecy::ExposeSecret;
use wxtoken::model::{Credential, Expected, SaveOutcome};
use wxtoken::store::open;
use wxtoken::transfer::{self, ImportOptions};
use wxtoken::vault::{MasterKey, Vault};

const CHILD_ENV: &str = "WXTOKEN_CRASH_CHILD";
const URL_ENV: &str = "WXTOKEN_CRASH_URL";
const KEY_ENV: &str = "WXTOKEN_CRASH_KEY";
const FILE_ENV: &str = "WXTOKEN_CRASH_FILE";
const MARK: &str = "CRASH-CHILD ";
const IMPORT_ROWS: usize = 20_000;
const IMPORT_BATCH: usize = 500;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn spawn_child(test: &str, mode: &str, url: &str, key: &MasterKey, file: Option<&str>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .env(URL_ENV, url)
        .env(KEY_ENV, key.to_base64().expose_secret())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(f) = file {
        cmd.env(FILE_ENV, f);
    }
    cmd.spawn().expect("spawn child")
}

/// Reads the child's stdout until it says `midway`, kills it with SIGKILL, and returns the last
/// `committed N` it reported.
fn kill_when_midway(mut child: Child) -> u64 {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut last = 0;
    let mut midway = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child stdout");
        let Some(msg) = line.strip_prefix(MARK) else {
            continue;
        };
        if let Some(n) = msg.strip_prefix("committed ") {
            last = n.parse().expect("number");
        } else if msg == "midway" {
            midway = true;
            break;
        }
    }
    assert!(midway, "the child ended before reaching midway");
    child.kill().expect("SIGKILL"); // std's Child::kill sends SIGKILL on Unix
    let status = child.wait().expect("wait");
    assert!(
        !status.success(),
        "the child must die by the signal, not finish"
    );
    last
}

fn child_vault() -> Vault {
    let key = MasterKey::parse(&std::env::var(KEY_ENV).expect("key")).expect("parse key");
    Vault::new(&key, &[])
}

async fn integrity_check(h: &Harness) {
    if h.kind == Kind::Sqlite {
        let pool = sqlx::SqlitePool::connect(&h.url).await.unwrap();
        let (r,): (String,) = sqlx::query_as("PRAGMA integrity_check")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(r, "ok");
        pool.close().await;
    }
}

async fn harnesses() -> Vec<Harness> {
    let mut v = vec![Harness::sqlite().await];
    if let Some(pg) = Harness::postgres().await {
        v.push(pg);
    }
    v
}

// ---------------------------------------------------------------------------------------------

const REFRESH_TEST: &str = "crash::refresh_token_survives_sigkill_in_the_middle_of_refresh_writes";

#[test]
fn refresh_token_survives_sigkill_in_the_middle_of_refresh_writes() {
    if std::env::var(CHILD_ENV).as_deref() == Ok("refresh") {
        runtime().block_on(child_refresh_loop());
        return;
    }
    let rt = runtime();
    let harnesses = rt.block_on(harnesses());
    for h in &harnesses {
        let key = MasterKey::generate();
        let v = Vault::new(&key, &[]);
        let c = component("wxcomp0001");
        let a = appid("wxauth0001");
        rt.block_on(async {
            v.verify(h.store.as_ref()).await.unwrap();
            h.store
                .components()
                .ensure_component(&c, crate::harness::store::at(0))
                .await
                .unwrap();
            let w = authorization(&v, &c, &a, "rt-1", Some("at-1"), Expected::Absent, 0);
            h.store.authorizers().save_authorization(&w).await.unwrap();
            h.store.close().await;
        });

        let last = kill_when_midway(spawn_child(REFRESH_TEST, "refresh", &h.url, &key, None));

        rt.block_on(async {
            integrity_check(h).await;
            let s = open(&h.url).await.unwrap();
            v.verify(s.as_ref()).await.unwrap();
            let rec = s
                .authorizers()
                .get_authorizer(&c, &a)
                .await
                .unwrap()
                .unwrap();
            let g = rec.generation;
            assert!(
                g >= last,
                "generation {g} went back before the reported {last}"
            );
            // The access token and refresh token of the last write landed together.
            assert_eq!(open_rt(&v, &c, &a, &rec.refresh_token), format!("rt-{g}"));
            let cred = Credential::authorizer(&c, &a);
            let tok = s.tokens().get_token(&cred).await.unwrap().unwrap();
            assert_eq!(tok.generation, g);
            assert_eq!(
                open_token(&v, &cred, &tok.token.unwrap().sealed),
                format!("at-{g}")
            );
            // Every refresh token ever written is in the history, in order, and opens.
            let hist: Vec<String> = s
                .authorizers()
                .refresh_token_history(&c, &a)
                .await
                .unwrap()
                .iter()
                .map(|e| {
                    assert!(e.applied);
                    open_rt(&v, &c, &a, &e.refresh_token)
                })
                .collect();
            let expected: Vec<String> = (1..=g).map(|i| format!("rt-{i}")).collect();
            assert_eq!(hist, expected);
            // And the store is writable again from where it stopped.
            let next = refresh(&v, &c, &a, g, "at-next", "rt-next", 1);
            assert_eq!(
                s.tokens().save_refresh_result(&next).await.unwrap(),
                SaveOutcome::Saved { generation: g + 1 }
            );
            s.close().await;
        });
    }
}

async fn child_refresh_loop() {
    let url = std::env::var(URL_ENV).expect("url");
    let v = child_vault();
    let s = open(&url).await.expect("child open");
    let c = component("wxcomp0001");
    let a = appid("wxauth0001");
    let mut g = s
        .authorizers()
        .get_authorizer(&c, &a)
        .await
        .unwrap()
        .unwrap()
        .generation;
    loop {
        let r = refresh(
            &v,
            &c,
            &a,
            g,
            &format!("at-{}", g + 1),
            &format!("rt-{}", g + 1),
            0,
        );
        match s.tokens().save_refresh_result(&r).await.unwrap() {
            SaveOutcome::Saved { generation } => g = generation,
            other => panic!("{other:?}"),
        }
        println!("{MARK}committed {g}");
        if g == 200 {
            println!("{MARK}midway");
        }
    }
}

// ---------------------------------------------------------------------------------------------

const IMPORT_TEST: &str = "crash::import_killed_midway_leaves_whole_rows_and_a_rerun_completes_it";

#[test]
fn import_killed_midway_leaves_whole_rows_and_a_rerun_completes_it() {
    if std::env::var(CHILD_ENV).as_deref() == Ok("import") {
        runtime().block_on(child_import());
        return;
    }
    let rt = runtime();
    let harnesses = rt.block_on(harnesses());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("authorizers.csv");
    let mut text = String::from("appid,refresh_token,kind\n");
    for i in 0..IMPORT_ROWS {
        text.push_str(&format!("wxa{i:06},refreshtoken@@@{i},official_account\n"));
    }
    std::fs::write(&file, &text).unwrap();
    let c = component("wxcomp0001");

    for h in &harnesses {
        let key = MasterKey::generate();
        let v = Vault::new(&key, &[]);
        rt.block_on(async {
            v.verify(h.store.as_ref()).await.unwrap();
            h.store.close().await;
        });

        let file_str = file.to_str().unwrap();
        kill_when_midway(spawn_child(
            IMPORT_TEST,
            "import",
            &h.url,
            &key,
            Some(file_str),
        ));

        rt.block_on(async {
            integrity_check(h).await;
            let s = open(&h.url).await.unwrap();
            v.verify(s.as_ref()).await.unwrap();
            let recs = s.authorizers().load_authorizers(Some(&c)).await.unwrap();
            let n = recs.len();
            assert!(
                (2 * IMPORT_BATCH..IMPORT_ROWS).contains(&n),
                "{n} rows after the kill"
            );
            assert_eq!(n % IMPORT_BATCH, 0, "a batch was half-written: {n} rows");
            for rec in &recs {
                let i: usize = rec.appid.as_str()[3..].parse().unwrap();
                assert_eq!(
                    open_rt(&v, &c, &rec.appid, &rec.refresh_token),
                    format!("refreshtoken@@@{i}")
                );
            }
            assert_eq!(
                s.authorizers()
                    .count_refresh_token_history(Some(&c))
                    .await
                    .unwrap(),
                n as u64
            );

            // Re-running completes the import without duplicates.
            let report = transfer::import_file(
                s.as_ref(),
                &v,
                &c,
                &file,
                &ImportOptions::default(),
                &mut |_| {},
            )
            .await
            .unwrap();
            assert!(report.errors.is_empty());
            assert_eq!(report.progress.created as usize, IMPORT_ROWS - n);
            assert_eq!(report.progress.unchanged as usize, n);
            assert_eq!(
                s.authorizers()
                    .load_authorizers(Some(&c))
                    .await
                    .unwrap()
                    .len(),
                IMPORT_ROWS
            );
            assert_eq!(
                s.authorizers()
                    .count_refresh_token_history(Some(&c))
                    .await
                    .unwrap(),
                IMPORT_ROWS as u64
            );
            let again = transfer::import_file(
                s.as_ref(),
                &v,
                &c,
                &file,
                &ImportOptions::default(),
                &mut |_| {},
            )
            .await
            .unwrap();
            assert_eq!(again.progress.unchanged as usize, IMPORT_ROWS);
            s.close().await;
        });
    }
}

async fn child_import() {
    let url = std::env::var(URL_ENV).expect("url");
    let file = std::env::var(FILE_ENV).expect("file");
    let v = child_vault();
    let s = open(&url).await.expect("child open");
    let c = component("wxcomp0001");
    let mut said_midway = false;
    transfer::import_file(
        s.as_ref(),
        &v,
        &c,
        std::path::Path::new(&file),
        &ImportOptions {
            batch_size: IMPORT_BATCH,
            format: None,
        },
        &mut |p| {
            println!("{MARK}committed {}", p.created);
            if p.created >= 2 * IMPORT_BATCH as u64 && !said_midway {
                said_midway = true;
                println!("{MARK}midway");
            }
        },
    )
    .await
    .unwrap();
    // Reaching the end means the parent did not kill us in time; it will notice.
    println!("{MARK}finished");
}
