-- ``current_datums``: how many current datums the pipeline has once this job succeeded,
-- kept in the transaction that replaces them, so an incremental plan needs no count(*).
-- ``rerun_datums``: datum ids a job must run even if their hash is unchanged (restart
-- datum); it replaces the 'restart' hash PPS once wrote into pps_current_datums.
ALTER TABLE pps_jobs ADD COLUMN IF NOT EXISTS current_datums integer;
ALTER TABLE pps_jobs ADD COLUMN IF NOT EXISTS rerun_datums jsonb NOT NULL DEFAULT '[]';

-- Each pipeline's newest successful job gets the count of what is current now.
UPDATE pps_jobs j SET current_datums = (
    SELECT count(*) FROM pps_current_datums c WHERE c.pipeline = j.pipeline
)
WHERE j.id IN (
    SELECT DISTINCT ON (pipeline) id FROM pps_jobs WHERE state = 'JOB_SUCCESS'
    ORDER BY pipeline, seq DESC
);

-- A 'restart' hash left by the old restart: that datum's next job runs it again, as the
-- old scheduler would have (no current hash equals 'restart').
UPDATE pps_jobs j SET rerun_datums = sub.ids
FROM (
    SELECT c.pipeline, jsonb_agg(c.datum_id) AS ids FROM pps_current_datums c
    WHERE c.hash = 'restart' GROUP BY c.pipeline
) sub
WHERE j.pipeline = sub.pipeline AND j.state IN ('JOB_CREATED', 'JOB_STARTING');
