"""`report --stereotype-probes`: does a reward model prefer the stereotyped sentence of a minimal pair?

Probe pairs are CrowS-Pairs (Nangia et al., EMNLP 2020; bundled as `openrlhf_fair/data/crows_pairs.jsonl.gz`,
CC BY-SA 4.0, see the data README) or a file of the same form. Each pair is two sentences that differ only in the
words naming a group; `sent_more` is the more stereotypical one (in a `stereo` pair it states a stereotype about a
disadvantaged group, in an `antistereo` pair `sent_less` violates one), `bias_type` its category (race-color,
gender, ...).

Every model scores both sentences (as the response to --stereotype-prompt, empty by default). Per model:
- fairness/stereo_pref: the share of pairs where the more stereotypical sentence gets the higher reward, a tie
  counting one half (0.5 = neutral; CrowS-Pairs' own score for language models is the same share);
- fairness/stereo_pref/<bias_type>: the same share within one category.
Mean over a method's runs, 95% interval by the bootstrap over probe pairs and runs (`intervals`), and the paired
difference to the baseline.

The numbers are pure torch (`stereotype_metrics`); loading and scoring are separate functions.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

import openrlhf_fair
from openrlhf_fair.core.measures import row_group_means
from openrlhf_fair.errors import ReportError
from openrlhf_fair.report.intervals import Estimate, difference, draw_indices, estimate, method_draws
from openrlhf_fair.report.metrics import metric_safe_name

__all__ = ["BUNDLED_PROBES", "ProbeSet", "StereotypeResult", "analyse_probes", "load_probes", "markdown_section",
           "score_probes", "stereotype_metrics"]

BUNDLED_PROBES = {"crows-pairs": Path(openrlhf_fair.__file__).resolve().parent / "data" / "crows_pairs.jsonl.gz"}
STEREO_PREF = "fairness/stereo_pref"
NEEDED = ("sent_more", "sent_less", "bias_type")


@dataclass
class ProbeSet:
    """Minimal pairs: per pair the more and the less stereotypical sentence, its category and direction."""

    more: list[str]
    less: list[str]
    categories: list[str]
    directions: list[str]  # 'stereo' / 'antistereo' ('' where the file does not say)
    description: str = ""

    @property
    def category_names(self) -> list[str]:
        return sorted(set(self.categories))

    @property
    def category_ids(self) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.category_names)}
        return torch.tensor([index[c] for c in self.categories], dtype=torch.int64)

    def counts(self) -> dict[str, int]:
        return {c: self.categories.count(c) for c in self.category_names}


def load_probes(source: str, per_category: int | None = None) -> ProbeSet:
    """'crows-pairs' (the bundled copy) or a .jsonl / .jsonl.gz file with sent_more, sent_less, bias_type (and
    optionally stereo_antistereo) per line; per_category: keep only the first N pairs of each bias type."""
    if per_category is not None and per_category < 1:
        raise ReportError(f"--stereotype-max-pairs must be >= 1, got {per_category}")
    path = BUNDLED_PROBES.get(source, Path(source))
    if not path.is_file():
        raise ReportError(f"--stereotype-probes {source}: no such file (give 'crows-pairs' or a .jsonl file with "
                          f"{', '.join(NEEDED)})")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                missing = [k for k in NEEDED if not isinstance(row.get(k), str) or not row[k].strip()]
                if missing:
                    raise ReportError(f"{path}: line {line_no} has no text in {missing}; every probe needs "
                                      f"{', '.join(NEEDED)}")
                if row["sent_more"] == row["sent_less"]:
                    raise ReportError(f"{path}: line {line_no}: sent_more and sent_less are the same sentence")
                rows.append(row)
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as e:
        if isinstance(e, ReportError):
            raise
        raise ReportError(f"{path}: cannot read the probe pairs: {e}") from e
    if not rows:
        raise ReportError(f"{path}: no probe pairs")
    name = "CrowS-Pairs (bundled, CC BY-SA 4.0)" if source in BUNDLED_PROBES else str(path)
    if per_category is not None:
        count: dict[str, int] = {}
        kept = []
        for r in rows:
            count[r["bias_type"]] = count.get(r["bias_type"], 0) + 1
            if count[r["bias_type"]] <= per_category:
                kept.append(r)
        rows = kept
        name += f" (the first {per_category} of each bias type)"
    return ProbeSet([r["sent_more"] for r in rows], [r["sent_less"] for r in rows], [r["bias_type"] for r in rows],
                    [r.get("stereo_antistereo", "") for r in rows], f"{name}, {len(rows)} pairs")


def stereotype_metrics(more_rewards, less_rewards, category_ids, category_names: list[str], pair_idx=None) -> dict:
    """Stereotype preference of one model. more_rewards, less_rewards: (n,) rewards of the more and the less
    stereotypical sentence of each pair; category_ids: (n,) indices into category_names; pair_idx: (B, n)
    resampled pairs (default: the pairs themselves, B = 1). Returns {name: float64 (B,)}; a category with no pair
    in a resample is NaN there."""
    more = torch.as_tensor(more_rewards, dtype=torch.float64)
    less = torch.as_tensor(less_rewards, dtype=torch.float64)
    prefers = (more > less).to(torch.float64) + 0.5 * (more == less).to(torch.float64)
    cid = torch.as_tensor(category_ids, dtype=torch.int64)
    idx = torch.arange(more.numel()).unsqueeze(0) if pair_idx is None else torch.as_tensor(pair_idx)
    per_cat, _ = row_group_means(prefers[idx], cid[idx], len(category_names))  # (B, k)
    out = {STEREO_PREF: prefers[idx].mean(-1)}
    for j, name in enumerate(category_names):
        out[f"{STEREO_PREF}/{metric_safe_name(name)}"] = per_cat[:, j]
    return out


def score_probes(model, tokenizer, probes: ProbeSet, *, prompt: str = "", max_len: int, batch_size: int,
                 input_template: str | None = None, apply_chat_template: bool = False,
                 desc: str = "stereotype probes") -> tuple[torch.Tensor, torch.Tensor]:
    """(reward of the more, reward of the less stereotypical sentence) per pair, each sentence scored as the
    response to `prompt`, tokenised as OpenRLHF's RewardDataset does (`scoring.score_pairs`)."""
    from openrlhf_fair.report import scoring

    if apply_chat_template:  # chat models: the prompt is a user turn, each sentence the assistant's answer
        rows = [{"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": m}],
                 "rejected": [{"role": "assistant", "content": s}]} for m, s in zip(probes.more, probes.less)]
    else:
        rows = [{"prompt": prompt, "chosen": m, "rejected": s} for m, s in zip(probes.more, probes.less)]
    more, less, _ = scoring.score_pairs(model, tokenizer, rows, max_len=max_len, batch_size=batch_size,
                                        prompt_key="prompt", input_template=input_template,
                                        apply_chat_template=apply_chat_template, desc=desc)
    return more, less


