//! The authorizers role of the store: authorizers: their refresh tokens (fenced, with the
//! append-only history), status, fallback appsecret, and the authorization codes already exchanged.
//!
//! [`AuthorizerStore`] is the contract; `authorizers_sql!` its SQL, shared by both backends
//! (conventions in
//! `sql.rs`) and expanded for each backend type by `sql::impl_store!`.

use async_trait::async_trait;

use crate::model::{
    AppKind, Appid, AuthorizationWrite, AuthorizerCounts, AuthorizerRecord, AuthorizerState,
    ComponentAppid, RefreshTokenHistoryEntry, SaveOutcome, Sealed, StatusChange, Timestamp,
};
use crate::store::StoreError;

/// Authorizers: their refresh tokens (fenced, with the append-only history), status, fallback
/// appsecret, and the authorization codes already exchanged.
#[async_trait]
pub trait AuthorizerStore: Send + Sync {
    /// Creates authorizers or replaces their refresh tokens (api_query_auth results, import rows,
    /// reconciliation), each fenced, with history rows; one transaction for the slice.
    ///
    /// Written in (component, appid) order, outcomes in the slice's order, and
    /// a transient `Err` handled as for [`TokenStore::save_refresh_results`]: nothing was
    /// written; retry with the same sealed values.
    async fn save_authorizations(
        &self,
        writes: &[AuthorizationWrite],
    ) -> Result<Vec<SaveOutcome>, StoreError>;

    /// [`AuthorizerStore::save_authorizations`] for one write.
    async fn save_authorization(
        &self,
        write: &AuthorizationWrite,
    ) -> Result<SaveOutcome, StoreError> {
        let mut out = self
            .save_authorizations(std::slice::from_ref(write))
            .await?;
        out.pop()
            .ok_or(StoreError::InvalidInput("no outcome for the write"))
    }

    /// One authorizer.
    async fn get_authorizer(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
    ) -> Result<Option<AuthorizerRecord>, StoreError>;

    /// A page of a component's authorizers ordered by appid, after `after`.
    async fn list_authorizers(
        &self,
        component: &ComponentAppid,
        after: Option<&Appid>,
        limit: u32,
    ) -> Result<Vec<AuthorizerRecord>, StoreError>;

    /// A page of a component's authorizers whose nick name or principal name contains `text`
    /// (ASCII letters in any case), ordered by appid, after `after`. A scan: for the dashboard's
    /// search, not a hot path.
    async fn search_authorizers(
        &self,
        component: &ComponentAppid,
        text: &str,
        after: Option<&Appid>,
        limit: u32,
    ) -> Result<Vec<AuthorizerRecord>, StoreError>;

    /// Every authorizer of one component (or all) with its current token, in one query: the cold
    /// start.
    async fn load_authorizers(
        &self,
        component: Option<&ComponentAppid>,
    ) -> Result<Vec<AuthorizerRecord>, StoreError>;

    /// Every authorizer's state (no appsecret, no details) handed to `each` as the rows arrive, in no particular order: at a million authorizers, neither a list of full
    /// records in memory nor a walk of the primary key (random reads of the table).
    async fn scan_authorizer_states(
        &self,
        each: &mut (dyn FnMut(AuthorizerState) + Send),
    ) -> Result<(), StoreError>;

    /// How many authorizers a component has, by status.
    async fn count_authorizers(
        &self,
        component: &ComponentAppid,
    ) -> Result<AuthorizerCounts, StoreError>;

    /// Sets an authorizer's status (fenced when `expected_generation` is set). A change bumps the
    /// generation, so a refresh computed before a revocation cannot land after it. Setting the
    /// status it already has changes nothing.
    async fn set_authorizer_status(&self, change: &StatusChange)
    -> Result<SaveOutcome, StoreError>;

