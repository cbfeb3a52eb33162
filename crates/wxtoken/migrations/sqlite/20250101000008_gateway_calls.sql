-- wxtoken schema 8 (SQLite): calls through the WeChat API gateway, per Beijing day
-- (WeChat's daily quotas reset at midnight UTC+8), appid and WeChat path, so a quota (45009) is
-- seen coming. Added to in batches by every server; rows older than 31 days are pruned.
CREATE TABLE gateway_calls (
    day    TEXT   NOT NULL,
    appid  TEXT   NOT NULL,
    path   TEXT   NOT NULL,
    calls  INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    PRIMARY KEY (day, appid, path)
) STRICT;
