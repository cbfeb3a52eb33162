//! The vault: every secret is sealed here with AES-256-GCM before it reaches the store, and opened
//! here after it comes back. Also the master-key check at start, online key rotation, and API-key
//! generation and hashing.
//!
//! Depends on `model` and on the `store` trait (for the key check and rotation); nothing depends on
//! it from below, and the store never sees a key or a plaintext.
//!
//! Invariants:
//! - A sealed value is `Sealed { key_id, nonce, ciphertext }`: a fresh random 96-bit nonce per
//!   sealing, and associated data derived from its [`SecretSlot`] (field, component, account), so a
//!   value copied to another row or field fails to open instead of being served as someone else's.
//! - A keyring has one primary key (seals and opens) and optional older keys (open only). Key ids
//!   are derived from the key bytes, so configuration names keys only by their value.
//! - A wrong master key is refused by [`Vault::verify`] at start (a key-check value per key id is
//!   stored in the database), not discovered later as a failure to open one token.
//! - Key material and opened plaintexts are zeroized on drop (`Zeroizing`, `SecretString`, and the
//!   `zeroize` features of `aes`/`aes-gcm`); `Debug` never prints them.
//!
//! Master key format (`WXTOKEN_MASTER_KEY`, or the first key line of `security.master_key_file`):
//! 32 random bytes, written as base64 (standard or URL-safe alphabet, padding optional; 43 or 44
//! characters) or as 64 hex digits. `wxtoken keys generate` (or `openssl rand -base64 32`) makes one.
//! Older, decrypt-only keys (during a rotation) go in `WXTOKEN_MASTER_KEY_OLD` (comma-separated) or
//! on the following lines of the key file. Lines starting with `#` are comments.
//!
//! Nonces are random, so one key should seal well under 2^32 values: at 100,000 authorizers
//! refreshed hourly that is about 2^30 a year. Rotate the master key at least yearly.

use std::fmt;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::model::{ApiKeyHash, KeyCheck, KeyId, NONCE_LEN, Sealed, SecretSlot, Timestamp};
use crate::store::{Reseal, SealedColumn, Store, StoreError};

/// The primary master key's environment variable.
pub const MASTER_KEY_ENV: &str = "WXTOKEN_MASTER_KEY";
/// Older, decrypt-only master keys (comma-separated), kept only while a rotation is under way.
pub const MASTER_KEY_OLD_ENV: &str = "WXTOKEN_MASTER_KEY_OLD";
/// Every API key starts with this, so a leaked one is recognisable (secret scanners, logs).
pub const API_KEY_PREFIX: &str = "wxt_";

