#!/usr/bin/env python
"""Time plain OpenRLHF `train_rm` against the same run with `--fairness_reg` and print the ratio.

    python examples/benchmark_train_rm.py                      # tiny random Llama, 256 pairs, 3 runs each (CPU)
    python examples/benchmark_train_rm.py --model PATH --pairs 2048 --max-len 512 --repeats 5   # a real model

Same seed, same data, same flags; the two variants alternate (A B B A A B ...) so drift in machine load hits
both alike, and the medians of >= 3 runs each are compared. Two times per run:
- fit: seconds inside RewardModelTrainer.fit (every training step, its logging, and evaluation), measured
  by a timer wrapped around the host's fit in both variants; this is where the fairness term costs anything;
- fit_cpu: the process CPU time of the same span, much less sensitive than wall time to other processes
  competing for the cores (on a busy machine, compare this one);
- wall: the whole process (imports, model and data loading, saving), what a user waits for.
"Plain" is `openrlhf train_rm` without any fairness flag, which runs `openrlhf.cli.train_rm` unchanged (the
e2e test checks it is bit-identical to `python -m openrlhf.cli.train_rm`); on a machine without CUDA both
variants use the add-on's CPU backend.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "helpful_harmless_pairs.jsonl.gz"

# Runs `openrlhf train_rm <args>` in-process with a timer around RewardModelTrainer.fit (same for both variants).
HARNESS = r"""
import functools, json, sys, time
from openrlhf_fair import cpu_backend
cpu_backend.maybe_activate("train_rm", None)
from openrlhf.trainer.rm_trainer import RewardModelTrainer
from openrlhf_fair.cli.runner import run_host_cli

timing_file, argv = sys.argv[1], sys.argv[2:]
host_fit = RewardModelTrainer.fit

@functools.wraps(host_fit)
def fit(self, *args, **kwargs):
    start, start_cpu = time.perf_counter(), time.process_time()
    try:
        return host_fit(self, *args, **kwargs)
    finally:
        with open(timing_file, "w") as f:
            json.dump({"fit_s": time.perf_counter() - start, "fit_cpu_s": time.process_time() - start_cpu}, f)

