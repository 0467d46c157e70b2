-- The scheduler's own view of PPS's pipelines (docs/architecture.md, "Owners"): PPS owns
-- pipelines; the scheduler keeps what it needs of them — the current version, state and
-- spec, and each spec version a job of it may still run — learnt over PPS's HTTP API when
-- a ``pipeline.updated`` event arrives, when PPS asks for a job, and by a full pass every
-- few seconds. No query of the scheduler reads PPS's tables any more.
CREATE TABLE IF NOT EXISTS scheduler_pipelines (
    name        text PRIMARY KEY,
    version     integer NOT NULL,
    state       text NOT NULL,
    reason      text,
    spec        jsonb NOT NULL,
    -- PPS's times: a pipeline made again under the same name has a later ``created``, and
    -- an answer older than what is stored (``updated``) never overwrites it.
    created     timestamptz NOT NULL,
    updated     timestamptz NOT NULL,
    -- When this row was last written from an answer of PPS: a full pass forgets only rows
    -- it saw before its own listing began.
    seen        timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE IF NOT EXISTS scheduler_pipeline_specs (
    name        text NOT NULL,
    version     integer NOT NULL,
    spec        jsonb NOT NULL,
    PRIMARY KEY (name, version)
);
