//! Import and export of authorizers: `wxtoken authorizers import FILE` / `export`, and the
//! SQLite → PostgreSQL migration (export from one, import into the other; docs/OPERATIONS.md).
//!
//! Depends on `model`, `store` and `vault`; the CLI and the admin API call [`import`] and
//! [`export`].
//!
//! Format: CSV or JSON lines, one authorizer per line, fields `appid`, `refresh_token` (required),
//! `kind` (`official_account` | `mini_program`), `appsecret` (the fallback) and `status`
//! (`active` | `needs_reauth` | `revoked`; default `active`). CSV: an optional header line naming
//! the columns in any order (without one: `appid,refresh_token[,kind[,appsecret[,status]]]`),
//! fields may be double-quoted (`""` inside quotes is a quote), empty fields are absent, and blank
//! lines and lines starting with `#` are skipped. JSON lines: one object per line with those keys.
//! The component appid is given by the caller, not the file.
//!
//! Invariants:
//! - Import is idempotent: an authorizer whose stored refresh token equals the file's keeps it
//!   (a changed appsecret or status in the row is still applied; a changed kind is reported); a
//!   token found in the authorizer's refresh-token history is older than the stored one and is
//!   skipped (reported, counted as unchanged), so re-importing an old export never moves a token
//!   backwards; any other different token replaces the stored one through the fenced write
//!   (generation checked, history row appended); a new authorizer is created. Re-running an
//!   import adds nothing twice.
//! - Import is crash-safe: rows are written in batches, each batch one transaction, so a kill
//!   leaves whole rows only, and re-running completes the rest.
//! - A bad row is reported by line number and skipped; the reasons never contain a secret.
//! - Export writes plaintext secrets, so it writes a new file with mode 0600 (never a partial
//!   file: a temporary sibling, created 0600 with O_EXCL, is renamed or linked into place and the
//!   directory synced) and refuses to replace an existing file unless asked. A temporary file
//!   left by a killed export is removed by the next export to the same file.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::model::{
    AppKind, Appid, AuthorizationWrite, AuthorizerStatus, ComponentAppid, Expected,
    RefreshTokenSource, SaveOutcome, SecretSlot, StatusChange, Timestamp,
};
use crate::store::{Store, StoreError};
use crate::vault::{Vault, VaultError};

/// Longest accepted refresh token or appsecret (WeChat's are about 100 characters).
const MAX_SECRET_LEN: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing to overwrite {0}; pass the overwrite flag to replace it")]
    Exists(PathBuf),
    #[error("bad header: {0}")]
    BadHeader(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TransferError {
    let context = context.into();
    move |source| TransferError::Io { context, source }
}

/// CSV or JSON lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    JsonLines,
}

impl Format {
    /// By file extension: `.csv`, or `.jsonl` / `.ndjson` / `.json`.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" | "json" => Some(Format::JsonLines),
            _ => None,
        }
    }
}

/// Import settings.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Rows per transaction: a kill loses at most one uncommitted batch (re-run to finish).
    pub batch_size: usize,
    /// `None`: detect (a first data line starting with `{` is JSON lines).
    pub format: Option<Format>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            batch_size: 5000,
            format: None,
        }
    }
}

/// Counters reported after each committed batch (and once at the end).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportProgress {
    /// Lines read so far, and their bytes (for a progress bar sized by the file length).
    pub lines: u64,
    pub bytes: u64,
    /// Rows committed: new authorizers, replaced refresh tokens, rows left alone.
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub failed: u64,
}

/// A row that was not imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub progress: ImportProgress,
    pub errors: Vec<RowError>,
}

struct Row {
    appid: Appid,
    refresh_token: Zeroizing<String>,
    kind: Option<AppKind>,
    appsecret: Option<Zeroizing<String>>,
    status: Option<AuthorizerStatus>,
}

#[derive(Clone, Copy)]
enum Column {
    Appid,
    RefreshToken,
    Kind,
    Appsecret,
    Status,
}

