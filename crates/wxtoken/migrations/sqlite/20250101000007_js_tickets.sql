-- wxtoken schema 7 (SQLite): JS-SDK tickets (jsapi, wx_card) are credentials like tokens, one
-- access_tokens row each (generation, sealed ticket, issued/expires/refresh times, source
-- 'getticket'), keyed by the appid of the account they belong to. SQLite cannot change a CHECK
-- constraint in place, so the table is rebuilt with the two new kinds; rows are copied as they are.
CREATE TABLE access_tokens_v7 (
    component_appid TEXT    NOT NULL REFERENCES components (component_appid),
    kind            TEXT    NOT NULL
                    CHECK (kind IN ('component', 'authorizer', 'direct', 'jsapi', 'wx_card')),
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

INSERT INTO access_tokens_v7 (component_appid, kind, appid, generation, token_kid, token_nonce,
    token_ct, issued_at, expires_at, refresh_at, source, updated_at)
SELECT component_appid, kind, appid, generation, token_kid, token_nonce, token_ct, issued_at,
    expires_at, refresh_at, source, updated_at
FROM access_tokens;

DROP TABLE access_tokens;
ALTER TABLE access_tokens_v7 RENAME TO access_tokens;
CREATE INDEX access_tokens_due ON access_tokens (refresh_at);
