"""Reward-level terms of the reward-model loss: level fairness, reward centering, batch-sum regularisation.

Pairwise losses (Bradley-Terry and the paper's FR / FC) only see the margin m_i = c_i - r_i of each pair (c_i,
r_i: the rewards of its chosen and rejected response), so each prompt's reward *level* is left free, and groups
(e.g. helpful vs harmless) can end up at different levels. These terms act on the levels; each is added to the
pairwise loss (`extra_terms`) and is off by default. Plain torch; never imports openrlhf.

Level fairness (``--fairness_level_reg LAMBDA``), the paper's resource-allocation view applied to levels:
    l_i = (c_i + r_i) / 2                      the pair's reward level
    s   = std_j l_j                            the batch's level spread (population std, not detached)
    y_i = sigmoid((l_i - mean_j l_j) / (T s))  its allocation: its standardised level, T = --fairness_level_temperature
    F_L = f_tau(y) / n                         Lan et al.'s fairness (tau = -1: Jain's index), or, with
                                               --fairness_group_key, over the per-group mean allocations
    loss += -LAMBDA * sign(1 - tau) * F_L
F_L is a function of the standardised levels z = (l - mean l) / s alone, so it is unchanged when every reward is
shifted (a pairwise loss leaves that free: without the mean, sigmoid(l / T) lets the model raise F_L by shifting
every reward up until all y_i saturate) and when every reward is multiplied by a constant c > 0. The second is
why the temperature follows the spread: with a fixed T, shrinking every reward difference raises F_L as surely as
closing the gap between groups, and a model trained that way did collapse its reward scale (the results of
issue 12). s is not detached: F_L is then homogeneous of degree 0 in the levels, so its gradient is orthogonal to
both the common shift and the common scale (sum_k dF_L/dl_k = 0 and sum_k (l_k - mean l) dF_L/dl_k = 0): no step
can raise F_L by shrinking (or inflating) the scale; it can only move levels relative to each other and to the
spread, i.e. pull the groups' levels together. (With s detached, the value would still be scale-free but each
step's gradient would be the fixed-temperature one, with its pull toward a smaller scale.) The spread is the
levels', not all 2B rewards': the margins stay out of F_L, so d/dc_i = d/dr_i = dF_L/dl_i / 2 and the term never
pushes a margin directly. A batch whose levels are all equal (s = 0) has every y_i = 1/2 (s is floored at
LEVEL_SPREAD_FLOOR, far below any reward scale, to keep 0/0 out).
Chain rule (Jain, items y_k): dF_L/dy_k = (2 S1 / (n S2)) (1 - y_k S1 / S2), S1 = sum y, S2 = sum y^2;
dy_i/dl_j = y_i (1 - y_i) / T * dz_i/dl_j, dz_i/dl_j = (delta_ij - 1/n - z_i z_j / n) / s. So descent raises the
items below S2 / S1 and lowers those above it, up to the part along z that would change the scale.

Reward centering (``--reward_centering COEF``; Eisenstein et al. 2023, TRL's ``center_rewards_coefficient``):
    loss += COEF * mean_i (c_i + r_i)^2,   d/dc_i = d/dr_i = 2 COEF (c_i + r_i) / n
Batch-sum regularisation (``--batch_sum_reg LAMBDA``; BSR, Hong et al., ICML 2025):
    loss += LAMBDA * B * mean(all 2B rewards)^2 = LAMBDA (sum of rewards)^2 / (4B),   d/d(each reward) = LAMBDA * mean
Both are computed over the rank's micro-batch (as TRL and the BSR authors do); level fairness follows
``--fairness_scope`` like F (the caller passes its gather).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from openrlhf_fair.settings import RewardFairnessConfig
from openrlhf_fair.core.fairness import exp_or_inf, fairness_sign, log_fairness
from openrlhf_fair.core.measures import row_group_means

__all__ = ["LEVEL_SPREAD_FLOOR", "pair_levels", "level_spread", "level_allocations", "level_log_fairness",
           "reward_centering_term", "batch_sum_term", "extra_terms", "group_mean_allocations"]

LEVEL_SPREAD_FLOOR = 1e-15
"""Smallest level spread s used (float64); F_L is exactly scale-free for any reward scale far above it."""


def group_mean_allocations(x: torch.Tensor, group_ids: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-group mean of the allocations ``x`` over the groups present (differentiable); ``x`` itself without ids."""
    if group_ids is None:
        return x
    groups, inverse = torch.unique(group_ids.reshape(-1).to(x.device), return_inverse=True)
    return row_group_means(x.reshape(1, -1), inverse.reshape(1, -1), groups.numel())[0][0]


