-- Who made each commit (issue #15): a user (CLI, mount, API), a pipeline's job, the S3
-- gateway, a cron tick, a merge or a revert. The caller says so through PFS's API; PFS
-- sets merge and revert itself. Adding a column with a constant default rewrites nothing.
ALTER TABLE pfs_commits ADD COLUMN origin text NOT NULL DEFAULT 'user'
    CHECK (origin IN ('user', 'job', 's3', 'cron', 'merge', 'revert'));

-- Commits made before origins were recorded: a merge has a second parent; a commit on a
-- branch computed from other branches was made by a pipeline's job.
UPDATE pfs_commits SET origin = 'merge' WHERE second_parent IS NOT NULL;
UPDATE pfs_commits c SET origin = 'job'
WHERE c.second_parent IS NULL AND c.branch IS NOT NULL AND EXISTS (
    SELECT 1 FROM pfs_branch_provenance p WHERE p.repo = c.repo AND p.branch = c.branch
);
