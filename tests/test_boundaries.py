"""Boundaries, scanned from the source so a new crossing anywhere fails here:

- client libraries stay behind their adapters: no service module imports ``nats`` or
  ``asyncpg``; ``shared/platform`` (bus, db, outbox) owns them and translates their errors;
- the rooms of ``shared/`` import only downwards (the platform knows none of the others);
- one owner per table: a service's SQL names only the tables its own migrations make.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADAPTED = ("nats", "asyncpg")


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


def test_no_service_module_imports_asyncpg() -> None:
    assert offenders("asyncpg") == set()


# Which rooms of shared/ each room may import (docs/architecture.md, "Layout"): imports
# run only downwards, so the platform, at the bottom, knows none of the others.
ROOMS_BELOW = {
    "platform": set(),
    "storage": {"platform"},
    "images": {"platform"},
    "api": {"storage", "platform"},
    "pipeline": {"api", "storage", "platform"},
}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports by absolute name."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_shared_rooms_import_only_downwards() -> None:
    wrong = []
    for room, below in ROOMS_BELOW.items():
        allowed = {room, *below}
        for path in (ROOT / "shared" / room).rglob("*.py"):
            for module in imported_modules(path):
                parts = module.split(".")
                if parts[0] in ("services", "tusk") or (
                    parts[0] == "shared" and len(parts) > 1 and parts[1] not in allowed
                ):
                    wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert wrong == []


def test_the_scan_sees_imports() -> None:
    assert {"nats", "asyncpg"} <= imported_roots(ROOT / "shared/platform/db.py") | imported_roots(
        ROOT / "shared/platform/bus.py"
    )


# A table a query names: after FROM, JOIN, INTO, UPDATE or TABLE (not a function call).
TABLE_IN_SQL = re.compile(
    r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE(?: IF NOT EXISTS| IF EXISTS)?)\s+([a-z_][a-z0-9_]*)\b(?!\s*\()",
    re.IGNORECASE,
)
CREATED = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?([a-z_][a-z0-9_]*)", re.IGNORECASE)


def table_owners() -> dict[str, str]:
    """Table → the one whose migrations create it (a service, or ``shared`` for the
    platform's own: the outbox, the migration records)."""
    owners: dict[str, str] = {"schema_migrations": "shared"}
    histories = [(p, p.parent.parent.name) for p in ROOT.glob("services/*/migrations/*.sql")]
    histories += [(p, "shared") for p in ROOT.glob("shared/platform/migrations/*.sql")]
    for path, owner in histories:
        for table in CREATED.findall(path.read_text()):
            assert owners.setdefault(table, owner) == owner, f"{table} made by two owners"
    return owners


def sql_tables(path: Path, known: set[str]) -> set[str]:
    """The known tables named in ``path``'s string literals."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.update(t for t in TABLE_IN_SQL.findall(node.value) if t in known)
    return names


def test_every_table_has_one_owner_and_no_service_queries_another_ones() -> None:
    owners = table_owners()
    crossings = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        service = path.relative_to(ROOT / "services").parts[0]
        for table in sql_tables(path, set(owners)):
            if owners[table] != service:
                crossings.append(f"{path.relative_to(ROOT)}: {table} (owner: {owners[table]})")
    assert crossings == []


def test_the_owner_map_is_the_documented_one() -> None:
    by_owner: dict[str, set[str]] = {}
    for table, owner in table_owners().items():
        by_owner.setdefault(owner, set()).add(table)
    assert by_owner["pps"] == {"pps_pipelines", "pps_pipeline_versions", "pps_secrets"}
    assert by_owner["scheduler"] == {
        "pps_jobs",
        "pps_job_datums",
        "pps_current_datums",
        "pps_output_paths",
        "pps_logs",
        "pps_datum_history",
        "scheduler_pipelines",
        "scheduler_pipeline_specs",
    }
    assert all(t.startswith("pfs_") for t in by_owner["pfs"])
    assert by_owner["shared"] == {"outbox", "schema_migrations"}


def test_the_table_scan_sees_queries() -> None:
    owners = table_owners()
    assert "pps_pipelines" in sql_tables(ROOT / "services/pps/store.py", set(owners))
    assert {"pps_jobs", "scheduler_pipelines"} <= sql_tables(
        ROOT / "services/scheduler/store.py", set(owners)
    )
