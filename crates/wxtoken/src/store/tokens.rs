//! The tokens role of the store: every credential's generation and access token, their fenced
//! refresh writes, and the change stream of those rows.
//!
//! [`TokenStore`] is the contract; `tokens_sql!` its SQL, shared by both backends (conventions in
//! `sql.rs`) and expanded for each backend type by `sql::impl_store!`.

use async_trait::async_trait;

use crate::model::{
    ComponentAppid, Credential, CredentialKind, RefreshResult, SaveOutcome, Timestamp, TokenRecord,
};
use crate::store::{StoreError, TokenChanges};

/// Every credential's generation and access token, their fenced refresh writes, and the change
/// stream of those rows.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// One credential's generation and current token.
    async fn get_token(&self, credential: &Credential) -> Result<Option<TokenRecord>, StoreError>;

    /// Every credential of one component (or all), of one kind (or all), with or without a token
    /// yet. At cold start, authorizers' tokens come with [`AuthorizerStore::load_authorizers`];
    /// load the
    /// component and direct-account credentials here.
    async fn load_tokens(
        &self,
        component: Option<&ComponentAppid>,
        kind: Option<CredentialKind>,
    ) -> Result<Vec<TokenRecord>, StoreError>;

    /// Creates a JS-SDK ticket's row (generation 0, or after the generation a removed one had) if
    /// it has none yet, so its first fetch has a generation to fence on. Returns the stored
    /// generation. `credential.kind` must be a ticket kind.
    async fn ensure_ticket(
        &self,
        credential: &Credential,
        at: Timestamp,
    ) -> Result<u64, StoreError>;

    /// Writes refresh results, each fenced by its expected generation: access token, refresh token
    /// (authorizers), history row and generation bump in one transaction for the whole slice, one
    /// outcome per result in order. A stale result changes nothing but its refresh token's history.
    ///
    /// Rows are written (and locked) in (component, kind, appid) order whatever the slice's order,
    /// so concurrent batches never deadlock; the outcomes are still in the slice's order.
    /// A transient `Err` ([`StoreError::is_transient`]): the transaction rolled back and nothing
    /// was written; retry with the same sealed values (never re-seal or recompute a token that
    /// WeChat issued). If the connection broke during the commit itself, the retry reports
    /// `Stale` for writes that landed.
    async fn save_refresh_results(
        &self,
        results: &[RefreshResult],
    ) -> Result<Vec<SaveOutcome>, StoreError>;

    /// [`TokenStore::save_refresh_results`] for one result.
    async fn save_refresh_result(&self, result: &RefreshResult) -> Result<SaveOutcome, StoreError> {
        let mut out = self
            .save_refresh_results(std::slice::from_ref(result))
            .await?;
        out.pop()
            .ok_or(StoreError::InvalidInput("no outcome for the write"))
    }

    /// The committed changes of every credential's row (new tokens, status changes), whoever
    /// wrote them: PostgreSQL's LISTEN/NOTIFY on a connection of its own. `None` on SQLite (one
    /// process owns the file; there is no one else to hear from).
    async fn token_changes(&self) -> Result<Option<TokenChanges>, StoreError>;
}

