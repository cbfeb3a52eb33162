//! The components role of the store: components and their pushed `component_verify_ticket`s.
//!
//! [`ComponentStore`] is the contract; `components_sql!` its SQL, shared by both backends
//! (conventions in
//! `sql.rs`) and expanded for each backend type by `sql::impl_store!`.

use async_trait::async_trait;

use crate::model::{ComponentAppid, Sealed, StoredTicket, TicketOutcome, Timestamp};
use crate::store::StoreError;

/// Components and their pushed `component_verify_ticket`s.
#[async_trait]
pub trait ComponentStore: Send + Sync {
    /// Registers a component (idempotent) with its component-token credential.
    async fn ensure_component(
        &self,
        component: &ComponentAppid,
        at: Timestamp,
    ) -> Result<(), StoreError>;

    /// Every registered component.
    async fn list_components(&self) -> Result<Vec<ComponentAppid>, StoreError>;

    /// Stores a pushed ticket as the latest one unless a later-received one is already stored.
    async fn record_ticket(
        &self,
        component: &ComponentAppid,
        ticket: &Sealed,
        received_at: Timestamp,
    ) -> Result<TicketOutcome, StoreError>;

    /// The latest ticket and when it arrived.
    async fn latest_ticket(
        &self,
        component: &ComponentAppid,
    ) -> Result<Option<StoredTicket>, StoreError>;
}

/// `impl ComponentStore` for a backend type (see `sql::impl_store!`).
macro_rules! components_sql {
    ($store:ident, $db:ty) => {
        #[async_trait::async_trait]
        impl crate::store::ComponentStore for $store {
            async fn ensure_component(
                &self,
                component: &ComponentAppid,
                at: Timestamp,
            ) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO components (component_appid, created_at) VALUES ($1, $2) \
                     ON CONFLICT (component_appid) DO NOTHING",
                )
                .bind(component.as_str())
                .bind(at.as_millis())
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO access_tokens (component_appid, kind, appid, generation, \
                     updated_at) VALUES ($1, 'component', $1, 0, $2) \
                     ON CONFLICT (component_appid, kind, appid) DO NOTHING",
                )
                .bind(component.as_str())
                .bind(at.as_millis())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn list_components(&self) -> Result<Vec<ComponentAppid>, StoreError> {
                let rows: Vec<(String,)> = sqlx::query_as(
                    "SELECT component_appid FROM components ORDER BY component_appid",
                )
                .fetch_all(self.read_pool())
                .await?;
                rows.into_iter()
                    .map(|(c,)| crate::store::sql::component(c))
                    .collect()
            }

            async fn record_ticket(
                &self,
                component: &ComponentAppid,
                ticket: &Sealed,
                received_at: Timestamp,
            ) -> Result<TicketOutcome, StoreError> {
                let mut tx = self.begin_write().await?;
                let n = sqlx::query(
                    "UPDATE components SET ticket_kid = $2, ticket_nonce = $3, \
                     ticket_ct = $4, ticket_received_at = $5 WHERE component_appid = $1 \
                     AND (ticket_received_at IS NULL OR ticket_received_at <= $5)",
                )
                .bind(component.as_str())
                .bind(ticket.key_id.as_str())
                .bind(&ticket.nonce[..])
                .bind(&ticket.ciphertext[..])
                .bind(received_at.as_millis())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if n == 1 {
                    tx.commit().await?;
                    return Ok(TicketOutcome::Stored);
                }
                let exists: Option<(String,)> = sqlx::query_as(
                    "SELECT component_appid FROM components WHERE component_appid = $1",
                )
                .bind(component.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                tx.rollback().await?;
                match exists {
                    Some(_) => Ok(TicketOutcome::Older),
                    None => Err(StoreError::InvalidInput(
                        "unknown component (ensure_component first)",
                    )),
                }
            }

            async fn latest_ticket(
                &self,
                component: &ComponentAppid,
            ) -> Result<Option<StoredTicket>, StoreError> {
                let row: Option<TicketRow> = sqlx::query_as(
                    "SELECT ticket_kid, ticket_nonce, ticket_ct, ticket_received_at \
                     FROM components WHERE component_appid = $1",
                )
                .bind(component.as_str())
                .fetch_optional(self.read_pool())
                .await?;
                match row {
                    Some(r) => r.into_ticket(),
                    None => Ok(None),
                }
            }
        }
    };
}

pub(super) use components_sql;