const POSITIONAL: [Column; 5] = [
    Column::Appid,
    Column::RefreshToken,
    Column::Kind,
    Column::Appsecret,
    Column::Status,
];

fn column_named(name: &str) -> Option<Column> {
    match name.trim().to_ascii_lowercase().as_str() {
        "appid" | "authorizer_appid" => Some(Column::Appid),
        "refresh_token" | "authorizer_refresh_token" => Some(Column::RefreshToken),
        "kind" => Some(Column::Kind),
        "appsecret" => Some(Column::Appsecret),
        "status" => Some(Column::Status),
        _ => None,
    }
}

/// Splits one CSV line. Quoted fields may hold commas and `""`; no multi-line fields.
fn split_csv(line: &str) -> Result<Vec<Zeroizing<String>>, &'static str> {
    let mut fields = Vec::new();
    let mut cur = Zeroizing::new(String::new());
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(ch) = chars.next() {
        if quoted {
            if ch == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    cur.push('"');
                } else {
                    quoted = false;
                }
            } else {
                cur.push(ch);
            }
        } else if ch == ',' {
            fields.push(std::mem::take(&mut cur));
            was_quoted = false;
        } else if ch == '"' && cur.trim().is_empty() && !was_quoted {
            cur.zeroize();
            quoted = true;
            was_quoted = true;
        } else if was_quoted && !ch.is_whitespace() {
            return Err("text after a closing quote");
        } else {
            cur.push(ch);
        }
    }
    if quoted {
        return Err("unterminated quote");
    }
    fields.push(cur);
    Ok(fields)
}

fn check_secret(what: &'static str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s.len() > MAX_SECRET_LEN {
        return Err(format!("{what} is longer than {MAX_SECRET_LEN} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(())
}

fn build_row(
    appid: Option<&str>,
    refresh_token: Option<Zeroizing<String>>,
    kind: Option<&str>,
    appsecret: Option<Zeroizing<String>>,
    status: Option<&str>,
) -> Result<Row, String> {
    let appid = appid
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or("appid is missing")?;
    let appid = Appid::parse(appid).map_err(|e| e.to_string())?;
    let refresh_token = refresh_token.ok_or("refresh_token is missing")?;
    let refresh_token = Zeroizing::new(refresh_token.trim().to_owned());
    check_secret("refresh_token", &refresh_token)?;
    let kind = kind
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(AppKind::parse)
        .transpose()
        .map_err(|e| e.to_string())?;
    let appsecret = match appsecret {
        Some(s) if !s.trim().is_empty() => {
            let s = Zeroizing::new(s.trim().to_owned());
            check_secret("appsecret", &s)?;
            Some(s)
        }
        _ => None,
    };
    let status = status
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(AuthorizerStatus::parse)
        .transpose()
        .map_err(|e| e.to_string())?;
    Ok(Row {
        appid,
        refresh_token,
        kind,
        appsecret,
        status,
    })
}

fn parse_csv_row(line: &str, columns: &[Column]) -> Result<Row, String> {
    let fields = split_csv(line).map_err(str::to_owned)?;
    if fields.len() > columns.len() {
        return Err(format!(
            "{} fields, expected at most {}",
            fields.len(),
            columns.len()
        ));
    }
    let (mut appid, mut rt, mut kind, mut secret, mut status) = (None, None, None, None, None);
    for (field, column) in fields.into_iter().zip(columns) {
        match column {
            Column::Appid => appid = Some(field),
            Column::RefreshToken => rt = Some(field),
            Column::Kind => kind = Some(field),
            Column::Appsecret => secret = Some(field),
            Column::Status => status = Some(field),
        }
    }
    build_row(
        appid.as_deref().map(String::as_str),
        rt,
        kind.as_deref().map(String::as_str),
        secret,
        status.as_deref().map(String::as_str),
    )
}

fn parse_json_row(line: &str) -> Result<Row, String> {
    // Parse to a Value first: serde_json's syntax errors name a position, never the content,
    // and the field checks below write their own messages, so no secret reaches a report.
    let mut value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| format!("invalid JSON (line {}, column {})", e.line(), e.column()))?;
    let obj = value.as_object_mut().ok_or("not a JSON object")?;
    let mut take = |key: &'static str| -> Result<Option<Zeroizing<String>>, String> {
        match obj.remove(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(Zeroizing::new(s))),
            Some(_) => Err(format!("{key} is not a string")),
        }
    };
    let appid = take("appid")?;
    let rt = take("refresh_token")?;
    let kind = take("kind")?;
    let secret = take("appsecret")?;
    let status = take("status")?;
    if let Some(extra) = obj.keys().next() {
        let name: String = extra.chars().take(40).collect();
        return Err(format!("unknown field {name:?}"));
    }
    build_row(
        appid.as_deref().map(String::as_str),
        rt,
        kind.as_deref().map(String::as_str),
        secret,
        status.as_deref().map(String::as_str),
    )
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

