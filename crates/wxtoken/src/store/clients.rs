//! The clients role of the store: aPI clients (by key hash) and their batched read counters.
//!
//! [`ClientStore`] is the contract; `clients_sql!` its SQL, shared by both backends (conventions in
//! `sql.rs`) and expanded for each backend type by `sql::impl_store!`.

use async_trait::async_trait;

use crate::model::{
    ApiKeyHash, ClientCreate, ClientRecord, KeyRotation, NewClient, ReadCount, Timestamp,
};
use crate::store::StoreError;

/// API clients (by key hash) and their batched read counters.
#[async_trait]
pub trait ClientStore: Send + Sync {
    /// Creates a client; `NameTaken` only if a live (unrevoked) client has the name.
    async fn create_client(&self, client: &NewClient) -> Result<ClientCreate, StoreError>;

    /// Gives the live client `name` a new key. The previous key keeps working until
    /// `rotation.previous_until` (replacing any earlier previous key), or stops at once. `None` if
    /// no live client has that name.
    async fn rotate_client_key(
        &self,
        name: &str,
        rotation: &KeyRotation,
    ) -> Result<Option<ClientRecord>, StoreError>;

    /// The client holding this API key hash, as its current key or as a previous key (then
    /// `key_expires_at` says until when; the caller refuses it after that, and refuses revoked
    /// clients).
    async fn find_client_by_key(
        &self,
        hash: &ApiKeyHash,
    ) -> Result<Option<ClientRecord>, StoreError>;

    async fn list_clients(&self) -> Result<Vec<ClientRecord>, StoreError>;

    /// Revokes a client by name. False if unknown or already revoked.
    async fn revoke_client(&self, name: &str, at: Timestamp) -> Result<bool, StoreError>;

    /// Adds batched token-read counts (one transaction, written in (client, component, appid)
    /// order). A transient `Err`: nothing was added; retry with the same counts.
    async fn add_read_counts(&self, counts: &[ReadCount]) -> Result<(), StoreError>;

    /// Read counters, all clients or one.
    async fn read_counts(&self, client_id: Option<i64>) -> Result<Vec<ReadCount>, StoreError>;
}

