-- Commit sets (issue #10): the output commits a job makes take the id of the input commit
-- that triggered it, so one id names a set of commits across repos (Pachyderm 2's global
-- IDs). A commit id is therefore unique per repo, not globally: the key is (repo, id), and
-- every reference to a commit from PFS's own tables carries the repo beside the id.
ALTER TABLE pfs_staged ADD COLUMN repo text;
UPDATE pfs_staged s SET repo = c.repo FROM pfs_commits c WHERE c.id = s.commit_id;
ALTER TABLE pfs_staged DROP CONSTRAINT pfs_staged_commit_id_fkey;
ALTER TABLE pfs_staged DROP CONSTRAINT pfs_staged_pkey;
ALTER TABLE pfs_branches DROP CONSTRAINT pfs_branches_head_fkey;
ALTER TABLE pfs_commits DROP CONSTRAINT pfs_commits_parent_fkey;
ALTER TABLE pfs_commits DROP CONSTRAINT pfs_commits_second_parent_fkey;
ALTER TABLE pfs_commits DROP CONSTRAINT pfs_commits_pkey;
ALTER TABLE pfs_commits ADD PRIMARY KEY (repo, id);

-- A set's commits, found by id across repos.
CREATE INDEX pfs_commits_set ON pfs_commits (id);
DROP INDEX pfs_commits_parent;
CREATE INDEX pfs_commits_parent ON pfs_commits (repo, parent);

-- Parents, second parents and heads live in the commit's own repo. SET NULL names the
-- column: the repo half of the key is the row's own and stays.
ALTER TABLE pfs_commits
    ADD FOREIGN KEY (repo, parent) REFERENCES pfs_commits (repo, id) ON DELETE SET NULL (parent),
    ADD FOREIGN KEY (repo, second_parent) REFERENCES pfs_commits (repo, id)
        ON DELETE SET NULL (second_parent);
ALTER TABLE pfs_branches
    ADD FOREIGN KEY (repo, head) REFERENCES pfs_commits (repo, id) ON DELETE SET NULL (head);
DELETE FROM pfs_staged WHERE repo IS NULL;
ALTER TABLE pfs_staged
    ALTER COLUMN repo SET NOT NULL,
    ADD PRIMARY KEY (repo, commit_id, path),
    ADD FOREIGN KEY (repo, commit_id) REFERENCES pfs_commits (repo, id) ON DELETE CASCADE;