/// `impl TokenStore` for a backend type (see `sql::impl_store!`).
macro_rules! tokens_sql {
    ($store:ident, $db:ty) => {
        #[async_trait::async_trait]
        impl crate::store::TokenStore for $store {
            async fn get_token(
                &self,
                credential: &Credential,
            ) -> Result<Option<TokenRecord>, StoreError> {
                let sql = format!(
                    "SELECT {TOKEN_COLUMNS} FROM access_tokens \
                     WHERE component_appid = $1 AND kind = $2 AND appid = $3"
                );
                let row: Option<TokenRow> = sqlx::query_as(&sql)
                    .bind(credential.component.as_str())
                    .bind(credential.kind.as_str())
                    .bind(credential.appid.as_str())
                    .fetch_optional(self.read_pool())
                    .await?;
                row.map(TokenRow::into_record).transpose()
            }

            async fn load_tokens(
                &self,
                component: Option<&ComponentAppid>,
                kind: Option<CredentialKind>,
            ) -> Result<Vec<TokenRecord>, StoreError> {
                let sql = format!(
                    "SELECT {TOKEN_COLUMNS} FROM access_tokens \
                     WHERE ($1 IS NULL OR component_appid = $1) AND ($2 IS NULL OR kind = $2) \
                     ORDER BY component_appid, kind, appid"
                );
                let rows: Vec<TokenRow> = sqlx::query_as(&sql)
                    .bind(component.map(ComponentAppid::as_str))
                    .bind(kind.map(CredentialKind::as_str))
                    .fetch_all(self.read_pool())
                    .await?;
                rows.into_iter().map(TokenRow::into_record).collect()
            }

            async fn ensure_ticket(
                &self,
                credential: &Credential,
                at: Timestamp,
            ) -> Result<u64, StoreError> {
                if !credential.kind.is_ticket() {
                    return Err(StoreError::InvalidInput("not a ticket credential"));
                }
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO access_tokens (component_appid, kind, appid, generation, \
                     updated_at) VALUES ($1, $2, $3, \
                     COALESCE((SELECT generation + 1 FROM credential_tombstones \
                     WHERE component_appid = $1 AND kind = $2 AND appid = $3), \
                     CAST(0 AS BIGINT)), $4) \
                     ON CONFLICT (component_appid, kind, appid) DO NOTHING",
                )
                .bind(credential.component.as_str())
                .bind(credential.kind.as_str())
                .bind(credential.appid.as_str())
                .bind(at.as_millis())
                .execute(&mut *tx)
                .await?;
                let generation = current_generation(&mut tx, credential)
                    .await?
                    .ok_or(StoreError::InvalidInput("ticket row not created"))?;
                tx.commit().await?;
                Ok(generation)
            }

            async fn save_refresh_results(
                &self,
                results: &[RefreshResult],
            ) -> Result<Vec<SaveOutcome>, StoreError> {
                for r in results {
                    if r.access_token.sealed.is_empty_plaintext() {
                        return Err(StoreError::InvalidInput("empty access token"));
                    }
                    if let Some(rt) = &r.refresh_token {
                        if r.credential.kind != CredentialKind::Authorizer {
                            return Err(StoreError::InvalidInput(
                                "only authorizers have refresh tokens",
                            ));
                        }
                        if rt.is_empty_plaintext() {
                            return Err(StoreError::InvalidInput("empty refresh token"));
                        }
                    }
                }
                let order = lock_order(results, |r| {
                    (
                        r.credential.component.as_str(),
                        r.credential.kind.as_str(),
                        r.credential.appid.as_str(),
                    )
                });
                let mut tx = self.begin_write().await?;
                let mut outcomes = Vec::with_capacity(results.len());
                for r in order.iter().map(|&i| &results[i]) {
                    let c = &r.credential;
                    let landed = fenced_token_write(
                        &mut tx,
                        c,
                        r.expected_generation,
                        Some(&r.access_token),
                        r.at,
                    )
                    .await?;
                    let outcome = if landed {
                        SaveOutcome::Saved {
                            generation: r.expected_generation.saturating_add(1),
                        }
                    } else {
                        lost(&mut tx, c).await?
                    };
                    if let Some(rt) = &r.refresh_token {
                        if landed {
                            sqlx::query(
                                "UPDATE authorizers SET rt_kid = $3, rt_nonce = $4, \
                                 rt_ct = $5, status_changed_at = CASE WHEN status <> \
                                 'active' THEN $6 ELSE status_changed_at END, \
                                 status = 'active', status_reason = NULL, updated_at = $6 \
                                 WHERE component_appid = $1 AND appid = $2",
                            )
                            .bind(c.component.as_str())
                            .bind(c.appid.as_str())
                            .bind(rt.key_id.as_str())
                            .bind(&rt.nonce[..])
                            .bind(&rt.ciphertext[..])
                            .bind(r.at.as_millis())
                            .execute(&mut *tx)
                            .await?;
                        }
                        // Kept even when the write lost: never lose a refresh token.
                        let g = match outcome {
                            SaveOutcome::Saved { generation } => generation,
                            _ => r.expected_generation,
                        };
                        insert_history(
                            &mut tx,
                            &c.component,
                            &c.appid,
                            rt,
                            RefreshTokenSource::Refresh,
                            g,
                            landed,
                            r.at,
                        )
                        .await?;
                    }
                    outcomes.push(outcome);
                }
                tx.commit().await?;
                in_caller_order(&order, outcomes)
            }

            async fn token_changes(
                &self,
            ) -> Result<Option<crate::store::TokenChanges>, StoreError> {
                self.listen_token_changes().await
            }
        }
    };
}

pub(super) use tokens_sql;
