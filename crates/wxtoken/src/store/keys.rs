//! The keys role of the store: master-key checks and re-sealing every sealed value under a new key.
//!
//! [`KeyStore`] is the contract; `keys_sql!` its SQL, shared by both backends (conventions in
//! `sql.rs`) and expanded for each backend type by `sql::impl_store!`.

use async_trait::async_trait;

use crate::model::{KeyCheck, KeyId, Timestamp};
use crate::store::{Reseal, SealedCell, SealedColumn, StoreError};

/// Master-key checks and re-sealing every sealed value under a new key.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// The stored key-check values.
    async fn key_checks(&self) -> Result<Vec<KeyCheck>, StoreError>;

    /// Stores a key-check value unless one exists for that key id. True if inserted.
    async fn add_key_check(&self, check: &KeyCheck) -> Result<bool, StoreError>;

    /// Marks a key retired, atomically and only if no sealed value (any column) uses it any more.
    /// True if it changed; false if it is still in use, already retired, or unknown.
    async fn retire_key(&self, key_id: &KeyId, at: Timestamp) -> Result<bool, StoreError>;

    /// Up to `limit` values of one column not sealed under `not_under`.
    async fn sealed_cells(
        &self,
        column: SealedColumn,
        not_under: &KeyId,
        limit: u32,
    ) -> Result<Vec<SealedCell>, StoreError>;

    /// Conditional replacements (see [`Reseal`]), one transaction, written in table and row-key
    /// order. Returns how many landed. A transient `Err`: nothing was written; retry.
    async fn reseal(&self, updates: &[Reseal]) -> Result<u64, StoreError>;

    /// How many sealed values each key id holds, over every column.
    async fn count_sealed_by_key(&self) -> Result<Vec<(KeyId, u64)>, StoreError>;
}

