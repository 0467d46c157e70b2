"""The image sandbox on a real bubblewrap: the image's root as /, nothing of the host, the
image's User resolved in its own /etc; and User resolution itself (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.scheduler.image_sandbox import ImageSandbox
from services.scheduler.sandbox import SandboxSettings
from shared.images.store import Image, ImageStore
from shared.images.users import home_of, resolve_user
from shared.platform.errors import InvalidArgument
from tests.fixtures.registry import TestImage, busybox_layer

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n# comment\n"
GROUP = "root:x:0:\nstaff:x:50:\napp:x:1001:\n"


@pytest.mark.parametrize(
    ("user", "ids"),
    [("", (0, 0)), ("app", (1000, 1001)), ("1000", (1000, 1001)), ("4242", (4242, 0)),
     ("app:staff", (1000, 50)), ("app:7", (1000, 7)), ("0:0", (0, 0))],
)  # fmt: skip
def test_users_resolve_as_container_runtimes_do(user: str, ids: tuple[int, int]) -> None:
    assert resolve_user(user, PASSWD, GROUP) == ids


def test_unknown_names_are_refused_with_the_reason() -> None:
    with pytest.raises(InvalidArgument, match="'ghost' is not in the image's /etc/passwd"):
        resolve_user("ghost", PASSWD, GROUP)
    with pytest.raises(InvalidArgument, match="'wheel' is not in the image's /etc/group"):
        resolve_user("app:wheel", PASSWD, GROUP)
    assert home_of(1000, PASSWD) == "/home/app"
    assert home_of(0, "") == "/root" and home_of(5, "") == "/"


def _cached(tmp_path: Path, image: TestImage) -> Image:
    store = ImageStore(tmp_path / "images")
    for blob in (*image.layers, image.config()):
        store.put_blob_bytes(blob)
    digest = store.put_blob_bytes(image.manifest())
    return store.add_image(digest, ["local/test:v1"])


async def test_a_datum_sees_the_image_and_nothing_of_the_host(tmp_path: Path) -> None:
    image = _cached(tmp_path, TestImage(
        layers=[busybox_layer({
            "etc/": None, "etc/passwd": PASSWD.encode(), "etc/group": GROUP.encode(),
            "home/": None, "home/app/": None,
            # An absolute symlink to a host file: inside the sandbox it points into the image.
            "etc/host-shadow": ("link", "/etc/shadow"),
        })],
        env=["PATH=/bin", "FROM_IMAGE=yes"], working_dir="/home/app", user="app",
    ))  # fmt: skip
    sandbox = ImageSandbox(image)
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    (inputs / "f").write_text("input\n")
    script = (
        "pwd; id -u; id -g; echo $HOME $FROM_IMAGE; cat /pfs/in/f; "
        "test -e /usr && echo has-usr; cat /etc/host-shadow 2>/dev/null && echo shadow; "
        "touch /bin/x 2>/dev/null && echo root-writable; touch /pfs/x 2>/dev/null && echo pfs-writable; "
        "echo out > /pfs/out/o; ls /sys/class/net 2>/dev/null | tr '\\n' ' '; echo"
    )
    settings = SandboxSettings(sandbox.default_working_dir, sandbox.identity(None))
    argv = sandbox.argv(["sh", "-c", script], inputs={"in": inputs}, out=out, settings=settings)
    run = await sandbox.run(argv, [], sandbox.environment({"PACH_JOB_ID": "j"}), 30)
    assert run.exit_code == 0, run
    lines = run.logs.splitlines()
    assert lines[:5] == ["/home/app", "1000", "1001", "/home/app yes", "input"]
    assert not {"has-usr", "shadow", "root-writable", "pfs-writable"} & set(lines)
    assert (out / "o").read_text() == "out\n"
    assert json.dumps(sandbox.environment({})["PATH"]) == '"/bin"'


async def test_transform_user_and_a_missing_working_dir(tmp_path: Path) -> None:
    image = _cached(tmp_path, TestImage(layers=[busybox_layer()], user="1000"))
    sandbox = ImageSandbox(image)
    assert sandbox.default_working_dir == "/"
    assert sandbox.identity("0:0") == (0, 0)
    settings = SandboxSettings("/nowhere", sandbox.identity(None))
    run = await sandbox.run(
        sandbox.argv(["true"], inputs={}, out=None, settings=settings), [], {}, 30
    )
    assert run.setup_error is not None and "nowhere" in run.setup_error
