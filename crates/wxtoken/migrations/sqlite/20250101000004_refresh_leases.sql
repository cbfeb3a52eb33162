-- wxtoken schema 4 (SQLite): the refresh lease table, so both backends share one body of SQL.
-- One process owns a SQLite file, so nothing takes these leases in practice (the engine uses its
-- in-process lease) and there is no change notification.
CREATE TABLE refresh_leases (
    component_appid TEXT   NOT NULL,
    kind            TEXT   NOT NULL,
    appid           TEXT   NOT NULL,
    holder          TEXT   NOT NULL,
    expires_at      BIGINT NOT NULL,
    PRIMARY KEY (component_appid, kind, appid)
);
