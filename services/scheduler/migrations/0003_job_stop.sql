-- ``stop_reason``: set by ``tusk stop job`` (through PPS) on an unfinished job; the
-- scheduler's driver ends such a job JOB_KILLED with this reason on its next pass.
ALTER TABLE pps_jobs ADD COLUMN IF NOT EXISTS stop_reason text;
