//! The direct role of the store: direct accounts (an account's own appid + appsecret) and their
//! `stable_token` force-refresh budgets.
//!
//! [`DirectStore`] is the contract; `direct_sql!` its SQL, shared by both backends (conventions in
//! `sql.rs`) and expanded for each backend type by `sql::impl_store!`.

use async_trait::async_trait;

use crate::model::{
    Appid, ComponentAppid, DirectAccountRecord, DirectAccountWrite, ForceBudgetRecord,
    UpsertOutcome,
};
use crate::store::StoreError;

/// Direct accounts (an account's own appid + appsecret) and their `stable_token` force-refresh
/// budgets.
#[async_trait]
pub trait DirectStore: Send + Sync {
    /// Adds a direct account (with its credential) or replaces its kind and appsecret.
    async fn upsert_direct_account(
        &self,
        account: &DirectAccountWrite,
    ) -> Result<UpsertOutcome, StoreError>;

    async fn get_direct_account(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
    ) -> Result<Option<DirectAccountRecord>, StoreError>;

    async fn list_direct_accounts(
        &self,
        component: Option<&ComponentAppid>,
    ) -> Result<Vec<DirectAccountRecord>, StoreError>;

    /// Removes a direct account and its token. False if there was none. Its generation is kept:
    /// adding it again continues from there, so a write fenced on a pre-removal generation is
    /// `Stale`, never applied to the new account.
    async fn remove_direct_account(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
    ) -> Result<bool, StoreError>;

    /// Every stored budget (loaded at cold start).
    async fn load_force_budgets(&self) -> Result<Vec<ForceBudgetRecord>, StoreError>;

    /// Stores one credential's budget, replacing the previous one.
    async fn save_force_budget(&self, budget: &ForceBudgetRecord) -> Result<(), StoreError>;
}

