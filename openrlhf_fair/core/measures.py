"""Inequality measures and group-wise summaries for reports and logs, and the one per-group mean.

The eval metrics of pairs have one implementation, `batched_pair_metrics` (B resamples at once, used by the
report); `pairwise_eval_metrics` (training's eval logs) is its one-row form plus Lan et al.'s F.

Conventions:
- Inputs are tensors (or anything `torch.as_tensor` takes) of any float or integer dtype and any shape
  (flattened); they are computed in float64 on their own device.
- Scalar measures return python floats; `group_means` returns tensors (float64 means, int64 counts) on the
  input's device.
- NaN/Inf, empty input, and negative values where a measure needs non-negative (or positive) values raise
  `FairnessInputError` with a message saying which.
- Empty groups get mean NaN and count 0 (documented result, not an error); `group_gap` and the worst group
  of `batched_pair_metrics` ignore them.

This module imports torch only, never openrlhf.
"""

from __future__ import annotations

import math
import re

import torch

from openrlhf_fair.errors import FairnessInputError
from openrlhf_fair.core.fairness import exp_or_inf, fairness_sign, log_fairness, log_fairness_of_margins

# Every metric the add-on logs or reports is named METRIC_NAMESPACE + name (RM, DPO, PPO and the report alike);
# PPO's per-label mean rewards are LABEL_REWARD_PREFIX + metric_safe_name(label).
METRIC_NAMESPACE = "fairness/"
LABEL_REWARD_PREFIX = METRIC_NAMESPACE + "label_reward/"

__all__ = [
    "LABEL_REWARD_PREFIX",
    "METRIC_NAMESPACE",
    "batched_pair_metrics",
    "gini_coefficient",
    "group_means",
    "group_gap",
    "jain_index",
    "metric_safe_name",
    "pairwise_eval_metrics",
    "row_group_means",
]


def _values(x, what: str = "values") -> torch.Tensor:
    """Flattened float64 copy of `x` (python sequences are read as float64); rejects empty and NaN/Inf input."""
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float64)
    if x.is_complex():
        raise FairnessInputError(f"{what} must be real, got dtype {x.dtype}")
    x = x.detach().reshape(-1).to(torch.float64)
    if x.numel() == 0:
        raise FairnessInputError(f"{what} is empty")
    if not bool(torch.isfinite(x).all()):
        raise FairnessInputError(f"{what} contains {int((~torch.isfinite(x)).sum())} NaN/Inf value(s)")
    return x


def _non_negative(x, what: str) -> torch.Tensor:
    """Values that must be >= 0 with a positive total (an allocation)."""
    x = _values(x, what)
    if bool((x < 0).any()):
        raise FairnessInputError(f"{what} needs non-negative values, got {int((x < 0).sum())} negative (min {float(x.min()):.6g})")
    if float(x.sum()) <= 0:
        raise FairnessInputError(f"{what} needs a positive total, all values are 0")
    return x


def _jain_rows(x: torch.Tensor) -> torch.Tensor:
    """Jain's index of each row of a (B, n) float64 allocation."""
    return x.sum(-1) ** 2 / (x.shape[-1] * (x**2).sum(-1))


