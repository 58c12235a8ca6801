-- Tenancy: organizations, environments, users, API keys, and the accounts users may reference.
-- Integers are 64-bit everywhere; flags are 0/1 integers so both backends decode them the same way.

CREATE TABLE store_revision (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
);
INSERT INTO store_revision (id, revision) VALUES (1, 0);

CREATE TABLE accounts (
    account TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);

CREATE TABLE organizations (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    display_name TEXT NOT NULL,
    plan TEXT NOT NULL,
    requests_per_minute INTEGER,
    fact_writes_per_minute INTEGER,
    max_concurrent_requests INTEGER,
    max_batch_facts INTEGER,
    max_write_body_bytes INTEGER,
    deletion_policy TEXT NOT NULL,
    managed INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (namespace, name)
);

CREATE TABLE environments (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    display_name TEXT NOT NULL,
    production INTEGER NOT NULL,
    requests_per_minute INTEGER,
    fact_writes_per_minute INTEGER,
    max_concurrent_requests INTEGER,
    max_batch_facts INTEGER,
    max_write_body_bytes INTEGER,
    deletion_policy TEXT NOT NULL,
    managed INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (organization_id, name)
);

CREATE TABLE users (
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    account TEXT NOT NULL,
    role TEXT NOT NULL,
    resource_name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (organization_id, account)
);

CREATE TABLE api_keys (
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
    UNIQUE (organization_id, resource_name)
);
CREATE INDEX api_keys_by_environment ON api_keys (environment_id, state);
