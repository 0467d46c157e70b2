"""Branch triggers (Pachyderm's deferred processing): a branch that follows another one.

``tusk create branch raw@master --trigger staging --trigger-size 1MB`` makes ``master``
jump to the head of ``staging`` once the condition holds; pipelines reading
``raw@master`` then run once per jump instead of once per commit on ``staging``.

When a trigger is checked:

- in the transaction that finishes a commit on the source branch (so a jump is never
  lost: it commits with the commit, and its ``branch.moved`` event with it);
- on a schedule, for triggers with ``cron`` (``PfsService.run_cron_triggers``), so a
  cron trigger also fires when no commit arrives at the due time.

The conditions count from the target's last move (``head_moved``), as in Pachyderm:
``size`` compares the size of the source head with that of the target head (bytes the
data grew), ``commits`` walks the source history back to the target head, ``cron`` asks
whether the schedule came due since the last move. A jump is a compare-and-set under
the target's row lock; a jump moves the branches that trigger on the target in turn.
"""

from __future__ import annotations

from datetime import datetime

from services.pfs import refs
from shared.api.events import BranchMoved
from shared.api.names import check_name
from shared.api.pfs_models import Trigger
from shared.pipeline.durations import parse_cron_spec
from shared.platform.config import Config
from shared.platform.db import Conn
from shared.platform.errors import InvalidArgument
from shared.platform.outbox import emit


def check_trigger(repo: str, branch: str, trigger: Trigger) -> None:
    """Refuse a malformed trigger before anything is stored (pure)."""
    where = f"trigger of {repo}@{branch}"
    check_name("branch", trigger.branch)
    if trigger.branch == branch:
        raise InvalidArgument(f"{where}: a branch cannot trigger on itself")
    if trigger.size is not None and trigger.size < 0:
        raise InvalidArgument(f"{where}: size must not be negative, got {trigger.size}")
    if trigger.commits is not None and trigger.commits < 1:
        raise InvalidArgument(f"{where}: commits must be at least 1, got {trigger.commits}")
    if trigger.cron is not None:
        try:
            parse_cron_spec(trigger.cron)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where}: cron: {exc.message}") from None


def is_due(
    trigger: Trigger, *, growth: int, commits: int, last_moved: datetime, now: datetime
) -> bool:
    """Whether the trigger's conditions hold (pure). No condition: follow every commit."""
    held: list[bool] = []
    if trigger.size is not None:
        held.append(growth >= trigger.size)
    if trigger.commits is not None:
        held.append(commits >= trigger.commits)
    if trigger.cron is not None:
        held.append(parse_cron_spec(trigger.cron).next_after(last_moved) <= now)
    if not held:
        return True
    return all(held) if trigger.all else any(held)


async def check_no_loop(conn: Conn, repo: str, branch: str, trigger: Trigger) -> None:
    """Refuse a trigger whose chain of sources leads back to ``branch``."""
    source: str | None = trigger.branch
    seen = {branch}
    while source is not None:
        if source in seen:
            raise InvalidArgument(f"trigger of {repo}@{branch}: triggers would form a loop")
        seen.add(source)
        upstream = await refs.branch_trigger(conn, repo, source)
        source = upstream.branch if upstream is not None else None


async def follow(conn: Conn, config: Config, repo: str, source: str, now: datetime) -> None:
    """Move the branches that trigger on ``source`` whose conditions now hold, then the
    branches that trigger on those (inside the caller's transaction)."""
    _, head = await refs.get_branch_head(conn, repo, source)
    if head is None:
        return
    for target in await refs.branches_triggered_by(conn, repo, source, lock=True):
        if await jump_if_due(conn, config, target, head, now):
            await follow(conn, config, repo, target.name, now)


async def jump_if_due(
    conn: Conn, config: Config, target: refs.TriggeredBranch, new_head: str, now: datetime
) -> bool:
    """Move ``target`` (its row locked by the caller) to ``new_head`` if its trigger's
    conditions hold; True if it moved."""
    if target.head == new_head:
        return False
    new = await refs.get_commit(conn, target.repo, new_head)
    if new is None or not new.finished or new.info.error is not None:
        return False  # a jump waits for finished, good data
    old = await refs.get_commit(conn, target.repo, target.head) if target.head is not None else None
    if old is not None and not old.finished:
        return False  # someone is writing to the target: jumping would orphan their commit
    growth = new.info.size_bytes - (old.info.size_bytes if old is not None else 0)
    wanted = target.trigger.commits
    # Counting walks the history, so only as far as the condition needs (and only if it has one).
    commits = (
        await refs.commits_since(conn, target.repo, new_head, target.head, wanted) if wanted else 0
    )
    due = is_due(
        target.trigger, growth=growth, commits=commits, last_moved=target.head_moved, now=now
    )
    if not due:
        return False
    await refs.set_branch_head(conn, target.repo, target.name, new_head)
    await emit(
        conn,
        config,
        BranchMoved(repo=target.repo, branch=target.name, old_head=target.head, new_head=new_head),
    )
    return True
