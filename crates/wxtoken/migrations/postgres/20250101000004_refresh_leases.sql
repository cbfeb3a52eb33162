-- wxtoken schema 4 (PostgreSQL): several replicas on one database.
--
-- refresh_leases: who refreshes a credential right now. A replica takes a row (or one whose
-- expires_at has passed) before calling WeChat, renews it while the refresh is in flight and
-- deletes it after the store write; a dead replica's row expires and another takes over. The
-- generation fence on access_tokens stays the final guard.
CREATE TABLE refresh_leases (
    component_appid TEXT   NOT NULL,
    kind            TEXT   NOT NULL,
    appid           TEXT   NOT NULL,
    holder          TEXT   NOT NULL,
    expires_at      BIGINT NOT NULL,
    PRIMARY KEY (component_appid, kind, appid)
);

-- Every committed change of a credential's row (a new token, a status change: both bump the
-- generation) is announced on channel wxtoken_tokens as "component kind appid generation", so
-- every replica loads it into memory. Never a token: the payload names the row only.
CREATE FUNCTION access_tokens_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'wxtoken_tokens',
        NEW.component_appid || ' ' || NEW.kind || ' ' || NEW.appid || ' ' || NEW.generation
    );
    RETURN NULL;
END;
$$;

CREATE TRIGGER access_tokens_changed
AFTER INSERT OR UPDATE OF generation ON access_tokens
FOR EACH ROW EXECUTE FUNCTION access_tokens_notify();
