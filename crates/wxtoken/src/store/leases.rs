//! The leases role of the store: leases on work that must happen once across replicas
//! (`refresh_leases`).
//!
//! [`LeaseStore`] is the contract; `leases_sql!` its SQL, shared by both backends (conventions in
//! `sql.rs`) and expanded for each backend type by `sql::impl_store!`.

use async_trait::async_trait;

use crate::model::Timestamp;
use crate::store::{LeaseKey, StoreError};

/// Leases on work that must happen once across replicas (`refresh_leases`).
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes (or renews) the lease on `key` for `holder` until `until`: granted if nobody holds
    /// it, if its holder's lease ran out before `now`, or if `holder` already holds it. One
    /// conditional statement, so two replicas never both get it. True if granted.
    async fn try_lease(
        &self,
        key: &LeaseKey,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Gives the lease back if `holder` holds it.
    async fn release_lease(&self, key: &LeaseKey, holder: &str) -> Result<(), StoreError>;

    /// The row of `key`, if any: its holder and expiry (live or run out; a released lease has
    /// no row).
    async fn lease_row(&self, key: &LeaseKey) -> Result<Option<(String, Timestamp)>, StoreError>;

    /// Claims `key` until `until` if nobody holds it past `now` (a budget that is spent, never
    /// given back): `Ok(None)` if claimed, `Ok(Some(expiry))` with the current claim's expiry if
    /// not. One conditional statement decides, so two replicas never both claim it.
    async fn claim(
        &self,
        key: &LeaseKey,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError>;
}

/// `impl LeaseStore` for a backend type (see `sql::impl_store!`).
macro_rules! leases_sql {
    ($store:ident, $db:ty) => {
        #[async_trait::async_trait]
        impl crate::store::LeaseStore for $store {
            async fn try_lease(
                &self,
                key: &crate::store::LeaseKey,
                holder: &str,
                now: Timestamp,
                until: Timestamp,
            ) -> Result<bool, StoreError> {
                let (component, kind, name) = key.row();
                // Insert, or take over a row whose lease ran out (or that we hold): the
                // conditional upsert is atomic on both backends, so one caller wins.
                let won: Option<(String,)> = sqlx::query_as(
                    "INSERT INTO refresh_leases (component_appid, kind, appid, holder, \
                     expires_at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (component_appid, kind, appid) DO UPDATE SET \
                     holder = excluded.holder, expires_at = excluded.expires_at \
                     WHERE refresh_leases.expires_at < $6 OR refresh_leases.holder = $4 \
                     RETURNING holder",
                )
                .bind(component)
                .bind(kind)
                .bind(name)
                .bind(holder)
                .bind(until.as_millis())
                .bind(now.as_millis())
                .fetch_optional(self.write_pool())
                .await?;
                Ok(won.is_some())
            }

            async fn release_lease(
                &self,
                key: &crate::store::LeaseKey,
                holder: &str,
            ) -> Result<(), StoreError> {
                let (component, kind, name) = key.row();
                sqlx::query(
                    "DELETE FROM refresh_leases WHERE component_appid = $1 AND kind = $2 \
                     AND appid = $3 AND holder = $4",
                )
                .bind(component)
                .bind(kind)
                .bind(name)
                .bind(holder)
                .execute(self.write_pool())
                .await?;
                Ok(())
            }

            async fn lease_row(
                &self,
                key: &crate::store::LeaseKey,
            ) -> Result<Option<(String, Timestamp)>, StoreError> {
                let (component, kind, name) = key.row();
                let row: Option<(String, i64)> = sqlx::query_as(
                    "SELECT holder, expires_at FROM refresh_leases WHERE component_appid = $1 \
                     AND kind = $2 AND appid = $3",
                )
                .bind(component)
                .bind(kind)
                .bind(name)
                .fetch_optional(self.read_pool())
                .await?;
                Ok(row.map(|(holder, ms)| (holder, Timestamp::from_millis(ms))))
            }

            async fn claim(
                &self,
                key: &crate::store::LeaseKey,
                now: Timestamp,
                until: Timestamp,
            ) -> Result<Option<Timestamp>, StoreError> {
                // A holder nobody else ever uses: only expiry frees the row.
                let holder = format!("claim-{:016x}", rand::random::<u64>());
                if self.try_lease(key, &holder, now, until).await? {
                    return Ok(None);
                }
                let (component, kind, name) = key.row();
                let expiry: Option<(i64,)> = sqlx::query_as(
                    "SELECT expires_at FROM refresh_leases WHERE component_appid = $1 \
                     AND kind = $2 AND appid = $3",
                )
                .bind(component)
                .bind(kind)
                .bind(name)
                .fetch_optional(self.write_pool())
                .await?;
                // Gone meanwhile (an expired row pruned): claimed by someone just now.
                Ok(Some(
                    expiry.map_or(until, |(ms,)| Timestamp::from_millis(ms)),
                ))
            }
        }
    };
}

pub(super) use leases_sql;
