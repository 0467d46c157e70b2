"""Run every benchmark module in turn (``make bench``), then a summary of what ran.

Run: ``.venv/bin/python -m bench.run_all [--only NAME ...] [--log FILE]``

Each ``bench/bench_*.py`` runs as its own ``python -m bench.<name>`` process with its
default arguments, one after another (never two at once: they would share the 2 cores and
the disk, and measure each other). Output streams through as it comes; ``--log`` also
writes it to a file. A module that fails does not stop the others; the exit status is 1 if
any failed. The summary shows the 1-minute load average before and after each module: other
work on the machine during a run shows there, and its figures are then worth re-running.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent


def modules() -> list[str]:
    """Every benchmark module's name, in a stable order."""
    return sorted(p.stem for p in BENCH_DIR.glob("bench_*.py"))


def machine() -> str:
    """One line about where this runs: CPU model, cores, RAM."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
        ram = f"{mem_kib / (1 << 20):.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        ram = "RAM unknown"
    return f"{model}; {os.cpu_count()} cores; {ram}; Python {platform.python_version()}"


def run_one(name: str, outputs: list[TextIO]) -> tuple[int, float]:
    """Run ``bench.<name>``, copying its output (stdout and stderr) to ``outputs``."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", f"bench.{name}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        for out in outputs:
            out.write(line)
            out.flush()
    return proc.wait(), time.perf_counter() - started


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="module names, e.g. bench_pfs")
    parser.add_argument("--log", default=None, help="also write everything to this file")
    args = parser.parse_args()
    names = modules()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise SystemExit(f"no such benchmark: {', '.join(unknown)} (have: {', '.join(names)})")
        names = [n for n in names if n in args.only]
    log = Path(args.log).open("w") if args.log else None  # noqa: SIM115  (closed below)
    outputs: list[TextIO] = [sys.stdout] + ([log] if log else [])
    # name, exit code, seconds, 1-minute load average before and after
    results: list[tuple[str, int, float, float, float]] = []
    try:
        header = f"# Tusk benchmarks, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n# {machine()}\n"
        for out in outputs:
            out.write(header)
        for name in names:
            for out in outputs:
                out.write(f"\n===== {name} =====\n")
                out.flush()
            load = os.getloadavg()[0]
            code, took = run_one(name, outputs)
            results.append((name, code, took, load, os.getloadavg()[0]))
        summary = "\n===== summary =====\n" + "".join(
            f"{name:<22} {'ok' if code == 0 else f'FAILED (exit {code})':<16} {took:7.1f} s"
            f"   load average {before:.1f} -> {after:.1f}\n"
            for name, code, took, before, after in results
        )
        for out in outputs:
            out.write(summary)
    finally:
        if log is not None:
            log.close()
    sys.exit(1 if any(r[1] != 0 for r in results) else 0)


if __name__ == "__main__":
    main()
