-- PFS metadata: repos, branches, commits, staged changes of open commits.
CREATE TABLE pfs_repos (
    name        text PRIMARY KEY,
    description text NOT NULL DEFAULT '',
    created     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pfs_commits (
    id          text PRIMARY KEY,
    seq         bigserial UNIQUE,
    repo        text NOT NULL REFERENCES pfs_repos(name) ON DELETE CASCADE,
    branch      text,
    parent      text REFERENCES pfs_commits(id) ON DELETE SET NULL,
    state       text NOT NULL CHECK (state IN ('open', 'finishing', 'finished')),
    root        text,              -- file index root hash; NULL = no files
    size_bytes  bigint NOT NULL DEFAULT 0,
    file_count  bigint NOT NULL DEFAULT 0,
    description text NOT NULL DEFAULT '',
    error       text,
    provenance  jsonb NOT NULL DEFAULT '[]',   -- [{repo, branch, id}]
    started     timestamptz NOT NULL DEFAULT now(),
    finishing   timestamptz,
    finished    timestamptz
);
CREATE INDEX pfs_commits_repo_branch_seq ON pfs_commits (repo, branch, seq DESC);
CREATE INDEX pfs_commits_repo_seq ON pfs_commits (repo, seq DESC);
CREATE INDEX pfs_commits_parent ON pfs_commits (parent);
CREATE INDEX pfs_commits_provenance ON pfs_commits USING gin (provenance jsonb_path_ops);

CREATE TABLE pfs_branches (
    repo        text NOT NULL REFERENCES pfs_repos(name) ON DELETE CASCADE,
    name        text NOT NULL,
    head        text REFERENCES pfs_commits(id) ON DELETE SET NULL,
    created     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repo, name)
);

-- Branch provenance: (repo, branch) is computed from (prov_repo, prov_branch).
CREATE TABLE pfs_branch_provenance (
    repo        text NOT NULL,
    branch      text NOT NULL,
    prov_repo   text NOT NULL,
    prov_branch text NOT NULL,
    PRIMARY KEY (repo, branch, prov_repo, prov_branch),
    FOREIGN KEY (repo, branch) REFERENCES pfs_branches(repo, name) ON DELETE CASCADE,
    FOREIGN KEY (prov_repo, prov_branch) REFERENCES pfs_branches(repo, name)
);
CREATE INDEX pfs_branch_provenance_upstream ON pfs_branch_provenance (prov_repo, prov_branch);

-- Changes staged in an open commit; the last write of a path wins. entry NULL = deleted.
CREATE TABLE pfs_staged (
    commit_id   text NOT NULL REFERENCES pfs_commits(id) ON DELETE CASCADE,
    path        text NOT NULL,
    entry       jsonb,
    size_bytes  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (commit_id, path)
);
