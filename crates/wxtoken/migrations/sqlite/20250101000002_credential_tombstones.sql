-- wxtoken schema 2 (SQLite): the generation a removed credential had, so a credential added again under the
-- same key continues after it instead of restarting at 0, and a refresh computed before the removal
-- (fenced on that generation) can never land on the new one. Rows are never deleted.
CREATE TABLE credential_tombstones (
    component_appid TEXT   NOT NULL,
    kind            TEXT   NOT NULL,
    appid           TEXT   NOT NULL,
    generation      BIGINT NOT NULL,
    PRIMARY KEY (component_appid, kind, appid)
);
