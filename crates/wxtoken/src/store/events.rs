//! The events role of the store: verified push events, stored once by dedupe key, until processed
//! and pruned.
//!
//! [`EventStore`] is the contract; `events_sql!` its SQL, shared by both backends (conventions in
//! `sql.rs`) and expanded for each backend type by `sql::impl_store!`.

use async_trait::async_trait;

use crate::model::{ComponentAppid, EventInsert, NewEvent, StoredEvent, Timestamp};
use crate::store::StoreError;

/// Verified push events, stored once by dedupe key, until processed and pruned.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Stores a verified push once: `Duplicate` if its dedupe key is already stored.
    async fn record_event(&self, event: &NewEvent) -> Result<EventInsert, StoreError>;

    /// Stored events not yet processed, oldest first (to resume after a crash).
    async fn unprocessed_events(
        &self,
        component: Option<&ComponentAppid>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Marks an event processed. False if unknown or already processed.
    async fn mark_event_processed(
        &self,
        component: &ComponentAppid,
        dedupe_key: &str,
        at: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Deletes processed events received before `before` (their dedupe window is long over).
    async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// Whether the event is stored and not yet processed (checked again once an event's lease is
    /// held: another replica may have applied it since it was listed).
    async fn event_unprocessed(
        &self,
        component: &ComponentAppid,
        dedupe_key: &str,
    ) -> Result<bool, StoreError>;
}

/// `impl EventStore` for a backend type (see `sql::impl_store!`).
macro_rules! events_sql {
    ($store:ident, $db:ty) => {
        #[async_trait::async_trait]
        impl crate::store::EventStore for $store {
            async fn record_event(&self, event: &NewEvent) -> Result<EventInsert, StoreError> {
                let p = &event.payload;
                let n = sqlx::query(
                    "INSERT INTO events (component_appid, dedupe_key, info_type, appid, \
                     payload_kid, payload_nonce, payload_ct, received_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (component_appid, dedupe_key) DO NOTHING",
                )
                .bind(event.component.as_str())
                .bind(event.dedupe_key.as_str())
                .bind(event.info_type.as_str())
                .bind(event.appid.as_ref().map(Appid::as_str))
                .bind(p.key_id.as_str())
                .bind(&p.nonce[..])
                .bind(&p.ciphertext[..])
                .bind(event.received_at.as_millis())
                .execute(self.write_pool())
                .await?
                .rows_affected();
                Ok(if n == 1 {
                    EventInsert::Inserted
                } else {
                    EventInsert::Duplicate
                })
            }

            async fn unprocessed_events(
                &self,
                component: Option<&ComponentAppid>,
                limit: u32,
            ) -> Result<Vec<StoredEvent>, StoreError> {
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE processed_at IS NULL \
                     AND ($1 IS NULL OR component_appid = $1) \
                     ORDER BY received_at, component_appid, dedupe_key LIMIT $2"
                );
                let rows: Vec<EventRow> = sqlx::query_as(&sql)
                    .bind(component.map(ComponentAppid::as_str))
                    .bind(i64::from(limit))
                    .fetch_all(self.read_pool())
                    .await?;
                rows.into_iter().map(EventRow::into_event).collect()
            }

            async fn mark_event_processed(
                &self,
                component: &ComponentAppid,
                dedupe_key: &str,
                at: Timestamp,
            ) -> Result<bool, StoreError> {
                let n = sqlx::query(
                    "UPDATE events SET processed_at = $3 WHERE component_appid = $1 \
                     AND dedupe_key = $2 AND processed_at IS NULL",
                )
                .bind(component.as_str())
                .bind(dedupe_key)
                .bind(at.as_millis())
                .execute(self.write_pool())
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError> {
                Ok(sqlx::query(
                    "DELETE FROM events WHERE processed_at IS NOT NULL AND received_at < $1",
                )
                .bind(before.as_millis())
                .execute(self.write_pool())
                .await?
                .rows_affected())
            }

            async fn event_unprocessed(
                &self,
                component: &ComponentAppid,
                dedupe_key: &str,
            ) -> Result<bool, StoreError> {
                let row: Option<(i64,)> = sqlx::query_as(
                    "SELECT CAST(1 AS BIGINT) FROM events WHERE component_appid = $1 AND dedupe_key = $2 \
                     AND processed_at IS NULL",
                )
                .bind(component.as_str())
                .bind(dedupe_key)
                .fetch_optional(self.write_pool())
                .await?;
                Ok(row.is_some())
            }
        }
    };
}

pub(super) use events_sql;
