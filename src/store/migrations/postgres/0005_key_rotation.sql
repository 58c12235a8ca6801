-- Key rotation: an ApiKey has one current key and, during and after a rotation, an incoming key (live,
-- being written to its Secret) and previous keys (live until their overlap ends). `slot` says which;
-- only one current key per ApiKey (the partial unique index replaces the old UNIQUE on the name).
-- `rotation_trigger`: spec.rotation.trigger when the key was issued. `superseded_at`: when a newer key
-- replaced it.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_organization_id_resource_name_key;
ALTER TABLE api_keys ADD COLUMN slot TEXT NOT NULL DEFAULT 'current'
    CHECK (slot IN ('current', 'incoming', 'previous'));
ALTER TABLE api_keys ADD COLUMN rotation_trigger TEXT;
ALTER TABLE api_keys ADD COLUMN superseded_at BIGINT;
CREATE UNIQUE INDEX api_keys_current ON api_keys (organization_id, resource_name) WHERE slot = 'current';
