"""``tusk image load FILE.tar`` and ``tusk image list [-o json]``: the local image cache
that local workers run datums in (docs/images.md), for machines without registry access.

They work on the cache directly ($TUSK_HOME/images, or ``image_cache_dir``), with no
cluster running; the scheduler picks up a loaded image at its next pull of that name.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from tusk.cli.output import echo, echo_json, format_table, human_size, output_option, relative_time


def _store() -> Any:
    # Imported here: only these commands need the image modules.
    from shared.images.store import ImageStore
    from shared.platform.config import load_config, tusk_home

    config = load_config()
    directory = Path(config.image_cache_dir) if config.image_cache_dir else tusk_home() / "images"
    return ImageStore(directory, config.image_cache_bytes or None)


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat() if seconds else ""


def _row(record: Any) -> dict[str, Any]:
    return {
        "references": record.references,
        "digest": record.digest,
        "config": record.config,
        "layers": record.layers,
        "size_bytes": record.size,
        "created": _when(record.created),
        "last_used": _when(record.last_used),
    }


@click.group("image")
def image() -> None:
    """Load and list the images local workers run datums in."""


@image.command("load")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@output_option
def load(archive: Path, output: str) -> None:
    """Import a 'docker save' or OCI image archive (FILE.tar) into the image cache."""
    from shared.images.archive import load_archive

    store = _store()
    images = load_archive(store, archive)
    rows = [_row(loaded.record) for loaded in images]
    if output == "json":
        echo_json(rows)
        return
    for row in rows:
        names = ", ".join(row["references"]) or "(no name)"
        echo(f"Loaded {names} ({row['digest']})")


@image.command("list")
@output_option
def list_images(output: str) -> None:
    """List the cached images, most recently used first."""
    records = sorted(_store().records(), key=lambda r: r.last_used, reverse=True)
    rows = [_row(record) for record in records]
    if output == "json":
        echo_json(rows)
        return
    table = [
        (
            ", ".join(row["references"]) or "(no name)",
            row["digest"].removeprefix("sha256:")[:12],
            human_size(row["size_bytes"]),
            relative_time(row["last_used"] or None),
        )
        for row in rows
    ]
    echo(format_table(("IMAGE", "DIGEST", "SIZE", "LAST USED"), table))


COMMANDS: list[click.Command] = [image]