const KEY_LEN: usize = 32;
const KEY_CHECK_PLAINTEXT: &[u8] = b"wxtoken key check v1";
const AAD_PREFIX: &[u8] = b"wxtoken-aad-v1";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("malformed master key: {0} (expected base64 of 32 random bytes, or 64 hex digits)")]
    MalformedKey(&'static str),
    #[error("no master key: set {MASTER_KEY_ENV} or security.master_key_file")]
    NoKey,
    #[error("the master key file {path} holds no key (one base64 or hex key per line)")]
    EmptyKeyFile { path: PathBuf },
    #[error("cannot read the master key file {path}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "wrong master key: the configured key id(s) {configured} are not the key(s) this database was \
         sealed with ({known}); check {MASTER_KEY_ENV}"
    )]
    WrongKey { configured: String, known: String },
    #[error(
        "master key {key_id} failed its key check: the key is wrong or the database was tampered with"
    )]
    KeyCheckFailed { key_id: KeyId },
    #[error(
        "the database still holds secrets sealed under master key {key_id}, which is not configured; \
         keep it in {MASTER_KEY_OLD_ENV} (or the key file) until `wxtoken keys rotate` has finished"
    )]
    MissingKey { key_id: KeyId },
    #[error(
        "master key {key_id} was retired by `wxtoken keys rotate` and must not seal new values; \
         configure the current key as primary (this one may stay in {MASTER_KEY_OLD_ENV}), or, to \
         move away from the current key, generate a new key (`wxtoken keys generate`), make it the \
         primary with the others as old keys, and run `wxtoken keys rotate` onto it"
    )]
    RetiredPrimary { key_id: KeyId },
    #[error("a sealed value failed to open: wrong key, tampered, or moved from another row")]
    Open,
    #[error("a sealed value is not valid UTF-8")]
    NotUtf8,
    #[error("sealing failed")]
    Seal,
    #[error(
        "rotation made no progress: {remaining} values keep changing under an old key; is a server \
         still sealing with the old primary key?"
    )]
    RotationStalled { remaining: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A 256-bit master key. `Debug` shows only its id.
#[derive(Clone)]
pub struct MasterKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
    id: KeyId,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    fn from_bytes(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let mut h = Sha256::new();
        h.update(b"wxtoken master key id v1\0");
        h.update(bytes.as_slice());
        let digest = h.finalize();
        let id = hex::encode(&digest[..8]);
        Self {
            bytes,
            id: KeyId::from_digest_hex(id),
        }
    }

    /// A new random key.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rand::rng().fill_bytes(bytes.as_mut_slice());
        Self::from_bytes(bytes)
    }

    /// Parses base64 (either alphabet, padding optional) or 64 hex digits of 32 bytes.
    pub fn parse(text: &str) -> Result<Self, VaultError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(VaultError::MalformedKey("empty"));
        }
        let decoded: Zeroizing<Vec<u8>> =
            if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                Zeroizing::new(hex::decode(text).map_err(|_| VaultError::MalformedKey("bad hex"))?)
            } else {
                use base64::engine::general_purpose::{
                    STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
                };
                let engines = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD];
                Zeroizing::new(
                    engines
                        .iter()
                        .find_map(|e| e.decode(text).ok())
                        .ok_or(VaultError::MalformedKey("neither base64 nor hex"))?,
                )
            };
        if decoded.len() != KEY_LEN {
            return Err(VaultError::MalformedKey("not 32 bytes long"));
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(&decoded);
        Ok(Self::from_bytes(bytes))
    }

    /// The primary key from `WXTOKEN_MASTER_KEY` if set, else the first key line of `file`.
    pub fn from_env_or_file(file: Option<&Path>) -> Result<Self, VaultError> {
        if let Some(v) = env_value(MASTER_KEY_ENV) {
            return Self::parse(&v);
        }
        match file {
            Some(path) => {
                let keys = read_key_file(path)?;
                keys.into_iter()
                    .next()
                    .ok_or_else(|| VaultError::EmptyKeyFile {
                        path: path.to_owned(),
                    })
            }
            None => Err(VaultError::NoKey),
        }
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The key in standard base64, to show once (e.g. by `wxtoken keys generate`).
    pub fn to_base64(&self) -> SecretString {
        SecretString::from(base64::engine::general_purpose::STANDARD.encode(self.bytes.as_slice()))
    }
}

fn env_value(var: &str) -> Option<Zeroizing<String>> {
    std::env::var(var)
        .ok()
        .map(Zeroizing::new)
        .filter(|v| !v.trim().is_empty())
}

fn read_key_file(path: &Path) -> Result<Vec<MasterKey>, VaultError> {
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| VaultError::KeyFile {
                path: path.to_owned(),
                source,
            })?,
        );
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(MasterKey::parse)
        .collect()
}

struct KeyEntry {
    id: KeyId,
    cipher: Aes256Gcm,
}

impl KeyEntry {
    fn new(key: &MasterKey) -> Self {
        Self {
            id: key.id.clone(),
            cipher: Aes256Gcm::new(key.bytes.as_slice().into()),
        }
    }
}

