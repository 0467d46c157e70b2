"""``tusk image load`` and ``tusk image list``: the real CLI on a ``docker save`` archive."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.fixtures.registry import build_layer

TUSK = Path(sys.executable).parent / "tusk"


def _tusk(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSK_")}
    env["TUSK_HOME"] = str(home)
    return subprocess.run([str(TUSK), *args], env=env, capture_output=True, text=True, timeout=60)


def _docker_save(path: Path) -> None:
    config = json.dumps({"os": "linux", "architecture": "amd64", "config": {}}).encode()
    members = {
        "manifest.json": json.dumps(
            [{"Config": "c.json", "RepoTags": ["example/saved:v1"], "Layers": ["l/layer.tar"]}]
        ).encode(),
        "c.json": config,
        "l/layer.tar": build_layer({"hello": b"world"}, compress=False),
    }
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_load_then_list_shows_the_image(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _docker_save(tmp_path / "saved.tar")
    loaded = _tusk(home, "image", "load", str(tmp_path / "saved.tar"))
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.startswith("Loaded docker.io/example/saved:v1 (sha256:")
    listed = _tusk(home, "image", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert row["references"] == ["docker.io/example/saved:v1"]
    assert row["size_bytes"] > 0 and len(row["layers"]) == 1
    table = _tusk(home, "image", "list")
    assert table.stdout.splitlines()[0].split() == ["IMAGE", "DIGEST", "SIZE", "LAST", "USED"]
    assert "docker.io/example/saved:v1" in table.stdout
    root = home / "images" / "roots" / row["digest"].removeprefix("sha256:")
    assert (root / "hello").read_text() == "world"


def test_a_file_that_is_not_an_image_archive_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a tar")
    result = _tusk(tmp_path / "home", "image", "load", str(tmp_path / "notes.txt"))
    assert result.returncode != 0
    assert result.stderr == f"error: {tmp_path / 'notes.txt'}: not a tar archive\n"
