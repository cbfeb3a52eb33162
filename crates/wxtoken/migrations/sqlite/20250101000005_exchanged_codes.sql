-- wxtoken schema 5: which authorizer each recently exchanged authorization code belonged to,
-- keyed by the code's SHA-256 (hex; never the code, which is a secret until it expires). The
-- authorization page's callback and the `authorized` push carry the same single-use code; on
-- several replicas, whichever comes second gets 61009 from api_query_auth and learns here which
-- account it was. Rows are forgotten a day after the exchange (codes live 10 minutes).
CREATE TABLE exchanged_codes (
    component_appid TEXT   NOT NULL,
    code_digest     TEXT   NOT NULL,
    appid           TEXT   NOT NULL,
    exchanged_at    BIGINT NOT NULL,
    PRIMARY KEY (component_appid, code_digest)
);

CREATE INDEX exchanged_codes_by_time ON exchanged_codes (exchanged_at);
