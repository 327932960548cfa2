"""Shared test setup: offline, no torch.compile warm-up, small models built offline, and a measured CLI runner.

Fixtures:
- `tiny_llama`: a random 2-layer Llama + tokenizer (session-scoped folder, built in about a second).
- `minilm_rm`: all-MiniLM-L6-v2 with eos = [SEP], a real pretrained reward-model backbone.
- `smollm2`: SmolLM2-135M-Instruct as an HF folder (converted once from the GGUF, cached between runs).
- `preference_jsonl`: 64 small synthetic preference pairs (prompt/chosen/rejected) in a jsonl file.
- `run_cli`: runs a command line in its own session with a timeout and records its wall time, CPU time and
  peak memory (of the largest process); the table of every run is printed at the end of the session. Every
  process the run started (ranks, Ray daemons and actors, in any session) carries a marker in its environment:
  on timeout all of them are killed, and after the run the ones still alive are listed in
  ``result.leftovers`` (then killed), so a test can assert that a run cleaned up after itself.
- `free_port` / `reserve_port`: a TCP port for a child to listen on (torchrun/deepspeed --master_port), reserved
  for the test (or ``with reserve_port() as port:``), see `reserved_port`.
- `rm_workdir` / `rm_runs`: the train_rm runs several RM e2e modules share (tests/fair_rm_runs.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from fair_processes import kill_marked, new_marker, wait_for_exit
from fair_rm_runs import rm_runs, rm_workdir  # noqa: F401  (session fixtures shared by the RM e2e modules)

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # OpenRLHF's torch.compile'd helpers: 20 s warm-up on CPU
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

BIN = Path(sys.executable).parent
_E2E_RUNS: list[dict] = []


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from openrlhf_fair.fixtures import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny_llama")


def _cached(builder_name: str, folder: str) -> Path:
    from openrlhf_fair import fixtures

    try:
        return getattr(fixtures, builder_name)(fixtures.default_cache_dir() / folder)
    except fixtures.FixtureUnavailable as missing:
        pytest.skip(str(missing))


@pytest.fixture(scope="session")
def minilm_rm() -> Path:
    return _cached("minilm_reward_backbone", "minilm_reward_backbone")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return _cached("smollm2_hf", "smollm2_135m_instruct")


PROMPTS = ["How do I bake bread?", "What is the capital of France?", "How can I sleep better?", "Tell me a joke."]
GOOD = ["Here is a clear answer with the steps you need.", "Happy to help: here is what works best."]
BAD = ["No.", "I don't know, figure it out yourself."]


def make_preference_rows(n: int = 64) -> list[dict]:
    """Synthetic pairs where the chosen answer is always the polite, informative one."""
    return [
        {
            "prompt": f"Human: {PROMPTS[i % len(PROMPTS)]} (question {i})\n\nAssistant:",
            "chosen": f" {GOOD[i % len(GOOD)]}",
            "rejected": f" {BAD[(i // 2) % len(BAD)]}",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="session")
def preference_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in make_preference_rows()))
    return path


# --------------------------------------------------------------------------------------------- ports
# Ports for children to listen on come from below Linux's ephemeral range (default 32768-60999), where no
# bind(("", 0)) or outgoing connection of another process can take them between our choice and the child's
# bind, and above Ray's worker ports (10002-19999). A lock file per port keeps parallel test sessions on one
# machine apart for as long as the port is reserved.
_PORT_RANGE = (20000, 32000)
_PORT_LOCKS = Path(tempfile.gettempdir()) / "openrlhf_fair_test_ports"


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as torch's TCPStore: TIME_WAIT is free
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def reserved_port(host: str = "127.0.0.1"):
    """A free port no other test session on this machine gets and the kernel hands to no one else while the
    block runs (see _PORT_RANGE); pass it to the child that listens on it."""
    low, high = _PORT_RANGE[0], min(_PORT_RANGE[1], _ephemeral_start() - 1)
    _PORT_LOCKS.mkdir(exist_ok=True)
    rng = random.Random(f"{os.getpid()}-{time.monotonic_ns()}")
    for _ in range(500):
        port = rng.randint(low, high)
        lock = open(_PORT_LOCKS / f"{port}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        try:
            if _bindable(host, port):
                yield port
                return
        finally:
            lock.close()  # releases the lock
    raise RuntimeError(f"no free port in {low}-{high} after 500 tries")


@pytest.fixture(scope="session")
def reserve_port():
    """``with reserve_port() as port:`` for module-scoped runs (see `reserved_port`)."""
    return reserved_port


@pytest.fixture
def free_port():
    """A port reserved for this test (see `reserved_port`)."""
    with reserved_port() as port:
        yield port


# Runs the command as a child and writes its largest descendant's peak RSS (RUSAGE_CHILDREN counts every
# waited-for descendant, so torchrun's and the deepspeed launcher's ranks are included).
_MEASURE = (
    "import json, resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[2:])\n"
    "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "json.dump({'peak_rss_mb': usage.ru_maxrss / 1024, 'cpu_s': usage.ru_utime + usage.ru_stime}, open(sys.argv[1], 'w'))\n"
    "sys.exit(rc)\n"
)


@pytest.fixture(scope="session")
def run_cli(tmp_path_factory):
    """``run_cli(*argv, label=..., timeout=..., env=..., cwd=..., grace=...)``: run, measure, return the
    CompletedProcess with ``.leftovers`` ({pid: command line} alive ``grace`` s after the run ended, now killed)."""
    measure_dir = tmp_path_factory.mktemp("measure")
    numbers = itertools.count()  # a file name per run, also for runs started together from threads

    def run(*argv, label: str, timeout: float = 180, env: dict | None = None, cwd=None,
            grace: float = 20) -> subprocess.CompletedProcess:
        measure_file = measure_dir / f"{next(numbers)}.json"
        marker = new_marker()
        key, value = marker.split("=")
        full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {}), key: value}
        command = [sys.executable, "-c", _MEASURE, str(measure_file), *map(str, argv)]
        out_path, err_path = measure_file.with_suffix(".out"), measure_file.with_suffix(".err")
        started = time.perf_counter()
        # Output to files, not pipes: a process left behind that holds a pipe would block reading it to its end.
        with open(out_path, "w") as out, open(err_path, "w") as err:
            child = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=full_env,
                                     cwd=cwd or measure_dir, start_new_session=True)
        try:
            child.wait(timeout=timeout)
        except BaseException as stop:  # timeout or Ctrl-C: the whole run goes, not only its first process
            killed = kill_marked(marker, session=child.pid)
            child.wait()
            if not isinstance(stop, subprocess.TimeoutExpired):
                raise
            _E2E_RUNS.append({"label": label, "wall_s": time.perf_counter() - started, "cpu_s": float("nan"),
                              "peak_rss_mb": float("nan"), "rc": "timeout"})
            raise subprocess.TimeoutExpired(command, timeout, output=out_path.read_text() + f"\n[killed {len(killed)} "
                                            "processes of the run]", stderr=err_path.read_text()) from None
        stdout, stderr = out_path.read_text(), err_path.read_text()
        wall = time.perf_counter() - started
        leftovers = wait_for_exit(marker, grace)
        kill_marked(marker, session=child.pid)
        result = subprocess.CompletedProcess(command, child.returncode, stdout, stderr)
        result.leftovers = leftovers
        usage = json.loads(measure_file.read_text()) if measure_file.exists() else {}
        _E2E_RUNS.append({"label": label, "wall_s": wall, "cpu_s": usage.get("cpu_s", float("nan")),
                          "peak_rss_mb": usage.get("peak_rss_mb", float("nan")), "rc": result.returncode})
        return result

    return run


def pytest_terminal_summary(terminalreporter):
    if not _E2E_RUNS:
        return
    terminalreporter.section("openrlhf-fair end-to-end runs")
    terminalreporter.write_line("   wall  CPU(all processes)  peak RSS (largest process)")
    for run in _E2E_RUNS:
        terminalreporter.write_line(
            f"{run['wall_s']:6.1f} s {run['cpu_s']:8.1f} s {run['peak_rss_mb']:14.0f} MB   rc={run['rc']}  {run['label']}"
        )
