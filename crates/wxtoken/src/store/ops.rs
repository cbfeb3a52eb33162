//! The operations role of the store: what running servers and operators' tools tell each other
//! (`servers`, `store_changes`) and what the guards found (`rogue_refreshes`).
//!
//! [`OpsStore`] is the contract; `ops_sql!` its SQL, shared by both backends (conventions in
//! `sql.rs`) and expanded for each backend type by `sql::impl_store!`.

use async_trait::async_trait;

use crate::model::{
    ComponentAppid, Credential, GatewayCallCount, RefreshMinute, Timestamp, UiSessionRecord,
};
use crate::store::StoreError;

/// Refreshes of one credential that wxtoken did not make, as WeChat showed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RogueRecord {
    pub first_at: Timestamp,
    pub last_at: Timestamp,
    pub times: u64,
    /// The client whose report revealed the last one.
    pub last_client: String,
}

/// One running server, as its heartbeat says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRecord {
    /// Unique per process start.
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub started_at: Timestamp,
    pub heartbeat_at: Timestamp,
    /// The master key ids it can open (never a key).
    pub key_ids: Vec<String>,
}

/// What a change made outside a server is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeScope {
    /// A direct account added, changed or removed (`subject`: its appid).
    Account,
    /// An authorizer imported or changed (`subject`: its appid; none: every authorizer of the
    /// component, after an import).
    Authorizer,
    /// An API client added or revoked (`subject`: its id).
    Client,
    /// The master keys rotated or secrets re-sealed.
    Keys,
}

impl ChangeScope {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeScope::Account => "account",
            ChangeScope::Authorizer => "authorizer",
            ChangeScope::Client => "client",
            ChangeScope::Keys => "keys",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "account" => ChangeScope::Account,
            "authorizer" => ChangeScope::Authorizer,
            "client" => ChangeScope::Client,
            "keys" => ChangeScope::Keys,
            _ => return None,
        })
    }
}

/// One change made outside a server (the CLI, another replica's admin API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreChange {
    pub scope: ChangeScope,
    pub component: Option<ComponentAppid>,
    pub subject: Option<String>,
}

impl StoreChange {
    pub fn new(
        scope: ChangeScope,
        component: Option<&ComponentAppid>,
        subject: Option<&str>,
    ) -> Self {
        Self {
            scope,
            component: component.cloned(),
            subject: subject.map(str::to_owned),
        }
    }
}

/// What running servers and operators' tools tell each other, and what the guards found.
#[async_trait]
pub trait OpsStore: Send + Sync {
    /// Counts one rogue refresh of `credential`, revealed by `client`'s report at `at`.
    async fn record_rogue_refresh(
        &self,
        credential: &Credential,
        at: Timestamp,
        client: &str,
    ) -> Result<(), StoreError>;

    /// The rogue refreshes of `credential`, if any was ever found.
    async fn rogue_refresh(
        &self,
        credential: &Credential,
    ) -> Result<Option<RogueRecord>, StoreError>;

    /// Writes (or refreshes) a server's heartbeat row.
    async fn heartbeat(&self, server: &ServerRecord) -> Result<(), StoreError>;

    /// Servers whose last heartbeat is at or after `since`.
    async fn live_servers(&self, since: Timestamp) -> Result<Vec<ServerRecord>, StoreError>;

    /// Removes a server's row (it stopped).
    async fn remove_server(&self, id: &str) -> Result<(), StoreError>;

    /// Forgets servers whose last heartbeat is before `before` (killed, never stopped).
    async fn prune_servers(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// Records a change made outside the servers; returns its sequence number.
    async fn record_change(&self, change: &StoreChange, at: Timestamp) -> Result<i64, StoreError>;

    /// Changes with a sequence number above `after`, oldest first, at most `limit`; `None` for
    /// a row this binary cannot read (a newer version's scope).
    async fn changes_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Option<StoreChange>)>, StoreError>;

    /// The newest change's sequence number (0 if none).
    async fn latest_change(&self) -> Result<i64, StoreError>;

