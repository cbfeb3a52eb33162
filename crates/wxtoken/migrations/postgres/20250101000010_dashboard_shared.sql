-- wxtoken schema 10 (PostgreSQL): what the operator dashboard shares between replicas.
--
-- ui_sessions: signed-in dashboard sessions and one-time sign-in links, by the SHA-256 of their
-- id (the id itself is only in the browser's cookie or the link). key_hash is the admin key's
-- hash, re-checked against the live keys on every request. Expired rows are pruned.
CREATE TABLE ui_sessions (
    digest       BYTEA   NOT NULL PRIMARY KEY,
    kind         TEXT    NOT NULL CHECK (kind IN ('session', 'once')),
    key_hash     BYTEA   NOT NULL,
    client_name  TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    last_seen_at BIGINT  NOT NULL
);

-- refresh_minutes: refreshes per wall-clock minute (epoch minutes) and server, ok and failed,
-- written once a minute by every server, so the overview's chart covers every replica and
-- survives a restart. Rows older than a day are pruned.
CREATE TABLE refresh_minutes (
    minute    BIGINT  NOT NULL,
    server_id TEXT    NOT NULL,
    refreshed BIGINT  NOT NULL,
    failed    BIGINT  NOT NULL,
    PRIMARY KEY (minute, server_id)
);

-- The dashboard's and the CLI's counts of a component's authorizers by status and kind, from an
-- index instead of a scan of every row and its sealed secrets.
CREATE INDEX authorizers_by_status_kind ON authorizers (component_appid, status, kind);