def _gini_rows(x: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of each row of a (B, n) float64 allocation, via the sorted values."""
    n = x.shape[-1]
    ranks = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    xs = torch.sort(x, -1).values
    return 2.0 * (ranks * xs).sum(-1) / (n * xs.sum(-1)) - (n + 1.0) / n


def jain_index(x) -> float:
    """Jain's index (sum x)^2 / (n * sum x^2) of a non-negative allocation: 1/n (one item has all) .. 1 (equal).

    Equals exp(`log_fairness`(x, tau=-1)), Lan et al.'s F at tau = -1.
    """
    return float(_jain_rows(_non_negative(x, "jain_index input").unsqueeze(0))[0])


def gini_coefficient(x) -> float:
    """Gini coefficient of a non-negative allocation: 0 (equal) .. 1 - 1/n (one item has all).

    mean_{i,j} |x_i - x_j| / (2 * mean x), evaluated via the sorted values in O(n log n).
    """
    return float(_gini_rows(_non_negative(x, "gini_coefficient input").unsqueeze(0))[0])


# ----------------------------------------------------------------------------------------------- groups
def _group_ids(group_ids, n: int, device, num_groups: int | None = None) -> tuple[torch.Tensor, int]:
    """(flattened int64 ids, num_groups) after the checks; num_groups defaults to max id + 1."""
    g = group_ids if isinstance(group_ids, torch.Tensor) else torch.as_tensor(group_ids)
    g = g.reshape(-1)
    if g.is_floating_point() or g.is_complex() or g.dtype == torch.bool:
        raise FairnessInputError(f"group_ids must be an integer tensor, got dtype {g.dtype}")
    if g.numel() != n:
        raise FairnessInputError(f"group_ids has {g.numel()} entries but there are {n} values")
    if bool((g < 0).any()):
        raise FairnessInputError("group_ids must be >= 0")
    top = int(g.max()) + 1
    if num_groups is None:
        num_groups = top
    elif top > num_groups:
        raise FairnessInputError(f"group id {top - 1} is out of range for num_groups = {num_groups}")
    return g.to(device=device, dtype=torch.int64), num_groups


def row_group_means(values: torch.Tensor, group_ids: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The add-on's one per-group mean: per row of `values` (B, n), the mean over each group id in [0, num_groups).

    `group_ids` (B, n) int64 are not checked (`group_means` checks them). Computed in the values' dtype and
    differentiable (the losses use it on allocations). Returns (means (B, k), NaN where a row has no item of a
    group; counts (B, k) int64).
    """
    rows = values.shape[0]
    flat = (group_ids + num_groups * torch.arange(rows, device=group_ids.device).unsqueeze(-1)).reshape(-1)
    counts = torch.bincount(flat, minlength=rows * num_groups).reshape(rows, num_groups)
    sums = torch.zeros(rows * num_groups, dtype=values.dtype, device=values.device).index_add(0, flat, values.reshape(-1))
    sums = sums.reshape(rows, num_groups)
    return torch.where(counts > 0, sums / counts.clamp(min=1), math.nan), counts


def group_gap(means: torch.Tensor) -> torch.Tensor:
    """Highest minus lowest of the non-NaN entries of each row of `means` (B, k) (NaN marks an empty group)."""
    present = ~torch.isnan(means)
    return torch.where(present, means, -math.inf).amax(-1) - torch.where(present, means, math.inf).amin(-1)


def group_means(values, group_ids, num_groups: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group mean of `values` over integer `group_ids` in [0, num_groups), inputs checked and flattened.

    Returns (means float64, counts int64), each of length num_groups (default max id + 1). A group with no
    item has mean NaN and count 0.
    """
    v = _values(values, "group values")
    g, num_groups = _group_ids(group_ids, v.numel(), v.device, num_groups)
    means, counts = row_group_means(v.unsqueeze(0), g.unsqueeze(0), num_groups)
    return means[0], counts[0]


def metric_safe_name(label) -> str:
    """``label`` (e.g. a group name from the data) as a metric-name part loggers accept: [0-9A-Za-z_.-] only."""
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", str(label)) or "_"


def metric_safe_names(labels) -> dict[str, str]:
    """``{label: metric_safe_name(label)}`` for the distinct labels, refusing two labels that would share one
    name (``help ful`` and ``help/ful``: one group's metrics would overwrite the other's)."""
    names: dict[str, str] = {}
    owner: dict[str, str] = {}
    for label in dict.fromkeys(str(label) for label in labels):
        name = metric_safe_name(label)
        if name in owner:
            raise FairnessInputError(
                f"group labels {owner[name]!r} and {label!r} both become the metric name {name!r} (metric names keep "
                "only letters, digits and _ . -): rename one of them in the data"
            )
        owner[name] = label
        names[label] = name
    return names


# ----------------------------------------------------------------------------------------------- evaluation
def batched_pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor, group_ids: torch.Tensor | None = None,
                         num_groups: int = 0, temperature: float = 1.0) -> tuple[dict, dict]:
    """The pair metrics training's eval logs and the report share, for B rows of n pairs at once (one row: B = 1).

    chosen, rejected: float64 (B, n); group_ids: int64 (B, n) in [0, num_groups) or None (inputs not checked:
    `pairwise_eval_metrics` checks them). With margins m = chosen - rejected and allocations
    x = sigmoid(m / temperature), returns (summary, per_group):
    - summary {name: (B,)}: ``fairness/acc`` (share of pairs with chosen > rejected; ties count as wrong, as in
      OpenRLHF), ``fairness/jain`` and ``fairness/gini`` of x; with group ids also the best-minus-worst gaps
      ``fairness/acc_gap``, ``fairness/reward_gap``, ``fairness/margin_gap`` and ``fairness/worst_group_acc``
      over each row's non-empty groups;
    - per_group {name: (B, k)} (empty without group ids): ``acc``, ``reward`` (mean of the group's chosen and
      rejected rewards together), ``margin``, ``x`` (mean allocation), NaN for a group with no pair in a row,
      and ``count``.
    """
    margin = chosen - rejected
    x = torch.sigmoid(margin / temperature)
    correct = (chosen > rejected).to(torch.float64)
    summary = {"fairness/acc": correct.mean(-1), "fairness/jain": _jain_rows(x), "fairness/gini": _gini_rows(x)}
    if group_ids is None:
        return summary, {}
    acc, count = row_group_means(correct, group_ids, num_groups)
    reward, _ = row_group_means(torch.cat([chosen, rejected], -1), torch.cat([group_ids, group_ids], -1), num_groups)
    per_group = {"acc": acc, "reward": reward, "margin": row_group_means(margin, group_ids, num_groups)[0],
                 "x": row_group_means(x, group_ids, num_groups)[0], "count": count}
    summary["fairness/acc_gap"] = group_gap(acc)
    summary["fairness/reward_gap"] = group_gap(reward)
    summary["fairness/margin_gap"] = group_gap(per_group["margin"])
    summary["fairness/worst_group_acc"] = torch.where(torch.isnan(acc), math.inf, acc).amin(-1)
    return summary, per_group


def pairwise_eval_metrics(
    chosen, reject, *, tau: float, temperature: float, group_ids=None, group_names=None
) -> dict[str, float]:
    """The fairness metrics of a reward model (or DPO's implicit rewards) on preference pairs, as plain floats:
    `batched_pair_metrics` of one row, inputs checked, plus Lan et al.'s F.

    With margins m_i = chosen_i - reject_i and allocations x_i = sigmoid(m_i / temperature) (the quantity the
    fairness losses act on): ``fairness/F`` (Lan et al.'s f_tau(x) / n, -inf/inf where it overflows),
    ``fairness/jain`` and ``fairness/gini`` of x. With ``group_ids`` (an integer id per pair) and
    ``group_names`` (id -> name; default the ids themselves), per non-empty group g: ``fairness/acc/<g>``
    (share of pairs with chosen > reject), ``fairness/reward/<g>`` (mean reward of the group's chosen and
    rejected responses together), ``fairness/margin/<g>`` (mean margin); the best-minus-worst gaps of the three
    (``fairness/acc_gap``, ``fairness/reward_gap``, ``fairness/margin_gap``), ``fairness/worst_group_acc`` and,
    with >= 2 non-empty groups, ``fairness/F_groups`` (F over the groups' mean allocations, as group-mode
    training computes it). <g> is the group's `metric_safe_names` name (two names that would collide raise).
    """
    c, r = _values(chosen, "chosen rewards"), _values(reject, "rejected rewards")
    if c.numel() != r.numel():
        raise FairnessInputError(f"chosen ({c.numel()}) and rejected ({r.numel()}) rewards differ in length")
    margins = c - r
    sign = fairness_sign(tau)
    _non_negative(torch.sigmoid(margins / temperature), "jain_index input")
    g = k = None
    if group_ids is not None:
        g, k = _group_ids(group_ids, c.numel(), c.device, None if group_names is None else len(group_names))
        if group_names is None:
            group_names = [str(i) for i in range(k)]
    summary, per_group = batched_pair_metrics(c.unsqueeze(0), r.unsqueeze(0), None if g is None else g.unsqueeze(0),
                                              k or 0, temperature)
    out = {
        "fairness/jain": float(summary["fairness/jain"][0]),
        "fairness/gini": float(summary["fairness/gini"][0]),
        "fairness/F": sign * exp_or_inf(float(log_fairness_of_margins(margins, tau, temperature))),
    }
    if g is None:
        return out
    present = per_group["count"][0] > 0
    safe_names = metric_safe_names(group_names)
    for i, name in enumerate(group_names):
        if bool(present[i]):
            safe = safe_names[str(name)]
            for what in ("acc", "reward", "margin"):
                out[f"fairness/{what}/{safe}"] = float(per_group[what][0, i])
    for key in ("fairness/acc_gap", "fairness/reward_gap", "fairness/margin_gap", "fairness/worst_group_acc"):
        out[key] = float(summary[key][0])
    if int(present.sum()) >= 2:
        x_groups = per_group["x"][0]
        out["fairness/F_groups"] = sign * exp_or_inf(float(log_fairness(x_groups[present], tau, normalize=True)))
    return out
