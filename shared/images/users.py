"""An image's ``User`` (or ``transform.user``) as the ids a container runtime gives it:
``uid[:gid]`` numbers, or names looked up in the image's own ``/etc/passwd`` and
``/etc/group``; a uid without a group takes its passwd group, else gid 0 — as
Kubernetes' runtimes do. An empty user is root. Pure: the files' texts come in."""

from __future__ import annotations

from shared.platform.errors import InvalidArgument

_MAX_ID = (1 << 32) - 2


def resolve_user(user: str, passwd: str, group: str) -> tuple[int, int]:
    """``(uid, gid)`` for ``user`` in an image whose /etc files hold ``passwd``, ``group``."""
    if not user:
        return 0, 0
    name, _, group_name = user.partition(":")
    users = _table(passwd)
    uid = _number(name)
    default_gid = 0
    if uid is None:
        entry = users.get(name)
        if entry is None:
            raise InvalidArgument(f"user {name!r} is not in the image's /etc/passwd")
        found_uid, found_gid = _number(entry[1]), _number(entry[2])
        if found_uid is None or found_gid is None:
            raise InvalidArgument(f"user {name!r}: malformed /etc/passwd entry")
        uid, default_gid = found_uid, found_gid
    else:
        for entry in users.values():
            if _number(entry[1]) == uid:
                default_gid = _number(entry[2]) or 0
                break
    if not group_name:
        return uid, default_gid
    gid = _number(group_name)
    if gid is None:
        entry = _table(group).get(group_name)
        gid = _number(entry[1]) if entry is not None else None
        if gid is None:
            raise InvalidArgument(f"group {group_name!r} is not in the image's /etc/group")
    return uid, gid


def home_of(uid: int, passwd: str) -> str:
    """The passwd home of ``uid``, else ``/`` (what runtimes set ``HOME`` to)."""
    for entry in _table(passwd).values():
        if _number(entry[1]) == uid and len(entry) > 4 and entry[4].startswith("/"):
            return entry[4]
    return "/root" if uid == 0 else "/"


def _table(text: str) -> dict[str, list[str]]:
    """name → the fields after it (passwd: x, uid, gid, gecos, home, shell)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] and not line.startswith("#"):
            found.setdefault(fields[0], fields[1:])
    return found


def _number(text: str) -> int | None:
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= _MAX_ID else None