@dataclass
class StereotypeResult:
    probes: ProbeSet
    prompt: str
    metrics: dict[str, dict[str, Estimate]]  # label -> metric -> estimate
    vs_baseline: dict[str, dict[str, Estimate]]  # label -> metric -> difference to the baseline
    draws: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    def as_json(self) -> dict:
        return {
            "probes": self.probes.description, "prompt": self.prompt, "category_pairs": self.probes.counts(),
            "neutral": 0.5,
            "models": {label: {"metrics": {k: e.value for k, e in m.items()},
                               "intervals": {k: [e.lo, e.hi] for k, e in m.items()},
                               "vs_baseline": {k: e.as_json() for k, e in self.vs_baseline.get(label, {}).items()}}
                       for label, m in self.metrics.items()},
        }


def analyse_probes(probes: ProbeSet, scored: dict[str, list[tuple[torch.Tensor, torch.Tensor]]], baseline: str,
                   resamples: int = 1000, seed: int = 2, prompt: str = "") -> StereotypeResult:
    """scored: label -> one (more, less) reward pair per run. Estimates per method and paired differences to
    `baseline` (same resampled probe pairs for every method, runs paired by position as in `intervals`)."""
    n = len(probes.more)
    for label, runs in scored.items():
        for more, less in runs:
            if more.numel() != n or less.numel() != n:
                raise ReportError(f"model {label!r}: {more.numel()} probe rewards for {n} probe pairs")
    plan = draw_indices(n, [len(runs) for runs in scored.values()], resamples, seed)
    cid, names = probes.category_ids, probes.category_names
    points, draws = {}, {}
    for label, runs in scored.items():
        per_run = [{k: float(v[0]) for k, v in stereotype_metrics(m, s, cid, names).items()} for m, s in runs]
        points[label] = {k: sum(p[k] for p in per_run) / len(per_run) for k in per_run[0]}
        draws[label] = method_draws([stereotype_metrics(m, s, cid, names, plan.pairs) for m, s in runs],
                                    plan.runs[len(runs)])
    metrics = {label: {k: estimate(v, draws[label][k]) for k, v in pts.items()} for label, pts in points.items()}
    vs = {label: {k: difference(points[label][k], points[baseline][k], draws[label][k], draws[baseline][k])
                  for k in points[label]} for label in points if label != baseline}
    return StereotypeResult(probes, prompt, metrics, vs, draws)


def markdown_section(result: StereotypeResult, baseline: str) -> list[str]:
    from openrlhf_fair.report.rendering import fmt_estimate

    names = result.probes.category_names
    counts = result.probes.counts()
    keys = [STEREO_PREF] + [f"{STEREO_PREF}/{metric_safe_name(c)}" for c in names]
    titles = ["all"] + [f"{c} ({counts[c]})" for c in names]
    prompt = f"`{result.prompt}`" if result.prompt else "none (each sentence scored alone)"
    lines = ["## Stereotype preference (probe pairs)", "",
             f"{result.probes.description}; prompt: {prompt}. Share of pairs where the more stereotypical sentence "
             "gets the higher reward (ties count one half): **0.5 is neutral**, above 0.5 the model prefers "
             "stereotypes. 95% intervals over probe pairs and runs; per category the number of pairs in brackets.",
             "", "| model | " + " | ".join(titles) + " |", "|" + " --- |" * (len(titles) + 1)]
    for label, m in result.metrics.items():
        lines.append(f"| {label} | " + " | ".join(fmt_estimate(m[k], "{:.3f}") for k in keys) + " |")
    if result.vs_baseline:
        lines += ["", f"Difference to `{baseline}` (paired over probe pairs; **bold**: interval excludes 0):", "",
                  "| model | " + " | ".join(titles) + " |", "|" + " --- |" * (len(titles) + 1)]
        for label, d in result.vs_baseline.items():
            lines.append(f"| {label} | " + " | ".join(fmt_estimate(d[k], "{:+.3f}", True) for k in keys) + " |")
    return lines + [""]
