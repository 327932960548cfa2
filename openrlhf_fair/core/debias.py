"""The math of `openrlhf-fair debias`, as plain torch functions (torch and stdlib only, never openrlhf).

OpenRLHF's reward model is a linear value head on the last token's hidden state: r = w . h. If d is a direction
of h that carries a bias, the head w' = P w with P = I - d d^T / |d|^2 gives r' = w' . h = w . P h: the reward no
longer sees how far h moves along d (Fein, Lamparth et al., "One Bias After Another", ICML 2026: training-free
"mechanistic reward shaping").

- `length_direction`, `group_directions`: the bias directions, estimated from hidden states of labelled pairs.
- `orthonormal_basis`: several directions made orthonormal (Gram-Schmidt, in the order given), so that removing
  them together removes their whole span once.
- `project_head`: w' = w - s * sum_i (w . q_i) q_i over that basis; with one direction d this is
  w - s * (w . d / |d|^2) d, and with strength s = 1 it is P w. s in (0, 1) removes part of the direction.
- `rescale_to_std`: the factor that keeps the spread of the rewards on the data what it was.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from openrlhf_fair.errors import DebiasError

__all__ = ["DebiasError", "MIN_GROUP_PAIRS", "MIN_LENGTH_PAIRS", "group_directions", "length_direction",
           "orthonormal_basis", "project_head", "rescale_to_std", "spearman"]

# Fewest pairs a direction is estimated from: with fewer, the mean difference is mostly noise.
MIN_LENGTH_PAIRS = 20  # pairs whose two responses differ in length
MIN_GROUP_PAIRS = 10  # pairs in each group

# A direction whose part orthogonal to the earlier ones is below this share of its norm adds nothing new.
_PARALLEL_TOL = 1e-6


def _matrix(hidden, what: str) -> torch.Tensor:
    h = torch.as_tensor(hidden).to(torch.float64)
    if h.ndim != 2:
        raise DebiasError(f"{what}: hidden states must be a matrix (responses x hidden size), got shape "
                          f"{tuple(h.shape)}")
    return h


def length_direction(h_chosen, h_rejected, chosen_len, rejected_len) -> tuple[torch.Tensor, int]:
    """Mean of h(longer response) - h(shorter response) over the pairs whose responses differ in length.

    h_chosen, h_rejected: (n, H) hidden states of each pair's two responses; lengths: (n,). Returns the direction
    (H,) float64 and how many pairs it was estimated from. Fewer than MIN_LENGTH_PAIRS such pairs are refused.
    """
    hc, hr = _matrix(h_chosen, "length"), _matrix(h_rejected, "length")
    lc = torch.as_tensor(chosen_len, dtype=torch.float64)
    lr = torch.as_tensor(rejected_len, dtype=torch.float64)
    if not (hc.shape == hr.shape and lc.shape == lr.shape == hc.shape[:1]):
        raise DebiasError(f"length: shapes differ: hidden {tuple(hc.shape)} / {tuple(hr.shape)}, lengths "
                          f"{tuple(lc.shape)} / {tuple(lr.shape)}")
    sign = torch.sign(lc - lr)  # +1: chosen longer, -1: rejected longer, 0: same length (left out)
    used = int((sign != 0).sum())
    if used < MIN_LENGTH_PAIRS:
        raise DebiasError(f"too few pairs to estimate the length direction: {used} pair(s) whose responses differ "
                          f"in length, need at least {MIN_LENGTH_PAIRS}; give more pairs")
    return (sign.unsqueeze(1) * (hc - hr)).sum(0) / used, used


def group_directions(hidden, group_ids, group_names: Sequence[str]) -> tuple[list[torch.Tensor], list[str], dict]:
    """Differences of group means: mean h of group j minus mean h of group 0, for j = 1..k-1 (groups in the order
    of `group_names`). Their span is the span of the k group means' differences, so removing them makes the
    reward's expected value equal across groups (as far as the group means tell).

    hidden: (m, H) hidden states of responses; group_ids: (m,) indexes into group_names. Returns the k-1
    directions, their names ("GROUP-minus-FIRST") and the count of responses per group. Groups with fewer than
    2 * MIN_GROUP_PAIRS responses (MIN_GROUP_PAIRS pairs: each pair gives two responses) are refused.
    """
    h = _matrix(hidden, "group")
    gid = torch.as_tensor(group_ids, dtype=torch.int64)
    if gid.shape != h.shape[:1]:
        raise DebiasError(f"group: {gid.numel()} group ids for {h.shape[0]} hidden states")
    names = list(group_names)
    counts = {name: int((gid == j).sum()) for j, name in enumerate(names)}
    if len(names) < 2:
        raise DebiasError(f"a group direction needs at least 2 groups, the data has {len(names)}: {names}")
    small = {g: n for g, n in counts.items() if n < 2 * MIN_GROUP_PAIRS}
    if small:
        raise DebiasError("too few pairs to estimate the group direction: "
                          + ", ".join(f"{g} has {n // 2} pair(s)" for g, n in small.items())
                          + f"; need at least {MIN_GROUP_PAIRS} per group")
    means = [h[gid == j].mean(0) for j in range(len(names))]
    directions = [means[j] - means[0] for j in range(1, len(names))]
    return directions, [f"{names[j]}-minus-{names[0]}" for j in range(1, len(names))], counts


def orthonormal_basis(directions: Sequence[torch.Tensor], names: Sequence[str] | None = None) -> torch.Tensor:
    """Gram-Schmidt (applied twice, for float accuracy) in the order given: (k, H) float64 rows q_i with
    q_i . q_j = [i == j] spanning the directions. A zero direction, or one (almost) in the span of the ones before
    it, is refused: it would be removed twice or not at all."""
    if not directions:
        raise DebiasError("no direction to remove")
    names = list(names) if names is not None else [f"direction {i + 1}" for i in range(len(directions))]
    basis: list[torch.Tensor] = []
    for name, d in zip(names, directions):
        d = torch.as_tensor(d, dtype=torch.float64).reshape(-1)
        if basis and d.shape != basis[0].shape:
            raise DebiasError(f"{name}: size {d.numel()} differs from the first direction's {basis[0].numel()}")
        norm = torch.linalg.vector_norm(d)
        if not bool(torch.isfinite(norm)) or float(norm) == 0.0:
            raise DebiasError(f"{name}: the direction is zero or not finite; nothing to remove")
        v = d.clone()
        for _ in range(2):
            for q in basis:
                v = v - (v @ q) * q
        rest = torch.linalg.vector_norm(v)
        if float(rest) <= _PARALLEL_TOL * float(norm):
            raise DebiasError(f"{name}: the direction lies (almost) in the span of the ones removed before it")
        basis.append(v / rest)
    return torch.stack(basis)


def project_head(weight, basis, strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """w' = w - s * sum_i (w . q_i) q_i for an orthonormal basis q (rows of `basis`, see `orthonormal_basis`).

    weight: (H,) or (1, H) (OpenRLHF's value head); returns (w' in float64 with the shape of `weight`, the
    coefficients w . q_i). s = 1 is the full projection P w (w' . q_i = 0); s = 0 returns w unchanged, bit for bit.
    """
    strength = float(strength)
    if not 0.0 <= strength <= 1.0:  # also refuses NaN
        raise DebiasError(f"--strength must be between 0 and 1 (1 removes the whole direction), got {strength}")
    w = torch.as_tensor(weight).to(torch.float64)
    q = torch.as_tensor(basis, dtype=torch.float64)
    flat = w.reshape(-1)
    if q.ndim != 2 or q.shape[1] != flat.numel():
        raise DebiasError(f"the directions have size {tuple(q.shape)[1:]} but the value head has {flat.numel()} "
                          "inputs: they must come from this model's hidden states")
    coefficients = q @ flat
    return (flat - strength * (coefficients @ q)).reshape(w.shape), coefficients


def rescale_to_std(hidden, old_weight, new_weight) -> float:
    """The factor c with std(h . (c w')) = std(h . w) over the rows of `hidden` (responses x H): the rewards keep
    their spread (scale-free metrics do not move; PPO sees rewards of the same size)."""
    h = _matrix(hidden, "rescale")
    old = (h @ torch.as_tensor(old_weight, dtype=torch.float64).reshape(-1)).std()
    new = (h @ torch.as_tensor(new_weight, dtype=torch.float64).reshape(-1)).std()
    if not float(new) > 0.0 or not bool(torch.isfinite(old)):
        raise DebiasError("after removing the directions the rewards are constant on the data: the value head "
                          "was (almost) entirely along them; lower --strength or remove fewer directions")
    return float(old / new)


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n, ties given the mean of the ranks they share."""
    values, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    below = torch.cumsum(counts, 0) - counts
    return (below + (counts + 1) / 2).to(torch.float64)[inverse]


def spearman(x, y) -> float:
    """Spearman rank correlation (ties averaged); NaN when either side is constant."""
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"spearman: lengths differ ({x.numel()} vs {y.numel()})")
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = torch.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denom) if float(denom) > 0 else float("nan")
