-- wxtoken schema 1 (PostgreSQL).
-- Times (*_at) are Unix epoch milliseconds, UTC (BIGINT, as in the SQLite schema, so both backends
-- share one body of SQL). Every secret is a column triple sealed by the vault: *_kid (master key
-- id), *_nonce (12 bytes), *_ct (AES-256-GCM ciphertext and tag). The database never holds a
-- plaintext token, ticket, appsecret or event payload.
-- Keep the SQL in src/store/sql.rs valid for both this file and migrations/sqlite.

CREATE TABLE components (
    component_appid    TEXT   NOT NULL PRIMARY KEY,
    ticket_kid         TEXT,
    ticket_nonce       BYTEA,
    ticket_ct          BYTEA,
    ticket_received_at BIGINT,
    created_at         BIGINT NOT NULL
);

-- One row per credential (component token, authorizer, direct account), created with it, so the
-- generation counter exists before the first token. Every write to an authorizer's tokens updates
-- this row first, and that row lock serializes concurrent writers (READ COMMITTED re-checks the
-- generation predicate after waiting), which is what makes the fence hold across replicas.
CREATE TABLE access_tokens (
    component_appid TEXT   NOT NULL REFERENCES components (component_appid),
    kind            TEXT   NOT NULL CHECK (kind IN ('component', 'authorizer', 'direct')),
    appid           TEXT   NOT NULL,
    generation      BIGINT NOT NULL,
    token_kid       TEXT,
    token_nonce     BYTEA,
    token_ct        BYTEA,
    issued_at       BIGINT,
    expires_at      BIGINT,
    refresh_at      BIGINT,
    source          TEXT,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (component_appid, kind, appid)
);

CREATE INDEX access_tokens_due ON access_tokens (refresh_at);

CREATE TABLE authorizers (
    component_appid   TEXT   NOT NULL REFERENCES components (component_appid),
    appid             TEXT   NOT NULL,
    kind              TEXT   CHECK (kind IN ('official_account', 'mini_program')),
    status            TEXT   NOT NULL CHECK (status IN ('active', 'needs_reauth', 'revoked')),
    status_reason     TEXT,
    status_changed_at BIGINT NOT NULL,
    rt_kid            TEXT   NOT NULL,
    rt_nonce          BYTEA  NOT NULL,
    rt_ct             BYTEA  NOT NULL,
    secret_kid        TEXT,
    secret_nonce      BYTEA,
    secret_ct         BYTEA,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    PRIMARY KEY (component_appid, appid)
);

-- Every refresh token ever received, including those of writes that lost the fence (applied =
-- false). Append-only: deletes and truncation are refused, and only the sealed columns may change
-- (key rotation).
CREATE TABLE refresh_token_history (
    id              BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    component_appid TEXT    NOT NULL REFERENCES components (component_appid),
    appid           TEXT    NOT NULL,
    rt_kid          TEXT    NOT NULL,
    rt_nonce        BYTEA   NOT NULL,
    rt_ct           BYTEA   NOT NULL,
    source          TEXT    NOT NULL,
    generation      BIGINT  NOT NULL,
    applied         BOOLEAN NOT NULL,
    received_at     BIGINT  NOT NULL
);

CREATE INDEX refresh_token_history_by_authorizer
    ON refresh_token_history (component_appid, appid, id);

CREATE FUNCTION refresh_token_history_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'refresh_token_history is append-only';
END;
$$;

CREATE TRIGGER refresh_token_history_no_delete
BEFORE DELETE ON refresh_token_history
FOR EACH ROW EXECUTE FUNCTION refresh_token_history_append_only();

CREATE TRIGGER refresh_token_history_no_truncate
BEFORE TRUNCATE ON refresh_token_history
FOR EACH STATEMENT EXECUTE FUNCTION refresh_token_history_append_only();

CREATE TRIGGER refresh_token_history_no_rewrite
BEFORE UPDATE OF id, component_appid, appid, source, generation, applied, received_at
ON refresh_token_history
FOR EACH ROW EXECUTE FUNCTION refresh_token_history_append_only();

CREATE TABLE direct_accounts (
    component_appid TEXT   NOT NULL REFERENCES components (component_appid),
    appid           TEXT   NOT NULL,
    kind            TEXT   NOT NULL CHECK (kind IN ('official_account', 'mini_program')),
    secret_kid      TEXT   NOT NULL,
    secret_nonce    BYTEA  NOT NULL,
    secret_ct       BYTEA  NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (component_appid, appid)
);

CREATE TABLE events (
    component_appid TEXT   NOT NULL REFERENCES components (component_appid),
    dedupe_key      TEXT   NOT NULL,
    info_type       TEXT   NOT NULL,
    appid           TEXT,
    payload_kid     TEXT   NOT NULL,
    payload_nonce   BYTEA  NOT NULL,
    payload_ct      BYTEA  NOT NULL,
    received_at     BIGINT NOT NULL,
    processed_at    BIGINT,
    PRIMARY KEY (component_appid, dedupe_key)
);

CREATE INDEX events_unprocessed ON events (received_at) WHERE processed_at IS NULL;

CREATE TABLE clients (
    id           BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         TEXT    NOT NULL UNIQUE,
    key_hash     BYTEA   NOT NULL UNIQUE,
    key_hint     TEXT    NOT NULL,
    grant_appids TEXT    NOT NULL,
    admin        BOOLEAN NOT NULL,
    created_at   BIGINT  NOT NULL,
    revoked_at   BIGINT
);

CREATE TABLE client_reads (
    client_id       BIGINT NOT NULL REFERENCES clients (id),
    component_appid TEXT   NOT NULL,
    appid           TEXT   NOT NULL,
    reads           BIGINT NOT NULL,
    last_read_at    BIGINT NOT NULL,
    PRIMARY KEY (client_id, component_appid, appid)
);

-- A constant sealed under each master key, so a wrong key is refused at start.
CREATE TABLE key_checks (
    key_id     TEXT   NOT NULL PRIMARY KEY,
    nonce      BYTEA  NOT NULL,
    ct         BYTEA  NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);
