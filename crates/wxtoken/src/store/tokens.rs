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
        /// Results written by one statement (14 binds each: well within both backends' limits).
        const BATCH_ROWS: usize = 500;

        /// One result's fenced write, its refresh token and history row.
        async fn save_one(
            tx: &mut sqlx::Transaction<'static, $db>,
            r: &RefreshResult,
        ) -> Result<SaveOutcome, StoreError> {
            let c = &r.credential;
            let landed =
                fenced_token_write(tx, c, r.expected_generation, Some(&r.access_token), r.at)
                    .await?;
            let outcome = if landed {
                SaveOutcome::Saved {
                    generation: r.expected_generation.saturating_add(1),
                }
            } else {
                lost(tx, c).await?
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
                    .execute(&mut **tx)
                    .await?;
                }
                // Kept even when the write lost: never lose a refresh token.
                let g = match outcome {
                    SaveOutcome::Saved { generation } => generation,
                    _ => r.expected_generation,
                };
                insert_history(
                    tx,
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
            Ok(outcome)
        }

        /// The same as `save_one` for each of `chunk` (distinct credentials, in lock order), in
        /// three statements: the fenced token writes (which say which landed), the refresh tokens
        /// of those that landed, and every refresh token's history row. A write that did not land
        /// reads its row's generation, as `save_one` does.
        async fn save_chunk(
            tx: &mut sqlx::Transaction<'static, $db>,
            chunk: &[&RefreshResult],
            lock_first: bool,
        ) -> Result<Vec<SaveOutcome>, StoreError> {
            if lock_first {
                // PostgreSQL locks the rows a multi-row UPDATE changes in the order of its plan;
                // taking them in key order first keeps two writers from deadlocking.
                let mut qb: sqlx::QueryBuilder<'_, $db> = sqlx::QueryBuilder::new(
                    "SELECT generation FROM access_tokens WHERE (component_appid, kind, appid) IN (",
                );
                qb.push_values(chunk, |mut b, r| {
                    let c = &r.credential;
                    b.push_bind(c.component.as_str())
                        .push_bind(c.kind.as_str())
                        .push_bind(c.appid.as_str());
                });
                qb.push(") ORDER BY component_appid, kind, appid FOR UPDATE");
                qb.build().execute(&mut **tx).await?;
            }
            let mut rows = Vec::with_capacity(chunk.len());
            for r in chunk {
                rows.push((
                    *r,
                    db_generation(r.expected_generation.saturating_add(1))?,
                    db_generation(r.expected_generation)?,
                ));
            }
            let mut qb: sqlx::QueryBuilder<'_, $db> = sqlx::QueryBuilder::new(
                "UPDATE access_tokens SET generation = v.column4, token_kid = v.column5, \
                 token_nonce = v.column6, token_ct = v.column7, issued_at = v.column8, \
                 expires_at = v.column9, refresh_at = v.column10, source = v.column11, \
                 updated_at = v.column12 FROM (",
            );
            qb.push_values(&rows, |mut b, (r, next, expected)| {
                let (c, t) = (&r.credential, &r.access_token);
                b.push_bind(c.component.as_str())
                    .push_bind(c.kind.as_str())
                    .push_bind(c.appid.as_str())
                    .push_bind(*next)
                    .push_bind(t.sealed.key_id.as_str())
                    .push_bind(&t.sealed.nonce[..])
                    .push_bind(&t.sealed.ciphertext[..])
                    .push_bind(t.issued_at.as_millis())
                    .push_bind(t.expires_at.as_millis())
                    .push_bind(t.refresh_at.map(Timestamp::as_millis))
                    .push_bind(t.source.as_str())
                    .push_bind(r.at.as_millis())
                    .push_bind(*expected);
            });
            qb.push(
                ") AS v WHERE access_tokens.component_appid = v.column1 \
                 AND access_tokens.kind = v.column2 AND access_tokens.appid = v.column3 \
                 AND access_tokens.generation = v.column13 \
                 RETURNING access_tokens.component_appid, access_tokens.kind, access_tokens.appid",
            );
            let landed: std::collections::HashSet<(String, String, String)> = qb
                .build_query_as::<(String, String, String)>()
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .collect();
            let mut outcomes = Vec::with_capacity(chunk.len());
            let mut rotated = Vec::new();
            let mut history = Vec::new();
            for r in chunk {
                let c = &r.credential;
                let key = (
                    c.component.as_str().to_owned(),
                    c.kind.as_str().to_owned(),
                    c.appid.as_str().to_owned(),
                );
                let applied = landed.contains(&key);
                let outcome = if applied {
                    SaveOutcome::Saved {
                        generation: r.expected_generation.saturating_add(1),
                    }
                } else {
                    lost(tx, c).await?
                };
                if let Some(rt) = &r.refresh_token {
                    if applied {
                        rotated.push((*r, rt));
                    }
                    // Kept even when the write lost: never lose a refresh token.
                    let g = match outcome {
                        SaveOutcome::Saved { generation } => generation,
                        _ => r.expected_generation,
                    };
                    history.push((*r, rt, db_generation(g)?, applied));
                }
                outcomes.push(outcome);
            }
            if !rotated.is_empty() {
                let mut qb: sqlx::QueryBuilder<'_, $db> = sqlx::QueryBuilder::new(
                    "UPDATE authorizers SET rt_kid = v.column3, rt_nonce = v.column4, \
                     rt_ct = v.column5, status_changed_at = CASE WHEN authorizers.status <> \
                     'active' THEN v.column6 ELSE authorizers.status_changed_at END, \
                     status = 'active', status_reason = NULL, updated_at = v.column6 FROM (",
                );
                qb.push_values(&rotated, |mut b, (r, rt)| {
                    b.push_bind(r.credential.component.as_str())
                        .push_bind(r.credential.appid.as_str())
                        .push_bind(rt.key_id.as_str())
                        .push_bind(&rt.nonce[..])
                        .push_bind(&rt.ciphertext[..])
                        .push_bind(r.at.as_millis());
                });
                qb.push(
                    ") AS v WHERE authorizers.component_appid = v.column1 \
                     AND authorizers.appid = v.column2",
                );
                qb.build().execute(&mut **tx).await?;
            }
            if !history.is_empty() {
                let mut qb: sqlx::QueryBuilder<'_, $db> = sqlx::QueryBuilder::new(
                    "INSERT INTO refresh_token_history (component_appid, appid, rt_kid, \
                     rt_nonce, rt_ct, source, generation, applied, received_at) ",
                );
                qb.push_values(&history, |mut b, (r, rt, g, applied)| {
                    b.push_bind(r.credential.component.as_str())
                        .push_bind(r.credential.appid.as_str())
                        .push_bind(rt.key_id.as_str())
                        .push_bind(&rt.nonce[..])
                        .push_bind(&rt.ciphertext[..])
                        .push_bind(RefreshTokenSource::Refresh.as_str())
                        .push_bind(*g)
                        .push_bind(*applied)
                        .push_bind(r.at.as_millis());
                });
                qb.build().execute(&mut **tx).await?;
            }
            Ok(outcomes)
        }

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
                // A batch is written a few statements at a time, not three per result: on
                // SQLite every statement is a round trip to its worker thread. A credential
                // twice in one batch (its second write expecting its first's generation) is
                // written one result after another, as the fences must see them in turn.
                let distinct = {
                    let mut seen = std::collections::HashSet::with_capacity(results.len());
                    results.iter().all(|r| seen.insert(&r.credential))
                };
                let outcomes = if distinct && results.len() > 1 {
                    let mut outcomes = Vec::with_capacity(results.len());
                    let ordered: Vec<&RefreshResult> =
                        order.iter().map(|&i| &results[i]).collect();
                    for chunk in ordered.chunks(BATCH_ROWS) {
                        outcomes.extend(
                            save_chunk(&mut tx, chunk, self.backend() == Backend::Postgres)
                                .await?,
                        );
                    }
                    outcomes
                } else {
                    let mut outcomes = Vec::with_capacity(results.len());
                    for &i in &order {
                        outcomes.push(save_one(&mut tx, &results[i]).await?);
                    }
                    outcomes
                };
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
