"""`openrlhf-fair debias`'s math (openrlhf_fair.core.debias), float64, against hand computations and an
independent projection matrix; the refusals of the math and of --remove."""

from __future__ import annotations

import math

import pytest
import torch

from openrlhf_fair.debias.cli import Removal, parse_removals
from openrlhf_fair.core.debias import MIN_GROUP_PAIRS, MIN_LENGTH_PAIRS, DebiasError, group_directions, length_direction, orthonormal_basis, project_head, rescale_to_std, spearman


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_hand_computed_projections():
    w = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    # d = (1, 0): the first coordinate is removed
    assert project_head(w, orthonormal_basis([torch.tensor([3.0, 0.0])]), 1.0)[0].tolist() == [[0.0, 2.0]]
    assert project_head(w, orthonormal_basis([torch.tensor([3.0, 0.0])]), 0.5)[0].tolist() == [[0.5, 2.0]]
    # d = (1, 1): w.d = 3, |d|^2 = 2, w' = (1, 2) - 1.5 (1, 1)
    new, coef = project_head(w, orthonormal_basis([torch.tensor([1.0, 1.0])]), 1.0)
    assert new.reshape(-1).tolist() == pytest.approx([-0.5, 0.5])
    assert coef.tolist() == pytest.approx([3 / math.sqrt(2)])


def test_full_projection_is_w_dot_P_h():
    """r' = w' . h equals w . P h with P = I - d d^T / |d|^2 built independently, to float64 precision."""
    H = 16
    w = torch.randn(1, H, dtype=torch.float64, generator=_gen(0))
    d = torch.randn(H, dtype=torch.float64, generator=_gen(1))
    h = torch.randn(50, H, dtype=torch.float64, generator=_gen(2))
    P = torch.eye(H, dtype=torch.float64) - torch.outer(d, d) / (d @ d)
    new, _ = project_head(w, orthonormal_basis([d]), 1.0)
    assert new.shape == w.shape
    torch.testing.assert_close(h @ new.reshape(-1), (P @ h.T).T @ w.reshape(-1), rtol=0, atol=1e-12)
    assert abs(float(new.reshape(-1) @ d)) < 1e-12
    # partial strength: w - s (w.d / |d|^2) d
    s = 0.3
    partial, _ = project_head(w, orthonormal_basis([d]), s)
    torch.testing.assert_close(partial.reshape(-1), w.reshape(-1) - s * (w.reshape(-1) @ d) / (d @ d) * d,
                               rtol=0, atol=1e-12)


def test_strength_zero_is_bit_identical_and_keeps_the_scale_exactly():
    w = torch.randn(1, 32, generator=_gen(3)).to(torch.bfloat16)
    h = torch.randn(40, 32, dtype=torch.float64, generator=_gen(4))
    basis = orthonormal_basis([torch.randn(32, generator=_gen(5)), torch.randn(32, generator=_gen(6))])
    new, _ = project_head(w, basis, 0.0)
    scale = rescale_to_std(h, w, new)
    assert scale == 1.0
    assert torch.equal((new * scale).to(torch.bfloat16), w)


