"""Shared test setup: offline, no torch.compile warm-up, small models built offline, and a measured CLI runner.

Fixtures:
- `tiny_llama`: a random 2-layer Llama + tokenizer (session-scoped folder, built in about a second).
- `minilm_rm`: all-MiniLM-L6-v2 with eos = [SEP], a real pretrained reward-model backbone.
- `smollm2`: SmolLM2-135M-Instruct as an HF folder (converted once from the GGUF, cached between runs).
- `preference_jsonl`: 64 small synthetic preference pairs (prompt/chosen/rejected) in a jsonl file.
- `run_cli`: runs a command line in a subprocess with a timeout and records its wall time, CPU time and
  peak memory (of the largest process); the table of every run is printed at the end of the session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
    """``run_cli(*argv, label=..., timeout=..., env=..., cwd=...)``: run, measure, return the CompletedProcess."""
    measure_dir = tmp_path_factory.mktemp("measure")

    def run(*argv, label: str, timeout: float = 180, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
        measure_file = measure_dir / f"{len(_E2E_RUNS)}.json"
        full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(measure_file), *map(str, argv)],
            capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd or measure_dir,
        )
        wall = time.perf_counter() - started
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
