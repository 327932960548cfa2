"""report.json and report.md from typed results: tables with 95% intervals, differences to the baseline (marked
when their interval excludes 0), per-seed values, per-group values and the Pareto view."""

from __future__ import annotations

import json
import math
from pathlib import Path

from openrlhf_fair.report.analysis import PARETO_CRITERIA, MethodResult
from openrlhf_fair.report.data import PairSet
from openrlhf_fair.report.intervals import Estimate
from openrlhf_fair.report.metrics import GROUP_METRICS, SUMMARY_METRICS, group_metric

__all__ = ["differences_table", "group_table", "pareto_table", "report_json", "report_markdown", "runs_table",
           "summary_table"]

# metric, column title, number format
SUMMARY_COLUMNS = [
    ("fairness/acc", "accuracy", "{:.3f}"),
    ("fairness/worst_group_acc", "worst-group acc", "{:.3f}"),
    ("fairness/reward_gap", "reward gap (raw)", "{:.3f}"),
    ("fairness/reward_gap_over_std", "gap / reward std", "{:.3f}"),
    ("fairness/reward_std", "reward std", "{:.3f}"),
    ("fairness/margin_gap", "margin gap", "{:.3f}"),
    ("fairness/jain", "Jain σ(m)", "{:.4f}"),
    ("fairness/gini", "Gini σ(m)", "{:.4f}"),
    ("fairness/length_corr", "corr(reward, length)", "{:+.3f}"),
]
DIFFERENCE_COLUMNS = [c for c in SUMMARY_COLUMNS if c[0] not in ("fairness/gini",)]


def fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return spec.format(value)


def fmt_estimate(e: Estimate, spec: str, mark: bool = False) -> str:
    text = f"{fmt(e.value, spec)} [{fmt(e.lo, spec)}, {fmt(e.hi, spec)}]"
    return f"**{text}**" if mark and e.excludes_zero else text


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _head(titles) -> list[str]:
    return [_row(titles), "|" + " --- |" * len(titles)]


def summary_table(results: list[MethodResult], pairs: PairSet) -> str:
    """One row per method: mean over its seeds and 95% interval (also what the CLI prints)."""
    lines = _head(["model", "seeds"] + [title for _, title, _ in SUMMARY_COLUMNS])
    groups = pairs.group_names
    for res in results:
        cells = [res.label, str(len(res.runs))]
        for key, _, spec in SUMMARY_COLUMNS:
            cell = fmt_estimate(res.metrics[key], spec)
            if key == "fairness/worst_group_acc":
                cell += f" ({res.extreme_group('acc', groups, highest=False)})"
            elif key == "fairness/reward_gap":
                cell += (f" ({res.extreme_group('reward', groups, True)} > "
                         f"{res.extreme_group('reward', groups, False)})")
            cells.append(cell)
        lines.append(_row(cells))
    return "\n".join(lines)


def differences_table(results: list[MethodResult], baseline: str) -> str:
    lines = _head(["model"] + [f"Δ {title}" for _, title, _ in DIFFERENCE_COLUMNS])
    for res in results:
        if res.vs_baseline:
            lines.append(_row([res.label] + [fmt_estimate(res.vs_baseline[k], "{:+.3f}" if "jain" not in k
                                                          else "{:+.4f}", mark=True)
                                             for k, _, _ in DIFFERENCE_COLUMNS]))
    return "\n".join(lines)


def runs_table(results: list[MethodResult]) -> str:
    """Each seed's own value on all pairs: the seed-to-seed spread behind the intervals."""
    lines = _head(["model", "run"] + [title for _, title, _ in SUMMARY_COLUMNS])
    for res in results:
        for run, values in zip(res.runs, res.per_run):
            lines.append(_row([res.label, Path(run.path).name or run.path]
                              + [fmt(values[k], spec) for k, _, spec in SUMMARY_COLUMNS]))
    return "\n".join(lines)


def group_table(results: list[MethodResult], pairs: PairSet) -> str:
    counts = pairs.counts()
    names = list(GROUP_METRICS)
    lines = _head(["model", "group", "pairs"] + names)
    for res in results:
        for g in pairs.group_names:
            lines.append(_row([res.label, g, str(counts[g])]
                              + [fmt_estimate(res.metrics[group_metric(m, g)], "{:+.3f}" if m == "length_corr"
                                              else "{:.3f}") for m in names]))
    return "\n".join(lines)


