-- wxtoken schema 6: what the guards against operators' and clients' mistakes keep, and the
-- authorizers' details.
-- rogue_refreshes: per credential, the refreshes WeChat showed wxtoken did not make (a token it
-- obtained minutes ago refused), for `authorizers show` and the admin API.
CREATE TABLE rogue_refreshes (
    component_appid TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    appid           TEXT    NOT NULL,
    first_at        BIGINT  NOT NULL,
    last_at         BIGINT  NOT NULL,
    times           BIGINT  NOT NULL,
    last_client     TEXT    NOT NULL,
    PRIMARY KEY (component_appid, kind, appid)
);

-- servers: each running `serve`, its heartbeat and the master key ids it holds (never a key), so
-- `keys rotate` can refuse to retire a key a live server still needs.
CREATE TABLE servers (
    id           TEXT   NOT NULL PRIMARY KEY,
    host         TEXT   NOT NULL,
    pid          BIGINT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    key_ids      TEXT   NOT NULL
);

-- store_changes: what the CLI and the admin API changed (an account, an authorizer, a client, the
-- keys), for running servers to apply within seconds. Rows are forgotten after a day.
CREATE TABLE store_changes (
    seq             BIGSERIAL PRIMARY KEY,
    at              BIGINT  NOT NULL,
    scope           TEXT    NOT NULL,
    component_appid TEXT,
    subject         TEXT
);

-- What api_get_authorizer_info says of each authorizer (kind is in `kind`): filled on
-- authorization and by reconciliation. details_at: when it was last asked (NULL: never).
ALTER TABLE authorizers ADD COLUMN nick_name TEXT;
ALTER TABLE authorizers ADD COLUMN principal_name TEXT;
ALTER TABLE authorizers ADD COLUMN service_type BIGINT;
ALTER TABLE authorizers ADD COLUMN details_at BIGINT;