/// A keyring: one primary (sealing) key and older decrypt-only keys.
pub struct Vault {
    primary: KeyEntry,
    older: Vec<KeyEntry>,
    /// A key id some sealed value needed that this keyring lacks (a rotation onto a key this
    /// server was not given): the server is not ready while it is set.
    missing: parking_lot::Mutex<Option<KeyId>>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("primary", &self.primary.id)
            .field(
                "older",
                &self.older.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Vault {
    /// A keyring from a primary key and older decrypt-only keys (duplicates are ignored).
    pub fn new(primary: &MasterKey, older: &[MasterKey]) -> Self {
        let mut entries: Vec<KeyEntry> = Vec::new();
        for k in older {
            if k.id != primary.id && !entries.iter().any(|e| e.id == k.id) {
                entries.push(KeyEntry::new(k));
            }
        }
        Self {
            primary: KeyEntry::new(primary),
            older: entries,
            missing: parking_lot::Mutex::new(None),
        }
    }

    /// A key id a sealed value needed and this keyring lacks, if one was met since the last
    /// [`Vault::note_keys_complete`].
    pub fn missing_key(&self) -> Option<KeyId> {
        self.missing.lock().clone()
    }

    /// Records that a sealed value needs `key_id`, which this keyring lacks.
    pub fn note_missing(&self, key_id: &KeyId) {
        if !self.holds(key_id) {
            *self.missing.lock() = Some(key_id.clone());
        }
    }

    /// The store holds nothing under a key this keyring lacks (checked by the caller).
    pub fn note_keys_complete(&self) {
        *self.missing.lock() = None;
    }

    /// Whether this keyring holds `key_id`.
    pub fn holds(&self, key_id: &KeyId) -> bool {
        self.entry(key_id).is_some()
    }

    /// The keyring from the environment or key file: the primary as [`MasterKey::from_env_or_file`];
    /// older keys from `WXTOKEN_MASTER_KEY_OLD` (comma-separated) and the key file's further lines.
    pub fn from_env_or_file(file: Option<&Path>) -> Result<Self, VaultError> {
        let from_file = match file {
            Some(path) => read_key_file(path)?,
            None => Vec::new(),
        };
        let (primary, mut older) = match env_value(MASTER_KEY_ENV) {
            Some(v) => (MasterKey::parse(&v)?, from_file),
            None => {
                let mut keys = from_file.into_iter();
                let primary = keys.next().ok_or_else(|| match file {
                    Some(path) => VaultError::EmptyKeyFile {
                        path: path.to_owned(),
                    },
                    None => VaultError::NoKey,
                })?;
                (primary, keys.collect())
            }
        };
        if let Some(v) = env_value(MASTER_KEY_OLD_ENV) {
            for part in v.split(',').filter(|p| !p.trim().is_empty()) {
                older.push(MasterKey::parse(part)?);
            }
        }
        Ok(Self::new(&primary, &older))
    }

    pub fn primary_id(&self) -> &KeyId {
        &self.primary.id
    }

    /// Every key id in the keyring, primary first.
    pub fn key_ids(&self) -> Vec<KeyId> {
        std::iter::once(&self.primary)
            .chain(&self.older)
            .map(|e| e.id.clone())
            .collect()
    }

    fn entry(&self, id: &KeyId) -> Option<&KeyEntry> {
        std::iter::once(&self.primary)
            .chain(&self.older)
            .find(|e| &e.id == id)
    }

    /// Seals `plaintext` under the primary key, bound to `slot`.
    pub fn seal(&self, slot: SecretSlot<'_>, plaintext: &[u8]) -> Result<Sealed, VaultError> {
        seal_with(&self.primary, slot, plaintext)
    }

    /// Opens a sealed value with whichever configured key sealed it.
    pub fn open(
        &self,
        slot: SecretSlot<'_>,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let entry = self.entry(&sealed.key_id).ok_or_else(|| {
            self.note_missing(&sealed.key_id);
            VaultError::MissingKey {
                key_id: sealed.key_id.clone(),
            }
        })?;
        let aad = aad(slot);
        entry
            .cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Open)
    }

    /// Opens a sealed UTF-8 secret (a token, a ticket, an appsecret).
    pub fn open_string(
        &self,
        slot: SecretSlot<'_>,
        sealed: &Sealed,
    ) -> Result<SecretString, VaultError> {
        // The decrypted buffer stays in its `Zeroizing` (wiped on drop, whatever happens); the
        // secret gets an exact-size copy, so no plaintext buffer is freed unwiped.
        let bytes = self.open(slot, sealed)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| VaultError::NotUtf8)?;
        Ok(SecretString::from(text))
    }

    /// Opens a sealed token into the form the cache holds, decrypting in place in its one
    /// allocation (the cold start opens a million: no second buffer per token).
    pub fn open_token(
        &self,
        slot: SecretSlot<'_>,
        sealed: &Sealed,
    ) -> Result<TokenText, VaultError> {
        let entry = self.entry(&sealed.key_id).ok_or_else(|| {
            self.note_missing(&sealed.key_id);
            VaultError::MissingKey {
                key_id: sealed.key_id.clone(),
            }
        })?;
        let split = sealed
            .ciphertext
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(VaultError::Open)?;
        let (ciphertext, tag) = sealed.ciphertext.split_at(split);
        // Wiped on drop, whatever happens below.
        let mut text = TokenText(thin_vec::ThinVec::from(ciphertext));
        entry
            .cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&sealed.nonce),
                &aad(slot),
                text.0.as_mut_slice(),
                aes_gcm::Tag::from_slice(tag),
            )
            .map_err(|_| VaultError::Open)?;
        std::str::from_utf8(&text.0).map_err(|_| VaultError::NotUtf8)?;
        Ok(text)
    }

    /// Opens `sealed` and seals it again under the primary key, with the same slot.
    pub fn reseal(&self, slot: SecretSlot<'_>, sealed: &Sealed) -> Result<Sealed, VaultError> {
        let plain = self.open(slot, sealed)?;
        self.seal(slot, &plain)
    }

    /// Checks the keyring against the key-check values stored in the database, and records a check
    /// for any configured key the database has not seen. Call it right after `store::open`.
    ///
    /// Refuses: a key whose check fails; a keyring none of whose keys the database knows (when the
    /// database knows any: a wrong `WXTOKEN_MASTER_KEY`); a primary key that a finished rotation
    /// retired (it would seal values under a key the operator has been told may be removed); and a
    /// database key that still seals values (not retired) but is missing from the keyring.
    pub async fn verify(&self, store: &dyn Store) -> Result<(), VaultError> {
        let checks = store.keys().key_checks().await?;
        for check in &checks {
            if let Some(entry) = self.entry(&check.key_id) {
                let slot = SecretSlot::KeyCheck {
                    key_id: &check.key_id,
                };
                let ok = open_with(entry, slot, &check.sealed)
                    .map(|p| p.as_slice() == KEY_CHECK_PLAINTEXT)
                    .unwrap_or(false);
                if !ok {
                    return Err(VaultError::KeyCheckFailed {
                        key_id: check.key_id.clone(),
                    });
                }
            }
        }
        let known_ids: Vec<&KeyId> = checks.iter().map(|c| &c.key_id).collect();
        let mine = self.key_ids();
        if !checks.is_empty() && !mine.iter().any(|id| known_ids.contains(&id)) {
            return Err(VaultError::WrongKey {
                configured: join_ids(mine.iter()),
                known: join_ids(known_ids.into_iter()),
            });
        }
        if checks
            .iter()
            .any(|c| c.key_id == self.primary.id && c.retired_at.is_some())
        {
            return Err(VaultError::RetiredPrimary {
                key_id: self.primary.id.clone(),
            });
        }
        if let Some(missing) = checks
            .iter()
            .find(|c| c.retired_at.is_none() && self.entry(&c.key_id).is_none())
        {
            return Err(VaultError::MissingKey {
                key_id: missing.key_id.clone(),
            });
        }
        let now = Timestamp::now();
        for entry in std::iter::once(&self.primary).chain(&self.older) {
            if !checks.iter().any(|c| c.key_id == entry.id) {
                let sealed = seal_with(
                    entry,
                    SecretSlot::KeyCheck { key_id: &entry.id },
                    KEY_CHECK_PLAINTEXT,
                )?;
                store
                    .keys()
                    .add_key_check(&KeyCheck {
                        key_id: entry.id.clone(),
                        sealed,
                        created_at: now,
                        retired_at: None,
                    })
                    .await?;
            }
        }
        Ok(())
    }
}

