"""Inequality measures and group-wise summaries for reports and logs (not for losses: no gradients needed).

Conventions:
- Inputs are tensors (or anything `torch.as_tensor` takes) of any float or integer dtype and any shape
  (flattened); they are computed in float64 on their own device.
- Scalar measures return python floats; `group_means` / `group_accuracy` return tensors (float64 means,
  int64 counts) on the input's device.
- NaN/Inf, empty input, and negative values where a measure needs non-negative (or positive) values raise
  `FairnessInputError` with a message saying which.
- Empty groups get mean NaN and count 0 (documented result, not an error); `worst_group` and
  `best_minus_worst_gap` ignore them.

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
    "best_minus_worst_gap",
    "gini_coefficient",
    "group_accuracy",
    "group_means",
    "jain_index",
    "metric_safe_name",
    "pairwise_eval_metrics",
    "worst_group",
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


def jain_index(x) -> float:
    """Jain's index (sum x)^2 / (n * sum x^2) of a non-negative allocation: 1/n (one item has all) .. 1 (equal).

    Equals exp(`log_fairness`(x, tau=-1)), Lan et al.'s F at tau = -1.
    """
    x = _non_negative(x, "jain_index input")
    return float(x.sum() ** 2 / (x.numel() * (x**2).sum()))


def gini_coefficient(x) -> float:
    """Gini coefficient of a non-negative allocation: 0 (equal) .. 1 - 1/n (one item has all).

    mean_{i,j} |x_i - x_j| / (2 * mean x), evaluated via the sorted values in O(n log n).
    """
    x = _non_negative(x, "gini_coefficient input")
    n = x.numel()
    ranks = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    xs = torch.sort(x).values
    return float(2.0 * (ranks * xs).sum() / (n * xs.sum()) - (n + 1.0) / n)


# ----------------------------------------------------------------------------------------------- groups
def _group_ids(group_ids, n: int, device) -> torch.Tensor:
    g = group_ids if isinstance(group_ids, torch.Tensor) else torch.as_tensor(group_ids)
    g = g.reshape(-1)
    if g.is_floating_point() or g.is_complex() or g.dtype == torch.bool:
        raise FairnessInputError(f"group_ids must be an integer tensor, got dtype {g.dtype}")
    if g.numel() != n:
        raise FairnessInputError(f"group_ids has {g.numel()} entries but there are {n} values")
    if bool((g < 0).any()):
        raise FairnessInputError("group_ids must be >= 0")
    return g.to(device=device, dtype=torch.int64)


def group_means(values, group_ids, num_groups: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group mean of `values` over integer `group_ids` in [0, num_groups).

    Returns (means float64, counts int64), each of length num_groups (default max id + 1). A group with no
    item has mean NaN and count 0.
    """
    v = _values(values, "group values")
    g = _group_ids(group_ids, v.numel(), v.device)
    top = int(g.max()) + 1
    if num_groups is None:
        num_groups = top
    elif top > num_groups:
        raise FairnessInputError(f"group id {top - 1} is out of range for num_groups = {num_groups}")
    counts = torch.bincount(g, minlength=num_groups)
    sums = torch.zeros(num_groups, dtype=torch.float64, device=v.device).index_add_(0, g, v)
    means = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, math.nan))
    return means, counts


def _non_empty(means: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    means = torch.as_tensor(means).reshape(-1)
    counts = torch.as_tensor(counts, device=means.device).reshape(-1)
    if means.numel() != counts.numel():
        raise FairnessInputError(f"means ({means.numel()}) and counts ({counts.numel()}) differ in length")
    keep = counts > 0
    if not bool(keep.any()):
        raise FairnessInputError("every group is empty")
    return keep


def worst_group(means, counts) -> tuple[int, float]:
    """(group id, mean) of the non-empty group with the lowest mean (e.g. accuracy or mean reward)."""
    keep = _non_empty(means, counts)
    masked = torch.where(keep, torch.as_tensor(means).reshape(-1).to(torch.float64), math.inf)
    idx = int(torch.argmin(masked))
    return idx, float(masked[idx])


def best_minus_worst_gap(means, counts) -> float:
    """Highest minus lowest mean over non-empty groups (0 with a single non-empty group)."""
    keep = _non_empty(means, counts)
    kept = torch.as_tensor(means).reshape(-1).to(torch.float64)[keep]
    return float(kept.max() - kept.min())


def group_accuracy(chosen, rejected, group_ids, num_groups: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group preference accuracy: share of pairs with chosen reward > rejected reward (ties count as wrong,
    as in OpenRLHF's RM trainer). Returns (accuracies float64, counts int64) like `group_means`."""
    c, r = _values(chosen, "chosen rewards"), _values(rejected, "rejected rewards")
    if c.numel() != r.numel():
        raise FairnessInputError(f"chosen ({c.numel()}) and rejected ({r.numel()}) rewards differ in length")
    return group_means((c > r).to(torch.float64), group_ids, num_groups)


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
def pairwise_eval_metrics(
    chosen, reject, *, tau: float, temperature: float, group_ids=None, group_names=None
) -> dict[str, float]:
    """The fairness metrics of a reward model (or DPO's implicit rewards) on preference pairs, as plain floats.

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
    x = torch.sigmoid(margins / temperature)
    sign = fairness_sign(tau)
    out = {
        "fairness/jain": jain_index(x),
        "fairness/gini": gini_coefficient(x),
        "fairness/F": sign * exp_or_inf(float(log_fairness_of_margins(margins, tau, temperature))),
    }
    if group_ids is None:
        return out
    g = _group_ids(group_ids, c.numel(), c.device)
    if group_names is None:
        group_names = [str(i) for i in range(int(g.max()) + 1)]
    k = len(group_names)
    acc, counts = group_accuracy(c, r, g, num_groups=k)
    rewards, _ = group_means(torch.cat([c, r]), torch.cat([g, g]), num_groups=k)
    margin_means, _ = group_means(margins, g, num_groups=k)
    present = counts > 0
    safe_names = metric_safe_names(group_names)
    for i, name in enumerate(group_names):
        if bool(present[i]):
            safe = safe_names[str(name)]
            out[f"fairness/acc/{safe}"] = float(acc[i])
            out[f"fairness/reward/{safe}"] = float(rewards[i])
            out[f"fairness/margin/{safe}"] = float(margin_means[i])
    out["fairness/acc_gap"] = best_minus_worst_gap(acc, counts)
    out["fairness/reward_gap"] = best_minus_worst_gap(rewards, counts)
    out["fairness/margin_gap"] = best_minus_worst_gap(margin_means, counts)
    out["fairness/worst_group_acc"] = worst_group(acc, counts)[1]
    if int(present.sum()) >= 2:
        x_groups, _ = group_means(x, g, num_groups=k)
        out["fairness/F_groups"] = sign * exp_or_inf(float(log_fairness(x_groups[present], tau, normalize=True)))
    return out