RewardModelTrainer.fit = fit
sys.exit(run_host_cli("train_rm", argv))
"""


def write_pairs(path: Path, split: str, n: int, chars: int) -> None:
    with gzip.open(DATA, "rt") as f:
        rows = [json.loads(line) for line in f]
    rows = [r for r in rows if r["split"] == split][:n]
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} {split} pairs in {DATA}, asked for {n}")
    with open(path, "w") as out:
        for r in rows:
            short = {k: r[k][-chars:] if k == "prompt" else r[k][:chars] for k in ("prompt", "chosen", "rejected")}
            out.write(json.dumps({**short, "category": r["category"]}) + "\n")


def loss_overhead_ms(fairness_flags: str, micro: int, threads=None, calls: int = 300) -> tuple[float, float]:
    """Median ms per forward+backward of the host's pairwise loss alone and with the fairness term, interleaved,
    on bf16 rewards of one micro-batch: the add-on's own cost per micro-step, free of run-to-run noise."""
    import torch
    import torch.nn.functional as F

    from openrlhf_fair.cli.flags import parse_fairness_args
    from openrlhf_fair.core.losses import FairPairWiseLoss

    def host_loss(chosen, reject, margin=None):  # OpenRLHF's PairWiseLoss formula
        return -F.logsigmoid(chosen - reject).mean()

    if threads:
        torch.set_num_threads(threads)
    config, _ = parse_fairness_args("train_rm", fairness_flags.split())
    fair = FairPairWiseLoss(host_loss, config)
    chosen, reject = torch.randn(micro, dtype=torch.bfloat16), torch.randn(micro, dtype=torch.bfloat16)
    times = {"host": [], "fair": []}
    for i in range(calls + 20):
        for name, fn in (("host", host_loss), ("fair", fair)):
            c = chosen.clone().requires_grad_()
            start = time.perf_counter()
            fn(c, reject, None).backward()
            if i >= 20:
                times[name].append(time.perf_counter() - start)
    return statistics.median(times["host"]) * 1e3, statistics.median(times["fair"]) * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: a tiny random Llama built offline)")
    parser.add_argument("--pairs", type=int, default=256, help="training pairs (default 256)")
    parser.add_argument("--eval-pairs", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=64, help="--data.max_len (default 64)")
    parser.add_argument("--micro", type=int, default=8, help="--train.micro_batch_size (default 8)")
    parser.add_argument("--batch", type=int, default=32, help="--train.batch_size (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant (default 3, minimum 3)")
    parser.add_argument("--fairness", default="--fairness_reg 0.1", help="the add-on flags of the fair variant")
    parser.add_argument("--workdir", help="keep data, logs and outputs here (default: a temporary folder)")
    parser.add_argument("--host-args", default="", help="extra OpenRLHF flags for both variants")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for both variants (e.g. 1 on a busy CPU machine; default: unchanged)")
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error("--repeats must be at least 3")

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_train_rm_"))
    workdir.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        from openrlhf_fair.fixtures import build_tiny_llama

        model = str(build_tiny_llama(workdir / "tiny_llama"))
    chars = max(40, args.max_len * 2)
    write_pairs(workdir / "train.jsonl", "train", args.pairs, chars)
    write_pairs(workdir / "test.jsonl", "test", args.eval_pairs, chars)

    def host_args(name: str) -> list[str]:
        return [
            "--model.model_name_or_path", model,
            "--data.dataset", f"json@{workdir}", "--data.dataset_split", "train",
            "--eval.dataset", f"json@{workdir}", "--eval.split", "test",
            "--data.prompt_key", "prompt", "--data.max_len", str(args.max_len),
            "--train.micro_batch_size", str(args.micro), "--train.batch_size", str(args.batch),
            "--train.max_epochs", "1", "--train.seed", "42",
            "--ckpt.output_dir", str(workdir / f"out_{name}"), "--logger.logging_steps", "1",
            *args.host_args.split(),
        ]

    variants = {"plain": [], "fair": args.fairness.split()}
    times: dict[str, dict[str, list[float]]] = {name: {"fit": [], "fit_cpu": [], "wall": []} for name in variants}
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    order = []
    for i in range(args.repeats):
        order += ["plain", "fair"] if i % 2 == 0 else ["fair", "plain"]
    for k, name in enumerate(order, 1):
        timing = workdir / f"timing_{name}.json"
        timing.unlink(missing_ok=True)
        cmd = [sys.executable, "-c", HARNESS, str(timing), *host_args(name), *variants[name]]
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        (workdir / f"run{k}_{name}.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0 or not timing.exists():
            print((result.stdout + result.stderr)[-3000:], file=sys.stderr)
            raise SystemExit(f"run {k} ({name}) failed with exit code {result.returncode}; log in {workdir}")
        measured = json.loads(timing.read_text())
        times[name]["fit"].append(measured["fit_s"])
        times[name]["fit_cpu"].append(measured["fit_cpu_s"])
        times[name]["wall"].append(wall)
        print(f"run {k:2d}/{len(order)} {name:5s}  fit {measured['fit_s']:7.2f} s   fit_cpu "
              f"{measured['fit_cpu_s']:7.2f} s   wall {wall:7.2f} s", flush=True)

    print(f"\ntrain_rm, {args.pairs} pairs, micro-batch {args.micro}, max_len {args.max_len}, model {model}")
    print(f"fair variant: {args.fairness}; median of {args.repeats} alternating runs each")
    for what in ("fit", "fit_cpu", "wall"):
        plain, fair = statistics.median(times["plain"][what]), statistics.median(times["fair"][what])
        print(f"{what:7s}: plain {plain:7.2f} s   fair {fair:7.2f} s   ratio fair/plain = {fair / plain:.4f}")
    host_ms, fair_ms = loss_overhead_ms(args.fairness, args.micro, args.threads)
    micro_steps = args.pairs // args.micro
    step_ms = statistics.median(times["plain"]["fit_cpu"]) / micro_steps * 1e3
    print(f"loss alone (forward + backward, {args.micro} pairs): host {host_ms:.3f} ms, with fairness {fair_ms:.3f} ms; "
          f"the difference is {100 * (fair_ms - host_ms) / step_ms:.2f}% of a plain micro-step ({step_ms:.1f} ms CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
