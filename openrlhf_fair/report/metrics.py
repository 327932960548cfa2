"""The report's numbers for one model's rewards on labelled pairs, for many resamples at once (pure torch).

`pair_metrics` takes rewards of shape (B, n): row b is one resample of the n pairs (row 0 of a point estimate is
the pairs themselves). Every metric comes back as a float64 tensor of shape (B,), so a bootstrap of 1,000
resamples costs one call. The metrics training's eval logs report too are `core.measures.batched_pair_metrics`. Names are the project's metric namespace `fairness/<name>` (see the README's
"What appears in the logs"), per group `fairness/<name>/<group>` with the group through `metrics.metric_safe_name`.

This module imports torch only, never openrlhf.
"""

from __future__ import annotations

import math

import torch

from openrlhf_fair.core.measures import batched_pair_metrics, metric_safe_name, row_group_means

__all__ = ["GROUP_METRICS", "SUMMARY_METRICS", "group_metric", "pair_metrics", "pearson"]

# name -> what it is (the report's "what the columns mean" is built from this)
SUMMARY_METRICS = {
    "fairness/acc": "share of pairs with reward(chosen) > reward(rejected); ties count as wrong, as in OpenRLHF",
    "fairness/worst_group_acc": "the lowest per-group accuracy",
    "fairness/acc_gap": "best-minus-worst group accuracy",
    "fairness/reward_gap": "best-minus-worst group mean reward (chosen and rejected responses together), raw units",
    "fairness/reward_gap_over_std": "reward gap divided by the std of all the model's rewards on these pairs "
                                    "(scale-free; 0 = every group gets the same reward level)",
    "fairness/margin_gap": "best-minus-worst group mean margin reward(chosen) - reward(rejected)",
    "fairness/jain": "Jain's index of the allocations sigmoid(margin) over all pairs (1 = every pair equal)",
    "fairness/gini": "Gini coefficient of sigmoid(margin) over all pairs (0 = every pair equal)",
    "fairness/length_corr": "Pearson correlation of reward with response length in characters (length bias), "
                            "over all chosen and rejected responses",
    "fairness/reward_std": "std of all rewards (chosen and rejected)",
    "fairness/mean_margin": "mean reward(chosen) - reward(rejected)",
    "fairness/mean_chosen_reward": "mean reward of the chosen responses",
    "fairness/mean_rejected_reward": "mean reward of the rejected responses",
}
GROUP_METRICS = {
    "acc": "accuracy within the group",
    "reward": "mean reward of the group's responses (chosen and rejected)",
    "margin": "mean margin within the group",
    "chosen_reward": "mean reward of the group's chosen responses",
    "rejected_reward": "mean reward of the group's rejected responses",
    "length_corr": "correlation of reward with length within the group",
}


def group_metric(name: str, group: str) -> str:
    """`fairness/<name>/<group>` with the group made metric-safe."""
    return f"fairness/{name}/{metric_safe_name(group)}"


def pearson(x, y) -> float:
    """Pearson correlation of two equal-length vectors; NaN when either is constant or has < 2 items."""
    x = torch.as_tensor(x, dtype=torch.float64).reshape(1, -1)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(1, -1)
    if x.shape != y.shape:
        raise ValueError(f"pearson: lengths differ ({x.numel()} vs {y.numel()})")
    return float(_weighted_corr(x, y, torch.ones_like(x).unsqueeze(-1))[0, 0])


def _weighted_corr(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of x and y (B, m) over the items of each subset k with w[b, :, k] = 1
    (w: (B, m, K) of 0/1), all subsets at once; NaN for < 2 items or no spread. Returns (B, K)."""
    n = w.sum(1)
    x, y = x.unsqueeze(-1), y.unsqueeze(-1)
    dx = (x - (w * x).sum(1, keepdim=True) / n.clamp(min=1).unsqueeze(1)) * w
    dy = (y - (w * y).sum(1, keepdim=True) / n.clamp(min=1).unsqueeze(1)) * w
    denom = torch.sqrt((dx * dx).sum(1) * (dy * dy).sum(1))
    ok = (n >= 2) & (denom > 0)
    return torch.where(ok, (dx * dy).sum(1) / torch.where(ok, denom, torch.ones_like(denom)), math.nan)


def pair_metrics(chosen, rejected, group_ids, group_names: list[str], chosen_len, rejected_len) -> dict:
    """Every report metric of rewards on pairs, per row: all inputs (B, n) (or (n,), read as B = 1).

    group_ids index `group_names`. Returns {name: float64 tensor (B,)}; a group with no pair in a row gets NaN
    for its own metrics and is left out of that row's gaps and worst group.
    """
    c = torch.as_tensor(chosen, dtype=torch.float64)
    r = torch.as_tensor(rejected, dtype=torch.float64)
    c, r = c.reshape(-1, c.shape[-1]), r.reshape(-1, r.shape[-1])
    gid = torch.as_tensor(group_ids, dtype=torch.int64).reshape(c.shape)
    lengths = torch.cat([torch.as_tensor(chosen_len, dtype=torch.float64).reshape(c.shape),
                         torch.as_tensor(rejected_len, dtype=torch.float64).reshape(c.shape)], -1)
    k = len(group_names)
    summary, per_group = batched_pair_metrics(c, r, gid, k)  # the eval metrics training logs, batched
    acc_g, margin_g, reward_g = per_group["acc"], per_group["margin"], per_group["reward"]
    rewards = torch.cat([c, r], -1)
    std = rewards.std(-1, correction=0)
    reward_gap = summary["fairness/reward_gap"]
    out = {
        "fairness/acc": summary["fairness/acc"],
        "fairness/worst_group_acc": summary["fairness/worst_group_acc"],
        "fairness/acc_gap": summary["fairness/acc_gap"],
        "fairness/reward_gap": reward_gap,
        "fairness/reward_gap_over_std": torch.where(std > 0, reward_gap / torch.where(std > 0, std, 1.0), math.nan),
        "fairness/margin_gap": summary["fairness/margin_gap"],
        "fairness/jain": summary["fairness/jain"],
        "fairness/gini": summary["fairness/gini"],
        "fairness/length_corr": _weighted_corr(rewards, lengths, torch.ones_like(rewards).unsqueeze(-1))[:, 0],
        "fairness/reward_std": std,
        "fairness/mean_margin": (c - r).mean(-1),
        "fairness/mean_chosen_reward": c.mean(-1),
        "fairness/mean_rejected_reward": r.mean(-1),
    }
    chosen_g, rejected_g = row_group_means(c, gid, k)[0], row_group_means(r, gid, k)[0]
    onehot = torch.nn.functional.one_hot(gid, k).to(torch.float64)  # (B, n, k): the groups' subsets for the correlations
    length_corr_g = _weighted_corr(rewards, lengths, torch.cat([onehot, onehot], 1))
    for j, name in enumerate(group_names):
        out[group_metric("acc", name)] = acc_g[:, j]
        out[group_metric("reward", name)] = reward_g[:, j]
        out[group_metric("margin", name)] = margin_g[:, j]
        out[group_metric("chosen_reward", name)] = chosen_g[:, j]
        out[group_metric("rejected_reward", name)] = rejected_g[:, j]
        out[group_metric("length_corr", name)] = length_corr_g[:, j]
    return out
