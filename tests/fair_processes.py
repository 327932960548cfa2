"""Processes of one test run, found by a marker in their environment (tests/conftest.py's `run_cli`, the PPO runs).

Every process a run starts inherits its environment, whatever session or process group it moves to (torchrun's
ranks, the deepspeed launcher's, Ray's daemons and actors), so ``MARKER=<id>`` in the run's environment finds
them all: to kill a run whole, and to check that none is left behind after it ended.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MARKER = "OPENRLHF_FAIR_TEST_RUN"


def new_marker() -> str:
    """A fresh ``MARKER=<id>`` environment entry for one run."""
    return f"{MARKER}={uuid.uuid4().hex}"


def marked_processes(marker: str) -> dict[int, str]:
    """{pid: command line} of the live (not zombie) processes whose environment has the entry ``marker``."""
    needle = marker.encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if "\nState:\tZ" in (entry / "status").read_text():  # exited, waiting for its parent to reap it
                continue
            found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
        except OSError:  # exited meanwhile, or not ours to read
            continue
    return found


def kill_marked(marker: str, session: int | None = None) -> dict[int, str]:
    """SIGKILL the run's session (if given) and every process carrying ``marker``; returns what was alive."""
    alive = marked_processes(marker)
    if session is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(session, signal.SIGKILL)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return alive


def wait_for_exit(marker: str, grace: float) -> dict[int, str]:
    """The run's processes still alive after up to ``grace`` seconds (Ray's take a few to shut down)."""
    deadline = time.monotonic() + grace
    while True:
        alive = marked_processes(marker)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


def concurrently(*runs):
    """Call each of ``runs`` (no-argument callables, e.g. ``lambda: run_cli(...)``) in a thread of its own, at most
    two at a time, and return their results in order (the first exception is raised once all ended). For runs that
    are independent and single-threaded (train_rm / train_dpo on the CPU backend: most of their time is one
    Python thread importing OpenRLHF), so that on a 2-core machine two of them take about the time of one. Not
    for PPO runs: each needs 3-5 GB and a Ray instance of its own."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(run) for run in runs]
    return [future.result() for future in futures]
