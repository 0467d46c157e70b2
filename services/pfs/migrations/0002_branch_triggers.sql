-- Branch triggers (Pachyderm's deferred processing) and when each branch head last moved.
ALTER TABLE pfs_branches
    ADD COLUMN trigger    jsonb,                               -- {branch, size, commits, cron, all}
    ADD COLUMN head_moved timestamptz NOT NULL DEFAULT now();  -- conditions count from here

-- The branches a commit on (repo, source branch) may move.
CREATE INDEX pfs_branches_trigger_source ON pfs_branches (repo, (trigger->>'branch'))
    WHERE trigger IS NOT NULL;
