-- wxtoken schema 9 (SQLite): a revoked client's name can be given to a new client (only live names
-- are unique), and a client's key can be rotated with a grace period during which the previous
-- key keeps working. SQLite cannot drop a UNIQUE constraint in place, so `clients` is rebuilt, and
-- `client_reads` with it: dropping a parent table that child rows reference fails with foreign keys
-- on, so the child is rebuilt against the new parent and both are renamed (the rename rewrites the
-- child's reference). Ids are kept, so read counts stay with their client.
CREATE TABLE clients_v9 (
    id                      INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    name                    TEXT    NOT NULL,
    key_hash                BLOB    NOT NULL UNIQUE,
    key_hint                TEXT    NOT NULL,
    grant_appids            TEXT    NOT NULL,
    admin                   INTEGER NOT NULL,
    created_at              INTEGER NOT NULL,
    revoked_at              INTEGER,
    previous_key_hash       BLOB    UNIQUE,
    previous_key_hint       TEXT,
    previous_key_expires_at INTEGER,
    rotated_at              INTEGER
) STRICT;

INSERT INTO clients_v9 (id, name, key_hash, key_hint, grant_appids, admin, created_at, revoked_at)
SELECT id, name, key_hash, key_hint, grant_appids, admin, created_at, revoked_at FROM clients;

CREATE TABLE client_reads_v9 (
    client_id       INTEGER NOT NULL REFERENCES clients_v9 (id),
    component_appid TEXT    NOT NULL,
    appid           TEXT    NOT NULL,
    reads           INTEGER NOT NULL,
    last_read_at    INTEGER NOT NULL,
    PRIMARY KEY (client_id, component_appid, appid)
) STRICT;

INSERT INTO client_reads_v9 (client_id, component_appid, appid, reads, last_read_at)
SELECT client_id, component_appid, appid, reads, last_read_at FROM client_reads;

DROP TABLE client_reads;
DROP TABLE clients;
ALTER TABLE clients_v9 RENAME TO clients;
ALTER TABLE client_reads_v9 RENAME TO client_reads;
CREATE UNIQUE INDEX clients_live_name ON clients (name) WHERE revoked_at IS NULL;
