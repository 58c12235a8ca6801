-- Facts, per environment. A fact is a predicate and its arguments; the first four arguments have their own
-- columns (so reads filter and use indexes on them), later ones are kept as JSON in `rest`. Unused argument
-- columns hold '' (the arity tells a missing argument from an empty id). `fact_key` is a hash of the whole
-- fact: inserting a fact that exists is a no-op, which makes replayed batches safe.
-- Deleting an environment deletes its facts.

CREATE TABLE facts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    environment_id TEXT NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    fact_key TEXT NOT NULL,
    predicate TEXT NOT NULL,
    arity BIGINT NOT NULL,
    a0_type TEXT NOT NULL,
    a0_id TEXT NOT NULL,
    a1_type TEXT NOT NULL,
    a1_id TEXT NOT NULL,
    a2_type TEXT NOT NULL,
    a2_id TEXT NOT NULL,
    a3_type TEXT NOT NULL,
    a3_id TEXT NOT NULL,
    rest TEXT NOT NULL,
    UNIQUE (environment_id, fact_key)
);
-- Reads name a predicate and constrain some leading arguments: "alice's roles" (argument 0), "who has a
-- role on acme" (argument 2), "what is related to this repository" (argument 1).
CREATE INDEX facts_by_arg0 ON facts (environment_id, predicate, a0_type, a0_id);
CREATE INDEX facts_by_arg1 ON facts (environment_id, predicate, a1_type, a1_id);
CREATE INDEX facts_by_arg2 ON facts (environment_id, predicate, a2_type, a2_id);
