-- ``tasks_published``: every task of the job's datums reached JetStream. A job becomes
-- JOB_RUNNING (its datums recorded) before its tasks are published; if the scheduler dies
-- or loses its lead in between, the driver publishes the still-pending datums' tasks again
-- instead of waiting forever for results of tasks nobody received. Jobs that were running
-- when this column arrived publish once more: a duplicate task changes nothing (a result
-- counts only while its datum is STARTING).
ALTER TABLE pps_jobs ADD COLUMN IF NOT EXISTS tasks_published boolean NOT NULL DEFAULT false;
UPDATE pps_jobs SET tasks_published = true
WHERE state NOT IN ('JOB_CREATED', 'JOB_STARTING', 'JOB_RUNNING');
