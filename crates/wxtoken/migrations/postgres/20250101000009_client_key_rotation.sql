-- wxtoken schema 9: a revoked client's name can be given to a new client (only live names are
-- unique), and a client's key can be rotated with a grace period during which the previous key
-- keeps working.
ALTER TABLE clients DROP CONSTRAINT clients_name_key;
CREATE UNIQUE INDEX clients_live_name ON clients (name) WHERE revoked_at IS NULL;
ALTER TABLE clients
    ADD COLUMN previous_key_hash       BYTEA UNIQUE,
    ADD COLUMN previous_key_hint       TEXT,
    ADD COLUMN previous_key_expires_at BIGINT,
    ADD COLUMN rotated_at              BIGINT;
