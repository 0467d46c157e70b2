"""A scheduler whose engine dies does not live on answering HTTP: the process exits non-zero,
so its supervisor (``tusk up``, Kubernetes) starts a fresh one.

The real ``python -m services.scheduler`` on real PostgreSQL and NATS; the fault is
injected by making the engine's leading step raise a bug (an ``Exception`` that is not
``Unavailable``), which the engine must not swallow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shared.platform.config import Config, dump_config_toml
from shared.platform.service_main import EXIT_FAILED
from tests.fixtures.servers import free_port

INJECT_BUG = """
import services.scheduler.engine as engine

async def lead_with_a_bug(self, backoff):
    raise RuntimeError("injected bug")

engine.Engine._lead = lead_with_a_bug

from services.scheduler.__main__ import main

main()
"""


def test_engine_death_stops_the_process_with_a_failure_code(
    tusk_config: Config, tmp_path: Path
) -> None:
    port = free_port()
    config = tusk_config.replace(listen_port=port, worker_backend="local")
    config_path = tmp_path / "config.toml"
    config_path.write_text(dump_config_toml(config))
    env = dict(os.environ, TUSK_CONFIG=str(config_path), TUSK_HOME=str(tmp_path / "home"))
    process = subprocess.run(
        [sys.executable, "-c", INJECT_BUG],
        env=env,
        capture_output=True,
        timeout=60,
        text=True,
    )
    assert process.returncode == EXIT_FAILED, process.stderr[-3000:]
    assert "the scheduler engine stopped: RuntimeError('injected bug')" in process.stderr
