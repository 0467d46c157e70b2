-- Which datums were current when (issue #10: ``tusk list datum P@JOB --all`` for any job).
-- A row per datum version that became current after a successful job: ``valid_from`` is
-- that job's seq, ``valid_to`` the seq of the successful job that replaced or removed it
-- (NULL while current). The datums a job J (seq s) skipped are those current when it
-- started (valid_from < s <= valid_to) that it neither ran nor removed, read a page at a
-- time in datum-id order. ``job_id``: the job that ran it (its output is that job's).
CREATE TABLE IF NOT EXISTS pps_datum_history (
    pipeline     text NOT NULL,
    datum_id     text NOT NULL,
    hash         text NOT NULL,
    job_id       text NOT NULL,
    valid_from   bigint NOT NULL,
    valid_to     bigint,
    PRIMARY KEY (pipeline, datum_id, valid_from)
);

-- What is current now is known; earlier versions are not (jobs finished before this
-- migration list the current datums as skipped where they were current).
INSERT INTO pps_datum_history (pipeline, datum_id, hash, job_id, valid_from)
SELECT c.pipeline, c.datum_id, c.hash, c.job_id, coalesce(j.seq, 0)
FROM pps_current_datums c LEFT JOIN pps_jobs j ON j.id = c.job_id
ON CONFLICT DO NOTHING;
