//! The SQLite backend: the embedded default, one database file, nothing to install.
//!
//! Depends on `store` (trait, error, shared SQL) and sqlx's SQLite driver.
//!
//! Invariants:
//! - WAL journal (readers never block the writer), `synchronous = FULL` (a committed refresh token
//!   survives a power cut, not only a process kill), a busy timeout, foreign keys on.
//! - One writer connection: writes in this process queue in the pool instead of failing busy, and
//!   every write transaction starts with `BEGIN IMMEDIATE`, taking the file's write lock up front,
//!   so a read-then-write transaction can never fail to upgrade when another process (a CLI
//!   command next to the server) wrote in between. Reads use a separate pool.
//! - This backend behaves as the only replica: the engine uses its in-process lease, and there is
//!   no change stream (`listen_token_changes` is `None`).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{StoreError, StoreOptions, check_schema_version};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A SQLite-backed [`super::Store`].
pub(crate) struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` and migrates it.
    pub(crate) async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let memory = url.contains(":memory:") || url.contains("mode=memory");
        let connect = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(options.acquire_timeout)
            .foreign_keys(true);
        let target = format!("the SQLite database {}", connect.get_filename().display());
        if !memory {
            // SQLite's own error for a missing directory is only "unable to open database file".
            let dir = connect.get_filename().parent();
            if let Some(dir) = dir.filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
                return Err(StoreError::Open {
                    target,
                    reason: format!("the directory {} does not exist", dir.display()),
                    unavailable: false,
                });
            }
        }
        let write_connect = if options.bulk {
            connect
                .clone()
                .pragma("cache_size", "-262144")
                .pragma("wal_autocheckpoint", "20000")
        } else {
            connect.clone()
        };
        let mut write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout);
        if memory {
            // Each connection to :memory: is its own database: keep exactly one, forever.
            write = write
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let write = write
            .connect_with(write_connect)
            .await
            .map_err(|e| super::open_error(target, e))?;
        let read = if memory {
            write.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(options.max_connections.clamp(1, 8))
                .acquire_timeout(options.acquire_timeout)
                .idle_timeout(Some(Duration::from_secs(600)))
                .connect_with(connect)
                .await?
        };
        let has_table: Option<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&write)
        .await?;
        if has_table.is_some() {
            let (applied,): (Option<i64>,) =
                sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                    .fetch_one(&write)
                    .await?;
            check_schema_version(&MIGRATOR, applied)?;
        }
        MIGRATOR.run(&write).await.map_err(StoreError::Migration)?;
        Ok(Self { read, write })
    }

    fn read_pool(&self) -> &SqlitePool {
        &self.read
    }

    fn write_pool(&self) -> &SqlitePool {
        &self.write
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.write.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn close_pools(&self) {
        self.write.close().await;
        self.read.close().await;
    }

    /// One process owns the file: nobody else changes tokens, so there is nothing to listen to.
    async fn listen_token_changes(&self) -> Result<Option<super::TokenChanges>, StoreError> {
        Ok(None)
    }
}

super::sql::impl_store!(SqliteStore, sqlx::Sqlite, Backend::Sqlite);

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use sqlx::Connection;

    use crate::model::{ComponentAppid, Sealed, Timestamp};
    use crate::store::{self, StoreOptions};

    fn sealed(n: u8) -> Sealed {
        Sealed {
            key_id: crate::model::KeyId::parse("k1").expect("key id"),
            nonce: [n; crate::model::NONCE_LEN],
            ciphertext: vec![n; 16],
        }
    }

    /// Suspected hang: writes that time out on another process's write lock (some of them
    /// cancelled mid-call, as a caller's timeout would) must not leave the writer connection
    /// unusable: once the lock is released, the next write lands promptly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_land_promptly_once_another_process_releases_the_write_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("wx.db").display());
        let component = ComponentAppid::parse("wxcomponent0000001").expect("component");
        // The 20 ms acquire timeout is for the contended rounds below. Creating the file and
        // migrating it can take longer than that on a busy machine, so a store with the default
        // timeout does the setup first.
        {
            let setup = store::open(&url).await.expect("store");
            setup
                .components()
                .ensure_component(&component, Timestamp::now())
                .await
                .expect("component");
            setup.close().await;
        }
        let options = StoreOptions {
            acquire_timeout: Duration::from_millis(20),
            ..StoreOptions::default()
        };
        let mut opened = store::open_with(&url, &options).await;
        for _ in 0..50 {
            if opened.is_ok() {
                break;
            }
            opened = store::open_with(&url, &options).await;
        }
        let store = opened.expect("store");
        let mut blocker = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("connect");
        for round in 0..5u8 {
            sqlx::query("BEGIN EXCLUSIVE")
                .execute(&mut blocker)
                .await
                .expect("lock");
            let failures = Arc::new(AtomicU32::new(0));
            let mut writers = tokio::task::JoinSet::new();
            for w in 0..6u8 {
                let (store, component, failures) =
                    (Arc::clone(&store), component.clone(), Arc::clone(&failures));
                writers.spawn(async move {
                    for i in 0..20u8 {
                        let n = round.wrapping_mul(100).wrapping_add(w * 20 + i);
                        let write = async {
                            match w % 3 {
                                0 => store
                                    .components()
                                    .record_ticket(&component, &sealed(n), Timestamp::now())
                                    .await
                                    .map(|_| ()),
                                1 => {
                                    store
                                        .components()
                                        .ensure_component(&component, Timestamp::now())
                                        .await
                                }
                                _ => {
                                    store
                                        .direct()
                                        .save_force_budget(&crate::model::ForceBudgetRecord {
                                            credential: crate::model::Credential::component(
                                                &component,
                                            ),
                                            day_start: Timestamp::now(),
                                            used: u32::from(n),
                                            last: None,
                                        })
                                        .await
                                }
                            }
                        };
                        // Some callers give up mid-call (their future is dropped).
                        let cancel_after = Duration::from_millis(u64::from(n % 7) * 5 + 1);
                        match tokio::time::timeout(cancel_after, write).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) | Err(_) => {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
            while writers.join_next().await.is_some() {}
            assert!(failures.load(Ordering::Relaxed) > 0, "the lock was held");
            sqlx::query("ROLLBACK")
                .execute(&mut blocker)
                .await
                .expect("unlock");
            let started = std::time::Instant::now();
            let landed = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match store
                        .components()
                        .record_ticket(&component, &sealed(250), Timestamp::now())
                        .await
                    {
                        Ok(_) => return,
                        Err(e) => {
                            eprintln!("round {round}: still failing after release: {e:?}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            })
            .await;
            assert!(
                landed.is_ok(),
                "round {round}: a write still fails 10 s after the lock was released"
            );
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "round {round}: took {:?}",
                started.elapsed()
            );
        }
    }
}

/// The database file a `sqlite:` URL names; `None` for an in-memory database or another scheme.
pub fn database_file(url: &str) -> Option<PathBuf> {
    if !url.starts_with("sqlite:") || url.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    let options = SqliteConnectOptions::from_str(url).ok()?;
    Some(options.get_filename().to_path_buf())
}

/// The one-writer lock of a SQLite database (SPEC.md rule 12): an exclusive `flock` on
/// `<database>.lock`, held by the serving process for its whole life and released by the OS when
/// it exits, however it exits. A second `serve` on the same file is refused instead of refreshing
/// beside the first (the 40001 fight). CLI commands do not take it: they run beside a server.
#[derive(Debug)]
pub struct ServeLock {
    _file: std::fs::File,
}

impl ServeLock {
    /// Takes the lock of the database `url` names; `Ok(None)` when there is no file to lock.
    /// `Err` names the file and, when it can, the process holding it (pid, host, start time).
    pub fn acquire(url: &str) -> Result<Option<Self>, String> {
        use std::io::{Read, Seek, Write};
        let Some(db) = database_file(url) else {
            return Ok(None);
        };
        let mut path = db.into_os_string();
        path.push(".lock");
        let path = PathBuf::from(path);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("opening the lock file {}: {e}", path.display()))?;
        let flags = rustix::fs::FlockOperation::NonBlockingLockExclusive;
        if let Err(e) = rustix::fs::flock(&file, flags) {
            if e != rustix::io::Errno::WOULDBLOCK {
                return Err(format!("locking {}: {e}", path.display()));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                "another process".to_owned()
            } else {
                format!("another `wxtoken serve` ({holder})")
            };
            return Err(format!(
                "{holder} already serves this SQLite database (lock {}): one process per SQLite \
                 file; stop it first, or use PostgreSQL for several replicas",
                path.display()
            ));
        }
        // The holder's name, for the message of whoever is refused next.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let since = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let _ = writeln!(
            file,
            "pid {} on {} since {since}",
            std::process::id(),
            host.trim()
        );
        let _ = file.flush();
        Ok(Some(Self { _file: file }))
    }
}
