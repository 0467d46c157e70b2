-- PPS owns pipelines, their spec history and secrets (docs/architecture.md, "Owners").
-- These tables were first made by the retired shared "pps" migration history; IF NOT
-- EXISTS adopts them in a database that history made, and makes them in a new one.
CREATE TABLE IF NOT EXISTS pps_pipelines (
    name        text PRIMARY KEY,
    version     integer NOT NULL,
    spec        jsonb NOT NULL,
    state       text NOT NULL,        -- PIPELINE_RUNNING | PIPELINE_PAUSED | PIPELINE_CRASHING
    reason      text,
    created     timestamptz NOT NULL DEFAULT now(),
    updated     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS pps_pipeline_versions (
    name        text NOT NULL REFERENCES pps_pipelines(name) ON DELETE CASCADE,
    version     integer NOT NULL,
    spec        jsonb NOT NULL,
    created     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- Secrets (tusk create secret). Values are never stored in clear: ``sealed`` is
-- nonce || AES-256-GCM of their JSON under the key in PPS's secrets_key_file, bound to
-- the name; ``key_id`` says which key. Key names stay readable for listings.
CREATE TABLE IF NOT EXISTS pps_secrets (
    name        text PRIMARY KEY,
    type        text NOT NULL,
    keys        text[] NOT NULL,
    key_id      text NOT NULL,
    sealed      bytea NOT NULL,
    created     timestamptz NOT NULL DEFAULT now(),
    updated     timestamptz NOT NULL DEFAULT now()
);