def pair_levels(chosen: torch.Tensor, reject: torch.Tensor) -> torch.Tensor:
    """Each pair's reward level l_i = (c_i + r_i) / 2, flattened, in float64."""
    return (chosen.reshape(-1).to(torch.float64) + reject.reshape(-1).to(torch.float64)) / 2


def level_spread(levels: torch.Tensor) -> torch.Tensor:
    """s = population std of the levels (differentiable), floored at LEVEL_SPREAD_FLOOR."""
    centred = levels - levels.mean()
    return (centred**2).mean().clamp_min(LEVEL_SPREAD_FLOOR**2).sqrt()


def level_allocations(levels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """y_i = sigmoid((l_i - mean l) / (T s)), s = level_spread(levels): each pair's standardised level."""
    return torch.sigmoid((levels - levels.mean()) / (temperature * level_spread(levels)))


def level_log_fairness(levels: torch.Tensor, *, tau: float = -1.0, temperature: float = 1.0,
                       group_ids: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, int]:
    """(log|F_L| as a float64 scalar, number of items): F_L over the pairs' level allocations, or over the
    per-group mean allocations with ``group_ids``."""
    items = group_mean_allocations(level_allocations(levels, temperature), group_ids)
    return log_fairness(items, tau, normalize=True), items.numel()


def reward_centering_term(chosen: torch.Tensor, reject: torch.Tensor, coef: float) -> torch.Tensor:
    """COEF * mean((c + r)^2) (TRL's center_rewards_coefficient), float64 scalar."""
    total = chosen.reshape(-1).to(torch.float64) + reject.reshape(-1).to(torch.float64)
    return coef * (total**2).mean()


def batch_sum_term(chosen: torch.Tensor, reject: torch.Tensor, lam: float) -> torch.Tensor:
    """LAMBDA * B * mean(all rewards of the B pairs)^2 (BSR), float64 scalar."""
    rewards = torch.cat([chosen.reshape(-1), reject.reshape(-1)]).to(torch.float64)
    return lam * chosen.numel() * rewards.mean() ** 2


def extra_terms(
    chosen: torch.Tensor,
    reject: torch.Tensor,
    config: RewardFairnessConfig,
    group_ids: Optional[torch.Tensor] = None,
    gather: Optional[Callable] = None,
) -> tuple[Optional[torch.Tensor], dict[str, float]]:
    """The sum of the enabled terms (a float64 scalar to add to the loss) and their step metrics.

    (None, {}) when all three are off, so the caller's loss stays exactly what it was. ``group_ids``: one per pair
    of this call. ``gather(values, group_ids) -> (values, group_ids)``: the caller's data-parallel gather (with
    gradients) for ``--fairness_scope global``, applied to the levels (level fairness only). Metrics: fairness/level_F and fairness/level_term, fairness/reward_centering,
    fairness/batch_sum_reg (each term's value).
    """
    total, metrics = None, {}

    def add(term: torch.Tensor) -> None:
        nonlocal total
        total = term if total is None else total + term

    if config.level_reg is not None:
        levels, level_ids = pair_levels(chosen, reject), group_ids
        if gather is not None:
            levels, level_ids = gather(levels, group_ids)
        log_f, _ = level_log_fairness(levels, tau=config.tau, temperature=config.level_temperature,
                                      group_ids=level_ids)
        term = -config.level_reg * fairness_sign(config.tau) * log_f.exp()
        add(term)
        metrics["fairness/level_F"] = fairness_sign(config.tau) * exp_or_inf(float(log_f.detach()))
        metrics["fairness/level_term"] = float(term.detach())
    if config.reward_centering is not None:
        term = reward_centering_term(chosen, reject, config.reward_centering)
        add(term)
        metrics["fairness/reward_centering"] = float(term.detach())
    if config.batch_sum_reg is not None:
        term = batch_sum_term(chosen, reject, config.batch_sum_reg)
        add(term)
        metrics["fairness/batch_sum_reg"] = float(term.detach())
    return total, metrics
