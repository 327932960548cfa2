"""Test oracles: plain, direct formulas the production math is checked against (not used by the add-on), and F
itself taken back from the add-on's log form for tests that state properties of F."""

from __future__ import annotations

import torch

from openrlhf_fair.errors import FairnessInputError
from openrlhf_fair.core.fairness import fairness_sign, log_fairness, log_fairness_of_margins
from openrlhf_fair.core.measures import gini_coefficient, jain_index


def direct_fairness(x, tau: float, normalize: bool = True) -> torch.Tensor:
    """The authors' direct power form sign(1-tau) * (sum p^(1-tau))^(1/tau) [/ n], in x's own dtype.

    It overflows to +-inf/NaN for tau > 1 with large margins and has no tau -> 0 limit (tau = 0 raises);
    the add-on's `log_fairness` works in log space instead.
    """
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    x = x.reshape(-1)
    sign = fairness_sign(tau)  # rejects tau = 1 and non-finite tau as the add-on does
    if tau == 0.0:
        raise FairnessInputError("direct_fairness has no tau = 0 value (1/tau); use log_fairness, which takes the Shannon limit")
    p = x / x.sum()
    value = sign * (p ** (1.0 - tau)).sum() ** (1.0 / tau)
    return value / x.numel() if normalize else value


def _signed_exp(log_f: torch.Tensor, tau: float) -> torch.Tensor:
    """sign(1 - tau) * exp(log_f), in float64 and cast back to log_f's dtype (-inf where |F| is beyond it)."""
    return (fairness_sign(tau) * log_f.to(torch.float64).exp()).to(log_f.dtype)


def fairness(x, tau: float = -1.0, normalize: bool = True) -> torch.Tensor:
    """F = f_tau(x) (over n when `normalize`) from the add-on's `log_fairness`: sign(1 - tau) * exp(log|f|)."""
    return _signed_exp(log_fairness(x, tau, normalize), tau)


def fairness_of_margins(margins, tau: float = -1.0, temperature: float = 1.0, normalize: bool = True) -> torch.Tensor:
    """F of x = sigmoid(margins / T) from the add-on's `log_fairness_of_margins` (the F of the FR and FC losses)."""
    return _signed_exp(log_fairness_of_margins(margins, tau, temperature, normalize), tau)


def fairness_objective(x: torch.Tensor, config) -> torch.Tensor:
    """Psi = U * F**coef + reg * F of an allocation, differentiable (what `shaping.agent_weights` differentiates)."""
    F = fairness(x, config.tau, normalize=True)
    U = x.mean()
    return U * F**config.coef + config.reg * F


def inequality_summary(x) -> dict[str, float]:
    """The add-on's scalar inequality measures of a strictly positive allocation, keyed by name."""
    return {"jain": jain_index(x), "gini": gini_coefficient(x)}


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
