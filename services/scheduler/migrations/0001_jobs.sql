-- The scheduler owns jobs, their datums, the pipelines' current datums, output path
-- owners and datum logs (docs/architecture.md, "Owners"). The tables keep their pps_
-- names. They were first made by the retired shared "pps" migration history; IF NOT
-- EXISTS adopts them in a database that history made, and makes them in a new one.
CREATE TABLE IF NOT EXISTS pps_jobs (
    id               text PRIMARY KEY,
    seq              bigserial UNIQUE,
    pipeline         text NOT NULL,
    pipeline_version integer NOT NULL,
    -- What made the job: an input commit id, or "create:N" / "update:N" / "start:…".
    trigger          text NOT NULL,
    state            text NOT NULL,
    reason           text,
    reprocess        boolean NOT NULL DEFAULT false,
    input_commits    jsonb NOT NULL DEFAULT '[]',   -- [{name, repo, branch, id}]
    output_commit    text,
    data_total       integer NOT NULL DEFAULT 0,
    data_processed   integer NOT NULL DEFAULT 0,
    data_skipped     integer NOT NULL DEFAULT 0,
    data_failed      integer NOT NULL DEFAULT 0,
    data_recovered   integer NOT NULL DEFAULT 0,
    remaining        integer NOT NULL DEFAULT 0,
    -- Datums of the last successful job whose inputs are gone; their outputs go too.
    removed_datums   jsonb NOT NULL DEFAULT '[]',
    created          timestamptz NOT NULL DEFAULT now(),
    started          timestamptz,
    finished         timestamptz,
    UNIQUE (pipeline, trigger)
);
CREATE INDEX IF NOT EXISTS pps_jobs_pipeline_state ON pps_jobs (pipeline, state, seq);

-- Datums a job processed (skipped ones are counted on the job, not listed one by one).
CREATE TABLE IF NOT EXISTS pps_job_datums (
    job_id       text NOT NULL REFERENCES pps_jobs(id) ON DELETE CASCADE,
    datum_id     text NOT NULL,
    hash         text NOT NULL,
    state        text NOT NULL,         -- STARTING | SUCCESS | FAILED | RECOVERED
    inputs       jsonb NOT NULL,        -- [{input, repo, commit, match, files}]
    output_root  text,
    output_files integer NOT NULL DEFAULT 0,
    output_bytes bigint NOT NULL DEFAULT 0,
    attempts     integer NOT NULL DEFAULT 0,
    error        text,
    seconds      double precision,
    started      timestamptz NOT NULL DEFAULT now(),
    finished     timestamptz,
    PRIMARY KEY (job_id, datum_id)
);

-- The pipeline's datums as of its last successful job: what the next job compares against.
CREATE TABLE IF NOT EXISTS pps_current_datums (
    pipeline     text NOT NULL,
    datum_id     text NOT NULL,
    hash         text NOT NULL,
    output_root  text,
    job_id       text NOT NULL,
    PRIMARY KEY (pipeline, datum_id)
);

-- Which datum wrote each output path: detects two datums writing one path in O(change).
CREATE TABLE IF NOT EXISTS pps_output_paths (
    pipeline     text NOT NULL,
    path         text NOT NULL,
    datum_id     text NOT NULL,
    PRIMARY KEY (pipeline, path)
);

CREATE TABLE IF NOT EXISTS pps_logs (
    id           bigserial PRIMARY KEY,
    pipeline     text NOT NULL,
    job_id       text NOT NULL,
    datum_id     text,
    ts           timestamptz NOT NULL DEFAULT now(),
    message      text NOT NULL
);
CREATE INDEX IF NOT EXISTS pps_logs_pipeline_job ON pps_logs (pipeline, job_id, id);

-- No foreign key crosses an owner's boundary: the old history tied these rows to
-- pps_pipelines; a pipeline's deletion now removes them explicitly
-- (services/pps/store.py, delete_pipeline), and either service may migrate first.
ALTER TABLE pps_jobs DROP CONSTRAINT IF EXISTS pps_jobs_pipeline_fkey;
ALTER TABLE pps_current_datums DROP CONSTRAINT IF EXISTS pps_current_datums_pipeline_fkey;
ALTER TABLE pps_output_paths DROP CONSTRAINT IF EXISTS pps_output_paths_pipeline_fkey;
