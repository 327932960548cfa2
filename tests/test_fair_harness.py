"""The test harness itself (tests/conftest.py): runs are killed whole on timeout, leftovers are reported, and
reserved ports are free and not handed out twice. A harness that leaks processes or ports makes e2e tests flaky."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# A run that starts a grandchild in its own session (as Ray's daemons and launchers can) and writes its pid.
DETACHED = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen(['sleep', '120'], start_new_session=True)\n"
    "open(sys.argv[1], 'w').write(str(child.pid))\n"
    "time.sleep(float(sys.argv[2]))\n"
)


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def wait_for(path: Path, seconds: float = 30) -> int:
    deadline = time.monotonic() + seconds
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.1)
    return int(path.read_text())


def test_timeout_kills_the_whole_run_also_outside_its_session(run_cli, tmp_path):
    pid_file = tmp_path / "pid"
    with pytest.raises(subprocess.TimeoutExpired):
        run_cli(sys.executable, "-c", DETACHED, pid_file, "120", label="harness: timeout", timeout=5)
    pid = wait_for(pid_file)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid), f"the detached grandchild {pid} survived the timeout"


def test_processes_left_behind_are_reported_and_killed(run_cli, tmp_path):
    pid_file = tmp_path / "pid"
    result = run_cli(sys.executable, "-c", DETACHED, pid_file, "0", label="harness: leftover", timeout=60, grace=1)
    assert result.returncode == 0, result.stderr
    pid = int(pid_file.read_text())
    assert list(result.leftovers) == [pid] and "sleep 120" in result.leftovers[pid]
    time.sleep(0.5)
    assert not alive(pid)
    clean = run_cli(sys.executable, "-c", "print('hi')", label="harness: clean", timeout=60, grace=1)
    assert clean.returncode == 0 and clean.stdout == "hi\n" and clean.leftovers == {}


def test_reserved_ports_are_free_distinct_and_outside_the_ephemeral_range(reserve_port):
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    with reserve_port() as first, reserve_port() as second:
        assert first != second and first < low and second < low
        for port in (first, second):
            with socket.socket() as sock:  # a child can listen on it
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
                sock.listen()


def test_runs_started_together_keep_their_own_output_and_order(run_cli):
    """`fair_processes.concurrently`: results in the order given, each run's output its own (run_cli names its
    files per run, also from threads), both runs alive at the same time, and an error raised once all ended."""
    from fair_processes import concurrently

    overlap = "import sys, time; print(sys.argv[1], time.time()); time.sleep(1.5); print(time.time())"
    first, second = concurrently(*(lambda n=n: run_cli(sys.executable, "-c", overlap, n, label=f"harness: together {n}",
                                                       timeout=60, grace=1) for n in ("a", "b")))
    (a, a_start), (b, b_start) = (r.stdout.split()[:2] for r in (first, second))
    assert (a, b) == ("a", "b")
    assert float(b_start) < float(first.stdout.split()[2])  # b started before a ended: they ran together

    def fails():
        raise ValueError("one run failed")

    ended = []
    with pytest.raises(ValueError, match="one run failed"):
        concurrently(fails, lambda: ended.append(time.sleep(0.5)))
    assert ended == [None]  # the other run was not abandoned