def test_two_directions_are_orthogonalised_and_their_span_removed():
    H = 12
    d1 = torch.randn(H, dtype=torch.float64, generator=_gen(7))
    d2 = 0.8 * d1 + torch.randn(H, dtype=torch.float64, generator=_gen(8))  # far from orthogonal to d1
    q = orthonormal_basis([d1, d2])
    torch.testing.assert_close(q @ q.T, torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(q[0], d1 / d1.norm(), rtol=0, atol=1e-12)  # the first is kept as given
    w = torch.randn(H, dtype=torch.float64, generator=_gen(9))
    new, _ = project_head(w, q, 1.0)
    D = torch.stack([d1, d2], 1)
    P = torch.eye(H, dtype=torch.float64) - D @ torch.linalg.solve(D.T @ D, D.T)  # projection off span(d1, d2)
    torch.testing.assert_close(new, P @ w, rtol=0, atol=1e-12)
    assert max(abs(float(new @ d1)), abs(float(new @ d2))) < 1e-12
    # removing the span does not depend on the order; removing d1 then d2 one at a time would not remove d1
    torch.testing.assert_close(project_head(w, orthonormal_basis([d2, d1]), 1.0)[0], new, rtol=0, atol=1e-12)
    naive, _ = project_head(project_head(w, orthonormal_basis([d1]), 1.0)[0], orthonormal_basis([d2]), 1.0)
    assert abs(float(naive @ d1)) > 1e-3


def test_rescale_keeps_the_reward_std():
    h = torch.randn(200, 8, dtype=torch.float64, generator=_gen(10))
    w = torch.randn(8, dtype=torch.float64, generator=_gen(11))
    new, _ = project_head(w, orthonormal_basis([torch.randn(8, generator=_gen(12))]), 1.0)
    scale = rescale_to_std(h, w, new)
    assert float((h @ (scale * new)).std()) == pytest.approx(float((h @ w).std()), rel=1e-12)
    assert scale != pytest.approx(1.0)


def _planted(n: int, H: int, seed: int):
    """Pairs whose hidden states carry length along a known direction u and the group along v; the reward head
    reads quality (direction e), length and group."""
    g = _gen(seed)
    u, v, e = (torch.randn(H, dtype=torch.float64, generator=g) for _ in range(3))
    lc = torch.randint(5, 200, (n,), generator=g).to(torch.float64)
    lr = torch.randint(5, 200, (n,), generator=g).to(torch.float64)
    group = torch.arange(n) % 2
    quality_c = torch.randn(n, dtype=torch.float64, generator=g) + 0.5
    quality_r = torch.randn(n, dtype=torch.float64, generator=g)

    def hidden(length, quality):
        noise = 0.3 * torch.randn(n, H, dtype=torch.float64, generator=g)
        return noise + torch.outer(length / 40, u) + torch.outer(group.to(torch.float64), v) + torch.outer(quality, e)

    hc, hr = hidden(lc, quality_c), hidden(lr, quality_r)
    w = u / u.norm() + v / v.norm() + e / e.norm()
    return hc, hr, lc, lr, group, w


def test_a_planted_length_bias_is_removed():
    hc, hr, lc, lr, _, w = _planted(400, 24, 13)
    lengths = torch.cat([lc, lr])
    before = spearman(torch.cat([hc, hr]) @ w, lengths)
    d, used = length_direction(hc, hr, lc, lr)
    assert used == int((lc != lr).sum())
    new, _ = project_head(w, orthonormal_basis([d]), 1.0)
    after = spearman(torch.cat([hc, hr]) @ new, lengths)
    assert before > 0.5 and abs(after) < 0.1, (before, after)
    half, _ = project_head(w, orthonormal_basis([d]), 0.5)  # partial strength: in between
    assert abs(after) < spearman(torch.cat([hc, hr]) @ half, lengths) < before


def test_a_planted_group_bias_is_removed():
    hc, hr, _, _, group, w = _planted(400, 24, 14)
    h, gid = torch.cat([hc, hr]), torch.cat([group, group])
    ds, names, counts = group_directions(h, gid, ["a", "b"])
    assert names == ["b-minus-a"] and counts == {"a": 400, "b": 400}
    torch.testing.assert_close(ds[0], h[gid == 1].mean(0) - h[gid == 0].mean(0), rtol=0, atol=0)

    def gap(weight):
        r = h @ weight
        return float((r[gid == 1].mean() - r[gid == 0].mean()) / r.std())

    new, _ = project_head(w, orthonormal_basis(ds), 1.0)
    assert gap(w) > 0.5 and abs(gap(new)) < 1e-10  # the group means of the reward become equal exactly


def test_group_directions_for_three_groups():
    h = torch.randn(90, 6, dtype=torch.float64, generator=_gen(15))
    gid = torch.arange(90) % 3
    ds, names, _ = group_directions(h, gid, ["x", "y", "z"])
    assert names == ["y-minus-x", "z-minus-x"]
    new, _ = project_head(torch.randn(6, dtype=torch.float64, generator=_gen(16)), orthonormal_basis(ds), 1.0)
    means = [float((h[gid == j] @ new).mean()) for j in range(3)]
    assert max(means) - min(means) < 1e-12


def test_length_direction_by_hand():
    hc = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]]).repeat(10, 1)
    hr = torch.tensor([[0.0, 0.0], [0.0, 3.0], [1.0, 1.0]]).repeat(10, 1)
    lc = torch.tensor([10, 3, 7]).repeat(10)  # chosen longer, rejected longer, same length (left out)
    lr = torch.tensor([4, 8, 7]).repeat(10)
    d, used = length_direction(hc, hr, lc, lr)
    assert used == 20
    assert d.tolist() == [1.0, 1.0]  # mean of (2, 0) and (0, 3) - (0, 1) = (0, 2)


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties: y ranks (1.5, 1.5, 3, 4); x ranks (1, 2, 3, 4): pearson of ranks
    rx, ry = torch.tensor([1, 2, 3, 4.0]), torch.tensor([1.5, 1.5, 3, 4])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    assert spearman([1, 2, 3, 4], [5, 5, 6, 9]) == pytest.approx(float((rx @ ry) / (rx.norm() * ry.norm())))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_math_refusals():
    d = torch.randn(8, generator=_gen(17))
    basis = orthonormal_basis([d])
    for s in (-0.1, 1.5, float("nan")):
        with pytest.raises(DebiasError, match="--strength must be between 0 and 1"):
            project_head(torch.randn(8), basis, s)
    with pytest.raises(DebiasError, match="directions have size"):
        project_head(torch.randn(9), basis, 1.0)
    with pytest.raises(DebiasError, match="span of the ones removed before it"):
        orthonormal_basis([d, 2 * d])
    with pytest.raises(DebiasError, match="zero or not finite"):
        orthonormal_basis([torch.zeros(8)])
    n = MIN_LENGTH_PAIRS - 1
    with pytest.raises(DebiasError, match=f"too few pairs to estimate the length direction: {n} pair"):
        length_direction(torch.randn(n + 5, 8), torch.randn(n + 5, 8), list(range(1, n + 1)) + [1] * 5,
                         [0] * n + [1] * 5)
    gid = torch.tensor([0] * 40 + [1] * (2 * MIN_GROUP_PAIRS - 2))
    with pytest.raises(DebiasError, match=f"b has {MIN_GROUP_PAIRS - 1} pair.*need at least {MIN_GROUP_PAIRS}"):
        group_directions(torch.randn(len(gid), 8), gid, ["a", "b"])
    with pytest.raises(DebiasError, match="at least 2 groups"):
        group_directions(torch.randn(40, 8), torch.zeros(40, dtype=torch.int64), ["a"])
    with pytest.raises(DebiasError, match="rewards are constant"):
        rescale_to_std(torch.randn(30, 2, dtype=torch.float64), torch.tensor([1.0, 0.0]), torch.zeros(2))