    /// Forgets changes recorded before `before`.
    async fn prune_changes(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// Adds batched gateway call counts (one transaction, in (day, appid, path) order). A
    /// transient `Err`: nothing was added; retry with the same counts.
    async fn add_gateway_calls(&self, counts: &[GatewayCallCount]) -> Result<(), StoreError>;

    /// The gateway call counts of one Beijing day (`YYYY-MM-DD`), of one appid or all, most
    /// calls first.
    async fn gateway_calls(
        &self,
        day: &str,
        appid: Option<&str>,
    ) -> Result<Vec<GatewayCallCount>, StoreError>;

    /// Forgets the gateway call counts of days before `day` (`YYYY-MM-DD`).
    async fn prune_gateway_calls(&self, day: &str) -> Result<u64, StoreError>;

    /// Stores a new dashboard session or one-time sign-in link.
    async fn create_ui_session(&self, session: &UiSessionRecord) -> Result<(), StoreError>;

    /// The dashboard session or link whose id hashes to `digest`.
    async fn ui_session(&self, digest: &[u8; 32]) -> Result<Option<UiSessionRecord>, StoreError>;

    /// Records a use of a session.
    async fn touch_ui_session(&self, digest: &[u8; 32], at: Timestamp) -> Result<(), StoreError>;

    /// Deletes a session or link and returns it (a one-time link is taken exactly once, even by
    /// two replicas at the same moment).
    async fn take_ui_session(
        &self,
        digest: &[u8; 32],
    ) -> Result<Option<UiSessionRecord>, StoreError>;

    /// How many sessions and links are stored.
    async fn count_ui_sessions(&self) -> Result<u64, StoreError>;

    /// Deletes sessions and links created before `created_before` or unused since
    /// `seen_before`.
    async fn prune_ui_sessions(
        &self,
        created_before: Timestamp,
        seen_before: Timestamp,
    ) -> Result<u64, StoreError>;

    /// Adds one server's refreshes of one minute (added to what it stored for that minute).
    async fn add_refresh_minute(
        &self,
        server_id: &str,
        minute: &RefreshMinute,
    ) -> Result<(), StoreError>;

    /// Refreshes per minute of every server together, from minute `since` on, oldest first.
    async fn refresh_minutes(&self, since: i64) -> Result<Vec<RefreshMinute>, StoreError>;

    /// Forgets the refresh counts of minutes before `before`.
    async fn prune_refresh_minutes(&self, before: i64) -> Result<u64, StoreError>;
}

/// `impl OpsStore` for a backend type (see `sql::impl_store!`).
macro_rules! ops_sql {
    ($store:ident, $db:ty) => {
        #[async_trait::async_trait]
        impl crate::store::OpsStore for $store {
            async fn record_rogue_refresh(
                &self,
                credential: &Credential,
                at: Timestamp,
                client: &str,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO rogue_refreshes (component_appid, kind, appid, first_at, \
                     last_at, times, last_client) VALUES ($1, $2, $3, $4, $4, 1, $5) \
                     ON CONFLICT (component_appid, kind, appid) DO UPDATE SET \
                     last_at = excluded.last_at, times = rogue_refreshes.times + 1, \
                     last_client = excluded.last_client",
                )
                .bind(credential.component.as_str())
                .bind(credential.kind.as_str())
                .bind(credential.appid.as_str())
                .bind(at.as_millis())
                .bind(client)
                .execute(self.write_pool())
                .await?;
                Ok(())
            }

            async fn rogue_refresh(
                &self,
                credential: &Credential,
            ) -> Result<Option<crate::store::RogueRecord>, StoreError> {
                let row: Option<(i64, i64, i64, String)> = sqlx::query_as(
                    "SELECT first_at, last_at, times, last_client FROM rogue_refreshes \
                     WHERE component_appid = $1 AND kind = $2 AND appid = $3",
                )
                .bind(credential.component.as_str())
                .bind(credential.kind.as_str())
                .bind(credential.appid.as_str())
                .fetch_optional(self.read_pool())
                .await?;
                Ok(
                    row.map(|(first, last, times, client)| crate::store::RogueRecord {
                        first_at: Timestamp::from_millis(first),
                        last_at: Timestamp::from_millis(last),
                        times: u64::try_from(times).unwrap_or(0),
                        last_client: client,
                    }),
                )
            }

            async fn heartbeat(
                &self,
                server: &crate::store::ServerRecord,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO servers (id, host, pid, started_at, heartbeat_at, key_ids) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET \
                     heartbeat_at = excluded.heartbeat_at, key_ids = excluded.key_ids",
                )
                .bind(&server.id)
                .bind(&server.host)
                .bind(i64::from(server.pid))
                .bind(server.started_at.as_millis())
                .bind(server.heartbeat_at.as_millis())
                .bind(server.key_ids.join(","))
                .execute(self.write_pool())
                .await?;
                Ok(())
            }

            async fn live_servers(
                &self,
                since: Timestamp,
            ) -> Result<Vec<crate::store::ServerRecord>, StoreError> {
                let rows: Vec<(String, String, i64, i64, i64, String)> = sqlx::query_as(
                    "SELECT id, host, pid, started_at, heartbeat_at, key_ids FROM servers \
                     WHERE heartbeat_at >= $1 ORDER BY started_at",
                )
                .bind(since.as_millis())
                .fetch_all(self.read_pool())
                .await?;
                Ok(rows
                    .into_iter()
                    .map(
                        |(id, host, pid, started, beat, keys)| crate::store::ServerRecord {
                            id,
                            host,
                            pid: u32::try_from(pid).unwrap_or(0),
                            started_at: Timestamp::from_millis(started),
                            heartbeat_at: Timestamp::from_millis(beat),
                            key_ids: keys
                                .split(',')
                                .filter(|k| !k.is_empty())
                                .map(str::to_owned)
                                .collect(),
                        },
                    )
                    .collect())
            }

            async fn remove_server(&self, id: &str) -> Result<(), StoreError> {
                sqlx::query("DELETE FROM servers WHERE id = $1")
                    .bind(id)
                    .execute(self.write_pool())
                    .await?;
                Ok(())
            }

            async fn prune_servers(&self, before: Timestamp) -> Result<u64, StoreError> {
                Ok(sqlx::query("DELETE FROM servers WHERE heartbeat_at < $1")
                    .bind(before.as_millis())
                    .execute(self.write_pool())
                    .await?
                    .rows_affected())
            }

            async fn record_change(
                &self,
                change: &crate::store::StoreChange,
                at: Timestamp,
            ) -> Result<i64, StoreError> {
                let (seq,): (i64,) = sqlx::query_as(
                    "INSERT INTO store_changes (at, scope, component_appid, subject) \
                     VALUES ($1, $2, $3, $4) RETURNING seq",
                )
                .bind(at.as_millis())
                .bind(change.scope.as_str())
                .bind(change.component.as_ref().map(ComponentAppid::as_str))
                .bind(change.subject.as_deref())
                .fetch_one(self.write_pool())
                .await?;
                Ok(seq)
            }

            async fn changes_after(
                &self,
                after: i64,
                limit: u32,
            ) -> Result<Vec<(i64, Option<crate::store::StoreChange>)>, StoreError> {
                let rows: Vec<(i64, String, Option<String>, Option<String>)> = sqlx::query_as(
                    "SELECT seq, scope, component_appid, subject FROM store_changes \
                     WHERE seq > $1 ORDER BY seq LIMIT $2",
                )
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(self.read_pool())
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(seq, scope, component, subject)| {
                        // A scope or appid this binary cannot read (a newer CLI): None.
                        let scope = crate::store::ChangeScope::parse(&scope);
                        let component = match component {
                            Some(c) => ComponentAppid::parse(&c).ok().map(Some),
                            None => Some(None),
                        };
                        let change = scope.zip(component).map(|(scope, component)| {
                            crate::store::StoreChange {
                                scope,
                                component,
                                subject,
                            }
                        });
                        (seq, change)
                    })
                    .collect())
            }

            async fn latest_change(&self) -> Result<i64, StoreError> {
                let (seq,): (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM store_changes")
                    .fetch_one(self.read_pool())
                    .await?;
                Ok(seq.unwrap_or(0))
            }

            async fn prune_changes(&self, before: Timestamp) -> Result<u64, StoreError> {
                Ok(sqlx::query("DELETE FROM store_changes WHERE at < $1")
                    .bind(before.as_millis())
                    .execute(self.write_pool())
                    .await?
                    .rows_affected())
            }

            async fn add_gateway_calls(
                &self,
                counts: &[crate::model::GatewayCallCount],
            ) -> Result<(), StoreError> {
                if counts.is_empty() {
                    return Ok(());
                }
                let order = lock_order(counts, |c| {
                    (c.day.as_str(), c.appid.as_str(), c.path.as_str())
                });
                let mut tx = self.begin_write().await?;
                for c in order.iter().map(|&i| &counts[i]) {
                    sqlx::query(
                        "INSERT INTO gateway_calls (day, appid, path, calls, errors) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (day, appid, path) DO UPDATE \
                         SET calls = gateway_calls.calls + excluded.calls, \
                         errors = gateway_calls.errors + excluded.errors",
                    )
                    .bind(c.day.as_str())
                    .bind(c.appid.as_str())
                    .bind(c.path.as_str())
                    .bind(db_count(c.calls)?)
                    .bind(db_count(c.errors)?)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn gateway_calls(
                &self,
                day: &str,
                appid: Option<&str>,
            ) -> Result<Vec<crate::model::GatewayCallCount>, StoreError> {
                let rows: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
                    "SELECT day, appid, path, calls, errors FROM gateway_calls \
                     WHERE day = $1 AND ($2 IS NULL OR appid = $2) \
                     ORDER BY calls DESC, appid, path",
                )
                .bind(day)
                .bind(appid)
                .fetch_all(self.read_pool())
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(day, appid, path, calls, errors)| crate::model::GatewayCallCount {
                        day,
                        appid,
                        path,
                        calls: u64::try_from(calls).unwrap_or(0),
                        errors: u64::try_from(errors).unwrap_or(0),
                    })
                    .collect())
            }

            async fn prune_gateway_calls(&self, day: &str) -> Result<u64, StoreError> {
                Ok(sqlx::query("DELETE FROM gateway_calls WHERE day < $1")
                    .bind(day)
                    .execute(self.write_pool())
                    .await?
                    .rows_affected())
            }

            async fn create_ui_session(
                &self,
                session: &crate::model::UiSessionRecord,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO ui_sessions \
                     (digest, kind, key_hash, client_name, created_at, last_seen_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&session.digest[..])
                .bind(session.kind.as_str())
                .bind(&session.key_hash.0[..])
                .bind(session.client_name.as_str())
                .bind(session.created_at.as_millis())
                .bind(session.last_seen_at.as_millis())
                .execute(self.write_pool())
                .await?;
                Ok(())
            }

            async fn ui_session(
                &self,
                digest: &[u8; 32],
            ) -> Result<Option<crate::model::UiSessionRecord>, StoreError> {
                let row: Option<crate::store::ops::UiSessionRow> = sqlx::query_as(
                    "SELECT digest, kind, key_hash, client_name, created_at, last_seen_at \
                     FROM ui_sessions WHERE digest = $1",
                )
                .bind(&digest[..])
                .fetch_optional(self.read_pool())
                .await?;
                row.map(crate::store::ops::ui_session_record).transpose()
            }

            async fn touch_ui_session(
                &self,
                digest: &[u8; 32],
                at: Timestamp,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "UPDATE ui_sessions SET last_seen_at = $2 \
                     WHERE digest = $1 AND last_seen_at < $2",
                )
                .bind(&digest[..])
                .bind(at.as_millis())
                .execute(self.write_pool())
                .await?;
                Ok(())
            }

            async fn take_ui_session(
                &self,
                digest: &[u8; 32],
            ) -> Result<Option<crate::model::UiSessionRecord>, StoreError> {
                let row: Option<crate::store::ops::UiSessionRow> = sqlx::query_as(
                    "DELETE FROM ui_sessions WHERE digest = $1 RETURNING \
                     digest, kind, key_hash, client_name, created_at, last_seen_at",
                )
                .bind(&digest[..])
                .fetch_optional(self.write_pool())
                .await?;
                row.map(crate::store::ops::ui_session_record).transpose()
            }

            async fn count_ui_sessions(&self) -> Result<u64, StoreError> {
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM ui_sessions")
                    .fetch_one(self.read_pool())
                    .await?;
                Ok(u64::try_from(n).unwrap_or(0))
            }

            async fn prune_ui_sessions(
                &self,
                created_before: Timestamp,
                seen_before: Timestamp,
            ) -> Result<u64, StoreError> {
                Ok(sqlx::query(
                    "DELETE FROM ui_sessions WHERE created_at < $1 OR last_seen_at < $2",
                )
                .bind(created_before.as_millis())
                .bind(seen_before.as_millis())
                .execute(self.write_pool())
                .await?
                .rows_affected())
            }

            async fn add_refresh_minute(
                &self,
                server_id: &str,
                minute: &crate::model::RefreshMinute,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO refresh_minutes (minute, server_id, refreshed, failed) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (minute, server_id) DO UPDATE \
                     SET refreshed = refresh_minutes.refreshed + excluded.refreshed, \
                     failed = refresh_minutes.failed + excluded.failed",
                )
                .bind(minute.minute)
                .bind(server_id)
                .bind(db_count(minute.refreshed)?)
                .bind(db_count(minute.failed)?)
                .execute(self.write_pool())
                .await?;
                Ok(())
            }

            async fn refresh_minutes(
                &self,
                since: i64,
            ) -> Result<Vec<crate::model::RefreshMinute>, StoreError> {
                // SUM of BIGINT is NUMERIC on PostgreSQL: cast back for one row type on both.
                let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
                    "SELECT minute, CAST(SUM(refreshed) AS BIGINT), CAST(SUM(failed) AS BIGINT) \
                     FROM refresh_minutes WHERE minute >= $1 GROUP BY minute ORDER BY minute",
                )
                .bind(since)
                .fetch_all(self.read_pool())
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(minute, ok, failed)| crate::model::RefreshMinute {
                        minute,
                        refreshed: u64::try_from(ok).unwrap_or(0),
                        failed: u64::try_from(failed).unwrap_or(0),
                    })
                    .collect())
            }

            async fn prune_refresh_minutes(&self, before: i64) -> Result<u64, StoreError> {
                Ok(sqlx::query("DELETE FROM refresh_minutes WHERE minute < $1")
                    .bind(before)
                    .execute(self.write_pool())
                    .await?
                    .rows_affected())
            }
        }
    };
}

pub(super) use ops_sql;

/// A `ui_sessions` row as both backends return it.
pub(super) type UiSessionRow = (Vec<u8>, String, Vec<u8>, String, i64, i64);

pub(super) fn ui_session_record(row: UiSessionRow) -> Result<UiSessionRecord, StoreError> {
    let (digest, kind, key_hash, client_name, created_at, last_seen_at) = row;
    let corrupt = |what: &str| StoreError::Corrupt(format!("ui_sessions: {what}"));
    Ok(UiSessionRecord {
        digest: digest
            .try_into()
            .map_err(|_| corrupt("digest is not 32 bytes"))?,
        kind: crate::model::UiSessionKind::parse(&kind).ok_or_else(|| corrupt("unknown kind"))?,
        key_hash: crate::model::ApiKeyHash(
            key_hash
                .try_into()
                .map_err(|_| corrupt("key_hash is not 32 bytes"))?,
        ),
        client_name,
        created_at: Timestamp::from_millis(created_at),
        last_seen_at: Timestamp::from_millis(last_seen_at),
    })
}
