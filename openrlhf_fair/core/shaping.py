"""Fairness shaping for PPO: per-sample advantage weights from a fairness-aware objective of the rollout batch.

The paper (Ouyang et al., ACL 2025) has no PPO code; this is the add-on's own transfer of its idea to on-policy
RL. What is computed, for the agents k = 1..K of one rollout batch (--fair_unit: samples, prompts or labels):

    x_k = sigmoid(r / T) (an agent's mean),  U = mean_k x_k,  F = f_tau(x) / K,  Psi = U * F**gamma + alpha * F
    w_k = F**gamma * (1 + gamma * h_k) + alpha * F * h_k / U        (h_k: K * U * dlog|F|/dx_k, closed form)
    weights clipped to --fair_weight_clip, divided by their mean over the batch's samples, and multiplied into
    each sample's advantages after OpenRLHF's estimator computed them (returns unchanged).

With --fair_history DECAY, x_k is replaced by m_k, its exponential moving average over rollout batches
(`remembered_allocation`); the batch's own F and U are still what the metrics report.

Why these weights ascend Psi to first order, why after the estimator, and why the bounds: the derivation in
docs/ppo.md ("The derivation"), the one place it is written.

This module imports torch only, never openrlhf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Sequence

import torch

from openrlhf_fair.core.fairness import SHANNON_LIMIT_TAU, exp_or_inf, fairness_sign, log_fairness_of_log_p
from openrlhf_fair.errors import FairnessInputError
from openrlhf_fair.core.measures import gini_coefficient, jain_index
from openrlhf_fair.settings import PPOFairnessConfig

__all__ = [
    "FairnessShaping",
    "agent_weights",
    "fairness_weights",
    "label_agent_ids",
    "prompt_agent_ids",
    "remembered_allocation",
]

_HUGE = 1e300  # stands for an infinite weight before clipping


# ----------------------------------------------------------------------------------------------- agents
def prompt_agent_ids(sample_index, n_samples_per_prompt: int) -> torch.Tensor:
    """Agent of each sample for `--fair_unit prompt`: index // n, OpenRLHF's own prompt grouping
    (RemoteExperienceMaker reshapes rewards sorted by index to (-1, n_samples_per_prompt))."""
    if int(n_samples_per_prompt) < 1:
        raise FairnessInputError(f"n_samples_per_prompt must be >= 1, got {n_samples_per_prompt}")
    index = torch.as_tensor(sample_index, dtype=torch.int64).reshape(-1)
    return torch.div(index, int(n_samples_per_prompt), rounding_mode="floor")


def label_agent_ids(labels: Sequence[Hashable]) -> tuple[torch.Tensor, list]:
    """Agent of each sample for `--fair_unit label:KEY`: (ids, sorted distinct labels); ids index the labels."""
    if len(labels) == 0:
        raise FairnessInputError("no labels: the rollout batch is empty")
    names = sorted(set(labels), key=str)
    position = {name: i for i, name in enumerate(names)}
    return torch.tensor([position[label] for label in labels], dtype=torch.int64), names


def _compact(agent_ids, n: int) -> tuple[torch.Tensor, int]:
    ids = torch.as_tensor(agent_ids).reshape(-1)
    if ids.is_floating_point() or ids.dtype == torch.bool or ids.numel() != n:
        raise FairnessInputError(f"agent_ids must be {n} integers (one per sample), got {ids.numel()} of dtype {ids.dtype}")
    uniq, inverse = torch.unique(ids, return_inverse=True)
    return inverse, int(uniq.numel())


# ----------------------------------------------------------------------------------------------- the math
def agent_weights(log_x: torch.Tensor, config: PPOFairnessConfig) -> tuple[torch.Tensor, float, float]:
    """Closed-form w_k = K * dPsi/dx_k from the agents' log-allocations (float64). Returns (w, F, U).

    Works in log space (log p, escort distribution), so it stays finite for any finite reward; for small |tau|
    it avoids the eps/|tau| cancellation the same way `fairness.py` does (log1p/expm1, then the Shannon limit).
    """
    log_x = log_x.to(torch.float64)
    K = log_x.numel()
    tau, gamma, alpha = config.tau, config.coef, config.reg
    log_sum = torch.logsumexp(log_x, dim=0)
    log_p = log_x - log_sum
    log_U = float(log_sum) - math.log(K)
    log_f = log_fairness_of_log_p(log_p, tau)  # log|f_tau|, the core shared with the losses and metrics
    if abs(tau) < SHANNON_LIMIT_TAU:  # h to first order in tau around the Shannon limit
        p = log_p.exp()
        a = -log_p + (p * log_p).sum()  # surprisal minus entropy
        h = a + tau * (0.5 * (a * a - (p * a * a).sum()) - a)
    else:
        h = ((1.0 - tau) / tau) * torch.expm1(-tau * (log_p + log_f))  # (q_k / p_k - 1) * (1 - tau) / tau
    log_F = float(log_f) - math.log(K)  # log|F|, F = f_tau / K
    sign = fairness_sign(tau)
    F = sign * exp_or_inf(log_F)
    w = exp_or_inf(gamma * log_F) * (1.0 + gamma * h) if gamma else torch.ones_like(h)
    if alpha:
        w = w + (alpha * sign * exp_or_inf(log_F - log_U)) * h  # alpha * F / U, without forming U (may underflow)
    if not bool(torch.isfinite(w).all()):  # only beyond float64's range (|F| for tau > 1, |h| for tiny p):
        w = torch.nan_to_num(w, nan=1.0, posinf=_HUGE, neginf=-_HUGE)  # such weights saturate at the clip bounds
    return w, F, exp_or_inf(log_U)


@dataclass
class FairnessShaping:
    """Result of `fairness_weights` for one rollout batch (all tensors float64, on CPU)."""

    sample_weights: torch.Tensor  # (N,) final weights: clipped and renormalised to mean 1 over samples
    agent_ids: torch.Tensor  # (N,) compact agent id of each sample, in [0, K)
    raw_agent_weights: torch.Tensor  # (K,) w_k = K * dPsi/dx_k before clipping
    log_allocation: torch.Tensor  # (K,) log x_k
    fairness: float  # F = f_tau(x) / K
    utility: float  # U = mean x
    num_clipped: int  # samples whose weight hit the clip range

    @property
    def allocation(self) -> torch.Tensor:
        """x_k (may underflow to 0 for rewards far below -700 T; the metrics use the scale-free form)."""
        return self.log_allocation.exp()

    @property
    def num_agents(self) -> int:
        return self.log_allocation.numel()

    def metrics(self) -> dict[str, float]:
        """Batch-level numbers for OpenRLHF's logged metrics (keys without prefix)."""
        w = self.sample_weights
        scaled = (self.log_allocation - self.log_allocation.max()).exp()  # Jain and Gini are scale invariant
        return {
            "F": self.fairness,
            "jain": jain_index(scaled),
            "gini": gini_coefficient(scaled),
            "utility": self.utility,
            "num_agents": float(self.num_agents),
            "weight_min": float(w.min()),
            "weight_max": float(w.max()),
            "clipped_frac": self.num_clipped / w.numel(),
        }