def test_remove_values():
    assert parse_removals(["length", "group:category"]) == [Removal("length"), Removal("group", "category")]
    for bad in ("lenght", "group", "group:", "length:x", "topic:a"):
        with pytest.raises(DebiasError, match="unknown --remove"):
            parse_removals([bad])
    with pytest.raises(DebiasError, match="given twice"):
        parse_removals(["length", "length"])
    with pytest.raises(DebiasError, match="only one --remove group:KEY"):
        parse_removals(["group:a", "group:b"])
    with pytest.raises(DebiasError, match="nothing to remove"):
        parse_removals([])


def test_a_reward_that_is_not_w_dot_h_is_refused():
    from openrlhf_fair.debias.checkpoint import HiddenStates, check_linear

    h = torch.randn(30, 8, generator=_gen(18))
    w = torch.randn(1, 8, generator=_gen(19))
    reward = (h.double() @ w.double().reshape(-1)).float().double()  # as a float32 model computes it
    states = HiddenStates(h, h.flip(0), reward, reward.flip(0), torch.zeros(30, dtype=torch.bool))
    check_linear(states, w, "model")  # accepted
    shifted = HiddenStates(h, h.flip(0), reward + 0.5, reward.flip(0) + 0.5, states.identical)  # a bias term
    with pytest.raises(DebiasError, match="not w . h of the last token's hidden state"):
        check_linear(shifted, w, "model")
