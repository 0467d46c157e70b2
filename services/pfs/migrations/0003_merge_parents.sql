-- Merge commits (issue #14): the branch merged in is a commit's second parent; `parent`
-- stays the first (the destination branch's head before the merge), as in git.
ALTER TABLE pfs_commits
    ADD COLUMN second_parent text REFERENCES pfs_commits(id) ON DELETE SET NULL;
CREATE INDEX pfs_commits_second_parent ON pfs_commits (second_parent)
    WHERE second_parent IS NOT NULL;