def fairness_weights(rewards, agent_ids, config: PPOFairnessConfig, log_allocation=None) -> FairnessShaping:
    """Per-sample advantage weights for one rollout batch (derivation: docs/ppo.md).

    `rewards`: (N,) final rewards; `agent_ids`: (N,) integers, samples with the same id form one agent.
    `log_allocation`: (K,) log x_k to weigh the agents by instead of the batch's own (ordered as the sorted
    distinct agent ids; `remembered_allocation` gives it for --fair_history).
    Raises FairnessInputError for NaN/Inf rewards. With one agent every weight is 1.
    """
    r = torch.as_tensor(rewards).detach().reshape(-1).to(device="cpu", dtype=torch.float64)
    n = r.numel()
    if n == 0:
        raise FairnessInputError("the rollout batch has no rewards")
    if not bool(torch.isfinite(r).all()):
        bad = int((~torch.isfinite(r)).sum())
        raise FairnessInputError(f"{bad} of {n} rewards are NaN/Inf")
    ids, K = _compact(agent_ids, n)
    log_sig = torch.nn.functional.logsigmoid(r / config.temperature)
    if K == n and bool((ids == torch.arange(n)).all()):
        log_x = log_sig
    else:  # log of each agent's mean sigmoid, a per-agent logsumexp
        peak = torch.full((K,), -math.inf, dtype=torch.float64).scatter_reduce(0, ids, log_sig, reduce="amax")
        sums = torch.zeros(K, dtype=torch.float64).index_add_(0, ids, (log_sig - peak[ids]).exp())
        counts = torch.bincount(ids, minlength=K).to(torch.float64)
        log_x = peak + sums.log() - counts.log()
    if log_allocation is not None:
        log_x = torch.as_tensor(log_allocation, dtype=torch.float64).reshape(-1)
        if log_x.numel() != K:
            raise FairnessInputError(f"log_allocation has {log_x.numel()} values for {K} agents")
    w_agent, F, U = agent_weights(log_x, config)
    low, high = config.weight_clip
    w = w_agent[ids]
    clipped = w.clamp(low, high)
    num_clipped = int((clipped != w).sum())
    mean = clipped.mean()
    if not float(mean) > 0:  # cannot happen (sum_k p_k w_k = F**gamma > 0), kept as a loud guard
        raise FairnessInputError(f"all fairness weights were clipped to {low}; raw weights {w_agent.tolist()[:8]}...")
    return FairnessShaping(
        sample_weights=clipped / mean,
        agent_ids=ids,
        raw_agent_weights=w_agent,
        log_allocation=log_x,
        fairness=F,
        utility=U,
        num_clipped=num_clipped,
    )


# ----------------------------------------------------------------------------------------------- history
def remembered_allocation(log_x, keys: Sequence[Hashable], history: dict, decay: float) -> tuple[torch.Tensor, dict]:
    """--fair_history DECAY: each agent's allocation as an exponential moving average over rollout batches.

    For agent k of this batch (``keys[k]`` names it across batches: a label, or a prompt's text), with x_k its
    allocation in this batch and m_k the remembered one:
        m_k = decay * m_k + (1 - decay) * x_k      if k was seen in an earlier batch,
        m_k = x_k                                  if not,
    computed in log space (``history`` maps key -> log m_k). An agent absent from a batch keeps its value.
    Returns (log m of this batch's agents, in the order of ``keys``; the updated history, a new dict). With
    ``decay = 0`` the first is ``log_x`` itself, so the weights are the batch's own bit for bit.
    """
    log_x = torch.as_tensor(log_x, dtype=torch.float64).reshape(-1)
    if len(keys) != log_x.numel():
        raise FairnessInputError(f"{len(keys)} agent keys for {log_x.numel()} allocations")
    if not 0.0 <= decay < 1.0:
        raise FairnessInputError(f"the history decay must be in [0, 1), got {decay}")
    if decay == 0.0:
        log_m = log_x
    else:
        previous = torch.tensor([float(history.get(key, math.nan)) for key in keys], dtype=torch.float64)
        mixed = torch.logaddexp(math.log(decay) + previous, math.log1p(-decay) + log_x)
        log_m = torch.where(torch.isnan(previous), log_x, mixed)
    return log_m, {**history, **dict(zip(keys, log_m.tolist()))}