/// `impl DirectStore` for a backend type (see `sql::impl_store!`).
macro_rules! direct_sql {
    ($store:ident, $db:ty) => {
        #[async_trait::async_trait]
        impl crate::store::DirectStore for $store {
            async fn upsert_direct_account(
                &self,
                account: &DirectAccountWrite,
            ) -> Result<UpsertOutcome, StoreError> {
                let s = &account.appsecret;
                let mut tx = self.begin_write().await?;
                let n = sqlx::query(
                    "INSERT INTO direct_accounts (component_appid, appid, kind, secret_kid, \
                     secret_nonce, secret_ct, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
                     ON CONFLICT (component_appid, appid) DO NOTHING",
                )
                .bind(account.component.as_str())
                .bind(account.appid.as_str())
                .bind(account.kind.as_str())
                .bind(s.key_id.as_str())
                .bind(&s.nonce[..])
                .bind(&s.ciphertext[..])
                .bind(account.at.as_millis())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                let outcome = if n == 1 {
                    // An account removed before continues after its old generation.
                    sqlx::query(
                        "INSERT INTO access_tokens (component_appid, kind, appid, \
                         generation, updated_at) VALUES ($1, 'direct', $2, \
                         COALESCE((SELECT generation + 1 FROM credential_tombstones \
                         WHERE component_appid = $1 AND kind = 'direct' AND appid = $2), \
                         CAST(0 AS BIGINT)), $3) \
                         ON CONFLICT (component_appid, kind, appid) DO NOTHING",
                    )
                    .bind(account.component.as_str())
                    .bind(account.appid.as_str())
                    .bind(account.at.as_millis())
                    .execute(&mut *tx)
                    .await?;
                    UpsertOutcome::Created
                } else {
                    sqlx::query(
                        "UPDATE direct_accounts SET kind = $3, secret_kid = $4, \
                         secret_nonce = $5, secret_ct = $6, updated_at = $7 \
                         WHERE component_appid = $1 AND appid = $2",
                    )
                    .bind(account.component.as_str())
                    .bind(account.appid.as_str())
                    .bind(account.kind.as_str())
                    .bind(s.key_id.as_str())
                    .bind(&s.nonce[..])
                    .bind(&s.ciphertext[..])
                    .bind(account.at.as_millis())
                    .execute(&mut *tx)
                    .await?;
                    UpsertOutcome::Updated
                };
                tx.commit().await?;
                Ok(outcome)
            }

            async fn get_direct_account(
                &self,
                component: &ComponentAppid,
                appid: &Appid,
            ) -> Result<Option<DirectAccountRecord>, StoreError> {
                let sql = format!("{DIRECT_SELECT} WHERE d.component_appid = $1 AND d.appid = $2");
                let row: Option<DirectRow> = sqlx::query_as(&sql)
                    .bind(component.as_str())
                    .bind(appid.as_str())
                    .fetch_optional(self.read_pool())
                    .await?;
                row.map(DirectRow::into_record).transpose()
            }

            async fn list_direct_accounts(
                &self,
                component: Option<&ComponentAppid>,
            ) -> Result<Vec<DirectAccountRecord>, StoreError> {
                let sql = format!(
                    "{DIRECT_SELECT} WHERE ($1 IS NULL OR d.component_appid = $1) \
                     ORDER BY d.component_appid, d.appid"
                );
                let rows: Vec<DirectRow> = sqlx::query_as(&sql)
                    .bind(component.map(ComponentAppid::as_str))
                    .fetch_all(self.read_pool())
                    .await?;
                rows.into_iter().map(DirectRow::into_record).collect()
            }

            async fn remove_direct_account(
                &self,
                component: &ComponentAppid,
                appid: &Appid,
            ) -> Result<bool, StoreError> {
                let mut tx = self.begin_write().await?;
                // Keep the generation (see credential_tombstones), so generations never
                // repeat across a removal and re-adding.
                sqlx::query(
                    "INSERT INTO credential_tombstones (component_appid, kind, appid, \
                     generation) SELECT component_appid, kind, appid, generation \
                     FROM access_tokens WHERE component_appid = $1 AND kind = 'direct' \
                     AND appid = $2 \
                     ON CONFLICT (component_appid, kind, appid) \
                     DO UPDATE SET generation = excluded.generation",
                )
                .bind(component.as_str())
                .bind(appid.as_str())
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "DELETE FROM access_tokens WHERE component_appid = $1 \
                     AND kind = 'direct' AND appid = $2",
                )
                .bind(component.as_str())
                .bind(appid.as_str())
                .execute(&mut *tx)
                .await?;
                let n = sqlx::query(
                    "DELETE FROM direct_accounts WHERE component_appid = $1 AND appid = $2",
                )
                .bind(component.as_str())
                .bind(appid.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                Ok(n == 1)
            }

            async fn load_force_budgets(&self) -> Result<Vec<ForceBudgetRecord>, StoreError> {
                let rows: Vec<(String, String, String, i64, i64, Option<i64>)> = sqlx::query_as(
                    "SELECT component_appid, kind, appid, day_start, used, last_at \
                         FROM force_refresh_budgets \
                         ORDER BY component_appid, kind, appid",
                )
                .fetch_all(self.read_pool())
                .await?;
                rows.into_iter()
                    .map(|(c, kind, a, day_start, used, last)| {
                        Ok(ForceBudgetRecord {
                            credential: Credential {
                                component: crate::store::sql::component(c)?,
                                kind: CredentialKind::parse(&kind)
                                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                                appid: crate::store::sql::appid(a)?,
                            },
                            day_start: Timestamp::from_millis(day_start),
                            used: u32::try_from(used).map_err(|_| {
                                crate::store::sql::corrupt("force budget count out of range")
                            })?,
                            last: last.map(Timestamp::from_millis),
                        })
                    })
                    .collect()
            }

            async fn save_force_budget(
                &self,
                budget: &ForceBudgetRecord,
            ) -> Result<(), StoreError> {
                let c = &budget.credential;
                sqlx::query(
                    "INSERT INTO force_refresh_budgets (component_appid, kind, appid, \
                     day_start, used, last_at) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (component_appid, kind, appid) DO UPDATE SET \
                     day_start = $4, used = $5, last_at = $6",
                )
                .bind(c.component.as_str())
                .bind(c.kind.as_str())
                .bind(c.appid.as_str())
                .bind(budget.day_start.as_millis())
                .bind(i64::from(budget.used))
                .bind(budget.last.map(Timestamp::as_millis))
                .execute(self.write_pool())
                .await?;
                Ok(())
            }
        }
    };
}

pub(super) use direct_sql;