/// `impl KeyStore` for a backend type (see `sql::impl_store!`).
macro_rules! keys_sql {
    ($store:ident, $db:ty) => {
        #[async_trait::async_trait]
        impl crate::store::KeyStore for $store {
            async fn key_checks(&self) -> Result<Vec<KeyCheck>, StoreError> {
                let rows: Vec<KeyCheckRow> = sqlx::query_as(
                    "SELECT key_id, nonce, ct, created_at, retired_at FROM key_checks \
                     ORDER BY created_at, key_id",
                )
                .fetch_all(self.read_pool())
                .await?;
                rows.into_iter().map(KeyCheckRow::into_check).collect()
            }

            async fn add_key_check(&self, check: &KeyCheck) -> Result<bool, StoreError> {
                let n = sqlx::query(
                    "INSERT INTO key_checks (key_id, nonce, ct, created_at, retired_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key_id) DO NOTHING",
                )
                .bind(check.key_id.as_str())
                .bind(&check.sealed.nonce[..])
                .bind(&check.sealed.ciphertext[..])
                .bind(check.created_at.as_millis())
                .bind(check.retired_at.map(Timestamp::as_millis))
                .execute(self.write_pool())
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn retire_key(&self, key_id: &KeyId, at: Timestamp) -> Result<bool, StoreError> {
                // One statement, so nothing can be sealed under the key between the check
                // and the update.
                let n = sqlx::query(
                    "UPDATE key_checks SET retired_at = $2 WHERE key_id = $1 \
                     AND retired_at IS NULL \
                     AND NOT EXISTS (SELECT 1 FROM components WHERE ticket_kid = $1) \
                     AND NOT EXISTS (SELECT 1 FROM access_tokens WHERE token_kid = $1) \
                     AND NOT EXISTS (SELECT 1 FROM authorizers \
                       WHERE rt_kid = $1 OR secret_kid = $1) \
                     AND NOT EXISTS (SELECT 1 FROM direct_accounts WHERE secret_kid = $1) \
                     AND NOT EXISTS (SELECT 1 FROM refresh_token_history WHERE rt_kid = $1) \
                     AND NOT EXISTS (SELECT 1 FROM events WHERE payload_kid = $1)",
                )
                .bind(key_id.as_str())
                .bind(at.as_millis())
                .execute(self.write_pool())
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn sealed_cells(
                &self,
                column: SealedColumn,
                not_under: &KeyId,
                limit: u32,
            ) -> Result<Vec<SealedCell>, StoreError> {
                let rows: Vec<CellRow> =
                    sqlx::query_as(crate::store::sql::cell_query(column))
                        .bind(not_under.as_str())
                        .bind(i64::from(limit))
                        .fetch_all(self.read_pool())
                        .await?;
                rows.into_iter().map(|r| r.into_cell(column)).collect()
            }

            async fn reseal(&self, updates: &[Reseal]) -> Result<u64, StoreError> {
                if updates.is_empty() {
                    return Ok(0);
                }
                let order = lock_order(updates, reseal_order_key);
                let mut tx = self.begin_write().await?;
                let mut total = 0;
                for u in order.iter().map(|&i| &updates[i]) {
                    let new = &u.new;
                    let q = match &u.key {
                        CellKey::Ticket { component } => sqlx::query(
                            "UPDATE components SET ticket_kid = $1, ticket_nonce = $2, \
                             ticket_ct = $3 WHERE ticket_nonce = $4 AND component_appid = $5",
                        )
                        .bind(new.key_id.as_str())
                        .bind(&new.nonce[..])
                        .bind(&new.ciphertext[..])
                        .bind(&u.old_nonce[..])
                        .bind(component.as_str()),
                        CellKey::AccessToken { credential } => sqlx::query(
                            "UPDATE access_tokens SET token_kid = $1, token_nonce = $2, \
                             token_ct = $3 WHERE token_nonce = $4 AND component_appid = $5 \
                             AND kind = $6 AND appid = $7",
                        )
                        .bind(new.key_id.as_str())
                        .bind(&new.nonce[..])
                        .bind(&new.ciphertext[..])
                        .bind(&u.old_nonce[..])
                        .bind(credential.component.as_str())
                        .bind(credential.kind.as_str())
                        .bind(credential.appid.as_str()),
                        CellKey::RefreshToken { component, appid } => sqlx::query(
                            "UPDATE authorizers SET rt_kid = $1, rt_nonce = $2, rt_ct = $3 \
                             WHERE rt_nonce = $4 AND component_appid = $5 AND appid = $6",
                        )
                        .bind(new.key_id.as_str())
                        .bind(&new.nonce[..])
                        .bind(&new.ciphertext[..])
                        .bind(&u.old_nonce[..])
                        .bind(component.as_str())
                        .bind(appid.as_str()),
                        CellKey::AuthorizerAppsecret { component, appid } => sqlx::query(
                            "UPDATE authorizers SET secret_kid = $1, secret_nonce = $2, \
                             secret_ct = $3 WHERE secret_nonce = $4 AND component_appid = $5 \
                             AND appid = $6",
                        )
                        .bind(new.key_id.as_str())
                        .bind(&new.nonce[..])
                        .bind(&new.ciphertext[..])
                        .bind(&u.old_nonce[..])
                        .bind(component.as_str())
                        .bind(appid.as_str()),
                        CellKey::DirectAppsecret { component, appid } => sqlx::query(
                            "UPDATE direct_accounts SET secret_kid = $1, secret_nonce = $2, \
                             secret_ct = $3 WHERE secret_nonce = $4 AND component_appid = $5 \
                             AND appid = $6",
                        )
                        .bind(new.key_id.as_str())
                        .bind(&new.nonce[..])
                        .bind(&new.ciphertext[..])
                        .bind(&u.old_nonce[..])
                        .bind(component.as_str())
                        .bind(appid.as_str()),
                        CellKey::RefreshTokenHistory { id, .. } => sqlx::query(
                            "UPDATE refresh_token_history SET rt_kid = $1, rt_nonce = $2, \
                             rt_ct = $3 WHERE rt_nonce = $4 AND id = $5",
                        )
                        .bind(new.key_id.as_str())
                        .bind(&new.nonce[..])
                        .bind(&new.ciphertext[..])
                        .bind(&u.old_nonce[..])
                        .bind(*id),
                        CellKey::EventPayload {
                            component,
                            dedupe_key,
                        } => sqlx::query(
                            "UPDATE events SET payload_kid = $1, payload_nonce = $2, \
                             payload_ct = $3 WHERE payload_nonce = $4 \
                             AND component_appid = $5 AND dedupe_key = $6",
                        )
                        .bind(new.key_id.as_str())
                        .bind(&new.nonce[..])
                        .bind(&new.ciphertext[..])
                        .bind(&u.old_nonce[..])
                        .bind(component.as_str())
                        .bind(dedupe_key.as_str()),
                    };
                    total += q.execute(&mut *tx).await?.rows_affected();
                }
                tx.commit().await?;
                Ok(total)
            }

            async fn count_sealed_by_key(&self) -> Result<Vec<(KeyId, u64)>, StoreError> {
                let rows: Vec<(String, i64)> = sqlx::query_as(COUNT_SEALED_BY_KEY)
                    .fetch_all(self.read_pool())
                    .await?;
                rows.into_iter()
                    .map(|(k, n)| Ok((key_id(k)?, u64::try_from(n).unwrap_or(0))))
                    .collect()
            }
        }
    };
}

pub(super) use keys_sql;
