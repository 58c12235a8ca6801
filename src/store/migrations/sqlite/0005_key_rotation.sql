-- Key rotation: an ApiKey has one current key and, during and after a rotation, an incoming key (live,
-- being written to its Secret) and previous keys (live until their overlap ends). `slot` says which;
-- only one current key per ApiKey (the partial unique index replaces the old UNIQUE on the name).
-- `rotation_trigger`: spec.rotation.trigger when the key was issued. `superseded_at`: when a newer key
-- replaced it. SQLite cannot drop a constraint, so the table is rebuilt (nothing references it).
CREATE TABLE api_keys_rotating (
    key_id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    environment_id TEXT NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    resource_name TEXT NOT NULL,
    secret_name TEXT NOT NULL,
    access TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'live', 'revoked')),
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    last_used_at INTEGER,
    expires_at INTEGER,
    revoked_by TEXT,
    revoked_reason TEXT,
    slot TEXT NOT NULL DEFAULT 'current' CHECK (slot IN ('current', 'incoming', 'previous')),
    rotation_trigger TEXT,
    superseded_at INTEGER
);
INSERT INTO api_keys_rotating (key_id, organization_id, environment_id, resource_name, secret_name, access,
    secret_hash, state, created_at, revoked_at, last_used_at, expires_at, revoked_by, revoked_reason)
SELECT key_id, organization_id, environment_id, resource_name, secret_name, access, secret_hash, state,
    created_at, revoked_at, last_used_at, expires_at, revoked_by, revoked_reason FROM api_keys;
DROP TABLE api_keys;
ALTER TABLE api_keys_rotating RENAME TO api_keys;
CREATE INDEX api_keys_by_environment ON api_keys (environment_id, state);
CREATE UNIQUE INDEX api_keys_current ON api_keys (organization_id, resource_name) WHERE slot = 'current';
