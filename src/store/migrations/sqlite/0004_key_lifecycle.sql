-- Key lifecycle. `expires_at`: from then on the data plane refuses the key by itself (seconds since the
-- epoch; NULL: never). `revoked_by` and `revoked_reason`: who revoked the key outside Git (`keys revoke`)
-- and why; NULL for revocations declared in Git.
ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
ALTER TABLE api_keys ADD COLUMN revoked_by TEXT;
ALTER TABLE api_keys ADD COLUMN revoked_reason TEXT;

-- The audit trail: every issuance, revocation, expiry change and removal of a key. Never the key itself,
-- and no foreign keys: the record outlives the key, its environment and its organization, so their names
-- are copied in. `git_revision`: the commit the change came from, when the writer knows it.
CREATE TABLE key_events (
    id INTEGER PRIMARY KEY,
    occurred_at INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    event TEXT NOT NULL,
    namespace TEXT NOT NULL,
    organization TEXT NOT NULL,
    environment TEXT NOT NULL,
    api_key TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT,
    git_revision TEXT
);
CREATE INDEX key_events_by_key ON key_events (key_id, id);
