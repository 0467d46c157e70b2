"""Client libraries stay behind their adapters: no service module imports ``nats`` or
``asyncpg``; ``shared/platform`` (bus, db, outbox) owns them and translates their errors.

Scanned from the source, so a new import anywhere under services/ fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADAPTED = ("nats", "asyncpg")
# Two scheduler modules still name asyncpg in their signatures; they were being edited
# for another issue when the rest moved to ``shared.platform.db.Pool``/``Row``. Never add
# to this list; nats is allowed nowhere.
PENDING_ASYNCPG = {
    "services/scheduler/inputs.py",
    "services/scheduler/store.py",
}


def imported_roots(path: Path) -> set[str]:
    """The top-level packages ``path`` imports (``import a.b`` and ``from a.b import c``)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def offenders(library: str) -> set[str]:
    return {
        str(path.relative_to(ROOT))
        for path in (ROOT / "services").rglob("*.py")
        if library in imported_roots(path)
    }


def test_no_service_module_imports_nats() -> None:
    assert offenders("nats") == set()


def test_no_service_module_imports_asyncpg_beyond_the_modules_being_moved() -> None:
    assert offenders("asyncpg") <= PENDING_ASYNCPG


def test_the_scan_sees_imports() -> None:
    assert {"nats", "asyncpg"} <= imported_roots(ROOT / "shared/platform/db.py") | imported_roots(
        ROOT / "shared/platform/bus.py"
    )