def pareto_table(results: list[MethodResult]) -> str:
    names = [name for name, _ in PARETO_CRITERIA]
    titles = {key: title for key, title, _ in SUMMARY_COLUMNS}
    specs = {key: spec for key, _, spec in SUMMARY_COLUMNS}
    lines = _head(["model"] + [f"{titles[n]} ({'up' if s > 0 else 'down'})" for n, s in PARETO_CRITERIA]
                  + ["dominated by (beyond noise)", "Pareto-optimal"])
    for res in results:
        lines.append(_row([res.label] + [fmt_estimate(res.metrics[n], specs[n]) for n in names]
                          + [", ".join(res.dominated_by) or "-", "no" if res.dominated_by else "yes"]))
    return "\n".join(lines)


def _estimates(d: dict[str, Estimate]) -> dict:
    return {k: v.as_json() for k, v in d.items()}


def report_json(results: list[MethodResult], pairs: PairSet, *, baseline: str, settings: dict,
                extra: dict | None = None) -> dict:
    doc = {
        "data": pairs.description,
        "settings": settings,
        "rewards": "raw value-head outputs (normalize_reward off)",
        "intervals": "95% percentile bootstrap over test pairs and, with several runs per model, over runs",
        "baseline": baseline,
        "group_pairs": pairs.counts(),
        "models": [
            {
                "label": res.label,
                "runs": [{"path": run.path, "pairs_identical_after_truncation": int(run.identical.sum()),
                          "metrics": values} for run, values in zip(res.runs, res.per_run)],
                "n_pairs": len(pairs.groups),
                "metrics": {k: v.value for k, v in res.metrics.items()},
                "intervals": {k: [v.lo, v.hi] for k, v in res.metrics.items()},
                "vs_baseline": _estimates(res.vs_baseline),
                "pareto_dominated_by": res.dominated_by,
                "worst_group": res.extreme_group("acc", pairs.group_names, highest=False),
                "highest_reward_group": res.extreme_group("reward", pairs.group_names, highest=True),
                "lowest_reward_group": res.extreme_group("reward", pairs.group_names, highest=False),
            }
            for res in results
        ],
    }
    doc.update(extra or {})
    return doc


def _meanings() -> str:
    lines = [f"- **{k}**: {v}." for k, v in SUMMARY_METRICS.items()]
    lines += [f"- **fairness/{k}/GROUP**: {v}." for k, v in GROUP_METRICS.items()]
    return "\n".join(lines) + "\n"


def report_markdown(results: list[MethodResult], pairs: PairSet, *, baseline: str, settings: dict,
                    group_key: str, warnings: list[str], plots: list[str], extra_sections: list[str]) -> str:
    ident = ", ".join(f"{res.label}: {sum(int(r.identical.sum()) for r in res.runs)}" for res in results)
    md = [
        "# Reward fairness report",
        "",
        f"Data: {pairs.description}. Group key: `{group_key}`.",
        "Rewards: raw value-head outputs (OpenRLHF's normalize_reward off). Settings: "
        + ", ".join(f"{k}={v}" for k, v in settings.items()) + ".",
        f"Pairs whose chosen and rejected tokens are identical after max_len truncation (scored, margin 0): {ident}.",
        "Every number is the mean over a model's runs (training seeds) with its 95% interval [lo, hi]: a "
        "percentile bootstrap over the test pairs and, with several runs, over the runs.",
        "",
    ] + [f"**Warning**: {w}" for w in warnings] + ([""] if warnings else []) + [
        "## Summary (one row per model)", "", summary_table(results, pairs), "",
    ]
    if len(results) > 1:
        md += [f"## Difference to `{baseline}` (paired over pairs and seeds; **bold**: the interval excludes 0)",
               "", differences_table(results, baseline), ""]
    if any(len(r.runs) > 1 for r in results):
        md += ["## Each run on all pairs (seed-to-seed spread)", "", runs_table(results), ""]
    md += ["## Per group", "", group_table(results, pairs), ""]
    if len(results) > 1:
        md += ["## Pareto view with intervals", "",
               "A model dominates another when it is no worse beyond noise on every criterion and better beyond "
               "noise on one (paired difference intervals).", "", pareto_table(results), ""]
    md += extra_sections + ["## What the columns mean", "", _meanings(), "## Plots", ""]
    md += [f"![{p}]({p})" for p in plots]
    return "\n".join(md) + "\n"


def write_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=2, allow_nan=True))
