"""Test oracles: plain, direct formulas the production math is checked against (not used by the add-on)."""

from __future__ import annotations

import torch

from openrlhf_fair.errors import FairnessInputError
from openrlhf_fair.core.fairness import fairness, fairness_sign
from openrlhf_fair.core.measures import coefficient_of_variation, generalized_entropy, gini_coefficient, jain_index, max_min_ratio


def direct_fairness(x, tau: float, normalize: bool = True) -> torch.Tensor:
    """The authors' direct power form sign(1-tau) * (sum p^(1-tau))^(1/tau) [/ n], in x's own dtype.

    It overflows to +-inf/NaN for tau > 1 with large margins and has no tau -> 0 limit (tau = 0 raises);
    the add-on's `fairness` / `log_fairness` work in log space instead.
    """
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    x = x.reshape(-1)
    sign = fairness_sign(tau)  # rejects tau = 1 and non-finite tau as the add-on does
    if tau == 0.0:
        raise FairnessInputError("direct_fairness has no tau = 0 value (1/tau); use fairness(), which takes the Shannon limit")
    p = x / x.sum()
    value = sign * (p ** (1.0 - tau)).sum() ** (1.0 / tau)
    return value / x.numel() if normalize else value


def fairness_objective(x: torch.Tensor, config) -> torch.Tensor:
    """Psi = U * F**coef + reg * F of an allocation, differentiable (what `shaping.agent_weights` differentiates)."""
    F = fairness(x, config.tau, normalize=True)
    U = x.mean()
    return U * F**config.coef + config.reg * F


def inequality_summary(x) -> dict[str, float]:
    """All scalar inequality measures of a strictly positive allocation, keyed by name."""
    return {
        "jain": jain_index(x),
        "gini": gini_coefficient(x),
        "theil_t": generalized_entropy(x, 1.0),
        "theil_l": generalized_entropy(x, 0.0),
        "cv": coefficient_of_variation(x),
        "max_min_ratio": max_min_ratio(x),
    }


def ppo_reference_weights(rewards, agents, coef: float, reg: float, clip=(0.0, 5.0)):
    """PPO fairness weights for the default tau = -1, T = 1, independent of `openrlhf_fair.core.shaping`:
    w_k = K * dPsi/dx_k by float64 autograd of Psi = U * F**coef + reg * F, F = Jain's index of the agents' mean
    sigmoid(reward) (agents in sorted order), then clipped and divided by the mean over samples (shaping.py's
    docstring). Returns (per-sample weights, F, U)."""
    names = sorted(set(agents), key=str)
    ids = torch.tensor([names.index(a) for a in agents])
    x_sample = torch.sigmoid(torch.as_tensor(rewards, dtype=torch.float64))
    x = torch.stack([x_sample[ids == k].mean() for k in range(len(names))]).requires_grad_()
    K = x.numel()
    U, F = x.mean(), x.sum() ** 2 / (K * (x**2).sum())
    (grad,) = torch.autograd.grad(U * F**coef + reg * F, x)
    w = (K * grad)[ids].clamp(*clip)
    return w / w.mean(), float(F), float(U)
