"""Debias the demo's Bradley-Terry reward models for length and for the group, then compare them with `report`.

    python examples/results/debias/measure.py --demo DEMO_OUT --out OUT [--seeds 42,43,44] [--strengths 0.5,1]
    python examples/results/debias/measure.py --demo DEMO_OUT --out OUT --report-only

The first form can run once per seed, in parallel (each writes OUT/pair_rewards_s<SEEDS>.jsonl and its timings);
the second runs `report` on all of them.

DEMO_OUT: a folder written by `openrlhf-fair demo --methods bt --seeds 3 --skip-report` (data/train.jsonl,
data/test.jsonl, models/bt_s42 ...). For every model it runs the real command line,
`openrlhf-fair debias --remove length` and `--remove group:category`, each at the given strengths, with the
directions estimated on the demo's training pairs (--holdout 0). The test pairs are then scored once per seed:
since a debiased checkpoint differs from its original only in the value head, its reward on a test response is
its head's weight (as OpenRLHF's loader reads it, bf16) times the original model's last-token hidden state. A spot
check scores some test pairs with the debiased checkpoint itself, the way `report` does, and records the largest
difference. The rewards go into a pair_rewards.jsonl that `openrlhf-fair report --rewards ... --baseline bt` turns
into the usual tables: paired differences to the original models, with 95% intervals over pairs and seeds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch


def run(cmd: list[str], log: Path) -> float:
    start = time.time()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        sys.exit(f"failed ({rc}): {' '.join(cmd)}; see {log}")
    return time.time() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--demo", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", default="42,43,44")
    p.add_argument("--strengths", default="0.5,1")
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--spot-check-pairs", type=int, default=32)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    exe = str(Path(sys.executable).parent / "openrlhf-fair")
    if args.report_only:
        files = sorted(out.glob("pair_rewards_s*.jsonl"))
        cmd = [exe, "report", "--baseline", "bt", "--out", str(out / "report")]
        for f in files:
            cmd += ["--rewards", str(f)]
        run(cmd, out / "logs" / "report.log")
        print(f"done: {out / 'report' / 'report.md'}")
        return

    from openrlhf_fair import cpu_backend

    cpu_backend.serve_missing_host_imports()
    from openrlhf_fair.debias import checkpoint
    from openrlhf_fair.report import data, scoring
    from openrlhf_fair.report.data import PairSet, ScoredRun

    demo = Path(args.demo)
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    strengths = [float(s) for s in args.strengths.split(",")]
    kinds = {"length": "length", "group": "group:category"}
    timings, spot = {}, {}

    test_rows = data.load_pairs(demo / "data" / "test.jsonl", group_key="category")
    pairs = PairSet.from_rows(test_rows, "category", "chosen", "rejected", "demo test pairs")
    runs = {"bt": []} | {f"{k}_s{s:g}": [] for k in kinds for s in strengths}
    for seed in args.seeds.split(","):
        model = demo / "models" / f"bt_s{seed}"
        folders = {}
        for kind, remove in kinds.items():
            target = out / "models" / f"bt_s{seed}_{kind}"
            if not target.exists():
                timings[target.name] = run(
                    [exe, "debias", "--model", str(model), "--data", str(demo / "data" / "train.jsonl"), "--remove",
                     remove, "--strength", args.strengths, "--holdout", "0", "--max-len", str(args.max_len),
                     "--batch-size", str(args.batch_size), "--device", "cpu", "--out", str(target)],
                    out / "logs" / f"{target.name}.log")
            for s in strengths:
                folders[f"{kind}_s{s:g}"] = target / f"strength_{s:g}" if len(strengths) > 1 else target

        start = time.time()
        rm, tokenizer = scoring.load_reward_model(model, device="cpu", dtype="float32")
        tokenized = scoring.tokenize_pairs(test_rows, tokenizer, args.max_len)
        states = checkpoint.hidden_states(rm, tokenized, batch_size=args.batch_size, desc=f"test pairs bt_s{seed}")
        del rm
        timings[f"test_hidden_states_s{seed}"] = time.time() - start
        runs["bt"].append(ScoredRun("bt", str(model), states.chosen_reward, states.rejected_reward, states.identical))
        for label, folder in folders.items():
            head = checkpoint.read_head(folder, "score")
            w = head.weight.to(checkpoint.LOADED_DTYPE).to(torch.float64).reshape(-1)
            chosen, rejected = states.chosen.double() @ w, states.rejected.double() @ w
            runs[label].append(ScoredRun(label, str(folder), chosen, rejected, states.identical))
        # spot check: the first debiased checkpoint scored by report's own path on a few test pairs
        label, folder = next(iter(folders.items()))
        k = args.spot_check_pairs
        rm, tokenizer = scoring.load_reward_model(folder, device="cpu", dtype="float32")
        c, r, _ = scoring.score_pairs(rm, tokenizer, test_rows[:k], max_len=args.max_len, batch_size=args.batch_size,
                                      desc=f"spot check {folder.name}")
        del rm
        mine = runs[label][-1]
        spot[f"bt_s{seed}/{label}"] = float(torch.cat([c - mine.chosen[:k], r - mine.rejected[:k]]).abs().max())

    all_runs = [run_ for label in runs for run_ in runs[label]]
    tag = "s" + args.seeds.replace(",", "_")
    data.write_pair_rewards(out / f"pair_rewards_{tag}.jsonl", pairs, all_runs, "category")
    (out / f"measure_{tag}.json").write_text(json.dumps({"wall_seconds": timings, "spot_check_max_abs_diff": spot},
                                                        indent=2) + "\n")
    print(f"done: {out / f'pair_rewards_{tag}.jsonl'}")


if __name__ == "__main__":
    main()
