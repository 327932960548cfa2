"""From scored runs to typed results: per method, every metric as mean over seeds with a 95% interval, the
paired difference to a baseline method, and the Pareto view with intervals (pure torch).

Pareto view: model A *dominates* B when, on every criterion, the paired difference A - B is not worse beyond
noise (its interval does not exclude 0 on B's side), and on at least one it is better beyond noise (interval
excludes 0 on A's side). Differences within noise count as ties, so a model that is better only within noise
and worse beyond it is dominated; a model nobody dominates is Pareto-optimal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from openrlhf_fair.report.data import PairSet, ScoredRun
from openrlhf_fair.errors import ReportError
from openrlhf_fair.report.intervals import Estimate, difference, draw_indices, estimate, method_draws
from openrlhf_fair.report.metrics import pair_metrics

__all__ = ["PARETO_CRITERIA", "MethodResult", "analyse", "group_runs"]

# (metric, +1 if higher is better, -1 if lower is better)
PARETO_CRITERIA = (("fairness/acc", +1), ("fairness/reward_gap_over_std", -1), ("fairness/length_corr", -1))


@dataclass
class MethodResult:
    """One method (one label): its runs, every metric with its interval, and its difference to the baseline."""

    label: str
    runs: list[ScoredRun]
    metrics: dict[str, Estimate]  # mean over runs, 95% interval over pairs (and seeds)
    per_run: list[dict[str, float]]  # each run's value on all pairs
    vs_baseline: dict[str, Estimate] = field(default_factory=dict)  # empty for the baseline itself
    dominated_by: list[str] = field(default_factory=list)  # Pareto view
    draws: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # metric -> (B,) bootstrap values

    def value(self, name: str) -> float:
        return self.metrics[name].value

    def extreme_group(self, metric: str, groups: list[str], highest: bool) -> str:
        from openrlhf_fair.report.metrics import group_metric

        values = {g: self.value(group_metric(metric, g)) for g in groups}
        values = {g: v for g, v in values.items() if v == v}
        return (max if highest else min)(values, key=values.get)


def group_runs(runs: list[ScoredRun]) -> dict[str, list[ScoredRun]]:
    """Runs by method label, in order of first appearance."""
    by_label: dict[str, list[ScoredRun]] = {}
    for run in runs:
        by_label.setdefault(run.label, []).append(run)
    return by_label


def _run_metrics(pairs: PairSet, run: ScoredRun, pair_idx: torch.Tensor | None) -> dict[str, torch.Tensor]:
    gid = pairs.group_ids
    clen = torch.tensor(pairs.chosen_len, dtype=torch.float64)
    rlen = torch.tensor(pairs.rejected_len, dtype=torch.float64)
    c, r = run.chosen, run.rejected
    if pair_idx is not None:
        c, r, gid, clen, rlen = c[pair_idx], r[pair_idx], gid[pair_idx], clen[pair_idx], rlen[pair_idx]
    return pair_metrics(c, r, gid, pairs.group_names, clen, rlen)


def _point_metrics(pairs: PairSet, run: ScoredRun) -> dict[str, float]:
    """A run's value of every metric on all pairs. The metrics that training's eval logs also report come from
    the one shared definition, `measures.pairwise_eval_metrics` (allocations sigmoid(margin), T = 1); the
    resampled values behind the intervals come from `pair_metrics`; both are `measures.batched_pair_metrics`."""
    from openrlhf_fair.core.measures import pairwise_eval_metrics

    values = {k: float(v[0]) for k, v in _run_metrics(pairs, run, None).items()}
    shared = pairwise_eval_metrics(run.chosen, run.rejected, tau=-1.0, temperature=1.0, group_ids=pairs.group_ids,
                                   group_names=pairs.group_names)
    values.update({k: v for k, v in shared.items() if k in values})
    return values


def analyse(pairs: PairSet, runs: list[ScoredRun], *, baseline: str | None = None, resamples: int = 1000,
            seed: int = 0) -> list[MethodResult]:
    """Typed results per method (runs sharing a label are one method's seeds); baseline: a label (default the
    first method)."""
    by_label = group_runs(runs)
    if not by_label:
        raise ReportError("no model to report")
    baseline = baseline if baseline is not None else next(iter(by_label))
    if baseline not in by_label:
        raise ReportError(f"--baseline {baseline!r} is not one of the models ({', '.join(by_label)})")
    for run in runs:
        if run.chosen.numel() != len(pairs.groups):
            raise ReportError(f"model {run.label!r} ({run.path}) has {run.chosen.numel()} rewards for "
                              f"{len(pairs.groups)} pairs")
    plan = draw_indices(len(pairs.groups), [len(v) for v in by_label.values()], resamples, seed)
    draws, results = {}, []
    for label, method_runs in by_label.items():
        per_run = [_point_metrics(pairs, run) for run in method_runs]
        draws[label] = method_draws([_run_metrics(pairs, run, plan.pairs) for run in method_runs],
                                    plan.runs[len(method_runs)])
        points = {k: sum(p[k] for p in per_run) / len(per_run) for k in per_run[0]}
        results.append(MethodResult(label, method_runs, {k: estimate(points[k], draws[label][k]) for k in points},
                                    per_run, draws=draws[label]))
    base = next(r for r in results if r.label == baseline)
    for res in results:
        if res is not base:
            res.vs_baseline = {k: difference(res.value(k), base.value(k), draws[res.label][k], draws[baseline][k])
                               for k in res.metrics}
    for a in results:
        for b in results:
            if a is not b and _dominates(a, b, draws):
                b.dominated_by.append(a.label)
    return results


SCALE_WARNING_RATIO = 0.2
"""A model whose reward std is below this share of the baseline's gets a warning (`scale_warnings`)."""


def scale_warnings(results: list[MethodResult], baseline: str, ratio: float = SCALE_WARNING_RATIO) -> list[str]:
    """One warning per model whose reward std (all its rewards on these pairs) is below ``ratio`` times the
    baseline's: its raw differences (raw gap, margins) shrank with its scale, and PPO would see rewards on another
    scale than the baseline's unless they are normalised."""
    base = next(r for r in results if r.label == baseline).value("fairness/reward_std")
    out = []
    for res in results:
        std = res.value("fairness/reward_std")
        if res.label != baseline and base > 0 and std < ratio * base:
            out.append(f"{res.label}: reward std {std:.3g} is below a fifth of {baseline}'s ({base:.3g}): its rewards "
                       f"are on a much smaller scale, so its raw reward gap is not comparable (read gap / reward std), "
                       f"and they need normalising before PPO (OpenRLHF's --reward.normalize_enable)")
    return out


def _dominates(a: MethodResult, b: MethodResult, draws) -> bool:
    better = False
    for name, sign in PARETO_CRITERIA:
        d = difference(sign * a.value(name), sign * b.value(name), sign * draws[a.label][name],
                       sign * draws[b.label][name])
        if d.hi < 0:  # worse beyond noise
            return False
        better = better or d.lo > 0
    return better