    /// Sets or clears the appsecret kept for an authorizer's fallback. False if no such authorizer.
    async fn set_authorizer_appsecret(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
        appsecret: Option<&Sealed>,
        at: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Records what api_get_authorizer_info said: the kind and the details. False if no such
    /// authorizer. Changes neither its generation nor its token.
    async fn set_authorizer_details(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
        kind: AppKind,
        details: &crate::model::AuthorizerDetails,
    ) -> Result<bool, StoreError>;

    /// Every refresh token an authorizer ever had, oldest first.
    async fn refresh_token_history(
        &self,
        component: &ComponentAppid,
        appid: &Appid,
    ) -> Result<Vec<RefreshTokenHistoryEntry>, StoreError>;

    /// How many history rows exist (one component or all).
    async fn count_refresh_token_history(
        &self,
        component: Option<&ComponentAppid>,
    ) -> Result<u64, StoreError>;

    /// Remembers that the authorization code whose SHA-256 is `code_digest` (hex) was exchanged
    /// for `appid` at `at`, and forgets codes exchanged before `forget_before`. Idempotent.
    async fn record_exchanged_code(
        &self,
        component: &ComponentAppid,
        code_digest: &str,
        appid: &Appid,
        at: Timestamp,
        forget_before: Timestamp,
    ) -> Result<(), StoreError>;

    /// The authorizer a remembered code was exchanged for.
    async fn exchanged_code(
        &self,
        component: &ComponentAppid,
        code_digest: &str,
    ) -> Result<Option<Appid>, StoreError>;
}

/// `impl AuthorizerStore` for a backend type (see `sql::impl_store!`).
macro_rules! authorizers_sql {
    ($store:ident, $db:ty) => {
        /// One authorization write, fenced (see `Store::save_authorizations`).
        async fn save_one_authorization(
            tx: &mut sqlx::Transaction<'static, $db>,
            w: &AuthorizationWrite,
        ) -> Result<SaveOutcome, StoreError> {
            let credential = Credential::authorizer(&w.component, &w.appid);
            let rt = &w.refresh_token;
            let secret = w.appsecret.as_ref();
            let outcome = match w.expected {
                Expected::Absent => {
                    let n = sqlx::query(
                        "INSERT INTO authorizers (component_appid, appid, kind, \
                         status, status_reason, status_changed_at, rt_kid, rt_nonce, \
                         rt_ct, secret_kid, secret_nonce, secret_ct, created_at, \
                         updated_at) VALUES ($1, $2, $3, $4, NULL, $5, $6, $7, $8, \
                         $9, $10, $11, $5, $5) \
                         ON CONFLICT (component_appid, appid) DO NOTHING",
                    )
                    .bind(w.component.as_str())
                    .bind(w.appid.as_str())
                    .bind(w.kind.map(|k| k.as_str()))
                    .bind(w.status.as_str())
                    .bind(w.at.as_millis())
                    .bind(rt.key_id.as_str())
                    .bind(&rt.nonce[..])
                    .bind(&rt.ciphertext[..])
                    .bind(secret.map(|s| s.key_id.as_str()))
                    .bind(secret.map(|s| &s.nonce[..]))
                    .bind(secret.map(|s| &s.ciphertext[..]))
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                    if n == 1 {
                        let t = w.access_token.as_ref();
                        sqlx::query(
                            "INSERT INTO access_tokens (component_appid, kind, \
                             appid, generation, token_kid, token_nonce, token_ct, \
                             issued_at, expires_at, refresh_at, source, updated_at) \
                             VALUES ($1, 'authorizer', $2, 1, $3, $4, $5, $6, $7, \
                             $8, $9, $10)",
                        )
                        .bind(w.component.as_str())
                        .bind(w.appid.as_str())
                        .bind(t.map(|t| t.sealed.key_id.as_str()))
                        .bind(t.map(|t| &t.sealed.nonce[..]))
                        .bind(t.map(|t| &t.sealed.ciphertext[..]))
                        .bind(t.map(|t| t.issued_at.as_millis()))
                        .bind(t.map(|t| t.expires_at.as_millis()))
                        .bind(t.and_then(|t| t.refresh_at.map(Timestamp::as_millis)))
                        .bind(t.map(|t| t.source.as_str()))
                        .bind(w.at.as_millis())
                        .execute(&mut **tx)
                        .await?;
                        SaveOutcome::Saved { generation: 1 }
                    } else {
                        SaveOutcome::Stale {
                            current_generation: current_generation(
                                tx,
                                &credential,
                            )
                            .await?
                            .unwrap_or(0),
                        }
                    }
                }
                Expected::Generation(expected) => {
                    let landed = fenced_token_write(
                        tx,
                        &credential,
                        expected,
                        w.access_token.as_ref(),
                        w.at,
                    )
                    .await?;
                    if landed {
                        sqlx::query(
                            "UPDATE authorizers SET kind = COALESCE($3, kind), \
                             status_changed_at = CASE WHEN status <> $4 THEN $5 \
                             ELSE status_changed_at END, status = $4, \
                             status_reason = NULL, rt_kid = $6, rt_nonce = $7, \
                             rt_ct = $8, secret_kid = COALESCE($9, secret_kid), \
                             secret_nonce = COALESCE($10, secret_nonce), \
                             secret_ct = COALESCE($11, secret_ct), updated_at = $5 \
                             WHERE component_appid = $1 AND appid = $2",
                        )
                        .bind(w.component.as_str())
                        .bind(w.appid.as_str())
                        .bind(w.kind.map(|k| k.as_str()))
                        .bind(w.status.as_str())
                        .bind(w.at.as_millis())
                        .bind(rt.key_id.as_str())
                        .bind(&rt.nonce[..])
                        .bind(&rt.ciphertext[..])
                        .bind(secret.map(|s| s.key_id.as_str()))
                        .bind(secret.map(|s| &s.nonce[..]))
                        .bind(secret.map(|s| &s.ciphertext[..]))
                        .execute(&mut **tx)
                        .await?;
                        SaveOutcome::Saved {
                            generation: expected.saturating_add(1),
                        }
                    } else {
                        lost(tx, &credential).await?
                    }
                }
            };
            let (g, applied) = match (outcome, w.expected) {
                (SaveOutcome::Saved { generation }, _) => (generation, true),
                (_, Expected::Generation(g)) => (g, false),
                (_, Expected::Absent) => (0, false),
            };
            insert_history(
                tx,
                &w.component,
                &w.appid,
                rt,
                w.source,
                g,
                applied,
                w.at,
            )
            .await?;
            Ok(outcome)
        }

        /// A run of authorizer creations (expected absent, distinct appids): three multi-row
        /// statements instead of three per row, with the same outcomes as one by one.
        async fn create_authorizers(
            tx: &mut sqlx::Transaction<'static, $db>,
            run: &[&AuthorizationWrite],
        ) -> Result<Vec<SaveOutcome>, StoreError> {
            let mut outcomes = Vec::with_capacity(run.len());
            // At most 14 binds per row: far below both backends' parameter limits.
            for chunk in run.chunks(500) {
                let mut qb: sqlx::QueryBuilder<'_, $db> = sqlx::QueryBuilder::new(
                    "INSERT INTO authorizers (component_appid, appid, kind, status, \
                     status_reason, status_changed_at, rt_kid, rt_nonce, rt_ct, secret_kid, \
                     secret_nonce, secret_ct, created_at, updated_at) ",
                );
                qb.push_values(chunk, |mut b, w| {
                    let secret = w.appsecret.as_ref();
                    b.push_bind(w.component.as_str())
                        .push_bind(w.appid.as_str())
                        .push_bind(w.kind.map(|k| k.as_str()))
                        .push_bind(w.status.as_str())
                        .push_bind(None::<&str>)
                        .push_bind(w.at.as_millis())
                        .push_bind(w.refresh_token.key_id.as_str())
                        .push_bind(&w.refresh_token.nonce[..])
                        .push_bind(&w.refresh_token.ciphertext[..])
                        .push_bind(secret.map(|s| s.key_id.as_str()))
                        .push_bind(secret.map(|s| &s.nonce[..]))
                        .push_bind(secret.map(|s| &s.ciphertext[..]))
                        .push_bind(w.at.as_millis())
                        .push_bind(w.at.as_millis());
                });
                qb.push(
                    " ON CONFLICT (component_appid, appid) DO NOTHING \
                     RETURNING component_appid, appid",
                );
                let inserted: std::collections::HashSet<(String, String)> = qb
                    .build_query_as::<(String, String)>()
                    .fetch_all(&mut **tx)
                    .await?
                    .into_iter()
                    .collect();
                let landed: Vec<bool> = chunk
                    .iter()
                    .map(|w| {
                        inserted.contains(&(
                            w.component.as_str().to_owned(),
                            w.appid.as_str().to_owned(),
                        ))
                    })
                    .collect();
                let created: Vec<&AuthorizationWrite> = chunk
                    .iter()
                    .zip(&landed)
                    .filter(|(_, l)| **l)
                    .map(|(w, _)| *w)
                    .collect();
                if !created.is_empty() {
                    let mut qb: sqlx::QueryBuilder<'_, $db> = sqlx::QueryBuilder::new(
                        "INSERT INTO access_tokens (component_appid, kind, appid, \
                         generation, token_kid, token_nonce, token_ct, issued_at, \
                         expires_at, refresh_at, source, updated_at) ",
                    );
                    qb.push_values(&created, |mut b, w| {
                        let t = w.access_token.as_ref();
                        b.push_bind(w.component.as_str())
                            .push_bind("authorizer")
                            .push_bind(w.appid.as_str())
                            .push_bind(1_i64)
                            .push_bind(t.map(|t| t.sealed.key_id.as_str()))
                            .push_bind(t.map(|t| &t.sealed.nonce[..]))
                            .push_bind(t.map(|t| &t.sealed.ciphertext[..]))
                            .push_bind(t.map(|t| t.issued_at.as_millis()))
                            .push_bind(t.map(|t| t.expires_at.as_millis()))
                            .push_bind(t.and_then(|t| t.refresh_at.map(Timestamp::as_millis)))
                            .push_bind(t.map(|t| t.source.as_str()))
                            .push_bind(w.at.as_millis());
                    });
                    qb.build().execute(&mut **tx).await?;
                }
                let mut qb: sqlx::QueryBuilder<'_, $db> = sqlx::QueryBuilder::new(
                    "INSERT INTO refresh_token_history (component_appid, appid, rt_kid, \
                     rt_nonce, rt_ct, source, generation, applied, received_at) ",
                );
                qb.push_values(chunk.iter().zip(&landed), |mut b, (w, landed)| {
                    b.push_bind(w.component.as_str())
                        .push_bind(w.appid.as_str())
                        .push_bind(w.refresh_token.key_id.as_str())
                        .push_bind(&w.refresh_token.nonce[..])
                        .push_bind(&w.refresh_token.ciphertext[..])
                        .push_bind(w.source.as_str())
                        .push_bind(i64::from(*landed))
                        .push_bind(*landed)
                        .push_bind(w.at.as_millis());
                });
                qb.build().execute(&mut **tx).await?;
                for (w, landed) in chunk.iter().zip(landed) {
                    outcomes.push(if landed {
                        SaveOutcome::Saved { generation: 1 }
                    } else {
                        let credential = Credential::authorizer(&w.component, &w.appid);
                        SaveOutcome::Stale {
                            current_generation: current_generation(tx, &credential)
                                .await?
                                .unwrap_or(0),
                        }
                    });
                }
            }
            Ok(outcomes)
        }

        #[async_trait::async_trait]
        impl crate::store::AuthorizerStore for $store {
            async fn save_authorizations(
                &self,
                writes: &[AuthorizationWrite],
            ) -> Result<Vec<SaveOutcome>, StoreError> {
                for w in writes {
                    if w.refresh_token.is_empty_plaintext() {
                        return Err(StoreError::InvalidInput("empty refresh token"));
                    }
                    if w.access_token.as_ref().is_some_and(|t| t.sealed.is_empty_plaintext())
                    {
                        return Err(StoreError::InvalidInput("empty access token"));
                    }
                }
                let order = lock_order(writes, |w| {
                    (w.component.as_str(), "authorizer", w.appid.as_str())
                });
                let sorted: Vec<&AuthorizationWrite> =
                    order.iter().map(|&i| &writes[i]).collect();
                let mut tx = self.begin_write().await?;
                let mut outcomes = Vec::with_capacity(writes.len());
                let mut i = 0;
                while i < sorted.len() {
                    // Consecutive creations of distinct authorizers do not depend on each
                    // other, so they are written together; anything else goes in order.
                    let mut seen = std::collections::HashSet::new();
                    let run = sorted[i..]
                        .iter()
                        .take_while(|w| {
                            w.expected == Expected::Absent
                                && seen.insert((&w.component, &w.appid))
                        })
                        .count();
                    if run >= 2 {
                        outcomes
                            .extend(create_authorizers(&mut tx, &sorted[i..i + run]).await?);
                        i += run;
                    } else {
                        outcomes.push(save_one_authorization(&mut tx, sorted[i]).await?);
                        i += 1;
                    }
                }
                tx.commit().await?;
                in_caller_order(&order, outcomes)
            }

            async fn get_authorizer(
                &self,
                component: &ComponentAppid,
                appid: &Appid,
            ) -> Result<Option<AuthorizerRecord>, StoreError> {
                let sql = format!(
                    "{AUTHORIZER_SELECT} WHERE a.component_appid = $1 AND a.appid = $2"
                );
                let row: Option<AuthorizerRow> = sqlx::query_as(&sql)
                    .bind(component.as_str())
                    .bind(appid.as_str())
                    .fetch_optional(self.read_pool())
                    .await?;
                row.map(AuthorizerRow::into_record).transpose()
            }

            async fn list_authorizers(
                &self,
                component: &ComponentAppid,
                after: Option<&Appid>,
                limit: u32,
            ) -> Result<Vec<AuthorizerRecord>, StoreError> {
                // Two statements, not `($2 IS NULL OR a.appid > $2)`: with the OR, neither
                // planner seeks to `after` in the primary key; it reads every row before it (at
                // a million authorizers a middle page took 115 ms).
                let rows: Vec<AuthorizerRow> = match after {
                    Some(after) => {
                        let sql = format!(
                            "{AUTHORIZER_SELECT} WHERE a.component_appid = $1 \
                             AND a.appid > $2 ORDER BY a.appid LIMIT $3"
                        );
                        sqlx::query_as(&sql)
                            .bind(component.as_str())
                            .bind(after.as_str())
                            .bind(i64::from(limit))
                            .fetch_all(self.read_pool())
                            .await?
                    }
                    None => {
                        let sql = format!(
                            "{AUTHORIZER_SELECT} WHERE a.component_appid = $1 \
                             ORDER BY a.appid LIMIT $2"
                        );
                        sqlx::query_as(&sql)
                            .bind(component.as_str())
                            .bind(i64::from(limit))
                            .fetch_all(self.read_pool())
                            .await?
                    }
                };
                rows.into_iter().map(AuthorizerRow::into_record).collect()
            }

            async fn search_authorizers(
                &self,
                component: &ComponentAppid,
                text: &str,
                after: Option<&Appid>,
                limit: u32,
            ) -> Result<Vec<AuthorizerRecord>, StoreError> {
                // The text is matched literally: LIKE's wildcards and the escape are escaped.
                let mut pattern = String::with_capacity(text.len() + 2);
                pattern.push('%');
                for c in text.to_lowercase().chars() {
                    if matches!(c, '%' | '_' | '\\') {
                        pattern.push('\\');
                    }
                    pattern.push(c);
                }
                pattern.push('%');
                // SQLite would otherwise walk the status index and fetch each row by its rowid,
                // three times slower than reading the table in order (a unary `+` keeps a term
                // off every index there; PostgreSQL has no such operator on text).
                let component_term = if <$db as sqlx::Database>::NAME == "SQLite" {
                    "+a.component_appid = $1"
                } else {
                    "a.component_appid = $1"
                };
                let sql = format!(
                    "{AUTHORIZER_SELECT} WHERE {component_term} \
                     AND ($2 IS NULL OR a.appid > $2) \
                     AND (LOWER(a.nick_name) LIKE $3 ESCAPE '\\' \
                     OR LOWER(a.principal_name) LIKE $3 ESCAPE '\\') \
                     ORDER BY a.appid LIMIT $4"
                );
                let rows: Vec<AuthorizerRow> = sqlx::query_as(&sql)
                    .bind(component.as_str())
                    .bind(after.map(Appid::as_str))
                    .bind(pattern)
                    .bind(i64::from(limit))
                    .fetch_all(self.read_pool())
                    .await?;
                rows.into_iter().map(AuthorizerRow::into_record).collect()
            }

            async fn load_authorizers(
                &self,
                component: Option<&ComponentAppid>,
            ) -> Result<Vec<AuthorizerRecord>, StoreError> {
                let sql = format!(
                    "{AUTHORIZER_SELECT} WHERE ($1 IS NULL OR a.component_appid = $1) \
                     ORDER BY a.component_appid, a.appid"
                );
                let rows: Vec<AuthorizerRow> = sqlx::query_as(&sql)
                    .bind(component.map(ComponentAppid::as_str))
                    .fetch_all(self.read_pool())
                    .await?;
                rows.into_iter().map(AuthorizerRow::into_record).collect()
            }

            async fn scan_authorizer_states(
                &self,
                each: &mut (dyn FnMut(AuthorizerState) + Send),
            ) -> Result<(), StoreError> {
                use futures::TryStreamExt;
                let mut rows =
                    sqlx::query_as::<_, AuthorizerStateRow>(AUTHORIZER_STATE_SELECT)
                        .fetch(self.read_pool());
                while let Some(row) = rows.try_next().await? {
                    each(row.into_state()?);
                }
                Ok(())
            }

            async fn count_authorizers(
                &self,
                component: &ComponentAppid,
            ) -> Result<AuthorizerCounts, StoreError> {
                let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
                    "SELECT status, kind, COUNT(*) FROM authorizers WHERE component_appid = $1 \
                     GROUP BY status, kind",
                )
                .bind(component.as_str())
                .fetch_all(self.read_pool())
                .await?;
                let mut counts = AuthorizerCounts::default();
                for (status, kind, n) in rows {
                    let n = u64::try_from(n).unwrap_or(0);
                    match AuthorizerStatus::parse(&status)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?
                    {
                        AuthorizerStatus::Active => counts.active += n,
                        AuthorizerStatus::NeedsReauth => counts.needs_reauth += n,
                        AuthorizerStatus::Revoked => counts.revoked += n,
                    }
                    match kind.as_deref().map(crate::model::AppKind::parse) {
                        Some(Ok(crate::model::AppKind::OfficialAccount)) => {
                            counts.official_accounts += n
                        }
                        Some(Ok(crate::model::AppKind::MiniProgram)) => counts.mini_programs += n,
                        Some(Err(e)) => return Err(StoreError::Corrupt(e.to_string())),
                        None => counts.kind_unknown += n,
                    }
                }
                Ok(counts)
            }

            async fn set_authorizer_status(
                &self,
                change: &StatusChange,
            ) -> Result<SaveOutcome, StoreError> {
                let mut tx = self.begin_write().await?;
                // Bump the credential's generation (the fence and the row lock) only if the
                // status actually changes, then change the status.
                let bumped: Option<(i64,)> = sqlx::query_as(
                    "UPDATE access_tokens SET generation = generation + 1, updated_at = $4 \
                     WHERE component_appid = $1 AND kind = 'authorizer' AND appid = $2 \
                     AND ($5 IS NULL OR generation = $5) \
                     AND EXISTS (SELECT 1 FROM authorizers a \
                       WHERE a.component_appid = $1 AND a.appid = $2 AND a.status <> $3) \
                     RETURNING generation",
                )
                .bind(change.component.as_str())
                .bind(change.appid.as_str())
                .bind(change.status.as_str())
                .bind(change.at.as_millis())
                .bind(change.expected_generation.map(db_generation).transpose()?)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some((g,)) = bumped {
                    sqlx::query(
                        "UPDATE authorizers SET status = $3, status_reason = $4, \
                         status_changed_at = $5, updated_at = $5 \
                         WHERE component_appid = $1 AND appid = $2",
                    )
                    .bind(change.component.as_str())
                    .bind(change.appid.as_str())
                    .bind(change.status.as_str())
                    .bind(change.reason.as_deref())
                    .bind(change.at.as_millis())
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    return Ok(SaveOutcome::Saved {
                        generation: generation(g)?,
                    });
                }
                let credential = Credential::authorizer(&change.component, &change.appid);
                let current = current_generation(&mut tx, &credential).await?;
                tx.rollback().await?;
                Ok(match (current, change.expected_generation) {
                    (None, _) => SaveOutcome::Missing,
                    (Some(current_generation), Some(expected))
                        if current_generation != expected =>
                    {
                        SaveOutcome::Stale { current_generation }
                    }
                    // Already in that status: nothing to do.
                    (Some(generation), _) => SaveOutcome::Saved { generation },
                })
            }

            async fn set_authorizer_details(
                &self,
                component: &ComponentAppid,
                appid: &Appid,
                kind: crate::model::AppKind,
                details: &crate::model::AuthorizerDetails,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "UPDATE authorizers SET kind = $3, nick_name = $4, principal_name = $5, \
                     service_type = $6, details_at = $7 \
                     WHERE component_appid = $1 AND appid = $2",
                )
                .bind(component.as_str())
                .bind(appid.as_str())
                .bind(kind.as_str())
                .bind(details.nick_name.as_deref())
                .bind(details.principal_name.as_deref())
                .bind(details.service_type)
                .bind(details.fetched_at.map(Timestamp::as_millis))
                .execute(self.write_pool())
                .await?
                .rows_affected();
                Ok(done == 1)
            }

            async fn set_authorizer_appsecret(
                &self,
                component: &ComponentAppid,
                appid: &Appid,
                appsecret: Option<&Sealed>,
                at: Timestamp,
            ) -> Result<bool, StoreError> {
                let n = sqlx::query(
                    "UPDATE authorizers SET secret_kid = $3, secret_nonce = $4, \
                     secret_ct = $5, updated_at = $6 WHERE component_appid = $1 AND appid = $2",
                )
                .bind(component.as_str())
                .bind(appid.as_str())
                .bind(appsecret.map(|s| s.key_id.as_str()))
                .bind(appsecret.map(|s| &s.nonce[..]))
                .bind(appsecret.map(|s| &s.ciphertext[..]))
                .bind(at.as_millis())
                .execute(self.write_pool())
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn refresh_token_history(
                &self,
                component: &ComponentAppid,
                appid: &Appid,
            ) -> Result<Vec<RefreshTokenHistoryEntry>, StoreError> {
                let rows: Vec<HistoryRow> = sqlx::query_as(
                    "SELECT id, component_appid, appid, rt_kid, rt_nonce, rt_ct, source, \
                     generation, applied, received_at FROM refresh_token_history \
                     WHERE component_appid = $1 AND appid = $2 ORDER BY id",
                )
                .bind(component.as_str())
                .bind(appid.as_str())
                .fetch_all(self.read_pool())
                .await?;
                rows.into_iter().map(HistoryRow::into_entry).collect()
            }

            async fn count_refresh_token_history(
                &self,
                component: Option<&ComponentAppid>,
            ) -> Result<u64, StoreError> {
                let (n,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM refresh_token_history \
                     WHERE ($1 IS NULL OR component_appid = $1)",
                )
                .bind(component.map(ComponentAppid::as_str))
                .fetch_one(self.read_pool())
                .await?;
                Ok(u64::try_from(n).unwrap_or(0))
            }

            async fn record_exchanged_code(
                &self,
                component: &ComponentAppid,
                code_digest: &str,
                appid: &Appid,
                at: Timestamp,
                forget_before: Timestamp,
            ) -> Result<(), StoreError> {
                sqlx::query("DELETE FROM exchanged_codes WHERE exchanged_at < $1")
                    .bind(forget_before.as_millis())
                    .execute(self.write_pool())
                    .await?;
                sqlx::query(
                    "INSERT INTO exchanged_codes (component_appid, code_digest, appid, exchanged_at) \
                     VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (component_appid, code_digest) DO UPDATE SET \
                     appid = excluded.appid, exchanged_at = excluded.exchanged_at",
                )
                .bind(component.as_str())
                .bind(code_digest)
                .bind(appid.as_str())
                .bind(at.as_millis())
                .execute(self.write_pool())
                .await?;
                Ok(())
            }

            async fn exchanged_code(
                &self,
                component: &ComponentAppid,
                code_digest: &str,
            ) -> Result<Option<Appid>, StoreError> {
                let row: Option<(String,)> = sqlx::query_as(
                    "SELECT appid FROM exchanged_codes WHERE component_appid = $1 AND code_digest = $2",
                )
                .bind(component.as_str())
                .bind(code_digest)
                .fetch_optional(self.write_pool())
                .await?;
                row.map(|(a,)| crate::store::sql::appid(a)).transpose()
            }
        }
    };
}

pub(super) use authorizers_sql;
