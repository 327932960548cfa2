"""Lan et al.'s fairness f_tau of a positive allocation, computed in log space.

Ouyang et al. (ACL 2025, "Towards Reward Fairness in RLHF") treat the margin of each preference pair as a
resource, x_i = sigmoid(m_i / T), and score the batch with Lan et al.'s (INFOCOM 2010) fairness

    f_tau(x) = sign(1 - tau) * ( sum_i p_i^(1 - tau) )^(1 / tau),    p_i = x_i / sum_j x_j.

Since (1/tau) * log sum_i p_i^(1-tau) is the Renyi entropy of order 1 - tau, |f_tau| = exp(H_{1-tau}(p)) is a
Hill number; we evaluate its log with one logsumexp, so it stays finite where the direct power form (the
authors' code; the tests keep it as their oracle, `tests/fair_reference.py`) overflows: tau = 2 or 5 with margins of scale 10-100.

Conventions (shared by every function here):
- Inputs may have any shape; they are flattened. Allocations must be finite and strictly positive.
- Everything is computed in float64 internally (the vectors are one value per pair, so this is free) and
  returned as float32, or float64 for float64 inputs. bfloat16/float16 inputs are upcast; the result stays
  differentiable with respect to the original input.
- ``normalize=True`` divides f by n, as the authors' code does; then tau = -1 gives Jain's index.
- tau -> 0 is the Shannon limit exp(H(p)); tau = 1 is degenerate (sign 0) and raises `FairnessInputError`.
- With a single item f is constant (normalized value sign(1 - tau)) and its gradient is exactly zero (e.g.
  OpenRLHF's default micro-batch of one pair).
- Bad inputs (NaN/Inf, empty, non-positive allocation, temperature <= 0, tau = 1) raise `FairnessInputError`.
  Validation reads a few scalars back to the host (one device sync per call).
- Callers take F itself as sign(1 - tau) * exp(log|f|) with `fairness_sign` and `exp_or_inf`.

This module imports torch only, never openrlhf.
"""

from __future__ import annotations

import math

import torch
from openrlhf_fair.errors import FairnessInputError
from openrlhf_fair.settings import check_temperature, check_tau

__all__ = [
    "SHANNON_LIMIT_TAU",
    "exp_or_inf",
    "fairness_sign",
    "log_fairness",
    "log_fairness_of_margins",
]

SHANNON_LIMIT_TAU = 1e-8
"""For |tau| below this, log|f| uses the second-order expansion around the Shannon limit (tau -> 0)."""

_SMALL_TAU = 0.1
"""Below this |tau|, logsumexp((1-tau) log p) ~ tau * H is computed as log1p(sum p * expm1(-tau log p)), which
avoids the cancellation that would otherwise cost eps/|tau| of relative accuracy."""


# ----------------------------------------------------------------------------------------------- validation
def _as_float_tensor(x, what: str) -> torch.Tensor:
    """Flatten `x` to a 1-D floating tensor, rejecting empty and non-finite input."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.is_complex():
        raise FairnessInputError(f"{what} must be real, got dtype {x.dtype}")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    x = x.reshape(-1)
    if x.numel() == 0:
        raise FairnessInputError(f"{what} is empty: fairness needs at least one item")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise FairnessInputError(f"{what} contains {bad} NaN/Inf value(s) out of {x.numel()}")
    return x


def _output_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_tau(tau: float) -> float:
    return check_tau(tau, "tau", FairnessInputError)


def _check_temperature(temperature: float) -> float:
    return check_temperature(temperature, "temperature", FairnessInputError)


# ----------------------------------------------------------------------------------------------- public API
def exp_or_inf(value: float) -> float:
    """exp of a log-fairness float, inf where math.exp would raise OverflowError (|F| beyond float64)."""
    return math.exp(value) if value < 709.0 else math.inf


def fairness_sign(tau: float) -> float:
    """sign(1 - tau): +1 for tau < 1 (f in (0, n]), -1 for tau > 1 (f negative, unbounded below)."""
    return 1.0 if _check_tau(tau) < 1.0 else -1.0


def log_fairness_of_log_p(log_p: torch.Tensor, tau: float) -> torch.Tensor:
    """log|f_tau| of a distribution given as log p (float64 tensor, unnormalised by n): the one log-fairness core.

    log|f_tau| = (1/tau) * log sum_k p_k^(1-tau), finite wherever log p is; `shaping` derives its weights from it.
    """
    if abs(tau) < SHANNON_LIMIT_TAU:
        # g(tau) = logsumexp((1-tau) log p) = tau*H + tau^2/2 * Var_p(log p) + O(tau^3), so g/tau is smooth in tau.
        p = log_p.exp()
        shannon = -(p * log_p).sum()
        var_log_p = (p * (log_p + shannon) ** 2).sum()
        return shannon + 0.5 * tau * var_log_p
    if abs(tau) < _SMALL_TAU:
        # g = log(sum p * p^-tau) = log1p(sum p * expm1(-tau log p)). The clamp only touches items whose
        # p = exp(log p) < exp(-7000) is already 0 in float64, so it changes nothing but an inf * 0.
        return torch.log1p((log_p.exp() * torch.expm1((-tau * log_p).clamp(max=700.0))).sum()) / tau
    return torch.logsumexp((1.0 - tau) * log_p, dim=0) / tau


def _log_fairness_from_log_x(log_x: torch.Tensor, tau: float, normalize: bool) -> torch.Tensor:
    """log|f_tau| from log-allocations (float64 tensor), divided by n when `normalize`."""
    log_f = log_fairness_of_log_p(log_x - torch.logsumexp(log_x, dim=0), tau)
    return log_f - math.log(log_x.numel()) if normalize else log_f


def log_fairness(x, tau: float = -1.0, normalize: bool = True) -> torch.Tensor:
    """log |f_tau(x)| (divided by n when `normalize`), the Renyi entropy H_{1-tau}(p) minus log n. Scalar.

    `x` must be finite and strictly positive. Differentiable; finite wherever the log-allocations are.
    With `normalize` and tau < 1 the value lies in [-log n, 0]; 0 means a perfectly equal allocation.
    """
    x = _as_float_tensor(x, "allocation x")
    tau = _check_tau(tau)
    if not bool((x > 0).all()):
        bad = int((x <= 0).sum())
        raise FairnessInputError(
            f"allocation x must be strictly positive, {bad} of {x.numel()} value(s) are <= 0 "
            "(use log_fairness_of_margins for raw margins)"
        )
    out_dtype = _output_dtype(x)
    return _log_fairness_from_log_x(x.to(torch.float64).log(), tau, normalize).to(out_dtype)


def log_fairness_of_margins(margins, tau: float = -1.0, temperature: float = 1.0, normalize: bool = True) -> torch.Tensor:
    """log |f_tau(sigmoid(margins / T))|, via logsigmoid so very negative margins cannot underflow to x = 0."""
    m = _as_float_tensor(margins, "margins")
    tau = _check_tau(tau)
    temperature = _check_temperature(temperature)
    log_x = torch.nn.functional.logsigmoid(m.to(torch.float64) / temperature)
    return _log_fairness_from_log_x(log_x, tau, normalize).to(_output_dtype(m))
