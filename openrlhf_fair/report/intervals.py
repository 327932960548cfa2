"""Bootstrap intervals over test pairs and training seeds (pure torch).

A *method* (one --label) has one or more *runs* (models trained with different seeds), all scored on the same
n pairs. One bootstrap draw b picks n pairs with replacement (the same pairs for every method: differences are
paired over pairs) and, for a method with S > 1 runs, S runs with replacement (the same run positions for every
method with S runs: run k of each method was trained with the k-th seed, so differences are paired over seeds
too). The method's value in draw b is the mean over the drawn runs of the metric on the drawn pairs.

- point estimate: mean over the method's runs of the metric on all pairs;
- 95% interval: the 2.5% and 97.5% quantiles of the draws (percentile bootstrap; NaN draws, e.g. a group with no
  pair in the draw, are left out);
- difference to a baseline: point difference, and the quantiles of the per-draw differences; it "excludes 0"
  when both ends have the same sign. With few seeds (S = 3) the seed part of a percentile interval is narrow
  (3 values resampled): read it as a lower bound on the seed noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Draws", "Estimate", "difference", "draw_indices", "estimate", "method_draws"]


@dataclass(frozen=True)
class Estimate:
    """A value with its 95% interval [lo, hi]."""

    value: float
    lo: float
    hi: float

    @property
    def excludes_zero(self) -> bool:
        return (self.lo > 0 and self.hi > 0) or (self.lo < 0 and self.hi < 0)

    def as_json(self) -> dict:
        return {"value": self.value, "lo": self.lo, "hi": self.hi}


@dataclass
class Draws:
    """The resampling plan shared by every method of one report."""

    pairs: torch.Tensor  # (B, n) int64: pair indices of each draw
    runs: dict[int, torch.Tensor]  # S -> (B, S) int64 run positions, one plan per number of runs


def draw_indices(n_pairs: int, run_counts, resamples: int = 1000, seed: int = 0) -> Draws:
    """Resampling plan for `resamples` draws over `n_pairs` pairs and methods with the given numbers of runs."""
    gen = torch.Generator().manual_seed(seed)
    pairs = torch.randint(0, n_pairs, (resamples, n_pairs), generator=gen)
    runs = {}
    for s in sorted(set(run_counts)):
        runs[s] = (torch.randint(0, s, (resamples, s), generator=gen) if s > 1
                   else torch.zeros(resamples, 1, dtype=torch.int64))
    return Draws(pairs=pairs, runs=runs)


def method_draws(per_run: list[dict[str, torch.Tensor]], run_plan: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per metric, the method's value in each draw: mean over the drawn runs of their per-draw values.

    per_run[k][name]: (B,) values of run k on each draw's pairs; run_plan: (B, S) drawn run positions.
    """
    out = {}
    cols = torch.arange(run_plan.shape[0]).unsqueeze(1).expand_as(run_plan)
    for name in per_run[0]:
        stacked = torch.stack([run[name] for run in per_run])  # (S, B)
        out[name] = stacked[run_plan, cols].nanmean(-1)
    return out


def _quantiles(draws: torch.Tensor) -> tuple[float, float]:
    finite = draws[~torch.isnan(draws)]
    if finite.numel() == 0:
        return float("nan"), float("nan")
    q = torch.quantile(finite, torch.tensor([0.025, 0.975], dtype=finite.dtype))
    return float(q[0]), float(q[1])


def estimate(point: float, draws: torch.Tensor) -> Estimate:
    lo, hi = _quantiles(draws)
    return Estimate(point, lo, hi)


def difference(point_a: float, point_b: float, draws_a: torch.Tensor, draws_b: torch.Tensor) -> Estimate:
    """a - b with the interval of the paired per-draw differences."""
    lo, hi = _quantiles(draws_a - draws_b)
    return Estimate(point_a - point_b, lo, hi)