/// `impl ClientStore` for a backend type (see `sql::impl_store!`).
macro_rules! clients_sql {
    ($store:ident, $db:ty) => {
        #[async_trait::async_trait]
        impl crate::store::ClientStore for $store {
            async fn create_client(&self, client: &NewClient) -> Result<ClientCreate, StoreError> {
                let id: Option<(i64,)> = sqlx::query_as(
                    "INSERT INTO clients (name, key_hash, key_hint, grant_appids, admin, \
                     created_at) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (name) WHERE revoked_at IS NULL DO NOTHING RETURNING id",
                )
                .bind(client.name.as_str())
                .bind(&client.key_hash.0[..])
                .bind(client.key_hint.as_str())
                .bind(client.grant.to_stored())
                .bind(client.admin)
                .bind(client.created_at.as_millis())
                .fetch_optional(self.write_pool())
                .await?;
                Ok(match id {
                    Some((id,)) => ClientCreate::Created(ClientRecord {
                        id,
                        name: client.name.clone(),
                        key_hint: client.key_hint.clone(),
                        grant: client.grant.clone(),
                        admin: client.admin,
                        created_at: client.created_at,
                        revoked_at: None,
                        previous_key: None,
                        key_expires_at: None,
                    }),
                    None => ClientCreate::NameTaken,
                })
            }

            async fn find_client_by_key(
                &self,
                hash: &ApiKeyHash,
            ) -> Result<Option<ClientRecord>, StoreError> {
                let sql = format!(
                    "SELECT {CLIENT_COLUMNS}, CASE WHEN key_hash = $1 THEN NULL \
                     ELSE previous_key_expires_at END AS key_expires_at \
                     FROM clients WHERE key_hash = $1 OR previous_key_hash = $1"
                );
                let row: Option<ClientRow> = sqlx::query_as(&sql)
                    .bind(&hash.0[..])
                    .fetch_optional(self.read_pool())
                    .await?;
                row.map(ClientRow::into_record).transpose()
            }

            async fn rotate_client_key(
                &self,
                name: &str,
                rotation: &KeyRotation,
            ) -> Result<Option<ClientRecord>, StoreError> {
                let sql = format!(
                    "UPDATE clients SET \
                     previous_key_hash = CASE WHEN $4 THEN key_hash ELSE NULL END, \
                     previous_key_hint = CASE WHEN $4 THEN key_hint ELSE NULL END, \
                     previous_key_expires_at = $5, \
                     key_hash = $2, key_hint = $3, rotated_at = $6 \
                     WHERE name = $1 AND revoked_at IS NULL RETURNING {CLIENT_COLUMNS}"
                );
                let row: Option<ClientRow> = sqlx::query_as(&sql)
                    .bind(name)
                    .bind(&rotation.key_hash.0[..])
                    .bind(rotation.key_hint.as_str())
                    .bind(rotation.previous_until.is_some())
                    .bind(rotation.previous_until.map(Timestamp::as_millis))
                    .bind(rotation.at.as_millis())
                    .fetch_optional(self.write_pool())
                    .await?;
                row.map(ClientRow::into_record).transpose()
            }

            async fn list_clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
                let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients ORDER BY name");
                let rows: Vec<ClientRow> = sqlx::query_as(&sql).fetch_all(self.read_pool()).await?;
                rows.into_iter().map(ClientRow::into_record).collect()
            }

            async fn revoke_client(&self, name: &str, at: Timestamp) -> Result<bool, StoreError> {
                let n = sqlx::query(
                    "UPDATE clients SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL",
                )
                .bind(name)
                .bind(at.as_millis())
                .execute(self.write_pool())
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn add_read_counts(&self, counts: &[ReadCount]) -> Result<(), StoreError> {
                if counts.is_empty() {
                    return Ok(());
                }
                let order = lock_order(counts, |c| {
                    (c.client_id, c.component.as_str(), c.appid.as_str())
                });
                // In key order, one row per key (a slot replaced between two flushes counts
                // under the same appid twice): one statement may not touch a row twice.
                let mut rows: Vec<(&ReadCount, u64, i64)> = Vec::with_capacity(counts.len());
                for c in order.iter().map(|&i| &counts[i]) {
                    match rows.last_mut() {
                        Some((last, n, at))
                            if last.client_id == c.client_id
                                && last.component == c.component
                                && last.appid == c.appid =>
                        {
                            *n = n.saturating_add(c.count);
                            *at = (*at).max(c.last_read_at.as_millis());
                        }
                        _ => rows.push((c, c.count, c.last_read_at.as_millis())),
                    }
                }
                let mut tx = self.begin_write().await?;
                // Several rows a statement (5 binds each: far below both backends' limits); at a
                // million authorizers a flush can carry hundreds of thousands.
                for chunk in rows.chunks(500) {
                    let mut qb: sqlx::QueryBuilder<'_, $db> = sqlx::QueryBuilder::new(
                        "INSERT INTO client_reads (client_id, component_appid, appid, reads, \
                         last_read_at) ",
                    );
                    let mut bad = None;
                    qb.push_values(chunk, |mut b, (c, n, at)| {
                        let n = db_count(*n).unwrap_or_else(|e| {
                            bad = Some(e);
                            0
                        });
                        b.push_bind(c.client_id)
                            .push_bind(c.component.as_str())
                            .push_bind(c.appid.as_str())
                            .push_bind(n)
                            .push_bind(*at);
                    });
                    if let Some(e) = bad {
                        return Err(e);
                    }
                    qb.push(
                        " ON CONFLICT (client_id, component_appid, appid) DO UPDATE SET \
                         reads = client_reads.reads + excluded.reads, \
                         last_read_at = CASE WHEN excluded.last_read_at > \
                         client_reads.last_read_at THEN excluded.last_read_at \
                         ELSE client_reads.last_read_at END",
                    );
                    qb.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn read_counts(
                &self,
                client_id: Option<i64>,
            ) -> Result<Vec<ReadCount>, StoreError> {
                let rows: Vec<ReadRow> = sqlx::query_as(
                    "SELECT client_id, component_appid, appid, reads, last_read_at \
                     FROM client_reads WHERE ($1 IS NULL OR client_id = $1) \
                     ORDER BY client_id, component_appid, appid",
                )
                .bind(client_id)
                .fetch_all(self.read_pool())
                .await?;
                rows.into_iter().map(ReadRow::into_count).collect()
            }
        }
    };
}

pub(super) use clients_sql;
