-- wxtoken schema 1 (SQLite).
-- Times (*_at) are Unix epoch milliseconds, UTC. Every secret is a column triple sealed by the
-- vault: *_kid (master key id), *_nonce (12 bytes), *_ct (AES-256-GCM ciphertext and tag).
-- The database never holds a plaintext token, ticket, appsecret or event payload.
-- Keep the SQL in src/store/sql.rs valid for both this file and migrations/postgres.

CREATE TABLE components (
    component_appid    TEXT    NOT NULL PRIMARY KEY,
    ticket_kid         TEXT,
    ticket_nonce       BLOB,
    ticket_ct          BLOB,
    ticket_received_at INTEGER,
    created_at         INTEGER NOT NULL
) STRICT;

-- One row per credential (component token, authorizer, direct account), created with it, so the
-- generation counter exists before the first token. Every write to an authorizer's tokens updates
-- this row first: that row lock serializes writers on PostgreSQL, as the write lock does here.
CREATE TABLE access_tokens (
    component_appid TEXT    NOT NULL REFERENCES components (component_appid),
    kind            TEXT    NOT NULL CHECK (kind IN ('component', 'authorizer', 'direct')),
    appid           TEXT    NOT NULL,
    generation      INTEGER NOT NULL,
    token_kid       TEXT,
    token_nonce     BLOB,
    token_ct        BLOB,
    issued_at       INTEGER,
    expires_at      INTEGER,
    refresh_at      INTEGER,
    source          TEXT,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (component_appid, kind, appid)
) STRICT;

CREATE INDEX access_tokens_due ON access_tokens (refresh_at);

CREATE TABLE authorizers (
    component_appid   TEXT    NOT NULL REFERENCES components (component_appid),
    appid             TEXT    NOT NULL,
    kind              TEXT    CHECK (kind IN ('official_account', 'mini_program')),
    status            TEXT    NOT NULL CHECK (status IN ('active', 'needs_reauth', 'revoked')),
    status_reason     TEXT,
    status_changed_at INTEGER NOT NULL,
    rt_kid            TEXT    NOT NULL,
    rt_nonce          BLOB    NOT NULL,
    rt_ct             BLOB    NOT NULL,
    secret_kid        TEXT,
    secret_nonce      BLOB,
    secret_ct         BLOB,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    PRIMARY KEY (component_appid, appid)
) STRICT;

-- Every refresh token ever received, including those of writes that lost the fence (applied = 0).
-- Append-only: deletes are refused, and only the sealed columns may change (key rotation).
CREATE TABLE refresh_token_history (
    id              INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    component_appid TEXT    NOT NULL REFERENCES components (component_appid),
    appid           TEXT    NOT NULL,
    rt_kid          TEXT    NOT NULL,
    rt_nonce        BLOB    NOT NULL,
    rt_ct           BLOB    NOT NULL,
    source          TEXT    NOT NULL,
    generation      INTEGER NOT NULL,
    applied         INTEGER NOT NULL,
    received_at     INTEGER NOT NULL
) STRICT;

CREATE INDEX refresh_token_history_by_authorizer
    ON refresh_token_history (component_appid, appid, id);

CREATE TRIGGER refresh_token_history_no_delete
BEFORE DELETE ON refresh_token_history
BEGIN
    SELECT RAISE(ABORT, 'refresh_token_history is append-only');
END;

CREATE TRIGGER refresh_token_history_no_rewrite
BEFORE UPDATE OF id, component_appid, appid, source, generation, applied, received_at
ON refresh_token_history
BEGIN
    SELECT RAISE(ABORT, 'refresh_token_history is append-only');
END;

CREATE TABLE direct_accounts (
    component_appid TEXT    NOT NULL REFERENCES components (component_appid),
    appid           TEXT    NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('official_account', 'mini_program')),
    secret_kid      TEXT    NOT NULL,
    secret_nonce    BLOB    NOT NULL,
    secret_ct       BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (component_appid, appid)
) STRICT;

CREATE TABLE events (
    component_appid TEXT    NOT NULL REFERENCES components (component_appid),
    dedupe_key      TEXT    NOT NULL,
    info_type       TEXT    NOT NULL,
    appid           TEXT,
    payload_kid     TEXT    NOT NULL,
    payload_nonce   BLOB    NOT NULL,
    payload_ct      BLOB    NOT NULL,
    received_at     INTEGER NOT NULL,
    processed_at    INTEGER,
    PRIMARY KEY (component_appid, dedupe_key)
) STRICT;

CREATE INDEX events_unprocessed ON events (received_at) WHERE processed_at IS NULL;

CREATE TABLE clients (
    id           INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    name         TEXT    NOT NULL UNIQUE,
    key_hash     BLOB    NOT NULL UNIQUE,
    key_hint     TEXT    NOT NULL,
    grant_appids TEXT    NOT NULL,
    admin        INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER
) STRICT;

CREATE TABLE client_reads (
    client_id       INTEGER NOT NULL REFERENCES clients (id),
    component_appid TEXT    NOT NULL,
    appid           TEXT    NOT NULL,
    reads           INTEGER NOT NULL,
    last_read_at    INTEGER NOT NULL,
    PRIMARY KEY (client_id, component_appid, appid)
) STRICT;

-- A constant sealed under each master key, so a wrong key is refused at start.
CREATE TABLE key_checks (
    key_id     TEXT    NOT NULL PRIMARY KEY,
    nonce      BLOB    NOT NULL,
    ct         BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER
) STRICT;