struct Pending {
    line: u64,
    write: AuthorizationWrite,
    created: bool,
}

/// What is stored for an authorizer (as the import last wrote it): digests, never secrets.
struct Existing {
    generation: u64,
    refresh_token: [u8; 32],
    appsecret: Option<[u8; 32]>,
    status: AuthorizerStatus,
    kind: Option<AppKind>,
}

/// The reason given for a row whose refresh token the authorizer already had before.
const OLDER_TOKEN: &str = "refresh token is older than the stored refresh token (it is in the \
     authorizer's refresh-token history); row skipped";

/// Whether `token_digest` is one of the authorizer's earlier refresh tokens.
async fn in_history(
    store: &dyn Store,
    vault: &Vault,
    component: &ComponentAppid,
    appid: &Appid,
    token_digest: &[u8; 32],
) -> Result<bool, TransferError> {
    for entry in store
        .authorizers()
        .refresh_token_history(component, appid)
        .await?
    {
        let rt = vault.open_string(
            SecretSlot::RefreshToken { component, appid },
            &entry.refresh_token,
        )?;
        if digest(rt.expose_secret()) == *token_digest {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A row whose refresh token is the stored one: applies a changed appsecret and status (the
/// store changes an authorizer's kind only with a new refresh token, so a differing kind is
/// reported instead).
#[allow(clippy::too_many_arguments)] // the import's state, passed down
async fn apply_unchanged_token(
    store: &dyn Store,
    vault: &Vault,
    component: &ComponentAppid,
    line: u64,
    row: &Row,
    stored: &mut Existing,
    now: Timestamp,
    report: &mut ImportReport,
) -> Result<(), TransferError> {
    let appid = &row.appid;
    let mut changed = false;
    if let Some(status) = row.status.filter(|s| *s != stored.status) {
        let outcome = store
            .authorizers()
            .set_authorizer_status(&StatusChange {
                component: component.clone(),
                appid: appid.clone(),
                status,
                reason: (status != AuthorizerStatus::Active).then(|| "set by import".to_owned()),
                expected_generation: Some(stored.generation),
                at: now,
            })
            .await?;
        match outcome {
            SaveOutcome::Saved { generation } => {
                stored.generation = generation;
                stored.status = status;
                changed = true;
            }
            SaveOutcome::Stale { .. } | SaveOutcome::Missing => {
                report.progress.failed += 1;
                report.errors.push(RowError {
                    line,
                    reason: format!(
                        "authorizer {appid} changed while importing; run the import again"
                    ),
                });
                return Ok(());
            }
        }
    }
    if let Some(secret) = &row.appsecret {
        let d = digest(secret);
        if stored.appsecret != Some(d) {
            let sealed = vault.seal(
                SecretSlot::AuthorizerAppsecret { component, appid },
                secret.as_bytes(),
            )?;
            if store
                .authorizers()
                .set_authorizer_appsecret(component, appid, Some(&sealed), now)
                .await?
            {
                stored.appsecret = Some(d);
                changed = true;
            } else {
                report.progress.failed += 1;
                report.errors.push(RowError {
                    line,
                    reason: format!(
                        "authorizer {appid} changed while importing; run the import again"
                    ),
                });
                return Ok(());
            }
        }
    }
    if let Some(kind) = row.kind.filter(|k| stored.kind != Some(*k)) {
        report.errors.push(RowError {
            line,
            reason: format!(
                "kind {} not applied: authorizer {appid} is stored as {}, and its kind changes \
                 only with a new refresh token",
                kind.as_str(),
                stored.kind.map(AppKind::as_str).unwrap_or("(none)")
            ),
        });
    }
    if changed {
        report.progress.updated += 1;
    } else {
        report.progress.unchanged += 1;
    }
    Ok(())
}

/// Imports authorizers into `component` from CSV or JSON lines read from `input`.
///
/// Returns the counts and the rows that failed (by line number); a store or vault failure stops
/// the import with an error (batches committed before it stay; re-running completes the rest).
/// `progress` is called after each committed batch and once at the end; to drive an indicatif
/// bar sized by the file length: `|p| bar.set_position(p.bytes)`.
pub async fn import(
    store: &dyn Store,
    vault: &Vault,
    component: &ComponentAppid,
    input: &mut (dyn BufRead + Send),
    options: &ImportOptions,
    progress: &mut (dyn FnMut(&ImportProgress) + Send),
) -> Result<ImportReport, TransferError> {
    let now = Timestamp::now();
    store.components().ensure_component(component, now).await?;

    // What is there already: generation, status, kind and digests of the secrets (not the
    // secrets).
    let mut existing: HashMap<Appid, Existing> = HashMap::new();
    for rec in store
        .authorizers()
        .load_authorizers(Some(component))
        .await?
    {
        let rt = vault.open_string(
            SecretSlot::RefreshToken {
                component,
                appid: &rec.appid,
            },
            &rec.refresh_token,
        )?;
        let appsecret = rec
            .appsecret
            .as_ref()
            .map(|s| {
                vault.open_string(
                    SecretSlot::AuthorizerAppsecret {
                        component,
                        appid: &rec.appid,
                    },
                    s,
                )
            })
            .transpose()?
            .map(|s| digest(s.expose_secret()));
        existing.insert(
            rec.appid,
            Existing {
                generation: rec.generation,
                refresh_token: digest(rt.expose_secret()),
                appsecret,
                status: rec.status,
                kind: rec.kind,
            },
        );
    }

    let batch_size = options.batch_size.max(1);
    let mut report = ImportReport::default();
    let mut format = options.format;
    let mut columns: Option<Vec<Column>> = None;
    let mut pending: Vec<Pending> = Vec::with_capacity(batch_size);
    let mut pending_appids: HashSet<Appid> = HashSet::new();
    let mut buf = Zeroizing::new(String::new());
    let mut line_no = 0u64;
    loop {
        buf.zeroize();
        let n = input
            .read_line(&mut buf)
            .map_err(io_err(format!("reading line {}", line_no + 1)))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        report.progress.lines = line_no;
        report.progress.bytes += n as u64;
        let line = buf
            .trim_end_matches(['\n', '\r'])
            .trim_start_matches('\u{feff}');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let fmt = *format.get_or_insert(if line.trim_start().starts_with('{') {
            Format::JsonLines
        } else {
            Format::Csv
        });
        let parsed = match fmt {
            Format::JsonLines => parse_json_row(line),
            Format::Csv => {
                if columns.is_none() {
                    let first = split_csv(line).map_err(|e| TransferError::BadHeader(e.into()))?;
                    if first
                        .first()
                        .is_some_and(|f| matches!(column_named(f), Some(Column::Appid)))
                    {
                        let cols = first
                            .iter()
                            .map(|f| {
                                column_named(f).ok_or_else(|| {
                                    TransferError::BadHeader(format!(
                                        "unknown column {:?}",
                                        f.chars().take(40).collect::<String>()
                                    ))
                                })
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        if !cols.iter().any(|c| matches!(c, Column::RefreshToken)) {
                            return Err(TransferError::BadHeader("no refresh_token column".into()));
                        }
                        columns = Some(cols);
                        continue;
                    }
                    columns = Some(POSITIONAL.to_vec());
                }
                parse_csv_row(line, columns.as_deref().unwrap_or(&POSITIONAL))
            }
        };
        let row = match parsed {
            Ok(row) => row,
            Err(reason) => {
                report.errors.push(RowError {
                    line: line_no,
                    reason,
                });
                report.progress.failed += 1;
                continue;
            }
        };
        let d = digest(&row.refresh_token);
        let known = existing.get(&row.appid).map(|e| e.refresh_token == d);
        if known.is_some() && pending_appids.contains(&row.appid) {
            // What follows reads the store: let the earlier rows for this appid land first.
            flush(store, &mut pending, &mut report).await?;
            pending_appids.clear();
            progress(&report.progress);
        }
        let expected = match (known, existing.get_mut(&row.appid)) {
            (Some(true), Some(stored)) => {
                apply_unchanged_token(
                    store,
                    vault,
                    component,
                    line_no,
                    &row,
                    stored,
                    now,
                    &mut report,
                )
                .await?;
                continue;
            }
            (_, Some(stored)) => {
                // An earlier token of this authorizer (an old export) must not replace a newer
                // one; a token it never had (one WeChat re-issued) goes through the fence.
                if in_history(store, vault, component, &row.appid, &d).await? {
                    report.progress.unchanged += 1;
                    report.errors.push(RowError {
                        line: line_no,
                        reason: OLDER_TOKEN.to_owned(),
                    });
                    continue;
                }
                Expected::Generation(stored.generation)
            }
            (_, None) => Expected::Absent,
        };
        let refresh_token = vault.seal(
            SecretSlot::RefreshToken {
                component,
                appid: &row.appid,
            },
            row.refresh_token.as_bytes(),
        )?;
        let appsecret = row
            .appsecret
            .as_ref()
            .map(|s| {
                vault.seal(
                    SecretSlot::AuthorizerAppsecret {
                        component,
                        appid: &row.appid,
                    },
                    s.as_bytes(),
                )
            })
            .transpose()?;
        // Assume it lands, so a later line for the same appid fences on this one.
        let next = match expected {
            Expected::Absent => 1,
            Expected::Generation(g) => g.saturating_add(1),
        };
        let previous = existing.get(&row.appid);
        let stored = Existing {
            generation: next,
            refresh_token: d,
            appsecret: row
                .appsecret
                .as_deref()
                .map(|s| digest(s))
                .or_else(|| previous.and_then(|p| p.appsecret)),
            status: row.status.unwrap_or(AuthorizerStatus::Active),
            kind: row.kind.or_else(|| previous.and_then(|p| p.kind)),
        };
        existing.insert(row.appid.clone(), stored);
        pending_appids.insert(row.appid.clone());
        pending.push(Pending {
            line: line_no,
            created: expected == Expected::Absent,
            write: AuthorizationWrite {
                component: component.clone(),
                appid: row.appid,
                expected,
                kind: row.kind,
                status: row.status.unwrap_or(AuthorizerStatus::Active),
                refresh_token,
                appsecret,
                access_token: None,
                source: RefreshTokenSource::Import,
                at: now,
            },
        });
        if pending.len() >= batch_size {
            flush(store, &mut pending, &mut report).await?;
            pending_appids.clear();
            progress(&report.progress);
        }
    }
    flush(store, &mut pending, &mut report).await?;
    progress(&report.progress);
    Ok(report)
}

async fn flush(
    store: &dyn Store,
    pending: &mut Vec<Pending>,
    report: &mut ImportReport,
) -> Result<(), TransferError> {
    if pending.is_empty() {
        return Ok(());
    }
    let writes: Vec<AuthorizationWrite> = pending.iter().map(|p| p.write.clone()).collect();
    let outcomes = store.authorizers().save_authorizations(&writes).await?;
    for (p, outcome) in pending.drain(..).zip(outcomes) {
        match outcome {
            SaveOutcome::Saved { .. } if p.created => report.progress.created += 1,
            SaveOutcome::Saved { .. } => report.progress.updated += 1,
            SaveOutcome::Stale { .. } | SaveOutcome::Missing => {
                report.progress.failed += 1;
                report.errors.push(RowError {
                    line: p.line,
                    reason: format!(
                        "authorizer {} changed while importing; run the import again",
                        p.write.appid
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Imports from a file; the format comes from the extension, else is detected.
pub async fn import_file(
    store: &dyn Store,
    vault: &Vault,
    component: &ComponentAppid,
    path: &Path,
    options: &ImportOptions,
    progress: &mut (dyn FnMut(&ImportProgress) + Send),
) -> Result<ImportReport, TransferError> {
    let file = std::fs::File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let mut reader = std::io::BufReader::new(file);
    let mut options = options.clone();
    if options.format.is_none() {
        options.format = Format::from_path(path);
    }
    import(store, vault, component, &mut reader, &options, progress).await
}

// ---------------------------------------------------------------------------------------------
// Export

/// Export settings.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub format: Format,
    /// Replace an existing file.
    pub overwrite: bool,
}

/// What an export did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportReport {
    pub rows: u64,
}

fn csv_field(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) || s.trim() != s {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

#[derive(serde::Serialize)]
struct JsonOut<'a> {
    appid: &'a str,
    refresh_token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    appsecret: Option<&'a str>,
    status: &'a str,
}

/// Removes the temporary file unless disarmed.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// How long a temporary export file must have gone unwritten before another export to the same
/// file removes it as left behind by a killed export (a running export writes continuously).
const STALE_PARTIAL_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes `.<name>.<16 hex digits>.partial` files in `dir` (plaintext secrets left by a killed
/// export) not modified for [`STALE_PARTIAL_AGE`]. Only regular files: a symlink is never
/// followed. Best effort: a file that cannot be inspected or removed is left alone.
fn remove_stale_partials(dir: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(random) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|r| r.strip_suffix(".partial"))
        else {
            continue;
        };
        if random.len() != 16 || !random.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        // `DirEntry::metadata` does not follow symlinks.
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let stale = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= STALE_PARTIAL_AGE);
        if meta.file_type().is_file() && stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Makes a rename or link in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

/// Writes every authorizer of `component`, decrypted, in the import format, to a new file with
/// mode 0600. `progress` gets the number of rows written so far.
pub async fn export(
    store: &dyn Store,
    vault: &Vault,
    component: &ComponentAppid,
    path: &Path,
    options: &ExportOptions,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<ExportReport, TransferError> {
    if !options.overwrite && path.exists() {
        return Err(TransferError::Exists(path.to_owned()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    remove_stale_partials(&dir, &name);
    let tmp = dir.join(format!(".{name}.{:016x}.partial", rand::random::<u64>()));
    let file = create_private(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    let mut guard = TempGuard(Some(tmp.clone()));
    let mut out = std::io::BufWriter::new(file);
    let werr = || io_err(format!("writing {}", tmp.display()));

    if options.format == Format::Csv {
        out.write_all(b"appid,refresh_token,kind,appsecret,status\n")
            .map_err(werr())?;
    }
    let mut rows = 0u64;
    let mut after: Option<Appid> = None;
    let mut line = Zeroizing::new(String::new());
    loop {
        let page = store
            .authorizers()
            .list_authorizers(component, after.as_ref(), 1000)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.appid.clone());
        for rec in &page {
            let rt = vault.open_string(
                SecretSlot::RefreshToken {
                    component,
                    appid: &rec.appid,
                },
                &rec.refresh_token,
            )?;
            let secret = rec
                .appsecret
                .as_ref()
                .map(|s| {
                    vault.open_string(
                        SecretSlot::AuthorizerAppsecret {
                            component,
                            appid: &rec.appid,
                        },
                        s,
                    )
                })
                .transpose()?;
            line.zeroize();
            match options.format {
                Format::Csv => {
                    csv_field(&mut line, rec.appid.as_str());
                    line.push(',');
                    csv_field(&mut line, rt.expose_secret());
                    line.push(',');
                    line.push_str(rec.kind.map(AppKind::as_str).unwrap_or(""));
                    line.push(',');
                    if let Some(s) = &secret {
                        csv_field(&mut line, s.expose_secret());
                    }
                    line.push(',');
                    line.push_str(rec.status.as_str());
                }
                Format::JsonLines => {
                    let json = Zeroizing::new(
                        serde_json::to_string(&JsonOut {
                            appid: rec.appid.as_str(),
                            refresh_token: rt.expose_secret(),
                            kind: rec.kind.map(AppKind::as_str),
                            appsecret: secret.as_ref().map(|s| s.expose_secret()),
                            status: rec.status.as_str(),
                        })
                        .map_err(|e| TransferError::Io {
                            context: "encoding JSON".into(),
                            source: e.into(),
                        })?,
                    );
                    line.push_str(&json);
                }
            }
            line.push('\n');
            out.write_all(line.as_bytes()).map_err(werr())?;
            rows += 1;
        }
        progress(rows);
    }
    let file = out.into_inner().map_err(|e| TransferError::Io {
        context: format!("writing {}", tmp.display()),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(werr())?;
    drop(file);
    if options.overwrite {
        // The temporary file was created 0600 with O_EXCL, and rename keeps its mode: no chmod by
        // path afterwards (it could follow a symlink swapped in meanwhile).
        std::fs::rename(&tmp, path).map_err(io_err(format!("renaming to {}", path.display())))?;
    } else {
        // A hard link fails if the target exists: no check-then-create race.
        std::fs::hard_link(&tmp, path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                TransferError::Exists(path.to_owned())
            } else {
                TransferError::Io {
                    context: format!("creating {}", path.display()),
                    source: e,
                }
            }
        })?;
        let _ = std::fs::remove_file(&tmp);
    }
    guard.0 = None;
    sync_dir(&dir).map_err(io_err(format!("syncing directory {}", dir.display())))?;
    Ok(ExportReport { rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_split_handles_quotes_and_empty_fields() {
        let f = split_csv(r#"wx1,"a,b""c",,"x""#).unwrap();
        let f: Vec<&str> = f.iter().map(|s| s.as_str()).collect();
        assert_eq!(f, vec!["wx1", "a,b\"c", "", "x"]);
        assert!(split_csv(r#"wx1,"open"#).is_err());
        assert!(split_csv(r#"wx1,"a"b"#).is_err());
    }

    #[test]
    fn csv_field_round_trips_through_split() {
        for s in ["plain", "with,comma", "with\"quote", " padded "] {
            let mut out = String::new();
            csv_field(&mut out, s);
            assert_eq!(split_csv(&out).unwrap()[0].as_str(), s);
        }
    }

    #[test]
    fn row_errors_never_contain_the_secret() {
        let secret = "refreshtoken@@@TOPSECRET";
        for line in [
            format!(r#"{{"appid": "bad appid", "refresh_token": "{secret}"}}"#),
            format!(r#"{{"appid": "wx1", "refresh_token": "{secret}", "kind": "robot"}}"#),
            format!(r#"{{"appid": "wx1", "refresh_token": "{secret}", "extra": 1}}"#),
            format!(r#"{{"appid": "wx1", "refresh_token": 12345, "appsecret": "{secret}"}}"#),
            format!(r#"{{"appid": "wx1", "refresh_token": "{secret}""#),
        ] {
            let err = parse_json_row(&line).err().expect("rejected");
            assert!(!err.contains("TOPSECRET"), "{err}");
        }
        let err = parse_csv_row(&format!("wx1,{secret},robot"), &POSITIONAL)
            .err()
            .expect("rejected");
        assert!(!err.contains("TOPSECRET"), "{err}");
    }

    #[test]
    fn format_follows_the_extension() {
        assert_eq!(Format::from_path(Path::new("a.CSV")), Some(Format::Csv));
        assert_eq!(
            Format::from_path(Path::new("a.jsonl")),
            Some(Format::JsonLines)
        );
        assert_eq!(Format::from_path(Path::new("a.txt")), None);
    }
}
