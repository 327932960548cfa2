"""The demo's data step: the bundled real pairs, no-signal pairs dropped, balanced train / eval / test subsets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import openrlhf_fair
from openrlhf_fair.errors import DemoError

__all__ = ["PACKAGE_DATA", "check_pair_counts", "last_turn", "prepare_data"]

# Shipped inside the package (the wheel carries it); examples/data in a checkout links here.
PACKAGE_DATA = Path(openrlhf_fair.__file__).resolve().parent / "data" / "helpful_harmless_pairs.jsonl.gz"


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


def last_turn(prompt: str) -> str:
    """The prompt from its last ``Human:`` turn on (HH-RLHF dialogues); a prompt with one turn or none unchanged.

    OpenRLHF truncates prompt + response on the right at --data.max_len, so a long dialogue leaves a short
    response (or none) in the window; the last request is what the responses answer."""
    start = prompt.rfind("Human:")
    return prompt[start:] if start > 0 else prompt


def prepare_data(args, tokenizer, data_dir: Path) -> dict:
    """Filter no-signal pairs, sample balanced train / eval / test subsets, write them as .jsonl; return a summary."""
    from openrlhf_fair.checks.tokenizer import identical_after_truncation
    from openrlhf_fair.report import load_pairs

    rng = random.Random(args.seed)
    summary = {"source": str(args.data), "max_len": args.max_len, "last_turn": bool(getattr(args, "last_turn", False)),
               "dropped_identical_after_truncation": {}}
    subsets = {}
    for split, n in (("train", args.train_pairs), ("test", args.test_pairs)):
        rows = load_pairs(args.data, group_key=args.group_key, split=split)
        if getattr(args, "last_turn", False):
            rows = [{**r, "prompt": last_turn(r["prompt"])} for r in rows]
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


def check_pair_counts(args) -> None:
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
