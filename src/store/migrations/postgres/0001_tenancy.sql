-- Tenancy: organizations, environments, users, API keys, and the accounts users may reference.
-- Integers are 64-bit everywhere; flags are 0/1 integers so both backends decode them the same way.

CREATE TABLE store_revision (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    revision BIGINT NOT NULL
);
INSERT INTO store_revision (id, revision) VALUES (1, 0);

CREATE TABLE accounts (
    account TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);

CREATE TABLE organizations (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    display_name TEXT NOT NULL,
    plan TEXT NOT NULL,
    requests_per_minute BIGINT,
    fact_writes_per_minute BIGINT,
    max_concurrent_requests BIGINT,
    max_batch_facts BIGINT,
    max_write_body_bytes BIGINT,
    deletion_policy TEXT NOT NULL,
    managed BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (namespace, name)
);

CREATE TABLE environments (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    display_name TEXT NOT NULL,
    production BIGINT NOT NULL,
    requests_per_minute BIGINT,
    fact_writes_per_minute BIGINT,
    max_concurrent_requests BIGINT,
    max_batch_facts BIGINT,
    max_write_body_bytes BIGINT,
    deletion_policy TEXT NOT NULL,
    managed BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (organization_id, name)
);

CREATE TABLE users (
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    account TEXT NOT NULL,
    role TEXT NOT NULL,
    resource_name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
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
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    UNIQUE (organization_id, resource_name)
);
CREATE INDEX api_keys_by_environment ON api_keys (environment_id, state);
