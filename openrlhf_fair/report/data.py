"""The report's inputs and typed results: labelled pairs, the rewards each model gave them, saved rewards files.

Imports torch only (no openrlhf).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from openrlhf_fair.errors import DataError, ReportError

__all__ = ["PairSet", "ReportError", "ScoredRun", "load_pair_rewards", "load_pairs", "small_groups",
           "write_pair_rewards"]

# A group with fewer pairs than this gets a warning: its accuracy and correlation are noise.
SMALL_GROUP = 10


def load_pairs(
    path,
    *,
    group_key: str = "category",
    prompt_key: str | None = "prompt",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
    split: str | None = None,
    split_key: str = "split",
    max_pairs: int | None = None,
) -> list[dict]:
    """Rows of a .jsonl / .jsonl.gz / .json (list) file, checked for the needed columns, optionally one split.

    File, row and group-label rules are the ones training's pre-run check applies (`openrlhf_fair.checks.data`):
    a null, missing or empty group label, bytes that are not UTF-8, a truncated .gz and labels that would share
    one metric name are refused, naming the file and rows. `prompt_key=None` means the responses carry the
    whole conversation (OpenRLHF's --data.prompt_key unset). Group labels come back as strings.
    """
    from openrlhf_fair.errors import DataError
    from openrlhf_fair.checks.data import check_group_names, checked_rows, group_label

    path = Path(path)
    if max_pairs is not None and max_pairs < 1:
        raise ReportError(f"--max-pairs must be >= 1, got {max_pairs}")
    if not path.is_file():
        raise ReportError(f"data file not found: {path}")
    text_keys = [k for k in (prompt_key, chosen_key, rejected_key) if k] + ([split_key] if split is not None else [])
    needed = text_keys + [group_key]
    rows = []
    try:
        for row_no, row in checked_rows(path, required=text_keys, group_key=group_key,
                                        group_flag=f"--group-key {group_key}"):
            missing = [k for k in needed if k not in row]
            if missing:
                raise ReportError(
                    f"{path}: row {row_no} has no column(s) {missing} (columns present: {sorted(row)}); "
                    f"needed: {needed} (see --group-key / --prompt-key / --chosen-key / --rejected-key / --split)")
            bad = [k for k in text_keys if not isinstance(row[k], str)]
            if bad:
                raise ReportError(f"{path}: row {row_no}: column(s) {bad} must be strings")
            rows.append(row)
        labels = [group_label(row[group_key]) for row in rows]
        check_group_names(set(labels), column=group_key, where=str(path))
    except DataError as e:
        raise ReportError(str(e)) from None
    for row, label in zip(rows, labels):
        row[group_key] = label
    if split is not None:
        rows = [r for r in rows if r[split_key] == split]
        if not rows:
            raise ReportError(f"{path}: no row has {split_key} == {split!r}")
    if max_pairs is not None:
        rows = rows[:max_pairs]
    return rows


@dataclass
class PairSet:
    """What every model of one report is scored on: per pair its group and response lengths (characters)."""

    groups: list[str]
    chosen_len: list[int]
    rejected_len: list[int]
    description: str = ""

    def __post_init__(self):
        if not (len(self.groups) == len(self.chosen_len) == len(self.rejected_len)) or not self.groups:
            raise ReportError("pairs: groups and lengths need one entry per pair, and at least one pair")

    @property
    def group_names(self) -> list[str]:
        return sorted(set(self.groups))

    @property
    def group_ids(self) -> torch.Tensor:
        index = {g: i for i, g in enumerate(self.group_names)}
        return torch.tensor([index[g] for g in self.groups], dtype=torch.int64)

    def counts(self) -> dict[str, int]:
        return {g: self.groups.count(g) for g in self.group_names}

    @classmethod
    def from_rows(cls, rows, group_key: str, chosen_key: str, rejected_key: str, description: str = ""):
        return cls([r[group_key] for r in rows], [len(r[chosen_key]) for r in rows],
                   [len(r[rejected_key]) for r in rows], description)


def small_groups(pairs: PairSet, threshold: int = SMALL_GROUP) -> dict[str, int]:
    """Groups with fewer than `threshold` pairs (their accuracy and correlations are noise)."""
    return {g: n for g, n in pairs.counts().items() if n < threshold}


@dataclass
class ScoredRun:
    """The rewards one saved model gave the pairs of a PairSet, in its order."""

    label: str  # the method's label: runs of one method (several training seeds) share it
    path: str
    chosen: torch.Tensor  # float64 (n,)
    rejected: torch.Tensor
    identical: torch.Tensor  # bool (n,): chosen and rejected tokens identical after truncation
    probe_rewards: tuple[torch.Tensor, torch.Tensor] | None = None  # --stereotype-probes: (more, less) rewards


def write_pair_rewards(path: Path, pairs: PairSet, runs: list[ScoredRun], group_key: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for k, run in enumerate(runs):
            for i, g in enumerate(pairs.groups):
                f.write(json.dumps({"model": run.label, "run": k, "path": run.path, "pair": i, group_key: g,
                                    "chosen": float(run.chosen[i]), "rejected": float(run.rejected[i]),
                                    "chosen_len": pairs.chosen_len[i], "rejected_len": pairs.rejected_len[i],
                                    "identical_after_truncation": bool(run.identical[i])}) + "\n")


def load_pair_rewards(path, group_key: str = "category") -> tuple[PairSet, list[ScoredRun]]:
    """Pairs and scored runs from a report's pair_rewards.jsonl (to report again without scoring)."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"rewards file not found: {path}")
    by_run: dict[tuple, list[dict]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    by_run.setdefault((row.get("run", row["model"]), row["model"]), []).append(row)
    except (ValueError, KeyError) as e:
        raise ReportError(f"{path} is not a pair_rewards.jsonl written by openrlhf-fair report: {e}") from e
    pairs, runs = None, []
    for (_, label), rows in by_run.items():
        rows.sort(key=lambda r: r["pair"])
        missing = [k for k in (group_key, "chosen", "rejected", "chosen_len", "rejected_len") if k not in rows[0]]
        if missing:
            raise ReportError(f"{path}: rows have no {missing} (see --group-key)")
        these = PairSet([r[group_key] for r in rows], [r["chosen_len"] for r in rows],
                        [r["rejected_len"] for r in rows], f"rewards from {path}")
        if pairs is None:
            pairs = these
        elif (these.groups, these.chosen_len, these.rejected_len) != (pairs.groups, pairs.chosen_len,
                                                                      pairs.rejected_len):
            raise ReportError(f"{path}: model {label!r} was scored on other pairs than the first model")
        runs.append(ScoredRun(label, rows[0].get("path", str(path)),
                              torch.tensor([r["chosen"] for r in rows], dtype=torch.float64),
                              torch.tensor([r["rejected"] for r in rows], dtype=torch.float64),
                              torch.tensor([bool(r.get("identical_after_truncation", False)) for r in rows])))
    return pairs, runs