fn join_ids<'a>(ids: impl Iterator<Item = &'a KeyId>) -> String {
    ids.map(KeyId::as_str).collect::<Vec<_>>().join(", ")
}

fn seal_with(
    entry: &KeyEntry,
    slot: SecretSlot<'_>,
    plaintext: &[u8],
) -> Result<Sealed, VaultError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let aad = aad(slot);
    let ciphertext = entry
        .cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| VaultError::Seal)?;
    Ok(Sealed {
        key_id: entry.id.clone(),
        nonce,
        ciphertext,
    })
}

fn open_with(
    entry: &KeyEntry,
    slot: SecretSlot<'_>,
    sealed: &Sealed,
) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    let aad = aad(slot);
    entry
        .cipher
        .decrypt(
            Nonce::from_slice(&sealed.nonce),
            Payload {
                msg: &sealed.ciphertext,
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| VaultError::Open)
}

/// The associated data of a slot: a version prefix, a field tag and length-prefixed parts, so no
/// two different slots encode alike.
fn aad(slot: SecretSlot<'_>) -> Vec<u8> {
    let (tag, parts): (u8, [&str; 3]) = match slot {
        SecretSlot::Ticket { component } => (1, [component.as_str(), "", ""]),
        SecretSlot::AccessToken { credential } => (
            2,
            [
                credential.component.as_str(),
                credential.kind.as_str(),
                credential.appid.as_str(),
            ],
        ),
        SecretSlot::RefreshToken { component, appid } => {
            (3, [component.as_str(), appid.as_str(), ""])
        }
        SecretSlot::AuthorizerAppsecret { component, appid } => {
            (4, [component.as_str(), appid.as_str(), ""])
        }
        SecretSlot::DirectAppsecret { component, appid } => {
            (5, [component.as_str(), appid.as_str(), ""])
        }
        SecretSlot::EventPayload {
            component,
            dedupe_key,
        } => (6, [component.as_str(), dedupe_key, ""]),
        SecretSlot::KeyCheck { key_id } => (7, [key_id.as_str(), "", ""]),
    };
    let mut out =
        Vec::with_capacity(AAD_PREFIX.len() + 1 + parts.iter().map(|p| 4 + p.len()).sum::<usize>());
    out.extend_from_slice(AAD_PREFIX);
    out.push(tag);
    for p in parts {
        out.extend_from_slice(&u32::try_from(p.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(p.as_bytes());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Rotation

/// Progress of [`rotate`], reported after each committed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationProgress {
    pub column: SealedColumn,
    /// Values re-sealed so far, all columns.
    pub resealed: u64,
}

/// What [`rotate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationReport {
    pub resealed: u64,
    /// Keys no value is sealed under any more; marked retired, so they may be removed from the
    /// configuration.
    pub retired: Vec<KeyId>,
    /// Values per key id after the rotation (normally all under the primary).
    pub remaining: Vec<(KeyId, u64)>,
}

/// Re-seals every secret under the vault's primary key, online.
///
/// Procedure (docs/OPERATIONS.md): give every server the keyring *new primary + old* first, so
/// they can open both and seal only with the new key; then run this; then drop the old key.
///
/// Works in batches of `batch_size`, each batch one transaction of conditional updates (a value
/// is replaced only if it still has the nonce that was read), so a server writing concurrently is
/// never overwritten: its newer value simply is not touched (it is already under the new key, or is
/// picked up by the next batch). Idempotent and resumable: values already under the primary key are
/// never selected again, so a killed rotation is finished by running it again. When no value is
/// left under an older key, that key is marked retired.
pub async fn rotate(
    store: &dyn Store,
    vault: &Vault,
    batch_size: u32,
    progress: &mut (dyn FnMut(RotationProgress) + Send),
) -> Result<RotationReport, VaultError> {
    vault.verify(store).await?;
    let primary = vault.primary_id().clone();
    let batch_size = batch_size.max(1);
    let mut resealed = 0u64;
    for column in SealedColumn::ALL {
        let mut stalls = 0;
        loop {
            let cells = store
                .keys()
                .sealed_cells(column, &primary, batch_size)
                .await?;
            if cells.is_empty() {
                break;
            }
            let mut updates = Vec::with_capacity(cells.len());
            for cell in cells {
                let new = vault.reseal(cell.key.slot(), &cell.sealed)?;
                updates.push(Reseal {
                    key: cell.key,
                    old_nonce: cell.sealed.nonce,
                    new,
                });
            }
            let n = store.keys().reseal(&updates).await?;
            if n == 0 {
                // Every value changed between read and write; someone keeps sealing them under an
                // old key. A few retries cover a burst; more means a misconfigured server.
                stalls += 1;
                if stalls >= 3 {
                    return Err(VaultError::RotationStalled {
                        remaining: updates.len(),
                    });
                }
            } else {
                stalls = 0;
            }
            resealed += n;
            progress(RotationProgress { column, resealed });
        }
    }
    // `retire_key` is one conditional statement: it retires a key only if no sealed value uses it
    // at that moment, so a value written under the key since the last batch keeps it unretired.
    let mut retired = Vec::new();
    let now = Timestamp::now();
    for check in store.keys().key_checks().await? {
        if check.key_id != primary
            && check.retired_at.is_none()
            && store.keys().retire_key(&check.key_id, now).await?
        {
            retired.push(check.key_id);
        }
    }
    let remaining = store.keys().count_sealed_by_key().await?;
    Ok(RotationReport {
        resealed,
        retired,
        remaining,
    })
}

// ---------------------------------------------------------------------------------------------
// API keys

/// A freshly generated API key: the plaintext is shown once and never stored.
pub struct NewApiKey {
    pub key: SecretString,
    pub hash: ApiKeyHash,
    /// The first characters, to recognise the key in listings.
    pub hint: String,
}

impl fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewApiKey")
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

/// `wxt_` + 32 random bytes in unpadded base64url (47 characters).
pub fn generate_api_key() -> NewApiKey {
    let mut raw = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(raw.as_mut_slice());
    let mut key = Zeroizing::new(String::with_capacity(48));
    key.push_str(API_KEY_PREFIX);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(raw.as_slice(), &mut key);
    let hint: String = key.chars().take(API_KEY_PREFIX.len() + 4).collect();
    NewApiKey {
        hash: hash_api_key(&key),
        key: SecretString::from(key.as_str()),
        hint,
    }
}

/// SHA-256 of the key. A fast hash is right here: API keys carry 256 bits of randomness, so there
/// is nothing for a slow KDF (argon2, bcrypt) to protect against, unlike human passwords, and every
/// token read can verify its key with one hash and one indexed lookup.
pub fn hash_api_key(key: &str) -> ApiKeyHash {
    ApiKeyHash(Sha256::digest(key.as_bytes()).into())
}

/// AES-GCM's tag, at the end of every sealed value.
const TAG_LEN: usize = 16;

/// A token's text as the cache holds it: behind one thin pointer (the length lives in the
/// allocation, `thin-vec`), zeroed on drop like `secrecy`'s secrets. `SecretString` is a fat
/// pointer; at a million tokens its 8 extra bytes put every `CachedToken` in the allocator's next
/// size class (80 bytes instead of 64).
/// `Vault::open_token` decrypts straight into it: no plaintext copy is made or freed on the way.
pub struct TokenText(thin_vec::ThinVec<u8>);

impl TokenText {
    /// The token itself: only for handing it out or sending it upstream, as with `secrecy`.
    pub fn expose_secret(&self) -> &str {
        // Always valid: built from a `str` and never changed (checking costs ~20 ns on a
        // 140-byte token and keeps this crate free of `unsafe`).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl From<&str> for TokenText {
    fn from(text: &str) -> Self {
        Self(thin_vec::ThinVec::from(text.as_bytes()))
    }
}

impl From<String> for TokenText {
    fn from(text: String) -> Self {
        Self::from(SecretString::from(text))
    }
}

impl From<SecretString> for TokenText {
    fn from(secret: SecretString) -> Self {
        Self::from(secret.expose_secret())
    }
}

impl Drop for TokenText {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.0.as_mut_slice().zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Appid, ComponentAppid, Credential};
    use secrecy::ExposeSecret;

    fn ids() -> (ComponentAppid, Appid, Appid) {
        (
            ComponentAppid::parse("wxcomponent0001").unwrap(),
            Appid::parse("wxauthorizer0001").unwrap(),
            Appid::parse("wxauthorizer0002").unwrap(),
        )
    }

    #[test]
    fn a_token_opened_in_place_is_the_sealed_text_and_a_tampered_one_is_refused() {
        let (c, a, b) = ids();
        let vault = Vault::new(&MasterKey::generate(), &[]);
        let credential = crate::model::Credential::authorizer(&c, &a);
        let slot = SecretSlot::AccessToken {
            credential: &credential,
        };
        let text = "93_x".repeat(35);
        let sealed = vault.seal(slot, text.as_bytes()).unwrap();
        assert_eq!(
            vault.open_token(slot, &sealed).unwrap().expose_secret(),
            text
        );
        let mut tampered = sealed.clone();
        tampered.ciphertext[3] ^= 1;
        assert!(matches!(
            vault.open_token(slot, &tampered),
            Err(VaultError::Open)
        ));
        let other = crate::model::Credential::authorizer(&c, &b);
        let other_slot = SecretSlot::AccessToken { credential: &other };
        assert!(matches!(
            vault.open_token(other_slot, &sealed),
            Err(VaultError::Open)
        ));
        let mut short = sealed;
        short.ciphertext.truncate(5);
        assert!(vault.open_token(slot, &short).is_err());
    }

    #[test]
    fn sealed_value_opens_in_its_own_slot_only() {
        let (c, a, b) = ids();
        let vault = Vault::new(&MasterKey::generate(), &[]);
        let slot = SecretSlot::RefreshToken {
            component: &c,
            appid: &a,
        };
        let sealed = vault.seal(slot, b"refreshtoken@@@abc").unwrap();
        assert_eq!(
            vault.open(slot, &sealed).unwrap().as_slice(),
            b"refreshtoken@@@abc"
        );
        let other_row = SecretSlot::RefreshToken {
            component: &c,
            appid: &b,
        };
        assert!(matches!(
            vault.open(other_row, &sealed),
            Err(VaultError::Open)
        ));
        let other_field = SecretSlot::AuthorizerAppsecret {
            component: &c,
            appid: &a,
        };
        assert!(matches!(
            vault.open(other_field, &sealed),
            Err(VaultError::Open)
        ));
        let cred = Credential::authorizer(&c, &a);
        let token_slot = SecretSlot::AccessToken { credential: &cred };
        assert!(matches!(
            vault.open(token_slot, &sealed),
            Err(VaultError::Open)
        ));
    }

    #[test]
    fn open_string_returns_the_text_and_refuses_invalid_utf8() {
        let (c, a, _) = ids();
        let vault = Vault::new(&MasterKey::generate(), &[]);
        let slot = SecretSlot::RefreshToken {
            component: &c,
            appid: &a,
        };
        let sealed = vault.seal(slot, "refreshtoken@@@令牌".as_bytes()).unwrap();
        assert_eq!(
            vault.open_string(slot, &sealed).unwrap().expose_secret(),
            "refreshtoken@@@令牌"
        );
        let bad = vault.seal(slot, &[0x72, 0x74, 0xff, 0xfe]).unwrap();
        assert!(matches!(
            vault.open_string(slot, &bad),
            Err(VaultError::NotUtf8)
        ));
    }

    #[test]
    fn ciphertext_does_not_contain_the_plaintext_and_nonces_differ() {
        let (c, _, _) = ids();
        let vault = Vault::new(&MasterKey::generate(), &[]);
        let slot = SecretSlot::Ticket { component: &c };
        let a = vault.seal(slot, b"ticket@@@plaintext").unwrap();
        let b = vault.seal(slot, b"ticket@@@plaintext").unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert!(!a.ciphertext.windows(6).any(|w| w == b"ticket"));
    }

    #[test]
    fn older_key_opens_and_primary_reseals() {
        let (c, a, _) = ids();
        let old = MasterKey::generate();
        let new = MasterKey::generate();
        let slot = SecretSlot::DirectAppsecret {
            component: &c,
            appid: &a,
        };
        let sealed = Vault::new(&old, &[]).seal(slot, b"secret").unwrap();
        let both = Vault::new(&new, std::slice::from_ref(&old));
        let resealed = both.reseal(slot, &sealed).unwrap();
        assert_eq!(&resealed.key_id, new.id());
        let only_new = Vault::new(&new, &[]);
        assert_eq!(
            only_new.open(slot, &resealed).unwrap().as_slice(),
            b"secret"
        );
        assert!(matches!(
            only_new.open(slot, &sealed),
            Err(VaultError::MissingKey { .. })
        ));
    }

    #[test]
    fn master_key_parses_base64_and_hex_with_the_same_id() {
        let key = MasterKey::generate();
        let b64 = key.to_base64();
        let parsed = MasterKey::parse(b64.expose_secret()).unwrap();
        assert_eq!(parsed.id(), key.id());
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.expose_secret())
            .unwrap();
        let hexed = MasterKey::parse(&hex::encode(&raw)).unwrap();
        assert_eq!(hexed.id(), key.id());
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(MasterKey::parse(&url).unwrap().id(), key.id());
        assert_eq!(key.id().as_str().len(), 16);
    }

    #[test]
    fn master_key_of_wrong_length_or_alphabet_is_refused() {
        assert!(MasterKey::parse("").is_err());
        assert!(MasterKey::parse("c2hvcnQ=").is_err());
        assert!(MasterKey::parse(&"zz".repeat(32)).is_err());
        let err = MasterKey::parse("not a key at all!").unwrap_err();
        assert!(err.to_string().contains("base64"), "{err}");
    }

    #[test]
    fn master_key_debug_and_errors_never_show_the_key() {
        let key = MasterKey::generate();
        let b64 = key.to_base64();
        let shown = format!("{key:?} {:?}", Vault::new(&key, &[]));
        assert!(!shown.contains(b64.expose_secret()));
        assert!(shown.contains(key.id().as_str()));
    }

    #[test]
    fn key_file_holds_primary_then_older_keys() {
        let a = MasterKey::generate();
        let b = MasterKey::generate();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        std::fs::write(
            &path,
            format!(
                "# wxtoken master keys\n{}\n\n{}\n",
                a.to_base64().expose_secret(),
                b.to_base64().expose_secret()
            ),
        )
        .unwrap();
        let keys = read_key_file(&path).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].id(), a.id());
        assert_eq!(keys[1].id(), b.id());
    }

    #[test]
    fn api_keys_are_prefixed_random_and_hashed() {
        let k1 = generate_api_key();
        let k2 = generate_api_key();
        let s1 = k1.key.expose_secret();
        assert!(s1.starts_with(API_KEY_PREFIX));
        assert_eq!(s1.len(), 4 + 43);
        assert_ne!(s1, k2.key.expose_secret());
        assert!(hash_api_key(s1).ct_eq(&k1.hash));
        assert!(!k2.hash.ct_eq(&k1.hash));
        assert!(s1.starts_with(&k1.hint));
        assert!(!format!("{k1:?}").contains(s1));
    }

    #[test]
    fn api_key_hash_matches_sha256_known_answer() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            hex::encode(hash_api_key("abc").0),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn aes_gcm_matches_a_known_answer_vector() {
        // Test Case 14 of McGrew & Viega, "The Galois/Counter Mode of Operation": all-zero key
        // and IV, empty AAD, 16 zero bytes of plaintext; ciphertext then tag.
        let cipher = Aes256Gcm::new(&[0u8; 32].into());
        let ct = cipher
            .encrypt(Nonce::from_slice(&[0u8; 12]), [0u8; 16].as_slice())
            .unwrap();
        assert_eq!(
            hex::encode(ct),
            "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"
        );
    }
}
