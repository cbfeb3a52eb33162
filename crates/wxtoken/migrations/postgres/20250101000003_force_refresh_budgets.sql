-- wxtoken schema 3 (PostgreSQL): the stable_token force_refresh budget of each credential that used one
-- (wechat-protocol.md §6.2: 20 a day, 30 s apart), so a restart does not reset it.
CREATE TABLE force_refresh_budgets (
    component_appid TEXT   NOT NULL,
    kind            TEXT   NOT NULL,
    appid           TEXT   NOT NULL,
    day_start       BIGINT NOT NULL,
    used            BIGINT NOT NULL,
    last_at         BIGINT,
    PRIMARY KEY (component_appid, kind, appid)
);
