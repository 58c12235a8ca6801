-- When each key was last used (seconds since the epoch, at most a minute stale); NULL: never seen in use.
ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT;
